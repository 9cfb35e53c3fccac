"""Answers written back: an SMS reply or a web choice moves the booking (the hold becomes a booking) or marks it
for refund, exactly once; unknown senders and stray text change nothing they should not; nobody answering
gets the policy's default and a notice; the export hands it all to reservations and finance."""

from __future__ import annotations

import csv
import io
import shutil
import threading
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update
from sqlalchemy.orm import joinedload

from cli import main
from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory, transaction
from notifier.ops.demo import bundled_feed, generate
from notifier.feeds import cap
from notifier.store.migrate import upgrade
from notifier.store.models import (AuditEntry, Booking, Customer, CustomerResponse, Disruption, Notification, Offer,
                                   Route, Sailing, SailingCapacity)
from notifier.planning.offers import expire_holds
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import ingest, plan_pending, process_new_items
from notifier.aftercare.responses import (ChoiceRefused, apply_no_answer_defaults, handle_sms_reply, record_choice,
                                          reply_keyword)
from notifier.rules.load import load_rules
from tests.conftest import DEMO_NOW

NOW = DEMO_NOW + timedelta(hours=1)


def plan_typhoon(factory, settings) -> None:
    """The demo typhoon through the pipeline, as the watcher runs it."""
    ingest(factory, cap.parse(bundled_feed(DEMO_NOW)))
    process_new_items(factory, load_rules([rules_dir()]), now=DEMO_NOW)
    plan_pending(factory, settings, now=DEMO_NOW)


@pytest.fixture(scope="session")
def planned_template(tmp_path_factory) -> Path:
    """The demo network with the typhoon planned, built once per run (test_web.py shares the file); each test
    gets a copy (see `factory`)."""
    folder = tmp_path_factory.getbasetemp() / "planned-typhoon"
    if (folder / "planned.db").exists():
        return folder / "planned.db"
    folder.mkdir()
    settings = load_settings(env={}, config_path=None, database_url=f"sqlite:///{folder / 'planned.db'}",
                             outbox_dir=str(folder / "outbox"), secret_key="test-secret",
                             public_base_url="https://ferry.example")
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    generate(factory, 600, DEMO_NOW)
    plan_typhoon(factory, settings)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return folder / "planned.db"


@pytest.fixture
def factory(planned_template, tmp_settings):
    """A session factory on a fresh copy of the planned demo database (what tmp_settings points at)."""
    copy = Path(tmp_settings.database_url.removeprefix("sqlite:///"))
    shutil.copyfile(planned_template, copy)
    engine = make_engine(tmp_settings.database_url)
    yield session_factory(engine)
    engine.dispose()


def db_state(factory) -> dict[str, list]:
    """Everything a choice could change."""
    with factory() as session:
        return {
            "responses": session.execute(select(CustomerResponse.id, CustomerResponse.choice)
                                         .order_by(CustomerResponse.id)).all(),
            "offers": session.execute(select(Offer.id, Offer.status).order_by(Offer.id)).all(),
            "bookings": session.execute(select(Booking.id, Booking.sailing_id, Booking.status, Booking.refund_amount)
                                        .order_by(Booking.id)).all(),
            "capacity": session.execute(select(SailingCapacity.id, SailingCapacity.booked, SailingCapacity.held)
                                        .order_by(SailingCapacity.id)).all(),
            "notifications": session.scalar(select(func.count()).select_from(Notification)),
            "audit": session.scalar(select(func.count()).select_from(AuditEntry)),
        }


def sms_notice(factory, language: str, with_email: bool | None = None) -> Notification:
    """An SMS notice in a language whose booking has a held first alternative."""
    with factory() as session:
        query = (select(Notification).join(Offer, (Offer.booking_id == Notification.booking_id)
                                           & (Offer.disruption_id == Notification.disruption_id))
                 .join(Customer, Customer.id == Notification.customer_id)
                 .where(Notification.channel == "sms", Notification.language == language,
                        Notification.purpose == "notice", Offer.option_key == "1", Offer.status == "held")
                 .order_by(Notification.id))
        if with_email is not None:
            query = query.where(Customer.email.is_not(None) if with_email else Customer.email.is_(None))
        return session.scalars(query).first()


def offers_of(factory, booking_id: int) -> dict[str, Offer]:
    with factory() as session:
        return {o.option_key: o for o in session.scalars(select(Offer).options(joinedload(Offer.sailing))
                                                         .where(Offer.booking_id == booking_id))}


