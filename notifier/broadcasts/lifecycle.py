"""Plan a broadcast into notification rows: audience, offers and rendered messages, committed in chunks.

Each chunk of bookings commits its holds, offers and outbox rows together, so a crash loses at most the chunk
in flight and a re-run skips what was committed (offers per booking and revision, and the outbox's unique
dedup_key). Notices are dispatchable as soon as their chunk commits: the dispatcher never waits for the plan.

At scale (a typhoon: 100,000 bookings on 140 sailings): the broadcast's sailings are read together once
(`SailingPlans`, alternatives shared between sailings that look for them in the same place); bookings are cut in
planning order into chunks that span sailings, the first small (so the first notices go out within moments) and
then growing (`ChunkSizes`); each chunk is planned in bulk by notifier.planning (places allocated in Python and
held with one conditional UPDATE per sailing and class, offers and notices written with executemany or COPY) with
messages from notifier.shapes (one render per notice shape) and addresses from notifier.contacts (checked once,
stored). tests/test_scale.py holds the result to what planning one booking at a time writes.
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from notifier.store import audit
from notifier.planning import links
from notifier.errors import NotifierError, UsageError
from notifier.planning.audience import AUDIENCE_KINDS
from notifier.store.settings import Settings
from notifier.store.db import insert_ignore, transaction
from notifier.disruptions import apply_impacts, clear, notice_extras, strength
from notifier.messages import TemplateError, local_time, money, render
from notifier.store.models import (Booking, Broadcast, Customer, Disruption, Notification, Offer, Port, Route,
                                   Sailing, Vessel, utcnow)
from notifier.planning.offers import Candidate, candidates_for, planning_order, release
from notifier.store.paths import templates_dir
from notifier.planning.writer import (ChunkNotices, ChunkWriter, FreePlaces, PlanResult, PreparedChunk, WriterProcess,
                                      collector_paused, defer_checkpoint, mark_finished, note_skipped, plan_chunk,
                                      prepare_chunk, write_ahead)
from notifier.rules.model import Impact
from notifier.planning.shapes import ShapeBook

CAUSE_WORDS = {"en": {"weather": "severe weather", "port_closure": "a port closure", "strike": "industrial action",
                      "technical": "a technical fault", "schedule": "a schedule change",
                      "operations": "operational reasons"},
               "zh-CN": {"weather": "恶劣天气", "port_closure": "港口关闭", "strike": "罢工",
                         "technical": "技术故障", "schedule": "班期调整", "operations": "运营原因"}}
TYPHOON_WORDS = {"en": "the typhoon", "zh-CN": "台风"}
# Bookings per planning transaction: the first chunk is small so the first notices are dispatchable at once,
# then chunks grow to MAX_CHUNK (see ChunkSizes).
FIRST_CHUNK = 10
MAX_CHUNK = 2000


@dataclass
class SailingFacts:
    """Everything about one disrupted sailing that every booking's message shares, computed once."""

    disruption: Disruption
    sailing: Sailing
    origin: Port
    destination: Port
    route: Route
    candidates: list[Candidate]
    candidate_ports: dict[int, Port]
    vessel_name: str = ""
    local: dict[tuple, Any] = field(default_factory=dict)  # (what, language ...) -> text or values made once


@dataclass(frozen=True)
class NoticeSpec:
    """What the planning core varies by broadcast: the operator's free text, whether places are held, the key."""

    reason: str | None = None
    new_offers: bool = True
    key_suffix: str = ""

    @classmethod
    def of(cls, broadcast: Broadcast, disruption: Disruption, settings: Settings) -> NoticeSpec:
        """A manual advisory is a notice of its own (its dedup key names the broadcast). A manual broadcast holds
        places only where the customer is owed a choice: a cancellation, or a delay beyond the refund threshold."""
        manual = broadcast.origin == "manual"
        owed_choice = broadcast.kind == "cancelled" or (
            broadcast.kind == "delayed" and (disruption.delay_minutes or 0) > settings.refund_delay_minutes)
        return cls(reason=broadcast.reason, new_offers=not manual or owed_choice,
                   key_suffix=f":notice:{broadcast.id}" if manual and broadcast.kind == "advisory" else "")


def create_automatic(session: Session, disruption_ids: list[int], template: str, channels: list[str],
                     audience: str, kind: str) -> Broadcast:
    """Record the broadcast a rule fired; it is planned by `plan_broadcast`."""
    broadcast = Broadcast(origin="automatic", status="planning", kind=kind, template=template, channels=channels,
                          audience=audience, target={"disruption_ids": disruption_ids}, created_by="rules")
    session.add(broadcast)
    session.flush()
    audit.record(session, "rules", "broadcast.created", "broadcast", broadcast.id, disruptions=disruption_ids)
    return broadcast


def pending_broadcasts(session: Session) -> list[int]:
    """Broadcasts whose planning has not finished (new, or interrupted by a crash)."""
    return list(session.scalars(select(Broadcast.id).where(Broadcast.status == "planning").order_by(Broadcast.id)))


def plan_broadcast(factory: sessionmaker[Session], broadcast_id: int, settings: Settings,
                   now: datetime | None = None, chunk: int = MAX_CHUNK) -> PlanResult:
    """Plan every disruption of a broadcast into the outbox, chunk by chunk; safe to re-run after a crash."""
    now = now or utcnow()
    with transaction(factory) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        disruption_ids = list(broadcast.target.get("disruption_ids", []))
        needs_approval = _needs_approval(session, broadcast, disruption_ids)
        broadcast.needs_approval = needs_approval
        manual = broadcast.origin == "manual"
    result = PlanResult(broadcast_id)
    # A manual broadcast is always planned on hold: the preview shows exactly what `broadcast send` releases.
    initial_status = "held" if needs_approval or manual else "queued"
    sailings = SailingPlans(factory, broadcast_id, disruption_ids, settings)
    chunks = _chunks(sailings, planning_order(sailings.departures, settings.offer_priority), ChunkSizes(chunk))
    with collector_paused():
        if _can_plan_ahead(factory, sailings):
            chunks = _plan_ahead(factory, broadcast_id, chunks, settings, now, initial_status, result, sailings)
        for parts in chunks:  # the ordinary way: one transaction reads, allocates, renders and writes each chunk
            with transaction(factory) as session:
                _plan_chunk(session, broadcast_id, parts, settings, now, initial_status, result)
    with transaction(factory) as session:
        defer_checkpoint(session)
        broadcast = session.get(Broadcast, broadcast_id)
        broadcast.recipient_count = session.scalar(
            select(func.count()).select_from(Notification).where(Notification.broadcast_id == broadcast_id))
        broadcast.preview = _preview_facts(broadcast.preview, result)
        if broadcast.status == "planning" and manual:
            _decide_manual_approval(broadcast, settings)
        elif broadcast.status == "planning":
            broadcast.status = "awaiting_approval" if needs_approval else "sending"
        audit.record(session, broadcast.created_by, "broadcast.planned", "broadcast", broadcast_id,
                     notifications=result.notifications, unreachable=len(result.unreachable),
                     status=broadcast.status)
    return result


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
        Booking.sailing_id.in_(sailing_ids), Booking.status == "confirmed", Booking.kind.in_(kinds)))
    return count > min(limits)


