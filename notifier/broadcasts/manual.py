"""Manual broadcasts: a duty officer's target, create, approve, send, pause, resume and cancel.

A duty officer's broadcast enters the pipeline at "disruptions": it opens (or reuses) the disruption of each
targeted sailing through notifier.disruptions, so its notices share the outbox's dedup key space with automatic
ones. It is created and planned in one database transaction (any error: nothing written) with every notice
"held", so the preview is exactly what `send` releases. Corrections are in broadcasts.correction, the preview and
progress in broadcasts.preview. A little over 500 lines, one piece: the target's resolution and every status move
share the request's checks and the broadcast's guards.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from notifier.disruptions import apply_impacts, clear, strength
from notifier.errors import NotifierError, UsageError
from notifier.messages import TemplateError
from notifier.planning.audience import AUDIENCE_KINDS
from notifier.planning.notices import CAUSE_WORDS
from notifier.store.capacity import release
from notifier.planning.plan import MAX_CHUNK, plan_broadcast
from notifier.rules.model import Impact
from notifier.store import audit
from notifier.store.db import transaction
from notifier.store.models import Broadcast, Disruption, Notification, Offer, Port, Route, Sailing, Vessel, utcnow
from notifier.store.paths import templates_dir
from notifier.store.settings import Settings
from notifier.store.status import (ACTIVE, APPROVED, AWAITING_APPROVAL, CANCELLED, DEPARTED, DONE, HELD, PAUSED,
                                   PLANNING, QUEUED, SENDING, SUPERSEDED, TOLD, UNSENT)

MANUAL_KINDS = ("cancelled", "delayed", "advisory", "resumed")
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
            require_recipients(session.get(Broadcast, broadcast_id))
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
    broadcast = Broadcast(origin="manual", status=PLANNING, kind=kind, template=template,
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
        if sailing.status == DEPARTED or sailing.scheduled_departure < now - DEPARTED_GRACE:
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
                                                         Disruption.status.in_((ACTIVE, SUPERSEDED)))))
    active = {d.kind: d for d in live if d.status == ACTIVE}
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


def require_recipients(broadcast: Broadcast) -> None:
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


def broadcast_of(session: Session, broadcast_id: int) -> Broadcast:
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise UsageError(f"unknown broadcast #{broadcast_id} (see `notifier broadcast list`)")
    return broadcast


def approve(factory: sessionmaker[Session], broadcast_id: int, operator: str, now: datetime | None = None) -> None:
    """Approve a broadcast awaiting approval; the approver must not be the operator who created it."""
    operator, now = require_operator(operator), now or utcnow()
    with transaction(factory) as session:
        broadcast = broadcast_of(session, broadcast_id)
        if broadcast.status != AWAITING_APPROVAL:
            raise NotifierError(f"broadcast #{broadcast_id} is {broadcast.status.replace('_', ' ')}: "
                                "nothing to approve")
        if operator.casefold() == broadcast.created_by.casefold():
            raise ApprovalNeeded(f"broadcast #{broadcast_id} was created by {broadcast.created_by}; "
                                 "a different operator must approve it")
        broadcast.status, broadcast.approved_by, broadcast.approved_at = APPROVED, operator, now
        audit.record(session, operator, "broadcast.approved", "broadcast", broadcast_id,
                     created_by=broadcast.created_by, messages=broadcast.recipient_count)


def send(factory: sessionmaker[Session], broadcast_id: int, operator: str, now: datetime | None = None) -> int:
    """Release an approved broadcast's held notices to the dispatcher; returns how many were released
    (0 when it is already sending). An unapproved broadcast raises ApprovalNeeded and nothing changes."""
    operator = require_operator(operator)
    with transaction(factory) as session:
        broadcast = broadcast_of(session, broadcast_id)
        if broadcast.status == AWAITING_APPROVAL:
            raise ApprovalNeeded(f"broadcast #{broadcast_id} needs approval first: another operator runs "
                                 f"`notifier broadcast approve {broadcast_id} --operator NAME`")
        if broadcast.status in (CANCELLED, DONE, PLANNING):
            raise NotifierError(f"broadcast #{broadcast_id} is {broadcast.status}: nothing to send")
        if broadcast.status in (SENDING, PAUSED):
            return 0
        released = session.execute(
            update(Notification).where(Notification.broadcast_id == broadcast_id, Notification.status == HELD)
            .values(status=QUEUED, next_attempt_at=None).execution_options(synchronize_session=False)).rowcount
        broadcast.status = SENDING
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
        broadcast = broadcast_of(session, broadcast_id)
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
        broadcast = broadcast_of(session, broadcast_id)
        if broadcast.status in (CANCELLED, DONE):
            hint = f"; to correct what was said use `notifier broadcast correct {broadcast_id}`" \
                if broadcast.status == DONE else ""
            raise NotifierError(f"broadcast #{broadcast_id} is {broadcast.status}: nothing to cancel{hint}")
        cancelled = session.execute(
            update(Notification).where(Notification.broadcast_id == broadcast_id, Notification.status.in_(UNSENT))
            .values(status=CANCELLED, final_at=now, error_message=f"broadcast cancelled by {operator}")
            .execution_options(synchronize_session=False)).rowcount
        broadcast.status = CANCELLED
        session.flush()
        result = CancelResult(cancelled=cancelled, told=count_notices(session, broadcast_id, TOLD),
                              holds_released=_release_untold_holds(session, broadcast),
                              disruptions_cleared=_clear_unannounced(session, broadcast, now, operator))
        audit.record(session, operator, "broadcast.cancelled", "broadcast", broadcast_id, cancelled=cancelled,
                     told=result.told, holds_released=result.holds_released,
                     disruptions_cleared=result.disruptions_cleared)
        return result


def count_notices(session: Session, broadcast_id: int, statuses: tuple[str, ...]) -> int:
    return session.scalar(select(func.count()).select_from(Notification).where(
        Notification.broadcast_id == broadcast_id, Notification.status.in_(statuses))) or 0


def _live_elsewhere(broadcast_id: int, disruption_ids: list[int]):  # noqa: ANN202
    """Bookings another broadcast is telling (or told) about the same disruptions."""
    return select(Notification.booking_id).where(
        Notification.disruption_id.in_(disruption_ids), Notification.status != CANCELLED,
        or_(Notification.broadcast_id.is_(None), Notification.broadcast_id != broadcast_id))


def _release_untold_holds(session: Session, broadcast: Broadcast) -> int:
    disruption_ids = list(broadcast.target.get("disruption_ids", []))
    told = select(Notification.booking_id).where(Notification.broadcast_id == broadcast.id,
                                                 Notification.status.in_(TOLD))
    ours = select(Notification.booking_id).where(Notification.broadcast_id == broadcast.id)
    offers = session.scalars(select(Offer).join(Disruption, Disruption.id == Offer.disruption_id).where(
        Offer.disruption_id.in_(disruption_ids), Offer.revision == Disruption.revision, Offer.status == HELD,
        Offer.booking_id.in_(ours), Offer.booking_id.not_in(told),
        Offer.booking_id.not_in(_live_elsewhere(broadcast.id, disruption_ids))))
    return sum(1 for offer in list(offers) if release(session, offer, "released"))


def _clear_unannounced(session: Session, broadcast: Broadcast, now: datetime, operator: str) -> list[int]:
    cleared = []
    for disruption_id in broadcast.target.get("opened", []):
        disruption = session.get(Disruption, disruption_id)
        anyone_told = session.scalar(select(func.count()).select_from(Notification).where(
            Notification.disruption_id == disruption_id, Notification.status.in_(TOLD)))
        if disruption.status == ACTIVE and not anyone_told:
            clear(session, disruption, now, operator)  # gives its held places back too
            cleared.append(disruption_id)
    return cleared
