"""The delivery worker: claim queued notifications, send them through their channel, record each outcome.

A notification is marked `sending` with a lease *before* the provider is called. A lease that expired (the
worker died mid-send) is reconciled with the provider before anything is resent, so a crash never doubles a
message. Claims use FOR UPDATE SKIP LOCKED on PostgreSQL, so several workers share one outbox.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from .channels.base import Channel, Message, SendResult
from .config import Settings
from .db import is_postgres, transaction
from .models import Broadcast, DeliveryAttempt, Notification, utcnow

BLOCKED_BROADCAST_STATES = ("paused", "cancelled", "awaiting_approval")


@dataclass
class DispatchStats:
    """What one dispatch pass did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    reconciled: int = 0
    expired: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


def worker_id() -> str:
    """host:pid, recorded as the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(session: Session, owner: str, limit: int, lease_seconds: int, now: datetime) -> list[Notification]:
    """Take up to `limit` due notifications, most urgent first, and mark them sending under our lease."""
    blocked = select(Broadcast.id).where(Broadcast.status.in_(BLOCKED_BROADCAST_STATES))
    query = (select(Notification)
             .where(Notification.status == "queued",
                    or_(Notification.next_attempt_at.is_(None), Notification.next_attempt_at <= now),
                    or_(Notification.broadcast_id.is_(None), Notification.broadcast_id.not_in(blocked)))
             .order_by(Notification.priority, Notification.id).limit(limit))
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=Notification)
    claimed = list(session.scalars(query))
    for notification in claimed:
        notification.status = "sending"
        notification.lease_owner = owner
        notification.lease_expires_at = now + timedelta(seconds=lease_seconds)
        notification.attempts += 1
    return claimed


def to_message(notification: Notification) -> Message:
    """The channel-level message for an outbox row."""
    return Message(notification_id=notification.id, channel=notification.channel, recipient=notification.recipient,
                   body_text=notification.body_text, subject=notification.subject, body_html=notification.body_html,
                   segments=notification.segments,
                   message_id=notification.message_id or f"<notice-{notification.id}@notifier>")


def record_outcome(session: Session, notification: Notification, result: SendResult, settings: Settings,
                   now: datetime) -> str:
    """Write one send's outcome to the outbox row and the attempts log; returns the new status."""
    session.add(DeliveryAttempt(notification_id=notification.id, attempt_no=notification.attempts, started_at=now,
                                finished_at=utcnow(), outcome=result.status, provider_id=result.provider_id,
                                error_code=result.code, error_message=result.reason))
    notification.lease_expires_at, notification.lease_owner = None, None
    if result.status == "sent":
        notification.status, notification.provider_id, notification.sent_at = "sent", result.provider_id, now
    elif result.status == "retry" and notification.attempts < settings.max_attempts:
        notification.status = "queued"
        notification.next_attempt_at = now + timedelta(seconds=backoff(notification.attempts, result.retry_after))
    else:
        notification.status, notification.final_at = "failed", now
    notification.error_code, notification.error_message = result.code, result.reason
    return notification.status


def backoff(attempt: int, retry_after: float | None = None, base: float = 2.0, cap: float = 600.0) -> float:
    """Exponential backoff with full jitter, never sooner than the provider's Retry-After."""
    delay = random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))
    return max(delay, retry_after or 0.0)


def dispatch_once(factory: sessionmaker[Session], settings: Settings, channels: dict[str, Channel],
                  owner: str | None = None, now: datetime | None = None) -> DispatchStats:
    """Claim one batch, send it, record outcomes. Returns counts (claimed 0 means the outbox is empty)."""
    owner = owner or worker_id()
    stats = DispatchStats()
    reconcile_expired_leases(factory, channels, stats, now)
    with transaction(factory) as session:
        claimed = claim(session, owner, settings.dispatch_batch, settings.lease_seconds, now or utcnow())
        messages = [to_message(n) for n in claimed]
    stats.claimed = len(messages)
    for message in messages:
        started = utcnow()
        result = channels[message.channel].send(message)
        with transaction(factory) as session:
            status = record_outcome(session, session.get(Notification, message.notification_id), result, settings,
                                    started)
        _count(stats, status, message.channel)
    return stats


def _count(stats: DispatchStats, status: str, channel: str) -> None:
    if status == "sent":
        stats.sent += 1
        stats.by_channel[channel] = stats.by_channel.get(channel, 0) + 1
    elif status == "queued":
        stats.retried += 1
    else:
        stats.failed += 1


def reconcile_expired_leases(factory: sessionmaker[Session], channels: dict[str, Channel], stats: DispatchStats,
                             now: datetime | None = None) -> None:
    """Rows left `sending` by a dead worker: ask the channel whether it went out before resending."""
    now = now or utcnow()
    with transaction(factory) as session:
        stale = list(session.scalars(select(Notification).where(
            Notification.status == "sending", Notification.lease_expires_at < now).limit(500)))
        for notification in stale:
            channel = channels[notification.channel]
            found = channel.lookup(to_message(notification)) if hasattr(channel, "lookup") else None
            if found:
                notification.status, notification.provider_id, notification.sent_at = "sent", found, now
                stats.reconciled += 1
            else:
                notification.status = "queued"
            notification.lease_expires_at, notification.lease_owner = None, None
            session.add(DeliveryAttempt(notification_id=notification.id, attempt_no=notification.attempts,
                                        outcome="reconciled", provider_id=found,
                                        error_message=None if found else "lease expired; not found at provider"))


def dispatch_all(factory: sessionmaker[Session], settings: Settings, channels: dict[str, Channel],
                 max_passes: int = 10_000) -> DispatchStats:
    """Dispatch until nothing due is left (retries scheduled for later are left for the next run)."""
    total = DispatchStats()
    for _ in range(max_passes):
        stats = dispatch_once(factory, settings, channels)
        for name in ("claimed", "sent", "retried", "failed", "reconciled", "expired"):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        for channel, count in stats.by_channel.items():
            total.by_channel[channel] = total.by_channel.get(channel, 0) + count
        if stats.claimed == 0:
            break
    return total

