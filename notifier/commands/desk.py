"""Afterwards and at the desk: `responses export`, `report`, `audit`, `booking show`, `followups` (list, take,
done) and `purge`."""

from __future__ import annotations

import json
import sys

import click

from notifier.commands.common import ROW_ID, confirmed, echo_lines, open_database, operator_option, settings_from
from notifier.errors import NotifierError


@click.group()
def responses() -> None:
    """Customers' choices."""


@responses.command("export")
@click.option("--csv", "as_csv", is_flag=True, required=True, help="Write CSV (the one format there is).")
@click.argument("file", required=False, default="-")
@click.pass_context
def responses_export(ctx: click.Context, as_csv: bool, file: str) -> None:
    """Export every recorded choice (rebooking, refund, default) for the reservation and finance systems."""
    from notifier.aftercare.responses import export_csv

    with open_database(settings_from(ctx))() as session:
        if file == "-":
            count = export_csv(session, sys.stdout)
        else:
            try:
                with open(file, "w", encoding="utf-8", newline="") as out:
                    count = export_csv(session, out)
            except OSError as exc:
                raise NotifierError(f"{file}: cannot write ({exc.strerror})") from None
    click.echo(f"exported {count} choice(s)", err=True)


@click.command()
@click.option("--disruption", "disruption_id", type=ROW_ID, default=None, help="Only this disruption.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML page with charts to this file.")
@click.pass_context
def report(ctx: click.Context, disruption_id: int | None, as_json: bool, html_file: str | None) -> None:
    """Per disruption: bookings affected, told within 5/15/30 min, delivered, failed, choices, EU 30-min duty."""
    from pathlib import Path

    from notifier.delivery.breaker import circuit_lines
    from notifier.ops.console import report_lines
    from notifier.aftercare.reports import build_report, render_html

    factory = open_database(settings_from(ctx))
    figures = build_report(factory, disruption_id)
    if html_file:
        title = f"Disruption #{disruption_id}" if disruption_id else "Disruption report"
        try:
            Path(html_file).write_text(render_html(figures, title), encoding="utf-8")
        except OSError as exc:
            raise NotifierError(f"{html_file}: cannot write ({exc.strerror})") from None
        click.echo(f"wrote {html_file} ({len(figures.disruptions)} disruption(s))")
    elif as_json:
        click.echo(json.dumps(figures.to_json(), ensure_ascii=False, indent=2))
    else:
        echo_lines(report_lines(figures))
        with factory() as session:
            echo_lines(circuit_lines(session))  # a provider whose circuit is open explains a stalled delivery


@click.command()
@click.option("--since", default=None, help="A duration back from now (30m, 2h, 1d) or an ISO 8601 time.")
@click.option("--actor", default=None, help="Only this operator (or watcher, rules, dispatcher).")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def audit(ctx: click.Context, since: str | None, actor: str | None, limit: int, as_json: bool) -> None:
    """Who did what, when: every operator action and automatic decision."""
    from notifier.ops.console import audit_json_lines, audit_lines
    from notifier.aftercare.reports import audit_trail, parse_since

    moment = parse_since(since) if since else None  # a bad --since is refused before the database is opened
    entries = audit_trail(open_database(settings_from(ctx)), moment, actor, limit)
    echo_lines(audit_json_lines(entries) if as_json else audit_lines(entries))


@click.group()
def booking() -> None:
    """Look up bookings (for the customer-service desk)."""


@booking.command("show")
@click.argument("ref")
@click.pass_context
def booking_show(ctx: click.Context, ref: str) -> None:
    """A booking, its notices with delivery status, its offers and the customer's choice (contacts masked)."""
    from notifier.ops.console import booking_lines
    from notifier.aftercare.reports import booking_card

    echo_lines(booking_lines(booking_card(open_database(settings_from(ctx)), ref)))


@click.group()
def followups() -> None:
    """The customer-service desk's worklist: bookings that need a person (list, take, done)."""


def known_reasons(ctx: click.Context, param: click.Parameter, reasons: tuple[str, ...]) -> tuple[str, ...]:
    """--reason checked while the options are read, before `list` brings the worklist up to date (which writes)."""
    from notifier.aftercare.followups import REASONS

    for reason in reasons:
        if reason not in REASONS:
            raise click.BadParameter(f"unknown reason {reason!r}: use one of {', '.join(REASONS)}", ctx, param)
    return reasons


