"""The network as the evaluator sees it: ports in a shapely STRtree, and sailings indexed every way a rule selects
them (by port and end, sorted by departure so a time window is two binary searches; by route, trip, vessel, voyage
and sailing code).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from shapely import STRtree, box
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE = 111.32
# A CAP circle of radius 0 is a point; a port within this distance of it counts as "at" the point.
MIN_CIRCLE_KM = 0.5


@dataclass(frozen=True)
class PortRef:
    """What the evaluator needs to know of a port."""

    id: int
    locode: str
    lat: float
    lon: float
    zone_codes: tuple[str, ...] = ()
    gtfs_stop_id: str | None = None
    country: str = ""
    name: str = ""
    timezone: str = "UTC"


@dataclass(frozen=True)
class SailingRef:
    """What the evaluator needs to know of a sailing."""

    id: int
    code: str
    origin_port_id: int
    destination_port_id: int
    departure: datetime
    arrival: datetime
    route_code: str = ""
    vessel_imo: str | None = None
    voyage: str | None = None
    gtfs_trip_id: str | None = None
    gtfs_route_id: str | None = None
    route_kind: str = "passenger"
    jurisdiction: str = "OTHER"


def normalise_zone(code: str) -> str:
    """'pzz530' -> 'UGC:PZZ530'; 'same:006113' -> 'SAME:006113' (the form the parsers give geocodes in)."""
    name, _, value = code.strip().rpartition(":")
    return f"{(name or 'UGC').upper()}:{value.upper()}"


class _PortIndex:
    """Sailings at one port for one end, sorted by departure (binary search on a time window)."""

    def __init__(self) -> None:
        self.sailings: list[SailingRef] = []
        self.departures: list[datetime] = []

    def add(self, sailing: SailingRef) -> None:
        self.sailings.append(sailing)

    def freeze(self) -> None:
        self.sailings.sort(key=lambda s: (s.departure, s.id))
        self.departures = [s.departure for s in self.sailings]

    def between(self, first: datetime | None, last: datetime | None) -> list[SailingRef]:
        low = bisect_left(self.departures, first) if first else 0
        high = bisect_right(self.departures, last) if last else len(self.sailings)
        return self.sailings[low:high]


class Network:
    """Ports (in an STRtree) and the sailings that can still be disrupted, indexed every way a rule selects them."""

    def __init__(self, ports: list[PortRef], sailings: list[SailingRef]) -> None:
        self.ports = list(ports)
        self.port_by_id = {p.id: p for p in self.ports}
        self.by_locode = {p.locode: p.id for p in self.ports}
        self.by_zone: dict[str, set[int]] = defaultdict(set)
        self.by_stop: dict[str, int] = {}
        self.by_country: dict[str, set[int]] = defaultdict(set)
        for port in self.ports:
            for code in port.zone_codes:
                self.by_zone[normalise_zone(code)].add(port.id)
            if port.gtfs_stop_id:
                self.by_stop[port.gtfs_stop_id] = port.id
            self.by_country[port.country].add(port.id)
        self._tree = STRtree([Point(p.lon, p.lat) for p in self.ports]) if self.ports else None
        self.sailings = list(sailings)
        self.sailing_by_id = {s.id: s for s in self.sailings}
        self._from: dict[int, _PortIndex] = defaultdict(_PortIndex)
        self._to: dict[int, _PortIndex] = defaultdict(_PortIndex)
        self.by_route: dict[str, list[SailingRef]] = defaultdict(list)
        self.by_trip: dict[str, list[SailingRef]] = defaultdict(list)
        self.by_vessel: dict[str, list[SailingRef]] = defaultdict(list)
        self.by_voyage: dict[str, list[SailingRef]] = defaultdict(list)
        self.by_code: dict[str, SailingRef] = {}
        self.longest_crossing = timedelta(0)
        for sailing in self.sailings:
            self._index(sailing)
        for index in (*self._from.values(), *self._to.values()):
            index.freeze()

    def _index(self, sailing: SailingRef) -> None:
        self._from[sailing.origin_port_id].add(sailing)
        self._to[sailing.destination_port_id].add(sailing)
        for key in {sailing.route_code, sailing.gtfs_route_id} - {None, ""}:
            self.by_route[key].append(sailing)
        if sailing.gtfs_trip_id:
            self.by_trip[sailing.gtfs_trip_id].append(sailing)
        if sailing.vessel_imo:
            self.by_vessel[sailing.vessel_imo].append(sailing)
        if sailing.voyage:
            self.by_voyage[sailing.voyage].append(sailing)
        self.by_code[sailing.code] = sailing
        self.longest_crossing = max(self.longest_crossing, sailing.arrival - sailing.departure)

    def ports_in(self, geometry: BaseGeometry) -> list[int]:
        """Ports inside (or on the edge of) a shapely geometry, through the spatial index."""
        if self._tree is None:
            return []
        return [self.ports[i].id for i in self._tree.query(geometry, predicate="intersects")]

    def ports_in_circle(self, lat: float, lon: float, radius_km: float) -> list[int]:
        """Ports within radius_km (great-circle) of a point: a box query on the index, then the exact distance."""
        if self._tree is None:
            return []
        radius = max(radius_km, MIN_CIRCLE_KM)
        dlat = radius / KM_PER_DEGREE
        dlon = min(180.0, radius / (KM_PER_DEGREE * max(math.cos(math.radians(lat)), 1e-6)))
        found = self._tree.query(box(lon - dlon, lat - dlat, lon + dlon, lat + dlat))
        return [self.ports[i].id for i in found
                if haversine_km(lat, lon, self.ports[i].lat, self.ports[i].lon) <= radius]

    def sailings_at(self, port_ids: set[int] | list[int], ends: tuple[str, ...] = ("departure", "arrival"),
                    first: datetime | None = None, last: datetime | None = None) -> dict[int, SailingRef]:
        """Sailings departing from / arriving at the ports, optionally only those departing within [first, last]."""
        found: dict[int, SailingRef] = {}
        for port_id in port_ids:
            if "departure" in ends and port_id in self._from:
                found.update((s.id, s) for s in self._from[port_id].between(first, last))
            if "arrival" in ends and port_id in self._to:
                found.update((s.id, s) for s in self._to[port_id].between(first, last))
        return found


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))
