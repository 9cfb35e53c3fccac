"""Email replies: a customer answering a notice, a reminder or the satisfaction request by email.

Two ways in, both ending in `attach_reply`:
- IMAP (`poll_imap`, run by the watcher when `imap_host` is set): the unseen messages of `imap_folder` in the
  mailbox our notices come from (smtp_from, or its Reply-To), each marked seen once it is recorded;
- a webhook, the Flask blueprint `inbound_email` (POST /email/inbound), for a mail gateway that forwards the raw
  RFC 822 message, signed with the shared secret NOTIFIER_INBOUND_EMAIL_SECRET:
  `X-Notifier-Signature: sha256=<hex HMAC-SHA256 of the request body>`; 403 without it, 404 when no secret is set.

Matching, most certain first: the In-Reply-To / References Message-IDs against the notices we sent, a booking
reference in the subject, then the sender's address. What the reply says (its first line, quoted text dropped):
a 1-5 score when it answers a satisfaction request; an option key ("1", "R" ...) when it answers a notice whose
choice is still open (only from the customer's own address: anyone can write a booking reference in a subject);
HELP; STOP / UNSUBSCRIBE (from their own address). Anything else is kept word for word as free text for the
follow-up worklist. Auto-replies (Auto-Submitted, out-of-office) are dropped, and a message already recorded
(same Message-ID) is not recorded twice.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import imaplib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parseaddr

from flask import Blueprint, Response, abort, current_app, jsonify, request
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from notifier.store import audit
from notifier.errors import NotifierError
from notifier.planning.audience import normalise_email
from notifier.store.settings import Settings
from notifier.store.db import transaction
from notifier.store.models import Booking, Customer, CustomerResponse, Notification, utcnow
from notifier.aftercare.tickets import open_ticket
from notifier.delivery.optouts import keyword, lift_opt_out, record_opt_out
from notifier.store.status import DELIVERED, SENT

log = logging.getLogger(__name__)

MAX_BYTES = 1_000_000
TEXT_LIMIT = 1000
IMAP_BATCH = 200
MESSAGE_ID = re.compile(r"<[^<>\s]+>")
BOOKING_REF = re.compile(r"\b[A-Z]{1,5}[0-9]{4,12}\b")
# Where the customer's own words end and the quoted message begins, in the mail clients customers use.
QUOTE_START = re.compile(r"^(>|On .+ wrote:?$|.*写道[:：]?$|-{2,}\s*(Original|原始邮件)|_{5,}$|From: |发件人[:：]|"
                         r"Sent from my )")
AUTO_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}

inbound_email = Blueprint("inbound_email", __name__)


class InboundEmailError(NotifierError):
    """The IMAP mailbox cannot be read (unreachable, login refused, no such folder)."""


@dataclass(frozen=True)
class Attached:
    """What became of one email reply."""

    outcome: str  # score | choice | help | opt_out | free_text | duplicate | ignored | unmatched
    booking_ref: str | None = None


@dataclass
class ImapResult:
    """One IMAP poll: how many messages were read and what became of them."""

    read: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


# --- reading a message -----------------------------------------------------------------------------------------------

def parse(raw: bytes) -> EmailMessage:
    """An email from its raw bytes (never raises on a malformed message: defects are tolerated)."""
    return BytesParser(policy=policy.default).parsebytes(raw)


def header(message: EmailMessage, name: str) -> str:
    """A header's text, or "" when absent or unreadable."""
    try:
        return str(message.get(name, "") or "")
    except (ValueError, TypeError, IndexError):
        return ""


def is_auto_reply(message: EmailMessage) -> bool:
    """True for out-of-office and other machine replies, which no person should have to read."""
    auto = header(message, "Auto-Submitted").strip().lower()
    return (auto not in ("", "no") or header(message, "Precedence").strip().lower() in AUTO_PRECEDENCE
            or bool(header(message, "X-Autoreply")) or bool(header(message, "X-Autorespond")))


