"""What a broadcast will do and is doing: the preview a duty officer reads before sending, progress while it
goes out, the list of recent broadcasts, and the mark that a broadcast is done."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.broadcasts.manual import broadcast_of
from notifier.messages import local_time
from notifier.planning import links
from notifier.privacy import mask_contact
from notifier.store import audit
from notifier.store.db import transaction
from notifier.store.models import Broadcast, Customer, Disruption, Notification, Offer, Port, Sailing, utcnow
from notifier.store.settings import Settings
from notifier.store.status import ACCEPTED, CANCELLED, DONE, HELD, QUEUED, SENDING


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
        broadcast = broadcast_of(session, broadcast_id)
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
            Notification.booking_id.in_(sorted(ids)[start:start + 500]), Notification.status != CANCELLED,
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
        .where(offers.c.kind == "rebook", offers.c.status.in_((HELD, ACCEPTED)))
        .group_by(Sailing.code, Sailing.scheduled_departure, Port.timezone)
        .order_by(Sailing.scheduled_departure)).all()
    with_offers = session.scalar(select(func.count(func.distinct(offers.c.booking_id)))) or 0
    with_place = session.scalar(select(func.count(func.distinct(offers.c.booking_id))).where(
        offers.c.kind == "rebook", offers.c.status.in_((HELD, ACCEPTED)))) or 0
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
        broadcast = broadcast_of(session, broadcast_id)
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
    remaining = select(Notification.broadcast_id).where(Notification.status.in_((HELD, QUEUED, SENDING)),
                                                        Notification.broadcast_id.is_not(None))
    with transaction(factory) as session:
        finished = list(session.scalars(select(Broadcast).where(Broadcast.status == SENDING,
                                                                Broadcast.id.not_in(remaining))))
        for broadcast in finished:
            broadcast.status = DONE
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
