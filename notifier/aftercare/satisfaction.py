"""The satisfaction check: once a disruption is resolved, each customer gets one short message asking for a 1-5
score; the score comes back as an SMS reply, an email reply, or a click on a tiny page, and `notifier report`
shows the figures with how the disruption was settled.

Settled: a booking is settled when nothing is left to do for it: no follow-up of it is still open, and it chose
(on the web, by SMS or email, through an agent), the no-answer default decided, a person closed its follow-ups,
its offer deadline passed, or (nothing to choose) the disruption is over. Resolved: the disruption is cleared
(service resumed, or the warning lifted) and every booking it touched is settled.

One request per customer and disrupted sailing (two bookings, or a delay that became a cancellation, are asked
once), on a channel that reached them before (SMS first when they prefer it: the score is a one-digit reply),
never to an address that opted out. An SMS reply "1" to "5" (also full-width digits and 一 to 五) counts when
the request is the newest SMS we sent to that number and it is at most `satisfaction_reply_days` old; any other
reply is left to notifier.aftercare.responses (which keeps it for the follow-up worklist). The first score counts.

A typhoon resolves a hundred thousand bookings at once: they are asked in chunks, each read in a few IN-list
queries (bookings, customers, their notifications, requests already made, opt-outs of their addresses), decided in
memory, and written by one insert of requests and one of notices (for the new requests only), in one transaction.

One piece, past 500 lines: deciding who is settled, asking, reading the score by SMS, email or page, and the
figures all read the same request rows under the same rules; split, each part would re-state them.
"""

from __future__ import annotations

import html
import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from itsdangerous import BadSignature, Signer
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.store import audit
from notifier.planning.audience import normalise_phone
from notifier.store.settings import Settings
from notifier.store.db import pages, transaction
from notifier.delivery.fallback import contact
from notifier.aftercare.followups import CLEARED_LOOKBACK, PAGE, affected_bookings, refresh
from notifier.messages import render
from notifier.store.models import (Booking, Customer, CustomerResponse, Disruption, FollowUp, Notification, Offer,
                                   SatisfactionRequest, utcnow)
from notifier.delivery.optouts import opted_out_pairs
from notifier import outbox
from notifier.store.bulk import bulk_insert
from notifier.store.status import CLEARED, DONE, REACHED, REFUSED

TEMPLATE = "satisfaction"
OFFER_KINDS = ("cancelled", "delayed", "port_omitted")
CHUNK = 500  # settlements asked per transaction
REQUEST_COLUMNS = ("customer_id", "booking_id", "disruption_id", "sailing_id", "channel")
SCORES = (1, 2, 3, 4, 5)
CHINESE_DIGITS = {"一": "1", "二": "2", "三": "3", "四": "4", "五": "5"}
_SCORE = re.compile(r"([1-5])\s*(分|星|STARS?|/5|OUT OF 5)?")
_TRIM = " \t\r\n.。!！,，、:：;；\"'“”‘’()（）"
THANKS = {"en": "{company}: thank you, we have your score ({score}/5). Help: {helpline}",
          "zh-CN": "【{company}】感谢您的评分（{score}分）。客服：{helpline}"}
PAGE_WORDS = {"en": {"title": "How did we do?", "ask": "How did we handle the disruption to your sailing {code} "
                     "({departure})?", "low": "1 = poor", "high": "5 = excellent",
                     "thanks": "Thank you: your score is {score} out of 5.", "gone": "This link is not valid."},
              "zh-CN": {"title": "服务评价", "ask": "您对我们处理 {code} 航班（{departure}）受影响一事的服务是否满意？",
                        "low": "1 = 很不满意", "high": "5 = 非常满意", "thanks": "感谢您的评分：{score} 分（满分 5 分）。",
                        "gone": "此链接无效。"}}

satisfaction_pages = Blueprint("satisfaction", __name__)


# --- who is settled ------------------------------------------------------------------------------------------------

@dataclass
class Settlement:
    """Where one booking stands after one disruption."""

    booking_id: int
    disruption_id: int
    settled_at: datetime | None = None
    by: str = ""  # customer | default | agent | follow-up | deadline | resumed ("" while unsettled)
    person: bool = False  # a person of ours settled it (an agent's choice, or a follow-up closed)
    open_followups: int = 0


