"""Delivery against the stand-ins, in one run:

  (a) the busiest one-second window of SMS segments measured at the Twilio stand-in (its own process, as Twilio
      is), against the configured limit, over 3 runs of `notifier dispatch --once` that are each frozen twice for
      0.6 s (SIGSTOP / SIGCONT: a stall), and over 2 dispatchers sharing one PostgreSQL outbox and one sender
      (NOTIFIER_DISPATCH_WORKERS=2); target: never above the limit; the achieved rate is shown beside it;
  (b) email throughput against an SMTP relay that answers each message 100 ms late (target: at least 95 % of
      emails_per_second);
  (c) the dispatcher (claim, lease, send, record in SQLite; no limit) beside a bare pool of 8 threads calling
      `client.messages.create`, at 100 ms of provider latency, in the same run (target: at least 0.9x the pool).

    /work/venv/bin/python bench/bench_dispatch.py [--limit 20] [--seconds 6] [--emails 200] [--messages 400]
                                                  [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

The PostgreSQL part runs in a throw-away database when --postgres (or NOTIFIER_TEST_POSTGRES_URL) is given.
The stand-in runs without OpenAPI validation here (openapi-core costs ~20 ms a request; the tests validate).
Figures depend on the machine and on what else runs on it: compare the ratios, which come from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))

import requests  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402
from twilio.rest import Client  # noqa: E402

from notifier.channels.segments import sms_segments  # noqa: E402
from notifier.channels.smtp_email import SmtpEmailChannel  # noqa: E402
from notifier.channels.twilio_sms import RedirectingHttpClient, TwilioSmsChannel  # noqa: E402
from notifier.delivery.dispatch import Dispatcher  # noqa: E402
from notifier.delivery.providers import smtp_config, twilio_config  # noqa: E402
from notifier.store.db import make_engine, session_factory, transaction  # noqa: E402
from notifier.store.migrate import upgrade  # noqa: E402
from notifier.store.models import Notification, utcnow  # noqa: E402
from notifier.store.settings import load_settings  # noqa: E402
from tests.standins.smtp_relay import Relay  # noqa: E402
from tests.standins.twilio_standin import ACCOUNT_SID, AUTH_TOKEN  # noqa: E402

SENDER = "+15005550006"
BODIES = ["Strait Ferries: your 10:00 sailing Haikou-Hai'an is CANCELLED (typhoon). Reply R for a refund.",
          "Strait Ferries: your 10:00 sailing Haikou-Hai'an is CANCELLED due to Typhoon Haikui. Reply 1 for the "
          "14:00 sailing (place held) or R for a full refund CNY 45.00. https://ferry.example/c/abc123",
          "【海峡轮渡】台风影响，您9月14日10:00海口-海安的船班已取消。回复1改乘14:00班次（已为您保留座位），回复R全额退款45元。"]
STALLS = ((2.0, 0.6), (4.0, 0.6))  # (seconds after the start, how long the dispatcher is frozen)


class StandIn:
    """The stand-in in its own process (a real provider is not in our process either)."""

    def __init__(self, latency: float) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tests.standins.twilio_standin", "--latency",
                                         str(latency), "--validate", "off"], cwd=CHECKOUT, stdout=subprocess.PIPE,
                                        text=True)
        self.base_url = self.process.stdout.readline().strip()

    def arrivals(self) -> list[tuple[float, int, str]]:
        """(arrival time, segments, To) of every message it accepted, oldest first."""
        answer = requests.get(f"{self.base_url}/_standin/messages", auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=30)
        return sorted(tuple(item) for item in answer.json()["arrivals"])

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def busiest_second(arrivals: list[tuple[float, int]]) -> int:
    """The most units whose arrival falls inside one half-open window of one second, wherever it starts."""
    best, total, first = 0, 0, 0
    for moment, units in arrivals:
        total += units
        while arrivals[first][0] <= moment - 1.0:
            total -= arrivals[first][1]
            first += 1
        best = max(best, total)
    return best


def settings_for(database_url: str, base_url: str = "", **values: object):
    """Settings for one measurement: the outbox, and Twilio pointed at the stand-in."""
    return load_settings(env={}, database_url=database_url, twilio_account_sid=ACCOUNT_SID,
                         twilio_auth_token=AUTH_TOKEN, twilio_from=SENDER, twilio_api_base=base_url,
                         lease_seconds=120, dispatch_poll_seconds=0.2, **values)


def queue_notices(database_url: str, count: int, channel: str, bodies: list[str]) -> None:
    engine = make_engine(database_url)
    with transaction(session_factory(engine)) as session:
        session.execute(insert(Notification), [
            {"dedup_key": f"bench:{channel}:{i}", "channel": channel,
             "recipient": f"+86139{i:08d}" if channel == "sms" else f"guest{i}@example.com", "language": "en",
             "template": "cancelled", "purpose": "notice", "body_text": bodies[i % len(bodies)],
             "subject": "Sailing cancelled" if channel == "email" else None,
             "segments": sms_segments(bodies[i % len(bodies)]) if channel == "sms" else 0, "safety_critical": True,
             "status": "queued", "priority": 0, "attempts": 0, "created_at": utcnow() - timedelta(seconds=1)}
            for i in range(count)])
    engine.dispose()


def dispatch_process(database_url: str, standin: StandIn, limit: float, workers: int, folder: Path
                     ) -> subprocess.Popen:
    """`notifier dispatch --once` as the duty officer runs it, configured by the environment alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "TWILIO_"))}
    env.update({"NOTIFIER_DATABASE_URL": database_url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM": SENDER, "NOTIFIER_TWILIO_API_BASE": standin.base_url,
                "NOTIFIER_SMS_SEGMENTS_PER_SECOND": str(limit), "NOTIFIER_DISPATCH_WORKERS": str(workers),
                "PYTHONPATH": str(CHECKOUT)})
    return subprocess.Popen([sys.executable, "-m", "cli", "dispatch", "--once"], env=env, cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stall(process: subprocess.Popen, started: float) -> None:
    """Freeze the dispatcher at the STALLS moments (a paused VM, a swapped-out process, a long GC)."""
    for at, seconds in STALLS:
        time.sleep(max(0.0, started + at - time.monotonic()))
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        process.send_signal(signal.SIGCONT)


def paced(database_urls: list[str], limit: float, seconds: float, folder: Path) -> dict[str, float]:
    """(a): one broadcast long enough to run `seconds` at the limit, sent by one dispatcher per database URL
    (several: one shared outbox), each stalled twice; the busiest second and the achieved rate at the stand-in."""
    standin = StandIn(latency=0.1)
    try:
        segments_each = [sms_segments(body) for body in BODIES]
        queue_notices(database_urls[0], int(limit * seconds / (sum(segments_each) / len(segments_each))), "sms",
                      BODIES)
        workers = [dispatch_process(url, standin, limit, len(database_urls), folder) for url in database_urls]
        started = time.monotonic()
        stallers = [threading.Thread(target=stall, args=(worker, started)) for worker in workers]
        for thread in stallers:
            thread.start()
        for worker in workers:
            _, err = worker.communicate(timeout=300)
            if worker.returncode != 0:
                raise SystemExit(f"dispatch failed: {err.strip()}")
        for thread in stallers:
            thread.join()
        arrivals = [(moment, segments) for moment, segments, _ in standin.arrivals()]
    finally:
        standin.close()
    achieved = sum(units for _, units in arrivals[:-1]) / (arrivals[-1][0] - arrivals[0][0])
    return {"messages": len(arrivals), "busiest": busiest_second(arrivals), "achieved": achieved}


def email_throughput(database_url: str, rate: float, count: int, threads: int) -> float:
    """(b): emails per second, first to last arrival, at a relay that answers each message 100 ms late."""
    with Relay(latency=0.1) as relay:
        settings = settings_for(database_url, smtp_host="127.0.0.1", smtp_port=relay.port, emails_per_second=rate,
                                dispatch_threads=threads)
        queue_notices(database_url, count, "email", ["Your 10:00 sailing Haikou-Hai'an is cancelled.\n"])
        engine = make_engine(database_url)
        channels = {"email": SmtpEmailChannel(smtp_config(settings))}
        dispatcher = Dispatcher(session_factory(engine), settings, channels)
        try:
            dispatcher.run(drain=True)
        finally:
            dispatcher.close()
            channels["email"].close()
            engine.dispose()
        arrived = list(relay.arrivals)
    return (len(arrived) - 1) / (arrived[-1] - arrived[0])


def beside_a_pool(database_url: str, messages: int, threads: int) -> dict[str, float]:
    """(c): the dispatcher with no limit, then a bare pool of `threads` threads calling messages.create."""
    standin = StandIn(latency=0.1)
    try:
        settings = settings_for(database_url, standin.base_url, sms_segments_per_second=0.0,
                                dispatch_threads=threads)
        queue_notices(database_url, messages, "sms", BODIES[:1])
        engine = make_engine(database_url)
        channels = {"sms": TwilioSmsChannel(twilio_config(settings))}
        dispatcher = Dispatcher(session_factory(engine), settings, channels)
        started = time.perf_counter()
        sent = dispatcher.run(drain=True).sent
        ours = sent / (time.perf_counter() - started)
        dispatcher.close()
        channels["sms"].close()
        engine.dispose()
        local = threading.local()

        def create(i: int) -> None:
            if not hasattr(local, "client"):
                local.client = Client(ACCOUNT_SID, AUTH_TOKEN,
                                      http_client=RedirectingHttpClient(standin.base_url, timeout=30))
            local.client.messages.create(to=f"+86137{i:08d}", from_=SENDER, body=BODIES[0])

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, range(messages)))
        pool_rate = messages / (time.perf_counter() - started)
    finally:
        standin.close()
    return {"ours": ours, "pool": pool_rate}


