"""Twilio's webhooks and the email one-click unsubscribe, as a Flask blueprint named `webhooks`.

Register it on any Flask app, with the settings and the session factory under exactly these keys:

    app.config["NOTIFIER_SETTINGS"] = settings        # notifier.store.settings.Settings
    app.config["NOTIFIER_FACTORY"] = session_factory  # sqlalchemy sessionmaker
    app.register_blueprint(webhooks)

Routes:
- POST /twilio/status: delivery receipts. Each distinct one is logged as a delivery attempt (an identical copy,
  retried by Twilio or replayed by anyone, is ignored); the notification moves forward only (queued -> sent ->
  delivered / undelivered / failed): a late, repeated or per-segment callback never turns a failure back into an
  earlier state. Undelivered or failed plans the fallback on the other channel. Receipts find their row by the
  `n` query parameter the dispatcher puts in the StatusCallback URL, so a receipt that beats our own write of the
  Message SID still lands.
- POST /twilio/inbound: STOP / STOPALL / UNSUBSCRIBE / CANCEL / END / QUIT / 退订 / TD record an opt-out,
  START / UNSTOP lift it, HELP / INFO get the help text (and go on the follow-up worklist); a 1-5 score
  answering a satisfaction request is recorded by `notifier.aftercare.satisfaction`; any other text goes to
  `notifier.aftercare.responses.handle_sms_reply`. The answer is TwiML. Each MessageSid changes things once
  (notifier.web.inbound): a copy is answered as the first was, and one first seen longer ago than
  Settings.inbound_replay_window_seconds is refused (403), as is a request without a MessageSid.
- GET /unsubscribe/<token> shows a confirm button; POST (the RFC 8058 one-click from the List-Unsubscribe-Post
  header, or the button) records the email opt-out. A GET never unsubscribes: mail scanners open links.

Every Twilio request must carry a valid X-Twilio-Signature, computed with the auth token over the public URL
(Settings.public_base_url + path + query, as Twilio called it) and the form fields; otherwise 403.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime

from flask import Blueprint, Response, abort, current_app, request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.messaging_response import MessagingResponse

from notifier.store.settings import Settings
from notifier.store.db import transaction
from notifier.delivery.outcomes import OPTED_OUT_CODE, mark_sent
from notifier.delivery.fallback import plan_fallback
from notifier.aftercare.followups import record_help
from notifier.aftercare.responses import handle_sms_reply
from notifier.aftercare.tickets import sms_ticket
from notifier.store.models import DeliveryAttempt, FeedError, Notification, utcnow
from notifier.delivery.optouts import (UnsubscribeLinkError, keyword, language_of, lift_opt_out,
                                       read_unsubscribe_token, record_opt_out, reply, unsubscribing_address)
from notifier.privacy import mask_contact, redact
from notifier.aftercare.satisfaction import answer_sms_score
from notifier.web import inbound
from notifier.store.status import (CANCELLED, DELIVERED, EXPIRED, FAILED, HELD, QUEUED, SENDING, SENT, SUPPRESSED,
                                   UNDELIVERED)

log = logging.getLogger(__name__)

webhooks = Blueprint("webhooks", __name__)

# Twilio's message statuses in the order a message moves through them; a receipt only ever moves a row forward.
TWILIO_STEPS = {"accepted": "sent", "scheduled": "sent", "queued": "sent", "sending": "sent", "sent": "sent",
                "delivered": "delivered", "read": "delivered", "undelivered": "undelivered", "failed": "failed",
                "canceled": "failed"}
ORDER = {QUEUED: 0, SENDING: 1, EXPIRED: 2, SENT: 3, DELIVERED: 4, UNDELIVERED: 5, FAILED: 6}
UNTOUCHABLE = (SUPPRESSED, CANCELLED, HELD)


def _settings() -> Settings:
    return current_app.config["NOTIFIER_SETTINGS"]


def _factory() -> sessionmaker[Session]:
    return current_app.config["NOTIFIER_FACTORY"]


def _now() -> datetime:
    return current_app.config.get("NOTIFIER_CLOCK", utcnow)()


def _require_twilio_signature() -> None:
    settings = _settings()
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature or not settings.twilio_auth_token:
        abort(403)
    query = request.query_string.decode("utf-8", "replace")
    url = settings.public_base_url.rstrip("/") + request.path + (f"?{query}" if query else "")
    algorithm = get_signature_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
    if not RequestValidator(settings.twilio_auth_token).validate(url, request.form, signature, algorithm):
        log.warning("refused a Twilio webhook with a wrong signature for %s", request.path)
        abort(403)


def _twiml(text: str | None) -> Response:
    answer = MessagingResponse()
    if text:
        answer.message(text)
    return Response(str(answer), mimetype="application/xml")


@webhooks.post("/twilio/status")
def twilio_status() -> Response:
    """A delivery receipt from Twilio."""
    _require_twilio_signature()
    sid = request.form.get("MessageSid") or request.form.get("SmsSid") or ""
    status = (request.form.get("MessageStatus") or request.form.get("SmsStatus") or "").lower()
    code = request.form.get("ErrorCode") or None
    notification_id = request.args.get("n", type=int)
    try:
        with transaction(_factory()) as session:
            notification = _receipt_row(session, notification_id, sid)
            if notification is None:
                log.info("status callback for an unknown message %s (%s)", sid, status)
            else:
                apply_receipt(session, notification, sid, status, code, _settings(), _now(),
                              request.form.get("ErrorMessage"))
    except Exception as exc:  # noqa: BLE001 - kept for a person; Twilio is not asked to send it again and again
        quarantine_body("twilio/status", sid, exc)
    return Response(status=204)


def quarantine_body(endpoint: str, sid: str, exc: Exception) -> None:
    """A webhook body that could not be read or applied: recorded as an error of the webhook's own feed (shown by
    `feeds list`), never a 500 that the provider would retry for hours."""
    reason = redact(f"{type(exc).__name__}: {exc}")[:300]
    with transaction(_factory()) as session:
        session.add(FeedError(source=f"webhook:{endpoint}", at=_now(), message=f"{sid or 'no MessageSid'}: {reason}"))
    log.error("webhook %s body %s quarantined: %s", endpoint, sid or "without a MessageSid", reason)


def _receipt_row(session: Session, notification_id: int | None, sid: str) -> Notification | None:
    if notification_id is not None:
        notification = session.get(Notification, notification_id)
        if notification is not None and notification.channel == "sms":
            return notification
    if sid:
        return session.scalar(select(Notification).where(Notification.provider_id == sid).limit(1))
    return None


def apply_receipt(session: Session, notification: Notification, sid: str, status: str, code: str | None,
                  settings: Settings, now: datetime, error_message: str | None = None) -> str:
    """Record one receipt and move the notification forward if it says something newer; returns the status.
    A receipt identical to one already recorded (Twilio retrying its webhook, or a replayed request: the signature
    has no timestamp, so a copy is valid for ever) is ignored."""
    if _already_recorded(session, notification.id, sid, status, code):
        return notification.status
    session.add(DeliveryAttempt(notification_id=notification.id, attempt_no=notification.attempts, started_at=now,
                                finished_at=now, outcome="callback", provider_id=sid or None,
                                provider_status=status[:16] or None, error_code=code,
                                error_message=redact(error_message) if error_message else None))
    step = TWILIO_STEPS.get(status)
    if step is None or notification.status in UNTOUCHABLE:
        return notification.status
    if notification.provider_id and sid and notification.provider_id != sid:
        log.warning("notification %s: receipt for %s, but we recorded %s", notification.id, sid,
                    notification.provider_id)
        return notification.status
    if ORDER.get(notification.status, 0) < ORDER["sent"]:
        mark_sent(notification, sid or None, now)  # any receipt proves Twilio has the message
    if ORDER[step] <= ORDER.get(notification.status, 0):
        return notification.status
    notification.status = step
    notification.lease_owner, notification.lease_expires_at = None, None
    if step == "delivered":
        notification.delivered_at = notification.final_at = now
    elif step in ("undelivered", "failed"):
        notification.final_at = now
        notification.error_code = code
        notification.error_message = f"Twilio reports {status}" + (f" (error {code})" if code else "")
        if code == OPTED_OUT_CODE:
            record_opt_out(session, "sms", notification.recipient, "twilio_21610", actor="twilio-callback")
        plan_fallback(session, notification, settings, code or status, actor="twilio-callback")
    return notification.status


def _already_recorded(session: Session, notification_id: int, sid: str, status: str, code: str | None) -> bool:
    found = session.scalar(select(DeliveryAttempt.id).where(
        DeliveryAttempt.notification_id == notification_id, DeliveryAttempt.outcome == "callback",
        DeliveryAttempt.provider_id.is_(None) if not sid else DeliveryAttempt.provider_id == sid,
        DeliveryAttempt.provider_status.is_(None) if not status else DeliveryAttempt.provider_status == status[:16],
        DeliveryAttempt.error_code.is_(None) if code is None else DeliveryAttempt.error_code == code).limit(1))
    return found is not None


@webhooks.post("/twilio/inbound")
def twilio_inbound() -> Response:
    """An SMS from a customer: opt-out keywords, HELP, or an answer for the responses module. Each MessageSid
    changes things once; a copy is answered again, or refused when it is older than the replay window."""
    _require_twilio_signature()
    sid = inbound.message_sid(request.form)
    if sid is None:
        return _refused("an inbound SMS without a MessageSid")
    settings, now = _settings(), _now()
    phone, body = request.form.get("From", ""), request.form.get("Body", "")
    with _factory()() as session:
        seen = inbound.seen_before(session, sid)
        language = language_of(session, phone, body, settings.default_language)
    if seen is not None:
        if inbound.too_old(seen, now, settings.inbound_replay_window_seconds):
            return _refused("a replay of an SMS first seen longer ago than the replay window")
        return _twiml(seen.answer)
    word = keyword(body)
    if word is None:
        return _twiml(_answer_reply(settings, sid, phone, body, language, now))
    try:
        return _twiml(_answer_keyword(settings, sid, word, phone, body, language, now))
    except Exception as exc:  # noqa: BLE001 - the customer still gets an answer; the body is kept for a person
        quarantine_body("twilio/inbound", sid, exc)
        return _twiml(reply(settings, "help", language))


def _refused(reason: str) -> Response:
    log.warning("refused %s", reason)
    return Response(f"refused: {reason}\n", status=403, mimetype="text/plain")


def _answer_keyword(settings: Settings, sid: str, word: str, phone: str, body: str, language: str,
                    now: datetime) -> str:
    answer = reply(settings, word, language)
    with transaction(_factory()) as session:
        inbound.forget_old_answers(session, now, settings.inbound_replay_window_seconds)
        if not inbound.remember(session, sid, word, phone, now, answer):
            return answer  # a concurrent copy of the same message did the work
        if word == "stop":
            record_opt_out(session, "sms", phone, "sms_stop", actor="inbound-sms")
        elif word == "start":
            lift_opt_out(session, "sms", phone)
        elif word == "help":
            record_help(session, phone, body, now)
    return answer


def _answer_reply(settings: Settings, sid: str, phone: str, body: str, language: str, now: datetime
                  ) -> str | None:
    try:
        with transaction(_factory()) as session:
            inbound.forget_old_answers(session, now, settings.inbound_replay_window_seconds)
            if not inbound.remember(session, sid, "reply", phone, now):
                return inbound.seen_before(session, sid).answer  # a concurrent copy answered it
            answer = answer_sms_score(session, settings, phone, body, now)
            if answer is None:  # not an answer to any question we asked: an inquiry or complaint for the desk
                answer = sms_ticket(session, settings, phone, body, now, sid)
            if answer is None:
                answer = handle_sms_reply(session, settings, phone, body, now, message_sid=sid)
            inbound.keep_answer(session, sid, answer)
            return answer
    except Exception:  # noqa: BLE001 - the customer still gets an answer; the error goes to the log
        log.exception("the SMS reply from %s could not be handled", mask_contact(phone))
        return reply(settings, "help", language)


@webhooks.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> Response:
    """Show the unsubscribe button (a GET changes nothing)."""
    settings = _settings()
    try:
        named = read_unsubscribe_token(settings.secret_key, token)
        with _factory()() as session:  # an expired link says so before the button, not after it
            unsubscribing_address(session, named)
    except UnsubscribeLinkError as exc:
        return Response(_page(settings, html.escape(str(exc))), status=404, mimetype="text/html")
    form = (f'<form method="post"><button type="submit">Unsubscribe from {html.escape(settings.company_name)} '
            f'emails / 退订邮件</button></form>')
    return Response(_page(settings, form), mimetype="text/html")


@webhooks.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> Response:
    """Record the email opt-out (RFC 8058 one-click, or the button)."""
    settings = _settings()
    try:
        named = read_unsubscribe_token(settings.secret_key, token)
        with transaction(_factory()) as session:
            record_opt_out(session, "email", unsubscribing_address(session, named), "unsubscribe",
                           actor="email-unsubscribe")
    except UnsubscribeLinkError as exc:
        return Response(_page(settings, html.escape(str(exc))), status=404, mimetype="text/html")
    return Response(_page(settings, "You will get no more emails from us. / 您已退订邮件通知。"), mimetype="text/html")


def _page(settings: Settings, content: str) -> str:
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(settings.company_name)}"
            f"</title></head><body><p>{content}</p></body></html>")
