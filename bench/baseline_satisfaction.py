"""The satisfaction-request job as it was before chunking, frozen: per settled booking three gets, a query of its
requests and one of its notifications, two INSERTs, a SELECT and an UPDATE, the whole opt-out table per
disruption. bench/bench_satisfaction.py measures the chunked `satisfaction.queue_requests` against it, and
tests/test_satisfaction.py holds the chunked job to the very rows it writes.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from notifier.store import audit
from notifier.store.db import insert_ignore, transaction
from notifier.delivery.fallback import contact
from notifier.aftercare.followups import refresh
from notifier.messages import render
from notifier.store.models import Booking, Customer, Disruption, Notification, OptOut, SatisfactionRequest, utcnow
from notifier.aftercare.satisfaction import TEMPLATE, Settlement, request_context, resolved_disruptions
from notifier.store.status import REACHED as TOLD, REFUSED as FAILED


def old_queue_requests(factory: sessionmaker[Session], settings: Any, now: Any, limit: int | None = None
                       ) -> tuple[int, float]:
    """The old `queue_requests`, asking the first `limit` settled bookings (all by default); returns how many it asked and how long
    its preamble (raising follow-ups, finding the resolved disruptions: unchanged, over all of them) took."""
    started = time.perf_counter()
    with transaction(factory) as session:
        refresh(session, settings, now)
    with factory() as session:
        resolved = resolved_disruptions(session, now)
    preamble = time.perf_counter() - started
    queued = 0
    left = sum(len(rows) for rows in resolved.values()) if limit is None else limit
    for disruption_id, rows in sorted(resolved.items()):
        if left <= 0:
            break
        rows, left = rows[:left], left - len(rows)
        with transaction(factory) as session:
            stops = {tuple(row) for row in session.execute(select(OptOut.channel, OptOut.address))}
            asked = [r for r in rows if _old_ask(session, settings, r, now, stops)]
            if asked:
                audit.record(session, "watcher", "satisfaction.requested", "disruption", disruption_id,
                             requests=len(asked))
            queued += len(asked)
    return queued, preamble


def _old_ask(session: Session, settings: Any, settlement: Settlement, now: Any, stops: set) -> bool:
    disruption = session.get(Disruption, settlement.disruption_id)
    booking = session.get(Booking, settlement.booking_id)
    customer = session.get(Customer, booking.customer_id)
    if session.scalar(select(SatisfactionRequest.id).where(SatisfactionRequest.customer_id == customer.id,
                                                           SatisfactionRequest.sailing_id == disruption.sailing_id)):
        return False
    channel = _old_channel(session, customer, booking.id, stops)
    if channel is None:
        return False
    inserted = session.execute(insert_ignore(SatisfactionRequest.__table__, session), [{
        "customer_id": customer.id, "booking_id": booking.id, "disruption_id": disruption.id,
        "sailing_id": disruption.sailing_id, "channel": channel, "requested_at": now}]).rowcount
    if not inserted:
        return False
    rendered = render(channel, TEMPLATE, customer.language,
                      request_context(session, settings, customer, booking, disruption.sailing_id))
    key = f"{customer.id}:{disruption.sailing_id}:satisfaction"
    session.execute(insert_ignore(Notification.__table__, session), [{
        "dedup_key": key, "booking_id": booking.id, "customer_id": customer.id, "disruption_id": None,
        "revision": 0, "broadcast_id": None, "channel": channel, "recipient": contact(customer, channel),
        "language": rendered.language, "template": TEMPLATE, "purpose": "satisfaction",
        "subject": rendered.subject, "body_text": rendered.body_text, "body_html": rendered.body_html,
        "segments": rendered.segments, "safety_critical": False, "status": "queued",
        "priority": int((now + timedelta(days=30)).timestamp()), "attempts": 0, "created_at": utcnow()}])
    notification_id = session.scalar(select(Notification.id).where(Notification.dedup_key == key))
    asked = session.scalar(select(SatisfactionRequest).where(SatisfactionRequest.customer_id == customer.id,
                                                             SatisfactionRequest.sailing_id == disruption.sailing_id))
    asked.notification_id = notification_id
    return True


def _old_channel(session: Session, customer: Customer, booking_id: int, stops: set) -> str | None:
    outcomes = session.execute(select(Notification.channel, Notification.status)
                               .where(Notification.booking_id == booking_id)).all()
    reached = {channel for channel, status in outcomes if status in TOLD}
    failed = {channel for channel, status in outcomes if status in FAILED}
    preferred = [c for c in customer.channels or [] if c in reached]
    for channel in sorted(preferred, key=lambda c: (c in failed, preferred.index(c))):
        address = contact(customer, channel)
        if address is not None and (channel, address) not in stops:
            return channel
    return None
