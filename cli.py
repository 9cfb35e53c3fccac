"""The `notifier` command line. Thin on purpose: parse arguments, call notifier.*, print.

A user error (bad file, unknown sailing, missing template value ...) prints one line on stderr and exits
non-zero; it never shows a traceback, and a command that fails writes nothing. Exit codes:

  0   done
  1   general: nothing to send (no bookings, nobody reachable, everyone already told), a broadcast in the
      wrong state for the action (cancel a finished one, pause one that is not sending), a feed poll failed
  2   bad input: unknown sailing / route / port / vessel / disruption / broadcast / booking, a bad option or
      time, a bad feed file or rule file, no --operator
  3   template: unknown template, a template missing or lacking a value (nothing is planned)
  4   approval needed: sending a broadcast that awaits a second operator's approval, or approving one's own
  70  internal error (set NOTIFIER_DEBUG=1 to see its traceback)
  130 interrupted (Ctrl-C)

Times given on the command line (`--from`, `--to`) are ISO 8601; without an offset they are the local time of
the port (`--port`) or of the route's departure port (`--route`), UTC for `--vessel`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path

import click

from notifier.errors import NotifierError
from notifier.store.settings import load_settings

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
        except BrokenPipeError:
            # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
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
@click.option("--log-level", envvar="NOTIFIER_LOG_LEVEL", default=None,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log to stderr from this level (default WARNING; `watch` INFO). Contacts are always masked.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, log_level: str | None) -> None:
    """notifier: tell every passenger and shipper on a disrupted sailing what happened and what they may do."""
    from notifier.logs import setup_logging

    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path
    ctx.obj["log_level"] = log_level
    setup_logging(log_level)


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
    from notifier.ops import demo as demo_module

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
                       f"(see `notifier followups list`)")
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
    from notifier.store.migrate import current_revision, upgrade

    settings = settings_from(ctx)
    upgrade(settings.database_url)
    click.echo(f"database at revision {current_revision(settings.database_url)}")


@db.command("check-contacts")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Check with this many processes (the check is CPU-bound).")
@click.pass_context
@friendly_errors
def db_check_contacts(ctx: click.Context, processes: int) -> None:
    """Check and store every customer's phone and email now (after a booking import), so that a big broadcast
    does not have to; customers whose stored check is current are skipped."""
    from notifier.planning.contacts import check_contacts

    checked = check_contacts(open_database(settings_from(ctx)), processes=processes)
    click.echo(f"checked the contacts of {checked} customer(s); the others were already current")


# --- feeds ----------------------------------------------------------------------------------------------------------

@main.group()
def feeds() -> None:
    """Read and watch feeds."""


@feeds.command("inspect")
@click.argument("path_or_url")
@click.option("--format", "feed_format", default="auto", show_default=True,
              type=click.Choice(["auto", "cap", "atom", "nws", "gtfs_rt", "dcsa", "port_status"]),
              help="The feed's format; auto sniffs it from the content.")
@click.option("--source", default="", help="Name to record as the source when the feed does not say.")
@friendly_errors
def feeds_inspect(path_or_url: str, feed_format: str, source: str) -> None:
    """Print the normalised observations of a feed file or URL as JSON lines (notes go to stderr)."""
    from notifier.feeds import FeedParseError
    from notifier.feeds.fetch import fetch
    from notifier.feeds.sniff import parse_any

    result = fetch(path_or_url)
    notes: list[str] = []
    try:
        _, observations = parse_any(result.body or b"", format=feed_format, source=source,
                                    filename=path_or_url, notes=notes)
    except FeedParseError as exc:
        raise FeedParseError(f"{path_or_url}: {exc}") from None
    for observation in observations:
        click.echo(json.dumps(observation.to_json(), ensure_ascii=False, sort_keys=True))
    for note in notes:
        click.echo(f"note: {note}", err=True)


@main.group("import")
def import_group() -> None:
    """Load schedules from other systems."""


@import_group.command("gtfs")
@click.argument("path", type=click.Path(exists=True))
@click.option("--today", default=None, help="First service day (YYYY-MM-DD; default today in the agency's zone).")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 366), help="Service days to load.")
@click.option("--country", default=None, help="ISO country for the ports (default: from the agency time zone).")
@click.option("--locode", "locodes", multiple=True, metavar="STOP=LOCODE", help="UN/LOCODE of a GTFS stop.")
@click.pass_context
@friendly_errors
def import_gtfs_command(ctx: click.Context, path: str, today: str | None, days: int, country: str | None,
                        locodes: tuple[str, ...]) -> None:
    """Load a static GTFS ferry schedule (zip or folder) as ports, routes and sailings."""
    from datetime import date

    from notifier.errors import UsageError
    from notifier.store.db import make_engine, require_schema, session_factory, transaction
    from notifier.intake.gtfs import import_gtfs

    try:
        first_day = date.fromisoformat(today) if today else None
        mapping = dict(item.split("=", 1) for item in locodes)
    except ValueError:
        raise UsageError("--today must be YYYY-MM-DD and --locode STOP=LOCODE") from None
    settings = settings_from(ctx)
    engine = make_engine(settings.database_url)
    require_schema(engine)
    with transaction(session_factory(engine)) as session:
        counts = import_gtfs(session, path, today=first_day, days=days, country=country, locodes=mapping)
    click.echo(", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in counts.items()))


# --- rules ----------------------------------------------------------------------------------------------------------

@main.group()
def rules() -> None:
    """Check and try the rules."""


@rules.command("check")
@click.pass_context
@friendly_errors
def rules_check(ctx: click.Context) -> None:
    """Validate every rule file; print the rules loaded."""
    from notifier.store.paths import rules_dir
    from notifier.rules.load import load_rule_set

    settings = settings_from(ctx)
    loaded = load_rule_set([rules_dir(), *map(Path, settings.rules_dirs)])
    for rule in loaded.rules:
        cites = f"  [{rule.verification}] {rule.citation}" if rule.citation else ""
        click.echo(f"ok  {rule.id:28} {Path(rule.file).name:22} {rule.then.kind:12}{cites}")
    for policy in loaded.policies.values():
        click.echo(f"ok  policy {policy.id:21} {Path(policy.file).name:22} [{policy.verification}] {policy.citation}")
    for note in loaded.notes:
        click.echo(f"note: {note}")
    click.echo(f"{len(loaded.rules)} rule(s) and {len(loaded.policies)} policy(ies) valid")


@rules.command("test")
@click.argument("feed_file")
@click.option("--at", "at", default=None, help="Evaluate as if it were this moment (ISO 8601 with offset); "
              "default now. Sailings that left more than 6 h before it are not considered.")
@click.option("--db", "db_path", default=None, help="SQLite file to read sailings and bookings from (e.g. the "
              "demo's notifier.db); default: the configured database.")
@click.option("--format", "feed_format", default=None,
              help="cap, atom, nws, gtfs_rt, dcsa or port_status (default: sniffed from the content).")
@click.pass_context
@friendly_errors
def rules_test(ctx: click.Context, feed_file: str, at: str | None, db_path: str | None,
               feed_format: str | None) -> None:
    """Show, changing nothing, what the rules make of a feed file: each observation, the rules it matched and
    why (or why not), the sailings, bookings and recipients it would reach, and the entitlements offered."""
    from notifier.ops.pipeline import try_feed_file

    settings = settings_from(ctx, database_url=f"sqlite:///{db_path}" if db_path else None)
    for line in try_feed_file(settings, feed_file, at, feed_format):
        click.echo(line)


# --- dispatch -------------------------------------------------------------------------------------------------------

@main.command()
@click.option("--once", is_flag=True, help="Send what is due now, then exit.")
@click.pass_context
@friendly_errors
def dispatch(ctx: click.Context, once: bool) -> None:
    """Send queued notifications through the configured channels; without --once, keep sending until stopped
    (SIGTERM / Ctrl-C finishes the messages in flight; a second one stops at once)."""
    from notifier.delivery.dispatch import serve

    def announce(channel_names: dict[str, str]) -> None:
        if not once:
            names = ", ".join(f"{kind} via {name}" for kind, name in sorted(channel_names.items()))
            click.echo(f"dispatching ({names}); stop with Ctrl-C or SIGTERM", err=True)

    stats = serve(settings_from(ctx), once, announce)
    click.echo(stats.summary())


# --- choice page and responses --------------------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.pass_context
@friendly_errors
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the customers' choice pages and the Twilio webhooks (put a TLS proxy in front)."""
    from werkzeug.serving import make_server

    from notifier.web.app import create_app

    app = create_app(settings_from(ctx))
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise NotifierError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    click.echo(f"serving choice pages on http://{host}:{server.port}/c/<token> (Ctrl+C stops)")
    server.serve_forever()


