"""Impacts -> disruptions: open, revise, supersede, promote and clear; one live disruption per (sailing, kind).

Learned from Alertmanager. A disruption is identified by what it is about (sailing, kind), not by the alert that
raised it, and remembers which feed lineages ("source,external_id") assert it (`disruption_sources`):

- an Update re-asserts what it still covers (moving the source row to the new alert), opens what is new, and
  withdraws what it no longer covers; a Cancel or expiry withdraws everything of its lineage; a disruption with
  no source left is over;
- a stronger kind on a sailing inhibits a weaker one (status `superseded`: alive, not notified, its unsent notices
  withdrawn), and when the stronger ends the weaker is promoted back, so customers hear "now delayed", never
  "all clear" followed by "delayed";
- a change is *notified* only when it changes what customers were told: the kind, the delay by at least
  DELAY_CHANGE_MINUTES, or the alternative sailings they would be offered. Other changes (severity, window start)
  amend the record without a notice;
- a disruption that ends after customers were told gets one more revision, and with it the all-clear notice that
  names the resumption sailing; one nobody was told about ends silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from notifier.store import audit
from notifier.store.models import Disruption, DisruptionSource, FeedItem, Notification, Offer, Sailing, utcnow
from notifier.store.capacity import candidates_for, release_many
from notifier.rules.model import STRENGTH, Impact
from notifier.store.status import (ACTIVE, CANCELLED, CLEARED, DELAYED, DEPARTED, HELD, LIVE_DISRUPTION, SCHEDULED,
                                   SUPERSEDED, TOLD, UNSENT)

OFFER_KINDS = ("cancelled", "delayed", "port_omitted")
# A delay that moves by less than this is not worth another message (the BC Ferries lesson in POLICIES.md).
DELAY_CHANGE_MINUTES = 15
# A disruption with no end time retires quietly once its sailing arrived this long ago.
PAST_HORIZON = timedelta(hours=6)


@dataclass
class Outcome:
    """What one reconciliation did, by what customers must now be told."""

    opened: list[int] = field(default_factory=list)  # new and active: the full notice of its kind
    promoted: list[int] = field(default_factory=list)  # active again after a stronger one ended: full notice
    revised: list[int] = field(default_factory=list)  # what customers were told changed: an update notice
    cleared: list[int] = field(default_factory=list)  # over, after customers were told: the all-clear notice
    superseded: list[int] = field(default_factory=list)  # inhibited by a stronger one: nothing (more) to send
    retired: list[int] = field(default_factory=list)  # over before anyone was told: nothing to send
    amended: list[int] = field(default_factory=list)  # record changed, customers' situation did not
    unchanged: int = 0

    def merge(self, other: Outcome) -> None:
        """Add another outcome's lists to this one."""
        for name in ("opened", "promoted", "revised", "cleared", "superseded", "retired", "amended"):
            getattr(self, name).extend(getattr(other, name))
        self.unchanged += other.unchanged


def active_key(sailing_id: int, kind: str) -> str:
    """The value of Disruption.active_key while the disruption is live (active or superseded)."""
    return f"{sailing_id}:{kind}"


def source_key(source: str, external_id: str) -> str:
    """A feed lineage: the publisher and its item id, the same across versions (CAP's "sender,identifier")."""
    return f"{source},{external_id}"[:530]


def strength(kind: str) -> int:
    """How strong a kind is; kinds outside the rule vocabulary (a manual "resumed") are the weakest."""
    return STRENGTH.get(kind, -1)


def lineage_keys(source: str, external_id: str, references: list[str]) -> set[str]:
    """The lineages an item speaks for: its own and every item it updates or cancels."""
    keys = {source_key(source, external_id)}
    for reference in references:
        keys.add(reference[:530] if "," in reference else source_key(source, reference))
    return keys


# --- reconciling one feed item ------------------------------------------------------------------------------

class _Run:
    """State of one reconciliation: what was live before, what ended, which sailings were touched."""

    def __init__(self, session: Session, now: datetime, offers_per_booking: int) -> None:
        self.session, self.now, self.limit = session, now, offers_per_booking
        self.outcome = Outcome()
        self.before: dict[int, tuple] = {}  # disruption id -> situation before any change
        self.ended: list[Disruption] = []
        self.sailings: set[int] = set()


