"""The figures an ops manager and a regulator ask for, from a night whose timings we set: told within 5/15/30
minutes, failures by reason, choices, and the EU 30-minute duty met or missed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from notifier.broadcasts import manual
from notifier.errors import UsageError
from notifier.broadcasts.manual import BroadcastRequest
from notifier.store.models import CustomerResponse, Disruption, Notification, Offer, Route, Sailing
from notifier.aftercare.reports import build_report, mask_email, mask_phone, parse_since, render_html
from tests.conftest import DEMO_NOW


def busy_sailings(factory, route: str, count: int) -> list[Sailing]:
    from sqlalchemy import func

    from notifier.store.models import Booking

    with factory() as session:
        codes = session.scalars(
            select(Sailing.code).join(Route, Route.id == Sailing.route_id).join(Booking, Booking.sailing_id == Sailing.id)
            .where(Route.code == route, Sailing.scheduled_departure > DEMO_NOW + timedelta(hours=2),
                   Booking.kind == "passenger")
            .group_by(Sailing.code).order_by(func.count().desc(), Sailing.code).limit(count)).all()
        found = {s.code: s for s in session.scalars(select(Sailing).where(Sailing.code.in_(codes)))}
        return [found[code] for code in codes]  # busiest first


def cancel_on_eu_route(factory, settings, sailing: Sailing) -> int:
    """A cancellation on a route we declare EU (the demo's routes are Chinese), sent; returns the disruption."""
    with factory() as session, session.begin():
        session.execute(update(Route).where(Route.id == sailing.route_id).values(jurisdiction="EU"))
    request = BroadcastRequest(operator="alice", kind="cancelled", sailings=(sailing.code,))
    broadcast_id = manual.create_manual(factory, request, settings, now=DEMO_NOW)
    manual.send(factory, broadcast_id, "alice", now=DEMO_NOW)
    with factory() as session:
        return session.scalar(select(Notification.disruption_id).where(Notification.broadcast_id == broadcast_id))


def tell(factory, disruption_id: int, minutes_after_known: list[float | None], failure: str | None = None) -> list[int]:
    """Mark each booking's notices sent at the given minutes after known_at (None: failed, never told)."""
    with factory() as session, session.begin():
        disruption = session.get(Disruption, disruption_id)
        bookings = sorted(set(session.scalars(select(Notification.booking_id)
                                              .where(Notification.disruption_id == disruption_id))))
        assert len(bookings) >= len(minutes_after_known), "the demo sailing has too few bookings for this test"
        for booking_id, minutes in zip(bookings, minutes_after_known):
            rows = session.scalars(select(Notification).where(Notification.booking_id == booking_id,
                                                              Notification.disruption_id == disruption_id))
            for notification in rows:
                if minutes is None:
                    notification.status, notification.error_code = "failed", "21211"
                    notification.error_message = failure
                else:
                    notification.status = "sent"
                    notification.sent_at = disruption.known_at + timedelta(minutes=minutes)
        return bookings[:len(minutes_after_known)]


def bookings_told_about(factory, disruption_id: int) -> int:
    with factory() as session:
        return len(set(session.scalars(select(Notification.booking_id)
                                       .where(Notification.disruption_id == disruption_id))))


def choose(factory, disruption_id: int, booking_id: int, choice: str) -> None:
    with factory() as session, session.begin():
        offer = session.scalar(select(Offer).where(Offer.booking_id == booking_id,
                                                   Offer.disruption_id == disruption_id).limit(1))
        session.add(CustomerResponse(booking_id=booking_id, disruption_id=disruption_id, offer_id=offer.id,
                                     channel="web", choice=choice, decision_key="choice"))


def test_clocks_failures_and_choices_per_disruption(factory, demo_db, tmp_settings):
    sailing = busy_sailings(factory, "HKM-HKG-MFM", 1)[0]
    disruption_id = cancel_on_eu_route(factory, tmp_settings, sailing)
    told = tell(factory, disruption_id, [2, 12, 25, 50, None], failure="The 'To' number is not a valid phone number.")
    choose(factory, disruption_id, told[0], "rebook")
    choose(factory, disruption_id, told[1], "refund")

    figures = build_report(factory, disruption_id, now=DEMO_NOW + timedelta(days=1)).disruptions[0]

    assert figures.told == 4
    assert figures.told_within == {5: 1, 15: 2, 30: 3}
    assert figures.failed_by_reason == {"21211 The 'To' number is not a valid phone number.": figures.failed}
    assert figures.choices["rebook"] == 1 and figures.choices["refund"] == 1
    assert figures.choices["none"] == figures.affected - 2
    assert figures.jurisdiction == "EU" and figures.kind == "cancelled"


def test_eu_thirty_minute_duty_met_missed_and_pending(factory, demo_db, tmp_settings):
    early, late = sorted(busy_sailings(factory, "HKM-HKG-MFM", 2), key=lambda s: s.scheduled_departure)
    on_time = cancel_on_eu_route(factory, tmp_settings, early)
    missed = cancel_on_eu_route(factory, tmp_settings, late)
    with factory() as session:
        known = {d.id: d.known_at for d in session.scalars(select(Disruption))}
    # Everyone on the first sailing is told at once; on the second, one booking only after departure + 30 min.
    tell(factory, on_time, [1] * bookings_told_about(factory, on_time))
    after_deadline = (late.scheduled_departure + timedelta(minutes=31) - known[missed]).total_seconds() / 60
    tell(factory, missed, [1, after_deadline])

    before_departure = build_report(factory, now=early.scheduled_departure - timedelta(hours=1))
    after = build_report(factory, now=late.scheduled_departure + timedelta(hours=2))

    duty = {d.disruption_id: (d.eu_duty, d.eu_late) for d in after.disruptions}
    assert duty[on_time] == ("met", 0)
    assert duty[missed][0] == "missed" and duty[missed][1] >= 1
    assert {d.disruption_id: d.eu_duty for d in before_departure.disruptions}[missed] == "pending"
    assert after.totals()["eu_duty"] == {"met": 1, "missed": 1}


def test_routes_outside_the_eu_are_not_judged(factory, demo_db, tmp_settings):
    sailing = busy_sailings(factory, "QZ-HAK-HAI", 1)[0]
    manual.create_manual(factory, BroadcastRequest(operator="a", kind="cancelled", sailings=(sailing.code,)),
                             tmp_settings, now=DEMO_NOW)

    figures = build_report(factory, now=DEMO_NOW + timedelta(days=2))

    assert [d.eu_duty for d in figures.disruptions] == ["n/a"]
    assert figures.to_json()["totals"]["eu_duty"] == {"n/a": 1}


def test_report_json_and_html_carry_the_same_figures(factory, demo_db, tmp_settings):
    sailing = busy_sailings(factory, "HKM-HKG-MFM", 1)[0]
    disruption_id = cancel_on_eu_route(factory, tmp_settings, sailing)
    tell(factory, disruption_id, [3, 7])
    report = build_report(factory, now=DEMO_NOW + timedelta(days=1))

    data = report.to_json()
    page = render_html(report)

    assert data["totals"]["told_within"] == {"5min": 1, "15min": 2, "30min": 2}
    assert data["disruptions"][0]["sailing"] == sailing.code
    assert sailing.code in page and "<svg" in page and "http" not in page.split("<body>", 1)[1]
    assert page.count('class="series"') >= 3  # the timeline, the funnel bars and the choice donut


def test_an_unknown_disruption_is_a_usage_error(factory, demo_db):
    with pytest.raises(UsageError, match="unknown disruption #5"):
        build_report(factory, 5)


@pytest.mark.parametrize("raw, shown", [
    ("+8613812341234", "+86 138****1234"),
    ("+85291234567", "+852 9***4567"),
    ("+86 898 6533 0000", "+86 898****0000"),
    (None, "-"),
])
def test_phone_numbers_are_masked(raw, shown):
    assert mask_phone(raw) == shown


@pytest.mark.parametrize("raw, shown", [("customer12@example.com", "c***2@example.com"), ("ab@x.org", "a***@x.org"),
                                        (None, "-")])
def test_email_addresses_are_masked(raw, shown):
    assert mask_email(raw) == shown


def test_since_takes_durations_and_times():
    assert parse_since("90m", DEMO_NOW) == DEMO_NOW - timedelta(minutes=90)
    assert parse_since("2d", DEMO_NOW) == DEMO_NOW - timedelta(days=2)
    assert parse_since("2026-09-13T12:00", DEMO_NOW) == DEMO_NOW - timedelta(hours=12)
    with pytest.raises(UsageError):
        parse_since("soon", DEMO_NOW)
