"""Plan a broadcast into notification rows: audience, offers and rendered messages, committed in chunks.

Each chunk of bookings commits its holds, offers and outbox rows together, so a crash loses at most the chunk
in flight and a re-run skips what was committed (offers per booking and revision, and the outbox's unique
dedup_key). Notices are dispatchable as soon as their chunk commits: the dispatcher never waits for the plan.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from . import audit, links
from .audience import AUDIENCE_KINDS, Recipient, Unreachable, booking_ids_page, opted_out, recipients_for
from .config import Settings
from .db import insert_ignore, transaction
from .messages import local_time, money, render
from .models import Booking, Broadcast, Customer, Disruption, Notification, Offer, Port, Route, Sailing, utcnow
from .offers import Candidate, candidates_for, make_offers

CAUSE_WORDS = {"en": {"weather": "severe weather", "port_closure": "a port closure", "strike": "industrial action",
                      "technical": "a technical fault", "schedule": "a schedule change"},
               "zh-CN": {"weather": "恶劣天气", "port_closure": "港口关闭", "strike": "罢工",
                         "technical": "技术故障", "schedule": "班期调整"}}
TYPHOON_WORDS = {"en": "the typhoon", "zh-CN": "台风"}


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
    local: dict[tuple[str, str], str] = field(default_factory=dict)  # (what, language) -> formatted text


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
                   now: datetime | None = None, chunk: int = 1000) -> PlanResult:
    """Plan every disruption of a broadcast into the outbox, chunk by chunk; safe to re-run after a crash."""
    now = now or utcnow()
    with transaction(factory) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        disruption_ids = list(broadcast.target.get("disruption_ids", []))
        needs_approval = _needs_approval(session, broadcast, disruption_ids)
        broadcast.needs_approval = needs_approval
    result = PlanResult(broadcast_id)
    initial_status = "held" if needs_approval else "queued"
    for disruption_id in sorted(disruption_ids, key=lambda d: _departure_of(factory, d)):
        _plan_disruption(factory, broadcast_id, disruption_id, settings, now, chunk, initial_status, result)
    with transaction(factory) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        broadcast.recipient_count = session.scalar(
            select(func.count()).select_from(Notification).where(Notification.broadcast_id == broadcast_id))
        if broadcast.status == "planning":
            broadcast.status = "awaiting_approval" if needs_approval else "sending"
        audit.record(session, broadcast.created_by, "broadcast.planned", "broadcast", broadcast_id,
                     notifications=result.notifications, unreachable=len(result.unreachable),
                     status=broadcast.status)
    return result


def _departure_of(factory: sessionmaker[Session], disruption_id: int) -> datetime:
    with factory() as session:
        return session.scalar(select(Sailing.scheduled_departure).join(Disruption, Disruption.sailing_id == Sailing.id)
                              .where(Disruption.id == disruption_id))


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


def _plan_disruption(factory: sessionmaker[Session], broadcast_id: int, disruption_id: int, settings: Settings,
                     now: datetime, chunk: int, initial_status: str, result: PlanResult) -> None:
    with factory() as session:
        disruption = session.get(Disruption, disruption_id)
        if disruption.planned_revision >= disruption.revision and disruption.status != "active":
            return
        facts = _sailing_facts(session, disruption)
        broadcast = session.get(Broadcast, broadcast_id)
        template, channels, audience = broadcast.template, list(broadcast.channels), broadcast.audience
        session.expunge_all()
    for batch in _booking_batches(factory, facts.sailing.id, audience, chunk):
        with transaction(factory) as session:
            _plan_chunk(session, broadcast_id, facts, batch, template, channels, settings, now, initial_status,
                        result)
    with transaction(factory) as session:
        session.execute(update(Disruption).where(Disruption.id == disruption_id)
                        .values(planned_revision=facts.disruption.revision))


def _booking_batches(factory: sessionmaker[Session], sailing_id: int, audience: str, chunk: int):  # noqa: ANN202
    # Passengers with accessibility needs get scarce held places first. Each page is read in its own short
    # session, so no read stays open while the chunk's write transaction commits.
    for accessibility in (True, False):
        after = 0
        while True:
            with factory() as session:
                ids = booking_ids_page(session, sailing_id, audience, accessibility, after, chunk)
            if not ids:
                break
            yield ids
            after = ids[-1]


def _sailing_facts(session: Session, disruption: Disruption) -> SailingFacts:
    sailing = session.get(Sailing, disruption.sailing_id)
    candidates = candidates_for(session, disruption)
    ports = {p.id: p for p in session.scalars(select(Port))} if candidates else {}
    return SailingFacts(disruption=disruption, sailing=sailing, origin=session.get(Port, sailing.origin_port_id),
                        destination=session.get(Port, sailing.destination_port_id),
                        route=session.get(Route, sailing.route_id), candidates=candidates, candidate_ports=ports,
                        vessel_name=sailing.vessel.name if sailing.vessel else "")


def _plan_chunk(session: Session, broadcast_id: int, facts: SailingFacts, booking_ids: list[int], template: str,
                channels: list[str], settings: Settings, now: datetime, initial_status: str,
                result: PlanResult) -> None:
    disruption = facts.disruption
    already = set(session.scalars(select(Offer.booking_id).where(
        Offer.booking_id.in_(booking_ids), Offer.disruption_id == disruption.id,
        Offer.revision == disruption.revision)))
    rows = session.execute(select(Booking, Customer).join(Customer, Customer.id == Booking.customer_id)
                           .where(Booking.id.in_(booking_ids)).order_by(Booking.id)).all()
    respect = not (settings.safety_critical_opt_out == "send")
    stops = opted_out(session)
    values = []
    for booking, customer in rows:
        if booking.id in already:
            offers = list(session.scalars(select(Offer).where(
                Offer.booking_id == booking.id, Offer.disruption_id == disruption.id,
                Offer.revision == disruption.revision)))
        else:
            offers = make_offers(session, booking, disruption, facts.candidates, settings, now)
        recipients, unreachable = recipients_for(booking, customer, channels, stops, respect)
        result.unreachable.extend(unreachable)
        result.bookings += 1
        for recipient in recipients:
            values.append(_notification_row(broadcast_id, facts, booking, customer, offers, recipient, template,
                                            settings, initial_status))
    session.flush()
    if values:
        inserted = session.execute(insert_ignore(Notification.__table__, session), values).rowcount
        result.notifications += max(inserted, 0)
        result.skipped_existing += len(values) - max(inserted, 0)
        for row in values:
            result.by_channel_language[(row["channel"], row["language"])] += 1
            result.segments += row["segments"]


def dedup_key(booking_id: int | None, recipient: str, channel: str, disruption_id: int | None, revision: int) -> str:
    """The outbox's unique key: the same notice is never planned twice, whoever triggered it."""
    return f"{booking_id}:{recipient}:{channel}:{disruption_id}:{revision}"


