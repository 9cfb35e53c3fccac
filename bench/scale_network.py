"""A reproducible (seeded) large network for the scale benchmarks: 5,000 sailings, 1,000,000 bookings, and a
two-day typhoon over the Qiongzhou Strait that disrupts the ~100,000 bookings on its 136 sailings.

Built with bulk Core inserts. Building takes a while, so `cached_sqlite()` builds once into bench/.cache/ and
hands out copies; `postgres_template()` builds once into a template database that each run clones.

    python bench/scale_network.py --bookings 1000000 --out /tmp/scale.db
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from notifier.db import make_engine, session_factory  # noqa: E402
from notifier.demo import PORTS  # noqa: E402
from notifier.migrate import upgrade  # noqa: E402
from notifier.models import Booking, Customer, Port, Route, Sailing, SailingCapacity  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
EPOCH = datetime(2026, 9, 14, 0, 0, tzinfo=UTC)
STORM_START = EPOCH + timedelta(hours=4)  # 12:00 in Haikou
STORM_END = STORM_START + timedelta(days=2)
ROUTES = [("QZ-HAK-HAI", "CNHAK", "CNHAI", 90), ("QZ-HAI-HAK", "CNHAI", "CNHAK", 90),
          ("QZ-HAK-XWN", "CNHAK", "CNXWN", 120), ("QZ-XWN-HAK", "CNXWN", "CNHAK", 120),
          ("HKM-HKG-MFM", "HKHKG", "MOMFM", 60), ("HKM-MFM-HKG", "MOMFM", "HKHKG", 60)]
HOURS = range(6, 23)  # 17 departures a day per route
CAPACITY = {"economy": 1000, "business": 100}
SEED = 20260914


def build(url: str, bookings: int = 1_000_000, sailings: int = 5000, affected: int = 100_000,
          seed: int = SEED) -> dict[str, int]:
    """Create the schema and fill it; returns counts."""
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    rng = random.Random(seed)
    with factory() as session, session.begin():
        session.connection(execution_options={"notifier_write": True})
        ports = _ports(session)
        storm, calm = _sailings(session, ports, sailings)
        counts = _bookings(session, storm, calm, bookings, affected, rng)
    engine.dispose()
    return counts | {"sailings": len(storm) + len(calm), "storm_sailings": len(storm)}


def _ports(session) -> dict[str, int]:  # noqa: ANN001
    session.execute(insert(Port.__table__), [{"locode": p[0], "name": p[1], "name_zh": p[2], "country": p[3], "lat": p[4],
                                    "lon": p[5], "timezone": p[6], "zone_codes": []} for p in PORTS])
    return dict(session.execute(select(Port.locode, Port.id)).all())


def _sailings(session, ports: dict[str, int], total: int) -> tuple[list[int], list[int]]:  # noqa: ANN001
    days = -(-total // (len(ROUTES) * len(HOURS)))
    rows, made = [], 0
    for code, origin, destination, minutes in ROUTES:
        route_id = session.execute(insert(Route).values(
            code=code, name=code, kind="passenger", origin_port_id=ports[origin], destination_port_id=ports[destination],
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
    for sailing_id, code, departure in session.execute(select(Sailing.id, Sailing.code, Sailing.scheduled_departure)):
        in_storm = code.startswith("QZ") and STORM_START <= departure <= STORM_END
        (storm if in_storm else calm).append(sailing_id)
    session.execute(insert(SailingCapacity.__table__), [{"sailing_id": s, "space_class": c, "capacity": n, "booked": 0,
                                               "held": 0} for s in storm + calm for c, n in CAPACITY.items()])
    return storm, calm


def _bookings(session, storm: list[int], calm: list[int], total: int, affected: int,  # noqa: ANN001
              rng: random.Random) -> dict[str, int]:
    booked: dict[tuple[int, str], int] = {}
    chunk, made = 50_000, 0
    for start in range(0, total, chunk):
        customers, bookings = [], []
        for number in range(start, min(start + chunk, total)):
            sailing = storm[number % len(storm)] if number < affected else calm[number % len(calm)]
            space = "business" if number % 10 == 0 else "economy"
            party = (1, 1, 2, 2, 3)[number % 5]
            if booked.get((sailing, space), 0) + party > CAPACITY[space]:
                continue
            booked[(sailing, space)] = booked.get((sailing, space), 0) + party
            chinese = number % 10 < 7
            customers.append({"ref": f"C{number:08d}", "name": f"Passenger {number}",
                              "phone": f"+8613{number % 10}{rng.randint(0, 99_999_999):08d}" if chinese
                              else f"+8529{rng.randint(0, 9_999_999):07d}",
                              "email": f"p{number}@example.com" if number % 2 else None,
                              "language": "zh-CN" if chinese else "en", "channels": ["sms", "email"],
                              "key_account": False})
            bookings.append({"ref": f"T{number:08d}", "kind": "passenger", "sailing_id": sailing,
                             "space_class": space, "party_size": party, "vehicles": 0,
                             "accessibility_needs": number % 50 == 0, "containers": 0, "teu": 0, "reefer_plugs": 0,
                             "dangerous_goods": False, "shipper": None, "cutoffs": {},
                             "fare_paid": Decimal("45.00") * party, "currency": "CNY", "status": "confirmed",
                             "customer_ref": f"C{number:08d}"})
        session.execute(insert(Customer.__table__), customers)
        ids = dict(session.execute(select(Customer.ref, Customer.id).where(Customer.ref >= f"C{start:08d}",
                                                                           Customer.ref < f"C{start + chunk:08d}")).all())
        for row in bookings:
            row["customer_id"] = ids[row.pop("customer_ref")]
        session.execute(insert(Booking.__table__), bookings)
        made += len(bookings)
    session.execute(text("UPDATE sailing_capacities SET booked = COALESCE((SELECT SUM(b.party_size) FROM bookings b "
                         "WHERE b.sailing_id = sailing_capacities.sailing_id "
                         "AND b.space_class = sailing_capacities.space_class), 0)"))
    return {"bookings": made}


def cached_sqlite(target: Path, bookings: int = 1_000_000, sailings: int = 5000, affected: int = 100_000) -> Path:
    """A fresh copy of the cached SQLite build (building it the first time)."""
    CACHE.mkdir(exist_ok=True)
    master = CACHE / f"scale-{bookings}-{sailings}-{affected}.db"
    if not master.exists():
        partial = master.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        started = time.perf_counter()
        build(f"sqlite:///{partial}", bookings, sailings, affected)
        make_engine(f"sqlite:///{partial}").connect().exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        partial.rename(master)
        print(f"# built {master.name} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    shutil.copyfile(master, target)
    return target


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