def reconcile(session: Session, impacts: list[Impact], lineage: set[str], own: str, feed_item: FeedItem | None,
              now: datetime | None = None, offers_per_booking: int = 2) -> Outcome:
    """Make the disruptions of a lineage match what its newest item says (open, re-assert, withdraw)."""
    run = _Run(session, now or utcnow(), offers_per_booking)
    previous = _lineage_disruptions(session, lineage)
    keyed = {active_key(i.sailing_id, i.kind) for i in impacts}
    existing = _by_active_key(session, keyed)
    for disruption in [*previous, *existing.values()]:
        if disruption.status == ACTIVE and disruption.id not in run.before:
            run.before[disruption.id] = _situation(session, disruption, run.limit)
    asserted = set()
    for impact in impacts:
        disruption = _assert(run, impact, existing.get(active_key(impact.sailing_id, impact.kind)), lineage, own,
                             feed_item)
        asserted.add(disruption.id)
    for disruption in previous:
        if disruption.id not in asserted:
            _withdraw_sources(run, disruption, lineage, "withdrawn")
    _settle(run)
    _decide_revisions(run, asserted)
    return run.outcome


def withdraw(session: Session, lineage: set[str], now: datetime | None = None, reason: str = "cancelled"
             ) -> Outcome:
    """A CAP Cancel (or a deleted GTFS-RT entity): the lineage no longer asserts anything."""
    run = _Run(session, now or utcnow(), 2)
    for disruption in _lineage_disruptions(session, lineage):
        _withdraw_sources(run, disruption, lineage, reason)
    _settle(run)
    return run.outcome


def expire(session: Session, now: datetime | None = None) -> Outcome:
    """End what the clock ended: sources whose hazard window is over, and open-ended ones long in the past."""
    run = _Run(session, now or utcnow(), 2)
    rows = session.execute(select(DisruptionSource.source_key, Disruption)
                           .join(Disruption, Disruption.id == DisruptionSource.disruption_id)
                           .where(Disruption.status.in_(LIVE_DISRUPTION), DisruptionSource.window_end <= run.now)).all()
    for key, disruption in rows:
        _withdraw_sources(run, disruption, {key}, "expired")
    stale = session.scalars(select(Disruption).join(Sailing, Sailing.id == Disruption.sailing_id)
                            .where(Disruption.status.in_(LIVE_DISRUPTION), Disruption.window_end.is_(None),
                                   Sailing.scheduled_arrival < run.now - PAST_HORIZON))
    for disruption in list(stale):
        session.execute(delete(DisruptionSource).where(DisruptionSource.disruption_id == disruption.id))
        _end(run, disruption, "past")
    _settle(run)
    return run.outcome


def apply_impacts(session: Session, impacts: list[Impact], feed_item: FeedItem | None = None,
                  now: datetime | None = None) -> list[Disruption]:
    """Open or revise one disruption per impact outside any feed lineage (a duty officer's broadcast); returns
    the new ones and those whose facts changed (each of those gets a new revision: everyone is told again)."""
    run = _Run(session, now or utcnow(), 2)
    changed = []
    for impact in impacts:
        run.sailings.add(impact.sailing_id)
        existing = session.scalar(select(Disruption).where(
            Disruption.active_key == active_key(impact.sailing_id, impact.kind)))
        if existing is None:
            existing = _open(run, impact, feed_item)
            changed.append(existing)
        elif _amend(existing, impact, feed_item, run.now):
            existing.revision += 1
            existing.details = {**existing.details, "told_delay_minutes": existing.delay_minutes}
            audit.record(session, "rules", "disruption.revised", "disruption", existing.id,
                         revision=existing.revision, rule=impact.rule_id)
            changed.append(existing)
        # A manual source keeps it alive until a person (or the clock) ends it, whatever the feeds say.
        _move_source(session, existing, set(), f"manual,{impact.rule_id}", feed_item, None, run.now)
    for sailing_id in sorted(run.sailings):
        _update_sailing(session, sailing_id, run.now)
    return changed


def clear(session: Session, disruption: Disruption, now: datetime | None = None, actor: str = "rules") -> None:
    """End one disruption by hand: its held places go back, its unsent notices are withdrawn. Nothing is
    announced here; the caller sends its own notice."""
    now = now or utcnow()
    if disruption.status not in LIVE_DISRUPTION:
        return
    session.execute(delete(DisruptionSource).where(DisruptionSource.disruption_id == disruption.id))
    disruption.status, disruption.active_key = CLEARED, None
    disruption.cleared_at = disruption.updated_at = now
    disruption.details = {**disruption.details, "cleared_reason": f"cleared by {actor}"}
    _release_offers(session, disruption)
    _withdraw_pending(session, disruption, now)
    session.flush()
    _update_sailing(session, disruption.sailing_id, now)
    audit.record(session, actor, "disruption.cleared", "disruption", disruption.id, reason="by hand")


