"""`notifier import network`: the operator's network in from one YAML file (schemas/network.schema.json).

Operators, ports (UN/LOCODE, IANA time zone), vessels with their capacity per class, routes with the
jurisdiction that decides the passengers' entitlements (EU, CN, HK, OTHER) and their usual vessel, and sailings
with their own capacity where it differs from their vessel's. Everything is matched by its own key (operator
code, LOCODE, IMO, route code, sailing code) and updated in place, so importing the same file again changes
nothing. A sailing that the file no longer lists (a future one, on a route of the file or of its sailings, when
the file lists sailings at all) is removed when nothing refers to it, and kept and reported when bookings, offers
or a disruption refer to it. A sailing's departure without an offset is the local time of its origin port. The
caller commits.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from notifier.errors import UsageError
from notifier.feeds import FeedParseError
from notifier.feeds.port_status import is_locode
from notifier.intake.capacity import set_capacity, vessel_capacity
from notifier.intake.gtfs import time_zone
from notifier.intake.sources import read_yaml
from notifier.store.models import (Booking, Disruption, Offer, Operator, Port, Route, Sailing, SailingCapacity, Vessel,
                                   VesselCapacity)

MAX_NETWORK_BYTES = 50_000_000
JURISDICTIONS = ("EU", "CN", "HK", "OTHER")
SECTIONS = ("operators", "ports", "vessels", "routes", "sailings")


class NetworkError(UsageError):
    """A network file that cannot be loaded: it says where and what."""


def load_network_file(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The sections of a network YAML file, each a list of mappings."""
    path = Path(path)
    raw = read_yaml(path, MAX_NETWORK_BYTES, NetworkError)
    if not isinstance(raw, dict) or set(raw) - set(SECTIONS):
        raise NetworkError(f"{path}: a network file is a mapping of {', '.join(SECTIONS)}")
    for section, entries in raw.items():
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise NetworkError(f"{path}: {section} must be a list of entries")
    return {section: raw.get(section) or [] for section in SECTIONS}


def import_network(session: Session, network: dict[str, list[dict[str, Any]]], now: datetime | None = None
                   ) -> tuple[Counter, list[str]]:
    """Create or update everything the file describes; returns counts and the removed sailings that were kept."""
    counts: Counter = Counter()
    operators = {entry["code"]: _operator(session, entry, counts) for entry in _keyed(network, "operators", "code")}
    ports = {entry["locode"]: _port(session, entry, counts) for entry in _keyed(network, "ports", "locode")}
    vessels = {str(entry["imo"]): _vessel(session, entry, counts) for entry in _keyed(network, "vessels", "imo")}
    session.flush()
    routes = {entry["code"]: _route(session, entry, operators, ports, vessels, counts)
              for entry in _keyed(network, "routes", "code")}
    session.flush()
    # A file that lists sailings lists all of them for its own routes (a GTFS route's come from the GTFS feed).
    listed: dict[int, set[str]] = {route.id: set() for route in routes.values()
                                   if network.get("sailings") and route.gtfs_route_id is None}
    for entry in _keyed(network, "sailings", "code"):
        sailing = _sailing(session, entry, routes, vessels, counts)
        listed.setdefault(sailing.route_id, set()).add(sailing.code)
    session.flush()
    kept = _remove_unlisted(session, listed, now or datetime.now(UTC), counts)
    return counts, kept


def _keyed(network: dict[str, list[dict[str, Any]]], section: str, key: str) -> list[dict[str, Any]]:
    seen = set()
    for number, entry in enumerate(network.get(section, []), start=1):
        value = entry.get(key)
        if value in (None, ""):
            raise NetworkError(f"{section} entry {number} has no {key}")
        if str(value) in seen:
            raise NetworkError(f"{section}: {key} {value!r} appears twice")
        seen.add(str(value))
    return network.get(section, [])


