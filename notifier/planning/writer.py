"""Planning at scale: one chunk of bookings into offers and rendered outbox rows, in bulk, in one transaction.

`broadcasts.plan_broadcast` cuts a broadcast's bookings, in planning order, into chunks (which may span several
disrupted sailings) and calls `plan_chunk` for each; what a chunk commits (its holds, offers and notices,
together) is dispatchable at once. Per chunk, whatever its number of bookings and sailings, the database sees a
handful of statements:

- one read of the bookings with their customers, one of offers already made to them, one of opt-outs among the
  chunk's addresses (and, for a revised disruption, one of the earlier revision's held places to give back);
- the alternatives' free places read once (locked first on PostgreSQL), places allocated in Python booking by
  booking in planning order exactly as `offers.make_offers` would, then written with one conditional UPDATE per
  (sailing, space class), sent as one executemany: `held = held + n WHERE capacity - booked - held >= n`. The
  WHERE keeps it race-free: should another writer have taken places after we read them, an UPDATE matches
  nothing, the chunk's savepoint is rolled back and the allocation is made again from fresh counters;
- offers and notices written with executemany (the notices with ON CONFLICT DO NOTHING on the dedup key, so a
  notice planned before, by this or another broadcast, is skipped and counted);
- the stored contact checks of customers whose phone or email changed (notifier.contacts).

Messages come from `shapes.ShapeBook`: one render per notice shape, the per-person values put in per booking
(`fill_rows`, where the chunk is written).

A chunk may be planned ahead of its writes (`prepare_chunk`, then `write_ahead`): on PostgreSQL a thread writes
the chunk before while the next is planned (`ChunkWriter`); on SQLite, for a broadcast large enough to pay for it,
a second process does (`WriterProcess`, `writer_main`), so that planning and SQLite's writing use both cores.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from multiprocessing.connection import Connection
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event, or_, select, update
from sqlalchemy.orm import Session

from notifier.rules import entitlements
from notifier.planning.audience import Unreachable
from notifier.planning.contacts import contact_check, is_current, recipients_checked, store_checks
from notifier.store.db import pages, transaction
from notifier.store.models import Booking, Customer, Disruption, Notification, Offer, OptOut, SailingCapacity, utcnow
from notifier.planning.offers import (COMPENSATION_KEY, REFUND_KEY, Candidate, held_places, lock_capacity, needs,
                                      rebooking_owed, refund_amount, release, suits)
from notifier.planning.notices import dedup_key
from notifier.planning.shapes import AttributeMemo, Unfilled

ALLOCATION_ATTEMPTS = 3
PAGE = 5000  # ids per IN list: one statement for a whole chunk, well under every engine's parameter limit
NOTICE_COLUMNS = ("dedup_key", "booking_id", "customer_id", "disruption_id", "revision", "broadcast_id", "channel",
                  "recipient", "language", "template", "purpose", "subject", "body_text", "body_html", "segments",
                  "safety_critical", "status", "priority", "attempts")
OFFER_COLUMNS = ("booking_id", "disruption_id", "revision", "option_key", "kind", "sailing_id", "space_class",
                 "places", "amount", "currency", "status", "hold_expires_at", "holds", "deadline")
_OFFER_ROW = attrgetter(*OFFER_COLUMNS)  # a PlannedOffer's values in column order (its fields bear their names)


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


BOOKING_FIELDS = tuple(BookingRow.__dataclass_fields__)
CUSTOMER_FIELDS = tuple(CustomerRow.__dataclass_fields__)


def read_chunk(session: Session, booking_ids: list[int]) -> dict[int, tuple[BookingRow, CustomerRow]]:
    """The chunk's bookings with their customers, by booking id (read by the driver, values converted by the
    columns' own types, each distinct value once)."""
    connection = session.connection()
    dialect = connection.dialect
    columns = [Booking.__table__.c[name] for name in BOOKING_FIELDS] + \
              [Customer.__table__.c[name] for name in CUSTOMER_FIELDS]
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    selected = ", ".join(f"{column.table.name}.{column.name}" for column in columns)
    width = len(BOOKING_FIELDS)
    found: dict[int, tuple[BookingRow, CustomerRow]] = {}
    processors = None
    for page in pages(booking_ids, PAGE):
        result = connection.exec_driver_sql(
            f"SELECT {selected} FROM bookings JOIN customers ON customers.id = bookings.customer_id "
            f"WHERE bookings.id IN ({', '.join([mark] * len(page))})", tuple(page))
        if processors is None:
            processors = [(index, processor) for index, (column, described) in
                          enumerate(zip(columns, result.cursor.description, strict=True))
                          if (processor := column.type.dialect_impl(dialect).result_processor(
                              dialect, described[1])) is not None]
        rows = result.fetchall()
        if rows:
            for values in _converted_result(rows, processors):
                found[values[0]] = (BookingRow(*values[:width]), CustomerRow(*values[width:]))
    return found