def counters(factory, sailing_id: int, space: str) -> tuple[int, int]:
    with factory() as session:
        row = session.scalar(select(SailingCapacity).where(SailingCapacity.sailing_id == sailing_id,
                                                           SailingCapacity.space_class == space))
        return row.booked, row.held


def reply(factory, settings, number: str, body: str, now=NOW) -> str | None:
    with transaction(factory) as session:
        return handle_sms_reply(session, settings, number, body, now=now)


@pytest.mark.parametrize("body, key", [
    ("1", "1"), (" 2 ", "2"), ("１", "1"), ("２。", "2"), ("R", "R"), ("r", "R"), ("Ｒ", "R"), ("refund", "R"),
    ("退", "R"), ("退票", "R"), ("退款！", "R"), ("改签", "1"), ("改签2", "2"), ("改乘 ２", "2"), ("一", "1"),
    ("0", None), ("123", None), ("hello", None), ("STOPP", None), ("", None), ("1 please call me", None),
])
def test_reply_keywords_in_both_languages(body, key):
    assert reply_keyword(body) == key


def test_replying_1_moves_the_booking_onto_the_held_sailing(factory, tmp_settings):
    notice = sms_notice(factory, "zh-CN", with_email=True)
    offers = offers_of(factory, notice.booking_id)
    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        original, space, places = booking.sailing_id, booking.space_class, booking.places
    new_before = counters(factory, offers["1"].sailing_id, space)
    other_before = counters(factory, offers["2"].sailing_id, space)
    original_before = counters(factory, original, space)

    answer = reply(factory, tmp_settings, notice.recipient, "１")

    assert "已确认" in answer and booking.ref in answer and "改乘" in answer
    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        confirmations = session.execute(select(Notification.channel, Notification.body_text).where(
            Notification.booking_id == booking.id, Notification.purpose == "confirmation")).all()
        actions = set(session.scalars(select(AuditEntry.action).where(AuditEntry.subject_id == str(booking.id))))
    assert (booking.sailing_id, booking.status) == (offers["1"].sailing_id, "rebooked")
    assert counters(factory, offers["1"].sailing_id, space) == (new_before[0] + places, new_before[1] - places)
    assert counters(factory, offers["2"].sailing_id, space) == (other_before[0], other_before[1] - places)
    assert counters(factory, original, space) == (original_before[0] - places, original_before[1])
    assert {o.option_key: o.status for o in offers_of(factory, booking.id).values()} == \
        {"1": "accepted", "2": "released", "R": "released"}
    # The TwiML answer is the SMS confirmation; the email confirmation goes through the outbox.
    assert [channel for channel, _ in confirmations] == ["email"]
    assert booking.ref in confirmations[0][1]
    assert {"choice.recorded", "booking.rebooked"} <= actions


def test_a_refund_reply_in_chinese_marks_the_booking_for_refund(factory, tmp_settings):
    notice = sms_notice(factory, "zh-CN")

    answer = reply(factory, tmp_settings, notice.recipient, "退票")

    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
    assert (booking.status, booking.refund_amount) == ("refund", booking.fare_paid)
    assert isinstance(booking.refund_amount, Decimal) and booking.currency == "CNY"
    assert "全额退款" in answer and f"{booking.fare_paid}" in answer
    assert {o.status for o in offers_of(factory, booking.id).values() if o.kind == "rebook"} == {"released"}


def test_a_reply_from_an_unknown_number_is_answered_and_changes_nothing(factory, tmp_settings):
    before = db_state(factory)
    for number in ("+8613912345678", "not a number"):
        answer = reply(factory, tmp_settings, number, "1")
        assert "未找到" in answer and "could not find a booking" in answer
    assert db_state(factory) == before


def test_text_that_is_no_keyword_is_kept_for_the_follow_up_worklist(factory, tmp_settings):
    notice = sms_notice(factory, "en")
    before = db_state(factory)

    answer = reply(factory, tmp_settings, notice.recipient, "I have a wheelchair, which sailing is best?")

    with factory() as session:
        kept = session.scalars(select(CustomerResponse).where(CustomerResponse.choice == "free_text")).all()
    assert [(k.booking_id, k.channel, k.raw_text) for k in kept] == \
        [(notice.booking_id, "sms", "I have a wheelchair, which sailing is best?")]
    assert "an agent will reply" in answer and "1, 2, R" in answer
    after = db_state(factory)
    assert (after["bookings"], after["offers"], after["capacity"]) == \
        (before["bookings"], before["offers"], before["capacity"])