def _chunks(sailings: SailingPlans, order: list[tuple[int, bool | None]], sizes: ChunkSizes):  # noqa: ANN202
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
                Booking.status == "confirmed", Booking.kind.in_(self.kinds))) or 0

    def plan(self, disruption_id: int) -> SailingPlan | None:
        """The plan of one disrupted sailing (None when it is already planned and no longer active)."""
        if disruption_id not in self.made:
            self.made[disruption_id] = self._make(disruption_id)
        return self.made[disruption_id]

    def _make(self, disruption_id: int) -> SailingPlan | None:
        disruption, sailing = self.rows[disruption_id]
        if disruption.planned_revision >= disruption.revision and disruption.status != "active":
            return None
        with self.factory() as session:
            candidates = self._candidates(session, disruption, sailing)
            rows = session.execute(select(Booking.id, Booking.accessibility_needs).where(
                Booking.sailing_id == sailing.id, Booking.status == "confirmed", Booking.kind.in_(self.kinds))
                .order_by(Booking.id)).all()
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
        # `offers.candidates_for` depends on the ports, the route (first), and the moment after which to look;
        # on the sailing itself only when it departs after that moment (it is never its own alternative).
        after = max(filter(None, [disruption.window_end, sailing.scheduled_departure]))
        key = (sailing.origin_port_id, sailing.destination_port_id, sailing.route_id, after,
               sailing.id if sailing.scheduled_departure >= after else None)
        if key not in self.candidates:
            session.add(sailing)  # candidates_for reads it through the session
            self.candidates[key] = candidates_for(session, disruption)
            session.expunge(sailing)
        return self.candidates[key]


def _sailing_facts(session: Session, disruption: Disruption) -> SailingFacts:
    sailing = session.get(Sailing, disruption.sailing_id)
    candidates = candidates_for(session, disruption)
    ports = {p.id: p for p in session.scalars(select(Port))} if candidates else {}
    return SailingFacts(disruption=disruption, sailing=sailing, origin=session.get(Port, sailing.origin_port_id),
                        destination=session.get(Port, sailing.destination_port_id),
                        route=session.get(Route, sailing.route_id), candidates=candidates, candidate_ports=ports,
                        vessel_name=sailing.vessel.name if sailing.vessel else "")


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


def _preview_facts(previous: dict[str, Any] | None, result: PlanResult) -> dict[str, Any]:
    """What only planning knows (who cannot be reached, who was skipped and why), kept for `broadcast preview`."""
    facts = dict(previous or {})
    facts["unreachable"] = [{"booking_id": u.booking_id, "booking_ref": u.booking_ref, "channel": u.channel,
                             "reason": u.reason} for u in result.unreachable]
    facts["skipped"] = [{"broadcast_id": other, "disruption_id": disruption_id, "revision": revision,
                         "bookings": len(bookings)}
                        for (other, disruption_id, revision), bookings in sorted(result.skipped_by.items())]
    return facts


def _decide_manual_approval(broadcast: Broadcast, settings: Settings) -> None:
    # Free text is read by a second pair of eyes; so is anything big enough to be expensive if wrong.
    reasons = []
    if broadcast.reason:
        reasons.append("free text from --reason")
    if broadcast.recipient_count > settings.approval_threshold:
        reasons.append(f"{broadcast.recipient_count} messages, above the approval threshold of "
                       f"{settings.approval_threshold}")
    broadcast.needs_approval = bool(reasons)
    broadcast.status = "awaiting_approval" if reasons else "approved"
    broadcast.preview = {**(broadcast.preview or {}), "approval_reasons": reasons}


def dedup_key(booking_id: int | None, recipient: str, channel: str, disruption_id: int | None, revision: int) -> str:
    """The outbox's unique key: the same notice is never planned twice, whoever triggered it."""
    return f"{booking_id}:{recipient}:{channel}:{disruption_id}:{revision}"


def _port_name(port: Port, language: str) -> str:
    return port.name_zh if language.startswith("zh") and port.name_zh else port.name


def _cached(facts: SailingFacts, key: str, language: str, make) -> str:  # noqa: ANN001
    if (key, language) not in facts.local:
        facts.local[(key, language)] = make()
    return facts.local[(key, language)]


def notice_context(facts: SailingFacts, booking: Booking, customer: Customer, offers: list[Offer],
                   settings: Settings, language: str, deadline: datetime | None,
                   reason: str | None = None) -> dict[str, Any]:
    """The values a notice template may use (every one always present, so StrictUndefined catches typos).

    Built from parts that `shapes.ShapeBook` computes once and shares: what the sailing and broadcast say, what
    the booking says, what the offers say, and the three per-person values (name, booking reference, link)."""
    until = deadline or facts.sailing.scheduled_departure
    return {**sailing_values(facts, settings, language, reason), "customer": {"name": customer.name},
            "booking": booking_values(booking), **offer_values(facts, offers, language, deadline),
            "link": choice_link(settings, booking.id, facts.disruption.id, until),
            # delay, window, previous_kind, resumption, headline, port_call, entitlements (notifier.disruptions)
            **notice_extras(facts, booking, language)}


def sailing_values(facts: SailingFacts, settings: Settings, language: str, reason: str | None) -> dict[str, Any]:
    """The part of a notice's values every booking of the sailing shares (made once per language)."""
    key = ("context", language, reason or "")
    if key not in facts.local:
        lang = "zh-CN" if language.startswith("zh") else "en"
        sailing, disruption, tz = facts.sailing, facts.disruption, facts.origin.timezone
        policy = set(disruption.policy.get("entitlements", []))
        cause_key = disruption.cause
        event = (disruption.cause_text or "").lower()
        typhoon = "typhoon" in event or "cyclone" in event
        facts.local[key] = {
            "company": settings.company_name_zh if lang == "zh-CN" else settings.company_name,
            "helpline": settings.helpline,
            "sailing": {"code": sailing.code, "route": facts.route.name, "status": sailing.status,
                        "origin": _port_name(facts.origin, language),
                        "destination": _port_name(facts.destination, language),
                        "departure": local_time(sailing.scheduled_departure, tz, language),
                        "arrival": local_time(sailing.scheduled_arrival, facts.destination.timezone, language),
                        "vessel": facts.vessel_name, "voyage": sailing.voyage or ""},
            "disruption": {"kind": disruption.kind, "delay_minutes": disruption.delay_minutes,
                           "status": disruption.status,
                           "cause": TYPHOON_WORDS[lang] if typhoon else CAUSE_WORDS[lang].get(cause_key, cause_key),
                           "event": disruption.cause_text or ""},
            "reason": reason or "",
            "do_not_come": "do_not_come_to_port" in policy,
            "eu": facts.route.jurisdiction == "EU",
        }
    return facts.local[key]


