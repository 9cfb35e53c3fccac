"""Recording what happened to a send: the outbox row and its attempts log after a provider's answer (sent, retry,
failed, uncertain) or after a crash-time look-up at the provider (reconciliation).

Nothing is half-recorded: a notice is `sent` together with its attempt row or not at all. An uncertain answer
(timeout, dropped connection, 5xx) leaves the row `sending` under a short lease, so the provider is asked before
any resend. Retries back off exponentially with full jitter (capped at Settings.retry_cap_seconds) and never sooner
than the provider's Retry-After. They are bounded by time, not by count: a provider outage of minutes is normal in
an emergency, so a notice is retried until its retry deadline (Settings.max_age_minutes after it was planned, or
its sailing's departure when that is earlier). A notice that fails for good, or whose deadline passes, goes out
once on the customer's other channel (notifier.delivery.fallback); without one it is a follow-up item.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, insert, null, or_, select, update
from sqlalchemy.orm import Session

from notifier.channels.base import SendResult
from notifier.delivery.fallback import plan_fallback
from notifier.delivery.optouts import record_opt_out
from notifier.privacy import redact
from notifier.store.models import DeliveryAttempt, Notification
from notifier.store.settings import Settings
from notifier.store.status import EXPIRED, QUEUED, SENDING, SENT, SUPPRESSED

log = logging.getLogger(__name__)

OPTED_OUT_CODE = "21610"  # Twilio: the recipient replied STOP


@dataclass
class DispatchStats:
    """What a dispatch run did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    reconciled: int = 0
    expired: int = 0
    suppressed: int = 0
    fallbacks: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)  # after a drain: what is still queued or sending, and why

    def summary(self) -> str:
        """One line for the CLI."""
        return (f"sent {self.sent}, failed {self.failed}, retry later {self.retried}, reconciled {self.reconciled}, "
                f"expired {self.expired}, suppressed {self.suppressed}, fallbacks {self.fallbacks}")


def backoff(attempt: int, retry_after: float | None = None, base: float = 2.0, cap: float = 600.0) -> float:
    """Exponential backoff with full jitter, never sooner than the provider's Retry-After."""
    delay = random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))
    return max(delay, retry_after or 0.0)


def record_outcome(session: Session, notification: Notification, result: SendResult, settings: Settings,
                   now: datetime, started: datetime | None = None, owner: str | None = None,
                   stats: DispatchStats | None = None) -> str:
    """Write one send's outcome to the outbox row and the attempts log; returns the row's status."""
    stats = stats if stats is not None else DispatchStats()
    # A provider's refusal may quote the address ("The 'To' number +86... is not valid"): keep it out of the
    # outbox, the report and the audit, which all show this text.
    result = dataclasses.replace(result, reason=redact(result.reason) if result.reason else result.reason)
    session.add(DeliveryAttempt(notification_id=notification.id, attempt_no=notification.attempts,
                                started_at=started or now, finished_at=now, outcome=result.status,
                                provider_id=result.provider_id, error_code=result.code,
                                error_message=result.reason))
    if result.status == SENT:
        mark_sent(notification, result.provider_id, now)
        stats.sent += 1
        stats.by_channel[notification.channel] = stats.by_channel.get(notification.channel, 0) + 1
        return notification.status
    if owner is not None and notification.lease_owner not in (owner, None):
        log.warning("notification %s: another worker took it over while we were sending", notification.id)
        return notification.status
    notification.error_code, notification.error_message = result.code, result.reason
    if result.status == "uncertain":
        # The provider may have it: leave it `sending` under a short lease, so it is looked up before any resend,
        # and not before a request the provider was still working on when we gave up has surely finished.
        notification.lease_owner = None
        wait = max(_delay(notification, result.retry_after, settings), 2 * settings.provider_timeout_seconds)
        notification.lease_expires_at = now + timedelta(seconds=wait)
        stats.retried += 1
    elif result.status == "retry":
        _retry_or_give_up(session, notification, result, settings, now, stats)
    else:
        if notification.channel == "sms" and result.code == OPTED_OUT_CODE:
            record_opt_out(session, "sms", notification.recipient, "twilio_21610")
        _fail(session, notification, result.code, result.reason or "refused by the provider", settings, now, stats)
    return notification.status


def record_sent(session: Session, sent: list[tuple[int, str, int, str | None, datetime]], now: datetime,
                stats: DispatchStats | None = None) -> None:
    """The common case in bulk: (notification id, channel, attempt, provider id, started) accepted by the
    provider. Same rules as `mark_sent`, in two statements however many there are."""
    if not sent:
        return
    table = Notification.__table__
    moving = or_(*(table.c.status == status for status in (QUEUED, SENDING, SENT)))  # no IN: executemany
    session.execute(update(table).where(table.c.id == bindparam("b_id")).values(
        status=case((moving, "sent"), else_=table.c.status),
        error_code=case((moving, null()), else_=table.c.error_code),
        error_message=case((moving, null()), else_=table.c.error_message),
        provider_id=func.coalesce(table.c.provider_id, bindparam("b_pid", type_=table.c.provider_id.type)),
        sent_at=func.coalesce(table.c.sent_at, bindparam("b_now", type_=table.c.sent_at.type)),
        lease_owner=None, lease_expires_at=None),
        [{"b_id": notification_id, "b_pid": provider_id, "b_now": now}
         for notification_id, _, _, provider_id, _ in sent])
    session.execute(insert(DeliveryAttempt.__table__), [
        {"notification_id": notification_id, "attempt_no": attempt, "started_at": started, "finished_at": now,
         "outcome": "sent", "provider_id": provider_id}
        for notification_id, _, attempt, provider_id, started in sent])
    if stats is not None:
        stats.sent += len(sent)
        for _, channel, _, _, _ in sent:
            stats.by_channel[channel] = stats.by_channel.get(channel, 0) + 1


