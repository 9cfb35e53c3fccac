"""Delivery throughput through the real `twilio` client to the Twilio stand-in (run as its own process, as
Twilio is), in one run:

  (a) achieved SMS segments per second against a configured limit, with 100 ms of provider latency
      (target: at least 95 % of the limit, never above it);
  (b) messages per second with no limit and no latency: the whole dispatcher (claim, lease, send, record in
      SQLite) beside a bare loop of `client.messages.create` over the same stand-in (target: at least 50 %);
  (c) the naive sequential loop at 100 ms latency beside the dispatcher at the same latency, to show the gain.

    /work/venv/bin/python bench/bench_dispatch.py [--limit 50] [--seconds 8] [--messages 1500] [--threads 8]

The stand-in runs without OpenAPI validation here (openapi-core costs ~20 ms a request; the tests validate).
Figures depend on the machine and on what else runs on it: compare the ratios, which come from the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))

import requests  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from twilio.rest import Client  # noqa: E402

from notifier.channels.twilio_sms import RedirectingHttpClient, TwilioSmsChannel
from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory, transaction
from notifier.delivery.dispatch import Dispatcher
from notifier.delivery.providers import twilio_config
from notifier.channels.segments import sms_segments
from notifier.store.migrate import upgrade
from notifier.store.models import Notification, utcnow
from tests.standins.twilio_standin import ACCOUNT_SID, AUTH_TOKEN  # noqa: E402

SENDER = "+15005550006"
BODIES = ["Strait Ferries: your 10:00 sailing Haikou-Hai'an is CANCELLED (typhoon). Reply R for a refund.",
          "Strait Ferries: your 10:00 sailing Haikou-Hai'an is CANCELLED due to Typhoon Haikui. Reply 1 for the "
          "14:00 sailing (place held) or R for a full refund CNY 45.00. https://ferry.example/c/abc123",
          "【海峡轮渡】台风影响，您9月14日10:00海口-海安的船班已取消。回复1改乘14:00班次（已为您保留座位），回复R全额退款45元。"]


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


def settings_for(folder: Path, standin: StandIn, **values: object):
    """Settings for one measurement: a fresh SQLite outbox and Twilio pointed at the stand-in."""
    url = f"sqlite:///{folder / f'bench-{time.monotonic_ns()}.db'}"
    upgrade(url)
    return load_settings(env={}, database_url=url, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                         twilio_from=SENDER, twilio_api_base=standin.base_url, lease_seconds=120,
                         dispatch_poll_seconds=0.2, **values)


def queue_broadcast(settings, count: int, bodies: list[str]) -> None:
    engine = make_engine(settings.database_url)
    with transaction(session_factory(engine)) as session:
        session.execute(insert(Notification), [
            {"dedup_key": f"bench:{i}", "channel": "sms", "recipient": f"+86139{i:08d}", "language": "en",
             "template": "cancelled", "purpose": "notice", "body_text": bodies[i % len(bodies)],
             "segments": sms_segments(bodies[i % len(bodies)]), "safety_critical": True, "status": "queued",
             "priority": 0, "attempts": 0, "created_at": utcnow() - timedelta(seconds=1)} for i in range(count)])
    engine.dispose()


def run_dispatcher(settings) -> tuple[int, float]:
    """Dispatch the whole outbox; (messages sent, seconds)."""
    engine = make_engine(settings.database_url)
    channels = {"sms": TwilioSmsChannel(twilio_config(settings))}
    dispatcher = Dispatcher(session_factory(engine), settings, channels)
    started = time.perf_counter()
    stats = dispatcher.run(drain=True)
    elapsed = time.perf_counter() - started
    dispatcher.close()
    channels["sms"].close()
    engine.dispose()
    return stats.sent, elapsed


def bare_loop(standin: StandIn, count: int, bodies: list[str]) -> float:
    """Messages per second of the plainest possible sender: one client, one loop, nothing recorded."""
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=RedirectingHttpClient(standin.base_url, timeout=30))
    started = time.perf_counter()
    for i in range(count):
        client.messages.create(to=f"+86137{i:08d}", from_=SENDER, body=bodies[i % len(bodies)])
    return count / (time.perf_counter() - started)


def paced(folder: Path, limit: float, seconds: float, threads: int) -> dict[str, float]:
    """(a): a broadcast long enough to run `seconds` at the limit, with 100 ms of provider latency."""
    standin = StandIn(latency=0.1)
    try:
        segments_each = [sms_segments(body) for body in BODIES]
        count = int(limit * seconds / (sum(segments_each) / len(segments_each)))
        settings = settings_for(folder, standin, sms_segments_per_second=limit, dispatch_threads=threads)
        queue_broadcast(settings, count, BODIES)
        run_dispatcher(settings)
        arrivals = standin.arrivals()
    finally:
        standin.close()
    first, last = arrivals[0][0], arrivals[-1][0]
    achieved = sum(segments for _, segments, _ in arrivals[:-1]) / (last - first)
    busiest = max(sum(s for t, s, _ in arrivals if start <= t < start + 1.0) for start, _, _ in arrivals)
    return {"messages": len(arrivals), "achieved": achieved, "busiest_second": busiest}


def unlimited(folder: Path, latency: float, messages: int, threads: int) -> dict[str, float]:
    """(b) and (c): the dispatcher with no limit beside the bare loop, at one latency."""
    standin = StandIn(latency=latency)
    try:
        settings = settings_for(folder, standin, sms_segments_per_second=0.0, dispatch_threads=threads)
        queue_broadcast(settings, messages, BODIES[:1])
        sent, elapsed = run_dispatcher(settings)
        ours = sent / elapsed
        bare = bare_loop(standin, messages if latency == 0 else min(messages, 50), BODIES[:1])
    finally:
        standin.close()
    return {"ours": ours, "bare": bare}


def main() -> None:
    parser = argparse.ArgumentParser(description="Dispatcher throughput against the Twilio stand-in.")
    parser.add_argument("--limit", type=float, default=50.0, help="segments per second for (a)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long (a) runs at the limit")
    parser.add_argument("--messages", type=int, default=1500, help="messages for (b) and (c)")
    parser.add_argument("--threads", type=int, default=8, help="dispatch_threads")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        a = paced(Path(folder), options.limit, options.seconds, options.threads)
        b = unlimited(Path(folder), 0.0, options.messages, options.threads)
        c = unlimited(Path(folder), 0.1, min(options.messages, 400), options.threads)
    print(f"(a) limit {options.limit:g} segments/s, 100 ms latency, {a['messages']} messages: achieved "
          f"{a['achieved']:.1f} segments/s = {100 * a['achieved'] / options.limit:.1f} % of the limit "
          f"(target >= 95 %); busiest second {a['busiest_second']:g} segments")
    print(f"(b) no limit, no latency: dispatcher {b['ours']:.0f} messages/s, bare client.messages.create loop "
          f"{b['bare']:.0f} messages/s = {100 * b['ours'] / b['bare']:.0f} % (target >= 50 %)")
    print(f"(c) 100 ms latency, no limit: naive sequential loop {c['bare']:.1f} messages/s, dispatcher "
          f"({options.threads} threads) {c['ours']:.1f} messages/s = {c['ours'] / c['bare']:.1f}x")
    print(json.dumps({"a_achieved_segments_per_second": round(a["achieved"], 2), "a_limit": options.limit,
                      "a_ratio": round(a["achieved"] / options.limit, 4), "b_dispatcher": round(b["ours"], 1),
                      "b_bare": round(b["bare"], 1), "b_ratio": round(b["ours"] / b["bare"], 3),
                      "c_naive": round(c["bare"], 2), "c_dispatcher": round(c["ours"], 2)}))


if __name__ == "__main__":
    main()
