"""A broadcast cut into chunks: its disrupted sailings read once (`SailingPlans`), their bookings taken in planning
order and cut into chunks that may span several sailings, the first small and then growing (`ChunkSizes`).

Each chunk is then planned whole (notifier.planning.plan): its holds, offers and notices commit together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.planning.audience import AUDIENCE_KINDS, NOTICE_ONLY_KINDS, audience_of
from notifier.planning.notices import SailingFacts
from notifier.store.capacity import Candidate, candidates_for
from notifier.planning.shapes import ShapeBook
from notifier.store.bulk import read_where_in
from notifier.store.models import Booking, Broadcast, Customer, Disruption, Port, Route, Sailing, Vessel
from notifier.store.settings import Settings
from notifier.store.status import ACTIVE, CONFIRMED

# Bookings per planning transaction: the first chunk is small so the first notices are dispatchable at once,
# then chunks grow to the largest size asked for (planning.plan.MAX_CHUNK; see ChunkSizes).
FIRST_CHUNK = 10


@dataclass(frozen=True)
class NoticeSpec:
    """What the planning core varies by broadcast: the operator's free text, whether places are held, the key."""

    reason: str | None = None
    new_offers: bool = True
    key_suffix: str = ""

    @classmethod
    def of(cls, broadcast: Broadcast, disruption: Disruption, settings: Settings) -> NoticeSpec:
        """A manual advisory is a notice of its own (its dedup key names the broadcast). A manual broadcast holds
        places only where the customer is owed a choice: a cancellation, or a delay beyond the refund threshold;
        an automatic one always, except an all-clear or an advisory (notices without offers)."""
        manual = broadcast.origin == "manual"
        owed_choice = broadcast.kind == "cancelled" or (
            broadcast.kind == "delayed" and (disruption.delay_minutes or 0) > settings.refund_delay_minutes)
        new_offers = owed_choice if manual else broadcast.kind not in NOTICE_ONLY_KINDS
        return cls(reason=broadcast.reason, new_offers=new_offers,
                   key_suffix=f":notice:{broadcast.id}" if manual and broadcast.kind == "advisory" else "")


class ChunkSizes:
    """How many bookings each planning transaction takes: a small first chunk, so the first notices are
    dispatchable within moments of planning starting, then growing to `largest` (fewer, bigger transactions)."""

    def __init__(self, largest: int, first: int = FIRST_CHUNK, growth: int = 4) -> None:
        self.largest, self.size, self.growth = max(1, largest), max(1, min(first, largest)), growth

    def next(self) -> int:
        """The size of the next chunk."""
        size = self.size
        self.size = min(self.largest, self.size * self.growth)
        return size


def cut_chunks(sailings: SailingPlans, order: list[tuple[int, bool | None]], sizes: ChunkSizes
               ) -> Iterator[list[ChunkPart]]:
    """The broadcast's bookings in planning order (`offers.planning_order`: which sailing and which accessibility
    group takes scarce places first, then booking order), cut into chunks that may span several sailings."""
    groups_left = Counter(disruption_id for disruption_id, _ in order)
    parts: list[ChunkPart] = []
    room = sizes.next()
    for disruption_id, accessibility in order:
        plan = sailings.plan(disruption_id)
        groups_left[disruption_id] -= 1
        if plan is None:
            continue
        ids = plan.bookings.pop(accessibility)
        while True:
            taken, ids = ids[:room], ids[room:]
            parts.append(ChunkPart(plan, taken, last=not ids and groups_left[disruption_id] == 0))
            room -= len(taken)
            if room > 0:
                break
            yield parts
            parts, room = [], sizes.next()
            if not ids:
                break
    if parts:
        yield parts


@dataclass
class SailingPlan:
    """What planning needs about one disrupted sailing of a broadcast, read once."""

    facts: SailingFacts
    template: str
    channels: list[str]
    notice: NoticeSpec
    book: ShapeBook
    bookings: dict[bool | None, list[int]]  # accessibility group (None: all) -> booking ids, in booking order
    shared: dict[str, Any]  # what every sailing of the broadcast shares (the compensation owed per situation)


@dataclass
class ChunkPart:
    """Some of one sailing's bookings in one chunk; `last` when they finish that sailing's plan."""

    plan: SailingPlan
    booking_ids: list[int]
    last: bool