@dataclass
class LoopFigures:
    """How one disruption's customers were settled, and what they thought of it."""

    affected: int = 0
    settled: int = 0
    without_person: int = 0
    followups_done: int = 0
    followups_open: int = 0
    minutes_to_settle: list[float] = field(default_factory=list)
    resolved: bool = False
    requests: int = 0
    scores: dict[int, int] = field(default_factory=dict)

    @property
    def median_minutes(self) -> float | None:
        """The median time from the disruption becoming known to a booking being settled."""
        return statistics.median(self.minutes_to_settle) if self.minutes_to_settle else None

    @property
    def all_settled_minutes(self) -> float | None:
        """How long until the last booking was settled (None while some are not)."""
        return max(self.minutes_to_settle) if self.minutes_to_settle and self.settled == self.affected else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (the per-booking times left out)."""
        data = asdict(self)
        data.pop("minutes_to_settle")
        data["scores"] = {str(k): v for k, v in sorted(self.scores.items())}
        data["median_minutes_to_settle"] = self.median_minutes
        data["minutes_until_all_settled"] = self.all_settled_minutes
        return data


def settlements(session: Session, disruption_ids: list[int], now: datetime) -> dict[int, list[Settlement]]:
    """Per disruption, every booking it touched and whether (when, how) it is settled."""
    disruptions = {d.id: d for d in session.scalars(select(Disruption).where(Disruption.id.in_(disruption_ids)))}
    pairs = affected_bookings(session, list(disruptions))
    followups: dict[tuple[int, int | None], list[FollowUp]] = defaultdict(list)
    decisions: dict[tuple[int, int], tuple[str, datetime]] = {}
    deadlines: dict[tuple[int, int], datetime] = {}
    ids = list(disruptions)
    for start in range(0, len(ids), PAGE):
        page = ids[start:start + PAGE]
        for item in session.scalars(select(FollowUp).where(FollowUp.disruption_id.in_(page))):
            followups[(item.booking_id, item.disruption_id)].append(item)
            pairs.add((item.booking_id, item.disruption_id))
        for booking_id, disruption_id, channel, at in session.execute(
                select(CustomerResponse.booking_id, CustomerResponse.disruption_id, CustomerResponse.channel,
                       CustomerResponse.received_at)
                .where(CustomerResponse.disruption_id.in_(page), CustomerResponse.decision_key == "choice")):
            decisions[(booking_id, disruption_id)] = (channel, at)
        # The deadline of the newest offers (clearing a disruption bumps its revision past them).
        newest: dict[tuple[int, int], tuple[int, datetime]] = {}
        for booking_id, disruption_id, revision, deadline in session.execute(
                select(Offer.booking_id, Offer.disruption_id, Offer.revision, Offer.deadline)
                .where(Offer.disruption_id.in_(page), Offer.deadline.is_not(None))):
            newest[(booking_id, disruption_id)] = min(newest.get((booking_id, disruption_id), (revision, deadline)),
                                                      (revision, deadline), key=lambda r: (-r[0], r[1]))
        deadlines.update({pair: deadline for pair, (_, deadline) in newest.items()})
    loose = _loose_followups(session, {b for b, _ in pairs})
    result: dict[int, list[Settlement]] = defaultdict(list)
    for booking_id, disruption_id in sorted(pairs):
        items = followups[(booking_id, disruption_id)] + loose.get(booking_id, [])
        result[disruption_id].append(_settle(booking_id, disruptions[disruption_id], items,
                                             decisions.get((booking_id, disruption_id)),
                                             deadlines.get((booking_id, disruption_id)), now))
    return dict(result)


def _loose_followups(session: Session, booking_ids: set[int]) -> dict[int, list[FollowUp]]:
    # A reply we could not tie to a disruption still belongs to its booking.
    loose: dict[int, list[FollowUp]] = defaultdict(list)
    ordered = sorted(booking_ids)
    for start in range(0, len(ordered), PAGE):
        for item in session.scalars(select(FollowUp).where(FollowUp.booking_id.in_(ordered[start:start + PAGE]),
                                                           FollowUp.disruption_id.is_(None))):
            loose[item.booking_id].append(item)
    return loose


def _settle(booking_id: int, disruption: Disruption, items: list[FollowUp], decision: tuple[str, datetime] | None,
            deadline: datetime | None, now: datetime) -> Settlement:
    done = [i.done_at for i in items if i.status == DONE and i.done_at]
    settlement = Settlement(booking_id, disruption.id, open_followups=sum(1 for i in items if i.status != DONE),
                            person=bool(done) or (decision is not None and decision[0] == "agent"))
    if settlement.open_followups:
        return settlement
    if decision is not None:
        channel, at = decision
        settlement.settled_at = at
        settlement.by = {"default": "default", "agent": "agent"}.get(channel, "customer")
    elif done:
        settlement.settled_at, settlement.by = max(done), "follow-up"
    elif deadline is not None and deadline <= now and (disruption.cleared_at is None
                                                       or deadline <= disruption.cleared_at):
        settlement.settled_at, settlement.by = deadline, "deadline"
    elif disruption.status == CLEARED:
        # Once a disruption is over its offers close: nothing is left to choose.
        settlement.settled_at, settlement.by = disruption.cleared_at, "resumed"
    if settlement.settled_at is not None and done:
        settlement.settled_at = max([settlement.settled_at, *done])
    return settlement


def loop_figures(session: Session, disruption_ids: list[int], now: datetime | None = None) -> dict[int, LoopFigures]:
    """Per disruption: bookings settled, settled without a person, follow-ups done and open, time to settle,
    satisfaction requests sent and the scores."""
    now = now or utcnow()
    known = dict(session.execute(select(Disruption.id, Disruption.known_at)
                                 .where(Disruption.id.in_(disruption_ids))).all())
    status = dict(session.execute(select(Disruption.id, Disruption.status)
                                  .where(Disruption.id.in_(disruption_ids))).all())
    figures = {d: LoopFigures() for d in disruption_ids}
    for disruption_id, rows in settlements(session, disruption_ids, now).items():
        figure = figures[disruption_id]
        figure.affected = len(rows)
        settled = [r for r in rows if r.settled_at is not None]
        figure.settled = len(settled)
        figure.without_person = sum(1 for r in settled if not r.person)
        figure.minutes_to_settle = sorted(max((r.settled_at - known[disruption_id]).total_seconds() / 60, 0)
                                          for r in settled)
        figure.resolved = status[disruption_id] == "cleared" and figure.settled == figure.affected
    for disruption_id, state in session.execute(select(FollowUp.disruption_id, FollowUp.status).where(
            FollowUp.disruption_id.in_(disruption_ids))):
        if state == "done":
            figures[disruption_id].followups_done += 1
        else:
            figures[disruption_id].followups_open += 1
    for disruption_id, score in session.execute(select(SatisfactionRequest.disruption_id, SatisfactionRequest.score)
                                                .where(SatisfactionRequest.disruption_id.in_(disruption_ids))):
        figures[disruption_id].requests += 1
        if score is not None:
            figures[disruption_id].scores[score] = figures[disruption_id].scores.get(score, 0) + 1
    return figures


# --- asking ----------------------------------------------------------------------------------------------------------

def resolved_disruptions(session: Session, now: datetime) -> dict[int, list[Settlement]]:
    """Recently cleared disruptions (of kinds that offered choices) whose every booking is settled."""
    candidates = list(session.scalars(select(Disruption.id).where(
        Disruption.status == CLEARED, Disruption.cleared_at >= now - CLEARED_LOOKBACK,
        Disruption.kind.in_(OFFER_KINDS)).order_by(Disruption.id)))
    if not candidates:
        return {}
    return {d: rows for d, rows in settlements(session, candidates, now).items()
            if rows and all(r.settled_at is not None for r in rows)}


def queue_requests(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None) -> int:
    """Ask every customer of a resolved disruption for a score, once (run by the watcher); returns how many
    requests went into the outbox."""
    if not settings.satisfaction_check:
        return 0
    now = now or utcnow()
    with transaction(factory) as session:
        refresh(session, settings, now)  # a follow-up not raised yet would make a disruption look resolved
    with factory() as session:
        resolved = resolved_disruptions(session, now)
    # Disruption by disruption, each in booking order: when a customer has two bookings on a sailing, or a sailing
    # two disruptions, the first one in this order is the one asked.
    waiting = [row for _, rows in sorted(resolved.items()) for row in rows]
    queued = 0
    for start in range(0, len(waiting), CHUNK):
        # One transaction per chunk: a watcher killed half-way keeps what it asked, and a re-run skips it.
        with transaction(factory) as session:
            queued += _ask_chunk(session, settings, waiting[start:start + CHUNK], now)
    return queued


@dataclass
class ChunkRows:
    """What a chunk of settlements needs, read in a few IN-list queries instead of a few queries per booking."""

    bookings: dict[int, Booking]
    customers: dict[int, Customer]
    sailing_of: dict[int, int]  # disruption -> its sailing
    asked: set[tuple[int, int]]  # (customer, sailing) already asked
    outcomes: dict[int, list[tuple[str, str]]]  # booking -> its notifications' (channel, status)
    addresses: dict[tuple[int, str], str | None]  # (customer, channel) -> `contact` (parsing a number is slow)
    stops: set[tuple[str, str]]  # the chunk's (channel, address) that opted out


@dataclass(frozen=True)
class Ask:
    """One request decided for a chunk, before it is written."""

    settlement: Settlement
    customer: Customer
    booking: Booking
    sailing_id: int
    channel: str
    address: str


def _ask_chunk(session: Session, settings: Settings, chunk: list[Settlement], now: datetime) -> int:
    loaded = _load_chunk(session, chunk)
    asks = _new_requests(session, _decide(loaded, chunk), now)
    _queue_notices(session, settings, asks, now)
    for disruption_id, count in sorted(Counter(a.settlement.disruption_id for a in asks).items()):
        audit.record(session, "watcher", "satisfaction.requested", "disruption", disruption_id, requests=count)
    return len(asks)


def _load_chunk(session: Session, chunk: list[Settlement]) -> ChunkRows:
    booking_ids = sorted({s.booking_id for s in chunk})
    bookings = {b.id: b for page in pages(booking_ids, PAGE)
                for b in session.scalars(select(Booking).where(Booking.id.in_(page)))}
    customer_ids = sorted({b.customer_id for b in bookings.values()})
    customers = {c.id: c for page in pages(customer_ids, PAGE)
                 for c in session.scalars(select(Customer).where(Customer.id.in_(page)))}
    sailing_of = dict(session.execute(select(Disruption.id, Disruption.sailing_id).where(
        Disruption.id.in_(sorted({s.disruption_id for s in chunk})))).all())
    outcomes: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for page in pages(booking_ids, PAGE):
        # By booking alone: a filter on status would let SQLite walk the outbox's status index instead.
        for booking_id, channel, status in session.execute(select(
                Notification.booking_id, Notification.channel, Notification.status).where(
                Notification.booking_id.in_(page))):
            outcomes[booking_id].append((channel, status))
    addresses = {(c.id, channel): contact(c, channel) for c in customers.values() for channel in c.channels or []}
    return ChunkRows(bookings, customers, sailing_of, _asked_before(session, customer_ids, set(sailing_of.values())),
                     dict(outcomes), addresses, _opted_out_on_any_channel(session, addresses))


def _asked_before(session: Session, customer_ids: list[int], sailing_ids: set[int]) -> set[tuple[int, int]]:
    sailings = sorted(sailing_ids)
    return {(customer_id, sailing_id) for page in pages(customer_ids, PAGE)
            for customer_id, sailing_id in session.execute(
                select(SatisfactionRequest.customer_id, SatisfactionRequest.sailing_id).where(
                    SatisfactionRequest.customer_id.in_(page), SatisfactionRequest.sailing_id.in_(sailings)))}


def _opted_out_on_any_channel(session: Session, addresses: dict[tuple[int, str], str | None]
                              ) -> set[tuple[str, str]]:
    # Every channel a customer prefers, not only the one chosen: a stopped one makes `choose_channel` try the next.
    return opted_out_pairs(session, {(channel, address) for (_, channel), address in addresses.items() if address})


def _decide(loaded: ChunkRows, chunk: list[Settlement]) -> list[Ask]:
    """Who in the chunk is asked, and on which channel, as the one-by-one job decided: a customer already asked
    about the sailing (before, or earlier in the chunk) is skipped, and one nothing reached leaves it open."""
    asked = set(loaded.asked)
    asks = []
    for settlement in chunk:
        booking = loaded.bookings[settlement.booking_id]
        customer = loaded.customers[booking.customer_id]
        sailing_id = loaded.sailing_of[settlement.disruption_id]
        if (customer.id, sailing_id) in asked:
            continue
        channel = choose_channel(customer, loaded.outcomes.get(booking.id, []), loaded.stops,
                                 lambda c, channel: loaded.addresses[(c.id, channel)])
        if channel is not None:
            asked.add((customer.id, sailing_id))
            address = loaded.addresses[(customer.id, channel)]
            asks.append(Ask(settlement, customer, booking, sailing_id, channel, address))
    return asks


def _new_requests(session: Session, asks: list[Ask], now: datetime) -> list[Ask]:
    """Write the chunk's requests (a duplicate skipped) and return those that are new: only they get a notice."""
    rows = [(a.customer.id, a.booking.id, a.settlement.disruption_id, a.sailing_id, a.channel) for a in asks]
    bulk_insert(session, SatisfactionRequest.__table__, REQUEST_COLUMNS, rows, skip_duplicates=True,
                constants={"requested_at": now})
    # Read back by the unique key: a row of ours, with no notice yet (another run's committed request has one).
    ours = set()
    for page in pages(sorted({a.customer.id for a in asks}), PAGE):
        ours.update(session.execute(select(SatisfactionRequest.customer_id, SatisfactionRequest.sailing_id,
                                           SatisfactionRequest.booking_id, SatisfactionRequest.disruption_id)
                                    .where(SatisfactionRequest.customer_id.in_(page),
                                           SatisfactionRequest.notification_id.is_(None))).all())
    return [a for a in asks
            if (a.customer.id, a.sailing_id, a.booking.id, a.settlement.disruption_id) in ours]