def booking_values(booking: Booking) -> dict[str, Any]:
    """What a notice may say about the booking itself."""
    return {"ref": booking.ref, "kind": booking.kind, "party_size": booking.party_size, "teu": booking.teu}


def offer_values(facts: SailingFacts, offers: list[Offer], language: str, deadline: datetime | None
                 ) -> dict[str, Any]:
    """What a notice may say about the booking's choices: the alternatives, the refund, the deadline."""
    tz = facts.origin.timezone
    by_id = {c.sailing_id: c for c in facts.candidates}
    alternatives = []
    for offer in offers:
        if offer.kind in {"rebook", "standby"} and offer.sailing_id in by_id:
            candidate = by_id[offer.sailing_id]
            alternatives.append({"key": offer.option_key, "code": candidate.code, "held": offer.status == "held",
                                 "departure": _cached(facts, f"dep{candidate.sailing_id}", language,
                                                      lambda c=candidate: local_time(c.departure, tz, language))})
    refund = next((o for o in offers if o.kind == "refund"), None)
    return {"alternatives": alternatives,
            "refund": {"amount": money(refund.amount, refund.currency, language)} if refund else None,
            "deadline": local_time(deadline, tz, language) if deadline else ""}


def choice_link(settings: Settings, booking_id: int, disruption_id: int, until: datetime) -> str:
    """The signed link to a booking's choice page."""
    return links.choice_url(settings.public_base_url, links.make_token(settings.secret_key or "demo-secret",
                                                                       booking_id, disruption_id, until))


# --- manual broadcasts: target, create, approve, send, pause, resume, cancel, correct ------------------------------
#
# A duty officer's broadcast enters the pipeline at "disruptions": it opens (or reuses) the disruption of each
# targeted sailing through notifier.disruptions, so its notices share the outbox's dedup key space with automatic
# ones. It is created and planned in one database transaction (any error: nothing written) with every notice
# "held", so the preview is exactly what `send` releases.

MANUAL_KINDS = ("cancelled", "delayed", "advisory", "resumed")
TOLD = ("sending", "sent", "delivered")
UNSENT = ("held", "queued")
REASON_MAX_CHARS = 480
MANUAL_RULE = "manual"
MANUAL_POLICY = {"cancelled": ("rebook", "refund_full")}
# A sailing that left this long ago is not told anything any more (a delayed one may still be at the berth).
DEPARTED_GRACE = timedelta(hours=6)


class ApprovalNeeded(NotifierError):
    """The broadcast may not go out yet: a second operator has to approve it."""

    exit_code = 4


class NothingToSend(NotifierError):
    """The broadcast would reach nobody: no bookings, nobody reachable, or everyone already told."""

    exit_code = 1


@dataclass(frozen=True)
class BroadcastRequest:
    """What a duty officer asked for (the options of `notifier broadcast create`)."""

    operator: str
    kind: str | None = None
    sailings: tuple[str, ...] = ()
    route: str | None = None
    port: str | None = None
    vessel: str | None = None
    voyage: str | None = None
    disruption_ids: tuple[int, ...] = ()
    start: str | None = None
    end: str | None = None
    delay_minutes: int | None = None
    reason: str | None = None
    template: str | None = None
    channels: tuple[str, ...] = ("sms", "email")
    audience: str = "all"
    cause: str = "operations"


@contextmanager
def single_transaction(factory: sessionmaker[Session]) -> Iterator[sessionmaker[Session]]:
    """A session factory whose every `transaction()` is a savepoint inside one outer transaction, committed when
    the block ends and rolled back on any error: the chunked planning core, all or nothing."""
    engine = factory.kw["bind"]
    with engine.connect() as connection:
        connection.execution_options(notifier_write=True)
        outer = connection.begin()
        try:
            yield sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        except BaseException:
            outer.rollback()
            raise
        outer.commit()


def require_operator(operator: str | None) -> str:
    """The operator's name, or a UsageError: every action on a broadcast is recorded against a person."""
    name = (operator or "").strip()
    if not name:
        raise UsageError("who is acting? give --operator NAME or set NOTIFIER_OPERATOR (it goes in the audit log)")
    return name


def create_manual(factory: sessionmaker[Session], request: BroadcastRequest, settings: Settings,
                  now: datetime | None = None, chunk: int = MAX_CHUNK) -> int:
    """Resolve the target, open or reuse its disruptions and plan the broadcast on hold; returns its id.
    Unknown names, a template error or nobody to tell raise before anything is committed."""
    now = now or utcnow()
    request = checked_request(request)
    with single_transaction(factory) as single:
        with transaction(single) as session:
            broadcast_id = _record_manual(session, request, now)
        plan_broadcast(single, broadcast_id, settings, now, chunk)
        with single() as session:
            _require_recipients(session.get(Broadcast, broadcast_id))
    return broadcast_id


def checked_request(request: BroadcastRequest) -> BroadcastRequest:
    """The request with its free text cleaned, or a UsageError naming the first thing wrong."""
    require_operator(request.operator)
    modes = [name for name, given in (("--sailing", request.sailings), ("--route", request.route),
                                      ("--port", request.port), ("--vessel", request.vessel),
                                      ("--disruption", request.disruption_ids)) if given]
    if len(modes) != 1:
        raise UsageError("say whom to tell with exactly one of --sailing, --route, --port, --vessel or --disruption"
                         + (f" (got {', '.join(modes)})" if modes else ""))
    if (request.route or request.port) and not (request.start and request.end):
        raise UsageError(f"{modes[0]} needs a time window: --from TIME --to TIME")
    if request.vessel and not (request.voyage or (request.start and request.end)):
        raise UsageError("--vessel needs --voyage V (or a time window --from TIME --to TIME)")
    if request.kind is None and not request.disruption_ids:
        raise UsageError(f"--kind is required: one of {', '.join(MANUAL_KINDS)}")
    if request.kind is not None and request.kind not in MANUAL_KINDS:
        raise UsageError(f"--kind {request.kind!r} is not one of {', '.join(MANUAL_KINDS)}")
    if request.kind == "delayed" and not (request.delay_minutes and request.delay_minutes > 0):
        raise UsageError("--kind delayed needs --delay-minutes N (how late the departure will be)")
    if not request.channels or not set(request.channels) <= {"sms", "email"}:
        raise UsageError("--channels must be sms, email or sms,email")
    if request.audience not in AUDIENCE_KINDS:
        raise UsageError(f"--audience must be one of {', '.join(AUDIENCE_KINDS)}")
    if request.cause not in CAUSE_WORDS["en"]:
        raise UsageError(f"--cause must be one of {', '.join(CAUSE_WORDS['en'])}")
    reason = clean_reason(request.reason)
    if request.kind == "advisory" and not reason:
        raise UsageError("--kind advisory needs --reason TEXT (the advisory itself)")
    return replace(request, reason=reason)


