"""`notifier dispatch` as the real process a duty officer runs: killed with SIGKILL at random moments of a
broadcast and restarted, it still gets every notice to every recipient exactly once; SIGTERM lets it finish what
it holds; and the environment alone switches `notifier demo` from the file outbox to Twilio and SMTP."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from notifier.store.db import make_engine, session_factory, transaction
from notifier.store.migrate import upgrade
from notifier.store.models import DeliveryAttempt, Notification
from tests.standins.fixtures import SENDER, seed_sms_broadcast
from tests.standins.smtp_relay import Relay
from tests.standins.twilio_standin import ACCOUNT_SID, AUTH_TOKEN, TwilioStandIn

REPO = Path(__file__).resolve().parents[2]


def notifier_env(database_url: str, standin: TwilioStandIn, **extra: str) -> dict[str, str]:
    """The environment of a dispatcher configured by environment variables alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "TWILIO_"))}
    env.update({"NOTIFIER_DATABASE_URL": database_url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM": SENDER, "NOTIFIER_TWILIO_API_BASE": standin.base_url,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    env.update(extra)
    return env


def notifier(*args: str) -> list[str]:
    """The `notifier` command of this Python environment."""
    return [sys.executable, "-m", "cli", *args]


def open_rows(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Notification).where(
            Notification.status.in_(("queued", "sending"))))


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


def kill_and_restart(messages: int, kills: int, tmp_path: Path, seed: int) -> None:
    """Dispatch a broadcast of `messages` SMS, SIGKILL the dispatcher `kills` times at random moments (mostly
    while it is sending, sometimes while it is still starting), restart it each time, then let it finish."""
    database_url = f"sqlite:///{tmp_path / 'crash.db'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        numbers = seed_sms_broadcast(session, messages)
    rng = random.Random(seed)
    log = open(tmp_path / "dispatch.log", "wb")  # noqa: SIM115 - shared by every process of the test
    with TwilioStandIn(validate="sample") as standin:
        # The default 120 s lease: a restarted dispatcher sees the killed one is gone and does not wait for it.
        env = notifier_env(database_url, standin, NOTIFIER_PROVIDER_TIMEOUT_SECONDS="0.9",
                           NOTIFIER_DISPATCH_POLL_SECONDS="0.1",
                           NOTIFIER_SMS_SEGMENTS_PER_SECOND="0", NOTIFIER_RETRY_BASE_SECONDS="0.05",
                           NOTIFIER_RETRY_CAP_SECONDS="0.5")
        for _ in range(kills):
            before = len(standin.messages)
            worker = subprocess.Popen(notifier("dispatch"), env=env, cwd=tmp_path, stdout=log, stderr=log)
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.1, 1.5))  # somewhere in start-up, claiming, or the first sends
            else:
                wait_until(lambda: len(standin.messages) > before or worker.poll() is not None, 30,
                           "the restarted dispatcher to send")
                time.sleep(rng.uniform(0.0, 0.4))
            assert worker.poll() is None, (tmp_path / "dispatch.log").read_text()
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        assert open_rows(factory) > 0, "the broadcast ended before the last kill: make it longer"

        survivor = subprocess.Popen(notifier("dispatch"), env=env, cwd=tmp_path, stdout=log, stderr=log)
        wait_until(lambda: open_rows(factory) == 0, 90, "every notice to be sent or reconciled")
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0
        log.close()
        assert standin.validation_errors == []

        copies = Counter(m["to"] for m in standin.messages)
        sids = {m["to"]: m["sid"] for m in standin.messages}
    with factory() as session:
        outbox = session.execute(select(Notification.recipient, Notification.status, Notification.provider_id)).all()
        reconciled = session.scalar(select(func.count()).select_from(DeliveryAttempt).where(
            DeliveryAttempt.outcome == "reconciled", DeliveryAttempt.provider_id.is_not(None)))
    engine.dispose()

    assert sorted(copies) == sorted(numbers), "a recipient got nothing"
    assert [number for number, count in copies.items() if count > 1] == [], "a recipient got a message twice"
    assert {status for _, status, _ in outbox} == {"sent"}
    assert all(provider_id == sids[recipient] for recipient, _, provider_id in outbox)
    assert reconciled > 0  # some kills fell between Twilio's answer and our record of it


def test_sigkill_at_random_moments_of_a_2000_message_broadcast_never_loses_or_doubles(tmp_path):
    kill_and_restart(messages=2000, kills=10, tmp_path=tmp_path, seed=20260914)


