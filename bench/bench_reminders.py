"""Reminders per second for a typhoon's worth of undecided bookings: the old path (per booking: three gets, a
query of its notices, a query of its offers, one INSERT) beside the chunked `reminders.queue_reminders` (a chunk's
bookings, customers, notices and offers in a few IN-list queries, one executemany per chunk), from the same run.

    /work/venv/bin/python bench/bench_reminders.py [--reminders 20000] [--sample 2000] [--demo BOOKINGS]

The database is the scale network (bench/scale_network.py: 1,000,000 bookings, a typhoon stranding ~100,000 of
them; built once and cached) with the typhoon opened and planned as bench/bench_plan.py does; or, with `--demo`,
the demo network (`notifier.demo.generate`, at most ~5,600 reminders however many bookings) under the bundled
typhoon. Then every notice is marked sent a day before the deadline (every tenth booking's SMS undelivered, so
some reminders go by email), and the offers of all but `--reminders` undecided bookings get a later deadline, so
exactly that many reminders are due. It is built once into a temporary SQLite file and copied for each path. The
old path runs on the first `--sample` due reminders and is extrapolated; the new one queues all of them; the
sample's rows are checked to be the same in both.
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

import bench_plan  # noqa: E402
from baseline_reminders import old_queue_reminders  # noqa: E402
import scale_network  # noqa: E402
from notifier.planning.plan import plan_broadcast
from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory, transaction
from notifier.ops.demo import bundled_feed, generate
from notifier.feeds import cap
from notifier.store.migrate import upgrade
from notifier.store.models import Notification, Offer
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import ingest, plan_pending, process_new_items
from notifier.aftercare.reminders import Due, due_reminders, queue_reminders, reminder_key
from notifier.rules.load import load_rules
from tests.conftest import DEMO_NOW  # noqa: E402

LEAD = timedelta(minutes=30)  # the run happens this long before the offers' deadline (inside the 180 min lead)
LATER = timedelta(days=2)
ROW_FIELDS = ("dedup_key", "booking_id", "customer_id", "disruption_id", "revision", "broadcast_id", "channel",
              "recipient", "language", "template", "purpose", "subject", "body_text", "body_html", "segments",
              "safety_critical", "status", "priority", "attempts")


# --- the database ---------------------------------------------------------------------------------------------------

def settings_for(path: Path) -> Any:
    return load_settings(env={}, config_path=None, database_url=f"sqlite:///{path}", secret_key="bench-secret",
                         public_base_url="https://ferry.example", outbox_dir=tempfile.gettempdir())


def build(path: Path, wanted: int, demo_bookings: int | None) -> tuple[Any, int]:
    """The planned typhoon with `wanted` reminders due; returns the moment they are due and how many are."""
    settings = settings_for(path)
    if demo_bookings:
        upgrade(settings.database_url)
    else:
        scale_network.cached_sqlite(path)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    try:
        plan_typhoon(factory, settings, demo_bookings)
        return _make_due(factory, settings, wanted)
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()


def plan_typhoon(factory: sessionmaker[Session], settings: Any, demo_bookings: int | None) -> None:
    """Open the typhoon and plan its notices and offers (the notices all still queued)."""
    if demo_bookings:
        generate(factory, demo_bookings, DEMO_NOW)
        ingest(factory, cap.parse(bundled_feed(DEMO_NOW)))
        process_new_items(factory, load_rules([rules_dir()]), now=DEMO_NOW, settings=settings)
        plan_pending(factory, settings, now=DEMO_NOW)
        return
    _, broadcast_id = bench_plan.open_typhoon(factory, settings)
    plan_broadcast(factory, broadcast_id, settings, now=scale_network.EPOCH)


def _make_due(factory: sessionmaker[Session], settings: Any, wanted: int) -> tuple[Any, int]:
    with factory() as session:
        deadline = session.scalar(select(func.min(Offer.deadline)).where(Offer.deadline.is_not(None)))
    at = deadline - LEAD
    with transaction(factory) as session:
        # As if dispatched long ago: every notice told, not so recently that the reminder must wait; and some
        # SMS undelivered, so that those reminders go by email.
        session.execute(update(Notification).where(Notification.purpose == "notice")
                        .values(status="sent", sent_at=deadline - timedelta(days=1)))
        session.execute(update(Notification).where(Notification.purpose == "notice", Notification.channel == "sms",
                                                   Notification.booking_id % 10 == 0).values(status="undelivered"))
    with factory() as session:
        due = due_reminders(session, settings, at)
    with transaction(factory) as session:
        # The rest are not due yet: their deadline is days later (outside the reminder lead).
        later = [d.booking_id for d in due[wanted:]]
        for start in range(0, len(later), 500):
            session.execute(update(Offer).where(Offer.booking_id.in_(later[start:start + 500]),
                                                Offer.deadline.is_not(None)).values(deadline=deadline + LATER))
    with factory() as session:
        return at, len(due_reminders(session, settings, at))


# --- the measurement ------------------------------------------------------------------------------------------------

def timed(master: Path, name: str, run: Any) -> tuple[float, int, Path]:
    copy = master.with_name(f"{name}.db")
    shutil.copyfile(master, copy)
    settings = settings_for(copy)
    engine = make_engine(settings.database_url)
    try:
        started = time.perf_counter()
        queued = run(session_factory(engine), settings)
        return time.perf_counter() - started, queued, copy
    finally:
        engine.dispose()


def timed_due(master: Path, at: Any) -> tuple[float, list[Due]]:
    """How long the new query of what is due takes alone (on a copy, read twice: the second, warm, counts), and
    what it found."""
    copy = master.with_name("due.db")
    shutil.copyfile(master, copy)
    settings = settings_for(copy)
    engine = make_engine(settings.database_url)
    try:
        for _ in range(2):
            started = time.perf_counter()
            with Session(engine) as session:
                due = due_reminders(session, settings, at)
        return time.perf_counter() - started, due
    finally:
        engine.dispose()
        copy.unlink()


def outbox_rows(path: Path, limit_keys: set[str] | None = None) -> dict[str, tuple]:
    engine = make_engine(settings_for(path).database_url)
    columns = [getattr(Notification, name) for name in ROW_FIELDS]
    try:
        with Session(engine) as session:
            rows = session.execute(select(*columns).where(Notification.purpose == "reminder")).all()
    finally:
        engine.dispose()
    return {row[0]: tuple(row) for row in rows if limit_keys is None or row[0] in limit_keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reminders", type=int, default=20_000, help="due reminders wanted (at least)")
    parser.add_argument("--sample", type=int, default=2000, help="due reminders the old path queues")
    parser.add_argument("--demo", type=int, default=None, metavar="BOOKINGS",
                        help="the demo network with this many bookings instead of the scale network")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reminders-") as folder:
        started = time.perf_counter()
        master = Path(folder) / "master.db"
        at, due = build(master, args.reminders, args.demo)
        print(f"# database: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        sample = min(args.sample, due)
        due_seconds, due_list = timed_due(master, at)
        sample_keys = {reminder_key(d.booking_id, d.disruption_id) for d in due_list[:sample]}
        old_seconds, (old_queued, old_query), old_db = timed(master, "old",
                                                             lambda f, s: old_queue_reminders(f, s, at, sample))
        new_seconds, new_queued, new_db = timed(master, "new", lambda f, s: queue_reminders(f, s, at))
        old_rows = outbox_rows(old_db)
        same = old_rows == outbox_rows(new_db, sample_keys)
        per_booking = old_queued / (old_seconds - old_query)
        old_all = old_query + due * (old_seconds - old_query) / sample
        old_rate, new_rate = old_queued / sample * due / old_all, new_queued / new_seconds
        print(f"{'demo network' if args.demo else 'scale network'}: reminders due {due:,}")
        print(f"old path: query of what is due {old_query:.1f} s; then {old_queued:,} of a {sample:,} sample queued "
              f"in {old_seconds - old_query:.2f} s = {per_booking:,.0f} reminders/s; all {due:,} extrapolated: "
              f"{old_all:.0f} s = {old_rate:,.0f} reminders/s")
        print(f"new queue_reminders: {new_queued:,} queued in {new_seconds:.2f} s = {new_rate:,.0f} reminders/s "
              f"(its query of what is due alone: {due_seconds:.1f} s)")
        print(f"ratio new/old, whole job: {new_rate / old_rate:.1f}x; per reminder after the query: "
              f"{new_queued / (new_seconds - due_seconds) / per_booking:.1f}x")
        print(f"the sample's {len(old_rows):,} rows identical in both: {same}")
        if not same:
            sys.exit("the new path's rows differ from the old path's")


if __name__ == "__main__":
    main()
