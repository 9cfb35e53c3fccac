"""Fixtures and outbox seeding shared by the delivery tests (channels, dispatcher, webhooks, crash test).

Import the fixtures a test module uses (`from tests.standins.fixtures import twilio_standin, relay`).
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from notifier.channels.smtp_email import SmtpConfig
from notifier.channels.twilio_sms import TwilioConfig
from notifier.store.settings import Settings
from notifier.store.models import Broadcast, Customer, Notification, utcnow
from tests.standins.smtp_relay import Relay
from tests.standins.twilio_standin import ACCOUNT_SID, AUTH_TOKEN, TwilioStandIn

SENDER = "+15005550006"
_refs = itertools.count(1)


@pytest.fixture
def twilio_standin():
    """A Twilio stand-in on a free port; the test fails if any request or response broke Twilio's spec."""
    with TwilioStandIn() as standin:
        yield standin
    assert standin.validation_errors == []


@pytest.fixture
def relay():
    """An SMTP relay (aiosmtpd) on a free port."""
    with Relay() as smtp:
        yield smtp


def provider_settings(settings: Settings, standin: TwilioStandIn | None = None, smtp: Relay | None = None,
                      **overrides: object) -> Settings:
    """Settings with Twilio pointed at the stand-in and SMTP at the relay; quick timeouts and retries."""
    values: dict[str, object] = {"provider_timeout_seconds": 1.0, "lease_seconds": 5, "retry_base_seconds": 0.01,
                                 "retry_cap_seconds": 0.05, "dispatch_poll_seconds": 0.05,
                                 "sms_segments_per_second": 0.0, "emails_per_second": 0.0}
    if standin is not None:
        values.update(twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN, twilio_from=SENDER,
                      twilio_api_base=standin.base_url)
    if smtp is not None:
        values.update(smtp_host="127.0.0.1", smtp_port=smtp.port)
    values.update(overrides)
    return dataclasses.replace(settings, **values)


def standin_config(standin: TwilioStandIn, **overrides: object) -> TwilioConfig:
    """The Twilio channel's config pointed at the stand-in: our test account, SENDER, a 1 s timeout, no pacing."""
    values: dict[str, object] = {"from_number": SENDER, "api_base": standin.base_url, "timeout_seconds": 1.0}
    return TwilioConfig(ACCOUNT_SID, AUTH_TOKEN, **{**values, **overrides})


def relay_config(smtp: Relay, **overrides: object) -> SmtpConfig:
    """The SMTP channel's config pointed at the relay: no TLS, no login, a 1 s timeout, no pacing."""
    values: dict[str, object] = {"port": smtp.port, "timeout_seconds": 1.0}
    return SmtpConfig("127.0.0.1", "notices@ferry.example", **{**values, **overrides})


def add_customer(session: Session, phone: str | None = "+8613800138000", email: str | None = "li.wei@example.com",
                 language: str = "en", channels: tuple[str, ...] = ("sms", "email")) -> Customer:
    """A customer with the given contacts and channel preferences."""
    customer = Customer(ref=f"C{next(_refs):06d}", name="Li Wei", phone=phone, email=email, language=language,
                        channels=list(channels))
    session.add(customer)
    session.flush()
    return customer


def queue_notice(session: Session, customer: Customer | None, channel: str, body: str, *,
                 recipient: str | None = None, priority: int = 0, created_at: datetime | None = None,
                 safety_critical: bool = True, broadcast_id: int | None = None, disruption_id: int | None = None,
                 revision: int = 0, subject: str | None = "Your sailing is cancelled",
                 html: str | None = "<p>Your sailing is cancelled</p>", template: str = "cancelled",
                 segments: int = 1) -> Notification:
    """One queued notice, as the planner would write it (free text: no booking behind it)."""
    if recipient is None:
        recipient = customer.phone if channel == "sms" else customer.email
    notification = Notification(
        dedup_key=f"test:{next(_refs)}:{channel}:{recipient}", customer_id=customer.id if customer else None,
        broadcast_id=broadcast_id, disruption_id=disruption_id, revision=revision, channel=channel,
        recipient=recipient, language=customer.language if customer else "en", template=template,
        purpose="notice", subject=subject if channel == "email" else None, body_text=body,
        body_html=html if channel == "email" else None, segments=segments, safety_critical=safety_critical,
        status="queued", priority=priority, created_at=created_at or utcnow())
    session.add(notification)
    session.flush()
    return notification


def seed_sms_broadcast(session: Session, count: int, first_number: int = 8613900000000) -> list[str]:
    """A sending broadcast of `count` one-segment SMS to distinct numbers, inserted in bulk; returns the numbers."""
    broadcast = Broadcast(origin="manual", status="sending", kind="cancelled", template="cancelled",
                          channels=["sms"], created_by="test")
    session.add(broadcast)
    session.flush()
    now = utcnow()
    numbers = [f"+{first_number + i}" for i in range(count)]
    session.execute(insert(Notification), [
        {"dedup_key": f"crash:{number}", "broadcast_id": broadcast.id, "channel": "sms", "recipient": number,
         "language": "en", "template": "cancelled", "purpose": "notice",
         "body_text": f"Strait Ferries: sailing QZ-{i % 40:02d} is CANCELLED (typhoon). Booking B{i:06d}.",
         "segments": 1, "safety_critical": True, "status": "queued", "priority": i // 100, "attempts": 0,
         "created_at": now - timedelta(seconds=1)} for i, number in enumerate(numbers)])
    return numbers
