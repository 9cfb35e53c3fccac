"""Corrections: a manual broadcast to everyone a broadcast has already told, on the same channel and address,
planned on hold like any manual broadcast."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from notifier.broadcasts.manual import (NothingToSend, broadcast_of, clean_reason, count_notices,
                                        require_operator, require_recipients, single_transaction, template_for)
from notifier.messages import render
from notifier.planning.notices import SailingFacts, dedup_key, notice_context, sailing_facts
from notifier.planning.plan import MAX_CHUNK, decide_manual_approval, preview_facts
from notifier.planning.chunk_plan import PlanResult, note_skipped
from notifier.store import audit
from notifier import outbox
from notifier.store.db import transaction
from notifier.store.models import Booking, Broadcast, Customer, Disruption, Notification, utcnow
from notifier.store.settings import Settings
from notifier.store.status import HELD, PLANNING, TOLD


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
            original = broadcast_of(session, original_id)
            if not count_notices(session, original_id, TOLD):
                raise NothingToSend(f"broadcast #{original_id} has told nobody yet: nothing to correct "
                                    f"(to stop it, `notifier broadcast cancel {original_id}`)")
            correction = Broadcast(origin="manual", status=PLANNING, kind="correction", template=template,
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
            correction.preview = preview_facts(correction.preview, result)
            decide_manual_approval(correction, settings)
            audit.record(session, operator, "broadcast.planned", "broadcast", correction_id,
                         notifications=result.notifications, status=correction.status)
            require_recipients(correction)
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
            facts[told.disruption_id] = sailing_facts(session, session.get(Disruption, told.disruption_id))
        about = facts[told.disruption_id]
        context = notice_context(about, booking, customer, [], settings, told.language, None, reason)
        rendered = render(told.channel, template, told.language, context)
        values.append({"dedup_key": dedup_key(booking.id, told.recipient, told.channel, told.disruption_id,
                                              told.revision) + f":correction:{original_id}",
                       "booking_id": booking.id, "customer_id": customer.id, "disruption_id": told.disruption_id,
                       "revision": told.revision, "broadcast_id": correction_id, "channel": told.channel,
                       "recipient": told.recipient, "language": rendered.language, "template": template,
                       "purpose": "correction", "subject": rendered.subject, "body_text": rendered.body_text,
                       "body_html": rendered.body_html, "segments": rendered.segments, "safety_critical": True,
                       "status": HELD, "priority": told.priority, "attempts": 0, "created_at": utcnow()})
    result.bookings += len({row["booking_id"] for row in values})
    if values:
        inserted = outbox.add(session, values, columns=None)
        result.notifications += max(inserted, 0)
        if inserted < len(values):
            result.skipped_existing += len(values) - max(inserted, 0)
            note_skipped(session, correction_id, [row["dedup_key"] for row in values], result)
