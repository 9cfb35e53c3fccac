"""The desk's inbox: an SMS or email that answers no open question becomes a ticket an agent works.

Before the desk, an SMS from a booked customer who was not disrupted ("what time is check-in?") was answered
"we could not find a booking" and dropped. Now it is kept as a ticket (inquiry, complaint, refund request or
other, by keyword rules in Chinese and English that `desk_ticket_keywords` extends), with the customer and
booking attached where the sender is known, an SLA clock (`desk_ticket_sla_hours`), an agent it is assigned to,
replies that go out through the outbox like every other message, and a resolution. Unknown senders are kept
too. Every step is in the audit log under the agent's name, without contacts or the customer's words.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from notifier.aftercare.responses import reply_keyword
from notifier.channels.segments import sms_segments
from notifier.errors import UsageError
from notifier.planning.audience import normalise_email, normalise_phone
from notifier.store import audit
from notifier import outbox
from notifier.store.db import insert_ignore
from notifier.store.models import Booking, Customer, Notification, Ticket, utcnow
from notifier.store.settings import ConfigError, Settings
from notifier.store.status import ANSWERED, OPEN, QUEUED, RESOLVED

CATEGORIES = ("inquiry", "complaint", "refund", "other")
# Checked in this order: a complaint that also asks for a refund is a complaint first.
DEFAULT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "complaint": ("complain", "complaint", "unacceptable", "disappointed", "terrible", "rude", "angry",
                  "投诉", "不满", "太差", "态度", "差劲"),
    "refund": ("refund", "money back", "reimburse", "退款", "退票", "退钱", "赔偿"),
    "inquiry": ("?", "？", "when", "what time", "where", "how", "check-in", "luggage", "几点", "什么时候", "哪里",
                "怎么", "请问", "行李", "登船"),
}
TEXT_LIMIT = 2000
BOOKING_REF = re.compile(r"\b[A-Z]{1,5}[0-9]{4,12}\b")  # as notifier.aftercare.inbound_email reads them
RECEIVED = {
    "en": "{company}: thank you, we have your message and an agent will reply. Urgent? Call {helpline}.",
    "zh-CN": "【{company}】已收到您的留言，客服将尽快回复。如有急事请致电{helpline}。",
}


def keyword_rules(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The categories' keywords: the built-in ones plus `desk_ticket_keywords` entries "category=word"."""
    rules = {category: list(words) for category, words in DEFAULT_KEYWORDS.items()}
    for entry in settings.desk_ticket_keywords:
        category, _, word = entry.partition("=")
        if category.strip() not in CATEGORIES or not word.strip():
            raise ConfigError(f"desk_ticket_keywords: {entry!r} should be CATEGORY=word, CATEGORY one of "
                              f"{', '.join(CATEGORIES)}")
        rules.setdefault(category.strip(), []).insert(0, word.strip().lower())
    return {category: tuple(words) for category, words in rules.items()}


def categorise(text: str, rules: dict[str, tuple[str, ...]]) -> str:
    """The category a message's words suggest (the agent can change it); "other" when none matches."""
    folded = unicodedata.normalize("NFKC", text or "").lower()
    for category in ("complaint", "refund", "inquiry"):
        if any(word in folded for word in rules.get(category, ())):
            return category
    return "other"


# --- opening ---------------------------------------------------------------------------------------------------

