"""The customer-service desk's worklist: every booking that needs a person, with the reason and its history.

Reasons (`REASONS`):
- unreachable: nothing about a disruption reached the customer: every notice on every channel failed, or the
  customer has no usable contact at all (notifier.planning.audience's checks: no number, a landline, opted out ...);
- free-text: a reply that matched no keyword, kept word for word;
- help: the customer sent HELP;
- not-carried-out: the choice cannot stand, e.g. the sailing the booking was moved onto is itself cancelled;
- key-account: customers flagged as key accounts, and cargo bookings above `Settings.key_account_teu` TEU, get a
  personal call even when the notice was delivered.

The list lives in `follow_ups`, raised by `refresh` (the watcher runs it, and `followups list` runs it first), so
an item has a number to take and close. A scan never raises an item twice: each carries a source key (reason,
booking and disruption, or the reply it answers); one booking has at most one open item per reason. Taking an
item is one conditional UPDATE (`... WHERE status = 'open'`): of two operators taking it at once, one gets it and
the other is told who has it. Every step is in the audit log, without contacts or the customer's words.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from notifier.store import audit
from notifier.errors import NotifierError, UsageError
from notifier.planning.audience import normalise_phone, recipients_for
from notifier.store.settings import Settings
from notifier.store.db import insert_ignore
from notifier.store.models import (Booking, Broadcast, Customer, CustomerResponse, Disruption, FollowUp, Notification,
                                   Offer, OptOut, Port, Sailing, utcnow)
from notifier.privacy import mask_email, mask_name, mask_phone, redact

REASONS = ("unreachable", "free-text", "help", "not-carried-out", "key-account")
OUTCOMES = ("rebooked", "refunded", "no-answer", "other")
STATUSES = ("open", "taken", "done")
REPLY_REASONS = {"free_text": "free-text", "help": "help"}
CANCELLING_KINDS = ("cancelled", "port_omitted")
# A notice that may still reach the customer, or did; and one that never will.
REACHING = ("held", "queued", "sending", "sent", "delivered")
FAILED = ("failed", "undelivered", "expired", "suppressed")
TOLD_PURPOSES = ("notice", "fallback", "reminder")
# A cleared disruption is still scanned this long: a notice failing late, or a late reply, still needs a person.
CLEARED_LOOKBACK = timedelta(days=7)
NOTE_LIMIT = 2000
PAGE = 500
CSV_COLUMNS = ("id", "status", "operator", "reason", "detail", "reply", "booking", "customer", "name",
               "key_account", "phone", "email", "language", "sailing", "departure_utc", "departure_local",
               "disruption", "history", "raised_utc", "taken_utc", "done_utc", "outcome", "note")


class FollowUpError(NotifierError):
    """A follow-up that cannot be taken or closed as asked (taken by someone else, already done)."""


@dataclass(frozen=True)
class Raised:
    """A follow-up a scan found, before it is written."""

    source_key: str
    booking_id: int
    disruption_id: int | None
    reason: str
    detail: str
    response_id: int | None = None


@dataclass
class WorkItem:
    """One follow-up as the desk sees it: contacts and name masked (notifier.privacy), the customer's own words
    in full except any phone number or email address in them."""

    id: int
    reason: str
    status: str
    operator: str | None
    detail: str
    booking_ref: str
    customer_ref: str
    customer_name: str
    key_account: bool
    phone: str
    email: str
    language: str
    sailing: str
    departure: datetime
    timezone: str
    disruption_id: int | None
    reply: str
    created_at: datetime
    taken_at: datetime | None
    done_at: datetime | None
    outcome: str | None
    note: str | None
    history: list[str] = field(default_factory=list)

    @property
    def departure_local(self) -> str:
        """The departure in the port's own time, as the customer knows it."""
        from zoneinfo import ZoneInfo

        return self.departure.astimezone(ZoneInfo(self.timezone)).strftime("%Y-%m-%d %H:%M")


# --- raising follow-ups ------------------------------------------------------------------------------------------

