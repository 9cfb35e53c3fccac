"""Feeds are untrusted: every hostile or broken body must end as one FeedParseError, never another exception.

A watcher that met any other exception type would log a traceback instead of recording a feed error; these
tests feed every parser the classic attacks (XML bombs, external entities, oversized bodies) and the everyday
breakage (truncation, bad encodings, times without offsets), then let Hypothesis throw random shapes at them.
"""

from __future__ import annotations

import copy
import json
import random
import xml.etree.ElementTree as ET

import pytest
from google.protobuf import text_format
from google.transit import gtfs_realtime_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.feeds import atom
from notifier.feeds import cap
from notifier.feeds import dcsa
from notifier.feeds import gtfs_rt
from notifier.feeds import nws
from notifier.feeds import port_status
from notifier.feeds import FeedParseError, MAX_FEED_BYTES
from notifier.feeds.sniff import parse_any

PARSERS = {"cap": cap.parse, "atom": atom.parse, "nws": nws.parse, "dcsa": dcsa.parse,
           "port_status": port_status.parse, "gtfs_rt": gtfs_rt.parse}
XML_ROOTS = {"cap": "alert", "atom": "feed"}


def billion_laughs(root: str) -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{("&lol%d;" % (n - 1)) * 10}">' for n in range(1, 10)]
    return (f'<?xml version="1.0"?><!DOCTYPE {root} [{"".join(entities)}]>'
            f"<{root}><identifier>&lol9;</identifier></{root}>").encode()


