"""CAP alerts from real publishers: the events, times, areas and references a duty officer sees."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notifier.feeds import cap
from notifier.feeds import FeedParseError


def test_severe_thunderstorm_warning_with_polygon_and_repeated_geocodes(feed_file):
    [warning] = cap.parse(feed_file("cap/oasis-spec/example2.xml"))
    assert warning.event == "SEVERE THUNDERSTORM" and warning.severity == "Severe"
    assert warning.expires.astimezone(UTC) == datetime(2003, 6, 17, 23, 0, tzinfo=UTC)
    [area] = warning.areas
    assert len(area.polygons) == 1 and area.polygons[0][0] == area.polygons[0][-1]
    assert area.geocodes == ["SAME:006109", "SAME:006009", "SAME:006003"]


def test_earthquake_update_references_the_earlier_report(feed_file):
    [update] = cap.parse(feed_file("cap/oasis-spec/example3.xml"))
    assert update.msg_type == "Update"
    assert update.references == ["trinet@caltech.edu,TRI13970876.1"]
    assert update.areas[0].circles == [(32.9525, -115.5527, 0.0)]


def test_bilingual_alert_keeps_english_primary_and_spanish_as_translation(feed_file):
    [amber] = cap.parse(feed_file("cap/oasis-spec/example4.xml"))
    assert amber.event == "Child Abduction" and amber.language == "en-US"
    assert set(amber.texts) == {"en-US", "es-US"}
    assert len(amber.areas) == 2  # one per <info> block


@pytest.mark.parametrize("relative, event", [
    ("cap/google-cap-library/weather.cap", "Flash Flood Watch"),  # CAP 1.1 namespace
    ("cap/google-cap-library/australia.cap", "Fire"),  # cap: prefix on every element
    ("cap/google-cap-library/earthquake.cap", "Earthquake"),
    ("cap/capparselib/ph.cap", "Tropical Cyclone Alert"),  # minified, signed, status Test
])
def test_publishers_namespaces_and_versions_all_read(feed_file, relative, event):
    [alert] = cap.parse(feed_file(relative))
    assert alert.event == event


def test_hurricane_update_with_two_polygons_in_one_area(feed_file):
    [hurricane] = cap.parse(feed_file("cap/capparselib/NOAA_MultiplePolygons.txt"))
    assert hurricane.event == "Hurricane Warning" and hurricane.msg_type == "Update"
    assert len(hurricane.references) == 8
    assert len(hurricane.areas[0].polygons) == 2
    assert hurricane.expires.astimezone(UTC) == datetime(2020, 8, 26, 17, 15, tzinfo=UTC)


def test_cancel_without_info_still_names_what_it_cancels(feed_file):
    [cancel] = cap.parse(feed_file("cap/capparselib/no_info_tag.cap"))
    assert cancel.msg_type == "Cancel" and cancel.areas == [] and cancel.event == ""
    assert cancel.references == ["AtHoc,1017033100951096-517189320160225203219800"]


@pytest.mark.parametrize("data, reason", [
    (b"<feed/>", "root element is <feed>"),
    (b"<alert><identifier>x</identifier></alert>", "lacks <identifier>, <sender> or <sent>"),
    (b"<alert><identifier>x</identifier><sender>s</sender><sent>2024-01-01T00:00:00Z</sent>"
     b"<info><area><polygon>1,2 3,4</polygon></area></info></alert>", "at least 4"),
])
def test_malformed_alerts_are_refused_with_the_reason(data, reason):
    with pytest.raises(FeedParseError, match=reason):
        cap.parse(data)


# --- publishers' habits ------------------------------------------------------------------------------------------

def test_a_wrapper_of_several_alerts_yields_each_alert(feed_file):
    notes: list[str] = []
    gale, storm = cap.parse(feed_file("handmade/smhi-cap-alerts.xml"), notes=notes)
    assert (gale.external_id, storm.external_id) == ("SMHI-2026-0914-0001", "SMHI-2026-0914-0002")
    assert gale.event == "Gale" and "sv-SE" in gale.texts and storm.severity == "Severe"
    assert notes == [] and "feed_warnings" not in gale.fields


def test_the_composers_undeclared_cap_prefix_is_read_with_a_warning_on_the_item(feed_file):
    notes: list[str] = []
    [alert] = cap.parse(feed_file("handmade/wmo-composer-undeclared-prefix.xml"), notes=notes)
    assert alert.event == "Tropical Cyclone" and alert.severity == "Severe"
    assert notes == [cap.COMPOSER_NOTE]
    assert alert.fields["feed_warnings"] == [cap.COMPOSER_NOTE]  # stored with the item, for whoever looks later


@pytest.mark.parametrize("data, reason", [
    (b'<alerts><note>none</note></alerts>', "root element is <alerts>, with no <alert> inside"),
    (b'<other:alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>x</identifier></other:alert>',
     "not well-formed"),
    (b'<cap:alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><cap:identifier>x</cap:identifier>',
     "not well-formed"),
    (b'<cap:alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>x</identifier><sender>s</sender>'
     b'<sent>2026-09-14T09:40:00+08:00</sent><gml:pos>1 2</gml:pos></cap:alert>', "not well-formed"),
])
def test_other_malformed_cap_is_still_refused(data, reason):
    with pytest.raises(FeedParseError, match=reason):
        cap.parse(data)
