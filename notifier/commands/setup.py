"""Getting started and keeping house: `demo`, `db upgrade`, `db check-contacts`, `config show`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import click

from notifier.commands.common import echo_lines, open_database, settings_from


@click.command()
@click.option("--db", "db_path", default="notifier.db", show_default=True, help="SQLite file to create or reuse.")
@click.option("--outbox", "outbox", default="outbox", show_default=True, help="Folder for the file channel.")
@click.option("--bookings", default=3000, show_default=True, type=click.IntRange(1, 2_000_000),
              help="How many bookings to generate (first run only).")
@click.option("--feed", "feed_path", default=None, help="Replay this CAP file instead of the bundled warning.")
@click.pass_context
def demo(ctx: click.Context, db_path: str, outbox: str, bookings: int, feed_path: str | None) -> None:
    """Build a demo network, replay a typhoon warning through the whole pipeline, and show what was sent."""
    from notifier.ops import demo as demo_run

    database_url = os.environ.get("NOTIFIER_DATABASE_URL") if db_path == "notifier.db" else None
    settings = settings_from(ctx, database_url=database_url or f"sqlite:///{db_path}", outbox_dir=outbox)
    echo_lines(demo_run.summary_lines(demo_run.run(settings, bookings, feed_path)))


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the database schema to the newest revision."""
    from notifier.store.migrate import current_revision, upgrade

    settings = settings_from(ctx)
    upgrade(settings.database_url)
    click.echo(f"database at revision {current_revision(settings.database_url)}")


@db.command("check-contacts")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Check with this many processes (the check is CPU-bound).")
@click.pass_context
def db_check_contacts(ctx: click.Context, processes: int) -> None:
    """Check and store every customer's phone and email now (after a booking import), so that a big broadcast
    does not have to; customers whose stored check is current are skipped."""
    from notifier.planning.contacts import check_contacts

    checked = check_contacts(open_database(settings_from(ctx)), processes=processes)
    click.echo(f"checked the contacts of {checked} customer(s); the others were already current")


@click.group()
def config() -> None:
    """Configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Every setting in effect, secrets masked (passwords and tokens inside URLs too)."""
    from notifier.ops.console import config_lines
    from notifier.store.settings import settings_shown

    shown = settings_shown(settings_from(ctx))
    if as_json:
        shown["feeds"] = [asdict(source) for source in shown["feeds"]]
        click.echo(json.dumps(shown, indent=2, default=str))
    else:
        echo_lines(config_lines(shown))
