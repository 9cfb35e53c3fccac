"""Closing the loop, walked from the first notice to resolution on the demo typhoon: customers answer (or do not),
reminders go to exactly those without a choice (by email where the SMS was lost), the desk works the follow-up
list, service resumes, everyone is asked once how we did, and the answer shows in the report.

The template database is the demo network with six customers of one cancelled sailing given a part to play (and
a language: Chinese or English):
  chooses      replies "1" an hour after the notice
  sms_lost     has an email; the carrier reports the SMS undelivered
  writes       replies in their own words
  unreachable  has no email; the carrier reports the SMS undelivered (every channel failed)
  stops        sends STOP
  silent       does nothing, then asks for HELP after the reminder
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select, update
from twilio.request_validator import RequestValidator

from cli import main
from notifier.delivery.providers import channels_for
from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory, transaction
from notifier.ops.demo import bundled_feed, generate
from notifier.delivery.dispatch import Dispatcher
from notifier.feeds import cap
from notifier.aftercare.inbound_email import inbound_email
from notifier.store.migrate import upgrade
from notifier.store.models import (AuditEntry, Booking, Customer, CustomerResponse, Disruption, FollowUp,
                                   Notification, Offer, OptOut, SatisfactionRequest)
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import expire_disruptions, ingest, plan_pending, process_new_items
from notifier.aftercare.followups import close, refresh, take, worklist
from notifier.aftercare.reminders import queue_reminders
from notifier.aftercare.reports import build_report
from notifier.aftercare.responses import apply_no_answer_defaults, handle_sms_reply
from notifier.rules.load import load_rules
from notifier.aftercare.satisfaction import answer_sms_score, loop_figures, queue_requests, satisfaction_pages
from notifier.web.twilio import webhooks
from tests.conftest import DEMO_NOW

ROLES = ("chooses", "sms_lost", "writes", "unreachable", "stops", "silent")
LANGUAGES = ("zh-CN", "en", "zh-CN", "en", "en", "zh-CN")
TWILIO_TOKEN = "closing-the-loop-token-0123456789"
DOG = "Can I take my dog on the later sailing? 我的狗可以上船吗"


class Clock:
    """The moment the web side thinks it is, moved by the test."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def role_phone(index: int) -> str:
    return f"+86139{index + 1:08d}"


def dispatch(factory, settings, at) -> None:
    """Send what is due, as the watcher's dispatcher would at that moment (file channels)."""
    dispatcher = Dispatcher(factory, settings, channels_for(settings), clock=lambda: at)
    try:
        dispatcher.run(drain=True)
    finally:
        dispatcher.close()


def build_typhoon(settings, factory) -> dict:
    """The demo typhoon: rules, then six customers of the busiest cancelled sailing get their parts, then
    planning and the first dispatch (two minutes after the warning). Returns the target and the roles."""
    generate(factory, 600, DEMO_NOW)
    ingest(factory, cap.parse(bundled_feed(DEMO_NOW)))
    process_new_items(factory, load_rules([rules_dir()]), now=DEMO_NOW)
    with transaction(factory) as session:
        busiest = session.execute(
            select(Disruption.id, func.count(Booking.id)).join(Booking, Booking.sailing_id == Disruption.sailing_id)
            .where(Disruption.status == "active", Disruption.kind == "cancelled", Booking.status == "confirmed",
                   Booking.kind == "passenger")
            .group_by(Disruption.id).order_by(func.count(Booking.id).desc(), Disruption.id).limit(1)).one()
        target = session.get(Disruption, busiest[0])
        bookings = session.scalars(select(Booking).where(Booking.sailing_id == target.sailing_id,
                                                         Booking.status == "confirmed")
                                   .order_by(Booking.id).limit(len(ROLES))).all()
        assert len(bookings) == len(ROLES), "the demo's busiest cancelled sailing has too few bookings"
        roles = {}
        for index, (role, booking) in enumerate(zip(ROLES, bookings)):
            customer = session.get(Customer, booking.customer_id)
            customer.phone, customer.channels = role_phone(index), ["sms", "email"]
            customer.language = LANGUAGES[index]
            customer.email = None if role == "unreachable" else f"{role}@example.com"
            roles[role] = booking.id
    plan_pending(factory, settings, now=DEMO_NOW)
    dispatch(factory, settings, DEMO_NOW + timedelta(minutes=2))
    return {"target": target.id, "roles": roles}


