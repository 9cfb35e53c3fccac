"""Bulk reads and writes that speak to the database driver directly, per engine: what planning 100,000 notices
needs and the ORM would make slow.

- `bulk_insert`: many rows in one executemany (SQLite) or COPY (PostgreSQL), values converted by the columns' own
  types, each distinct value once;
- `read_where_in`, `rows_where_in`: plain `column IN (...)` reads in pages, sent to the driver as they are (the
  first converts what it reads by the columns' own types, each distinct value once);
- `defer_checkpoint`: SQLite's settings for a planning transaction (no WAL checkpoint at its commit).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Table, event
from sqlalchemy.orm import Session

from notifier.store.db import pages

PAGE = 5000  # ids per IN list: one statement for a whole chunk, well under every engine's parameter limit


def read_where_in(session: Session, columns: list[Column], source: str, column: str, values: list[Any]
                  ) -> list[tuple]:
    """The rows of `columns` from `source` (a table, or tables joined) whose `column` is one of `values`: read by
    the driver, values converted by the columns' own types, each distinct value once."""
    connection = session.connection()
    dialect = connection.dialect
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    selected = ", ".join(f"{column.table.name}.{column.name}" for column in columns)
    found: list[tuple] = []
    processors = None
    for page in pages(values, PAGE):
        result = connection.exec_driver_sql(
            f"SELECT {selected} FROM {source} WHERE {column} IN ({', '.join([mark] * len(page))})", tuple(page))
        if processors is None:
            processors = [(index, processor) for index, (column, described) in
                          enumerate(zip(columns, result.cursor.description, strict=True))
                          if (processor := column.type.dialect_impl(dialect).result_processor(
                              dialect, described[1])) is not None]
        rows = result.fetchall()
        if rows:
            found += _converted_result(rows, processors)
    return found


def _converted_result(rows: list[Any], processors: list[tuple[int, Any]]) -> list[tuple]:
    # Column by column, as _converted does for writes: a column's distinct values converted once (fares, flags,
    # channel lists repeat), a column of unique values (contact checks) value by value; lists and documents are
    # copied so that no two rows share one.
    columns: list[Any] = list(zip(*rows, strict=True))
    for index, processor in processors:
        column = columns[index]
        try:
            distinct = set(column)
        except TypeError:  # the driver gave documents already (unhashable): value by value
            distinct = None
        if distinct is None or 2 * len(distinct) > len(column):
            converted = [None if value is None else processor(value) for value in column]
        else:
            known = {value: None if value is None else processor(value) for value in distinct}
            converted = list(map(known.__getitem__, column))
            if any(isinstance(value, list | dict) for value in known.values()):
                converted = [_copy(value) if isinstance(value, list | dict) else value for value in converted]
        columns[index] = converted
    return list(zip(*columns, strict=True))


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value)


def rows_where_in(session: Session, query: str, column: str, values: list[Any]) -> list[tuple]:
    """`query` (a plain column list) with `column IN (...)` over many values, sent to the driver as it is:
    SQLAlchemy would compile a fresh statement with one named parameter per value, for every page of every chunk."""
    connection = session.connection()
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    rows: list[tuple] = []
    for page in pages(values, PAGE):
        rows += connection.exec_driver_sql(f"{query} WHERE {column} IN ({', '.join([mark] * len(page))})",
                                           tuple(page)).fetchall()
    return rows


# SQLite, while planning: an 8 MB page cache (64 MB was no faster for the 150,000 notices of bench_plan, and the
# pages stay in the writer's memory), and no WAL checkpoint at the chunk's commit: checkpointing while 100,000
# notices are written copies every page twice and halves the speed. The next ordinary commit (dispatcher, watcher,
# CLI) checkpoints as usual; so does the connection itself once it is back in the pool, where its own settings are
# restored.
PLANNING_PRAGMAS = {"cache_size": -8192, "wal_autocheckpoint": 0}


