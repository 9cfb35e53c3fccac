"""Recognise a feed's format from its bytes and hand the body to that format's parser. Pure: no I/O.

`sniff` looks only at the first bytes (and the file name as a hint), so it is cheap and never parses a whole
untrusted document twice; the chosen parser then does the strict reading. Files that are not feeds at all (code
lists, the GTFS-RT .proto schema, static GTFS tables) are refused with a reason that says what they are.

This module is the registry: it imports every parser (and feeds.reading, which they share); no parser imports it.
"""

from __future__ import annotations

import re
from typing import Protocol

from notifier.feeds import FeedParseError, Observation, check_storable
from notifier.feeds import atom, cap, dcsa, gtfs_rt, hko, nws, port_status
from notifier.feeds.gtfs_rt import GTFS_RT_TEXT
from notifier.feeds.reading import check_size, text_encoding

FORMATS = ("cap", "atom", "nws", "gtfs_rt", "dcsa", "port_status", "hko_warnings")
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
_PROTO_SCHEMA = re.compile(r"^\s*(?:syntax\s*=|package\s+[\w.]+\s*;|message\s+\w+\s*\{)", re.MULTILINE)
_NWS_TYPE = re.compile(r'"type"\s*:\s*"Feature(?:Collection)?"')
_DCSA_KEYS = re.compile(r'"(?:vesselSchedules|transportCalls|carrierServiceCode|transportEventTypeCode'
                        r'|eventClassification)"|"eventType"\s*:\s*"(?:TRANSPORT|SHIPMENT|EQUIPMENT)"')
# warnsum entries carry an actionCode, warningInfo details a warningStatementCode.
_HKO_KEYS = re.compile(r'"(?:actionCode|warningStatementCode)"\s*:')
# A CAP <alert> inside some wrapper (<alerts>, <feed> of a met service): any element named alert after the root.
_CAP_INSIDE = re.compile(r"<(?:[\w.-]+:)?alert[\s>]")
_PORT_STATUS_KEYS = re.compile(r'"(?:notices|locode)"\s*:')


# --- sniffing ---------------------------------------------------------------------------------------------------

def sniff(data: bytes, filename: str = "") -> str:
    """Name the format of a feed body: one of FORMATS; refuse anything else."""
    if not data.strip():
        raise FeedParseError("empty feed body: nothing to parse")
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if name.lower().endswith(".proto"):
        raise FeedParseError(f"{name} is a Protocol Buffers schema (.proto), not a feed")
    head = data[:SNIFF_BYTES]
    codec = text_encoding(head)  # UTF-16 and UTF-32 text is full of NUL bytes: its byte-order mark says it is text
    if name.lower().endswith(".pb") or (codec == "utf-8-sig" and _looks_binary(head)):
        return _sniff_binary(head, name)
    text = head.decode(codec, errors="replace").lstrip()
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
    if _CAP_INSIDE.search(text, root.end()):
        return "cap"
    raise FeedParseError(f"unrecognised feed format: XML with root <{element}> (expected CAP <alert>, "
                         "ATOM <feed> or RSS <rss>)")


def _sniff_json(text: str) -> str:
    if _NWS_TYPE.search(text):
        return "nws"
    if _HKO_KEYS.search(text):
        return "hko_warnings"
    if _DCSA_KEYS.search(text):
        return "dcsa"
    if _PORT_STATUS_KEYS.search(text):
        return "port_status"
    raise FeedParseError("unrecognised feed format: JSON that is neither NWS GeoJSON alerts, DCSA schedules or "
                         "events, Hong Kong Observatory warnings, nor port status notices")


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
    # Neither message quotes the file: `feeds inspect /etc/shadow` must not print the first line of a secret.
    if len(columns) > 1:
        raise FeedParseError(f"{name or 'this file'} is a CSV code list or reference table ({len(columns)} columns, "
                             "none of them a port status notice's), not a feed")
    raise FeedParseError(f"unrecognised feed format: {name or 'this file'} is not a feed format notifier reads "
                         "(its first bytes are not XML, JSON, CSV or protobuf)")


# --- parsing ----------------------------------------------------------------------------------------------------

class Parser(Protocol):
    """What every format's parser is: bytes in, observations out, remarks on what it left out into `notes`."""

    def __call__(self, data: bytes, source: str = "", notes: list[str] | None = None) -> list[Observation]: ...


PARSERS: dict[str, Parser] = {"cap": cap.parse, "atom": atom.parse, "nws": nws.parse, "gtfs_rt": gtfs_rt.parse,
                              "dcsa": dcsa.parse, "port_status": port_status.parse, "hko_warnings": hko.parse}


def parse_any(data: bytes, format: str | None = None, source: str = "", filename: str = "",
              notes: list[str] | None = None) -> tuple[str, list[Observation]]:
    """Parse a feed body of the given format (sniffed when None or "auto"); return (format, observations).

    `notes`, when given, collects one-line remarks on what was read but left out (e.g. DCSA SHIPMENT events).
    """
    check_size(data, "feed body")
    chosen = sniff(data, filename) if format in (None, "", "auto") else format
    if chosen not in FORMATS:
        raise FeedParseError(f"unknown feed format {chosen!r}: use one of {', '.join(FORMATS)} or auto")
    try:
        return chosen, check_storable(PARSERS[chosen](data, source=source, notes=notes))
    except RecursionError:
        # JSON nested a few hundred levels deep loads, but storing it (dataclasses.asdict) recurses once per level.
        raise FeedParseError(f"{chosen} feed is nested too deeply to be stored") from None
