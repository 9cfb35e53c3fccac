"""Places on sailings: the capacity counters, the holds on them, and the sailings that can take a disrupted
sailing's bookings (`candidates_for`). Below disruptions and planning, which both hold and give back places.

Holds are counters on `sailing_capacities` changed by one conditional UPDATE each
(`held = held + n WHERE capacity - booked - held >= n`), so two planners running at once on SQLite or
PostgreSQL can never promise the same place twice; the check constraint backs that up. An offer leaves the
"held" state only through a conditional UPDATE of its own status (`... WHERE status = 'held'`), so the watcher
expiring a hold and a customer taking it at the same moment cannot both move the counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from notifier.store.db import is_postgres
from notifier.store.models import Disruption, Offer, Route, Sailing, SailingCapacity
from notifier.store.status import ACTIVE, SCHEDULED

CANCELLING_KINDS = ("cancelled", "port_omitted")


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
    disrupted = exists().where(Disruption.sailing_id == Sailing.id, Disruption.status == ACTIVE,
                               Disruption.kind.in_(CANCELLING_KINDS))
    rows = session.execute(
        select(Sailing.id, Sailing.code, Sailing.scheduled_departure, Sailing.scheduled_arrival, Sailing.route_id,
               Sailing.dangerous_goods_accepted)
        .where(Sailing.id != sailing.id, Sailing.status == SCHEDULED, Sailing.scheduled_departure >= after,
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


def lock_capacity(session: Session, sailing_ids: Iterable[int | None]) -> None:
    """On PostgreSQL, lock the capacity rows of these sailings in one statement, in id order, before touching
    them: transactions that move places on several sailings then queue instead of deadlocking. (SQLite takes
    the write lock at BEGIN, so writers never interleave there.)"""
    ids = sorted({i for i in sailing_ids if i is not None})
    if not ids or not is_postgres(session):
        return
    session.execute(select(SailingCapacity.id).where(SailingCapacity.sailing_id.in_(ids))
                    .order_by(SailingCapacity.id).with_for_update())


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