def clean_reason(text: str | None) -> str | None:
    """An operator's free text as one safe value: control characters out, whitespace folded, length capped."""
    if text is None:
        return None
    folded = " ".join("".join(" " if unicodedata.category(c)[0] == "C" else c for c in text).split())
    if len(folded) > REASON_MAX_CHARS:
        raise UsageError(f"--reason is {len(folded)} characters; keep it under {REASON_MAX_CHARS} (SMS cost)")
    return folded or None


def notice_templates() -> list[str]:
    """Names of the templates a broadcast can use: those with an SMS or email version."""
    root = templates_dir()
    return sorted({path.name.split(".")[0] for folder in ("sms", "email") for path in (root / folder).glob("*.j2")})


def template_for(kind: str, requested: str | None) -> str:
    """The template a broadcast uses: the one asked for, else the one named after its kind, else `notice`."""
    known = notice_templates()
    if requested:
        if requested not in known:
            raise TemplateError(f"unknown template {requested!r}: choose one of {', '.join(known)}")
        return requested
    return kind if kind in known else "notice"


def parse_when(text: str, zone: str, what: str) -> datetime:
    """An ISO 8601 time from the command line; without an offset it is local time in `zone`."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{what} {text!r} is not an ISO 8601 time (e.g. 2026-09-14T08:00 or "
                         "2026-09-14T08:00+08:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment.astimezone(UTC)


def _record_manual(session: Session, request: BroadcastRequest, now: datetime) -> int:
    if request.disruption_ids:
        disruptions, target = _given_disruptions(session, request)
        kind, opened, skipped = request.kind or disruptions[0].kind, [], []
    else:
        sailings, target = _target_sailings(session, request)
        kind = request.kind
        disruptions, opened, skipped = _disruptions_for(session, sailings, request, now)
    template = template_for(kind, request.template)
    if not disruptions:
        raise NothingToSend("nothing to send: " + "; ".join(f"{s['sailing']} {s['reason']}" for s in skipped[:5]))
    ids = [d.id for d in disruptions]
    broadcast = Broadcast(origin="manual", status="planning", kind=kind, template=template,
                          channels=list(request.channels), audience=request.audience, reason=request.reason,
                          target={**target, "disruption_ids": ids, "opened": opened},
                          needs_approval=bool(request.reason), created_by=request.operator,
                          preview={"skipped_sailings": skipped}, created_at=now)
    session.add(broadcast)
    session.flush()
    audit.record(session, request.operator, "broadcast.created", "broadcast", broadcast.id, origin="manual",
                 kind=kind, template=template, target=target, disruptions=ids, opened=opened,
                 reason=request.reason)
    return broadcast.id


def _given_disruptions(session: Session, request: BroadcastRequest) -> tuple[list[Disruption], dict[str, Any]]:
    disruptions = []
    for disruption_id in request.disruption_ids:
        disruption = session.get(Disruption, disruption_id)
        if disruption is None:
            raise UsageError(f"unknown disruption #{disruption_id} (see `notifier report`)")
        if request.kind not in (None, "advisory", disruption.kind):
            raise UsageError(f"disruption #{disruption_id} is '{disruption.kind}': --kind must be that or advisory")
        disruptions.append(disruption)
    kinds = {d.kind for d in disruptions}
    if request.kind is None and len(kinds) > 1:
        raise UsageError(f"the disruptions are of different kinds ({', '.join(sorted(kinds))}): give --kind or "
                         "broadcast them separately")
    return disruptions, {"mode": "disruption", "disruptions": list(request.disruption_ids)}


def _target_sailings(session: Session, request: BroadcastRequest) -> tuple[list[Sailing], dict[str, Any]]:
    if request.sailings:
        return _named_sailings(session, request.sailings), {"mode": "sailing", "sailings": list(request.sailings)}
    if request.route:
        route = session.scalar(select(Route).where(Route.code == request.route))
        if route is None:
            raise UsageError(f"unknown route {request.route!r}{_known(session, Route.code)}")
        zone = session.get(Port, route.origin_port_id).timezone
        start, end = _window(request, zone)
        found = session.scalars(select(Sailing).where(Sailing.route_id == route.id,
                                                      Sailing.scheduled_departure.between(start, end))
                                .order_by(Sailing.scheduled_departure)).all()
        where = f"route {route.code} departing"
    elif request.port:
        port = session.scalar(select(Port).where(Port.locode == request.port.upper()))
        if port is None:
            raise UsageError(f"unknown port {request.port!r}{_known(session, Port.locode)}")
        zone = port.timezone
        start, end = _window(request, zone)
        found = session.scalars(select(Sailing).where(or_(
            and_(Sailing.origin_port_id == port.id, Sailing.scheduled_departure.between(start, end)),
            and_(Sailing.destination_port_id == port.id, Sailing.scheduled_arrival.between(start, end))))
            .order_by(Sailing.scheduled_departure)).all()
        where = f"port {port.locode} calls"
    else:
        zone = "UTC"
        found, start, end, where = _vessel_sailings(session, request)
    if not found:
        window = f" between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC" if start else ""
        raise UsageError(f"no sailings match: {where}{window}")
    target = {"mode": "route" if request.route else "port" if request.port else "vessel",
              "route": request.route, "port": request.port, "vessel": request.vessel, "voyage": request.voyage,
              "from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
              "zone": zone if start else None}
    return list(found), {k: v for k, v in target.items() if v is not None}


def _named_sailings(session: Session, codes: tuple[str, ...]) -> list[Sailing]:
    found = {s.code: s for s in session.scalars(select(Sailing).where(Sailing.code.in_(codes)))}
    for code in codes:
        if code not in found:
            raise UsageError(f"unknown sailing {code!r} (sailing codes look like "
                             f"{session.scalar(select(Sailing.code).limit(1)) or 'QZ-HAK-HAI-20260914-0700'})")
    return sorted(found.values(), key=lambda s: s.scheduled_departure)


def _vessel_sailings(session: Session, request: BroadcastRequest):  # noqa: ANN202
    vessel = session.scalar(select(Vessel).where(Vessel.imo == request.vessel))
    if vessel is None:
        raise UsageError(f"unknown vessel IMO {request.vessel!r}{_known(session, Vessel.imo)}")
    conditions = [Sailing.vessel_id == vessel.id]
    if request.voyage:
        conditions.append(Sailing.voyage == request.voyage)
    start = end = None
    if request.start and request.end:
        start, end = _window(request, "UTC")
        conditions.append(Sailing.scheduled_departure.between(start, end))
    found = session.scalars(select(Sailing).where(*conditions).order_by(Sailing.scheduled_departure)).all()
    voyage = f" voyage {request.voyage}" if request.voyage else ""
    return found, start, end, f"vessel {vessel.imo} ({vessel.name}){voyage}"


def _window(request: BroadcastRequest, zone: str) -> tuple[datetime, datetime]:
    start, end = parse_when(request.start, zone, "--from"), parse_when(request.end, zone, "--to")
    if end <= start:
        raise UsageError(f"--to ({request.end}) must be after --from ({request.start})")
    return start, end


def _known(session: Session, column: Any) -> str:
    names = list(session.scalars(select(column).order_by(column).limit(12)))
    return f" (known: {', '.join(names)})" if names else " (the database has none; run `notifier demo` first?)"


def _disruptions_for(session: Session, sailings: list[Sailing], request: BroadcastRequest,
                     now: datetime) -> tuple[list[Disruption], list[int], list[dict[str, str]]]:
    chosen, opened, skipped = [], [], []
    for sailing in sailings:
        if sailing.status == "departed" or sailing.scheduled_departure < now - DEPARTED_GRACE:
            skipped.append({"sailing": sailing.code, "reason": "has already departed"})
            continue
        disruption, why_not, is_new = _disruption_for(session, sailing, request, now)
        if disruption is None:
            skipped.append({"sailing": sailing.code, "reason": why_not})
            continue
        chosen.append(disruption)
        if is_new:
            opened.append(disruption.id)
    return chosen, opened, skipped


def _disruption_for(session: Session, sailing: Sailing, request: BroadcastRequest,
                    now: datetime) -> tuple[Disruption | None, str, bool]:
    live = list(session.scalars(select(Disruption).where(Disruption.sailing_id == sailing.id,
                                                         Disruption.status.in_(("active", "superseded")))))
    active = {d.kind: d for d in live if d.status == "active"}
    if request.kind == "advisory" and active:
        # Free text about a sailing that already has a disruption belongs to that disruption (its reports).
        return max(active.values(), key=lambda d: strength(d.kind)), "", False
    if request.kind == "resumed":
        for disruption in live:
            if disruption.kind != "resumed":
                clear(session, disruption, now, request.operator)  # gives its held places back
        if "resumed" in active:
            return active["resumed"], "", False
        return _open_manual(session, sailing, request, now), "", True
    stronger = [d for d in active.values() if strength(d.kind) > strength(request.kind)]
    if stronger:
        return None, (f"is already {stronger[0].kind} (disruption #{stronger[0].id}); a '{request.kind}' notice "
                      "would contradict it"), False
    existing = active.get(request.kind)
    if existing is None:
        return _open_manual(session, sailing, request, now), "", True
    if request.kind == "delayed" and existing.delay_minutes != request.delay_minutes:
        apply_impacts(session, [_revised_delay(existing, request)], None, now)  # a new revision: told again
    return existing, "", False


def _open_manual(session: Session, sailing: Sailing, request: BroadcastRequest, now: datetime) -> Disruption:
    # No hazard window: alternatives are looked for after the sailing's own departure.
    impact = Impact(sailing_id=sailing.id, kind=request.kind, cause=request.cause, severity="Severe",
                    rule_id=MANUAL_RULE, window_start=sailing.scheduled_departure, window_end=None,
                    delay_minutes=request.delay_minutes if request.kind == "delayed" else None,
                    notify={"template": request.template or request.kind, "channels": list(request.channels),
                            "audience": request.audience, "approval": {"mode": "manual"}},
                    policy={"policies": [], "entitlements": list(MANUAL_POLICY.get(request.kind, ()))})
    return apply_impacts(session, [impact], None, now)[0]


def _revised_delay(existing: Disruption, request: BroadcastRequest) -> Impact:
    # Only the delay changes: what the rules (or an earlier operator) said about cause and policy stays.
    return Impact(sailing_id=existing.sailing_id, kind="delayed", cause=existing.cause, severity=existing.severity,
                  rule_id=existing.rule_id or MANUAL_RULE, window_start=existing.window_start,
                  window_end=existing.window_end, delay_minutes=request.delay_minutes, notify=dict(existing.notify),
                  policy=dict(existing.policy), cause_text=existing.cause_text)


def _require_recipients(broadcast: Broadcast) -> None:
    if broadcast.recipient_count:
        return
    facts = broadcast.preview or {}
    parts = [f"{s['bookings']} booking(s) already told about disruption #{s['disruption_id']} "
             f"(revision {s['revision']}) by broadcast #{s['broadcast_id']}" for s in facts.get("skipped", [])]
    if facts.get("unreachable"):
        parts.append(f"{len(facts['unreachable'])} without a usable contact")
    parts += [f"{s['sailing']} {s['reason']}" for s in facts.get("skipped_sailings", [])]
    raise NothingToSend("nothing to send, nothing written: " + ("; ".join(parts[:6]) or "no bookings on "
                                                                "the targeted sailings for this audience"))


def _broadcast(session: Session, broadcast_id: int) -> Broadcast:
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise UsageError(f"unknown broadcast #{broadcast_id} (see `notifier broadcast list`)")
    return broadcast


def approve(factory: sessionmaker[Session], broadcast_id: int, operator: str, now: datetime | None = None) -> None:
    """Approve a broadcast awaiting approval; the approver must not be the operator who created it."""
    operator, now = require_operator(operator), now or utcnow()
    with transaction(factory) as session:
        broadcast = _broadcast(session, broadcast_id)
        if broadcast.status != "awaiting_approval":
            raise NotifierError(f"broadcast #{broadcast_id} is {broadcast.status.replace('_', ' ')}: "
                                "nothing to approve")
        if operator.casefold() == broadcast.created_by.casefold():
            raise ApprovalNeeded(f"broadcast #{broadcast_id} was created by {broadcast.created_by}; "
                                 "a different operator must approve it")
        broadcast.status, broadcast.approved_by, broadcast.approved_at = "approved", operator, now
        audit.record(session, operator, "broadcast.approved", "broadcast", broadcast_id,
                     created_by=broadcast.created_by, messages=broadcast.recipient_count)


def send(factory: sessionmaker[Session], broadcast_id: int, operator: str, now: datetime | None = None) -> int:
    """Release an approved broadcast's held notices to the dispatcher; returns how many were released
    (0 when it is already sending). An unapproved broadcast raises ApprovalNeeded and nothing changes."""
    operator = require_operator(operator)
    with transaction(factory) as session:
        broadcast = _broadcast(session, broadcast_id)
        if broadcast.status == "awaiting_approval":
            raise ApprovalNeeded(f"broadcast #{broadcast_id} needs approval first: another operator runs "
                                 f"`notifier broadcast approve {broadcast_id} --operator NAME`")
        if broadcast.status in ("cancelled", "done", "planning"):
            raise NotifierError(f"broadcast #{broadcast_id} is {broadcast.status}: nothing to send")
        if broadcast.status in ("sending", "paused"):
            return 0
        released = session.execute(
            update(Notification).where(Notification.broadcast_id == broadcast_id, Notification.status == "held")
            .values(status="queued", next_attempt_at=None).execution_options(synchronize_session=False)).rowcount
        broadcast.status = "sending"
        audit.record(session, operator, "broadcast.sent", "broadcast", broadcast_id, released=released,
                     approved_by=broadcast.approved_by)
        return released


def pause(factory: sessionmaker[Session], broadcast_id: int, operator: str) -> None:
    """Stop handing a sending broadcast's notices to the dispatcher (within one dispatcher batch)."""
    _move(factory, broadcast_id, require_operator(operator), "sending", "paused", "broadcast.paused")


