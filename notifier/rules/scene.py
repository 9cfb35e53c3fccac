"""One observation as every rule sees it: the ports it covers, its hazard windows, the voyages it names and the
words a notice may quote, each computed once per observation and shared by every rule.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Any

from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import make_valid

from notifier.feeds import Observation
from notifier.messages import quotable
from notifier.rules.conditions import as_time
from notifier.rules.network import Network, normalise_zone

# The longest feed text a notice quotes (a headline, a DCSA change remark): about two English SMS parts of its own.
QUOTED_MAX_CHARS = 300


class Scene:
    """One observation as every rule sees it: its ports, windows and geometry, computed once and shared."""

    def __init__(self, observation: Observation, network: Network, now: datetime) -> None:
        self.observation, self.network, self.now = observation, network, now

    @cached_property
    def geometries(self) -> list[tuple[str, BaseGeometry]]:
        """(label, shapely geometry) for every polygon and GeoJSON area; circles are handled apart."""
        found = []
        for area in self.observation.areas:
            label = area.description[:40] or "area"
            for ring in area.polygons:
                if len(ring) >= 3:
                    found.append((label, _valid(Polygon([(lon, lat) for lat, lon in ring]))))
            if area.geojson:
                try:
                    found.append((label, _valid(shape(area.geojson))))
                except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                    continue  # an unusable geometry selects nothing; its polygons and geocodes still count
        return found

    @cached_property
    def ports_by(self) -> dict[str, dict[int, str]]:
        """For each match method, the ports it finds and the evidence (for the explanation)."""
        network, observation = self.network, self.observation
        area: dict[int, str] = {}
        for label, geometry in self.geometries:
            for port_id in network.ports_in(geometry):
                area.setdefault(port_id, f"polygon of {label!r}")
        for area_entry in observation.areas:
            for lat, lon, radius in area_entry.circles:
                for port_id in network.ports_in_circle(lat, lon, radius):
                    area.setdefault(port_id, f"circle {lat},{lon} {radius} km")
        locode: dict[int, str] = {}
        codes = list(observation.ports) + [c[9:] for a in observation.areas for c in a.geocodes
                                           if c.upper().startswith("UNLOCODE:")]
        for code in codes:
            if code in network.by_locode:
                locode.setdefault(network.by_locode[code], f"UN/LOCODE {code}")
        zone: dict[int, str] = {}
        for area_entry in observation.areas:
            for code in area_entry.geocodes:
                for port_id in network.by_zone.get(normalise_zone(code), ()):
                    zone.setdefault(port_id, f"zone {code}")
        stop: dict[int, str] = {}
        for stop_id in observation.fields.get("stops", []) if observation.kind == "service_alert" else []:
            if stop_id in network.by_stop:
                stop.setdefault(network.by_stop[stop_id], f"GTFS stop {stop_id}")
        return {"area": area, "locode": locode, "zone_code": zone, "gtfs_stop": stop}

    @cached_property
    def windows(self) -> list[tuple[datetime, datetime | None]]:
        """The hazard's active periods (start, end or None for open-ended)."""
        observation = self.observation
        periods = observation.fields.get("active_periods") if observation.kind == "service_alert" else None
        if periods:
            found = []
            for start, end in periods:
                found.append((as_time(start) or observation.sent or self.now, as_time(end)))
            return found
        start = observation.onset or observation.effective or observation.sent or self.now
        end = observation.expires
        ends = as_time(observation.fields.get("ends"))
        if ends and (end is None or ends > end):
            end = ends  # NWS: `expires` is the message's, `ends` the hazard's
        return [(start, end)]

    @cached_property
    def window(self) -> tuple[datetime, datetime | None]:
        """The overall hazard window: the first start to the last end (None when any period is open-ended)."""
        starts = [s for s, _ in self.windows]
        ends = [e for _, e in self.windows]
        return min(starts), (None if None in ends else max(ends))

    @cached_property
    def voyages(self) -> set[str]:
        """Voyage numbers the observation names (DCSA carrier, import and export voyages)."""
        fields = self.observation.fields
        found = set(self.observation.sailings)
        for key in ("carrier_voyage", "import_voyage", "export_voyage", "voyage"):
            value = fields.get(key)
            if isinstance(value, str) and value:
                found |= {part.strip() for part in value.split("/") if part.strip()}
        return found

    @cached_property
    def details(self) -> dict[str, Any]:
        """What a notice may quote from the observation (kept with the disruption). A feed's words reach an SMS
        or email only through here and rules.evaluate's cause text, so both make them quotable (messages.quotable)."""
        observation, fields = self.observation, self.observation.fields
        found = {"headline": quotable(observation.headline, QUOTED_MAX_CHARS),
                 "event": quotable(observation.event, 120), "source": observation.source[:120]}
        for key in ("port_call_status", "vessel_name", "delay_reason", "change_remark", "status", "reason",
                    "skipped_stops", "effect"):
            value = fields.get(key)
            if value:
                found[key] = quotable(value, QUOTED_MAX_CHARS) if isinstance(value, str) else value
        if observation.ports:
            found["ports"] = list(observation.ports)[:10]
        return found


def _valid(geometry: BaseGeometry) -> BaseGeometry:
    # A self-intersecting ring (publishers draw them) gives wrong or failing spatial predicates; the repaired
    # shape covers the same ground.
    return geometry if geometry.is_valid else make_valid(geometry)
