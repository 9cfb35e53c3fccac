"""Bulk writes for the importers: insert-or-update by a unique key in one statement per table and chunk, on
SQLite and PostgreSQL alike, and the capacity counters that follow the bookings written."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table, bindparam, case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from notifier.store.models import SailingCapacity
from notifier.store.status import CONFIRMED

# Statuses only notifier sets (a customer's choice was carried out): an import never overwrites them.
DECIDED_HERE = ("rebooked", "refund")


def upsert(session: Session, table: Table, rows: list[dict[str, Any]], key: tuple[str, ...]) -> None:
    """Insert the rows, or update every other given column where `key` already exists (one executemany)."""
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    columns = [name for name in rows[0] if name not in key]
    if columns:
        statement = statement.on_conflict_do_update(index_elements=list(key),
                                                    set_={name: statement.excluded[name] for name in columns})
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(key))
    session.execute(statement, rows)


def occupied(booking: Any) -> Counter:
    """(sailing id, space class) -> places a booking row takes while confirmed (as planning.offers.needs counts)."""
    if booking["status"] != CONFIRMED:
        return Counter()
    places = booking["teu"] if booking["kind"] == "cargo" else booking["party_size"]
    sailing = booking["sailing_id"]
    taken = Counter({(sailing, booking["space_class"]): places})
    taken[(sailing, "vehicle")] += booking["vehicles"]
    taken[(sailing, "reefer")] += booking["reefer_plugs"]
    return taken


def move_booked(session: Session, before: Iterable[Any], after: Iterable[Any]) -> int:
    """Move the `booked` counters from what the bookings took before to what they take now; returns how many
    sailing classes the reservation system booked beyond their capacity (that capacity is raised to fit: the
    reservation system, not notifier, decides who is on board)."""
    delta: Counter = Counter()
    for booking in after:
        delta.update(occupied(booking))
    for booking in before:
        delta.subtract(occupied(booking))
    changes = [{"b_sailing": sailing, "b_class": space, "b_delta": places}
               for (sailing, space), places in delta.items() if places]
    if not changes:
        return 0
    table = SailingCapacity.__table__
    current = session.execute(select(table.c.sailing_id, table.c.space_class, table.c.capacity, table.c.booked,
                                     table.c.held).where(table.c.sailing_id.in_({s for s, _ in delta})))
    overbooked = sum(1 for row in current if row.booked + delta[(row.sailing_id, row.space_class)] + row.held
                     > row.capacity)
    grown = table.c.booked + bindparam("b_delta")
    session.execute(update(table).where(table.c.sailing_id == bindparam("b_sailing"),
                                        table.c.space_class == bindparam("b_class"))
                    .values(capacity=case((grown + table.c.held > table.c.capacity, grown + table.c.held),
                                          else_=table.c.capacity),
                            booked=case((grown < 0, 0), else_=grown)),
                    changes)
    return overbooked
