"""Load a static GTFS ferry schedule (zip or folder) into ports, routes and sailings.

Only ferry routes are read (route_type 4, or 1200 "ferry service" from the extended route types); buses and
trains in the same feed are skipped and counted. Each GTFS stop served by a ferry becomes a Port (a stop with a
parent station becomes the station's port), each ferry route a Route, and each trip a Sailing on every day its
service runs within the window `today` .. `today + days - 1` (from calendar.txt and calendar_dates.txt). A trip
with several calls becomes one sailing from its first stop to its last.

Ports need a UN/LOCODE, which GTFS does not carry. A port is matched, in this order, by its GTFS stop id, by a
code given in `locodes` (stop id -> LOCODE) or in a non-standard `locode` column of stops.txt; failing all three,
it gets a synthetic code: the country (from the agency's time zone) and three characters that always include a
0 or 1, digits a real UN/LOCODE never uses (`US087` for stop 87, else a digest of the stop id such as `US0K7`).
Such codes can never collide with a real port and can be replaced by real ones later through `locodes`.

Times follow the GTFS definition: a stop time is measured from "noon minus 12 hours" of the service day in the
agency's time zone (so 25:10:00 is 01:10 the next morning, and days with a DST change come out right), and is
stored in UTC. Many published feeds (the Faroe Islands' among them) write H:MM or HH:MM without seconds: those
are read too. Importing the same feed again updates sailings in place and creates nothing twice. A route that the
network file gave a vessel (`Route.vessel_id`) gives its new sailings that vessel and the vessel's capacities. A
feed whose calendar runs no service in the window adds a warning that says why there are no sailings. The
caller commits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.feeds import FeedParseError
from notifier.feeds.port_status import is_locode
from notifier.intake.capacity import set_capacity, vessel_capacity
from notifier.store.models import Port, Route, Sailing

FERRY_ROUTE_TYPES = {"4", "1200"}
# What reading a table can raise on a damaged file: bad CSV, bytes that are not UTF-8, a corrupt zip member.
# zipfile raises NotImplementedError for an unknown compression method and RuntimeError for an encrypted member.
UNREADABLE = (csv.Error, UnicodeDecodeError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
              RuntimeError, OSError)
# Refuse zip members that claim to unpack to more than this: a ferry schedule is a few megabytes.
MAX_TABLE_BYTES = 200_000_000
BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class _Trip:
    trip_id: str
    route_id: str
    service_id: str
    first: tuple[int, str, int] | None = None  # (stop_sequence, stop_id, departure seconds)
    last: tuple[int, str, int] | None = None  # (stop_sequence, stop_id, arrival seconds)
    calls: set[str] = field(default_factory=set)  # every stop the trip serves


def import_gtfs(session: Session, zip_path_or_dir: str | Path, *, today: date | None = None, days: int = 7,
                country: str | None = None, locodes: dict[str, str] | None = None,
                warnings: list[str] | None = None) -> dict[str, int]:
    """Load the ferry part of a static GTFS feed; return counts of what was created, updated and skipped (and
    append to `warnings` what the user should know: a calendar that runs no service in the window)."""
    with _GtfsFeed(Path(zip_path_or_dir)) as feed:
        zone = _agency_zone(feed)
        country = (country or _country_of(zone.key) or "ZZ").upper()
        routes, skipped_routes = _ferry_routes(feed)
        trips = _ferry_trips(feed, routes)
        _add_stop_times(feed, trips)
        first_day = today or datetime.now(zone).date()
        service_days = _service_days(feed, first_day, days)
        if warnings is not None and trips and not any(service_days.get(trip.service_id) for trip in trips.values()):
            warnings.append(_no_service_warning(feed, first_day, days))
        counts = Counter(skipped_routes=skipped_routes, ferry_trips=len(trips))
        ports = _import_ports(session, feed, trips, zone, country, locodes or {}, counts)
    route_rows = _import_routes(session, routes, trips, ports, counts)
    _import_sailings(session, trips, route_rows, ports, service_days, zone, counts)
    session.flush()
    return {name: counts[name] for name in ("ports", "ports_linked", "routes", "routes_updated", "sailings",
                                            "sailings_updated", "ferry_trips", "skipped_routes")}


# --- reading the feed -------------------------------------------------------------------------------------------

class _GtfsFeed:
    """The tables of a GTFS feed, from a zip file or a folder, as rows of stripped strings."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FeedParseError(f"GTFS feed {path} does not exist")
        self.path = path
        self.zip = None
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except UNREADABLE:
                raise FeedParseError(f"GTFS feed {path} is not a zip file we can read (nor a folder)") from None

    def __enter__(self) -> _GtfsFeed:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.zip is not None:
            self.zip.close()

    def has(self, table: str) -> bool:
        """True when the feed has this table (e.g. 'calendar_dates')."""
        return self._member(table) is not None

    def rows(self, table: str, required: tuple[str, ...] = (),
             optional: bool = False) -> Iterator[tuple[int, dict[str, str]]]:
        """(line, row) pairs of a table, checked for its required columns; an optional table may be absent."""
        member = self._member(table)
        if member is None:
            if not optional:
                raise FeedParseError(f"GTFS feed {self.path.name} has no {table}.txt")
            return
        line = 1
        try:
            with self._open(member) as stream:
                reader = csv.DictReader(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""))
                header = [name.strip() for name in reader.fieldnames or []]
                missing = [name for name in required if name not in header]
                if missing:
                    raise FeedParseError(f"GTFS {table}.txt lacks the column(s) {', '.join(missing)}")
                reader.fieldnames = header
                for row in reader:
                    line = reader.line_num
                    cells = {k: (v or "").strip() for k, v in row.items() if k is not None}
                    if any("\x00" in cell for cell in cells.values()):
                        # PostgreSQL text cannot hold NUL; a table with one is damaged, not a name to keep.
                        raise FeedParseError(f"GTFS {table}.txt line {line} holds a NUL character")
                    yield line, cells
        except UNREADABLE as exc:
            raise FeedParseError(f"GTFS {table}.txt near line {line} cannot be read ({exc})") from None

    def _member(self, table: str) -> Any:
        name = f"{table}.txt"
        if self.zip is None:
            candidate = self.path / name
            return candidate if candidate.is_file() else None
        # Some publishers zip the folder rather than its contents: accept the tables one level down too.
        for info in self.zip.infolist():
            if info.filename == name or (info.filename.endswith("/" + name) and info.filename.count("/") == 1):
                if info.file_size > MAX_TABLE_BYTES:
                    raise FeedParseError(f"GTFS {name} unpacks to {info.file_size} bytes; refusing over "
                                         f"{MAX_TABLE_BYTES}")
                return info
        return None

    def _open(self, member: Any) -> Any:
        return self.zip.open(member) if self.zip is not None else open(member, "rb")


