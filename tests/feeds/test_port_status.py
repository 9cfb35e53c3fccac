"""Port authority notices in notifier's own CSV / JSON format: closed, restricted and reopened ports."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from notifier.feeds import port_status
from notifier.feeds import FeedParseError

HEADER = b"locode,status,reason,from,until,source\n"


def test_csv_notices_close_restrict_and_reopen_ports(feed_file):
    closed, restricted, reopened = port_status.parse(feed_file("handmade/port-status-notices.csv"), source="ops")
    assert closed.kind == "port_status" and closed.format == "port_status"
    assert closed.ports == ["HKHKG"] and closed.event == "Port closed" and closed.severity == "Severe"
    assert closed.source == "Hong Kong Marine Department"
    assert closed.onset == datetime(2025, 9, 23, 18, 20, tzinfo=UTC)
    assert closed.expires == datetime(2025, 9, 24, 8, 10, tzinfo=UTC)
    assert closed.headline == "HKHKG closed: Typhoon signal No. 8 in force"
    assert restricted.fields == {"status": "restricted", "reason": "Fog: daylight berthing only, pilots required",
                                 "from": "2025-09-24T00:00:00+00:00", "until": None}
    assert restricted.expires is None  # until further notice
    assert restricted.severity == "Moderate"
    assert reopened.fields["status"] == "open" and reopened.event == "Port open"
    assert reopened.external_id != closed.external_id


def test_json_notices_with_ids_and_updated_times(feed_file):
    typhoon, macau = port_status.parse(feed_file("handmade/port-status-notices.json"), source="ops-desk")
    assert typhoon.external_id == "MD-2025-0917"
    assert typhoon.version == "2025-09-24T01:00:00+00:00"
    assert typhoon.sent == datetime(2025, 9, 24, 1, 0, tzinfo=UTC)
    assert macau.source == "ops-desk"  # no source in the notice: the feed's name
    assert macau.external_id == "MOMFM@2025-09-23T22:00:00+00:00"
    assert macau.expires is None


def test_a_notice_keeps_its_identity_and_gets_a_new_version_when_it_changes():
    notice = HEADER + b"CNSHK,restricted,Fog,2025-09-24T00:00:00Z,2025-09-24T06:00:00Z,MSA\n"
    [before], [again] = port_status.parse(notice), port_status.parse(notice)
    [extended] = port_status.parse(notice.replace(b"06:00:00Z", b"09:00:00Z"))
    assert before.version == again.version
    assert extended.external_id == before.external_id and extended.version != before.version


def test_lower_case_locode_and_status_are_accepted():
    [notice] = port_status.parse(HEADER + b"hkhkg,Closed,,2025-09-24T00:00:00Z,,\n", source="ops")
    assert notice.ports == ["HKHKG"] and notice.fields["status"] == "closed" and notice.source == "ops"


@pytest.mark.parametrize("row, reason", [
    (b"HKHK1,closed,,2025-09-24T00:00:00Z,,", "locode 'HKHK1' is not a UN/LOCODE"),
    (b"HONGKONG,closed,,2025-09-24T00:00:00Z,,", "is not a UN/LOCODE"),
    (b"HKHKG,shut,,2025-09-24T00:00:00Z,,", "status 'shut' is not open, restricted or closed"),
    (b"HKHKG,closed,,,,", "'from' (when the status starts) is required"),
    (b"HKHKG,closed,,2025-09-24T08:00:00,,", "has no UTC offset"),
    (b"HKHKG,closed,,24/09/2025 08:00,,", "is not a date-time"),
    (b"HKHKG,closed,,2025-09-24T08:00:00Z,2025-09-24T07:00:00Z,", "'until' 2025-09-24T07:00:00Z is before"),
])
def test_bad_csv_rows_are_refused_naming_the_line(row, reason):
    with pytest.raises(FeedParseError, match=r"CSV line 2: .*" + re.escape(reason)):
        port_status.parse(HEADER + row + b"\n")


@pytest.mark.parametrize("data, reason", [
    (b"locode,status,from\nHKHKG,closed,2025-09-24T00:00:00Z\n", "lacks the column(s) reason, until, source"),
    (HEADER + b'HKHKG,closed,"' + b"x" * 200_000 + b'",2025-09-24T00:00:00Z,,\n', "CSV is malformed"),
    (HEADER + b"HKHKG,closed,Typhoon,2025-09-24T00:00:00Z", "line 2 has fewer columns than the header"),
    (b'{"notices": {"locode": "HKHKG"}}', 'must be a list of notices or {"notices": [...]}'),
    (b'[{"locode": "HKHKG", "status": "closed", "from": 20250924}]', "from should be text"),
    (b'["HKHKG closed"]', "is not an object"),
])
def test_malformed_notice_files_are_refused_with_the_reason(data, reason):
    with pytest.raises(FeedParseError, match=re.escape(reason)):
        port_status.parse(data)


def test_the_format_is_documented_where_the_readme_can_copy_it():
    doc = port_status.__doc__
    assert "locode,status,reason,from,until,source" in doc
    assert all(f"`{name}`" in doc for name in port_status.CSV_COLUMNS + ("id", "updated"))
