"""Opt-outs, mirrored in our own `opt_outs` table and checked again just before each send: STOP / START / HELP from
inbound SMS (Twilio's keywords, plus 退订 and TD, the unsubscribe replies Chinese carriers teach their
customers), Twilio's error 21610 (the number had already sent STOP to our sender), and email unsubscribe links.

Safety-critical notices (Settings.safety_critical_opt_out) default to "respect": a STOP is the customer's own
instruction; carriers' and regulators' rules (CTIA and the TCPA in the US, MIIT's SMS rules in China) treat
messages after it as unsolicited; and Twilio refuses every SMS to a number that sent STOP to our sender (21610),
so "send" could only ever reach such a customer by email. An operator whose legal basis covers service notices
after an opt-out (a safety notice about a sailing the customer is booked on) may set "send": opted-out addresses
then still get safety-critical notices, never anything else.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from notifier.store import audit
from notifier.errors import NotifierError
from notifier.store.settings import Settings
from notifier.store.db import insert_ignore, pages
from notifier.store.models import Customer, Notification, OptOut
from notifier.planning.audience import normalise_phone
from notifier.privacy import mask_contact

OPT_OUT_PAGE = 500  # addresses per IN list
UNSUBSCRIBE_SALT = "notifier.unsubscribe.notice"
LEGACY_UNSUBSCRIBE_SALT = "notifier.unsubscribe"  # links that named the address itself (before 2026-12)
# URLSafeSerializer's token: the payload in unpadded base64url ("." first when zlib-compressed: a long legacy
# address), a dot, and the HMAC-SHA1 signature (20 bytes: 27 characters).
UNSUBSCRIBE_TOKEN = re.compile(r"\.?([A-Za-z0-9_-]{1,400})\.[A-Za-z0-9_-]{27}")
INVALID_UNSUBSCRIBE_LINK = "this unsubscribe link is not valid (it may be incomplete or altered)"

STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "退订", "TD"}
START_WORDS = {"START", "UNSTOP"}
HELP_WORDS = {"HELP", "INFO", "帮助"}
POLICIES = ("respect", "send")
_TRIM = " \t\r\n.。!！?？"

REPLIES = {
    "en": {"help": "{company}: notices about your bookings (sailing disruptions and your choices). Reply STOP to "
                   "stop SMS, START to resume. Help: {helpline}",
           "stop": "{company}: you will get no more SMS from us. Reply START to resume. Help: {helpline}",
           "start": "{company}: SMS notices are on again. Reply STOP to stop. Help: {helpline}"},
    "zh-CN": {"help": "【{company}】您的船票变动通知。回复退订停止短信，回复START恢复。客服：{helpline}",
              "stop": "【{company}】您已退订短信通知。回复START可恢复。客服：{helpline}",
              "start": "【{company}】已恢复短信通知。回复退订可停止。客服：{helpline}"},
}


class UnsubscribeLinkError(NotifierError):
    """An unsubscribe link that is forged or truncated."""


def keyword(body: str) -> str | None:
    """"stop", "start" or "help" when the whole message is one of those keywords (as Twilio matches them)."""
    word = unicodedata.normalize("NFKC", body or "").strip(_TRIM).upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


def record_opt_out(session: Session, channel: str, address: str, source: str, actor: str = "dispatcher") -> bool:
    """Mirror an opt-out; True when it is new. Audited without the address itself."""
    inserted = session.execute(insert_ignore(OptOut.__table__, session),
                               [{"channel": channel, "address": address, "source": source}]).rowcount
    if inserted:
        audit.record(session, actor, "optout.recorded", "opt_out", None, channel=channel, source=source,
                     address=mask_contact(address))
    return bool(inserted)


def lift_opt_out(session: Session, channel: str, address: str, actor: str = "inbound-sms") -> bool:
    """The customer opted in again (START); True when there was an opt-out to lift."""
    removed = session.execute(delete(OptOut).where(OptOut.channel == channel, OptOut.address == address)).rowcount
    if removed:
        audit.record(session, actor, "optout.lifted", "opt_out", None, channel=channel, address=mask_contact(address))
    return bool(removed)


def opted_out_addresses(session: Session, channel: str, addresses: list[str] | set[str]) -> set[str]:
    """Which of these addresses opted out of this channel (asked in pages, however many there are)."""
    return {address for page in pages(sorted(addresses), OPT_OUT_PAGE) for address in session.scalars(
        select(OptOut.address).where(OptOut.channel == channel, OptOut.address.in_(page)))}


def opted_out_pairs(session: Session, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (channel, address) pairs opted out."""
    by_channel: dict[str, set[str]] = defaultdict(set)
    for channel, address in pairs:
        by_channel[channel].add(address)
    return {(channel, address) for channel, addresses in sorted(by_channel.items())
            for address in opted_out_addresses(session, channel, addresses)}