@main.group()
def responses() -> None:
    """Customers' choices."""


@responses.command("export")
@click.option("--csv", "as_csv", is_flag=True, required=True, help="Write CSV (the one format there is).")
@click.argument("file", required=False, default="-")
@click.pass_context
@friendly_errors
def responses_export(ctx: click.Context, as_csv: bool, file: str) -> None:
    """Export every recorded choice (rebooking, refund, default) for the reservation and finance systems."""
    from notifier.store.db import make_engine, require_schema, session_factory
    from notifier.aftercare.responses import export_csv

    settings = settings_from(ctx)
    engine = make_engine(settings.database_url)
    require_schema(engine)
    with session_factory(engine)() as session:
        if file == "-":
            count = export_csv(session, sys.stdout)
        else:
            try:
                with open(file, "w", encoding="utf-8", newline="") as out:
                    count = export_csv(session, out)
            except OSError as exc:
                raise NotifierError(f"{file}: cannot write ({exc.strerror})") from None
    click.echo(f"exported {count} choice(s)", err=True)


# --- the duty officer's console: broadcasts ---------------------------------------------------------------------------

def open_database(settings):  # noqa: ANN001, ANN201
    """A session factory on the configured, migrated database."""
    from notifier.store.db import make_engine, require_schema, session_factory

    engine = make_engine(settings.database_url)
    require_schema(engine)
    return session_factory(engine)


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


