"""`notifier import bookings`: bookings and their customers in from a reservation system's CSV or JSON Lines export.

The file is streamed in chunks (never held in memory) and each chunk is one transaction: its customers are
upserted by reference, then its bookings, then what the import knows of each (`BookingImport`: the row's digest,
the party by type, the commodity), and the sailings' `booked` counters follow. A row that fails a check goes to
the rejects file (line, field, reason) and never stops the others; a chunk either writes all its good rows or
none. A row whose digest matches the one stored for its booking is skipped before any check, so re-importing a
file in which little changed costs little. Bookings whose status notifier itself set (rebooked, refund: a
customer's choice was carried out) are kept as they are. The caller checks the customers' contacts afterwards
(planning.contacts), as planning would.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from notifier.intake.booking_rows import CheckedBooking, RowError, check_row, row_hash
from notifier.intake.mapping import Mapping
from notifier.intake.sources import Reject, csv_rows, file_format, jsonl_rows, open_text
from notifier.intake.upsert import DECIDED_HERE, move_booked, upsert
from notifier.store.db import pages, transaction
from notifier.store.models import Booking, BookingImport, Customer, Port, Route, Sailing

CHUNK = 5_000
BOOKING_COLUMNS = ("ref", "kind", "customer_id", "sailing_id", "status", "space_class", "party_size", "vehicles",
                   "accessibility_needs", "containers", "teu", "reefer_plugs", "dangerous_goods", "shipper",
                   "fare_paid", "currency")


@dataclass
class ImportResult:
    """What an import did (or, with dry_run, would do)."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept: int = 0  # rebooked or refunded here: left as notifier set them
    rejected: int = 0
    overbooked: int = 0
    customers: int = 0
    dry_run: bool = False
    rejects_file: str | None = None
    first_rejects: list[Reject] = field(default_factory=list)


def import_bookings(factory: sessionmaker[Session], path: str | Path, mapping: Mapping, *, dry_run: bool = False,
                    rejects_path: str | Path | None = None, chunk: int = CHUNK,
                    progress: Callable[[int], None] | None = None) -> ImportResult:
    """Upsert every good row of the file by booking reference; write the bad ones to the rejects file."""
    path = Path(path)
    result = ImportResult(dry_run=dry_run)
    seen: set[int] = set()  # digests of the references read so far: a duplicate later in the file is refused
    with open_text(path, mapping.encoding) as stream, _Rejects(rejects_path, result) as rejects:
        rows = _rows(stream, file_format(path, mapping.format), mapping)
        while batch := list(islice(rows, chunk)):
            result.rows += len(batch)
            good = _first_of_each(batch, seen, rejects)
            _import_chunk(factory, good, mapping, result, rejects, dry_run)
            if progress is not None:
                progress(stream.buffer.tell())  # bytes read so far (text tell() is off while iterating)
    return result


def _rows(stream: IO[str], form: str, mapping: Mapping) -> Iterator[tuple[int, dict[str, Any] | Reject]]:
    source = csv_rows(stream, mapping.delimiter) if form == "csv" else jsonl_rows(stream)
    for line, row in source:
        yield line, row if isinstance(row, Reject) else mapping.apply(row)


def _first_of_each(batch: list[tuple[int, dict[str, Any] | Reject]], seen: set[int], rejects: _Rejects
                   ) -> list[tuple[int, dict[str, Any]]]:
    good = []
    for line, row in batch:
        if isinstance(row, Reject):
            rejects.add(row)
            continue
        ref = str(row.get("booking_ref", "")).strip()
        digest = int.from_bytes(hashlib.blake2b(ref.encode("utf-8", "surrogateescape"), digest_size=8).digest())
        if ref and digest in seen:
            rejects.add(Reject(line, "booking_ref", f"{ref[:32]!r} appears on an earlier line of this file"))
            continue
        seen.add(digest)
        good.append((line, row))
    return good


def _import_chunk(factory: sessionmaker[Session], rows: list[tuple[int, dict[str, Any]]], mapping: Mapping,
                  result: ImportResult, rejects: _Rejects, dry_run: bool) -> None:
    with (factory() if dry_run else transaction(factory)) as session:
        known = _known_bookings(session, [str(row.get("booking_ref", "")).strip() for _, row in rows])
        checked = []
        for line, row in rows:
            digest = row_hash(row, mapping)
            previous = known.get(str(row.get("booking_ref", "")).strip())
            if previous is not None and previous.row_hash == digest:
                result.unchanged += 1
            elif previous is not None and previous.status in DECIDED_HERE:
                result.kept += 1
            else:
                try:
                    checked.append((line, digest, check_row(row, mapping)))
                except RowError as exc:
                    rejects.add(Reject(line, exc.field, exc.reason))
        placed = _placed(session, checked, rejects)
        result.created += sum(1 for _, _, booking, _ in placed if booking.booking["ref"] not in known)
        result.updated += sum(1 for _, _, booking, _ in placed if booking.booking["ref"] in known)
        if not dry_run:
            _write(session, placed, known, result)


