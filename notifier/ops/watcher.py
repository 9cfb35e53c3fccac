"""`notifier watch`: the daemon that acts by itself. One watcher leads; the others stand by.

The leader runs APScheduler 3 jobs whose definitions live in a SQLAlchemy job store on the notifier database
(table `apscheduler_jobs`): poll each configured feed at its own interval (and run the pipeline at once when
something new came in), run the pipeline (rules -> disruptions -> planning) on a slower beat as a safety net,
dispatch the outbox every tick, and do the housekeeping: expire held places, apply the no-answer defaults,
expire finished disruptions, warn ops about silent feeds, and queue ops a summary of every automatic broadcast.
Closing the loop, on the housekeeping beat: remind customers who have not chosen (aftercare.reminders), keep the
desk's follow-up worklist current (aftercare.followups), ask resolved disruptions' customers for a score
(aftercare.satisfaction), and read email replies over IMAP when `imap_host` is set (aftercare.inbound_email).

Leadership: on PostgreSQL a session advisory lock (`pg_try_advisory_lock`) held on a dedicated connection: it
goes the moment the leader's connection does. Elsewhere a `locks` row with a lease the leader renews every
tick; a standby takes over once the lease has lapsed (at most `watcher_lease_seconds` plus one tick).

Shutdown on SIGTERM / SIGINT: the dispatcher claims nothing more and records what it has in flight, running
jobs finish, the lock is released (a standby takes over at its next tick), and the heartbeat says "stopped".
Nothing is lost: every stage commits its work with the mark that its input is handled (DESIGN.md §2).

One piece, at about 500 lines: leadership, the job schedule and shutdown share the watcher's state and its
lock; the work itself lives in the stages it calls.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from notifier.store import audit
from notifier.store.settings import Settings
from notifier import outbox
from notifier.store.db import insert_ignore, is_postgres, make_engine, require_schema, session_factory, transaction
from notifier.store.models import (Broadcast, Disruption, FeedItem, Lock, Notification, Sailing, WatcherHeartbeat,
                                   utcnow)
from notifier.store.status import AWAITING_APPROVAL, PLANNING, QUEUED

log = logging.getLogger(__name__)

LOCK_NAME = "watcher"
# pg_try_advisory_lock takes a bigint; this one spells "notifier watcher" for whoever reads pg_locks.
ADVISORY_KEY = 0x6E6F746966696572 & 0x7FFFFFFFFFFFFFFF
JOBS_TABLE = "apscheduler_jobs"
SUMMARY_LOOKBACK = timedelta(hours=24)

_current: Watcher | None = None


# --- leadership ----------------------------------------------------------------------------------------------------

class AdvisoryLeadership:
    """PostgreSQL: a session advisory lock on a connection kept open for as long as we lead. A leader that is
    killed or stops closes that connection and the lock goes at once; for one whose machine or network dies, the
    server is told to probe the connection (TCP keepalives) and drop it within about `lease_seconds`, so a
    standby takes over within that time either way."""

    def __init__(self, engine: Engine, lease_seconds: float = 30.0) -> None:
        self.engine, self.lease_seconds = engine, lease_seconds
        self.connection = None

    def hold(self, now: datetime) -> bool:
        """Take the lock, or check we still have it; True while we lead."""
        if self.connection is not None:
            try:
                self.connection.execute(text("SELECT 1"))
                return True
            except Exception:  # noqa: BLE001 - a dead connection means the lock is gone with it
                log.warning("watcher: lost the database connection that held the leader lock")
                self.connection = None
                return False
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}):
            self._probe_within_lease(connection)
            self.connection = connection
            return True
        connection.close()
        return False

    def _probe_within_lease(self, connection) -> None:  # noqa: ANN001
        # Idle a third of the lease, then three probes a sixth apart: a vanished leader is dropped (and its lock
        # with it) after about five sixths of the lease. No effect over a Unix socket, where nothing can vanish.
        lease = max(3.0, float(self.lease_seconds))
        for name, value in (("tcp_keepalives_idle", max(1, int(lease // 3))),
                            ("tcp_keepalives_interval", max(1, int(lease // 6))), ("tcp_keepalives_count", 3),
                            ("tcp_user_timeout", int(lease * 1000))):
            connection.execute(text("SELECT set_config(:name, :value, false)"), {"name": name, "value": str(value)})

    def release(self) -> None:
        """Give the lock back so a standby takes over at once."""
        if self.connection is not None:
            try:
                self.connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
            finally:
                self.connection.close()
                self.connection = None


class LeaseLeadership:
    """Other engines: the `locks` row, ours while we renew it before `expires_at`."""

    def __init__(self, factory: sessionmaker[Session], owner: str, lease_seconds: float) -> None:
        self.factory, self.owner, self.lease = factory, owner, timedelta(seconds=lease_seconds)

    def hold(self, now: datetime) -> bool:
        """Take the lease if it is free or lapsed, renew it if it is ours; True while we lead."""
        with transaction(self.factory) as session:
            taken = session.execute(update(Lock).where(Lock.name == LOCK_NAME)
                                    .where((Lock.owner == self.owner) | (Lock.expires_at < now))
                                    .values(owner=self.owner, expires_at=now + self.lease)
                                    .execution_options(synchronize_session=False)).rowcount
            if not taken:
                taken = session.execute(insert_ignore(Lock.__table__, session),
                                        [{"name": LOCK_NAME, "owner": self.owner,
                                          "expires_at": now + self.lease}]).rowcount
            return taken == 1

    def release(self) -> None:
        """Drop the lease so a standby takes over at its next tick."""
        with transaction(self.factory) as session:
            session.execute(delete(Lock).where(Lock.name == LOCK_NAME, Lock.owner == self.owner))


def leadership_for(engine: Engine, factory: sessionmaker[Session], owner: str, settings: Settings):  # noqa: ANN201
    """The election that fits the database: advisory lock on PostgreSQL, leased row elsewhere."""
    if is_postgres(engine):
        return AdvisoryLeadership(engine, settings.watcher_lease_seconds)
    return LeaseLeadership(factory, owner, settings.watcher_lease_seconds)


# --- the jobs ------------------------------------------------------------------------------------------------------

def run_pipeline(factory: sessionmaker[Session], settings: Settings, rules: list, now: datetime | None = None
                 ) -> dict[str, Any]:
    """Rules over new feed items, then plan every broadcast not yet planned; returns counts."""
    from notifier.ops.pipeline import plan_pending, process_new_items

    processed = process_new_items(factory, rules, now, settings)
    plans = plan_pending(factory, settings, now)
    return {"items": processed.items, "disruptions_changed": len(set(processed.disruptions_changed)),
            "disruptions_cleared": len(processed.disruptions_cleared), "broadcasts": processed.broadcast_ids,
            "notifications_planned": sum(p.notifications for p in plans),
            "quarantined": [q.item_id for q in processed.quarantined]}


def queue_ops_email(session: Session, settings: Settings, key: str, subject: str, body: str) -> bool:
    """Put one email to the ops address in the outbox (once per key); False when no SMTP relay or address."""
    if not (settings.smtp_configured and settings.ops_email):
        return False
    row = {"dedup_key": f"ops:{key}", "channel": "email", "recipient": settings.ops_email, "language": "en",
           "template": "ops", "purpose": "ops", "subject": subject, "body_text": body, "body_html": None,
           "segments": 0, "safety_critical": False, "status": QUEUED, "priority": 0, "attempts": 0,
           "revision": 0, "created_at": utcnow()}
    return bool(outbox.add(session, [row], columns=None))


def queue_broadcast_summaries(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
                              ) -> list[int]:
    """Queue ops a summary of every recent automatic broadcast not yet summarised; returns their ids."""
    if not (settings.smtp_configured and settings.ops_email):
        return []
    now = now or utcnow()
    queued = []
    with transaction(factory) as session:
        summarised = set(session.scalars(select(Notification.dedup_key).where(
            Notification.purpose == "ops", Notification.dedup_key.like("ops:broadcast:%"))))
        for broadcast in session.scalars(select(Broadcast).where(
                Broadcast.origin == "automatic", Broadcast.status != PLANNING,
                Broadcast.created_at >= now - SUMMARY_LOOKBACK).order_by(Broadcast.id)).all():
            key = f"broadcast:{broadcast.id}"
            if f"ops:{key}" in summarised:
                continue
            subject, body = broadcast_summary(session, broadcast, settings)
            if queue_ops_email(session, settings, key, subject, body):
                audit.record(session, "watcher", "ops.summary_queued", "broadcast", broadcast.id)
                queued.append(broadcast.id)
    return queued


def broadcast_summary(session: Session, broadcast: Broadcast, settings: Settings) -> tuple[str, str]:
    """The subject and text of the ops summary of one automatic broadcast."""
    ids = list(broadcast.target.get("disruption_ids", []))
    rows = session.execute(select(Disruption, Sailing.code).join(Sailing, Sailing.id == Disruption.sailing_id)
                           .where(Disruption.id.in_(ids)).order_by(Sailing.scheduled_departure)).all()
    item = session.get(FeedItem, rows[0][0].feed_item_id) if rows and rows[0][0].feed_item_id else None
    alert = (item.observation.get("headline") or item.observation.get("event") or item.external_id) if item else ""
    facts = broadcast.preview or {}
    status = broadcast.status.replace("_", " ")
    subject = f"[notifier] automatic broadcast #{broadcast.id}: {len(rows)} sailing(s) {broadcast.kind} ({status})"
    lines = [f"Automatic broadcast #{broadcast.id} ({broadcast.kind}, template {broadcast.template}) is {status}.",
             f"Alert: {alert}" if alert else "", f"Rule(s): {', '.join(sorted({d.rule_id or '-' for d, _ in rows}))}",
             f"Sailings ({len(rows)}): {', '.join(code for _, code in rows[:12])}{' ...' if len(rows) > 12 else ''}",
             f"Messages planned: {broadcast.recipient_count}",
             f"Bookings without a usable contact on some channel: {len(facts.get('unreachable', []))}", "",
             f"Preview:  notifier broadcast preview {broadcast.id}",
             f"Approve:  notifier broadcast approve {broadcast.id} --operator NAME"
             if broadcast.status == AWAITING_APPROVAL else f"Progress: notifier broadcast status {broadcast.id}",
             f"Stop:     notifier broadcast cancel {broadcast.id} --operator NAME"]
    return subject, "\n".join(line for line in lines if line is not None) + "\n"


def housekeeping(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
                 ) -> dict[str, Any]:
    """Expire held places, apply no-answer defaults, expire disruptions, warn about silent feeds."""
    from notifier.aftercare.responses import apply_no_answer_defaults
    from notifier.ops import polling
    from notifier.ops.pipeline import expire_disruptions
    from notifier.planning import offers

    now = now or utcnow()
    done: dict[str, Any] = {}
    # Defaults first: a customer who did not answer keeps the place held for them, which expiring holds first
    # would give away when both fall due at the same moment.
    done["defaults_applied"] = apply_no_answer_defaults(factory, settings, now)
    with transaction(factory) as session:
        done["holds_expired"] = offers.expire_holds(session, now)
    outcome = expire_disruptions(factory, now)
    done["disruptions_ended"] = len(outcome.cleared) + len(outcome.retired)
    stale = polling.newly_stale(factory, settings, now)
    for health in stale:
        since = health.last_success_at.strftime("%Y-%m-%d %H:%M UTC") if health.last_success_at else "ever"
        message = (f"feed {health.source.name} has been silent since {since} (staleness limit "
                   f"{health.source.stale_after_seconds} s); last error: {health.last_error or 'none'}")
        log.warning("%s", message)
        with transaction(factory) as session:
            audit.record(session, "watcher", "feed.stale", "feed", health.source.name, last_error=health.last_error)
            queue_ops_email(session, settings, f"stale:{health.source.name}:{now.isoformat()}",
                            f"[notifier] feed {health.source.name} is stale", message + "\n")
    done["stale_feeds"] = [h.source.name for h in stale]
    return done



def run_job(name: str, argument: str | None = None) -> None:
    """The one function every stored job calls (a textual reference the job store can keep): runs the job on
    the watcher of this process, if it still leads."""
    watcher = _current
    if watcher is None or not watcher.leading:
        return
    watcher.run_job(name, argument)


# --- the watcher ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: its id, what it runs and how often."""

    id: str
    name: str
    seconds: float
    argument: str | None = None


