"""Twilio's webhooks under attack: unsigned, wrongly signed and tampered callbacks are refused and record nothing;
a signed callback replayed (by Twilio's own retries or by someone who captured it: Twilio's signature carries no
timestamp) changes nothing after its first delivery, whether a receipt or an inbound SMS."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from sqlalchemy import delete, func, select, update
from twilio.request_validator import RequestValidator

from notifier.store.db import transaction
from notifier.store.models import AuditEntry, Customer, CustomerResponse, DeliveryAttempt, Notification, OptOut
from notifier.web.app import create_app
from tests.aftercare.test_responses import NOW, db_state, factory, planned_template, sms_notice  # noqa: F401

AUTH_TOKEN = "webhook-test-auth-token-0123456789"
SID = "SM" + "5e" * 16


@pytest.fixture
def settings(tmp_settings):
    return replace(tmp_settings, twilio_auth_token=AUTH_TOKEN, twilio_account_sid="AC" + "0" * 32,
                   twilio_from="+15005550006")


@pytest.fixture
def client(factory, settings):  # noqa: F811 - the planned typhoon from test_responses
    return create_app(settings, factory, clock=lambda: NOW).test_client()


@pytest.fixture
def sent_notice(factory):  # noqa: F811
    """An SMS notice Twilio has accepted (as the dispatcher records it), to a customer who takes SMS only but
    has an email address (so a failed SMS is followed by an email)."""
    notice = sms_notice(factory, "en", with_email=True)
    with transaction(factory) as session:
        session.execute(update(Notification).where(Notification.id == notice.id)
                        .values(status="sent", provider_id=SID, sent_at=NOW, attempts=1))
        session.execute(delete(Notification).where(Notification.booking_id == notice.booking_id,
                                                   Notification.channel == "email"))
        session.execute(update(Customer).where(Customer.id == notice.customer_id).values(channels=["sms"]))
    return notice


def sign(url: str, fields: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, fields)


def receipt(notice: Notification, status: str, code: str | None = None) -> tuple[str, dict[str, str]]:
    fields = {"AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01", "MessageSid": SID, "SmsSid": SID,
              "MessageStatus": status, "SmsStatus": status, "To": notice.recipient, "From": "+15005550006"}
    if code:
        fields["ErrorCode"] = code
    return f"/twilio/status?n={notice.id}", fields


def post_signed(client, path: str, fields: dict[str, str], signature: str | None = None, sign_as: str | None = None):
    signature = sign(f"https://ferry.example{sign_as or path}", fields) if signature is None else signature
    return client.post(path, data=fields, headers={"X-Twilio-Signature": signature})


def inbound(phone: str, body: str, sid: str = "SM" + "1b" * 16) -> dict[str, str]:
    return {"AccountSid": "AC" + "0" * 32, "MessageSid": sid, "SmsSid": sid, "From": phone, "To": "+15005550006",
            "Body": body, "NumMedia": "0"}


def webhook_state(factory, notification_id: int) -> dict:  # noqa: F811
    with factory() as session:
        notice = session.get(Notification, notification_id)
        return db_state(factory) | {
            "status": (notice.status, notice.delivered_at, notice.final_at, notice.error_code),
            "attempts": session.execute(select(DeliveryAttempt.id, DeliveryAttempt.provider_status)
                                        .where(DeliveryAttempt.notification_id == notification_id)
                                        .order_by(DeliveryAttempt.id)).all(),
            "opt_outs": session.scalar(select(func.count()).select_from(OptOut)),
            "audit_rows": session.execute(select(AuditEntry.action, AuditEntry.details).order_by(AuditEntry.id)).all()}


def test_unsigned_wrongly_signed_and_tampered_receipts_are_refused_and_record_nothing(client, factory, sent_notice,
                                                                                      caplog):
    caplog.set_level(logging.DEBUG)
    path, fields = receipt(sent_notice, "delivered")
    good = sign(f"https://ferry.example{path}", fields)
    before = webhook_state(factory, sent_notice.id)

    refused = [client.post(path, data=fields),
               post_signed(client, path, fields, signature=""),
               post_signed(client, path, fields, signature="bm90IGEgc2lnbmF0dXJl"),
               post_signed(client, path, fields, signature=good[:-4]),
               post_signed(client, path, fields, sign_as=path.replace("/twilio", "/elsewhere")),
               client.post(path, data=fields, headers={"X-Twilio-Signature": sign(f"http://localhost{path}",
                                                                                  fields)}),
               post_signed(client, path, fields, signature=sign(f"https://ferry.example{path}", fields,
                                                                "someone-elses-token-0123456789ab")),
               # signed for this notice, replayed against another one
               post_signed(client, f"/twilio/status?n={sent_notice.id + 1}", fields, signature=good),
               # signed "sent", tampered to "delivered" on the way
               post_signed(client, path, fields, signature=sign(f"https://ferry.example{path}",
                                                                fields | {"MessageStatus": "sent",
                                                                          "SmsStatus": "sent"})),
               # a valid receipt's signature replayed as an inbound SMS
               post_signed(client, "/twilio/inbound", fields | {"Body": "STOP"}, signature=good)]

    assert [r.status_code for r in refused] == [403] * len(refused)
    assert webhook_state(factory, sent_notice.id) == before
    refused_logs = [r.getMessage() for r in caplog.records if "wrong signature" in r.getMessage()]
    assert refused_logs and not any(sent_notice.recipient in line for line in caplog.text.splitlines())


def test_a_replayed_delivery_receipt_changes_nothing_after_the_first(client, factory, sent_notice):
    path, fields = receipt(sent_notice, "delivered")
    assert post_signed(client, path, fields).status_code == 204
    first = webhook_state(factory, sent_notice.id)

    replays = [post_signed(client, path, fields) for _ in range(3)]
    late = receipt(sent_notice, "sent")

    assert [r.status_code for r in replays] == [204, 204, 204]
    assert post_signed(client, *late).status_code == 204
    after = webhook_state(factory, sent_notice.id)
    assert after["status"][0] == "delivered" and after["status"] == first["status"]
    assert [status for _, status in after["attempts"] if status] == ["delivered", "sent"]
    assert after == first | {"attempts": after["attempts"]}


def test_a_replayed_failure_receipt_plans_one_fallback_and_one_audit_entry(client, factory, sent_notice):
    path, fields = receipt(sent_notice, "undelivered", "30005")
    assert post_signed(client, path, fields).status_code == 204
    first = webhook_state(factory, sent_notice.id)
    with factory() as session:
        fallbacks = session.scalars(select(Notification.channel).where(
            Notification.booking_id == sent_notice.booking_id, Notification.purpose == "fallback")).all()
    assert first["status"][0] == "undelivered" and fallbacks == ["email"]

    for _ in range(3):
        assert post_signed(client, path, fields).status_code == 204

    assert webhook_state(factory, sent_notice.id) == first


def test_a_replayed_inbound_choice_is_recorded_once(client, factory):
    notice = sms_notice(factory, "en")
    fields = inbound(notice.recipient, "1")
    answered = post_signed(client, "/twilio/inbound", fields)
    assert answered.status_code == 200 and "confirmed" in answered.get_data(as_text=True).lower()
    first = db_state(factory)

    again = post_signed(client, "/twilio/inbound", fields)

    assert again.status_code == 200
    assert db_state(factory) == first


def test_a_replayed_stop_records_one_opt_out(client, factory):
    notice = sms_notice(factory, "en")
    fields = inbound(notice.recipient, "STOP")
    for _ in range(3):
        assert post_signed(client, "/twilio/inbound", fields).status_code == 200
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(OptOut)) == 1
        recorded = session.scalars(select(AuditEntry.details).where(AuditEntry.action == "optout.recorded")).all()
    assert len(recorded) == 1 and notice.recipient not in str(recorded)


def test_a_replayed_free_text_reply_is_kept_once(client, factory):
    notice = sms_notice(factory, "en")
    fields = inbound(notice.recipient, "My wheelchair needs the lower deck, please call")
    answered = post_signed(client, "/twilio/inbound", fields)
    first = db_state(factory)

    again = post_signed(client, "/twilio/inbound", fields)

    assert answered.status_code == again.status_code == 200
    assert again.get_data(as_text=True) == answered.get_data(as_text=True)
    assert db_state(factory) == first
    with factory() as session:
        kept = session.scalar(select(func.count()).select_from(CustomerResponse)
                              .where(CustomerResponse.choice == "free_text"))
    assert kept == 1


def test_an_inbound_sms_from_a_stranger_changes_no_customer(client, factory):
    before = db_state(factory)
    with factory() as session:
        customers = session.execute(select(Customer.id, Customer.phone, Customer.email).order_by(Customer.id)).all()
    answer = post_signed(client, "/twilio/inbound", inbound("+8613700000001", "R"))
    assert answer.status_code == 200
    assert db_state(factory) == before
    with factory() as session:
        assert session.execute(select(Customer.id, Customer.phone, Customer.email)
                               .order_by(Customer.id)).all() == customers
