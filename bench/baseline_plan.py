"""The straightforward planner: one booking at a time, one ORM object and one render per notice, committed one by
one. It is what planning looked like before notifier.planning, kept as the yardstick: bench/bench_plan.py times
it against the bulk planner, and tests/test_scale.py holds the bulk planner to writing exactly its rows.

It shares the rules with the real planner (offers.make_offers, audience.recipients_for, notices.notice_context,
messages.render, the dedup key, planning order, approval holding) and none of its shortcuts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from notifier.planning.audience import booking_ids_page, opted_out, recipients_for
from notifier.planning.chunks import NoticeSpec
from notifier.planning.plan import record_planned, start_planning
from notifier.planning.chunk_plan import PlanResult
from notifier.planning.notices import dedup_key, notice_context, sailing_facts
from notifier.store.settings import Settings
from notifier.planning.contacts import is_current, recipients_checked
from notifier.store.db import transaction
from notifier.rules.entitlements import notice_priority
from notifier.messages import render
from notifier.store.models import Booking, Broadcast, Customer, Disruption, Notification, Offer, Sailing, utcnow
from notifier.planning.offers import make_offers, planning_order


def plan_one_by_one(factory: sessionmaker[Session], broadcast_id: int, settings: Settings,
                    now: datetime | None = None, stored_contacts: bool = False,
                    limit: int | None = None) -> PlanResult:
    """Plan a broadcast booking by booking, each in its own transaction. `stored_contacts` reads addresses from
    current stored contact checks (as the bulk planner does) instead of validating every number again; `limit`
    stops after that many bookings (the benchmark's sample)."""
    now = now or utcnow()
    disruption_ids, needs_approval, initial_status = start_planning(factory, broadcast_id)
    with factory() as session:
        departures = {d: session.scalar(select(Sailing.scheduled_departure).join(
            Disruption, Disruption.sailing_id == Sailing.id).where(Disruption.id == d)) for d in disruption_ids}
    result = PlanResult(broadcast_id)
    for disruption_id, accessibility in planning_order(departures, settings.offer_priority):
        if limit is not None and result.bookings >= limit:
            break
        _plan_disruption(factory, broadcast_id, disruption_id, accessibility, settings, now, initial_status, result,
                         stored_contacts, limit)
    with transaction(factory) as session:
        record_planned(session, broadcast_id, result, settings, needs_approval)
    return result


def _plan_disruption(factory: sessionmaker[Session], broadcast_id: int, disruption_id: int,
                     accessibility: bool | None, settings: Settings, now: datetime, initial_status: str,
                     result: PlanResult, stored_contacts: bool, limit: int | None) -> None:
    with factory() as session:
        disruption = session.get(Disruption, disruption_id)
        if disruption.planned_revision >= disruption.revision and disruption.status != "active":
            return
        facts = sailing_facts(session, disruption)
        broadcast = session.get(Broadcast, broadcast_id)
        template, channels, audience = broadcast.template, list(broadcast.channels), broadcast.audience
        notice = NoticeSpec.of(broadcast, disruption, settings)
        session.expunge_all()
    after = 0
    while limit is None or result.bookings < limit:
        with factory() as session:
            ids = booking_ids_page(session, facts.sailing.id, audience, accessibility, after, 1000)
        if not ids:
            break
        for booking_id in ids:
            if limit is not None and result.bookings >= limit:
                return
            with transaction(factory) as session:
                _plan_booking(session, broadcast_id, facts, booking_id, template, channels, settings, now,
                              initial_status, result, notice, stored_contacts)
        after = ids[-1]
    with transaction(factory) as session:
        session.execute(update(Disruption).where(Disruption.id == disruption_id)
                        .values(planned_revision=facts.disruption.revision))


def _plan_booking(session: Session, broadcast_id: int, facts, booking_id: int, template: str,  # noqa: ANN001
                  channels: list[str], settings: Settings, now: datetime, initial_status: str, result: PlanResult,
                  notice: NoticeSpec, stored_contacts: bool) -> None:
    disruption = facts.disruption
    booking = session.get(Booking, booking_id)
    customer = session.get(Customer, booking.customer_id)
    offers = list(session.scalars(select(Offer).where(
        Offer.booking_id == booking.id, Offer.disruption_id == disruption.id,
        Offer.revision == disruption.revision).order_by(Offer.id)))
    if not offers and notice.new_offers:
        offers = make_offers(session, booking, disruption, facts.candidates, settings, now)
        session.flush()
    respect = settings.safety_critical_opt_out != "send"
    if stored_contacts and is_current(customer.contact_check, customer.phone, customer.email):
        recipients, unreachable = recipients_checked(booking, customer, customer.contact_check, channels,
                                                     opted_out(session), respect)
    else:
        recipients, unreachable = recipients_for(booking, customer, channels, opted_out(session), respect)
    result.unreachable.extend(unreachable)
    result.bookings += 1
    deadline = next((o.deadline for o in offers if o.deadline), None)
    for recipient in recipients:
        context = notice_context(facts, booking, customer, offers, settings, recipient.language, deadline,
                                 notice.reason)
        rendered = render(recipient.channel, template, recipient.language, context)
        key = dedup_key(booking.id, recipient.address, recipient.channel, disruption.id,
                        disruption.revision) + notice.key_suffix
        result.by_channel_language[(recipient.channel, rendered.language)] += 1
        result.segments += rendered.segments
        other = session.scalar(select(Notification).where(Notification.dedup_key == key))
        if other is not None:
            result.skipped_existing += 1
            if other.broadcast_id != broadcast_id:
                result.skipped_by.setdefault((other.broadcast_id or 0, other.disruption_id or 0, other.revision),
                                             set()).add(booking.id)
            continue
        session.add(Notification(
            dedup_key=key, booking_id=booking.id, customer_id=customer.id, disruption_id=disruption.id,
            revision=disruption.revision, broadcast_id=broadcast_id, channel=recipient.channel,
            recipient=recipient.address, language=rendered.language, template=template, purpose="notice",
            subject=rendered.subject, body_text=rendered.body_text, body_html=rendered.body_html,
            segments=rendered.segments, safety_critical=True, status=initial_status,
            priority=notice_priority(facts.sailing.scheduled_departure, facts.route.jurisdiction, disruption.kind),
            attempts=0, created_at=utcnow()))
        result.notifications += 1
