"""Every feed parser, fed random bytes and mutated real documents, either reads them or raises FeedParseError.

What a parser returns must survive the trip to the database and back: strict JSON (no NaN or Infinity), the same
Observation again through `Observation.from_json`, every time timezone-aware, and (through `parse_any`, the
entry the watcher and CLI use) ids that fit the feed_items columns and text PostgreSQL can store.

The mutations start from the real documents under tests/fixtures/feeds/: bytes truncated, spliced, flipped and
repeated; XML entities, doctype tricks and invalid UTF-8 slipped in; times cut from their offsets; JSON values
swapped for wrong types, huge or non-finite numbers, deep nesting and bad escapes; protobuf fields set to
extremes and hostile text.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest
from google.protobuf import text_format
from google.transit import gtfs_realtime_pb2 as gtfs
from hypothesis import given
from hypothesis import strategies as st

from notifier.feeds import atom
from notifier.feeds import cap
from notifier.feeds import dcsa
from notifier.feeds import gtfs_rt
from notifier.feeds import nws
from notifier.feeds import port_status
from notifier.feeds import FeedParseError, Observation
from notifier.feeds.sniff import parse_any
from notifier.store.models import FeedItem
from tests.fuzz.budget import fuzz
from tests.fuzz.hostile import SNIPPETS, hostile_text

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
FIXTURES = {
    "cap": ["cap/oasis-spec/example1.xml", "cap/oasis-spec/example2.xml", "cap/oasis-spec/example3.xml",
            "cap/oasis-spec/example4.xml", "cap/google-cap-library/weather.cap",
            "cap/google-cap-library/earthquake.cap", "cap/google-cap-library/australia.cap"],
    "atom": ["cap/google-cap-library/weather.atom", "handmade/nws-legacy-cap-fields.atom", "handmade/cap-index.rss"],
    "nws": ["nws-geojson/pynws/alerts_active_zone.json", "handmade/nws-marine-small-craft.json",
            "nws-geojson/weather-gov-load-testing-ioc/active__status=actual.json"],
    "gtfs_rt": ["handmade/harbour-ferry-trip-updates.asciipb", "handmade/harbour-ferry-alerts.asciipb",
                "gtfs-rt/google-transit-spec/trip-updates-full.asciipb",
                "gtfs-rt/google-transit-spec/alerts.asciipb"],
    "dcsa": ["dcsa/ovs-300-response.json", "dcsa/tnt-220-response.json", "handmade/dcsa-ovs-delayed-call.json"],
    "port_status": ["handmade/port-status-notices.json", "handmade/port-status-notices.csv"],
}
PARSERS = {"cap": lambda data: cap.parse(data, source="fuzz"), "atom": atom.parse, "nws": nws.parse,
           "gtfs_rt": gtfs_rt.parse, "dcsa": dcsa.parse, "port_status": port_status.parse}
TIME_FIELDS = ("sent", "onset", "effective", "expires")


def _read(relative: str) -> bytes:
    data = (FEEDS / relative).read_bytes()
    if relative.endswith(".asciipb"):  # the binary wire form is what real GTFS-RT feeds publish
        data = text_format.Parse(data.decode(), gtfs.FeedMessage()).SerializeToString()
    return data


DOCUMENTS = {name: [_read(relative) for relative in files] for name, files in FIXTURES.items()}
TEXT_DOCUMENTS = {name: [(FEEDS / relative).read_bytes() for relative in files] for name, files in FIXTURES.items()}
ALL_DOCUMENTS = [doc for docs in DOCUMENTS.values() for doc in docs] + TEXT_DOCUMENTS["gtfs_rt"]


# --- what every parse must give -----------------------------------------------------------------------------------

def assert_storable_observation(observation: Observation) -> None:
    """Strict JSON, a faithful round trip, and timezone-aware times."""
    stored = observation.to_json()
    text = json.dumps(stored, allow_nan=False)  # NaN/Infinity are not JSON: PostgreSQL refuses them
    again = Observation.from_json(json.loads(text))
    assert again.to_json() == stored
    for name in TIME_FIELDS:
        moment = getattr(observation, name)
        assert moment is None or (isinstance(moment, datetime) and moment.utcoffset() is not None), name
        assert getattr(again, name) == moment


def reads_or_refuses(parse, data: bytes) -> list:
    """Run a parser: a one-line FeedParseError, or observations that pass `assert_storable_observation`."""
    try:
        observations = parse(data)
    except FeedParseError as exc:
        assert "\n" not in str(exc), "a feed error is shown as one line"
        return []
    for observation in observations:
        assert_storable_observation(observation)
    return observations


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def assert_fits_feed_items(observation: Observation) -> None:
    """What `pipeline.ingest` writes must fit the columns (PostgreSQL refuses an over-long varchar)."""
    columns = FeedItem.__table__.c
    for column, value in (("source", observation.source or observation.format), ("external_id",
                          observation.external_id), ("version", observation.version), ("format", observation.format),
                          ("kind", observation.kind), ("msg_type", observation.msg_type)):
        assert len(value) <= columns[column].type.length, f"{column} is {len(value)} characters"
    for text in _strings(observation.to_json()):
        assert "\x00" not in text, "PostgreSQL text cannot hold NUL"
        text.encode("utf-8")  # a lone surrogate (JSON "\ud800") cannot be stored or sent


# --- random bytes -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PARSERS))
@fuzz(60)
@given(body=st.binary(max_size=400))
def test_random_bytes_are_read_or_refused(name, body):
    reads_or_refuses(PARSERS[name], body)


@fuzz(60)
@given(body=st.binary(max_size=400), filename=st.sampled_from(["", "feed.xml", "x.pb", "stops.txt", "a.proto"]))
def test_random_bytes_through_sniffing_are_read_or_refused(body, filename):
    for observation in reads_or_refuses(lambda data: parse_any(data, filename=filename)[1], body):
        assert_fits_feed_items(observation)


# --- byte-level mutations of real documents -------------------------------------------------------------------------

INSERTS = [b"&lol;", b"&#0;", b"&#x110000;", b"&#xD800;", b"&amp;", b"]]>", b"<![CDATA[x]]>", b"<!-- -->",
           b'<!DOCTYPE alert [<!ENTITY e "x">]>', b'<!ENTITY x SYSTEM "file:///etc/passwd">', b"<?pi x?>",
           b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\xef\xbb\xbf", b"\\u0000", b"\\ud800",
           b"NaN", b"Infinity", b"1e400", b"-" + b"9" * 400, b"[" * 64, b"{", b"}", b'"', b",", b"\n", b"T00:00:00",
           b"+14:00", b"Z", b"\x0a\xff\xff\xff\xff\x0f", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"]
# XML declarations whose encoding Python cannot (or must not) read a document with.
ENCODINGS = [b"UTF-4", b"UEF-8", b"utf-8", b"UTF-16", b"shift_jis", b"utf-7", b"EBCDIC", b"cp037", b"idna", b"rot13",
             b"base64", b"punycode", b"undefined", b"latin-1", b"x" * 300, b""]
MUTATION = st.tuples(st.sampled_from(["truncate", "flip", "insert", "delete", "repeat", "splice", "offsetless",
                                      "declare"]),
                     st.integers(0, 2**16), st.integers(0, 255), st.sampled_from(INSERTS + ENCODINGS))


def mutate_bytes(data: bytes, mutations: list[tuple[str, int, int, bytes]], other: bytes) -> bytes:
    """Apply byte-level mutations; positions are taken modulo the current length so every one applies."""
    for kind, position, number, payload in mutations:
        at = position % (len(data) + 1)
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip" and data:
            at %= len(data)
            data = data[:at] + bytes([data[at] ^ (number or 1)]) + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + payload + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + number:]
        elif kind == "repeat":
            data = data[:at] + data[at:at + number] * 50 + data[at:]
        elif kind == "splice":
            data = data[:at] + other[position % (len(other) + 1):][:number * 8] + data[at + number:]
        elif kind == "declare":  # an XML declaration naming an encoding
            data = b'<?xml version="1.0" encoding="' + payload + b'"?>' + re.sub(rb"\A\s*<\?xml[^>]*\?>", b"", data)
        elif kind == "offsetless":  # every time loses its UTC offset: feeds must refuse, never guess
            data = re.sub(rb"(T\d\d:\d\d(?::\d\d(?:\.\d+)?)?)(?:Z|[+-]\d\d:?\d\d)", rb"\1", data)
    return data


@pytest.mark.parametrize("name", sorted(PARSERS))
@fuzz(80)
@given(data=st.data())
def test_mutated_real_documents_are_read_or_refused(name, data):
    document = data.draw(st.sampled_from(DOCUMENTS[name] + (TEXT_DOCUMENTS[name] if name == "gtfs_rt" else [])))
    other = data.draw(st.sampled_from(ALL_DOCUMENTS))
    body = mutate_bytes(document, data.draw(st.lists(MUTATION, min_size=1, max_size=4)), other)
    reads_or_refuses(PARSERS[name], body)
    for observation in reads_or_refuses(lambda d: parse_any(d, source="fuzz")[1], body):
        assert_fits_feed_items(observation)


@pytest.mark.parametrize("name", ["atom"])
@fuzz(80)
@given(data=st.data())
def test_mutated_index_feeds_list_entries_or_refuse(name, data):
    document = data.draw(st.sampled_from(DOCUMENTS[name]))
    body = mutate_bytes(document, data.draw(st.lists(MUTATION, min_size=1, max_size=4)),
                        data.draw(st.sampled_from(ALL_DOCUMENTS)))
    try:
        entries = atom.parse_index(body)
    except FeedParseError as exc:
        assert "\n" not in str(exc)
        return
    for entry in entries:
        assert entry.id and isinstance(entry.link, str)
        assert entry.updated is None or entry.updated.utcoffset() is not None


# --- JSON: wrong values in the right places ---------------------------------------------------------------------------

# A raw token stands for JSON text Python's json.dumps cannot write: it is pasted in after dumping.
RAW_TOKENS = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 5000, "1e-400", "-0",
              "[" * 3000 + "]" * 3000, '"\\u0000"', '"\\ud800"', '"a\\udc00b"', '"\\ud83d\\ude00"', "9" * 400,
              '"2025-09-24T02:20:00"', '"2025-09-24T02:20:00+99:00"', '"0001-01-01T00:00:00+14:00"',
              '"9999-12-31T23:59:59-14:00"', '"2025-02-30T00:00:00Z"', '"  2025-09-24T02:20:00Z  "']
WRONG_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
    hostile_text(max_pieces=3, long=3000), st.sampled_from(["HKHKG", "ARRI", "DEPA", "EST", "ACT", "PLN", "OMIT",
                                                             "TRANSPORT", "Feature", "Polygon", "closed", "Cancel"]),
    st.lists(st.integers(-200, 200), max_size=3), st.dictionaries(st.sampled_from(["type", "id", "a"]),
                                                                  st.integers(), max_size=2),
    st.sampled_from(RAW_TOKENS).map(lambda token: ("raw", token)))


def _paths(value, path=()):
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from _paths(item, path + (key,))


def mutate_json(document, data) -> bytes:
    """Replace, delete or deeply nest a few values of a parsed JSON document; return its text."""
    document, raws = copy.deepcopy(document), []
    for _ in range(data.draw(st.integers(1, 4))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "nest", "listify"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "nest":
            parent[path[-1]] = [[[[parent[path[-1]]]]]]
        elif action == "listify":
            parent[path[-1]] = [parent[path[-1]], parent[path[-1]]]
        else:
            value = data.draw(WRONG_VALUES)
            if isinstance(value, tuple):
                raws.append(value[1])
                value = f"@@raw{len(raws) - 1}@@"
            parent[path[-1]] = value
    text = json.dumps(document)
    for number, token in enumerate(raws):
        text = text.replace(f'"@@raw{number}@@"', token)
    return text.encode()


JSON_FORMATS = {name: [json.loads(doc) for doc in DOCUMENTS[name] if doc.lstrip()[:1] in (b"{", b"[")]
                for name in ("nws", "dcsa", "port_status")}


@pytest.mark.parametrize("name", sorted(JSON_FORMATS))
@fuzz(120)
@given(data=st.data())
def test_json_documents_with_wrong_values_are_read_or_refused(name, data):
    body = mutate_json(data.draw(st.sampled_from(JSON_FORMATS[name])), data)
    reads_or_refuses(PARSERS[name], body)
    for observation in reads_or_refuses(lambda d: parse_any(d, format=name, source="fuzz")[1], body):
        assert_fits_feed_items(observation)


# --- XML: elements with wrong text, removed, repeated, nested ---------------------------------------------------------

WRONG_XML_TEXT = st.one_of(
    hostile_text(max_pieces=3, long=3000),
    st.sampled_from(["", "2003-06-17T14:57:00", "2003-06-17T14:57:00+99:00", "0001-01-01T00:00:00+14:00",
                     "9999-12-31T23:59:59-14:00", "91,181 1,1 1,1 91,181", "1,2", "1,2 -5", "1,2 nan", "1,2 inf",
                     "1,2 1e400", "nan,nan 1,1 1,1 nan,nan", "1e400,0 0,0 0,0 1e400,0", "Retract", "Ack",
                     "a,b,c d,e,f", "Mon, 30 Aug 2012 02:37:00 GMT", "Mon, 99 Foo 2012", "x" * 1000]))


def mutate_xml(document: bytes, data) -> bytes:
    root = ET.fromstring(document)
    for _ in range(data.draw(st.integers(1, 4))):
        elements = list(root.iter())
        element = data.draw(st.sampled_from(elements))
        parent = next((p for p in root.iter() if element in list(p)), None)
        action = data.draw(st.sampled_from(["text", "text", "remove", "duplicate", "nest", "attribute"]))
        if action == "text":
            element.text = data.draw(WRONG_XML_TEXT)
        elif action == "remove" and parent is not None:
            parent.remove(element)
        elif action == "duplicate" and parent is not None:
            for _ in range(data.draw(st.integers(1, 30))):
                parent.append(copy.deepcopy(element))
        elif action == "nest":
            inner = element
            for _ in range(data.draw(st.integers(1, 200))):
                wrapper = ET.Element(element.tag)
                wrapper.append(inner)
                inner = wrapper
            if parent is not None:
                parent.remove(element)
                parent.append(inner)
        elif action == "attribute":
            element.set(data.draw(st.sampled_from(["href", "rel", "type", "lang"])), data.draw(WRONG_XML_TEXT))
    return ET.tostring(root)


XML_FORMATS = {name: DOCUMENTS[name] for name in ("cap", "atom")}


@pytest.mark.parametrize("name", sorted(XML_FORMATS))
@fuzz(120)
@given(data=st.data())
def test_xml_documents_with_wrong_elements_are_read_or_refused(name, data):
    body = mutate_xml(data.draw(st.sampled_from(XML_FORMATS[name])), data)
    reads_or_refuses(PARSERS[name], body)
    for observation in reads_or_refuses(lambda d: parse_any(d, source="fuzz")[1], body):
        assert_fits_feed_items(observation)
    if name == "atom":
        try:
            atom.parse_index(body)
        except FeedParseError:
            pass


# --- GTFS-RT: fields set to extremes and hostile text -----------------------------------------------------------------

UINT64 = st.sampled_from([0, 1, 2**31 - 1, 2**32, 253402300799, 253402300800, 2**62, 2**63 - 1, 2**64 - 1])
INT32 = st.sampled_from([-2**31, -86400 * 30, -1, 0, 29, 30, 2**31 - 1])
BAD_UTF8 = "QZQZ"
PROTO_TEXT = st.one_of(hostile_text(max_pieces=3, long=2000), st.just("\x00"), st.just(""))


def mutate_feed(feed: gtfs.FeedMessage, data) -> bytes:
    feed = copy.deepcopy(feed)
    for _ in range(data.draw(st.integers(1, 5))):
        action = data.draw(st.sampled_from(["header_time", "entity_id", "trip_time", "delay", "period", "text",
                                            "language", "deleted", "duplicate", "clear_header", "trip_id",
                                            "bad_utf8"]))
        entity = data.draw(st.sampled_from(list(feed.entity))) if len(feed.entity) else None
        if action == "header_time":
            feed.header.timestamp = data.draw(UINT64)
        elif action == "clear_header":
            feed.header.ClearField("gtfs_realtime_version")
        elif entity is None:
            continue
        elif action == "entity_id":
            entity.id = data.draw(PROTO_TEXT)
        elif action == "deleted":
            entity.is_deleted = True
        elif action == "duplicate":
            feed.entity.append(copy.deepcopy(entity))
        elif entity.HasField("trip_update"):
            update = entity.trip_update
            if action == "trip_time":
                update.timestamp = data.draw(UINT64)
            elif action == "trip_id":
                update.trip.trip_id = data.draw(PROTO_TEXT)
            elif action == "delay" and len(update.stop_time_update):
                stop = data.draw(st.sampled_from(list(update.stop_time_update)))
                stop.arrival.delay = data.draw(INT32)
                stop.departure.time = data.draw(st.integers(-2**63, 2**63 - 1))
            elif action == "delay":
                update.delay = data.draw(INT32)
        elif entity.HasField("alert"):
            alert = entity.alert
            if action == "period":
                period = alert.active_period.add()
                period.start, period.end = data.draw(UINT64), data.draw(UINT64)
            elif action in ("text", "language"):
                translation = alert.header_text.translation.add()
                translation.text = data.draw(PROTO_TEXT)
                translation.language = data.draw(PROTO_TEXT) if action == "language" else "en"
            elif action == "bad_utf8":  # the marker is swapped for bytes that are not UTF-8 once serialised
                translation = data.draw(st.sampled_from([alert.header_text, alert.description_text])).translation.add()
                translation.language, translation.text = data.draw(st.sampled_from([(BAD_UTF8, "x"), ("en", BAD_UTF8)]))
        elif action == "bad_utf8":
            entity.id = BAD_UTF8
    return feed.SerializePartialToString().replace(BAD_UTF8.encode(), b"\xffQZ\xfe")


GTFS_FEEDS = [gtfs.FeedMessage.FromString(doc) for doc in DOCUMENTS["gtfs_rt"]]


@fuzz(150)
@given(data=st.data())
def test_gtfs_rt_feeds_with_extreme_fields_are_read_or_refused(data):
    body = mutate_feed(data.draw(st.sampled_from(GTFS_FEEDS)), data)
    reads_or_refuses(gtfs_rt.parse, body)
    for observation in reads_or_refuses(lambda d: parse_any(d, source="fuzz")[1], body):
        assert_fits_feed_items(observation)
    try:
        gtfs_rt.feed_timestamp(body)
    except FeedParseError:
        pass


@fuzz(80)
@given(data=st.data())
def test_gtfs_rt_text_format_with_hostile_strings_is_read_or_refused(data):
    text = data.draw(st.sampled_from(TEXT_DOCUMENTS["gtfs_rt"])).decode()
    strings = re.findall(r'"(?:[^"\\]|\\.)*"', text)
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(strings))
        replacement = data.draw(st.one_of(st.sampled_from(['"\\000"', '"\\377\\376"', '"\\u0000"', '"', '"""',
                                                          '"' + "\\\\" * 50 + '"']),
                                          st.sampled_from(SNIPPETS).map(json.dumps)))
        text = text.replace(target, replacement, 1)
    reads_or_refuses(gtfs_rt.parse, text.encode())