def _notification_row(broadcast_id: int, facts: SailingFacts, booking: Booking, customer: Customer,
                      offers: list[Offer], recipient: Recipient, template: str, settings: Settings,
                      initial_status: str) -> dict[str, Any]:
    disruption = facts.disruption
    deadline = next((o.deadline for o in offers if o.deadline), None)
    context = notice_context(facts, booking, customer, offers, settings, recipient.language, deadline)
    rendered = render(recipient.channel, template, recipient.language, context)
    return {"dedup_key": dedup_key(booking.id, recipient.address, recipient.channel, disruption.id,
                                   disruption.revision),
            "booking_id": booking.id, "customer_id": customer.id, "disruption_id": disruption.id,
            "revision": disruption.revision, "broadcast_id": broadcast_id, "channel": recipient.channel,
            "recipient": recipient.address, "language": rendered.language, "template": template,
            "purpose": "notice", "subject": rendered.subject, "body_text": rendered.body_text,
            "body_html": rendered.body_html, "segments": rendered.segments, "safety_critical": True,
            "status": initial_status, "priority": int(facts.sailing.scheduled_departure.timestamp()),
            "attempts": 0, "created_at": utcnow()}


def _port_name(port: Port, language: str) -> str:
    return port.name_zh if language.startswith("zh") and port.name_zh else port.name


def _cached(facts: SailingFacts, key: str, language: str, make) -> str:  # noqa: ANN001
    if (key, language) not in facts.local:
        facts.local[(key, language)] = make()
    return facts.local[(key, language)]


def notice_context(facts: SailingFacts, booking: Booking, customer: Customer, offers: list[Offer],
                   settings: Settings, language: str, deadline: datetime | None,
                   reason: str | None = None) -> dict[str, Any]:
    """The values a notice template may use (every one always present, so StrictUndefined catches typos)."""
    lang = "zh-CN" if language.startswith("zh") else "en"
    sailing, disruption, tz = facts.sailing, facts.disruption, facts.origin.timezone
    by_id = {c.sailing_id: c for c in facts.candidates}
    alternatives = []
    for offer in offers:
        if offer.kind in {"rebook", "standby"} and offer.sailing_id in by_id:
            candidate = by_id[offer.sailing_id]
            alternatives.append({"key": offer.option_key, "code": candidate.code, "held": offer.status == "held",
                                 "departure": _cached(facts, f"dep{candidate.sailing_id}", language,
                                                      lambda c=candidate: local_time(c.departure, tz, language))})
    refund = next((o for o in offers if o.kind == "refund"), None)
    policy = set(disruption.policy.get("entitlements", []))
    token = links.make_token(settings.secret_key or "demo-secret", booking.id, disruption.id,
                             deadline or sailing.scheduled_departure)
    cause_key = disruption.cause
    typhoon = "typhoon" in (disruption.cause_text or "").lower() or "cyclone" in (disruption.cause_text or "").lower()
    return {
        "company": settings.company_name_zh if lang == "zh-CN" else settings.company_name,
        "helpline": settings.helpline,
        "customer": {"name": customer.name},
        "booking": {"ref": booking.ref, "kind": booking.kind, "party_size": booking.party_size,
                    "teu": booking.teu},
        "sailing": {"code": sailing.code, "route": facts.route.name,
                    "origin": _port_name(facts.origin, language),
                    "destination": _port_name(facts.destination, language),
                    "departure": _cached(facts, "dep", language,
                                         lambda: local_time(sailing.scheduled_departure, tz, language)),
                    "arrival": _cached(facts, "arr", language,
                                       lambda: local_time(sailing.scheduled_arrival, facts.destination.timezone,
                                                          language)),
                    "vessel": facts.vessel_name, "voyage": sailing.voyage or ""},
        "disruption": {"kind": disruption.kind, "delay_minutes": disruption.delay_minutes,
                       "cause": TYPHOON_WORDS[lang] if typhoon else CAUSE_WORDS[lang].get(cause_key, cause_key),
                       "event": disruption.cause_text or ""},
        "reason": reason or "",
        "alternatives": alternatives,
        "refund": {"amount": money(refund.amount, refund.currency, language)} if refund else None,
        "deadline": local_time(deadline, tz, language) if deadline else "",
        "link": links.choice_url(settings.public_base_url, token),
        "do_not_come": "do_not_come_to_port" in policy,
        "eu": facts.route.jurisdiction == "EU",
    }
