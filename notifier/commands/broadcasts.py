"""The duty officer's broadcasts: create, preview, approve, send, status, pause, resume, cancel, correct, list."""

from __future__ import annotations

import click

from notifier.commands.common import IsoTime, ROW_ID, confirmed, echo_lines, open_database, operator_option, \
    settings_from
from notifier.store.status import APPROVED, AWAITING_APPROVAL


@click.group()
def broadcast() -> None:
    """Targeted broadcasts: create, preview, approve, send, follow, pause, resume, cancel, correct."""


@broadcast.command("create")
@click.option("--sailing", "sailings", multiple=True, metavar="CODE", help="A sailing code (repeatable).")
@click.option("--route", metavar="CODE", help="Every sailing of a route departing between --from and --to.")
@click.option("--port", metavar="LOCODE", help="Every sailing departing or arriving at a port between --from and --to.")
@click.option("--vessel", metavar="IMO", help="A vessel's sailings: with --voyage V, or between --from and --to.")
@click.option("--voyage", metavar="V", help="Voyage number (with --vessel).")
@click.option("--disruption", "disruptions", multiple=True, type=ROW_ID, metavar="ID",
              help="An existing disruption (repeatable).")
@click.option("--from", "start", metavar="TIME", type=IsoTime(),
              help="ISO 8601; without an offset it is the port's local time (for --route: its departure port).")
@click.option("--to", "end", metavar="TIME", type=IsoTime(), help="ISO 8601, as --from.")
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
def broadcast_create(ctx: click.Context, sailings: tuple[str, ...], route: str | None, port: str | None,
                     vessel: str | None, voyage: str | None, disruptions: tuple[int, ...], start: str | None,
                     end: str | None, kind: str | None, delay_minutes: int | None, reason: str | None, cause: str,
                     template: str | None, channels: str, audience: str, operator: str | None, yes: bool) -> None:
    """Plan a broadcast on hold and print its preview; nothing is sent until it is approved (when needed) and sent."""
    from notifier.broadcasts import manual, preview as previews
    from notifier.ops.console import preview_lines

    settings = settings_from(ctx)
    request = manual.BroadcastRequest(
        operator=operator or settings.operator, kind=kind, sailings=sailings, route=route, port=port, vessel=vessel,
        voyage=voyage, disruption_ids=disruptions, start=start, end=end, delay_minutes=delay_minutes,
        reason=reason, template=template, audience=audience, cause=cause,
        channels=tuple(c.strip() for c in channels.split(",") if c.strip()))
    factory = open_database(settings)
    broadcast_id = manual.create_manual(factory, request, settings)
    preview = previews.preview(factory, broadcast_id, settings)
    echo_lines(preview_lines(preview, settings))
    if preview.broadcast.status == AWAITING_APPROVAL:
        click.echo(f"Broadcast #{broadcast_id} is held until approved; nothing has been sent.")
        return
    send_now = confirmed(f"Send broadcast #{broadcast_id} ({preview.broadcast.recipient_count} messages) now?", yes)
    if not send_now:
        click.echo(f"Broadcast #{broadcast_id} is held; nothing has been sent. Send it with: "
                   f"notifier broadcast send {broadcast_id}")
        return
    released = manual.send(factory, broadcast_id, request.operator)
    click.echo(f"Broadcast #{broadcast_id}: {released} messages released to the dispatcher.")


@broadcast.command("preview")
@click.argument("broadcast_id", type=ROW_ID)
@click.option("--all", "show_all", is_flag=True, help="List every booking without a usable contact.")
@click.pass_context
def broadcast_preview(ctx: click.Context, broadcast_id: int, show_all: bool) -> None:
    """Show again what a broadcast sends: recipients, cost, time, samples, offers, approval."""
    from notifier.broadcasts import preview as previews
    from notifier.ops.console import preview_lines

    settings = settings_from(ctx)
    preview = previews.preview(open_database(settings), broadcast_id, settings)
    echo_lines(preview_lines(preview, settings, None if show_all else 15))


@broadcast.command("approve")
@click.argument("broadcast_id", type=ROW_ID)
@operator_option
@click.pass_context
def broadcast_approve(ctx: click.Context, broadcast_id: int, operator: str | None) -> None:
    """Approve a broadcast (as an operator other than its creator)."""
    from notifier.broadcasts import manual

    settings = settings_from(ctx)
    operator = operator or settings.operator
    manual.approve(open_database(settings), broadcast_id, operator)
    click.echo(f"Broadcast #{broadcast_id} approved by {operator}. Send it with: "
               f"notifier broadcast send {broadcast_id}")