class SailingPlans:
    """A broadcast's disrupted sailings: read together once (disruptions, sailings, routes, ports), each made a
    SailingPlan (its alternatives, its bookings) when planning reaches it, alternatives shared between sailings
    that look for them in the same place."""

    def __init__(self, factory: sessionmaker[Session], broadcast_id: int, disruption_ids: list[int],
                 settings: Settings) -> None:
        self.factory, self.settings = factory, settings
        with factory() as session:
            self.broadcast = session.get(Broadcast, broadcast_id)
            self.rows = {disruption.id: (disruption, sailing) for disruption, sailing in session.execute(
                select(Disruption, Sailing).join(Sailing, Sailing.id == Disruption.sailing_id)
                .where(Disruption.id.in_(disruption_ids)))}
            sailings = [sailing for _, sailing in self.rows.values()]
            self.ports = {p.id: p for p in session.scalars(select(Port))}
            self.routes = {r.id: r for r in session.scalars(select(Route).where(
                Route.id.in_({s.route_id for s in sailings})))}
            self.vessels = {v.id: v.name for v in session.scalars(select(Vessel).where(
                Vessel.id.in_({s.vessel_id for s in sailings if s.vessel_id})))}
            session.expunge_all()
        self.departures = {d: self.rows[d][1].scheduled_departure for d in disruption_ids}
        self.kinds = AUDIENCE_KINDS.get(self.broadcast.audience, AUDIENCE_KINDS["all"])
        self.candidates: dict[tuple, list[Candidate]] = {}
        self.shared: dict[str, Any] = {}
        self.made: dict[int, SailingPlan | None] = {}

    def booking_count(self) -> int:
        """How many bookings the broadcast's sailings carry (confirmed, of its audience): one count query."""
        with self.factory() as session:
            return session.scalar(select(func.count()).select_from(Booking).where(
                Booking.sailing_id.in_({sailing.id for _, sailing in self.rows.values()}),
                Booking.status == CONFIRMED, Booking.kind.in_(self.kinds))) or 0

    def plan(self, disruption_id: int) -> SailingPlan | None:
        """The plan of one disrupted sailing (None when it is already planned and no longer active)."""
        if disruption_id not in self.made:
            self.made[disruption_id] = self._make(disruption_id)
        return self.made[disruption_id]

    def _make(self, disruption_id: int) -> SailingPlan | None:
        disruption, sailing = self.rows[disruption_id]
        if disruption.planned_revision >= disruption.revision and disruption.status != ACTIVE:
            return None
        with self.factory() as session:
            candidates = self._candidates(session, disruption, sailing)
            rows = session.execute(select(Booking.id, Booking.accessibility_needs)
                                   .where(*audience_of(self.broadcast, disruption)).order_by(Booking.id)).all()
        facts = SailingFacts(disruption=disruption, sailing=sailing, origin=self.ports[sailing.origin_port_id],
                             destination=self.ports[sailing.destination_port_id], route=self.routes[sailing.route_id],
                             candidates=candidates, candidate_ports=self.ports if candidates else {},
                             vessel_name=self.vessels.get(sailing.vessel_id, ""))
        broadcast, notice = self.broadcast, NoticeSpec.of(self.broadcast, disruption, self.settings)
        return SailingPlan(facts, broadcast.template, list(broadcast.channels), notice,
                           ShapeBook(facts, broadcast.template, self.settings, notice.reason),
                           {None: [i for i, _ in rows], True: [i for i, needs in rows if needs],
                            False: [i for i, needs in rows if not needs]}, self.shared)

    def _candidates(self, session: Session, disruption: Disruption, sailing: Sailing) -> list[Candidate]:
        # `capacity.candidates_for` depends on the ports, the route (first), and the moment after which to look;
        # on the sailing itself only when it departs after that moment (it is never its own alternative).
        after = max(filter(None, [disruption.window_end, sailing.scheduled_departure]))
        key = (sailing.origin_port_id, sailing.destination_port_id, sailing.route_id, after,
               sailing.id if sailing.scheduled_departure >= after else None)
        if key not in self.candidates:
            session.add(sailing)  # candidates_for reads it through the session
            self.candidates[key] = candidates_for(session, disruption)
            session.expunge(sailing)
        return self.candidates[key]


# --- what a chunk reads of its bookings -------------------------------------------------------------------------

@dataclass(slots=True)
class BookingRow:
    """What planning reads of a booking (a plain row, not an ORM object: 100,000 of them are cheap)."""

    id: int
    ref: str
    kind: str
    customer_id: int
    sailing_id: int
    space_class: str
    party_size: int
    vehicles: int
    accessibility_needs: bool
    containers: int
    teu: int
    reefer_plugs: int
    dangerous_goods: bool
    fare_paid: Decimal
    currency: str

    @property
    def places(self) -> int:
        """How many places of `space_class` this booking occupies (as Booking.places)."""
        return self.teu if self.kind == "cargo" else self.party_size


@dataclass(slots=True)
class CustomerRow:
    """What planning reads of a customer."""

    id: int
    name: str
    phone: str | None
    email: str | None
    language: str
    channels: list[Any]
    contact_check: dict[str, Any] | None


BOOKING_FIELDS = tuple(BookingRow.__dataclass_fields__)
CUSTOMER_FIELDS = tuple(CustomerRow.__dataclass_fields__)


def read_chunk(session: Session, booking_ids: list[int]) -> dict[int, tuple[BookingRow, CustomerRow]]:
    """The chunk's bookings with their customers, by booking id (read by the driver: store.bulk.read_where_in)."""
    columns = [Booking.__table__.c[name] for name in BOOKING_FIELDS] + \
              [Customer.__table__.c[name] for name in CUSTOMER_FIELDS]
    width = len(BOOKING_FIELDS)
    return {values[0]: (BookingRow(*values[:width]), CustomerRow(*values[width:])) for values in read_where_in(
        session, columns, "bookings JOIN customers ON customers.id = bookings.customer_id", "bookings.id",
        booking_ids)}
