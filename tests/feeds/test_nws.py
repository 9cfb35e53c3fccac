"""api.weather.gov alerts (GeoJSON): the alerts a duty officer sees for US ports and marine zones."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from notifier.feeds import nws
from notifier.feeds import FeedParseError

CAPTURE = "nws-geojson/weather-gov-load-testing-ioc/active__status=actual.json"
NOW = datetime(2026, 3, 4, 18, 0, tzinfo=UTC)


def fill_placeholders(data: bytes, now: datetime = NOW) -> bytes:
    """Replace the capture's "date:now -235 seconds" / "date:today 09:00:-06 +2 days" with real times."""

    def relative(match: re.Match) -> str:
        return (now + timedelta(seconds=int(match.group(1)))).isoformat()

    def today(match: re.Match) -> str:
        clock, offset, days = match.group(1), match.group(2), int(match.group(3))
        day = (now + timedelta(days=days)).date()
        return f"{day.isoformat()}T{clock}:00{offset}:00"

    text = data.decode()
    text = re.sub(r"date:now ([+-]\d+) seconds", relative, text)
    text = re.sub(r"date:today (\d\d:\d\d):([+-]\d\d) \+(\d+) days", today, text)
    return text.encode()


def test_flood_watch_update_from_a_real_zone_query(feed_file):
    [watch] = nws.parse(feed_file("nws-geojson/pynws/alerts_active_zone.json"))
    assert watch.event == "Flood Watch"
    assert watch.msg_type == "Update"
    assert (watch.severity, watch.urgency, watch.certainty) == ("Severe", "Future", "Possible")
    assert watch.external_id == "NWS-IDP-PROD-3965873-3369046"
    assert watch.source == "w-nws.webmaster@noaa.gov"
    assert watch.sent == datetime(2019, 12, 20, 21, 34, tzinfo=UTC)
    # The hazard lasts until "ends" (Sunday 10:00 PST), long after the message "expires".
    assert watch.expires == datetime(2019, 12, 22, 18, 0, tzinfo=UTC)
    assert watch.fields["expires"] == "2019-12-21T13:30:00+00:00"
    assert watch.fields["ends"] == "2019-12-22T18:00:00+00:00"
    assert len(watch.references) == 4
    assert watch.references[0] == "w-nws.webmaster@noaa.gov,NWS-IDP-PROD-3964821-3368352"
    [area] = watch.areas
    assert area.geojson is None and area.polygons == []
    assert sum(code.startswith("UGC:") for code in area.geocodes) == 11
    assert sum(code.startswith("SAME:") for code in area.geocodes) == 16
    assert "UGC:ORZ004" in area.geocodes and "SAME:041057" in area.geocodes


def test_the_weather_gov_capture_parses_once_its_placeholders_are_filled(feed_file):
    alerts = nws.parse(fill_placeholders(feed_file(CAPTURE)))
    assert [a.event for a in alerts] == [
        "Ice Storm Warning", "Hurricane Watch", "Lake Effect Snow Warning", "Lake Effect Snow Warning",
        "Snow Squall Warning", "Red Flag Warning", "Red Flag Warning", "Red Flag Warning"]
    hurricane = alerts[1]
    assert hurricane.external_id == "urn:oid:2.49.0.1.840.0.hash-2.001.1"
    assert hurricane.areas[0].geojson["type"] == "Polygon"
    [ring] = hurricane.areas[0].polygons
    assert ring[0] == (45.25, -93.0)  # GeoJSON [lon, lat] turned into Area's (lat, lon)
    assert hurricane.expires == datetime(2026, 3, 6, 17, 0, tzinfo=UTC)  # "today 11:00 -06 +2 days"
    assert alerts[0].sent == NOW - timedelta(seconds=235)
    assert alerts[7].areas[0].geocodes == ["SAME:022071", "SAME:022087"]


def test_the_capture_as_published_is_refused_at_its_first_placeholder(feed_file):
    with pytest.raises(FeedParseError, match=r"sent is not a date-time: 'date:now -235 seconds'"):
        nws.parse(feed_file(CAPTURE))


