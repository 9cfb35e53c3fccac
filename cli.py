"""The `notifier` command line: the click group, the mapping from errors to exit codes, and `main`. The commands
live in notifier/commands/, one module per command group in the order data flows.

A user error (bad file, unknown sailing, missing template value, bad option ...) prints one line on stderr and
exits non-zero; it never shows a traceback, and a command that fails writes nothing. Exit codes:

  0   done
  1   general: nothing to send (no bookings, nobody reachable, everyone already told), a broadcast in the
      wrong state for the action (cancel a finished one, pause one that is not sending), a feed poll failed
  2   bad input: unknown sailing / route / port / vessel / disruption / broadcast / booking, a bad option, id or
      time (ids are 1 to 2**63-1, years 1970 to 2200), a bad or missing feed file or rule file, a database URL
      that cannot be used or whose folder does not exist, no --operator
  3   template: unknown template, a template missing or lacking a value (nothing is planned)
  4   approval needed: sending a broadcast that awaits a second operator's approval, or approving one's own
  70  internal error (set NOTIFIER_DEBUG=1 to see its traceback)
  130 interrupted (Ctrl-C)

Times given on the command line (`--from`, `--to`) are ISO 8601; without an offset they are the local time of
the port (`--port`) or of the route's departure port (`--route`), UTC for `--vessel`.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, NoReturn

import click

from notifier.commands.agents import agents
from notifier.commands.broadcasts import broadcast
from notifier.commands.common import warn_unknown_environment
from notifier.commands.delivery import dispatch, serve, watch
from notifier.commands.desk import audit, booking, followups, purge, report, responses
from notifier.commands.feeds import feeds
from notifier.commands.intake import import_group
from notifier.commands.rules import rules
from notifier.commands.setup import config, db, demo
from notifier.errors import NotifierError

INTERNAL_ERROR = 70
# `notifier --help` lists the commands in the order data flows, not alphabetically.
COMMANDS = (demo, db, config, feeds, import_group, rules, broadcast, dispatch, serve, watch, responses, report,
            audit, booking, followups, purge, agents)


class NotifierGroup(click.Group):
    """The root group: whatever goes wrong in a command, the user reads one line and gets its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands in the order they were added (the data flow)."""
        return list(self.commands)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """The group's own options; a bad one is one line, exit 2."""
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; turn every error into one clear line and its exit code."""
        try:
            return super().invoke(ctx)
        except NotifierError as exc:
            click.echo(f"notifier: {error_line(exc, ctx)}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            usage_error(exc)
        except KeyboardInterrupt:
            click.echo("notifier: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence for a duty officer's terminal
            internal_error(exc)


def error_line(exc: NotifierError, ctx: click.Context) -> str:
    """The error's message; a database error also says which database, so that a command run in the wrong folder
    (or with the wrong configuration) is seen for what it is."""
    from notifier.store.db import DatabaseError

    where = (ctx.obj or {}).get("database")
    if isinstance(exc, DatabaseError) and where and where not in str(exc):
        return f"{exc} (database: {where})"
    return str(exc)


def usage_error(exc: click.UsageError) -> NoReturn:
    """A bad option or argument, as one line naming the command to ask for help (exit 2)."""
    command = exc.ctx.command_path if exc.ctx else "notifier"
    click.echo(f"notifier: {exc.format_message()} (see: {command} --help)", err=True)
    sys.exit(exc.exit_code)


def internal_error(exc: Exception) -> NoReturn:
    """A bug, not the user's doing: its first line, and its traceback with NOTIFIER_DEBUG=1 (exit 70)."""
    if os.environ.get("NOTIFIER_DEBUG"):
        traceback.print_exc()
    click.echo(f"notifier: internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
               if str(exc) else f"notifier: internal error: {type(exc).__name__}", err=True)
    sys.exit(INTERNAL_ERROR)


@click.group(cls=NotifierGroup)
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
    warn_unknown_environment(os.environ)


for command in COMMANDS:
    main.add_command(command)


if __name__ == "__main__":
    main()