@pytest.fixture(scope="session")
def typhoon_template(tmp_path_factory) -> Path:
    """The template database, built once per run (the other closing-the-loop tests share it)."""
    folder = tmp_path_factory.getbasetemp() / "typhoon-roles"
    if not (folder / "roles.json").exists():
        folder.mkdir(exist_ok=True)
        settings = load_settings(env={}, config_path=None, database_url=f"sqlite:///{folder / 'typhoon.db'}",
                                 outbox_dir=str(folder / "outbox"), secret_key="test-secret",
                                 public_base_url="https://ferry.example")
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        facts = build_typhoon(settings, session_factory(engine))
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        (folder / "roles.json").write_text(json.dumps(facts))
    return folder


@pytest.fixture
def typhoon(typhoon_template, tmp_settings):
    """A fresh copy of the template: (session factory, target disruption id, role -> booking id)."""
    copy = Path(tmp_settings.database_url.removeprefix("sqlite:///"))
    shutil.copyfile(typhoon_template / "typhoon.db", copy)
    facts = json.loads((typhoon_template / "roles.json").read_text())
    engine = make_engine(tmp_settings.database_url)
    yield session_factory(engine), facts["target"], facts["roles"]
    engine.dispose()


@pytest.fixture
def web(typhoon, tmp_settings):
    """The customer-facing endpoints (Twilio webhooks, score page, inbound email) on a clock the test moves."""
    factory = typhoon[0]
    clock = Clock(DEMO_NOW)
    settings = load_settings(env={}, config_path=None, database_url=tmp_settings.database_url,
                             outbox_dir=tmp_settings.outbox_dir, secret_key="test-secret",
                             public_base_url="https://ferry.example", twilio_auth_token=TWILIO_TOKEN,
                             inbound_email_secret="gateway-secret")
    app = Flask(__name__)
    app.config.update(NOTIFIER_SETTINGS=settings, NOTIFIER_FACTORY=factory, NOTIFIER_CLOCK=clock)
    for blueprint in (webhooks, satisfaction_pages, inbound_email):
        app.register_blueprint(blueprint)
    return app.test_client(), clock


def signed_post(client, path: str, fields: dict[str, str]):
    """POST as Twilio does, signed over the public URL and the form."""
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(f"https://ferry.example{path}", fields)
    return client.post(path, data=fields, headers={"X-Twilio-Signature": signature})


def sms_from(client, phone: str, body: str) -> str:
    """An inbound SMS; returns the TwiML answer's text."""
    answer = signed_post(client, "/twilio/inbound", {"From": phone, "To": "+15005550006", "Body": body,
                                                     "MessageSid": "SM" + uuid.uuid4().hex})
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def lose_sms(client, factory, booking_id: int) -> None:
    """The carrier reports the booking's SMS notice undelivered (error 30003, handset unreachable)."""
    with factory() as session:
        notice = session.scalar(select(Notification).where(Notification.booking_id == booking_id,
                                                           Notification.channel == "sms",
                                                           Notification.purpose == "notice"))
    path = f"/twilio/status?n={notice.id}"
    answer = signed_post(client, path, {"MessageSid": notice.provider_id, "MessageStatus": "undelivered",
                                        "ErrorCode": "30003", "To": notice.recipient})
    assert answer.status_code == 204


def cli(settings, *args: str):
    return CliRunner().invoke(main, list(args), env={"NOTIFIER_CONFIG": "",
                                                     "NOTIFIER_DATABASE_URL": settings.database_url})


def reminders_by_booking(factory) -> dict[int, list[str]]:
    with factory() as session:
        rows = session.execute(select(Notification.booking_id, Notification.channel)
                               .where(Notification.purpose == "reminder")).all()
    found: dict[int, list[str]] = {}
    for booking_id, channel in rows:
        found.setdefault(booking_id, []).append(channel)
    return found


def unanswered_and_reachable(factory) -> set[int]:
    """Bookings a reminder is owed to, worked out from the data: an open choice, no decision, a notice that
    reached them, and not opted out of the channel that did."""
    with factory() as session:
        open_choice = set(session.scalars(select(Offer.booking_id).join(
            Disruption, (Disruption.id == Offer.disruption_id) & (Disruption.revision == Offer.revision))
            .where(Disruption.status == "active", Offer.kind.in_(("rebook", "standby", "refund")))))
        decided = set(session.scalars(select(CustomerResponse.booking_id)
                                      .where(CustomerResponse.decision_key == "choice")))
        stops = {(o.channel, o.address) for o in session.scalars(select(OptOut))}
        told = {(n.booking_id, n.channel, n.recipient) for n in session.scalars(select(Notification).where(
            Notification.purpose == "notice", Notification.status.in_(("sent", "delivered"))))}
    reachable = {booking for booking, channel, address in told if (channel, address) not in stops}
    # A STOP is respected on every channel: nobody who said STOP is chased by email instead.
    stopped = {booking for booking, channel, address in told if (channel, address) in stops}
    return (open_choice - decided) & reachable - stopped


