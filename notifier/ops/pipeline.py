"""The pipeline, stage by stage (DESIGN.md §2): ingest -> rules -> disruptions -> plan -> dispatch.

Each stage reads what the previous one committed and commits its own rows together with the mark that its
input is handled, so the whole run can be killed at any point and simply run again.

Planning follows the lifecycle: a new or promoted disruption gets the full notice of its kind (with offers), a
revised one the "updated" notice (with new offers), a cleared one the "resumed" notice to the customers who were
told, an advisory a notice without offers; all of them through the one bulk planner (planning.plan), whose audience
(planning.audience.audience_of) knows that an all-clear goes only to those told. After planning, EU notices under
the Art 16(1) clock are moved to the front of the outbox, an older unsent notice to the same customer is withdrawn
(the newer one says it all), and a customer told less than `min_notice_interval_minutes` ago waits that long for
the next one, so a flapping feed does not become a stream of messages.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, literal, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from notifier.store import audit
from notifier.errors import NotifierError
from notifier.planning.audience import AUDIENCE_KINDS, opted_out, recipients_for
from notifier.planning.plan import create_automatic, pending_broadcasts, plan_broadcast
from notifier.planning.chunk_plan import PlanResult
from notifier.store.settings import Settings
from notifier.ops.quarantine import CONTENT_ERRORS, Quarantined, quarantine_broadcast, quarantine_item
from notifier.store.status import (ACTIVE, CANCELLED, CLEARED, CONFIRMED, DEPARTED, DONE, NEW, PROCESSED, SUPERSEDED,
                                   TOLD, UNSENT)
from notifier.store.db import insert_ignore, transaction
from notifier.disruptions import Outcome, expire, lineage_keys, reconcile, source_key, withdraw
from notifier.rules.entitlements import Situation, entitlements_for
from notifier.feeds import Observation
from notifier.store.models import (Booking, Broadcast, Customer, Disruption, DisruptionSource, FeedItem, Notification,
                                   Port, Route, Sailing, Vessel, utcnow)
from notifier.rules.evaluate import Match, decisive_impacts, evaluate
from notifier.rules.explain import Reach, describe_observation, render_explanation
from notifier.rules.model import Rule, RuleSet
from notifier.rules.network import Network, PortRef, SailingRef, normalise_zone

# Sailings that departed more than this long ago cannot be disrupted any more.
PAST_HORIZON = timedelta(hours=6)
IGNORED_MSG_TYPES = ("Ack", "Error")


@dataclass
class IngestResult:
    """Which feed items were new, and how many were re-sent copies."""

    new_item_ids: list[int] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class ProcessResult:
    """What the rules made of the new feed items."""

    items: int = 0
    matches: list[tuple[int, Match]] = field(default_factory=list)
    disruptions_changed: list[int] = field(default_factory=list)  # opened, promoted or revised: customers hear
    disruptions_cleared: list[int] = field(default_factory=list)  # ended after customers were told
    broadcast_ids: list[int] = field(default_factory=list)
    outcome: Outcome = field(default_factory=Outcome)
    quarantined: list[Quarantined] = field(default_factory=list)  # items a stage failed on: skipped, recorded

    def merge(self, other: ProcessResult) -> None:
        """Add what one committed item did (an item whose transaction failed adds nothing)."""
        self.matches += other.matches
        self.disruptions_changed += other.disruptions_changed
        self.disruptions_cleared += other.disruptions_cleared
        self.broadcast_ids += other.broadcast_ids
        self.outcome.merge(other.outcome)


def ingest(factory: sessionmaker[Session], observations: list[Observation]) -> IngestResult:
    """Store observations as feed items; a copy already stored (same source, id and version) is a no-op."""
    result = IngestResult()
    with transaction(factory) as session:
        for observation in observations:
            row = {"source": observation.source or observation.format, "external_id": observation.external_id,
                   "version": observation.version, "format": observation.format, "kind": observation.kind,
                   "msg_type": observation.msg_type, "references": observation.references,
                   "observation": observation.to_json(), "received_at": utcnow(), "status": NEW}
            inserted = session.execute(insert_ignore(FeedItem.__table__, session), [row]).rowcount
            if inserted:
                result.new_item_ids.append(session.scalar(select(FeedItem.id).where(
                    FeedItem.source == row["source"], FeedItem.external_id == row["external_id"],
                    FeedItem.version == row["version"])))
            else:
                result.duplicates += 1
    return result


# --- rules -> disruptions ----------------------------------------------------------------------------------------

def read_zone_table(path: str) -> dict[str, list[str]]:
    """The configured zone table: CSV `locode,zone` rows mapping marine-zone / UGC / SAME codes to ports."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise NotifierError(f"{path}: cannot read the zone table ({exc.strerror})") from None
    table: dict[str, list[str]] = defaultdict(list)
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or row[0].strip().lower() in ("locode", "") or row[0].startswith("#"):
            continue
        if len(row) < 2 or not row[1].strip():
            raise NotifierError(f"{path}: line {number}: expected 'locode,zone' (e.g. USAST,UGC:PZZ210)")
        table[row[0].strip().upper()].append(normalise_zone(row[1]))
    return dict(table)


