"""The SMTP channel against a real relay (aiosmtpd on a free port): what a customer's mail program receives, one
connection for many messages, a relay that drops the connection, 451 retried, 550 permanent, TLS and login."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from notifier.channels.base import Message
from notifier.channels.smtp_email import SmtpEmailChannel
from tests.standins.fixtures import relay, relay_config  # noqa: F401 - fixture
from tests.standins.smtp_relay import Relay, self_signed_certificate

CUSTOMER = "li.wei@example.com"


def notice(to: str = CUSTOMER, number: int = 7) -> Message:
    return Message(number, "email", to, "Your 10:00 sailing Haikou - Hai'an is cancelled.\n",
                   subject="Sailing cancelled: QZ-HAK-HAI 10:00",
                   body_html="<p>Your 10:00 sailing is <b>cancelled</b>.</p>",
                   message_id=f"<notice-{number}.abc@ferry.example>",
                   unsubscribe_url="https://ferry.example/unsubscribe/tok")


@pytest.fixture
def channel(relay):
    email = SmtpEmailChannel(relay_config(relay))
    yield email
    email.close()


def test_the_customer_gets_text_and_html_with_message_id_and_one_click_unsubscribe(channel, relay):
    result = channel.send(notice())

    assert (result.status, result.provider_id) == ("sent", "<notice-7.abc@ferry.example>")
    [received] = relay.to(CUSTOMER)
    assert received["Subject"] == "Sailing cancelled: QZ-HAK-HAI 10:00"
    assert received["From"] == "notices@ferry.example"
    assert received["Message-ID"] == "<notice-7.abc@ferry.example>"
    assert received["List-Unsubscribe"] == "<https://ferry.example/unsubscribe/tok>"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received.get_content_type() == "multipart/alternative"
    assert "cancelled" in received.get_body(("plain",)).get_content()
    assert "<b>cancelled</b>" in received.get_body(("html",)).get_content()


def test_one_connection_carries_many_messages(channel, relay):
    for number in range(5):
        assert channel.send(notice(f"p{number}@example.com", number)).status == "sent"
    assert len(relay.received) == 5
    assert relay.greetings == 1


def test_pooled_connections_keep_up_with_a_slow_relay_and_are_reused(relay):
    relay.latency = 0.1  # a distant relay: one connection would manage under 10 emails a second
    email = SmtpEmailChannel(relay_config(relay, pool_size=4))
    started = time.monotonic()
    with ThreadPoolExecutor(4) as threads:
        results = list(threads.map(lambda n: email.send(notice(f"p{n}@example.com", n)).status, range(24)))
    took = time.monotonic() - started
    email.close()

    assert results == ["sent"] * 24 and len(relay.received) == 24
    assert took < 1.8  # 24 x 100 ms over one connection would take 2.4 s
    assert relay.greetings <= 4  # each connection opened once, then reused


def test_a_dropped_connection_is_reopened_and_the_message_still_goes(channel, relay):
    assert channel.send(notice(number=1)).status == "sent"
    relay.stop()  # the relay restarts: our pooled connection is dead
    relay.start()

    assert channel.send(notice(number=2)).status == "sent"
    assert [m["Message-ID"] for m in relay.to(CUSTOMER)] == ["<notice-1.abc@ferry.example>",
                                                             "<notice-2.abc@ferry.example>"]


def test_a_temporary_refusal_is_retried_and_a_permanent_one_is_not(channel, relay):
    relay.answers = {"busy@example.com": "451 4.3.0 Mailbox busy, try later",
                     "gone@example.com": "550 5.1.1 No such user"}

    busy, gone = channel.send(notice("busy@example.com")), channel.send(notice("gone@example.com"))
    fine = channel.send(notice())

    assert (busy.status, busy.code) == ("retry", "451")
    assert (gone.status, gone.code) == ("failed", "550")
    assert "No such user" in gone.reason
    assert fine.status == "sent"  # the refusals left the connection usable


def test_a_body_longer_than_the_channel_takes_is_refused_before_the_relay_hears_of_it(channel, relay):
    huge = dataclasses.replace(notice(), body_text="x" * 1_000_001)

    refused = channel.send(huge)

    assert (refused.status, refused.code) == ("failed", "too-long")
    assert "at most 1000000" in refused.reason
    assert relay.received == [] and relay.greetings == 0


def test_a_relay_that_is_down_is_a_retry():
    relay = Relay()  # never started
    email = SmtpEmailChannel(relay_config(relay))
    result = email.send(notice())
    assert (result.status, result.code) == ("retry", "connection")
    assert email.lookup(notice()) == []  # a relay cannot be asked; the dispatcher's policy decides


def test_login_is_used_and_a_refused_login_is_a_retry():
    with Relay(login=("notifier", "s3cret")) as relay:
        good = SmtpEmailChannel(relay_config(relay, user="notifier", password="s3cret"))
        bad = SmtpEmailChannel(relay_config(relay, user="notifier", password="wrong"))
        assert good.send(notice()).status == "sent"
        refused = bad.send(notice())
        good.close()
    assert refused.status == "retry" and "login" in refused.reason
    assert len(relay.received) == 1


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "ssl"])
def test_tls_as_configured(tmp_path, monkeypatch, implicit):
    certificate = self_signed_certificate(tmp_path)
    if certificate is None:
        pytest.skip("the openssl command is not installed (needed to make a test certificate)")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # our relay's certificate is the trusted one
    with Relay(tls=certificate, implicit_tls=implicit, login=("notifier", "s3cret")) as relay:
        email = SmtpEmailChannel(relay_config(relay, starttls=not implicit, use_ssl=implicit, user="notifier",
                                              password="s3cret"))
        result = email.send(notice())
        email.close()
    assert result.status == "sent"
    assert len(relay.received) == 1


def test_a_relay_demanding_starttls_we_did_not_configure_is_retried_not_failed(tmp_path):
    certificate = self_signed_certificate(tmp_path)
    if certificate is None:
        pytest.skip("the openssl command is not installed (needed to make a test certificate)")
    with Relay(tls=certificate) as relay:
        email = SmtpEmailChannel(relay_config(relay))
        result = email.send(notice())
    assert (result.status, result.code) == ("retry", "530")
    assert "smtp_starttls" in result.reason
    assert relay.received == []