def _queue_notices(session: Session, settings: Settings, asks: list[Ask], now: datetime) -> None:
    """One outbox row per new request, then each request pointed at its notice (an older one under the same key
    when there is one)."""
    # after every notice about a sailing still to come: the outbox sends lower numbers first
    priority = int((now + timedelta(days=30)).timestamp())
    outbox.add(session, [_notice_row(session, settings, a, priority) for a in asks],
               constants={"created_at": utcnow()})
    keys = {request_key(a.customer.id, a.sailing_id): (a.customer.id, a.sailing_id) for a in asks}
    notice_of = {keys[key]: notification_id for page in pages(sorted(keys), PAGE) for key, notification_id in
                 session.execute(select(Notification.dedup_key, Notification.id)
                                 .where(Notification.dedup_key.in_(page)))}
    table = SatisfactionRequest.__table__
    links = [{"customer": customer, "sailing": sailing, "notice": notice}
             for (customer, sailing), notice in notice_of.items()]
    if links:
        session.execute(table.update().where(table.c.customer_id == bindparam("customer"),
                                             table.c.sailing_id == bindparam("sailing"))
                        .values(notification_id=bindparam("notice")), links)


def request_key(customer_id: int, sailing_id: int) -> str:
    """The outbox key of a customer's one request about a sailing."""
    return f"{customer_id}:{sailing_id}:satisfaction"