def load_network(session: Session, now: datetime, zone_table: dict[str, list[str]] | None = None) -> Network:
    """Ports and the sailings that can still be disrupted, as the rule evaluator sees them."""
    zone_table = zone_table or {}
    ports = [PortRef(p.id, p.locode, p.lat, p.lon, tuple(p.zone_codes or ()) + tuple(zone_table.get(p.locode, ())),
                     p.gtfs_stop_id, p.country, p.name, p.timezone) for p in session.scalars(select(Port))]
    rows = session.execute(
        select(Sailing.id, Sailing.code, Sailing.origin_port_id, Sailing.destination_port_id,
               Sailing.scheduled_departure, Sailing.scheduled_arrival, Route.code, Vessel.imo, Sailing.voyage,
               Sailing.gtfs_trip_id, Route.gtfs_route_id, Route.kind, Route.jurisdiction)
        .join(Route, Route.id == Sailing.route_id).outerjoin(Vessel, Vessel.id == Sailing.vessel_id)
        .where(Sailing.scheduled_departure >= now - PAST_HORIZON, Sailing.status != DEPARTED)).all()
    return Network(ports, [SailingRef(*row) for row in rows])


def _rules_of(rules: list[Rule] | tuple[Rule, ...] | RuleSet) -> tuple[Rule, ...]:
    return rules.rules if isinstance(rules, RuleSet) else tuple(rules)


def process_new_items(factory: sessionmaker[Session], rules: list[Rule] | RuleSet, now: datetime | None = None,
                      settings: Settings | None = None) -> ProcessResult:
    """Run the rules over every unprocessed feed item, oldest first; each item is one transaction."""
    now = now or utcnow()
    result = ProcessResult()
    zone_table = read_zone_table(settings.zone_codes_file) if settings and settings.zone_codes_file else None
    with factory() as session:
        item_ids = list(session.scalars(select(FeedItem.id).where(FeedItem.status == NEW).order_by(FeedItem.id)))
        network = load_network(session, now, zone_table) if item_ids else None
    for item_id in item_ids:
        try:
            with transaction(factory) as session:
                done = ProcessResult()
                _process_item(session, session.get(FeedItem, item_id), _rules_of(rules), network, now, settings,
                              done)
        except CONTENT_ERRORS as exc:  # poison: this item is quarantined, the next one goes on
            result.quarantined.append(quarantine_item(factory, item_id, "rules", exc, now))
            continue
        result.merge(done)
        result.items += 1
    return result