def mark_sent(notification: Notification, provider_id: str | None, now: datetime) -> None:
    """The provider has the message. A receipt that arrived first (delivered, undelivered) is kept."""
    if notification.status in (QUEUED, SENDING, SENT):
        notification.status = SENT
        notification.error_code, notification.error_message = None, None
    notification.provider_id = notification.provider_id or provider_id
    notification.sent_at = notification.sent_at or now
    notification.lease_owner, notification.lease_expires_at = None, None


def _retry_or_give_up(session: Session, notification: Notification, result: SendResult, settings: Settings,
                      now: datetime, stats: DispatchStats) -> None:
    delay = _delay(notification, result.retry_after, settings)
    deadline = retry_deadline(notification, settings)
    if now + timedelta(seconds=delay) > deadline:
        _fail(session, notification, result.code, f"not delivered by {deadline:%Y-%m-%d %H:%M} UTC after "
              f"{notification.attempts} attempts: {result.reason}", settings, now, stats)
    else:
        notification.status = QUEUED
        notification.next_attempt_at = now + timedelta(seconds=delay)
        notification.lease_owner, notification.lease_expires_at = None, None
        stats.retried += 1


def retry_deadline(notification: Any, settings: Settings) -> datetime:
    """When retrying a notice stops being worth it: Settings.max_age_minutes after it was planned, or its
    sailing's departure (Notification.priority) when that comes earlier, but never before it was planned."""
    deadline = notification.created_at + timedelta(minutes=settings.max_age_minutes)
    if notification.priority and notification.priority > 0:
        departure = datetime.fromtimestamp(notification.priority, UTC)
        if notification.created_at < departure < deadline:
            deadline = departure
    return deadline


def _delay(notification: Notification, retry_after: float | None, settings: Settings) -> float:
    return backoff(notification.attempts, retry_after, settings.retry_base_seconds, settings.retry_cap_seconds)


def _fail(session: Session, notification: Notification, code: str | None, reason: str, settings: Settings,
          now: datetime, stats: DispatchStats) -> None:
    close_notice(session, notification, "failed", code, reason, now)
    stats.failed += 1
    if plan_fallback(session, notification, settings, code or reason):
        stats.fallbacks += 1


def close_notice(session: Session, notification: Notification, status: str, code: str | None, reason: str,
                 now: datetime) -> None:
    """Give a notice its last status (failed, expired, suppressed) and why; an expired or suppressed one also gets
    an attempt row saying so (a failed one has its provider's answer there already)."""
    notification.status, notification.final_at = status, now
    notification.error_code, notification.error_message = code, reason
    notification.lease_owner, notification.lease_expires_at = None, None
    if status in (EXPIRED, SUPPRESSED):
        session.add(DeliveryAttempt(notification_id=notification.id, attempt_no=notification.attempts,
                                    started_at=now, finished_at=now, outcome=status, error_message=reason))


def record_reconciliation(session: Session, notification: Notification, found: list[str] | None,
                          error: str | None, settings: Settings, now: datetime,
                          stats: DispatchStats | None = None, taken: set[str] | None = None) -> str:
    """Apply what the provider said about an expired lease: it has the message (sent), it has not (send again,
    unless its retry deadline passed), or it could not be asked (look again later)."""
    stats = stats if stats is not None else DispatchStats()
    taken = taken if taken is not None else set()
    provider_id = None
    if found:
        others = set(session.scalars(select(Notification.provider_id).where(
            Notification.provider_id.in_(found), Notification.id != notification.id)))
        provider_id = next((sid for sid in found if sid not in others and sid not in taken), None)
    session.add(DeliveryAttempt(notification_id=notification.id, attempt_no=notification.attempts, started_at=now,
                                finished_at=now, outcome="reconciled", provider_id=provider_id,
                                error_message=error if found is None else
                                None if provider_id else "lease expired; the provider has no copy"))
    too_old = now > retry_deadline(notification, settings)
    if provider_id:
        taken.add(provider_id)
        mark_sent(notification, provider_id, now)
        stats.reconciled += 1
    elif found is None:
        if too_old:
            close_notice(session, notification, "expired", None, f"could not be checked with the provider: {error}",
                         now)
            stats.expired += 1
        else:
            notification.lease_owner = None
            notification.lease_expires_at = now + timedelta(seconds=_delay(notification, None, settings))
    elif too_old:
        _fail(session, notification, notification.error_code,
              f"not sent after {notification.attempts} attempts: {notification.error_message or 'no answer'}",
              settings, now, stats)
    else:
        notification.status, notification.next_attempt_at = QUEUED, None
        notification.lease_owner, notification.lease_expires_at = None, None
    return notification.status
