"""The outbox: the only code that inserts notification rows.

Planning, corrections, fallbacks, confirmations, reminders, satisfaction requests and ops emails all put their
messages here through `add`, so every notice passes the same door: the dedup key decides (a notice already in
the outbox is skipped, never doubled, whichever stage or person asked for it) and the count of new rows is what
the caller reports. Moving a notice along its lifecycle afterwards is delivery's work (store/status.py holds
the words and the moves).

Two write paths, one behaviour: a few rows (a confirmation, a fallback) go through one `INSERT ... ON CONFLICT
DO NOTHING`; many rows (a typhoon's chunk) through the driver's fastest path (`store.bulk.bulk_insert`:
executemany on SQLite, COPY through a staging table on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from notifier.store.bulk import bulk_insert
from notifier.store.db import insert_ignore
from notifier.store.models import Notification

# The columns a planned notice fills, in the order the bulk paths build their rows.
NOTICE_COLUMNS = ("dedup_key", "booking_id", "customer_id", "disruption_id", "revision", "broadcast_id", "channel",
                  "recipient", "language", "template", "purpose", "subject", "body_text", "body_html", "segments",
                  "safety_critical", "status", "priority", "attempts")
# Below this many rows one INSERT statement beats COPY's staging table on PostgreSQL (and is no slower on SQLite).
FEW = 64


def add(session: Session, rows: Sequence[tuple] | Sequence[Mapping[str, Any]],
        columns: tuple[str, ...] | None = NOTICE_COLUMNS, constants: Mapping[str, Any] | None = None) -> int:
    """Put notices in the outbox in the caller's transaction; returns how many were new (a notice whose dedup key
    is already there is skipped). Rows are tuples in `columns` order, or mappings (then `columns` is None and
    every mapping names the same columns); `constants` are columns with one value for every row."""
    if not rows:
        return 0
    if columns is None:
        columns = tuple(rows[0])
        rows = [tuple(row[name] for name in columns) for row in rows]
    if len(rows) < FEW:
        values = [dict(zip(columns, row), **(constants or {})) for row in rows]
        table = Notification.__table__
        return max(session.execute(insert_ignore(table, session), values).rowcount, 0)
    return max(bulk_insert(session, Notification.__table__, columns, list(rows), skip_duplicates=True,
                           constants=dict(constants or {})), 0)
