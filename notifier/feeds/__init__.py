"""Feed parsers: one module per format, each a pure function `parse(data: bytes, source: str) -> list[Observation]`.

An Observation is the normalised form every format is reduced to; the rules only ever see Observations. Its JSON
form (`Observation.to_json`) is what `notifier feeds inspect` prints and what `feed_items.observation` stores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .. import NotifierError

# Every input is capped before parsing; the fetcher enforces the same cap on the wire.
MAX_FEED_BYTES = 5_000_000


class FeedParseError(NotifierError):
    """A feed body that cannot be read as its format: recorded as a feed error, shown as one line."""

    exit_code = 2


@dataclass
class Area:
    """Where a hazard applies. Polygons are rings of (lat, lon); circles are (lat, lon, radius_km)."""

    description: str = ""
    polygons: list[list[tuple[float, float]]] = field(default_factory=list)
    circles: list[tuple[float, float, float]] = field(default_factory=list)
    # "SAME:006113", "UGC:PZZ530", "UNLOCODE:CNHAK" ... (valueName upper-cased, then the value)
    geocodes: list[str] = field(default_factory=list)
    # GeoJSON geometry as published (NWS), when the feed gives one.
    geojson: dict[str, Any] | None = None


@dataclass
class Observation:
    """One normalised item of one feed version (an alert, a trip update, a port call, a port notice)."""

    source: str  # who published it (CAP sender, feed name)
    format: str  # cap | nws | gtfs_rt | dcsa | port_status
    kind: str  # weather_alert | trip_update | service_alert | port_call | port_status
    external_id: str  # stable id of the item across versions
    version: str  # what changes when the publisher re-issues it (CAP sent, NWS sent, feed timestamp ...)
    msg_type: str = "Alert"  # Alert | Update | Cancel (CAP vocabulary for every format)
    status: str = "Actual"  # Actual | Exercise | System | Test | Draft
    references: list[str] = field(default_factory=list)  # external_ids this one updates or cancels
    event: str = ""
    severity: str | None = None  # Extreme | Severe | Moderate | Minor | Unknown
    urgency: str | None = None
    certainty: str | None = None
    sent: datetime | None = None
    onset: datetime | None = None
    effective: datetime | None = None
    expires: datetime | None = None
    headline: str = ""
    description: str = ""
    instruction: str = ""
    language: str = "en"
    # Other languages' texts, language -> {"headline": ..., "description": ...}
    texts: dict[str, dict[str, str]] = field(default_factory=dict)
    areas: list[Area] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)  # UN/LOCODEs named directly
    sailings: list[str] = field(default_factory=list)  # sailing references (GTFS trip ids, voyages)
    routes: list[str] = field(default_factory=list)  # route references (GTFS route ids, service codes)
    # Format-specific facts the rules may test: delay_minutes, port_call_status, vessel_imo, voyage, cause ...
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with stable field names (datetimes as ISO 8601 UTC)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observation:
        """Rebuild an Observation stored by `to_json`."""
        values = dict(data)
        for name in ("sent", "onset", "effective", "expires"):
            if values.get(name):
                values[name] = datetime.fromisoformat(values[name])
        values["areas"] = [Area(description=a.get("description", ""),
                                polygons=[[tuple(p) for p in ring] for ring in a.get("polygons", [])],
                                circles=[tuple(c) for c in a.get("circles", [])],
                                geocodes=list(a.get("geocodes", [])),
                                geojson=a.get("geojson")) for a in values.get("areas", [])]
        return cls(**values)

    @property
    def window(self) -> tuple[datetime | None, datetime | None]:
        """The hazard window: onset (or effective, or sent) until expires."""
        return (self.onset or self.effective or self.sent, self.expires)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