def test_a_disruption_from_first_notice_to_resolution(typhoon, web, tmp_settings):
    factory, target, roles = typhoon
    client, clock = web
    settings = tmp_settings
    phones = {role: role_phone(index) for index, role in enumerate(ROLES)}
    with factory() as session:
        deadline = session.scalar(select(func.min(Offer.deadline)).where(Offer.disruption_id == target))
        window_end = session.scalar(select(Disruption.window_end).where(Disruption.id == target))
        refs = {role: session.get(Booking, booking_id).ref for role, booking_id in roles.items()}

    # An hour after the notice: one chooses, two SMS are lost, one writes, one says STOP.
    clock.now = DEMO_NOW + timedelta(hours=1)
    assert refs["chooses"] in sms_from(client, phones["chooses"], "1")
    lose_sms(client, factory, roles["sms_lost"])
    lose_sms(client, factory, roles["unreachable"])
    assert refs["writes"] in sms_from(client, phones["writes"], DOG)  # "an agent will reply", in their language
    sms_from(client, phones["stops"], "STOP")
    assert queue_reminders(factory, settings, clock.now) == 0  # three hours before the deadline, not before

    # The reminders: to exactly those without a choice; by email where the SMS was lost; once.
    clock.now = deadline - timedelta(minutes=settings.reminder_lead_minutes - 5)
    queued = queue_reminders(factory, settings, clock.now)
    reminded = reminders_by_booking(factory)
    assert queued == len(reminded) > 3
    assert set(reminded) == unanswered_and_reachable(factory)
    assert {role: reminded.get(booking_id) for role, booking_id in roles.items()} == {
        "chooses": None, "sms_lost": ["email"], "writes": ["sms"], "unreachable": None, "stops": None,
        "silent": ["sms"]}
    assert queue_reminders(factory, settings, clock.now + timedelta(minutes=30)) == 0
    with factory() as session:
        email = session.scalar(select(Notification).where(Notification.booking_id == roles["sms_lost"],
                                                          Notification.purpose == "reminder"))
    assert email.recipient == "sms_lost@example.com" and refs["sms_lost"] in email.subject
    assert "https://ferry.example/c/" in email.body_text and "Please choose by" in email.body_text
    dispatch(factory, settings, clock.now + timedelta(minutes=1))
    clock.now += timedelta(minutes=20)
    assert settings.helpline in sms_from(client, phones["silent"], "HELP")

    # The deadline passes: the policy decides for the rest.
    apply_no_answer_defaults(factory, settings, deadline + timedelta(minutes=1))
    dispatch(factory, settings, deadline + timedelta(minutes=2))  # the confirmations

    # The desk's worklist: the free text (word for word), the unreachable customer, the HELP.
    listed = cli(settings, "followups", "list", "--disruption", str(target))
    assert listed.exit_code == 0, listed.output
    assert DOG in listed.output
    assert re.search(rf"unreachable \[open\] booking {refs['unreachable']}.*\n\s+why: every notice failed: "
                     r"sms undelivered \(30003\)", listed.output)
    assert f"help [open] booking {refs['silent']}" in listed.output
    assert all(phone not in listed.output for phone in phones.values())
    with factory() as session:
        items = {booking_id: (item_id, reason) for item_id, booking_id, reason in session.execute(
            select(func.min(FollowUp.id), FollowUp.booking_id, FollowUp.reason)
            .where(FollowUp.disruption_id == target).group_by(FollowUp.booking_id, FollowUp.reason))}
    assert {booking_id: reason for booking_id, (_, reason) in items.items()} == {
        roles["writes"]: "free-text", roles["unreachable"]: "unreachable", roles["silent"]: "help"}

    # Working it: one operator takes an item, a second cannot; each item is closed with an outcome and a note.
    first = items[roles["writes"]][0]
    assert cli(settings, "followups", "take", str(first), "--operator", "alice").exit_code == 0
    refused = cli(settings, "followups", "take", str(first), "--operator", "bob")
    assert refused.exit_code == 1 and "already taken by alice" in refused.output
    assert cli(settings, "followups", "done", str(first), "--outcome", "rebooked", "--note",
               "Dogs travel in the vehicle deck; moved to the first sailing").exit_code == 0
    for booking_id, outcome in ((roles["unreachable"], "no-answer"), (roles["silent"], "other")):
        done = cli(settings, "followups", "done", str(items[booking_id][0]), "--outcome", outcome, "--note",
                   "Called the number on file", "--operator", "bob")
        assert done.exit_code == 0, done.output
    with factory() as session:
        trail = session.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.details)
                                .where(AuditEntry.action.like("followup.%")).order_by(AuditEntry.id)).all()
    assert [(actor, action) for actor, action, _ in trail] == [
        ("alice", "followup.taken"), ("alice", "followup.done"), ("bob", "followup.taken"), ("bob", "followup.done"),
        ("bob", "followup.taken"), ("bob", "followup.done")]
    assert all("@" not in json.dumps(details) and "+86" not in json.dumps(details) for _, _, details in trail)
    card = cli(settings, "booking", "show", refs["writes"])
    assert "done by alice" in card.output and "Dogs travel in the vehicle deck" in card.output
    assert "Reply: free text by sms" in card.output and "Can I take my dog" in card.output

    # Service resumes: the warning's window ends, customers who were told get the all-clear.
    resumed_at = window_end + timedelta(minutes=1)
    expire_disruptions(factory, resumed_at)
    plan_pending(factory, settings, resumed_at)
    dispatch(factory, settings, resumed_at + timedelta(minutes=1))

    # Everyone settled: each customer is asked once for a score.
    asked_at = resumed_at + timedelta(minutes=10)
    assert queue_requests(factory, settings, asked_at) > 0
    assert queue_requests(factory, settings, asked_at + timedelta(hours=1)) == 0
    with factory() as session:
        requests = session.execute(select(Notification.booking_id, Notification.channel)
                                   .where(Notification.purpose == "satisfaction",
                                          Notification.booking_id.in_(roles.values()))).all()
        per_customer = session.execute(select(Notification.customer_id, func.count())
                                       .where(Notification.purpose == "satisfaction")
                                       .group_by(Notification.customer_id)).all()
    assert dict(requests) == {roles["chooses"]: "sms", roles["sms_lost"]: "email", roles["writes"]: "sms",
                              roles["unreachable"]: "sms", roles["stops"]: "email", roles["silent"]: "sms"}
    assert {count for _, count in per_customer} == {1}
    dispatch(factory, settings, asked_at + timedelta(minutes=1))

    # A score comes back by SMS; the report counts it.
    clock.now = asked_at + timedelta(hours=2)
    assert "感谢您的评分（5分）" in sms_from(client, phones["chooses"], "５")
    closing = build_report(factory, target, now=clock.now).disruptions[0].closing
    assert closing["scores"] == {"5": 1}
    assert (closing["affected"], closing["settled"], closing["without_person"], closing["followups_done"],
            closing["followups_open"], closing["requests"]) == (6, 6, 3, 3, 0, 6)
    shown = cli(settings, "report", "--disruption", str(target))
    assert "Closing the loop:" in shown.output and "0/0/0/0/1 (1/6)" in shown.output
    with factory() as session:
        scored = session.scalar(select(SatisfactionRequest).where(SatisfactionRequest.booking_id == roles["chooses"]))
    assert (scored.score, scored.score_channel) == (5, "sms")