def _known_bookings(session: Session, refs: list[str]) -> dict[str, Any]:
    known = {}
    for page in pages(sorted(set(refs)), 2000):
        query = (select(Booking.ref, Booking.id, Booking.status, Booking.kind, Booking.sailing_id, Booking.space_class,
                        Booking.party_size, Booking.teu, Booking.vehicles, Booking.reefer_plugs, BookingImport.row_hash)
                 .outerjoin(BookingImport, BookingImport.booking_id == Booking.id).where(Booking.ref.in_(page)))
        known.update((row.ref, row) for row in session.execute(query))
    return known


def _placed(session: Session, checked: list[tuple[int, str, CheckedBooking]], rejects: _Rejects
            ) -> list[tuple[int, str, CheckedBooking, int]]:
    """The checked rows whose sailing exists, with its id; the others are rejected."""
    by_code = _sailings_by_code(session, {booking.sailing for _, _, booking in checked if booking.sailing})
    by_departure = _sailings_by_departure(session, [booking for _, _, booking in checked if booking.route])
    placed = []
    for line, digest, booking in checked:
        key = booking.sailing if booking.sailing else (booking.route, booking.departure)
        sailing_id = by_code.get(key) if booking.sailing else by_departure.get(key)
        if sailing_id is None:
            what = f"sailing {booking.sailing!r}" if booking.sailing else \
                f"a sailing of route {booking.route!r} leaving at {booking.departure:%Y-%m-%d %H:%M} (local time)"
            rejects.add(Reject(line, "sailing", f"there is no {what[:120]}; import the network or GTFS first"))
            continue
        placed.append((line, digest, booking, sailing_id))
    return placed


def _sailings_by_code(session: Session, codes: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for page in pages(sorted(codes), 2000):
        found.update(session.execute(select(Sailing.code, Sailing.id).where(Sailing.code.in_(page))).all())
    return found


def _sailings_by_departure(session: Session, bookings: list[CheckedBooking]) -> dict[tuple, int]:
    """(route code, local departure) -> sailing id; a departure without an offset is the origin port's time."""
    routes = {row.code: row for row in session.execute(
        select(Route.code, Route.id, Port.timezone).join(Port, Port.id == Route.origin_port_id)
        .where(Route.code.in_({booking.route for booking in bookings})))}
    wanted: dict[tuple[int, datetime], tuple[str, datetime]] = {}
    for booking in bookings:
        route = routes.get(booking.route)
        if route is not None:
            moment = booking.departure if booking.departure.tzinfo else \
                booking.departure.replace(tzinfo=ZoneInfo(route.timezone))
            wanted[(route.id, moment.astimezone(UTC))] = (booking.route, booking.departure)
    found = {}
    for page in pages(sorted({moment for _, moment in wanted}), 2000):
        query = select(Sailing.route_id, Sailing.scheduled_departure, Sailing.id).where(
            Sailing.route_id.in_({route_id for route_id, _ in wanted}), Sailing.scheduled_departure.in_(page))
        for route_id, departure, sailing_id in session.execute(query):
            if (route_id, departure) in wanted:
                found[wanted[(route_id, departure)]] = sailing_id
    return found


def _write(session: Session, placed: list[tuple[int, str, CheckedBooking, int]], known: dict[str, Any],
           result: ImportResult) -> None:
    customers = {booking.customer["ref"]: booking.customer for _, _, booking, _ in placed}
    upsert(session, Customer.__table__, list(customers.values()), ("ref",))
    result.customers += len(customers)
    customer_ids = _ids(session, Customer, list(customers))
    rows = [{name: value for name, value in (booking.booking | {"customer_id": customer_ids[booking.customer["ref"]],
                                                                 "sailing_id": sailing_id}).items()
             if name in BOOKING_COLUMNS} for _, _, booking, sailing_id in placed]
    upsert(session, Booking.__table__, rows, ("ref",))
    booking_ids = _ids(session, Booking, [row["ref"] for row in rows])
    now = datetime.now(UTC)
    upsert(session, BookingImport.__table__,
           [{"booking_id": booking_ids[booking.booking["ref"]], "row_hash": digest, "party": booking.party,
             "commodity": booking.commodity, "imported_at": now} for _, digest, booking, _ in placed], ("booking_id",))
    before = [row._asdict() for row in known.values() if row.ref in booking_ids]
    result.overbooked += move_booked(session, before, rows)


def _ids(session: Session, model: type[Customer] | type[Booking], refs: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for page in pages(refs, 2000):
        found.update(session.execute(select(model.ref, model.id).where(model.ref.in_(page))).all())
    return found


class _Rejects:
    """The rejects file (CSV: line, field, reason), opened on the first reject; the first few kept for the CLI."""

    def __init__(self, path: str | Path | None, result: ImportResult) -> None:
        self.path, self.result, self.stream, self.writer = path, result, None, None

    def __enter__(self) -> _Rejects:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.stream is not None:
            self.stream.close()

    def add(self, reject: Reject) -> None:
        """Record one rejected row."""
        self.result.rejected += 1
        if len(self.result.first_rejects) < 5:
            self.result.first_rejects.append(reject)
        if self.path is None:
            return
        if self.writer is None:
            self.stream = open(self.path, "w", encoding="utf-8", newline="")
            self.writer = csv.writer(self.stream)
            self.writer.writerow(["line", "field", "reason"])
            self.result.rejects_file = str(self.path)
        self.writer.writerow([reject.line, reject.field, reject.reason])