def defer_checkpoint(session: Session) -> None:
    """On SQLite, give this transaction's connection the planning settings until it goes back to the pool."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    pooled = connection.connection
    if "notifier_restore" in pooled.info:
        return
    engine = connection.engine
    if not event.contains(engine, "checkin", _restore_pragmas):
        event.listen(engine, "checkin", _restore_pragmas)
    driver = pooled.driver_connection
    pooled.info["notifier_restore"] = {name: driver.execute(f"PRAGMA {name}").fetchone()[0]
                                       for name in PLANNING_PRAGMAS}
    for name, value in PLANNING_PRAGMAS.items():
        driver.execute(f"PRAGMA {name} = {int(value)}")


def _restore_pragmas(dbapi_connection: Any, record: Any) -> None:
    saved = record.info.pop("notifier_restore", None)
    for name, value in (saved or {}).items():
        dbapi_connection.execute(f"PRAGMA {name} = {int(value)}")


def bulk_insert(session: Session, table: Table, columns: tuple[str, ...], rows: list[tuple],
                skip_duplicates: bool = False, constants: dict[str, Any] | None = None) -> int:
    """Write many rows at once, values converted by the columns' own types (each distinct value once); returns
    how many were inserted. `skip_duplicates`: a row whose unique key exists is skipped (ON CONFLICT DO NOTHING);
    `constants`: columns with one value for every row (a chunk's creation time), added here.
    SQLite: the driver's executemany. PostgreSQL: COPY (through a temporary table when skipping duplicates)."""
    if not rows:
        return 0
    connection = session.connection()
    dialect = connection.dialect
    columns = (*columns, *(constants or {}))
    processors = [(index, processor) for index, name in enumerate(columns)
                  if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None]
    if processors or constants:
        rows = _converted(rows, processors, list((constants or {}).values()))
    names = ", ".join(columns)
    if dialect.name == "postgresql":
        return _copy_in(connection.connection.driver_connection, table.name, names, rows, skip_duplicates)
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO {table.name} ({names}) VALUES ({', '.join([mark] * len(columns))})"
           + (" ON CONFLICT DO NOTHING" if skip_duplicates else ""))
    return connection.exec_driver_sql(sql, rows).rowcount


def _copy_in(driver: Any, table: str, names: str, rows: list[tuple], skip_duplicates: bool) -> int:
    # COPY moves 100,000 rows in a fraction of what as many INSERTs take, even pipelined; it cannot skip a
    # duplicate, so those rows go through a temporary table and one INSERT ... SELECT ... ON CONFLICT DO NOTHING.
    with driver.cursor() as cursor:
        target = table
        if skip_duplicates:
            target = f"planning_{table}"
            cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {target} "
                           f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        with cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if not skip_duplicates:
            return len(rows)
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {target} ON CONFLICT DO NOTHING")
        inserted = cursor.rowcount
        cursor.execute(f"TRUNCATE {target}")
        return inserted


def _converted(rows: list[tuple], processors: list[tuple[int, Any]], constants: list[Any]) -> list[tuple]:
    # Column by column: the converted columns are a few (times, amounts, flags, small documents) and their values
    # repeat across a chunk (a chunk's times are one or two moments), so each distinct value is converted once and
    # the rest is done by dict lookups and zip, at C speed.
    columns = list(zip(*rows, strict=True)) + [(value,) * len(rows) for value in constants]
    for index, processor in processors:
        columns[index] = _converted_column(columns[index], processor)
    return list(zip(*columns, strict=True))


def _converted_column(values: tuple, processor: Any) -> list[Any]:
    try:
        distinct = set(values)
    except TypeError:  # JSON documents (dicts): by their items, converted once per distinct document
        known: dict[Any, Any] = {None: None}
        converted = []
        for value in values:
            key = tuple(value.items()) if isinstance(value, dict) else value
            try:
                if key not in known:
                    known[key] = processor(value)
                converted.append(known[key])
            except TypeError:  # a document holding lists: converted on its own
                converted.append(processor(value))
        return converted
    known = {value: None if value is None else processor(value) for value in distinct}
    return list(map(known.__getitem__, values))