def resume(factory: sessionmaker[Session], broadcast_id: int, operator: str) -> None:
    """Let a paused broadcast's notices go out again."""
    _move(factory, broadcast_id, require_operator(operator), "paused", "sending", "broadcast.resumed")


def _move(factory: sessionmaker[Session], broadcast_id: int, operator: str, from_status: str, to_status: str,
          action: str) -> None:
    with transaction(factory) as session:
        broadcast = _broadcast(session, broadcast_id)
        if broadcast.status != from_status:
            raise NotifierError(f"broadcast #{broadcast_id} is {broadcast.status.replace('_', ' ')}, not "
                                f"{from_status}: nothing to do")
        broadcast.status = to_status
        audit.record(session, operator, action, "broadcast", broadcast_id)


@dataclass
class CancelResult:
    """What cancelling a broadcast stopped, and what had already gone out."""

    cancelled: int
    told: int
    holds_released: int
    disruptions_cleared: list[int]


def cancel(factory: sessionmaker[Session], broadcast_id: int, operator: str,
           now: datetime | None = None) -> CancelResult:
    """Stop a broadcast: unsent notices are cancelled (in-flight ones finish), places held for bookings it never
    told are given back, and disruptions it opened that nobody was told about are cleared."""
    operator, now = require_operator(operator), now or utcnow()
    with transaction(factory) as session:
        broadcast = _broadcast(session, broadcast_id)
        if broadcast.status in ("cancelled", "done"):
            hint = f"; to correct what was said use `notifier broadcast correct {broadcast_id}`" \
                if broadcast.status == "done" else ""
            raise NotifierError(f"broadcast #{broadcast_id} is {broadcast.status}: nothing to cancel{hint}")
        cancelled = session.execute(
            update(Notification).where(Notification.broadcast_id == broadcast_id, Notification.status.in_(UNSENT))
            .values(status="cancelled", final_at=now, error_message=f"broadcast cancelled by {operator}")
            .execution_options(synchronize_session=False)).rowcount
        broadcast.status = "cancelled"
        session.flush()
        result = CancelResult(cancelled=cancelled, told=_count(session, broadcast_id, TOLD),
                              holds_released=_release_untold_holds(session, broadcast),
                              disruptions_cleared=_clear_unannounced(session, broadcast, now, operator))
        audit.record(session, operator, "broadcast.cancelled", "broadcast", broadcast_id, cancelled=cancelled,
                     told=result.told, holds_released=result.holds_released,
                     disruptions_cleared=result.disruptions_cleared)
        return result