class Watcher:
    """One `notifier watch` process."""

    def __init__(self, settings: Settings, owner: str | None = None,
                 clock: Callable[[], datetime] = utcnow, jobs: tuple[str, ...] | None = None) -> None:
        from notifier.delivery.leases import worker_id

        self.settings, self.clock = settings, clock
        self.jobs = jobs  # None: every job; `feeds poll` runs only ("poll", "pipeline")
        self.owner = owner or worker_id()
        self.engine = make_engine(settings.database_url)
        require_schema(self.engine)
        self.factory = session_factory(self.engine)
        self.leadership = leadership_for(self.engine, self.factory, self.owner, settings)
        self.stop = threading.Event()
        self.leading = False
        self.scheduler = None
        self.dispatcher = None
        self.channels: dict = {}
        self.rules: list = []
        self.pipeline_lock = threading.Lock()
        self.details: dict[str, Any] = {}
        self.details_lock = threading.Lock()  # jobs write it on scheduler threads, the heartbeat reads it
        self.started_at = clock()

    # the main loop

    def run(self, install_signals: bool = True) -> None:
        """Lead or stand by until told to stop; then shut down cleanly."""
        global _current
        _current = self
        previous = self._install_signals() if install_signals else {}
        try:
            while not self.stop.is_set():
                self._tick()
                self.stop.wait(self.settings.watcher_tick_seconds)
        finally:
            self._step_down("stopping")
            self._beat("stopped")
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _current = None
            self.engine.dispose()

    def request_stop(self, *_: object) -> None:
        """Finish what is in flight, then stop (the SIGTERM / SIGINT handler)."""
        if self.dispatcher is not None:
            self.dispatcher.request_stop()
        self.stop.set()

    def _install_signals(self) -> dict:
        return {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _tick(self) -> None:
        try:
            leads = self.leadership.hold(self.clock())
        except Exception as exc:  # noqa: BLE001 - a database hiccup: stand by this tick, try again the next
            log.warning("watcher: cannot check leadership (%s)", exc)
            leads = False
        if leads and not self.leading:
            self._lead()
        elif not leads and self.leading:
            self._step_down("lost the leader lock")
        self._beat("leader" if self.leading else "standby")

    def _beat(self, role: str) -> None:
        now = self.clock()
        with self.details_lock:
            details = dict(self.details)
        row = {"owner": self.owner, "role": role, "started_at": self.started_at, "beat_at": now,
               "details": details}
        try:
            with transaction(self.factory) as session:
                if not session.execute(update(WatcherHeartbeat).where(WatcherHeartbeat.owner == self.owner)
                                       .values(role=role, beat_at=now, details=row["details"])
                                       .execution_options(synchronize_session=False)).rowcount:
                    session.execute(insert_ignore(WatcherHeartbeat.__table__, session), [row])
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not stop the watcher
            log.warning("watcher: heartbeat not written (%s)", exc)

    # leading

    def _lead(self) -> None:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        from notifier.delivery.providers import channels_for
        from notifier.delivery.dispatch import Dispatcher
        from notifier.store.paths import rules_dir
        from notifier.rules.load import load_rules

        log.info("watcher %s: leading", self.owner)
        self.rules = load_rules([rules_dir(), *map(Path, self.settings.rules_dirs)])
        self.channels = channels_for(self.settings)
        self.dispatcher = Dispatcher(self.factory, self.settings, self.channels, owner=self.owner)
        store_engine = self.engine if is_postgres(self.engine) else self.engine.execution_options(notifier_write=True)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=store_engine, tablename=JOBS_TABLE)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}, timezone="UTC")
        self.scheduler.start(paused=True)
        self._schedule(self.job_specs())
        self.leading = True
        self.scheduler.resume()
        with transaction(self.factory) as session:
            audit.record(session, "watcher", "watcher.leading", "watcher", self.owner)

    def job_specs(self) -> list[JobSpec]:
        """The jobs a leader runs, from the settings (feeds come and go with notifier.toml)."""
        tick = self.settings.watcher_tick_seconds
        specs = [JobSpec("dispatch", "dispatch", tick), JobSpec("pipeline", "pipeline",
                                                                self.settings.watcher_pipeline_seconds),
                 JobSpec("housekeeping", "housekeeping", self.settings.watcher_housekeeping_seconds)]
        specs += [JobSpec(name, name, self.settings.watcher_housekeeping_seconds)
                  for name in ("reminders", "followups", "satisfaction")]
        if self.settings.imap_host:
            specs.append(JobSpec("inbound_email", "inbound_email", self.settings.watcher_housekeeping_seconds))
        specs += [JobSpec(f"poll:{source.name}", "poll", source.poll_seconds, source.name)
                  for source in self.settings.feeds]
        return [spec for spec in specs if self.jobs is None or spec.name in self.jobs]

    def _schedule(self, specs: list[JobSpec]) -> None:
        wanted = {spec.id for spec in specs}
        for job in self.scheduler.get_jobs():
            if job.id not in wanted:
                job.remove()  # a feed taken out of notifier.toml stops being polled
        now = self.clock()
        for spec in specs:
            self.scheduler.add_job(run_job, "interval", seconds=spec.seconds, id=spec.id, name=spec.id,
                                   args=[spec.name, spec.argument], replace_existing=True, next_run_time=now)

    def _step_down(self, why: str) -> None:
        if not self.leading:
            return
        log.info("watcher %s: %s; finishing the jobs in flight", self.owner, why)
        self.leading = False
        if self.dispatcher is not None:
            self.dispatcher.request_stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None
        for channel in self.channels.values():
            channel.close()
        self.channels = {}
        try:
            self.leadership.release()
        except Exception as exc:  # noqa: BLE001 - the lease lapses by itself; the advisory lock with the session
            log.warning("watcher: could not release the leader lock (%s)", exc)

    # the jobs, run on the scheduler's threads

    def run_job(self, name: str, argument: str | None) -> None:
        """Run one job; an error is logged and the job runs again at its next time, never a crash."""
        try:
            done = {"dispatch": self._dispatch, "pipeline": self._pipeline, "housekeeping": self._housekeeping,
                    "poll": self._poll, "reminders": self._reminders, "followups": self._followups,
                    "satisfaction": self._satisfaction, "inbound_email": self._inbound_email}[name](argument) or {}
        except Exception as exc:  # noqa: BLE001 - one failing job must not stop the others
            log.exception("watcher job %s failed", name)
            done = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        with self.details_lock:
            self.details[name if argument is None else f"{name}:{argument}"] = {"at": self.clock().isoformat(),
                                                                                 **done}

    def _dispatch(self, _: str | None) -> dict[str, Any]:
        from notifier.broadcasts.preview import finish_sent_broadcasts

        if self.dispatcher is None or self.stop.is_set():
            return {}
        before = self.dispatcher.stats.sent
        self.dispatcher.run(drain=True)
        finished = finish_sent_broadcasts(self.factory)
        return {"sent": self.dispatcher.stats.sent - before, "broadcasts_done": finished}

    def _pipeline(self, _: str | None) -> dict[str, Any]:
        with self.pipeline_lock:
            done = run_pipeline(self.factory, self.settings, self.rules)
            done["ops_summaries"] = queue_broadcast_summaries(self.factory, self.settings)
        return done

    def _housekeeping(self, _: str | None) -> dict[str, Any]:
        return housekeeping(self.factory, self.settings, self.clock())

    def _reminders(self, _: str | None) -> dict[str, Any]:
        from notifier.aftercare.reminders import queue_reminders

        return {"queued": queue_reminders(self.factory, self.settings, self.clock())}

    def _followups(self, _: str | None) -> dict[str, Any]:
        from notifier.aftercare.followups import refresh

        with transaction(self.factory) as session:
            raised = refresh(session, self.settings, self.clock())
        return {"raised": sum(raised.values()), **raised}

    def _satisfaction(self, _: str | None) -> dict[str, Any]:
        from notifier.aftercare.satisfaction import queue_requests

        return {"requested": queue_requests(self.factory, self.settings, self.clock())}

    def _inbound_email(self, _: str | None) -> dict[str, Any]:
        from notifier.aftercare.inbound_email import poll_imap

        result = poll_imap(self.factory, self.settings, self.clock())
        return {"read": result.read, **result.outcomes}

    def _poll(self, name: str | None) -> dict[str, Any]:
        from notifier.ops.polling import poll_source

        source = next((s for s in self.settings.feeds if s.name == name), None)
        if source is None:
            return {"error": f"feed {name} is no longer configured"}
        result = poll_source(self.factory, source, self.settings, self.clock())
        done = {"outcome": result.outcome, "new_items": len(result.new_item_ids), "errors": result.errors[:3]}
        if result.new_item_ids:
            done["pipeline"] = self._pipeline(None)  # act within seconds, not at the next pipeline beat
        return done


@dataclass
class WatcherState:
    """One watcher process as `watch --status` shows it."""

    owner: str
    role: str
    started_at: datetime
    beat_at: datetime
    silent: bool
    details: dict[str, Any]


def watcher_states(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
                   ) -> list[WatcherState]:
    """Every watcher that has run against this database, newest heartbeat first; `silent` when it missed
    its beats for longer than the lease (it died without saying so)."""
    now = now or utcnow()
    limit = timedelta(seconds=max(settings.watcher_lease_seconds, 3 * settings.watcher_tick_seconds))
    with factory() as session:
        rows = session.scalars(select(WatcherHeartbeat).order_by(WatcherHeartbeat.beat_at.desc()))
        return [WatcherState(r.owner, r.role, r.started_at, r.beat_at,
                             r.role != "stopped" and now - r.beat_at > limit, dict(r.details or {})) for r in rows]

