"""`notifier watch` as operations run it: one leader (a leased row on SQLite, an advisory lock on PostgreSQL),
standbys that take over, a typhoon warning polled from a real HTTP feed all the way to the customers and a
summary to ops over real SMTP, and SIGTERM in the middle of a broadcast: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from notifier.broadcasts import manual
from notifier.broadcasts.manual import BroadcastRequest
from notifier.store.settings import FeedSource
from notifier.store.db import make_engine
from notifier.ops.demo import bundled_feed, generate
from notifier.store.models import Broadcast, FeedItem, Lock, Notification, WatcherHeartbeat
from notifier.ops.watcher import AdvisoryLeadership, LeaseLeadership, Watcher, watcher_states
from tests.standins.smtp_relay import Relay
from tests.ops.test_polling import FeedServer, atom_index

NOTIFIER = Path(sys.executable).parent / "notifier"


def wait_for(condition, what: str, timeout: float = 60.0, every: float = 0.1):  # noqa: ANN001, ANN201
    """Poll until `condition()` is truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def count(factory, *conditions) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Notification).where(*conditions)) or 0


def roles(factory) -> dict[str, str]:
    with factory() as session:
        return {row.owner: row.role for row in session.scalars(select(WatcherHeartbeat))}


# --- leadership ------------------------------------------------------------------------------------------------

def test_one_leader_on_sqlite_and_a_standby_takes_over_when_its_lease_lapses(factory, tmp_settings):
    now = datetime(2026, 9, 14, tzinfo=UTC)
    first, second = LeaseLeadership(factory, "a:1", 30), LeaseLeadership(factory, "b:2", 30)

    assert first.hold(now) and not second.hold(now)
    assert first.hold(now + timedelta(seconds=20))  # renewed
    assert not second.hold(now + timedelta(seconds=45))  # the renewal counts from the last renewal
    assert second.hold(now + timedelta(seconds=51))  # first stopped renewing: its lease lapsed
    assert not first.hold(now + timedelta(seconds=52))
    first.release()  # releasing what it no longer holds takes nothing from the new leader
    with factory() as session:
        assert session.get(Lock, "watcher").owner == "b:2"
    second.release()
    assert first.hold(now + timedelta(seconds=53))


def test_one_leader_on_postgresql_via_an_advisory_lock():
    # The lock needs no tables, so the server's own database will do (no migrated copy needed).
    url = os.environ.get("NOTIFIER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("NOTIFIER_TEST_POSTGRES_URL is not set (CI sets it; see .ci/run)")
    engine = make_engine(url)
    now = datetime.now(UTC)
    first, second = AdvisoryLeadership(engine), AdvisoryLeadership(engine)
    try:
        assert first.hold(now) and not second.hold(now)
        assert first.hold(now)
        first.connection.invalidate()  # the leader's connection dies: the lock goes with its session
        assert not first.hold(now)
        assert wait_for(lambda: second.hold(datetime.now(UTC)), "the standby to get the lock", timeout=10)
        second.release()
        assert first.hold(now)
        first.release()
    finally:
        engine.dispose()


# --- the whole loop, in process ----------------------------------------------------------------------------------

@pytest.fixture
def relay():
    with Relay() as running:
        yield running


@pytest.fixture
def feed_server():
    running = FeedServer()
    running.thread.start()
    yield running
    running.httpd.shutdown()
    running.httpd.server_close()


def quick(settings, relay: Relay, **changes):
    """Settings for a watcher that ticks fast, mails through the test relay and does not pace itself."""
    return replace(settings, watcher_tick_seconds=0.2, watcher_lease_seconds=2, watcher_pipeline_seconds=1,
                   watcher_housekeeping_seconds=1, dispatch_poll_seconds=0.1, smtp_host="127.0.0.1",
                   smtp_port=relay.port, ops_email="ops@ferry.example", emails_per_second=1000.0,
                   approval_threshold=100_000, **changes)


def test_a_warning_polled_by_the_watcher_reaches_customers_and_ops(factory, tmp_settings, relay, feed_server):
    network = generate(factory, 600, datetime.now(UTC))
    feed_server.serve("/alerts/typhoon.xml", bundled_feed(network.epoch))
    feed_server.serve("/index.atom", atom_index([("urn:typhoon", network.epoch.isoformat(), "/alerts/typhoon.xml")]))
    settings = quick(tmp_settings, relay, feeds=(FeedSource("hainan-cap", feed_server.url + "/index.atom", "atom",
                                                            poll_seconds=1),))
    watcher = Watcher(settings, owner="test:1")
    thread = threading.Thread(target=watcher.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: relay.to("ops@ferry.example"), "the ops summary email")
        wait_for(lambda: count(factory, Notification.purpose == "notice") and not count(
            factory, Notification.status.in_(("queued", "sending"))), "every notice to be sent")
    finally:
        watcher.request_stop()
        thread.join(60)

    assert not thread.is_alive()
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(FeedItem)) == 1
        automatic = session.scalar(select(Broadcast).where(Broadcast.origin == "automatic"))
        assert session.get(Lock, "watcher") is None  # released on the way out
    summary = relay.to("ops@ferry.example")
    assert len(summary) == 1 and f"automatic broadcast #{automatic.id}" in summary[0]["Subject"]
    assert "notifier broadcast status" in summary[0].get_content() or "approve" in summary[0].get_content()
    assert count(factory, Notification.status == "sent", Notification.purpose == "notice") > 0
    assert (Path(settings.outbox_dir) / "sms.jsonl").exists()
    state = watcher_states(factory, settings)[0]
    assert state.role == "stopped" and "poll:hainan-cap" in state.details and "dispatch" in state.details
    assert feed_server.count("/alerts/typhoon.xml") == 1
    with factory() as session:  # the schedule lives in the notifier database, for whichever watcher leads next
        jobs = set(session.scalars(text("SELECT id FROM apscheduler_jobs")))
    assert jobs == {"dispatch", "pipeline", "housekeeping", "reminders", "followups", "satisfaction",
                    "poll:hainan-cap"}


