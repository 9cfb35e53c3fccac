"""Every status word the store keeps, and the moves between them, in one place.

The words are plain strings: they are what the database holds, what `notifier report` prints and what a duty
officer types. One word, one constant, whichever table's `status` column it fills (a sailing, a booking, a
broadcast and a notice can all be `cancelled`); the groups below say which words each table uses.

A notice's lifecycle follows GOV.UK Notify's: planned `held` (awaiting approval) or `queued`, claimed `sending`
under a lease, then `sent` (the provider took it) and `delivered` / `undelivered` from its receipts, or it ends
`failed`, `suppressed` (opted out, withdrawn by a newer notice), `expired` (too late to be worth sending) or
`cancelled` (the broadcast was stopped). `NOTICE_MOVES` is that graph; `may_move` is how code and tests ask it.
"""

from __future__ import annotations

# --- the words -----------------------------------------------------------------------------------------------------

HELD = "held"
QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
DELIVERED = "delivered"
UNDELIVERED = "undelivered"
FAILED = "failed"
SUPPRESSED = "suppressed"
EXPIRED = "expired"
CANCELLED = "cancelled"
PLANNING = "planning"
AWAITING_APPROVAL = "awaiting_approval"
APPROVED = "approved"
PAUSED = "paused"
DONE = "done"
NEW = "new"
PROCESSED = "processed"
ACTIVE = "active"
SUPERSEDED = "superseded"
CLEARED = "cleared"
SCHEDULED = "scheduled"
DELAYED = "delayed"
DEPARTED = "departed"
CONFIRMED = "confirmed"
REBOOKED = "rebooked"
REFUND = "refund"
TRAVELLED = "travelled"
OPEN = "open"
TAKEN = "taken"
ACCEPTED = "accepted"
RELEASED = "released"
WITHDRAWN = "withdrawn"
ANSWERED = "answered"
RESOLVED = "resolved"

# --- which table uses which --------------------------------------------------------------------------------------

NOTICE_STATUSES = (HELD, QUEUED, SENDING, SENT, DELIVERED, UNDELIVERED, FAILED, SUPPRESSED, EXPIRED, CANCELLED)
BROADCAST_STATUSES = (PLANNING, AWAITING_APPROVAL, APPROVED, SENDING, PAUSED, CANCELLED, DONE, FAILED)
FEED_ITEM_STATUSES = (NEW, PROCESSED, FAILED)  # failed: quarantined until `notifier feeds retry ID`
DISRUPTION_STATUSES = (ACTIVE, SUPERSEDED, CLEARED)
SAILING_STATUSES = (SCHEDULED, DELAYED, CANCELLED, DEPARTED)
BOOKING_STATUSES = (CONFIRMED, REBOOKED, REFUND, CANCELLED, TRAVELLED)
OFFER_STATUSES = (OPEN, HELD, ACCEPTED, RELEASED, EXPIRED)
FOLLOW_UP_STATUSES = (OPEN, TAKEN, DONE)
TICKET_STATUSES = (OPEN, ANSWERED, RESOLVED)

# --- groups of notice statuses the stages ask about ----------------------------------------------------------------

UNSENT = (HELD, QUEUED)  # planned, nothing handed to a provider yet
IN_FLIGHT = (HELD, QUEUED, SENDING)  # not yet settled either way
TOLD = (SENDING, SENT, DELIVERED)  # handed to a provider (a `sending` one may be in its hands): counts as told
REACHED = (SENT, DELIVERED)  # a provider accepted it: the customer can be asked about it afterwards
LOST = (FAILED, UNDELIVERED, EXPIRED, SUPPRESSED)  # ended without reaching the customer
REFUSED = (FAILED, UNDELIVERED)  # the provider or the handset said no: that channel does not reach them
OFFER_TAKEABLE = (OPEN, HELD, EXPIRED)  # an expired hold can still be taken while places are free
NOTICE_ENDS = (DELIVERED, UNDELIVERED, FAILED, SUPPRESSED, EXPIRED, CANCELLED)
LIVE_DISRUPTION = (ACTIVE, SUPERSEDED)  # a disruption still in force (a superseded one may be promoted again)
BROADCAST_HELD_BACK = (PAUSED, CANCELLED, AWAITING_APPROVAL)  # its queued notices are not sent
BROADCAST_AT_REST = (DONE, CANCELLED, PAUSED, AWAITING_APPROVAL, APPROVED)  # nothing is being sent for it

NOTICE_MOVES: dict[str, frozenset[str]] = {
    HELD: frozenset({QUEUED, SUPPRESSED, CANCELLED, EXPIRED}),
    QUEUED: frozenset({HELD, SENDING, SUPPRESSED, CANCELLED, EXPIRED, FAILED}),
    SENDING: frozenset({SENT, QUEUED, FAILED, SUPPRESSED, EXPIRED, UNDELIVERED, DELIVERED}),
    SENT: frozenset({DELIVERED, UNDELIVERED, FAILED}),
    DELIVERED: frozenset({UNDELIVERED}),  # a late receipt can still say the handset never got it
    UNDELIVERED: frozenset({DELIVERED}),  # ... and the other way round: the provider's last word stands
    FAILED: frozenset(),
    SUPPRESSED: frozenset(),
    EXPIRED: frozenset(),
    CANCELLED: frozenset(),
}


def may_move(old: str, new: str) -> bool:
    """Whether a notice in status `old` may be put in status `new` (staying put is always allowed)."""
    return old == new or new in NOTICE_MOVES.get(old, frozenset())
