"""Reminders: one message before the offer deadline to a customer who has not chosen yet (run by the watcher).

Who: a booking with something to choose in its disruption's current revision, no decision, still on the disrupted
sailing, the disruption active, the deadline ahead and at most `Settings.reminder_lead_minutes` away, and a
notice told at least `min_notice_interval_minutes` ago (a short deadline must not put the reminder right behind
the notice).
Where: on a channel the customer was told on, their preferred one first. When every notice on a channel failed
or came back undelivered and nothing reached them elsewhere, on their other channel, if they accept it and have
a usable address there. Never to an address that opted out (a STOP stands; the reminder does not go hunting on
another channel either), never after a choice or the deadline, and never twice: the outbox row's dedup key is
"<booking>:<disruption>:reminder", one per booking and disruption whatever the channel or revision.

The reminder is rendered from the notice's own values (`broadcasts.notice_context`): the same alternatives,
refund, deadline and link, so a reminder never says something the notice did not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from . import audit
from .config import Settings
from .db import insert_ignore, transaction
from .fallback import contact
from .messages import local_time, render
from .models import (Booking, Customer, CustomerResponse, Disruption, Notification, Offer, OptOut, Port, Route,
                     Sailing, utcnow)

TEMPLATE = "reminder"
CHOOSABLE = ("rebook", "standby", "refund")
OPEN_OFFER = ("open", "held", "expired")  # an expired hold can still be taken while places are free
TOLD = ("sent", "delivered")
FAILED = ("failed", "undelivered", "expired", "suppressed")
NOTICE_PURPOSES = ("notice", "fallback")
OTHER_CHANNEL = {"sms": "email", "email": "sms"}
CHUNK = 200


@dataclass(frozen=True)
class Due:
    """A booking whose reminder is due now."""

    booking_id: int
    disruption_id: int
    deadline: datetime


def reminder_key(booking_id: int, disruption_id: int) -> str:
    """The outbox key of a booking's one reminder about a disruption."""
    return f"{booking_id}:{disruption_id}:reminder"


def _unanswered_offers(lead: timedelta | None, now: datetime):  # noqa: ANN202
    """(booking, disruption, deadline) of open choices without a decision, the deadline ahead (within `lead`)."""
    decided = exists().where(CustomerResponse.booking_id == Offer.booking_id,
                             CustomerResponse.disruption_id == Offer.disruption_id,
                             CustomerResponse.decision_key == "choice")
    deadline = func.min(Offer.deadline)
    query = (select(Offer.booking_id, Offer.disruption_id, deadline.label("deadline"))
             .join(Disruption, and_(Disruption.id == Offer.disruption_id, Disruption.revision == Offer.revision))
             .join(Booking, Booking.id == Offer.booking_id)
             .where(Disruption.status == "active", Booking.status == "confirmed",
                    Booking.sailing_id == Disruption.sailing_id, Offer.kind.in_(CHOOSABLE),
                    Offer.status.in_(OPEN_OFFER), Offer.deadline.is_not(None), ~decided)
             .group_by(Offer.booking_id, Offer.disruption_id)
             .having(deadline > now))
    return query if lead is None else query.having(deadline <= now + lead)


def due_reminders(session: Session, settings: Settings, now: datetime) -> list[Due]:
    """Bookings whose one reminder is due now and not yet queued."""
    if settings.reminder_lead_minutes <= 0:
        return []
    reminded = exists().where(Notification.booking_id == Offer.booking_id,
                              Notification.disruption_id == Offer.disruption_id, Notification.purpose == "reminder")
    query = _unanswered_offers(timedelta(minutes=settings.reminder_lead_minutes), now).where(~reminded)
    # By disruption: a chunk then shares one disruption's facts (its alternatives, ports, times).
    return [Due(b, d, deadline) for b, d, deadline in session.execute(query.order_by(Offer.disruption_id,
                                                                                     Offer.booking_id))]


def queue_reminders(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None) -> int:
    """Queue every reminder that is due (run by the watcher); returns how many went into the outbox."""
    now = now or utcnow()
    with factory() as session:
        due = due_reminders(session, settings, now)
    queued = 0
    for start in range(0, len(due), CHUNK):
        with transaction(factory) as session:
            facts: dict[int, Any] = {}
            stops = _opted_out(session)
            added = [d for d in due[start:start + CHUNK] if _queue_one(session, settings, d, now, facts, stops)]
            if added:
                audit.record(session, "watcher", "reminders.queued", None, None, count=len(added),
                             disruptions=sorted({d.disruption_id for d in added}))
            queued += len(added)
    return queued


def _opted_out(session: Session) -> set[tuple[str, str]]:
    return {tuple(row) for row in session.execute(select(OptOut.channel, OptOut.address))}


def _queue_one(session: Session, settings: Settings, due: Due, now: datetime, facts: dict[int, Any],
               stops: set[tuple[str, str]]) -> bool:
    booking = session.get(Booking, due.booking_id)
    customer = session.get(Customer, booking.customer_id)
    channel = reminder_channel(session, customer, due, now, settings, stops)
    if channel is None:
        return False
    disruption = session.get(Disruption, due.disruption_id)
    rendered = render(channel, TEMPLATE, customer.language,
                      reminder_context(session, settings, booking, customer, disruption, due.deadline, facts))
    row = {"dedup_key": reminder_key(booking.id, disruption.id), "booking_id": booking.id,
           "customer_id": customer.id, "disruption_id": disruption.id, "revision": disruption.revision,
           "broadcast_id": None, "channel": channel, "recipient": contact(customer, channel),
           "language": rendered.language, "template": TEMPLATE, "purpose": "reminder", "subject": rendered.subject,
           "body_text": rendered.body_text, "body_html": rendered.body_html, "segments": rendered.segments,
           "safety_critical": False, "status": "queued",
           "priority": int(facts[disruption.id].sailing.scheduled_departure.timestamp()), "attempts": 0,
           "created_at": utcnow()}
    return bool(session.execute(insert_ignore(Notification.__table__, session), [row]).rowcount)


