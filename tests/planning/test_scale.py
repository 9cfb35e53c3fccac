"""Planning at scale, at small sizes: the bulk planner (notifier.planning, notifier.shapes, notifier.contacts) writes
exactly the rows the straightforward one-booking-at-a-time planner writes, its shaped messages are byte-identical
to plain renders, it streams (the first notices are dispatchable while it is still planning), and it keeps the
stored contact checks honest. Speed is measured by bench/bench_plan.py, never here."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st
from sqlalchemy import func, select, update

from bench.baseline_plan import plan_one_by_one
from notifier.planning import chunks
from notifier.broadcasts import manual
from notifier.planning import plan as planner
from notifier.planning.audience import Recipient, opted_out, recipients_for
from notifier.broadcasts.manual import BroadcastRequest
from notifier.planning.plan import create_automatic, plan_broadcast
from notifier.planning.notices import SailingFacts, choice_link, notice_context
from notifier.planning.contacts import check_contacts, contact_check, is_current, recipients_checked
from notifier.store.db import make_engine, session_factory, transaction
from notifier.ops.demo import bundled_feed, generate
from notifier.disruptions import apply_impacts
from notifier.feeds import cap
from notifier.channels.segments import sms_segments
from notifier.messages import render
from notifier.store.models import (Booking, Broadcast, Customer, Disruption, Notification, Offer, OptOut, Port, Route,
                                   Sailing, SailingCapacity)
from notifier.store.capacity import candidates_for
from notifier.store.paths import rules_dir, templates_dir
from notifier.ops.pipeline import ingest, process_new_items
from notifier.rules.load import load_rules
from notifier.rules.model import Impact
from notifier.planning.shapes import ShapeBook, printable_slots, text_units
from tests.conftest import DEMO_NOW

# Names that test the fill-in: HTML to escape, GSM-7 extension characters, emoji (UTF-16 surrogate pairs),
# Chinese, and names that must be rendered plainly (surrounding spaces, a line break).
AWKWARD_NAMES = ["O'Brien & <Sons> \"Ltd\"", "Zoë [VIP] €", "Ana 🚢 Lima", "欧阳 娜娜", " Padded Name ",
                 "Line\nBreak", "A" * 150]


def typhoon_db(factory) -> int:
    """The demo network with the bundled typhoon turned into disruptions and one automatic broadcast (not yet
    planned), awkward customers, an opt-out, a stale contact check and scarce alternatives; returns its id."""
    generate(factory, 600, DEMO_NOW)
    ingest(factory, cap.parse(bundled_feed(DEMO_NOW)))
    process_new_items(factory, load_rules([rules_dir()]), now=DEMO_NOW)
    with transaction(factory) as session:
        broadcast = session.scalar(select(Broadcast).where(Broadcast.status == "planning"))
        disrupted = select(Disruption.sailing_id).where(Disruption.id.in_(broadcast.target["disruption_ids"]))
        customers = session.scalars(select(Customer).join(Booking, Booking.customer_id == Customer.id)
                                    .where(Booking.sailing_id.in_(disrupted), Customer.email.is_not(None),
                                           Customer.phone.is_not(None)).order_by(Customer.id).limit(40)).all()
        for customer, name in zip(customers, AWKWARD_NAMES, strict=False):
            customer.name = name
        customers[10].contact_check = contact_check("+8613800000000", customers[10].email)  # made for another phone
        customers[11].contact_check = contact_check(customers[11].phone, customers[11].email)  # current
        session.add(OptOut(channel="sms", address=contact_check(customers[12].phone, None)["sms"][0] or "+86",
                           source="sms_stop"))
        session.execute(update(SailingCapacity).where(SailingCapacity.sailing_id.not_in(disrupted))
                        .values(capacity=SailingCapacity.booked + 1))
        return broadcast.id


def copy_database(source: Path, target: Path):
    """A consistent copy of a SQLite database (its WAL included), opened."""
    snapshot(source, target)
    engine = make_engine(f"sqlite:///{target}")
    return engine, session_factory(engine)


def snapshot(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as origin, sqlite3.connect(target) as copy:
        origin.backup(copy)


def outcome(factory) -> dict[str, list]:
    """Everything planning writes, without ids and creation times."""
    with factory() as session:
        notices = session.execute(select(*[c for c in Notification.__table__.c if c.name not in ("id", "created_at")])
                                  .order_by(Notification.dedup_key)).all()
        offers = session.execute(select(*[c for c in Offer.__table__.c if c.name not in ("id", "created_at")])
                                 .order_by(Offer.booking_id, Offer.disruption_id, Offer.revision,
                                           Offer.option_key)).all()
        counters = session.execute(select(SailingCapacity.sailing_id, SailingCapacity.space_class,
                                          SailingCapacity.held, SailingCapacity.booked)
                                   .order_by(SailingCapacity.id)).all()
        broadcasts_ = session.execute(select(Broadcast.id, Broadcast.status, Broadcast.needs_approval,
                                             Broadcast.recipient_count, Broadcast.preview).order_by(Broadcast.id)).all()
        planned = session.execute(select(Disruption.id, Disruption.planned_revision).order_by(Disruption.id)).all()
    return {"notices": notices, "offers": offers, "counters": counters, "broadcasts": broadcasts_,
            "planned": planned}


def both_ways(tmp_path: Path, source: Path, broadcast_id: int, settings) -> tuple[dict, dict]:
    """Plan one broadcast on two copies of a database: in bulk, and one booking at a time."""
    results = []
    for name, plan in (("bulk", plan_broadcast), ("one_by_one", plan_one_by_one)):
        engine, factory = copy_database(source, tmp_path / f"{name}.db")
        try:
            plan(factory, broadcast_id, settings, DEMO_NOW)
            results.append(outcome(factory))
        finally:
            engine.dispose()
    return results[0], results[1]


def test_bulk_planning_writes_exactly_the_rows_of_the_one_by_one_planner(factory, tmp_settings, tmp_path):
    broadcast_id = typhoon_db(factory)
    bulk, one_by_one = both_ways(tmp_path, Path(tmp_settings.database_url[len("sqlite:///"):]), broadcast_id,
                                 tmp_settings)

    assert len(bulk["notices"]) > 80 and bulk["offers"]
    assert bulk == one_by_one
    kinds = {row.kind for row in bulk["offers"]}
    assert {"rebook", "standby", "refund"} <= kinds  # scarce places: some held, some on standby
    bodies = "\n".join(row.body_html or "" for row in bulk["notices"])
    assert "O&#39;Brien &amp; &lt;Sons&gt; &#34;Ltd&#34;" in bodies  # escaped in HTML, as autoescape does
    statuses = {row.status for row in bulk["notices"]}
    assert statuses == {"queued"}


def test_a_revised_disruption_and_a_second_broadcast_plan_the_same_both_ways(factory, tmp_settings, tmp_path):
    first = typhoon_db(factory)
    plan_broadcast(factory, first, tmp_settings, now=DEMO_NOW)
    with transaction(factory) as session:
        disruption = session.get(Disruption, session.scalar(select(Offer.disruption_id).where(
            Offer.status == "held").order_by(Offer.id).limit(1)))
        revised = Impact(sailing_id=disruption.sailing_id, kind="cancelled", cause="weather",
                         severity=disruption.severity, rule_id=disruption.rule_id,
                         window_start=disruption.window_start, window_end=disruption.window_end + timedelta(hours=1),
                         notify=dict(disruption.notify),
                         policy=dict(disruption.policy), cause_text=disruption.cause_text)
        apply_impacts(session, [revised], None, DEMO_NOW)
        session.flush()
        assert disruption.revision == 2  # the earlier holds are superseded when it is planned again
        others = [i for i in session.get(Broadcast, first).target["disruption_ids"] if i != disruption.id]
        second = create_automatic(session, [disruption.id, *others[:2]], "updated", ["sms", "email"], "passengers",
                                  "cancelled").id
    bulk, one_by_one = both_ways(tmp_path, Path(tmp_settings.database_url[len("sqlite:///"):]), second,
                                 tmp_settings)

    assert bulk == one_by_one
    assert any(row.status == "superseded" for row in bulk["offers"])
    preview = next(row.preview for row in bulk["broadcasts"] if row.id == second)
    assert preview["skipped"]  # the unrevised sailings were already told by the first broadcast


def test_a_manual_broadcast_with_free_text_is_planned_on_hold_the_same_both_ways(factory, tmp_settings, tmp_path):
    generate(factory, 600, DEMO_NOW)
    request = BroadcastRequest(operator="alice", kind="advisory", port="CNHAK", start="2026-09-14T12:00",
                               end="2026-09-14T20:00", reason="Bring ID <and> your ticket & arrive early")
    with factory() as session:
        sailings = session.scalars(select(Sailing.id).join(Port, Port.id == Sailing.origin_port_id)
                                   .where(Port.locode == "CNHAK")).all()
    assert sailings
    # create_manual plans in bulk; re-plan its broadcast one by one on a copy taken before planning.
    source = Path(tmp_settings.database_url[len("sqlite:///"):])
    before = tmp_path / "before.db"
    snapshot(source, before)
    broadcast_id = manual.create_manual(factory, request, tmp_settings, now=DEMO_NOW)
    bulk = outcome(factory)
    engine, other = copy_database(before, tmp_path / "one_by_one.db")
    try:
        with manual.single_transaction(other) as single:
            with transaction(single) as session:
                assert manual._record_manual(session, manual.checked_request(request), DEMO_NOW) == \
                    broadcast_id
            plan_one_by_one(single, broadcast_id, tmp_settings, DEMO_NOW)
        one_by_one = outcome(other)
    finally:
        engine.dispose()

    assert bulk == one_by_one
    assert {row.status for row in bulk["notices"]} == {"held"}
    assert all("Bring ID &lt;and&gt; your ticket &amp; arrive early" in row.body_html
               for row in bulk["notices"] if row.channel == "email")


@pytest.mark.parametrize("ahead", [True, False], ids=["planned-ahead-of-its-writes", "one-transaction-per-chunk"])
def test_the_first_notices_are_dispatchable_while_planning_goes_on(factory, tmp_settings, monkeypatch, ahead):
    broadcast_id = typhoon_db(factory)
    reader = make_engine(tmp_settings.database_url)
    # Planned ahead (PostgreSQL's way), each chunk is written by _write_chunk while the next is planned; otherwise
    # _plan_chunk reads, plans and writes it in one transaction (SQLite's way).
    hook = "_write_chunk" if ahead else "_plan_chunk"
    real_chunk = getattr(planner, hook)
    seen: list[tuple[int, int]] = []  # (bookings in this chunk, queued notices another connection sees before it)

    def watched_chunk(session, broadcast, parts, *args, **kwargs):
        with reader.connect() as other:
            seen.append((sum(len(part.booking_ids) for part in parts), other.scalar(
                select(func.count()).select_from(Notification).where(Notification.broadcast_id == broadcast,
                                                                     Notification.status == "queued"))))
        return real_chunk(session, broadcast, parts, *args, **kwargs)

    monkeypatch.setattr(planner, "_ahead_pays", lambda _backend: ahead)
    monkeypatch.setattr(planner, hook, watched_chunk)
    try:
        result = plan_broadcast(factory, broadcast_id, tmp_settings, now=DEMO_NOW, chunk=10)
    finally:
        reader.dispose()

    counts = [count for _, count in seen]
    assert counts[0] == 0 and counts == sorted(counts)  # each chunk is committed before the next one starts
    assert 0 < counts[-1] < result.notifications  # notices were dispatchable before the last chunk was planned
    assert len(seen) > 3 and all(size == 10 for size, _ in seen[:-1])
    assert sum(size for size, _ in seen) == result.bookings  # chunks span sailings: none is cut short


def test_chunks_start_small_and_grow():
    sizes = chunks.ChunkSizes(2000)
    assert [sizes.next() for _ in range(7)] == [10, 40, 160, 640, 2000, 2000, 2000]
    assert [chunks.ChunkSizes(5).next() for _ in range(2)] == [5, 5]


# --- shapes: byte-identical to a plain render -------------------------------------------------------------------

def sailing_facts(factory) -> SailingFacts:
    """The facts of a disrupted sailing whose bookings hold places on alternatives."""
    with factory() as session:
        disruption = session.get(Disruption, session.scalar(
            select(Offer.disruption_id).where(Offer.kind == "rebook").group_by(Offer.disruption_id)
            .order_by(func.count().desc(), Offer.disruption_id).limit(1)))
        sailing = session.get(Sailing, disruption.sailing_id)
        facts = SailingFacts(disruption=disruption, sailing=sailing, origin=session.get(Port, sailing.origin_port_id),
                             destination=session.get(Port, sailing.destination_port_id),
                             route=session.get(Route, sailing.route_id), candidates=candidates_for(session, disruption),
                             candidate_ports={})
        session.expunge_all()
    return facts


@pytest.mark.parametrize("template", ["cancelled", "updated", "advisory", "notice"])
def test_a_shaped_notice_is_byte_identical_to_a_plain_render(factory, tmp_settings, template):
    plan_broadcast(factory, typhoon_db(factory), tmp_settings, now=DEMO_NOW)
    facts = sailing_facts(factory)
    book = ShapeBook(facts, template, tmp_settings, "Arrive early & bring <ID>")
    with factory() as session:
        pairs = session.execute(select(Booking, Customer).join(Customer, Customer.id == Booking.customer_id)
                                .where(Booking.sailing_id == facts.sailing.id).limit(20)).all()
        offers = {booking.id: session.scalars(select(Offer).where(Offer.booking_id == booking.id,
                                                                  Offer.disruption_id == facts.disruption.id)
                                              .order_by(Offer.id)).all() for booking, _ in pairs}
        session.expunge_all()
    assert pairs and any(offers.values())
    renders = 0
    for booking, customer in pairs:
        for name in [customer.name, *AWKWARD_NAMES]:
            customer.name = name
            for made in (offers[booking.id], []):
                deadline = next((o.deadline for o in made if o.deadline), None)
                for channel in ("sms", "email"):
                    for language in ("en", "zh-CN", "zh-Hant-HK"):
                        shaped = book.notices(booking, customer, made, deadline, [
                            Recipient(booking.id, customer.id, channel, "someone", language)])[0]
                        plain = render(channel, template, language, notice_context(
                            facts, booking, customer, made, tmp_settings, language, deadline,
                            "Arrive early & bring <ID>"))
                        assert shaped == plain
                        renders += 1
    assert 0 < book.rendered_shapes < renders / 4  # shapes were shared, not made per booking
    assert book.plain_renders > 0  # the padded name and the line break went the plain way


def test_a_template_that_transforms_the_name_is_rendered_plainly(factory, tmp_settings, tmp_path):
    plan_broadcast(factory, typhoon_db(factory), tmp_settings, now=DEMO_NOW)
    folder = tmp_path / "templates"
    shutil.copytree(templates_dir(), folder)
    (folder / "sms" / "cancelled.en.txt.j2").write_text("{{ company }}: {{ customer.name|upper }} {{ link }}")
    assert not printable_slots("cancelled", "sms", "en", str(folder))
    assert printable_slots("cancelled", "email", "en", str(folder))
    facts = sailing_facts(factory)
    book = ShapeBook(facts, "cancelled", tmp_settings, None, folder=str(folder))
    with factory() as session:
        booking, customer = session.execute(select(Booking, Customer).join(Customer, Customer.id == Booking.customer_id)
                                            .limit(1)).one()
        session.expunge_all()
    rendered = book.notices(booking, customer, [], None, [Recipient(booking.id, customer.id, "sms", "+86", "en")])[0]
    assert customer.name.upper() in rendered.body_text and book.plain_renders == 1


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcXYZ 019@£$€[]{}^~|\\\n\r") + ["é", "ç", "台", "风", "🚢", "Ω"]),
               max_size=400))
def test_segments_counted_from_a_shape_agree_with_messages(text):
    from notifier.planning.shapes import TextShape

    cut = len(text) // 2
    shape = TextShape.of(text[:cut] + "\ue000N\ue001" + "\ue000L\ue001")
    units = {"N": text_units(text[cut:]), "L": text_units("")}
    assert shape.segments(units, text) == sms_segments(text)


# --- stored contact checks ----------------------------------------------------------------------------------------

ODD_CONTACTS = [("+86 898 6533 0000", "li@example.com"), ("12345", "not-an-email"), (None, None),
                ("+852 9123 4567", "Wong@Example.COM"), ("+8613800138000", "customer7@example.com")]


def test_stored_contact_checks_give_the_same_recipients_and_go_stale_with_the_number(factory):
    generate(factory, 200, DEMO_NOW)
    with transaction(factory) as session:
        session.add(OptOut(channel="email", address="customer7@example.com", source="unsubscribe"))
        for customer, (phone, email) in zip(session.scalars(select(Customer).order_by(Customer.id)), ODD_CONTACTS,
                                            strict=False):
            customer.phone, customer.email = phone, email
    with factory() as session:
        pairs = session.execute(select(Booking, Customer).join(Customer, Customer.id == Booking.customer_id)).all()
        stops = opted_out(session)
    for booking, customer in pairs:
        check = contact_check(customer.phone, customer.email)
        assert recipients_checked(booking, customer, check, ["sms", "email"], stops) == \
            recipients_for(booking, customer, ["sms", "email"], stops)
        assert is_current(check, customer.phone, customer.email)
        assert not is_current(check, (customer.phone or "") + "1", customer.email)
    reasons = {u.reason for booking, customer in pairs
               for u in recipients_for(booking, customer, ["sms", "email"], stops)[1]}
    assert {"no phone number", "phone number cannot take SMS (landline)", "no valid phone number",
            "no valid email address", "opted out"} <= reasons

    customers = len({customer.id for _, customer in pairs})
    assert check_contacts(factory, chunk=50) >= customers
    assert check_contacts(factory) == 0  # all current now
    with transaction(factory) as session:
        changed = session.scalar(select(Customer).where(Customer.phone.is_not(None)).limit(1))
        changed.phone = "+852 9123 4567"
    assert check_contacts(factory) == 1
    with factory() as session:
        assert session.get(Customer, changed.id).contact_check["sms"] == ["+85291234567", ""]


def test_planning_stores_the_contact_checks_it_had_to_make(factory, tmp_settings):
    broadcast_id = typhoon_db(factory)
    plan_broadcast(factory, broadcast_id, tmp_settings, now=DEMO_NOW)
    with factory() as session:
        told = session.scalars(select(Customer).where(Customer.id.in_(
            select(Notification.customer_id).where(Notification.broadcast_id == broadcast_id)))).all()
    assert told and all(is_current(c.contact_check, c.phone, c.email) for c in told)


# --- PostgreSQL -----------------------------------------------------------------------------------------------------

def test_bulk_planning_on_postgresql_matches_sqlite(postgres_url, factory, tmp_settings):
    broadcast_id = typhoon_db(factory)
    on_sqlite_file = Path(tmp_settings.database_url[len("sqlite:///"):])
    engine = make_engine(postgres_url)
    try:
        pg = session_factory(engine)
        typhoon_db(pg)
        plan_broadcast(pg, broadcast_id, replace(tmp_settings, database_url=postgres_url), now=DEMO_NOW)
        plan_broadcast(factory, broadcast_id, tmp_settings, now=DEMO_NOW)
        on_postgres, on_sqlite = outcome(pg), outcome(factory)
    finally:
        engine.dispose()
    assert on_sqlite_file.exists()
    assert on_postgres["notices"] == on_sqlite["notices"]
    assert on_postgres["offers"] == on_sqlite["offers"]
    assert on_postgres["counters"] == on_sqlite["counters"]
    assert all(isinstance(row.amount, Decimal) for row in on_postgres["offers"] if row.kind == "refund")


def test_the_choice_link_of_a_shape_is_the_link_every_notice_carries(factory, tmp_settings):
    plan_broadcast(factory, typhoon_db(factory), tmp_settings, now=DEMO_NOW)
    facts = sailing_facts(factory)
    book = ShapeBook(facts, "cancelled", tmp_settings, None)
    for booking_id in (1, 35, 36, 1295, 1296, 46655, 46656, 10**9 + 7):
        for deadline in (None, DEMO_NOW + timedelta(hours=12)):
            assert book.link(booking_id, deadline) == choice_link(
                tmp_settings, booking_id, facts.disruption.id, deadline or facts.sailing.scheduled_departure)


def test_contacts_can_be_checked_ahead_of_a_storm_from_the_command_line(factory, tmp_settings):
    from click.testing import CliRunner

    from cli import main

    generate(factory, 100, DEMO_NOW)
    env = {"NOTIFIER_DATABASE_URL": tmp_settings.database_url, "NOTIFIER_CONFIG": ""}
    first = CliRunner().invoke(main, ["db", "check-contacts"], env=env)
    again = CliRunner().invoke(main, ["db", "check-contacts", "--processes", "2"], env=env)
    with factory() as session:
        customers = session.scalars(select(Customer)).all()

    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert first.output == f"checked the contacts of {len(customers)} customer(s); the others were already current\n"
    assert again.output.startswith("checked the contacts of 0 customer(s)")
    assert all(is_current(c.contact_check, c.phone, c.email) for c in customers)
