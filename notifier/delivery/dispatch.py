"""The delivery worker: claim queued notifications, send them through their channel, record each outcome.

Exactly once, through crashes: a notification is claimed under a lease before the provider is called
(notifier.delivery.claims), and a send is only started while the lease has more left than the provider timeout
plus a margin, so no send outlives its lease. A `sending` row whose lease expired (the worker died, or the
provider's answer was lost: timeout, dropped connection, 5xx) is reconciled before anything is resent: the
channel's `lookup` asks the provider for a copy (Twilio: the Messages list by To, From, DateSent and our body); an
SMTP relay cannot be asked, so Settings.email_reconcile decides (resend with the same Message-ID, or assume it
went). A lease of a dead process on this machine is reconciled without waiting for it (notifier.delivery.leases).

Throughput: rows are claimed a batch at a time (urgent first: Notification.priority is the departure time) and
sent by a thread pool per channel, paced per sender in SMS segments or emails per second (`ratelimit.Pacer`);
one thread owns the database and, in one transaction per round, records what finished (the common "sent" in
two bulk statements, notifier.delivery.outcomes) and claims what fits.

The database may go away too (a dropped connection, a server restart, a disk turned read-only): each round's
transaction is rolled back and tried again for up to Settings.db_retry_seconds, then the run stops with one clear
DatabaseError. What was handed to a channel in a lost round stays `sending` under its lease and is looked up
before any resend. A drain also settles every lease that has run out (each once per run), so one
`notifier dispatch --once` after a crash finishes what the crashed run left.

The watcher keeps one `Dispatcher` and calls `run(drain=True)` each tick, so pacing carries over between ticks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import signal
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import monotonic
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from notifier.channels.base import Channel, Message, SendResult, cost
from notifier.delivery.backlog import still_waiting, waiting_for_retry
from notifier.delivery.breaker import CIRCUIT_CLOSED, Breaker
from notifier.delivery.claims import claim, to_message
from notifier.delivery.leases import owner_is_gone, worker_id
from notifier.delivery.optouts import may_send
from notifier.delivery.outcomes import DispatchStats, record_outcome, record_reconciliation, record_sent
from notifier.delivery.ratelimit import Pacer
from notifier.privacy import mask_contact, redact
from notifier.store.db import DatabaseError, is_postgres, transaction
from notifier.store.models import Notification, utcnow
from notifier.store.settings import ConfigError, Settings
from notifier.store.status import QUEUED, SENDING, SENT

log = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 2.0  # a send must be able to time out this long before its lease ends
ASSUMED_SEGMENTS = 4  # for sizing claims against a sender's pace (a long Chinese notice is 3-4 segments)
RECORD_BATCH = 200
IN_FLIGHT_PER_THREAD = 4  # claimed ahead per sending thread, so claims and records come in batches
GATHER_SECONDS = 0.05  # how long to gather finished sends into one transaction
DB_RETRY_FIRST_SECONDS = 0.2  # a dropped database connection is tried again after this, doubling ...
DB_RETRY_MAX_SECONDS = 5.0  # ... up to this, for Settings.db_retry_seconds in all


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
        self.breakers = {kind: Breaker(kind, channel.name, settings.retry_base_seconds, settings.retry_cap_seconds,
                                       clock) for kind, channel in channels.items()}
        self.pools = {kind: ThreadPoolExecutor(max(1, settings.dispatch_threads), f"dispatch-{kind}")
                      for kind in channels}
        self.capacity = {kind: self._capacity(kind) for kind in channels}
        self.results: queue.Queue[_Done] = queue.Queue()
        self.in_flight: Counter[str] = Counter()
        self._dry_until: dict[str, float] = {}  # a kind that had nothing due is not asked again until then
        self._gone_since: dict[str, float] = {}  # lease owners seen dead, and since when
        self._ripening: list[float] = []  # seconds until each dead owner's rows may be looked up
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
                if drain and self._ripening and not self.stopping.is_set():
                    self.stopping.wait(min(poll, max(0.05, min(self._ripening))))
                    continue  # a dead dispatcher's rows: ours to settle once its last requests have surely ended
                if self.stopping.is_set() or drain:
                    if drain and not self.database_lost:
                        self._with_database(self._take_stock)
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
                and self._dry_until.get(kind, 0.0) <= moment and self.breakers[kind].may_claim()}

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
            if item.op == "send":
                self.breakers[item.kind].record(item.result)
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
            accepted = [d for d in done if d.op == "send" and d.result is not None and d.result.status == SENT]
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
                free = self.breakers[kind].room(free)  # one probe while half-open
                claimed = claim(session, self.owner, free, self.settings.lease_seconds, now, self.settings, [kind],
                                self.stats) if free else []
                if len(claimed) < free:
                    self.breakers[kind].probe_unused()
                    self._dry_until[kind] = monotonic() + max(0.05, self.settings.dispatch_poll_seconds)
                work += [(to_message(n, self.settings, now), n.lease_expires_at, n.attempts) for n in claimed]
            for breaker in self.breakers.values():
                breaker.save(session)
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

    def _take_stock(self) -> None:
        # What a drained run leaves: notices (not retry events) that will be tried later, and why the rest waits.
        now = self.clock()
        with self.factory() as session:
            self.stats.retried = waiting_for_retry(session)
            self.stats.waiting = still_waiting(session, now, self.owner)
        self.stats.waiting += [f"{kind} not sent while {breaker.provider} is in trouble (circuit {breaker.state}: "
                               f"{breaker.reason})" for kind, breaker in self.breakers.items()
                               if breaker.state != CIRCUIT_CLOSED]

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
                Notification.status == SENDING, Notification.lease_owner.is_not(None))))
            expired = session.scalar(select(Notification.id).where(
                Notification.status == SENDING, Notification.lease_expires_at < now).limit(1)) is not None
        gone = self._gone_owners(owners)
        if not expired and not gone:
            return []
        with transaction(self.factory) as session:
            query = (select(Notification).where(Notification.status == SENDING,
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
        self._ripening = [self._gone_since[owner] + wait - moment for owner in owners
                          if owner in self._gone_since and moment - self._gone_since[owner] < wait]
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
            if notification.status == SENDING and notification.lease_owner == self.owner:
                record_reconciliation(session, notification, item.found, item.error, self.settings, now,
                                      self.stats, taken)
        elif item.result is None:
            if notification.status == SENDING and notification.lease_owner == self.owner:
                notification.status, notification.attempts = QUEUED, max(0, notification.attempts - 1)
                notification.lease_owner, notification.lease_expires_at = None, None
        else:
            if item.result.status != SENT:
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