def reminder_channel(session: Session, customer: Customer, due: Due, now: datetime, settings: Settings,
                     stops: set[tuple[str, str]]) -> str | None:
    """The channel for the reminder, or None: no notice told yet, told too recently, every channel failed, or
    the address opted out."""
    notices = session.execute(select(Notification.channel, Notification.status, Notification.sent_at)
                              .where(Notification.booking_id == due.booking_id,
                                     Notification.disruption_id == due.disruption_id,
                                     Notification.purpose.in_(NOTICE_PURPOSES),
                                     Notification.status != "cancelled")).all()
    preferred = [c for c in customer.channels or [] if c in OTHER_CHANNEL]
    told = [n for n in notices if n.status in TOLD]
    if told:
        last = max((n.sent_at for n in told if n.sent_at), default=None)
        if last is not None and now - last < timedelta(minutes=settings.min_notice_interval_minutes):
            return None
        channels = {n.channel for n in told}
        channel = next((c for c in preferred if c in channels), sorted(channels)[0])
    else:
        failed = {n.channel for n in notices} - {n.channel for n in notices if n.status not in FAILED}
        if not failed or len(failed) < len({n.channel for n in notices}):
            return None  # still on its way somewhere: wait for it
        others = [OTHER_CHANNEL[c] for c in failed if OTHER_CHANNEL.get(c) not in failed]
        channel = next((c for c in preferred if c in others), None)
        if channel is None:
            return None  # nowhere left to try: the follow-up worklist has this booking
    address = contact(customer, channel)
    if address is None or (channel, address) in stops:
        return None
    return channel


def reminder_context(session: Session, settings: Settings, booking: Booking, customer: Customer,
                     disruption: Disruption, deadline: datetime, facts: dict[int, Any]) -> dict[str, Any]:
    """The notice's own template values (for this booking's current offers), plus what happens without an
    answer (`no_answer`: "refund" or "first_sailing")."""
    from .broadcasts import SailingFacts, notice_context
    from .offers import candidates_for
    from .responses import default_policy

    if disruption.id not in facts:
        sailing = session.get(Sailing, disruption.sailing_id)
        ports = {port.id: port for port in session.scalars(select(Port))}
        facts[disruption.id] = SailingFacts(
            disruption=disruption, sailing=sailing, origin=ports[sailing.origin_port_id],
            destination=ports[sailing.destination_port_id], route=session.get(Route, sailing.route_id),
            candidates=candidates_for(session, disruption), candidate_ports=ports,
            vessel_name=sailing.vessel.name if sailing.vessel else "")
    offers = list(session.scalars(select(Offer).where(
        Offer.booking_id == booking.id, Offer.disruption_id == disruption.id, Offer.revision == disruption.revision)
        .order_by(Offer.option_key)))
    context = notice_context(facts[disruption.id], booking, customer, offers, settings, customer.language, deadline)
    return {**context, "no_answer": default_policy(settings, facts[disruption.id].route.jurisdiction)}


# --- what the broadcast preview says -------------------------------------------------------------------------------

def planned_reminders(session: Session, broadcast_id: int, settings: Settings | None = None,
                      now: datetime | None = None) -> dict[str, Any]:
    """What reminders a broadcast will lead to: how many of its bookings have a choice to make and none yet,
    when their reminders fall due (first and last, in the port's time), and how many are already queued."""
    lead = (settings or Settings()).reminder_lead_minutes
    told = select(Notification.booking_id, Notification.disruption_id).where(
        Notification.broadcast_id == broadcast_id, Notification.booking_id.is_not(None)).distinct().subquery()
    open_choices = _unanswered_offers(None, now or utcnow()).subquery()
    rows = session.execute(select(open_choices.c.booking_id, open_choices.c.disruption_id, open_choices.c.deadline)
                           .join(told, and_(told.c.booking_id == open_choices.c.booking_id,
                                            told.c.disruption_id == open_choices.c.disruption_id))).all()
    queued = session.scalar(select(func.count()).select_from(Notification).join(
        told, and_(told.c.booking_id == Notification.booking_id, told.c.disruption_id == Notification.disruption_id))
        .where(Notification.purpose == "reminder")) or 0
    plan: dict[str, Any] = {"lead_minutes": lead, "bookings": len(rows), "queued": queued, "first_due": "",
                            "last_due": "", "timezone": ""}
    if rows and lead > 0:
        zone = session.scalar(select(Port.timezone).join(Sailing, Sailing.origin_port_id == Port.id)
                              .join(Disruption, Disruption.sailing_id == Sailing.id)
                              .where(Disruption.id == rows[0].disruption_id))
        moments = sorted(row.deadline - timedelta(minutes=lead) for row in rows)
        plan.update(first_due=local_time(moments[0], zone, "en", "yyyy-MM-dd HH:mm"),
                    last_due=local_time(moments[-1], zone, "en", "yyyy-MM-dd HH:mm"), timezone=zone)
    return plan


def preview_reminders(settings: Settings, broadcast_id: int) -> dict[str, Any]:
    """`planned_reminders` on the configured database (for the console's preview)."""
    from .db import make_engine

    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            return planned_reminders(session, broadcast_id, settings)
    finally:
        engine.dispose()