def _upserted(session: Session, model: type, key: str, value: Any, values: dict[str, Any], counts: Counter,
              name: str) -> Any:
    row = session.scalars(select(model).where(getattr(model, key) == value)).first()
    if row is None:
        row = model(**{key: value}, **values)
        session.add(row)
        counts[f"{name}_created"] += 1
    elif any(getattr(row, column) != wanted for column, wanted in values.items()):
        for column, wanted in values.items():
            setattr(row, column, wanted)
        counts[f"{name}_updated"] += 1
    return row


def _operator(session: Session, entry: dict[str, Any], counts: Counter) -> Operator:
    return _upserted(session, Operator, "code", _text(entry, "code", "operators", 32),
                     {"name": _text(entry, "name", "operators", 200)}, counts, "operators")


def _port(session: Session, entry: dict[str, Any], counts: Counter) -> Port:
    locode = str(entry["locode"]).upper()
    if not is_locode(locode):
        raise NetworkError(f"ports: {locode[:20]!r} is not a UN/LOCODE (like HKHKG)")
    where = f"ports: {locode}"
    values = {"name": _text(entry, "name", where, 120), "name_zh": entry.get("name_zh"),
              "country": str(entry.get("country") or locode[:2]).upper(),
              "lat": _number(entry, "lat", -90, 90, where), "lon": _number(entry, "lon", -180, 180, where),
              "timezone": _zone(_text(entry, "timezone", where, 64), where),
              "zone_codes": [str(code) for code in entry.get("zone_codes") or []],
              "gtfs_stop_id": entry.get("gtfs_stop_id")}
    return _upserted(session, Port, "locode", locode, values, counts, "ports")


def _vessel(session: Session, entry: dict[str, Any], counts: Counter) -> Vessel:
    imo = str(entry["imo"])
    if not (imo.isdigit() and len(imo) == 7):
        raise NetworkError(f"vessels: IMO number {imo[:20]!r} is not 7 digits")
    vessel = _upserted(session, Vessel, "imo", imo, {"name": _text(entry, "name", f"vessels: {imo}", 120)},
                       counts, "vessels")
    session.flush()
    capacity = _capacity(entry, f"vessels: {imo}")
    current = {row.space_class: row for row in session.scalars(select(VesselCapacity)
                                                              .where(VesselCapacity.vessel_id == vessel.id))}
    for space_class, places in capacity.items():
        if space_class not in current:
            session.add(VesselCapacity(vessel_id=vessel.id, space_class=space_class, capacity=places))
        elif current[space_class].capacity != places:
            current[space_class].capacity = places
    for space_class in current.keys() - capacity.keys():
        session.delete(current[space_class])
    return vessel


def _route(session: Session, entry: dict[str, Any], operators: dict[str, Operator], ports: dict[str, Port],
           vessels: dict[str, Vessel], counts: Counter) -> Route:
    code = _text(entry, "code", "routes", 32)
    where = f"routes: {code}"
    jurisdiction = str(entry.get("jurisdiction", "OTHER")).upper()
    if jurisdiction not in JURISDICTIONS:
        raise NetworkError(f"{where}: jurisdiction {jurisdiction[:10]!r} is not one of {', '.join(JURISDICTIONS)}")
    kind = str(entry.get("kind", "passenger"))
    if kind not in ("passenger", "cargo"):
        raise NetworkError(f"{where}: kind must be passenger or cargo")
    values = {"name": _text(entry, "name", where, 200), "kind": kind, "jurisdiction": jurisdiction,
              "origin_port_id": _known_port(session, ports, entry, "origin", where).id,
              "destination_port_id": _known_port(session, ports, entry, "destination", where).id,
              "gtfs_route_id": entry.get("gtfs_route_id"),
              "operator_id": _known(session, Operator, "code", operators, entry.get("operator"), where).id
              if entry.get("operator") else None,
              "vessel_id": _known(session, Vessel, "imo", vessels, str(entry["vessel"]), where).id
              if entry.get("vessel") else None}
    return _upserted(session, Route, "code", code, values, counts, "routes")


