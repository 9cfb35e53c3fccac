"""Fallback: a notice whose SMS failed for good (or was reported undelivered) goes out once by email, and an email
refused for good goes out once by SMS, when the customer has that contact.

The fallback is a new outbox row (purpose "fallback", dedup key "<original>:fallback"), so it is planned at most
once whoever notices the failure first (the dispatcher, a status callback, or both at once), and it is audited.
No fallback is planned when the customer is already told on the other channel for the same notice, when the
other address opted out (per Settings.safety_critical_opt_out), or when the customer does not accept that
channel and the notice is not safety-critical.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.store import audit
from notifier.errors import NotifierError
from notifier.planning.audience import can_take_sms, normalise_email, normalise_phone
from notifier.store.settings import Settings
from notifier import outbox
from notifier.channels.segments import sms_segments
from notifier.messages import Rendered, render
from notifier.store.models import Booking, Customer, Disruption, Notification, Offer, Port, utcnow
from notifier.delivery.optouts import may_send, opted_out_addresses
from notifier.store.status import QUEUED

log = logging.getLogger(__name__)
OTHER_CHANNEL = {"sms": "email", "email": "sms"}
SUBJECTS = {"en": "{company}: important notice about your booking", "zh-CN": "【{company}】您的船票重要通知"}
SMS_FALLBACK_CHARS = 300


def plan_fallback(session: Session, notification: Notification, settings: Settings, reason: str | None,
                  actor: str = "dispatcher") -> bool:
    """Queue the notice on the customer's other channel, once; True when a fallback row was added."""
    other = OTHER_CHANNEL.get(notification.channel)
    if other is None or notification.purpose == "fallback" or notification.customer_id is None:
        return False
    customer = session.get(Customer, notification.customer_id)
    address = contact(customer, other)
    if address is None or _already_told(session, notification, other):
        return False
    if other not in (customer.channels or []) and not notification.safety_critical:
        return False
    opted_out = address in opted_out_addresses(session, other, [address])
    if not may_send(opted_out, notification.safety_critical, settings.safety_critical_opt_out):
        return False
    rendered = _content(session, notification, other, customer, settings)
    row = {"dedup_key": f"{notification.dedup_key}:fallback", "booking_id": notification.booking_id,
           "customer_id": notification.customer_id, "disruption_id": notification.disruption_id,
           "revision": notification.revision, "broadcast_id": notification.broadcast_id, "channel": other,
           "recipient": address, "language": rendered.language, "template": notification.template,
           "purpose": "fallback", "subject": rendered.subject, "body_text": rendered.body_text,
           "body_html": rendered.body_html, "segments": rendered.segments,
           "safety_critical": notification.safety_critical, "status": QUEUED, "priority": notification.priority,
           "attempts": 0, "created_at": notification.created_at or utcnow()}
    inserted = outbox.add(session, [row], columns=None)
    if inserted:
        audit.record(session, actor, "notification.fallback", "notification", notification.id,
                     from_channel=notification.channel, to_channel=other, reason=reason or "")
    return bool(inserted)


def contact(customer: Customer, channel: str) -> str | None:
    """The customer's usable address on a channel (an SMS-capable E.164 number, or a valid email)."""
    if channel == "sms":
        phone = normalise_phone(customer.phone)
        return phone if phone and can_take_sms(phone) else None
    return normalise_email(customer.email)


def _already_told(session: Session, notification: Notification, channel: str) -> bool:
    return session.scalar(select(Notification.id).where(
        Notification.customer_id == notification.customer_id, Notification.channel == channel,
        Notification.booking_id.is_(None) if notification.booking_id is None
        else Notification.booking_id == notification.booking_id,
        Notification.disruption_id.is_(None) if notification.disruption_id is None
        else Notification.disruption_id == notification.disruption_id,
        Notification.revision == notification.revision,
        Notification.broadcast_id.is_(None) if notification.broadcast_id is None
        else Notification.broadcast_id == notification.broadcast_id).limit(1)) is not None


def _content(session: Session, notification: Notification, channel: str, customer: Customer,
             settings: Settings) -> Rendered:
    if notification.booking_id and notification.disruption_id:
        try:
            return _render_notice(session, notification, channel, customer, settings)
        except NotifierError as exc:
            log.warning("fallback for notification %s: the %s template cannot be rendered (%s); "
                        "sending the original text instead", notification.id, channel, exc)
    return _converted(notification, channel, settings)


def _render_notice(session: Session, notification: Notification, channel: str, customer: Customer,
                   settings: Settings) -> Rendered:
    # The same notice the planner rendered, from the same booking, disruption revision and offers.
    from notifier.planning.notices import SailingFacts, notice_context
    from notifier.store.capacity import candidates_for

    booking = session.get(Booking, notification.booking_id)
    disruption = session.get(Disruption, notification.disruption_id)
    sailing = disruption.sailing
    ports = {port.id: port for port in session.scalars(select(Port))}
    facts = SailingFacts(disruption=disruption, sailing=sailing, origin=ports[sailing.origin_port_id],
                         destination=ports[sailing.destination_port_id], route=sailing.route,
                         candidates=candidates_for(session, disruption), candidate_ports=ports,
                         vessel_name=sailing.vessel.name if sailing.vessel else "")
    offers = list(session.scalars(select(Offer).where(
        Offer.booking_id == booking.id, Offer.disruption_id == disruption.id,
        Offer.revision == notification.revision).order_by(Offer.option_key)))
    deadline: datetime | None = next((offer.deadline for offer in offers if offer.deadline), None)
    context = notice_context(facts, booking, customer, offers, settings, notification.language, deadline)
    return render(channel, notification.template, notification.language, context)


def _converted(notification: Notification, channel: str, settings: Settings) -> Rendered:
    # A notice without a booking behind it (free text, a confirmation): the same words on the other channel.
    lang = "zh-CN" if notification.language.startswith("zh") else "en"
    company = settings.company_name_zh if lang == "zh-CN" else settings.company_name
    if channel == "email":
        paragraphs = "".join(f"<p>{html.escape(part)}</p>" for part in notification.body_text.split("\n") if part)
        return Rendered("email", notification.language, notification.body_text.strip() + "\n",
                        subject=SUBJECTS[lang].format(company=company),
                        body_html=f"<!doctype html><html><body>{paragraphs}</body></html>")
    text = " ".join(part for part in [notification.subject or "", notification.body_text] if part).split()
    body = " ".join(text)
    if len(body) > SMS_FALLBACK_CHARS:
        body = body[:SMS_FALLBACK_CHARS - 1].rstrip() + "…"
    return Rendered("sms", notification.language, body, segments=sms_segments(body))
