"""The long-running parts: `dispatch` (send the outbox), `serve` (choice pages and webhooks), `watch` (the
daemon that does everything by itself)."""

from __future__ import annotations

import click

from notifier.commands.common import echo_lines, open_database, require_database_file, settings_from


@click.command()
@click.option("--once", is_flag=True, help="Send what is due now, then exit.")
@click.pass_context
def dispatch(ctx: click.Context, once: bool) -> None:
    """Send queued notifications through the configured channels; without --once, keep sending until stopped
    (SIGTERM / Ctrl-C finishes the messages in flight; a second one stops at once)."""
    from notifier.delivery.dispatch import serve

    def announce(channel_names: dict[str, str]) -> None:
        if not once:
            names = ", ".join(f"{kind} via {name}" for kind, name in sorted(channel_names.items()))
            click.echo(f"dispatching ({names}); stop with Ctrl-C or SIGTERM", err=True)

    settings = settings_from(ctx)
    require_database_file(settings)
    stats = serve(settings, once, announce)
    click.echo(stats.summary())
    for line in stats.waiting:  # --once: what it could not act on, and why
        click.echo(f"still waiting: {line}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the customers' choice pages and the Twilio webhooks (put a TLS proxy in front)."""
    from notifier.errors import NotifierError
    from notifier.web.app import create_app
    from notifier.web.server import make_web_server

    settings = settings_from(ctx)
    app = create_app(settings)
    try:
        server = make_web_server(app, host, port, settings)
    except (OSError, SystemExit) as exc:  # werkzeug says why it cannot listen, then exits; we say it once
        raise NotifierError(f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or 'in use?'})"
                            ) from None
    click.echo(f"serving choice pages on http://{host}:{server.port}/c/<token> (Ctrl+C stops)")
    server.serve_forever()


@click.command()
@click.option("--status", "show_status", is_flag=True, help="Show the watchers' heartbeats and exit.")
@click.pass_context
def watch(ctx: click.Context, show_status: bool) -> None:
    """Run the daemon: poll feeds, run the pipeline, dispatch, expire holds, apply defaults (SIGTERM stops it
    cleanly). Several may run: one leads, the others stand by and take over."""
    import logging

    from notifier.logs import setup_logging
    from notifier.ops import console, watcher
    from notifier.delivery.breaker import circuit_lines
    from notifier.ops.quarantine import quarantined
    from notifier.store.models import utcnow

    settings = settings_from(ctx)
    if show_status:
        factory = open_database(settings)
        states = watcher.watcher_states(factory, settings)
        echo_lines(console.watcher_lines(states))
        for state in states[:1]:
            echo_lines(console.watcher_detail_lines(state))
        with factory() as session:
            echo_lines(console.quarantine_lines(quarantined(session, utcnow())))
            echo_lines(circuit_lines(session) or ["provider circuits: all closed"])
        return
    setup_logging(ctx.obj.get("log_level") or "INFO")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run drowns what matters
    runner = watcher.Watcher(settings)
    click.echo(f"watcher {runner.owner}: starting (stop with Ctrl-C or SIGTERM)", err=True)
    runner.run()
    click.echo(f"watcher {runner.owner}: stopped", err=True)
