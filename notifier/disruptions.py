"""Impacts -> disruptions: open, revise, supersede and clear, one active disruption per (sailing, kind).

Learned from Alertmanager: a disruption is identified by what it is about (sailing, kind), not by the alert that
raised it, so a re-sent or updated alert revises it instead of opening a second one; a stronger kind on the
same sailing inhibits a weaker one (customers hear "cancelled", not also "delayed").
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit
from .models import Disruption, FeedItem, Sailing, utcnow
from .rules import Impact

# Higher wins: a cancellation supersedes a port omission, which supersedes a delay, which supersedes an advisory.
STRENGTH = {"advisory": 0, "delayed": 1, "port_omitted": 2, "cancelled": 3}


def active_key(sailing_id: int, kind: str) -> str:
    """The value of Disruption.active_key while the disruption is active."""
    return f"{sailing_id}:{kind}"


def apply_impacts(session: Session, impacts: list[Impact], feed_item: FeedItem | None,
                  now: datetime | None = None) -> list[Disruption]:
    """Open or revise one disruption per impact; return those that are new or changed."""
    now = now or utcnow()
    changed = []
    for impact in impacts:
        disruption = _apply_one(session, impact, feed_item, now)
        if disruption is not None:
            changed.append(disruption)
    return changed


def _apply_one(session: Session, impact: Impact, feed_item: FeedItem | None, now: datetime) -> Disruption | None:
    stronger = _stronger_active(session, impact)
    if stronger is not None:
        return None  # inhibited: the sailing already has a stronger disruption
    existing = session.scalar(select(Disruption).where(
        Disruption.active_key == active_key(impact.sailing_id, impact.kind)))
    if existing is None:
        disruption = _open(session, impact, feed_item, now)
        _supersede_weaker(session, disruption, now)
        return disruption
    if _same_situation(existing, impact):
        return None
    existing.revision += 1
    existing.window_start, existing.window_end = impact.window_start, impact.window_end
    existing.severity, existing.delay_minutes = impact.severity, impact.delay_minutes
    existing.feed_item_id = feed_item.id if feed_item else existing.feed_item_id
    existing.updated_at = now
    audit.record(session, "rules", "disruption.revised", "disruption", existing.id, revision=existing.revision,
                 rule=impact.rule_id)
    return existing


def _open(session: Session, impact: Impact, feed_item: FeedItem | None, now: datetime) -> Disruption:
    disruption = Disruption(
        active_key=active_key(impact.sailing_id, impact.kind), sailing_id=impact.sailing_id, kind=impact.kind,
        cause=impact.cause, cause_text=impact.cause_text, severity=impact.severity,
        delay_minutes=impact.delay_minutes, window_start=impact.window_start, window_end=impact.window_end,
        rule_id=impact.rule_id, feed_item_id=feed_item.id if feed_item else None, notify=dict(impact.notify),
        policy={"entitlements": list(impact.policy)},
        known_at=feed_item.received_at if feed_item else now, opened_at=now, updated_at=now)
    session.add(disruption)
    sailing = session.get(Sailing, impact.sailing_id)
    if impact.kind == "cancelled":
        sailing.status = "cancelled"
    elif impact.kind == "delayed" and sailing.status == "scheduled":
        sailing.status = "delayed"
    session.flush()
    audit.record(session, "rules", "disruption.opened", "disruption", disruption.id, sailing=sailing.code,
                 kind=impact.kind, rule=impact.rule_id)
    return disruption


def _same_situation(existing: Disruption, impact: Impact) -> bool:
    return (existing.window_start, existing.window_end, existing.severity, existing.delay_minutes) == (
        impact.window_start, impact.window_end, impact.severity, impact.delay_minutes)


def _stronger_active(session: Session, impact: Impact) -> Disruption | None:
    for other in _active_on_sailing(session, impact.sailing_id):
        if STRENGTH.get(other.kind, 0) > STRENGTH.get(impact.kind, 0):
            return other
    return None


def _supersede_weaker(session: Session, disruption: Disruption, now: datetime) -> None:
    for other in _active_on_sailing(session, disruption.sailing_id):
        if other.id != disruption.id and STRENGTH.get(other.kind, 0) < STRENGTH.get(disruption.kind, 0):
            other.status, other.active_key, other.superseded_by_id = "superseded", None, disruption.id
            other.updated_at = now
            audit.record(session, "rules", "disruption.superseded", "disruption", other.id, by=disruption.id)


def _active_on_sailing(session: Session, sailing_id: int) -> list[Disruption]:
    return list(session.scalars(select(Disruption).where(Disruption.sailing_id == sailing_id,
                                                         Disruption.status == "active")))


def clear_for_references(session: Session, references: list[tuple[str, str]], now: datetime | None = None,
                         actor: str = "rules") -> list[Disruption]:
    """A CAP Cancel: clear the active disruptions raised by the referenced (source, external_id) items."""
    now = now or utcnow()
    if not references:
        return []
    item_ids = []
    for source, external_id in references:
        item_ids += session.scalars(select(FeedItem.id).where(FeedItem.source == source,
                                                              FeedItem.external_id == external_id)).all()
    if not item_ids:
        return []
    cleared = []
    for disruption in session.scalars(select(Disruption).where(Disruption.feed_item_id.in_(item_ids),
                                                               Disruption.status == "active")):
        clear(session, disruption, now, actor)
        cleared.append(disruption)
    return cleared


def clear(session: Session, disruption: Disruption, now: datetime, actor: str) -> None:
    """Mark a disruption cleared (the hazard is over); the sailing's status is restored if nothing else holds it."""
    disruption.status, disruption.active_key, disruption.cleared_at = "cleared", None, now
    disruption.updated_at = now
    sailing = session.get(Sailing, disruption.sailing_id)
    if sailing.status in {"cancelled", "delayed"} and not [
            d for d in _active_on_sailing(session, sailing.id) if d.id != disruption.id]:
        sailing.status = "scheduled"
    audit.record(session, actor, "disruption.cleared", "disruption", disruption.id, sailing=sailing.code)
