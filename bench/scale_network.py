"""A reproducible (seeded) large network for the scale benchmarks: 5,000 sailings, 1,000,000 bookings, and a
two-day typhoon over the Qiongzhou Strait that disrupts the 100,000 bookings on its 140 sailings.

Built with bulk Core inserts; every customer's contacts are checked once, as a booking system does when the
booking is made (notifier.contacts). Building takes minutes, so `cached_sqlite()` builds once into bench/.cache/
and hands out copies, and `postgres_copy()` loads that build once into a template database that each run clones.

    python bench/scale_network.py --bookings 1000000 --out /tmp/scale.db
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from notifier.planning.contacts import check_contacts
from notifier.store.db import make_engine, session_factory
from notifier.ops.demo import PORTS
from notifier.store.migrate import upgrade
from notifier.store.models import Booking, Customer, Port, Route, Sailing, SailingCapacity

CACHE = Path(__file__).resolve().parent / ".cache"
FORMAT = 5  # bump when the generated data changes: cached builds of another format are not reused
EPOCH = datetime(2026, 9, 14, 0, 0, tzinfo=UTC)
STORM_START = EPOCH + timedelta(hours=4)  # 12:00 in Haikou
STORM_END = STORM_START + timedelta(days=2)
ROUTES = [("QZ-HAK-HAI", "CNHAK", "CNHAI", 90), ("QZ-HAI-HAK", "CNHAI", "CNHAK", 90),
          ("QZ-HAK-XWN", "CNHAK", "CNXWN", 120), ("QZ-XWN-HAK", "CNXWN", "CNHAK", 120),
          ("HKM-HKG-MFM", "HKHKG", "MOMFM", 60), ("HKM-MFM-HKG", "MOMFM", "HKHKG", 60)]
HOURS = range(6, 23)  # 17 departures a day per route
# Room for every affected booking (about 1,160 economy and 130 business places per storm sailing).
CAPACITY = {"economy": 1300, "business": 160}
SEED = 20260914
# Tables a build fills, parents first (for copying into PostgreSQL).
TABLES = ("ports", "routes", "vessels", "sailings", "sailing_capacities", "customers", "bookings")


def build(url: str, bookings: int = 1_000_000, sailings: int = 5000, affected: int = 100_000,
          seed: int = SEED, processes: int = 2) -> dict[str, int]:
    """Create the schema, fill it, check every customer's contacts; returns counts."""
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    rng = random.Random(seed)
    with factory() as session, session.begin():
        session.connection(execution_options={"notifier_write": True})
        ports = _ports(session)
        storm, calm = _sailings(session, ports, sailings)
        counts = _bookings(session, storm, calm, bookings, affected, rng)
    counts["contacts_checked"] = check_contacts(factory, processes=processes)
    engine.dispose()
    return counts | {"sailings": len(storm) + len(calm), "storm_sailings": len(storm)}


def _ports(session) -> dict[str, int]:  # noqa: ANN001
    session.execute(insert(Port.__table__), [{"locode": p[0], "name": p[1], "name_zh": p[2], "country": p[3],
                                              "lat": p[4], "lon": p[5], "timezone": p[6], "zone_codes": []}
                                             for p in PORTS])
    return dict(session.execute(select(Port.locode, Port.id)).all())


