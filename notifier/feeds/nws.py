"""api.weather.gov alerts (GeoJSON FeatureCollection or a single Feature): bytes -> Observations. Pure: no I/O.

Each Feature is one CAP alert rendered as GeoJSON, so the mapping follows cap.py: `properties.id` is the CAP
identifier, `sender` the source and `sent` the version; references become "sender,identifier" like CAP's. The
hazard window ends at `ends` when the alert gives one (`expires` is only when the message itself goes stale,
often hours before the hazard is over); both stay in `fields`.
"""

from __future__ import annotations

from typing import Any

from notifier.feeds import Area, FeedParseError, Observation
from notifier.feeds.cap import MSG_TYPES
from notifier.feeds.reading import PARSE_SECONDS, Deadline, iso, load_json, parse_time

# UGC zones over water: coastal and offshore marine zones ("PZZ530"), the Great Lakes and the St. Lawrence.
MARINE_UGC_PREFIXES = {"AM", "AN", "GM", "LC", "LE", "LH", "LM", "LO", "LS", "PH", "PK", "PM", "PS", "PZ", "SL"}


def parse(data: bytes, source: str = "", notes: list[str] | None = None,
          seconds: float = PARSE_SECONDS) -> list[Observation]:
    """Parse an NWS alerts FeatureCollection (or one Feature) into one Observation per alert."""
    deadline = Deadline(seconds)
    document = load_json(data, what="NWS alerts")
    if not isinstance(document, dict):
        raise FeedParseError("NWS alerts must be a GeoJSON object, not a JSON " + type(document).__name__)
    kind = document.get("type")
    if kind == "Feature":
        return [feature_to_observation(document, source, deadline)]
    if kind != "FeatureCollection":
        raise FeedParseError(f"NWS alerts must be a GeoJSON FeatureCollection or Feature, not type {kind!r}")
    features = document.get("features")
    if not isinstance(features, list):
        raise FeedParseError("NWS FeatureCollection has no \"features\" list")
    return [feature_to_observation(feature, source, deadline) for feature in deadline.over(features)]


def feature_to_observation(feature: Any, source: str = "", deadline: Deadline | None = None) -> Observation:
    """Map one alert Feature to an Observation."""
    properties = _properties(feature)
    alert_id = _string(properties.get("id") or properties.get("identifier"), "id")
    if not alert_id:
        raise FeedParseError("NWS alert has no properties.id (nor identifier)")
    where = f"NWS alert {alert_id[:60]}"
    sent = parse_time(properties.get("sent"), f"{where}: sent")
    if sent is None:
        raise FeedParseError(f"{where} has no sent time")
    msg_type = _string(properties.get("messageType"), f"{where}: messageType") or "Alert"
    if msg_type not in MSG_TYPES:
        raise FeedParseError(f"{where}: messageType {msg_type!r} is not one of {', '.join(sorted(MSG_TYPES))}")
    times = {name: parse_time(properties.get(name), f"{where}: {name}")
             for name in ("effective", "onset", "expires", "ends")}
    observation = Observation(
        source=_string(properties.get("sender"), f"{where}: sender") or source or "api.weather.gov",
        format="nws", kind="weather_alert", external_id=alert_id, version=sent.isoformat(), msg_type=msg_type,
        status=_string(properties.get("status"), f"{where}: status") or "Actual",
        references=_references(properties.get("references"), where),
        event=_string(properties.get("event"), f"{where}: event"),
        severity=_string(properties.get("severity"), f"{where}: severity") or None,
        urgency=_string(properties.get("urgency"), f"{where}: urgency") or None,
        certainty=_string(properties.get("certainty"), f"{where}: certainty") or None,
        sent=sent, onset=times["onset"], effective=times["effective"], expires=times["ends"] or times["expires"],
        headline=_string(properties.get("headline"), f"{where}: headline"),
        description=_string(properties.get("description"), f"{where}: description"),
        instruction=_string(properties.get("instruction"), f"{where}: instruction"),
        language=_string(properties.get("language"), f"{where}: language") or "en-US")
    # Same shape as cap.py's, so templates read a feed's texts one way whatever the format.
    observation.texts[observation.language] = {"headline": observation.headline,
                                               "description": observation.description, "event": observation.event}
    area = _area(feature, properties, where, deadline or Deadline())
    observation.areas.append(area)
    observation.fields.update(_fields(properties, times, area))
    return observation


def _properties(feature: Any) -> dict[str, Any]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise FeedParseError("NWS FeatureCollection holds something that is not a GeoJSON Feature")
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        raise FeedParseError("NWS alert Feature has no properties object")
    return properties


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FeedParseError(f"{what} should be text, not {type(value).__name__}")
    return value.strip()


