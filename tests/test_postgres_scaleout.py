"""Several machines on one PostgreSQL, as real processes: four `notifier dispatch` and two `notifier watch` share
one database, the Twilio stand-in and an SMTP relay. One dispatcher and the leading watcher are killed (SIGKILL)
in the middle of a broadcast; a typhoon warning is then published on the feed. The standby watcher takes over,
polls it, plans the notices; the surviving dispatchers finish the broadcast and reconcile what the dead one held.
Every SMS reaches Twilio exactly once, every email reaches the relay under one Message-ID, nothing is left behind.

Skipped where NOTIFIER_TEST_POSTGRES_URL is unset (.ci/run sets it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from notifier.store.db import make_engine, session_factory, transaction
from notifier.ops.demo import bundled_feed, generate
from notifier.store.models import AuditEntry, Broadcast, FeedItem, Notification, WatcherHeartbeat
from notifier.ops.watcher import AdvisoryLeadership
from tests.standins.fixtures import SENDER, seed_sms_broadcast
from tests.standins.smtp_relay import Relay
from tests.standins.twilio_standin import ACCOUNT_SID, AUTH_TOKEN, TwilioStandIn
from tests.ops.test_polling import FeedServer, atom_index

REPO = Path(__file__).resolve().parents[1]
SEEDED = 1200  # SMS already queued when the processes start: long enough to kill a dispatcher mid-broadcast
OPEN = ("queued", "sending")


def wait_for(condition, what: str, timeout: float = 40.0):  # noqa: ANN001, ANN201
    """Poll until `condition()` is truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Machines:
    """The processes of the test, each with its own log; SIGKILL or SIGTERM them by name."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env, self.running = folder, env, {}

    def start(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
        process = subprocess.Popen([sys.executable, "-m", "cli", *command], cwd=self.folder, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT)
        self.running[name] = process
        return process

    def name_of(self, owner: str) -> str:
        """Which of our processes a lease or heartbeat owner (host:pid:...) is."""
        pid = int(owner.split(":")[1])
        return next(name for name, process in self.running.items() if process.pid == pid)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> dict[str, int]:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return {name: process.wait(60) for name, process in self.running.items()}


def environment(database_url: str, standin: TwilioStandIn, relay: Relay, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "TWILIO_"))}
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "NOTIFIER_CONFIG": str(config), "NOTIFIER_DATABASE_URL": database_url, "NOTIFIER_SECRET_KEY": "test-secret",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM": SENDER,
        "NOTIFIER_TWILIO_API_BASE": standin.base_url, "NOTIFIER_SMTP_HOST": "127.0.0.1",
        "NOTIFIER_SMTP_PORT": str(relay.port), "NOTIFIER_SMS_SEGMENTS_PER_SECOND": "0",
        "NOTIFIER_EMAILS_PER_SECOND": "0", "NOTIFIER_DISPATCH_THREADS": "2", "NOTIFIER_DISPATCH_POLL_SECONDS": "0.1",
        "NOTIFIER_PROVIDER_TIMEOUT_SECONDS": "1", "NOTIFIER_LEASE_SECONDS": "6", "NOTIFIER_RETRY_BASE_SECONDS": "0.05",
        "NOTIFIER_RETRY_CAP_SECONDS": "0.5", "NOTIFIER_WATCHER_TICK_SECONDS": "0.2",
        "NOTIFIER_WATCHER_LEASE_SECONDS": "2", "NOTIFIER_WATCHER_PIPELINE_SECONDS": "2",
        "NOTIFIER_WATCHER_HOUSEKEEPING_SECONDS": "5"})
    return env


def roles(factory) -> dict[str, str]:
    with factory() as session:
        return {row.owner: row.role for row in session.scalars(select(WatcherHeartbeat))}


def open_notices(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Notification).where(Notification.status.in_(OPEN)))


def typhoon_planned(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Notification).join(
            Broadcast, Broadcast.id == Notification.broadcast_id).where(Broadcast.origin == "automatic"))


def test_four_dispatchers_and_two_watchers_lose_one_each_and_nothing_is_lost_or_doubled(postgres_url, tmp_path):
    engine = make_engine(postgres_url)
    factory = session_factory(engine)
    network = generate(factory, 300, datetime.now(UTC))
    with transaction(factory) as session:
        numbers = seed_sms_broadcast(session, SEEDED)
    feed = FeedServer()
    feed.thread.start()
    feed.serve("/index.atom", atom_index([]))
    config = tmp_path / "notifier.toml"
    config.write_text(f'[[feeds]]\nname = "hainan-cap"\nurl = "{feed.url}/index.atom"\nformat = "atom"\n'
                      "poll_seconds = 1\n")
    with TwilioStandIn(validate="sample", latency=0.05) as standin, Relay() as relay:
        machines = Machines(tmp_path, environment(postgres_url, standin, relay, config))
        try:
            for number in (1, 2):
                machines.start(f"watcher-{number}", "watch")
            leader = wait_for(lambda: next((o for o, r in roles(factory).items() if r == "leader"), None),
                              "a leading watcher")
            wait_for(lambda: "standby" in roles(factory).values(), "a standby watcher")
            for number in (1, 2, 3, 4):
                machines.start(f"dispatcher-{number}", "dispatch")
            wait_for(lambda: len(standin.messages) >= 200, "the dispatchers to be sending")

            machines.running["dispatcher-1"].send_signal(signal.SIGKILL)
            killed_leader = machines.name_of(leader)
            machines.running[killed_leader].send_signal(signal.SIGKILL)
            killed_at = datetime.now(UTC)
            assert open_notices(factory) > 0, "the broadcast ended before the kills: seed more notices"

            # The warning appears only now: whoever polls it is the new leader.
            feed.serve("/alerts/typhoon.xml", bundled_feed(network.epoch))
            feed.serve("/index.atom", atom_index([("urn:typhoon", network.epoch.isoformat(), "/alerts/typhoon.xml")]))
            new_leader = wait_for(lambda: next((o for o, r in roles(factory).items()
                                                if r == "leader" and o != leader), None), "the standby to lead")
            wait_for(lambda: typhoon_planned(factory), "the new leader to poll the warning and plan its notices")
            wait_for(lambda: open_notices(factory) == 0, "every notice to be sent or reconciled", timeout=60)
            exits = machines.stop_all()
        finally:
            for process in machines.running.values():
                if process.poll() is None:
                    process.kill()
            feed.httpd.shutdown()
            feed.httpd.server_close()
        sms = [(m["to"], m["body"], m["sid"]) for m in standin.messages]
        emails = [message["Message-ID"] for _, _, message in relay.received]
        assert standin.validation_errors == []

    with factory() as session:
        outbox = session.execute(select(Notification.channel, Notification.status, Notification.provider_id,
                                        Notification.message_id, Notification.recipient)).all()
        polled = session.execute(select(FeedItem.received_at)).scalars().all()
        leading = session.scalars(select(AuditEntry.subject_id).where(AuditEntry.action == "watcher.leading")).all()
    engine.dispose()

    logs = {name: machines.log(name) for name in machines.running}
    assert {name: code for name, code in exits.items() if name not in ("dispatcher-1", killed_leader)} == {
        name: 0 for name in machines.running if name not in ("dispatcher-1", killed_leader)}, logs
    assert {status for _, status, *_ in outbox} == {"sent"}  # nothing failed, expired or stuck
    assert [pair for pair, count in Counter((to, body) for to, body, _ in sms).items() if count > 1] == []
    sent_sms = [row for row in outbox if row.channel == "sms"]
    assert len(sms) == len(sent_sms) > SEEDED  # every SMS once, the typhoon's included
    assert {sid for *_, sid in sms} == {row.provider_id for row in sent_sms}
    assert set(numbers) <= {to for to, _, _ in sms}
    sent_email = [row for row in outbox if row.channel == "email"]
    assert sent_email and set(emails) == {row.message_id for row in sent_email}  # one Message-ID per notice
    # Polling resumed: the warning was fetched after the leader died, by the watcher that took over.
    assert polled and min(polled) > killed_at
    assert new_leader in leading and machines.name_of(new_leader) != killed_leader
    assert feed.count("/alerts/typhoon.xml") == 1


def test_the_leader_lock_is_dropped_within_the_configured_lease_when_its_machine_vanishes():
    # A killed leader closes its connection (the test above); a vanished machine does not. The server then has to
    # notice the half-open connection itself: the lock connection tells it to, within the lease.
    engine = make_engine(os.environ["NOTIFIER_TEST_POSTGRES_URL"])
    leadership = AdvisoryLeadership(engine, lease_seconds=12)
    try:
        assert leadership.hold(datetime.now(UTC))
        probes = {name: leadership.connection.scalar(text(f"SELECT current_setting('{name}')"))
                  for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
                               "tcp_user_timeout")}
    finally:
        leadership.release()
        engine.dispose()
    assert probes == {"tcp_keepalives_idle": "4", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
                      "tcp_user_timeout": "12000"}  # dropped after 4 + 3 x 2 = 10 s of silence, under the lease


@pytest.fixture(autouse=True)
def _needs_postgres():
    if not os.environ.get("NOTIFIER_TEST_POSTGRES_URL"):
        pytest.skip("NOTIFIER_TEST_POSTGRES_URL is not set (CI sets it; see .ci/run): this test needs PostgreSQL")