def _policy(policy: Any) -> dict[str, Any]:
    # Rules give {"policies": [...], "entitlements": [...]}; a manual broadcast gives just the grant tags.
    return dict(policy) if isinstance(policy, dict) else {"policies": [], "entitlements": list(policy or ())}


def _lineage_disruptions(session: Session, lineage: set[str]) -> list[Disruption]:
    if not lineage:
        return []
    ids = select(DisruptionSource.disruption_id).where(DisruptionSource.source_key.in_(sorted(lineage)))
    return list(session.scalars(select(Disruption).where(Disruption.id.in_(ids), Disruption.status.in_(LIVE_DISRUPTION))
                                .order_by(Disruption.id)))


def _by_active_key(session: Session, keys: set[str]) -> dict[str, Disruption]:
    found: dict[str, Disruption] = {}
    ordered = sorted(keys)
    for start in range(0, len(ordered), 500):
        for disruption in session.scalars(select(Disruption).where(Disruption.active_key.in_(ordered[start:start
                                                                                                      + 500]))):
            found[disruption.active_key] = disruption
    return found


def _assert(run: _Run, impact: Impact, disruption: Disruption | None, lineage: set[str], own: str,
            feed_item: FeedItem | None) -> Disruption:
    run.sailings.add(impact.sailing_id)
    if disruption is None:
        disruption = _open(run, impact, feed_item)
    elif _amend(disruption, impact, feed_item, run.now):
        audit.record(run.session, "rules", "disruption.amended", "disruption", disruption.id, rule=impact.rule_id)
        run.outcome.amended.append(disruption.id)
    else:
        run.outcome.unchanged += 1
    _move_source(run.session, disruption, lineage, own, feed_item, impact.window_end, run.now)
    return disruption


def _open(run: _Run, impact: Impact, feed_item: FeedItem | None) -> Disruption:
    session = run.session
    live = _live_on_sailing(session, impact.sailing_id)
    stronger = [d for d in live if strength(d.kind) > strength(impact.kind)]
    disruption = Disruption(
        active_key=active_key(impact.sailing_id, impact.kind), sailing_id=impact.sailing_id, kind=impact.kind,
        status="superseded" if stronger else "active", cause=impact.cause, cause_text=impact.cause_text,
        severity=impact.severity, delay_minutes=impact.delay_minutes, window_start=impact.window_start,
        window_end=impact.window_end, rule_id=impact.rule_id, feed_item_id=feed_item.id if feed_item else None,
        notify=dict(impact.notify), policy=_policy(impact.policy),
        details=dict(impact.details) | {"told_delay_minutes": impact.delay_minutes},
        superseded_by_id=max(stronger, key=lambda d: strength(d.kind)).id if stronger else None,
        known_at=feed_item.received_at if feed_item else run.now, opened_at=run.now, updated_at=run.now)
    session.add(disruption)
    session.flush()
    audit.record(session, "rules", "disruption.opened", "disruption", disruption.id, sailing_id=impact.sailing_id,
                 kind=impact.kind, rule=impact.rule_id, status=disruption.status)
    if stronger:
        run.outcome.superseded.append(disruption.id)
        return disruption
    weaker = [d for d in live if d.status == ACTIVE and strength(d.kind) < strength(impact.kind)]
    for other in weaker:
        if _was_told(session, other):
            disruption.details = {**disruption.details, "previous_kind": other.kind}
        _supersede(run, other, disruption)
    run.outcome.opened.append(disruption.id)
    return disruption


def _amend(disruption: Disruption, impact: Impact, feed_item: FeedItem | None, now: datetime) -> bool:
    new = {"window_start": impact.window_start, "window_end": impact.window_end, "severity": impact.severity,
           "delay_minutes": impact.delay_minutes, "cause": impact.cause, "cause_text": impact.cause_text}
    changed = {name: value for name, value in new.items() if getattr(disruption, name) != value}
    for name, value in changed.items():
        setattr(disruption, name, value)
    disruption.details = {**disruption.details, **impact.details}
    disruption.policy, disruption.notify = _policy(impact.policy), dict(impact.notify)
    if feed_item is not None:
        disruption.feed_item_id = feed_item.id
    if changed:
        disruption.updated_at = now
    return bool(changed)


