"""What a disrupted customer may choose: alternative sailings with places really held, the refund, and
compensation where the policy owes it. The places themselves are held and given back through store.capacity.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from notifier.rules import entitlements
from notifier.store.capacity import CANCELLING_KINDS, Candidate, hold, lock_capacity, release_many
from notifier.store.models import Booking, Disruption, Offer, utcnow
from notifier.store.settings import ConfigError, Settings
from notifier.store.status import HELD

REFUND_KEY = "R"
COMPENSATION_KEY = "C"
PRIORITY_KEYS = ("departure", "accessibility")


def needs(booking: Booking) -> dict[str, int]:
    """The places a booking occupies, per space class."""
    wanted = {booking.space_class: booking.places}
    if booking.vehicles:
        wanted["vehicle"] = booking.vehicles
    if booking.reefer_plugs:
        wanted["reefer"] = booking.reefer_plugs
    return {space: count for space, count in wanted.items() if count > 0}


def suits(candidate: Candidate, booking: Booking, wanted: dict[str, int]) -> bool:
    """True when the sailing carries every kind of place the booking needs (and its dangerous goods)."""
    return set(wanted) <= candidate.spaces and (candidate.dangerous_goods or not booking.dangerous_goods)


def _lock_candidates_once(session: Session, candidates: list[Candidate]) -> None:
    # Every booking of one planning chunk shares the same candidates: lock them once per transaction.
    transaction = session.get_transaction()
    locked = session.info.get("notifier_capacity_locked")
    if locked is not None and locked[0] is transaction:
        return
    lock_capacity(session, [candidate.sailing_id for candidate in candidates])
    session.info["notifier_capacity_locked"] = (transaction, True)


def refund_amount(booking: Booking, disruption: Disruption, settings: Settings | None = None) -> Decimal | None:
    """The refund owed as a choice, or None: the full price paid when the sailing is cancelled or its port
    omitted, when departure is delayed beyond the refund threshold (EU Art 18, CN Art 820), or when the rule
    grants `refund_full`."""
    threshold = settings.refund_delay_minutes if settings else 90
    long_delay = disruption.kind == "delayed" and (disruption.delay_minutes or 0) > threshold
    granted = "refund_full" in (disruption.policy or {}).get("entitlements", [])
    if disruption.kind in CANCELLING_KINDS or long_delay or granted:
        return booking.fare_paid
    return None


def rebooking_owed(disruption: Disruption, settings: Settings | None = None) -> bool:
    """True when the customer may move to another sailing: a cancellation or omitted port, a delay beyond the
    refund threshold, or a rule granting `rebook`. An advisory or a short delay holds no places elsewhere."""
    threshold = settings.refund_delay_minutes if settings else 90
    long_delay = disruption.kind == "delayed" and (disruption.delay_minutes or 0) > threshold
    granted = "rebook" in (disruption.policy or {}).get("entitlements", [])
    return disruption.kind in CANCELLING_KINDS or long_delay or granted


def make_offers(session: Session, booking: Booking, disruption: Disruption, candidates: list[Candidate],
                settings: Settings, now: datetime | None = None) -> list[Offer]:
    """Offers for one booking: up to N suitable alternatives with held places (else a standby on the first
    suitable sailing), the refund, and compensation where owed."""
    now = now or utcnow()
    deadline = now + timedelta(hours=settings.offer_deadline_hours)
    hold_until = now + timedelta(minutes=settings.hold_minutes)
    _lock_candidates_once(session, candidates)
    _release_earlier_revisions(session, booking.id, disruption)
    wanted = needs(booking)
    suitable = [c for c in candidates if suits(c, booking, wanted)] if rebooking_owed(disruption, settings) else []
    offers: list[Offer] = []
    for candidate in suitable:
        if len(offers) >= settings.offers_per_booking:
            break
        if hold(session, candidate.sailing_id, wanted):
            offers.append(_offer(booking, disruption, str(len(offers) + 1), "rebook", candidate.sailing_id,
                                 "held", hold_until, deadline, wanted))
    if not offers and suitable:
        # No place anywhere: offer the first sailing after the window without a hold (standby) beside the refund.
        offers.append(_offer(booking, disruption, "1", "standby", suitable[0].sailing_id, "open", None, deadline))
    amount = refund_amount(booking, disruption, settings)
    if amount is not None:
        offers.append(_money_offer(booking, disruption, REFUND_KEY, "refund", amount, booking.currency, deadline))
    owed = entitlements.compensation(session, booking, disruption)  # EU Art 19, on top of either choice
    if owed is not None:
        offers.append(_money_offer(booking, disruption, COMPENSATION_KEY, "compensation", *owed, deadline))
    session.add_all(offers)
    return offers


def _offer(booking: Booking, disruption: Disruption, key: str, kind: str, sailing_id: int | None, status: str,
           hold_until: datetime | None, deadline: datetime, holds: dict[str, int] | None = None) -> Offer:
    return Offer(booking_id=booking.id, disruption_id=disruption.id, revision=disruption.revision, option_key=key,
                 kind=kind, sailing_id=sailing_id, space_class=booking.space_class, places=booking.places,
                 status=status, hold_expires_at=hold_until, deadline=deadline, holds=dict(holds or {}))


def _money_offer(booking: Booking, disruption: Disruption, key: str, kind: str, amount: Decimal, currency: str,
                 deadline: datetime) -> Offer:
    offer = _offer(booking, disruption, key, kind, None, "open", None, deadline)
    offer.amount, offer.currency = amount, currency
    return offer


def _release_earlier_revisions(session: Session, booking_id: int, disruption: Disruption) -> None:
    earlier = session.scalars(select(Offer).where(Offer.booking_id == booking_id,
                                                  Offer.disruption_id == disruption.id,
                                                  Offer.revision < disruption.revision, Offer.status == HELD))
    release_many(session, list(earlier), "superseded")


def expire_holds(session: Session, now: datetime | None = None) -> int:
    """Release holds whose time is up (run by the watcher); returns how many."""
    now = now or utcnow()
    expired = list(session.scalars(select(Offer).where(and_(Offer.status == HELD, Offer.hold_expires_at < now))))
    return release_many(session, expired, "expired")


def planning_order(departures: dict[int, datetime], priority: tuple[str, ...] | list[str]
                   ) -> list[tuple[int, bool | None]]:
    """The order in which bookings take scarce places: (disruption id, accessibility group) pairs, following
    `Settings.offer_priority` (group None means every booking of that sailing together, earliest booked first)."""
    unknown = [key for key in priority if key not in PRIORITY_KEYS]
    if unknown:
        raise ConfigError(f"offer_priority: unknown key(s) {', '.join(unknown)}; use {', '.join(PRIORITY_KEYS)}")
    disruptions = sorted(departures, key=lambda d: (departures[d], d)) if "departure" in priority \
        else sorted(departures)
    if "accessibility" not in priority:
        return [(disruption, None) for disruption in disruptions]
    groups = (True, False)
    if "departure" in priority and list(priority).index("departure") < list(priority).index("accessibility"):
        return [(disruption, group) for disruption in disruptions for group in groups]
    return [(disruption, group) for group in groups for disruption in disruptions]
