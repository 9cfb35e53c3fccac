"""GTFS-Realtime trip updates and service alerts: late, cancelled and skipping ferries, and operator notices."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from google.protobuf import text_format
from google.transit import gtfs_realtime_pb2

from notifier.feeds import gtfs_rt
from notifier.feeds import FeedParseError

TRIP_UPDATES = "handmade/harbour-ferry-trip-updates.asciipb"
ALERTS = "handmade/harbour-ferry-alerts.asciipb"
FEED_TIME = datetime(2025, 9, 29, 0, 0, tzinfo=UTC)  # 08:00 in Hong Kong


def binary(text_feed: bytes) -> bytes:
    """The binary protobuf a real server would send for a text-format feed."""
    return text_format.Parse(text_feed.decode(), gtfs_realtime_pb2.FeedMessage()).SerializeToString()


def test_late_skipping_and_cancelled_ferries(feed_file):
    notes: list[str] = []
    late, skipping, cancelled = gtfs_rt.parse(feed_file(TRIP_UPDATES), source="harbour-ferry", notes=notes)
    assert late.kind == "trip_update" and late.source == "harbour-ferry"
    assert late.sailings == ["MW-0800"] and late.routes == ["MW"] and late.ports == []
    assert late.fields["delay_minutes"] == 25  # the worse of 20 min leaving and 25 min arriving
    assert late.event == "Trip delayed"
    assert late.fields["stops"] == ["MWO", "CEN6"]
    assert skipping.fields["skipped_stops"] == ["MWO"]
    assert skipping.fields["delay_minutes"] == 5
    assert skipping.event == "Stops skipped"
    assert cancelled.fields["schedule_relationship"] == "CANCELED"
    assert cancelled.event == "Trip canceled"
    assert "delay_minutes" not in cancelled.fields
    assert len({o.version for o in (late, skipping, cancelled)}) == 3  # one digest per entity's content
    assert late.sent == FEED_TIME
    assert notes == ["1 vehicle entities left out: not relevant to disruptions"]


def test_binary_and_text_forms_give_the_same_observations(feed_file):
    text_feed = feed_file(TRIP_UPDATES)
    assert gtfs_rt.parse(binary(text_feed)) == gtfs_rt.parse(text_feed)


def test_alert_in_english_with_every_translation_kept(feed_file):
    [alert] = gtfs_rt.parse(feed_file(ALERTS))
    assert alert.kind == "service_alert" and alert.external_id == "typhoon-ragasa"
    assert alert.fields["cause"] == "WEATHER" and alert.fields["effect"] == "NO_SERVICE"
    assert alert.event == "NO_SERVICE"
    assert alert.severity == "Severe"
    # English is primary even though Chinese is listed first.
    assert alert.headline == "Typhoon signal: ferry services suspended" and alert.language == "en"
    assert alert.texts["zh-CN"] == {"headline": "台风信号：渡轮停航", "description": "八号风球生效期间，所有渡轮停航。"}
    assert alert.onset == datetime(2025, 9, 28, 22, 0, tzinfo=UTC)
    assert alert.expires == datetime(2025, 9, 29, 12, 0, tzinfo=UTC)
    assert len(alert.fields["active_periods"]) == 2
    assert alert.routes == ["MW", "CC"] and alert.sailings == ["MW-0800"]
    assert alert.fields["stops"] == ["CCH"] and alert.fields["agencies"] == ["HF"]
    assert {"route_id": "CC", "stop_id": "CCH"} in alert.fields["informed_entities"]
    assert alert.fields["url"] == "https://ferry.example.org/notices"


def test_the_specification_examples_parse(feed_file):
    [alert] = gtfs_rt.parse(feed_file("gtfs-rt/google-transit-spec/alerts.asciipb"))
    assert (alert.fields["cause"], alert.fields["effect"]) == ("CONSTRUCTION", "DETOUR")
    assert alert.routes == ["219", "100"] and alert.fields["stops"] == ["16230", "16299"]
    assert alert.headline.startswith("Stop at Elm street is closed")
    assert alert.onset == datetime.fromtimestamp(1284457468, UTC)
    simple, frequency = gtfs_rt.parse(feed_file("gtfs-rt/google-transit-spec/trip-updates-full.asciipb"))
    assert simple.sailings == ["trip-1"]
    assert simple.fields["delay_minutes"] == 0  # 5 seconds late is on time
    assert simple.fields["stops"] == ["stop_sequence:3", "stop_sequence:8", "stop_sequence:10"]
    assert frequency.fields["start_time"] == "11:15:35"
    assert frequency.fields["delay_seconds"] == -2


def test_real_bart_trip_updates(feed_file):
    updates = gtfs_rt.parse(feed_file("gtfs-rt/transitland-lib/bart-trip-updates.pb"), source="bart")
    assert len(updates) == 91
    assert Counter(u.fields["schedule_relationship"] for u in updates) == {"SCHEDULED": 83, "ADDED": 8}
    first = updates[0]
    assert first.sailings == ["1011112WKDY"] and first.routes == []
    assert first.fields["delay_minutes"] == 1  # 74 seconds at FTVL
    assert first.version.startswith("sha256:") and first.sent.isoformat() == "2019-08-07T17:45:21+00:00"


def test_real_bart_alert_without_active_period(feed_file):
    [alert] = gtfs_rt.parse(feed_file("gtfs-rt/transitland-lib/bart-alerts.pb"))
    assert alert.fields["cause"] == "MEDICAL_EMERGENCY" and alert.event == "SIGNIFICANT_DELAYS"
    assert alert.fields["agencies"] == ["BART"]
    assert alert.onset is None and alert.expires is None and alert.fields["active_periods"] == []
    assert alert.language == "en-US" and "Montgomery" in alert.headline


def test_feed_timestamp_for_the_backwards_clock_check(feed_file):
    assert gtfs_rt.feed_timestamp(feed_file(TRIP_UPDATES)) == FEED_TIME
    assert gtfs_rt.feed_timestamp(binary(feed_file(ALERTS))) == FEED_TIME
    no_time = binary(b'header { gtfs_realtime_version: "2.0" }')
    with pytest.raises(FeedParseError, match="no timestamp"):
        gtfs_rt.feed_timestamp(no_time)


def test_the_version_follows_the_content_not_the_publication_time():
    feed = b'header { gtfs_realtime_version: "2.0" } entity { id: "a" trip_update { trip { trip_id: "t" } } }'
    changed = feed.replace(b'trip_id: "t"', b'trip_id: "t" schedule_relationship: CANCELED')
    republished = feed.replace(b'"2.0" }', b'"2.0" timestamp: 1759104000 }')
    [before], [again], [after] = gtfs_rt.parse(feed), gtfs_rt.parse(republished), gtfs_rt.parse(changed)
    assert before.version == again.version != after.version
    assert before.version.startswith("sha256:")


def test_a_deleted_entity_cancels_itself():
    feed = b'header { gtfs_realtime_version: "2.0" incrementality: DIFFERENTIAL timestamp: 1759104000 } ' \
           b'entity { id: "old-alert" is_deleted: true alert { } }'
    [withdrawn] = gtfs_rt.parse(feed, source="harbour-ferry")
    assert withdrawn.msg_type == "Cancel" and withdrawn.references == ["harbour-ferry,old-alert"]


@pytest.mark.parametrize("data, reason", [
    (b"\x0a\x05\x0a\x03", "not a valid protobuf FeedMessage"),  # truncated
    (b"\xff" * 40, "not a valid protobuf FeedMessage"),
    (b"", "lacks its required header"),
    (b"\x12\x03\x0a\x01a", "lacks its required header"),  # an entity but no header
    (b'header { gtfs_realtime_version: "2.0" colour: 3 }', "text format is invalid"),
    (b'header { gtfs_realtime_version: "2.0" timestamp: 99999999999999 }', "not a plausible POSIX time"),
    (b'header { gtfs_realtime_version: "2.0" } entity { trip_update { trip { } } }',
     r"required field\(s\): entity\[0\].id"),
    (b'header { gtfs_realtime_version: "2.0" } entity { id: "" trip_update { trip { } } }', "entity has no id"),
])
def test_broken_feeds_are_refused_with_the_reason(data, reason):
    with pytest.raises(FeedParseError, match=reason):
        gtfs_rt.parse(data)
