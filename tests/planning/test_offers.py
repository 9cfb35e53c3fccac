"""Rebooking offers keep their promises: only sailings that can carry the party or the cargo, places held never
beyond capacity (also with two planners at once, on SQLite and PostgreSQL), holds given back when they expire,
scarce places in the configured priority, and the refund in the currency paid."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update

from notifier.planning.plan import create_automatic, plan_broadcast
from notifier.store.settings import ConfigError
from notifier.store.db import make_engine, session_factory, transaction
from notifier.rules.entitlements import policy_tags
from notifier.ops.demo import bundled_feed, generate
from notifier.feeds import cap
from notifier.store.models import (Booking, Broadcast, Customer, Disruption, Offer, Port, Route, Sailing,
                                   SailingCapacity)
from notifier.planning.offers import expire_holds, make_offers, planning_order, refund_amount
from notifier.store.capacity import candidates_for, convert_hold, release
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import ingest, process_new_items
from notifier.rules.load import load_rule_set, load_rules
from tests.conftest import DEMO_NOW

T0 = datetime(2026, 9, 14, 2, 0, tzinfo=UTC)
WINDOW_END = T0 + timedelta(hours=10)


# --- a small hand-built strait: one disrupted sailing, alternatives after the window --------------------------------

def build_strait(session, alternatives: list[dict], kind: str = "passenger", jurisdiction: str = "CN") -> Disruption:
    """Ports A -> B, a cancelled sailing at T0, and the given alternatives (hours after T0, capacities, DG flag)."""
    a = Port(locode="CNAAA", name="Alpha", name_zh="甲港", country="CN", lat=20.0, lon=110.0,
             timezone="Asia/Shanghai", zone_codes=[])
    b = Port(locode="CNBBB", name="Beta", name_zh="乙港", country="CN", lat=20.3, lon=110.2,
             timezone="Asia/Shanghai", zone_codes=[])
    session.add_all([a, b])
    session.flush()
    route = Route(code="A-B", name="Alpha - Beta", kind=kind, origin_port_id=a.id, destination_port_id=b.id,
                  jurisdiction=jurisdiction)
    session.add(route)
    session.flush()
    disrupted = sailing(session, route, "A-B-0", T0, {"economy": 100, "business": 10, "vehicle": 10,
                                                      "teu": 100, "reefer": 10})
    for number, alternative in enumerate(alternatives, start=1):
        sailing(session, route, f"A-B-{number}", T0 + timedelta(hours=alternative["hours"]), alternative["spaces"],
                dangerous_goods=alternative.get("dg", True))
    disruption = Disruption(active_key=f"{disrupted.id}:cancelled", sailing_id=disrupted.id, kind="cancelled",
                            cause="weather", cause_text="Typhoon", window_start=T0 - timedelta(hours=2),
                            window_end=WINDOW_END, policy={"entitlements": ["rebook", "refund_full"]},
                            notify={"template": "cancelled", "channels": ["sms", "email"]})
    session.add(disruption)
    session.flush()
    return disruption


def sailing(session, route: Route, code: str, departure: datetime, spaces: dict[str, int],
            dangerous_goods: bool = True) -> Sailing:
    row = Sailing(code=code, route_id=route.id, origin_port_id=route.origin_port_id,
                  destination_port_id=route.destination_port_id, scheduled_departure=departure,
                  scheduled_arrival=departure + timedelta(hours=2), status="scheduled",
                  dangerous_goods_accepted=dangerous_goods)
    session.add(row)
    session.flush()
    session.add_all([SailingCapacity(sailing_id=row.id, space_class=space, capacity=places, booked=0, held=0)
                     for space, places in spaces.items()])
    session.flush()
    return row


def book(session, sailing_id: int, ref: str, **fields) -> Booking:
    customer = Customer(ref=f"C-{ref}", name=f"Customer {ref}", phone="+8613800138000", email=f"{ref}@example.com",
                        language="en", channels=["sms", "email"])
    session.add(customer)
    session.flush()
    values = {"kind": "passenger", "space_class": "economy", "party_size": 1, "fare_paid": Decimal("45.00"),
              "currency": "CNY", "status": "confirmed"} | fields
    booking = Booking(ref=ref, customer_id=customer.id, sailing_id=sailing_id, **values)
    session.add(booking)
    session.flush()
    return booking


def offered_sailings(offers: list[Offer]) -> list[tuple[str, str]]:
    return [(offer.kind, offer.sailing.code if offer.sailing else "-") for offer in offers]


def capacity(session, code: str, space: str) -> SailingCapacity:
    # The counters move by UPDATE statements: read them fresh, not from the session's identity map.
    return session.scalar(select(SailingCapacity).join(Sailing)
                          .where(Sailing.code == code, SailingCapacity.space_class == space)
                          .execution_options(populate_existing=True))


def test_a_car_is_only_offered_a_sailing_with_room_on_the_vehicle_deck(factory, tmp_settings):
    with transaction(factory) as session:
        disruption = build_strait(session, [{"hours": 12, "spaces": {"economy": 50}},
                                            {"hours": 14, "spaces": {"economy": 50, "vehicle": 0}},
                                            {"hours": 16, "spaces": {"economy": 50, "vehicle": 5}}])
        car = book(session, disruption.sailing_id, "T1", party_size=2, vehicles=1)
        offers = make_offers(session, car, disruption, candidates_for(session, disruption), tmp_settings, T0)
        session.flush()
        assert offered_sailings(offers) == [("rebook", "A-B-3"), ("refund", "-")]
        assert capacity(session, "A-B-3", "vehicle").held == 1
        assert capacity(session, "A-B-3", "economy").held == 2
        assert capacity(session, "A-B-1", "economy").held == 0  # no vehicle deck at all: not even tried


def test_dangerous_goods_and_reefers_go_only_where_they_are_carried(factory, tmp_settings):
    with transaction(factory) as session:
        disruption = build_strait(session, [{"hours": 24, "spaces": {"teu": 500, "reefer": 20}, "dg": False},
                                            {"hours": 48, "spaces": {"teu": 500}},
                                            {"hours": 72, "spaces": {"teu": 500, "reefer": 2}}], kind="cargo")
        cargo = dict(kind="cargo", space_class="teu", party_size=0, fare_paid=Decimal("13800.00"), currency="USD")
        dg_reefer = book(session, disruption.sailing_id, "BKG-DG", teu=12, reefer_plugs=2, dangerous_goods=True,
                         **cargo)
        plain = book(session, disruption.sailing_id, "BKG-DRY", teu=4, **cargo)
        candidates = candidates_for(session, disruption)
        dg_offers = make_offers(session, dg_reefer, disruption, candidates, tmp_settings, T0)
        plain_offers = make_offers(session, plain, disruption, candidates, tmp_settings, T0)
        session.flush()
        assert offered_sailings(dg_offers) == [("rebook", "A-B-3"), ("refund", "-")]
        assert offered_sailings(plain_offers)[:2] == [("rebook", "A-B-1"), ("rebook", "A-B-2")]
        assert dg_offers[0].holds == {"teu": 12, "reefer": 2}
        assert capacity(session, "A-B-3", "reefer").held == 2
        refund = dg_offers[-1]
        assert (refund.amount, refund.currency) == (Decimal("13800.00"), "USD")


def test_a_party_too_big_for_the_next_sailing_gets_held_places_on_later_ones(factory, tmp_settings):
    with transaction(factory) as session:
        disruption = build_strait(session, [{"hours": 12, "spaces": {"economy": 3}},
                                            {"hours": 14, "spaces": {"economy": 40}},
                                            {"hours": 16, "spaces": {"economy": 40}}])
        family = book(session, disruption.sailing_id, "T2", party_size=4)
        offers = make_offers(session, family, disruption, candidates_for(session, disruption), tmp_settings, T0)
        session.flush()
        assert offered_sailings(offers) == [("rebook", "A-B-2"), ("rebook", "A-B-3"), ("refund", "-")]
        assert [o.option_key for o in offers] == ["1", "2", "R"]
        assert all(o.status == "held" and o.hold_expires_at == T0 + timedelta(minutes=tmp_settings.hold_minutes)
                   for o in offers[:2])
        assert capacity(session, "A-B-1", "economy").held == 0


def test_with_no_place_left_the_offer_is_the_first_sailing_unheld_beside_the_refund(factory, tmp_settings):
    with transaction(factory) as session:
        disruption = build_strait(session, [{"hours": 12, "spaces": {"economy": 1}},
                                            {"hours": 14, "spaces": {"economy": 1}}])
        pair = book(session, disruption.sailing_id, "T3", party_size=2)
        offers = make_offers(session, pair, disruption, candidates_for(session, disruption), tmp_settings, T0)
        session.flush()
        assert offered_sailings(offers) == [("standby", "A-B-1"), ("refund", "-")]
        assert offers[0].status == "open" and offers[0].hold_expires_at is None
        assert session.scalar(select(func.sum(SailingCapacity.held))) == 0


def test_sailings_inside_the_window_or_themselves_cancelled_are_not_offered(factory, tmp_settings):
    with transaction(factory) as session:
        disruption = build_strait(session, [{"hours": 5, "spaces": {"economy": 50}},
                                            {"hours": 12, "spaces": {"economy": 50}},
                                            {"hours": 13, "spaces": {"economy": 50}}])
        also_cancelled = session.scalar(select(Sailing).where(Sailing.code == "A-B-2"))
        session.add(Disruption(active_key=f"{also_cancelled.id}:cancelled", sailing_id=also_cancelled.id,
                               kind="cancelled", cause="technical"))
        session.flush()
        assert [c.code for c in candidates_for(session, disruption)] == ["A-B-3"]


def test_expired_holds_give_their_places_back_exactly_once(factory, tmp_settings):
    with transaction(factory) as session:
        disruption = build_strait(session, [{"hours": 12, "spaces": {"economy": 10, "vehicle": 2}}])
        car = book(session, disruption.sailing_id, "T4", party_size=3, vehicles=1)
        make_offers(session, car, disruption, candidates_for(session, disruption), tmp_settings, T0)
    hold_end = T0 + timedelta(minutes=tmp_settings.hold_minutes)
    with transaction(factory) as session:
        assert expire_holds(session, hold_end - timedelta(seconds=1)) == 0
        assert capacity(session, "A-B-1", "economy").held == 3
    with transaction(factory) as session:
        assert expire_holds(session, hold_end + timedelta(seconds=1)) == 1
    with transaction(factory) as session:
        assert expire_holds(session, hold_end + timedelta(hours=1)) == 0
        assert (capacity(session, "A-B-1", "economy").held, capacity(session, "A-B-1", "vehicle").held) == (0, 0)
        assert session.scalar(select(Offer.status).where(Offer.kind == "rebook")) == "expired"


def test_a_hold_taken_by_the_customer_cannot_also_be_released(factory, tmp_settings):
    with transaction(factory) as session:
        disruption = build_strait(session, [{"hours": 12, "spaces": {"economy": 10}}])
        booking = book(session, disruption.sailing_id, "T5", party_size=2)
        offer = make_offers(session, booking, disruption, candidates_for(session, disruption), tmp_settings, T0)[0]
        session.flush()
        assert convert_hold(session, offer)
        assert not release(session, offer, "expired")  # the watcher came second: counters untouched
        economy = capacity(session, "A-B-1", "economy")
        session.refresh(economy)
        assert (economy.booked, economy.held) == (2, 0)


def test_refund_is_owed_for_cancellations_and_long_delays_only(factory, tmp_settings):
    with transaction(factory) as session:
        disruption = build_strait(session, [])
        booking = book(session, disruption.sailing_id, "T6", fare_paid=Decimal("175.00"), currency="HKD")
        assert refund_amount(booking, disruption, tmp_settings) == Decimal("175.00")
        disruption.kind, disruption.policy = "delayed", {"entitlements": []}
        disruption.delay_minutes = 90
        assert refund_amount(booking, disruption, tmp_settings) is None
        disruption.delay_minutes = 91
        assert refund_amount(booking, disruption, tmp_settings) == Decimal("175.00")


def test_eu_compensation_is_offered_beside_the_choice_unless_the_weather_exempts_it(factory, tmp_settings):
    eu = load_rule_set([rules_dir()]).policies["eu-1177-2010"]
    owed = {}
    with transaction(factory) as session:
        disruption = build_strait(session, [{"hours": 12, "spaces": {"economy": 50}}], jurisdiction="EU")
        booking = book(session, disruption.sailing_id, "EU1", fare_paid=Decimal("60.00"), currency="EUR")
        for cause in ("technical", "weather"):
            disruption.kind, disruption.cause, disruption.delay_minutes = "delayed", cause, 150
            disruption.policy = {"policies": [eu.to_json()],
                                 "entitlements": policy_tags([eu], "EU", "delayed", cause, 150)}
            disruption.revision += 1
            offers = make_offers(session, booking, disruption, candidates_for(session, disruption), tmp_settings, T0)
            owed[cause] = [(o.kind, o.amount, o.currency) for o in offers if o.kind in ("refund", "compensation")]
            session.flush()
    # A 2-hour crossing arriving 150 minutes late: more than double the 1-hour threshold, so 50 % (Art 19(2)).
    assert owed["technical"] == [("refund", Decimal("60.00"), "EUR"), ("compensation", Decimal("30.00"), "EUR")]
    assert owed["weather"] == [("refund", Decimal("60.00"), "EUR")]


# --- priority when demand exceeds supply -----------------------------------------------------------------------

def two_cancelled_sailings_two_free_places(session) -> Broadcast:
    """Sailings at T0 and T0+1h cancelled; the only alternative has two free places. On the early sailing two
    passengers booked before one with accessibility needs; on the later one a passenger with needs."""
    disruption = build_strait(session, [{"hours": 12, "spaces": {"economy": 2}}])
    route = session.get(Route, session.get(Sailing, disruption.sailing_id).route_id)
    later = sailing(session, route, "A-B-LATER", T0 + timedelta(hours=1), {"economy": 100})
    second = Disruption(active_key=f"{later.id}:cancelled", sailing_id=later.id, kind="cancelled",
                        cause="weather", cause_text="Typhoon", window_end=WINDOW_END,
                        policy={"entitlements": ["rebook"]}, notify={"template": "cancelled"})
    session.add(second)
    session.flush()
    book(session, disruption.sailing_id, "EARLY")
    book(session, disruption.sailing_id, "EARLY-2")
    book(session, disruption.sailing_id, "EARLY-WC", accessibility_needs=True)
    book(session, later.id, "LATER-WC", accessibility_needs=True)
    return create_automatic(session, [second.id, disruption.id], "cancelled", ["sms"], "all", "cancelled")


def places_and_standby(factory) -> tuple[set[str], set[str]]:
    with factory() as session:
        rows = session.execute(select(Booking.ref, Offer.kind).join(Offer, Offer.booking_id == Booking.id)
                               .where(Offer.kind.in_(("rebook", "standby")))).all()
    return {ref for ref, kind in rows if kind == "rebook"}, {ref for ref, kind in rows if kind == "standby"}


def test_scarce_places_go_to_the_earliest_departure_then_accessibility_needs(factory, tmp_settings):
    with transaction(factory) as session:
        broadcast = two_cancelled_sailings_two_free_places(session)
    plan_broadcast(factory, broadcast.id, tmp_settings, now=T0)
    assert places_and_standby(factory) == ({"EARLY-WC", "EARLY"}, {"EARLY-2", "LATER-WC"})


def test_priority_can_put_accessibility_needs_before_departure(factory, tmp_settings):
    with transaction(factory) as session:
        broadcast = two_cancelled_sailings_two_free_places(session)
    settings = replace(tmp_settings, offer_priority=("accessibility", "departure"))
    plan_broadcast(factory, broadcast.id, settings, now=T0)
    assert places_and_standby(factory) == ({"EARLY-WC", "LATER-WC"}, {"EARLY", "EARLY-2"})


def test_without_accessibility_in_the_priority_earlier_bookings_come_first(factory, tmp_settings):
    with transaction(factory) as session:
        broadcast = two_cancelled_sailings_two_free_places(session)
    plan_broadcast(factory, broadcast.id, replace(tmp_settings, offer_priority=("departure",)), now=T0)
    assert places_and_standby(factory) == ({"EARLY", "EARLY-2"}, {"EARLY-WC", "LATER-WC"})


def test_an_unknown_priority_is_refused_with_the_keys_that_exist():
    with pytest.raises(ConfigError, match="unknown key.*fare_class.*use departure, accessibility"):
        planning_order({1: T0}, ("fare_class",))


# --- two planners at once ----------------------------------------------------------------------------------------

def split_typhoon_into_two_broadcasts(factory) -> tuple[int, int]:
    """The demo typhoon, planned as two broadcasts over alternating sailings whose alternatives overlap, with
    only a few free places left on every sailing that could be offered."""
    ingest(factory, cap.parse(bundled_feed(DEMO_NOW)))
    process_new_items(factory, load_rules([rules_dir()]), now=DEMO_NOW)
    with transaction(factory) as session:
        broadcast = session.scalar(select(Broadcast))
        ids = sorted(broadcast.target["disruption_ids"])
        broadcast.target = {"disruption_ids": ids[0::2]}
        second = create_automatic(session, ids[1::2], broadcast.template, list(broadcast.channels),
                                  broadcast.audience, broadcast.kind)
        disrupted = select(Disruption.sailing_id)
        session.execute(update(SailingCapacity).where(SailingCapacity.sailing_id.not_in(disrupted))
                        .values(capacity=SailingCapacity.booked + 4))
        return broadcast.id, second.id


def plan_concurrently(factory, settings, broadcast_ids: tuple[int, int]) -> list[BaseException]:
    start = threading.Barrier(len(broadcast_ids))
    errors: list[BaseException] = []

    def planner(broadcast_id: int) -> None:
        try:
            start.wait()
            plan_broadcast(factory, broadcast_id, settings, now=DEMO_NOW, chunk=5)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=planner, args=(b,)) for b in broadcast_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    return errors


def assert_no_place_promised_twice(factory) -> None:
    with factory() as session:
        over = session.scalar(select(func.count()).select_from(SailingCapacity).where(
            SailingCapacity.booked + SailingCapacity.held > SailingCapacity.capacity))
        held_counters = {(c.sailing_id, c.space_class): c.held
                         for c in session.scalars(select(SailingCapacity).where(SailingCapacity.held > 0))}
        held_by_offers: dict[tuple[int, str], int] = {}
        for offer in session.scalars(select(Offer).where(Offer.status == "held")):
            for space, places in offer.holds.items():
                held_by_offers[(offer.sailing_id, space)] = held_by_offers.get((offer.sailing_id, space), 0) + places
        standby = session.scalar(select(func.count()).select_from(Offer).where(Offer.kind == "standby"))
    assert over == 0
    assert held_by_offers and held_counters == held_by_offers
    assert standby > 0  # demand did exceed supply


def test_two_planners_at_once_never_overallocate_on_sqlite(factory, tmp_settings):
    generate(factory, 600, DEMO_NOW)
    broadcast_ids = split_typhoon_into_two_broadcasts(factory)
    assert plan_concurrently(factory, tmp_settings, broadcast_ids) == []
    assert_no_place_promised_twice(factory)


def test_two_planners_at_once_never_overallocate_on_postgresql(postgres_url, tmp_settings):
    engine = make_engine(postgres_url)
    try:
        factory = session_factory(engine)
        generate(factory, 600, DEMO_NOW)
        broadcast_ids = split_typhoon_into_two_broadcasts(factory)
        assert plan_concurrently(factory, replace(tmp_settings, database_url=postgres_url), broadcast_ids) == []
        assert_no_place_promised_twice(factory)
    finally:
        engine.dispose()
