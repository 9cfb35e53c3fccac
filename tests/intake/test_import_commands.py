"""The `notifier import` commands as a user runs them: one line per outcome, exit 0 with rejects reported, exit 2
with one line for a file that cannot be used, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from sqlalchemy import func, select

import cli
from notifier.intake.mapping import FIELDS
from notifier.store.models import Booking, Customer
from notifier.store.paths import schemas_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
HARBOUR_FERRY = Path(__file__).resolve().parents[1] / "fixtures/feeds/handmade/gtfs-static/harbour-ferry"


@pytest.fixture
def notifier(monkeypatch, tmp_settings, engine):
    """Run `notifier ...` on the migrated test database."""
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", tmp_settings.database_url)

    def run(*args: str):
        return CliRunner().invoke(cli.main, [str(arg) for arg in args])

    return run


def test_network_then_bookings_then_again(notifier, factory, tmp_path):
    first = notifier("import", "network", FIXTURES / "network.yaml")
    assert first.exit_code == 0, first.output
    assert first.output.startswith("operators: 1 created, 0 updated; ports: 2 created, 0 updated; ")
    rejects = tmp_path / "rejects.csv"
    loaded = notifier("import", "bookings", FIXTURES / "bookings.csv", "--rejects", rejects)
    assert loaded.exit_code == 0, loaded.output
    assert "3 row(s): 2 created, 0 updated, 0 unchanged, 1 rejected" in loaded.output
    assert "line 2, customer_phone: is not a valid phone number" in loaded.output  # 07911..., no default region
    assert f"rejected rows, with line, field and reason: {rejects}" in loaded.output
    assert "contacts checked: 2 customer(s)" in loaded.output
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Customer).where(Customer.contact_check.is_not(None))) \
            == 2  # the same stored check planning uses
    (tmp_path / "gb.yaml").write_text("default_region: GB\n")
    again = notifier("import", "bookings", FIXTURES / "bookings.csv", "--map", tmp_path / "gb.yaml", "--rejects",
                     rejects)
    assert "3 row(s): 1 created, 2 updated, 0 unchanged, 0 rejected" in again.output  # a new mapping: all checked
    same = notifier("import", "bookings", FIXTURES / "bookings.csv", "--map", tmp_path / "gb.yaml")
    assert same.output == "3 row(s): 0 created, 0 updated, 3 unchanged, 0 rejected\n"
    assert notifier("import", "network", FIXTURES / "network.yaml").output.count(": 0 created, 0 updated") == 5


def test_a_dry_run_says_so_and_writes_nothing(notifier, factory, tmp_path):
    notifier("import", "network", FIXTURES / "network.yaml")
    (tmp_path / "gb.yaml").write_text("default_region: GB\n")
    result = notifier("import", "bookings", FIXTURES / "bookings.csv", "--map", tmp_path / "gb.yaml", "--dry-run")
    assert result.exit_code == 0
    assert result.output.startswith("dry run, nothing written: 3 row(s): 3 would be created")
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Booking)) == 0


@pytest.mark.parametrize("args, message", [
    (["bookings", FIXTURES / "bookings.csv", "--map", FIXTURES / "network.yaml"], "unknown key(s) operators"),
    (["network", FIXTURES / "bookings.csv"], "a network file is a mapping of operators"),
    (["gtfs", FIXTURES], "GTFS feed intake has no agency.txt"),
])
def test_a_file_that_cannot_be_used_is_one_line_and_exit_2(notifier, args, message):
    result = notifier("import", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_gtfs_whose_calendar_ended_warns_and_exits_0(notifier):
    result = notifier("import", "gtfs", HARBOUR_FERRY, "--today", "2031-01-06")
    assert result.exit_code == 0
    assert "sailings: 0" in result.output
    assert "warning: the feed's calendar ends on 2025-12-31, before 2031-01-06 .. 2031-01-12" in result.output


def test_the_schema_names_the_fields_the_importer_reads_and_the_fixtures_follow_it():
    schema = json.loads((schemas_dir() / "booking.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) == set(FIELDS)
    good = {"booking_ref": "B1", "sailing": "S1", "currency": "EUR", "customer_name": "Ann", "passengers_adult": "2"}
    assert Draft202012Validator(schema).is_valid(good)
    assert not Draft202012Validator(schema).is_valid(good | {"status": "pending"})
    assert not Draft202012Validator(schema).is_valid({k: v for k, v in good.items() if k != "sailing"})
    for name in ("network", "mapping"):
        Draft202012Validator.check_schema(json.loads((schemas_dir() / f"{name}.schema.json").read_text()))
