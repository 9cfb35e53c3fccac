"""The satisfaction check: asked once per customer when their disruption is resolved (not while the desk still has
work on it), answered by an SMS digit or a click on a small page, and counted per disruption with how it was
settled."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bench.baseline_satisfaction import old_queue_requests
from notifier.aftercare import satisfaction
from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory, transaction
from notifier.ops.demo import bundled_feed, generate
from notifier.delivery.fallback import contact
from notifier.feeds import cap
from notifier.aftercare.followups import close, refresh, take
from notifier.store.models import (Booking, Customer, CustomerResponse, Disruption, FollowUp, Notification, Offer,
                                   OptOut, SatisfactionRequest)
from notifier.store.migrate import upgrade
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import expire_disruptions, ingest, plan_pending, process_new_items
from notifier.outbox import NOTICE_COLUMNS
from notifier.aftercare.responses import apply_no_answer_defaults, handle_sms_reply
from notifier.rules.load import load_rules
from notifier.aftercare.satisfaction import loop_figures, make_token, queue_requests, read_score, resolved_disruptions
from tests.conftest import DEMO_NOW
from tests.aftercare.test_closing_the_loop import (dispatch, role_phone, sms_from, typhoon, typhoon_template,  # noqa: F401
                                         web)


@pytest.mark.parametrize("body, score", [
    ("5", 5), (" 4 ", 4), ("５", 5), ("三", 3), ("4分", 4), ("5 stars", 5), ("3/5", 3), ("2!", 2), ("1。", 1),
    ("0", None), ("6", None), ("45", None), ("good", None), ("", None), ("5 but the ferry was late", None),
])
def test_a_score_is_a_digit_from_one_to_five_in_either_language(body, score):
    assert read_score(body) == score


def resolve(factory, settings):
    """Nobody else answers: the deadline's defaults, their confirmations, then the warning ends. Returns when."""
    with factory() as session:
        deadline = session.scalar(select(func.min(Offer.deadline)))
        window_end = session.scalar(select(func.max(Disruption.window_end)))
    apply_no_answer_defaults(factory, settings, deadline + timedelta(minutes=1))
    dispatch(factory, settings, deadline + timedelta(minutes=2))
    expire_disruptions(factory, window_end + timedelta(minutes=1))
    return window_end + timedelta(minutes=1)


@pytest.fixture(scope="session")
def resolved_template(typhoon_template, tmp_path_factory) -> Path:  # noqa: F811
    """The typhoon template after the deadline's defaults and the all-clear, built once per run."""
    folder = tmp_path_factory.getbasetemp() / "typhoon-resolved"
    if not (folder / "over.json").exists():
        folder.mkdir(exist_ok=True)
        shutil.copyfile(typhoon_template / "typhoon.db", folder / "typhoon.db")
        settings = load_settings(env={}, config_path=None, database_url=f"sqlite:///{folder / 'typhoon.db'}",
                                 outbox_dir=str(folder / "outbox"), secret_key="test-secret",
                                 public_base_url="https://ferry.example")
        engine = make_engine(settings.database_url)
        over = resolve(session_factory(engine), settings)
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        (folder / "over.json").write_text(json.dumps({"over": over.isoformat()}))
    return folder


