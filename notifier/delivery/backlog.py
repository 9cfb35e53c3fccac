"""What a drained dispatch run leaves behind, and why: `notifier dispatch --once` ends only when nothing it can act
on is left, so what is still queued or sending is waiting for something (a retry's time, another dispatcher's
live lease, a held broadcast, a provider whose circuit is open); it says which, so nobody has to guess whether
the run finished the job.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from notifier.store.models import Broadcast, Notification
from notifier.store.status import BROADCAST_HELD_BACK, QUEUED, SENDING


def waiting_for_retry(session: Session) -> int:
    """Notices that will be tried again later: queued for a later attempt, or sent with an uncertain answer and
    waiting to be checked with the provider."""
    queued = session.scalar(select(func.count()).where(Notification.status == QUEUED,
                                                       Notification.next_attempt_at.is_not(None)))
    unsure = session.scalar(select(func.count()).where(Notification.status == SENDING,
                                                       Notification.lease_owner.is_(None)))
    return (queued or 0) + (unsure or 0)


def still_waiting(session: Session, now: datetime, owner: str) -> list[str]:
    """One line per reason notices are still queued or sending after a drained run."""
    lines = []
    count, first = session.execute(select(func.count(), func.min(Notification.next_attempt_at)).where(
        Notification.status == QUEUED, Notification.next_attempt_at > now)).one()
    if count:
        lines.append(f"{count} queued for a retry after a provider's refusal, the first at {first:%H:%M:%S} UTC")
    blocked = select(Broadcast.id).where(Broadcast.status.in_(BROADCAST_HELD_BACK))
    held = session.scalar(select(func.count()).where(
        Notification.status == QUEUED, Notification.broadcast_id.in_(blocked),
        or_(Notification.next_attempt_at.is_(None), Notification.next_attempt_at <= now)))
    if held:
        lines.append(f"{held} queued in broadcasts that are paused, cancelled or awaiting approval")
    unsure, until = session.execute(select(func.count(), func.min(Notification.lease_expires_at)).where(
        Notification.status == SENDING, Notification.lease_owner.is_(None))).one()
    if unsure:
        lines.append(f"{unsure} sent without a clear answer, to be checked with the provider from "
                     f"{until:%H:%M:%S} UTC before any resend")
    leased, until = session.execute(select(func.count(), func.max(Notification.lease_expires_at)).where(
        Notification.status == SENDING, Notification.lease_owner.is_not(None),
        Notification.lease_owner != owner)).one()
    if leased:
        lines.append(f"{leased} sending under another dispatcher's live lease (until {until:%H:%M:%S} UTC at the "
                     f"latest)")
    return lines
