"""Inbound SMS kept by MessageSid, so that each one Twilio delivers changes things once.

Twilio's X-Twilio-Signature covers the URL and the form but no timestamp: anyone who captured a signed request
could post it again for ever, and a START replayed after the customer's STOP would re-subscribe them. Every
handled MessageSid is kept (InboundMessage): a request seen before is answered with what we answered then and
changes nothing, and one first seen longer ago than Settings.inbound_replay_window_seconds is refused. The stored
answer is blanked once the window has passed (it may name a booking); the row itself stays, or an old capture
would look new again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from notifier.privacy import mask_phone
from notifier.store.db import insert_ignore
from notifier.store.models import InboundMessage

# Twilio's are "SM" or "MM" and 32 hex digits; anything that is not letters and digits of a sane length is no SID.
MESSAGE_SID = re.compile(r"[A-Za-z0-9]{2,64}")


@dataclass(frozen=True)
class Seen:
    """An inbound SMS handled before: when it first came, and what we answered."""

    first_seen_at: datetime
    answer: str | None


def message_sid(form: Mapping[str, str]) -> str | None:
    """The request's MessageSid (SmsSid on older webhooks) when it looks like one, else None."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    return sid if MESSAGE_SID.fullmatch(sid) else None


def seen_before(session: Session, sid: str) -> Seen | None:
    """The earlier handling of this MessageSid, if any."""
    row = session.execute(select(InboundMessage.first_seen_at, InboundMessage.answer)
                          .where(InboundMessage.message_sid == sid)).first()
    return Seen(row.first_seen_at, row.answer) if row else None


def too_old(seen: Seen, now: datetime, window_seconds: int) -> bool:
    """Whether a request seen before came first longer ago than the replay window."""
    return now - seen.first_seen_at > timedelta(seconds=window_seconds)


def remember(session: Session, sid: str, kind: str, phone: str, now: datetime, answer: str | None = None) -> bool:
    """Keep a MessageSid as handled (in the caller's transaction); False when a concurrent copy got there first."""
    row = {"message_sid": sid, "kind": kind, "sender": mask_phone(phone)[:32], "first_seen_at": now,
           "answer": answer}
    return bool(session.execute(insert_ignore(InboundMessage.__table__, session), [row]).rowcount)


def keep_answer(session: Session, sid: str, answer: str | None) -> None:
    """Store the answer given, for a re-delivery of the same message within the window."""
    session.execute(update(InboundMessage).where(InboundMessage.message_sid == sid).values(answer=answer)
                    .execution_options(synchronize_session=False))


def forget_old_answers(session: Session, now: datetime, window_seconds: int) -> int:
    """Blank the answers kept past the window (a request that old is refused, so none is needed again)."""
    cutoff = now - timedelta(seconds=window_seconds)
    return session.execute(update(InboundMessage).where(InboundMessage.first_seen_at < cutoff,
                                                        InboundMessage.answer.is_not(None))
                           .values(answer=None).execution_options(synchronize_session=False)).rowcount