def _notice_row(session: Session, settings: Settings, ask: Ask, priority: int) -> tuple:
    """The outbox row of one request, in `NOTICE_COLUMNS` order."""
    customer, booking = ask.customer, ask.booking
    rendered = render(ask.channel, TEMPLATE, customer.language,
                      request_context(session, settings, customer, booking, ask.sailing_id))
    return (request_key(customer.id, ask.sailing_id), booking.id, customer.id, None, 0, None, ask.channel,
            ask.address, rendered.language, TEMPLATE, "satisfaction", rendered.subject,
            rendered.body_text, rendered.body_html, rendered.segments, False, "queued", priority, 0)


def choose_channel(customer: Customer, outcomes: list[tuple[str, str]], stops: set[tuple[str, str]],
                   address_of: Callable[[Customer, str], str | None] = contact) -> str | None:
    """A channel that reached this customer about the booking before, given its notifications' (channel, status):
    one that never failed for it first, then their preferred one; None when nothing reached them or the address
    opted out. `address_of` is `fallback.contact`, or a chunk's memo of it."""
    reached = {channel for channel, status in outcomes if status in REACHED}
    failed = {channel for channel, status in outcomes if status in REFUSED}
    preferred = [c for c in customer.channels or [] if c in reached]
    for channel in sorted(preferred, key=lambda c: (c in failed, preferred.index(c))):
        address = address_of(customer, channel)
        if address is not None and (channel, address) not in stops:
            return channel
    return None


