"""Which sailings a rule's `where:` selects for one observation: every given selector (port, route, vessel,
voyage, GTFS trip, informed entities, sailing code) must agree, then route kind, jurisdiction and time overlap
filter; each step says how many sailings it kept, for `rules test`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from notifier.rules.conditions import short_repr
from notifier.rules.model import Overlap, PortSelector, Where
from notifier.rules.network import Network, SailingRef
from notifier.rules.scene import Scene
from notifier.rules.times import shifted, utc_minute


def select_sailings(where: Where, scene: Scene, explain: bool = True) -> tuple[list[SailingRef], list[str]]:
    """The sailings every selector of `where` agrees on, then filtered by route kind, jurisdiction and time."""
    reasons: list[str] = []
    chosen: dict[int, SailingRef] | None = None
    for label, found in _selections(where, scene):
        if found is None:
            return [], reasons + [label]  # the selector found nothing; the label says why
        before = len(found)
        chosen = found if chosen is None else {k: v for k, v in found.items() if k in chosen}
        if explain or not chosen:
            reasons.append(f"where.{label}: {before} sailing(s)" + ("" if len(chosen) == before
                                                                    else f", {len(chosen)} agree with the above"))
        if not chosen:
            return [], reasons
    sailings = _filtered(where, scene, list(chosen.values()), explain, reasons)
    return sorted(sailings, key=lambda s: (s.departure, s.id)), reasons


def _selections(where: Where, scene: Scene) -> Iterator[tuple[str, dict[int, SailingRef] | None]]:
    # (label, sailings or None when the selector found nothing), lazily: a selector that finds nothing spares the
    # work of the ones after it.
    network, observation = scene.network, scene.observation
    if where.trip:
        yield f"trip {short_repr(observation.sailings)}", _trip_sailings(scene)
    if where.sailing_code:
        yield f"sailing_code {short_repr(observation.sailings)}", {
            network.by_code[c].id: network.by_code[c] for c in observation.sailings if c in network.by_code}
    if where.vessel:
        imo = str(observation.fields.get("vessel_imo") or "")
        yield f"vessel IMO {imo or '(none)'}", {s.id: s for s in network.by_vessel.get(imo, [])}
    if where.voyage:
        yield f"voyage {', '.join(sorted(scene.voyages)) or '(none)'}", {
            s.id: s for v in scene.voyages for s in network.by_voyage.get(v, [])}
    if where.route or where.route_codes:
        codes = where.route_codes or tuple(observation.routes)
        yield f"route {', '.join(codes) or '(none named)'}", {
            s.id: s for c in codes for s in network.by_route.get(c, [])}
    if where.informed_entities:
        found, label = _informed_sailings(scene)
        yield label, found
    if where.port is not None:
        yield _port_selection(where, scene)


def _port_selection(where: Where, scene: Scene) -> tuple[str, dict[int, SailingRef] | None]:
    port_ids, evidence = _ports(where.port, scene)
    if not port_ids:
        return "where.port: no known port " + ("lies in the alert's area or is named by it" if where.port.match
                                               else "matches the rule's list"), None
    first, last = _departure_bounds(where.overlap, scene) if where.overlap else (None, None)
    found = scene.network.sailings_at(port_ids, where.port.ends, first, last)
    if not found and where.overlap:
        return (f"where.port {evidence}: no sailing there meets {_window_text(scene.window)} "
                f"(margins -{_span(where.overlap.before)} +{_span(where.overlap.after)})"), None
    return f"port {evidence}", found


def _filtered(where: Where, scene: Scene, sailings: list[SailingRef], explain: bool,
              reasons: list[str]) -> list[SailingRef]:
    if where.route_kinds:
        sailings = [s for s in sailings if s.route_kind in where.route_kinds]
        if explain or not sailings:
            reasons.append(f"where.route_kind {'/'.join(where.route_kinds)}: {len(sailings)} sailing(s)")
    if where.jurisdictions:
        sailings = [s for s in sailings if s.jurisdiction in where.jurisdictions]
        if explain or not sailings:
            reasons.append(f"where.jurisdiction {'/'.join(where.jurisdictions)}: {len(sailings)} sailing(s)")
    if where.overlap and sailings:
        kept = [s for s in sailings if _overlaps(s, scene.windows, where.overlap)]
        if explain or not kept:
            reasons.append(f"where.time_overlap: {len(kept)} of {len(sailings)} sailing(s) meet "
                           f"{_window_text(scene.window)} (margins -{_span(where.overlap.before)} "
                           f"+{_span(where.overlap.after)}, {where.overlap.compare})")
        sailings = kept
    return sailings


def _ports(selector: PortSelector, scene: Scene) -> tuple[set[int], str]:
    network = scene.network
    found: dict[int, str] = {}
    for method in selector.match:
        for port_id, why in scene.ports_by[method].items():
            found.setdefault(port_id, why)
    for locode in selector.fixed:
        if locode in network.by_locode:
            found.setdefault(network.by_locode[locode], "named by the rule")
    for country in selector.countries:
        for port_id in network.by_country.get(country, ()):
            found.setdefault(port_id, f"in {country}")
    if selector.only:
        found = {p: w for p, w in found.items() if network.port_by_id[p].locode in selector.only}
    listed = sorted(found, key=lambda p: network.port_by_id[p].locode)
    shown = ", ".join(f"{network.port_by_id[p].locode} ({found[p]})" for p in listed[:6])
    return set(found), shown + (f" and {len(listed) - 6} more" if len(listed) > 6 else "")


def _trip_sailings(scene: Scene) -> dict[int, SailingRef]:
    # A GTFS trip runs every service day: start_date picks the day; without it, the run nearest the feed's time.
    network, observation = scene.network, scene.observation
    start_date = str(observation.fields.get("start_date") or "")
    moment = observation.sent or scene.now
    found: dict[int, SailingRef] = {}
    for trip_id in observation.sailings:
        runs = network.by_trip.get(trip_id, [])
        if not runs:
            continue
        if start_date:
            day = [s for s in runs if s.code == f"{trip_id}@{start_date}"] or [
                s for s in runs if _local_day(s, network) == start_date]
            found.update((s.id, s) for s in day)
        else:
            nearest = min(runs, key=lambda s: abs((s.departure - moment).total_seconds()))
            found[nearest.id] = nearest
    return found


def _local_day(sailing: SailingRef, network: Network) -> str:
    port = network.port_by_id.get(sailing.origin_port_id)
    zone = ZoneInfo(port.timezone) if port and port.timezone else UTC
    return sailing.departure.astimezone(zone).strftime("%Y%m%d")


def _informed_sailings(scene: Scene) -> tuple[dict[int, SailingRef], str]:
    # Each GTFS-RT informed entity is an AND of its fields; the entities together are an OR.
    network, found, labels = scene.network, {}, []
    for selector in scene.observation.fields.get("informed_entities", []):
        sets = []
        if selector.get("trip_id"):
            sets.append({s.id: s for s in network.by_trip.get(selector["trip_id"], [])})
        if selector.get("route_id"):
            sets.append({s.id: s for s in network.by_route.get(selector["route_id"], [])})
        if selector.get("stop_id"):
            port = network.by_stop.get(selector["stop_id"])
            sets.append(network.sailings_at([port]) if port else {})
        if not sets:
            labels.append("agency-wide entity skipped (routes do not record their agency)")
            continue
        matched = sets[0]
        for other in sets[1:]:
            matched = {k: v for k, v in matched.items() if k in other}
        found.update(matched)
        labels.append("+".join(f"{k}={v}" for k, v in selector.items() if k != "agency_id"))
    return found, "informed_entities " + (", ".join(labels) or "(none)")


def _departure_bounds(overlap: Overlap, scene: Scene) -> tuple[datetime | None, datetime | None]:
    # Only sailings departing in this range can meet the window: the index returns just those.
    start = min(s for s, _ in scene.windows)
    ends = [e or shifted(s, overlap.open_end) for s, e in scene.windows]
    reach_back = overlap.before + (scene.network.longest_crossing if overlap.compare != "departure" else timedelta(0))
    return shifted(start, -reach_back), shifted(max(ends), overlap.after)


def _overlaps(sailing: SailingRef, windows: list[tuple[datetime, datetime | None]], overlap: Overlap) -> bool:
    for start, end in windows:
        low = shifted(start, -overlap.before)
        high = shifted(end or shifted(start, overlap.open_end), overlap.after)
        if overlap.compare == "departure" and low <= sailing.departure <= high:
            return True
        if overlap.compare == "arrival" and low <= sailing.arrival <= high:
            return True
        if overlap.compare == "crossing" and sailing.departure <= high and sailing.arrival >= low:
            return True
    return False


def _window_text(window: tuple[datetime, datetime | None]) -> str:
    start, end = window
    return f"{utc_minute(start)} .. " + (f"{utc_minute(end)} UTC" if end else "open end")


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h" if minutes and minutes % 60 == 0 else f"{minutes}m"
