"""`notifier import ...`: the operator's network, GTFS schedules and bookings in from files.

The commands only parse options, call notifier.intake and print what was done; the formats are documented in
schemas/README.md.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import replace
from datetime import date
from pathlib import Path

import click

from notifier.commands.common import open_database, settings_from
from notifier.errors import UsageError
from notifier.intake.bookings import ImportResult, import_bookings
from notifier.intake.gtfs import import_gtfs
from notifier.intake.mapping import load_mapping
from notifier.intake.network import import_network, load_network_file
from notifier.planning.contacts import check_contacts
from notifier.store.db import transaction


@click.group("import")
def import_group() -> None:
    """Load the operator's network, schedules and bookings from files."""


@import_group.command("network")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def import_network_command(ctx: click.Context, path: str) -> None:
    """Load operators, ports, vessels (with capacities), routes (with jurisdiction) and sailings from YAML."""
    network = load_network_file(path)
    with transaction(open_database(settings_from(ctx))) as session:
        counts, kept = import_network(session, network)
    parts = [f"{section}: {counts[f'{section}_created']} created, {counts[f'{section}_updated']} updated"
             for section in ("operators", "ports", "vessels", "routes", "sailings")]
    click.echo("; ".join(parts) + (f"; sailings removed: {counts['sailings_removed']}"
                                   if counts["sailings_removed"] else ""))
    if kept:
        click.echo(f"kept {len(kept)} sailing(s) the file no longer lists, because bookings, offers or disruptions "
                   f"refer to them (cancel or rebook them first): {', '.join(kept[:10])}"
                   f"{', ...' if len(kept) > 10 else ''}")


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
    try:
        first_day = date.fromisoformat(today) if today else None
        mapping = dict(item.split("=", 1) for item in locodes)
    except ValueError:
        raise UsageError("--today must be YYYY-MM-DD and --locode STOP=LOCODE") from None
    warnings: list[str] = []
    with transaction(open_database(settings_from(ctx))) as session:
        counts = import_gtfs(session, path, today=first_day, days=days, country=country, locodes=mapping,
                             warnings=warnings)
    click.echo(", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in counts.items()))
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@import_group.command("bookings")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--map", "mapping_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Column mapping file (YAML) for a reservation system's own export.")
@click.option("--format", "file_format", type=click.Choice(["csv", "jsonl"]), default=None,
              help="The file's format (default: the mapping's, else from the extension).")
@click.option("--dry-run", is_flag=True, help="Check every row and report; write nothing (but the rejects file).")
@click.option("--rejects", "rejects_path", default=None,
              help="Where to write rejected rows (default: FILE.rejects.csv).")
@click.option("--chunk", default=5000, show_default=True, type=click.IntRange(100, 100_000),
              help="Rows per transaction.")
@click.option("--check-contacts/--no-check-contacts", "check_contacts_after", default=True, show_default=True,
              help="Check and store the customers' phones and emails afterwards, as planning would.")
@click.pass_context
def import_bookings_command(ctx: click.Context, path: str, mapping_path: str | None, file_format: str | None,
                            dry_run: bool, rejects_path: str | None, chunk: int, check_contacts_after: bool) -> None:
    """Upsert bookings and their customers by reference from CSV or JSON Lines (schemas/booking.schema.json)."""
    mapping = load_mapping(mapping_path)
    mapping = replace(mapping, format=file_format) if file_format else mapping
    factory = open_database(settings_from(ctx))
    size = Path(path).stat().st_size
    bar = click.progressbar(length=size, label="importing", file=sys.stderr) if sys.stderr.isatty() else nullcontext()
    with bar as shown:
        done = [0]

        def progress(position: int) -> None:
            if shown is not None:
                shown.update(position - done[0])
                done[0] = position

        result = import_bookings(factory, path, mapping, dry_run=dry_run, chunk=chunk, progress=progress,
                                 rejects_path=rejects_path or f"{path}.rejects.csv")
    _report(result)
    if check_contacts_after and not dry_run and (result.created or result.updated):
        checked = check_contacts(factory)
        click.echo(f"contacts checked: {checked} customer(s)")


def _report(result: ImportResult) -> None:
    verb = "would be " if result.dry_run else ""
    click.echo(f"{'dry run, nothing written: ' if result.dry_run else ''}{result.rows} row(s): "
               f"{result.created} {verb}created, {result.updated} {verb}updated, {result.unchanged} unchanged, "
               f"{result.rejected} rejected")
    if result.kept:
        click.echo(f"{result.kept} booking(s) kept as notifier left them (rebooked or refunded after a disruption)")
    if result.overbooked:
        click.echo(f"{result.overbooked} sailing class(es) booked beyond their capacity: capacity raised to fit")
    for reject in result.first_rejects:
        click.echo(f"line {reject.line}{', ' + reject.field if reject.field else ''}: {reject.reason}", err=True)
    if result.rejects_file:
        click.echo(f"rejected rows, with line, field and reason: {result.rejects_file}", err=True)
