"""DCSA schedules and track & trace: omitted, blanked and late port calls of container services."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime

import pytest

from notifier.feeds import dcsa
from notifier.feeds import FeedParseError


def test_ovs_schedule_gives_one_port_call_per_transport_call(feed_file):
    calls = dcsa.parse(feed_file("dcsa/ovs-300-response.json"), source="carrier-ovs")
    assert [c.fields["port_call_status"] for c in calls] == ["OMIT", "BLNK", "OMIT", "OMIT", "BLNK"]
    amsterdam = calls[0]
    assert amsterdam.kind == "port_call" and amsterdam.source == "carrier-ovs"
    assert amsterdam.event == "Port call omitted"
    assert amsterdam.ports == ["NLAMS"] and amsterdam.routes == ["FE1"]
    assert amsterdam.external_id == "SR12345X-9321483-2107W-NLAMS-ACT-1-1"
    assert amsterdam.fields["vessel_imo"] == "9321483" and amsterdam.fields["vessel_name"] == "King of the Seas"
    assert amsterdam.fields["carrier_voyage"] == "2103N/2103S"
    assert amsterdam.fields["planned_arrival"] == "2024-01-14T08:21:00+00:00"
    assert amsterdam.fields["delay_reason_code"] == "WEA" and amsterdam.fields["delay_reason"] == "Bad weather"
    assert amsterdam.headline == "Port call omitted: King of the Seas voyage 2103N/2103S at NLAMS"


def test_unknown_delay_codes_are_kept_without_a_description(feed_file):
    singapore = dcsa.parse(feed_file("dcsa/ovs-300-response.json"))[1]
    assert singapore.fields["delay_reason_code"] == "TRF"  # not an SMDG code: accepted as given
    assert singapore.fields["delay_reason"] is None
    assert singapore.description == "Traffic congestion"
    assert singapore.fields["event_type"] == "DEPA" and singapore.fields["classifier"] == "ACT"


def test_a_late_call_has_its_delay_in_minutes_and_reason(feed_file):
    hong_kong, shekou = dcsa.parse(feed_file("handmade/dcsa-ovs-delayed-call.json"))
    assert hong_kong.fields["port_call_status"] == "CUTR" and hong_kong.event == "Cut and run"
    assert hong_kong.fields["estimated_arrival"] == "2025-09-24T11:30:00+00:00"
    assert hong_kong.fields["planned_departure"] == "2025-09-24T18:00:00+00:00"
    # Arrival 13 h 30 min late, departure 16 h 15 min late: the worse counts.
    assert hong_kong.fields["delay_minutes"] == 975
    assert (hong_kong.fields["event_type"], hong_kong.fields["classifier"]) == ("DEPA", "EST")
    assert hong_kong.fields["delay_reason_code"] == "WEA"
    assert hong_kong.fields["change_remark"] == "Typhoon Ragasa: port closed under signal No. 8"
    assert hong_kong.onset == datetime(2025, 9, 24, 11, 30, tzinfo=UTC)
    assert hong_kong.expires == datetime(2025, 9, 25, 10, 15, tzinfo=UTC)
    assert shekou.fields["delay_minutes"] == -20  # early
    assert shekou.fields["carrier_voyage"] == "2538E" and shekou.sailings == ["2538E"]
    assert shekou.fields["delay_reason_code"] == "ZZZ" and shekou.fields["delay_reason"] is None
    assert shekou.event == "Vessel arrival (estimated)"


def test_re_reading_an_unchanged_schedule_gives_the_same_versions(feed_file):
    data = feed_file("handmade/dcsa-ovs-delayed-call.json")
    first, again = dcsa.parse(data), dcsa.parse(data)
    assert [o.version for o in first] == [o.version for o in again]
    changed = dcsa.parse(data.replace(b"2025-09-24T19:30:00+08:00", b"2025-09-24T21:00:00+08:00"))
    assert changed[0].external_id == first[0].external_id and changed[0].version != first[0].version
    assert changed[1].version == first[1].version


def test_track_and_trace_keeps_transport_events_only(feed_file):
    notes: list[str] = []
    events = dcsa.parse(feed_file("dcsa/tnt-220-response.json"), notes=notes)
    assert len(events) == 2
    arrival = events[0]
    assert arrival.event == "Vessel arrival (actual)"
    assert arrival.external_id == "3cecb101-7a1a-43a4-9d62-e88a131651e2"
    assert arrival.version == "2021-01-23T12:34:56+00:00"
    assert arrival.onset == datetime(2021, 1, 9, 13, 12, 56, tzinfo=UTC)
    assert arrival.fields["actual_arrival"] == "2021-01-09T13:12:56+00:00"
    assert arrival.ports == ["FRPAR"] and arrival.routes == ["FE1"]
    assert arrival.fields["vessel_imo"] == "9321483" and arrival.fields["carrier_voyage"] == "2103N/2103S"
    assert arrival.fields["delay_reason_code"] == "WEA" and arrival.fields["change_remark"] == "Bad weather"
    assert notes == ["2 EQUIPMENT events left out: not relevant to sailings",
                     "3 SHIPMENT events left out: not relevant to sailings"]


def test_the_embedded_smdg_table_matches_the_published_code_list(feed_file):
    rows = csv.DictReader(io.StringIO(feed_file("smdg/smdgdelayreasoncodes.csv").decode()))
    assert dcsa.SMDG_DELAY_REASONS == {r["delay_reason_code"]: r["delay_reason_description"] for r in rows}


def test_code_lists_are_not_feeds(feed_file):
    with pytest.raises(FeedParseError, match="not valid JSON"):
        dcsa.parse(feed_file("dcsa/portcallstatuscodes-v300.csv"))


def _call(**changes) -> bytes:
    call = {"transportCallReference": "X-1", "location": {"UNLocationCode": "HKHKG"},
            "timestamps": [{"eventTypeCode": "ARRI", "eventClassifierCode": "PLN",
                            "eventDateTime": "2025-01-01T00:00:00Z"}]}
    call.update(changes)
    return json.dumps([{"carrierServiceCode": "S", "vesselSchedules": [{"transportCalls": [call]}]}]).encode()


@pytest.mark.parametrize("data, reason", [
    (_call(location={"UNLocationCode": "Hong Kong"}), "is not a UN/LOCODE"),
    (_call(timestamps=[{"eventTypeCode": "ARRI", "eventDateTime": "2025-01-01T08:00:00"}]), "has no UTC offset"),
    (_call(timestamps=[{"eventTypeCode": "ARRI"}]), "has no eventDateTime"),
    (_call(timestamps={"ARRI": "x"}), "timestamps should be a JSON list"),
    (_call(statusCode=["OMIT"]), "statusCode should be text"),
    (b'[{"eventType": "TRANSPORT", "eventDateTime": "2025-01-01T00:00:00Z"}]', "has no eventID"),
    (b'[{"eventType": "TRANSPORT", "eventID": "e", "eventDateTime": "2025-01-01T00:00:00Z", '
     b'"transportCall": "HKHKG"}]', "transportCall should be a JSON object"),
    (b'[{"carrier": "x"}]', "neither a schedule (vesselSchedules) nor a T&T event"),
    (b'["x"]', "is not a JSON object"),
    (b'"schedule"', "must be a JSON list"),
])
def test_malformed_dcsa_records_are_refused_with_the_reason(data, reason):
    with pytest.raises(FeedParseError, match=re.escape(reason)):
        dcsa.parse(data)


# --- T&T 3.0 and Commercial Schedules 1.0 -------------------------------------------------------------------------

def test_a_tnt_30_transport_event_is_the_same_port_call_as_in_22(feed_file):
    [arrival] = dcsa.parse(feed_file("dcsa/tnt-300-request-transport.json"))
    assert arrival.kind == "port_call" and arrival.event == "Vessel arrival (actual)"
    assert arrival.external_id == "evt-trans-001-2026-01-20T12:30:00Z"
    assert arrival.ports == ["DEHAM"] and arrival.routes == ["SVC001"]
    assert arrival.fields["vessel_imo"] == "1234567" and arrival.fields["carrier_voyage"] == "V001N/V001E"
    assert arrival.fields["actual_arrival"] == "2026-01-20T12:30:00+00:00"
    assert arrival.fields["transport_call_id"] == "tc-12345-abc"


def test_tnt_30_shipment_and_equipment_events_are_left_out_with_a_note():
    events = json.dumps({"events": [
        {"eventID": "e1", "eventDateTime": "2026-01-20T12:30:00Z",
         "eventClassification": {"eventTypeCode": "EQUIPMENT", "eventClassifierCode": "ACT"}},
        {"eventID": "e2", "eventDateTime": "2026-01-20T12:30:00Z",
         "eventClassification": {"eventTypeCode": "SHIPMENT", "eventClassifierCode": "ACT"}},
        {"eventID": "e3", "eventDateTime": "2026-01-21T08:00:00+08:00", "eventUpdatedDateTime": "2026-01-20T09:00:00Z",
         "eventClassification": {"eventTypeCode": "TRANSPORT", "eventClassifierCode": "EST",
                                 "transportEventTypeCode": "DEPA", "delayReasonCode": "WEA"},
         "transportDetails": {"transportCall": {"UNLocationCode": "HKHKG", "exportVoyageNumber": "2103S",
                                                "vessel": {"vesselIMONumber": "9321483"}}}},
    ]}).encode()
    notes: list[str] = []
    [departure] = dcsa.parse(events, notes=notes)
    assert departure.event == "Vessel departure (estimated)" and departure.ports == ["HKHKG"]
    assert departure.fields["delay_reason"] == "Bad weather"
    assert departure.version == "2026-01-20T09:00:00+00:00"  # a re-sent, updated event is a new version
    assert notes == ["1 EQUIPMENT events left out: not relevant to sailings",
                     "1 SHIPMENT events left out: not relevant to sailings"]


def test_cs_10_vessel_schedules_give_calls_by_locode_and_smdg_terminal(feed_file):
    hong_kong, shekou = dcsa.parse(feed_file("handmade/dcsa-cs-100-vessel-schedules.json"))
    assert hong_kong.ports == ["HKHKG"] and hong_kong.fields["facility_smdg_code"] == "HIT"
    assert hong_kong.fields["vessel_imo"] == "9321483" and hong_kong.fields["delay_minutes"] == 720
    assert hong_kong.fields["delay_reason_code"] == "WEA" and "Typhoon signal" in hong_kong.description
    assert shekou.fields["port_call_status"] == "OMIT" and shekou.event == "Port call omitted"


def test_cs_10_port_schedule_gives_each_vessel_calling_there(feed_file):
    [call] = dcsa.parse(feed_file("handmade/dcsa-cs-100-port-schedule.json"))
    assert call.ports == ["SGSIN"] and call.fields["facility_smdg_code"] == "PSABT"
    assert call.routes == ["FE1"] and call.sailings == ["2103N", "2103S"]
    assert call.fields["estimated_arrival"] == "2026-09-18T10:30:00+00:00" and call.fields["delay_minutes"] == 750