def request_context(session: Session, settings: Settings, customer: Customer, booking: Booking,
                    sailing_id: int) -> dict[str, Any]:
    """The values the satisfaction templates use (every one always present)."""
    from notifier.aftercare.responses import sailing_view

    lang = "zh-CN" if customer.language.startswith("zh") else "en"
    token = make_token(settings.secret_key or "demo-secret", customer.id, sailing_id)
    return {"company": settings.company_name_zh if lang == "zh-CN" else settings.company_name,
            "helpline": settings.helpline, "customer": {"name": customer.name}, "booking": {"ref": booking.ref},
            "sailing": sailing_view(session, sailing_id, customer.language),
            "link": f"{settings.public_base_url.rstrip('/')}/s/{token}", "days": settings.satisfaction_reply_days}


# --- scores ----------------------------------------------------------------------------------------------------------

def read_score(body: str) -> int | None:
    """The 1-5 score a reply gives ("4", "４", "四", "4分", "5 stars"), else None."""
    text = unicodedata.normalize("NFKC", body or "").strip().strip(_TRIM).upper()
    text = CHINESE_DIGITS.get(text[:1], text[:1]) + text[1:] if text else text
    match = _SCORE.fullmatch(text)
    return int(match.group(1)) if match else None


def record_score(session: Session, asked: SatisfactionRequest, score: int, channel: str, now: datetime,
                 raw_text: str | None = None, external_id: str | None = None) -> bool:
    """Record a customer's score (in the caller's transaction) and keep it in the booking's history; False when
    a score was already recorded (the first one counts)."""
    if asked.score is not None or score not in SCORES:
        return False
    asked.score, asked.scored_at, asked.score_channel = score, now, channel
    session.add(CustomerResponse(booking_id=asked.booking_id, disruption_id=asked.disruption_id, channel=channel,
                                 choice="score", raw_text=(raw_text or str(score))[:100], received_at=now,
                                 external_id=external_id))
    audit.record(session, f"customer:{channel}", "satisfaction.scored", "booking", asked.booking_id,
                 disruption=asked.disruption_id, score=score)
    return True