def refresh(session: Session, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Raise every follow-up the current state calls for, in the caller's transaction; returns the new ones
    per reason."""
    now = now or utcnow()
    watched = watched_disruptions(session, now)
    affected = affected_bookings(session, watched)
    raised = [*_unreachable(session, watched, affected), *_replies(session), *_not_carried_out(session),
              *_key_accounts(session, settings, watched, affected)]
    known = _existing_keys(session, [r.source_key for r in raised])
    fresh = [r for r in raised if r.source_key not in known]
    if not fresh:
        return {}
    rows = [{"source_key": r.source_key, "open_key": f"{r.booking_id}:{r.reason}", "booking_id": r.booking_id,
             "disruption_id": r.disruption_id, "response_id": r.response_id, "reason": r.reason,
             "detail": r.detail, "status": "open", "created_at": now} for r in fresh]
    session.execute(insert_ignore(FollowUp.__table__, session), rows)
    written = _existing_keys(session, [r.source_key for r in fresh])
    counts: dict[str, int] = defaultdict(int)
    for item in fresh:
        if item.source_key in written:
            counts[item.reason] += 1
    if counts:
        audit.record(session, "watcher", "followups.raised", "follow_up", None, **dict(counts))
    return dict(counts)


def _existing_keys(session: Session, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), PAGE):
        found.update(session.scalars(select(FollowUp.source_key)
                                     .where(FollowUp.source_key.in_(keys[start:start + PAGE]))))
    return found


def watched_disruptions(session: Session, now: datetime) -> list[int]:
    """Disruptions whose customers may still need a person: active ones, and those cleared recently."""
    recently_cleared = and_(Disruption.status == "cleared", Disruption.cleared_at >= now - CLEARED_LOOKBACK)
    return list(session.scalars(select(Disruption.id).where(or_(Disruption.status == "active", recently_cleared))
                                .order_by(Disruption.id)))


def affected_bookings(session: Session, disruption_ids: list[int]) -> set[tuple[int, int]]:
    """(booking, disruption) pairs a disruption touched: offered choices, planned notices, or listed by planning as
    having no usable contact."""
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(disruption_ids), PAGE):
        ids = disruption_ids[start:start + PAGE]
        offered = select(Offer.booking_id, Offer.disruption_id).distinct().where(Offer.disruption_id.in_(ids))
        noticed = select(Notification.booking_id, Notification.disruption_id).distinct().where(
            Notification.disruption_id.in_(ids), Notification.booking_id.is_not(None), Notification.purpose == "notice")
        pairs.update((booking_id, disruption_id) for query in (offered, noticed)
                     for booking_id, disruption_id in session.execute(query))
    pairs.update(_listed_unreachable(session, disruption_ids))
    return pairs


def _listed_unreachable(session: Session, disruption_ids: list[int]) -> set[tuple[int, int]]:
    # Planning keeps the bookings it could not address in the broadcast's preview; a notice without offers (an
    # advisory) leaves no other trace of them.
    wanted = set(disruption_ids)
    listed: dict[int, set[int]] = defaultdict(set)
    for target, preview in session.execute(select(Broadcast.target, Broadcast.preview)):
        ids = wanted.intersection((target or {}).get("disruption_ids", []))
        for entry in (preview or {}).get("unreachable", []) if ids else ():
            if entry.get("booking_id") is not None:
                listed[entry["booking_id"]].update(ids)
    if not listed:
        return set()
    sailing_of = dict(session.execute(select(Disruption.id, Disruption.sailing_id)
                                      .where(Disruption.id.in_(sorted(wanted)))).all())
    pairs = set()
    booking_ids = sorted(listed)
    for start in range(0, len(booking_ids), PAGE):
        for booking_id, sailing_id in session.execute(select(Booking.id, Booking.sailing_id).where(
                Booking.id.in_(booking_ids[start:start + PAGE]))):
            pairs.update((booking_id, d) for d in listed[booking_id] if sailing_of.get(d) == sailing_id)
    return pairs


def _unreachable(session: Session, watched: list[int], affected: set[tuple[int, int]]) -> list[Raised]:
    if not affected:
        return []
    failed, noticed = _notice_outcomes(session, watched)
    decided = _decided_by_customer(session, watched)
    raised = []
    for (booking_id, disruption_id), failures in failed.items():
        if (booking_id, disruption_id) not in decided:
            raised.append(Raised(f"unreachable:{booking_id}:{disruption_id}", booking_id, disruption_id,
                                 "unreachable", "every notice failed: " + "; ".join(failures)))
    silent = sorted(pair for pair in affected - noticed if pair not in decided)
    stops = {(o.channel, o.address) for o in session.scalars(select(OptOut))} if silent else set()
    for start in range(0, len(silent), PAGE):
        page = silent[start:start + PAGE]
        rows = session.execute(select(Booking, Customer).join(Customer, Customer.id == Booking.customer_id)
                               .where(Booking.id.in_([b for b, _ in page]), Booking.status != "cancelled")).all()
        by_id = {booking.id: (booking, customer) for booking, customer in rows}
        for booking_id, disruption_id in page:
            if booking_id not in by_id:
                continue
            booking, customer = by_id[booking_id]
            found, missing = recipients_for(booking, customer, ["sms", "email"], stops)
            if not found:
                why = "; ".join(f"{m.channel}: {m.reason}" for m in missing) or "no contact"
                raised.append(Raised(f"unreachable:{booking_id}:{disruption_id}", booking_id, disruption_id,
                                     "unreachable", f"no usable contact ({why})"))
    return raised


def _notice_outcomes(session: Session, watched: list[int]
                     ) -> tuple[dict[tuple[int, int], list[str]], set[tuple[int, int]]]:
    """Pairs whose every notice failed (with the failures in words), and every pair with a notice at all."""
    reaching = func.sum(case((Notification.status.in_(REACHING), 1), else_=0))
    failing = func.sum(case((Notification.status.in_(FAILED), 1), else_=0))
    noticed: set[tuple[int, int]] = set()
    lost: list[tuple[int, int]] = []
    for start in range(0, len(watched), PAGE):
        ids = watched[start:start + PAGE]
        for booking_id, disruption_id, alive, failed in session.execute(
                select(Notification.booking_id, Notification.disruption_id, reaching, failing)
                .where(Notification.disruption_id.in_(ids), Notification.booking_id.is_not(None),
                       Notification.purpose.in_(TOLD_PURPOSES))
                .group_by(Notification.booking_id, Notification.disruption_id)):
            noticed.add((booking_id, disruption_id))
            if not alive and failed:
                lost.append((booking_id, disruption_id))
    failures: dict[tuple[int, int], list[str]] = defaultdict(list)
    for start in range(0, len(lost), PAGE):
        page = lost[start:start + PAGE]
        for booking_id, disruption_id, channel, status, code in session.execute(
                select(Notification.booking_id, Notification.disruption_id, Notification.channel,
                       Notification.status, Notification.error_code)
                .where(Notification.booking_id.in_(sorted({b for b, _ in page})),
                       Notification.disruption_id.in_(sorted({d for _, d in page})),
                       Notification.purpose.in_(TOLD_PURPOSES), Notification.status.in_(FAILED))
                .order_by(Notification.id)):
            if (booking_id, disruption_id) in page:
                words = f"{channel} {status}" + (f" ({code})" if code else "")
                if words not in failures[(booking_id, disruption_id)]:
                    failures[(booking_id, disruption_id)].append(words)
    return dict(failures), noticed


def _decided_by_customer(session: Session, watched: list[int]) -> set[tuple[int, int]]:
    # A customer who chose was reached one way or another; a default decided for someone never told was not.
    decided = set()
    for start in range(0, len(watched), PAGE):
        decided.update((booking_id, disruption_id) for booking_id, disruption_id in session.execute(
            select(CustomerResponse.booking_id, CustomerResponse.disruption_id).where(
                CustomerResponse.disruption_id.in_(watched[start:start + PAGE]),
                CustomerResponse.decision_key == "choice", CustomerResponse.channel != "default")))
    return decided


def _replies(session: Session) -> list[Raised]:
    handled = select(FollowUp.id).where(FollowUp.response_id == CustomerResponse.id).exists()
    replies = session.execute(select(CustomerResponse).where(
        CustomerResponse.choice.in_(tuple(REPLY_REASONS)), CustomerResponse.booking_id.is_not(None), ~handled)
        .order_by(CustomerResponse.id)).scalars().all()
    if not replies:
        return []
    # Replies from before an item of the same kind was closed were read by the person who closed it.
    closed = dict(((booking_id, reason), at) for booking_id, reason, at in session.execute(
        select(FollowUp.booking_id, FollowUp.reason, func.max(FollowUp.done_at))
        .where(FollowUp.status == "done", FollowUp.reason.in_(tuple(REPLY_REASONS.values())),
               FollowUp.booking_id.in_({r.booking_id for r in replies}))
        .group_by(FollowUp.booking_id, FollowUp.reason)))
    raised = []
    for reply in replies:
        reason = REPLY_REASONS[reply.choice]
        done_at = closed.get((reply.booking_id, reason))
        if done_at is not None and reply.received_at <= done_at:
            continue
        what = "asked for help" if reason == "help" else "wrote a reply that matched no keyword"
        raised.append(Raised(f"{reason}:{reply.booking_id}:r{reply.id}", reply.booking_id, reply.disruption_id,
                             reason, f"{what} ({reply.channel})", reply.id))
    return raised


def _not_carried_out(session: Session) -> list[Raised]:
    # The booking was moved onto a sailing that has since been cancelled (or its port call omitted): the
    # customer's choice cannot be carried out, and planning only tells bookings still as booked.
    rows = session.execute(
        select(Offer.booking_id, Offer.disruption_id, Disruption.id, Disruption.kind, Sailing.code)
        .join(Booking, Booking.id == Offer.booking_id)
        .join(Disruption, and_(Disruption.sailing_id == Offer.sailing_id, Disruption.status == "active",
                               Disruption.kind.in_(CANCELLING_KINDS)))
        .join(Sailing, Sailing.id == Offer.sailing_id)
        .where(Offer.status == "accepted", Offer.kind.in_(("rebook", "standby")),
               Booking.sailing_id == Offer.sailing_id, Booking.status == "rebooked")).all()
    return [Raised(f"not-carried-out:{booking_id}:{broken_id}", booking_id, broken_id, "not-carried-out",
                   f"moved onto {code} (choice about disruption #{chosen_for}), which is now "
                   f"{kind.replace('_', ' ')} (disruption #{broken_id})")
            for booking_id, chosen_for, broken_id, kind, code in rows]


def _key_accounts(session: Session, settings: Settings, watched: list[int],
                  affected: set[tuple[int, int]]) -> list[Raised]:
    # Few bookings are key accounts: ask the database for those, then keep the ones an active disruption touched.
    active = set(session.scalars(select(Disruption.id).where(Disruption.id.in_(watched),
                                                             Disruption.status == "active"))) if watched else set()
    if not active:
        return []
    flagged = {booking_id: (kind, teu, key) for booking_id, kind, teu, key in session.execute(
        select(Booking.id, Booking.kind, Booking.teu, Customer.key_account)
        .join(Customer, Customer.id == Booking.customer_id)
        .where(Booking.status != "cancelled", or_(Customer.key_account.is_(True),
                                                  and_(Booking.kind == "cargo",
                                                       Booking.teu > settings.key_account_teu))))}
    raised = []
    for booking_id, disruption_id in sorted(affected):
        if disruption_id in active and booking_id in flagged:
            why = key_account_reasons(*flagged[booking_id], settings)
            raised.append(Raised(f"key-account:{booking_id}:{disruption_id}", booking_id, disruption_id,
                                 "key-account", "personal call: " + " and ".join(why)))
    return raised


def key_account_reasons(kind: str, teu: int, flagged: bool, settings: Settings) -> list[str]:
    """Why a booking gets a personal call: the customer is a key account, and/or a cargo booking is large."""
    why = ["key account"] if flagged else []
    if kind == "cargo" and teu > settings.key_account_teu:
        why.append(f"{teu} TEU cargo booking (over {settings.key_account_teu})")
    return why


# --- HELP ------------------------------------------------------------------------------------------------------------

def record_help(session: Session, phone: str, body: str, now: datetime | None = None) -> bool:
    """Keep an SMS HELP for the worklist, against the booking of the newest notice sent to that number;
    False when the number is not one we wrote to."""
    number = normalise_phone(phone)
    if number is None:
        return False
    latest = session.execute(select(Notification.booking_id, Notification.disruption_id)
                             .where(Notification.recipient == number, Notification.channel == "sms",
                                    Notification.booking_id.is_not(None))
                             .order_by(Notification.id.desc()).limit(1)).first()
    if latest is None:
        return False
    session.add(CustomerResponse(booking_id=latest.booking_id, disruption_id=latest.disruption_id, channel="sms",
                                 choice="help", raw_text=(body or "")[:NOTE_LIMIT], received_at=now or utcnow()))
    audit.record(session, "customer:sms", "response.help", "booking", latest.booking_id)
    return True


# --- working the list --------------------------------------------------------------------------------------------

def take(session: Session, item_id: int, operator: str | None, now: datetime | None = None) -> FollowUp:
    """Give an open follow-up to one operator (one conditional UPDATE: nobody else can take it meanwhile)."""
    operator = _operator(operator)
    now = now or utcnow()
    taken = session.execute(update(FollowUp).where(FollowUp.id == item_id, FollowUp.status == "open")
                            .values(status="taken", operator=operator, taken_at=now)
                            .execution_options(synchronize_session=False)).rowcount
    item = _item(session, item_id)
    if taken != 1:
        if item.status == "taken" and item.operator == operator:
            return item
        _refuse(item, "take")
    audit.record(session, operator, "followup.taken", "follow_up", item.id, reason=item.reason,
                 booking_ref=_booking_ref(session, item))
    return item


def close(session: Session, item_id: int, outcome: str, note: str, operator: str | None = None,
          now: datetime | None = None) -> FollowUp:
    """Close a follow-up with its outcome and a note; the operator who took it closes it (an open item is taken
    and closed in one go when --operator is given)."""
    now = now or utcnow()
    if outcome not in OUTCOMES:
        raise UsageError(f"unknown outcome {outcome!r}: use one of {', '.join(OUTCOMES)}")
    note = (note or "").strip()
    if not note:
        raise UsageError("say what was done in --note (the next person to read this booking needs it)")
    item = _item(session, item_id)
    if item.status == "open":
        if not (operator or "").strip():
            raise FollowUpError(f"follow-up #{item.id} is not taken yet: take it first with `notifier followups "
                                f"take {item.id} --operator NAME`, or give --operator")
        item = take(session, item_id, operator, now)
    who = (operator or "").strip() or item.operator
    closed = session.execute(update(FollowUp).where(FollowUp.id == item_id, FollowUp.status == "taken",
                                                    FollowUp.operator == who)
                             .values(status="done", outcome=outcome, note=note[:NOTE_LIMIT], done_at=now,
                                     open_key=None)
                             .execution_options(synchronize_session=False)).rowcount
    item = _item(session, item_id)
    if closed != 1:
        _refuse(item, "close", who)
    audit.record(session, who, "followup.done", "follow_up", item.id, reason=item.reason, outcome=outcome,
                 booking_ref=_booking_ref(session, item))
    return item


def _operator(operator: str | None) -> str:
    name = (operator or "").strip()
    if not name:
        raise UsageError("say who is acting: --operator NAME (or set NOTIFIER_OPERATOR)")
    return name[:120]


def _item(session: Session, item_id: int) -> FollowUp:
    item = session.get(FollowUp, item_id, populate_existing=True)
    if item is None:
        raise UsageError(f"unknown follow-up #{item_id} (see `notifier followups list`)")
    return item


def _refuse(item: FollowUp, action: str, operator: str | None = None) -> None:
    if item.status == "done":
        raise FollowUpError(f"follow-up #{item.id} is already done ({item.outcome}, by {item.operator})")
    if action == "take":
        raise FollowUpError(f"follow-up #{item.id} is already taken by {item.operator} (since "
                            f"{item.taken_at:%Y-%m-%d %H:%M} UTC)")
    raise FollowUpError(f"follow-up #{item.id} is taken by {item.operator}; only {item.operator} can close it "
                        f"(not {operator})")


def _booking_ref(session: Session, item: FollowUp) -> str:
    return session.scalar(select(Booking.ref).where(Booking.id == item.booking_id)) or ""


# --- reading the list --------------------------------------------------------------------------------------------

def require_disruption(session: Session, disruption_id: int | None) -> None:
    """Refuse an unknown disruption id (exit 2) before anything is read or written for it."""
    if disruption_id is not None and session.get(Disruption, disruption_id) is None:
        raise UsageError(f"unknown disruption #{disruption_id}")


def worklist(session: Session, settings: Settings, disruption_id: int | None = None,
             reasons: tuple[str, ...] = (), include_done: bool = False) -> list[WorkItem]:
    """The follow-ups still to do (and, with include_done, the closed ones), most urgent first: the earliest
    departure, then key accounts."""
    unknown = [r for r in reasons if r not in REASONS]
    if unknown:
        raise UsageError(f"unknown reason {unknown[0]!r}: use one of {', '.join(REASONS)}")
    query = select(FollowUp)
    if not include_done:
        query = query.where(FollowUp.status != "done")
    if disruption_id is not None:
        require_disruption(session, disruption_id)
        query = query.where(FollowUp.disruption_id == disruption_id)
    if reasons:
        query = query.where(FollowUp.reason.in_(reasons))
    items = list(session.scalars(query.order_by(FollowUp.id)))
    work = _work_items(session, settings, items)
    return sorted(work, key=lambda w: (w.status == "done", w.departure, not w.key_account, w.id))


def _work_items(session: Session, settings: Settings, items: list[FollowUp]) -> list[WorkItem]:
    if not items:
        return []
    booking_ids = sorted({i.booking_id for i in items})
    bookings: dict[int, tuple[Booking, Customer]] = {}
    for start in range(0, len(booking_ids), PAGE):
        for booking, customer in session.execute(select(Booking, Customer).join(
                Customer, Customer.id == Booking.customer_id).where(Booking.id.in_(booking_ids[start:start + PAGE]))):
            bookings[booking.id] = (booking, customer)
    sailing_of = _sailings_of(session, items, bookings)
    replies = {r.id: r for r in session.scalars(select(CustomerResponse).where(
        CustomerResponse.id.in_([i.response_id for i in items if i.response_id])))}
    history = booking_history(session, booking_ids)
    work = []
    for item in items:
        booking, customer = bookings[item.booking_id]
        code, departure, zone = sailing_of[item.id]
        reply = replies.get(item.response_id)
        work.append(WorkItem(
            id=item.id, reason=item.reason, status=item.status, operator=item.operator, detail=item.detail,
            booking_ref=booking.ref, customer_ref=customer.ref, customer_name=mask_name(customer.name),
            key_account=bool(key_account_reasons(booking.kind, booking.teu, customer.key_account, settings)),
            phone=mask_phone(customer.phone), email=mask_email(customer.email), language=customer.language,
            sailing=code, departure=departure, timezone=zone, disruption_id=item.disruption_id,
            reply=redact(reply.raw_text) if reply else "", created_at=item.created_at, taken_at=item.taken_at,
            done_at=item.done_at, outcome=item.outcome, note=redact(item.note) if item.note else None,
            history=history.get(item.booking_id, [])))
    return work


def _sailings_of(session: Session, items: list[FollowUp], bookings: dict[int, tuple[Booking, Customer]]
                 ) -> dict[int, tuple[str, datetime, str]]:
    # The sailing the follow-up is about: the disrupted one, else the booking's own.
    disrupted = dict(session.execute(select(Disruption.id, Disruption.sailing_id).where(
        Disruption.id.in_({i.disruption_id for i in items if i.disruption_id}))).all())
    wanted = {i.id: disrupted.get(i.disruption_id) or bookings[i.booking_id][0].sailing_id for i in items}
    facts = {sailing_id: (code, departure, zone) for sailing_id, code, departure, zone in session.execute(
        select(Sailing.id, Sailing.code, Sailing.scheduled_departure, Port.timezone)
        .join(Port, Port.id == Sailing.origin_port_id).where(Sailing.id.in_(set(wanted.values()))))}
    return {item_id: facts[sailing_id] for item_id, sailing_id in wanted.items()}


def booking_history(session: Session, booking_ids: list[int]) -> dict[int, list[str]]:
    """Per booking, what happened in order, in words: notices with their fate, replies, choices, follow-ups."""
    events: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
    for start in range(0, len(booking_ids), PAGE):
        page = booking_ids[start:start + PAGE]
        for n in session.execute(select(Notification.booking_id, Notification.created_at, Notification.sent_at,
                                        Notification.purpose, Notification.channel, Notification.status,
                                        Notification.error_code)
                                 .where(Notification.booking_id.in_(page)).order_by(Notification.id)):
            error = f" ({n.error_code})" if n.error_code and n.status in FAILED else ""
            events[n.booking_id].append((n.sent_at or n.created_at, f"{n.purpose} by {n.channel}: {n.status}{error}"))
        for r in session.scalars(select(CustomerResponse).where(CustomerResponse.booking_id.in_(page))):
            text = f": {redact(r.raw_text)}" if r.raw_text and r.choice in (*REPLY_REASONS, "score") else ""
            what = f"chose {r.choice}" if r.decision_key else r.choice.replace("_", " ")
            events[r.booking_id].append((r.received_at, f"{what} by {r.channel}{text}"))
        for f in session.scalars(select(FollowUp).where(FollowUp.booking_id.in_(page), FollowUp.status == "done")):
            events[f.booking_id].append((f.done_at, f"follow-up #{f.id} ({f.reason}) done by {f.operator}: "
                                                    f"{f.outcome}"))
    return {booking_id: [f"{at:%m-%d %H:%M} UTC {words}" for at, words in sorted(rows, key=lambda e: e[0])]
            for booking_id, rows in events.items()}


def booking_followups(session: Session, booking_id: int) -> list[dict[str, Any]]:
    """One booking's follow-ups, oldest first, for `booking show`."""
    return [{"id": f.id, "reason": f.reason, "status": f.status, "operator": f.operator, "detail": f.detail,
             "outcome": f.outcome, "note": redact(f.note) if f.note else None, "created_at": f.created_at,
             "taken_at": f.taken_at,
             "done_at": f.done_at}
            for f in session.scalars(select(FollowUp).where(FollowUp.booking_id == booking_id)
                                     .order_by(FollowUp.created_at, FollowUp.id))]


def write_csv(items: list[WorkItem], out: TextIO) -> int:
    """The worklist as CSV with a header line (contacts masked); returns how many rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for w in items:
        writer.writerow([w.id, w.status, w.operator or "", w.reason, w.detail, w.reply, w.booking_ref,
                         w.customer_ref, w.customer_name, "yes" if w.key_account else "", w.phone, w.email,
                         w.language, w.sailing, w.departure.isoformat(), f"{w.departure_local} {w.timezone}",
                         w.disruption_id or "", " | ".join(w.history), w.created_at.isoformat(),
                         w.taken_at.isoformat() if w.taken_at else "", w.done_at.isoformat() if w.done_at else "",
                         w.outcome or "", w.note or ""])
    return len(items)
