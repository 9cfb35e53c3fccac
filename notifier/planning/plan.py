"""Plan a broadcast into notification rows: audience, offers and rendered messages, committed in chunks.

Each chunk of bookings commits its holds, offers and outbox rows together, so a crash loses at most the chunk
in flight and a re-run skips what was committed (offers per booking and revision, and the outbox's unique
dedup_key). Notices are dispatchable as soon as their chunk commits: the dispatcher never waits for the plan.

At scale (a typhoon: 100,000 bookings on 140 sailings): the broadcast's sailings are read together once
(`chunks.SailingPlans`, alternatives shared between sailings that look for them in the same place); bookings are
cut in planning order into chunks that span sailings, the first small (so the first notices go out within moments)
and then growing (`chunks.ChunkSizes`); each chunk is planned in bulk by planning.writer (places allocated in
Python and held with one conditional UPDATE per sailing and class, offers and notices written with executemany or
COPY) with messages from planning.shapes (one render per notice shape) and addresses from planning.contacts
(checked once, stored). tests/planning/test_scale.py holds the result to what planning one booking at a time
writes. Here: the broadcast's planning from start to status, and the choice of how its chunks are written (in
this transaction, by a writer thread, or by a writer process).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.planning.audience import AUDIENCE_KINDS, NOTICE_ONLY_KINDS
from notifier.planning.chunks import ChunkPart, ChunkSizes, SailingPlans, cut_chunks
from notifier.planning.offers import planning_order
from notifier.planning.allocate import FreePlaces
from notifier.planning.chunk_plan import (ChunkNotices, PlanResult, PreparedChunk, mark_finished, plan_chunk,
                                          prepare_chunk, write_ahead)
from notifier.planning.writer import ChunkWriter, WriterProcess, collector_paused
from notifier.store.bulk import defer_checkpoint
from notifier.store import audit
from notifier.store.db import transaction
from notifier.store.models import Booking, Broadcast, Disruption, Notification, utcnow
from notifier.store.settings import Settings
from notifier.store.status import APPROVED, AWAITING_APPROVAL, CONFIRMED, HELD, PLANNING, QUEUED, SENDING

MAX_CHUNK = 2000  # bookings in the largest planning transaction


def create_automatic(session: Session, disruption_ids: list[int], template: str, channels: list[str],
                     audience: str, kind: str) -> Broadcast:
    """Record the broadcast a rule fired; it is planned by `plan_broadcast`."""
    broadcast = Broadcast(origin="automatic", status=PLANNING, kind=kind, template=template, channels=channels,
                          audience=audience, target={"disruption_ids": disruption_ids}, created_by="rules")
    session.add(broadcast)
    session.flush()
    audit.record(session, "rules", "broadcast.created", "broadcast", broadcast.id, disruptions=disruption_ids)
    return broadcast


def pending_broadcasts(session: Session) -> list[int]:
    """Broadcasts whose planning has not finished (new, or interrupted by a crash)."""
    return list(session.scalars(select(Broadcast.id).where(Broadcast.status == PLANNING).order_by(Broadcast.id)))


def plan_broadcast(factory: sessionmaker[Session], broadcast_id: int, settings: Settings,
                   now: datetime | None = None, chunk: int = MAX_CHUNK) -> PlanResult:
    """Plan every disruption of a broadcast into the outbox, chunk by chunk; safe to re-run after a crash."""
    now = now or utcnow()
    disruption_ids, needs_approval, initial_status = start_planning(factory, broadcast_id)
    result = PlanResult(broadcast_id)
    sailings = SailingPlans(factory, broadcast_id, disruption_ids, settings)
    chunks = cut_chunks(sailings, _order(sailings, settings), ChunkSizes(chunk))
    with collector_paused():
        if _can_plan_ahead(factory, sailings):
            chunks = _plan_ahead(factory, broadcast_id, chunks, settings, now, initial_status, result, sailings)
        for parts in chunks:  # the ordinary way: one transaction reads, allocates, renders and writes each chunk
            with transaction(factory) as session:
                _plan_chunk(session, broadcast_id, parts, settings, now, initial_status, result)
    with transaction(factory) as session:
        defer_checkpoint(session)
        record_planned(session, broadcast_id, result, settings, needs_approval)
    return result


def start_planning(factory: sessionmaker[Session], broadcast_id: int) -> tuple[list[int], bool, str]:
    """Before the first chunk: the broadcast's disruptions, whether it needs approval (recorded), and the status its
    notices are written with."""
    with transaction(factory) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        disruption_ids = list(broadcast.target.get("disruption_ids", []))
        needs_approval = _needs_approval(session, broadcast, disruption_ids)
        broadcast.needs_approval = needs_approval
        manual = broadcast.origin == "manual"
    # A manual broadcast is always planned on hold: the preview shows exactly what `broadcast send` releases.
    return disruption_ids, needs_approval, HELD if needs_approval or manual else QUEUED


def record_planned(session: Session, broadcast_id: int, result: PlanResult, settings: Settings,
                   needs_approval: bool) -> None:
    """Once every chunk is written: the broadcast's count and preview facts, and its status (a manual one held
    for approval or approved, an automatic one waiting for approval or sending), audited."""
    broadcast = session.get(Broadcast, broadcast_id)
    broadcast.recipient_count = session.scalar(
        select(func.count()).select_from(Notification).where(Notification.broadcast_id == broadcast_id))
    broadcast.preview = preview_facts(broadcast.preview, result)
    if broadcast.status == PLANNING and broadcast.origin == "manual":
        decide_manual_approval(broadcast, settings)
    elif broadcast.status == PLANNING:
        broadcast.status = AWAITING_APPROVAL if needs_approval else SENDING
    audit.record(session, broadcast.created_by, "broadcast.planned", "broadcast", broadcast_id,
                 notifications=result.notifications, unreachable=len(result.unreachable), status=broadcast.status)


def _order(sailings: SailingPlans, settings: Settings) -> list[tuple[int, bool | None]]:
    # Notices without offers take no scarce places: an automatic all-clear or advisory tells its sailings in the
    # order the rules named them, every booking of a sailing together.
    broadcast = sailings.broadcast
    if broadcast.origin == "automatic" and broadcast.kind in NOTICE_ONLY_KINDS:
        return [(disruption_id, None) for disruption_id in sailings.departures]
    return planning_order(sailings.departures, settings.offer_priority)


def _needs_approval(session: Session, broadcast: Broadcast, disruption_ids: list[int]) -> bool:
    if broadcast.origin == "manual":
        return broadcast.needs_approval
    rules_approval = [session.get(Disruption, d).notify.get("approval", {"mode": "auto"}) for d in disruption_ids]
    limits = [a["above_recipients"] for a in rules_approval if a.get("mode") == "above"]
    if not limits:
        return False
    kinds = AUDIENCE_KINDS.get(broadcast.audience, AUDIENCE_KINDS["all"])
    sailing_ids = select(Disruption.sailing_id).where(Disruption.id.in_(disruption_ids))
    count = session.scalar(select(func.count()).select_from(Booking).where(
        Booking.sailing_id.in_(sailing_ids), Booking.status == CONFIRMED, Booking.kind.in_(kinds)))
    return count > min(limits)


def _plan_chunk(session: Session, broadcast_id: int, parts: list[ChunkPart], settings: Settings, now: datetime,
                initial_status: str, result: PlanResult) -> None:
    """One chunk of bookings, of one or more sailings, into held places, offers and outbox rows, with the planned
    revision of every sailing it finishes (notifier.planning)."""
    defer_checkpoint(session)
    plan_chunk(session, broadcast_id, parts, settings, now, initial_status, result)
    _mark_planned(session, parts)


def _can_plan_ahead(factory: sessionmaker[Session], sailings: SailingPlans) -> bool:
    # Planning ahead of the writes needs a second connection to the same database (an engine, not one connection
    # or SQLite in memory) and no earlier revision's held places to give back on the way (the ordinary path
    # releases those).
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine):
        return False
    url = bind.url
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    return not in_memory and all(disruption.revision <= 1 for disruption, _ in sailings.rows.values()) and (
        _ahead_pays(url.get_backend_name()) or _writer_process_pays(url.get_backend_name(), sailings))


def _ahead_pays(backend: str) -> bool:
    # PostgreSQL writes in its own processes while we wait on the socket (GIL released): 43 s -> 34 s for the
    # 150,000 notices of bench_plan. SQLite writes inside this process, taking the GIL back row by row from the
    # planning thread: a little slower than one transaction per chunk (26 s -> 28 s), so not with a thread.
    return backend == "postgresql"


# A writer process costs a second interpreter (~0.5 s to start, ~100 MB): worth it for a typhoon, not for the
# few hundred bookings of an ordinary cancellation.
WRITER_PROCESS_MIN_BOOKINGS = 20_000
WAIT_FOR_WRITER_FROM = 1000  # bookings in a chunk


def _writer_process_pays(backend: str, sailings: SailingPlans) -> bool:
    # SQLite: the writing (binding every row, B-trees, the WAL) in a second process, on the second core. The
    # writer inherits its socket by file descriptor (POSIX); elsewhere planning stays in one process.
    return backend == "sqlite" and os.name == "posix" and _spare_core() and \
        sailings.booking_count() >= WRITER_PROCESS_MIN_BOOKINGS


def _spare_core() -> bool:
    return (os.cpu_count() or 1) > 1


def _plan_ahead(factory: sessionmaker[Session], broadcast_id: int, chunks: Iterator[list[ChunkPart]],
                settings: Settings, now: datetime, initial_status: str, result: PlanResult,
                sailings: SailingPlans) -> Iterator[list[ChunkPart]]:
    """Plan each chunk in memory while the one before is written (planning.ChunkWriter, a thread, on
    PostgreSQL; planning.WriterProcess on SQLite); yields the chunks left to plan the ordinary way: none, unless
    another writer took places this plan counted on or the writer process died."""
    free = FreePlaces()
    bind = factory.kw["bind"]
    if _ahead_pays(bind.url.get_backend_name()):
        def write(session: Session, parts: list[ChunkPart], prepared: PreparedChunk) -> bool:
            return _write_chunk(session, broadcast_id, parts, prepared, result)

        writer, send = ChunkWriter(factory, write), (lambda parts, prepared: (prepared,))
    else:
        writer = WriterProcess(bind.url.render_as_string(hide_password=False), write_ahead, result.add)

        def send(parts: list[ChunkPart], prepared: PreparedChunk) -> tuple:
            # Who could not be reached stays here (the writer has no use for it), added up once written.
            notices = prepared.notices
            prepared.notices = ChunkNotices(rows=notices.rows)
            kept = PlanResult(broadcast_id, bookings=notices.bookings, unreachable=notices.unreachable)
            return (broadcast_id, _finished(parts), prepared), kept
    leftover = []
    try:
        for parts in chunks:
            if writer.stopped:
                leftover = [parts]
                break
            if not _writer_ready(writer, parts):  # the writer process is starting: this chunk here, meanwhile
                with transaction(factory) as session:
                    _plan_chunk(session, broadcast_id, parts, settings, now, initial_status, result)
                continue
            with factory() as session:
                prepared = prepare_chunk(session, parts, settings, now, initial_status, broadcast_id, free)
            writer.put(parts, *send(parts, prepared))
    except BaseException:
        writer.close(quietly=True)  # what was queued is written (each chunk whole); the error is this one
        raise
    yield from writer.close()
    yield from leftover
    yield from chunks


def _writer_ready(writer: ChunkWriter | WriterProcess, parts: list[ChunkPart]) -> bool:
    # While the writer process starts (~0.4 s of imports), the first small chunks are planned here, so the first
    # notices go out at once; a full-size chunk waits for it (briefly) rather than be planned on one core.
    if writer.ready:
        return True
    return sum(len(part.booking_ids) for part in parts) >= WAIT_FOR_WRITER_FROM and writer.wait_until_ready(10)


def _write_chunk(session: Session, broadcast_id: int, parts: list[ChunkPart], prepared: PreparedChunk,
                 result: PlanResult) -> bool:
    """The writer thread's write (planning.write_ahead), added to the broadcast's result (False: nothing written,
    its places were taken meanwhile)."""
    done = write_ahead(session, (broadcast_id, _finished(parts), prepared))
    if done is not None:
        result.add(done)
    return done is not None


def _mark_planned(session: Session, parts: list[ChunkPart]) -> None:
    mark_finished(session, _finished(parts))


def _finished(parts: list[ChunkPart]) -> dict[int, int]:
    # The sailings (disruption -> revision) whose last bookings are in this chunk.
    return {part.plan.facts.disruption.id: part.plan.facts.disruption.revision for part in parts if part.last}


def preview_facts(previous: dict[str, Any] | None, result: PlanResult) -> dict[str, Any]:
    """What only planning knows (who cannot be reached, who was skipped and why), kept for `broadcast preview`."""
    facts = dict(previous or {})
    facts["unreachable"] = [{"booking_id": u.booking_id, "booking_ref": u.booking_ref, "channel": u.channel,
                             "reason": u.reason} for u in result.unreachable]
    facts["skipped"] = [{"broadcast_id": other, "disruption_id": disruption_id, "revision": revision,
                         "bookings": len(bookings)}
                        for (other, disruption_id, revision), bookings in sorted(result.skipped_by.items())]
    return facts


def decide_manual_approval(broadcast: Broadcast, settings: Settings) -> None:
    """A manual broadcast waits for a second operator when it carries free text (a second pair of eyes reads it)
    or is big enough to be expensive if wrong; otherwise it is approved as planned."""
    reasons = []
    if broadcast.reason:
        reasons.append("free text from --reason")
    if broadcast.recipient_count > settings.approval_threshold:
        reasons.append(f"{broadcast.recipient_count} messages, above the approval threshold of "
                       f"{settings.approval_threshold}")
    broadcast.needs_approval = bool(reasons)
    broadcast.status = AWAITING_APPROVAL if reasons else APPROVED
    broadcast.preview = {**(broadcast.preview or {}), "approval_reasons": reasons}
