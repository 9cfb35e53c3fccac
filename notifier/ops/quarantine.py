"""Poison input never blocks the line: a feed item that a stage fails on is quarantined — marked failed with
its reason, recorded as an error of its feed (so `feeds list` and `watch --status` show it) — and the items
after it go on. `notifier feeds retry ID` puts one back in the queue once the cause is fixed.

Why not retry it on the next tick: an item that failed once on the same code and data fails again, and every
tick it would be tried first, before the valid warning published after it (the failure issue 16 found).

What is poison: an error the item's own content can cause (`CONTENT_ERRORS`: a value out of range, a template
that cannot be filled, a missing key ...). An outage is not: a database that went away, a full disk, a crash
propagate as before, the run stops with nothing half-written, and the watcher's next tick tries again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.errors import NotifierError, UsageError, escape_unprintable
from notifier.store import audit
from notifier.store.db import transaction
from notifier.store.models import Broadcast, FeedError, FeedItem
from notifier.store.status import FAILED, NEW, PLANNING

log = logging.getLogger(__name__)

REASON_MAX = 500
CONTENT_ERRORS = (NotifierError, ValueError, ArithmeticError, LookupError, TypeError, AttributeError)


@dataclass(frozen=True)
class Quarantined:
    """One item a stage failed on: which, where, and why."""

    item_id: int
    source: str
    stage: str
    reason: str


def reason_of(exc: BaseException) -> str:
    """One printable line saying what went wrong, short enough for a table cell and a log line."""
    text = escape_unprintable(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= REASON_MAX else text[:REASON_MAX - 3] + "..."


def quarantine_item(factory: sessionmaker[Session], item_id: int, stage: str, exc: BaseException,
                    now: datetime) -> Quarantined:
    """Mark the item failed with its reason and record the failure against its feed, in a transaction of its own
    (the one that failed has been rolled back)."""
    reason = reason_of(exc)
    with transaction(factory) as session:
        item = session.get(FeedItem, item_id)
        item.status, item.error, item.processed_at = FAILED, f"{stage}: {reason}", now
        session.add(FeedError(source=item.source, at=now,
                              message=f"item {item.id} ({escape_unprintable(item.external_id)[:120]}) "
                                      f"quarantined at {stage}: {reason}"))
        audit.record(session, "rules", "feed_item.quarantined", "feed_item", item.id, source=item.source,
                     stage=stage, reason=reason)
        quarantined = Quarantined(item.id, item.source, stage, reason)
    log.error("feed item %s from %s quarantined at %s: %s", item_id, quarantined.source, stage, reason)
    return quarantined


def quarantine_broadcast(factory: sessionmaker[Session], broadcast_id: int, exc: BaseException,
                         now: datetime) -> str:
    """Mark a broadcast whose planning failed (a notice that cannot be rendered, say) failed with its reason; the
    chunks planned before the failure stay planned, the other broadcasts go on. Returns the reason."""
    reason = reason_of(exc)
    with transaction(factory) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        broadcast.status, broadcast.error = FAILED, f"planning: {reason}"
        session.add(FeedError(source="planning", at=now,
                              message=f"broadcast #{broadcast_id} quarantined at planning: {reason}"))
        audit.record(session, "rules", "broadcast.quarantined", "broadcast", broadcast_id, reason=reason)
    log.error("broadcast %s quarantined at planning: %s", broadcast_id, reason)
    return reason


def retry_broadcast(factory: sessionmaker[Session], broadcast_id: int, operator: str) -> Broadcast:
    """Put a quarantined broadcast back to planning (what it planned before stays; the rest is planned next)."""
    return _released(factory, Broadcast, broadcast_id, operator, {"status": PLANNING})


def retry_item(factory: sessionmaker[Session], item_id: int, operator: str) -> FeedItem:
    """Put a quarantined item back in the queue (the next pipeline run takes it first, as the oldest)."""
    return _released(factory, FeedItem, item_id, operator, {"status": NEW, "processed_at": None})


RETRIED = {Broadcast: ("broadcast", "broadcast"), FeedItem: ("feed item", "feed_item")}


def _released(factory: sessionmaker[Session], kind: type[Broadcast] | type[FeedItem], row_id: int, operator: str,
              back: dict[str, object]) -> Broadcast | FeedItem:
    # Only a quarantined row goes back (status failed), its error cleared, the retry audited with what it was.
    name, subject = RETRIED[kind]
    with transaction(factory) as session:
        row = session.get(kind, row_id)
        if row is None:
            raise UsageError(f"no {name} #{row_id}")
        if row.status != FAILED:
            raise UsageError(f"{name} #{row_id} is {row.status}, not quarantined: nothing to retry")
        audit.record(session, operator, f"{subject}.retried", subject, row.id, previous_error=row.error)
        for column, value in {**back, "error": None}.items():
            setattr(row, column, value)
        session.flush()
        session.expunge(row)
    return row


def quarantined_by_source(session: Session) -> dict[str, int]:
    """How many items of each feed are quarantined now."""
    rows = session.execute(select(FeedItem.source, func.count()).where(FeedItem.status == FAILED)
                           .group_by(FeedItem.source))
    return {source: count for source, count in rows}


def quarantined_broadcasts(session: Session, limit: int = 50) -> list[Broadcast]:
    """The newest broadcasts whose planning failed."""
    return list(session.scalars(select(Broadcast).where(Broadcast.status == FAILED)
                                .order_by(Broadcast.id.desc()).limit(limit)))


@dataclass(frozen=True)
class QuarantineView:
    """What is in quarantine now: feed items and broadcasts a stage failed on, webhook bodies not applied."""

    items: list[FeedItem]
    broadcasts: list[Broadcast]
    bodies: list[FeedError]


def quarantined(session: Session, now: datetime, window: timedelta = timedelta(hours=24)) -> QuarantineView:
    """The quarantine as `feeds list` and `watch --status` show it (webhook bodies of the last `window`)."""
    return QuarantineView(quarantined_items(session), quarantined_broadcasts(session),
                          quarantined_webhook_bodies(session, now - window))


def quarantined_webhook_bodies(session: Session, since: datetime) -> list[FeedError]:
    """Webhook bodies (Twilio receipts and inbound SMS) that could not be read or applied since `since`."""
    return list(session.scalars(select(FeedError).where(FeedError.source.like("webhook:%"), FeedError.at >= since)
                                .order_by(FeedError.id.desc()).limit(50)))


def quarantined_items(session: Session, limit: int = 50) -> list[FeedItem]:
    """The newest quarantined items, for `feeds list` and `watch --status`."""
    return list(session.scalars(select(FeedItem).where(FeedItem.status == FAILED)
                                .order_by(FeedItem.id.desc()).limit(limit)))