def test_a_second_answer_is_refused_politely_and_changes_nothing(factory, tmp_settings):
    notice = sms_notice(factory, "zh-CN")
    reply(factory, tmp_settings, notice.recipient, "1")
    before = db_state(factory)

    answer = reply(factory, tmp_settings, notice.recipient, "R")

    assert "选择已记录" in answer
    assert db_state(factory) == before


def test_an_answer_after_the_deadline_or_for_no_such_option_changes_nothing(factory, tmp_settings):
    notice = sms_notice(factory, "en")
    deadline = offers_of(factory, notice.booking_id)["1"].deadline
    before = db_state(factory)

    late = reply(factory, tmp_settings, notice.recipient, "1", now=deadline + timedelta(minutes=1))
    unknown = reply(factory, tmp_settings, notice.recipient, "7")

    assert "has passed" in late
    assert "please reply 1, 2, R" in unknown
    assert db_state(factory) == before


def race_web_and_sms(factory, settings, notice: Notification) -> list:
    """A click on the page and an SMS reply for the same booking at the same moment."""
    start = threading.Barrier(2)
    results: list = []

    def web() -> None:
        start.wait()
        try:
            with transaction(factory) as session:
                results.append(record_choice(session, settings, notice.booking_id, notice.disruption_id, "1", "web",
                                             now=NOW).choice)
        except ChoiceRefused as refused:
            results.append(refused.reason)

    def sms() -> None:
        start.wait()
        results.append(reply(factory, settings, notice.recipient, "R"))

    threads = [threading.Thread(target=web), threading.Thread(target=sms)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def assert_decided_once(factory, notice: Notification) -> None:
    with factory() as session:
        decisions = session.scalars(select(CustomerResponse).where(
            CustomerResponse.booking_id == notice.booking_id, CustomerResponse.decision_key == "choice")).all()
        booking = session.get(Booking, notice.booking_id)
        over = session.scalar(select(func.count()).select_from(SailingCapacity).where(
            (SailingCapacity.held < 0) | (SailingCapacity.booked + SailingCapacity.held > SailingCapacity.capacity)))
    assert len(decisions) == 1
    assert booking.status == {"rebook": "rebooked", "refund": "refund"}[decisions[0].choice]
    assert over == 0


def test_a_click_and_an_sms_at_once_decide_only_once_on_sqlite(factory, tmp_settings):
    notice = sms_notice(factory, "zh-CN")
    results = race_web_and_sms(factory, tmp_settings, notice)
    assert len(results) == 2
    assert_decided_once(factory, notice)


def test_a_click_and_an_sms_at_once_decide_only_once_on_postgresql(postgres_url, tmp_settings):
    engine = make_engine(postgres_url)
    try:
        factory = session_factory(engine)
        settings = replace(tmp_settings, database_url=postgres_url)
        generate(factory, 600, DEMO_NOW)
        plan_typhoon(factory, settings)
        notice = sms_notice(factory, "zh-CN")
        results = race_web_and_sms(factory, settings, notice)
        assert len(results) == 2
        assert_decided_once(factory, notice)
    finally:
        engine.dispose()


# --- no answer by the deadline ---------------------------------------------------------------------------------

def open_bookings(factory) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(Booking.id).join(Disruption, Disruption.sailing_id == Booking.sailing_id)
                                    .where(Booking.status == "confirmed").order_by(Booking.id)))


def test_without_an_answer_a_chinese_ticket_moves_to_its_held_sailing_and_is_told(factory, tmp_settings):
    answered = sms_notice(factory, "zh-CN")
    reply(factory, tmp_settings, answered.recipient, "R")
    waiting = open_bookings(factory)
    deadline = offers_of(factory, waiting[0])["1"].deadline

    assert apply_no_answer_defaults(factory, tmp_settings, deadline - timedelta(minutes=1)) == 0
    assert apply_no_answer_defaults(factory, tmp_settings, deadline + timedelta(minutes=1)) == len(waiting)
    assert apply_no_answer_defaults(factory, tmp_settings, deadline + timedelta(minutes=2)) == 0

    with factory() as session:
        moved = {b.id: b for b in session.scalars(select(Booking).where(Booking.id.in_(waiting)))}
        told = session.execute(select(Notification.booking_id, Notification.language, Notification.body_text)
                               .where(Notification.purpose == "confirmation", Notification.channel == "sms",
                                      Notification.booking_id.in_(waiting))).all()
        answered_booking = session.get(Booking, answered.booking_id)
    first_choice = {booking_id: offers_of(factory, booking_id).get("1") for booking_id in waiting[:20]}
    for booking_id, offer in first_choice.items():
        assert moved[booking_id].status == "rebooked" and moved[booking_id].sailing_id == offer.sailing_id
    assert told and all(("未在期限前选择" if language == "zh-CN" else "no answer by the deadline") in body
                        for _, language, body in told)
    assert answered_booking.status == "refund"  # an answer is never overridden


