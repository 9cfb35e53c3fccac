"""Format recognition and parse_any: what `notifier feeds inspect FILE` does before it shows anything."""

from __future__ import annotations

import codecs
import re

import pytest
from click.testing import CliRunner

from cli import main
from notifier.feeds import FeedParseError, cap
from notifier.feeds.sniff import parse_any, sniff

REAL_FILES = {
    "cap/oasis-spec/example1.xml": "cap",
    "cap/google-cap-library/australia.cap": "cap",
    "cap/google-cap-library/weather.atom": "atom",
    "nws-geojson/pynws/alerts_active_zone.json": "nws",
    "gtfs-rt/google-transit-spec/alerts.asciipb": "gtfs_rt",
    "gtfs-rt/google-transit-spec/trip-updates-full.asciipb": "gtfs_rt",
    "gtfs-rt/transitland-lib/bart-trip-updates.pb": "gtfs_rt",
    "dcsa/ovs-300-response.json": "dcsa",
    "dcsa/tnt-220-response.json": "dcsa",
    "handmade/nws-legacy-cap-fields.atom": "atom",
    "handmade/cap-index.rss": "atom",
    "handmade/nws-marine-small-craft.json": "nws",
    "handmade/port-status-notices.csv": "port_status",
    "handmade/port-status-notices.json": "port_status",
    "handmade/harbour-ferry-trip-updates.asciipb": "gtfs_rt",
    "hko/warnsum-tc8ne-en.json": "hko_warnings",
    "hko/warnsum-tc8ne-tc.json": "hko_warnings",
    "hko/warnsum-cancel-en.json": "hko_warnings",
    "hko/warningInfo-tc8ne-tc.json": "hko_warnings",
    "handmade/smhi-cap-alerts.xml": "cap",
    "handmade/wmo-composer-undeclared-prefix.xml": "cap",
    "dcsa/tnt-300-request-transport.json": "dcsa",
    "handmade/dcsa-cs-100-vessel-schedules.json": "dcsa",
    "handmade/dcsa-cs-100-port-schedule.json": "dcsa",
}


@pytest.mark.parametrize("relative, expected", sorted(REAL_FILES.items()))
def test_each_real_feed_is_recognised_by_its_bytes_alone(feed_file, relative, expected):
    assert sniff(feed_file(relative)) == expected


def test_parse_any_names_the_format_it_found(feed_file):
    fmt, observations = parse_any(feed_file("dcsa/ovs-300-response.json"))
    assert fmt == "dcsa"
    assert [o.ports for o in observations] == [["NLAMS"], ["SGSIN"], ["USNYC"], ["USNYC"], ["NLAMS"]]


def test_parse_any_honours_an_explicit_format_and_refuses_an_unknown_one(feed_file):
    data = feed_file("handmade/port-status-notices.json")
    assert parse_any(data, format="port_status")[0] == "port_status"
    with pytest.raises(FeedParseError, match="unknown feed format 'geojson'"):
        parse_any(data, format="geojson")
    with pytest.raises(FeedParseError):
        parse_any(data, format="cap")  # JSON read as CAP: a clear parse error, not a crash


def test_notes_tell_what_was_left_out(feed_file):
    notes: list[str] = []
    parse_any(feed_file("dcsa/tnt-220-response.json"), notes=notes)
    assert notes == ["2 EQUIPMENT events left out: not relevant to sailings",
                     "3 SHIPMENT events left out: not relevant to sailings"]


@pytest.mark.parametrize("relative, reason", [
    ("dcsa/eventclassifiercodes.csv", "CSV code list or reference table"),
    ("dcsa/portcallstatuscodes-v300.csv", "CSV code list or reference table"),
    ("smdg/smdgdelayreasoncodes.csv", "CSV code list or reference table"),
    ("gtfs-rt/google-transit-spec/gtfs-realtime.proto", "Protocol Buffers schema"),
    ("handmade/gtfs-static/harbour-ferry/stops.txt", "static GTFS table"),
    ("handmade/gtfs-static/harbour-ferry/README.md", "unrecognised feed format"),
])
def test_files_that_are_not_feeds_are_refused_saying_what_they_are(feed_file, relative, reason):
    with pytest.raises(FeedParseError, match=re.escape(reason)):
        parse_any(feed_file(relative), filename=relative)


def test_the_proto_schema_is_refused_even_without_its_file_name(feed_file):
    with pytest.raises(FeedParseError, match="Protocol Buffers schema"):
        sniff(feed_file("gtfs-rt/google-transit-spec/gtfs-realtime.proto"))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty feed body"),
    (b"   \n", "empty feed body"),
    (b"<html><body>Service unavailable</body></html>", "XML with root <html>"),
    (b'{"status": "ok"}', "JSON that is neither"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data that is not a GTFS-Realtime"),
])
def test_unknown_bodies_are_refused_with_the_reason(data, reason):
    with pytest.raises(FeedParseError, match=re.escape(reason)):
        parse_any(data)


