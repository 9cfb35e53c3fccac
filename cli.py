"""The `notifier` command line. Thin on purpose: parse arguments, call notifier.*, print.

A user error (bad file, unknown sailing, missing template value ...) prints one line on stderr and exits
non-zero; it never shows a traceback. Exit codes: 1 general, 2 bad input, 3 template, 4 approval needed,
70 internal error (set NOTIFIER_DEBUG=1 to see its traceback).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path

import click

from notifier import NotifierError
from notifier.config import load_settings

INTERNAL_ERROR = 70


def friendly_errors(command):  # noqa: ANN001, ANN201
    """Turn NotifierError into one clear line and its exit code; anything else into 'internal error'."""

    @functools.wraps(command)
    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return command(*args, **kwargs)
        except NotifierError as exc:
            click.echo(f"notifier: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("notifier: interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence for a duty officer's terminal
            if os.environ.get("NOTIFIER_DEBUG"):
                traceback.print_exc()
            click.echo(f"notifier: internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                       if str(exc) else f"notifier: internal error: {type(exc).__name__}", err=True)
            sys.exit(INTERNAL_ERROR)

    return run


def settings_from(ctx: click.Context, **overrides):  # noqa: ANN003, ANN201
    """Settings for this invocation (the --config option on the group, then overrides)."""
    return load_settings(ctx.obj.get("config") if ctx.obj else None, **overrides)


@click.group()
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Path to notifier.toml (default: $NOTIFIER_CONFIG or ./notifier.toml).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """notifier: tell every passenger and shipper on a disrupted sailing what happened and what they may do."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path


# --- demo ---------------------------------------------------------------------------------------------------------

@main.command()
@click.option("--db", "db_path", default="notifier.db", show_default=True, help="SQLite file to create or reuse.")
@click.option("--outbox", "outbox", default="outbox", show_default=True, help="Folder for the file channel.")
@click.option("--bookings", default=3000, show_default=True, type=click.IntRange(1, 2_000_000),
              help="How many bookings to generate (first run only).")
@click.option("--feed", "feed_path", default=None, help="Replay this CAP file instead of the bundled warning.")
@click.pass_context
@friendly_errors
def demo(ctx: click.Context, db_path: str, outbox: str, bookings: int, feed_path: str | None) -> None:
    """Build a demo network, replay a typhoon warning through the whole pipeline, and show what was sent."""
    from notifier import demo as demo_module

    database_url = os.environ.get("NOTIFIER_DATABASE_URL") if db_path == "notifier.db" else None
    settings = settings_from(ctx, database_url=database_url or f"sqlite:///{db_path}", outbox_dir=outbox)
    summary = demo_module.run(settings, bookings, feed_path)
    print_demo_summary(summary)


def print_demo_summary(summary) -> None:  # noqa: ANN001
    """The demo's report: alert -> sailings -> bookings -> notifications -> outbox."""
    if summary.network:
        n = summary.network
        click.echo(f"Built demo network: {n.ports} ports, {n.sailings} sailings, {n.bookings} bookings "
                   f"({n.customers} customers), around {n.epoch:%Y-%m-%d %H:%M} UTC.")
    else:
        click.echo("Reusing the demo network already in this database.")
    for observation in summary.observations:
        click.echo(f"Alert: {observation.headline or observation.event or observation.external_id} "
                   f"[{observation.msg_type}, {observation.severity or 'no severity'}] from {observation.source}")
    if summary.duplicates and not summary.new_items:
        click.echo("This alert was already processed: nothing new to plan or send.")
    if not summary.sailings and summary.new_items:
        click.echo("Nothing matched: no rule selected a demo sailing.")
        for reason in sorted(set(summary.near_misses))[:5]:
            click.echo(f"  - {reason}")
    if summary.sailings:
        click.echo(f"Sailings suspended: {len(summary.sailings)} ({', '.join(summary.sailings[:4])}"
                   f"{', ...' if len(summary.sailings) > 4 else ''})")
        click.echo(f"Bookings affected: {summary.bookings_affected}")
        parts = ", ".join(f"{channel} {language}: {count}"
                          for (channel, language), count in sorted(summary.by_channel_language.items()))
        click.echo(f"Notifications planned: {summary.notifications_planned} ({parts})")
        if summary.unreachable:
            click.echo(f"Without a usable contact on some channel: {len(summary.unreachable)} "
                       f"(see `notifier followups list` once available, or the preview)")
    click.echo(f"Sent: {summary.sent}, failed: {summary.failed}, retrying later: {summary.retried} "
               f"(sms via {summary.channel_names.get('sms')}, email via {summary.channel_names.get('email')})")
    click.echo(f"Outbox: {summary.outbox}   Database: {summary.database}")
    for language, body in summary.samples.items():
        click.echo(f"\nSample SMS ({language}):\n  " + body.replace("\n", "\n  "))


# --- database -------------------------------------------------------------------------------------------------------

@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
@friendly_errors
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the database schema to the newest revision."""
    from notifier.migrate import current_revision, upgrade

    settings = settings_from(ctx)
    upgrade(settings.database_url)
    click.echo(f"database at revision {current_revision(settings.database_url)}")


# --- feeds ----------------------------------------------------------------------------------------------------------

@main.group()
def feeds() -> None:
    """Read and watch feeds."""


@feeds.command("inspect")
@click.argument("path")
@click.option("--format", "feed_format", default=None, help="cap (default: sniffed from the content).")
@friendly_errors
def feeds_inspect(path: str, feed_format: str | None) -> None:
    """Print the normalised observations of a feed file as JSON lines."""
    from notifier.feeds import FeedParseError, cap

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FeedParseError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        observations = cap.parse(data, source=path)
    except FeedParseError as exc:
        raise FeedParseError(f"{path}: {exc}") from None
    for observation in observations:
        click.echo(json.dumps(observation.to_json(), ensure_ascii=False, sort_keys=True))


# --- rules ----------------------------------------------------------------------------------------------------------

@main.group()
def rules() -> None:
    """Check and try the rules."""


@rules.command("check")
@click.pass_context
@friendly_errors
def rules_check(ctx: click.Context) -> None:
    """Validate every rule file; print the rules loaded."""
    from notifier.paths import rules_dir
    from notifier.rules import load_rules

    settings = settings_from(ctx)
    loaded = load_rules([rules_dir(), *map(Path, settings.rules_dirs)])
    for rule in loaded:
        click.echo(f"ok  {rule.id:32} {Path(rule.file).name}")
    click.echo(f"{len(loaded)} rule(s) valid")


# --- dispatch -------------------------------------------------------------------------------------------------------

@main.command()
@click.option("--once", is_flag=True, help="Send what is due now, then exit.")
@click.pass_context
@friendly_errors
def dispatch(ctx: click.Context, once: bool) -> None:
    """Send queued notifications through the configured channels."""
    from notifier.channels import channels_for
    from notifier.db import make_engine, require_schema, session_factory
    from notifier.dispatch import dispatch_all

    settings = settings_from(ctx)
    engine = make_engine(settings.database_url)
    require_schema(engine)
    channels = channels_for(settings)
    stats = dispatch_all(session_factory(engine), settings, channels)
    click.echo(f"sent {stats.sent}, failed {stats.failed}, retry later {stats.retried}, "
               f"reconciled {stats.reconciled}")


if __name__ == "__main__":
    main()
