"""What a disrupted customer may choose: alternative sailings with places really held, the refund, and
compensation where the policy owes it.

Holds are counters on `sailing_capacities` changed by one conditional UPDATE each
(`held = held + n WHERE capacity - booked - held >= n`), so two planners running at once on SQLite or
PostgreSQL can never promise the same place twice; the check constraint backs that up. An offer leaves the
"held" state only through a conditional UPDATE of its own status (`... WHERE status = 'held'`), so the watcher
expiring a hold and a customer taking it at the same moment cannot both move the counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from notifier.rules import entitlements
from notifier.store.settings import ConfigError, Settings
from notifier.store.db import is_postgres
from notifier.store.models import Booking, Disruption, Offer, Route, Sailing, SailingCapacity, utcnow

REFUND_KEY = "R"
COMPENSATION_KEY = "C"
CANCELLING_KINDS = ("cancelled", "port_omitted")
PRIORITY_KEYS = ("departure", "accessibility")


@dataclass(frozen=True)
class Candidate:
    """An alternative sailing considered for every booking of one disrupted sailing (computed once per sailing)."""

    sailing_id: int
    code: str
    departure: datetime
    arrival: datetime
    spaces: frozenset[str] = frozenset()  # space classes the sailing carries (economy, vehicle, teu, reefer ...)
    dangerous_goods: bool = True


def candidates_for(session: Session, disruption: Disruption, limit: int = 20) -> list[Candidate]:
    """Sailings between the same ports (same route first) departing after the hazard window, soonest first;
    sailings that are themselves cancelled by an active disruption are left out."""
    sailing = session.get(Sailing, disruption.sailing_id)
    after = max(filter(None, [disruption.window_end, sailing.scheduled_departure]))
    same_ports = select(Route.id).where(Route.origin_port_id == sailing.origin_port_id,
                                        Route.destination_port_id == sailing.destination_port_id)
    disrupted = exists().where(Disruption.sailing_id == Sailing.id, Disruption.status == "active",
                               Disruption.kind.in_(CANCELLING_KINDS))
    rows = session.execute(
        select(Sailing.id, Sailing.code, Sailing.scheduled_departure, Sailing.scheduled_arrival, Sailing.route_id,
               Sailing.dangerous_goods_accepted)
        .where(Sailing.id != sailing.id, Sailing.status == "scheduled", Sailing.scheduled_departure >= after,
               Sailing.origin_port_id == sailing.origin_port_id,
               Sailing.destination_port_id == sailing.destination_port_id,
               Sailing.route_id.in_(same_ports), ~disrupted)
        .order_by(Sailing.scheduled_departure).limit(limit)).all()
    spaces: dict[int, set[str]] = {}
    for sailing_id, space_class in session.execute(
            select(SailingCapacity.sailing_id, SailingCapacity.space_class)
            .where(SailingCapacity.sailing_id.in_([r.id for r in rows]))):
        spaces.setdefault(sailing_id, set()).add(space_class)
    # Same route before other routes between the same ports, each soonest first.
    rows = sorted(rows, key=lambda r: (r.route_id != sailing.route_id, r.scheduled_departure))
    return [Candidate(r.id, r.code, r.scheduled_departure, r.scheduled_arrival, frozenset(spaces.get(r.id, ())),
                      r.dangerous_goods_accepted) for r in rows]


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


def lock_capacity(session: Session, sailing_ids: Any) -> None:
    """On PostgreSQL, lock the capacity rows of these sailings in one statement, in id order, before touching
    them: transactions that move places on several sailings then queue instead of deadlocking. (SQLite takes
    the write lock at BEGIN, so writers never interleave there.)"""
    ids = sorted({i for i in sailing_ids if i is not None})
    if not ids or not is_postgres(session):
        return
    session.execute(select(SailingCapacity.id).where(SailingCapacity.sailing_id.in_(ids))
                    .order_by(SailingCapacity.id).with_for_update())


def _lock_candidates_once(session: Session, candidates: list[Candidate]) -> None:
    # Every booking of one planning chunk shares the same candidates: lock them once per transaction.
    transaction = session.get_transaction()
    locked = session.info.get("notifier_capacity_locked")
    if locked is not None and locked[0] is transaction:
        return
    lock_capacity(session, [candidate.sailing_id for candidate in candidates])
    session.info["notifier_capacity_locked"] = (transaction, True)


def _take_places(session: Session, sailing_id: int, wanted: dict[str, int], counter: str) -> bool:
    """Add to the `held` or `booked` counter for every wanted class, all or none, never beyond capacity."""
    column = getattr(SailingCapacity, counter)
    with session.begin_nested() as savepoint:
        for space_class, places in wanted.items():
            result = session.execute(
                update(SailingCapacity)
                .where(SailingCapacity.sailing_id == sailing_id, SailingCapacity.space_class == space_class,
                       SailingCapacity.capacity - SailingCapacity.booked - SailingCapacity.held >= places)
                .values({counter: column + places})
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                savepoint.rollback()
                return False
    return True


def hold(session: Session, sailing_id: int, wanted: dict[str, int]) -> bool:
    """Hold every wanted place on a sailing, or none: True when all were free and are now held."""
    return _take_places(session, sailing_id, wanted, "held")


def book_free(session: Session, sailing_id: int, wanted: dict[str, int]) -> bool:
    """Book places straight from free capacity, all or none (a standby or a lapsed hold being taken up)."""
    return _take_places(session, sailing_id, wanted, "booked")


def give_back_booked(session: Session, sailing_id: int, wanted: dict[str, int]) -> None:
    """A booking leaves a sailing (rebooked elsewhere or refunded): its booked places become free again."""
    for space_class, places in wanted.items():
        session.execute(update(SailingCapacity)
                        .where(SailingCapacity.sailing_id == sailing_id, SailingCapacity.space_class == space_class,
                               SailingCapacity.booked >= places)
                        .values(booked=SailingCapacity.booked - places)
                        .execution_options(synchronize_session=False))


def held_places(offer: Offer) -> dict[str, int]:
    """The places an offer holds, per space class."""
    return {k: int(v) for k, v in offer.holds.items()} if offer.holds else {offer.space_class: offer.places}


def _move_status(session: Session, offer: Offer, from_status: str, to_status: str) -> bool:
    # The conditional UPDATE is the claim: whoever changes the status first owns the counters.
    result = session.execute(update(Offer).where(Offer.id == offer.id, Offer.status == from_status)
                             .values(status=to_status).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        return False
    set_committed_value(offer, "status", to_status)
    return True


def release_many(session: Session, offers: list[Offer], status: str = "released") -> int:
    """Release several held offers, locking their sailings first (see `lock_capacity`); returns how many."""
    lock_capacity(session, [offer.sailing_id for offer in offers])
    return sum(1 for offer in offers if release(session, offer, status))


def release(session: Session, offer: Offer, status: str = "released") -> bool:
    """Give a held offer's places back; False when it was no longer held (taken or released by someone else)."""
    if not _move_status(session, offer, "held", status):
        return False
    for space_class, places in held_places(offer).items():
        session.execute(update(SailingCapacity)
                        .where(SailingCapacity.sailing_id == offer.sailing_id,
                               SailingCapacity.space_class == space_class, SailingCapacity.held >= places)
                        .values(held=SailingCapacity.held - places)
                        .execution_options(synchronize_session=False))
    return True