def test_without_an_answer_on_an_eu_route_the_fare_is_refunded(factory, tmp_settings):
    with transaction(factory) as session:
        session.execute(update(Route).where(Route.code == "QZ-HAK-HAI").values(jurisdiction="EU"))
    with factory() as session:
        eu_bookings = list(session.scalars(
            select(Booking.id).join(Sailing, Sailing.id == Booking.sailing_id).join(Route, Route.id == Sailing.route_id)
            .join(Disruption, Disruption.sailing_id == Sailing.id).where(Route.jurisdiction == "EU")))
    assert eu_bookings
    deadline = offers_of(factory, eu_bookings[0])["R"].deadline

    apply_no_answer_defaults(factory, tmp_settings, deadline + timedelta(minutes=1))

    with factory() as session:
        refunded = session.scalars(select(Booking).where(Booking.id.in_(eu_bookings))).all()
        held = session.scalar(select(func.count()).select_from(Offer).where(
            Offer.booking_id.in_(eu_bookings), Offer.status == "held"))
    assert {b.status for b in refunded} == {"refund"}
    assert all(b.refund_amount == b.fare_paid for b in refunded)
    assert held == 0


def test_without_an_answer_or_a_place_the_ticket_stays_valid(factory, tmp_settings):
    notice = sms_notice(factory, "zh-CN")
    offers = offers_of(factory, notice.booking_id)
    deadline = offers["1"].deadline
    with transaction(factory) as session:
        expire_holds(session, deadline + timedelta(minutes=1))  # the watcher ran first: every hold lapsed
        alternatives = [o.sailing_id for o in offers.values() if o.sailing_id]
        session.execute(update(SailingCapacity).where(SailingCapacity.sailing_id.in_(alternatives))
                        .values(booked=SailingCapacity.capacity - SailingCapacity.held))

    apply_no_answer_defaults(factory, tmp_settings, deadline + timedelta(minutes=1))

    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        decision = session.scalar(select(CustomerResponse).where(CustomerResponse.booking_id == booking.id))
        told = session.scalar(select(Notification.body_text).where(
            Notification.booking_id == booking.id, Notification.purpose == "confirmation",
            Notification.channel == "sms"))
        disrupted_sailing = session.get(Disruption, notice.disruption_id).sailing_id
    assert (booking.status, booking.sailing_id) == ("open", disrupted_sailing)
    assert (decision.choice, decision.channel) == ("open", "default")
    assert "首批航班继续有效" in told


# --- export ---------------------------------------------------------------------------------------------------------

def test_export_hands_each_choice_to_reservations_and_finance(factory, tmp_settings, tmp_path):
    rebooker, refunder = sms_notice(factory, "zh-CN"), sms_notice(factory, "en")
    reply(factory, tmp_settings, rebooker.recipient, "1")
    reply(factory, tmp_settings, refunder.recipient, "R")
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url}

    result = CliRunner().invoke(main, ["responses", "export", "--csv", str(tmp_path / "choices.csv")], env=env)
    to_stdout = CliRunner().invoke(main, ["responses", "export", "--csv"], env=env)

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "choices.csv").open(encoding="utf-8")))
    with factory() as session:
        moved, refunded = session.get(Booking, rebooker.booking_id), session.get(Booking, refunder.booking_id)
        new_code = session.get(Sailing, moved.sailing_id).code
    assert [(r["booking_ref"], r["choice"], r["option"], r["new_sailing"], r["refund_amount"], r["currency"],
             r["channel"]) for r in rows] == [
        (moved.ref, "rebook", "1", new_code, "", moved.currency, "sms"),
        (refunded.ref, "refund", "R", "", str(refunded.fare_paid), refunded.currency, "sms")]
    assert all(r["chosen_at"].endswith("+00:00") for r in rows)
    assert list(csv.DictReader(io.StringIO(to_stdout.stdout))) == rows


def test_export_without_the_format_flag_says_what_is_missing(tmp_settings):
    result = CliRunner().invoke(main, ["responses", "export"], env={"NOTIFIER_CONFIG": ""})
    assert result.exit_code != 0 and "--csv" in result.output