@broadcast.command("send")
@click.argument("broadcast_id", type=ROW_ID)
@operator_option
@click.option("--wait", is_flag=True, help="Send from this process and show progress until done.")
@click.option("--yes", is_flag=True, help="Do not ask first (never skips approval).")
@click.pass_context
def broadcast_send(ctx: click.Context, broadcast_id: int, operator: str | None, wait: bool, yes: bool) -> None:
    """Release an approved broadcast to the dispatcher (exit 4 while it still needs approval)."""
    from notifier.broadcasts import manual, preview as previews
    from notifier.ops.console import dispatch_here, follow, progress_line

    settings = settings_from(ctx)
    operator = manual.require_operator(operator or settings.operator)
    factory = open_database(settings)
    preview = previews.preview(factory, broadcast_id, settings)
    if preview.broadcast.status == APPROVED and not confirmed(
            f"Send broadcast #{broadcast_id}: {preview.broadcast.recipient_count} messages, "
            f"{preview.sms_segments} SMS segments (about {settings.sms_price_currency} {preview.sms_cost})?", yes):
        click.echo(f"Not sent. Broadcast #{broadcast_id} stays held.")
        return
    released = manual.send(factory, broadcast_id, operator)
    if released:
        click.echo(f"Broadcast #{broadcast_id}: {released} messages released to the dispatcher.")
    else:
        click.echo(f"Broadcast #{broadcast_id} was already released.")
    if wait:
        click.echo(progress_line(follow(factory, broadcast_id, settings, dispatch_here(factory, settings))))
    else:
        click.echo(f"They go out with the running dispatcher (`notifier watch` or `notifier dispatch`). "
                   f"Follow: notifier broadcast status {broadcast_id} --follow")


@broadcast.command("status")
@click.argument("broadcast_id", type=ROW_ID)
@click.option("--follow", is_flag=True, help="Show a live progress bar until done, paused or cancelled.")
@click.pass_context
def broadcast_status(ctx: click.Context, broadcast_id: int, follow: bool) -> None:
    """Sent / delivered / failed / remaining and the current rate."""
    from notifier.broadcasts import preview as previews
    from notifier.ops import console

    settings = settings_from(ctx)
    factory = open_database(settings)
    previews.finish_sent_broadcasts(factory)
    current = console.follow(factory, broadcast_id, settings) if follow else previews.progress(factory,
                                                                                                broadcast_id)
    click.echo(console.progress_line(current))


@broadcast.command("pause")
@click.argument("broadcast_id", type=ROW_ID)
@operator_option
@click.pass_context
def broadcast_pause(ctx: click.Context, broadcast_id: int, operator: str | None) -> None:
    """Stop sending (within one dispatcher batch); `resume` continues."""
    act_then_show_progress(ctx, "pause", broadcast_id, operator,
                           f"Broadcast #{broadcast_id} paused; messages already handed to a provider still go out.")


@broadcast.command("resume")
@click.argument("broadcast_id", type=ROW_ID)
@operator_option
@click.pass_context
def broadcast_resume(ctx: click.Context, broadcast_id: int, operator: str | None) -> None:
    """Continue a paused broadcast."""
    act_then_show_progress(ctx, "resume", broadcast_id, operator, f"Broadcast #{broadcast_id} resumed.")


def act_then_show_progress(ctx: click.Context, action: str, broadcast_id: int, operator: str | None,
                           done: str) -> None:
    """Pause or resume a broadcast, say so, and show where it stands."""
    from notifier.broadcasts import manual, preview as previews
    from notifier.ops.console import progress_line

    settings = settings_from(ctx)
    factory = open_database(settings)
    {"pause": manual.pause, "resume": manual.resume}[action](factory, broadcast_id,
                                                                      operator or settings.operator)
    click.echo(done)
    click.echo(progress_line(previews.progress(factory, broadcast_id)))


@broadcast.command("cancel")
@click.argument("broadcast_id", type=ROW_ID)
@operator_option
@click.pass_context
def broadcast_cancel(ctx: click.Context, broadcast_id: int, operator: str | None) -> None:
    """Stop a broadcast for good: unsent messages are cancelled (those in flight finish)."""
    from notifier.broadcasts import manual
    from notifier.ops.console import cancelled_lines

    settings = settings_from(ctx)
    result = manual.cancel(open_database(settings), broadcast_id, operator or settings.operator)
    echo_lines(cancelled_lines(broadcast_id, result))


@broadcast.command("correct")
@click.argument("broadcast_id", type=ROW_ID)
@click.option("--template", default=None, help="Template name (default 'correction').")
@click.option("--reason", default=None, help="Free text for the customers (needs a second operator's approval).")
@operator_option
@click.pass_context
def broadcast_correct(ctx: click.Context, broadcast_id: int, template: str | None, reason: str | None,
                      operator: str | None) -> None:
    """Plan a correction to everyone a broadcast already told (held, then approve/send as usual)."""
    from notifier.broadcasts import correction, preview as previews
    from notifier.ops.console import preview_lines

    settings = settings_from(ctx)
    factory = open_database(settings)
    correction_id = correction.correct(factory, broadcast_id, operator or settings.operator, settings, template,
                                       reason)
    echo_lines(preview_lines(previews.preview(factory, correction_id, settings), settings))
    click.echo(f"Correction #{correction_id} is held; send it with: notifier broadcast send {correction_id}")


@broadcast.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.pass_context
def broadcast_list(ctx: click.Context, limit: int) -> None:
    """The newest broadcasts, with their status and progress."""
    from notifier.broadcasts import preview as previews
    from notifier.ops.console import broadcast_list_lines

    echo_lines(broadcast_list_lines(previews.recent_broadcasts(open_database(settings_from(ctx)), limit)))
