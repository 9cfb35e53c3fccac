"""Twilio's webhooks as Twilio calls them: signed (or not) delivery receipts arriving late, twice, or once per
segment in any order; inbound STOP / START / HELP and answers; and the email one-click unsubscribe."""

from __future__ import annotations

import base64
import dataclasses
import sys
import uuid
from urllib.parse import urlsplit

import pytest
from flask import Flask
from sqlalchemy import select

from notifier.delivery.providers import channels_for
from notifier.store.db import transaction
from notifier.delivery.dispatch import dispatch_all
from notifier.store.models import AuditEntry, DeliveryAttempt, Notification, OptOut
from notifier.delivery.optouts import unsubscribe_token
from notifier.web.twilio import webhooks
from tests.standins.fixtures import add_customer, provider_settings, queue_notice, relay, twilio_standin  # noqa: F401
from tests.standins.twilio_standin import TwilioStandIn

PHONE, EMAIL = "+8613800138000", "li.wei@example.com"


@pytest.fixture
def settings(tmp_settings, twilio_standin, relay):
    return provider_settings(tmp_settings, twilio_standin, relay)


@pytest.fixture
def client(settings, factory):
    app = Flask(__name__)
    app.config["NOTIFIER_SETTINGS"] = settings
    app.config["NOTIFIER_FACTORY"] = factory
    app.register_blueprint(webhooks)
    return app.test_client()


@pytest.fixture
def sent_sms(factory, settings, twilio_standin):
    """One SMS notice dispatched to the stand-in: (notification id, the stand-in's copy)."""
    with transaction(factory) as session:
        notice = queue_notice(session, add_customer(session), "sms", "Typhoon: your sailing is cancelled.")
    dispatch_all(factory, settings, channels_for(settings))
    [message] = twilio_standin.messages
    return notice.id, message


def post_receipt(client, standin: TwilioStandIn, message: dict, status: str, error_code: int | None = None,
                 signature: str | None = None):
    """POST what Twilio would send to the message's StatusCallback URL, signed like Twilio signs it."""
    fields, signed = standin.signed_callback(message["status_callback"], message, status, error_code)
    url = urlsplit(message["status_callback"])
    return client.post(f"{url.path}?{url.query}", data=fields,
                       headers={"X-Twilio-Signature": signed if signature is None else signature})


def post_inbound(client, settings, body: str, phone: str = PHONE):
    from twilio.request_validator import RequestValidator

    fields = {"AccountSid": settings.twilio_account_sid, "MessageSid": "SM" + uuid.uuid4().hex, "From": phone,
              "To": settings.twilio_from, "Body": body, "NumMedia": "0"}
    signature = RequestValidator(settings.twilio_auth_token).compute_signature(
        f"{settings.public_base_url}/twilio/inbound", fields)
    return client.post("/twilio/inbound", data=fields, headers={"X-Twilio-Signature": signature})


def notification(factory, notification_id: int) -> Notification:
    with factory() as session:
        return session.get(Notification, notification_id)


# --- receipts ------------------------------------------------------------------------------------------------------

def test_the_callback_url_names_the_notification_and_uses_the_public_address(sent_sms):
    notification_id, message = sent_sms
    assert message["status_callback"] == f"https://ferry.example/twilio/status?n={notification_id}"


def test_unsigned_or_wrongly_signed_receipts_are_refused(client, twilio_standin, sent_sms, factory):
    notification_id, message = sent_sms
    assert post_receipt(client, twilio_standin, message, "delivered", signature="").status_code == 403
    assert post_receipt(client, twilio_standin, message, "delivered", signature="bm90IGEgc2lnbmF0dXJl").status_code \
        == 403
    url = urlsplit(message["status_callback"])
    fields, signed = twilio_standin.signed_callback(message["status_callback"], message, "delivered")
    tampered = client.post(f"{url.path}?n=999", data=fields, headers={"X-Twilio-Signature": signed})
    assert tampered.status_code == 403
    assert notification(factory, notification_id).status == "sent"


def test_a_receipt_signed_for_another_account_is_refused(client, sent_sms, factory):
    notification_id, message = sent_sms
    stranger = TwilioStandIn(auth_token="someone-elses-token-0123456789ab")
    assert post_receipt(client, stranger, message, "delivered").status_code == 403
    assert notification(factory, notification_id).status == "sent"


def test_receipts_move_a_notice_forward_to_delivered(client, twilio_standin, sent_sms, factory):
    notification_id, message = sent_sms
    for status in ("queued", "sent", "delivered"):
        assert post_receipt(client, twilio_standin, message, status).status_code == 204
    delivered = notification(factory, notification_id)
    assert delivered.status == "delivered" and delivered.delivered_at is not None
    with factory() as session:
        seen = list(session.scalars(select(DeliveryAttempt.provider_status).where(
            DeliveryAttempt.notification_id == notification_id, DeliveryAttempt.outcome == "callback")))
    assert seen == ["queued", "sent", "delivered"]


