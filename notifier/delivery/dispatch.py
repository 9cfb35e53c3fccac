"""The delivery worker: claim queued notifications, send them through their channel, record each outcome.

Exactly once, through crashes:
- A notification is marked `sending` under a lease (owner, expiry) *before* the provider is called; the claim
  uses FOR UPDATE SKIP LOCKED on PostgreSQL, so several `notifier dispatch` processes share one outbox.
- A send is only started while the lease has more left than the provider timeout plus a margin, so no send
  outlives its lease. A `sending` row whose lease expired (the worker died, or the provider's answer was lost:
  timeout, dropped connection, 5xx) is reconciled before anything is resent: the channel's `lookup` asks the
  provider for a copy (Twilio: the Messages list by To, From, DateSent and our body); an SMTP relay cannot be
  asked, so Settings.email_reconcile decides (resend with the same Message-ID, or assume it went).
- A lease owner is host:pid:pid-namespace:token. A dispatcher restarted on the same machine sees that the
  killed one is gone and reconciles its rows one provider timeout later, without waiting for the leases to run
  out; on other machines (PostgreSQL scale-out) the lease expiry is what tells.

Throughput: rows are claimed a batch at a time (urgent first: Notification.priority is the departure time) and
sent by a thread pool per channel, paced per sender in SMS segments or emails per second (`ratelimit.Pacer`);
one thread owns the database and, in one transaction per round, records what finished (the common "sent" in
two bulk statements) and claims what fits.

At claim time a notice is re-checked: older than Settings.max_age_minutes, or made useless by its disruption
(superseded, a newer revision planned, cleared before the notice was planned, or a delay/advisory for a sailing
already departed) -> `expired`, never sent late; opted out (per Settings.safety_critical_opt_out) or on a channel
the customer no longer accepts -> `suppressed`. Notices of paused, cancelled or unapproved broadcasts are not
claimed. Retries back off exponentially with full jitter and never sooner than the provider's Retry-After.

The database may go away too (a dropped connection, a server restart, a disk turned read-only): each round's
transaction is rolled back and tried again for up to Settings.db_retry_seconds, then the run stops with one clear
DatabaseError. Nothing is half-recorded: a notice is `sent` together with its attempt row or not at all, and what
was handed to a channel in a lost round stays `sending` under its lease and is looked up before any resend. A
drain also settles every lease that has run out (each once per run), so one `notifier dispatch --once` after a
crash finishes what the crashed run left.

The watcher keeps one `Dispatcher` and calls `run(drain=True)` each tick, so pacing carries over between ticks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import queue
import random
import secrets
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from time import monotonic
from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, null, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from notifier.channels.base import Channel, Message, SendResult, cost
from notifier.store.settings import ConfigError, Settings
from notifier.store.db import DatabaseError, is_postgres, transaction
from notifier.delivery.fallback import plan_fallback
from notifier.store.models import (Broadcast, Customer, DeliveryAttempt, Disruption, Notification, OptOut, Sailing,
                                   utcnow)
from notifier.delivery.optouts import may_send, record_opt_out, unsubscribe_url
from notifier.privacy import mask_contact, redact
from notifier.delivery.ratelimit import Pacer

log = logging.getLogger(__name__)

BLOCKED_BROADCAST_STATES = ("paused", "cancelled", "awaiting_approval")
STALE_AFTER_DEPARTURE = ("delayed", "advisory")  # a delay notice is useless once the sailing has left
LEASE_MARGIN_SECONDS = 2.0  # a send must be able to time out this long before its lease ends
ASSUMED_SEGMENTS = 4  # for sizing claims against a sender's pace (a long Chinese notice is 3-4 segments)
RECORD_BATCH = 200
IN_FLIGHT_PER_THREAD = 4  # claimed ahead per sending thread, so claims and records come in batches
GATHER_SECONDS = 0.05  # how long to gather finished sends into one transaction
OPTED_OUT_CODE = "21610"
DB_RETRY_FIRST_SECONDS = 0.2  # a dropped database connection is tried again after this, doubling ...
DB_RETRY_MAX_SECONDS = 5.0  # ... up to this, for Settings.db_retry_seconds in all


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

    def summary(self) -> str:
        """One line for the CLI."""
        return (f"sent {self.sent}, failed {self.failed}, retry later {self.retried}, reconciled {self.reconciled}, "
                f"expired {self.expired}, suppressed {self.suppressed}, fallbacks {self.fallbacks}")


@dataclass(frozen=True)
class _Done:
    """A worker thread's report: a send's result (None: not attempted) or a reconciliation's findings."""

    op: str  # send | reconcile
    kind: str
    message: Message
    started: datetime
    result: SendResult | None = None
    found: list[str] | None = None  # reconcile: provider ids; None when the provider could not be asked
    error: str | None = None
    attempt: int = 0