def reply_text(message: EmailMessage) -> str:
    """The customer's own words: the plain-text body (else the HTML's text) without the quoted message."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        text = part.get_content()
    except (LookupError, ValueError):
        text = part.get_payload(decode=True).decode("utf-8", "replace") if part.get_payload(decode=True) else ""
    if part.get_content_subtype() == "html":
        text = html.unescape(re.sub(r"<[^>]+>", "\n", re.sub(r"(?is)<(style|script).*?</\1>", "", text)))
    own = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if QUOTE_START.match(line.strip()) or line.rstrip() == "--":
            break
        own.append(line.rstrip())
    return "\n".join(own).strip()


# --- attaching a reply to its booking ------------------------------------------------------------------------------

def attach_reply(session: Session, settings: Settings, raw: bytes, now: datetime | None = None) -> Attached:
    """Record one email reply against its booking, in the caller's transaction."""
    now = now or utcnow()
    message = parse(raw)
    if is_auto_reply(message):
        return Attached("ignored")
    message_id = (MESSAGE_ID.findall(header(message, "Message-ID")) or [None])[0]
    if message_id and session.scalar(select(CustomerResponse.id).where(CustomerResponse.external_id == message_id)):
        return Attached("duplicate")
    sender = normalise_email(parseaddr(header(message, "From"))[1])
    notice = _answered_notice(session, message)
    booking = _booking_for(session, message, notice, sender)
    if booking is None:
        log.info("an email matched no booking (Message-ID %s): kept as a ticket", message_id or "none")
        open_ticket(session, settings, "email", sender or "", reply_text(message) or header(message, "Subject"),
                    now, message_id)
        return Attached("unmatched")
    customer = session.get(Customer, booking.customer_id)
    own = sender is not None and sender.lower() == (normalise_email(customer.email) or "").lower()
    if notice is None and own:
        notice = _newest_email(session, customer.id, booking.id)
    text = reply_text(message) or header(message, "Subject")
    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
    outcome = _act(session, settings, booking, notice, own, sender, first, text, message_id, now)
    return Attached(outcome, booking.ref)


def _answered_notice(session: Session, message: EmailMessage) -> Notification | None:
    ids = MESSAGE_ID.findall(header(message, "In-Reply-To")) + MESSAGE_ID.findall(header(message, "References"))
    if not ids:
        return None
    return session.scalar(select(Notification).where(Notification.message_id.in_(ids[-20:]),
                                                     Notification.booking_id.is_not(None))
                          .order_by(Notification.id.desc()).limit(1))


def _booking_for(session: Session, message: EmailMessage, notice: Notification | None, sender: str | None
                 ) -> Booking | None:
    if notice is not None:
        return session.get(Booking, notice.booking_id)
    refs = BOOKING_REF.findall(header(message, "Subject").upper())
    if refs:
        booking = session.scalar(select(Booking).where(Booking.ref.in_(refs)).limit(1))
        if booking is not None:
            return booking
    if sender is None:
        return None
    latest = session.scalar(select(Notification.booking_id).join(Customer, Customer.id == Notification.customer_id)
                            .where(func.lower(Customer.email) == sender.lower(), Notification.channel == "email",
                                   Notification.booking_id.is_not(None))
                            .order_by(Notification.id.desc()).limit(1))
    return session.get(Booking, latest) if latest is not None else None


def _newest_email(session: Session, customer_id: int, booking_id: int) -> Notification | None:
    return session.scalar(select(Notification).where(Notification.customer_id == customer_id,
                                                     Notification.booking_id == booking_id,
                                                     Notification.channel == "email",
                                                     Notification.status.in_((SENT, DELIVERED)))
                          .order_by(Notification.id.desc()).limit(1))


def _act(session: Session, settings: Settings, booking: Booking, notice: Notification | None, own: bool,
         sender: str | None, first: str, text: str, message_id: str | None, now: datetime) -> str:
    from notifier.aftercare.responses import reply_keyword
    from notifier.aftercare.satisfaction import open_request, read_score, record_score

    score = read_score(first) if own and notice is not None and notice.purpose == "satisfaction" else None
    asked = open_request(session, notice.id, settings, now) if score is not None else None
    if asked is not None:
        record_score(session, asked, score, "email", now, first, message_id)
        return "score"
    word = keyword(first) if first == text.strip() else None
    if word == "help":
        _keep(session, booking, notice, "help", text, message_id, now)
        return "help"
    if word in ("stop", "start") and own:
        if word == "stop":
            record_opt_out(session, "email", sender, "email_reply", actor="inbound-email")
        else:
            lift_opt_out(session, "email", sender, actor="inbound-email")
        _keep(session, booking, notice, "opt_out" if word == "stop" else "opt_in", text, message_id, now)
        return "opt_out" if word == "stop" else "opt_in"
    key = reply_keyword(first) if own and first == text.strip() else None
    if key is not None and _choose(session, settings, booking, notice, key, text, message_id, now):
        return "choice"
    _keep(session, booking, notice, "free_text", text, message_id, now)
    audit.record(session, "customer:email", "response.free_text", "booking", booking.id, booking_ref=booking.ref)
    return "free_text"


