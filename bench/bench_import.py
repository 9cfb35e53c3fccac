"""Bookings imported per second from a reservation system's CSV: `notifier.intake.bookings.import_bookings`
(streamed, chunks of 5,000 rows in one transaction each, bulk upserts with SQLAlchemy Core, unchanged rows skipped
by their digest) beside a naive loop (per row: the same checks, ORM look-ups of sailing, customer and booking,
one commit), from the same run.

    /work/venv/bin/python bench/bench_import.py [--rows 1000000] [--sample 10000] [--changed 0.01]

A seeded generator writes the CSV (rows spread over 2,000 sailings of a generated network, 60 % as many customers
as bookings, phones in several national formats) into a temporary folder. Ours imports all of it into a fresh
SQLite file in a child process, whose peak RSS is reported; then a copy of the file with `--changed` of its rows
changed is imported again over it. The naive loop imports the first `--sample` rows into another fresh file and
is extrapolated. Figures depend on the machine and on what else runs on it: compare the ratio, which comes from
the same run.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from notifier.intake.booking_rows import RowError, check_row  # noqa: E402
from notifier.intake.bookings import import_bookings  # noqa: E402
from notifier.intake.mapping import Mapping  # noqa: E402
from notifier.intake.network import import_network  # noqa: E402
from notifier.store.db import make_engine, session_factory, transaction  # noqa: E402
from notifier.store.migrate import upgrade  # noqa: E402
from notifier.store.models import Booking, Customer, Sailing  # noqa: E402

ROUTES = 10
SAILINGS_PER_ROUTE = 200
FIRST_DEPARTURE = datetime(2030, 1, 1, 6, 0)
HEADER = ["booking_ref", "sailing", "status", "passengers_adult", "passengers_child", "vehicles", "fare_paid",
          "currency", "customer_ref", "customer_name", "customer_phone", "customer_email", "customer_language",
          "consent_sms"]
NAMES = ["Alex Chan", "Maria Lopez", "John Smith", "Priya Nair", "Tom Becker", "Emma Wilson", "王伟", "李娜"]
# Every customer has a phone of their own (no two alike), written the ways exports write them.
PHONES = ["+44 7400 {:06d}", "07500 {:06d}", "+86 138 {:08d}", "+33 6 {:08d}", "+1 917 2{:06d}"]


def network() -> dict:
    """Two ports, ROUTES routes between them, each with SAILINGS_PER_ROUTE sailings two hours apart."""
    ports = [{"locode": "GBDVR", "name": "Dover", "lat": 51.12, "lon": 1.33, "timezone": "Europe/London"},
             {"locode": "FRCQF", "name": "Calais", "lat": 50.97, "lon": 1.86, "timezone": "Europe/Paris"}]
    vessels = [{"imo": "9500000", "name": "Bench Ferry", "capacity": {"economy": 1_000_000, "vehicle": 1_000_000}}]
    routes = [{"code": f"R{r}", "name": f"Route {r}", "origin": "GBDVR", "destination": "FRCQF", "vessel": "9500000",
               "jurisdiction": "EU"} for r in range(ROUTES)]
    sailings = [{"code": sailing_code(r, s), "route": f"R{r}",
                 "departure": (FIRST_DEPARTURE + timedelta(hours=2 * s)).isoformat(),
                 "arrival": (FIRST_DEPARTURE + timedelta(hours=2 * s + 2)).isoformat()}
                for r in range(ROUTES) for s in range(SAILINGS_PER_ROUTE)]
    return {"ports": ports, "vessels": vessels, "routes": routes, "sailings": sailings}


def sailing_code(route: int, number: int) -> str:
    return f"R{route}-{number:04d}"


def write_bookings(path: Path, rows: int, changed: float = 0.0, seed: int = 20261208) -> None:
    """The seeded CSV; with `changed`, that share of rows (chosen by a second seed) has another fare."""
    rng, pick = random.Random(seed), random.Random(seed + 1)
    customers = max(1, int(rows * 0.6))
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(HEADER)
        for number in range(rows):
            customer = rng.randrange(customers)
            fare = rng.randint(20, 400)
            if changed and pick.random() < changed:
                fare += 1
            writer.writerow([f"BK{number:08d}", sailing_code(rng.randrange(ROUTES), rng.randrange(SAILINGS_PER_ROUTE)),
                             "confirmed" if rng.random() < 0.97 else "cancelled", rng.choice([1, 1, 2, 2, 3]),
                             rng.choice(["", "", "1"]), rng.choice([0, 0, 0, 1]), f"{fare}.00", "GBP",
                             f"C{customer:08d}", NAMES[customer % len(NAMES)],
                             PHONES[customer % len(PHONES)].format(customer),
                             f"c{customer}@example.com" if customer % 3 else "",
                             ["en", "en-GB", "zh-CN", "fr"][customer % 4], "yes"])


def fresh_database(path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{path}"
    upgrade(url)
    factory = session_factory(make_engine(url))
    with transaction(factory) as session:
        import_network(session, network(), now=datetime(2029, 1, 1, tzinfo=UTC))
    return factory


def _ours(database: Path, bookings: Path, results: multiprocessing.Queue) -> None:
    factory = session_factory(make_engine(f"sqlite:///{database}"))
    started = time.perf_counter()
    result = import_bookings(factory, bookings, Mapping(default_region="GB"))
    results.put((time.perf_counter() - started, result.created, result.updated, result.unchanged, result.rejected))


def ours(database: Path, bookings: Path) -> tuple[float, int, int, int, int, int]:
    """(seconds, created, updated, unchanged, rejected, peak RSS in MB of the importing child process)."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    child = multiprocessing.get_context("fork").Process(target=_ours, args=(database, bookings, results))
    child.start()
    outcome = results.get()
    child.join()
    return (*outcome, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)