def test_ops_hear_once_about_a_feed_that_went_silent(factory, tmp_settings, relay):
    from notifier.store.models import AuditEntry, FeedSourceState
    from notifier.ops.watcher import housekeeping

    now = datetime(2026, 9, 14, tzinfo=UTC)
    feed = FeedSource("hainan-cap", "https://met.example/cap.atom", "atom", stale_after_seconds=600)
    settings = quick(tmp_settings, relay, feeds=(feed,))
    with factory() as session, session.begin():
        session.add(FeedSourceState(name="hainan-cap", last_polled_at=now, last_success_at=now - timedelta(hours=1),
                                    last_error="connection refused", consecutive_failures=12, index_seen={}))

    first = housekeeping(factory, settings, now)
    second = housekeeping(factory, settings, now + timedelta(minutes=1))

    assert first["stale_feeds"] == ["hainan-cap"] and second["stale_feeds"] == []
    with factory() as session:
        warning = session.scalars(select(Notification).where(Notification.purpose == "ops")).one()
        audited = session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "feed.stale"))
    assert warning.recipient == "ops@ferry.example" and "hainan-cap is stale" in warning.subject
    assert "connection refused" in warning.body_text and audited == 1


# --- real processes: takeover and SIGTERM ------------------------------------------------------------------------

def start_watch(settings, relay: Relay, cwd: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "NOTIFIER_DATABASE_URL": settings.database_url, "NOTIFIER_OUTBOX_DIR": settings.outbox_dir,
           "NOTIFIER_SECRET_KEY": "test-secret", "NOTIFIER_CONFIG": "", "NOTIFIER_SMTP_HOST": "127.0.0.1",
           "NOTIFIER_SMTP_PORT": str(relay.port), "NOTIFIER_EMAILS_PER_SECOND": "60",
           "NOTIFIER_WATCHER_TICK_SECONDS": "0.2", "NOTIFIER_WATCHER_LEASE_SECONDS": "2",
           "NOTIFIER_DISPATCH_POLL_SECONDS": "0.1"}
    log = open(cwd / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
    return subprocess.Popen([str(NOTIFIER), "watch"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def lock_owner(factory) -> str | None:
    with factory() as session:
        lock = session.get(Lock, "watcher")
        return lock.owner if lock else None


def leader(factory) -> str | None:
    return next((owner for owner, role in roles(factory).items() if role == "leader"), None)


def test_a_standby_takes_over_when_the_leader_is_killed(factory, tmp_settings, relay, tmp_path):
    first = start_watch(tmp_settings, relay, tmp_path, "first")
    try:
        leading = wait_for(lambda: leader(factory), "a leader")
        second = start_watch(tmp_settings, relay, tmp_path, "second")
        try:
            wait_for(lambda: "standby" in roles(factory).values(), "the second watcher to stand by")
            first.kill()  # no goodbye: the lease has to lapse
            first.wait(30)
            taken = wait_for(lambda: lock_owner(factory) not in (None, leading) and lock_owner(factory),
                             "the standby to take over", timeout=20)
            assert str(second.pid) in taken.split(":")  # the owner is host:pid...
            wait_for(lambda: roles(factory).get(taken) == "leader", "the new leader's heartbeat")
            as_run = replace(tmp_settings, watcher_lease_seconds=2, watcher_tick_seconds=0.2)
            assert [w.silent for w in watcher_states(factory, as_run) if w.owner == leading] == [True]
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0
    finally:
        if first.poll() is None:
            first.kill()


def test_sigterm_during_a_broadcast_then_restart_loses_and_doubles_nothing(factory, tmp_settings, relay, tmp_path):
    network = generate(factory, 1500, datetime.now(UTC))
    day = (network.epoch + timedelta(days=1)).date()
    request = BroadcastRequest(operator="alice", kind="delayed", delay_minutes=30, port="CNHAK",
                               start=f"{day}T00:00", end=f"{day + timedelta(days=2)}T00:00", channels=("email",))
    broadcast_id = manual.create_manual(factory, request, replace(tmp_settings, approval_threshold=100_000))
    manual.send(factory, broadcast_id, "alice")
    total = count(factory, Notification.broadcast_id == broadcast_id)
    assert total > 150, "the broadcast must outlast the moment SIGTERM arrives"

    first = start_watch(tmp_settings, relay, tmp_path, "first")
    wait_for(lambda: len(relay.received) >= 20, "the watcher to start sending")
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0, (tmp_path / "first.log").read_text()

    mine = Notification.broadcast_id == broadcast_id
    sent_before = count(factory, mine, Notification.status == "sent")
    assert count(factory, mine, Notification.status == "sending") == 0  # the batch in flight was finished
    assert sent_before == len(relay.received)  # every email the relay took is recorded, and only those
    assert count(factory, mine, Notification.status == "queued") > 0  # it really was stopped half way

    second = start_watch(tmp_settings, relay, tmp_path, "second")
    try:
        wait_for(lambda: count(factory, mine, Notification.status == "sent") == total, "the rest to be sent",
                 timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, (tmp_path / "second.log").read_text()

    message_ids = [message["Message-ID"] for _, _, message in relay.received]
    assert len(message_ids) == total == len(set(message_ids))
    with factory() as session:
        assert session.get(Broadcast, broadcast_id).status == "done"
    assert sorted(roles(factory).values()) == ["stopped", "stopped"]