def open_ticket(session: Session, settings: Settings, channel: str, sender: str, body: str, now: datetime,
                external_id: str | None = None) -> Ticket | None:
    """Keep one inbound message as a ticket (in the caller's transaction); None when this message (same
    external id) was kept before."""
    customer = _customer_of(session, channel, sender)
    booking = _booking_of(session, customer, body)
    row = {"channel": channel, "sender": sender[:254], "customer_id": customer.id if customer else None,
           "booking_id": booking.id if booking else None, "category": categorise(body, keyword_rules(settings)),
           "language": _language(customer, body), "body": (body or "")[:TEXT_LIMIT], "status": OPEN,
           "external_id": external_id[:300] if external_id else None, "created_at": now,
           "due_at": now + timedelta(hours=settings.desk_ticket_sla_hours)}
    inserted = session.execute(insert_ignore(Ticket.__table__, session).execution_options(preserve_rowcount=True),
                               [row]).rowcount
    if inserted != 1:
        return None
    ticket = session.scalar(select(Ticket).where(Ticket.channel == channel, Ticket.created_at == now,
                                                 Ticket.sender == row["sender"]).order_by(Ticket.id.desc()).limit(1))
    audit.record(session, f"customer:{channel}", "ticket.opened", "ticket", ticket.id, category=ticket.category,
                 booking_ref=booking.ref if booking else None)
    return ticket


def sms_ticket(session: Session, settings: Settings, phone: str, body: str, now: datetime,
               message_sid: str | None) -> str | None:
    """An SMS from a number we never asked a question: keep it as a ticket and say an agent will reply. None when
    notifier.aftercare.responses should answer: the number was sent a notice with a choice, or the text is an
    option key (an answer sent from another phone, not an inquiry: it changes nothing, as before)."""
    number = normalise_phone(phone)
    if not (body or "").strip() or reply_keyword(body) is not None:
        return None  # an option key from a phone we never wrote to: "we could not find a booking" says it best
    if number is not None and _was_asked(session, number):
        return None
    ticket = open_ticket(session, settings, "sms", number or phone, body, now, message_sid)
    language = ticket.language if ticket else ("zh-CN" if _has_chinese(body) else "en")
    return received_reply(settings, language)


def received_reply(settings: Settings, language: str) -> str:
    """The short answer that says the message is kept and a person will reply."""
    lang = "zh-CN" if language.startswith("zh") else "en"
    company = settings.company_name_zh if lang == "zh-CN" else settings.company_name
    return RECEIVED[lang].format(company=company, helpline=settings.helpline)


def _was_asked(session: Session, number: str) -> bool:
    # The same notices notifier.aftercare.responses matches replies against.
    return session.scalar(select(Notification.id).where(
        Notification.recipient == number, Notification.channel == "sms", Notification.purpose != "confirmation",
        Notification.booking_id.is_not(None), Notification.disruption_id.is_not(None)).limit(1)) is not None


def customers_by_phone(session: Session, number: str, limit: int = 20) -> list[Customer]:
    """Customers whose phone is this E.164 number, however it was written down ("+852 9786 3084")."""
    tail = re.sub(r"\D", "", number)[-6:]
    if len(tail) < 6:
        return []
    # The last six digits in order, whatever lies between them; the exact match is made in E.164 below.
    candidates = session.scalars(select(Customer).where(Customer.phone.like("%" + "%".join(tail)))
                                 .order_by(Customer.id))
    return [c for c in candidates if normalise_phone(c.phone) == number][:limit]


def _customer_of(session: Session, channel: str, sender: str) -> Customer | None:
    if channel == "sms":
        number = normalise_phone(sender)
        found = customers_by_phone(session, number, 1) if number else []
        return found[0] if found else None
    address = normalise_email(sender)
    if address is None:
        return None
    return session.scalar(select(Customer).where(func.lower(Customer.email) == address.lower()).limit(1))


def _booking_of(session: Session, customer: Customer | None, body: str) -> Booking | None:
    refs = BOOKING_REF.findall(unicodedata.normalize("NFKC", body or "").upper())
    if refs:
        named = select(Booking).where(Booking.ref.in_(refs[:10]))
        if customer is not None:
            named = named.where(Booking.customer_id == customer.id)
        booking = session.scalar(named.limit(1))
        if booking is not None:
            return booking
    if customer is None:
        return None
    return session.scalar(select(Booking).where(Booking.customer_id == customer.id).order_by(Booking.id.desc())
                          .limit(1))


def _language(customer: Customer | None, body: str) -> str:
    if _has_chinese(body):
        return "zh-CN"
    return customer.language if customer is not None else "en"


def _has_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text or "")


# --- working a ticket -------------------------------------------------------------------------------------------