def test_invalid_utf8_in_a_text_format_is_a_parse_error_not_a_unicode_error():
    with pytest.raises(FeedParseError, match="not valid UTF-8"):
        parse_any(b'{"type": "FeatureCollection", "features": [], "title": "\xff\xfe"}')
    with pytest.raises(FeedParseError, match="not valid UTF-8"):
        parse_any(b"locode,status,reason,from,until,source\nHKHKG,closed,\xc3\x28,2025-01-01T00:00:00Z,,x\n")


# --- every file in the shared folder ------------------------------------------------------------------------------

# What each kind of non-feed file must be called when it is refused.
REFUSALS = [
    (r"PROVENANCE\.md$", "unrecognised feed format"),
    (r"\.csv$", "CSV code list or reference table"),
    (r"\.proto$", "Protocol Buffers schema"),
    (r"^gtfs-static/", "static GTFS table"),
    # The weather.gov capture has "date:now -235 seconds" placeholders where times belong (test_nws fills them).
    (r"weather-gov-load-testing-ioc/", "is not a date-time"),
]


def test_every_shared_file_parses_or_is_refused_clearly(shared_feeds):
    outcomes = {}
    for path in sorted(p for p in shared_feeds.rglob("*") if p.is_file()):
        relative = path.relative_to(shared_feeds).as_posix()
        try:
            fmt, observations = parse_any(path.read_bytes(), filename=path.name)
        except FeedParseError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 300, relative
            expected = next((reason for pattern, reason in REFUSALS if re.search(pattern, relative)), None)
            assert expected is not None, f"{relative} was refused but should parse: {message}"
            assert expected in message, f"{relative}: {message}"
            outcomes[relative] = "refused"
        else:
            assert not any(re.search(pattern, relative) for pattern, _ in REFUSALS), f"{relative} parsed as {fmt}"
            assert observations, f"{relative} parsed as {fmt} but gave no observation"
            outcomes[relative] = fmt
    assert outcomes["cap/capparselib/NOAA_MultiplePolygons.txt"] == "cap"  # CAP despite the .txt name
    assert outcomes["gtfs-rt/transitland-lib/bart-alerts.pb"] == "gtfs_rt"
    assert sum(1 for o in outcomes.values() if o != "refused") >= 18


# --- issue 16: text in UTF-16 or UTF-32, and files that are no feed -----------------------------------------------

def _encoded(data: bytes, codec: str) -> bytes:
    """The same document in another encoding, with a byte-order mark (and its XML declaration saying so)."""
    text = data.decode("utf-8-sig").replace('encoding="UTF-8"', f'encoding="{codec.upper()[:6]}"')
    mark = {"utf-16-be": codecs.BOM_UTF16_BE, "utf-32-be": codecs.BOM_UTF32_BE}.get(codec, b"")
    return mark + text.encode(codec)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
@pytest.mark.parametrize("relative", ["cap/oasis-spec/example1.xml", "nws-geojson/pynws/alerts_active_zone.json",
                                      "handmade/port-status-notices.csv",
                                      "handmade/harbour-ferry-trip-updates.asciipb"])
def test_a_utf16_or_utf32_feed_reads_as_its_utf8_original(feed_file, relative, codec):
    original = feed_file(relative)
    expected = parse_any(original)
    assert parse_any(_encoded(original, codec)) == expected


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_a_utf16_cap_is_read_alike_by_feeds_inspect_and_demo(feed_file, tmp_path, codec):
    original = feed_file("cap/oasis-spec/example1.xml")
    (tmp_path / "alert.xml").write_bytes(_encoded(original, codec))
    (tmp_path / "original.xml").write_bytes(original)
    shown = CliRunner().invoke(main, ["feeds", "inspect", str(tmp_path / "alert.xml")], env={"NOTIFIER_CONFIG": ""})
    assert shown.exit_code == 0, shown.output
    assert shown.output == CliRunner().invoke(main, ["feeds", "inspect", str(tmp_path / "original.xml")],
                                              env={"NOTIFIER_CONFIG": ""}).output
    assert cap.parse(_encoded(original, codec)) == cap.parse(original)  # what `demo --feed` reads with


@pytest.mark.parametrize("body, shown", [
    (b"root:$6$s3cr3t.hash.of.the.root.password:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n",
     "not a feed format notifier reads (its first bytes are not XML, JSON, CSV or protobuf)"),
    (b"user,password,api_key\nadmin,hunter2,s3cr3t\n", "CSV code list or reference table (3 columns"),
])
def test_feeds_inspect_of_a_file_that_is_no_feed_does_not_echo_it(tmp_path, body, shown):
    path = tmp_path / "shadow"
    path.write_bytes(body)
    result = CliRunner().invoke(main, ["feeds", "inspect", str(path)], env={"NOTIFIER_CONFIG": ""})
    assert result.exit_code == 2
    assert shown in result.output and "Traceback" not in result.output
    assert not {"s3cr3t", "hunter2", "api_key", "daemon"} & set(re.findall(r"\w+", result.output))