def test_the_loop_runs_on_postgresql(postgres_url, tmp_settings):
    settings = replace(tmp_settings, database_url=postgres_url)
    engine = make_engine(postgres_url)
    factory = session_factory(engine)
    try:
        facts = build_typhoon(settings, factory)
        target, roles = facts["target"], facts["roles"]
        with transaction(factory) as session:
            session.execute(update(Notification).where(Notification.booking_id == roles["sms_lost"],
                                                       Notification.channel == "sms").values(status="undelivered"))
            handle_sms_reply(session, settings, role_phone(2), DOG, now=DEMO_NOW + timedelta(hours=1))
        with factory() as session:
            deadline = session.scalar(select(func.min(Offer.deadline)).where(Offer.disruption_id == target))
            window_end = session.scalar(select(Disruption.window_end).where(Disruption.id == target))
        assert queue_reminders(factory, settings, deadline - timedelta(minutes=60)) > 0
        assert reminders_by_booking(factory)[roles["sms_lost"]] == ["email"]
        with transaction(factory) as session:
            assert refresh(session, settings, deadline)["free-text"] == 1
            [item] = worklist(session, settings, target, ("free-text",))
            take(session, item.id, "alice", deadline)
            close(session, item.id, "other", "Answered by phone", now=deadline + timedelta(minutes=5))
        apply_no_answer_defaults(factory, settings, deadline + timedelta(minutes=6))
        dispatch(factory, settings, deadline + timedelta(minutes=7))
        expire_disruptions(factory, window_end + timedelta(minutes=1))
        assert queue_requests(factory, settings, window_end + timedelta(minutes=5)) > 0
        with transaction(factory) as session:
            assert answer_sms_score(session, settings, role_phone(0), "4", window_end + timedelta(hours=1))
            figures = loop_figures(session, [target], window_end + timedelta(hours=2))[target]
        assert (figures.settled, figures.followups_done, figures.scores) == (6, 1, {4: 1})
    finally:
        engine.dispose()
