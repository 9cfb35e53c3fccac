"""`notifier agents add/list/disable`: the people who may sign in to the service desk (/desk)."""

from __future__ import annotations

import click

from notifier.commands.common import echo_lines, open_database, operator_option, settings_from
from notifier.errors import UsageError


@click.group()
def agents() -> None:
    """Service-desk agents (who may sign in to /desk)."""


@agents.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["agent", "duty", "supervisor"]), default="agent", show_default=True,
              help="duty and supervisor may also approve and send broadcasts from the desk.")
@click.option("--password", envvar="NOTIFIER_AGENT_PASSWORD", default=None,
              help="The password (default: asked, never echoed; or NOTIFIER_AGENT_PASSWORD).")
@operator_option
@click.pass_context
def agents_add(ctx: click.Context, name: str, role: str, password: str | None, operator: str | None) -> None:
    """Create an agent; the password is stored as an argon2 hash only."""
    from notifier.store.db import transaction
    from notifier.web.desk.auth import add_agent

    settings = settings_from(ctx)
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with transaction(open_database(settings)) as session:
        agent = add_agent(session, name, role, password, operator or settings.operator or "cli")
        click.echo(f"agent {agent.name} ({agent.role}) added; they sign in at /desk")


@agents.command("list")
@click.pass_context
def agents_list(ctx: click.Context) -> None:
    """Every agent with their role and state (never a password or its hash)."""
    from notifier.ops.console import table
    from notifier.web.desk.auth import agents as all_agents

    with open_database(settings_from(ctx))() as session:
        rows = [[a.name, a.role, "disabled" if a.disabled else ("locked" if a.locked_until else "active")]
                for a in all_agents(session)]
    echo_lines(table(rows, ["name", "role", "state"], indent="") if rows else ["no agents yet"])


@agents.command("disable")
@click.argument("name")
@operator_option
@click.pass_context
def agents_disable(ctx: click.Context, name: str, operator: str | None) -> None:
    """Stop an agent from signing in (their open session ends too)."""
    from notifier.store.db import transaction
    from notifier.web.desk.auth import disable_agent

    settings = settings_from(ctx)
    if not name.strip():
        raise UsageError("name the agent to disable")
    with transaction(open_database(settings)) as session:
        disable_agent(session, name, operator or settings.operator or "cli")
    click.echo(f"agent {name} disabled")