@followups.command("list")
@click.option("--disruption", "disruption_id", type=ROW_ID, default=None, metavar="ID", help="Only this disruption.")
@click.option("--reason", "reasons", multiple=True, metavar="REASON", callback=known_reasons,
              help="Only this reason (repeatable): unreachable, free-text, help, not-carried-out, key-account.")
@click.option("--all", "include_done", is_flag=True, help="Also list the follow-ups already done.")
@click.option("--csv", "as_csv", is_flag=True, help="Write CSV to standard output (contacts masked).")
@click.pass_context
def followups_list(ctx: click.Context, disruption_id: int | None, reasons: tuple[str, ...], include_done: bool,
                   as_csv: bool) -> None:
    """Every booking that needs a person, most urgent first, with why and its history (brought up to date
    first)."""
    from notifier.aftercare import followups as desk
    from notifier.ops.console import worklist_lines
    from notifier.store.db import transaction

    settings = settings_from(ctx)
    factory = open_database(settings)
    with factory() as session:
        desk.require_disruption(session, disruption_id)  # refused before the refresh below writes anything
    with transaction(factory) as session:
        desk.refresh(session, settings)
    with factory() as session:
        items = desk.worklist(session, settings, disruption_id, reasons, include_done)
    if as_csv:
        desk.write_csv(items, sys.stdout)
    else:
        echo_lines(worklist_lines(items))


@followups.command("take")
@click.argument("item_id", type=ROW_ID, metavar="ID")
@operator_option
@click.pass_context
def followups_take(ctx: click.Context, item_id: int, operator: str | None) -> None:
    """Take a follow-up: it is yours, and nobody else can take it."""
    from notifier.aftercare import followups as desk
    from notifier.store.db import transaction

    settings = settings_from(ctx)
    with transaction(open_database(settings)) as session:
        item = desk.take(session, item_id, operator or settings.operator)
    click.echo(f"follow-up #{item.id} ({item.reason}) is taken by {item.operator}; when it is settled: "
               f"notifier followups done {item.id} --outcome rebooked|refunded|no-answer|other --note TEXT")


@followups.command("done")
@click.argument("item_id", type=ROW_ID, metavar="ID")
@click.option("--outcome", required=True, type=click.Choice(["rebooked", "refunded", "no-answer", "other"]),
              help="How it ended.")
@click.option("--note", required=True, help="What was done, for the next person who reads this booking.")
@operator_option
@click.pass_context
def followups_done(ctx: click.Context, item_id: int, outcome: str, note: str, operator: str | None) -> None:
    """Close a follow-up you took, with its outcome and a note."""
    from notifier.aftercare import followups as desk
    from notifier.store.db import transaction

    settings = settings_from(ctx)
    with transaction(open_database(settings)) as session:
        item = desk.close(session, item_id, outcome, note, operator or settings.operator or None)
    click.echo(f"follow-up #{item.id} ({item.reason}) is done: {item.outcome}, by {item.operator}")


@click.command()
@click.option("--older-than", "days", type=click.IntRange(0, 36_500), default=None, metavar="DAYS",
              help="Remove personal data older than this many days (default: retention_days, 180).")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@operator_option
@click.pass_context
def purge(ctx: click.Context, days: int | None, yes: bool, operator: str | None) -> None:
    """Remove personal data past the retention period: customers' names and contacts once all their sailings are
    that old, notice texts and recipients, reply texts, desk notes. Figures, choices, opt-outs and the audit
    trail stay; the purge is audited (counts only)."""
    from notifier.aftercare import retention

    settings = settings_from(ctx)
    factory = open_database(settings)
    days = settings.retention_days if days is None else days
    due = retention.purgeable(factory, days)
    cutoff = retention.cutoff_for(days)
    if not due.total:
        click.echo(f"Nothing to purge: no personal data older than {days} days (before {cutoff:%Y-%m-%d %H:%M} UTC).")
        return
    click.echo(f"Personal data older than {days} days (before {cutoff:%Y-%m-%d %H:%M} UTC):")
    echo_lines(due.lines())
    if not confirmed("Remove it for good?", yes):
        click.echo("Nothing was purged.")
        sys.exit(1)
    done = retention.purge(factory, days, operator or settings.operator or "retention")
    click.echo(f"Purged: {done.counts.customers} customer(s), {done.counts.shippers} shipper name(s), "
               f"{done.counts.notices} notice(s), {done.counts.replies} reply text(s), {done.counts.notes} desk "
               "note(s). Figures, choices, opt-outs and the audit trail are kept.")