def _move_source(session: Session, disruption: Disruption, lineage: set[str], own: str,
                 feed_item: FeedItem | None, window_end: datetime | None, now: datetime) -> None:
    # The Update speaks for the alerts it references: their rows become one row for the newest alert.
    session.execute(delete(DisruptionSource).where(DisruptionSource.disruption_id == disruption.id,
                                                   DisruptionSource.source_key.in_(sorted(lineage - {own}))))
    row = session.scalar(select(DisruptionSource).where(DisruptionSource.disruption_id == disruption.id,
                                                        DisruptionSource.source_key == own))
    if row is None:
        session.add(DisruptionSource(disruption_id=disruption.id, source_key=own, asserted_at=now,
                                     feed_item_id=feed_item.id if feed_item else None, window_end=window_end))
    else:
        row.feed_item_id, row.window_end, row.asserted_at = feed_item.id if feed_item else None, window_end, now
    session.flush()


def _withdraw_sources(run: _Run, disruption: Disruption, keys: set[str], reason: str) -> None:
    session = run.session
    if disruption.status not in LIVE_DISRUPTION:
        return  # already ended by an earlier source of the same run
    session.execute(delete(DisruptionSource).where(DisruptionSource.disruption_id == disruption.id,
                                                   DisruptionSource.source_key.in_(sorted(keys))))
    left = session.scalar(select(DisruptionSource.id).where(DisruptionSource.disruption_id == disruption.id)
                          .limit(1))
    if left is None:
        _end(run, disruption, reason)


def _end(run: _Run, disruption: Disruption, reason: str) -> None:
    session = run.session
    was_active = disruption.status == ACTIVE
    disruption.status, disruption.active_key = CLEARED, None
    disruption.cleared_at = disruption.updated_at = run.now
    disruption.details = {**disruption.details, "cleared_reason": reason}
    _release_offers(session, disruption)
    withdrawn = _withdraw_pending(session, disruption, run.now)
    audit.record(session, "rules", "disruption.cleared", "disruption", disruption.id, reason=reason,
                 withdrawn_notices=withdrawn)
    run.sailings.add(disruption.sailing_id)
    if was_active and reason != "past" and _was_told(session, disruption):
        run.ended.append(disruption)
    else:
        run.outcome.retired.append(disruption.id)


def _supersede(run: _Run, weaker: Disruption, stronger: Disruption) -> None:
    weaker.status, weaker.superseded_by_id, weaker.updated_at = SUPERSEDED, stronger.id, run.now
    _release_offers(run.session, weaker)
    _withdraw_pending(run.session, weaker, run.now)
    audit.record(run.session, "rules", "disruption.superseded", "disruption", weaker.id, by=stronger.id)
    run.outcome.superseded.append(weaker.id)


def _settle(run: _Run) -> None:
    """After the changes: promote what a cleared disruption inhibited, announce the rest, fix sailing statuses."""
    session = run.session
    session.flush()
    promoted_on = set()
    for sailing_id in sorted(run.sailings):
        live = _live_on_sailing(session, sailing_id)
        if live and not [d for d in live if d.status == ACTIVE]:
            best = max(live, key=lambda d: (strength(d.kind), d.id))
            _promote(run, best)
            promoted_on.add(sailing_id)
    for sailing_id in sorted(run.sailings):
        _update_sailing(session, sailing_id, run.now)
    session.flush()
    for disruption in run.ended:
        if disruption.sailing_id in promoted_on:
            run.outcome.retired.append(disruption.id)  # its customers hear the promoted disruption instead
            continue
        disruption.revision += 1
        disruption.details = {**disruption.details, "resumption": _resumption(session, disruption, run.now)}
        run.outcome.cleared.append(disruption.id)
    session.flush()


def _promote(run: _Run, disruption: Disruption) -> None:
    ended = [d for d in run.ended if d.sailing_id == disruption.sailing_id]
    disruption.status, disruption.superseded_by_id, disruption.updated_at = ACTIVE, None, run.now
    if disruption.planned_revision >= disruption.revision:
        disruption.revision += 1  # told before it was inhibited: the new notice needs its own outbox key
    if ended:
        disruption.details = {**disruption.details, "previous_kind": max(ended, key=lambda d: strength(d.kind)).kind}
    audit.record(run.session, "rules", "disruption.promoted", "disruption", disruption.id,
                 revision=disruption.revision)
    run.outcome.promoted.append(disruption.id)