operator_option = click.option("--operator", envvar="NOTIFIER_OPERATOR", default=None,
                               help="Who is acting (recorded in the audit log); default $NOTIFIER_OPERATOR.")


@main.group()
def broadcast() -> None:
    """Targeted broadcasts: create, preview, approve, send, follow, pause, resume, cancel, correct."""


@broadcast.command("create")
@click.option("--sailing", "sailings", multiple=True, metavar="CODE", help="A sailing code (repeatable).")
@click.option("--route", metavar="CODE", help="Every sailing of a route departing between --from and --to.")
@click.option("--port", metavar="LOCODE", help="Every sailing departing or arriving at a port between --from and --to.")
@click.option("--vessel", metavar="IMO", help="A vessel's sailings: with --voyage V, or between --from and --to.")
@click.option("--voyage", metavar="V", help="Voyage number (with --vessel).")
@click.option("--disruption", "disruptions", multiple=True, type=int, metavar="ID",
              help="An existing disruption (repeatable).")
@click.option("--from", "start", metavar="TIME",
              help="ISO 8601; without an offset it is the port's local time (for --route: its departure port).")
@click.option("--to", "end", metavar="TIME", help="ISO 8601, as --from.")
@click.option("--kind", type=click.Choice(["cancelled", "delayed", "advisory", "resumed"]), default=None,
              help="What the customers are told (default with --disruption: the disruption's kind).")
