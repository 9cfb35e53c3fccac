"""Importing a static GTFS ferry timetable into ports, routes and sailings."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from notifier.feeds import FeedParseError
from notifier.feeds.port_status import is_locode
from notifier.intake.gtfs import import_gtfs, synthetic_locode
from notifier.store.models import Base, Port, Route, Sailing

HARBOUR_FERRY = Path(__file__).resolve().parents[1] / "fixtures/feeds/handmade/gtfs-static/harbour-ferry"
MONDAY = date(2025, 9, 29)  # the week holds the 1 October holiday


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as db:
        yield db
    engine.dispose()


def ports_by_stop(session: Session) -> dict[str, Port]:
    return {p.gtfs_stop_id: p for p in session.scalars(select(Port))}


def test_ferry_routes_become_ports_routes_and_a_week_of_sailings(session):
    counts = import_gtfs(session, HARBOUR_FERRY, today=MONDAY)
    assert counts == {"ports": 3, "ports_linked": 0, "routes": 2, "routes_updated": 0, "sailings": 15,
                      "sailings_updated": 0, "ferry_trips": 4, "skipped_routes": 1}
    ports = ports_by_stop(session)
    assert set(ports) == {"CEN", "MWO", "CCH"}  # piers 5 and 6 are the Central station; the bus stop is no port
    assert ports["CEN"].locode == "HKHKG" and ports["CEN"].name == "Central Ferry Piers"
    for stop in ("MWO", "CCH"):
        code = ports[stop].locode
        assert len(code) == 5 and code.startswith("HK") and not is_locode(code)  # never a real port's code
    assert {p.timezone for p in ports.values()} == {"Asia/Hong_Kong"}
    assert {p.country for p in ports.values()} == {"HK"}
    mui_wo = session.scalars(select(Route).where(Route.gtfs_route_id == "MW")).one()
    assert (mui_wo.code, mui_wo.name, mui_wo.kind) == ("MW", "Central - Mui Wo", "passenger")


def test_sailing_times_are_utc_and_follow_the_holiday_calendar(session):
    import_gtfs(session, HARBOUR_FERRY, today=MONDAY)
    sailings = {s.code: s for s in session.scalars(select(Sailing))}
    first = sailings["MW-0700@20250929"]
    assert first.scheduled_departure == datetime(2025, 9, 28, 23, 0, tzinfo=UTC)  # 07:00 in Hong Kong
    assert first.scheduled_arrival == datetime(2025, 9, 28, 23, 40, tzinfo=UTC)
    assert first.gtfs_trip_id == "MW-0700" and first.status == "scheduled"
    assert (first.origin.locode, first.route.code) == ("HKHKG", "MW")
    assert "MW-0700@20251001" not in sailings  # weekday service removed on the holiday ...
    late = sailings["CC-2330@20251001"]  # ... and the weekend service added
    assert late.scheduled_arrival == datetime(2025, 10, 1, 16, 25, tzinfo=UTC)  # "24:25:00" is 00:25 next day
    via_mui_wo = sailings["CC-0900@20250930"]
    assert via_mui_wo.destination.gtfs_stop_id == "CCH"  # one sailing from first to last stop
    assert sorted(code.split("@")[1] for code in sailings if code.startswith("CC-2330")) == \
        ["20251001", "20251004", "20251005"]


def test_importing_again_creates_nothing_twice(session):
    import_gtfs(session, HARBOUR_FERRY, today=MONDAY)
    session.commit()
    again = import_gtfs(session, HARBOUR_FERRY, today=MONDAY)
    assert (again["ports"], again["routes"], again["sailings"]) == (0, 0, 0)
    assert (again["routes_updated"], again["sailings_updated"]) == (2, 15)
    assert len(session.scalars(select(Sailing)).all()) == 15


def test_the_zip_gives_what_the_folder_gives(session):
    counts = import_gtfs(session, HARBOUR_FERRY.parent / "harbour-ferry.zip", today=MONDAY, days=2)
    assert (counts["ports"], counts["routes"], counts["sailings"]) == (3, 2, 6)


def test_an_existing_port_is_linked_and_given_locodes_win(session):
    session.add(Port(locode="HKHKG", name="Hong Kong", country="HK", lat=22.3, lon=114.2, timezone="Asia/Hong_Kong"))
    session.flush()
    counts = import_gtfs(session, HARBOUR_FERRY, today=MONDAY, days=1, locodes={"MWO": "HKMWO"})
    assert counts["ports_linked"] == 1 and counts["ports"] == 2
    ports = ports_by_stop(session)
    assert ports["CEN"].locode == "HKHKG" and ports["MWO"].locode == "HKMWO"


@pytest.mark.parametrize("broken_file, content, reason", [
    ("stops.txt", None, "has no stops.txt"),
    ("agency.txt", "agency_id,agency_name,agency_timezone\nHF,x,Mars/Olympus\n", "unknown time zone"),
    ("stop_times.txt", "trip_id,arrival_time,departure_time,stop_id,stop_sequence\nMW-0700,7am,7am,CEN5,1\n"
                       "MW-0700,07:40:00,07:40:00,MWO,2\n", "time '7am' is not HH:MM:SS"),
    ("stops.txt", "stop_id,stop_name,stop_lat,stop_lon\nCEN5,Pier,north,114\nMWO,Mui Wo,22.2,113.9\n"
                  "CCH,Cheung Chau,22.2,114.0\nCEN6,Pier 6,22.2,114.1\n", "coordinate 'north' is not a number"),
    ("calendar.txt", "service_id,start_date\nWK,20250101\n", r"lacks the column\(s\) end_date, monday"),
])
def test_a_broken_feed_is_refused_with_the_reason(session, tmp_path, broken_file, content, reason):
    feed = tmp_path / "feed"
    shutil.copytree(HARBOUR_FERRY, feed)
    if content is None:
        (feed / broken_file).unlink()
    else:
        (feed / broken_file).write_text(content)
    with pytest.raises(FeedParseError, match=reason):
        import_gtfs(session, feed, today=MONDAY)


def test_a_file_that_is_not_a_zip_is_refused(session, tmp_path):
    not_zip = tmp_path / "feed.zip"
    not_zip.write_text("hello")
    with pytest.raises(FeedParseError, match="is not a zip file"):
        import_gtfs(session, not_zip)
    with pytest.raises(FeedParseError, match="does not exist"):
        import_gtfs(session, tmp_path / "nowhere")


def test_synthetic_locodes_are_stable_distinct_and_never_real():
    taken: set[str] = set()
    codes = []
    for stop_id in ["4", "87", "113", "234", "pier-A", "pier-B", "999"]:
        code = synthetic_locode(stop_id, "US", taken)
        taken.add(code)
        codes.append(code)
    assert codes[:3] == ["US004", "US087", "US113"]
    assert len(set(codes)) == len(codes) and not any(is_locode(c) for c in codes)
    assert synthetic_locode("pier-A", "US", set()) == codes[4]


def test_the_real_nyc_ferry_schedule(session, shared_feeds):
    counts = import_gtfs(session, shared_feeds / "gtfs-static" / "nyc-ferry", today=date(2025, 6, 2))
    assert counts["routes"] == 6 and counts["skipped_routes"] == 2  # the two Rockaway shuttle bus routes
    assert counts["ports"] == 25 and counts["sailings"] > 1000
    ports = {p.name: p for p in session.scalars(select(Port))}
    assert ports["Wall St/Pier 11"].timezone == "America/New_York" and ports["Wall St/Pier 11"].country == "US"
    assert "Rockaway Beach Boulevard & Beach 86th St" not in ports  # a bus stop
    astoria = session.scalars(select(Route).where(Route.code == "AS")).one()
    assert astoria.name == "Astoria"
    first = session.scalars(select(Sailing).order_by(Sailing.scheduled_departure)).first()
    assert first.scheduled_departure.date() == date(2025, 6, 2)
    assert 9 <= first.scheduled_departure.hour <= 11  # the first boats leave around 05:30-06:30 in New York


def test_the_fixture_zip_matches_the_fixture_folder():
    with zipfile.ZipFile(HARBOUR_FERRY.parent / "harbour-ferry.zip") as archive:
        for name in archive.namelist():
            assert archive.read(name) == (HARBOUR_FERRY / name).read_bytes(), name
        assert sorted(archive.namelist()) == sorted(p.name for p in Path(HARBOUR_FERRY).glob("*.txt"))


def test_times_without_seconds_give_the_same_sailings(session, tmp_path):
    """Many real feeds (the Faroe Islands' among them) write stop times as HH:MM or H:MM."""
    feed = tmp_path / "feed"
    shutil.copytree(HARBOUR_FERRY, feed)
    stop_times = (feed / "stop_times.txt").read_text()
    (feed / "stop_times.txt").write_text(stop_times.replace(":00,", ",").replace("07:00,", "7:00,"))
    assert "7:00," in (feed / "stop_times.txt").read_text()
    import_gtfs(session, feed, today=MONDAY)
    sailings = {s.code: s for s in session.scalars(select(Sailing))}
    assert sailings["MW-0700@20250929"].scheduled_departure == datetime(2025, 9, 28, 23, 0, tzinfo=UTC)
    assert sailings["CC-2330@20251001"].scheduled_arrival == datetime(2025, 10, 1, 16, 25, tzinfo=UTC)  # 24:25
    assert len(sailings) == 15


@pytest.mark.parametrize("time", ["7", "07:0:0:0", "7h00", "07:60", "٠٧:٠٠"])
def test_a_time_that_is_not_a_time_is_refused(session, tmp_path, time):
    feed = tmp_path / "feed"
    shutil.copytree(HARBOUR_FERRY, feed)
    stop_times = (feed / "stop_times.txt").read_text()
    (feed / "stop_times.txt").write_text(stop_times.replace("07:00:00", time, 1))
    with pytest.raises(FeedParseError, match="time .* is (not HH:MM:SS|out of range)"):
        import_gtfs(session, feed, today=MONDAY)


def test_a_calendar_that_ended_gives_no_sailings_and_says_why(session):
    warnings: list[str] = []
    counts = import_gtfs(session, HARBOUR_FERRY, today=date(2031, 1, 6), warnings=warnings)
    assert counts["sailings"] == 0
    assert len(warnings) == 1 and warnings[0].startswith("the feed's calendar ends on ")
    assert "before 2031-01-06 .. 2031-01-12: no sailings imported" in warnings[0]
    assert import_gtfs(session, HARBOUR_FERRY, today=MONDAY, warnings=warnings) and len(warnings) == 1