def may_send(opted_out: bool, safety_critical: bool, policy: str) -> bool:
    """Whether a notice may go to an address, given its opt-out and the safety-critical policy."""
    if policy not in POLICIES:
        raise NotifierError(f"safety_critical_opt_out must be one of {', '.join(POLICIES)}, not {policy!r}")
    return not opted_out or (safety_critical and policy == "send")


def reply(settings: Settings, what: str, language: str) -> str:
    """The SMS answer to a STOP, START or HELP, in the customer's language."""
    lang = "zh-CN" if language.startswith("zh") else "en"
    company = settings.company_name_zh if lang == "zh-CN" else settings.company_name
    return REPLIES[lang][what].format(company=company, helpline=settings.helpline)


def language_of(session: Session, phone: str, text: str, default: str) -> str:
    """The language to answer an inbound SMS in: Chinese text gets Chinese, else the language of our last notice to
    that number, else its customer's (stored numbers may be written with spaces: they are compared in E.164)."""
    if any("\u4e00" <= ch <= "\u9fff" for ch in text or ""):
        return "zh-CN"
    language = session.scalar(select(Notification.language).where(
        Notification.recipient == phone, Notification.channel == "sms").order_by(Notification.id.desc()).limit(1))
    if language:
        return language
    digits = "".join(ch for ch in phone if ch.isdigit())
    if len(digits) < 4:
        return default
    for stored, language in session.execute(select(Customer.phone, Customer.language).where(
            Customer.phone.like(f"%{digits[-2:]}"))):
        if normalise_phone(stored) == phone:
            return language or default
    return default


def unsubscribe_token(secret: str, notification_id: int) -> str:
    """A signed token naming the email (its outbox row) that carried an unsubscribe link. The address itself stays
    out of the URL: proxies, browsers and mail scanners keep URLs, and a signed payload is only base64."""
    return URLSafeSerializer(secret, salt=UNSUBSCRIBE_SALT).dumps(notification_id)


def read_unsubscribe_token(secret: str, token: str) -> int | str:
    """The outbox row an unsubscribe token names (or, for a link sent before tokens named rows, the address);
    UnsubscribeLinkError when it was altered."""
    if not _well_formed(token):
        raise UnsubscribeLinkError(INVALID_UNSUBSCRIBE_LINK)
    try:
        notification_id = URLSafeSerializer(secret, salt=UNSUBSCRIBE_SALT).loads(token)
    except BadSignature:
        try:
            return str(URLSafeSerializer(secret, salt=LEGACY_UNSUBSCRIBE_SALT).loads(token))
        except BadSignature:
            raise UnsubscribeLinkError(INVALID_UNSUBSCRIBE_LINK) from None
    if not isinstance(notification_id, int) or isinstance(notification_id, bool):
        raise UnsubscribeLinkError(INVALID_UNSUBSCRIBE_LINK)
    return notification_id


def _well_formed(token: str) -> bool:
    # base64 decoding skips characters outside its alphabet, so "<token>==" or "<token>%20" would verify; and no
    # unpadded base64 is 1 more than a multiple of 4 long.
    match = UNSUBSCRIBE_TOKEN.fullmatch(token)
    return match is not None and len(match.group(1)) % 4 != 1


def unsubscribing_address(session: Session, named: int | str) -> str:
    """The email address an unsubscribe token stands for: the one its email went to. UnsubscribeLinkError when
    that email is no longer on record (removed by the retention purge)."""
    if isinstance(named, str):
        return named
    address = session.scalar(select(Notification.recipient).where(Notification.id == named,
                                                                  Notification.channel == "email"))
    if address is None:
        raise UnsubscribeLinkError("this unsubscribe link has expired: reply to any of our emails with the word "
                                   "unsubscribe, or call our helpline")
    return address


def unsubscribe_url(settings: Settings, notification_id: int) -> str:
    """The List-Unsubscribe address for an email (its outbox row): a one-click HTTPS link when a secret is set,
    else a mailto."""
    if settings.secret_key:
        token = unsubscribe_token(settings.secret_key, notification_id)
        return f"{settings.public_base_url.rstrip('/')}/unsubscribe/{token}"
    return f"mailto:{settings.smtp_from}?subject=unsubscribe"