@click.option("--delay-minutes", type=click.IntRange(1, 7 * 24 * 60), default=None, help="For --kind delayed.")
@click.option("--reason", default=None, help="Free text for the customers (needs a second operator's approval).")
@click.option("--cause", type=click.Choice(["weather", "port_closure", "strike", "technical", "schedule",
                                            "operations"]), default="operations", show_default=True,
              help="The cause named in the notice.")
@click.option("--template", default=None, help="Template name (default: the kind's own, else 'notice').")
@click.option("--channels", default="sms,email", show_default=True, help="sms, email or sms,email.")
@click.option("--audience", type=click.Choice(["passengers", "shippers", "all"]), default="all", show_default=True)
@operator_option
@click.option("--yes", is_flag=True, help="Do not ask before sending (never skips approval).")
@click.pass_context
@friendly_errors
def broadcast_create(ctx: click.Context, sailings: tuple[str, ...], route: str | None, port: str | None,
                     vessel: str | None, voyage: str | None, disruptions: tuple[int, ...], start: str | None,
                     end: str | None, kind: str | None, delay_minutes: int | None, reason: str | None, cause: str,
                     template: str | None, channels: str, audience: str, operator: str | None, yes: bool) -> None:
    """Plan a broadcast on hold and print its preview; nothing is sent until it is approved (when needed) and sent."""
    from notifier.broadcasts import lifecycle as broadcasts
    from notifier.ops.console import preview_lines

    settings = settings_from(ctx)
    request = broadcasts.BroadcastRequest(
        operator=operator or settings.operator, kind=kind, sailings=sailings, route=route, port=port, vessel=vessel,
        voyage=voyage, disruption_ids=disruptions, start=start, end=end, delay_minutes=delay_minutes,
        reason=reason, template=template, audience=audience, cause=cause,
        channels=tuple(c.strip() for c in channels.split(",") if c.strip()))
    factory = open_database(settings)
    broadcast_id = broadcasts.create_manual(factory, request, settings)
    preview = broadcasts.preview(factory, broadcast_id, settings)
    echo_lines(preview_lines(preview, settings))
    if preview.broadcast.status == "awaiting_approval":
        click.echo(f"Broadcast #{broadcast_id} is held until approved; nothing has been sent.")
        return
    send_now = confirmed(f"Send broadcast #{broadcast_id} ({preview.broadcast.recipient_count} messages) now?", yes)
    if not send_now:
        click.echo(f"Broadcast #{broadcast_id} is held; nothing has been sent. Send it with: "
                   f"notifier broadcast send {broadcast_id}")
        return
    released = broadcasts.send(factory, broadcast_id, request.operator)
    click.echo(f"Broadcast #{broadcast_id}: {released} messages released to the dispatcher.")


@broadcast.command("preview")
@click.argument("broadcast_id", type=int)
@click.option("--all", "show_all", is_flag=True, help="List every booking without a usable contact.")
@click.pass_context
@friendly_errors
def broadcast_preview(ctx: click.Context, broadcast_id: int, show_all: bool) -> None:
    """Show again what a broadcast sends: recipients, cost, time, samples, offers, approval."""
    from notifier.broadcasts import lifecycle as broadcasts
    from notifier.ops.console import preview_lines

    settings = settings_from(ctx)
    preview = broadcasts.preview(open_database(settings), broadcast_id, settings)
    echo_lines(preview_lines(preview, settings, None if show_all else 15))


@broadcast.command("approve")
@click.argument("broadcast_id", type=int)
@operator_option
@click.pass_context
@friendly_errors
def broadcast_approve(ctx: click.Context, broadcast_id: int, operator: str | None) -> None:
    """Approve a broadcast (as an operator other than its creator)."""
    from notifier.broadcasts import lifecycle as broadcasts

    settings = settings_from(ctx)
    operator = operator or settings.operator
    broadcasts.approve(open_database(settings), broadcast_id, operator)
    click.echo(f"Broadcast #{broadcast_id} approved by {operator}. Send it with: "
               f"notifier broadcast send {broadcast_id}")