@pytest.fixture
def resolved(resolved_template, typhoon, tmp_settings):  # noqa: F811
    """`typhoon`, but resolved: (session factory, target, roles, the moment the warning ended)."""
    factory, target, roles = typhoon
    factory.kw["bind"].dispose()
    database = Path(tmp_settings.database_url.removeprefix("sqlite:///"))
    for leftover in (database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        leftover.unlink(missing_ok=True)
    shutil.copyfile(resolved_template / "typhoon.db", database)
    over = datetime.fromisoformat(json.loads((resolved_template / "over.json").read_text())["over"])
    return factory, target, roles, over


def requests_for(factory, booking_ids) -> list[tuple[int, str]]:
    with factory() as session:
        return session.execute(select(Notification.booking_id, Notification.channel).where(
            Notification.purpose == "satisfaction", Notification.booking_id.in_(list(booking_ids)))
            .order_by(Notification.booking_id)).all()


def test_customers_are_asked_once_their_disruption_is_resolved_and_the_desk_is_done(typhoon, tmp_settings):
    factory, target, roles = typhoon
    with transaction(factory) as session:
        session.execute(update(Disruption).values(known_at=DEMO_NOW))  # the warning arrived at DEMO_NOW
        handle_sms_reply(session, tmp_settings, role_phone(2), "Do I need to come to the port?",
                         now=DEMO_NOW + timedelta(hours=1))
    assert queue_requests(factory, tmp_settings, DEMO_NOW + timedelta(hours=2)) == 0  # still disrupted

    over = resolve(factory, tmp_settings)
    asked_elsewhere = queue_requests(factory, tmp_settings, over + timedelta(minutes=5))
    assert requests_for(factory, roles.values()) == []  # the desk still owes "writes" an answer
    assert asked_elsewhere > 0  # other sailings' customers, whose disruptions are resolved

    with transaction(factory) as session:
        item = session.scalar(select(FollowUp).where(FollowUp.booking_id == roles["writes"]))
        take(session, item.id, "alice", over + timedelta(minutes=10))
        close(session, item.id, "other", "Told them not to come; first sailing tomorrow",
              now=over + timedelta(minutes=20))
    assert queue_requests(factory, tmp_settings, over + timedelta(minutes=30)) == len(roles)
    assert queue_requests(factory, tmp_settings, over + timedelta(hours=5)) == 0

    assert [channel for _, channel in requests_for(factory, roles.values())] == ["sms"] * len(roles)
    with factory() as session:
        figures = loop_figures(session, [target], over + timedelta(hours=1))[target]
    assert (figures.affected, figures.settled, figures.without_person, figures.followups_done,
            figures.followups_open, figures.requests, figures.resolved) == (6, 6, 5, 1, 0, 6, True)
    assert figures.all_settled_minutes == (over + timedelta(minutes=20) - DEMO_NOW).total_seconds() / 60
    assert figures.median_minutes == 12 * 60 + 1  # the no-answer defaults, a minute after the deadline


def test_an_sms_digit_is_a_score_only_in_answer_to_the_request(resolved, web, tmp_settings):
    factory, _, roles, over = resolved
    client, clock = web
    clock.now = over + timedelta(minutes=1)
    before_request = sms_from(client, role_phone(5), "4")  # an answer to the notice: too late to choose
    assert "感谢您的评分" not in before_request

    queue_requests(factory, tmp_settings, over + timedelta(minutes=5))
    clock.now = over + timedelta(hours=1)
    assert "感谢您的评分（4分）" in sms_from(client, role_phone(5), "4")
    assert "感谢您的评分（4分）" in sms_from(client, role_phone(5), "1")  # the first score counts
    clock.now = over + timedelta(days=tmp_settings.satisfaction_reply_days, hours=1)
    assert "感谢" not in sms_from(client, role_phone(2), "5")  # too late for a score

    with factory() as session:
        scores = session.execute(select(SatisfactionRequest.booking_id, SatisfactionRequest.score)
                                 .where(SatisfactionRequest.score.is_not(None))).all()
        kept = session.scalars(select(CustomerResponse.raw_text).where(CustomerResponse.choice == "score")).all()
    assert scores == [(roles["silent"], 4)] and kept == ["4"]


def test_the_score_page_shows_five_buttons_and_records_a_click_once(resolved, web, tmp_settings):
    factory, _, roles, over = resolved
    client, clock = web
    queue_requests(factory, tmp_settings, over + timedelta(minutes=5))
    with factory() as session:
        asked = session.scalar(select(SatisfactionRequest).where(SatisfactionRequest.booking_id == roles["sms_lost"]))
    path = f"/s/{make_token('test-secret', asked.customer_id, asked.sailing_id)}"
    clock.now = over + timedelta(hours=1)

    page = client.get(path)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    text = page.get_data(as_text=True)
    assert "How did we do?" in text and text.count('name="score"') == 5
    assert client.post(path, data={"score": "9"}).status_code == 400
    assert client.post(path, data={"score": "4"}, headers={"Origin": "https://evil.example"}).status_code == 400
    assert client.get(path[:-3] + "xyz").status_code == 404

    chosen = client.post(path, data={"score": "4"}, headers={"Origin": "https://ferry.example"})
    again = client.post(path, data={"score": "1"})

    assert "your score is 4 out of 5" in chosen.get_data(as_text=True)
    assert "your score is 4 out of 5" in again.get_data(as_text=True)
    assert "your score is 4 out of 5" in client.get(path).get_data(as_text=True)
    with factory() as session:
        scored = session.get(SatisfactionRequest, asked.id)
    assert (scored.score, scored.score_channel) == (4, "web")


def test_nobody_is_asked_when_the_check_is_off_or_nothing_ever_reached_them(resolved, tmp_settings):
    factory, _, roles, over = resolved
    with transaction(factory) as session:
        session.execute(update(Notification).where(Notification.booking_id == roles["unreachable"])
                        .values(status="undelivered"))
        refresh(session, tmp_settings, over)
        for item in session.scalars(select(FollowUp).where(FollowUp.status == "open")).all():
            close(session, item.id, "no-answer", "Nobody answered the phone", "bob", over + timedelta(minutes=1))

    assert queue_requests(factory, replace(tmp_settings, satisfaction_check=False), over + timedelta(hours=1)) == 0
    queue_requests(factory, tmp_settings, over + timedelta(hours=1))

    asked = dict(requests_for(factory, roles.values()))
    assert roles["unreachable"] not in asked and len(asked) == len(roles) - 1


# --- the chunked job against the one-by-one job it replaced ----------------------------------------------------------

def reference_queue_requests(factory, settings, now) -> int:
    """The one-by-one job as it was before chunking (bench/baseline_satisfaction.py, which the benchmark measures
    against too): the reference the chunked job must match row for row."""
    return old_queue_requests(factory, settings, now)[0]


def asked_rows(factory) -> tuple[list[tuple], list[tuple]]:
    """Every request (its notice named by key) and every satisfaction notice, all columns but ids and times."""
    with factory() as session:
        requests = session.execute(
            select(SatisfactionRequest.customer_id, SatisfactionRequest.booking_id, SatisfactionRequest.disruption_id,
                   SatisfactionRequest.sailing_id, SatisfactionRequest.channel, SatisfactionRequest.requested_at,
                   Notification.dedup_key)
            .outerjoin(Notification, Notification.id == SatisfactionRequest.notification_id)
            .order_by(SatisfactionRequest.customer_id, SatisfactionRequest.sailing_id)).all()
        notices = session.execute(select(*[getattr(Notification, name) for name in NOTICE_COLUMNS])
                                  .where(Notification.purpose == "satisfaction")
                                  .order_by(Notification.dedup_key)).all()
    return [tuple(r) for r in requests], [tuple(n) for n in notices]


def mix_the_cases(factory, settings, over) -> None:
    """Every disruption resolved, plus what makes a request's channel or existence depend on the order: customers
    with two settled bookings on a sailing (the first unreachable), opted-out numbers, undelivered SMS, and a
    customer asked before."""
    close_the_desk(factory, settings, over)
    with factory() as session:
        # By disruption: a booking's sailing is its current one, which a rebooking changed.
        settled = {d: [s.booking_id for s in rows] for d, rows in resolved_disruptions(session, over).items()}
    with transaction(factory) as session:
        bookings = session.scalars(select(Booking).where(Booking.id.in_([b for ids in settled.values() for b in ids]))
                                   .order_by(Booking.id)).all()
        by_id = {b.id: b for b in bookings}
        for index, ids in enumerate(ids for _, ids in sorted(settled.items()) if len(ids) > 1):
            first, second = by_id[ids[0]], by_id[ids[1]]
            second.customer_id = first.customer_id  # one customer, two bookings on the disrupted sailing
            if index % 2 == 0:  # ... the first of which nothing reached: the second is the one asked
                session.execute(update(Notification).where(Notification.booking_id == first.id)
                                .values(status="undelivered"))
        customers = session.scalars(select(Customer).where(Customer.id.in_([b.customer_id for b in bookings]))
                                    .order_by(Customer.id)).all()
        for customer in customers[::7]:
            if contact(customer, "sms"):
                session.add(OptOut(channel="sms", address=contact(customer, "sms"), source="test"))
        session.execute(update(Notification).where(Notification.channel == "sms", Notification.booking_id % 5 == 0)
                        .values(status="undelivered"))
        disruption = session.get(Disruption, max(settled))
        earlier = by_id[settled[disruption.id][-1]]
        session.add(SatisfactionRequest(customer_id=earlier.customer_id, booking_id=earlier.id,
                                        disruption_id=disruption.id, sailing_id=disruption.sailing_id,
                                        channel="sms", requested_at=over))
    close_the_desk(factory, settings, over)  # what the undelivered notices raised


def close_the_desk(factory, settings, over) -> None:
    with transaction(factory) as session:
        refresh(session, settings, over)
        for item in session.scalars(select(FollowUp).where(FollowUp.status == "open")).all():
            close(session, item.id, "no-answer", "Nobody answered the phone", "bob", over + timedelta(minutes=1))


@pytest.fixture
def busy_typhoon(tmp_settings):
    """The demo typhoon on 3,000 bookings, dispatched and resolved: (session factory, the moment it ended)."""
    upgrade(tmp_settings.database_url)
    engine = make_engine(tmp_settings.database_url)
    factory = session_factory(engine)
    generate(factory, 3000, DEMO_NOW)
    ingest(factory, cap.parse(bundled_feed(DEMO_NOW)))
    process_new_items(factory, load_rules([rules_dir()]), now=DEMO_NOW)
    plan_pending(factory, tmp_settings, now=DEMO_NOW)
    dispatch(factory, tmp_settings, DEMO_NOW + timedelta(minutes=2))
    over = resolve(factory, tmp_settings)
    yield factory, over
    engine.dispose()


def test_the_chunked_job_asks_exactly_whom_the_one_by_one_job_asked(busy_typhoon, tmp_settings, monkeypatch):
    factory, over = busy_typhoon
    mix_the_cases(factory, tmp_settings, over)
    with factory.kw["bind"].connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    factory.kw["bind"].dispose()
    database = Path(tmp_settings.database_url.removeprefix("sqlite:///"))
    shutil.copyfile(database, database.with_name("reference.db"))
    reference_engine = make_engine(f"sqlite:///{database.with_name('reference.db')}")
    reference = session_factory(reference_engine)
    at = over + timedelta(hours=1)
    monkeypatch.setattr(satisfaction, "CHUNK", 40)  # several chunks, some spanning two disruptions
    try:
        expected = reference_queue_requests(reference, tmp_settings, at)
        queued = queue_requests(factory, tmp_settings, at)
        with factory() as session:
            settled = sum(len(rows) for rows in resolved_disruptions(session, at).values())
            disruptions = session.scalar(select(func.count(func.distinct(SatisfactionRequest.disruption_id))))
            seconds = {r.booking_id for rows in resolved_disruptions(session, at).values() for r in rows[1:2]}
            by_second_booking = len(seconds & set(session.scalars(select(SatisfactionRequest.booking_id))))
            by_email = session.scalar(select(func.count()).where(SatisfactionRequest.channel == "email"))
        assert settled > 200 and disruptions > 3 and expected > 100
        assert by_second_booking > 0 and by_email > 0  # the first booking unreachable; SMS stopped or undelivered
        assert queued == expected
        assert asked_rows(factory) == asked_rows(reference)

        assert queue_requests(factory, tmp_settings, at + timedelta(hours=1)) == 0  # nobody asked twice
        assert asked_rows(factory) == asked_rows(reference)
    finally:
        reference_engine.dispose()