def _count(session: Session, broadcast_id: int, statuses: tuple[str, ...]) -> int:
    return session.scalar(select(func.count()).select_from(Notification).where(
        Notification.broadcast_id == broadcast_id, Notification.status.in_(statuses))) or 0


def _live_elsewhere(broadcast_id: int, disruption_ids: list[int]):  # noqa: ANN202
    """Bookings another broadcast is telling (or told) about the same disruptions."""
    return select(Notification.booking_id).where(
        Notification.disruption_id.in_(disruption_ids), Notification.status != "cancelled",
        or_(Notification.broadcast_id.is_(None), Notification.broadcast_id != broadcast_id))


def _release_untold_holds(session: Session, broadcast: Broadcast) -> int:
    disruption_ids = list(broadcast.target.get("disruption_ids", []))
    told = select(Notification.booking_id).where(Notification.broadcast_id == broadcast.id,
                                                 Notification.status.in_(TOLD))
    ours = select(Notification.booking_id).where(Notification.broadcast_id == broadcast.id)
    offers = session.scalars(select(Offer).join(Disruption, Disruption.id == Offer.disruption_id).where(
        Offer.disruption_id.in_(disruption_ids), Offer.revision == Disruption.revision, Offer.status == "held",
        Offer.booking_id.in_(ours), Offer.booking_id.not_in(told),
        Offer.booking_id.not_in(_live_elsewhere(broadcast.id, disruption_ids))))
    return sum(1 for offer in list(offers) if release(session, offer, "released"))


def _clear_unannounced(session: Session, broadcast: Broadcast, now: datetime, operator: str) -> list[int]:
    cleared = []
    for disruption_id in broadcast.target.get("opened", []):
        disruption = session.get(Disruption, disruption_id)
        anyone_told = session.scalar(select(func.count()).select_from(Notification).where(
            Notification.disruption_id == disruption_id, Notification.status.in_(TOLD)))
        if disruption.status == "active" and not anyone_told:
            clear(session, disruption, now, operator)  # gives its held places back too
            cleared.append(disruption_id)
    return cleared


def correct(factory: sessionmaker[Session], original_id: int, operator: str, settings: Settings,
            template: str | None = None, reason: str | None = None, now: datetime | None = None,
            chunk: int = MAX_CHUNK) -> int:
    """Plan (on hold, like any manual broadcast) a correction to everyone a broadcast has already told, on the
    same channel and address; returns the correction's broadcast id."""
    operator, now = require_operator(operator), now or utcnow()
    reason = clean_reason(reason)
    template = template_for("correction", template)
    with single_transaction(factory) as single:
        with transaction(single) as session:
            original = _broadcast(session, original_id)
            if not _count(session, original_id, TOLD):
                raise NothingToSend(f"broadcast #{original_id} has told nobody yet: nothing to correct "
                                    f"(to stop it, `notifier broadcast cancel {original_id}`)")
            correction = Broadcast(origin="manual", status="planning", kind="correction", template=template,
                                   channels=list(original.channels), audience=original.audience, reason=reason,
                                   target={"mode": "correction", "corrects": original_id,
                                           "disruption_ids": list(original.target.get("disruption_ids", []))},
                                   needs_approval=bool(reason), created_by=operator, created_at=now)
            session.add(correction)
            session.flush()
            correction_id = correction.id
            audit.record(session, operator, "broadcast.created", "broadcast", correction_id, origin="manual",
                         kind="correction", corrects=original_id, template=template, reason=reason)
        result = PlanResult(correction_id)
        for notice_ids in _told_pages(single, original_id, chunk):
            with transaction(single) as session:
                _plan_correction_chunk(session, correction_id, original_id, notice_ids, template, reason,
                                       settings, result)
        with transaction(single) as session:
            correction = session.get(Broadcast, correction_id)
            correction.recipient_count = result.notifications
            correction.preview = _preview_facts(correction.preview, result)
            _decide_manual_approval(correction, settings)
            audit.record(session, operator, "broadcast.planned", "broadcast", correction_id,
                         notifications=result.notifications, status=correction.status)
            _require_recipients(correction)
    return correction_id