def naive(factory: sessionmaker[Session], bookings: Path, sample: int) -> tuple[float, int]:
    """The loop one writes first: per row the same checks, ORM look-ups and one commit."""
    mapping, written = Mapping(default_region="GB"), 0
    started = time.perf_counter()
    with open(bookings, encoding="utf-8", newline="") as stream, factory() as session:
        for number, row in enumerate(csv.DictReader(stream)):
            if number >= sample:
                break
            try:
                checked = check_row(mapping.apply(row), mapping)
            except RowError:
                continue
            sailing = session.scalars(select(Sailing).where(Sailing.code == checked.sailing)).first()
            customer = session.scalars(select(Customer).where(Customer.ref == checked.customer["ref"])).first()
            if customer is None:
                customer = Customer(**checked.customer)
                session.add(customer)
            else:
                for name, value in checked.customer.items():
                    setattr(customer, name, value)
            booking = session.scalars(select(Booking).where(Booking.ref == checked.booking["ref"])).first() or \
                Booking(ref=checked.booking["ref"])
            for name, value in checked.booking.items():
                setattr(booking, name, value)
            booking.customer, booking.sailing = customer, sailing
            session.add(booking)
            session.commit()
            written += 1
    return time.perf_counter() - started, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="bookings in the CSV")
    parser.add_argument("--sample", type=int, default=10_000, help="rows the naive loop imports")
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed for the re-import")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as folder:
        folder_path = Path(folder)
        started = time.perf_counter()
        first, second = folder_path / "bookings.csv", folder_path / "bookings-changed.csv"
        write_bookings(first, args.rows)
        write_bookings(second, args.rows, changed=args.changed)
        print(f"# CSV files: {first.stat().st_size / 1e6:.0f} MB each, {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        fresh_database(folder_path / "ours.db")
        seconds, created, _, _, rejected, rss = ours(folder_path / "ours.db", first)
        again, _, updated, unchanged, _, _ = ours(folder_path / "ours.db", second)
        naive_factory = fresh_database(folder_path / "naive.db")
        naive_seconds, naive_written = naive(naive_factory, first, min(args.sample, args.rows))
        with naive_factory() as session:
            assert session.scalar(select(func.count()).select_from(Booking)) == naive_written
        naive_all = naive_seconds * args.rows / max(naive_written, 1)
        print(f"rows: {args.rows:,} ({rejected:,} rejected)")
        print(f"ours: {created:,} bookings in {seconds:.1f} s = {created / seconds:,.0f} rows/s, "
              f"peak RSS of the importing process {rss} MB")
        print(f"ours again with {args.changed:.0%} of rows changed: {updated:,} updated, {unchanged:,} unchanged "
              f"in {again:.1f} s = {again / seconds:.2f} of the full import")
        print(f"naive ORM loop, one commit per row: {naive_written:,} rows in {naive_seconds:.1f} s = "
              f"{naive_written / naive_seconds:,.0f} rows/s; {args.rows:,} extrapolated: {naive_all:.0f} s")
        print(f"ratio ours/naive: {naive_all / seconds:.1f}x")


if __name__ == "__main__":
    main()
