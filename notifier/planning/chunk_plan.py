"""One chunk planned: its bookings read, places allocated (planning.allocate), notices built and written, together,
in one transaction; per chunk, whatever its number of bookings and sailings, the database sees a handful of
statements:

- one read of the bookings with their customers, one of offers already made to them, one of opt-outs among the
  chunk's addresses (and, for a revised disruption, one of the earlier revision's held places to give back);
- the alternatives' free places read once (locked first on PostgreSQL), allocated and held (planning.allocate);
- offers and notices written with executemany or COPY (store.bulk; the notices with ON CONFLICT DO NOTHING on the
  dedup key, so a notice planned before, by this or another broadcast, is skipped and counted);
- the stored contact checks of customers whose phone or email changed (planning.contacts).

Messages come from `shapes.ShapeBook`: one render per notice shape, the per-person values put in per booking
(`fill_rows`, where the chunk is written). A chunk may be planned ahead of its writes (`prepare_chunk`, then
`write_ahead`, by planning.writer's thread or process).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from notifier import outbox
from notifier.outbox import NOTICE_COLUMNS
from notifier.planning.allocate import (FreePlaces, allocate_ahead, allocate_offers, hold_all, insert_offers,
                                        offer_rows, offers_made)
from notifier.planning.audience import Unreachable
from notifier.planning.chunks import BookingRow, ChunkPart, CustomerRow, SailingPlan, read_chunk
from notifier.planning.contacts import contact_check, is_current, recipients_checked, store_checks
from notifier.planning.notices import dedup_key
from notifier.planning.shapes import Unfilled
from notifier.rules import entitlements
from notifier.store.bulk import defer_checkpoint, rows_where_in
from notifier.store.models import Disruption, Notification, OptOut, utcnow
from notifier.store.settings import Settings



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


def opted_out_among(session: Session, addresses: set[str]) -> frozenset[tuple[str, str]]:
    """The (channel, address) opt-outs among these addresses (not the whole table: it can be large)."""
    return frozenset((channel, address) for channel, address in rows_where_in(
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


def plan_chunk(session: Session, broadcast_id: int, parts: list[ChunkPart], settings: Settings, now: datetime,
               initial_status: str, result: Any) -> None:
    """Plan one chunk: `parts` are (sailing plan, booking ids) in planning order (chunks.ChunkPart)."""
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


def prepare_chunk(session: Session, parts: list[ChunkPart], settings: Settings, now: datetime, initial_status: str,
                  broadcast_id: int, free: FreePlaces) -> PreparedChunk:
    """Plan one chunk of a first-revision broadcast without writing: the allocation takes places from `free`."""
    chunk, made, work = _chunk_work(session, parts)
    planned, taken = allocate_ahead(session, work, settings, now, free) if work else ({}, Counter())
    notices, fresh = _chunk_notices(session, parts, chunk, made, planned, settings, broadcast_id, initial_status)
    return PreparedChunk(taken, offer_rows([offer for offers in planned.values() for offer in offers]), fresh, notices)


def write_ahead(session: Session, item: tuple[int, dict[int, int], PreparedChunk]) -> PlanResult | None:
    """Write one chunk planned ahead (in the caller's transaction; by the writer thread or process), with the
    planned revision of the sailings it finishes (`finished`: disruption -> revision); what it did, or None, with
    nothing written, when another writer took some of its places since they were counted."""
    broadcast_id, finished, prepared = item
    done = PlanResult(broadcast_id)
    defer_checkpoint(session)
    if not hold_all(session, prepared.taken):
        return None
    insert_offers(session, prepared.offers)
    store_checks(session, prepared.checks)
    _commit_notices(session, broadcast_id, prepared.notices, done)
    mark_finished(session, finished)
    return done


def mark_finished(session: Session, finished: dict[int, int]) -> None:
    """Record the planned revision of the sailings (disruption -> revision) a chunk finished."""
    for disruption_id, revision in finished.items():
        session.execute(update(Disruption).where(Disruption.id == disruption_id).values(planned_revision=revision))


def _chunk_work(session: Session, parts: list[ChunkPart]
                ) -> tuple[dict, dict, list[tuple[SailingPlan, list[BookingRow]]]]:
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


def _chunk_notices(session: Session, parts: list[ChunkPart], chunk: dict, made: dict, planned: dict, settings: Settings,
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


def _part_notices(part: ChunkPart, chunk: dict[int, tuple[BookingRow, CustomerRow]], made: dict, planned: dict,
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


def _commit_notices(session: Session, broadcast_id: int, notices: ChunkNotices, result: PlanResult) -> None:
    result.unreachable.extend(notices.unreachable)
    result.bookings += notices.bookings
    if not notices.rows:
        return
    rows = fill_rows(notices.rows)
    result.by_channel_language.update(zip(map(itemgetter(6), rows), map(itemgetter(8), rows)))
    result.segments += sum(map(itemgetter(14), rows))
    inserted = outbox.add(session, rows, constants={"created_at": utcnow()})
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
