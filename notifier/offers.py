"""What a disrupted customer may choose: alternative sailings with places really held, and the refund.

Holds are counters on `sailing_capacities` changed by one conditional UPDATE each
(`held = held + n WHERE capacity - booked - held >= n`), so two planners running at once on SQLite or
PostgreSQL can never promise the same place twice; the check constraint backs that up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from .config import Settings
from .models import Booking, Disruption, Offer, Route, Sailing, SailingCapacity, utcnow

REFUND_KEY = "R"


@dataclass(frozen=True)
class Candidate:
    """An alternative sailing considered for every booking of one disrupted sailing (computed once per sailing)."""

    sailing_id: int
    code: str
    departure: datetime
    arrival: datetime


def candidates_for(session: Session, disruption: Disruption, limit: int = 20) -> list[Candidate]:
    """Sailings between the same ports (same route first) departing after the hazard window, soonest first."""
    sailing = session.get(Sailing, disruption.sailing_id)
    after = max(filter(None, [disruption.window_end, sailing.scheduled_departure]))
    same_ports = select(Route.id).where(Route.origin_port_id == sailing.origin_port_id,
                                        Route.destination_port_id == sailing.destination_port_id)
    rows = session.execute(
        select(Sailing.id, Sailing.code, Sailing.scheduled_departure, Sailing.scheduled_arrival, Sailing.route_id)
        .where(Sailing.id != sailing.id, Sailing.status == "scheduled", Sailing.scheduled_departure >= after,
               Sailing.origin_port_id == sailing.origin_port_id,
               Sailing.destination_port_id == sailing.destination_port_id,
               Sailing.route_id.in_(same_ports))
        .order_by(Sailing.scheduled_departure).limit(limit)).all()
    # Same route before other routes between the same ports, each soonest first.
    rows = sorted(rows, key=lambda r: (r.route_id != sailing.route_id, r.scheduled_departure))
    return [Candidate(r.id, r.code, r.scheduled_departure, r.scheduled_arrival) for r in rows]


def needs(booking: Booking) -> dict[str, int]:
    """The places a booking occupies, per space class."""
    wanted = {booking.space_class: booking.places}
    if booking.vehicles:
        wanted["vehicle"] = booking.vehicles
    if booking.reefer_plugs:
        wanted["reefer"] = booking.reefer_plugs
    return {space: count for space, count in wanted.items() if count > 0}


def hold(session: Session, sailing_id: int, wanted: dict[str, int]) -> bool:
    """Hold every wanted place on a sailing, or none: True when all were free and are now held."""
    with session.begin_nested() as savepoint:
        for space_class, places in wanted.items():
            result = session.execute(
                update(SailingCapacity)
                .where(SailingCapacity.sailing_id == sailing_id, SailingCapacity.space_class == space_class,
                       SailingCapacity.capacity - SailingCapacity.booked - SailingCapacity.held >= places)
                .values(held=SailingCapacity.held + places)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                savepoint.rollback()
                return False
    return True


def release(session: Session, offer: Offer, status: str = "released") -> None:
    """Give a held offer's places back."""
    if offer.status != "held":
        return
    booking = session.get(Booking, offer.booking_id)
    for space_class, places in needs(booking).items():
        session.execute(update(SailingCapacity)
                        .where(SailingCapacity.sailing_id == offer.sailing_id,
                               SailingCapacity.space_class == space_class)
                        .values(held=SailingCapacity.held - places)
                        .execution_options(synchronize_session=False))
    offer.status = status


def refund_amount(booking: Booking, disruption: Disruption) -> Decimal:
    """What is refunded: the full price paid when the sailing is cancelled (EU Art 18, CN Art 820)."""
    return booking.fare_paid if disruption.kind in {"cancelled", "port_omitted"} else Decimal("0")


def make_offers(session: Session, booking: Booking, disruption: Disruption, candidates: list[Candidate],
                settings: Settings, now: datetime | None = None) -> list[Offer]:
    """Offers for one booking: up to N alternatives with held places (else a standby), and the refund."""
    now = now or utcnow()
    deadline = now + timedelta(hours=settings.offer_deadline_hours)
    hold_until = now + timedelta(minutes=settings.hold_minutes)
    _release_earlier_revisions(session, booking.id, disruption)
    offers: list[Offer] = []
    wanted = needs(booking)
    for candidate in candidates:
        if len(offers) >= settings.offers_per_booking:
            break
        if hold(session, candidate.sailing_id, wanted):
            offers.append(_offer(booking, disruption, str(len(offers) + 1), "rebook", candidate.sailing_id,
                                 "held", hold_until, deadline))
    if not offers and candidates:
        # No place anywhere: offer the first sailing after the window without a hold (standby) beside the refund.
        offers.append(_offer(booking, disruption, "1", "standby", candidates[0].sailing_id, "open", None, deadline))
    if disruption.kind in {"cancelled", "port_omitted"}:
        refund = _offer(booking, disruption, REFUND_KEY, "refund", None, "open", None, deadline)
        refund.amount, refund.currency = refund_amount(booking, disruption), booking.currency
        offers.append(refund)
    session.add_all(offers)
    return offers


def _offer(booking: Booking, disruption: Disruption, key: str, kind: str, sailing_id: int | None, status: str,
           hold_until: datetime | None, deadline: datetime) -> Offer:
    return Offer(booking_id=booking.id, disruption_id=disruption.id, revision=disruption.revision, option_key=key,
                 kind=kind, sailing_id=sailing_id, space_class=booking.space_class, places=booking.places,
                 status=status, hold_expires_at=hold_until, deadline=deadline)


def _release_earlier_revisions(session: Session, booking_id: int, disruption: Disruption) -> None:
    earlier = session.scalars(select(Offer).where(Offer.booking_id == booking_id,
                                                  Offer.disruption_id == disruption.id,
                                                  Offer.revision < disruption.revision, Offer.status == "held"))
    for offer in earlier:
        release(session, offer, "superseded")


def expire_holds(session: Session, now: datetime | None = None) -> int:
    """Release holds whose time is up (run by the watcher); returns how many."""
    now = now or utcnow()
    expired = session.scalars(select(Offer).where(and_(Offer.status == "held", Offer.hold_expires_at < now)))
    count = 0
    for offer in expired:
        release(session, offer, "expired")
        count += 1
    return count