def _choose(session: Session, settings: Settings, booking: Booking, notice: Notification | None, key: str,
            text: str, message_id: str | None, now: datetime) -> bool:
    from notifier.aftercare.responses import ChoiceRefused, record_choice

    disruption_id = notice.disruption_id if notice is not None else None
    if disruption_id is None:
        return False
    try:
        record_choice(session, settings, booking.id, disruption_id, key, "email", now, raw_text=text)
    except ChoiceRefused:
        return False  # too late, already chosen, or full: kept as free text for a person to answer
    session.execute(update(CustomerResponse).where(CustomerResponse.booking_id == booking.id,
                                                   CustomerResponse.disruption_id == disruption_id,
                                                   CustomerResponse.decision_key == "choice")
                    .values(external_id=message_id).execution_options(synchronize_session=False))
    return True


def _keep(session: Session, booking: Booking, notice: Notification | None, choice: str, text: str,
          message_id: str | None, now: datetime) -> None:
    session.add(CustomerResponse(booking_id=booking.id, disruption_id=notice.disruption_id if notice else None,
                                 channel="email", choice=choice, raw_text=text[:TEXT_LIMIT], received_at=now,
                                 external_id=message_id))
    session.flush()



# --- the webhook ----------------------------------------------------------------------------------------------------

def signature(secret: str, body: bytes) -> str:
    """The X-Notifier-Signature value a gateway sends with a body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@inbound_email.post("/email/inbound")
def receive_email() -> Response:
    """A raw email from the mail gateway, signed with the shared secret."""
    settings: Settings = current_app.config["NOTIFIER_SETTINGS"]
    if not settings.inbound_email_secret:
        abort(404)
    if (request.content_length or 0) > MAX_BYTES:
        abort(413)
    body = request.get_data(cache=False)
    if len(body) > MAX_BYTES:
        abort(413)
    if not hmac.compare_digest(request.headers.get("X-Notifier-Signature", ""),
                               signature(settings.inbound_email_secret, body)):
        log.warning("refused an inbound email with a wrong signature")
        abort(403)
    now = current_app.config.get("NOTIFIER_CLOCK", utcnow)()
    with transaction(current_app.config["NOTIFIER_FACTORY"]) as session:
        attached = attach_reply(session, settings, body, now)
    return jsonify(outcome=attached.outcome, booking=attached.booking_ref)


# --- IMAP ------------------------------------------------------------------------------------------------------------

def poll_imap(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None) -> ImapResult:
    """Record every unseen reply in the IMAP folder and mark it seen (each message its own transaction)."""
    result = ImapResult()
    if not settings.imap_host:
        return result
    client = _imap_login(settings)
    try:
        status, _ = client.select(_quoted(settings.imap_folder))
        if status != "OK":
            raise InboundEmailError(f"IMAP folder {settings.imap_folder!r} cannot be opened on {settings.imap_host}")
        status, found = client.uid("SEARCH", None, "UNSEEN")
        for uid in (found[0].split() if status == "OK" and found and found[0] else [])[:IMAP_BATCH]:
            raw = _fetch(client, uid)
            if raw is not None and len(raw) <= MAX_BYTES:
                with transaction(factory) as session:
                    outcome = attach_reply(session, settings, raw, now).outcome
            else:
                outcome = "ignored"
            client.uid("STORE", uid, "+FLAGS", "(\\Seen)")  # only after the reply is committed
            result.read += 1
            result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
    except (imaplib.IMAP4.error, OSError) as exc:
        raise InboundEmailError(f"IMAP {settings.imap_host}: {exc}") from None
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            log.info("IMAP %s: the logout was not answered", settings.imap_host)
    return result


def _imap_login(settings: Settings) -> imaplib.IMAP4:
    kind = imaplib.IMAP4_SSL if settings.imap_ssl else imaplib.IMAP4
    try:
        client = kind(settings.imap_host, settings.imap_port, timeout=settings.provider_timeout_seconds)
    except OSError as exc:
        raise InboundEmailError(f"cannot reach the IMAP server {settings.imap_host}:{settings.imap_port} "
                                f"({exc})") from None
    try:
        client.login(settings.imap_user, settings.imap_password)
    except imaplib.IMAP4.error:
        client.shutdown()
        raise InboundEmailError(f"the IMAP server {settings.imap_host} refused the login of "
                                f"{settings.imap_user!r} (check NOTIFIER_IMAP_USER / NOTIFIER_IMAP_PASSWORD)") from None
    return client


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fetch(client: imaplib.IMAP4, uid: bytes) -> bytes | None:
    status, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
    if status != "OK":
        return None
    return next((part[1] for part in parts or [] if isinstance(part, tuple) and len(part) > 1), None)