def test_sigterm_finishes_the_messages_in_flight_and_exits_cleanly(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'term.db'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        seed_sms_broadcast(session, 300)
    with TwilioStandIn(validate="sample", latency=0.1) as standin:
        env = notifier_env(database_url, standin, NOTIFIER_SMS_SEGMENTS_PER_SECOND="0")
        worker = subprocess.Popen(notifier("dispatch"), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        wait_until(lambda: len(standin.messages) >= 20, 30, "the dispatcher to be sending")
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        arrived = len(standin.messages)
    with factory() as session:
        statuses = Counter(session.scalars(select(Notification.status)))
    engine.dispose()

    assert worker.returncode == 0, err
    assert "stop with Ctrl-C or SIGTERM" in err and "Traceback" not in err
    assert statuses["sending"] == 0  # nothing left half-done for a reconciliation
    assert statuses["sent"] == arrived < 300  # what reached Twilio is recorded; the rest waits, queued
    assert statuses["queued"] == 300 - arrived
    assert out.startswith(f"sent {arrived},")


def test_dispatch_once_reports_what_it_did(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'once.db'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    with transaction(session_factory(engine)) as session:
        seed_sms_broadcast(session, 12)
    engine.dispose()
    with TwilioStandIn() as standin:
        done = subprocess.run(notifier("dispatch", "--once"), env=notifier_env(database_url, standin), cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("sent 12, failed 0, retry later 0, reconciled 0, expired 0, suppressed 0, "
                                   "fallbacks 0")
    assert len(standin.messages) == 12


def test_one_dispatch_once_after_a_sigkill_finishes_what_the_killed_run_left(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'killed.db'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        numbers = seed_sms_broadcast(session, 100)
    with TwilioStandIn(validate="off", latency=0.1) as standin:
        env = notifier_env(database_url, standin, NOTIFIER_SMS_SEGMENTS_PER_SECOND="0",
                           NOTIFIER_PROVIDER_TIMEOUT_SECONDS="3")
        worker = subprocess.Popen(notifier("dispatch"), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_until(lambda: len(standin.messages) >= 30, 30, "the dispatcher to be sending")
        worker.kill()
        worker.wait(timeout=10)
        with factory() as session:
            assert session.scalar(select(func.count()).where(Notification.status == "sending")) > 0
        done = subprocess.run(notifier("dispatch", "--once"), env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        copies = Counter(message["to"] for message in standin.messages)
    with factory() as session:
        statuses = Counter(session.scalars(select(Notification.status)))
    engine.dispose()

    assert done.returncode == 0, done.stderr
    assert statuses == {"sent": 100}  # nothing left sending until a lease runs out
    assert "still waiting" not in done.stdout
    assert sorted(copies) == sorted(numbers) and set(copies.values()) == {1}


def test_a_missing_database_is_one_clear_line(tmp_path):
    with TwilioStandIn(validate="off") as standin:
        done = subprocess.run(notifier("dispatch", "--once"), capture_output=True, text=True, timeout=60,
                              env=notifier_env(f"sqlite:///{tmp_path / 'nothing.db'}", standin), cwd=tmp_path)
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"notifier: no database at {tmp_path / 'nothing.db'}")
    assert not (tmp_path / "nothing.db").exists()  # refused, not created empty in the wrong folder


def test_the_environment_alone_switches_the_demo_to_twilio_and_smtp(tmp_path):
    with TwilioStandIn(validate="sample") as standin, Relay() as relay:
        env = notifier_env("", standin, NOTIFIER_SMTP_HOST="127.0.0.1", NOTIFIER_SMTP_PORT=str(relay.port),
                           NOTIFIER_SMS_SEGMENTS_PER_SECOND="500", NOTIFIER_EMAILS_PER_SECOND="500")
        del env["NOTIFIER_DATABASE_URL"]
        done = subprocess.run(notifier("demo", "--db", str(tmp_path / "demo.db"), "--outbox",
                                       str(tmp_path / "outbox"), "--bookings", "150"),
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert standin.validation_errors == []
        sms, emails = len(standin.messages), len(relay.received)
    engine = make_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    with session_factory(engine)() as session:
        planned = Counter(session.scalars(select(Notification.channel)))
        unsent = session.scalar(select(func.count()).select_from(Notification).where(Notification.status != "sent"))
    engine.dispose()

    assert "sms via twilio, email via smtp" in done.stdout
    assert sms == planned["sms"] > 0 and emails == planned["email"] > 0 and unsent == 0
    assert not (tmp_path / "outbox" / "sms.jsonl").exists()