def _converted_result(rows: list[Any], processors: list[tuple[int, Any]]) -> list[tuple]:
    # Column by column, as _converted does for writes: a column's distinct values converted once (fares, flags,
    # channel lists repeat), a column of unique values (contact checks) value by value; lists and documents are
    # copied so that no two rows share one.
    columns: list[Any] = list(zip(*rows, strict=True))
    for index, processor in processors:
        column = columns[index]
        try:
            distinct = set(column)
        except TypeError:  # the driver gave documents already (unhashable): value by value
            distinct = None
        if distinct is None or 2 * len(distinct) > len(column):
            converted = [None if value is None else processor(value) for value in column]
        else:
            known = {value: None if value is None else processor(value) for value in distinct}
            converted = list(map(known.__getitem__, column))
            if any(isinstance(value, list | dict) for value in known.values()):
                converted = [_copy(value) if isinstance(value, list | dict) else value for value in converted]
        columns[index] = converted
    return list(zip(*columns, strict=True))


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value)


@dataclass
class PlanResult:
    """What planning did, for the CLI summary and the preview."""

    broadcast_id: int
    notifications: int = 0
    bookings: int = 0
    by_channel_language: Counter = field(default_factory=Counter)
    unreachable: list[Unreachable] = field(default_factory=list)
    skipped_existing: int = 0
    segments: int = 0
    # (other broadcast, disruption, revision) -> bookings whose notice that broadcast already planned
    skipped_by: dict[tuple[int, int, int], set[int]] = field(default_factory=dict)

    def add(self, done: PlanResult, kept: PlanResult | None = None) -> None:
        """Add what one chunk did (written in the writer process; `kept`: what stayed here) to this broadcast's
        result."""
        if kept is not None:
            self.add(kept)
        self.notifications += done.notifications
        self.bookings += done.bookings
        self.by_channel_language.update(done.by_channel_language)
        self.unreachable.extend(done.unreachable)
        self.skipped_existing += done.skipped_existing
        self.segments += done.segments
        for key, bookings in done.skipped_by.items():
            self.skipped_by.setdefault(key, set()).update(bookings)


# --- offers --------------------------------------------------------------------------------------------------------

def offers_made(session: Session, booking_ids: list[int]) -> dict[tuple[int, int, int], list[Any]]:
    """Offers these bookings already have, by (booking, disruption, revision): another broadcast made them."""
    made: dict[tuple[int, int, int], list[Any]] = {}
    ids = [offer_id for (offer_id,) in _rows_where_in(session, f"SELECT id FROM {Offer.__tablename__}",
                                                      "booking_id", booking_ids)]
    for page in pages(sorted(ids), PAGE):  # usually none: a first warning finds no offers yet
        for offer in session.execute(select(Offer.__table__).where(Offer.id.in_(page)).order_by(Offer.id)):
            made.setdefault((offer.booking_id, offer.disruption_id, offer.revision), []).append(offer)
    return made


def _rows_where_in(session: Session, query: str, column: str, values: list[Any]) -> list[tuple]:
    # A plain column list with `column IN (...)` over many values, sent to the driver as it is: SQLAlchemy would
    # compile a fresh statement with one named parameter per value, for every page of every chunk.
    connection = session.connection()
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    rows: list[tuple] = []
    for page in pages(values, PAGE):
        rows += connection.exec_driver_sql(f"{query} WHERE {column} IN ({', '.join([mark] * len(page))})",
                                           tuple(page)).fetchall()
    return rows


def allocate_offers(session: Session, work: list[tuple[Any, list[BookingRow]]], settings: Any, now: datetime
                    ) -> dict[tuple[int, int], list[PlannedOffer]]:
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
            if _hold_all(session, taken):
                _insert_offers(session, offer_rows([offer for offers in planned.values() for offer in offers]))
                return planned
            savepoint.rollback()  # another writer took places after we read them: read again, allocate again
    raise RuntimeError(f"could not hold places after {ALLOCATION_ATTEMPTS} attempts: the alternatives' "
                       "capacity keeps changing under this planner")


