"""Operator data in: `import gtfs` (a static ferry schedule as ports, routes and sailings)."""

from __future__ import annotations

import click

from notifier.commands.common import open_database, settings_from


@click.group("import")
def import_group() -> None:
    """Load schedules from other systems."""


@import_group.command("gtfs")
@click.argument("path", type=click.Path(exists=True))
@click.option("--today", default=None, help="First service day (YYYY-MM-DD; default today in the agency's zone).")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 366), help="Service days to load.")
@click.option("--country", default=None, help="ISO country for the ports (default: from the agency time zone).")
@click.option("--locode", "locodes", multiple=True, metavar="STOP=LOCODE", help="UN/LOCODE of a GTFS stop.")
@click.pass_context
def import_gtfs_command(ctx: click.Context, path: str, today: str | None, days: int, country: str | None,
                        locodes: tuple[str, ...]) -> None:
    """Load a static GTFS ferry schedule (zip or folder) as ports, routes and sailings."""
    from datetime import date

    from notifier.errors import UsageError
    from notifier.intake.gtfs import import_gtfs
    from notifier.store.db import transaction

    try:
        first_day = date.fromisoformat(today) if today else None
        mapping = dict(item.split("=", 1) for item in locodes)
    except ValueError:
        raise UsageError("--today must be YYYY-MM-DD and --locode STOP=LOCODE") from None
    with transaction(open_database(settings_from(ctx))) as session:
        counts = import_gtfs(session, path, today=first_day, days=days, country=country, locodes=mapping)
    click.echo(", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in counts.items()))
