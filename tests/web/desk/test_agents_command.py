"""`notifier agents`: an agent is created with a hashed password, listed without it, and disabled; bad input is
one line and exit 2."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select

from cli import main
from notifier.store.models import Agent, AuditEntry


def run(tmp_settings, *args, password: str | None = None):
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url}
    if password is not None:
        env["NOTIFIER_AGENT_PASSWORD"] = password
    return CliRunner().invoke(main, list(args), env=env)


def test_an_agent_is_added_listed_and_disabled(engine, factory, tmp_settings):
    added = run(tmp_settings, "agents", "add", "li.na", "--role", "duty", "--operator", "boss",
                password="correct horse battery")
    assert added.exit_code == 0 and "li.na (duty) added" in added.output
    with factory() as session:
        agent = session.scalar(select(Agent))
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "agent.added"))
    assert agent.password_hash.startswith("$argon2") and "correct horse" not in agent.password_hash
    assert entry.actor == "boss" and "correct horse" not in str(entry.details)
    listed = run(tmp_settings, "agents", "list")
    assert "li.na" in listed.output and "duty" in listed.output and "active" in listed.output
    assert "argon2" not in listed.output
    assert run(tmp_settings, "agents", "disable", "li.na").exit_code == 0
    assert "disabled" in run(tmp_settings, "agents", "list").output


def test_bad_input_is_one_line_and_exit_2(engine, tmp_settings):
    short = run(tmp_settings, "agents", "add", "li.na", password="short")
    assert short.exit_code == 2 and "at least 10 characters" in short.output
    assert run(tmp_settings, "agents", "add", "li.na", "--role", "king", password="x" * 12).exit_code == 2
    run(tmp_settings, "agents", "add", "li.na", password="x" * 12)
    again = run(tmp_settings, "agents", "add", "li.na", password="y" * 12)
    assert again.exit_code == 2 and "already an agent called li.na" in again.output
    unknown = run(tmp_settings, "agents", "disable", "nobody")
    assert unknown.exit_code == 2 and "Traceback" not in unknown.output
