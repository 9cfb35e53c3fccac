"""Claiming: take due notifications from the outbox under a lease, urgent first, and turn each into the channel's
Message.

A notification is marked `sending` under a lease (owner, expiry) *before* the provider is called; the claim uses
FOR UPDATE SKIP LOCKED on PostgreSQL, so several `notifier dispatch` processes share one outbox.

At claim time a notice is re-checked: older than Settings.max_age_minutes, or made useless by its disruption
(superseded, a newer revision planned, cleared before the notice was planned, or a delay/advisory for a sailing
already departed) -> `expired`, never sent late; opted out (per Settings.safety_critical_opt_out) or on a channel
the customer no longer accepts -> `suppressed`. A notice suppressed by an opt-out goes by the customer's other
channel instead when they have one (notifier.delivery.fallback); else the follow-up list shows it. Notices of
paused, cancelled or unapproved broadcasts are not claimed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from notifier.channels.base import Message
from notifier.delivery.fallback import plan_fallback
from notifier.delivery.optouts import may_send, unsubscribe_url
from notifier.delivery.outcomes import DispatchStats, close_notice
from notifier.store.db import is_postgres
from notifier.store.models import Broadcast, Customer, Disruption, Notification, OptOut, Sailing, utcnow
from notifier.store.settings import Settings
from notifier.store.status import BROADCAST_HELD_BACK, CLEARED, QUEUED, SENDING, SUPERSEDED, SUPPRESSED

OPTED_OUT = "the recipient opted out of"
STALE_AFTER_DEPARTURE = ("delayed", "advisory")  # a delay notice is useless once the sailing has left


def claim(session: Session, owner: str, limit: int, lease_seconds: int, now: datetime,
          settings: Settings | None = None, kinds: list[str] | None = None,
          stats: DispatchStats | None = None) -> list[SimpleNamespace]:
    """Take up to `limit` due notifications, most urgent first, and mark them sending under our lease; returns
    them as plain records (Notification's columns). With settings, stale and opted-out notices are closed
    (expired / suppressed) instead of being leased. Core statements: this runs for every few sends."""
    table = Notification.__table__
    blocked = select(Broadcast.id).where(Broadcast.status.in_(BROADCAST_HELD_BACK))
    query = (select(table, OptOut.id.label("opted_out"), Customer.channels.label("accepts"))
             .outerjoin(OptOut, and_(OptOut.channel == table.c.channel, OptOut.address == table.c.recipient))
             .outerjoin(Customer, Customer.id == table.c.customer_id)
             .where(table.c.status == QUEUED,
                    or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= now),
                    or_(table.c.broadcast_id.is_(None), table.c.broadcast_id.not_in(blocked)))
             .order_by(table.c.priority, table.c.id).limit(limit))
    if kinds is not None:
        query = query.where(table.c.channel.in_(kinds))
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=table)
    rows = session.execute(query).all()
    verdicts = screen(session, rows, settings, now) if settings is not None else {}
    for notification_id, (status, reason) in verdicts.items():
        notification = session.get(Notification, notification_id)
        close_notice(session, notification, status, None, reason, now)
        fell_back = reason.startswith(OPTED_OUT) and plan_fallback(session, notification, settings, reason)
        if stats is not None:
            setattr(stats, status, getattr(stats, status) + 1)
            stats.fallbacks += int(fell_back)
    lease_end = now + timedelta(seconds=lease_seconds)
    claimed = [SimpleNamespace(**{**row._asdict(), "status": SENDING, "lease_owner": owner,
                                  "lease_expires_at": lease_end, "attempts": row.attempts + 1})
               for row in rows if row.id not in verdicts]
    if claimed:
        session.execute(update(table).where(table.c.id.in_([n.id for n in claimed]))
                        .values(status=SENDING, lease_owner=owner, lease_expires_at=lease_end,
                                attempts=table.c.attempts + 1))
    unnamed = [n for n in claimed if n.channel == "email" and not n.message_id and settings is not None]
    for notification in unnamed:
        notification.message_id = message_id_for(notification, settings)
    if unnamed:
        session.execute(update(table).where(table.c.id == bindparam("b_id")).values(message_id=bindparam("b_mid")),
                        [{"b_id": n.id, "b_mid": n.message_id} for n in unnamed])
    return claimed


def screen(session: Session, notifications: Sequence[Any], settings: Settings, now: datetime
           ) -> dict[int, tuple[str, str]]:
    """Notices that must not go out now, with the status to give them (expired / suppressed) and why. Each
    notice is a row with Notification's columns plus `opted_out` (the recipient's opt-out on that channel, or
    None) and `accepts` (the customer's channels, or None), as `claim` selects them."""
    verdicts: dict[int, tuple[str, str]] = {}
    max_age = timedelta(minutes=settings.max_age_minutes)
    useless = _useless_by_disruption(session, notifications, now)
    for notice in notifications:
        if now - notice.created_at > max_age:
            verdicts[notice.id] = ("expired", f"not sent within {settings.max_age_minutes} minutes")
        elif notice.id in useless:
            verdicts[notice.id] = ("expired", useless[notice.id])
        elif not may_send(notice.opted_out is not None, notice.safety_critical, settings.safety_critical_opt_out):
            verdicts[notice.id] = (SUPPRESSED, f"{OPTED_OUT} {notice.channel}")
        elif notice.accepts is not None and notice.purpose != "fallback" and notice.channel not in notice.accepts:
            verdicts[notice.id] = (SUPPRESSED, f"the customer no longer accepts {notice.channel}")
    return verdicts


def _useless_by_disruption(session: Session, notifications: Sequence[Any], now: datetime) -> dict[int, str]:
    ids = {n.disruption_id for n in notifications if n.disruption_id}
    if not ids:
        return {}
    facts = {row.id: row for row in session.execute(
        select(Disruption.id, Disruption.status, Disruption.revision, Disruption.kind, Disruption.cleared_at,
               Sailing.scheduled_departure, Sailing.estimated_departure)
        .join(Sailing, Sailing.id == Disruption.sailing_id).where(Disruption.id.in_(ids)))}
    useless = {}
    for notification in notifications:
        fact = facts.get(notification.disruption_id)
        if fact is None or notification.purpose == "confirmation":
            continue  # a confirmation answers the customer's own choice: it stays true whatever the feed does
        departure = fact.estimated_departure or fact.scheduled_departure
        if fact.status == SUPERSEDED:
            useless[notification.id] = "the disruption was superseded before this notice went out"
        elif fact.revision > notification.revision:
            useless[notification.id] = f"revision {fact.revision} of the disruption replaces this notice"
        elif fact.status == CLEARED and fact.cleared_at and notification.created_at < fact.cleared_at:
            useless[notification.id] = "the disruption was cleared before this notice went out"
        elif fact.kind in STALE_AFTER_DEPARTURE and departure and departure < now:
            useless[notification.id] = "the sailing has departed"
    return useless


def message_id_for(notification: Any, settings: Settings) -> str:
    """A Message-ID that stays the same across retries and resends of one notification."""
    domain = settings.smtp_from.rpartition("@")[2] or "notifier.invalid"
    digest = hashlib.sha1(notification.dedup_key.encode("utf-8")).hexdigest()[:12]
    return f"<notice-{notification.id}.{digest}@{domain}>"


def status_callback_url(settings: Settings, notification_id: int) -> str:
    """Where Twilio reports this message's delivery; the notification id rides along so a callback that beats
    our own write of the Message SID still finds its row."""
    base = settings.twilio_status_callback or f"{settings.public_base_url.rstrip('/')}/twilio/status"
    return f"{base}{'&' if '?' in base else '?'}n={notification_id}"


def to_message(notification: Any, settings: Settings | None = None, now: datetime | None = None) -> Message:
    """The channel-level message for an outbox row (a Notification or a claimed record)."""
    extra: dict = {}
    if settings is not None:
        now = now or utcnow()
        if notification.channel == "sms":
            left = settings.max_age_minutes * 60 - (now - notification.created_at).total_seconds()
            extra["validity_seconds"] = max(1, int(min(settings.sms_validity_seconds, left)))
            extra["status_callback"] = status_callback_url(settings, notification.id)
        else:
            extra["unsubscribe_url"] = unsubscribe_url(settings, notification.id)
    return Message(notification_id=notification.id, channel=notification.channel, recipient=notification.recipient,
                   body_text=notification.body_text, subject=notification.subject, body_html=notification.body_html,
                   segments=notification.segments,
                   message_id=notification.message_id or f"<notice-{notification.id}@notifier>",
                   created_at=notification.created_at, **extra)
