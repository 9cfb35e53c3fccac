"""CAP (OASIS Common Alerting Protocol) 1.0 / 1.1 / 1.2 alerts: bytes -> Observations. Pure: no I/O.

Read through defusedxml (no entities, no external references). Namespaces and prefixes vary between publishers
(`cap:alert`, default namespace, CAP 1.1 namespace), so elements are matched by local name. Two publisher habits
are read rather than refused: several alerts wrapped in one non-standard root (`<alerts>`), each read as its own
alert; and the WMO CAP composer's `cap:` prefix used without being declared, read as CAP 1.2 with a note.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from notifier.feeds import Area, FeedParseError, Observation
from notifier.feeds.reading import PARSE_SECONDS, Deadline, aware_time, check_size, decode_text, text_encoding

CAP_NAMESPACES = ("urn:oasis:names:tc:emergency:cap:1.2", "urn:oasis:names:tc:emergency:cap:1.1",
                  "http://www.incident.com/cap/1.0")
MSG_TYPES = {"Alert", "Update", "Cancel", "Ack", "Error"}
# The WMO CAP composer writes `<cap:alert xmlns="urn:...:cap:1.2">`: the prefix is used but never declared.
_UNDECLARED_CAP_ROOT = re.compile(rb"<cap:alert(?=[\s>/])(?![^>]*xmlns:cap=)")
COMPOSER_NOTE = ("CAP alert uses the prefix cap: without declaring it (as the WMO CAP composer writes it); "
                 "read as CAP 1.2")


def parse(data: bytes, source: str = "", notes: list[str] | None = None,
          seconds: float = PARSE_SECONDS) -> list[Observation]:
    """Parse a CAP alert document (or a wrapper of several alerts) into one Observation per alert, refusing it
    if that takes longer than `seconds`; a composer quirk read anyway is noted in `notes` and on the item."""
    deadline = Deadline(seconds)
    warnings: list[str] = []
    root = _parse_cap_xml(data, warnings)
    if local_name(root.tag) == "alert":
        alerts = [root]
    else:
        alerts = children(root, "alert")
        if not alerts:
            raise FeedParseError(f"not a CAP alert: the document's root element is <{local_name(root.tag)}>, "
                                 "with no <alert> inside")
    observations = [alert_to_observation(alert, deadline) for alert in deadline.over(alerts)]
    for observation in observations if warnings else []:
        observation.fields["feed_warnings"] = list(warnings)
    if notes is not None:
        notes.extend(warnings)
    return observations


def _parse_cap_xml(data: bytes, warnings: list[str]) -> Element:
    """The document's root; with the composer's undeclared `cap:` prefix declared as CAP 1.2 when that is the only
    fault (anything else malformed is refused as before)."""
    try:
        return parse_xml(data, what="CAP alert")
    except FeedParseError as exc:
        head = data[:4096]
        if "unbound prefix" not in str(exc) or not _UNDECLARED_CAP_ROOT.search(head):
            raise
    declared = _UNDECLARED_CAP_ROOT.sub(f'<cap:alert xmlns:cap="{CAP_NAMESPACES[0]}"'.encode(), data, count=1)
    root = parse_xml(declared, what="CAP alert")
    warnings.append(COMPOSER_NOTE)
    return root


def parse_xml(data: bytes, what: str) -> Element:
    """Parse untrusted XML safely; every failure becomes a FeedParseError with a readable reason."""
    check_size(data, what)
    # A UTF-16 or UTF-32 document (by its byte-order mark) is handed over as text, whatever its XML declaration
    # says: expat reads no UTF-32, and this way every format reads a byte-order mark alike (feeds.reading).
    document = data if text_encoding(data) == "utf-8-sig" else decode_text(data, what)
    try:
        return SafeET.fromstring(document, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise FeedParseError(f"{what} refused: unsafe XML ({type(exc).__name__})") from None
    except ParseError as exc:
        raise FeedParseError(f"{what} is not well-formed XML ({exc})") from None
    except (LookupError, ValueError) as exc:  # the XML declaration names an encoding Python cannot read with
        raise FeedParseError(f"{what} declares an encoding that cannot be read ({str(exc)[:80]})") from None


def local_name(tag: str) -> str:
    """'{urn:...cap:1.2}alert' -> 'alert'."""
    return tag.rsplit("}", 1)[-1]


def child(element: Element, name: str) -> Element | None:
    """The first child with this local name."""
    for sub in element:
        if local_name(sub.tag) == name:
            return sub
    return None


def children(element: Element, name: str) -> list[Element]:
    """All children with this local name."""
    return [sub for sub in element if local_name(sub.tag) == name]


def text(element: Element, name: str) -> str:
    """The stripped text of the first child with this local name, or ''."""
    found = child(element, name)
    return (found.text or "").strip() if found is not None else ""


def parse_time(value: str, field_name: str) -> datetime | None:
    """A CAP dateTime, which must carry its UTC offset; a time without one is refused, not guessed."""
    # Kept with its own offset (it is part of the version), once it is known to convert to UTC later.
    return aware_time(value, f"<{field_name}>", publisher="CAP") if value else None


def parse_references(value: str) -> list[str]:
    """'sender,identifier,sent sender,identifier,sent' -> ['sender,identifier', ...] (sent is not part of the id)."""
    refs = []
    for triple in value.split():
        parts = triple.split(",")
        if len(parts) >= 2 and parts[0] and parts[1]:
            refs.append(f"{parts[0]},{parts[1]}")
    return refs


def alert_to_observation(alert: Element, deadline: Deadline | None = None) -> Observation:
    """Map one <alert> element (with any number of <info> blocks) to an Observation."""
    identifier, sender = text(alert, "identifier"), text(alert, "sender")
    sent_text = text(alert, "sent")
    if not identifier or not sender or not sent_text:
        raise FeedParseError("CAP alert lacks <identifier>, <sender> or <sent>")
    msg_type = text(alert, "msgType") or "Alert"
    if msg_type not in MSG_TYPES:
        raise FeedParseError(f"CAP <msgType> {msg_type!r} is not one of {', '.join(sorted(MSG_TYPES))}")
    sent = parse_time(sent_text, "sent")
    infos = children(alert, "info")
    observation = Observation(
        source=sender, format="cap", kind="weather_alert", external_id=identifier, version=sent.isoformat(),
        msg_type=msg_type, status=text(alert, "status") or "Actual",
        references=parse_references(text(alert, "references")), sent=sent)
    if infos:
        _apply_infos(observation, infos, deadline or Deadline())
    return observation


def _apply_infos(observation: Observation, infos: list[Element], deadline: Deadline) -> None:
    # The first block in English is primary (rules are written against English event names); other languages
    # are kept as translations, and every block's areas count.
    primary = next((i for i in infos if text(i, "language").lower().startswith("en")), infos[0])
    observation.language = text(primary, "language") or "en-US"
    observation.event = text(primary, "event")
    observation.severity = text(primary, "severity") or None
    observation.urgency = text(primary, "urgency") or None
    observation.certainty = text(primary, "certainty") or None
    observation.onset = parse_time(text(primary, "onset"), "onset")
    observation.effective = parse_time(text(primary, "effective"), "effective")
    observation.expires = parse_time(text(primary, "expires"), "expires")
    observation.headline = text(primary, "headline")
    observation.description = text(primary, "description")
    observation.instruction = text(primary, "instruction")
    observation.fields["categories"] = [c.text.strip() for c in children(primary, "category") if c.text]
    observation.fields["parameters"] = _parameters(primary, deadline)
    for info in deadline.over(infos):
        language = text(info, "language") or "en-US"
        observation.texts.setdefault(language, {"headline": text(info, "headline"),
                                                "description": text(info, "description"),
                                                "event": text(info, "event")})
        observation.areas.extend(read_area(area, deadline) for area in children(info, "area"))
    observation.ports = sorted({code.split(":", 1)[1] for area in observation.areas for code in area.geocodes
                                if code.startswith("UNLOCODE:")})


def _parameters(info: Element, deadline: Deadline) -> dict[str, str]:
    params = {}
    for parameter in deadline.over(children(info, "parameter")):
        name, value = text(parameter, "valueName"), text(parameter, "value")
        if name:
            params[name] = value
    return params


def read_area(area: Element, deadline: Deadline | None = None) -> Area:
    """One <area>: its description, polygons, circles and geocodes (ATOM entries with inline CAP fields use it too)."""
    deadline = deadline or Deadline()
    result = Area(description=text(area, "areaDesc"))
    for polygon in deadline.over(children(area, "polygon")):
        ring = _polygon((polygon.text or "").strip(), deadline)
        if ring:
            result.polygons.append(ring)
    for circle in deadline.over(children(area, "circle")):
        if (circle.text or "").strip():
            result.circles.append(_circle(circle.text.strip()))
    # A dict as an ordered set: a repeated code is listed once, where first seen, without rescanning the list
    # for every code (which made 60,000 geocodes take over a minute).
    geocodes: dict[str, None] = {}
    for geocode in deadline.over(children(area, "geocode")):
        name, value = text(geocode, "valueName"), text(geocode, "value")
        if name and value:
            geocodes.setdefault(f"{name.upper()}:{value}")
    result.geocodes = list(geocodes)
    return result


def _point(pair: str) -> tuple[float, float]:
    try:
        lat_text, lon_text = pair.split(",")
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        raise FeedParseError(f"CAP coordinate {pair[:40]!r} is not 'lat,lon'") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise FeedParseError(f"CAP coordinate {pair[:40]!r} is outside the globe")
    return lat, lon


def _polygon(value: str, deadline: Deadline) -> list[tuple[float, float]]:
    if not value:
        return []
    ring = [_point(pair) for pair in deadline.over(value.split())]
    if len(ring) < 4:
        raise FeedParseError(f"CAP polygon has {len(ring)} points; at least 4 (a closed ring) are required")
    return ring


def _circle(value: str) -> tuple[float, float, float]:
    try:
        centre, radius_text = value.split()
        radius = float(radius_text)
    except ValueError:
        raise FeedParseError(f"CAP circle {value[:40]!r} is not 'lat,lon radius'") from None
    if not math.isfinite(radius) or radius < 0:
        raise FeedParseError(f"CAP circle {value[:40]!r} has a radius that is negative or not a number")
    lat, lon = _point(centre)
    return lat, lon, radius