def external_entity(root: str) -> bytes:
    return (f'<?xml version="1.0"?><!DOCTYPE {root} [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            f"<{root}><identifier>&xxe;</identifier></{root}>").encode()


GOOD = {
    "cap": "cap/oasis-spec/example2.xml",
    "atom": "handmade/nws-legacy-cap-fields.atom",
    "nws": "nws-geojson/pynws/alerts_active_zone.json",
    "dcsa": "dcsa/ovs-300-response.json",
    "port_status": "handmade/port-status-notices.json",
    "gtfs_rt": "handmade/harbour-ferry-trip-updates.asciipb",
}
# One time in each good file, and the same time with its offset cut off.
OFFSETS = {
    "cap": (b"2003-06-17T14:57:00-07:00", b"2003-06-17T14:57:00"),
    "atom": (b"2024-11-21T02:44:00-08:00", b"2024-11-21T02:44:00"),
    "nws": (b"2019-12-20T13:34:00-08:00", b"2019-12-20T13:34:00"),
    "dcsa": (b"2024-01-14T09:21:00+01:00", b"2024-01-14T09:21:00"),
    "port_status": (b"2025-09-24T20:40:00+08:00", b"2025-09-24T20:40:00"),
}
# Text inside each good file where a byte that is not UTF-8 is slipped in.
TEXT = {"cap": b"SEVERE THUNDERSTORM", "atom": b"Small Craft", "nws": b"Flood Watch", "dcsa": b"King of the Seas",
        "port_status": b"Typhoon signal", "gtfs_rt": b"MW-0800"}


def binary_trip_updates(feed_file) -> bytes:
    text = feed_file(GOOD["gtfs_rt"]).decode()
    return text_format.Parse(text, gtfs_realtime_pb2.FeedMessage()).SerializeToString()


@pytest.mark.parametrize("name", sorted(XML_ROOTS))
def test_xml_bombs_and_external_entities_are_refused(name):
    for attack in (billion_laughs(XML_ROOTS[name]), external_entity(XML_ROOTS[name])):
        with pytest.raises(FeedParseError, match="unsafe XML"):
            PARSERS[name](attack)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_parser_refuses_xml_attacks_whatever_it_expects(name):
    for attack in (billion_laughs("alert"), external_entity("feed")):
        with pytest.raises(FeedParseError):
            PARSERS[name](attack)
        with pytest.raises(FeedParseError):
            parse_any(attack, format=name)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_a_six_megabyte_body_is_refused_before_parsing(name):
    body = b"[" + b" " * 6_000_000 + b"]"
    with pytest.raises(FeedParseError, match=f"over the {MAX_FEED_BYTES}-byte limit"):
        PARSERS[name](body)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_a_truncated_document_is_refused(name, feed_file):
    data = binary_trip_updates(feed_file) if name == "gtfs_rt" else feed_file(GOOD[name])
    PARSERS[name](data)  # the whole file is fine
    for cut in (len(data) * 2 // 3, len(data) - 7):
        with pytest.raises(FeedParseError):
            PARSERS[name](data[:cut])


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_invalid_utf8_is_a_parse_error(name, feed_file):
    data = binary_trip_updates(feed_file) if name == "gtfs_rt" else feed_file(GOOD[name])
    assert TEXT[name] in data
    broken = data.replace(TEXT[name], TEXT[name][:2] + b"\xff\xfe" + TEXT[name][4:], 1)
    with pytest.raises(FeedParseError):
        PARSERS[name](broken)


@pytest.mark.parametrize("name", sorted(OFFSETS))
def test_a_time_without_its_utc_offset_is_refused_not_guessed(name, feed_file):
    data = feed_file(GOOD[name])
    with_offset, without = OFFSETS[name]
    assert with_offset in data
    with pytest.raises(FeedParseError, match="no UTC offset"):
        PARSERS[name](data.replace(with_offset, without, 1))


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_garbage_bytes_are_refused(name):
    rng = random.Random(20250924)
    for size in (1, 16, 300, 5000):
        with pytest.raises(FeedParseError):
            PARSERS[name](bytes(rng.getrandbits(8) for _ in range(size)))


@pytest.mark.parametrize("name", ["nws", "dcsa", "port_status"])
@pytest.mark.parametrize("body, reason", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[" + b"1" * 5000 + b"]", "not usable JSON"),
    (b"[NaN]", "constant NaN is not allowed"),
    (b'{"a": 1', "not valid JSON"),
])
def test_json_tricks_are_refused(name, body, reason):
    with pytest.raises(FeedParseError, match=reason):
        PARSERS[name](body)


# --- random shapes ----------------------------------------------------------------------------------------------

KEYS = ["type", "features", "properties", "geometry", "coordinates", "geometries", "id", "identifier", "sent",
        "onset", "expires", "ends", "effective", "messageType", "references", "sender", "geocode", "event",
        "affectedZones", "parameters", "category", "areaDesc", "language", "severity",
        "carrierServiceCode", "vesselSchedules", "transportCalls", "timestamps", "eventDateTime", "eventTypeCode",
        "eventClassifierCode", "delayReasonCode", "location", "UNLocationCode", "statusCode", "vesselIMONumber",
        "eventType", "eventID", "eventCreatedDateTime", "transportCall", "vessel", "transportEventTypeCode",
        "notices", "locode", "status", "reason", "from", "until", "source", "updated"]
LEAVES = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=12)
          | st.sampled_from(["2025-09-24T02:20:00+08:00", "2025-09-24T02:20:00", "HKHKG", "ARRI", "DEPA", "PLN",
                             "EST", "ACT", "TRANSPORT", "SHIPMENT", "Feature", "FeatureCollection", "Polygon",
                             "MultiPolygon", "GeometryCollection", "closed", "Update", "0001-01-01T00:00:00+01:00"]))
JSON_VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4), max_leaves=8)
FEATURES = st.fixed_dictionaries({"type": st.just("Feature"), "geometry": JSON_VALUES,
                                  "properties": st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=8)})
SHAPES = {
    "nws": st.fixed_dictionaries({"type": st.just("FeatureCollection"), "features": st.lists(FEATURES, max_size=3)}),
    "dcsa": st.lists(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=8), max_size=3),
    "port_status": st.lists(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=8), max_size=3),
}