def convert_hold(session: Session, offer: Offer) -> bool:
    """Turn a held offer's places into booked ones (held -> booked in one UPDATE); False when the hold is gone."""
    if not _move_status(session, offer, "held", "accepted"):
        return False
    for space_class, places in held_places(offer).items():
        result = session.execute(
            update(SailingCapacity)
            .where(SailingCapacity.sailing_id == offer.sailing_id, SailingCapacity.space_class == space_class,
                   SailingCapacity.held >= places)
            .values(held=SailingCapacity.held - places, booked=SailingCapacity.booked + places)
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            raise RuntimeError(f"hold counters of sailing {offer.sailing_id} ({space_class}) are below offer "
                               f"{offer.id}'s {places} places")
    return True


def accept_unheld(session: Session, offer: Offer, wanted: dict[str, int]) -> bool:
    """Take up an offer without a live hold (standby, or a hold that lapsed) if its sailing still has room."""
    if not book_free(session, offer.sailing_id, wanted):
        return False
    if not _move_status(session, offer, offer.status, "accepted"):
        raise RuntimeError(f"offer {offer.id} changed while it was being accepted")
    return True


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
                                                  Offer.revision < disruption.revision, Offer.status == "held"))
    release_many(session, list(earlier), "superseded")


def expire_holds(session: Session, now: datetime | None = None) -> int:
    """Release holds whose time is up (run by the watcher); returns how many."""
    now = now or utcnow()
    expired = list(session.scalars(select(Offer).where(and_(Offer.status == "held", Offer.hold_expires_at < now))))
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