def _process_item(session: Session, item: FeedItem, rules: tuple[Rule, ...], network: Network, now: datetime,
                  settings: Settings | None, result: ProcessResult) -> None:
    observation = Observation.from_json(item.observation)
    lineage = lineage_keys(item.source, item.external_id, observation.references)
    if observation.msg_type == "Cancel":
        outcome = withdraw(session, lineage, now)
    elif observation.msg_type in IGNORED_MSG_TYPES:
        outcome = Outcome()
    else:
        matches = evaluate(rules, observation, network, now, explain=False)
        result.matches += [(item.id, m) for m in matches]
        outcome = reconcile(session, decisive_impacts(matches), lineage, source_key(item.source, item.external_id),
                            item, now, settings.offers_per_booking if settings else 2)
    result.outcome.merge(outcome)
    result.disruptions_changed += outcome.opened + outcome.promoted + outcome.revised
    result.disruptions_cleared += outcome.cleared
    result.broadcast_ids += announce(session, outcome)
    item.status, item.processed_at = PROCESSED, now
    audit.record(session, "rules", "feed_item.processed", "feed_item", item.id, source=item.source,
                 external_id=item.external_id, opened=len(outcome.opened), revised=len(outcome.revised),
                 cleared=len(outcome.cleared), superseded=len(outcome.superseded))


