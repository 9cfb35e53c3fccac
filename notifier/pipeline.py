"""The pipeline, stage by stage (DESIGN.md §2): ingest -> rules -> disruptions -> plan -> dispatch.

Each stage reads what the previous one committed and commits its own rows together with the mark that its
input is handled, so the whole run can be killed at any point and simply run again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from . import audit
from .broadcasts import PlanResult, create_automatic, pending_broadcasts, plan_broadcast
from .config import Settings
from .db import insert_ignore, transaction
from .disruptions import apply_impacts, clear_for_references
from .feeds import Observation
from .models import FeedItem, Port, Route, Sailing, Vessel, utcnow
from .rules import Match, Network, PortRef, Rule, SailingRef, evaluate

# Sailings that departed more than this long ago cannot be disrupted any more.
PAST_HORIZON = timedelta(hours=6)


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
    disruptions_changed: list[int] = field(default_factory=list)
    disruptions_cleared: list[int] = field(default_factory=list)
    broadcast_ids: list[int] = field(default_factory=list)


def ingest(factory: sessionmaker[Session], observations: list[Observation]) -> IngestResult:
    """Store observations as feed items; a copy already stored (same source, id and version) is a no-op."""
    result = IngestResult()
    with transaction(factory) as session:
        for observation in observations:
            row = {"source": observation.source or observation.format, "external_id": observation.external_id,
                   "version": observation.version, "format": observation.format, "kind": observation.kind,
                   "msg_type": observation.msg_type, "references": observation.references,
                   "observation": observation.to_json(), "received_at": utcnow(), "status": "new"}
            inserted = session.execute(insert_ignore(FeedItem.__table__, session), [row]).rowcount
            if inserted:
                result.new_item_ids.append(session.scalar(select(FeedItem.id).where(
                    FeedItem.source == row["source"], FeedItem.external_id == row["external_id"],
                    FeedItem.version == row["version"])))
            else:
                result.duplicates += 1
    return result


def load_network(session: Session, now: datetime) -> Network:
    """Ports and the sailings that can still be disrupted, as the rule evaluator sees them."""
    ports = [PortRef(p.id, p.locode, p.lat, p.lon, tuple(p.zone_codes or ())) for p in session.scalars(select(Port))]
    rows = session.execute(
        select(Sailing.id, Sailing.code, Sailing.origin_port_id, Sailing.destination_port_id,
               Sailing.scheduled_departure, Sailing.scheduled_arrival, Route.code, Vessel.imo, Sailing.voyage,
               Sailing.gtfs_trip_id)
        .join(Route, Route.id == Sailing.route_id).outerjoin(Vessel, Vessel.id == Sailing.vessel_id)
        .where(Sailing.scheduled_departure >= now - PAST_HORIZON, Sailing.status != "departed")).all()
    sailings = [SailingRef(*row) for row in rows]
    return Network(ports, sailings)


def process_new_items(factory: sessionmaker[Session], rules: list[Rule], now: datetime | None = None
                      ) -> ProcessResult:
    """Run the rules over every unprocessed feed item, oldest first; each item is one transaction."""
    now = now or utcnow()
    result = ProcessResult()
    with factory() as session:
        item_ids = list(session.scalars(select(FeedItem.id).where(FeedItem.status == "new").order_by(FeedItem.id)))
        network = load_network(session, now) if item_ids else None
    for item_id in item_ids:
        with transaction(factory) as session:
            _process_item(session, session.get(FeedItem, item_id), rules, network, now, result)
        result.items += 1
    return result


def _process_item(session: Session, item: FeedItem, rules: list[Rule], network: Network, now: datetime,
                  result: ProcessResult) -> None:
    observation = Observation.from_json(item.observation)
    if observation.msg_type == "Cancel":
        references = [tuple(ref.split(",", 1)) for ref in observation.references if "," in ref]
        cleared = clear_for_references(session, references, now)
        result.disruptions_cleared += [d.id for d in cleared]
    else:
        matches = evaluate(rules, observation, network)
        result.matches += [(item.id, m) for m in matches]
        impacts = [impact for match in matches if match.matched for impact in match.impacts]
        changed = apply_impacts(session, impacts, item, now)
        result.disruptions_changed += [d.id for d in changed]
        for (template, channels, audience, kind), ids in _group_for_broadcast(changed).items():
            broadcast = create_automatic(session, ids, template, list(channels), audience, kind)
            result.broadcast_ids.append(broadcast.id)
    item.status, item.processed_at = "processed", now
    audit.record(session, "rules", "feed_item.processed", "feed_item", item.id, source=item.source,
                 external_id=item.external_id)


def _group_for_broadcast(disruptions: list) -> dict[tuple, list[int]]:  # noqa: ANN001
    # One automatic broadcast per alert and notice type: a typhoon hitting 30 sailings is one broadcast.
    groups: dict[tuple, list[int]] = defaultdict(list)
    for disruption in disruptions:
        notify = disruption.notify
        key = (notify.get("template", "cancelled"), tuple(notify.get("channels", ["sms", "email"])),
               notify.get("audience", "all"), disruption.kind)
        groups[key].append(disruption.id)
    return groups


def plan_pending(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
                 ) -> list[PlanResult]:
    """Plan every broadcast not yet fully planned (new ones and any a crash interrupted)."""
    with factory() as session:
        broadcast_ids = pending_broadcasts(session)
    return [plan_broadcast(factory, broadcast_id, settings, now) for broadcast_id in broadcast_ids]
