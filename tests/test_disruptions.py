"""The disruption lifecycle on its own: one live disruption per (sailing, kind), lineages that assert it, a
stronger kind inhibiting a weaker one and handing back when it ends, changes that matter to customers against
changes that do not, expiry, and the manual entry points a duty officer's broadcast uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from notifier.disruptions import DELAY_CHANGE_MINUTES, apply_impacts, clear, expire, lineage_keys, reconcile, withdraw
from notifier.store.models import Disruption, DisruptionSource, Notification, Offer, Sailing, SailingCapacity
from notifier.rules.model import Impact
from tests.rules.test_explain import Builder

NOW = datetime(2026, 9, 14, 0, 0, tzinfo=UTC)
A, B = "met,alert-a", "met,alert-b"


@pytest.fixture
def line(factory):
    """A route with six hourly sailings from NOW+2h, two bookings each: ids in departure order."""
    with factory() as session, session.begin():
        build = Builder(session)
        origin, destination = build.port("CNHAK", 20.02, 110.27, "Asia/Shanghai"), build.port("CNHAI", 20.27, 110.22)
        return [build.sailing(origin, destination, NOW + timedelta(hours=2 + n), code=f"S{n}").id for n in range(6)]


def impact(sailing_id: int, kind: str = "cancelled", end_hours: float = 6, delay: int | None = None,
           severity: str = "Severe", start_hours: float = 1) -> Impact:
    return Impact(sailing_id=sailing_id, kind=kind, cause="weather", severity=severity, rule_id="test",
                  window_start=NOW + timedelta(hours=start_hours), window_end=NOW + timedelta(hours=end_hours),
                  delay_minutes=delay if kind != "delayed" or delay else 60,
                  notify={"template": kind, "channels": ["sms"], "audience": "all"},
                  policy={"policies": [], "entitlements": []})


def run(factory, impacts, lineage=frozenset({A}), own=A, now=NOW):
    with factory() as session, session.begin():
        return reconcile(session, list(impacts), set(lineage), own, None, now)


def live(factory) -> dict[tuple[int, str], str]:
    with factory() as session:
        return {(d.sailing_id, d.kind): d.status for d in session.scalars(
            select(Disruption).where(Disruption.status.in_(("active", "superseded"))))}


def disruption(factory, sailing_id: int, kind: str) -> Disruption:
    with factory() as session:
        return session.scalars(select(Disruption).where(Disruption.sailing_id == sailing_id,
                                                        Disruption.kind == kind).order_by(Disruption.id.desc())).first()


def told(factory, disruption_id: int, status: str = "sent") -> None:
    """A notice about the disruption reached (or waits for) a booking on its sailing."""
    with factory() as session, session.begin():
        found = session.get(Disruption, disruption_id)
        session.add(Notification(dedup_key=f"t:{disruption_id}:{found.revision}:{status}", disruption_id=found.id,
                                 revision=found.revision, channel="sms", recipient="+85291000001", language="en",
                                 template=found.kind, body_text="x", status=status,
                                 sent_at=NOW if status == "sent" else None))
        found.planned_revision = found.revision


def test_one_disruption_per_sailing_and_kind_and_a_repeat_changes_nothing(factory, line):
    first = run(factory, [impact(s) for s in line[:3]])
    again = run(factory, [impact(s) for s in line[:3]])

    assert len(first.opened) == 3 and again.opened == again.revised == again.amended == []
    assert again.unchanged == 3
    with factory() as session:
        assert session.scalar(select(Sailing.status).where(Sailing.id == line[0])) == "cancelled"
        assert {d.revision for d in session.scalars(select(Disruption))} == {1}


def test_cancelled_inhibits_delayed_and_hands_back_when_it_ends(factory, line):
    run(factory, [impact(line[0], "delayed", delay=45)], {B}, B)
    delayed = disruption(factory, line[0], "delayed")
    told(factory, delayed.id, "queued")  # not yet sent when the cancellation arrives

    outcome = run(factory, [impact(line[0])])

    assert live(factory) == {(line[0], "cancelled"): "active", (line[0], "delayed"): "superseded"}
    assert outcome.superseded == [delayed.id]
    with factory() as session:
        assert session.scalar(select(Notification.status).where(Notification.disruption_id == delayed.id)) \
            == "cancelled"  # customers get "cancelled", not also the stale "delayed"
    cancelled = disruption(factory, line[0], "cancelled")
    told(factory, cancelled.id)

    with factory() as session, session.begin():
        ended = withdraw(session, {A}, NOW)

    assert ended.promoted == [delayed.id] and ended.cleared == [] and ended.retired == [cancelled.id]
    after = disruption(factory, line[0], "delayed")
    assert after.status == "active" and after.details["previous_kind"] == "cancelled"
    assert after.revision == 2  # it was planned before: the new notice needs its own outbox key
    with factory() as session:
        assert session.get(Sailing, line[0]).status == "delayed"


def test_a_weaker_kind_arriving_later_is_recorded_but_silent(factory, line):
    run(factory, [impact(line[1])])
    outcome = run(factory, [impact(line[1], "advisory")], {B}, B)
    assert outcome.opened == [] and len(outcome.superseded) == 1
    assert live(factory)[(line[1], "advisory")] == "superseded"


def test_two_alerts_assert_one_disruption_until_both_are_gone(factory, line):
    run(factory, [impact(line[2])], {A}, A)
    second = run(factory, [impact(line[2])], {B}, B)
    assert second.opened == [] and second.unchanged == 1
    told(factory, disruption(factory, line[2], "cancelled").id)

    with factory() as session, session.begin():
        assert withdraw(session, {A}, NOW).cleared == []
    assert live(factory) == {(line[2], "cancelled"): "active"}
    with factory() as session, session.begin():
        assert len(withdraw(session, {B}, NOW).cleared) == 1
    assert live(factory) == {}


def test_an_update_moves_the_lineage_and_withdraws_what_it_no_longer_covers(factory, line):
    run(factory, [impact(s) for s in line[:3]], {A}, A)
    for sailing_id in line[:3]:
        told(factory, disruption(factory, sailing_id, "cancelled").id)
    update = "met,alert-a2"

    outcome = run(factory, [impact(s) for s in line[1:4]], lineage_keys("met", "alert-a2", ["met,alert-a"]), update)

    assert len(outcome.opened) == 1 and len(outcome.cleared) == 1
    assert set(live(factory)) == {(s, "cancelled") for s in line[1:4]}
    with factory() as session:
        keys = set(session.scalars(select(DisruptionSource.source_key)))
        first = session.get(Disruption, outcome.cleared[0])
    assert keys == {update}
    assert first.sailing_id == line[0] and first.revision == 2
    assert first.details["resumption"] == {"operates": True, "sailing_id": line[0], "code": "S0",
                                           "departure": (NOW + timedelta(hours=2)).isoformat()}


def test_only_changes_customers_would_notice_make_a_revision(factory, line):
    run(factory, [impact(line[5], "delayed", delay=40)])
    small = run(factory, [impact(line[5], "delayed", delay=40 + DELAY_CHANGE_MINUTES - 1, severity="Extreme")])
    assert small.revised == [] and len(small.amended) == 1
    large = run(factory, [impact(line[5], "delayed", delay=40 + DELAY_CHANGE_MINUTES)])
    assert len(large.revised) == 1
    assert disruption(factory, line[5], "delayed").revision == 2


def test_a_later_end_revises_only_cancellations_whose_alternatives_change(factory, line):
    # S0 and S1 cancelled until NOW+3h30: their alternatives are S2 (NOW+4h) and S3. Moving the end to NOW+3h54
    # changes nothing for them; moving it past S2 (and cancelling S2) changes their alternatives.
    run(factory, [impact(s, end_hours=3.5) for s in line[:2]])
    same = run(factory, [impact(s, end_hours=3.9) for s in line[:2]])
    assert same.revised == [] and len(same.amended) == 2
    later = run(factory, [impact(s, end_hours=4.5) for s in line[:2]] + [impact(line[2], end_hours=4.5)])
    assert len(later.revised) == 2 and len(later.opened) == 1


def test_expiry_clears_told_disruptions_with_the_next_sailing_and_retires_untold_ones(factory, line):
    run(factory, [impact(s, end_hours=3) for s in line[:2]])
    told(factory, disruption(factory, line[0], "cancelled").id)

    with factory() as session, session.begin():
        outcome = expire(session, NOW + timedelta(hours=3, minutes=30))

    first, second = disruption(factory, line[0], "cancelled"), disruption(factory, line[1], "cancelled")
    assert outcome.cleared == [first.id] and outcome.retired == [second.id]
    # S0 left at NOW+2h while cancelled: it did not sail, and customers are pointed at the next sailing.
    assert first.details["resumption"]["code"] == "S2" and not first.details["resumption"]["operates"]
    with factory() as session:
        statuses = dict(session.execute(select(Sailing.code, Sailing.status)).all())
    assert statuses["S0"] == "cancelled" and statuses["S1"] == "cancelled"  # past: stays as it was
    with factory() as session, session.begin():
        assert expire(session, NOW + timedelta(hours=4)).cleared == []  # nothing twice


def test_ending_a_disruption_gives_held_places_back(factory, line):
    run(factory, [impact(line[0])])
    cancelled = disruption(factory, line[0], "cancelled")
    with factory() as session, session.begin():
        session.execute(SailingCapacity.__table__.update().where(SailingCapacity.sailing_id == line[3])
                        .values(held=2))
        booking_id = session.scalar(select(Sailing).where(Sailing.id == line[0])).id
        offer = Offer(booking_id=1, disruption_id=cancelled.id, revision=1, option_key="1", kind="rebook",
                      sailing_id=line[3], space_class="economy", places=2, status="held", holds={"economy": 2})
        session.add(offer)
    assert booking_id == line[0]
    with factory() as session, session.begin():
        withdraw(session, {A}, NOW)
    with factory() as session:
        assert session.scalar(select(SailingCapacity.held).where(SailingCapacity.sailing_id == line[3])) == 0
        assert session.scalar(select(Offer.status)) == "released"


def test_manual_entry_points_keep_their_disruptions_against_feed_cancels(factory, line):
    with factory() as session, session.begin():
        opened = apply_impacts(session, [impact(line[4], "delayed", delay=30)], None, NOW)
        assert [d.kind for d in opened] == ["delayed"]
    run(factory, [impact(line[4], "delayed", delay=30)], {A}, A)
    with factory() as session, session.begin():
        withdraw(session, {A}, NOW)
    assert live(factory) == {(line[4], "delayed"): "active"}  # the duty officer's source still holds it
    with factory() as session, session.begin():
        again = apply_impacts(session, [impact(line[4], "delayed", delay=75)], None, NOW)
        assert [d.revision for d in again] == [2]
        clear(session, again[0], NOW, "alice")
    assert live(factory) == {}
    with factory() as session:
        assert session.get(Sailing, line[4]).status == "scheduled"
