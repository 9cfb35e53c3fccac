"""The foundation's promises, end to end: a typhoon warning becomes exactly one notice per affected recipient
and channel; re-running or crashing half way changes nothing; no place is promised twice."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update

from notifier.planning import plan as planner
from notifier.channels.file import FileEmailChannel, FileSmsChannel
from notifier.store.db import transaction
from notifier.ops.demo import bundled_feed
from notifier.delivery.dispatch import dispatch_all
from notifier.feeds import cap
from notifier.store.models import Booking, Disruption, Notification, Offer, SailingCapacity
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import ingest, plan_pending, process_new_items
from notifier.rules.load import load_rules
from tests.conftest import DEMO_NOW


def run_pipeline(factory, settings, epoch):
    """ingest -> rules -> disruptions -> plan, as the demo and the watcher do."""
    ingest(factory, cap.parse(bundled_feed(epoch)))
    process_new_items(factory, load_rules([rules_dir()]), now=epoch)
    plan_pending(factory, settings, now=epoch)


def outbox_keys(factory) -> set[str]:
    with factory() as session:
        return set(session.scalars(select(Notification.dedup_key)))


def file_channels(settings):
    return {"sms": FileSmsChannel(settings.outbox_dir), "email": FileEmailChannel(settings.outbox_dir, "n@x")}


def test_typhoon_becomes_one_notice_per_recipient_and_channel(factory, demo_db, tmp_settings):
    run_pipeline(factory, tmp_settings, demo_db.epoch)
    stats = dispatch_all(factory, tmp_settings, file_channels(tmp_settings))

    with factory() as session:
        disrupted = session.scalar(select(func.count()).select_from(Disruption))
        rows = session.execute(select(Notification.booking_id, Notification.channel, Notification.recipient)).all()
    assert disrupted > 0
    assert len(rows) == len(set(rows)) == stats.sent
    sms_lines = (tmp_settings.outbox_dir + "/sms.jsonl")
    with open(sms_lines, encoding="utf-8") as handle:
        sms = [json.loads(line) for line in handle]
    emails = list((__import__("pathlib").Path(tmp_settings.outbox_dir) / "email").glob("*.eml"))
    assert len(sms) == sum(1 for r in rows if r.channel == "sms")
    assert len(emails) == sum(1 for r in rows if r.channel == "email")
    assert len({line["id"] for line in sms}) == len(sms)


def test_running_twice_plans_and_sends_nothing_new(factory, demo_db, tmp_settings):
    run_pipeline(factory, tmp_settings, demo_db.epoch)
    first = outbox_keys(factory)
    dispatch_all(factory, tmp_settings, file_channels(tmp_settings))

    run_pipeline(factory, tmp_settings, demo_db.epoch)
    second = dispatch_all(factory, tmp_settings, file_channels(tmp_settings))

    assert outbox_keys(factory) == first
    assert second.sent == 0


@pytest.mark.parametrize("ahead", [True, False], ids=["planned-ahead-of-its-writes", "one-transaction-per-chunk"])
def test_crash_half_way_then_rerun_gives_the_same_notifications(factory, demo_db, tmp_settings, monkeypatch,
                                                                tmp_path, ahead):
    # A clean run on a second database built from the same seed is the reference.
    from notifier.store.db import make_engine, session_factory
    from notifier.ops.demo import generate
    from notifier.store.migrate import upgrade

    reference_url = f"sqlite:///{tmp_path / 'reference.db'}"
    upgrade(reference_url)
    reference = session_factory(make_engine(reference_url))
    generate(reference, 600, DEMO_NOW)
    run_pipeline(reference, tmp_settings, demo_db.epoch)

    # Planned ahead, a chunk is written by the writer thread (_write_chunk); otherwise in one go (_plan_chunk).
    hook = "_write_chunk" if ahead else "_plan_chunk"
    monkeypatch.setattr(planner, "_ahead_pays", lambda _backend: ahead)  # SQLite plans ahead only when told to
    real_chunk = getattr(planner, hook)
    calls = {"n": 0}

    def crash_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(planner, hook, crash_on_second_chunk)
    with pytest.raises(RuntimeError):
        run_pipeline(factory, tmp_settings, demo_db.epoch)
    partial = outbox_keys(factory)
    monkeypatch.setattr(planner, hook, real_chunk)
    plan_pending(factory, tmp_settings, now=demo_db.epoch)

    assert 0 < len(partial) < len(outbox_keys(reference))
    assert outbox_keys(factory) == outbox_keys(reference)


def capacity_outcome(factory):
    """(sailings overbooked, places held by offers per (sailing, class), the hold counters, standby offers)."""
    with factory() as session:
        over = session.scalar(select(func.count()).select_from(SailingCapacity).where(
            SailingCapacity.booked + SailingCapacity.held > SailingCapacity.capacity))
        held_by_offers = dict(((sailing, space), places) for sailing, space, places in session.execute(
            select(Offer.sailing_id, Offer.space_class, func.sum(Offer.places)).where(Offer.status == "held")
            .group_by(Offer.sailing_id, Offer.space_class)))
        counters = {(c.sailing_id, c.space_class): c.held for c in session.scalars(select(SailingCapacity))}
        standby = session.scalar(select(func.count()).select_from(Offer).where(Offer.kind == "standby"))
    return over, held_by_offers, counters, standby


def test_a_full_alternative_sailing_is_never_overbooked(factory, demo_db, tmp_settings):
    ingest(factory, cap.parse(bundled_feed(demo_db.epoch)))
    process_new_items(factory, load_rules([rules_dir()]), now=demo_db.epoch)
    # Leave exactly 3 economy places free on every sailing that could be offered as an alternative.
    with factory() as session, session.begin():
        disrupted = set(session.scalars(select(Disruption.sailing_id)))
        session.execute(update(SailingCapacity)
                        .where(SailingCapacity.sailing_id.not_in(disrupted))
                        .values(capacity=SailingCapacity.booked + 3))
    plan_pending(factory, tmp_settings, now=demo_db.epoch)

    over, held_by_offers, counters, standby = capacity_outcome(factory)
    with factory() as session:
        refunds = session.scalars(select(Offer).where(Offer.kind == "refund")).all()
    assert over == 0
    assert held_by_offers and all(places <= 3 for places in held_by_offers.values())
    # The hold counters agree with the offers that hold places (nothing leaked, nothing double-counted).
    assert all(counters[key] == places for key, places in held_by_offers.items())
    assert standby > 0  # those without a place are offered the next sailing without a hold, and the refund
    assert all(isinstance(r.amount, Decimal) and r.amount > 0 for r in refunds)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_places_taken_by_another_writer_while_planning_ahead_are_never_overbooked(factory, demo_db, tmp_settings,
                                                                                   monkeypatch, request, writer):
    # Chunks are planned in memory ahead of their writes (written by a thread, PostgreSQL's way, or by the writer
    # process, SQLite's way at scale); here another writer takes every free place on the alternatives just before
    # the second chunk is written. That chunk's holds must fail, and it and the rest are planned again the
    # ordinary way (from fresh counters): standbys, never an overbooked sailing.
    processes = request.getfixturevalue("writer_processes") if writer == "process" else None
    ingest(factory, cap.parse(bundled_feed(demo_db.epoch)))
    process_new_items(factory, load_rules([rules_dir()]), now=demo_db.epoch)
    real_prepare, real_plan = planner.prepare_chunk, planner._plan_chunk
    calls = {"prepared": 0, "ordinary": 0}

    def someone_else_takes_the_places(*args, **kwargs):
        prepared = real_prepare(*args, **kwargs)
        calls["prepared"] += 1
        if calls["prepared"] == 2:  # the second chunk counted on places that are gone before it is written
            with transaction(factory) as other:
                disrupted = set(other.scalars(select(Disruption.sailing_id)))
                other.execute(update(SailingCapacity).where(SailingCapacity.sailing_id.not_in(disrupted))
                              .values(capacity=SailingCapacity.booked + SailingCapacity.held))
        return prepared

    def ordinary(*args, **kwargs):
        calls["ordinary"] += 1
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(planner, "_ahead_pays", lambda _backend: writer == "thread")  # as on PostgreSQL
    monkeypatch.setattr(planner, "prepare_chunk", someone_else_takes_the_places)
    monkeypatch.setattr(planner, "_plan_chunk", ordinary)
    plan_pending(factory, tmp_settings, now=demo_db.epoch)

    over, held_by_offers, counters, standby = capacity_outcome(factory)
    with factory() as session:
        refunded = session.scalar(select(func.count(func.distinct(Offer.booking_id))).where(Offer.kind == "refund"))
        disrupted_bookings = session.scalar(select(func.count()).select_from(Booking).where(
            Booking.status == "confirmed", Booking.sailing_id.in_(select(Disruption.sailing_id))))
    assert calls["prepared"] >= 2 and calls["ordinary"] > 0  # the second chunk fell back to the ordinary way
    assert processes is None or processes  # the process variant did use a writer process
    assert over == 0
    assert held_by_offers and all(counters[key] == places for key, places in held_by_offers.items())
    assert standby > 0
    assert refunded == disrupted_bookings  # every booking was planned once, none lost on the way


def test_refund_is_the_full_price_paid_in_its_currency(factory, demo_db, tmp_settings):
    run_pipeline(factory, tmp_settings, demo_db.epoch)
    with factory() as session:
        pairs = session.execute(select(Offer.amount, Offer.currency, Booking.fare_paid, Booking.currency)
                                .join(Booking, Booking.id == Offer.booking_id).where(Offer.kind == "refund")).all()
    assert pairs
    assert all(amount == fare and currency == paid_in for amount, currency, fare, paid_in in pairs)


def test_chinese_sms_fits_two_segments(factory, demo_db, tmp_settings):
    run_pipeline(factory, tmp_settings, demo_db.epoch)
    with factory() as session:
        chinese = session.scalars(select(Notification).where(Notification.channel == "sms",
                                                             Notification.language == "zh-CN")).all()
    assert chinese
    assert max(n.segments for n in chinese) <= 2
    assert all("台风" in n.body_text and "回复R" in n.body_text for n in chinese)
