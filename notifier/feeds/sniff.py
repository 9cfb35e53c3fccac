"""Recognise a feed's format from its bytes, and read the text every text format starts from. Pure: no I/O.

`sniff` looks only at the first bytes (and the file name as a hint), so it is cheap and never parses a whole
untrusted document twice; the chosen parser then does the strict reading. Files that are not feeds at all (code
lists, the GTFS-RT .proto schema, static GTFS tables) are refused with a reason that says what they are.

The helpers `decode_text`, `load_json` and `parse_time` live here because sniffing and every JSON parser share
them: they turn each way untrusted text can be wrong into one FeedParseError.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from notifier.feeds import MAX_FEED_BYTES, FeedParseError, Observation, check_storable

FORMATS = ("cap", "atom", "nws", "gtfs_rt", "dcsa", "port_status")
# How much of the body sniffing looks at: enough for an XML prolog with comments, or a JSON object's first keys.
SNIFF_BYTES = 65_536

GTFS_STATIC_TABLES = {"agency", "stops", "routes", "trips", "stop_times", "calendar", "calendar_dates",
                      "fare_attributes", "fare_rules", "shapes", "frequencies", "transfers", "pathways", "levels",
                      "feed_info", "translations", "attributions", "areas", "stop_areas", "networks",
                      "route_networks", "fare_media", "fare_products", "fare_leg_rules", "fare_transfer_rules",
                      "timeframes", "location_groups", "location_group_stops", "booking_rules"}
GTFS_STATIC_COLUMNS = {"agency_id", "agency_timezone", "stop_id", "route_id", "trip_id", "service_id", "shape_id",
                       "fare_id", "feed_publisher_name"}

_XML_PROLOG = re.compile(r"\A(?:\s+|<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^\[>]*(?:\[.*?\])?\s*>)*", re.DOTALL)
_XML_ROOT = re.compile(r"<(?:[\w.-]+:)?([\w.-]+)")
GTFS_RT_TEXT = re.compile(r"\A(?:\s*#[^\n]*\n)*\s*(?:header|entity)\s*\{")
_PROTO_SCHEMA = re.compile(r"^\s*(?:syntax\s*=|package\s+[\w.]+\s*;|message\s+\w+\s*\{)", re.MULTILINE)
_NWS_TYPE = re.compile(r'"type"\s*:\s*"Feature(?:Collection)?"')
_DCSA_KEYS = re.compile(r'"(?:vesselSchedules|transportCalls|carrierServiceCode|transportEventTypeCode)"'
                        r'|"eventType"\s*:\s*"(?:TRANSPORT|SHIPMENT|EQUIPMENT)"')
_PORT_STATUS_KEYS = re.compile(r'"(?:notices|locode)"\s*:')


# --- helpers shared by the text formats -----------------------------------------------------------------------

def check_size(data: bytes, what: str) -> None:
    """Refuse a body over the feed size cap before any parsing work is spent on it."""
    if len(data) > MAX_FEED_BYTES:
        raise FeedParseError(f"{what} is {len(data)} bytes, over the {MAX_FEED_BYTES}-byte limit")


def decode_text(data: bytes, what: str) -> str:
    """UTF-8 (with or without a byte-order mark) or a FeedParseError naming the first bad byte."""
    check_size(data, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeedParseError(f"{what} is not valid UTF-8 (bad byte at offset {exc.start})") from None


def load_json(data: bytes, what: str) -> Any:
    """Parse untrusted JSON; every failure, including absurd nesting, becomes a FeedParseError."""
    text = decode_text(data, what)
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise FeedParseError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") \
            from None
    except RecursionError:
        raise FeedParseError(f"{what} is nested too deeply to be a feed") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python will convert
        raise FeedParseError(f"{what} is not usable JSON ({str(exc)[:80]})") from None


def _refuse_constant(name: str) -> None:
    raise FeedParseError(f"JSON constant {name} is not allowed in a feed")


def _finite_float(text: str) -> float:
    # Python reads 1e400 as Infinity, which is no more JSON than the constant and which PostgreSQL refuses.
    number = float(text)
    if not math.isfinite(number):
        raise FeedParseError(f"JSON number {text[:40]} is too large to be a number in a feed")
    return number


def parse_time(value: Any, what: str) -> datetime | None:
    """An ISO 8601 date-time that carries its UTC offset, returned in UTC; '' and None mean absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FeedParseError(f"{what} is not a date-time string: {str(value)[:40]!r}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise FeedParseError(f"{what} is not a date-time: {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise FeedParseError(f"{what} {value[:40]!r} has no UTC offset; feed times must carry one")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise FeedParseError(f"{what} {value[:40]!r} is outside the representable years") from None


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 text for `fields` (which are stored as JSON), or None."""
    return moment.isoformat() if moment else None


# --- sniffing ---------------------------------------------------------------------------------------------------

def sniff(data: bytes, filename: str = "") -> str:
    """Name the format of a feed body: cap, atom, nws, gtfs_rt, dcsa or port_status; refuse anything else."""
    if not data.strip():
        raise FeedParseError("empty feed body: nothing to parse")
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if name.lower().endswith(".proto"):
        raise FeedParseError(f"{name} is a Protocol Buffers schema (.proto), not a feed")
    head = data[:SNIFF_BYTES]
    if name.lower().endswith(".pb") or _looks_binary(head):
        return _sniff_binary(head, name)
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    if text.startswith("<"):
        return _sniff_xml(text)
    if text.startswith(("{", "[")):
        return _sniff_json(text)
    if GTFS_RT_TEXT.match(text):
        return "gtfs_rt"
    if _PROTO_SCHEMA.search(text):
        raise FeedParseError("a Protocol Buffers schema (.proto), not a feed")
    return _sniff_table(text, name)


def _looks_binary(head: bytes) -> bool:
    # Text feeds never contain NUL or most C0 control bytes; protobuf nearly always does in its first bytes.
    control = sum(1 for byte in head[:512] if byte < 9 or 13 < byte < 32)
    return control > 0


def _sniff_binary(head: bytes, name: str) -> str:
    # A FeedMessage starts with its required header: field 1, length-delimited, i.e. the byte 0x0A.
    if head[:1] == b"\x0a":
        return "gtfs_rt"
    where = f"{name}: " if name else ""
    raise FeedParseError(f"unrecognised feed format: {where}binary data that is not a GTFS-Realtime FeedMessage")


def _sniff_xml(text: str) -> str:
    prolog = _XML_PROLOG.match(text)
    root = _XML_ROOT.match(text, prolog.end() if prolog else 0)
    if not root:
        raise FeedParseError("unrecognised feed format: XML without a root element")
    element = root.group(1)
    if element == "alert":
        return "cap"
    if element in ("feed", "rss"):
        return "atom"
    raise FeedParseError(f"unrecognised feed format: XML with root <{element}> (expected CAP <alert>, "
                         "ATOM <feed> or RSS <rss>)")


def _sniff_json(text: str) -> str:
    if _NWS_TYPE.search(text):
        return "nws"
    if _DCSA_KEYS.search(text):
        return "dcsa"
    if _PORT_STATUS_KEYS.search(text):
        return "port_status"
    raise FeedParseError("unrecognised feed format: JSON that is neither NWS GeoJSON alerts, DCSA schedules or "
                         "events, nor port status notices")


def _sniff_table(text: str, name: str) -> str:
    first_line = text.split("\n", 1)[0].strip()
    columns = [c.strip().strip('"').lower() for c in first_line.split(",")]
    if columns[:6] == ["locode", "status", "reason", "from", "until", "source"] or \
            {"locode", "status", "from", "until"} <= set(columns):
        return "port_status"
    table = name.lower().removesuffix(".txt")
    if table in GTFS_STATIC_TABLES or GTFS_STATIC_COLUMNS & set(columns):
        raise FeedParseError(f"{name or 'this file'} is a static GTFS table, not a realtime feed: "
                             "load the whole GTFS folder or zip with `notifier import gtfs`")
    if len(columns) > 1:
        shown = ", ".join(columns[:4]) + (", ..." if len(columns) > 4 else "")
        raise FeedParseError(f"{name or 'this file'} is a CSV code list or reference table ({shown}), not a feed")
    raise FeedParseError(f"unrecognised feed format: {name or 'text'} starting {first_line[:40]!r}")


# --- parsing ----------------------------------------------------------------------------------------------------

def parse_any(data: bytes, format: str | None = None, source: str = "", filename: str = "",
              notes: list[str] | None = None) -> tuple[str, list[Observation]]:
    """Parse a feed body of the given format (sniffed when None or "auto"); return (format, observations).

    `notes`, when given, collects one-line remarks on what was read but left out (e.g. DCSA SHIPMENT events).
    """
    check_size(data, "feed body")
    chosen = sniff(data, filename) if format in (None, "", "auto") else format
    if chosen not in FORMATS:
        raise FeedParseError(f"unknown feed format {chosen!r}: use one of {', '.join(FORMATS)} or auto")
    parser = _parsers()[chosen]
    return chosen, check_storable(parser(data, source=source, notes=notes))


def _parsers() -> dict[str, Any]:
    # Imported here, not at the top, because every JSON parser imports this module's helpers.
    from notifier.feeds import atom
    from notifier.feeds import cap
    from notifier.feeds import dcsa
    from notifier.feeds import gtfs_rt
    from notifier.feeds import nws
    from notifier.feeds import port_status

    def cap_parse(data: bytes, source: str = "", notes: list[str] | None = None) -> list[Observation]:
        return cap.parse(data, source)

    return {"cap": cap_parse, "atom": atom.parse, "nws": nws.parse, "gtfs_rt": gtfs_rt.parse,
            "dcsa": dcsa.parse, "port_status": port_status.parse}