def _agency_zone(feed: _GtfsFeed) -> ZoneInfo:
    for line, agency in feed.rows("agency", required=("agency_timezone",)):
        return time_zone(agency["agency_timezone"], f"GTFS agency.txt line {line}")
    raise FeedParseError("GTFS agency.txt has no agency")


def time_zone(name: str, where: str) -> ZoneInfo:
    """The IANA zone of that name, or a FeedParseError: every notice is rendered in its port's zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "Asia" is a folder, a 300-letter name too long a path
        raise FeedParseError(f"{where}: unknown time zone {name[:40]!r}") from None


def _country_of(zone_name: str) -> str | None:
    """The ISO country of an IANA zone, from the zone.tab shipped with tzdata ('America/New_York' -> 'US')."""
    try:
        table = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    for line in table.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and not line.startswith("#") and parts[2] == zone_name:
            return parts[0]
    return None


def _ferry_routes(feed: _GtfsFeed) -> tuple[dict[str, dict[str, str]], int]:
    routes, skipped = {}, 0
    for _, route in feed.rows("routes", required=("route_id", "route_type")):
        if route["route_type"] in FERRY_ROUTE_TYPES:
            routes[_stored_id(route["route_id"], Route.gtfs_route_id, "route_id")] = route
        else:
            skipped += 1
    return routes, skipped


def _ferry_trips(feed: _GtfsFeed, routes: dict[str, dict[str, str]]) -> dict[str, _Trip]:
    return {row["trip_id"]: _Trip(_stored_id(row["trip_id"], Sailing.gtfs_trip_id, "trip_id"), row["route_id"],
                                  row["service_id"])
            for _, row in feed.rows("trips", required=("route_id", "service_id", "trip_id"))
            if row["route_id"] in routes}


def _add_stop_times(feed: _GtfsFeed, trips: dict[str, _Trip]) -> None:
    """Note each ferry trip's calls, first departure and last arrival (the calls between make no sailing)."""
    required = ("trip_id", "stop_id", "stop_sequence", "arrival_time", "departure_time")
    for line, row in feed.rows("stop_times", required=required):
        trip = trips.get(row["trip_id"])
        if trip is None:
            continue
        where = f"GTFS stop_times.txt line {line}"
        trip.calls.add(row["stop_id"])
        sequence = _integer(row["stop_sequence"], f"{where}: stop_sequence")
        if trip.first is None or sequence < trip.first[0]:
            departure = row["departure_time"] or row["arrival_time"]
            trip.first = (sequence, row["stop_id"], _seconds(departure, where) if departure else -1)
        if trip.last is None or sequence > trip.last[0]:
            arrival = row["arrival_time"] or row["departure_time"]
            trip.last = (sequence, row["stop_id"], _seconds(arrival, where) if arrival else -1)
    for trip in trips.values():
        if trip.first is None or trip.first == trip.last:
            raise FeedParseError(f"GTFS trip {trip.trip_id} has fewer than two stop times")
        if trip.first[2] < 0 or trip.last[2] < 0:
            raise FeedParseError(f"GTFS trip {trip.trip_id} has no time at its first or last stop")
        if trip.last[2] < trip.first[2]:
            raise FeedParseError(f"GTFS trip {trip.trip_id} reaches its last stop before it leaves its first "
                                 "(check stop_sequence and the times in stop_times.txt)")