def _sailings(session, ports: dict[str, int], total: int) -> tuple[list[int], list[int]]:  # noqa: ANN001
    days = -(-total // (len(ROUTES) * len(HOURS)))
    rows, made = [], 0
    for code, origin, destination, minutes in ROUTES:
        route_id = session.execute(insert(Route).values(
            code=code, name=code, kind="passenger", origin_port_id=ports[origin],
            destination_port_id=ports[destination],
            jurisdiction="HK" if code.startswith("HKM") else "CN")).inserted_primary_key[0]
        zone = ZoneInfo("Asia/Shanghai")
        for day in range(days):
            for hour in HOURS:
                if made >= total:
                    break
                departure = datetime(2026, 9, 14, hour, tzinfo=zone).astimezone(UTC) + timedelta(days=day)
                rows.append({"code": f"{code}-{departure:%Y%m%d%H%M}", "route_id": route_id,
                             "origin_port_id": ports[origin], "destination_port_id": ports[destination],
                             "scheduled_departure": departure,
                             "scheduled_arrival": departure + timedelta(minutes=minutes), "status": "scheduled"})
                made += 1
    session.execute(insert(Sailing.__table__), rows)
    storm, calm = [], []
    for sailing_id, code, departure in session.execute(select(Sailing.id, Sailing.code,
                                                              Sailing.scheduled_departure)):
        in_storm = code.startswith("QZ") and STORM_START <= departure <= STORM_END
        (storm if in_storm else calm).append(sailing_id)
    session.execute(insert(SailingCapacity.__table__), [
        {"sailing_id": s, "space_class": c, "capacity": n, "booked": 0, "held": 0}
        for s in storm + calm for c, n in CAPACITY.items()])
    return storm, calm


def _bookings(session, storm: list[int], calm: list[int], total: int, affected: int,  # noqa: ANN001
              rng: random.Random) -> dict[str, int]:
    booked: dict[tuple[int, str], int] = {}
    chunk, made, made_affected = 50_000, 0, 0
    for start in range(0, total, chunk):
        customers, bookings = [], []
        for number in range(start, min(start + chunk, total)):
            sailings = storm if number < affected else calm
            sailing, row = sailings[number % len(sailings)], number // len(sailings)
            # Every sailing alike: one booking in ten in business, parties of 1 to 3 (by row, not by number: the
            # number of storm sailings is a multiple of 5).
            space = "business" if row % 10 == 0 else "economy"
            party = (1, 1, 2, 2, 3)[(row + row // 10) % 5]
            if booked.get((sailing, space), 0) + party > CAPACITY[space]:
                continue
            booked[(sailing, space)] = booked.get((sailing, space), 0) + party
            made_affected += number < affected
            chinese = number % 10 < 7
            customers.append({"ref": f"C{number:08d}", "name": f"Passenger {number}",
                              "phone": f"+8613{number % 10}{rng.randint(0, 99_999_999):08d}" if chinese
                              else f"+8529{rng.randint(0, 9_999_999):07d}",
                              "email": f"p{number}@example.com" if number % 2 else None,
                              "language": "zh-CN" if chinese else "en", "channels": ["sms", "email"],
                              "key_account": False})
            bookings.append({"ref": f"T{number:08d}", "kind": "passenger", "sailing_id": sailing,
                             "space_class": space, "party_size": party, "vehicles": 0,
                             "accessibility_needs": number % 50 == 0, "containers": 0, "teu": 0,
                             "reefer_plugs": 0, "dangerous_goods": False, "shipper": None, "cutoffs": {},
                             "fare_paid": Decimal("45.00") * party, "currency": "CNY", "status": "confirmed",
                             "customer_ref": f"C{number:08d}"})
        session.execute(insert(Customer.__table__), customers)
        ids = dict(session.execute(select(Customer.ref, Customer.id).where(
            Customer.ref >= f"C{start:08d}", Customer.ref < f"C{start + chunk:08d}")).all())
        for row in bookings:
            row["customer_id"] = ids[row.pop("customer_ref")]
        session.execute(insert(Booking.__table__), bookings)
        made += len(bookings)
    session.execute(text("UPDATE sailing_capacities SET booked = COALESCE((SELECT SUM(b.party_size) FROM bookings b "
                         "WHERE b.sailing_id = sailing_capacities.sailing_id "
                         "AND b.space_class = sailing_capacities.space_class), 0)"))
    return {"bookings": made, "affected_bookings": made_affected}


def cached_sqlite(target: Path, bookings: int = 1_000_000, sailings: int = 5000, affected: int = 100_000) -> Path:
    """A fresh copy of the cached SQLite build (building it the first time)."""
    master = cached_master(bookings, sailings, affected)
    shutil.copyfile(master, target)
    upgrade(f"sqlite:///{target}")  # a build cached before a later migration gets it on the copy, not the master
    return target


def cached_master(bookings: int = 1_000_000, sailings: int = 5000, affected: int = 100_000) -> Path:
    """The cached SQLite build itself (never write to it: copy it)."""
    CACHE.mkdir(exist_ok=True)
    master = CACHE / f"scale-v{FORMAT}-{bookings}-{sailings}-{affected}.db"
    if not master.exists():
        partial = master.with_suffix(".partial")
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
        started = time.perf_counter()
        counts = build(f"sqlite:///{partial}", bookings, sailings, affected, processes=max(1, os.cpu_count() or 1))
        with sqlite3.connect(partial) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        partial.rename(master)
        for leftover in (Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
        print(f"# built {master.name} in {time.perf_counter() - started:.0f} s: {counts}", file=sys.stderr)
    return master


def postgres_copy(server_url: str, bookings: int = 1_000_000, sailings: int = 5000,
                  affected: int = 100_000) -> str:
    """A fresh PostgreSQL database holding the cached build (cloned from a template database that is loaded from
    the SQLite build the first time); returns its URL. Drop it with `drop_postgres`."""
    template = f"notifier_scale_v{FORMAT}_{bookings}_{sailings}_{affected}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": template})
        if not exists:
            _load_template(admin, server_url, template, cached_master(bookings, sailings, affected))
        name = f"notifier_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    finally:
        admin.dispose()
    upgrade(_database_url(server_url, name))  # as for SQLite: later migrations on the copy
    return _database_url(server_url, name)


def drop_postgres(server_url: str, url: str) -> None:
    """Drop a database made by `postgres_copy`."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _database_url(server_url: str, name: str) -> str:
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def _load_template(admin, server_url: str, template: str, master: Path) -> None:  # noqa: ANN001
    loading = f"{template}_loading"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{loading}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{loading}"'))
    url = _database_url(server_url, loading)
    upgrade(url)
    started = time.perf_counter()
    engine = make_engine(url)
    try:
        with engine.connect() as connection, sqlite3.connect(master) as source:
            raw = connection.connection.driver_connection
            raw.execute("SET TIME ZONE 'UTC'")  # SQLite holds naive UTC times
            for table in TABLES:
                _copy_table(source, raw, table)
            raw.commit()
    finally:
        engine.dispose()
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{loading}" RENAME TO "{template}"'))
    print(f"# loaded {template} into PostgreSQL in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _copy_table(source: sqlite3.Connection, target, table: str) -> None:  # noqa: ANN001
    cursor = source.execute(f"SELECT * FROM {table}")
    columns = [d[0] for d in cursor.description]
    with target.cursor() as pg, pg.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in cursor:
            copy.write_row(row)
    with target.cursor() as pg:
        pg.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 1)) FROM {table}")
        pg.execute(f"ANALYZE {table}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=1_000_000)
    parser.add_argument("--sailings", type=int, default=5000)
    parser.add_argument("--affected", type=int, default=100_000)
    parser.add_argument("--out", required=True, help="SQLite file to write, or a postgresql+psycopg:// URL")
    args = parser.parse_args()
    url = args.out if "://" in args.out else f"sqlite:///{args.out}"
    started = time.perf_counter()
    print(build(url, args.bookings, args.sailings, args.affected), f"in {time.perf_counter() - started:.1f} s")