def _decide_revisions(run: _Run, asserted: set[int]) -> None:
    session = run.session
    fresh = set(run.outcome.opened) | set(run.outcome.promoted)
    for disruption_id, before in run.before.items():
        if disruption_id not in asserted or disruption_id in fresh:
            continue
        disruption = session.get(Disruption, disruption_id)
        if disruption.status != ACTIVE:
            continue
        after = _situation(session, disruption, run.limit)
        told_delay = disruption.details.get("told_delay_minutes", before[1])
        delay_moved = abs((after[1] or 0) - (told_delay or 0)) >= DELAY_CHANGE_MINUTES
        if after[2] != before[2] or delay_moved:
            disruption.revision += 1
            disruption.details = {**disruption.details, "told_delay_minutes": after[1]}
            audit.record(session, "rules", "disruption.revised", "disruption", disruption.id,
                         revision=disruption.revision, alternatives_changed=after[2] != before[2],
                         delay_minutes=after[1])
            if disruption_id in run.outcome.amended:
                run.outcome.amended.remove(disruption_id)
            run.outcome.revised.append(disruption_id)


def _situation(session: Session, disruption: Disruption, limit: int) -> tuple:
    """What customers were told: the kind, the delay, and the alternative sailings they would be offered."""
    alternatives: tuple[int, ...] = ()
    if disruption.kind in OFFER_KINDS:
        alternatives = tuple(c.sailing_id for c in candidates_for(session, disruption, limit=max(limit, 1)))
    return disruption.kind, disruption.delay_minutes, alternatives


def _live_on_sailing(session: Session, sailing_id: int) -> list[Disruption]:
    return list(session.scalars(select(Disruption).where(
        Disruption.sailing_id == sailing_id, Disruption.status.in_(LIVE_DISRUPTION)).order_by(Disruption.id)))


def _was_told(session: Session, disruption: Disruption) -> bool:
    return session.scalar(select(Notification.id).where(Notification.disruption_id == disruption.id,
                                                        Notification.status.in_(TOLD)).limit(1)) is not None


def _withdraw_pending(session: Session, disruption: Disruption, now: datetime) -> int:
    # Notices not yet sent about something no longer true are withdrawn, never sent late.
    result = session.execute(update(Notification).where(Notification.disruption_id == disruption.id,
                                                        Notification.status.in_(UNSENT))
                             .values(status=CANCELLED, final_at=now, error_message="disruption "
                                     f"{disruption.status}").execution_options(synchronize_session=False))
    return result.rowcount or 0


def _release_offers(session: Session, disruption: Disruption) -> None:
    # release_many locks the capacity rows in a fixed order, so it cannot deadlock with a customer's choice.
    held = list(session.scalars(select(Offer).where(Offer.disruption_id == disruption.id, Offer.status == HELD)))
    release_many(session, held, "released")


def _update_sailing(session: Session, sailing_id: int, now: datetime) -> None:
    sailing = session.get(Sailing, sailing_id)
    if sailing.status == DEPARTED:
        return
    active = {d.kind: d for d in _live_on_sailing(session, sailing_id) if d.status == ACTIVE}
    if "cancelled" in active:
        sailing.status, sailing.estimated_departure, sailing.estimated_arrival = CANCELLED, None, None
    elif "delayed" in active:
        delay = timedelta(minutes=active["delayed"].delay_minutes or 0)
        sailing.status = DELAYED
        sailing.estimated_departure = sailing.scheduled_departure + delay
        sailing.estimated_arrival = sailing.scheduled_arrival + delay
    elif sailing.status == DELAYED or (sailing.status == CANCELLED and sailing.scheduled_departure > now):
        # A cancelled sailing whose time passed while it was cancelled did not sail: it stays cancelled.
        sailing.status, sailing.estimated_departure, sailing.estimated_arrival = SCHEDULED, None, None


def _resumption(session: Session, disruption: Disruption, now: datetime) -> dict[str, Any] | None:
    """The sailing customers can take once it is over: their own if it is still to come, else the next one."""
    sailing = session.get(Sailing, disruption.sailing_id)
    still_cancelled = any(d.kind == "cancelled" and d.status == ACTIVE for d in _live_on_sailing(session, sailing.id))
    if sailing.scheduled_departure > now and not still_cancelled:
        return {"operates": True, "sailing_id": sailing.id, "code": sailing.code,
                "departure": sailing.scheduled_departure.isoformat()}
    blocked = select(Disruption.sailing_id).where(Disruption.status == ACTIVE,
                                                  Disruption.kind.in_(("cancelled", "port_omitted")))
    following = session.scalar(select(Sailing).where(
        Sailing.route_id == sailing.route_id, Sailing.id != sailing.id, Sailing.scheduled_departure >= now,
        Sailing.status == SCHEDULED, Sailing.id.not_in(blocked)).order_by(Sailing.scheduled_departure).limit(1))
    if following is None:
        return None
    return {"operates": False, "sailing_id": following.id, "code": following.code,
            "departure": following.scheduled_departure.isoformat()}