def _told_pages(factory: sessionmaker[Session], broadcast_id: int, chunk: int):  # noqa: ANN202
    after = 0
    while True:
        with factory() as session:
            ids = list(session.scalars(select(Notification.id).where(
                Notification.broadcast_id == broadcast_id, Notification.status.in_(TOLD),
                Notification.booking_id.is_not(None), Notification.id > after)
                .order_by(Notification.id).limit(chunk)))
        if not ids:
            return
        yield ids
        after = ids[-1]


def _plan_correction_chunk(session: Session, correction_id: int, original_id: int, notice_ids: list[int],
                           template: str, reason: str | None, settings: Settings, result: PlanResult) -> None:
    facts: dict[int, SailingFacts] = {}
    values = []
    rows = session.execute(select(Notification, Booking, Customer)
                           .join(Booking, Booking.id == Notification.booking_id)
                           .join(Customer, Customer.id == Booking.customer_id)
                           .where(Notification.id.in_(notice_ids)).order_by(Notification.id)).all()
    for told, booking, customer in rows:
        if told.disruption_id not in facts:
            facts[told.disruption_id] = _sailing_facts(session, session.get(Disruption, told.disruption_id))
        sailing_facts = facts[told.disruption_id]
        context = notice_context(sailing_facts, booking, customer, [], settings, told.language, None, reason)
        rendered = render(told.channel, template, told.language, context)
        values.append({"dedup_key": dedup_key(booking.id, told.recipient, told.channel, told.disruption_id,
                                              told.revision) + f":correction:{original_id}",
                       "booking_id": booking.id, "customer_id": customer.id, "disruption_id": told.disruption_id,
                       "revision": told.revision, "broadcast_id": correction_id, "channel": told.channel,
                       "recipient": told.recipient, "language": rendered.language, "template": template,
                       "purpose": "correction", "subject": rendered.subject, "body_text": rendered.body_text,
                       "body_html": rendered.body_html, "segments": rendered.segments, "safety_critical": True,
                       "status": "held", "priority": told.priority, "attempts": 0, "created_at": utcnow()})
    result.bookings += len({row["booking_id"] for row in values})
    if values:
        inserted = session.execute(insert_ignore(Notification.__table__, session), values).rowcount
        result.notifications += max(inserted, 0)
        if inserted < len(values):
            result.skipped_existing += len(values) - max(inserted, 0)
            note_skipped(session, correction_id, [row["dedup_key"] for row in values], result)


# --- what a broadcast will do and is doing: preview, progress, list ----------------------------------------------

@dataclass
class Sample:
    """One rendered notice exactly as it will go out."""

    channel: str
    language: str
    subject: str | None
    body: str
    segments: int


@dataclass
class Preview:
    """Everything a duty officer should see before sending (`broadcast create` / `broadcast preview`)."""

    broadcast: Broadcast
    sailings: list[dict[str, Any]]
    unreached: list[dict[str, Any]]  # bookings told on no channel at all, with the reasons
    messages: Counter  # (channel, language) -> notices
    bookings: int
    sms_segments: int
    sms_cost: Decimal
    seconds_to_deliver: float
    samples: list[Sample]
    offers_held: list[dict[str, Any]]
    bookings_with_offers: int
    bookings_without_place: int
    refunds_offered: int
    statuses: Counter

    @property
    def warnings(self) -> list[str]:
        """What the duty officer should know before sending: free text a template does not show."""
        reason = self.broadcast.reason
        if not reason:
            return []
        return [f"the {s.channel} template '{self.broadcast.template}' ({s.language}) does not show the --reason "
                "text: those customers will not read it" for s in self.samples if reason not in s.body]

    @property
    def facts(self) -> dict[str, Any]:
        """What planning recorded: unreachable bookings, skipped bookings and sailings, approval reasons."""
        return self.broadcast.preview or {}


def preview(factory: sessionmaker[Session], broadcast_id: int, settings: Settings) -> Preview:
    """The preview of a planned broadcast, read back from its (held) outbox rows."""
    with factory() as session:
        broadcast = _broadcast(session, broadcast_id)
        disruption_ids = list(broadcast.target.get("disruption_ids", []))
        mine = Notification.broadcast_id == broadcast_id
        messages, segments = Counter(), 0
        for channel, language, count, parts in session.execute(
                select(Notification.channel, Notification.language, func.count(), func.sum(Notification.segments))
                .where(mine).group_by(Notification.channel, Notification.language)):
            messages[(channel, language)] = count
            segments += (parts or 0) if channel == "sms" else 0
        emails = sum(n for (channel, _), n in messages.items() if channel == "email")
        seconds = max(segments / max(settings.sms_segments_per_second, 0.001),
                      emails / max(settings.emails_per_second, 0.001))
        return Preview(
            broadcast=broadcast, sailings=_preview_sailings(session, disruption_ids, broadcast.target),
            unreached=_unreached(session, broadcast, disruption_ids),
            messages=messages,
            bookings=session.scalar(select(func.count(func.distinct(Notification.booking_id))).where(mine)) or 0,
            sms_segments=segments, sms_cost=(settings.sms_price_per_segment * segments).quantize(Decimal("0.01")),
            seconds_to_deliver=seconds, samples=_samples(session, broadcast_id),
            statuses=Counter(dict(session.execute(select(Notification.status, func.count()).where(mine)
                                                  .group_by(Notification.status)).all())),
            **_offers_summary(session, disruption_ids))


def _unreached(session: Session, broadcast: Broadcast, disruption_ids: list[int]) -> list[dict[str, Any]]:
    # A booking missing one channel is still told on the other; only those told on none are listed by name.
    missing = (broadcast.preview or {}).get("unreachable", [])
    ids = {u["booking_id"] for u in missing if u.get("booking_id") is not None}
    told = set()
    for start in range(0, len(ids), 500):
        told |= set(session.scalars(select(Notification.booking_id).where(
            Notification.booking_id.in_(sorted(ids)[start:start + 500]), Notification.status != "cancelled",
            or_(Notification.broadcast_id == broadcast.id, Notification.disruption_id.in_(disruption_ids)))))
    reasons: dict[str, list[str]] = {}
    for u in missing:
        if u.get("booking_id") not in told:
            reasons.setdefault(u["booking_ref"], []).append(f"{u['channel']}: {u['reason']}")
    return [{"booking_ref": ref, "reason": "; ".join(why)} for ref, why in reasons.items()]


def _preview_sailings(session: Session, disruption_ids: list[int], target: dict[str, Any]) -> list[dict[str, Any]]:
    opened = set(target.get("opened", []))
    rows = session.execute(select(Disruption, Sailing, Port).join(Sailing, Sailing.id == Disruption.sailing_id)
                           .join(Port, Port.id == Sailing.origin_port_id)
                           .where(Disruption.id.in_(disruption_ids)).order_by(Sailing.scheduled_departure)).all()
    return [{"code": sailing.code, "departure": local_time(sailing.scheduled_departure, port.timezone, "en",
                                                           "yyyy-MM-dd HH:mm"),
             "timezone": port.timezone, "disruption_id": disruption.id, "kind": disruption.kind,
             "revision": disruption.revision, "opened": disruption.id in opened, "status": disruption.status}
            for disruption, sailing, port in rows]


