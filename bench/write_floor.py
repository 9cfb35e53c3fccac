"""The SQLite write floor of planning at scale: how long SQLite alone takes to store what the planner stores.

Plans the scale benchmark's typhoon once (bench/bench_plan.py's database and warning, SQLite, one process,
cProfile off), then inserts the very rows it committed (offers and notices) into an empty copy of their tables
with sqlite3's `executemany` and nothing else: no rendering, no allocation, no SQLAlchemy. Printed side by side
from the same run: the planner's time, the floor with every index of the schema, the floor without the indexes
planning does not need, and the floor with empty email bodies (how much the text itself weighs).

    /work/venv/bin/python bench/write_floor.py

Figures depend on the machine and on what else runs on it; compare the lines of one run.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

import bench_plan  # noqa: E402
import scale_network  # noqa: E402

# An index the planner does not read (it serves inbound replies and opt-outs). Migration 0002 already dropped the
# offers' booking_id index and made the provider_id one partial (nothing to update while planning).
NOT_FOR_PLANNING = ("ix_notifications_recipient",)
TABLES = ("offers", "notifications")


def planned_database(folder: Path) -> tuple[Path, float]:
    """The scale database with the typhoon planned into it, and the planner's own time."""
    from notifier.planning.plan import plan_broadcast
    from notifier.store.db import make_engine, session_factory

    target = folder / "planned.db"
    shutil.copyfile(scale_network.cached_master(), target)
    url = f"sqlite:///{target}"
    settings = bench_plan.settings_for(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    _, broadcast_id = bench_plan.open_typhoon(factory, settings)
    started = time.perf_counter()
    plan_broadcast(factory, broadcast_id, settings, now=scale_network.EPOCH)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return target, elapsed


def write_floor(source: Path, target: Path, skip_indexes: tuple[str, ...] = (), empty_email: bool = False) -> float:
    """Seconds to insert the planned offers and notices into empty tables, as the planner's settings have it."""
    with sqlite3.connect(source) as reader:
        schema = [sql for (sql,) in reader.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name IN ('offers', 'notifications') AND sql IS NOT NULL "
            "ORDER BY type DESC")]
        rows = {table: reader.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in TABLES}
        names = {table: [d[0] for d in reader.execute(f"SELECT * FROM {table} LIMIT 1").description]
                 for table in TABLES}
    if empty_email:
        html, text = names["notifications"].index("body_html"), names["notifications"].index("body_text")
        rows["notifications"] = [row[:text] + ("-", None) + row[html + 1:] if row[html] else row
                                 for row in rows["notifications"]]
    for leftover in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        leftover.unlink(missing_ok=True)
    writer = sqlite3.connect(target, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536", "wal_autocheckpoint=0"):
        writer.execute(f"PRAGMA {pragma}")
    for sql in schema:
        if not any(f" {name} " in sql for name in skip_indexes):
            writer.execute(sql)
    started = time.perf_counter()
    writer.execute("BEGIN IMMEDIATE")
    for table in TABLES:
        columns = names[table][1:]
        insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        for start in range(0, len(rows[table]), 2000):  # the planner's largest chunk
            writer.executemany(insert, [row[1:] for row in rows[table][start:start + 2000]])
    writer.execute("COMMIT")
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="notifier-floor-") as scratch:
        folder = Path(scratch)
        source, planner = planned_database(folder)
        with sqlite3.connect(source) as reader:
            counts = {table: reader.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
        floors = {"every index": write_floor(source, folder / "floor.db"),
                  "without the indexes planning does not need": write_floor(source, folder / "floor.db",
                                                                            NOT_FOR_PLANNING),
                  "every index, email bodies empty": write_floor(source, folder / "floor.db", empty_email=True)}
    print(f"{counts['notifications']:,} notices and {counts['offers']:,} offers; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"planner (plan_broadcast, SQLite): {planner:.2f} s")
    for label, seconds in floors.items():
        print(f"sqlite3 executemany alone, {label}: {seconds:.2f} s ({planner / seconds:.1f}x under the planner)")


if __name__ == "__main__":
    main()
