"""Importing a mutated static GTFS zip either loads a usable timetable or stops with one FeedParseError.

The mutations start from the small harbour-ferry feed in tests/fixtures: cells swapped for hostile or wrong
values, rows dropped or repeated, columns lost, tables removed, bytes flipped. What an import writes must be
usable later: every port's time zone loads, every value fits its column (PostgreSQL refuses what SQLite keeps),
no text holds NUL, and a sailing never arrives before it leaves.
"""

from __future__ import annotations

import csv
import io
import tempfile
import zipfile
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.orm import Session

from notifier.errors import NotifierError
from notifier.intake.gtfs import import_gtfs
from notifier.store.models import Base, Port, Route, Sailing
from tests.fuzz.budget import fuzz
from tests.fuzz.hostile import hostile_text

HARBOUR_FERRY = Path(__file__).resolve().parents[1] / "fixtures/feeds/handmade/gtfs-static/harbour-ferry.zip"
MONDAY = date(2025, 9, 29)


def _tables() -> dict[str, list[list[str]]]:
    with zipfile.ZipFile(HARBOUR_FERRY) as archive:
        return {name: list(csv.reader(io.StringIO(archive.read(name).decode("utf-8"))))
                for name in archive.namelist()}


TABLES = _tables()
CELLS = st.one_of(
    hostile_text(max_pieces=2, long=300),
    st.sampled_from(["", "0", "-1", "4", "1200", "3", "1", "2", "99999999999999999999", "25:10:00", "47:59:59",
                     "48:00:00", "24:00:00", "-01:00:00", "7:00", "07:00:00:00", "٠٧:٠٠:٠٠", "20250230", "20251231",
                     "99991231", "00010101", "nan", "inf", "1e400", "-91", "181", "Asia/Hong_Kong", "Asia",
                     "Asia/../Asia/Tokyo", "Mars/Olympus", "a" * 300, "Europe/London", "Pacific/Kiritimati",
                     "HKHKG", "hkhkg", "XX0AB", "CEN", "MWO", "MW", "WK", "MW-0700", "x\x00y"]))
# Ids that tie the tables together: renaming one everywhere keeps the feed consistent but hostile.
IDS = sorted({row[0] for name in ("stops.txt", "routes.txt", "trips.txt", "calendar.txt") for row in TABLES[name][1:]}
             | {row[2] for row in TABLES["trips.txt"][1:]})
EXTRA_COLUMNS = ["stop_timezone", "locode", "parent_station", "route_long_name", "route_short_name"]
TABLE_MUTATION = st.tuples(st.sampled_from(sorted(TABLES)),
                           st.sampled_from(["cell", "cell", "rename", "rename", "add_column", "drop_row",
                                            "repeat_row", "drop_column", "drop_table", "bytes"]),
                           st.integers(0, 50), st.integers(0, 20), CELLS)


def mutated_feed(mutations) -> dict[str, bytes]:
    """The harbour-ferry tables with the mutations applied, as zip members."""
    tables = {name: [list(row) for row in rows] for name, rows in TABLES.items()}
    raw: dict[str, bytes] = {}
    for table, action, row_at, column_at, value in mutations:
        rows = tables.get(table)
        if rows is None:
            continue
        row = row_at % len(rows) if rows else 0
        if action == "cell" and rows and rows[row]:
            rows[row][column_at % len(rows[row])] = value
        elif action == "drop_row" and rows:
            del rows[row]
        elif action == "repeat_row" and rows:
            rows.extend([list(rows[row])] * (column_at + 1))
        elif action == "drop_column":
            for cells in rows:
                if cells:
                    del cells[column_at % len(cells)]
        elif action == "rename":
            old = IDS[row_at % len(IDS)]
            for cells in (cells for table_rows in tables.values() for cells in table_rows[1:]):
                cells[:] = [value if cell == old else cell for cell in cells]
        elif action == "add_column" and rows:
            rows[0].append(EXTRA_COLUMNS[column_at % len(EXTRA_COLUMNS)])
            for cells in rows[1:]:
                cells.append(value)
        elif action == "drop_table":
            del tables[table]
        elif action == "bytes":
            text = _csv(rows)
            at = (row_at * 37 + column_at) % (len(text) + 1)
            raw[table] = text[:at] + bytes([row_at * 5 % 256]) + text[at + 1:]
    return {name: raw.get(name) or _csv(rows) for name, rows in tables.items()}


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8", errors="surrogatepass")


def assert_fits_columns(session: Session) -> None:
    """Every string fits its column and holds no NUL, as PostgreSQL requires."""
    for model in (Port, Route, Sailing):
        for row in session.scalars(select(model)):
            for column in model.__table__.columns:
                value = getattr(row, column.key)
                if isinstance(column.type, String) and isinstance(value, str):
                    assert len(value) <= column.type.length, f"{model.__name__}.{column.key}: {len(value)} chars"
                    assert "\x00" not in value, f"{model.__name__}.{column.key} holds NUL"


@fuzz(80)
@given(mutations=st.lists(TABLE_MUTATION, min_size=1, max_size=5))
def test_mutated_gtfs_zip_imports_cleanly_or_is_refused(mutations):
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with tempfile.TemporaryDirectory() as folder, Session(engine) as session:
        path = Path(folder) / "feed.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name, body in mutated_feed(mutations).items():
                archive.writestr(name, body)
        try:
            counts = import_gtfs(session, path, today=MONDAY)
        except NotifierError as exc:
            assert "\n" not in str(exc)
            return
        assert counts["sailings"] == session.scalar(select(func.count()).select_from(Sailing))
        assert_fits_columns(session)
        for port in session.scalars(select(Port)):
            ZoneInfo(port.timezone)  # planning renders every notice in the port's zone
        for sailing in session.scalars(select(Sailing)):
            assert sailing.scheduled_departure.utcoffset() is not None
            assert sailing.scheduled_arrival >= sailing.scheduled_departure, sailing.code
    engine.dispose()


ZIP_BYTES = HARBOUR_FERRY.read_bytes()


@fuzz(60)
@given(body=st.one_of(st.binary(max_size=300),
                      st.lists(st.tuples(st.integers(0, len(ZIP_BYTES) - 1), st.integers(1, 255)), min_size=1,
                               max_size=4).map(lambda flips: _flipped(ZIP_BYTES, flips)),
                      st.integers(0, len(ZIP_BYTES)).map(lambda cut: ZIP_BYTES[:cut])))
def test_a_damaged_or_foreign_zip_is_refused(body):
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with tempfile.TemporaryDirectory() as folder, Session(engine) as session:
        path = Path(folder) / "feed.zip"
        path.write_bytes(body)
        try:
            import_gtfs(session, path, today=MONDAY)
        except NotifierError as exc:
            assert "\n" not in str(exc)
    engine.dispose()


def _flipped(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for at, mask in flips:
        buffer[at] ^= mask
    return bytes(buffer)