def _parses_or_refuses(name: str, data: bytes) -> None:
    try:
        observations = PARSERS[name](data)
    except FeedParseError as exc:
        assert "\n" not in str(exc)
    else:
        for observation in observations:
            json.dumps(observation.to_json())  # what the pipeline stores must be plain JSON


@pytest.mark.parametrize("name", sorted(SHAPES))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_json_shapes_only_ever_raise_feed_parse_error(name, data):
    _parses_or_refuses(name, json.dumps(data.draw(SHAPES[name])).encode())


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=300))
def test_random_bytes_only_ever_raise_feed_parse_error(name, body):
    _parses_or_refuses(name, body)


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=200))
def test_random_protobuf_after_a_valid_header_only_ever_raises_feed_parse_error(body):
    header = b"\x0a\x07\x0a\x032.0\x10\x00"
    _parses_or_refuses("gtfs_rt", header + body)


# --- real documents with a few values swapped for wrong ones ------------------------------------------------------

WRONG_VALUES = [None, True, 0, -1, 1.5, 10**30, "", "x", "2025-01-01T00:00:00", "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59-01:00", [], {}, [1], {"a": 1}, [[1, 2]], [[[1, 2]]], "HKHKG", "ARRI", "EST"]
WRONG_TEXTS = ["", "x", "2025-01-01T00:00:00", "0001-01-01T00:00:00+01:00", "91,181 1,1 1,1 91,181", "1,2",
               "1,2 -5", "nan,nan 1,1 1,1 nan,nan", "Retract", "1e400,0 0,0 0,0 1e400,0", "\u00e9\u4e2d"]
MUTATED = {"nws": ["nws-geojson/pynws/alerts_active_zone.json", "handmade/nws-marine-small-craft.json"],
           "dcsa": ["dcsa/ovs-300-response.json", "dcsa/tnt-220-response.json", "handmade/dcsa-ovs-delayed-call.json"],
           "port_status": ["handmade/port-status-notices.json"],
           "cap": ["cap/oasis-spec/example2.xml", "cap/oasis-spec/example4.xml"],
           "atom": ["cap/google-cap-library/weather.atom", "handmade/nws-legacy-cap-fields.atom"]}


def _json_paths(value, path=()):
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in children:
        yield from _json_paths(item, path + (key,))


def _mutate_json(document, rng: random.Random):
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(_json_paths(document)))
        if not path:
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = copy.deepcopy(rng.choice(WRONG_VALUES))
    return json.dumps(document).encode()


def _mutate_xml(data: bytes, rng: random.Random) -> bytes:
    root = ET.fromstring(data)
    elements = list(root.iter())
    for _ in range(rng.randint(1, 3)):
        rng.choice(elements).text = rng.choice(WRONG_TEXTS)
    return ET.tostring(root)


@pytest.mark.parametrize("name", sorted(MUTATED))
def test_real_documents_with_wrong_values_only_ever_raise_feed_parse_error(name, feed_file):
    rng = random.Random(f"mutate-{name}")
    for relative in MUTATED[name]:
        original = feed_file(relative)
        for _ in range(100):
            if name in ("cap", "atom"):
                body = _mutate_xml(original, rng)
            else:
                body = _mutate_json(json.loads(original), rng)
            _parses_or_refuses(name, body)


def test_a_geometry_nested_hundreds_deep_is_refused_not_a_crash():
    geometry = {"type": "MultiPolygon", "coordinates": [[[[114.0, 22.0], [114.1, 22.0], [114.1, 22.1], [114.0, 22.0]]]]}
    for _ in range(300):
        geometry = {"type": "GeometryCollection", "geometries": [geometry]}
    data = json.dumps({"type": "Feature", "geometry": geometry,
                       "properties": {"id": "deep-1", "sent": "2025-09-01T00:00:00Z"}}).encode()
    with pytest.raises(FeedParseError, match="nws feed is nested too deeply to be stored"):
        parse_any(data)