def worker_id() -> str:
    """host:pid:pid-namespace:token, recorded as the lease owner (the token tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_pid_namespace()}:{secrets.token_hex(3)}"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return "-"


def owner_is_gone(owner: str, me: str) -> bool:
    """True when a lease owner is a dispatch process of this machine (same host name and pid namespace) that no
    longer runs: its leases need not run out before they are reconciled. Elsewhere we cannot tell: False."""
    parts = owner.split(":")
    if owner == me or len(parts) != 4 or not parts[1].isdigit() or parts[2] == "-":
        return False
    if (parts[0], parts[2]) != (socket.gethostname(), _pid_namespace()):
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True  # an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def backoff(attempt: int, retry_after: float | None = None, base: float = 2.0, cap: float = 600.0) -> float:
    """Exponential backoff with full jitter, never sooner than the provider's Retry-After."""
    delay = random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))
    return max(delay, retry_after or 0.0)


# --- claiming ----------------------------------------------------------------------------------------------------

def claim(session: Session, owner: str, limit: int, lease_seconds: int, now: datetime,
          settings: Settings | None = None, kinds: list[str] | None = None,
          stats: DispatchStats | None = None) -> list[SimpleNamespace]:
    """Take up to `limit` due notifications, most urgent first, and mark them sending under our lease; returns
    them as plain records (Notification's columns). With settings, stale and opted-out notices are closed
    (expired / suppressed) instead of being leased. Core statements: this runs for every few sends."""
    table = Notification.__table__
    blocked = select(Broadcast.id).where(Broadcast.status.in_(BLOCKED_BROADCAST_STATES))
    query = (select(table, OptOut.id.label("opted_out"), Customer.channels.label("accepts"))
             .outerjoin(OptOut, and_(OptOut.channel == table.c.channel, OptOut.address == table.c.recipient))
             .outerjoin(Customer, Customer.id == table.c.customer_id)
             .where(table.c.status == "queued",
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
        _close(session, session.get(Notification, notification_id), status, None, reason, now)
        if stats is not None:
            setattr(stats, status, getattr(stats, status) + 1)
    lease_end = now + timedelta(seconds=lease_seconds)
    claimed = [SimpleNamespace(**{**row._asdict(), "status": "sending", "lease_owner": owner,
                                  "lease_expires_at": lease_end, "attempts": row.attempts + 1})
               for row in rows if row.id not in verdicts]
    if claimed:
        session.execute(update(table).where(table.c.id.in_([n.id for n in claimed]))
                        .values(status="sending", lease_owner=owner, lease_expires_at=lease_end,
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
            verdicts[notice.id] = ("suppressed", f"the recipient opted out of {notice.channel}")
        elif notice.accepts is not None and notice.purpose != "fallback" and notice.channel not in notice.accepts:
            verdicts[notice.id] = ("suppressed", f"the customer no longer accepts {notice.channel}")
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
        if fact.status == "superseded":
            useless[notification.id] = "the disruption was superseded before this notice went out"
        elif fact.revision > notification.revision:
            useless[notification.id] = f"revision {fact.revision} of the disruption replaces this notice"
        elif fact.status == "cleared" and fact.cleared_at and notification.created_at < fact.cleared_at:
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


# --- recording ---------------------------------------------------------------------------------------------------

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
    if result.status == "sent":
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
    moving = or_(*(table.c.status == status for status in ("queued", "sending", "sent")))  # no IN: executemany
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
    if notification.status in ("queued", "sending", "sent"):
        notification.status = "sent"
        notification.error_code, notification.error_message = None, None
    notification.provider_id = notification.provider_id or provider_id
    notification.sent_at = notification.sent_at or now
    notification.lease_owner, notification.lease_expires_at = None, None


def _retry_or_give_up(session: Session, notification: Notification, result: SendResult, settings: Settings,
                      now: datetime, stats: DispatchStats) -> None:
    delay = _delay(notification, result.retry_after, settings)
    if notification.attempts >= settings.max_attempts:
        _fail(session, notification, result.code, f"gave up after {notification.attempts} attempts: {result.reason}",
              settings, now, stats)
    elif now + timedelta(seconds=delay) - notification.created_at > timedelta(minutes=settings.max_age_minutes):
        _close(session, notification, "expired", result.code,
               f"would be older than {settings.max_age_minutes} minutes at the next attempt", now)
        stats.expired += 1
    else:
        notification.status = "queued"
        notification.next_attempt_at = now + timedelta(seconds=delay)
        notification.lease_owner, notification.lease_expires_at = None, None
        stats.retried += 1


def _delay(notification: Notification, retry_after: float | None, settings: Settings) -> float:
    return backoff(notification.attempts, retry_after, settings.retry_base_seconds, settings.retry_cap_seconds)


def _fail(session: Session, notification: Notification, code: str | None, reason: str, settings: Settings,
          now: datetime, stats: DispatchStats) -> None:
    _close(session, notification, "failed", code, reason, now)
    stats.failed += 1
    if plan_fallback(session, notification, settings, code or reason):
        stats.fallbacks += 1


def _close(session: Session, notification: Notification, status: str, code: str | None, reason: str,
           now: datetime) -> None:
    notification.status, notification.final_at = status, now
    notification.error_code, notification.error_message = code, reason
    notification.lease_owner, notification.lease_expires_at = None, None
    if status in ("expired", "suppressed"):
        session.add(DeliveryAttempt(notification_id=notification.id, attempt_no=notification.attempts,
                                    started_at=now, finished_at=now, outcome=status, error_message=reason))


def record_reconciliation(session: Session, notification: Notification, found: list[str] | None,
                          error: str | None, settings: Settings, now: datetime,
                          stats: DispatchStats | None = None, taken: set[str] | None = None) -> str:
    """Apply what the provider said about an expired lease: it has the message (sent), it has not (send again,
    unless attempts or age are used up), or it could not be asked (look again later)."""
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
    too_old = now - notification.created_at > timedelta(minutes=settings.max_age_minutes)
    if provider_id:
        taken.add(provider_id)
        mark_sent(notification, provider_id, now)
        stats.reconciled += 1
    elif found is None:
        if too_old:
            _close(session, notification, "expired", None, f"could not be checked with the provider: {error}", now)
            stats.expired += 1
        else:
            notification.lease_owner = None
            notification.lease_expires_at = now + timedelta(seconds=_delay(notification, None, settings))
    elif notification.attempts >= settings.max_attempts:
        _fail(session, notification, notification.error_code,
              f"not sent after {notification.attempts} attempts: {notification.error_message or 'no answer'}",
              settings, now, stats)
    elif too_old:
        _close(session, notification, "expired", None, f"not sent within {settings.max_age_minutes} minutes", now)
        stats.expired += 1
    else:
        notification.status, notification.next_attempt_at = "queued", None
        notification.lease_owner, notification.lease_expires_at = None, None
    return notification.status


# --- the worker --------------------------------------------------------------------------------------------------

class Dispatcher:
    """One dispatch process: claims, paces, sends on a thread pool per channel, records, reconciles."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, channels: dict[str, Channel],
                 owner: str | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.factory, self.settings, self.channels = factory, settings, channels
        self.owner = owner or worker_id()
        self.clock = clock
        self.guard = settings.provider_timeout_seconds + LEASE_MARGIN_SECONDS
        if settings.lease_seconds <= self.guard + 1:
            raise ConfigError(f"lease_seconds ({settings.lease_seconds}) must be longer than "
                              f"provider_timeout_seconds + {LEASE_MARGIN_SECONDS + 1:g}, or a slow send could "
                              f"outlive its lease")
        if settings.email_reconcile not in ("resend", "assume_sent"):
            raise ConfigError(f"email_reconcile must be resend or assume_sent, not {settings.email_reconcile!r}")
        may_send(False, True, settings.safety_critical_opt_out)  # refuses an unknown policy now, not mid-run
        self.pacers = {kind: Pacer(channel.rate_per_second) for kind, channel in channels.items()
                       if channel.rate_per_second}
        self.pools = {kind: ThreadPoolExecutor(max(1, settings.dispatch_threads), f"dispatch-{kind}")
                      for kind in channels}
        self.capacity = {kind: self._capacity(kind) for kind in channels}
        self.results: queue.Queue[_Done] = queue.Queue()
        self.in_flight: Counter[str] = Counter()
        self._dry_until: dict[str, float] = {}  # a kind that had nothing due is not asked again until then
        self._gone_since: dict[str, float] = {}  # lease owners seen dead, and since when
        self.stopping = threading.Event()  # claim nothing more; finish what is in flight
        self.abandon = threading.Event()  # do not even wait for send slots any more
        self.database_lost = False  # set once the database stayed away for db_retry_seconds
        self._looked_up: set[int] = set()  # notices looked up with the provider during this run
        self.stats = DispatchStats()

    def _capacity(self, kind: str) -> int:
        # Enough in flight to keep every thread busy, but never more than the sender's pace can start well
        # within one lease: a claimed row must be sent (or given back) long before its lease runs out.
        most = max(2, self.settings.dispatch_threads * IN_FLIGHT_PER_THREAD)
        pacer = self.pacers.get(kind)
        if pacer is None:
            return most
        unit = ASSUMED_SEGMENTS if self.channels[kind].rate_unit == "segment" else 1
        usable = (self.settings.lease_seconds - self.guard) / 2
        return max(1, min(most, int(pacer.rate * usable / unit)))

    def request_stop(self) -> None:
        """Claim nothing more; send what is already claimed, record it, then `run` returns."""
        self.stopping.set()

    def request_abandon(self) -> None:
        """Stop now: claimed messages still waiting for a send slot are given back unsent."""
        self.stopping.set()
        self.abandon.set()

    def run(self, drain: bool = True) -> DispatchStats:
        """Send until nothing is due and nothing is in flight (drain), or until `request_stop` (not drain)."""
        poll = max(0.05, self.settings.dispatch_poll_seconds)
        next_sweep = 0.0
        self.database_lost = False
        self._looked_up.clear()
        while True:
            if monotonic() >= next_sweep and not self.stopping.is_set():
                self._reconcile_expired()
                next_sweep = monotonic() + poll
            done = self._collect(poll)
            claimed = self._step(done)
            if not done and claimed == 0 and self._busy() == 0:
                if drain and not self.stopping.is_set() and self._reconcile_expired(not_again=True):
                    continue  # a drain also settles every lapsed lease (a crash left many), each once
                if self.stopping.is_set() or drain:
                    return self.stats
                self.stopping.wait(poll)
                next_sweep = 0.0

    def close(self) -> None:
        """Stop the thread pools and record what they still finished (the caller closes its channels)."""
        self.request_abandon()
        for pool in self.pools.values():
            pool.shutdown(wait=True)
        try:
            self._step(self._collect(0.0))
        except DatabaseError as exc:  # already reported by `run`; the rows it could not record are reconciled later
            log.warning("dispatcher: %s", exc)

    # one transaction per round: record what finished, claim what fits

    def _busy(self) -> int:
        return sum(self.in_flight.values())

    def _claimable(self) -> dict[str, int]:
        if self.stopping.is_set():
            return {}
        moment = monotonic()
        return {kind: self.capacity[kind] - self.in_flight[kind] for kind in self.channels
                if self.capacity[kind] - self.in_flight[kind] >= max(1, self.capacity[kind] // 2)
                and self._dry_until.get(kind, 0.0) <= moment}

    def _collect(self, poll: float) -> list[_Done]:
        # While nothing can be claimed, wait for results, and gather a few so that one transaction records many.
        done: list[_Done] = []
        with contextlib.suppress(queue.Empty):
            while len(done) < RECORD_BATCH:
                done.append(self.results.get_nowait())
        busy = self._busy()
        if done or busy == 0 or poll <= 0 or self._claimable():
            return done
        with contextlib.suppress(queue.Empty):
            done.append(self.results.get(timeout=poll))
            deadline = monotonic() + GATHER_SECONDS
            while len(done) < max(1, busy // 2) and (left := deadline - monotonic()) > 0:
                done.append(self.results.get(timeout=left))
        return done

    def _step(self, done: list[_Done]) -> int:
        for item in done:
            self.in_flight[item.kind] -= 1
            if item.op == "reconcile" or item.result is None or item.result.status == "retry":
                self._dry_until.pop(item.kind, None)  # rows may be due again at once
        room = self._claimable()
        if not done and not room:
            return 0
        work = self._with_database(self._record_and_claim, done, room)
        self.stats.claimed += len(work)
        for message, lease_end, attempt in work:
            self._submit(message.channel, self._send, message, lease_end, attempt)
        return len(work)

    def _record_and_claim(self, done: list[_Done], room: dict[str, int]) -> list[tuple[Message, datetime, int]]:
        now = self.clock()
        work = []
        with transaction(self.factory) as session:
            accepted = [d for d in done if d.op == "send" and d.result is not None and d.result.status == "sent"]
            record_sent(session, [(d.message.notification_id, d.kind, d.attempt, d.result.provider_id, d.started)
                                  for d in accepted], now, self.stats)
            others = [d for d in done if d not in accepted]
            if others:
                taken: set[str] = set()
                rows = {n.id: n for n in session.scalars(select(Notification).where(
                    Notification.id.in_([d.message.notification_id for d in others])))}
                for item in others:
                    self._apply(session, rows[item.message.notification_id], item, now, taken)
            for kind, free in room.items():
                claimed = claim(session, self.owner, free, self.settings.lease_seconds, now, self.settings, [kind],
                                self.stats)
                if len(claimed) < free:
                    self._dry_until[kind] = monotonic() + max(0.05, self.settings.dispatch_poll_seconds)
                work += [(to_message(n, self.settings, now), n.lease_expires_at, n.attempts) for n in claimed]
        return work

    def _with_database(self, unit: Callable[..., Any], *args: object) -> Any:
        """Run one unit of work (its own transaction); while the database refuses it (connection dropped, server
        restarting, disk read-only or full), roll back and try again for up to Settings.db_retry_seconds, then stop
        with DatabaseError. A rolled-back round leaves no notice half-recorded: what it had sent stays `sending`
        under our lease and is checked with the provider before any resend."""
        give_up_at = monotonic() + (0.0 if self.database_lost else self.settings.db_retry_seconds)
        delay = DB_RETRY_FIRST_SECONDS
        while True:
            before = dataclasses.replace(self.stats, by_channel=dict(self.stats.by_channel))
            try:
                return unit(*args)
            except (OperationalError, InterfaceError) as exc:
                self._restore_stats(before)
                reason = _database_reason(exc)
                if monotonic() + delay <= give_up_at:
                    log.warning("dispatcher: the database failed (%s); trying again in %.1f s", reason, delay)
                    if not self.abandon.wait(delay):  # a second SIGTERM stops the waiting
                        delay = min(delay * 2, DB_RETRY_MAX_SECONDS)
                        continue
                self.database_lost = True
                raise DatabaseError(
                    f"dispatch stopped: the database is unavailable ({reason}); messages handed to a channel but "
                    "not yet recorded stay 'sending' and are checked with the provider before any resend; run "
                    "`notifier dispatch` again once the database is back") from None

    def _restore_stats(self, before: DispatchStats) -> None:
        for name in before.__dataclass_fields__:
            setattr(self.stats, name, getattr(before, name))

    # reconciling

    def _reconcile_expired(self, not_again: bool = False) -> int:
        room = {kind: self.capacity[kind] - self.in_flight[kind] for kind in self.channels}
        if not any(free > 0 for free in room.values()):
            return 0
        stale = self._with_database(self._take_stale, room, self._looked_up if not_again else set())
        self._looked_up.update(message.notification_id for message in stale)
        for message in stale:
            self._submit(message.channel, self._lookup, message)
        return len(stale)

    def _take_stale(self, room: dict[str, int], skip: set[int]) -> list[Message]:
        room = dict(room)
        now = self.clock()
        with self.factory() as session:  # a plain read first: most sweeps find nothing and need no write lock
            owners = set(session.scalars(select(Notification.lease_owner).distinct().where(
                Notification.status == "sending", Notification.lease_owner.is_not(None))))
            expired = session.scalar(select(Notification.id).where(
                Notification.status == "sending", Notification.lease_expires_at < now).limit(1)) is not None
        gone = self._gone_owners(owners)
        if not expired and not gone:
            return []
        with transaction(self.factory) as session:
            query = (select(Notification).where(Notification.status == "sending",
                                                or_(Notification.lease_expires_at < now,
                                                    Notification.lease_owner.in_(gone)),
                                                Notification.channel.in_(list(self.channels)))
                     .order_by(Notification.priority, Notification.id).limit(max(room.values())))
            if skip:
                query = query.where(Notification.id.not_in(list(skip)))
            if is_postgres(session):
                query = query.with_for_update(skip_locked=True, of=Notification)
            stale = []
            for notification in session.scalars(query):
                if room[notification.channel] <= 0:
                    continue
                room[notification.channel] -= 1
                # Ours while we ask; if we die asking, the lease runs out again and someone asks again.
                notification.lease_owner = self.owner
                notification.lease_expires_at = now + timedelta(seconds=self.settings.lease_seconds)
                stale.append(to_message(notification, self.settings, now))
        return stale

    def _gone_owners(self, owners: set[str]) -> list[str]:
        # A dead worker's requests may still be finishing at the provider: wait one provider timeout after we
        # first see it gone before asking the provider what it has.
        moment = monotonic()
        for owner in owners:
            if owner not in self._gone_since and owner_is_gone(owner, self.owner):
                self._gone_since[owner] = moment
        wait = self.settings.provider_timeout_seconds
        return [owner for owner in owners if moment - self._gone_since.get(owner, moment) >= wait]

    def _submit(self, kind: str, task: Callable, *args: object) -> None:
        self.in_flight[kind] += 1
        self.pools[kind].submit(self._guarded, task, kind, *args)

    def _guarded(self, task: Callable, kind: str, message: Message, *args: object) -> None:
        # Whatever happens in a worker thread, the main loop hears about it, or it would wait for ever.
        try:
            done = task(kind, message, *args)
        except Exception as exc:  # noqa: BLE001 - a channel bug must not lose the row: it is looked up later
            log.exception("notification %s: unexpected error in the %s channel", message.notification_id, kind)
            done = _Done("send", kind, message, self.clock(),
                         result=SendResult.uncertain("error", f"{type(exc).__name__}: {exc}"))
        self.results.put(done)

    # worker threads

    def _send(self, kind: str, message: Message, lease_end: datetime, attempt: int) -> _Done:
        channel, pacer = self.channels[kind], self.pacers.get(kind)
        if pacer is not None and not pacer.acquire(cost(channel, message), self.abandon):
            return _Done("send", kind, message, self.clock(), attempt=attempt)
        started = self.clock()
        if (lease_end - started).total_seconds() < self.guard or self.abandon.is_set():
            return _Done("send", kind, message, started, attempt=attempt)  # too late to start safely: give back
        result = channel.send(message)
        if pacer is not None and result.status == "retry" and result.retry_after:
            pacer.pause(result.retry_after)
        return _Done("send", kind, message, started, result=result, attempt=attempt)

    def _lookup(self, kind: str, message: Message) -> _Done:
        channel = self.channels[kind]
        started = self.clock()
        if not channel.reconciles:
            assumed = self.settings.email_reconcile == "assume_sent"
            return _Done("reconcile", kind, message, started, found=[message.message_id] if assumed else [])
        try:
            return _Done("reconcile", kind, message, started, found=list(channel.lookup(message)))
        except Exception as exc:  # noqa: BLE001 - any failure to ask means "ask again later", never "resend"
            return _Done("reconcile", kind, message, started, error=f"{type(exc).__name__}: {exc}")

    # the main thread records

    def _apply(self, session: Session, notification: Notification, item: _Done, now: datetime,
               taken: set[str]) -> None:
        if item.op == "reconcile":
            if notification.status == "sending" and notification.lease_owner == self.owner:
                record_reconciliation(session, notification, item.found, item.error, self.settings, now,
                                      self.stats, taken)
        elif item.result is None:
            if notification.status == "sending" and notification.lease_owner == self.owner:
                notification.status, notification.attempts = "queued", max(0, notification.attempts - 1)
                notification.lease_owner, notification.lease_expires_at = None, None
        else:
            if item.result.status != "sent":
                log.info("notification %s to %s: %s (%s)", notification.id, mask_contact(notification.recipient),
                         item.result.status, redact(item.result.reason))
            record_outcome(session, notification, item.result, self.settings, now, item.started, self.owner,
                           self.stats)


def _database_reason(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def dispatch_all(factory: sessionmaker[Session], settings: Settings, channels: dict[str, Channel]
                 ) -> DispatchStats:
    """Send everything due now, then return (retries scheduled for later are left for the next run)."""
    dispatcher = Dispatcher(factory, settings, channels)
    try:
        return dispatcher.run(drain=True)
    finally:
        dispatcher.close()


def serve(settings: Settings, once: bool, on_start: Callable[[dict[str, str]], None] | None = None
          ) -> DispatchStats:
    """`notifier dispatch`: send what is due (once), or keep sending until SIGTERM / SIGINT. The first signal
    finishes the messages in flight and records them; a second gives back those still waiting for a send slot."""
    from notifier.delivery.providers import channels_for
    from notifier.store.db import make_engine, require_schema, session_factory

    engine = make_engine(settings.database_url)
    require_schema(engine)
    channels = channels_for(settings)
    dispatcher = Dispatcher(session_factory(engine), settings, channels)

    def on_signal(signum: int, frame: object) -> None:
        if dispatcher.stopping.is_set():
            dispatcher.request_abandon()
        else:
            dispatcher.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_start is not None:
            on_start({kind: channel.name for kind, channel in channels.items()})
        return dispatcher.run(drain=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        dispatcher.close()
        for channel in channels.values():
            channel.close()
        engine.dispose()
