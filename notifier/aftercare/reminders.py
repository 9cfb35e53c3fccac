"""Reminders: one message before the offer deadline to a customer who has not chosen yet (run by the watcher).

Who: a booking with something to choose in its disruption's current revision, no decision, still on the disrupted
sailing, the disruption active, the deadline ahead and at most `Settings.reminder_lead_minutes` away, and a
notice told at least `min_notice_interval_minutes` ago (a short deadline must not put the reminder right behind
the notice).
Where: on a channel the customer was told on, their preferred one first. When every notice on a channel failed
or came back undelivered and nothing reached them elsewhere, on their other channel, if they accept it and have
a usable address there. Never to an address that opted out (a STOP stands; the reminder does not go hunting on
another channel either), never after a choice or the deadline, and never twice: the outbox row's dedup key is
"<booking>:<disruption>:reminder", one per booking and disruption whatever the channel or revision.

The reminder is rendered from the notice's own values (`broadcasts.notice_context`): the same alternatives,
refund, deadline and link, so a reminder never says something the notice did not.

A typhoon leaves a hundred thousand bookings to remind: the due reminders go in chunks, each read in a few IN-list
queries (bookings, customers, notices, offers, opt-outs), decided and rendered in memory, and written by one
insert that skips duplicates, in one transaction with its audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.store import audit
from notifier.store.settings import Settings
from notifier.store.db import pages, transaction
from notifier.delivery.fallback import contact
from notifier.messages import local_time, render
from notifier.store.models import (Booking, Customer, CustomerResponse, Disruption, Notification, Offer, Port, Route,
                                   Sailing, utcnow)
from notifier.delivery.optouts import opted_out_pairs
from notifier import outbox
from notifier.store.status import ACTIVE, CANCELLED, CONFIRMED, LOST, OFFER_TAKEABLE, REACHED

TEMPLATE = "reminder"
CHOOSABLE = ("rebook", "standby", "refund")
NOTICE_PURPOSES = ("notice", "fallback")
OTHER_CHANNEL = {"sms": "email", "email": "sms"}
CHUNK = 500  # due reminders per transaction
PAGE = 500  # ids per IN list


@dataclass(frozen=True)
class Due:
    """A booking whose reminder is due now."""

    booking_id: int
    disruption_id: int
    deadline: datetime


def reminder_key(booking_id: int, disruption_id: int) -> str:
    """The outbox key of a booking's one reminder about a disruption."""
    return f"{booking_id}:{disruption_id}:reminder"


def _unanswered_offers(lead: timedelta | None, now: datetime):  # noqa: ANN202
    """(booking, disruption, deadline) of open choices without a decision, the deadline ahead (within `lead`)."""
    decided = exists().where(CustomerResponse.booking_id == Offer.booking_id,
                             CustomerResponse.disruption_id == Offer.disruption_id,
                             CustomerResponse.decision_key == "choice")
    deadline = func.min(Offer.deadline)
    query = (select(Offer.booking_id, Offer.disruption_id, deadline.label("deadline"))
             .join(Disruption, and_(Disruption.id == Offer.disruption_id, Disruption.revision == Offer.revision))
             .join(Booking, Booking.id == Offer.booking_id)
             .where(Disruption.status == ACTIVE, Booking.status == CONFIRMED,
                    Booking.sailing_id == Disruption.sailing_id, Offer.kind.in_(CHOOSABLE),
                    Offer.status.in_(OFFER_TAKEABLE), Offer.deadline.is_not(None), ~decided)
             .group_by(Offer.booking_id, Offer.disruption_id)
             .having(deadline > now))
    return query if lead is None else query.having(deadline <= now + lead)


