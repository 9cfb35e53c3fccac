"""Places for one chunk's bookings: alternatives allocated in Python booking by booking in planning order, exactly as
`offers.make_offers` would, then held with one conditional UPDATE per (sailing, space class), sent as one
executemany: `held = held + n WHERE capacity - booked - held >= n`. The WHERE keeps it race-free: should another
writer have taken places after we read them, an UPDATE matches nothing, the chunk's savepoint is rolled back and the
allocation is made again from fresh counters. The offers are written in bulk (store.bulk).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.planning.chunks import BookingRow, SailingPlan
from notifier.planning.notices import SailingFacts
from notifier.planning.offers import COMPENSATION_KEY, REFUND_KEY, needs, rebooking_owed, refund_amount, suits
from notifier.store.capacity import Candidate, held_places, lock_capacity, release
from notifier.planning.shapes import AttributeMemo
from notifier.rules import entitlements
from notifier.rules.entitlements import Situation
from notifier.store.bulk import PAGE, bulk_insert, rows_where_in
from notifier.store.db import pages
from notifier.store.models import Offer, SailingCapacity, utcnow
from notifier.store.settings import Settings
from notifier.store.status import HELD

ALLOCATION_ATTEMPTS = 3
OFFER_COLUMNS = ("booking_id", "disruption_id", "revision", "option_key", "kind", "sailing_id", "space_class",
                 "places", "amount", "currency", "status", "hold_expires_at", "holds", "deadline")
_OFFER_ROW = attrgetter(*OFFER_COLUMNS)  # a PlannedOffer's values in column order (its fields bear their names)


@dataclass(slots=True)
class PlannedOffer:
    """An offer as planning writes it (the columns of Offer)."""

    booking_id: int
    disruption_id: int
    revision: int
    option_key: str
    kind: str
    sailing_id: int | None
    space_class: str | None
    places: int
    status: str
    hold_expires_at: datetime | None
    deadline: datetime | None
    holds: dict[str, int] = field(default_factory=dict)
    amount: Decimal | None = None
    currency: str | None = None


def offers_made(session: Session, booking_ids: list[int]) -> dict[tuple[int, int, int], list[Any]]:
    """Offers these bookings already have, by (booking, disruption, revision): another broadcast made them."""
    made: dict[tuple[int, int, int], list[Any]] = {}
    ids = [offer_id for (offer_id,) in rows_where_in(session, f"SELECT id FROM {Offer.__tablename__}",
                                                     "booking_id", booking_ids)]
    for page in pages(sorted(ids), PAGE):  # usually none: a first warning finds no offers yet
        for offer in session.execute(select(Offer.__table__).where(Offer.id.in_(page)).order_by(Offer.id)):
            made.setdefault((offer.booking_id, offer.disruption_id, offer.revision), []).append(offer)
    return made


def allocate_offers(session: Session, work: list[tuple[SailingPlan, list[BookingRow]]], settings: Settings,
                    now: datetime) -> dict[tuple[int, int], list[PlannedOffer]]:
    """Offers for the bookings of one chunk, by (booking, disruption): `work` is (sailing plan, bookings) in
    planning order. Each booking gets what `offers.make_offers` would give it, in the same order: held places on
    up to N suitable alternatives (else a standby on the first suitable one), the refund, compensation where
    owed. Places are taken with one conditional UPDATE per (sailing, class) and the offers written in bulk."""
    earlier = _earlier_holds(session, work)
    candidates = {c.sailing_id for plan, _ in work if rebooking_owed(plan.facts.disruption, settings)
                  for c in plan.facts.candidates}
    lock_capacity(session, candidates | {o.sailing_id for held in earlier.values() for o in held})
    released = {key: [offer for offer in held if release(session, offer, "superseded")]
                for key, held in earlier.items()}
    for _ in range(ALLOCATION_ATTEMPTS):
        with session.begin_nested() as savepoint:
            free = _free_places(session, candidates)
            for plan, _ in work:
                plan.shared.setdefault("memos", _Memos()).new_chunk()
            planned: dict[tuple[int, int], list[PlannedOffer]] = {}
            taken: Counter = Counter()
            for plan, bookings in work:
                _allocate(session, plan, bookings, free, taken, released, settings, now, planned)
            if hold_all(session, taken):
                insert_offers(session, offer_rows([offer for offers in planned.values() for offer in offers]))
                return planned
            savepoint.rollback()  # another writer took places after we read them: read again, allocate again
    raise RuntimeError(f"could not hold places after {ALLOCATION_ATTEMPTS} attempts: the alternatives' "
                       "capacity keeps changing under this planner")


def _earlier_holds(session: Session, work: list[tuple[SailingPlan, list[BookingRow]]]
                   ) -> dict[tuple[int, int], list[Offer]]:
    # A revised disruption replaces its earlier offers: their held places go back before new ones are taken.
    revised = {plan.facts.disruption.id: plan.facts.disruption.revision for plan, _ in work
               if plan.facts.disruption.revision > 1}
    ids = [booking.id for plan, bookings in work if plan.facts.disruption.id in revised for booking in bookings]
    earlier: dict[tuple[int, int], list[Offer]] = {}
    for page in pages(ids, PAGE):
        for offer in session.scalars(select(Offer).where(
                Offer.booking_id.in_(page), Offer.disruption_id.in_(list(revised)), Offer.status == HELD)
                .order_by(Offer.id)):
            if offer.revision < revised[offer.disruption_id]:
                earlier.setdefault((offer.booking_id, offer.disruption_id), []).append(offer)
    return earlier


def _free_places(session: Session, sailing_ids: set[int]) -> dict[tuple[int, str], int]:
    free = {}
    for page in pages(sorted(sailing_ids), PAGE):
        free.update({(sailing_id, space): capacity - booked - held for sailing_id, space, capacity, booked, held in
                     session.execute(select(SailingCapacity.sailing_id, SailingCapacity.space_class,
                                            SailingCapacity.capacity, SailingCapacity.booked, SailingCapacity.held)
                                     .where(SailingCapacity.sailing_id.in_(page)))})
    return free


def _allocate(session: Session, plan: SailingPlan, bookings: list[BookingRow], free: dict[tuple[int, str], int],
              taken: Counter, released: dict[tuple[int, int], list[Offer]], settings: Settings, now: datetime,
              planned: dict[tuple[int, int], list[PlannedOffer]]) -> None:
    facts, memos = plan.facts, plan.shared.setdefault("memos", _Memos())
    disruption = facts.disruption
    disruption_key = (disruption.id, disruption.revision)
    candidates: list[Candidate] = facts.candidates if rebooking_owed(disruption, settings) else []
    deadline = now + timedelta(hours=settings.offer_deadline_hours)
    hold_until = now + timedelta(minutes=settings.hold_minutes)
    per_booking = settings.offers_per_booking
    candidates_key = tuple(c.sailing_id for c in candidates)
    # Free places only shrink while a chunk is allocated (unless earlier holds are given back on the way), so an
    # alternative found full for a kind of place stays full for every later booking wanting that kind.
    pruning = not released
    for booking in bookings:
        for offer in released.get((booking.id, disruption.id), ()):
            for space, places in held_places(offer).items():
                if (offer.sailing_id, space) in free:
                    free[(offer.sailing_id, space)] += places  # given back just before this booking's turn
        terms = memos.terms(lambda row: _Terms(row, candidates, facts, settings), booking,
                            (candidates_key, disruption_key))
        wanted, items, suitable = terms.wanted, terms.items, terms.suitable.candidates
        still_open = terms.suitable.still_open(memos.chunk) if pruning else suitable
        offers: list[PlannedOffer] = []
        index = 0
        while index < len(still_open) and len(offers) < per_booking:
            candidate = still_open[index]
            shortest = min((free.get((candidate.sailing_id, space), -1) - places for space, places in items),
                           default=0)
            if shortest >= 0:
                for space, places in items:
                    free[(candidate.sailing_id, space)] -= places
                    taken[(candidate.sailing_id, space)] += places
                offers.append(_offer(booking, disruption_key, str(len(offers) + 1), "rebook", candidate.sailing_id,
                                     "held", hold_until, deadline, wanted))
            elif pruning and any(free.get((candidate.sailing_id, space), -1) <= 0 for space, _ in items):
                del still_open[index]  # full for one of these kinds of place: full for the rest of the chunk
                continue
            index += 1
        if not offers and suitable:
            offers.append(_offer(booking, disruption_key, "1", "standby", suitable[0].sailing_id, "open", None,
                                 deadline))
        if terms.refund is not None:
            offers.append(_money_offer(booking, disruption_key, REFUND_KEY, "refund", terms.refund, booking.currency,
                                       deadline))
        compensation = memos.compensation_of(session, facts, booking, terms.situation)
        if compensation is not None:
            offers.append(_money_offer(booking, disruption_key, COMPENSATION_KEY, "compensation", *compensation,
                                       deadline))
        planned[(booking.id, disruption.id)] = offers


class _Suitable:
    """The alternatives that suit a kind of booking, and those of them not yet found full in this chunk."""

    def __init__(self, candidates: list[Candidate]) -> None:
        self.candidates, self.open, self.chunk = candidates, list(candidates), -1

    def still_open(self, chunk: int) -> list[Candidate]:
        """The not-yet-full ones (all of them again in a new chunk: free places are read afresh)."""
        if self.chunk != chunk:
            self.open, self.chunk = list(self.candidates), chunk
        return self.open


class _Terms:
    """What `offers` and `entitlements` say about one kind of booking on one sailing: the places it needs, the
    alternatives that suit it, its refund, its situation (for compensation)."""

    def __init__(self, booking: BookingRow, candidates: list[Candidate], facts: SailingFacts, settings: Settings
                 ) -> None:
        disruption = facts.disruption
        self.wanted = needs(booking)
        self.items = tuple(self.wanted.items())
        self.suitable = _Suitable([c for c in candidates if suits(c, booking, self.wanted)])
        self.refund = refund_amount(booking, disruption, settings)
        self.situation = entitlements.situation_of(booking, facts.sailing, facts.route, disruption)


class _Memos:
    """What allocation asks of `offers` and `entitlements` per booking, remembered per distinct input for the
    whole broadcast (shapes.AttributeMemo: keyed by the booking attributes those functions read)."""

    def __init__(self) -> None:
        self.terms = AttributeMemo()
        self.chunk = 0
        self.compensation: dict[tuple, tuple[Decimal, str] | None] = {}
        self.policies: dict[int, str] = {}

    def compensation_of(self, session: Session, facts: SailingFacts, booking: BookingRow, situation: Situation
                        ) -> tuple[Decimal, str] | None:
        """`entitlements.compensation`, once per (policies, situation): it depends on nothing else."""
        disruption = facts.disruption
        if disruption.id not in self.policies:
            self.policies[disruption.id] = json.dumps(disruption.policy, sort_keys=True, default=str)
        key = (self.policies[disruption.id], situation)
        if key not in self.compensation:
            self.compensation[key] = entitlements.compensation(session, booking, disruption)
        return self.compensation[key]

    def new_chunk(self) -> None:
        """Free places are read again for each chunk (and each retry): what was found full may have room again."""
        self.chunk += 1


def _offer(booking: BookingRow, disruption: tuple[int, int], key: str, kind: str, sailing_id: int | None,
           status: str, hold_until: datetime | None, deadline: datetime, holds: dict[str, int] | None = None
           ) -> PlannedOffer:
    return PlannedOffer(booking.id, disruption[0], disruption[1], key, kind, sailing_id, booking.space_class,
                        booking.places, status, hold_until, deadline, dict(holds or {}))


def _money_offer(booking: BookingRow, disruption: tuple[int, int], key: str, kind: str, amount: Decimal,
                 currency: str, deadline: datetime) -> PlannedOffer:
    offer = _offer(booking, disruption, key, kind, None, "open", None, deadline)
    offer.amount, offer.currency = amount, currency
    return offer


def hold_all(session: Session, taken: Counter) -> bool:
    """One conditional UPDATE per (sailing, class), as one executemany: True when every one matched its row."""
    if not taken:
        return True
    mark = "?" if session.connection().dialect.paramstyle == "qmark" else "%s"
    sql = (f"UPDATE sailing_capacities SET held = held + {mark} WHERE sailing_id = {mark} AND space_class = {mark} "
           f"AND capacity - booked - held >= {mark}")
    rows = [(places, sailing_id, space, places) for (sailing_id, space), places in sorted(taken.items())]
    return session.connection().exec_driver_sql(sql, rows).rowcount == len(rows)


def insert_offers(session: Session, rows: list[tuple]) -> None:
    """Write offers given as tuples in OFFER_COLUMNS order (offer_rows): plain values cross to a writer process
    cheaply."""
    if rows:
        bulk_insert(session, Offer.__table__, OFFER_COLUMNS, rows, constants={"created_at": utcnow()})


def offer_rows(offers: list[PlannedOffer]) -> list[tuple]:
    """Planned offers as rows in OFFER_COLUMNS order."""
    return list(map(_OFFER_ROW, offers))


class FreePlaces:
    """Free places on the alternatives while a broadcast is planned ahead of its writes: each sailing's counters
    read once, then kept here as chunks take places (the writes are not committed yet, so the database lags).
    The conditional UPDATE that holds the places keeps it honest: places another writer took in the meantime
    make it match nothing, and the chunk is planned again the ordinary way."""

    def __init__(self) -> None:
        self.places: dict[tuple[int, str], int] = {}
        self.read: set[int] = set()

    def of(self, session: Session, sailing_ids: set[int]) -> dict[tuple[int, str], int]:
        """The counters, with those of sailings not seen before read now."""
        unread = sailing_ids - self.read
        if unread:
            self.places.update(_free_places(session, unread))
            self.read |= unread
        return self.places


def allocate_ahead(session: Session, work: list[tuple[SailingPlan, list[BookingRow]]], settings: Settings,
                   now: datetime, free: FreePlaces) -> tuple[dict[tuple[int, int], list[PlannedOffer]], Counter]:
    """As `allocate_offers`, for a chunk planned ahead of its writes: places are taken from `free` (nothing is held
    yet); the offers by (booking, disruption), and the places to hold per (sailing, class)."""
    planned: dict[tuple[int, int], list[PlannedOffer]] = {}
    taken: Counter = Counter()
    places = free.of(session, {c.sailing_id for plan, _ in work if rebooking_owed(plan.facts.disruption, settings)
                               for c in plan.facts.candidates})
    for plan, _ in work:
        plan.shared.setdefault("memos", _Memos()).new_chunk()
    for plan, bookings in work:
        _allocate(session, plan, bookings, places, taken, {}, settings, now, planned)
    return planned, taken
