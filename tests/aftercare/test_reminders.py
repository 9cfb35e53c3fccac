"""Reminders: one, before the offer deadline, to customers who have not chosen; on the other channel when the
notice never arrived; never after a choice, an opt-out or the deadline; run by the watcher and announced in the
broadcast's preview."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from click.testing import CliRunner
from sqlalchemy import func, select, update

from bench.baseline_reminders import old_queue_reminders
from cli import main
from notifier.aftercare import reminders as reminders_module
from notifier.store.settings import load_settings
from notifier.ops.console import reminder_lines
from notifier.store.db import make_engine, session_factory, transaction
from notifier.ops.demo import bundled_feed, generate
from notifier.feeds import cap
from notifier.store.migrate import upgrade
from notifier.store.models import AuditEntry, Booking, Broadcast, Customer, Notification, Offer
from notifier.delivery.optouts import record_opt_out
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import ingest, plan_pending, process_new_items
from notifier.aftercare.reminders import due_reminders, planned_reminders, queue_reminders
from notifier.rules.load import load_rules
from notifier.aftercare.responses import handle_sms_reply
from notifier.ops.watcher import Watcher
from tests.conftest import DEMO_NOW
from tests.aftercare.test_closing_the_loop import role_phone, typhoon, typhoon_template  # noqa: F401


def deadline_of(factory):
    with factory() as session:
        return session.scalar(select(func.min(Offer.deadline)))


def reminders(factory) -> dict[int, tuple[str, str]]:
    """booking -> (channel, recipient) of every reminder in the outbox."""
    with factory() as session:
        return {b: (c, r) for b, c, r in session.execute(
            select(Notification.booking_id, Notification.channel, Notification.recipient)
            .where(Notification.purpose == "reminder"))}


def test_an_undelivered_sms_brings_the_reminder_by_email_once(typhoon, tmp_settings):
    factory, _, roles = typhoon
    booking_id = roles["unreachable"]  # told by SMS only: no email at the time
    with transaction(factory) as session:
        session.execute(update(Notification).where(Notification.booking_id == booking_id,
                                                   Notification.channel == "sms")
                        .values(status="undelivered", error_code="30003"))
        customer = session.get(Customer, session.get(Booking, booking_id).customer_id)
        customer.email = "Found.Later@Example.com"  # the desk found an email address meanwhile
    due = deadline_of(factory) - timedelta(minutes=tmp_settings.reminder_lead_minutes)

    queued = queue_reminders(factory, tmp_settings, due)

    assert queued > 0
    assert reminders(factory)[booking_id] == ("email", "Found.Later@example.com")
    assert queue_reminders(factory, tmp_settings, due + timedelta(minutes=30)) == 0
    assert len(reminders(factory)) == queued


def test_no_reminder_after_a_choice_an_opt_out_or_the_deadline(typhoon, tmp_settings):
    factory, _, roles = typhoon
    deadline = deadline_of(factory)
    with transaction(factory) as session:
        handle_sms_reply(session, tmp_settings, role_phone(0), "R", now=DEMO_NOW + timedelta(hours=1))
        record_opt_out(session, "sms", role_phone(5), "sms_stop")
        record_opt_out(session, "email", "silent@example.com", "unsubscribe")

    assert queue_reminders(factory, tmp_settings, deadline + timedelta(minutes=1)) == 0
    queue_reminders(factory, tmp_settings, deadline - timedelta(minutes=10))

    sent = reminders(factory)
    assert roles["chooses"] not in sent and roles["silent"] not in sent
    assert sent[roles["writes"]][0] == "sms"


def test_no_reminder_while_the_notice_is_on_its_way_or_was_just_sent(typhoon, tmp_settings):
    factory, _, roles = typhoon
    due = deadline_of(factory) - timedelta(minutes=60)
    with transaction(factory) as session:
        session.execute(update(Notification).where(Notification.booking_id == roles["writes"])
                        .values(status="queued", sent_at=None))
        session.execute(update(Notification).where(Notification.booking_id == roles["silent"])
                        .values(sent_at=due - timedelta(minutes=5)))

    queue_reminders(factory, tmp_settings, due)

    sent = reminders(factory)
    assert roles["writes"] not in sent and roles["silent"] not in sent and roles["sms_lost"] in sent
    queue_reminders(factory, tmp_settings, due + timedelta(minutes=tmp_settings.min_notice_interval_minutes))
    assert roles["silent"] in reminders(factory) and roles["writes"] not in reminders(factory)


def test_the_lead_time_is_configurable_and_zero_means_no_reminders(typhoon, tmp_settings):
    factory, _, _ = typhoon
    deadline = deadline_of(factory)
    hour_before = replace(tmp_settings, reminder_lead_minutes=60)

    assert queue_reminders(factory, hour_before, deadline - timedelta(minutes=90)) == 0
    off = replace(tmp_settings, reminder_lead_minutes=0)
    assert queue_reminders(factory, off, deadline - timedelta(minutes=5)) == 0
    assert queue_reminders(factory, hour_before, deadline - timedelta(minutes=55)) > 0


def test_reminders_name_the_options_and_the_deadline_in_the_customers_language(typhoon, tmp_settings):
    factory, _, roles = typhoon
    with transaction(factory) as session:
        session.execute(update(Notification).where(Notification.booking_id == roles["sms_lost"],
                                                   Notification.channel == "sms").values(status="failed"))
    queue_reminders(factory, tmp_settings, deadline_of(factory) - timedelta(minutes=30))
    with factory() as session:
        texts = {n.booking_id: n for n in session.scalars(select(Notification).where(
            Notification.purpose == "reminder", Notification.booking_id.in_(roles.values())))}
        refs = {b: session.get(Booking, b).ref for b in texts}

    chinese, english, english_sms = texts[roles["silent"]], texts[roles["sms_lost"]], texts[roles["unreachable"]]
    assert chinese.language == "zh-CN" and chinese.channel == "sms"
    assert chinese.body_text.startswith("【海峡轮渡】提醒：订单" + refs[roles["silent"]])
    assert "前选择：回复1改乘" in chinese.body_text and "回复R退票" in chinese.body_text
    assert "https://ferry.example/c/" in chinese.body_text and chinese.segments <= 3
    assert english.channel == "email" and english.subject.startswith("Reminder: please choose by ")
    assert re.search(r"  1\. Travel on .+ - a place is held for you", english.body_text)
    assert "If you do not choose by then, we will move you to the first alternative sailing" in english.body_text
    assert "Choose now" in english.body_html
    assert english_sms.body_text.startswith(f"Strait Ferries: reminder for booking {refs[roles['unreachable']]}, ")
    assert re.search(r"\(cancelled\)\. Please choose by .+: reply 1 for .+, R for a refund of .+\.\n"
                     r"https://ferry\.example/c/", english_sms.body_text)


def test_the_preview_says_which_reminders_a_broadcast_leads_to(typhoon, tmp_settings):
    factory, _, _ = typhoon
    with factory() as session:
        broadcast_id = session.scalar(select(Broadcast.id).order_by(Broadcast.id))
        told = session.scalar(select(func.count(func.distinct(Notification.booking_id)))
                              .where(Notification.broadcast_id == broadcast_id))
        plan = planned_reminders(session, broadcast_id, tmp_settings, now=DEMO_NOW + timedelta(minutes=5))
        later = planned_reminders(session, broadcast_id, tmp_settings, now=deadline_of(factory))
    assert plan["bookings"] == told and plan["queued"] == 0 and plan["timezone"] == "Asia/Shanghai"
    assert plan["first_due"] == plan["last_due"] == "2026-09-14 17:00"  # the 20:00 deadline (local), 3 h before
    assert reminder_lines(plan) == [
        f"Reminders: one each to the {told} booking(s) still without a choice, 180 min before their deadline "
        "(2026-09-14 17:00 Asia/Shanghai); on the other channel where the notice failed; none after a choice, an "
        "opt-out or the deadline; 0 queued so far"]
    assert later["bookings"] == 0 and reminder_lines(later)[0].startswith("Reminders: none to come")

    # The preview as a duty officer reads it (today, long after the demo typhoon's deadline).
    shown = CliRunner().invoke(main, ["broadcast", "preview", str(broadcast_id)],
                               env={"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url})
    assert shown.exit_code == 0, shown.output
    assert "Reminders: none to come (no booking has a choice still to make)" in shown.output


def test_the_watcher_runs_reminders_worklist_and_satisfaction(typhoon, tmp_settings):
    factory, _, _ = typhoon
    due = deadline_of(factory) - timedelta(minutes=60)
    watcher = Watcher(tmp_settings, owner="test:1", clock=lambda: due)
    try:
        assert {"reminders", "followups", "satisfaction"} <= {spec.name for spec in watcher.job_specs()}
        assert "inbound_email" not in {spec.name for spec in watcher.job_specs()}
        for job in ("reminders", "followups", "satisfaction"):
            watcher.run_job(job, None)
    finally:
        watcher.engine.dispose()
    assert watcher.details["reminders"]["queued"] == len(reminders(factory)) > 0
    assert "error" not in watcher.details["followups"] and watcher.details["satisfaction"] == {
        "at": due.isoformat(), "requested": 0}


# --- the chunked queue against the one-by-one reference ------------------------------------------------------------

ROW_FIELDS = ("dedup_key", "booking_id", "customer_id", "disruption_id", "revision", "broadcast_id", "channel",
              "recipient", "language", "template", "purpose", "subject", "body_text", "body_html", "segments",
              "safety_critical", "status", "priority", "attempts")


def settings_on(path: Path):
    return load_settings(env={}, config_path=None, database_url=f"sqlite:///{path}", outbox_dir=str(path.parent),
                         secret_key="test-secret", public_base_url="https://ferry.example")


@pytest.fixture(scope="module")
def many_due(tmp_path_factory):
    """The demo typhoon on 12,000 bookings with every notice sent long ago, then some exceptions: SMS lost (the
    reminder goes by email), an opt-out, a notice sent just now, a notice still queued. Returns the database
    and the moment more than 1,000 reminders are due, across many disruptions."""
    path = tmp_path_factory.mktemp("many-due") / "due.db"
    settings = settings_on(path)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    generate(factory, 12_000, DEMO_NOW)
    ingest(factory, cap.parse(bundled_feed(DEMO_NOW)))
    process_new_items(factory, load_rules([rules_dir()]), now=DEMO_NOW, settings=settings)
    plan_pending(factory, settings, now=DEMO_NOW)
    at = deadline_of(factory) - timedelta(minutes=30)
    with transaction(factory) as session:
        notice = Notification.purpose == "notice"
        session.execute(update(Notification).where(notice).values(status="sent", sent_at=at - timedelta(days=1)))
        session.execute(update(Notification).where(notice, Notification.channel == "sms",
                                                   Notification.booking_id % 7 == 0).values(status="undelivered"))
        session.execute(update(Notification).where(notice, Notification.booking_id % 11 == 0)
                        .values(sent_at=at - timedelta(minutes=1)))
        session.execute(update(Notification).where(notice, Notification.booking_id % 13 == 0)
                        .values(status="queued", sent_at=None))
        for recipient, channel in session.execute(select(Notification.recipient, Notification.channel)
                                                  .where(notice, Notification.booking_id % 17 == 0)).all():
            record_opt_out(session, channel, recipient, "sms_stop" if channel == "sms" else "unsubscribe")
    engine.dispose()
    return path, at


def queue_one_by_one(factory, settings, now) -> int:
    """The reference: the watcher's job as it was before chunking, booking by booking (bench/baseline_reminders.py,
    which the benchmark measures against too)."""
    return old_queue_reminders(factory, settings, now)[0]


def queued_on_a_copy(source: Path, name: str, queue, now) -> tuple[int, list[tuple], list[dict]]:
    """Run `queue` on a copy of the database: (count, outbox rows in id order, audit details)."""
    copy = source.with_name(name)
    shutil.copyfile(source, copy)
    settings = settings_on(copy)
    engine = make_engine(settings.database_url)
    try:
        factory = session_factory(engine)
        count = queue(factory, settings, now)
        with factory() as session:
            rows = session.execute(select(*(getattr(Notification, f) for f in ROW_FIELDS))
                                   .where(Notification.purpose == "reminder").order_by(Notification.id)).all()
            details = list(session.scalars(select(AuditEntry.details).where(
                AuditEntry.action == "reminders.queued").order_by(AuditEntry.id)))
        return count, [tuple(row) for row in rows], details
    finally:
        engine.dispose()


def test_the_chunked_queue_writes_exactly_what_the_one_by_one_queue_did(many_due, monkeypatch):
    source, at = many_due
    # Small chunks and pages, so that chunks and IN lists split (and a chunk spans two disruptions).
    monkeypatch.setattr(reminders_module, "CHUNK", 300)
    monkeypatch.setattr(reminders_module, "PAGE", 128)

    due = len(due_rows(source, at))
    expected, expected_rows, expected_audit = queued_on_a_copy(source, "reference.db", queue_one_by_one, at)
    count, rows, details = queued_on_a_copy(source, "chunked.db", queue_reminders, at)

    assert due >= 1000 and count == expected == len(rows) > 0.7 * due  # the rest: the exceptions made above
    assert rows == expected_rows  # every field, in the same order
    assert len({row[3] for row in rows}) >= 2 and len(details) == -(-due // 300)
    assert sum(d["count"] for d in details) == sum(d["count"] for d in expected_audit) == count
    assert sorted({i for d in details for i in d["disruptions"]}) == sorted({row[3] for row in rows})
    channels = {row[6] for row in rows if row[1] % 7 == 0}
    assert "email" in channels and not any(row[1] % 11 == 0 or row[1] % 13 == 0 for row in rows)
    assert not any(row[1] % 17 == 0 for row in rows)  # opted out: no reminder, not even on the other channel
    # A re-run queues nothing more.
    assert queued_on_a_copy(source.with_name("chunked.db"), "again.db", queue_reminders, at)[0] == 0


def due_rows(source: Path, at) -> list:
    engine = make_engine(settings_on(source).database_url)
    try:
        with session_factory(engine)() as session:
            return due_reminders(session, settings_on(source), at)
    finally:
        engine.dispose()