def test_marine_alert_keeps_multipolygon_zones_and_references(feed_file):
    advisory, cancel = nws.parse(feed_file("handmade/nws-marine-small-craft.json"))
    assert advisory.event == "Small Craft Advisory"
    [area] = advisory.areas
    assert len(area.polygons) == 2
    assert area.polygons[0][0] == (37.81, -122.52)
    assert area.geojson["type"] == "MultiPolygon"
    assert advisory.fields["marine_zones"] == ["PZZ530", "PZZ545"]
    assert area.geocodes == ["SAME:057530", "SAME:057545", "UGC:PZZ530", "UGC:PZZ545"]
    assert advisory.onset == datetime(2024, 11, 21, 12, 0, tzinfo=UTC)
    assert advisory.expires == datetime(2024, 11, 22, 11, 0, tzinfo=UTC)
    assert cancel.msg_type == "Cancel"
    assert cancel.references == ["w-nws.webmaster@noaa.gov,urn:oid:2.49.0.1.840.0.test.gale.7"]
    assert cancel.expires == datetime(2024, 11, 21, 12, 0, tzinfo=UTC)  # no "ends": "expires" is the window
    assert cancel.areas[0].geojson is None


def test_a_single_feature_is_accepted(feed_file):
    collection = json.loads(feed_file("handmade/nws-marine-small-craft.json"))
    [observation] = nws.parse(json.dumps(collection["features"][0]).encode())
    assert observation.event == "Small Craft Advisory"


def test_the_json_form_round_trips_for_storage(feed_file):
    [watch] = nws.parse(feed_file("nws-geojson/pynws/alerts_active_zone.json"))
    stored = json.loads(json.dumps(watch.to_json()))
    assert type(watch).from_json(stored) == watch


def _feature(**properties) -> bytes:
    base = {"id": "a1", "sent": "2024-11-21T02:44:00-08:00", "event": "Gale Warning"}
    return json.dumps({"type": "Feature", "geometry": None, "properties": {**base, **properties}}).encode()


def _shape(geometry: dict) -> bytes:
    return json.dumps({"type": "Feature", "geometry": geometry,
                       "properties": {"id": "p", "sent": "2024-01-01T00:00:00Z"}}).encode()


@pytest.mark.parametrize("data, reason", [
    (_feature(sent="2024-11-21T02:44:00"), "has no UTC offset"),
    (_feature(ends="date:now +1 hour"), "ends is not a date-time"),
    (_feature(messageType="Retract"), "messageType 'Retract'"),
    (_feature(references="a,b"), "references should be a list"),
    (_feature(geocode=["UGC"]), "geocode should be an object"),
    (_feature(event=7), "event should be text"),
    (_feature(id=None), "has no properties.id"),
    (_shape({"type": "Point", "coordinates": [1, 2]}), "not Polygon"),
    (_shape({"type": "Polygon", "coordinates": [[[200, 1], [1, 1], [1, 2], [200, 1]]]}), "outside the globe"),
    (_shape({"type": "Polygon", "coordinates": [[[1, 1], [1, 2], [1, 1]]]}), "a closed ring needs at least 4"),
    (_shape({"type": "MultiPolygon", "coordinates": [[["x"]]]}), "is not [lon, lat]"),
    (_shape({"type": "GeometryCollection", "geometries": [7]}), "holds something that is not a GeoJSON geometry"),
    (b'{"type": "FeatureCollection", "features": {}}', 'no "features" list'),
    (b'{"type": "FeatureCollection", "features": ["x"]}', "not a GeoJSON Feature"),
    (b'{"type": "Topology"}', "not type 'Topology'"),
    (b"[]", "must be a GeoJSON object"),
])
def test_malformed_alerts_are_refused_with_the_reason(data, reason):
    with pytest.raises(FeedParseError, match=re.escape(reason)):
        nws.parse(data)
