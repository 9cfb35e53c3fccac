"""ATOM / RSS index feeds of CAP alerts: what the watcher follows, and the alerts inlined in them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notifier.feeds import atom
from notifier.feeds import cap
from notifier.feeds import FeedParseError


def test_index_of_the_nws_atom_lists_the_entry_with_its_cap_link(feed_file):
    entries = atom.parse_index(feed_file("cap/google-cap-library/weather.atom"))
    assert len(entries) == 1
    entry = entries[0]
    assert entry.link.startswith("http://www.weather.gov/alerts-beta/wwacapget.php?x=DC2012")
    assert entry.updated == datetime(2012, 8, 29, 20, 29, tzinfo=UTC)
    assert entry.title.startswith("Air Quality Alert")


def test_a_whole_cap_alert_inside_an_entry_reads_exactly_like_the_cap_document(feed_file):
    [observation] = atom.parse(feed_file("cap/google-cap-library/weather.atom"))
    assert observation.event == "Flash Flood Watch"
    assert observation.format == "cap" and observation.kind == "weather_alert"
    assert observation.expires == datetime(2012, 8, 30, 18, 0, tzinfo=UTC)
    assert observation.areas[0].geocodes == ["FIPS6:030049", "UGC:MTZ014"]
    # The same alert parsed as a stand-alone CAP document has the same identity, so dedup sees one item.
    alert = feed_file("cap/google-cap-library/weather.atom").split(b'<content type="text/xml">')[1] \
        .split(b"</content>")[0]
    [direct] = cap.parse(alert)
    assert (direct.source, direct.external_id, direct.version) == \
        (observation.source, observation.external_id, observation.version)


def test_legacy_nws_entries_with_cap_fields_become_alerts(feed_file):
    notes: list[str] = []
    small_craft, gale = atom.parse(feed_file("handmade/nws-legacy-cap-fields.atom"), notes=notes)
    assert small_craft.event == "Small Craft Advisory"
    assert small_craft.severity == "Minor" and small_craft.certainty == "Likely"
    assert small_craft.source == "w-nws.webmaster@noaa.gov"
    assert small_craft.external_id.endswith("MTRMWWMTR.1")
    assert small_craft.effective == datetime(2024, 11, 21, 10, 44, tzinfo=UTC)
    assert small_craft.expires == datetime(2024, 11, 22, 11, 0, tzinfo=UTC)
    [area] = small_craft.areas
    assert len(area.polygons) == 1 and area.polygons[0][0] == (37.81, -122.52)
    # One packed <cap:geocode> with space-separated codes becomes one geocode per code.
    assert area.geocodes == ["FIPS6:006075", "FIPS6:006001", "UGC:PZZ530", "UGC:PZZ531"]
    assert small_craft.fields["parameters"]["VTEC"].startswith("/O.NEW.KMTR.SC.Y")
    assert gale.msg_type == "Update" and gale.event == "Gale Warning"
    assert gale.areas[0].polygons == [] and gale.areas[0].geocodes == ["UGC:PZZ545"]
    assert notes == ["1 entries carry no inline CAP; fetch their links to read them"]


def test_index_of_the_legacy_feed_includes_index_only_entries(feed_file):
    entries = atom.parse_index(feed_file("handmade/nws-legacy-cap-fields.atom"))
    assert [e.title.split(" issued")[0] for e in entries] == \
        ["Small Craft Advisory", "Gale Warning", "Special Weather Statement"]
    assert all(e.id == e.link for e in entries)


def test_rss_index_reads_guid_link_and_rfc822_dates_in_utc(feed_file):
    typhoon, monsoon = atom.parse_index(feed_file("handmade/cap-index.rss"))
    assert typhoon.id == "urn:oid:2.49.0.1.344.0.2024.9.6.8"
    assert typhoon.link == "https://www.example.org/cap/TC8NE-20240906.xml"
    assert typhoon.updated == datetime(2024, 9, 5, 21, 40, tzinfo=UTC)
    assert monsoon.id == monsoon.link  # no guid: the link is the id
    assert monsoon.updated == datetime(2024, 9, 6, 1, 15, tzinfo=UTC)
    assert atom.parse(feed_file("handmade/cap-index.rss")) == []


def test_the_cap_link_of_an_entry_is_preferred_over_the_html_page():
    data = (b"<feed xmlns='http://www.w3.org/2005/Atom'><entry><id>urn:x</id><updated>2024-01-01T00:00:00Z</updated>"
            b"<link rel='alternate' type='text/html' href='https://x/alert.html'/>"
            b"<link rel='alternate' type='application/cap+xml' href='https://x/alert.cap'/></entry></feed>")
    [entry] = atom.parse_index(data)
    assert entry.link == "https://x/alert.cap" and entry.id == "urn:x"


@pytest.mark.parametrize("data, reason", [
    (b"<feed xmlns='http://www.w3.org/2005/Atom'><entry><updated>2024-01-01T00:00:00</updated>"
     b"<id>x</id></entry></feed>", "has no UTC offset"),
    (b"<feed xmlns='http://www.w3.org/2005/Atom'><entry><title>no id</title></entry></feed>",
     "neither <id> nor <link>"),
    (b"<rss><channel><item><guid>a</guid><pubDate>yesterday</pubDate></item></channel></rss>",
     "not an RFC 822 date"),
    (b"<rss><item/></rss>", "has no <channel>"),
    (b"<alert/>", "not an ATOM or RSS feed"),
])
def test_malformed_index_feeds_are_refused_with_the_reason(data, reason):
    with pytest.raises(FeedParseError, match=reason):
        atom.parse_index(data)


def test_legacy_entry_with_an_unknown_msg_type_is_refused():
    data = (b"<feed xmlns='http://www.w3.org/2005/Atom' xmlns:cap='urn:oasis:names:tc:emergency:cap:1.1'>"
            b"<entry><id>a</id><updated>2024-01-01T00:00:00Z</updated><cap:event>Gale</cap:event>"
            b"<cap:msgType>Retract</cap:msgType></entry></feed>")
    with pytest.raises(FeedParseError, match="cap:msgType 'Retract'"):
        atom.parse(data)
