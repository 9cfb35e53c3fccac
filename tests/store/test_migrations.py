"""A database made by an earlier release upgrades in place, its rows kept: `notifier db upgrade` on SQLite copies
tables that others refer to (routes, by every sailing) without tripping over the foreign keys."""

from __future__ import annotations

import sqlite3

from notifier.store.migrate import current_revision, upgrade

FILLER = {"INT": 1, "BOOL": 0, "DOUB": 0.0, "FLOA": 0.0, "NUME": 0, "JSON": "[]", "DATE": "2026-12-08 10:00:00"}


def add_row(db: sqlite3.Connection, table: str, **given: object) -> None:
    """One row with the given values and a plain filler in every other required column."""
    values = dict(given)
    for _, name, kind, not_null, default, _ in db.execute(f"PRAGMA table_info({table})"):
        if not_null and default is None and name not in values:
            values[name] = next((v for prefix, v in FILLER.items() if kind.upper().startswith(prefix)), f"{name}-1")
    db.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
               list(values.values()))


def test_a_populated_database_at_revision_0002_upgrades_to_head(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0002")
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("PRAGMA foreign_keys=ON")
        add_row(db, "ports", id=1, locode="CNHAK")
        add_row(db, "ports", id=2, locode="CNHAI")
        add_row(db, "routes", id=1, code="QZ", origin_port_id=1, destination_port_id=2)
        add_row(db, "sailings", id=1, code="QZ-1", route_id=1, origin_port_id=1, destination_port_id=2,
                vessel_id=None)

    upgrade(url)

    assert current_revision(url) not in (None, "0002")
    with sqlite3.connect(tmp_path / "old.db") as db:
        assert db.execute("SELECT code, route_id FROM sailings").fetchall() == [("QZ-1", 1)]
        assert db.execute("SELECT code FROM routes").fetchall() == [("QZ",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
