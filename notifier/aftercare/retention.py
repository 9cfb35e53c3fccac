"""Retention: personal data older than the retention period is removed (`notifier purge`); figures stay.

What goes, for data older than the cut-off (now minus `older_than_days`):
- customers whose every booking sailed (scheduled departure) before the cut-off: name, phone number, email
  address and the stored contact check; a cargo booking's shipper name;
- notices (outbox rows) planned before the cut-off and finished (not held, queued or sending): recipient,
  subject and texts; their dedup key, which names the recipient, becomes "purged:<id>";
- customers' replies (SMS, email) received before the cut-off: the text (the choice it made stays);
- desk follow-ups closed before the cut-off: the operator's note.
What stays: bookings, sailings, disruptions, offers, every notice's channel, status and times, provider error
codes and (masked) reasons, choices and scores, so `notifier report` shows the same figures afterwards; the
opt-outs (a STOP must outlive retention, or the number would be messaged again); and the audit trail, which never
holds contacts. The purge itself is audited with its counts only. It is idempotent: a second run finds nothing.
The file channel's outbox folder (offline runs) is not touched; delete it with the data it was made for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, func, literal, null, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from notifier.store import audit
from notifier.errors import UsageError
from notifier.store.db import transaction
from notifier.store.models import Booking, Customer, CustomerResponse, FollowUp, Notification, Sailing, utcnow
from notifier.store.status import DONE

FINISHED = ("sent", "delivered", "undelivered", "failed", "suppressed", "expired", "cancelled")
PURGED_KEY = "purged:"


@dataclass
class PurgeCounts:
    """How many records carry personal data past the cut-off (or had it removed)."""

    customers: int = 0
    shippers: int = 0
    notices: int = 0
    replies: int = 0
    notes: int = 0

    @property
    def total(self) -> int:
        """Everything counted."""
        return self.customers + self.shippers + self.notices + self.replies + self.notes

    def lines(self) -> list[str]:
        """One line per kind of record, for the CLI."""
        return [f"  customers        {self.customers:>8}  (names, phone numbers, email addresses)",
                f"  cargo bookings   {self.shippers:>8}  (shipper names)",
                f"  notices          {self.notices:>8}  (recipients, subjects, texts)",
                f"  replies          {self.replies:>8}  (SMS and email texts)",
                f"  follow-up notes  {self.notes:>8}  (what the desk wrote)"]


@dataclass
class Purge:
    """What a purge removed, and from before when."""

    cutoff: datetime
    days: int
    counts: PurgeCounts


def cutoff_for(days: int, now: datetime | None = None) -> datetime:
    """The moment before which data counts as older than `days` days."""
    if days < 1:
        raise UsageError(f"--older-than must be at least 1 day, not {days}")
    return (now or utcnow()) - timedelta(days=days)


def purgeable(factory: sessionmaker[Session], days: int, now: datetime | None = None) -> PurgeCounts:
    """What a purge of data older than `days` days would remove (nothing is changed)."""
    cutoff = cutoff_for(days, now)
    with factory() as session:
        return PurgeCounts(*(session.scalar(select(func.count()).select_from(model).where(condition))
                             for model, condition in _targets(cutoff)))


def purge(factory: sessionmaker[Session], days: int, actor: str = "retention", now: datetime | None = None
          ) -> Purge:
    """Remove personal data older than `days` days in one transaction, and audit it (counts only)."""
    cutoff = cutoff_for(days, now)
    with transaction(factory) as session:
        counts = PurgeCounts(*(_blank(session, model, condition) for model, condition in _targets(cutoff)))
        audit.record(session, actor, "retention.purged", None, None, older_than_days=days,
                     cutoff=cutoff.isoformat(), customers=counts.customers, shippers=counts.shippers,
                     notices=counts.notices, replies=counts.replies, notes=counts.notes)
    return Purge(cutoff, days, counts)


def _targets(cutoff: datetime) -> list[tuple[Any, Any]]:
    """(model, condition) per kind of record, in PurgeCounts order; each condition also says "not yet purged"."""
    long_gone = (select(Booking.customer_id).join(Sailing, Sailing.id == Booking.sailing_id)
                 .group_by(Booking.customer_id).having(func.max(Sailing.scheduled_departure) < cutoff))
    sailed = select(Sailing.id).where(Sailing.scheduled_departure < cutoff)
    return [
        (Customer, and_(Customer.id.in_(long_gone),
                        or_(Customer.name != "", Customer.phone.is_not(None), Customer.email.is_not(None),
                            Customer.contact_check.is_not(None)))),
        (Booking, and_(Booking.sailing_id.in_(sailed), Booking.shipper.is_not(None))),
        (Notification, and_(Notification.created_at < cutoff, Notification.status.in_(FINISHED),
                            Notification.purpose != "ops", ~Notification.dedup_key.startswith(PURGED_KEY))),
        (CustomerResponse, and_(CustomerResponse.received_at < cutoff, CustomerResponse.raw_text.is_not(None))),
        (FollowUp, and_(FollowUp.status == DONE, FollowUp.done_at < cutoff, FollowUp.note.is_not(None))),
    ]


def _blank(session: Session, model: Any, condition: Any) -> int:
    values = {Customer: {"name": "", "phone": None, "email": None, "contact_check": null()},  # SQL NULL, not JSON null
              Booking: {"shipper": None},
              Notification: {"recipient": "", "subject": None, "body_text": "", "body_html": None,
                             "dedup_key": literal(PURGED_KEY, String) + cast(Notification.id, String)},
              CustomerResponse: {"raw_text": None},
              FollowUp: {"note": None}}[model]
    return session.execute(update(model).where(condition).values(**values)
                           .execution_options(synchronize_session=False)).rowcount