# The person a preview sample is addressed to, by the notice's language: the preview is shown and pasted to
# people who have no business seeing which customer happened to be first.
SAMPLE_PERSON = {"en": "Sample Passenger", "zh": "示例乘客"}


def _samples(session: Session, broadcast_id: int) -> list[Sample]:
    first = select(func.min(Notification.id)).where(Notification.broadcast_id == broadcast_id) \
        .group_by(Notification.channel, Notification.language)
    rows = session.execute(select(Notification, Customer).outerjoin(Customer, Customer.id == Notification.customer_id)
                           .where(Notification.id.in_(first))
                           .order_by(Notification.channel.desc(), Notification.language.desc()))
    return [_sample_for_nobody(notice, customer) for notice, customer in rows]


def _sample_for_nobody(notice: Notification, customer: Customer | None) -> Sample:
    """The notice as sent, but to a placeholder person: name, phone and email stood in for, link token blanked."""
    stand_ins = _stand_ins(notice, customer)
    return Sample(notice.channel, notice.language, _without_person(notice.subject, stand_ins),
                  _without_person(notice.body_text, stand_ins), notice.segments)


def _stand_ins(notice: Notification, customer: Customer | None) -> dict[str, str]:
    from notifier.privacy import mask_contact

    found = {notice.recipient: mask_contact(notice.recipient)}
    if customer is not None:
        found |= {customer.phone: mask_contact(customer.phone), customer.email: mask_contact(customer.email),
                  customer.name: SAMPLE_PERSON["zh" if notice.language.startswith("zh") else "en"]}
    return {real: shown for real, shown in found.items() if real and real.strip()}


def _without_person(text: str | None, stand_ins: dict[str, str]) -> str | None:
    if text is None:
        return None
    # Longest first, so a name that is part of an email address goes with the address, masked.
    for real in sorted(stand_ins, key=len, reverse=True):
        text = text.replace(real, stand_ins[real])
    return links.blank_tokens(text)


def _offers_summary(session: Session, disruption_ids: list[int]) -> dict[str, Any]:
    current = and_(Offer.disruption_id.in_(disruption_ids), Offer.revision == Disruption.revision)
    offers = select(Offer).join(Disruption, Disruption.id == Offer.disruption_id).where(current).subquery()
    held = session.execute(
        select(Sailing.code, Sailing.scheduled_departure, Port.timezone, func.sum(offers.c.places),
               func.count(func.distinct(offers.c.booking_id)))
        .join(Sailing, Sailing.id == offers.c.sailing_id).join(Port, Port.id == Sailing.origin_port_id)
        .where(offers.c.kind == "rebook", offers.c.status.in_(("held", "accepted")))
        .group_by(Sailing.code, Sailing.scheduled_departure, Port.timezone)
        .order_by(Sailing.scheduled_departure)).all()
    with_offers = session.scalar(select(func.count(func.distinct(offers.c.booking_id)))) or 0
    with_place = session.scalar(select(func.count(func.distinct(offers.c.booking_id))).where(
        offers.c.kind == "rebook", offers.c.status.in_(("held", "accepted")))) or 0
    refunds = session.scalar(select(func.count()).select_from(offers).where(offers.c.kind == "refund")) or 0
    return {"offers_held": [{"code": code, "departure": local_time(departure, zone, "en", "yyyy-MM-dd HH:mm"),
                             "places": int(places or 0), "bookings": bookings}
                            for code, departure, zone, places, bookings in held],
            "bookings_with_offers": with_offers, "bookings_without_place": with_offers - with_place,
            "refunds_offered": refunds}


@dataclass
class Progress:
    """Where a broadcast's notices are now."""

    broadcast_id: int
    status: str
    counts: Counter
    rate: float  # notices handed to the providers per second, over the last RATE_WINDOW

    @property
    def total(self) -> int:
        """Every notice of the broadcast."""
        return sum(self.counts.values())

    @property
    def sent(self) -> int:
        """Notices handed to the provider (delivered ones included)."""
        return self.counts["sent"] + self.counts["delivered"]

    @property
    def failed(self) -> int:
        """Notices that will not reach their recipient."""
        return sum(self.counts[s] for s in ("failed", "undelivered", "expired", "suppressed"))

    @property
    def remaining(self) -> int:
        """Notices not yet handed to the provider (held, queued or being sent)."""
        return sum(self.counts[s] for s in ("held", "queued", "sending"))


RATE_WINDOW = timedelta(seconds=15)


def progress(factory: sessionmaker[Session], broadcast_id: int, now: datetime | None = None) -> Progress:
    """Counts by delivery status and the current sending rate of one broadcast."""
    now = now or utcnow()
    with factory() as session:
        broadcast = _broadcast(session, broadcast_id)
        counts = Counter(dict(session.execute(
            select(Notification.status, func.count()).where(Notification.broadcast_id == broadcast_id)
            .group_by(Notification.status)).all()))
        recent, first = session.execute(select(func.count(), func.min(Notification.sent_at)).where(
            Notification.broadcast_id == broadcast_id, Notification.sent_at >= now - RATE_WINDOW)).one()
        # Over the part of the window in which it was sending: a burst of 40 in 2 s is 20/s, not 40 per 15 s.
        seconds = min(max((now - first).total_seconds(), 1.0), RATE_WINDOW.total_seconds()) if first else 1.0
        return Progress(broadcast_id, broadcast.status, counts, (recent or 0) / seconds)


def finish_sent_broadcasts(factory: sessionmaker[Session]) -> list[int]:
    """Mark "done" every sending broadcast with nothing left to send; returns their ids."""
    remaining = select(Notification.broadcast_id).where(Notification.status.in_(("held", "queued", "sending")),
                                                        Notification.broadcast_id.is_not(None))
    with transaction(factory) as session:
        finished = list(session.scalars(select(Broadcast).where(Broadcast.status == "sending",
                                                                Broadcast.id.not_in(remaining))))
        for broadcast in finished:
            broadcast.status = "done"
            audit.record(session, "dispatcher", "broadcast.done", "broadcast", broadcast.id,
                         messages=broadcast.recipient_count)
        return [b.id for b in finished]


def recent_broadcasts(factory: sessionmaker[Session], limit: int = 20) -> list[tuple[Broadcast, Counter]]:
    """The newest broadcasts with their notices counted by status."""
    with factory() as session:
        broadcasts = list(session.scalars(select(Broadcast).order_by(Broadcast.id.desc()).limit(limit)))
        counts: dict[int, Counter] = {b.id: Counter() for b in broadcasts}
        for broadcast_id, status, count in session.execute(
                select(Notification.broadcast_id, Notification.status, func.count())
                .where(Notification.broadcast_id.in_(list(counts)))
                .group_by(Notification.broadcast_id, Notification.status)):
            counts[broadcast_id][status] = count
        return [(b, counts[b.id]) for b in broadcasts]
