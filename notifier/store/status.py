"""Every status word the store keeps, and the moves between them, in one place.

The words are plain strings (they are what the database holds, what `notifier report` prints and what a duty
officer types), grouped by the table whose `status` column they fill. A notice's lifecycle follows GOV.UK
Notify's: planned `held` (awaiting approval) or `queued`, claimed `sending` under a lease, then `sent` (the
provider took it) and `delivered` / `undelivered` from its receipts, or it ends `failed`, `suppressed` (opted
out, withdrawn by a newer notice), `expired` (too late to be worth sending) or `cancelled` (the broadcast was
stopped). `NOTICE_MOVES` is that graph; `may_move` is how code and tests ask it.
"""

from __future__ import annotations

# --- notifications (the outbox) ----------------------------------------------------------------------------------

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

UNSENT = (HELD, QUEUED)  # planned, nothing handed to a provider yet
TOLD = (SENDING, SENT, DELIVERED)  # handed to a provider (a `sending` one may be in its hands): counts as told
REACHED = (SENT, DELIVERED)  # a provider accepted it: the customer can be asked about it afterwards
NOTICE_ENDS = (DELIVERED, UNDELIVERED, FAILED, SUPPRESSED, EXPIRED, CANCELLED)

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


# --- broadcasts ----------------------------------------------------------------------------------------------------

PLANNING = "planning"
AWAITING_APPROVAL = "awaiting_approval"
APPROVED = "approved"
BROADCAST_SENDING = SENDING
PAUSED = "paused"
BROADCAST_CANCELLED = CANCELLED
DONE = "done"
BROADCAST_FAILED = FAILED  # planning failed for a reason a person must look at (quarantined, see feed items)

# --- feed items ----------------------------------------------------------------------------------------------------

ITEM_NEW = "new"
ITEM_PROCESSED = "processed"
ITEM_FAILED = "failed"  # quarantined: a stage failed on it; skipped until `notifier feeds retry ID`

# --- disruptions ---------------------------------------------------------------------------------------------------

ACTIVE = "active"
SUPERSEDED = "superseded"
CLEARED = "cleared"