def _references(value: Any, where: str) -> list[str]:
    """[{identifier, sender, sent}, ...] -> ["sender,identifier", ...], as cap.py makes from <references>."""
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise FeedParseError(f"{where}: references should be a list")
    refs = []
    for reference in value:
        if not isinstance(reference, dict):
            raise FeedParseError(f"{where}: a reference is not an object with identifier and sender")
        identifier = _string(reference.get("identifier"), f"{where}: reference identifier")
        sender = _string(reference.get("sender"), f"{where}: reference sender")
        if identifier and sender:
            refs.append(f"{sender},{identifier}")
    return refs


def _area(feature: dict[str, Any], properties: dict[str, Any], where: str, deadline: Deadline) -> Area:
    geometry = feature.get("geometry")
    if geometry is not None and not isinstance(geometry, dict):
        raise FeedParseError(f"{where}: geometry should be a GeoJSON object or null")
    rings: list[list[tuple[float, float]]] = []
    if geometry:
        _add_polygons(geometry, where, deadline, rings)
    return Area(description=_string(properties.get("areaDesc"), f"{where}: areaDesc"), polygons=rings,
                geocodes=_geocodes(properties.get("geocode"), where, deadline), geojson=geometry)


def _geocodes(value: Any, where: str, deadline: Deadline) -> list[str]:
    """{"UGC": ["PZZ530"], "SAME": ["006113"]} -> ["UGC:PZZ530", "SAME:006113"] (the form cap.py uses)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise FeedParseError(f"{where}: geocode should be an object of code lists")
    codes = []
    for name, values in value.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise FeedParseError(f"{where}: geocode {name} should be a list of codes")
        codes.extend(f"{name.upper()}:{v.strip()}" for v in deadline.over(values) if v.strip())
    return list(dict.fromkeys(codes))


def _add_polygons(geometry: dict[str, Any], where: str, deadline: Deadline,
                  rings: list[list[tuple[float, float]]]) -> None:
    """Outer rings of a Polygon / MultiPolygon as (lat, lon), the order Area uses (GeoJSON is lon, lat), added to
    `rings`: one list for the whole geometry, so nested GeometryCollections do not copy the rings at every level."""
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coordinates]
    elif kind == "MultiPolygon":
        polygons = coordinates
    elif kind == "GeometryCollection":
        for part in deadline.over(_list(geometry.get("geometries"), where)):
            if not isinstance(part, dict):
                raise FeedParseError(f"{where}: a GeometryCollection holds something that is not a GeoJSON geometry")
            _add_polygons(part, where, deadline, rings)
        return
    else:
        raise FeedParseError(f"{where}: geometry type {kind!r} is not Polygon or MultiPolygon")
    rings.extend(_ring(_list(polygon, where)[0] if polygon else [], where, deadline)
                 for polygon in deadline.over(_list(polygons, where)))


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise FeedParseError(f"{where}: geometry coordinates are not nested lists")
    return value


def _ring(points: Any, where: str, deadline: Deadline) -> list[tuple[float, float]]:
    ring = []
    for point in deadline.over(_list(points, where)):
        if not (isinstance(point, list) and len(point) >= 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point[:2])):
            raise FeedParseError(f"{where}: geometry point {str(point)[:40]} is not [lon, lat]")
        lon, lat = float(point[0]), float(point[1])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise FeedParseError(f"{where}: geometry point [{lon}, {lat}] is outside the globe")
        ring.append((lat, lon))
    if len(ring) < 4:
        raise FeedParseError(f"{where}: geometry ring has {len(ring)} points; a closed ring needs at least 4")
    return ring


def _fields(properties: dict[str, Any], times: dict[str, Any], area: Area) -> dict[str, Any]:
    parameters, category, zones = (properties.get(k) for k in ("parameters", "category", "affectedZones"))
    return {
        "ends": iso(times["ends"]), "expires": iso(times["expires"]),
        "categories": [category] if isinstance(category, str) and category else [],
        "parameters": parameters if isinstance(parameters, dict) else {},
        "affected_zones": [z for z in zones if isinstance(z, str)] if isinstance(zones, list) else [],
        "marine_zones": [code.split(":", 1)[1] for code in area.geocodes if _is_marine_zone(code)],
        "sender_name": properties.get("senderName") if isinstance(properties.get("senderName"), str) else "",
        "response": properties.get("response") if isinstance(properties.get("response"), str) else "",
    }


def _is_marine_zone(code: str) -> bool:
    # UGC zone codes are SSZNNN; a marine one has a marine-area prefix instead of a state ("PZZ530", "GMZ335").
    if not code.startswith("UGC:"):
        return False
    zone = code[4:]
    return len(zone) == 6 and zone[2] == "Z" and zone[:2] in MARINE_UGC_PREFIXES
