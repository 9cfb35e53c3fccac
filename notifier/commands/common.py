"""What every command shares: its settings and database, the option types that refuse bad input at the door
(ids, times), the --operator option, the yes/no question, and the warnings about the environment.

SQLAlchemy and the stages are imported inside the functions that use them, here and in every command module: the
command line starts for every action, and `--help` or a refused option should not wait for the whole stack."""

from __future__ import annotations

import difflib
import os
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from typing import TYPE_CHECKING

import click

from notifier.errors import UsageError
from notifier.store.settings import Settings, load_settings, mask_url

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

# Row ids are 64-bit integers in every database we run on; a bigger number names nothing.
ROW_ID = click.IntRange(1, 2**63 - 1)
# Times outside these years are typing mistakes, and some would overflow the date arithmetic downstream.
EARLIEST_YEAR, LATEST_YEAR = 1970, 2200
# NOTIFIER_* variables that are not settings but are read all the same (by the CLI, its tests and tools).
OTHER_VARIABLES = ("NOTIFIER_CONFIG", "NOTIFIER_DEBUG", "NOTIFIER_LOG_LEVEL", "NOTIFIER_TEST_POSTGRES_URL",
                   "NOTIFIER_SHARED_FEEDS", "NOTIFIER_FUZZ_EXAMPLES", "NOTIFIER_FUZZ_RANDOM",
                   "NOTIFIER_FUZZ_ARTIFACTS")

operator_option = click.option("--operator", envvar="NOTIFIER_OPERATOR", default=None,
                               help="Who is acting (recorded in the audit log); default $NOTIFIER_OPERATOR.")


class IsoTime(click.ParamType):
    """An ISO 8601 time, refused at parse time (exit 2) when it does not read or lies outside 1970..2200; the
    command gets the text as typed, because the stage decides which zone a time without an offset is in."""

    name = "time"

    def __init__(self, offset_required: bool = False) -> None:
        self.offset_required = offset_required

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The text, once it reads as a sane ISO 8601 time."""
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2026-09-14T08:00+08:00)", param, ctx)
        if self.offset_required and moment.tzinfo is None:
            self.fail(f"{value!r} has no UTC offset: write it as 2026-09-14T08:00+08:00 or ...Z", param, ctx)
        if not EARLIEST_YEAR <= moment.year <= LATEST_YEAR:
            self.fail(f"{value!r} is outside the years {EARLIEST_YEAR} to {LATEST_YEAR}", param, ctx)
        return value


def settings_from(ctx: click.Context, **overrides: object) -> Settings:
    """Settings for this invocation (the --config option on the group, then overrides), with a database URL that
    can be opened; remembers where the database is for error messages and the 'created' notice."""
    settings = load_settings(ctx.obj.get("config") if ctx.obj else None, **overrides)
    check_database_url(settings.database_url)
    note_database(ctx, settings.database_url)
    return settings


def check_database_url(url: str) -> None:
    """Refuse, before anything is written, a database URL that SQLAlchemy cannot take or a SQLite file whose folder
    does not exist."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if url.startswith("postgres:"):
        raise UsageError(f"database URL {mask_url(url)}: use postgresql+psycopg:// (SQLAlchemy does not take "
                         "postgres://)")
    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise UsageError(f"database URL {mask_url(url)} cannot be used: {exc}") from None
    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"the folder {path.parent} does not exist (database {path})")


def sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite database file; None for an in-memory or non-SQLite database."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite") else None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def database_location(url: str) -> str:
    """Where the database is, as error messages show it: a SQLite file's absolute path, else the masked URL."""
    path = sqlite_file(url)
    return str(path) if path is not None else mask_url(url)


def note_database(ctx: click.Context, url: str) -> None:
    """Remember where the database is; when this command creates a new SQLite file, say where on the way out."""
    root = ctx.find_root()
    root.ensure_object(dict)
    if "database" in root.obj:
        return
    root.obj["database"] = database_location(url)
    path = sqlite_file(url)
    if path is None or path.exists():
        return

    def say_if_created() -> None:
        if path.exists():
            click.echo(f"notifier: created a new database at {path}", err=True)

    root.call_on_close(say_if_created)


def open_database(settings: Settings) -> sessionmaker[Session]:
    """A session factory on the configured, migrated database; a SQLite file that does not exist is refused
    instead of being created empty (a command run in the wrong folder)."""
    from notifier.store.db import make_engine, require_schema, session_factory

    require_database_file(settings)
    engine = make_engine(settings.database_url)
    require_schema(engine)
    return session_factory(engine)


def require_database_file(settings: Settings) -> None:
    """Refuse a SQLite database file that does not exist, before anything opens (and so creates) it empty."""
    from notifier.store.db import DatabaseError

    path = sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        raise DatabaseError(f"no database at {path}: run the command where the database is, point "
                            "NOTIFIER_DATABASE_URL at it, or create it with `notifier db upgrade`")


def warn_unknown_environment(environ: dict[str, str] | os._Environ[str]) -> None:
    """One line on stderr per NOTIFIER_* variable that nothing reads, with the nearest known name: a mistyped
    setting otherwise does nothing, silently."""
    known = [f"NOTIFIER_{f.name.upper()}" for f in fields(Settings)] + list(OTHER_VARIABLES)
    for name in sorted(environ):
        if name.startswith("NOTIFIER_") and name not in known:
            nearest = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {nearest[0]}?" if nearest else ""
            click.echo(f"notifier: warning: {name} is not a setting and is ignored{hint}", err=True)


def confirmed(question: str, yes: bool) -> bool:
    """--yes answers for the user; otherwise ask (no answer, e.g. no terminal, is no)."""
    if yes:
        return True
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        click.echo("")
        return False


def echo_lines(lines: list[str]) -> None:
    """Print console lines."""
    for line in lines:
        click.echo(line)
