"""Evaluation: conditions, geometry (CAP polygon and circle, zone geocodes, NWS GeoJSON) and sailing selection
behave as written; the strongest kind decides per sailing; feed text a notice quotes is clean and capped."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from notifier.feeds import cap, dcsa
from notifier.feeds import Area, Observation
from notifier.store.paths import rules_dir
from notifier.rules.evaluate import decisive_impacts, evaluate
from notifier.rules.explain import render_explanation
from notifier.rules.load import load_rules
from notifier.rules.network import Network, PortRef, SailingRef
from notifier.rules.scene import QUOTED_MAX_CHARS
from tests.rules.test_load import GOOD, load

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "feeds"
T0 = datetime(2026, 9, 14, 0, 0, tzinfo=UTC)


def feed(relative: str) -> Path:
    """A real feed file: the fixture copy, else the shared original; skip when neither is here."""
    for base in (FEEDS, SHARED):
        if (base / relative).is_file():
            return base / relative
    pytest.skip(f"{relative} is in neither tests/fixtures/feeds nor {SHARED}")


# --- conditions ------------------------------------------------------------------------------------------------

def observation(**values) -> Observation:
    base = dict(source="test", format="cap", kind="weather_alert", external_id="a1", version="1",
                event="Storm Warning", severity="Severe", onset=T0 + timedelta(hours=2),
                expires=T0 + timedelta(hours=6))
    base.update(values)
    return Observation(**base)


def network(ports: list[PortRef], sailings: list[SailingRef]) -> Network:
    return Network(ports, sailings)


HAIKOU = PortRef(1, "CNHAK", 20.02, 110.27, timezone="Asia/Shanghai", country="CN")
HAIAN = PortRef(2, "CNHAI", 20.27, 110.22, timezone="Asia/Shanghai", country="CN")
FAR = PortRef(3, "CNSHA", 30.62, 122.06, zone_codes=("pzz530",), timezone="Asia/Shanghai", country="CN")


def crossing(sailing_id: int, origin: int, destination: int, hours: float, minutes: int = 90, **extra) -> SailingRef:
    departure = T0 + timedelta(hours=hours)
    return SailingRef(sailing_id, f"S{sailing_id}", origin, destination, departure,
                      departure + timedelta(minutes=minutes), **extra)


def fired(rules, obs, net, now=T0) -> dict[str, set[str]]:
    return {m.rule_id: {net.sailing_by_id[i.sailing_id].code for i in m.impacts}
            for m in evaluate(rules, obs, net, now) if m.matched}


def test_conditions_cover_sets_regex_numbers_times_scales_and_any_of(tmp_path):
    rules = load(tmp_path, """
        rules:
          - id: picky
            description: every operator at once
            when:
              kind: weather_alert
              msg_type: [Alert, Update]
              event: {regex: "(?i)storm", not_regex: "(?i)watch"}
              severity: {at_least: Severe}
              expires: {gt: "now+3h", lte: "now+2d"}
              fields.parameters.level: {gte: 3}
              fields.tags: {contains: marine}
              any_of:
                - {urgency: Immediate}
                - {certainty: {at_least: Likely}}
            where: {port: {fixed: [CNHAK]}}
            then: {disruption: cancelled}
        """)
    net = network([HAIKOU], [crossing(1, 1, 1, 3)])
    good = dict(fields={"parameters": {"level": 4}, "tags": ["marine"]}, certainty="Observed")
    assert fired(rules, observation(**good), net) == {"picky": {"S1"}}
    for spoiler in ({"event": "Storm Watch"}, {"severity": "Moderate"}, {"expires": T0 + timedelta(hours=2)},
                    {"fields": {"parameters": {"level": 2}, "tags": ["marine"]}},
                    {"fields": {"parameters": {"level": 4}, "tags": []}}, {"certainty": "Possible"},
                    {"msg_type": "Ack"}):
        match = evaluate(rules, observation(**(good | spoiler)), net, T0)[0]
        assert not match.matched, spoiler
        assert "does not satisfy" in match.reasons[-1] or "none of these holds" in match.reasons[-1]


def test_a_near_miss_says_what_was_missing(tmp_path):
    rules = load(tmp_path, GOOD)
    net = network([HAIKOU], [crossing(1, 1, 2, 3)])
    weak = evaluate(rules, observation(severity="Moderate", areas=[Area(circles=[(20.02, 110.27, 5)])]), net, T0)[0]
    assert weak.near_miss and weak.reasons[-1] == "when.severity: 'Moderate' does not satisfy: at least 'Severe'"
    other_hazard = evaluate(rules, observation(event="Fog"), net, T0)[0]
    assert not other_hazard.near_miss  # a different hazard is not "nearly" a storm


# --- geometry ------------------------------------------------------------------------------------------------

def test_cap_polygon_circle_zone_and_locode_pick_ports(tmp_path):
    rules = load(tmp_path, """
        rules:
          - id: any-port
            description: x
            when: {kind: weather_alert}
            where: {port: {match: [area, locode, zone_code]}}
            then: {disruption: advisory}
        """)
    sailings = [crossing(1, 1, 1, 3), crossing(2, 2, 2, 3), crossing(3, 3, 3, 3)]
    net = network([HAIKOU, HAIAN, FAR], sailings)
    # A CAP polygon ("lat,lon" pairs) around Haikou only.
    polygon = [(19.9, 110.2), (19.9, 110.4), (20.1, 110.4), (20.1, 110.2), (19.9, 110.2)]
    assert fired(rules, observation(areas=[Area(polygons=[polygon])]), net) == {"any-port": {"S1"}}
    # Circles are great-circle radii in km: Hai'an is 28.3 km from Haikou.
    assert fired(rules, observation(areas=[Area(circles=[(20.02, 110.27, 28.0)])]), net) == {"any-port": {"S1"}}
    assert fired(rules, observation(areas=[Area(circles=[(20.02, 110.27, 29.0)])]), net) == {"any-port": {"S1", "S2"}}
    # A radius-0 circle is a point: a port within half a kilometre of it.
    assert fired(rules, observation(areas=[Area(circles=[(20.021, 110.271, 0.0)])]), net) == {"any-port": {"S1"}}
    # Zone geocodes map to ports by the port's zone table, whatever the case or prefix written there.
    assert fired(rules, observation(areas=[Area(geocodes=["UGC:PZZ530"])]), net) == {"any-port": {"S3"}}
    assert fired(rules, observation(areas=[Area(geocodes=["UNLOCODE:CNHAI"])]), net) == {"any-port": {"S2"}}
    assert fired(rules, observation(ports=["CNSHA"]), net) == {"any-port": {"S3"}}


def test_nws_geojson_multipolygon_picks_the_ports_inside():
    rules = load_rules([rules_dir()])
    path = feed("handmade/nws-marine-small-craft.json")
    from notifier.feeds.sniff import parse_any

    _, observations = parse_any(path.read_bytes())
    advisory = next(o for o in observations if o.msg_type != "Cancel")
    assert advisory.areas[0].geojson["type"] == "MultiPolygon"
    inside = PortRef(1, "USOAK", 37.80, -122.32, timezone="America/Los_Angeles", country="US")
    outside = PortRef(2, "USSAC", 38.58, -121.49, timezone="America/Los_Angeles", country="US")
    start = advisory.onset
    net = network([inside, outside], [SailingRef(1, "OAK-1", 1, 2, start, start + timedelta(hours=1)),
                                      SailingRef(2, "SAC-1", 2, 2, start, start + timedelta(hours=1))])
    from notifier.rules.scene import Scene

    scene = Scene(advisory, net, start)
    assert set(scene.ports_by["area"]) == {1}
    assert scene.ports_by["zone_code"] == {}  # nobody mapped PZZ530 here


# --- selection and time -----------------------------------------------------------------------------------

def test_time_overlap_margins_reach_sailings_just_outside_the_window(tmp_path):
    rules = load(tmp_path, GOOD)  # onset T0+2h .. expiry T0+6h, 60 min margin before
    net = network([HAIKOU], [crossing(1, 1, 1, -0.6), crossing(2, 1, 1, -0.4), crossing(3, 1, 1, 6.0),
                             crossing(4, 1, 1, 6.1)])
    # S1 arrives 00:54 (before 01:00), S2 arrives 01:06; S3 departs 06:00 (inside), S4 06:06 (after).
    got = fired(rules, observation(ports=["CNHAK"]), net)
    assert got == {"storm": {"S2", "S3"}}


def test_open_ended_alert_lasts_open_end_hours(tmp_path):
    rules = load(tmp_path, GOOD.replace("margin_before_minutes: 60", "open_end_hours: 12"))
    net = network([HAIKOU], [crossing(1, 1, 1, 13.5), crossing(2, 1, 1, 14.5)])
    assert fired(rules, observation(ports=["CNHAK"], expires=None), net) == {"storm": {"S1"}}


def cap_alert(onset: str, expires: str | None) -> bytes:
    """A schema-valid CAP storm warning naming Haikou, with the given onset and (optional) expiry."""
    expiry = f"<expires>{expires}</expires>" if expires else ""
    return (f'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>far-1</identifier><sender>s</sender>'
            f'<sent>2026-09-14T00:00:00+00:00</sent><status>Actual</status><msgType>Alert</msgType><scope>Public'
            f'</scope><info><event>Storm Warning</event><severity>Severe</severity><onset>{onset}</onset>{expiry}'
            f'<area><areaDesc>Haikou</areaDesc><geocode><valueName>UNLOCODE</valueName><value>CNHAK</value>'
            f'</geocode></area></info></alert>').encode()


@pytest.mark.parametrize("onset, expires, sailings", [
    ("9999-12-31T23:00:00+00:00", None, set()),
    ("9999-12-31T23:00:00+00:00", "9999-12-31T23:59:59+00:00", set()),
    ("9999-12-31T23:00:00-00:59", "9999-12-31T23:59:59-00:00", set()),
    ("0001-01-01T00:00:00+00:00", None, set()),
    ("0001-01-01T00:30:00+00:00", "0001-01-01T01:00:00+00:00", set()),
    ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00", {"S1", "S2"}),
], ids=["9999-open", "9999-with-expires", "9999-offset", "0001-open", "0001-with-expires", "0001-to-9999"])
def test_alerts_at_the_ends_of_the_calendar_are_evaluated_not_overflowed(tmp_path, onset, expires, sailings):
    rules = load(tmp_path, GOOD.replace("margin_before_minutes: 60", "margin_before_hours: 6, margin_after_hours: 6"))
    net = network([HAIKOU], [crossing(1, 1, 1, 0), crossing(2, 1, 1, 48)])
    [alert] = cap.parse(cap_alert(onset, expires))
    matches = evaluate(rules, alert, net, T0)
    assert {net.sailing_by_id[i.sailing_id].code for m in matches for i in m.impacts} == sailings
    lines = render_explanation(alert, matches, {}, 1, 1)  # what `notifier rules test` prints
    assert f"window {onset[:4]}-" in lines[1] and (sailings or "near miss storm" in "\n".join(lines))


def test_gtfs_trip_picks_the_service_day(tmp_path):
    rules = load(tmp_path, """
        rules:
          - id: late
            description: x
            when: {kind: trip_update, delay_minutes: {gte: 30}}
            where: {trip: true}
            then: {disruption: delayed, delay_minutes: observation}
        """)
    runs = [crossing(1, 1, 2, 0, gtfs_trip_id="MW-0800"), crossing(2, 1, 2, 24, gtfs_trip_id="MW-0800")]
    runs = [SailingRef(**{**r.__dict__, "code": f"MW-0800@{(T0 + timedelta(days=i)):%Y%m%d}"})
            for i, r in enumerate(runs)]
    net = network([HAIKOU, HAIAN], runs)
    update = dict(kind="trip_update", format="gtfs_rt", sailings=["MW-0800"])
    tomorrow = observation(**update, fields={"delay_minutes": 40, "start_date": "20260915"})
    assert fired(rules, tomorrow, net) == {"late": {"MW-0800@20260915"}}
    assert decisive_impacts(evaluate(rules, tomorrow, net, T0))[0].delay_minutes == 40
    undated = observation(**update, fields={"delay_minutes": 40}, sent=T0 + timedelta(hours=1))
    assert fired(rules, undated, net) == {"late": {"MW-0800@20260914"}}
    on_time = evaluate(rules, observation(**update, fields={"delay_minutes": 10}), net, T0)[0]
    assert on_time.near_miss and "delay_minutes" in on_time.reasons[-1]


def test_dcsa_call_selects_the_vessels_legs_to_and_from_the_port():
    rules = load_rules([rules_dir()])
    ports = [PortRef(1, "DEHAM", 53.5, 9.9), PortRef(2, "NLAMS", 52.4, 4.9), PortRef(3, "GBFXT", 51.9, 1.3)]
    legs = [crossing(1, 1, 2, 0, 600, vessel_imo="9321483", voyage="2103N", route_kind="cargo"),
            crossing(2, 2, 3, 20, 600, vessel_imo="9321483", voyage="2103S", route_kind="cargo"),
            crossing(3, 1, 3, 30, 600, vessel_imo="9321483", voyage="2103S", route_kind="cargo"),
            crossing(4, 1, 2, 0, 600, vessel_imo="9999999", voyage="2103N", route_kind="cargo")]
    call = observation(format="dcsa", kind="port_call", event="Port call omitted", ports=["NLAMS"],
                       sailings=["2103N", "2103S"], onset=T0 + timedelta(hours=10), expires=None,
                       fields={"vessel_imo": "9321483", "port_call_status": "OMIT", "delay_reason_code": "WEA"})
    net = network(ports, legs)
    assert fired(rules, call, net) == {"dcsa-port-omitted": {"S1", "S2"}}
    impact = decisive_impacts(evaluate(rules, call, net, T0))[0]
    assert impact.kind == "port_omitted" and impact.cause == "weather"
    assert impact.policy["entitlements"] and "cargo_roll" in impact.policy["entitlements"]


def test_feed_text_a_notice_quotes_is_clean_and_capped():
    # The feed's own words, as a hostile or broken carrier system could send them: a slot mark of notifier.shapes
    # (which would become another booking's reference), a terminal escape, and a 5,000-character remark.
    document = json.loads(feed("handmade/dcsa-ovs-delayed-call.json").read_text(encoding="utf-8"))
    schedule = document[0]["vesselSchedules"][0]
    schedule["vesselName"] = "Harbour\ue000R\ue001 Pioneer"
    schedule["transportCalls"][0]["timestamps"][2]["changeRemark"] = \
        "Typhoon\ue000N\ue001 Ragasa:\x1b[31m port\n closed " + "y" * 5000
    call = dcsa.parse(json.dumps(document).encode(), "carrier")[0]
    ports = [PortRef(1, "CNXMN", 24.45, 118.07), PortRef(2, "HKHKG", 22.29, 114.15)]
    departure = datetime(2025, 9, 23, 8, tzinfo=UTC)
    legs = [SailingRef(1, "CHX-IN", 1, 2, departure, departure + timedelta(hours=14), vessel_imo="9811000",
                       voyage="2538W", route_kind="cargo")]
    impact = decisive_impacts(evaluate(load_rules([rules_dir()]), call, network(ports, legs), departure))[0]

    remark, headline = impact.details["change_remark"], impact.details["headline"]
    assert remark.startswith("Typhoon N Ragasa: [31m port closed yyy") and remark.endswith("y...")
    assert len(remark) == QUOTED_MAX_CHARS
    assert "Harbour R Pioneer voyage" in headline
    quoted = [impact.cause_text, *(value for value in impact.details.values() if isinstance(value, str))]
    assert not any(unicodedata.category(c)[0] == "C" for text in quoted for c in text)


def test_the_strongest_kind_decides_per_sailing(tmp_path):
    rules = load(tmp_path, GOOD + """
  - id: storm-delay
    description: also a delay
    when: {kind: weather_alert, event: {regex: "(?i)storm"}}
    where: {port: true}
    then: {disruption: delayed, delay_minutes: 30}
""")
    net = network([HAIKOU], [crossing(1, 1, 1, 3)])
    impacts = decisive_impacts(evaluate(rules, observation(ports=["CNHAK"]), net, T0))
    assert [(i.kind, i.rule_id) for i in impacts] == [("cancelled", "storm")]