def due_reminders(session: Session, settings: Settings, now: datetime) -> list[Due]:
    """Bookings whose one reminder is due now and not yet queued."""
    if settings.reminder_lead_minutes <= 0:
        return []
    # "+ 0" keeps SQLite (no statistics) off the disruption index: a typhoon's disruption has a thousand notices
    # or more, scanned for each of its offers (minutes for 100,000 bookings); a booking has a handful.
    reminded = exists().where(Notification.booking_id == Offer.booking_id,
                              Notification.disruption_id + 0 == Offer.disruption_id,
                              Notification.purpose == "reminder")
    query = _unanswered_offers(timedelta(minutes=settings.reminder_lead_minutes), now).where(~reminded)
    # By disruption: a chunk then shares one disruption's facts (its alternatives, ports, times).
    return [Due(b, d, deadline) for b, d, deadline in session.execute(query.order_by(Offer.disruption_id,
                                                                                     Offer.booking_id))]


def queue_reminders(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None) -> int:
    """Queue every reminder that is due (run by the watcher); returns how many went into the outbox."""
    now = now or utcnow()
    with factory() as session:
        due = due_reminders(session, settings, now)
    queued = 0
    for start in range(0, len(due), CHUNK):
        # One transaction per chunk: a watcher killed half-way keeps what it queued, and a re-run skips it.
        with transaction(factory) as session:
            queued += _queue_chunk(session, settings, due[start:start + CHUNK], now)
    return queued


@dataclass
class ChunkRows:
    """What a chunk of due reminders needs, read in a few IN-list queries instead of a few queries per booking."""

    bookings: dict[int, Booking]
    customers: dict[int, Customer]
    disruptions: dict[int, Disruption]
    notices: dict[tuple[int, int], list[Any]]  # (booking, disruption) -> its notices' (channel, status, sent_at)
    offers: dict[tuple[int, int], list[Offer]]  # (booking, disruption) -> its current-revision offers, by key


def _queue_chunk(session: Session, settings: Settings, chunk: list[Due], now: datetime) -> int:
    loaded = _load_chunk(session, chunk)
    # The choice is made without opt-outs, which are then read once for the chunk's chosen addresses and applied
    # as `choose_address` would (an address that opted out gets no reminder, and no other channel is tried).
    reachable = [(due, *told) for due in chunk if (told := _address_of(loaded, due, now, settings)) is not None]
    stops = opted_out_pairs(session, [(channel, address) for _, channel, address in reachable])
    chosen = _not_yet_queued(session, [(due, channel, address) for due, channel, address in reachable
                                       if (channel, address) not in stops])
    facts: dict[int, Any] = {}
    rows = [_reminder_row(session, settings, loaded, due, channel, address, facts)
            for due, channel, address in chosen]
    added = outbox.add(session, rows, constants={"created_at": utcnow()})
    if added:
        audit.record(session, "watcher", "reminders.queued", None, None, count=added,
                     disruptions=sorted({due.disruption_id for due, _, _ in chosen}))
    return added


def _customer_of(loaded: ChunkRows, due: Due) -> Customer:
    return loaded.customers[loaded.bookings[due.booking_id].customer_id]


def _address_of(loaded: ChunkRows, due: Due, now: datetime, settings: Settings) -> tuple[str, str] | None:
    notices = loaded.notices.get((due.booking_id, due.disruption_id), [])
    return choose_address(_customer_of(loaded, due), notices, now, settings, set())


def _load_chunk(session: Session, chunk: list[Due]) -> ChunkRows:
    booking_ids = sorted({due.booking_id for due in chunk})
    disruption_ids = sorted({due.disruption_id for due in chunk})
    pairs = {(due.booking_id, due.disruption_id) for due in chunk}
    bookings = {b.id: b for page in pages(booking_ids, PAGE) for b in session.scalars(
        select(Booking).where(Booking.id.in_(page)))}
    customer_ids = sorted({b.customer_id for b in bookings.values()})
    customers = {c.id: c for page in pages(customer_ids, PAGE) for c in session.scalars(
        select(Customer).where(Customer.id.in_(page)))}
    disruptions = {d.id: d for d in session.scalars(select(Disruption).where(Disruption.id.in_(disruption_ids)))}
    return ChunkRows(bookings, customers, disruptions, _notices_of(session, booking_ids, disruption_ids, pairs),
                     _current_offers(session, booking_ids, disruptions, pairs))