def dispatch_in_process(factory, settings):  # noqa: ANN001, ANN201
    """A function that runs the dispatcher until its stop event is set (for `send --wait`)."""
    import threading

    def run(stop: threading.Event) -> None:
        from notifier.channels import channels_for
        from notifier.delivery.dispatch import Dispatcher

        channels = channels_for(settings)
        dispatcher = Dispatcher(factory, settings, channels)
        threading.Thread(target=lambda: (stop.wait(), dispatcher.request_stop()), daemon=True).start()
        try:
            while not stop.is_set():
                dispatcher.run(drain=True)
                stop.wait(max(settings.dispatch_poll_seconds, 0.2))
        finally:
            dispatcher.close()
            for channel in channels.values():
                channel.close()

    return run


@broadcast.command("send")
@click.argument("broadcast_id", type=int)
@operator_option
@click.option("--wait", is_flag=True, help="Send from this process and show progress until done.")
@click.option("--yes", is_flag=True, help="Do not ask first (never skips approval).")
@click.pass_context
@friendly_errors
def broadcast_send(ctx: click.Context, broadcast_id: int, operator: str | None, wait: bool, yes: bool) -> None:
    """Release an approved broadcast to the dispatcher (exit 4 while it still needs approval)."""
    from notifier.broadcasts import lifecycle as broadcasts
    from notifier.ops.console import follow, progress_line

    settings = settings_from(ctx)
    operator = broadcasts.require_operator(operator or settings.operator)
    factory = open_database(settings)
    preview = broadcasts.preview(factory, broadcast_id, settings)
    if preview.broadcast.status == "approved" and not confirmed(
            f"Send broadcast #{broadcast_id}: {preview.broadcast.recipient_count} messages, "
            f"{preview.sms_segments} SMS segments (about {settings.sms_price_currency} {preview.sms_cost})?", yes):
        click.echo(f"Not sent. Broadcast #{broadcast_id} stays held.")
        return
    released = broadcasts.send(factory, broadcast_id, operator)
    if released:
        click.echo(f"Broadcast #{broadcast_id}: {released} messages released to the dispatcher.")
    else:
        click.echo(f"Broadcast #{broadcast_id} was already released.")
    if wait:
        click.echo(progress_line(follow(factory, broadcast_id, settings, dispatch_in_process(factory, settings))))
    else:
        click.echo(f"They go out with the running dispatcher (`notifier watch` or `notifier dispatch`). "
                   f"Follow: notifier broadcast status {broadcast_id} --follow")


@broadcast.command("status")
@click.argument("broadcast_id", type=int)
@click.option("--follow", is_flag=True, help="Show a live progress bar until done, paused or cancelled.")
@click.pass_context
@friendly_errors
def broadcast_status(ctx: click.Context, broadcast_id: int, follow: bool) -> None:
    """Sent / delivered / failed / remaining and the current rate."""
    from notifier.broadcasts import lifecycle as broadcasts
    from notifier.ops import console

    settings = settings_from(ctx)
    factory = open_database(settings)
    broadcasts.finish_sent_broadcasts(factory)
    current = console.follow(factory, broadcast_id, settings) if follow else broadcasts.progress(factory,
                                                                                                broadcast_id)
    click.echo(console.progress_line(current))


@broadcast.command("pause")
@click.argument("broadcast_id", type=int)
@operator_option
@click.pass_context
@friendly_errors
def broadcast_pause(ctx: click.Context, broadcast_id: int, operator: str | None) -> None:
    """Stop sending (within one dispatcher batch); `resume` continues."""
    from notifier.broadcasts import lifecycle as broadcasts
    from notifier.ops.console import progress_line

    settings = settings_from(ctx)
    factory = open_database(settings)
    broadcasts.pause(factory, broadcast_id, operator or settings.operator)
    click.echo(f"Broadcast #{broadcast_id} paused; messages already handed to a provider still go out.")
    click.echo(progress_line(broadcasts.progress(factory, broadcast_id)))


