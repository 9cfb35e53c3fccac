"""The rules: `rules check` (validate every rule file) and `rules test` (what the rules make of a feed file)."""

from __future__ import annotations

import click

from notifier.commands.common import IsoTime, echo_lines, settings_from


@click.group()
def rules() -> None:
    """Check and try the rules."""


@rules.command("check")
@click.pass_context
def rules_check(ctx: click.Context) -> None:
    """Validate every rule file; print the rules loaded."""
    from pathlib import Path

    from notifier.ops.console import rule_set_lines
    from notifier.rules.load import load_rule_set
    from notifier.store.paths import rules_dir

    settings = settings_from(ctx)
    echo_lines(rule_set_lines(load_rule_set([rules_dir(), *map(Path, settings.rules_dirs)])))


@rules.command("test")
@click.argument("feed_file")
@click.option("--at", "at", default=None, type=IsoTime(offset_required=True),
              help="Evaluate as if it were this moment (ISO 8601 with offset); default now. Sailings that left "
              "more than 6 h before it are not considered.")
@click.option("--db", "db_path", default=None, help="SQLite file to read sailings and bookings from (e.g. the "
              "demo's notifier.db); default: the configured database.")
@click.option("--format", "feed_format", default=None,
              help="cap, atom, nws, gtfs_rt, dcsa, port_status or hko_warnings (default: sniffed from the content).")
@click.pass_context
def rules_test(ctx: click.Context, feed_file: str, at: str | None, db_path: str | None,
               feed_format: str | None) -> None:
    """Show, changing nothing, what the rules make of a feed file: each observation, the rules it matched and
    why (or why not), the sailings, bookings and recipients it would reach, and the entitlements offered."""
    from notifier.ops.pipeline import try_feed_file

    settings = settings_from(ctx, database_url=f"sqlite:///{db_path}" if db_path else None)
    echo_lines(try_feed_file(settings, feed_file, at, feed_format))
