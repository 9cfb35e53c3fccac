"""Satisfaction requests per second for a typhoon's worth of settled bookings: the old path (per booking: three
gets, a query of its requests, a query of its notifications, two INSERTs; the whole opt-out table per disruption)
beside the chunked `satisfaction.queue_requests` (a chunk's bookings, customers, notifications, requests and
opt-outs in a few IN-list queries, one insert of requests and one of notices), from the same run.

    /work/venv/bin/python bench/bench_satisfaction.py [--requests 20000] [--sample 2000]

The database is the scale network (bench/scale_network.py: 1,000,000 bookings, a typhoon stranding ~100,000 of
them; built once and cached) with the typhoon opened and planned as bench/bench_plan.py does. Then every notice is
marked sent (every tenth booking's SMS undelivered, so some requests go by email) and, in id order, as many of the
typhoon's disruptions as hold `--requests` bookings are cleared after their offers' deadline: their bookings are
settled by the deadline, so each one's customer is due a request. It is built once into a temporary SQLite file
and copied for each path. Both paths first raise follow-ups and find the resolved disruptions (the same code,
timed apart); the old path then asks the first `--sample` settled bookings and is extrapolated; the new one asks
all of them; the sample's rows are checked to be the same in both.
Figures depend on the machine and on what else runs on it: compare the ratio, which comes from the same run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

from sqlalchemy import func, select, update  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

import scale_network  # noqa: E402
from baseline_satisfaction import old_queue_requests  # noqa: E402
from bench_reminders import plan_typhoon, settings_for, timed  # noqa: E402
from notifier.store.db import make_engine, session_factory, transaction
from notifier.aftercare.followups import affected_bookings, refresh
from notifier.store.models import Disruption, Notification, Offer, SatisfactionRequest
from notifier.planning.chunk_plan import NOTICE_COLUMNS
from notifier.aftercare.satisfaction import OFFER_KINDS, queue_requests, resolved_disruptions

AFTER_CLEARING = timedelta(minutes=5)
REQUEST_FIELDS = ("customer_id", "booking_id", "disruption_id", "sailing_id", "channel", "requested_at")


# --- the database ---------------------------------------------------------------------------------------------------

def build(path: Path, wanted: int) -> tuple[Any, int]:
    """The planned typhoon with about `wanted` settled bookings due a request; returns when they are asked and
    how many settled bookings the resolved disruptions hold."""
    settings = settings_for(path)
    scale_network.cached_sqlite(path)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    try:
        plan_typhoon(factory, settings, None)
        at = _settle(factory, wanted)
        with transaction(factory) as session:
            refresh(session, settings, at)  # raised once here, so neither timed path pays for the first raise
        with factory() as session:
            return at, sum(len(rows) for rows in resolved_disruptions(session, at).values())
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()


def _settle(factory: sessionmaker[Session], wanted: int) -> Any:
    """Every notice told; the first disruptions holding `wanted` bookings cleared after their offers' deadline."""
    with factory() as session:
        deadline = session.scalar(select(func.max(Offer.deadline)).where(Offer.deadline.is_not(None)))
        disruptions = list(session.scalars(select(Disruption.id).where(Disruption.status == "active",
                                                                        Disruption.kind.in_(OFFER_KINDS))
                                           .order_by(Disruption.id)))
        touched: dict[int, int] = {}
        for _, disruption_id in affected_bookings(session, disruptions):
            touched[disruption_id] = touched.get(disruption_id, 0) + 1
    chosen, total = [], 0
    for disruption_id in disruptions:
        if total >= wanted:
            break
        chosen.append(disruption_id)
        total += touched.get(disruption_id, 0)
    cleared_at = deadline + timedelta(hours=1)
    with transaction(factory) as session:
        session.execute(update(Notification).where(Notification.purpose == "notice")
                        .values(status="sent", sent_at=deadline - timedelta(days=1)))
        session.execute(update(Notification).where(Notification.purpose == "notice", Notification.channel == "sms",
                                                   Notification.booking_id % 10 == 0).values(status="undelivered"))
        session.execute(update(Disruption).where(Disruption.id.in_(chosen))
                        .values(status="cleared", cleared_at=cleared_at, active_key=None))
    return cleared_at + AFTER_CLEARING


# --- the measurement ------------------------------------------------------------------------------------------------

def timed_preamble(master: Path, at: Any) -> float:
    """How long raising follow-ups and finding the resolved disruptions take alone (on a copy; the second, warm,
    run counts), the part both paths share."""
    copy = master.with_name("preamble.db")
    shutil.copyfile(master, copy)
    settings = settings_for(copy)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    try:
        for _ in range(2):
            started = time.perf_counter()
            with transaction(factory) as session:
                refresh(session, settings, at)
            with factory() as session:
                resolved_disruptions(session, at)
        return time.perf_counter() - started
    finally:
        engine.dispose()
        copy.unlink()


def asked_rows(path: Path, limit_keys: set[tuple[int, int]] | None = None) -> dict[tuple[int, int], tuple]:
    """Each request with its notice's columns, by (customer, sailing), all but ids and creation times."""
    engine = make_engine(settings_for(path).database_url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(*[getattr(SatisfactionRequest, name) for name in REQUEST_FIELDS],
                       *[getattr(Notification, name) for name in NOTICE_COLUMNS])
                .join(Notification, Notification.id == SatisfactionRequest.notification_id)).all()
    finally:
        engine.dispose()
    return {(row[0], row[3]): tuple(row) for row in rows
            if limit_keys is None or (row[0], row[3]) in limit_keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="settled bookings wanted (at least)")
    parser.add_argument("--sample", type=int, default=2000, help="settled bookings the old path asks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-satisfaction-") as folder:
        started = time.perf_counter()
        master = Path(folder) / "master.db"
        at, settled = build(master, args.requests)
        print(f"# database: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        sample = min(args.sample, settled)
        preamble = timed_preamble(master, at)
        old_seconds, (old_queued, old_preamble), old_db = timed(master, "old",
                                                                lambda f, s: old_queue_requests(f, s, at, sample))
        new_seconds, new_queued, new_db = timed(master, "new", lambda f, s: queue_requests(f, s, at))
        old_rows = asked_rows(old_db)
        same = old_rows == asked_rows(new_db, set(old_rows))
        per_booking = sample / (old_seconds - old_preamble)
        old_all = old_preamble + settled * (old_seconds - old_preamble) / sample
        old_rate, new_rate = old_queued / sample * settled / old_all, new_queued / new_seconds
        new_after = new_queued / (new_seconds - preamble)
        print(f"scale network: settled bookings due a request {settled:,}")
        print(f"old path: preamble (follow-ups, resolved disruptions) {old_preamble:.1f} s; then {old_queued:,} "
              f"requests from a {sample:,} sample in {old_seconds - old_preamble:.2f} s = {per_booking:,.0f} "
              f"bookings/s; all {settled:,} extrapolated: {old_all:.0f} s = {old_rate:,.0f} requests/s")
        print(f"new queue_requests: {new_queued:,} requests in {new_seconds:.2f} s = {new_rate:,.0f} requests/s "
              f"(its preamble alone: {preamble:.1f} s)")
        print(f"ratio new/old, whole job: {new_rate / old_rate:.1f}x; per booking after the preamble: "
              f"{settled / (new_seconds - preamble) / per_booking:.1f}x ({new_after:,.0f} requests/s)")
        print(f"the sample's {len(old_rows):,} requests identical in both: {same}")
        if not same:
            sys.exit("the new path's rows differ from the old path's")


if __name__ == "__main__":
    main()
