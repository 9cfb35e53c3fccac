"""Feed parsers: one module per format, each a pure function `parse(data: bytes, source: str) -> list[Observation]`.

An Observation is the normalised form every format is reduced to; the rules only ever see Observations. Its JSON
form (`Observation.to_json`) is what `notifier feeds inspect` prints and what `feed_items.observation` stores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from notifier.errors import NotifierError, escape_unprintable

# Every input is capped before parsing; the fetcher enforces the same cap on the wire.
MAX_FEED_BYTES = 5_000_000
# The widths of the feed_items columns (notifier.store.models.FeedItem) an observation's identity is stored in.
MAX_STORED_CHARS = {"source": 120, "external_id": 400, "version": 120}


class FeedParseError(NotifierError):
    """A feed body that cannot be read as its format: recorded as a feed error, shown as one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Messages quote ids and values from the feed, which may hold line breaks, terminal escapes or bidi
        # overrides: shown escaped, so the error stays one honest line in the log, the CLI and feed_sources.
        super().__init__(escape_unprintable(message))


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
    format: str  # cap | atom | nws | gtfs_rt | dcsa | port_status | hko_warnings
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


def check_storable(observations: list[Observation]) -> list[Observation]:
    """Refuse what the database cannot store: ids wider than their columns, NUL characters, lone surrogates."""
    for observation in observations:
        identity = {"source": observation.source, "external_id": observation.external_id,
                    "version": observation.version}
        for name, value in identity.items():
            if len(value) > MAX_STORED_CHARS[name]:
                raise FeedParseError(f"{observation.format} item {name} is {len(value)} characters long; "
                                     f"at most {MAX_STORED_CHARS[name]} can be stored")
        _check_text(observation.to_json(), observation.external_id)
    return observations


def _check_text(value: Any, item: str) -> None:
    # JSON feeds can spell both with escapes ("\u0000", "\ud800"); PostgreSQL text refuses NUL, and a lone
    # surrogate cannot be encoded for an SMS, an email or a database at all.
    pending = [value]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise FeedParseError(f"feed item {item[:60]!r} has text with a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise FeedParseError(f"feed item {item[:60]!r} has text with a lone UTF-16 surrogate") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