def _notices_of(session: Session, booking_ids: list[int], disruption_ids: list[int],
                pairs: set[tuple[int, int]]) -> dict[tuple[int, int], list[Any]]:
    """The notices `choose_address` reads, for each (booking, disruption) pair asked for."""
    notices: dict[tuple[int, int], list[Any]] = {}
    for page in pages(booking_ids, PAGE):
        for row in session.execute(select(Notification.booking_id, Notification.disruption_id, Notification.channel,
                                          Notification.status, Notification.sent_at)
                                   .where(Notification.booking_id.in_(page),
                                          Notification.disruption_id.in_(disruption_ids),
                                          Notification.purpose.in_(NOTICE_PURPOSES),
                                          Notification.status != CANCELLED)):
            # A booking of the chunk may have notices of another of the chunk's disruptions: not this pair's.
            if (row.booking_id, row.disruption_id) in pairs:
                notices.setdefault((row.booking_id, row.disruption_id), []).append(row)
    return notices


def _current_offers(session: Session, booking_ids: list[int], disruptions: dict[int, Disruption],
                    pairs: set[tuple[int, int]]) -> dict[tuple[int, int], list[Offer]]:
    """Each pair's offers of its disruption's current revision, by option key (as the notice listed them)."""
    offers: dict[tuple[int, int], list[Offer]] = {}
    for page in pages(booking_ids, PAGE):
        for offer in session.scalars(select(Offer).where(Offer.booking_id.in_(page),
                                                         Offer.disruption_id.in_(list(disruptions)))
                                     .order_by(Offer.booking_id, Offer.disruption_id, Offer.option_key)):
            key = (offer.booking_id, offer.disruption_id)
            if key in pairs and offer.revision == disruptions[offer.disruption_id].revision:
                offers.setdefault(key, []).append(offer)
    return offers


def _not_yet_queued(session: Session, chosen: list[tuple[Due, str, str]]) -> list[tuple[Due, str, str]]:
    # `due_reminders` read before this transaction: another run may have queued some since. Dropping them here
    # keeps the audit's disruptions to what this chunk really added (the insert would skip them anyway).
    keys = [reminder_key(due.booking_id, due.disruption_id) for due, _, _ in chosen]
    queued = {key for page in pages(keys, PAGE) for key in session.scalars(
        select(Notification.dedup_key).where(Notification.dedup_key.in_(page)))}
    return [told for told in chosen if reminder_key(told[0].booking_id, told[0].disruption_id) not in queued]


def _reminder_row(session: Session, settings: Settings, loaded: ChunkRows, due: Due, channel: str, address: str,
                  facts: dict[int, Any]) -> tuple:
    """The outbox row of one reminder, in `NOTICE_COLUMNS` order."""
    booking, disruption = loaded.bookings[due.booking_id], loaded.disruptions[due.disruption_id]
    customer = _customer_of(loaded, due)
    sailing_facts = reminder_facts(session, disruption, facts)
    offers = loaded.offers.get((booking.id, disruption.id), [])
    rendered = render(channel, TEMPLATE, customer.language,
                      _context(settings, sailing_facts, booking, customer, offers, due.deadline))
    return (reminder_key(booking.id, disruption.id), booking.id, customer.id, disruption.id, disruption.revision,
            None, channel, address, rendered.language, TEMPLATE, "reminder", rendered.subject,
            rendered.body_text, rendered.body_html, rendered.segments, False, "queued",
            int(sailing_facts.sailing.scheduled_departure.timestamp()), 0)


def choose_address(customer: Customer, notices: list[Any], now: datetime, settings: Settings,
                   stops: set[tuple[str, str]]) -> tuple[str, str] | None:
    """The (channel, address) for the reminder, given the booking's notices (channel, status, sent_at), or None:
    no notice told yet, told too recently, every channel failed, or the address opted out."""
    preferred = [c for c in customer.channels or [] if c in OTHER_CHANNEL]
    told = [n for n in notices if n.status in REACHED]
    if told:
        last = max((n.sent_at for n in told if n.sent_at), default=None)
        if last is not None and now - last < timedelta(minutes=settings.min_notice_interval_minutes):
            return None
        channels = {n.channel for n in told}
        channel = next((c for c in preferred if c in channels), sorted(channels)[0])
    else:
        failed = {n.channel for n in notices} - {n.channel for n in notices if n.status not in LOST}
        if not failed or len(failed) < len({n.channel for n in notices}):
            return None  # still on its way somewhere: wait for it
        others = [OTHER_CHANNEL[c] for c in failed if OTHER_CHANNEL.get(c) not in failed]
        channel = next((c for c in preferred if c in others), None)
        if channel is None:
            return None  # nowhere left to try: the follow-up worklist has this booking
    address = contact(customer, channel)
    if address is None or (channel, address) in stops:
        return None
    return channel, address