def inbox(session: Session, statuses: tuple[str, ...] = (OPEN, ANSWERED), customer_id: int | None = None
          ) -> list[Ticket]:
    """Tickets still to work (or of one customer), the one due first on top."""
    query = (select(Ticket).where(Ticket.customer_id == customer_id) if customer_id is not None
             else select(Ticket).where(Ticket.status.in_(statuses)))
    return list(session.scalars(query.order_by(Ticket.due_at, Ticket.id)))


def ticket(session: Session, ticket_id: int) -> Ticket:
    """One ticket, or UsageError."""
    found = session.get(Ticket, ticket_id, populate_existing=True)
    if found is None:
        raise UsageError(f"unknown ticket #{ticket_id}")
    return found


def assign(session: Session, ticket_id: int, agent: str) -> Ticket:
    """Give the ticket to an agent (taking it over from another is allowed and audited)."""
    found = ticket(session, ticket_id)
    before, found.assigned_to = found.assigned_to, agent
    audit.record(session, agent, "ticket.assigned", "ticket", found.id, previous=before)
    return found


def recategorise(session: Session, ticket_id: int, category: str, agent: str) -> Ticket:
    """Correct what the keyword rules guessed."""
    if category not in CATEGORIES:
        raise UsageError(f"unknown category {category!r}: use one of {', '.join(CATEGORIES)}")
    found = ticket(session, ticket_id)
    before, found.category = found.category, category
    audit.record(session, agent, "ticket.recategorised", "ticket", found.id, category=category, previous=before)
    return found


def reply(session: Session, settings: Settings, ticket_id: int, agent: str, text: str, now: datetime) -> int:
    """Queue the agent's answer in the outbox on the ticket's own channel; returns the notification's id."""
    text = (text or "").strip()
    if not text:
        raise UsageError("write the answer first")
    found = ticket(session, ticket_id)
    if not found.sender:
        raise UsageError(f"ticket #{found.id} came without an address to answer")
    count = session.scalar(select(func.count(Notification.id)).where(
        Notification.dedup_key.like(f"desk:{found.id}:%"))) or 0
    created = utcnow()  # the outbox's clock is the wall clock
    company = settings.company_name_zh if found.language == "zh-CN" else settings.company_name
    row = {"dedup_key": f"desk:{found.id}:{count + 1}", "booking_id": found.booking_id,
           "customer_id": found.customer_id, "disruption_id": None, "revision": 0, "broadcast_id": None,
           "channel": found.channel, "recipient": found.sender, "language": found.language,
           "template": "desk_reply", "purpose": "desk_reply", "body_text": text[:TEXT_LIMIT], "body_html": None,
           "subject": f"{company}: #{found.id}" if found.channel == "email" else None,
           "segments": sms_segments(text) if found.channel == "sms" else 0, "safety_critical": False,
           "status": QUEUED, "priority": int(created.timestamp()), "attempts": 0, "created_at": created}
    outbox.add(session, [row], columns=None)
    notice_id = session.scalar(select(Notification.id).where(Notification.dedup_key == row["dedup_key"]))
    found.status, found.assigned_to = ANSWERED, found.assigned_to or agent
    found.first_response_at = found.first_response_at or now
    audit.record(session, agent, "ticket.replied", "ticket", found.id, notification=notice_id,
                 channel=found.channel)
    return notice_id


def resolve(session: Session, ticket_id: int, agent: str, note: str, now: datetime) -> Ticket:
    """Close the ticket with what was done."""
    note = (note or "").strip()
    if not note:
        raise UsageError("say how it was resolved (the next person to read it needs it)")
    found = ticket(session, ticket_id)
    if found.status == RESOLVED:
        raise UsageError(f"ticket #{found.id} is already resolved")
    found.status, found.resolved_at, found.resolution = RESOLVED, now, note[:TEXT_LIMIT]
    found.assigned_to = found.assigned_to or agent
    audit.record(session, agent, "ticket.resolved", "ticket", found.id, category=found.category)
    return found