def open_request(session: Session, notification_id: int | None, settings: Settings, now: datetime
                 ) -> SatisfactionRequest | None:
    """The satisfaction request a notification carried, while a score is still taken."""
    if notification_id is None:
        return None
    asked = session.scalar(select(SatisfactionRequest).where(SatisfactionRequest.notification_id == notification_id))
    if asked is None or now - asked.requested_at > timedelta(days=settings.satisfaction_reply_days):
        return None
    return asked


def answer_sms_score(session: Session, settings: Settings, phone: str, body: str, now: datetime | None = None
                     ) -> str | None:
    """Record an SMS score when the newest SMS we sent to this number asked for one; returns the thank-you
    text, or None when the reply is not a score for a request (then it is an answer for aftercare.responses)."""
    score = read_score(body)
    number = normalise_phone(phone)
    if score is None or number is None:
        return None
    now = now or utcnow()
    newest = session.execute(select(Notification.id, Notification.purpose, Notification.language)
                             .where(Notification.recipient == number, Notification.channel == "sms",
                                    Notification.purpose.not_in(("confirmation", "ops")))
                             .order_by(Notification.id.desc()).limit(1)).first()
    if newest is None or newest.purpose != "satisfaction":
        return None
    asked = open_request(session, newest.id, settings, now)
    if asked is None:
        return None
    record_score(session, asked, score, "sms", now, body)
    return thanks(settings, newest.language, asked.score)


def thanks(settings: Settings, language: str, score: int) -> str:
    """The short thank-you for a score."""
    lang = "zh-CN" if language.startswith("zh") else "en"
    company = settings.company_name_zh if lang == "zh-CN" else settings.company_name
    return THANKS[lang].format(company=company, score=score, helpline=settings.helpline)


# --- the link: a tiny page -------------------------------------------------------------------------------------------

def _signer(secret: str) -> Signer:
    return Signer(secret, salt="notifier.satisfaction", sep=".")


def make_token(secret: str, customer_id: int, sailing_id: int) -> str:
    """A signed token naming one customer's request about one sailing."""
    return _signer(secret).sign(f"{customer_id:x}-{sailing_id:x}").decode()