def _context(settings: Settings, sailing_facts: Any, booking: Booking, customer: Customer, offers: list[Offer],
             deadline: datetime) -> dict[str, Any]:
    from notifier.planning.notices import notice_context
    from notifier.aftercare.responses import default_policy

    context = notice_context(sailing_facts, booking, customer, offers, settings, customer.language, deadline)
    return {**context, "no_answer": default_policy(settings, sailing_facts.route.jurisdiction)}


def reminder_facts(session: Session, disruption: Disruption, facts: dict[int, Any]) -> Any:
    """The disruption's `broadcasts.SailingFacts`, made once per disruption and kept in `facts`."""
    from notifier.planning.notices import SailingFacts
    from notifier.store.capacity import candidates_for

    if disruption.id not in facts:
        sailing = session.get(Sailing, disruption.sailing_id)
        ports = {port.id: port for port in session.scalars(select(Port))}
        facts[disruption.id] = SailingFacts(
            disruption=disruption, sailing=sailing, origin=ports[sailing.origin_port_id],
            destination=ports[sailing.destination_port_id], route=session.get(Route, sailing.route_id),
            candidates=candidates_for(session, disruption), candidate_ports=ports,
            vessel_name=sailing.vessel.name if sailing.vessel else "")
    return facts[disruption.id]


# --- what the broadcast preview says -------------------------------------------------------------------------------

def planned_reminders(session: Session, broadcast_id: int, settings: Settings | None = None,
                      now: datetime | None = None) -> dict[str, Any]:
    """What reminders a broadcast will lead to: how many of its bookings have a choice to make and none yet,
    when their reminders fall due (first and last, in the port's time), and how many are already queued."""
    lead = (settings or Settings()).reminder_lead_minutes
    told = select(Notification.booking_id, Notification.disruption_id).where(
        Notification.broadcast_id == broadcast_id, Notification.booking_id.is_not(None)).distinct().subquery()
    open_choices = _unanswered_offers(None, now or utcnow()).subquery()
    rows = session.execute(select(open_choices.c.booking_id, open_choices.c.disruption_id, open_choices.c.deadline)
                           .join(told, and_(told.c.booking_id == open_choices.c.booking_id,
                                            told.c.disruption_id == open_choices.c.disruption_id))).all()
    queued = session.scalar(select(func.count()).select_from(Notification).join(
        told, and_(told.c.booking_id == Notification.booking_id, told.c.disruption_id == Notification.disruption_id))
        .where(Notification.purpose == "reminder")) or 0
    plan: dict[str, Any] = {"lead_minutes": lead, "bookings": len(rows), "queued": queued, "first_due": "",
                            "last_due": "", "timezone": ""}
    if rows and lead > 0:
        zone = session.scalar(select(Port.timezone).join(Sailing, Sailing.origin_port_id == Port.id)
                              .join(Disruption, Disruption.sailing_id == Sailing.id)
                              .where(Disruption.id == rows[0].disruption_id))
        moments = sorted(row.deadline - timedelta(minutes=lead) for row in rows)
        plan.update(first_due=local_time(moments[0], zone, "en", "yyyy-MM-dd HH:mm"),
                    last_due=local_time(moments[-1], zone, "en", "yyyy-MM-dd HH:mm"), timezone=zone)
    return plan


def preview_reminders(settings: Settings, broadcast_id: int) -> dict[str, Any]:
    """`planned_reminders` on the configured database (for the console's preview)."""
    from notifier.store.db import make_engine

    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            return planned_reminders(session, broadcast_id, settings)
    finally:
        engine.dispose()
