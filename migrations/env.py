"""Alembic environment: the URL comes from notifier's settings (or the caller's Config), never from an ini file."""

from alembic import context
from sqlalchemy import pool

from notifier.store.db import make_engine
from notifier.store.models import Base

config = context.config
target_metadata = Base.metadata
# Tables other libraries own in the same database (APScheduler's job store), which Alembic must leave alone.
FOREIGN_TABLES = {"apscheduler_jobs"}


def include_object(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
    return not (type_ == "table" and name in FOREIGN_TABLES)


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # A batch migration copies a table and drops the old one; with foreign keys enforced SQLite refuses to
            # drop a table others refer to (routes, by every sailing). Alembic's advice: switch them off for the
            # migration (outside any transaction), as SQLite's own ALTER TABLE procedure does.
            # On the driver's own connection: SQLAlchemy would BEGIN first, and inside a transaction the pragma is
            # a no-op.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        _run(connection)
    engine.dispose()


def _run(connection) -> None:  # noqa: ANN001
    # render_as_batch lets later migrations ALTER tables on SQLite too.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
