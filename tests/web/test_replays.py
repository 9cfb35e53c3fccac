"""Issue 16, finding 2: a signed inbound SMS replayed (Twilio's signature carries no timestamp, so a captured
request stays valid) is answered as the first time but changes nothing, and one first seen longer ago than the
replay window, or one without a MessageSid, is refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import func, select, update

from notifier.store.db import transaction
from notifier.store.models import AuditEntry, CustomerResponse, Notification, Offer, OptOut
from notifier.web.app import create_app
from tests.aftercare.test_responses import NOW, db_state, factory, planned_template, sms_notice  # noqa: F401
from tests.web.test_security_twilio import client, inbound, post_signed, settings  # noqa: F401

SID_A, SID_B, SID_C = ("SM" + digit * 32 for digit in "abc")


def opted_out(factory, phone: str) -> bool:  # noqa: F811
    with factory() as session:
        return session.scalar(select(func.count()).select_from(OptOut).where(OptOut.channel == "sms",
                                                                             OptOut.address == phone)) == 1


def test_replayed_start_does_not_resubscribe(client, factory):  # noqa: F811
    phone = sms_notice(factory, "en").recipient
    started = post_signed(client, "/twilio/inbound", inbound(phone, "START", SID_A))
    assert post_signed(client, "/twilio/inbound", inbound(phone, "STOP", SID_B)).status_code == 200
    assert opted_out(factory, phone)

    replayed = post_signed(client, "/twilio/inbound", inbound(phone, "START", SID_A))

    assert replayed.status_code == 200 and replayed.get_data() == started.get_data()
    assert opted_out(factory, phone)


def test_redelivered_help_is_recorded_once(client, factory):  # noqa: F811
    phone = sms_notice(factory, "en").recipient
    answers = [post_signed(client, "/twilio/inbound", inbound(phone, "HELP", SID_A)) for _ in range(3)]

    assert {a.status_code for a in answers} == {200}
    assert "Reply STOP" in answers[2].get_data(as_text=True)
    with factory() as session:
        helps = session.scalar(select(func.count()).select_from(CustomerResponse)
                               .where(CustomerResponse.choice == "help"))
        audited = session.scalar(select(func.count()).select_from(AuditEntry)
                                 .where(AuditEntry.action == "response.help"))
    assert (helps, audited) == (1, 1)


def two_bookings_on_one_phone(factory) -> list[Notification]:  # noqa: F811
    """Two SMS notices with a held first alternative, for two bookings, both sent to the same number."""
    with factory() as session:
        notices = session.scalars(
            select(Notification).join(Offer, (Offer.booking_id == Notification.booking_id)
                                      & (Offer.disruption_id == Notification.disruption_id))
            .where(Notification.channel == "sms", Notification.purpose == "notice", Offer.option_key == "1",
                   Offer.status == "held").order_by(Notification.id).limit(2)).all()
    assert len({notice.booking_id for notice in notices}) == 2
    with transaction(factory) as session:
        session.execute(update(Notification).where(Notification.id == notices[1].id)
                        .values(recipient=notices[0].recipient))
    return notices


def test_a_reply_replayed_is_applied_once(client, factory):  # noqa: F811
    notices = two_bookings_on_one_phone(factory)
    fields = inbound(notices[0].recipient, "1", SID_A)
    answered = post_signed(client, "/twilio/inbound", fields)
    first = db_state(factory)

    replayed = post_signed(client, "/twilio/inbound", fields)

    assert replayed.status_code == 200 and replayed.get_data() == answered.get_data()
    assert db_state(factory) == first
    with factory() as session:
        decided = session.scalar(select(func.count()).select_from(CustomerResponse).where(
            CustomerResponse.booking_id.in_([n.booking_id for n in notices]),
            CustomerResponse.decision_key == "choice"))
    assert decided == 1


@pytest.fixture
def clocked_client(factory, settings):  # noqa: F811 - the app on the real clock, which time-machine moves
    return create_app(replace(settings, inbound_replay_window_seconds=3600), factory).test_client()


def test_a_request_older_than_the_window_is_refused(clocked_client, factory):  # noqa: F811
    phone = sms_notice(factory, "en").recipient
    with time_machine.travel(NOW, tick=False) as clock:
        post_signed(clocked_client, "/twilio/inbound", inbound(phone, "START", SID_A))
        post_signed(clocked_client, "/twilio/inbound", inbound(phone, "STOP", SID_B))
        clock.shift(timedelta(minutes=59))
        within = post_signed(clocked_client, "/twilio/inbound", inbound(phone, "START", SID_A))
        clock.shift(timedelta(minutes=2))
        before = db_state(factory)

        late = post_signed(clocked_client, "/twilio/inbound", inbound(phone, "START", SID_A))
        after, still_out = db_state(factory), opted_out(factory, phone)
        fresh = post_signed(clocked_client, "/twilio/inbound", inbound(phone, "START", SID_C))

    assert within.status_code == 200
    assert late.status_code == 403 and "replay window" in late.get_data(as_text=True)
    assert after == before and still_out
    assert fresh.status_code == 200 and not opted_out(factory, phone)  # the customer's own new START still works


def test_a_request_without_a_message_sid_is_refused(client, factory):  # noqa: F811
    phone = sms_notice(factory, "en").recipient
    post_signed(client, "/twilio/inbound", inbound(phone, "STOP", SID_A))
    fields = {key: value for key, value in inbound(phone, "START").items() if key not in ("MessageSid", "SmsSid")}

    refused = post_signed(client, "/twilio/inbound", fields)

    assert refused.status_code == 403 and "MessageSid" in refused.get_data(as_text=True)
    assert opted_out(factory, phone)
