"""Manual broadcasts as the duty officer relies on them: planned on hold exactly as previewed, nothing written
when something is wrong, approval by a second person, stop and correct, and one dedup key space shared with the
automatic notices."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from notifier.broadcasts import correction, manual, preview as previews
from notifier import messages
from notifier.errors import NotifierError, UsageError
from notifier.broadcasts.manual import ApprovalNeeded, BroadcastRequest, NothingToSend
from notifier.delivery.providers import channels_for
from notifier.delivery.dispatch import Dispatcher
from notifier.planning.links import blank_tokens
from notifier.messages import TemplateError
from notifier.store.models import (AuditEntry, Booking, Broadcast, Customer, Disruption, Notification, Offer, Sailing,
                                   SailingCapacity)
from tests.conftest import DEMO_NOW

HK_MORNING = {"route": "HKM-HKG-MFM", "start": "2026-09-14T08:00", "end": "2026-09-14T20:00"}


def ask(**changes) -> BroadcastRequest:
    values = {"operator": "alice", "kind": "delayed", "delay_minutes": 40, **HK_MORNING, **changes}
    return BroadcastRequest(**values)


def create(factory, settings, **changes) -> int:
    return manual.create_manual(factory, ask(**changes), settings, now=DEMO_NOW)


def busy_sailing(factory, route: str = "QZ-HAK-HAI") -> str:
    """The future sailing of a route with the most bookings (the demo spreads 600 bookings thinly)."""
    from notifier.store.models import Route

    with factory() as session:
        return session.execute(
            select(Sailing.code).join(Route, Route.id == Sailing.route_id).join(Booking, Booking.sailing_id == Sailing.id)
            .where(Route.code == route, Sailing.scheduled_departure > DEMO_NOW)
            .group_by(Sailing.code).order_by(func.count().desc(), Sailing.code).limit(1)).scalar_one()


def snapshot(factory) -> dict:
    """Everything a failed command must leave untouched."""
    with factory() as session:
        counted = {model.__name__: session.scalar(select(func.count()).select_from(model))
                   for model in (Broadcast, Disruption, Notification, Offer, AuditEntry)}
        counted["held places"] = session.scalar(select(func.sum(SailingCapacity.held)))
        counted["sailing statuses"] = sorted(session.execute(select(Sailing.status, func.count())
                                                             .group_by(Sailing.status)).all())
        return counted


def notices(factory, broadcast_id: int) -> list[Notification]:
    with factory() as session:
        return list(session.scalars(select(Notification).where(Notification.broadcast_id == broadcast_id)
                                    .order_by(Notification.id)))


def as_a_sample(notice: Notification, name: str) -> str:
    """A notice as the preview shows it."""
    placeholder = "示例乘客" if notice.language.startswith("zh") else "Sample Passenger"
    return blank_tokens(notice.body_text.replace(name, placeholder))


def outbox_lines(settings) -> list[dict]:
    path = Path(settings.outbox_dir) / "sms.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def send_all(factory, settings):
    """The real dispatcher over the file channels, on the demo's clock (its sailings are in the past for a real
    clock, and the dispatcher rightly expires notices about sailings that have left)."""
    channels = channels_for(settings)
    dispatcher = Dispatcher(factory, settings, channels, clock=lambda: DEMO_NOW)
    try:
        return dispatcher.run(drain=True)
    finally:
        dispatcher.close()


def test_a_manual_broadcast_is_held_exactly_as_its_preview_says(factory, demo_db, tmp_settings):
    broadcast_id = create(factory, tmp_settings)

    preview = previews.preview(factory, broadcast_id, tmp_settings)
    rows = notices(factory, broadcast_id)
    assert rows and {n.status for n in rows} == {"held"}
    assert sum(preview.messages.values()) == len(rows) == preview.broadcast.recipient_count
    assert preview.sms_segments == sum(n.segments for n in rows if n.channel == "sms")
    assert preview.sms_cost == (tmp_settings.sms_price_per_segment * preview.sms_segments).quantize(Decimal("0.01"))
    assert {(s.channel, s.language) for s in preview.samples} == set(preview.messages)
    shown = {(s.channel, s.language): s.body for s in preview.samples}
    # Each sample is one of the held notices, addressed to a placeholder person and with a link that chooses
    # nothing: the rest is as it will go out.
    with factory() as session:
        names = dict(session.execute(select(Customer.id, Customer.name)).all())
    assert all(any(as_a_sample(n, names[n.customer_id]) == body for n in rows) for body in shown.values())
    assert not any(name in body for name in names.values() for body in shown.values())
    assert all("delayed" in n.body_text.lower() or "延误" in n.body_text for n in rows if n.channel == "sms")
    # Held means held: the dispatcher sends nothing until `send`.
    assert send_all(factory, tmp_settings).sent == 0


def test_times_without_an_offset_are_the_ports_local_time(factory, demo_db, tmp_settings):
    broadcast_id = create(factory, tmp_settings, start="2026-09-14T08:00", end="2026-09-14T08:30")

    preview = previews.preview(factory, broadcast_id, tmp_settings)
    # 08:00 in Hong Kong is 00:00 UTC: exactly the first sailing of the day, shown in local time.
    assert [s["departure"] for s in preview.sailings] == ["2026-09-14 08:00"]
    assert preview.broadcast.target["from"] == datetime(2026, 9, 14, 0, 0, tzinfo=UTC).isoformat()


BAD_INPUT = [
    ({"route": None, "sailings": ("NO-SUCH-SAILING",)}, "unknown sailing 'NO-SUCH-SAILING'"),
    ({"route": "NOPE"}, "unknown route 'NOPE'"),
    ({"route": None, "port": "XXXXX"}, "unknown port 'XXXXX'"),
    ({"route": None, "vessel": "0000000", "voyage": "1"}, "unknown vessel IMO '0000000'"),
    ({"route": None, "disruption_ids": (999,)}, "unknown disruption #999"),
    ({"start": "yesterday"}, "is not an ISO 8601 time"),
    ({"end": "2026-09-14T07:00"}, "must be after --from"),
    ({"start": "2030-01-01T08:00", "end": "2030-01-01T09:00"}, "no sailings match"),
    ({"operator": " "}, "--operator"),
    ({"kind": "advisory"}, "--kind advisory needs --reason"),
    ({"delay_minutes": None}, "--delay-minutes"),
    ({"route": None}, "exactly one of --sailing, --route"),
    ({"sailings": ("X",)}, "exactly one of --sailing, --route"),
]


def test_bad_input_is_one_clear_error_and_writes_nothing(factory, demo_db, tmp_settings):
    before = snapshot(factory)

    for changes, message in BAD_INPUT:  # one database for every case: each must leave it as it was
        with pytest.raises(UsageError) as refused:
            create(factory, tmp_settings, **changes)
        assert message in str(refused.value), (changes, str(refused.value))
        assert snapshot(factory) == before, changes


def test_a_template_missing_a_value_stops_the_broadcast_and_writes_nothing(factory, demo_db, tmp_settings,
                                                                           tmp_path, monkeypatch):
    folder = tmp_path / "templates"
    for kind in ("sms", "email"):
        (folder / kind).mkdir(parents=True)
        for language in ("en", "zh-CN"):
            body = "Subject: x\n{{ sailing.gate_number }}" if kind == "email" else "{{ sailing.gate_number }}"
            (folder / kind / f"gate.{language}.txt.j2").write_text(body, encoding="utf-8")
            if kind == "email":
                (folder / kind / f"gate.{language}.html.j2").write_text("<p>x</p>", encoding="utf-8")
    monkeypatch.setattr(messages, "templates_dir", lambda: folder)
    monkeypatch.setattr(manual, "templates_dir", lambda: folder)
    messages.environment.cache_clear()
    before = snapshot(factory)
    try:
        with pytest.raises(TemplateError, match="gate_number"):
            create(factory, tmp_settings, kind="cancelled", delay_minutes=None, template="gate")
    finally:
        messages.environment.cache_clear()

    assert snapshot(factory) == before  # no disruption opened, no place held, no sailing marked cancelled


def test_an_unknown_template_is_refused_before_anything_happens(factory, demo_db, tmp_settings):
    before = snapshot(factory)
    with pytest.raises(TemplateError, match="unknown template 'nonesuch'"):
        create(factory, tmp_settings, template="nonesuch")
    assert snapshot(factory) == before


def test_the_operators_free_text_is_a_value_never_template_source(factory, demo_db, tmp_settings):
    reason = "Gate {{ 7*7 }} moved <script>alert(1)</script> {% raw %}"
    broadcast_id = create(factory, tmp_settings, kind="advisory", delay_minutes=None, reason=reason)

    rows = notices(factory, broadcast_id)
    sms = next(n for n in rows if n.channel == "sms")
    email = next(n for n in rows if n.channel == "email")
    assert "{{ 7*7 }}" in sms.body_text and "49" not in sms.body_text
    assert "<script>" in email.body_text  # plain text stays as typed
    assert "&lt;script&gt;" in email.body_html and "<script>" not in email.body_html


def test_free_text_and_size_decide_approval(factory, demo_db, tmp_settings):
    quiet = create(factory, tmp_settings, start="2026-09-14T08:00", end="2026-09-14T09:00")
    worded = create(factory, tmp_settings, start="2026-09-14T10:00", end="2026-09-14T11:00", reason="Fog.")
    small_limit = replace(tmp_settings, approval_threshold=1)
    large = manual.create_manual(factory, ask(start="2026-09-14T12:00", end="2026-09-14T16:00"), small_limit,
                                     now=DEMO_NOW)

    with factory() as session:
        status = {b.id: (b.status, b.preview["approval_reasons"]) for b in session.scalars(select(Broadcast))}
    assert status[quiet] == ("approved", [])
    assert status[worded] == ("awaiting_approval", ["free text from --reason"])
    assert status[large][0] == "awaiting_approval" and "above the approval threshold of 1" in status[large][1][0]


def test_unapproved_send_and_self_approval_are_refused_and_change_nothing(factory, demo_db, tmp_settings):
    broadcast_id = create(factory, tmp_settings, reason="Fog in the harbour.")
    before = snapshot(factory)

    with pytest.raises(ApprovalNeeded) as unapproved:
        manual.send(factory, broadcast_id, "alice")
    with pytest.raises(ApprovalNeeded, match="a different operator"):
        manual.approve(factory, broadcast_id, "Alice")

    assert unapproved.value.exit_code == 4
    assert snapshot(factory) == before
    manual.approve(factory, broadcast_id, "bob")
    assert manual.send(factory, broadcast_id, "alice") == len(notices(factory, broadcast_id))
    with factory() as session:
        actions = [(e.actor, e.action) for e in session.scalars(
            select(AuditEntry).where(AuditEntry.subject_type == "broadcast", AuditEntry.subject_id == str(broadcast_id))
            .order_by(AuditEntry.id))]
    assert actions == [("alice", "broadcast.created"), ("alice", "broadcast.planned"), ("bob", "broadcast.approved"),
                       ("alice", "broadcast.sent")]


def test_pause_resume_and_cancel_take_effect_at_the_next_claim(factory, demo_db, tmp_settings):
    broadcast_id = create(factory, tmp_settings)
    manual.send(factory, broadcast_id, "alice")
    total = len(notices(factory, broadcast_id))

    manual.pause(factory, broadcast_id, "alice")
    assert send_all(factory, tmp_settings).sent == 0
    manual.resume(factory, broadcast_id, "alice")
    assert send_all(factory, tmp_settings).sent == total
    assert previews.finish_sent_broadcasts(factory) == [broadcast_id]
    with pytest.raises(NotifierError, match="is done: nothing to cancel"):
        manual.cancel(factory, broadcast_id, "alice")
    assert len(outbox_lines(tmp_settings)) == sum(1 for n in notices(factory, broadcast_id) if n.channel == "sms")


def test_cancel_stops_unsent_notices_but_not_the_ones_in_flight(factory, demo_db, tmp_settings):
    broadcast_id = create(factory, tmp_settings)
    manual.send(factory, broadcast_id, "alice")
    with factory() as session, session.begin():
        in_flight = session.scalars(select(Notification).where(Notification.broadcast_id == broadcast_id)
                                    .limit(2)).all()
        for notification in in_flight:
            notification.status = "sending"  # claimed by a dispatcher a moment ago
        in_flight_ids = {n.id for n in in_flight}

    result = manual.cancel(factory, broadcast_id, "bob")

    statuses = {n.id: n.status for n in notices(factory, broadcast_id)}
    assert result.cancelled == len(statuses) - 2 and result.told == 2
    assert {statuses[i] for i in in_flight_ids} == {"sending"}
    assert {s for i, s in statuses.items() if i not in in_flight_ids} == {"cancelled"}


def test_cancelling_before_anyone_was_told_undoes_the_cancellation(factory, demo_db, tmp_settings):
    sailing = busy_sailing(factory)
    broadcast_id = create(factory, tmp_settings, route=None, sailings=(sailing,), kind="cancelled",
                          delay_minutes=None)
    with factory() as session:
        held = session.scalar(select(func.sum(SailingCapacity.held)))
        status = session.scalar(select(Sailing.status).where(Sailing.code == sailing))
    assert held > 0 and status == "cancelled"

    result = manual.cancel(factory, broadcast_id, "alice", now=DEMO_NOW)

    with factory() as session:
        assert session.scalar(select(func.sum(SailingCapacity.held))) == 0
        assert session.scalar(select(Sailing.status).where(Sailing.code == sailing)) == "scheduled"
        assert session.scalar(select(func.count()).select_from(Offer).where(Offer.status == "held")) == 0
    assert len(result.disruptions_cleared) == 1


def test_a_correction_reaches_exactly_those_already_told_and_only_once(factory, demo_db, tmp_settings):
    broadcast_id = create(factory, tmp_settings)
    manual.send(factory, broadcast_id, "alice")
    with factory() as session, session.begin():
        first = session.scalars(select(Notification).where(Notification.broadcast_id == broadcast_id)
                                .order_by(Notification.id).limit(5)).all()
        for notification in first:
            notification.status, notification.sent_at = "sent", DEMO_NOW
        told = {(n.channel, n.recipient) for n in first}
    manual.cancel(factory, broadcast_id, "alice")

    correction_id = correction.correct(factory, broadcast_id, "alice", tmp_settings, reason="Ignore it, sorry.",
                                       now=DEMO_NOW)

    corrections = notices(factory, correction_id)
    assert {(n.channel, n.recipient) for n in corrections} == told
    assert all(n.purpose == "correction" and n.status == "held" for n in corrections)
    assert all("Ignore it, sorry." in n.body_text for n in corrections)
    with factory() as session:
        assert session.get(Broadcast, correction_id).status == "awaiting_approval"  # free text
    with pytest.raises(NothingToSend, match="already told"):
        correction.correct(factory, broadcast_id, "bob", tmp_settings, now=DEMO_NOW)


def test_a_new_delay_is_told_again_the_same_delay_is_not(factory, demo_db, tmp_settings):
    window = {"start": "2026-09-14T08:00", "end": "2026-09-14T10:00"}
    first = create(factory, tmp_settings, **window)
    manual.send(factory, first, "alice")
    send_all(factory, tmp_settings)

    with pytest.raises(NothingToSend, match=f"already told about disruption .* by broadcast #{first}"):
        create(factory, tmp_settings, **window)
    longer = create(factory, tmp_settings, delay_minutes=75, **window)

    again = notices(factory, longer)
    assert len(again) == len(notices(factory, first))
    assert {n.revision for n in again} == {2}
    assert all("75" in n.body_text for n in again)


def test_resumed_clears_the_cancellation_gives_places_back_and_tells_everyone(factory, demo_db, tmp_settings):
    sailing = busy_sailing(factory)
    cancelled = create(factory, tmp_settings, route=None, sailings=(sailing,), kind="cancelled", delay_minutes=None)
    manual.send(factory, cancelled, "alice")
    send_all(factory, tmp_settings)

    resumed = create(factory, tmp_settings, route=None, sailings=(sailing,), kind="resumed", delay_minutes=None)

    with factory() as session:
        assert session.scalar(select(Sailing.status).where(Sailing.code == sailing)) == "scheduled"
        assert session.scalar(select(func.sum(SailingCapacity.held))) == 0
        kinds = dict(session.execute(select(Disruption.kind, Disruption.status)).all())
    assert kinds == {"cancelled": "cleared", "resumed": "active"}
    bodies = [n.body_text for n in notices(factory, resumed) if n.channel == "sms"]
    assert bodies and all("WILL OPERATE" in b or "恢复" in b for b in bodies)
    told_before = {n.booking_id for n in notices(factory, cancelled)}
    assert {n.booking_id for n in notices(factory, resumed)} == told_before


def test_a_stronger_disruption_is_not_contradicted(factory, demo_db, tmp_settings):
    sailing = busy_sailing(factory)
    create(factory, tmp_settings, route=None, sailings=(sailing,), kind="cancelled", delay_minutes=None)

    with pytest.raises(NothingToSend, match="is already cancelled"):
        create(factory, tmp_settings, route=None, sailings=(sailing,))


def test_audience_and_channels_narrow_the_recipients(factory, demo_db, tmp_settings):
    broadcast_id = create(factory, tmp_settings, channels=("email",), audience="passengers")

    rows = notices(factory, broadcast_id)
    with factory() as session:
        kinds = set(session.scalars(select(Booking.kind).where(Booking.id.in_({n.booking_id for n in rows}))))
    assert rows and {n.channel for n in rows} == {"email"} and kinds == {"passenger"}


def test_a_broadcast_created_while_automatic_notices_are_in_flight_sends_nothing_twice(factory, demo_db,
                                                                                      tmp_settings):
    from notifier.ops.demo import bundled_feed
    from notifier.feeds import cap
    from notifier.store.paths import rules_dir
    from notifier.ops.pipeline import ingest, plan_pending, process_new_items
    from notifier.rules.load import load_rules

    ingest(factory, cap.parse(bundled_feed(demo_db.epoch)))
    process_new_items(factory, load_rules([rules_dir()]), now=DEMO_NOW)
    automatic = plan_pending(factory, tmp_settings, now=DEMO_NOW)[0].broadcast_id
    with factory() as session, session.begin():
        rows = session.scalars(select(Notification).where(Notification.broadcast_id == automatic)
                               .order_by(Notification.id)).all()
        for index, notification in enumerate(rows[: len(rows) // 2]):
            # Half way through: some already with the provider, some claimed this very moment.
            notification.status = "sent" if index % 2 else "sending"
            notification.sent_at = DEMO_NOW if index % 2 else None
        typhoon = {(n.booking_id, n.channel) for n in rows}

    # The duty officer cancels the whole route for the two days, typhoon sailings included.
    by_hand = create(factory, tmp_settings, route="QZ-HAK-HAI", start="2026-09-14T08:00", end="2026-09-15T22:00",
                    kind="cancelled", delay_minutes=None)

    preview = previews.preview(factory, by_hand, tmp_settings)
    skipped = preview.facts["skipped"]
    assert skipped and {s["broadcast_id"] for s in skipped} == {automatic}
    mine = notices(factory, by_hand)
    assert mine and not typhoon & {(n.booking_id, n.channel) for n in mine}
    with factory() as session:
        on_route = set(session.scalars(select(Notification.booking_id).join(Booking).join(Sailing)
                                       .where(Notification.broadcast_id == automatic,
                                              Sailing.code.like("QZ-HAK-HAI-%"))))
    assert sum(s["bookings"] for s in skipped) == len(on_route)

    manual.send(factory, by_hand, "alice")
    with factory() as session, session.begin():  # the claimed ones come back as a dispatcher would leave them
        for notification in session.scalars(select(Notification).where(Notification.status == "sending")):
            notification.status = "queued"
    send_all(factory, tmp_settings)

    with factory() as session:
        told = session.execute(select(Notification.booking_id, Notification.channel, Notification.disruption_id)
                               .where(Notification.status == "sent")).all()
    assert len(told) == len(set(told))
    ids = [line["id"] for line in outbox_lines(tmp_settings)]
    assert len(ids) == len(set(ids))
