"""What customers are owed (POLICIES.md): the EU Art 19 table at every threshold, the minimum payout, the weather
exemption, Art 18, the 30-minute clock, China and cargo, and the shipped policies as the rules resolve them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from notifier.rules.entitlements import (EU_PRIORITY_BAND, PolicyError, Situation, describe, entitlements_for,
                                         eu_compensation, eu_compensation_percent, eu_reroute_or_refund_owed,
                                         information_deadline, notice_priority, parse_policy, policy_tags)
from notifier.store.paths import rules_dir
from notifier.rules.load import load_rule_set

H = timedelta(hours=1)
S = timedelta(seconds=1)
FARE = Decimal("100.00")


@pytest.fixture(scope="module")
def policies():
    return load_rule_set([rules_dir()]).policies


# --- Art 19: 25 % from the threshold, 50 % beyond double it -------------------------------------------------

@pytest.mark.parametrize("journey, delay, percent", [
    # journey up to 4 h: threshold 1 h, double 2 h
    (4 * H, 1 * H - S, 0), (4 * H, 1 * H, 25), (4 * H, 2 * H, 25), (4 * H, 2 * H + S, 50),
    (timedelta(minutes=30), 1 * H, 25),
    # more than 4 h, up to 8 h: threshold 2 h, double 4 h
    (4 * H + S, 1 * H, 0), (4 * H + S, 2 * H - S, 0), (4 * H + S, 2 * H, 25), (8 * H, 4 * H, 25),
    (8 * H, 4 * H + S, 50),
    # more than 8 h, up to 24 h: threshold 3 h, double 6 h
    (8 * H + S, 2 * H, 0), (8 * H + S, 3 * H - S, 0), (8 * H + S, 3 * H, 25), (24 * H, 6 * H, 25),
    (24 * H, 6 * H + S, 50),
    # more than 24 h: threshold 6 h, double 12 h
    (24 * H + S, 3 * H, 0), (24 * H + S, 6 * H - S, 0), (24 * H + S, 6 * H, 25), (48 * H, 12 * H, 25),
    (48 * H, 12 * H + S, 50),
])
def test_art19_percentage_at_every_boundary(journey, delay, percent):
    assert eu_compensation_percent(journey, delay) == percent


@pytest.mark.parametrize("journey, delay, amount", [
    (4 * H, 1 * H - S, "0.00"), (4 * H, 1 * H, "25.00"), (4 * H, 2 * H, "25.00"), (4 * H, 2 * H + S, "50.00"),
    (6 * H, 2 * H, "25.00"), (6 * H, 4 * H + S, "50.00"), (12 * H, 3 * H, "25.00"), (30 * H, 12 * H + S, "50.00"),
])
def test_art19_amount_is_a_share_of_the_fare_in_decimal(journey, delay, amount):
    paid = eu_compensation(FARE, journey, delay)
    assert isinstance(paid, Decimal) and paid == Decimal(amount)


def test_amounts_round_half_up_to_the_cent():
    assert eu_compensation(Decimal("33.33"), 4 * H, 1 * H) == Decimal("8.33")
    assert eu_compensation(Decimal("33.34"), 4 * H, 3 * H) == Decimal("16.67")


def test_a_float_fare_is_refused():
    with pytest.raises(TypeError):
        eu_compensation(100.0, 4 * H, 1 * H)


def test_minimum_payout_withholds_only_amounts_under_it():
    # 25 % of 23.96 is 5.99: under EUR 6, not paid; 25 % of 24.00 is exactly 6.00: paid.
    assert eu_compensation(Decimal("23.96"), 4 * H, 1 * H) == Decimal("0.00")
    assert eu_compensation(Decimal("24.00"), 4 * H, 1 * H) == Decimal("6.00")
    assert eu_compensation(Decimal("23.96"), 4 * H, 1 * H, minimum_payout=Decimal("0")) == Decimal("5.99")


def test_weather_exempts_compensation():
    assert eu_compensation(FARE, 4 * H, 3 * H, cause="weather") == Decimal("0.00")
    assert eu_compensation(FARE, 4 * H, 3 * H, cause="technical") == Decimal("50.00")


def test_art18_is_owed_on_cancellation_or_beyond_90_minutes():
    assert eu_reroute_or_refund_owed("cancelled", None)
    assert not eu_reroute_or_refund_owed("delayed", 90)
    assert eu_reroute_or_refund_owed("delayed", 91)
    assert not eu_reroute_or_refund_owed("advisory", None)


def test_information_is_due_30_minutes_after_scheduled_departure_and_eu_goes_first():
    departure = datetime(2026, 9, 14, 8, 0, tzinfo=UTC)
    assert information_deadline(departure) == datetime(2026, 9, 14, 8, 30, tzinfo=UTC)
    eu_next_week = notice_priority(departure + timedelta(days=7), "EU", "cancelled")
    cn_today = notice_priority(departure, "CN", "cancelled")
    eu_today = notice_priority(departure, "EU", "delayed")
    assert eu_today < eu_next_week < cn_today
    assert eu_today == int(information_deadline(departure).timestamp()) - EU_PRIORITY_BAND
    assert notice_priority(departure, "EU", "advisory") == int(departure.timestamp())  # no Art 16 clock


# --- the shipped policies ------------------------------------------------------------------------------------

def situation(**changes) -> Situation:
    values = dict(jurisdiction="EU", booking_kind="passenger", kind="delayed", cause="technical",
                  delay_minutes=150, journey=3 * H, fare=FARE, currency="EUR")
    values.update(changes)
    return Situation(**values)


def grants(policies, names, **changes) -> dict[str, object]:
    return {e.grant: e for e in entitlements_for([policies[n] for n in names], situation(**changes))}


def test_eu_long_delay_for_a_technical_fault_owes_everything(policies):
    owed = grants(policies, ["eu-1177-2010"])
    assert set(owed) == {"information", "refreshments", "accommodation", "reroute_or_refund", "compensation",
                         "rights_information"}
    assert owed["compensation"].amount == Decimal("50.00") and owed["compensation"].percent == 50
    assert owed["compensation"].verification == "P" and "Art 19" in owed["compensation"].cite


def test_weather_removes_compensation_and_accommodation_only(policies):
    owed = grants(policies, ["eu-1177-2010"], cause="weather")
    assert "compensation" not in owed and "accommodation" not in owed
    assert {"refreshments", "reroute_or_refund", "information"} <= set(owed)
    shown = entitlements_for([policies["eu-1177-2010"]], situation(cause="weather"), include_exempted=True)
    assert {e.grant for e in shown if e.exempted_by == "weather"} == {"accommodation", "compensation"}


def test_eu_short_delay_owes_information_but_not_art17_or_art18(policies):
    owed = grants(policies, ["eu-1177-2010"], delay_minutes=45)
    assert "information" in owed
    assert not {"refreshments", "accommodation", "reroute_or_refund", "compensation"} & set(owed)


def test_eu_cancellation_promises_compensation_by_arrival_delay_without_an_amount(policies):
    owed = grants(policies, ["eu-1177-2010"], kind="cancelled", delay_minutes=None)
    assert owed["compensation"].amount is None
    line = describe(owed["compensation"], "en", situation(kind="cancelled", journey=6 * H))
    assert "25%" in line and "2 h" in line


def test_eu_policy_does_not_reach_other_jurisdictions_or_cargo(policies):
    assert grants(policies, ["eu-1177-2010"], jurisdiction="CN") == {}
    assert grants(policies, ["eu-1177-2010"], booking_kind="cargo") == {}


def test_china_weather_stoppage_rebook_or_refund_without_fee_and_do_not_come(policies):
    names = ["cn-civil-code-820", "cn-weather-stoppage"]
    owed = grants(policies, names, jurisdiction="CN", kind="cancelled", cause="weather", currency="CNY")
    assert {"rebook_or_refund", "no_refund_fee", "do_not_come_to_port", "ticket_valid_after_resumption",
            "priority_rebooking"} == set(owed)
    assert owed["ticket_valid_after_resumption"].params["hours"] == 24
    strike = grants(policies, names, jurisdiction="CN", kind="cancelled", cause="strike")
    assert set(strike) == {"rebook_or_refund"}  # the fee waiver is for weather and port stoppages
    tags = policy_tags([policies[n] for n in names], "CN", "cancelled", "weather", None)
    assert {"refund_full", "rebook", "no_refund_fee", "do_not_come_to_port"} <= set(tags)


def test_cargo_options_by_kind(policies):
    omitted = grants(policies, ["cargo-disruption-options"], jurisdiction="OTHER", booking_kind="cargo",
                     kind="port_omitted")
    assert set(omitted) == {"cargo_revised_schedule", "cargo_roll", "cargo_change_destination",
                            "cargo_cancel_without_fee"}
    delayed = grants(policies, ["cargo-disruption-options"], jurisdiction="OTHER", booking_kind="cargo")
    assert set(delayed) == {"cargo_revised_schedule", "cargo_roll"}
    assert grants(policies, ["cargo-disruption-options"], booking_kind="passenger") == {}


def test_descriptions_exist_in_both_languages(policies):
    for policy in policies.values():
        for grant in policy.grants:
            for kind in grant.kinds:
                for entitlement in entitlements_for([policy], situation(
                        jurisdiction=policy.jurisdictions[0] if policy.jurisdictions[0] != "*" else "OTHER",
                        booking_kind=grant.bookings[0], kind=kind, cause=(grant.causes or ("technical",))[0])):
                    assert describe(entitlement, "en", situation()) and describe(entitlement, "zh-CN", situation())


# --- policy validation -----------------------------------------------------------------------------------------

BASE = {"id": "p", "description": "d", "applies_to": {"jurisdictions": ["EU"]}, "citation": "c", "verification": "P",
        "grants": [{"id": "G", "grant": "compensation", "cite": "Art 19", "minimum_payout": "6.00"}]}


@pytest.mark.parametrize("change, field", [
    ({"verification": "U"}, "verification"),
    ({"verification": "X"}, "verification"),
    ({"grants": [{"id": "G", "grant": "free_lunch", "cite": "x"}]}, "grants.G.grant"),
    ({"grants": [{"id": "G", "grant": "compensation", "cite": "x", "minimum_payout": "7.00"}]},
     "grants.G.minimum_payout"),
    ({"grants": [{"id": "G", "grant": "compensation", "cite": "x", "minimum_payout": 6.5}]},
     "grants.G.minimum_payout"),
    ({"grants": [{"id": "G", "grant": "refreshments", "cite": "x", "hours": 3}]}, "grants.G.hours"),
    ({"grants": [{"id": "G", "grant": "refreshments", "cite": "x", "kinds": ["sunk"]}]}, "grants.G.kinds"),
])
def test_bad_policies_name_the_field(change, field):
    with pytest.raises(PolicyError) as caught:
        parse_policy({**BASE, **change})
    assert caught.value.field_name == field


def test_a_good_policy_parses_money_as_decimal():
    policy = parse_policy(BASE)
    assert policy.grants[0].params["minimum_payout"] == Decimal("6.00")