def throw_away_postgres(base: str) -> tuple[str, Callable[[], None]]:
    """A fresh PostgreSQL database, migrated, and how to drop it."""
    name = f"notifier_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def sqlite_url(folder: Path) -> str:
    url = f"sqlite:///{folder / f'bench-{time.monotonic_ns()}.db'}"
    upgrade(url)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description="Dispatcher pacing and throughput against the stand-ins.")
    parser.add_argument("--limit", type=float, default=20.0, help="segments per second for (a)")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long each run of (a) lasts at the limit")
    parser.add_argument("--emails", type=int, default=200, help="emails for (b)")
    parser.add_argument("--email-rate", type=float, default=20.0, help="emails_per_second for (b)")
    parser.add_argument("--messages", type=int, default=400, help="messages for (c)")
    parser.add_argument("--threads", type=int, default=8, help="dispatch_threads, and the bare pool's threads")
    parser.add_argument("--postgres", default=os.environ.get("NOTIFIER_TEST_POSTGRES_URL", ""))
    options = parser.parse_args()
    results: dict[str, object] = {"limit": options.limit}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = [paced([sqlite_url(folder)], options.limit, options.seconds, folder) for _ in range(3)]
        for number, run in enumerate(runs, 1):
            print(f"(a) run {number}, SQLite, stalled 2 x 0.6 s: {run['messages']} messages, busiest second "
                  f"{run['busiest']} segments (limit {options.limit:g}), achieved {run['achieved']:.1f}/s")
        results["a_busiest"] = [run["busiest"] for run in runs]
        if options.postgres:
            url, drop = throw_away_postgres(options.postgres)
            try:
                shared = paced([url, url], options.limit, options.seconds, folder)
            finally:
                drop()
            print(f"(a) 2 dispatchers on PostgreSQL, one sender, each stalled: {shared['messages']} messages, "
                  f"busiest second {shared['busiest']} segments (limit {options.limit:g}), "
                  f"achieved {shared['achieved']:.1f}/s")
            results["a_postgres_busiest"] = shared["busiest"]
        email = email_throughput(sqlite_url(folder), options.email_rate, options.emails, options.threads)
        print(f"(b) email at a 100 ms relay: {email:.1f} emails/s = {100 * email / options.email_rate:.0f} % of "
              f"emails_per_second {options.email_rate:g} (target >= 95 %)")
        c = beside_a_pool(sqlite_url(folder), options.messages, options.threads)
        print(f"(c) 100 ms latency, no limit: dispatcher {c['ours']:.1f} messages/s, bare {options.threads}-thread "
              f"messages.create pool {c['pool']:.1f} messages/s = {c['ours'] / c['pool']:.2f}x (target >= 0.9x)")
    results.update(b_emails_per_second=round(email, 2), c_dispatcher=round(c["ours"], 1),
                   c_pool=round(c["pool"], 1), c_ratio=round(c["ours"] / c["pool"], 3))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