def test_a_late_sent_receipt_does_not_undo_delivered(client, twilio_standin, sent_sms, factory):
    notification_id, message = sent_sms
    post_receipt(client, twilio_standin, message, "delivered")
    post_receipt(client, twilio_standin, message, "sent")
    post_receipt(client, twilio_standin, message, "queued")
    assert notification(factory, notification_id).status == "delivered"


def test_per_segment_receipts_in_any_order_end_undelivered_with_the_code(client, twilio_standin, sent_sms, factory,
                                                                         relay, settings):
    notification_id, message = sent_sms
    # A three-segment message: Twilio reports each segment; the carrier lost the second one.
    for status, code in [("sent", None), ("delivered", None), ("undelivered", 30005), ("sent", None),
                         ("delivered", None), ("sent", None)]:
        assert post_receipt(client, twilio_standin, message, status, code).status_code == 204
    final = notification(factory, notification_id)
    assert (final.status, final.error_code) == ("undelivered", "30005")

    # An undelivered SMS is told by email instead, once, and the audit says so.
    dispatch_all(factory, settings, channels_for(settings))
    post_receipt(client, twilio_standin, message, "failed", 30005)
    dispatch_all(factory, settings, channels_for(settings))
    assert len(relay.to(EMAIL)) == 1
    with factory() as session:
        assert session.scalar(select(AuditEntry.actor).where(AuditEntry.action == "notification.fallback")) \
            == "twilio-callback"


def test_a_receipt_that_beats_our_own_record_still_lands(client, twilio_standin, factory, settings):
    with transaction(factory) as session:
        notice = queue_notice(session, add_customer(session), "sms", "Sailing cancelled.")
        notice.status = "sending"  # the worker has sent it but not yet written the SID down
    message = {"sid": "SM" + "ab" * 16, "to": PHONE, "from": settings.twilio_from,
               "status_callback": f"https://ferry.example/twilio/status?n={notice.id}"}
    post_receipt(client, twilio_standin, message, "delivered")

    landed = notification(factory, notice.id)
    assert (landed.status, landed.provider_id) == ("delivered", "SM" + "ab" * 16)


def test_a_failed_receipt_for_a_stopped_number_records_the_opt_out(client, twilio_standin, sent_sms, factory):
    notification_id, message = sent_sms
    post_receipt(client, twilio_standin, message, "failed", 21610)
    with factory() as session:
        assert session.scalar(select(OptOut.source).where(OptOut.address == PHONE)) == "twilio_21610"


def test_a_receipt_for_a_message_we_do_not_know_changes_nothing(client, twilio_standin, factory):
    message = {"sid": "SM" + "cd" * 16, "to": PHONE, "from": "+15005550006",
               "status_callback": "https://ferry.example/twilio/status"}
    assert post_receipt(client, twilio_standin, message, "delivered").status_code == 204


# --- inbound SMS ---------------------------------------------------------------------------------------------------

def test_stop_records_the_opt_out_and_start_lifts_it(client, settings, factory, twilio_standin):
    with transaction(factory) as session:
        add_customer(session)
    stopped = post_inbound(client, settings, "  stop ")
    assert stopped.status_code == 200 and stopped.mimetype == "application/xml"
    assert "<Message>" in stopped.text and "no more SMS" in stopped.text
    with factory() as session:
        assert session.scalar(select(OptOut.source).where(OptOut.address == PHONE)) == "sms_stop"

    # a notice queued now is not sent
    with transaction(factory) as session:
        queue_notice(session, None, "sms", "Sailing cancelled.", recipient=PHONE)
    dispatch_all(factory, settings, channels_for(settings))
    assert twilio_standin.messages == []

    started = post_inbound(client, settings, "START")
    assert "on again" in started.text
    with factory() as session:
        assert session.scalar(select(OptOut).where(OptOut.address == PHONE)) is None


@pytest.mark.parametrize("word", ["STOPALL", "unsubscribe", "Cancel", "END", "quit", "退订", "TD"])
def test_every_opt_out_keyword_is_honoured(client, settings, factory, word):
    post_inbound(client, settings, word)
    with factory() as session:
        assert session.scalar(select(OptOut.channel).where(OptOut.address == PHONE)) == "sms"


def test_a_chinese_stop_is_answered_in_chinese(client, settings):
    answer = post_inbound(client, settings, "退订")
    assert "您已退订短信通知" in answer.text


def test_help_gets_the_help_text_with_the_helpline(client, settings, factory):
    answer = post_inbound(client, settings, "HELP")
    assert settings.helpline in answer.text and "STOP" in answer.text
    with factory() as session:
        assert session.scalar(select(OptOut)) is None