def _earlier_holds(session: Session, work: list[tuple[Any, list[BookingRow]]]) -> dict[tuple[int, int], list[Offer]]:
    # A revised disruption replaces its earlier offers: their held places go back before new ones are taken.
    revised = {plan.facts.disruption.id: plan.facts.disruption.revision for plan, _ in work
               if plan.facts.disruption.revision > 1}
    ids = [booking.id for plan, bookings in work if plan.facts.disruption.id in revised for booking in bookings]
    earlier: dict[tuple[int, int], list[Offer]] = {}
    for page in pages(ids, PAGE):
        for offer in session.scalars(select(Offer).where(
                Offer.booking_id.in_(page), Offer.disruption_id.in_(list(revised)), Offer.status == "held")
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


def _allocate(session: Session, plan: Any, bookings: list[BookingRow], free: dict[tuple[int, str], int],
              taken: Counter, released: dict[tuple[int, int], list[Offer]], settings: Any, now: datetime,
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

    def __init__(self, booking: Any, candidates: list[Candidate], facts: Any, settings: Any) -> None:
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

    def compensation_of(self, session: Session, facts: Any, booking: BookingRow, situation: Any
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


def _hold_all(session: Session, taken: Counter) -> bool:
    """One conditional UPDATE per (sailing, class), as one executemany: True when every one matched its row."""
    if not taken:
        return True
    mark = "?" if session.connection().dialect.paramstyle == "qmark" else "%s"
    sql = (f"UPDATE sailing_capacities SET held = held + {mark} WHERE sailing_id = {mark} AND space_class = {mark} "
           f"AND capacity - booked - held >= {mark}")
    rows = [(places, sailing_id, space, places) for (sailing_id, space), places in sorted(taken.items())]
    return session.connection().exec_driver_sql(sql, rows).rowcount == len(rows)


def _insert_offers(session: Session, rows: list[tuple]) -> None:
    # `rows`: offers as tuples in OFFER_COLUMNS order (offer_rows): plain values cross to a writer process cheaply.
    if rows:
        bulk_insert(session, Offer.__table__, OFFER_COLUMNS, rows, constants={"created_at": utcnow()})


def offer_rows(offers: list[PlannedOffer]) -> list[tuple]:
    """Planned offers as rows in OFFER_COLUMNS order."""
    return list(map(_OFFER_ROW, offers))


# --- recipients and notices ----------------------------------------------------------------------------------------

def opted_out_among(session: Session, addresses: set[str]) -> frozenset[tuple[str, str]]:
    """The (channel, address) opt-outs among these addresses (not the whole table: it can be large)."""
    return frozenset((channel, address) for channel, address in _rows_where_in(
        session, f"SELECT channel, address FROM {OptOut.__tablename__}", "address", sorted(addresses)))


def checked_contacts(customers: list[CustomerRow]) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Each customer's current contact check, and the ones that had to be made now (to be stored)."""
    checks, fresh = {}, {}
    for customer in customers:
        if customer.id in checks:
            continue
        check = customer.contact_check
        if not is_current(check, customer.phone, customer.email):
            check = fresh[customer.id] = contact_check(customer.phone, customer.email)
        checks[customer.id] = check
    return checks, fresh


@dataclass
class ChunkNotices:
    """What one chunk planned: the outbox rows, the bookings, and who could not be reached."""

    rows: list[tuple] = field(default_factory=list)
    bookings: int = 0
    unreachable: list[Unreachable] = field(default_factory=list)


def plan_chunk(session: Session, broadcast_id: int, parts: list[Any], settings: Any, now: datetime,
               initial_status: str, result: Any) -> None:
    """Plan one chunk: `parts` are (sailing plan, booking ids) in planning order (broadcasts.ChunkPart)."""
    chunk, made, work = _chunk_work(session, parts)
    planned = allocate_offers(session, work, settings, now) if work else {}
    notices, fresh = _chunk_notices(session, parts, chunk, made, planned, settings, broadcast_id, initial_status)
    store_checks(session, fresh)
    _commit_notices(session, broadcast_id, notices, result)


@dataclass
class PreparedChunk:
    """A chunk planned in memory (places to hold, offers, contact checks, notices): `write_ahead` writes it."""

    taken: Counter
    offers: list[tuple]  # rows in OFFER_COLUMNS order
    checks: dict[int, dict[str, Any]]
    notices: ChunkNotices


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


def prepare_chunk(session: Session, parts: list[Any], settings: Any, now: datetime, initial_status: str,
                  broadcast_id: int, free: FreePlaces) -> PreparedChunk:
    """Plan one chunk of a first-revision broadcast without writing: the allocation takes places from `free`."""
    chunk, made, work = _chunk_work(session, parts)
    planned: dict[tuple[int, int], list[PlannedOffer]] = {}
    taken: Counter = Counter()
    if work:
        places = free.of(session, {c.sailing_id for plan, _ in work if rebooking_owed(plan.facts.disruption, settings)
                                   for c in plan.facts.candidates})
        for plan, _ in work:
            plan.shared.setdefault("memos", _Memos()).new_chunk()
        for plan, bookings in work:
            _allocate(session, plan, bookings, places, taken, {}, settings, now, planned)
    notices, fresh = _chunk_notices(session, parts, chunk, made, planned, settings, broadcast_id, initial_status)
    return PreparedChunk(taken, offer_rows([offer for offers in planned.values() for offer in offers]), fresh, notices)


class ChunkWriter:
    """Writes prepared chunks in a thread of its own, each in one transaction, while the next chunk is planned:
    the database does its writing (SQLite's B-trees, PostgreSQL's COPY) outside the GIL, so planning and writing
    overlap on two cores. At most one chunk waits to be written (memory stays flat). A chunk whose places were
    taken by another writer meanwhile is not written, nor is anything after it: `close` hands those chunks back
    to be planned again the ordinary way."""

    def __init__(self, factory: Any, write: Any) -> None:
        self.factory, self.write = factory, write
        self.ready = True  # a thread is there at once
        self.waiting: queue.Queue = queue.Queue(maxsize=1)
        self.unwritten: list[list[Any]] = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="notifier-chunk-writer", daemon=True)
        self.thread.start()

    @property
    def stopped(self) -> bool:
        """True once a chunk could not be written: the rest are planned again by the caller."""
        return bool(self.unwritten) or self.failure is not None

    def put(self, parts: list[Any], prepared: PreparedChunk) -> None:
        """Queue a prepared chunk (waits while the one before is still waiting); a write that failed is raised
        here, so the planner stops at once."""
        if self.failure is not None:
            raise self.failure
        self.waiting.put((parts, prepared))

    def close(self, quietly: bool = False) -> list[list[Any]]:
        """Wait for the queued writes; the chunks not written, in order (a failed write is raised instead,
        unless `quietly`: the caller is already raising)."""
        if self.thread.is_alive():
            self.waiting.put(None)
            self.thread.join()
        if self.failure is not None and not quietly:
            raise self.failure
        return self.unwritten

    def _run(self) -> None:
        while (item := self.waiting.get()) is not None:
            parts, prepared = item
            if self.stopped:
                self.unwritten.append(parts)
                continue
            try:
                with transaction(self.factory) as session:
                    if not self.write(session, parts, prepared):
                        raise _PlacesTaken
            except _PlacesTaken:
                self.unwritten.append(parts)
            except BaseException as exc:  # noqa: BLE001 - handed to the planning thread, which raises it
                self.failure = exc


class _PlacesTaken(Exception):
    """Rolls a chunk's transaction back: another writer took places it counted on."""


class WriterProcess:
    """Writes prepared chunks in a process of its own (SQLite), each in one transaction, while this process plans
    the next: sqlite3 holds the GIL while it binds every row, so a writer thread slows the planner down as much as
    it helps, but a second process plans and writes on two cores at once. The same contract as ChunkWriter
    (`ready`, `stopped`, `put`, `close`), plus:
    - until the process has started (its imports take a moment) `ready` is False, and the caller plans the first
      small chunks the ordinary way: the first notices are never held back;
    - `write(session, item)` runs in the writer process (a module-level function: it is sent by name) and returns
      what the chunk did, handed to `merge` here at `close` (with what `put` kept here), or None when its places
      were taken meanwhile; from then on the writer writes nothing more (`close` hands those chunks back, in
      order);
    - chunks stream: the writer receives the next while it writes one (the socket and one waiting chunk bound
      the memory), and a thread of ours collects the outcomes, so neither side waits on the other's hand-over;
    - a writer process that dies takes nothing with it: the chunk it was writing (committed whole or not at all)
      and the rest come back from `close`, to be planned again the ordinary way, which skips what was committed."""

    def __init__(self, url: str, write: Any, merge: Any) -> None:
        # A fresh interpreter running only the writer (not multiprocessing's spawn, which would import the
        # caller's main module again: a script without a __main__ guard would run twice). It finds this very
        # package first, and learns the database from the socket, not from its command line (`ps` shows that).
        ours, theirs = socket.socketpair()
        package_home = str(Path(__file__).resolve().parents[1])
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [package_home, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from notifier.planning.writer import writer_main; writer_main()", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=environment, stdin=subprocess.DEVNULL)
        theirs.close()
        self.connection = Connection(ours.detach())
        self.connection.send((url, write))
        self.merge = merge
        self.started = self.gone = False
        self.sent: deque[tuple[list[Any], Any]] = deque()  # chunks sent, outcome not yet known, in order
        self.done: list[Any] = []
        self.unwritten: list[list[Any]] = []  # taken or skipped by the writer, in order
        self.unsent: list[list[Any]] = []
        self.failure: BaseException | None = None
        self.outcomes = threading.Thread(target=self._collect, name="notifier-writer-outcomes", daemon=True)

    @property
    def ready(self) -> bool:
        """True once the writer process is up (never blocks); False for good if it died before that."""
        return self._answered_ready(0)

    def wait_until_ready(self, timeout: float = 60) -> bool:
        """Wait for the writer process to be up (True) or gone (False)."""
        return self._answered_ready(timeout)

    def _answered_ready(self, timeout: float) -> bool:
        if not self.started and not self.gone and self.connection.poll(timeout):
            try:
                outcome, _ = self.connection.recv()
            except (EOFError, OSError):
                outcome = "gone"
            self.started, self.gone = outcome == "ready", outcome != "ready"
            if self.started:
                self.outcomes.start()
        return self.started and not self.gone

    @property
    def stopped(self) -> bool:
        """True once a chunk could not be written: the rest are planned again by the caller."""
        return bool(self.unwritten or self.unsent) or self.failure is not None or self.gone

    def put(self, parts: list[Any], item: Any, kept: Any = None) -> None:
        """Send a prepared chunk (waits only while the writer is a chunk behind); `kept`: what of it stays here,
        handed to `merge` with what the writer did once it is written. A write that failed is raised here, so the
        planner stops at once."""
        if self.failure is not None:
            raise self.failure
        if self.stopped:
            self.unsent.append(parts)
            return
        self.sent.append((parts, kept))  # before sending: its outcome may come back at once
        try:
            self.connection.send(item)
        except OSError:  # the writer is gone: this chunk (and what it had not answered) is planned again
            self.sent.pop()
            self.unsent.append(parts)

    def close(self, quietly: bool = False) -> list[list[Any]]:
        """Wait for the chunks sent to be written and stop the process; the chunks not written, in order (a
        failed write is raised instead, unless `quietly`: the caller is already raising)."""
        with suppress(OSError):  # gone already
            self.connection.send(None)
        if self.outcomes.is_alive():
            self.outcomes.join()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.connection.close()
        for done, kept in self.done:
            self.merge(done, kept)
        if self.failure is not None and not quietly:
            raise self.failure
        return [*self.unwritten, *(parts for parts, _ in self.sent), *self.unsent]

    def _collect(self) -> None:
        # The outcomes thread: one answer per chunk sent, in order, until the writer process ends.
        while True:
            try:
                outcome, value = self.connection.recv()
            except (EOFError, OSError):
                self.gone = True  # what is still in `sent` was not written (or not known to be: planned again)
                return
            parts, kept = self.sent.popleft()
            if outcome == "written":
                self.done.append((value, kept))
            elif outcome == "failed":
                self.failure = value
            else:  # taken, or skipped after a chunk that could not be written
                self.unwritten.append(parts)


def write_ahead(session: Session, item: tuple[int, dict[int, int], PreparedChunk]) -> PlanResult | None:
    """Write one chunk planned ahead (in the caller's transaction; by the writer thread or process), with the
    planned revision of the sailings it finishes (`finished`: disruption -> revision); what it did, or None, with
    nothing written, when another writer took some of its places since they were counted."""
    broadcast_id, finished, prepared = item
    done = PlanResult(broadcast_id)
    defer_checkpoint(session)
    if not _hold_all(session, prepared.taken):
        return None
    _insert_offers(session, prepared.offers)
    store_checks(session, prepared.checks)
    _commit_notices(session, broadcast_id, prepared.notices, done)
    mark_finished(session, finished)
    return done


def mark_finished(session: Session, finished: dict[int, int]) -> None:
    """Record the planned revision of the sailings (disruption -> revision) a chunk finished."""
    for disruption_id, revision in finished.items():
        session.execute(update(Disruption).where(Disruption.id == disruption_id).values(planned_revision=revision))


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a broadcast is planned or written: planning allocates millions
    of short-lived, acyclic objects (rows, tuples, small dicts), and the collector would walk the whole heap again
    and again to find next to nothing (~2 s of ~7 for bench_plan's 150,000 notices). Reference counting still
    frees everything planning drops; the few cycles made meanwhile wait for the collector's next run."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def writer_main() -> None:
    """The writer process (WriterProcess): one transaction per chunk, in order, until told to stop or the planner
    is gone; after a chunk that could not be written, the rest are skipped (the planner plans them again)."""
    from notifier.store.db import make_engine, session_factory

    # Ctrl-C at the terminal reaches the whole process group: the planner stops and tells this process, which
    # finishes the chunk in hand (one transaction) and ends, without a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection = Connection(int(sys.argv[1]))
    try:
        url, write = connection.recv()
    except (EOFError, OSError):
        return
    engine = make_engine(url)
    factory = session_factory(engine)
    chunks: queue.Queue = queue.Queue(maxsize=1)  # received while the one before is written
    receiver = threading.Thread(target=_receive, args=(connection, chunks), daemon=True)
    gc.disable()  # this process only writes chunks (see collector_paused)
    try:
        connection.send(("ready", None))
        receiver.start()
        stopped = False
        while (item := chunks.get()) is not None:
            if stopped:
                connection.send(("skipped", None))
                continue
            try:
                with transaction(factory) as session:
                    done = write(session, item)
                    if done is None:
                        raise _PlacesTaken
                connection.send(("written", done))
            except _PlacesTaken:
                stopped = True
                connection.send(("taken", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the planner, which raises it
                stopped = True
                connection.send(("failed", _portable(exc)))
    except OSError:
        return  # the planner is gone: what it sent is written whole or not at all
    finally:
        engine.dispose()


def _receive(connection: Connection, chunks: queue.Queue) -> None:
    # The writer's receiving thread: the next chunk arrives (and is unpickled) while one is written.
    while True:
        try:
            item = connection.recv()
        except (EOFError, OSError):
            item = None  # the planner is gone
        chunks.put(item)
        if item is None:
            return


def _portable(exc: BaseException) -> BaseException:
    # What crosses back to the planner must survive pickling; a database error's driver objects may not.
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return RuntimeError(f"the planning writer process failed: {type(exc).__name__}: {exc}")
    return exc


def _chunk_work(session: Session, parts: list[Any]) -> tuple[dict, dict, list[tuple[Any, list[BookingRow]]]]:
    # The chunk's bookings, the offers they already have, and (sailing plan, bookings still owed offers).
    ids = [booking_id for part in parts for booking_id in part.booking_ids]
    chunk = read_chunk(session, ids)
    made = offers_made(session, ids)
    work = []
    for part in parts:
        disruption = part.plan.facts.disruption
        new = [chunk[i][0] for i in part.booking_ids
               if i in chunk and (i, disruption.id, disruption.revision) not in made]
        if part.plan.notice.new_offers and new:
            work.append((part.plan, new))
    return chunk, made, work


def _chunk_notices(session: Session, parts: list[Any], chunk: dict, made: dict, planned: dict, settings: Any,
                   broadcast_id: int, initial_status: str) -> tuple[ChunkNotices, dict[int, dict[str, Any]]]:
    # The chunk's outbox rows, and the contact checks made afresh on the way (to be stored).
    checks, fresh = checked_contacts([customer for _, customer in chunk.values()])
    respect = settings.safety_critical_opt_out != "send"
    addresses = {check[kind][0] for check in checks.values() for kind in ("sms", "mail") if check[kind][0]}
    stops = opted_out_among(session, addresses) if respect else frozenset()
    notices = ChunkNotices()
    for part in parts:
        _part_notices(part, chunk, made, planned, checks, stops, respect, broadcast_id, initial_status, notices)
    return notices, fresh


def _part_notices(part: Any, chunk: dict[int, tuple[BookingRow, CustomerRow]], made: dict, planned: dict,
                  checks: dict[int, dict[str, Any]], stops: frozenset, respect: bool, broadcast_id: int,
                  initial_status: str, notices: ChunkNotices) -> None:
    plan = part.plan
    disruption = plan.facts.disruption
    disruption_id, revision, book, suffix = disruption.id, disruption.revision, plan.book, plan.notice.key_suffix
    template, channels = plan.template, plan.channels
    # Urgent first: EU notices under the Art 16(1) clock ahead of all, then by departure (set here, once).
    priority = entitlements.notice_priority(plan.facts.sailing.scheduled_departure, plan.facts.route.jurisdiction,
                                            disruption.kind)
    rows, unreachable = notices.rows, notices.unreachable
    for booking_id in part.booking_ids:
        found = chunk.get(booking_id)
        if found is None:
            continue  # gone since the chunk was cut
        booking, customer = found
        notices.bookings += 1
        offers = made.get((booking_id, disruption_id, revision)) or planned.get((booking_id, disruption_id), [])
        recipients, missing = recipients_checked(booking, customer, checks[customer.id], channels, stops, respect)
        if missing:
            unreachable += missing
        if not recipients:
            continue
        deadline = next((o.deadline for o in offers if o.deadline), None)
        for recipient, notice in zip(recipients, book.unfilled_notices(booking, customer, offers, deadline,
                                                                       recipients), strict=True):
            key = dedup_key(booking_id, recipient.address, recipient.channel, disruption_id, revision) + suffix
            if type(notice) is not Unfilled:  # rendered plainly
                texts = (notice.subject, notice.body_text, notice.body_html, notice.segments)
            elif recipient.channel == "sms":  # short: filled here, its segments counted here
                texts = notice.shape.columns(notice.values, book.units)
            else:
                # An email's text is put in where it is written (fill_rows): a few values travel to the writer
                # process, not 4 KB of text and HTML.
                texts = ((notice.shape, notice.values), None, None, 0)
            rows.append((key, booking_id, customer.id, disruption_id, revision, broadcast_id, recipient.channel,
                         recipient.address, notice.language, template, "notice", *texts, True, initial_status,
                         priority, 0))


def _commit_notices(session: Session, broadcast_id: int, notices: ChunkNotices, result: Any) -> None:
    result.unreachable.extend(notices.unreachable)
    result.bookings += notices.bookings
    if not notices.rows:
        return
    rows = fill_rows(notices.rows)
    result.by_channel_language.update(zip(map(itemgetter(6), rows), map(itemgetter(8), rows)))
    result.segments += sum(map(itemgetter(14), rows))
    inserted = max(bulk_insert(session, Notification.__table__, NOTICE_COLUMNS, rows, skip_duplicates=True,
                               constants={"created_at": utcnow()}), 0)
    result.notifications += inserted
    result.skipped_existing += len(rows) - inserted
    if inserted < len(rows):
        note_skipped(session, broadcast_id, [row[0] for row in rows], result)


def note_skipped(session: Session, broadcast_id: int, keys: list[str], result: PlanResult) -> None:
    """Record which other broadcast already planned the notices (by dedup key) a chunk skipped: the preview says
    who told them."""
    for start in range(0, len(keys), 500):
        rows = session.execute(select(Notification.broadcast_id, Notification.disruption_id, Notification.revision,
                                      Notification.booking_id)
                               .where(Notification.dedup_key.in_(keys[start:start + 500]),
                                      or_(Notification.broadcast_id.is_(None),
                                          Notification.broadcast_id != broadcast_id)))
        for other, disruption_id, revision, booking_id in rows:
            result.skipped_by.setdefault((other or 0, disruption_id or 0, revision), set()).add(booking_id)


# A shaped notice waits in its row's subject column, as (shape, values), for its text: a plain tuple, the
# cheapest thing to send to the writer process.
SUBJECT = NOTICE_COLUMNS.index("subject")


def fill_rows(rows: list[tuple]) -> list[tuple]:
    """Outbox rows with every shaped notice's subject, bodies and segments put in."""
    known: dict[str, tuple[bool, int, int]] = {}
    filled = []
    for row in rows:
        notice = row[SUBJECT]
        if type(notice) is tuple:
            shape, values = notice
            row = (*row[:SUBJECT], *shape.columns(values, known), *row[SUBJECT + 4:])
        filled.append(row)
    return filled


# --- bulk writes ---------------------------------------------------------------------------------------------------

# SQLite, while planning: an 8 MB page cache (64 MB was no faster for the 150,000 notices of bench_plan, and the
# pages stay in the writer's memory), and no WAL checkpoint at the chunk's commit: checkpointing while 100,000
# notices are written copies every page twice and halves the speed. The next ordinary commit (dispatcher, watcher,
# CLI) checkpoints as usual; so does the connection itself once it is back in the pool, where its own settings are
# restored.
PLANNING_PRAGMAS = {"cache_size": -8192, "wal_autocheckpoint": 0}


def defer_checkpoint(session: Session) -> None:
    """On SQLite, give this transaction's connection the planning settings until it goes back to the pool."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    pooled = connection.connection
    if "notifier_restore" in pooled.info:
        return
    engine = connection.engine
    if not event.contains(engine, "checkin", _restore_pragmas):
        event.listen(engine, "checkin", _restore_pragmas)
    driver = pooled.driver_connection
    pooled.info["notifier_restore"] = {name: driver.execute(f"PRAGMA {name}").fetchone()[0]
                                       for name in PLANNING_PRAGMAS}
    for name, value in PLANNING_PRAGMAS.items():
        driver.execute(f"PRAGMA {name} = {int(value)}")


def _restore_pragmas(dbapi_connection: Any, record: Any) -> None:
    saved = record.info.pop("notifier_restore", None)
    for name, value in (saved or {}).items():
        dbapi_connection.execute(f"PRAGMA {name} = {int(value)}")


def bulk_insert(session: Session, table: Table, columns: tuple[str, ...], rows: list[tuple],
                skip_duplicates: bool = False, constants: dict[str, Any] | None = None) -> int:
    """Write many rows at once, values converted by the columns' own types (each distinct value once); returns
    how many were inserted. `skip_duplicates`: a row whose unique key exists is skipped (ON CONFLICT DO NOTHING);
    `constants`: columns with one value for every row (a chunk's creation time), added here.
    SQLite: the driver's executemany. PostgreSQL: COPY (through a temporary table when skipping duplicates)."""
    if not rows:
        return 0
    connection = session.connection()
    dialect = connection.dialect
    columns = (*columns, *(constants or {}))
    processors = [(index, processor) for index, name in enumerate(columns)
                  if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None]
    if processors or constants:
        rows = _converted(rows, processors, list((constants or {}).values()))
    names = ", ".join(columns)
    if dialect.name == "postgresql":
        return _copy_in(connection.connection.driver_connection, table.name, names, rows, skip_duplicates)
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO {table.name} ({names}) VALUES ({', '.join([mark] * len(columns))})"
           + (" ON CONFLICT DO NOTHING" if skip_duplicates else ""))
    return connection.exec_driver_sql(sql, rows).rowcount


def _copy_in(driver: Any, table: str, names: str, rows: list[tuple], skip_duplicates: bool) -> int:
    # COPY moves 100,000 rows in a fraction of what as many INSERTs take, even pipelined; it cannot skip a
    # duplicate, so those rows go through a temporary table and one INSERT ... SELECT ... ON CONFLICT DO NOTHING.
    with driver.cursor() as cursor:
        target = table
        if skip_duplicates:
            target = f"planning_{table}"
            cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {target} "
                           f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        with cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if not skip_duplicates:
            return len(rows)
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {target} ON CONFLICT DO NOTHING")
        inserted = cursor.rowcount
        cursor.execute(f"TRUNCATE {target}")
        return inserted


def _converted(rows: list[tuple], processors: list[tuple[int, Any]], constants: list[Any]) -> list[tuple]:
    # Column by column: the converted columns are a few (times, amounts, flags, small documents) and their values
    # repeat across a chunk (a chunk's times are one or two moments), so each distinct value is converted once and
    # the rest is done by dict lookups and zip, at C speed.
    columns = list(zip(*rows, strict=True)) + [(value,) * len(rows) for value in constants]
    for index, processor in processors:
        columns[index] = _converted_column(columns[index], processor)
    return list(zip(*columns, strict=True))


def _converted_column(values: tuple, processor: Any) -> list[Any]:
    try:
        distinct = set(values)
    except TypeError:  # JSON documents (dicts): by their items, converted once per distinct document
        known: dict[Any, Any] = {None: None}
        converted = []
        for value in values:
            key = tuple(value.items()) if isinstance(value, dict) else value
            try:
                if key not in known:
                    known[key] = processor(value)
                converted.append(known[key])
            except TypeError:  # a document holding lists: converted on its own
                converted.append(processor(value))
        return converted
    known = {value: None if value is None else processor(value) for value in distinct}
    return list(map(known.__getitem__, values))