# A token exactly as make_token writes it: two hexadecimal ids, a dot, the HMAC-SHA1 signature in unpadded
# base64url (27 characters). base64 decoding skips characters outside its alphabet, so "<token>==" would verify.
TOKEN_SYNTAX = re.compile(r"[0-9a-f]{1,16}-[0-9a-f]{1,16}\.[A-Za-z0-9_-]{27}")


def read_token(secret: str, token: str) -> tuple[int, int] | None:
    """(customer, sailing) of a genuine token (the exact syntax, then the signature), else None."""
    if not TOKEN_SYNTAX.fullmatch(token):
        return None
    try:
        customer, sailing = _signer(secret).unsign(token.encode()).decode().split("-")
        return int(customer, 16), int(sailing, 16)
    except (BadSignature, ValueError, UnicodeError):
        return None


@satisfaction_pages.get("/s/<token>")
def score_page(token: str) -> Response:
    """Five buttons (a GET records nothing: mail scanners open links), or the score already given."""
    with current_app.config["NOTIFIER_FACTORY"]() as session:
        found = _page_request(session, token)
        if found is None:
            return _page("en", PAGE_WORDS["en"]["gone"], status=404)
        asked, lang, view = found
        words = PAGE_WORDS[lang]
        if asked.score is not None:
            return _page(lang, words["thanks"].format(score=asked.score))
    buttons = "".join(f'<button type="submit" name="score" value="{s}">{s}</button> ' for s in SCORES)
    body = (f"<p>{html.escape(words['ask'].format(**view))}</p><form method=\"post\">{buttons}</form>"
            f"<p>{html.escape(words['low'])} &middot; {html.escape(words['high'])}</p>")
    return _page(lang, body, escaped=True)


@satisfaction_pages.post("/s/<token>")
def score_submit(token: str) -> Response:
    """Record the score the customer clicked (the first score counts)."""
    settings: Settings = current_app.config["NOTIFIER_SETTINGS"]
    score = read_score(request.form.get("score", ""))
    origin = request.headers.get("Origin")
    allowed = {request.host_url.rstrip("/"), settings.public_base_url.rstrip("/")}
    with transaction(current_app.config["NOTIFIER_FACTORY"]) as session:
        found = _page_request(session, token)
        if found is None:
            return _page("en", PAGE_WORDS["en"]["gone"], status=404)
        asked, lang, _ = found
        if score is None or (origin is not None and origin.rstrip("/") not in allowed):
            return _page(lang, PAGE_WORDS[lang]["gone"], status=400)
        now = current_app.config.get("NOTIFIER_CLOCK", utcnow)()
        record_score(session, asked, score, "web", now)
        return _page(lang, PAGE_WORDS[lang]["thanks"].format(score=asked.score))


def _page_request(session: Session, token: str) -> tuple[SatisfactionRequest, str, dict[str, str]] | None:
    from notifier.aftercare.responses import sailing_view

    settings: Settings = current_app.config["NOTIFIER_SETTINGS"]
    named = read_token(settings.secret_key or "demo-secret", token)
    if named is None:
        return None
    asked = session.scalar(select(SatisfactionRequest).where(SatisfactionRequest.customer_id == named[0],
                                                             SatisfactionRequest.sailing_id == named[1]))
    if asked is None:
        return None
    language = session.scalar(select(Customer.language).where(Customer.id == asked.customer_id)) or "en"
    lang = "zh-CN" if language.startswith("zh") else "en"
    return asked, lang, sailing_view(session, asked.sailing_id, lang)


def _page(lang: str, content: str, status: int = 200, escaped: bool = False) -> Response:
    settings: Settings = current_app.config["NOTIFIER_SETTINGS"]
    company = settings.company_name_zh if lang == "zh-CN" else settings.company_name
    nonce = getattr(g, "csp_nonce", "")
    body = content if escaped else f"<p>{html.escape(content)}</p>"
    page = (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(PAGE_WORDS[lang]['title'])} - {html.escape(company)}</title>"
            f'<style nonce="{nonce}">body{{font-family:sans-serif;max-width:30em;margin:2em auto;line-height:1.5}}'
            f"button{{font-size:1.4em;min-width:2.4em;margin:.2em}}</style></head>"
            f"<body><h1>{html.escape(PAGE_WORDS[lang]['title'])}</h1>{body}"
            f"<p>{html.escape(company)} &middot; {html.escape(settings.helpline)}</p></body></html>")
    response = Response(page, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response