def announce(session: Session, outcome: Outcome) -> list[int]:
    """Create the automatic broadcasts an outcome calls for: one per notice type, template, channels, audience."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for disruption_id in outcome.opened + outcome.promoted:
        disruption = session.get(Disruption, disruption_id)
        if disruption.status == ACTIVE:
            groups[_group(disruption, disruption.notify.get("template", disruption.kind), disruption.kind)].append(
                disruption_id)
    for disruption_id in outcome.revised:
        disruption = session.get(Disruption, disruption_id)
        groups[_group(disruption, "updated", disruption.kind)].append(disruption_id)
    for disruption_id in outcome.cleared:
        groups[_group(session.get(Disruption, disruption_id), "resumed", "resumed")].append(disruption_id)
    broadcast_ids = []
    for (template, channels, audience, kind), members in groups.items():
        broadcast_ids.append(create_automatic(session, members, template, list(channels), audience, kind).id)
    return broadcast_ids


def _group(disruption: Disruption, template: str, kind: str) -> tuple:
    notify = disruption.notify or {}
    return template, tuple(notify.get("channels", ["sms", "email"])), notify.get("audience", "all"), kind


def expire_disruptions(factory: sessionmaker[Session], now: datetime | None = None) -> Outcome:
    """For the watcher: end disruptions whose hazard window is over (and announce the all-clear)."""
    with transaction(factory) as session:
        outcome = expire(session, now or utcnow())
        announce(session, outcome)
    return outcome


# --- planning ---------------------------------------------------------------------------------------------------

def plan_pending(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
                 ) -> list[PlanResult]:
    """Plan every broadcast not yet fully planned (new ones and any a crash interrupted)."""
    now = now or utcnow()
    with factory() as session:
        broadcast_ids = pending_broadcasts(session)
    results = []
    for broadcast_id in broadcast_ids:
        try:
            origin, _ = _prune_target(factory, broadcast_id, now)
            if origin is None:
                continue
            result = plan_broadcast(factory, broadcast_id, settings, now)
            _after_planning(factory, broadcast_id, settings, now, origin == "automatic")
        except CONTENT_ERRORS as exc:  # a broadcast that cannot be planned must not stop the others
            quarantine_broadcast(factory, broadcast_id, exc, now)
            continue
        results.append(result)
    return results


def _prune_target(factory: sessionmaker[Session], broadcast_id: int, now: datetime) -> tuple[str | None, str]:
    # Between the rules and planning, later items may have changed a disruption: plan only what is still true.
    with transaction(factory) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        if broadcast.origin != "automatic":
            return broadcast.origin, broadcast.kind
        ids = list(broadcast.target.get("disruption_ids", []))
        kept = [d for d in ids if _still_true(session, session.get(Disruption, d), broadcast.kind)]
        if kept == ids:
            return broadcast.origin, broadcast.kind
        broadcast.target = {**broadcast.target, "disruption_ids": kept,
                            "dropped": sorted(set(ids) - set(kept))}
        if not kept:
            broadcast.status = DONE
            audit.record(session, "rules", "broadcast.obsolete", "broadcast", broadcast_id, dropped=ids)
            return None, broadcast.kind
        return broadcast.origin, broadcast.kind


def _still_true(session: Session, disruption: Disruption, kind: str) -> bool:
    if kind != "resumed":
        return disruption.status == ACTIVE
    active_now = session.scalar(select(Disruption.id).where(Disruption.sailing_id == disruption.sailing_id,
                                                            Disruption.status == ACTIVE).limit(1))
    return disruption.status == CLEARED and active_now is None


def _after_planning(factory: sessionmaker[Session], broadcast_id: int, settings: Settings, now: datetime,
                    automatic: bool) -> None:
    """Automatic broadcasts: withdraw older unsent notices and space notices to one customer. Set-based: a typhoon's
    broadcast holds 100,000+ notices, and only the few that an older notice or a recent one concerns are touched
    (the planner already gave every notice its priority, EU Art 16(1) first)."""
    if not automatic:
        return
    with transaction(factory) as session:
        _withdraw_older(session, broadcast_id, now)
        _space_out(session, broadcast_id, settings, now)


def _withdraw_older(session: Session, broadcast_id: int, now: datetime) -> None:
    # A customer's newest notice states the whole situation; an older automatic one still waiting on the same
    # channel would only contradict it. A duty officer's own notices are left alone.
    old, new = aliased(Notification), aliased(Notification)
    stale = (select(old.id).join(Broadcast, Broadcast.id == old.broadcast_id)
             .join(new, (new.booking_id == old.booking_id) & (new.channel == old.channel))
             .where(new.broadcast_id == broadcast_id, new.status.in_(UNSENT), old.broadcast_id < broadcast_id,
                    old.status.in_(UNSENT), old.purpose == "notice", Broadcast.origin == "automatic"))
    session.execute(update(Notification).where(Notification.id.in_(stale))
                    .values(status=CANCELLED, final_at=now, error_message="replaced by a newer notice")
                    .execution_options(synchronize_session=False))


def _space_out(session: Session, broadcast_id: int, settings: Settings, now: datetime) -> None:
    # Only customers told within the interval are read back: on a first warning that is nobody.
    interval = timedelta(minutes=settings.min_notice_interval_minutes)
    if interval <= timedelta(0):
        return
    told, fresh = aliased(Notification), aliased(Notification)
    moment = func.coalesce(told.sent_at, literal(now, Notification.sent_at.type))
    last_told = func.max(moment, type_=Notification.sent_at.type)
    recent = dict(((booking_id, channel), told_at) for booking_id, channel, told_at in session.execute(
        select(told.booking_id, told.channel, last_told)
        .join(fresh, (fresh.booking_id == told.booking_id) & (fresh.channel == told.channel))
        .where(fresh.broadcast_id == broadcast_id, fresh.status.in_(UNSENT), told.purpose == "notice",
               told.status.in_(TOLD))
        .group_by(told.booking_id, told.channel).having(last_told > now - interval)))
    if not recent:
        return
    rows = session.execute(
        select(Notification, Sailing.scheduled_departure, Route.jurisdiction, Disruption.kind)
        .join(Disruption, Disruption.id == Notification.disruption_id)
        .join(Sailing, Sailing.id == Disruption.sailing_id).join(Route, Route.id == Sailing.route_id)
        .where(Notification.broadcast_id == broadcast_id, Notification.status.in_(UNSENT),
               Notification.booking_id.in_(sorted({booking_id for booking_id, _ in recent})))).all()
    for notification, departure, jurisdiction, kind in rows:
        told_at = recent.get((notification.booking_id, notification.channel))
        if told_at is None or told_at + interval <= now:
            continue
        due = told_at + interval
        if jurisdiction == "EU" and kind in ("cancelled", "delayed"):
            due = min(due, departure + timedelta(minutes=30))  # never past the Art 16(1) deadline
        if due > now:
            notification.next_attempt_at = max(due, notification.next_attempt_at or due)


# --- explain: `notifier rules test` --------------------------------------------------------------------------------

@dataclass
class Explanation:
    """What the rules make of one observation, against the database, without changing anything."""

    observation: Observation
    matches: list[Match]
    reach: dict[str, Reach]
    note: str = ""


def dry_run(factory: sessionmaker[Session], rules: list[Rule] | RuleSet, observations: list[Observation],
            now: datetime, zone_table: dict[str, list[str]] | None = None) -> list[Explanation]:
    """Evaluate observations against the database's sailings and bookings; nothing is written."""
    explanations = []
    with factory() as session:
        network = load_network(session, now, zone_table)
        for observation in observations:
            if observation.msg_type == "Cancel":
                explanations.append(Explanation(observation, [], {}, _cancel_note(session, observation)))
                continue
            matches = evaluate(_rules_of(rules), observation, network, now, explain=True)
            decisive = {(i.sailing_id, i.kind) for i in decisive_impacts(matches)}
            reach = {m.rule_id: _reach(session, network, m, decisive) for m in matches if m.matched}
            explanations.append(Explanation(observation, matches, reach))
        session.rollback()
    return explanations