@broadcast.command("resume")
@click.argument("broadcast_id", type=int)
@operator_option
@click.pass_context
@friendly_errors
def broadcast_resume(ctx: click.Context, broadcast_id: int, operator: str | None) -> None:
    """Continue a paused broadcast."""
    from notifier.broadcasts import lifecycle as broadcasts
    from notifier.ops.console import progress_line

    settings = settings_from(ctx)
    factory = open_database(settings)
    broadcasts.resume(factory, broadcast_id, operator or settings.operator)
    click.echo(f"Broadcast #{broadcast_id} resumed.")
    click.echo(progress_line(broadcasts.progress(factory, broadcast_id)))


@broadcast.command("cancel")
@click.argument("broadcast_id", type=int)
@operator_option
@click.pass_context
@friendly_errors
def broadcast_cancel(ctx: click.Context, broadcast_id: int, operator: str | None) -> None:
    """Stop a broadcast for good: unsent messages are cancelled (those in flight finish)."""
    from notifier.broadcasts import lifecycle as broadcasts

    settings = settings_from(ctx)
    result = broadcasts.cancel(open_database(settings), broadcast_id, operator or settings.operator)
    click.echo(f"Broadcast #{broadcast_id} cancelled: {result.cancelled} unsent message(s) stopped, "
               f"{result.told} already sent, {result.holds_released} held place(s) given back"
               + (f", disruption(s) {', '.join(f'#{d}' for d in result.disruptions_cleared)} cleared (nobody had "
                  "been told)" if result.disruptions_cleared else "") + ".")
    if result.told:
        click.echo(f"To correct what was sent: notifier broadcast correct {broadcast_id} --reason TEXT")


@broadcast.command("correct")
@click.argument("broadcast_id", type=int)
@click.option("--template", default=None, help="Template name (default 'correction').")
@click.option("--reason", default=None, help="Free text for the customers (needs a second operator's approval).")
@operator_option
@click.pass_context
@friendly_errors
def broadcast_correct(ctx: click.Context, broadcast_id: int, template: str | None, reason: str | None,
                      operator: str | None) -> None:
    """Plan a correction to everyone a broadcast already told (held, then approve/send as usual)."""
    from notifier.broadcasts import lifecycle as broadcasts
    from notifier.ops.console import preview_lines

    settings = settings_from(ctx)
    factory = open_database(settings)
    correction_id = broadcasts.correct(factory, broadcast_id, operator or settings.operator, settings, template,
                                       reason)
    echo_lines(preview_lines(broadcasts.preview(factory, correction_id, settings), settings))
    click.echo(f"Correction #{correction_id} is held; send it with: notifier broadcast send {correction_id}")


@broadcast.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.pass_context
@friendly_errors
def broadcast_list(ctx: click.Context, limit: int) -> None:
    """The newest broadcasts, with their status and progress."""
    from notifier.broadcasts import lifecycle as broadcasts
    from notifier.ops.console import broadcast_list_lines

    echo_lines(broadcast_list_lines(broadcasts.recent_broadcasts(open_database(settings_from(ctx)), limit)))


# --- audit, reports, the customer-service desk -----------------------------------------------------------------------

@main.command()
@click.option("--since", default=None, help="A duration back from now (30m, 2h, 1d) or an ISO 8601 time.")
@click.option("--actor", default=None, help="Only this operator (or watcher, rules, dispatcher).")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
@friendly_errors
def audit(ctx: click.Context, since: str | None, actor: str | None, limit: int, as_json: bool) -> None:
    """Who did what, when: every operator action and automatic decision."""
    from notifier.ops.console import audit_lines
    from notifier.ops.reports import audit_trail, parse_since

    entries = audit_trail(open_database(settings_from(ctx)), parse_since(since) if since else None, actor, limit)
    if as_json:
        for e in entries:
            click.echo(json.dumps({"at": e.at.isoformat(), "actor": e.actor, "action": e.action,
                                   "subject_type": e.subject_type, "subject_id": e.subject_id,
                                   "details": e.details}, ensure_ascii=False, default=str))
        return
    echo_lines(audit_lines(entries))