def _sailing(session: Session, entry: dict[str, Any], routes: dict[str, Route], vessels: dict[str, Vessel],
             counts: Counter) -> Sailing:
    code = _text(entry, "code", "sailings", 64)
    where = f"sailings: {code}"
    route = _known(session, Route, "code", routes, str(entry.get("route", "")), where)
    vessel = _known(session, Vessel, "imo", vessels, str(entry["vessel"]), where) if entry.get("vessel") else None
    origin = session.get(Port, route.origin_port_id)
    values = {"route_id": route.id, "vessel_id": vessel.id if vessel else route.vessel_id,
              "voyage": entry.get("voyage"), "origin_port_id": route.origin_port_id,
              "destination_port_id": route.destination_port_id,
              "scheduled_departure": _moment(entry, "departure", origin.timezone, where),
              "scheduled_arrival": _moment(entry, "arrival", session.get(Port, route.destination_port_id).timezone,
                                           where)}
    if values["scheduled_arrival"] <= values["scheduled_departure"]:
        raise NetworkError(f"{where}: arrives before it departs")
    sailing = _upserted(session, Sailing, "code", code, values, counts, "sailings")
    session.flush()
    set_capacity(session, sailing, _capacity(entry, where) or vessel_capacity(session, values["vessel_id"]))
    return sailing


def _remove_unlisted(session: Session, listed: dict[int, set[str]], now: datetime, counts: Counter) -> list[str]:
    """Remove the future sailings of the listed routes that the file no longer lists; keep (and name) the ones
    that bookings, offers or disruptions refer to: those are for a person to settle, never to vanish."""
    kept = []
    for route_id, codes in listed.items():
        gone = session.scalars(select(Sailing).where(Sailing.route_id == route_id, Sailing.code.not_in(codes),
                                                     Sailing.scheduled_departure >= now)).all()
        for sailing in gone:
            if any(session.scalar(select(exists().where(model.sailing_id == sailing.id)))
                   for model in (Booking, Offer, Disruption)):
                kept.append(sailing.code)
                continue
            session.execute(delete(SailingCapacity).where(SailingCapacity.sailing_id == sailing.id))
            session.delete(sailing)
            counts["sailings_removed"] += 1
    return kept


def _known(session: Session, model: type, key: str, named: dict[str, Any], value: str, where: str) -> Any:
    row = named.get(value) or session.scalars(select(model).where(getattr(model, key) == value)).first()
    if row is None:
        raise NetworkError(f"{where}: no {model.__tablename__[:-1]} {value[:40]!r} in the file or the database")
    return row


def _known_port(session: Session, ports: dict[str, Port], entry: dict[str, Any], name: str, where: str) -> Port:
    return _known(session, Port, "locode", ports, str(entry.get(name, "")).upper(), f"{where}: {name}")


def _capacity(entry: dict[str, Any], where: str) -> dict[str, int]:
    capacity = entry.get("capacity") or {}
    if not isinstance(capacity, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10**6
                                                 for v in capacity.values()):
        raise NetworkError(f"{where}: capacity must map a class (economy, vehicle, teu ...) to a whole number")
    return {str(space_class)[:32]: places for space_class, places in capacity.items()}


def _moment(entry: dict[str, Any], name: str, zone: str, where: str) -> datetime:
    value = entry.get(name)
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        raise NetworkError(f"{where}: {name} {str(value)[:30]!r} is not ISO 8601 (2026-09-14T08:30)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(zone))).astimezone(UTC)


def _zone(name: str, where: str) -> str:
    try:
        return time_zone(name, where).key
    except FeedParseError as exc:
        raise NetworkError(str(exc)) from None


def _text(entry: dict[str, Any], name: str, where: str, limit: int) -> str:
    value = str(entry.get(name) or "").strip()
    if not value or len(value) > limit or not value.isprintable():
        raise NetworkError(f"{where}: {name} must be printable text of 1 to {limit} characters")
    return value


def _number(entry: dict[str, Any], name: str, low: float, high: float, where: str) -> float:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise NetworkError(f"{where}: {name} must be a number from {low} to {high}")
    return float(value)