def _cancel_note(session: Session, observation: Observation) -> str:
    lineage = lineage_keys(observation.source or observation.format, observation.external_id,
                           observation.references)
    live = session.scalars(select(Disruption.id).join(DisruptionSource, DisruptionSource.disruption_id == Disruption.id)
                           .where(DisruptionSource.source_key.in_(sorted(lineage)),
                                  Disruption.status.in_((ACTIVE, SUPERSEDED)))).all()
    return (f"Cancel of {', '.join(sorted(observation.references)) or observation.external_id}: would clear "
            f"{len(set(live))} live disruption(s) it raised (customers who were told get the all-clear)")


def _reach(session: Session, network: Network, match: Match, decisive: set[tuple[int, str]]) -> Reach:
    rule = match.rule
    sailing_ids = [i.sailing_id for i in match.impacts]
    reach = Reach(sailings=[network.sailing_by_id[i].code for i in sailing_ids],
                  decisive=sum(1 for i in match.impacts if (i.sailing_id, i.kind) in decisive))
    audience = rule.notify.get("audience", "all")
    stops, by_channel, unreachable = opted_out(session), Counter(), set()
    for start in range(0, len(sailing_ids), 500):
        rows = session.execute(select(Booking, Customer).join(Customer, Customer.id == Booking.customer_id).where(
            Booking.sailing_id.in_(sailing_ids[start:start + 500]), Booking.status == CONFIRMED,
            Booking.kind.in_(AUDIENCE_KINDS.get(audience, AUDIENCE_KINDS["all"])))).all()
        for booking, customer in rows:
            reach.bookings += 1
            recipients, missing = recipients_for(booking, customer, rule.notify["channels"], stops)
            by_channel.update(r.channel for r in recipients)
            if missing:
                unreachable.add(booking.id)
    reach.by_channel, reach.recipients, reach.unreachable = dict(by_channel), sum(by_channel.values()), len(
        unreachable)
    reach.entitlements = _entitlement_lines(network, match)
    return reach


