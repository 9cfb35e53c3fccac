"""Customers' answers written back: a choice from the web page or an SMS reply, the default when nobody
answered by the deadline, the confirmation notice, and the export for reservation and finance systems.

A booking takes one decision per disruption. The `customer_responses` row with decision_key "choice" is
inserted first under its unique key, so a web click, an SMS reply and the no-answer default arriving together
cannot all decide: the second insert finds the key taken and the choice is refused politely. Everything a
decision changes (offer states, hold and booking counters, the booking, the audit log, the confirmation) is
written in one savepoint, so a refused choice leaves the database exactly as it was.

One piece, a little over 500 lines: the web choice, the SMS reply, the default and the agent's choice all pass
through the same decision and its one savepoint; split, that guarantee would be spread over modules.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from notifier.store import audit
from notifier.errors import NotifierError
from notifier.planning.audience import normalise_email, normalise_phone, recipients_for
from notifier.store.settings import ConfigError, Settings
from notifier import outbox
from notifier.store.db import insert_ignore, transaction
from notifier.messages import local_time, money, render
from notifier.store.models import (Booking, Customer, CustomerResponse, Disruption, Notification, Offer, OptOut, Port,
                                   Route, Sailing, utcnow)
from notifier.planning.offers import REFUND_KEY, needs
from notifier.store.capacity import accept_unheld, convert_hold, give_back_booked, lock_capacity, release
from notifier.store.status import ACCEPTED, ACTIVE, CONFIRMED, HELD, OPEN, QUEUED, REBOOKED, REFUND, RELEASED

DECISION = "choice"
NO_ANSWER_DEFAULTS = ("refund", "first_sailing")
CHOOSABLE = ("rebook", "standby", "refund")
EXPORT_COLUMNS = ("booking_ref", "choice", "option", "new_sailing", "refund_amount", "currency", "chosen_at",
                  "channel", "original_sailing", "disruption_id")
FREE_TEXT_LIMIT = 1000

REFUND_WORDS = {"R", "REFUND", "退", "退票", "退款", "退钱"}
REBOOK_WORDS = ("改签", "改乘", "改期", "REBOOK")
CHINESE_DIGITS = {"一": "1", "二": "2", "三": "3", "四": "4", "五": "5"}
_TRIM = " \t\r\n.。!！,，、:：;；\"'“”‘’()（）[]【】"

# Short SMS answers that are not a confirmation; the confirmation itself is the `confirmation` template.
REPLIES = {
    "en": {
        "unknown": "{company}: we could not find a booking for this number. Please call {helpline}.",
        "already_chosen": "{company}: your choice for booking {ref} is already recorded. To change it, call "
                          "{helpline}.",
        "expired": "{company}: the time to choose for booking {ref} has passed. Please call {helpline}.",
        "unknown_option": "{company}: please reply {keys} for booking {ref}.",
        "full": "{company}: sorry, that sailing has no place left. Reply {keys} or call {helpline}.",
        "no_offers": "{company}: there is nothing to choose for booking {ref} now. Please call {helpline}.",
        "free_text": "{company}: thank you, we have your message about booking {ref}; an agent will reply. "
                     "To choose now, reply {keys}.",
    },
    "zh-CN": {
        "unknown": "【{company}】未找到与此号码相关的订单，请致电{helpline}。",
        "already_chosen": "【{company}】订单{ref}的选择已记录。如需更改请致电{helpline}。",
        "expired": "【{company}】订单{ref}的选择期限已过，请致电{helpline}。",
        "unknown_option": "【{company}】请回复{keys}为订单{ref}选择。",
        "full": "【{company}】抱歉，该航班已无余位。请回复{keys}或致电{helpline}。",
        "no_offers": "【{company}】订单{ref}目前无可选项，请致电{helpline}。",
        "free_text": "【{company}】已收到您关于订单{ref}的留言，客服将与您联系。如需选择请回复{keys}。",
    },
}


class ChoiceRefused(NotifierError):
    """A choice that cannot be taken; `reason` is one of REPLIES' keys (already_chosen, expired, full ...)."""

    def __init__(self, reason: str, message: str, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.keys = keys


@dataclass(frozen=True)
class Outcome:
    """What a decision did to a booking."""

    booking_id: int
    disruption_id: int
    choice: str  # rebook | refund | open (ticket stays valid for the first sailings after resumption)
    option_key: str | None
    sailing_id: int  # where the booking now is
    refund_amount: Decimal | None
    currency: str
    channel: str  # web | sms | default
    at: datetime

    @property
    def by_default(self) -> bool:
        """True when nobody answered and the policy decided."""
        return self.channel == "default"


# --- reading the state of a choice ------------------------------------------------------------------------------

def current_offers(session: Session, booking_id: int, disruption_id: int) -> list[Offer]:
    """The offers of the disruption's current revision for one booking, in option order (1, 2 ... R, C)."""
    # populate_existing: an offer already in this session may have been taken or released since it was read.
    offers = session.scalars(select(Offer).join(Disruption, and_(Disruption.id == Offer.disruption_id,
                                                                 Disruption.revision == Offer.revision))
                             .where(Offer.booking_id == booking_id, Offer.disruption_id == disruption_id)
                             .execution_options(populate_existing=True))
    return sorted(offers, key=lambda o: (not o.option_key.isdigit(), o.option_key.zfill(3)))


def decision_of(session: Session, booking_id: int, disruption_id: int) -> CustomerResponse | None:
    """The booking's recorded decision about a disruption, if there is one."""
    return session.scalar(select(CustomerResponse).where(CustomerResponse.booking_id == booking_id,
                                                         CustomerResponse.disruption_id == disruption_id,
                                                         CustomerResponse.decision_key == DECISION))


def choice_keys(offers: list[Offer]) -> tuple[str, ...]:
    """The option keys a customer may answer with."""
    return tuple(o.option_key for o in offers if o.kind in CHOOSABLE)


def offer_deadline(offers: list[Offer]) -> datetime | None:
    """Until when the offers may be taken."""
    deadlines = [o.deadline for o in offers if o.deadline]
    return min(deadlines) if deadlines else None


def default_policy(settings: Settings, jurisdiction: str) -> str:
    """What happens without an answer for a route's jurisdiction: "refund" or "first_sailing"."""
    table = {}
    for entry in settings.no_answer_defaults:
        where, _, what = entry.partition("=")
        if what.strip() not in NO_ANSWER_DEFAULTS:
            raise ConfigError(f"no_answer_defaults: {entry!r} should be JURISDICTION=refund or "
                              "JURISDICTION=first_sailing (\"*\" for the rest)")
        table[where.strip()] = what.strip()
    return table.get(jurisdiction, table.get("*", "first_sailing"))


# --- deciding ---------------------------------------------------------------------------------------------------

def record_choice(session: Session, settings: Settings, booking_id: int, disruption_id: int, option_key: str,
                  channel: str, now: datetime | None = None, raw_text: str | None = None,
                  confirm_skip: tuple[str, ...] = ()) -> Outcome:
    """Take one offer for a booking (in the caller's transaction) and queue the confirmation; ChoiceRefused
    (with nothing changed) when it was already decided, is unknown, past its deadline, or its sailing is full."""
    now = now or utcnow()
    with session.begin_nested():
        _lock_places_of(session, booking_id, disruption_id)
        booking, disruption, offers = _open_choice(session, booking_id, disruption_id)
        deadline = offer_deadline(offers)
        if channel != "default" and deadline is not None and now > deadline:
            raise ChoiceRefused("expired", "the time to choose has passed", choice_keys(offers))
        offer = next((o for o in offers if o.option_key == option_key and o.kind in CHOOSABLE), None)
        if offer is None:
            raise ChoiceRefused("unknown_option", f"there is no option {option_key!r}", choice_keys(offers))
        _claim_decision(session, booking, disruption, offer, channel, now, raw_text, offers)
        outcome = _apply(session, booking, disruption, offer, offers, channel, now)
        _audit(session, booking, disruption, outcome)
        queue_confirmation(session, settings, outcome, skip_channels=confirm_skip)
    return outcome


def _lock_places_of(session: Session, booking_id: int, disruption_id: int) -> None:
    # Every sailing this decision may move places on, locked up front and in order (see offers.lock_capacity);
    # a second decision for the same booking waits here, then finds the decision taken.
    sailings = session.scalars(select(Offer.sailing_id).where(Offer.booking_id == booking_id,
                                                              Offer.disruption_id == disruption_id))
    lock_capacity(session, [*sailings, session.scalar(select(Booking.sailing_id).where(Booking.id == booking_id))])


def _open_choice(session: Session, booking_id: int, disruption_id: int
                 ) -> tuple[Booking, Disruption, list[Offer]]:
    booking = session.get(Booking, booking_id, populate_existing=True)
    disruption = session.get(Disruption, disruption_id)
    offers = current_offers(session, booking_id, disruption_id) if booking and disruption else []
    if not offers:
        raise ChoiceRefused("no_offers", "there is nothing to choose for this booking")
    if booking.status != CONFIRMED or booking.sailing_id != disruption.sailing_id:
        raise ChoiceRefused("already_chosen", "this booking's choice is already recorded", choice_keys(offers))
    return booking, disruption, offers


def _claim_decision(session: Session, booking: Booking, disruption: Disruption, offer: Offer | None,
                    channel: str, now: datetime, raw_text: str | None, offers: list[Offer]) -> None:
    choice = "refund" if offer is not None and offer.kind == "refund" else ("rebook" if offer else "open")
    row = {"booking_id": booking.id, "disruption_id": disruption.id, "offer_id": offer.id if offer else None,
           "channel": channel, "choice": choice, "decision_key": DECISION,
           "raw_text": raw_text[:FREE_TEXT_LIMIT] if raw_text else None, "received_at": now}
    # preserve_rowcount: without it SQLAlchemy reports -1 for an INSERT on psycopg.
    inserted = session.execute(insert_ignore(CustomerResponse.__table__, session)
                               .execution_options(preserve_rowcount=True), row).rowcount
    if inserted != 1:
        raise ChoiceRefused("already_chosen", "this booking's choice is already recorded", choice_keys(offers))


def _apply(session: Session, booking: Booking, disruption: Disruption, offer: Offer, offers: list[Offer],
           channel: str, now: datetime) -> Outcome:
    wanted = needs(booking)
    original = booking.sailing_id
    if offer.kind == "refund":
        offer.status = ACCEPTED
        booking.status, booking.refund_amount = REFUND, offer.amount
    else:
        taken = convert_hold(session, offer) if offer.status == HELD else False
        if not taken and not accept_unheld(session, offer, wanted):
            raise ChoiceRefused("full", "that sailing has no place left", choice_keys(offers))
        booking.sailing_id, booking.status = offer.sailing_id, REBOOKED
    give_back_booked(session, original, wanted)
    _close_other_offers(session, booking.id, disruption.id, offer.id)
    return Outcome(booking.id, disruption.id, "refund" if offer.kind == "refund" else "rebook", offer.option_key,
                   booking.sailing_id, booking.refund_amount if offer.kind == "refund" else None, booking.currency,
                   channel, now)


def _close_other_offers(session: Session, booking_id: int, disruption_id: int, chosen_id: int | None) -> None:
    others = session.scalars(select(Offer).where(Offer.booking_id == booking_id, Offer.disruption_id == disruption_id,
                                                 Offer.id != (chosen_id or 0), Offer.status.in_((HELD, OPEN))))
    for other in list(others):
        if other.status == HELD:
            release(session, other, "released")
        elif other.kind != "compensation":  # compensation stays claimable whatever was chosen
            other.status = RELEASED


def _audit(session: Session, booking: Booking, disruption: Disruption, outcome: Outcome) -> None:
    actor = "watcher" if outcome.by_default else f"customer:{outcome.channel}"
    audit.record(session, actor, "choice.recorded", "booking", booking.id, booking_ref=booking.ref,
                 disruption=disruption.id, option=outcome.option_key, choice=outcome.choice, channel=outcome.channel)
    if outcome.choice == "rebook":
        audit.record(session, actor, "booking.rebooked", "booking", booking.id, booking_ref=booking.ref,
                     from_sailing=disruption.sailing_id, to_sailing=outcome.sailing_id)
    elif outcome.choice == "refund":
        audit.record(session, actor, "booking.refund_marked", "booking", booking.id, booking_ref=booking.ref,
                     amount=str(outcome.refund_amount), currency=outcome.currency)
    else:
        audit.record(session, actor, "booking.kept_open", "booking", booking.id, booking_ref=booking.ref,
                     sailing=disruption.sailing_id)


# --- the confirmation notice ------------------------------------------------------------------------------------

def queue_confirmation(session: Session, settings: Settings, outcome: Outcome,
                       skip_channels: tuple[str, ...] = ()) -> int:
    """Put the confirmation in the outbox on each of the customer's channels (the dispatcher sends it)."""
    booking = session.get(Booking, outcome.booking_id)
    customer = session.get(Customer, booking.customer_id)
    addresses = [a for a in (normalise_phone(customer.phone), normalise_email(customer.email)) if a]
    stops = {(o.channel, o.address) for o in session.scalars(select(OptOut).where(OptOut.address.in_(addresses)))}
    channels = [c for c in customer.channels if c not in skip_channels]
    recipients, _ = recipients_for(booking, customer, channels, stops, respect_opt_out=True)
    # The disruption's current revision: the dispatcher drops notices that a newer revision replaced.
    revision = session.scalar(select(Disruption.revision).where(Disruption.id == outcome.disruption_id))
    created = utcnow()  # the outbox's clock is the wall clock, whatever moment the decision is dated
    rows = []
    for recipient in recipients:
        rendered = render(recipient.channel, "confirmation", recipient.language,
                          confirmation_context(session, settings, outcome, recipient.language))
        rows.append({"dedup_key": f"{booking.id}:{recipient.address}:{recipient.channel}:{outcome.disruption_id}"
                                  ":confirmation",
                     "booking_id": booking.id, "customer_id": customer.id, "disruption_id": outcome.disruption_id,
                     "revision": revision, "broadcast_id": None, "channel": recipient.channel,
                     "recipient": recipient.address, "language": rendered.language, "template": "confirmation",
                     "purpose": "confirmation", "subject": rendered.subject, "body_text": rendered.body_text,
                     "body_html": rendered.body_html, "segments": rendered.segments, "safety_critical": False,
                     "status": QUEUED, "priority": int(created.timestamp()), "attempts": 0,
                     "created_at": created})
    if not rows:
        return 0
    return outbox.add(session, rows, columns=None)


def confirmation_context(session: Session, settings: Settings, outcome: Outcome, language: str) -> dict[str, Any]:
    """The values the confirmation templates use (each always present, for StrictUndefined)."""
    lang = "zh-CN" if language.startswith("zh") else "en"
    booking = session.get(Booking, outcome.booking_id)
    customer = session.get(Customer, booking.customer_id)
    disruption = session.get(Disruption, outcome.disruption_id)
    return {"company": settings.company_name_zh if lang == "zh-CN" else settings.company_name,
            "helpline": settings.helpline, "customer": {"name": customer.name}, "booking": {"ref": booking.ref},
            "choice": outcome.choice, "by_default": outcome.by_default,
            "sailing": sailing_view(session, outcome.sailing_id, language),
            "original": sailing_view(session, disruption.sailing_id, language),
            "refund": ({"amount": money(outcome.refund_amount, outcome.currency, language),
                        "days": settings.refund_days} if outcome.choice == "refund" else None)}


def sailing_view(session: Session, sailing_id: int, language: str) -> dict[str, str]:
    """A sailing as a customer reads it: code, ports in their language, local departure and arrival."""
    # Kept per session: the identity map holds objects weakly, and a batch of defaults reads the same sailings.
    views = session.info.setdefault("notifier_sailing_views", {})
    if (sailing_id, language) not in views:
        views[(sailing_id, language)] = _sailing_view(session, sailing_id, language)
    return views[(sailing_id, language)]


def _sailing_view(session: Session, sailing_id: int, language: str) -> dict[str, str]:
    sailing = session.get(Sailing, sailing_id)
    origin, destination = session.get(Port, sailing.origin_port_id), session.get(Port, sailing.destination_port_id)
    chinese = language.startswith("zh")
    return {"code": sailing.code,
            "origin": origin.name_zh if chinese and origin.name_zh else origin.name,
            "destination": destination.name_zh if chinese and destination.name_zh else destination.name,
            "departure": local_time(sailing.scheduled_departure, origin.timezone, language),
            "arrival": local_time(sailing.scheduled_arrival, destination.timezone, language)}


# --- SMS replies ------------------------------------------------------------------------------------------------

def reply_keyword(body: str) -> str | None:
    """The option key an SMS reply names ("1", "2" ... or "R"), in English or Chinese conventions, else None."""
    text = unicodedata.normalize("NFKC", body or "").strip().strip(_TRIM).upper()
    text = CHINESE_DIGITS.get(text, text)
    if text in REFUND_WORDS:
        return REFUND_KEY
    if re.fullmatch(r"[0-9]{1,2}", text) and int(text) > 0:
        return str(int(text))
    for word in REBOOK_WORDS:
        if text.startswith(word):
            rest = CHINESE_DIGITS.get(text[len(word):].strip(_TRIM), text[len(word):].strip(_TRIM))
            if not rest:
                return "1"
            if re.fullmatch(r"[0-9]{1,2}", rest) and int(rest) > 0:
                return str(int(rest))
    return None


@dataclass(frozen=True)
class _OfferSet:
    booking_id: int
    disruption_id: int
    language: str
    open: bool


def handle_sms_reply(session: Session, settings: Settings, from_number: str, body: str,
                     now: datetime | None = None, message_sid: str | None = None) -> str | None:
    """Answer one inbound SMS (not STOP/START/HELP) in the caller's transaction: a keyword takes that option of
    the sender's latest open offers, other text is kept for the follow-up worklist; returns the reply text
    (None for an empty message). An unknown number gets a polite reply and changes nothing. `message_sid` is
    Twilio's MessageSid: a re-delivered reply with a known one is answered again but kept only once."""
    if not (body or "").strip():
        return None
    now = now or utcnow()
    number = normalise_phone(from_number)
    target = _latest_offer_set(session, number, now) if number else None
    if target is None:
        return _unknown_reply(settings)
    booking = session.get(Booking, target.booking_id)
    keys = choice_keys(current_offers(session, target.booking_id, target.disruption_id))
    key = reply_keyword(body)
    if key is None:
        if not _already_kept(session, message_sid):
            _keep_free_text(session, target, booking, body, now, message_sid)
        return _reply(target.language, "free_text", settings, booking.ref, keys)
    try:
        outcome = record_choice(session, settings, target.booking_id, target.disruption_id, key, "sms", now,
                                raw_text=body, confirm_skip=("sms",))
    except ChoiceRefused as refused:
        return _reply(target.language, refused.reason, settings, booking.ref, refused.keys or keys)
    context = confirmation_context(session, settings, outcome, target.language)
    return render("sms", "confirmation", target.language, context).body_text


def _already_kept(session: Session, message_sid: str | None) -> bool:
    # Twilio re-delivers a webhook it got no timely answer for, with the same MessageSid.
    if not message_sid:
        return False
    return session.scalar(select(CustomerResponse.id).where(CustomerResponse.external_id == _sid_key(message_sid))
                          .limit(1)) is not None


def _sid_key(message_sid: str | None) -> str | None:
    # A real SID is 34 characters; a forged long one must still fit the column (and match its own replay).
    return message_sid[:300] if message_sid else None


def _keep_free_text(session: Session, target: _OfferSet, booking: Booking, body: str, now: datetime,
                    message_sid: str | None) -> None:
    session.add(CustomerResponse(booking_id=target.booking_id, disruption_id=target.disruption_id,
                                 channel="sms", choice="free_text", raw_text=body[:FREE_TEXT_LIMIT],
                                 received_at=now, external_id=_sid_key(message_sid)))
    audit.record(session, "customer:sms", "response.free_text", "booking", booking.id, booking_ref=booking.ref)


def _latest_offer_set(session: Session, number: str, now: datetime) -> _OfferSet | None:
    # The reply answers an SMS notice we sent to this number: the newest one whose choice is still open wins,
    # else the newest one (so "already chosen" or "too late" can be said).
    notices = session.execute(
        select(Notification.booking_id, Notification.disruption_id, Notification.language)
        .where(Notification.recipient == number, Notification.channel == "sms",
               Notification.purpose != "confirmation",
               Notification.booking_id.is_not(None), Notification.disruption_id.is_not(None))
        .order_by(Notification.id.desc()).limit(20)).all()
    seen, newest = set(), None
    for booking_id, disruption_id, language in notices:
        if (booking_id, disruption_id) in seen:
            continue
        seen.add((booking_id, disruption_id))
        offers = current_offers(session, booking_id, disruption_id)
        deadline = offer_deadline(offers)
        is_open = bool(offers) and decision_of(session, booking_id, disruption_id) is None and \
            (deadline is None or now <= deadline)
        candidate = _OfferSet(booking_id, disruption_id, language, is_open)
        if is_open:
            return candidate
        newest = newest or candidate
    return newest


def _reply(language: str, reason: str, settings: Settings, ref: str = "", keys: tuple[str, ...] = ()) -> str:
    lang = "zh-CN" if language.startswith("zh") else "en"
    joiner = "、" if lang == "zh-CN" else ", "
    company = settings.company_name_zh if lang == "zh-CN" else settings.company_name
    template = REPLIES[lang].get(reason, REPLIES[lang]["no_offers"])
    return template.format(company=company, helpline=settings.helpline, ref=ref, keys=joiner.join(keys) or "R")


def _unknown_reply(settings: Settings) -> str:
    # We do not know who wrote, so we answer in both languages.
    return _reply("zh-CN", "unknown", settings) + "\n" + _reply("en", "unknown", settings)


# --- no answer by the deadline -----------------------------------------------------------------------------------

def apply_no_answer_defaults(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None,
                             chunk: int = 200) -> int:
    """Decide for every booking whose deadline passed without an answer, by the route's policy, and notify the
    customer (run by the watcher); returns how many bookings were decided. Each chunk of bookings commits
    together; each booking's decision is its own savepoint inside it."""
    now = now or utcnow()
    with factory() as session:
        pending = _past_deadline(session, now)
    decided = 0
    for start in range(0, len(pending), chunk):
        with transaction(factory) as session:
            for booking_id, disruption_id in pending[start:start + chunk]:
                if apply_default(session, settings, booking_id, disruption_id, now) is not None:
                    decided += 1
    return decided


def _past_deadline(session: Session, now: datetime) -> list[tuple[int, int]]:
    answered = exists().where(CustomerResponse.booking_id == Offer.booking_id,
                              CustomerResponse.disruption_id == Offer.disruption_id,
                              CustomerResponse.decision_key == DECISION)
    rows = session.execute(
        select(Offer.booking_id, Offer.disruption_id).distinct()
        .join(Disruption, and_(Disruption.id == Offer.disruption_id, Disruption.revision == Offer.revision))
        .join(Booking, Booking.id == Offer.booking_id)
        .where(Offer.deadline < now, Disruption.status == ACTIVE, Booking.status == CONFIRMED,
               Booking.sailing_id == Disruption.sailing_id, ~answered)
        .order_by(Offer.booking_id)).all()
    return [(row.booking_id, row.disruption_id) for row in rows]


def apply_default(session: Session, settings: Settings, booking_id: int, disruption_id: int,
                  now: datetime) -> Outcome | None:
    """The policy's decision for one unanswered booking: the refund (EU), or the first sailing with a place
    after the window, else the ticket kept valid for the first sailings after resumption (China); None when
    the booking was decided meanwhile."""
    jurisdiction = session.scalar(select(Route.jurisdiction).join(Sailing, Sailing.route_id == Route.id)
                                  .join(Disruption, Disruption.sailing_id == Sailing.id)
                                  .where(Disruption.id == disruption_id))
    offers = current_offers(session, booking_id, disruption_id)
    policy = default_policy(settings, jurisdiction or "OTHER")
    keys = [REFUND_KEY] if policy == "refund" else [o.option_key for o in offers if o.kind in ("rebook", "standby")]
    for key in keys:
        if not any(o.option_key == key for o in offers):
            continue
        try:
            return record_choice(session, settings, booking_id, disruption_id, key, "default", now)
        except ChoiceRefused as refused:
            if refused.reason != "full":
                return None
    return keep_ticket(session, settings, booking_id, disruption_id, "default", now)


def keep_ticket(session: Session, settings: Settings, booking_id: int, disruption_id: int, channel: str,
                now: datetime) -> Outcome | None:
    """The customer keeps their ticket (no move, no refund): decided like any choice, under the same key and
    savepoint, offers closed and the confirmation queued; None when the booking's decision was already taken. The
    no-answer default calls it with channel "default", the desk with "agent"."""
    try:
        with session.begin_nested():
            _lock_places_of(session, booking_id, disruption_id)
            booking, disruption, offers = _open_choice(session, booking_id, disruption_id)
            _claim_decision(session, booking, disruption, None, channel, now, None, offers)
            booking.status = OPEN
            _close_other_offers(session, booking.id, disruption.id, None)
            outcome = Outcome(booking.id, disruption.id, "open", None, booking.sailing_id, None, booking.currency,
                              channel, now)
            _audit(session, booking, disruption, outcome)
            queue_confirmation(session, settings, outcome)
    except ChoiceRefused:
        return None
    return outcome


# --- export -----------------------------------------------------------------------------------------------------

def export_rows(session: Session) -> list[dict[str, str]]:
    """Every recorded decision, oldest first, as the reservation and finance systems read it."""
    new_sailing, original = aliased(Sailing), aliased(Sailing)
    rows = session.execute(
        select(CustomerResponse, Booking.ref, Booking.refund_amount, Booking.currency, Offer.option_key,
               new_sailing.code, original.code)
        .join(Booking, Booking.id == CustomerResponse.booking_id)
        .join(Disruption, Disruption.id == CustomerResponse.disruption_id)
        .join(original, original.id == Disruption.sailing_id)
        .outerjoin(Offer, Offer.id == CustomerResponse.offer_id)
        .outerjoin(new_sailing, and_(new_sailing.id == Offer.sailing_id, CustomerResponse.choice == "rebook"))
        .where(CustomerResponse.decision_key == DECISION)
        .order_by(CustomerResponse.received_at, CustomerResponse.id)).all()
    return [{"booking_ref": ref, "choice": response.choice, "option": key or "",
             "new_sailing": new_code or "",
             "refund_amount": str(refund) if response.choice == "refund" and refund is not None else "",
             "currency": currency, "chosen_at": response.received_at.isoformat(), "channel": response.channel,
             "original_sailing": original_code, "disruption_id": str(response.disruption_id)}
            for response, ref, refund, currency, key, new_code, original_code in rows]


def export_csv(session: Session, out: TextIO) -> int:
    """Write the decisions as CSV with a header line; returns how many rows."""
    rows = export_rows(session)
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)