@main.command()
@click.option("--disruption", "disruption_id", type=int, default=None, help="Only this disruption.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML page with charts to this file.")
@click.pass_context
@friendly_errors
def report(ctx: click.Context, disruption_id: int | None, as_json: bool, html_file: str | None) -> None:
    """Per disruption: bookings affected, told within 5/15/30 min, delivered, failed, choices, EU 30-min duty."""
    from notifier.ops.console import report_lines
    from notifier.ops.reports import build_report, render_html

    figures = build_report(open_database(settings_from(ctx)), disruption_id)
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


@main.group()
def booking() -> None:
    """Look up bookings (for the customer-service desk)."""


@booking.command("show")
@click.argument("ref")
@click.pass_context
@friendly_errors
def booking_show(ctx: click.Context, ref: str) -> None:
    """A booking, its notices with delivery status, its offers and the customer's choice (contacts masked)."""
    from notifier.ops.console import booking_lines
    from notifier.ops.reports import booking_card

    echo_lines(booking_lines(booking_card(open_database(settings_from(ctx)), ref)))


@main.group()
def followups() -> None:
    """The customer-service desk's worklist: bookings that need a person (list, take, done)."""


@followups.command("list")
@click.option("--disruption", "disruption_id", type=int, default=None, metavar="ID", help="Only this disruption.")
@click.option("--reason", "reasons", multiple=True, metavar="REASON",
              help="Only this reason (repeatable): unreachable, free-text, help, not-carried-out, key-account.")
@click.option("--all", "include_done", is_flag=True, help="Also list the follow-ups already done.")
@click.option("--csv", "as_csv", is_flag=True, help="Write CSV to standard output (contacts masked).")
@click.pass_context
@friendly_errors
def followups_list(ctx: click.Context, disruption_id: int | None, reasons: tuple[str, ...], include_done: bool,
                   as_csv: bool) -> None:
    """Every booking that needs a person, most urgent first, with why and its history (brought up to date
    first)."""
    from notifier.aftercare import followups as desk
    from notifier.ops.console import worklist_lines
    from notifier.store.db import transaction

    settings = settings_from(ctx)
    factory = open_database(settings)
    with transaction(factory) as session:
        desk.refresh(session, settings)
    with factory() as session:
        items = desk.worklist(session, settings, disruption_id, reasons, include_done)
    if as_csv:
        desk.write_csv(items, sys.stdout)
    else:
        echo_lines(worklist_lines(items))


@followups.command("take")
@click.argument("item_id", type=int, metavar="ID")
@operator_option
@click.pass_context
@friendly_errors
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
@click.argument("item_id", type=int, metavar="ID")
@click.option("--outcome", required=True, type=click.Choice(["rebooked", "refunded", "no-answer", "other"]),
              help="How it ended.")
@click.option("--note", required=True, help="What was done, for the next person who reads this booking.")
@operator_option
@click.pass_context
@friendly_errors
def followups_done(ctx: click.Context, item_id: int, outcome: str, note: str, operator: str | None) -> None:
    """Close a follow-up you took, with its outcome and a note."""
    from notifier.aftercare import followups as desk
    from notifier.store.db import transaction

    settings = settings_from(ctx)
    with transaction(open_database(settings)) as session:
        item = desk.close(session, item_id, outcome, note, operator or settings.operator or None)
    click.echo(f"follow-up #{item.id} ({item.reason}) is done: {item.outcome}, by {item.operator}")


# --- retention ------------------------------------------------------------------------------------------------------

@main.command()
@click.option("--older-than", "days", type=int, default=None, metavar="DAYS",
              help="Remove personal data older than this many days (default: retention_days, 180).")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@operator_option
@click.pass_context
@friendly_errors
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


# --- the watcher, feeds, configuration -------------------------------------------------------------------------------

