"""The reminder job as it was before chunking, frozen: per due reminder three gets, a query of its notices, a
query of its offers and one INSERT. bench/bench_reminders.py measures the chunked `reminders.queue_reminders`
against it, and tests/test_reminders.py holds the chunked job to the very rows it writes.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.store import audit
from notifier.store.db import insert_ignore, transaction
from notifier.delivery.fallback import contact
from notifier.messages import render
from notifier.store.models import (Booking, Customer, Disruption, Notification, Offer, OptOut, Port, Route, Sailing,
                                   utcnow)
from notifier.store.status import LOST as FAILED, REACHED as TOLD
from notifier.aftercare.reminders import (NOTICE_PURPOSES, OTHER_CHANNEL, TEMPLATE, Due,
                                          _unanswered_offers, reminder_key)

OLD_CHUNK = 200


def old_queue_reminders(factory: sessionmaker[Session], settings: Any, now: Any, limit: int | None = None
                        ) -> tuple[int, float]:
    """The old `queue_reminders`, on the first `limit` due reminders (all by default); returns how many it queued and how long its
    query of what is due took (that query is over every due reminder, whatever the limit)."""
    started = time.perf_counter()
    with factory() as session:
        due = old_due_reminders(session, settings, now)[:limit]
    query_seconds = time.perf_counter() - started
    queued = 0
    for start in range(0, len(due), OLD_CHUNK):
        with transaction(factory) as session:
            facts: dict[int, Any] = {}
            stops = {tuple(row) for row in session.execute(select(OptOut.channel, OptOut.address))}
            added = [d for d in due[start:start + OLD_CHUNK] if _old_queue_one(session, settings, d, now, facts,
                                                                               stops)]
            if added:
                audit.record(session, "watcher", "reminders.queued", None, None, count=len(added),
                             disruptions=sorted({d.disruption_id for d in added}))
            queued += len(added)
    return queued, query_seconds


def old_due_reminders(session: Session, settings: Any, now: Any) -> list[Due]:
    """The old query of what is due: its "reminded" test let SQLite search a disruption's notices."""
    reminded = exists().where(Notification.booking_id == Offer.booking_id,
                              Notification.disruption_id == Offer.disruption_id, Notification.purpose == "reminder")
    query = _unanswered_offers(timedelta(minutes=settings.reminder_lead_minutes), now).where(~reminded)
    return [Due(b, d, deadline) for b, d, deadline in session.execute(query.order_by(Offer.disruption_id,
                                                                                     Offer.booking_id))]


def _old_queue_one(session: Session, settings: Any, due: Due, now: Any, facts: dict[int, Any], stops: set) -> bool:
    booking = session.get(Booking, due.booking_id)
    customer = session.get(Customer, booking.customer_id)
    channel = _old_channel(session, customer, due, now, settings, stops)
    if channel is None:
        return False
    disruption = session.get(Disruption, due.disruption_id)
    rendered = render(channel, TEMPLATE, customer.language,
                      _old_context(session, settings, booking, customer, disruption, due.deadline, facts))
    row = {"dedup_key": reminder_key(booking.id, disruption.id), "booking_id": booking.id,
           "customer_id": customer.id, "disruption_id": disruption.id, "revision": disruption.revision,
           "broadcast_id": None, "channel": channel, "recipient": contact(customer, channel),
           "language": rendered.language, "template": TEMPLATE, "purpose": "reminder", "subject": rendered.subject,
           "body_text": rendered.body_text, "body_html": rendered.body_html, "segments": rendered.segments,
           "safety_critical": False, "status": "queued",
           "priority": int(facts[disruption.id].sailing.scheduled_departure.timestamp()), "attempts": 0,
           "created_at": utcnow()}
    return bool(session.execute(insert_ignore(Notification.__table__, session), [row]).rowcount)


def _old_channel(session: Session, customer: Customer, due: Due, now: Any, settings: Any, stops: set) -> str | None:
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
            return None
        others = [OTHER_CHANNEL[c] for c in failed if OTHER_CHANNEL.get(c) not in failed]
        channel = next((c for c in preferred if c in others), None)
        if channel is None:
            return None
    address = contact(customer, channel)
    if address is None or (channel, address) in stops:
        return None
    return channel


def _old_context(session: Session, settings: Any, booking: Booking, customer: Customer, disruption: Disruption,
                 deadline: Any, facts: dict[int, Any]) -> dict[str, Any]:
    from notifier.planning.notices import SailingFacts, notice_context
    from notifier.store.capacity import candidates_for
    from notifier.aftercare.responses import default_policy

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
