"""Engine and session factory: SQLite (WAL) by default, PostgreSQL by URL; plus the few dialect differences."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from notifier.errors import NotifierError
from notifier.logs import guard_library_loggers


class DatabaseError(NotifierError):
    """The database is missing, unreachable or not migrated."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout, PostgreSQL a checked pool."""
    # Statement parameters and result rows are phone numbers, email addresses and names: keep them out of SQL
    # logging (at any level) and out of the text of database errors, which reach logs and the CLI.
    kwargs.setdefault("hide_parameters", True)
    guard_library_loggers()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            # pysqlite's own transaction handling defers BEGIN; we issue it ourselves so that
            # a writer takes the lock at BEGIN (IMMEDIATE) instead of failing on upgrade later.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if not url.endswith(":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            # Writers take the write lock up front (and wait for it); readers never block anyone under WAL.
            write = conn.get_execution_options().get("notifier_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)  # a connection the server dropped is replaced, not fatal
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


def is_postgres(bind: Engine | Session) -> bool:
    """True when the bind is PostgreSQL (row locks with SKIP LOCKED, advisory locks)."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name == "postgresql"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work that writes: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        session.connection(execution_options={"notifier_write": True})
        yield session


def pages(values: list[Any], size: int) -> list[list[Any]]:
    """`values` cut into lists of at most `size`: IN lists stay under every engine's parameter limit (and
    PostgreSQL plans a short list better than a huge one)."""
    return [values[start:start + size] for start in range(0, len(values), size)]


def insert_ignore(table: Any, bind: Engine | Session):  # noqa: ANN201
    """An INSERT that skips rows violating a unique key (ON CONFLICT DO NOTHING on both engines)."""
    if is_postgres(bind):
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    # psycopg reports -1 rows for an INSERT unless asked to keep the count; callers count what was new.
    return insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)


def require_schema(engine: Engine) -> None:
    """Refuse to run against a database that has not been migrated."""
    try:
        tables = set(inspect(engine).get_table_names())
    except OperationalError as exc:
        raise DatabaseError(f"cannot open the database: {exc.orig}") from None
    if "sailings" not in tables:
        raise DatabaseError("the database has no notifier tables; run `notifier db upgrade` first")

