"""The duty officer's console as a new user drives it: create, preview, approve as a second operator, send and
follow, pause, resume, cancel, report, look a booking up; and every refusal is one line, a documented exit code,
and nothing written."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli import main
from notifier.ops.demo import generate
from notifier.store.models import (AuditEntry, Booking, Broadcast, Customer, Disruption, Notification, Offer, Route,
                                   Sailing)

HONG_KONG = ZoneInfo("Asia/Hong_Kong")


@pytest.fixture
def live_db(factory, tmp_settings):
    """The demo network around the real clock: the CLI (and its dispatcher) run on real time."""
    return generate(factory, 600, datetime.now(UTC))


@pytest.fixture
def cli(tmp_settings, tmp_path):
    """Run `notifier ...` against the test database; returns the click Result."""
    env = {"NOTIFIER_DATABASE_URL": tmp_settings.database_url, "NOTIFIER_OUTBOX_DIR": tmp_settings.outbox_dir,
           "NOTIFIER_SECRET_KEY": "test-secret", "NOTIFIER_CONFIG": "", "NOTIFIER_OPERATOR": ""}

    def run(*args: str, input: str | None = None, **extra_env: str):
        return CliRunner().invoke(main, list(args), env={**env, **extra_env}, input=input)

    return run


def tomorrow_window(network, first: int = 8, last: int = 20) -> list[str]:
    """--from/--to for Hong Kong local hours of the demo's next day (naive: the port's local time)."""
    day = (network.epoch + timedelta(days=1)).astimezone(HONG_KONG).date()
    return ["--from", f"{day}T{first:02d}:00", "--to", f"{day}T{last:02d}:00"]


def broadcast_id_in(output: str) -> int:
    return int(re.search(r"Broadcast #(\d+)", output).group(1))


def statuses(factory, broadcast_id: int) -> dict[str, int]:
    with factory() as session:
        return dict(session.execute(select(Notification.status, func.count())
                                    .where(Notification.broadcast_id == broadcast_id)
                                    .group_by(Notification.status)).all())


def busy_sailing(factory, after: datetime) -> str:
    with factory() as session:
        return session.execute(
            select(Sailing.code).join(Route, Route.id == Sailing.route_id).join(Booking, Booking.sailing_id == Sailing.id)
            .where(Route.code == "QZ-HAK-HAI", Sailing.scheduled_departure > after + timedelta(hours=2))
            .group_by(Sailing.code).order_by(func.count().desc(), Sailing.code).limit(1)).scalar_one()


def snapshot(factory) -> dict:
    with factory() as session:
        return {model.__name__: session.scalar(select(func.count()).select_from(model))
                for model in (Broadcast, Disruption, Notification, Offer, AuditEntry)}


def assert_one_line_error(result, code: int, words: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("notifier: ") and words in lines[0], result.stderr


def test_a_duty_officers_night(cli, factory, live_db, tmp_settings):
    window = tomorrow_window(live_db)
    created = cli("broadcast", "create", "--route", "HKM-HKG-MFM", *window, "--kind", "delayed",
                  "--delay-minutes", "45", "--reason", "Engine inspection; please check in as usual.",
                  "--operator", "alice")
    assert created.exit_code == 0, created.output
    first = broadcast_id_in(created.output)
    for expected in ("awaiting approval", "Recipients:", "Bookings without any usable contact:", "SMS:",
                     "estimated cost USD", "Expected time to deliver", "--- sample: sms zh-CN",
                     "--- sample: email en", f"broadcast approve {first} --operator NAME"):
        assert expected in created.output, expected
    assert cli("broadcast", "preview", str(first)).output.splitlines()[:12] == created.output.splitlines()[:12]
    held = statuses(factory, first)
    assert set(held) == {"held"}

    refused = cli("broadcast", "send", str(first), "--operator", "alice", "--yes")
    assert_one_line_error(refused, 4, "needs approval")
    assert_one_line_error(cli("broadcast", "approve", str(first), "--operator", "alice"), 4, "different operator")
    assert statuses(factory, first) == held
    approved = cli("broadcast", "approve", str(first), "--operator", "bob")
    assert approved.exit_code == 0 and "approved by bob" in approved.output

    sent = cli("broadcast", "send", str(first), "--wait", "--yes", NOTIFIER_OPERATOR="alice")
    assert sent.exit_code == 0, sent.output
    assert f"{held['held']} messages released" in sent.output
    assert f"Broadcast #{first}: done; {held['held']} message(s): sent {held['held']}" in sent.output
    assert statuses(factory, first) == {"sent": held["held"]}

    sailing = busy_sailing(factory, live_db.epoch)
    second_run = cli("broadcast", "create", "--sailing", sailing, "--kind", "cancelled", "--operator", "carol",
                     input="n\n")
    assert second_run.exit_code == 0, second_run.output
    second = broadcast_id_in(second_run.output)
    assert "Approval: not needed" in second_run.output and "is held; nothing has been sent" in second_run.output
    assert "places held" in second_run.output
    assert cli("broadcast", "send", str(second), "--operator", "carol", "--yes").exit_code == 0
    queued = cli("broadcast", "status", str(second))
    assert "sending" in queued.output and "queued" in queued.output and "sent 0" in queued.output
    assert cli("broadcast", "pause", str(second), "--operator", "carol").exit_code == 0
    assert cli("dispatch", "--once").exit_code == 0
    assert "sent" not in statuses(factory, second)  # paused: the dispatcher claimed none of it
    assert cli("broadcast", "resume", str(second), "--operator", "carol").exit_code == 0
    cancelled = cli("broadcast", "cancel", str(second), "--operator", "carol")
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled:" in cancelled.output and "unsent message(s) stopped" in cancelled.output
    assert set(statuses(factory, second)) == {"cancelled"}

    report = cli("report")
    assert report.exit_code == 0, report.output
    assert "EU 30-min duty" in report.output and "Totals over" in report.output
    figures = json.loads(cli("report", "--json").output)
    with factory() as session:
        told = session.scalar(select(func.count(func.distinct(Notification.booking_id)))
                              .where(Notification.broadcast_id == first))
    assert figures["totals"]["told"] == told
    assert figures["totals"]["cancelled"] == sum(statuses(factory, second).values())

    trail = cli("audit").output
    for actor, action in (("alice", "broadcast.created"), ("bob", "broadcast.approved"), ("alice", "broadcast.sent"),
                          ("carol", "broadcast.paused"), ("carol", "broadcast.resumed"),
                          ("carol", "broadcast.cancelled")):
        assert re.search(rf"{actor}\s+{re.escape(action)}", trail), (actor, action)
    listed = cli("broadcast", "list").output
    assert re.search(rf"#{first} .* done", listed) and re.search(rf"#{second} .* cancelled", listed)


def test_booking_show_masks_contacts(cli, factory, live_db, tmp_settings):
    window = tomorrow_window(live_db)
    created = cli("broadcast", "create", "--route", "HKM-HKG-MFM", *window, "--kind", "delayed", "--delay-minutes",
                  "30", "--operator", "alice", "--yes")
    assert created.exit_code == 0, created.output
    with factory() as session:
        booking, phone, email = session.execute(
            select(Booking.ref, Customer.phone, Customer.email).join(Customer, Customer.id == Booking.customer_id)
            .join(Notification, Notification.booking_id == Booking.id)
            .where(Notification.channel == "sms", Customer.email.is_not(None))).first()

    shown = cli("booking", "show", booking)

    assert shown.exit_code == 0, shown.output
    digits = re.sub(r"\D", "", phone)
    assert digits not in re.sub(r"[^\d\n]", "", shown.output) and email not in shown.output
    assert "****" in shown.output or "***" in shown.output
    assert "Notices: 2" in shown.output and "queued" in shown.output and "Choice: none yet" in shown.output
    assert_one_line_error(cli("booking", "show", "NOPE"), 2, "unknown booking 'NOPE'")


REFUSALS = [
    (["--sailing", "NO-SUCH", "--kind", "cancelled", "--operator", "a"], 2, "unknown sailing 'NO-SUCH'"),
    (["--route", "NOPE", "--from", "2026-01-01T00:00", "--to", "2026-01-02T00:00", "--kind", "cancelled",
      "--operator", "a"], 2, "unknown route 'NOPE'"),
    (["--port", "ZZZZZ", "--from", "2026-01-01T00:00", "--to", "2026-01-02T00:00", "--kind", "cancelled",
      "--operator", "a"], 2, "unknown port 'ZZZZZ'"),
    (["--route", "HKM-HKG-MFM", "--from", "2020-01-01T08:00", "--to", "2020-01-01T09:00", "--kind", "cancelled",
      "--operator", "a"], 2, "no sailings match"),
    (["--route", "HKM-HKG-MFM", "TOMORROW", "--kind", "cancelled"], 2, "--operator"),
    (["--route", "HKM-HKG-MFM", "TOMORROW", "--kind", "cancelled", "--template", "nonesuch", "--operator", "a"],
     3, "unknown template 'nonesuch'"),
    (["--route", "HKM-HKG-MFM", "TOMORROW", "--kind", "cancelled", "--audience", "shippers", "--operator", "a"],
     1, "nothing to send"),
]


def test_refusals_are_one_line_with_their_exit_code_and_write_nothing(cli, factory, live_db):
    before = snapshot(factory)
    for args, code, words in REFUSALS:
        if "TOMORROW" in args:
            at = args.index("TOMORROW")
            args = args[:at] + tomorrow_window(live_db) + args[at + 1:]

        result = cli("broadcast", "create", *args)

        assert_one_line_error(result, code, words)
        assert snapshot(factory) == before, args


def test_state_errors_are_one_line(cli, factory, live_db):
    assert_one_line_error(cli("broadcast", "preview", "42"), 2, "unknown broadcast #42")
    assert_one_line_error(cli("broadcast", "pause", "42", "--operator", "a"), 2, "unknown broadcast #42")
    created = cli("broadcast", "create", "--route", "HKM-HKG-MFM", *tomorrow_window(live_db), "--kind", "delayed",
                  "--delay-minutes", "20", "--operator", "alice", input="n\n")
    broadcast_id = broadcast_id_in(created.output)
    assert_one_line_error(cli("broadcast", "resume", str(broadcast_id), "--operator", "alice"), 1, "not paused")
    assert_one_line_error(cli("report", "--disruption", "999"), 2, "unknown disruption #999")
    assert_one_line_error(cli("audit", "--since", "last tuesday"), 2, "--since 'last tuesday'")


def test_report_html_is_written(cli, live_db, tmp_path):
    target = tmp_path / "report.html"
    result = cli("report", "--html", str(target))
    assert result.exit_code == 0 and target.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_config_show_masks_secrets(cli):
    result = cli("config", "show", NOTIFIER_TWILIO_AUTH_TOKEN="tok-very-secret",
                 NOTIFIER_DATABASE_URL="postgresql+psycopg://ops:hunter2@db.example/notifier")
    assert result.exit_code == 0, result.output
    assert "tok-very-secret" not in result.output and "hunter2" not in result.output
    assert "twilio_auth_token = '****'" in result.output
    assert "postgresql+psycopg://ops:****@db.example/notifier" in result.output


def test_feeds_list_shows_each_source_and_the_watcher(cli, live_db, tmp_path):
    config = tmp_path / "notifier.toml"
    config.write_text('[[feeds]]\nname = "hainan-cap"\nurl = "https://met.example/cap.atom"\nformat = "atom"\n'
                      "poll_seconds = 60\n", encoding="utf-8")
    result = cli("--config", str(config), "feeds", "list")
    assert result.exit_code == 0, result.output
    assert re.search(r"hainan-cap\s+atom\s+60s\s+never polled", result.output)
    assert "none has run against this database" in result.output


def test_feeds_poll_once_hands_a_new_warning_to_the_rules_and_feeds_list_shows_it_healthy(cli, live_db, tmp_path):
    from notifier.ops.demo import bundled_feed

    warning = tmp_path / "typhoon.xml"
    warning.write_bytes(bundled_feed(live_db.epoch))
    config = tmp_path / "notifier.toml"
    config.write_text(f'[[feeds]]\nname = "hainan-cap"\nurl = "{warning}"\nformat = "cap"\n', encoding="utf-8")

    first = cli("--config", str(config), "feeds", "poll", "--once")
    again = cli("--config", str(config), "feeds", "poll", "--once")
    listed = cli("--config", str(config), "feeds", "list")

    assert first.exit_code == 0, first.output
    assert "hainan-cap: new, 1 document(s), 1 observation(s), 1 new, 0 already seen" in first.output
    assert re.search(r"rules: 1 new item\(s\), [1-9]\d* disruption\(s\) opened or revised", first.output)
    assert "hainan-cap: unchanged" in again.output and "rules: 0 new item(s)" in again.output
    assert re.search(r"hainan-cap\s+cap\s+120s\s+ok", listed.output)


def test_feeds_poll_without_feeds_is_a_clear_error(cli, live_db):
    assert_one_line_error(cli("feeds", "poll", "--once"), 2, "no feeds configured")