def _entitlement_lines(network: Network, match: Match) -> list[str]:
    rule, impact = match.rule, match.impacts[0]
    by_jurisdiction: dict[str, list[SailingRef]] = defaultdict(list)
    for i in match.impacts:
        sailing = network.sailing_by_id[i.sailing_id]
        by_jurisdiction[sailing.jurisdiction].append(sailing)
    audience = AUDIENCE_KINDS.get(rule.notify.get("audience", "all"), AUDIENCE_KINDS["all"])
    lines = []
    for jurisdiction, sailings in sorted(by_jurisdiction.items()):
        kinds = sorted({s.route_kind for s in sailings} & set(audience))
        for booking_kind in kinds:
            journey = sorted(s.arrival - s.departure for s in sailings)[len(sailings) // 2]
            situation = Situation(jurisdiction, booking_kind, impact.kind, impact.cause, impact.delay_minutes,
                                  journey, Decimal("100.00"), "EUR")
            found = entitlements_for(list(rule.policies), situation, include_exempted=True)
            if not found:
                continue
            lines.append(f"{jurisdiction} {booking_kind} ({len(sailings)} sailing(s)):")
            lines += [f"  {_entitlement_text(e)}" for e in found]
    return lines


def _entitlement_text(entitlement: Any) -> str:
    text = f"{entitlement.id} {entitlement.grant.replace('_', ' ')} [{entitlement.cite}; {entitlement.policy_id}, " \
           f"verification {entitlement.verification}]"
    if entitlement.percent:
        text += f" = {entitlement.percent}% of the fare at this delay"
    if entitlement.exempted_by:
        text += f" -- NOT owed: cause '{entitlement.exempted_by}' exempts it"
    return text


def explain_lines(explanations: list[Explanation], now: datetime, database: str) -> list[str]:
    """The whole `rules test` report."""
    lines = [f"Evaluated at {now.isoformat()} against {database}; nothing was changed."]
    total = len(explanations)
    for number, explanation in enumerate(explanations, start=1):
        lines.append("")
        if explanation.note:
            lines.append(f"Observation {number}/{total}: " + describe_observation(explanation.observation)[0])
            lines.append(f"  {explanation.note}")
            continue
        lines += render_explanation(explanation.observation, explanation.matches, explanation.reach, number, total)
    matched = [e for e in explanations if any(m.matched for m in e.matches)]
    sailings = {code for e in explanations for r in e.reach.values() for code in r.sailings}
    lines += ["", f"Summary: {total} observation(s), {len(matched)} matched a rule, {len(sailings)} sailing(s) "
                  "would be disrupted."]
    return lines


def try_feed_file(settings: Settings, path: str, at: str | None = None, feed_format: str | None = None
                  ) -> list[str]:
    """`notifier rules test`: what the rules would do with a feed file against the configured database's sailings
    and bookings, as report lines. Nothing is written."""
    from notifier.store.db import make_engine, require_schema, session_factory
    from notifier.feeds import MAX_FEED_BYTES, FeedParseError
    from notifier.feeds.sniff import parse_any
    from notifier.store.paths import rules_dir
    from notifier.rules.load import load_rule_set

    now = _moment(at)
    rules = load_rule_set([rules_dir(), *map(Path, settings.rules_dirs)])
    feed = Path(path)
    if not feed.is_file():
        raise NotifierError(f"{path}: no such feed file")
    if feed.stat().st_size > MAX_FEED_BYTES:
        raise FeedParseError(f"{path}: {feed.stat().st_size} bytes, over the {MAX_FEED_BYTES}-byte feed limit")
    try:
        _, observations = parse_any(feed.read_bytes(), feed_format, source=feed.name, filename=feed.name)
    except FeedParseError as exc:
        raise FeedParseError(f"{path}: {exc}") from None
    url = settings.database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise NotifierError(f"no database at {url[len('sqlite:///'):]}: give --db PATH (e.g. the demo's "
                            "notifier.db) or run `notifier db upgrade`")
    engine = make_engine(url)
    try:
        require_schema(engine)
        zone_table = read_zone_table(settings.zone_codes_file) if settings.zone_codes_file else None
        explanations = dry_run(session_factory(engine), rules, observations, now, zone_table)
    finally:
        engine.dispose()
    shown = url.rsplit("@", 1)[-1] if "@" in url else url
    return explain_lines(explanations, now, shown)


def _moment(text: str | None) -> datetime:
    if text is None:
        return utcnow()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise NotifierError(f"--at {text!r} is not an ISO 8601 time (e.g. 2026-09-14T08:00+08:00)") from None
    if moment.tzinfo is None:
        raise NotifierError(f"--at {text!r} has no UTC offset: write it as 2026-09-14T08:00+08:00 or ...Z")
    return moment
