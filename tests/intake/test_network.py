"""`import network`: operators, ports, vessels with capacities, routes with jurisdiction, and sailings from YAML."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from notifier.intake.gtfs import import_gtfs
from notifier.intake.network import NetworkError, import_network, load_network_file
from notifier.store.db import transaction
from notifier.store.models import (Booking, Customer, Operator, Route, Sailing, SailingCapacity, Vessel,
                                   VesselCapacity)

NETWORK = Path(__file__).resolve().parents[1] / "fixtures" / "intake" / "network.yaml"
HARBOUR_FERRY = Path(__file__).resolve().parents[1] / "fixtures/feeds/handmade/gtfs-static/harbour-ferry"
BEFORE = datetime(2026, 9, 1, tzinfo=UTC)


def load(factory, network, now=BEFORE):
    with transaction(factory) as session:
        return import_network(session, network, now=now)


def capacities(session, code):
    return dict(session.execute(select(SailingCapacity.space_class, SailingCapacity.capacity)
                                .join(Sailing).where(Sailing.code == code)).all())


def test_the_network_file_builds_routes_with_jurisdiction_vessels_and_capacities(factory):
    counts, kept = load(factory, load_network_file(NETWORK))
    assert (counts["ports_created"], counts["routes_created"], counts["sailings_created"], kept) == (2, 2, 3, [])
    with factory() as session:
        route = session.scalars(select(Route).where(Route.code == "DVR-CQF")).one()
        assert route.jurisdiction == "EU" and route.origin.locode == "GBDVR"
        assert session.get(Operator, route.operator_id).name == "Channel Strait Ferries"
        assert session.get(Vessel, route.vessel_id).name == "Spirit of the Strait"
        morning = session.scalars(select(Sailing).where(Sailing.code == "DVR-CQF-20260914-0800")).one()
        assert morning.scheduled_departure == datetime(2026, 9, 14, 7, 0, tzinfo=UTC)  # 08:00 in Dover (BST)
        back = session.scalars(select(Sailing).where(Sailing.code == "CQF-DVR-20260914-1100")).one()
        assert back.scheduled_arrival == datetime(2026, 9, 14, 10, 30, tzinfo=UTC)  # 11:30 in Dover
        assert capacities(session, "DVR-CQF-20260914-0800") == {"economy": 1000, "vehicle": 180, "lane_metres": 2700}
        assert capacities(session, "DVR-CQF-20260914-1200") == {"economy": 400, "vehicle": 60}  # its own


def test_importing_the_same_file_again_changes_nothing(factory):
    network = load_network_file(NETWORK)
    load(factory, network)
    counts, kept = load(factory, network)
    assert sum(counts.values()) == 0 and kept == []
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Sailing)) == 3
        assert session.scalar(select(func.count()).select_from(VesselCapacity)) == 3


def test_a_changed_file_updates_in_place_and_never_silently_drops_a_booked_sailing(factory):
    network = load_network_file(NETWORK)
    load(factory, network)
    with transaction(factory) as session:
        session.add(Customer(ref="C1", name="Alice"))
        session.flush()
        booked = session.scalars(select(Sailing).where(Sailing.code == "DVR-CQF-20260914-0800")).one()
        session.add(Booking(ref="B1", kind="passenger", customer_id=1, sailing_id=booked.id, space_class="economy",
                            currency="GBP"))
    network["routes"][0]["jurisdiction"] = "OTHER"
    network["sailings"] = [dict(network["sailings"][2], arrival="2026-09-14T12:00")]  # two dropped, one later
    counts, kept = load(factory, network)
    assert (counts["routes_updated"], counts["sailings_updated"], counts["sailings_removed"]) == (1, 1, 1)
    assert kept == ["DVR-CQF-20260914-0800"]  # it has a booking: kept and named, not deleted
    with factory() as session:
        assert set(session.scalars(select(Sailing.code))) == {"DVR-CQF-20260914-0800", "CQF-DVR-20260914-1100"}
        assert session.scalar(select(Route.jurisdiction).where(Route.code == "DVR-CQF")) == "OTHER"


@pytest.mark.parametrize("change, reason", [
    (lambda n: n["routes"][0].update(jurisdiction="US"), "jurisdiction 'US' is not one of EU, CN, HK, OTHER"),
    (lambda n: n["ports"][0].update(locode="DVR"), "'DVR' is not a UN/LOCODE"),
    (lambda n: n["ports"][0].update(timezone="Europe/Dover"), "unknown time zone 'Europe/Dover'"),
    (lambda n: n["routes"][0].update(origin="GBXXX"), "routes: DVR-CQF: origin: no port 'GBXXX'"),
    (lambda n: n["sailings"][0].update(departure="tomorrow"), "departure 'tomorrow' is not ISO 8601"),
    (lambda n: n["vessels"][0].update(capacity={"economy": "lots"}), "capacity must map a class"),
    (lambda n: n["sailings"].append(dict(n["sailings"][0])), "code 'DVR-CQF-20260914-0800' appears twice"),
])
def test_a_wrong_entry_is_refused_with_where_and_why_and_nothing_is_written(factory, change, reason):
    network = load_network_file(NETWORK)
    change(network)
    with pytest.raises(NetworkError, match=reason):
        load(factory, network)
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Route)) == 0


def test_a_file_that_is_not_a_network_is_refused(tmp_path):
    broken = tmp_path / "network.yaml"
    broken.write_text("ports: [unclosed\n")
    with pytest.raises(NetworkError, match="not valid YAML"):
        load_network_file(broken)
    broken.write_text(yaml.safe_dump({"harbours": []}))
    with pytest.raises(NetworkError, match="a network file is a mapping of operators, ports"):
        load_network_file(broken)


def test_gtfs_sailings_take_their_route_vessel_and_its_capacities(factory):
    with transaction(factory) as session:
        import_gtfs(session, HARBOUR_FERRY, today=date(2025, 9, 29), days=1, locodes={"MWO": "HKMWO"})
    network = {"vessels": [{"imo": "9100001", "name": "New Ferry LXX", "capacity": {"economy": 400}}],
               "routes": [{"code": "MW", "name": "Central - Mui Wo", "origin": "HKHKG", "destination": "HKMWO",
                           "jurisdiction": "HK", "vessel": "9100001", "gtfs_route_id": "MW"}]}
    load(factory, network)
    with transaction(factory) as session:
        import_gtfs(session, HARBOUR_FERRY, today=date(2025, 9, 30), days=1)
    with factory() as session:
        assert capacities(session, "MW-0700@20250930") == {"economy": 400}
        assert capacities(session, "MW-0700@20250929") == {}  # imported before the route had a vessel