@main.command()
@click.option("--status", "show_status", is_flag=True, help="Show the watchers' heartbeats and exit.")
@click.pass_context
@friendly_errors
def watch(ctx: click.Context, show_status: bool) -> None:
    """Run the daemon: poll feeds, run the pipeline, dispatch, expire holds, apply defaults (SIGTERM stops it
    cleanly). Several may run: one leads, the others stand by and take over."""
    import logging

    from notifier.ops import console
    from notifier.ops import watcher
    from notifier.logs import setup_logging

    settings = settings_from(ctx)
    if show_status:
        states = watcher.watcher_states(open_database(settings), settings)
        echo_lines(console.watcher_lines(states))
        for state in states[:1]:
            echo_lines(console.watcher_detail_lines(state))
        return
    setup_logging(ctx.obj.get("log_level") or "INFO")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run drowns what matters
    runner = watcher.Watcher(settings)
    click.echo(f"watcher {runner.owner}: starting (stop with Ctrl-C or SIGTERM)", err=True)
    runner.run()
    click.echo(f"watcher {runner.owner}: stopped", err=True)


@feeds.command("list")
@click.pass_context
@friendly_errors
def feeds_list(ctx: click.Context) -> None:
    """The configured feeds with their health (ok, failing, stale, never polled) and the watcher's heartbeat."""
    from notifier.ops.console import feeds_lines
    from notifier.ops.polling import source_health
    from notifier.ops.watcher import watcher_states

    settings = settings_from(ctx)
    factory = open_database(settings)
    echo_lines(feeds_lines(source_health(factory, settings), watcher_states(factory, settings)))


@feeds.command("poll")
@click.option("--once", is_flag=True, help="Poll every feed once, run the rules, and exit.")
@click.pass_context
@friendly_errors
def feeds_poll(ctx: click.Context, once: bool) -> None:
    """Poll the configured feeds and hand what is new to the rules (without --once: keep polling)."""
    from notifier.errors import UsageError
    from notifier.store.paths import rules_dir
    from notifier.ops.polling import poll_all
    from notifier.rules.load import load_rules
    from notifier.ops.watcher import Watcher, run_pipeline

    settings = settings_from(ctx)
    if not settings.feeds:
        raise UsageError("no feeds configured: add [[feeds]] tables (name, url, format, poll_seconds) to "
                         "notifier.toml")
    if not once:
        runner = Watcher(settings, jobs=("poll", "pipeline"))
        click.echo(f"polling {len(settings.feeds)} feed(s) as watcher {runner.owner} (stop with Ctrl-C)", err=True)
        runner.run()
        return
    rules_loaded = load_rules([rules_dir(), *map(Path, settings.rules_dirs)])
    factory = open_database(settings)
    results = poll_all(factory, settings)
    for result in results:
        if result.outcome == "error":
            click.echo(f"{result.source}: error: {result.errors[0]}")
            continue
        extra = f"; {len(result.errors)} entry error(s): {result.errors[0]}" if result.errors else ""
        click.echo(f"{result.source}: {result.outcome}, {result.documents} document(s), {result.observations} "
                   f"observation(s), {len(result.new_item_ids)} new, {result.duplicates} already seen{extra}")
    done = run_pipeline(factory, settings, rules_loaded)
    click.echo(f"rules: {done['items']} new item(s), {done['disruptions_changed']} disruption(s) opened or revised, "
               f"{done['disruptions_cleared']} cleared, broadcasts {done['broadcasts'] or 'none'}")
    if any(r.outcome == "error" for r in results):
        sys.exit(1)


@main.group()
def config() -> None:
    """Configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@friendly_errors
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Every setting in effect, secrets masked."""
    from dataclasses import asdict

    from notifier.ops.console import config_lines

    masked = settings_from(ctx).masked()
    if as_json:
        masked["feeds"] = [asdict(source) for source in masked["feeds"]]
        click.echo(json.dumps(masked, indent=2, default=str))
    else:
        echo_lines(config_lines(masked))


if __name__ == "__main__":
    main()