def _stored_id(value: str, column: Any, what: str) -> str:
    """A GTFS id that fits the column it is kept in (PostgreSQL refuses a longer one; SQLite would hide it)."""
    limit = column.property.columns[0].type.length
    if len(value) > limit:
        raise FeedParseError(f"GTFS {what} {value[:20]!r}... is {len(value)} characters; at most {limit} are kept")
    return value


def _integer(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FeedParseError(f"{what} {value[:20]!r} is not a whole number") from None


def _seconds(value: str, where: str) -> int:
    """'25:10:00' (or '25:10', '7:05') -> seconds after the service day's reference time (may pass 24:00)."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(part.isascii() and part.isdigit() and len(part) <= 2 for part in parts):
        raise FeedParseError(f"{where}: time {value[:20]!r} is not HH:MM:SS (nor H:MM)")
    hours, minutes, seconds = (int(part) for part in (parts + ["0"])[:3])
    if not (0 <= minutes < 60 and 0 <= seconds < 60 and 0 <= hours < 48):
        raise FeedParseError(f"{where}: time {value[:20]!r} is out of range")
    return hours * 3600 + minutes * 60 + seconds


# --- service calendar -------------------------------------------------------------------------------------------

def _service_days(feed: _GtfsFeed, first_day: date, days: int) -> dict[str, list[date]]:
    """service_id -> the days within the window on which it runs."""
    if not feed.has("calendar") and not feed.has("calendar_dates"):
        raise FeedParseError("GTFS feed has neither calendar.txt nor calendar_dates.txt: no service days")
    window = [first_day + timedelta(days=n) for n in range(days)]
    running: dict[str, set[date]] = defaultdict(set)
    weekdays = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    for line, row in feed.rows("calendar", ("service_id", "start_date", "end_date") + weekdays, optional=True):
        start, end = (_date(row[name], f"GTFS calendar.txt line {line}") for name in ("start_date", "end_date"))
        running[row["service_id"]].update(day for day in window
                                          if start <= day <= end and row[weekdays[day.weekday()]] == "1")
    for line, row in feed.rows("calendar_dates", ("service_id", "date", "exception_type"), optional=True):
        day = _date(row["date"], f"GTFS calendar_dates.txt line {line}")
        if day in window:
            if row["exception_type"] == "1":
                running[row["service_id"]].add(day)
            elif row["exception_type"] == "2":
                running[row["service_id"]].discard(day)
    return {service: sorted(days_run) for service, days_run in running.items()}


def _no_service_warning(feed: _GtfsFeed, first_day: date, days: int) -> str:
    """Why a feed gave no sailings: its calendar ends before the window (an out-of-date feed) or skips it."""
    last = max((_date(row["end_date"], f"GTFS calendar.txt line {line}")
                for line, row in feed.rows("calendar", ("service_id", "end_date"), optional=True)), default=None)
    dates = [_date(row["date"], f"GTFS calendar_dates.txt line {line}")
             for line, row in feed.rows("calendar_dates", ("service_id", "date", "exception_type"), optional=True)
             if row["exception_type"] == "1"]
    last = max([day for day in (last, *dates) if day is not None], default=None)
    window = f"{first_day:%Y-%m-%d} .. {first_day + timedelta(days=days - 1):%Y-%m-%d}"
    if last is not None and last < first_day:
        return f"the feed's calendar ends on {last:%Y-%m-%d}, before {window}: no sailings imported " \
               "(get a current feed, or give --today within its dates)"
    return f"the feed's calendar runs no ferry service in {window}: no sailings imported"


def _date(value: str, where: str) -> date:
    try:
        return datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        raise FeedParseError(f"{where}: date {value[:20]!r} is not YYYYMMDD") from None


def _service_moment(day: date, seconds: int, zone: ZoneInfo) -> datetime:
    """A GTFS stop time on a service day, in UTC: noon minus 12 h (elapsed, not wall clock), plus the time."""
    noon = datetime.combine(day, time(12), zone).astimezone(UTC)
    return noon - timedelta(hours=12) + timedelta(seconds=seconds)


# --- writing the rows -------------------------------------------------------------------------------------------

def _import_ports(session: Session, feed: _GtfsFeed, trips: dict[str, _Trip], zone: ZoneInfo, country: str,
                  locodes: dict[str, str], counts: Counter) -> dict[str, Port]:
    """stop_id -> Port for every stop a ferry calls at (intermediate calls too: GTFS-RT may name them)."""
    served = set().union(*(trip.calls for trip in trips.values()))
    stops = {row["stop_id"]: (line, row) for line, row in feed.rows("stops", required=("stop_id", "stop_name"))}
    missing = served - stops.keys()
    if missing:
        raise FeedParseError(f"GTFS stop_times.txt names stop(s) not in stops.txt: {', '.join(sorted(missing)[:5])}")
    taken = set(session.scalars(select(Port.locode)))
    ports = {}
    for stop_id in sorted(served):
        port_stop_id = stops[stop_id][1].get("parent_station") or stop_id
        if port_stop_id not in ports:
            line, stop = stops.get(port_stop_id, stops[stop_id])
            ports[port_stop_id] = _port(session, port_stop_id, stop, line, zone, country, locodes, taken, counts)
        ports[stop_id] = ports[port_stop_id]
    return ports


def _port(session: Session, stop_id: str, stop: dict[str, str], line: int, zone: ZoneInfo, country: str,
          locodes: dict[str, str], taken: set[str], counts: Counter) -> Port:
    port = session.scalars(select(Port).where(Port.gtfs_stop_id == _stored_id(stop_id, Port.gtfs_stop_id,
                                                                              "stop_id"))).first()
    given = (locodes.get(stop_id) or stop.get("locode") or "").upper()
    if port is None and given:
        if not is_locode(given):
            raise FeedParseError(f"locode {given!r} given for GTFS stop {stop_id} is not a UN/LOCODE")
        port = session.scalars(select(Port).where(Port.locode == given)).first()
        if port is not None:
            port.gtfs_stop_id = stop_id
            counts["ports_linked"] += 1
            return port
    where = f"GTFS stops.txt line {line}"
    lat, lon = _coordinate(stop.get("stop_lat", ""), -90, 90, where), _coordinate(stop.get("stop_lon", ""),
                                                                                  -180, 180, where)
    name = stop["stop_name"][:120]
    timezone = time_zone(stop["stop_timezone"], where).key if stop.get("stop_timezone") else zone.key
    if port is not None:
        port.name, port.lat, port.lon, port.timezone = name, lat, lon, timezone
        return port
    locode = given or synthetic_locode(stop_id, country, taken)
    taken.add(locode)
    port = Port(locode=locode, gtfs_stop_id=stop_id, name=name, country=locode[:2], lat=lat, lon=lon,
                timezone=timezone)
    session.add(port)
    counts["ports"] += 1
    return port


def _coordinate(value: str, low: float, high: float, where: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise FeedParseError(f"{where}: coordinate {value[:20]!r} is not a number") from None
    if not low <= number <= high:
        raise FeedParseError(f"{where}: coordinate {number} is outside {low}..{high}")
    return number


def synthetic_locode(stop_id: str, country: str, taken: set[str]) -> str:
    """A 5-character stand-in LOCODE for a stop without one; it always contains 0 or 1, so is never real."""
    if stop_id.isdigit() and len(stop_id) <= 3 and set(stop_id.zfill(3)) & {"0", "1"}:
        candidate = f"{country}{stop_id.zfill(3)}"
        if candidate not in taken:
            return candidate
    for attempt in range(10_000):
        digest = int(hashlib.sha256(f"{stop_id}#{attempt}".encode()).hexdigest(), 16)
        candidate = f"{country}0{BASE36[digest % 36]}{BASE36[digest // 36 % 36]}"
        if candidate not in taken:
            return candidate
    raise FeedParseError(f"no free synthetic LOCODE left for country {country}: give real ones with locodes")


def _import_routes(session: Session, routes: dict[str, dict[str, str]], trips: dict[str, _Trip],
                   ports: dict[str, Port], counts: Counter) -> dict[str, Route]:
    """gtfs route_id -> Route; a route's ends are its most common first and last stops."""
    ends: dict[str, Counter] = defaultdict(Counter)
    for trip in trips.values():
        ends[trip.route_id][(trip.first[1], trip.last[1])] += 1
    codes_taken = set(session.scalars(select(Route.code)))
    rows = {}
    for route_id, route in routes.items():
        if not ends[route_id]:
            continue  # a ferry route without trips has nothing to sail
        origin, destination = ends[route_id].most_common(1)[0][0]
        name = (route.get("route_long_name") or route.get("route_short_name") or route_id)[:200]
        row = session.scalars(select(Route).where(Route.gtfs_route_id == route_id)).first()
        if row is None:
            code = _route_code(route, route_id, codes_taken)
            codes_taken.add(code)
            row = Route(code=code, gtfs_route_id=route_id, kind="passenger", name=name,
                        origin=ports[origin], destination=ports[destination])
            session.add(row)
            counts["routes"] += 1
        else:
            row.name, row.origin, row.destination = name, ports[origin], ports[destination]
            counts["routes_updated"] += 1
        rows[route_id] = row
    return rows


def _route_code(route: dict[str, str], route_id: str, taken: set[str]) -> str:
    code = (route.get("route_short_name") or route_id)[:32]
    if code not in taken:
        return code
    # Two routes with one short name: the route id, else a digest of it, told apart within the 32 characters.
    for suffix in (f"-{route_id}", "-" + hashlib.sha256(route_id.encode()).hexdigest()[:8]):
        candidate = code[:max(32 - len(suffix), 0)] + suffix
        if len(candidate) <= 32 and candidate not in taken:
            return candidate
    raise FeedParseError(f"GTFS route {route_id[:20]!r}: no free route code for {code!r}")


def _import_sailings(session: Session, trips: dict[str, _Trip], routes: dict[str, Route], ports: dict[str, Port],
                     service_days: dict[str, list[date]], zone: ZoneInfo, counts: Counter) -> None:
    existing = {s.code: s for s in session.scalars(select(Sailing).where(Sailing.gtfs_trip_id.in_(list(trips))))}
    fresh: list[Sailing] = []
    for trip in trips.values():
        for day in service_days.get(trip.service_id, []):
            values = dict(route=routes[trip.route_id], origin=ports[trip.first[1]], destination=ports[trip.last[1]],
                          scheduled_departure=_service_moment(day, trip.first[2], zone),
                          scheduled_arrival=_service_moment(day, trip.last[2], zone))
            code = sailing_code(trip.trip_id, day)
            sailing = existing.get(code)
            if sailing is None:
                route = routes[trip.route_id]
                sailing = Sailing(code=code, gtfs_trip_id=trip.trip_id, vessel_id=route.vessel_id, **values)
                session.add(sailing)
                counts["sailings"] += 1
                if route.vessel_id is not None:
                    fresh.append(sailing)
            else:
                for name, value in values.items():
                    setattr(sailing, name, value)
                counts["sailings_updated"] += 1
    session.flush()
    for sailing in fresh:
        set_capacity(session, sailing, vessel_capacity(session, sailing.vessel_id))


def sailing_code(trip_id: str, day: date) -> str:
    """The sailing code of a GTFS trip on a service day: 'TRIP@20250331' (a digest when the trip id is long)."""
    code = f"{trip_id}@{day:%Y%m%d}"
    return code if len(code) <= 64 else f"gtfs-{hashlib.sha256(trip_id.encode()).hexdigest()[:24]}@{day:%Y%m%d}"