def test_any_other_text_is_answered_by_the_responses_module(client, settings, factory):
    answer = post_inbound(client, settings, "1", phone="+8613900001111")  # nobody we know
    assert answer.status_code == 200
    from notifier.aftercare.responses import handle_sms_reply

    with factory() as session:
        expected = handle_sms_reply(session, settings, "+8613900001111", "1")
    assert expected and expected in answer.text


def test_an_unsigned_inbound_sms_is_refused(client, factory):
    refused = client.post("/twilio/inbound", data={"From": PHONE, "Body": "STOP"})
    assert refused.status_code == 403
    with factory() as session:
        assert session.scalar(select(OptOut)) is None


def test_signatures_are_checked_against_the_public_url_not_the_local_one(client, settings):
    from twilio.request_validator import RequestValidator

    fields = {"From": PHONE, "Body": "STOP"}
    local = RequestValidator(settings.twilio_auth_token).compute_signature("http://localhost/twilio/inbound", fields)
    assert client.post("/twilio/inbound", data=fields, headers={"X-Twilio-Signature": local}).status_code == 403


# --- email unsubscribe ---------------------------------------------------------------------------------------------

def emailed(factory) -> int:
    """An email notice to EMAIL (the outbox row an unsubscribe link names)."""
    with transaction(factory) as session:
        return queue_notice(session, add_customer(session), "email", "Your sailing is cancelled.\n").id


def test_one_click_unsubscribe_records_the_email_opt_out_but_a_get_does_not(client, settings, factory):
    token = unsubscribe_token(settings.secret_key, emailed(factory))
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200 and "<form" in page.text
    with factory() as session:
        assert session.scalar(select(OptOut)) is None

    done = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    with factory() as session:
        assert session.scalar(select(OptOut.address).where(OptOut.channel == "email")) == EMAIL
    assert client.post(f"/unsubscribe/{token}x").status_code == 404


def test_the_unsubscribe_link_does_not_carry_the_address(settings, factory):
    from notifier.delivery.claims import to_message

    with factory() as session:
        message = to_message(session.get(Notification, emailed(factory)), settings)
    token = message.unsubscribe_url.rsplit("/", 1)[1]
    payload = token.split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert message.unsubscribe_url.startswith("https://") and EMAIL not in message.unsubscribe_url
    assert b"li.wei" not in decoded and b"example" not in decoded


def test_an_unsubscribe_link_sent_before_links_named_the_email_still_works(client, settings, factory):
    from itsdangerous import URLSafeSerializer

    legacy = URLSafeSerializer(settings.secret_key, salt="notifier.unsubscribe").dumps(EMAIL)
    assert client.post(f"/unsubscribe/{legacy}").status_code == 200
    with factory() as session:
        assert session.scalar(select(OptOut.address).where(OptOut.channel == "email")) == EMAIL


def test_an_unsubscribe_link_whose_email_was_purged_says_so_and_records_nothing(client, settings, factory):
    notification_id = emailed(factory)
    with transaction(factory) as session:
        session.delete(session.get(Notification, notification_id))
    link = f"/unsubscribe/{unsubscribe_token(settings.secret_key, notification_id)}"
    page = client.post(link)
    assert page.status_code == 404 and "expired" in page.text
    assert client.get(link).status_code == 404 and "expired" in client.get(link).text  # no button to a dead end
    with factory() as session:
        assert session.scalar(select(OptOut)) is None


def test_an_unsubscribed_address_gets_no_more_email(client, settings, factory, relay):
    client.post(f"/unsubscribe/{unsubscribe_token(settings.secret_key, emailed(factory))}")
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "email", "Your sailing is cancelled.\n")
    dispatch_all(factory, dataclasses.replace(settings, safety_critical_opt_out="respect"),
                 channels_for(settings))
    assert relay.received == []


def test_a_webhook_body_that_cannot_be_applied_is_kept_for_a_person_not_retried(client, factory, sent_sms,
                                                                                 twilio_standin, monkeypatch):
    from notifier.ops.console import quarantine_lines
    from notifier.ops.quarantine import quarantined
    from notifier.store.models import FeedError, utcnow
    from notifier.web import twilio as twilio_webhooks

    def broken(*args, **kwargs):
        raise ValueError("ErrorCode 'x1' is not a number")

    monkeypatch.setattr(twilio_webhooks, "apply_receipt", broken)
    notification_id, message = sent_sms
    answer = post_receipt(client, twilio_standin, message, "delivered")

    assert answer.status_code == 204  # accepted: Twilio does not send it again for hours
    with factory() as session:
        [error] = session.scalars(select(FeedError)).all()
        lines = quarantine_lines(quarantined(session, utcnow()))
    assert error.source == "webhook:twilio/status" and "ValueError" in error.message
    assert any(line.startswith("webhook bodies not applied in the last 24 h: 1") for line in lines)
    assert notification(factory, notification_id).status == "sent"  # nothing half-applied
