"""Issue 16, finding 5: every error a user can cause is one line on stderr and exit 2, never an internal error (70)
or a traceback; nothing is written before the input is refused; a database in the wrong place is named; a mistyped
NOTIFIER_* variable is pointed out."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from notifier.feeds import MAX_FEED_BYTES
from notifier.store.paths import demo_data_dir

BUNDLED_FEED = demo_data_dir() / "typhoon_qiongzhou.xml"


def notifier(*args: str, **env: str):
    """Run `notifier ARGS` with the given NOTIFIER_* settings (and no notifier.toml)."""
    return CliRunner().invoke(main, list(args), env={"NOTIFIER_CONFIG": "", "NOTIFIER_OPERATOR": "", **env})


def assert_refused(result, *words: str) -> str:
    """Exit 2, one line on stderr that names what was wrong, no traceback anywhere."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("notifier: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def table_counts(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        return {table: connection.execute(f"select count(*) from {table}").fetchone()[0]
                for table in ("broadcasts", "disruptions", "notifications", "follow_ups", "audit_log")}


@pytest.fixture(scope="module")
def demo_database(tmp_path_factory) -> Path:
    """The demo's database, made once the way a user makes it (its unreachable customers are follow-ups to be)."""
    folder = tmp_path_factory.mktemp("demo")
    made = notifier("demo", "--db", str(folder / "demo.db"), "--outbox", str(folder / "outbox"))
    assert made.exit_code == 0, made.output
    return folder / "demo.db"


@pytest.fixture
def database(demo_database, tmp_path) -> Path:
    """A copy of the demo's database for one test."""
    return Path(shutil.copy(demo_database, tmp_path / "demo.db"))


def test_report_with_an_id_past_bigint_exits_2(database):
    result = notifier("report", "--disruption", "99999999999999999999", NOTIFIER_DATABASE_URL=f"sqlite:///{database}")
    assert_refused(result, "--disruption", "99999999999999999999")


def test_broadcast_approve_with_an_id_past_bigint_exits_2(database):
    before = table_counts(database)
    result = notifier("broadcast", "approve", "1180591620717411303424", "--operator", "bob",
                      NOTIFIER_DATABASE_URL=f"sqlite:///{database}")
    assert_refused(result, "1180591620717411303424")
    assert table_counts(database) == before


def test_audit_since_a_duration_past_year_one_exits_2(database):
    result = notifier("audit", "--since", "99999999d", NOTIFIER_DATABASE_URL=f"sqlite:///{database}")
    assert_refused(result, "--since", "99999999d")


def test_broadcast_create_from_year_one_exits_2_and_writes_nothing(database):
    before = table_counts(database)
    result = notifier("broadcast", "create", "--route", "QZ-HAK-HAI", "--from", "0001-01-01T00:00", "--to",
                      "2026-09-15T00:00", "--kind", "cancelled", "--operator", "alice", "--yes",
                      NOTIFIER_DATABASE_URL=f"sqlite:///{database}")
    assert_refused(result, "0001-01-01T00:00", "1970")
    assert table_counts(database) == before


def test_rules_test_at_year_one_exits_2(database):
    result = notifier("rules", "test", str(BUNDLED_FEED), "--db", str(database), "--at", "0001-01-01T00:00:00+00:00")
    assert_refused(result, "--at", "0001-01-01T00:00:00+00:00")


def test_rules_test_at_that_is_not_a_time_exits_2(database):
    result = notifier("rules", "test", str(BUNDLED_FEED), "--db", str(database), "--at", "next tuesday")
    assert_refused(result, "--at", "next tuesday", "ISO 8601")


def test_postgres_scheme_database_url_exits_2_naming_the_scheme_to_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = notifier("audit", NOTIFIER_DATABASE_URL="postgres://ops:s3cret@db.example/notifier")
    line = assert_refused(result, "postgresql+psycopg://")
    assert "s3cret" not in line


def test_demo_db_in_a_missing_folder_exits_2_naming_the_folder(tmp_path):
    missing = tmp_path / "nonexistent"
    result = notifier("demo", "--db", str(missing / "x.db"), "--outbox", str(tmp_path / "outbox"))
    assert_refused(result, str(missing))
    assert not missing.exists()


def test_demo_feed_that_is_missing_exits_2_and_creates_no_database(tmp_path):
    result = notifier("demo", "--db", str(tmp_path / "d.db"), "--feed", str(tmp_path / "nope.xml"))
    assert_refused(result, "nope.xml", "no such feed file")
    assert not (tmp_path / "d.db").exists()


def test_demo_feed_of_50_mb_exits_2_and_creates_no_database(tmp_path):
    huge = tmp_path / "huge.xml"
    with huge.open("wb") as feed:
        feed.truncate(50 * 1024 * 1024)
    assert huge.stat().st_size > MAX_FEED_BYTES
    result = notifier("demo", "--db", str(tmp_path / "d.db"), "--feed", str(huge))
    assert_refused(result, "huge.xml", "limit")
    assert not (tmp_path / "d.db").exists()


def test_followups_list_with_a_bogus_reason_exits_2_and_writes_nothing(database):
    before = table_counts(database)
    result = notifier("followups", "list", "--reason", "bogus", NOTIFIER_DATABASE_URL=f"sqlite:///{database}")
    assert_refused(result, "bogus", "unreachable")
    assert table_counts(database) == before


def test_followups_list_for_an_unknown_disruption_exits_2_and_writes_nothing(database):
    before = table_counts(database)
    result = notifier("followups", "list", "--disruption", "424242", NOTIFIER_DATABASE_URL=f"sqlite:///{database}")
    assert_refused(result, "#424242")
    assert table_counts(database) == before


def test_a_mistyped_notifier_variable_is_warned_about_once_with_the_nearest_name(database):
    result = notifier("audit", NOTIFIER_DATABASE_URL=f"sqlite:///{database}",
                      NOTIFIER_PUBLIC_URL="https://ferry.example")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "NOTIFIER_PUBLIC_URL" in line]
    assert len(warnings) == 1 and "NOTIFIER_PUBLIC_BASE_URL" in warnings[0], result.stderr


@pytest.mark.parametrize("command", [("broadcast", "list"), ("dispatch", "--once"), ("followups", "list")])
def test_a_command_in_a_folder_without_a_database_creates_none_and_names_the_path(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    result = notifier(*command)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "notifier.db" in result.stderr and str(tmp_path) in result.stderr
    assert not (tmp_path / "notifier.db").exists()


def test_a_database_without_tables_is_named_in_the_error(tmp_path):
    (tmp_path / "empty.db").touch()
    result = notifier("broadcast", "list", NOTIFIER_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "db upgrade" in result.stderr and str(tmp_path / "empty.db") in result.stderr


def test_db_upgrade_says_where_it_created_a_new_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = notifier("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"notifier: created a new database at {tmp_path.resolve() / 'notifier.db'}" in result.stderr.splitlines()
    again = notifier("db", "upgrade")
    assert again.exit_code == 0 and "created a new database" not in again.stderr
