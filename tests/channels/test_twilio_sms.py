"""The Twilio channel with the real `twilio` client over real HTTP to the stand-in: what is sent, and how each of
Twilio's answers is understood (429 + Retry-After, 5xx, timeouts, 21211 / 21610 / 21614, lost connections)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
import smsutil

from notifier.channels.base import Message, cost
from notifier.channels.twilio_sms import RedirectingHttpClient, TwilioSmsChannel, retry_after_seconds
from tests.standins.fixtures import SENDER, standin_config, twilio_standin  # noqa: F401 - fixture
from tests.standins.twilio_standin import Fault, TwilioStandIn

CUSTOMER = "+8613800138000"


def notice(body: str = "Strait Ferries: your 10:00 sailing Haikou-Hai'an is CANCELLED due to the typhoon.",
           to: str = CUSTOMER, number: int = 1) -> Message:
    return Message(number, "sms", to, body, status_callback=f"https://ferry.example/twilio/status?n={number}",
                   validity_seconds=3600, created_at=datetime.now(UTC) - timedelta(minutes=1))


@pytest.fixture
def channel(twilio_standin):
    sms = TwilioSmsChannel(standin_config(twilio_standin))
    yield sms
    sms.close()


def test_a_notice_reaches_twilio_with_sender_callback_and_validity(channel, twilio_standin):
    result = channel.send(notice())

    assert result.status == "sent"
    [message] = twilio_standin.messages_to(CUSTOMER)
    assert result.provider_id == message["sid"]
    assert message["from"] == SENDER
    assert message["body"].startswith("Strait Ferries: your 10:00 sailing")
    assert message["status_callback"] == "https://ferry.example/twilio/status?n=1"
    assert message["validity_period"] == "3600"


def test_a_messaging_service_sends_without_a_from_number(twilio_standin):
    sms = TwilioSmsChannel(standin_config(twilio_standin, from_number="", messaging_service_sid="MG" + "ab" * 16))

    assert sms.send(notice()).status == "sent"
    [message] = twilio_standin.messages_to(CUSTOMER)
    assert message["messaging_service_sid"] == "MG" + "ab" * 16
    assert message["from"] is None
    assert sms.lookup(notice()) == [message["sid"]]


def test_too_many_requests_is_retried_after_the_providers_delay(channel, twilio_standin):
    twilio_standin.add_fault(Fault(status=429, code=20429, message="Too Many Requests", retry_after="7"))

    result = channel.send(notice())

    assert (result.status, result.code, result.retry_after) == ("retry", "20429", 7.0)
    assert twilio_standin.messages == []


def test_retry_after_as_an_http_date_is_understood(channel, twilio_standin):
    later = datetime.now(UTC) + timedelta(seconds=30)
    twilio_standin.add_fault(Fault(status=429, retry_after=format_datetime(later, usegmt=True)))

    result = channel.send(notice())

    assert result.status == "retry"
    assert 25 <= result.retry_after <= 31


def test_a_server_error_is_uncertain_so_the_dispatcher_looks_before_resending(channel, twilio_standin):
    twilio_standin.add_fault(Fault(status=500, code=20500, message="Internal Server Error"))

    result = channel.send(notice())

    assert result.status == "uncertain"
    assert channel.lookup(notice()) == []  # nothing was created: a resend is safe


def test_a_timeout_after_twilio_took_the_message_is_found_by_lookup(channel, twilio_standin):
    twilio_standin.add_fault(Fault(status=201, delay=2.0, accept=True))  # answered after our 1 s timeout

    result = channel.send(notice())

    assert (result.status, result.code) == ("uncertain", "timeout")
    [message] = twilio_standin.messages_to(CUSTOMER)
    assert channel.lookup(notice()) == [message["sid"]]


@pytest.mark.parametrize("code, words", [(21211, "invalid 'To' number"), (21610, "opted out"),
                                         (21614, "not a mobile number")])
def test_numbers_twilio_refuses_for_good_are_permanent_failures(channel, twilio_standin, code, words):
    twilio_standin.add_fault(Fault(status=400, code=code, to=CUSTOMER, times=None))

    first, second = channel.send(notice()), channel.send(notice())

    assert first.status == second.status == "failed"
    assert first.code == str(code) and words in first.reason


def test_any_other_refusal_is_permanent_too(channel, twilio_standin):
    twilio_standin.add_fault(Fault(status=400, code=21617, message="The concatenated message body exceeds the "
                                   "1600 character limit"))
    result = channel.send(notice())
    assert (result.status, result.code) == ("failed", "21617")


def test_a_body_longer_than_twilio_takes_is_refused_before_twilio_hears_of_it(channel, twilio_standin):
    refused = channel.send(notice("x" * 1601))
    taken = channel.send(notice("x" * 1600))

    assert (refused.status, refused.code) == ("failed", "too-long")
    assert "1601 characters" in refused.reason and "at most 1600" in refused.reason
    assert taken.status == "sent"
    assert [len(m["body"]) for m in twilio_standin.messages] == [1600]


def test_lookup_matches_recipient_and_body_only(channel, twilio_standin):
    channel.send(notice("Sailing QZ-1 cancelled. Booking B1.", number=1))
    channel.send(notice("Sailing QZ-1 cancelled. Booking B2.", number=2))
    channel.send(notice("Sailing QZ-1 cancelled. Booking B1.", to="+8613800138001", number=3))

    [sid] = channel.lookup(notice("Sailing QZ-1 cancelled. Booking B1."))

    assert [m["sid"] for m in twilio_standin.messages_to(CUSTOMER)][0] == sid
    assert channel.lookup(notice("Sailing QZ-1 cancelled. Booking B3.")) == []


def test_lookup_finds_a_message_still_queued_without_a_date_sent():
    with TwilioStandIn(defer_date_sent=True) as standin:
        sms = TwilioSmsChannel(standin_config(standin))
        sent = sms.send(notice())
        assert sms.lookup(notice()) == [sent.provider_id]
        assert standin.validation_errors == []


def test_lookup_ignores_copies_older_than_the_notice(channel):
    sent = channel.send(notice())
    replanned = dataclasses.replace(notice(), created_at=datetime.now(UTC) + timedelta(minutes=10))
    assert channel.lookup(notice()) == [sent.provider_id]
    assert channel.lookup(replanned) == []


def test_an_unreachable_twilio_is_uncertain_and_lookup_raises():
    standin = TwilioStandIn().start()
    sms = TwilioSmsChannel(standin_config(standin))
    standin.stop()

    result = sms.send(notice())

    assert (result.status, result.code) == ("uncertain", "connection")
    with pytest.raises(requests.ConnectionError):
        sms.lookup(notice())


def test_every_twilio_host_is_redirected_to_the_configured_base():
    client = RedirectingHttpClient("http://127.0.0.1:9", timeout=1)
    for url in ("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json",
                "https://api.sydney.us1.twilio.com/2010-04-01/Accounts/AC1/Messages.json"):
        with pytest.raises(requests.ConnectionError) as refused:
            client.request("GET", url)
        assert "127.0.0.1" in str(refused.value)


@pytest.mark.parametrize("value, seconds", [("12", 12.0), ("0", 0.0), ("soon", None), ("", None)])
def test_retry_after_values(value, seconds):
    assert retry_after_seconds({"Retry-After": value}) == seconds


@pytest.mark.parametrize("body", ["Sailing cancelled.", "x" * 160, "x" * 161, "€" * 80, "{[" * 40 + "x",
                                  "台风预警：您的船班已取消。" * 3, "Typhoon 🌀 warning " * 4, "é" * 200, "A" * 1000])
def test_the_segments_we_pace_are_the_segments_twilio_bills(channel, twilio_standin, body):
    message = notice(body)
    channel.send(message)
    [stored] = twilio_standin.messages_to(CUSTOMER)
    assert cost(channel, dataclasses.replace(message, segments=0)) == stored["num_segments"] \
        == len(smsutil.split(body).parts)
