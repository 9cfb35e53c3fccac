"""The customer-service desk's worklist: who needs a person and why (no usable contact, every notice failed, their
own words, HELP, a choice that cannot stand, key accounts), raised once each, most urgent first, taken by one
operator only and closed with an outcome; the demo's unreachable customers are on it."""

from __future__ import annotations

import csv
import io
import re
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli import main
from notifier.ops import demo
from notifier.planning.audience import can_take_sms, normalise_email, normalise_phone
from notifier.broadcasts.manual import BroadcastRequest, create_manual
from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory, transaction
from notifier.aftercare.followups import FollowUpError, close, refresh, take, worklist
from notifier.store.models import (AuditEntry, Booking, Customer, Disruption, FollowUp, Notification, Offer, Port,
                                   Route, Sailing)
from notifier.aftercare.responses import handle_sms_reply
from tests.conftest import DEMO_NOW
from tests.aftercare.test_closing_the_loop import role_phone, typhoon, typhoon_template  # noqa: F401

NOW = DEMO_NOW + timedelta(hours=1)


def run_cli(url: str, *args: str):
    return CliRunner().invoke(main, list(args), env={"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": url})


def reply(factory, settings, role_index: int, body: str, now=NOW) -> None:
    with transaction(factory) as session:
        handle_sms_reply(session, settings, role_phone(role_index), body, now=now)


def raise_all(factory, settings, now=NOW) -> dict[str, int]:
    with transaction(factory) as session:
        return refresh(session, settings, now)


def items_of(factory, booking_id: int) -> list[FollowUp]:
    with factory() as session:
        return list(session.scalars(select(FollowUp).where(FollowUp.booking_id == booking_id).order_by(FollowUp.id)))


# --- the demo, as a new user meets it ------------------------------------------------------------------------------

def test_the_demo_worklist_shows_the_unreachable_customers_with_the_reason(tmp_path):
    settings = load_settings(env={}, config_path=None, database_url=f"sqlite:///{tmp_path / 'demo.db'}",
                             outbox_dir=str(tmp_path / "outbox"))
    demo.run(settings, 1500, None, now=DEMO_NOW)
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as session:
        affected = session.execute(select(Booking.ref, Customer.phone, Customer.email).distinct()
                                   .join(Offer, Offer.booking_id == Booking.id)
                                   .join(Customer, Customer.id == Booking.customer_id)).all()
    engine.dispose()
    phone_ok = lambda raw: normalise_phone(raw) is not None and can_take_sms(normalise_phone(raw))  # noqa: E731
    expected = sorted(ref for ref, phone, email in affected if not phone_ok(phone) and normalise_email(email) is None)
    assert expected, "the demo's typhoon should hit at least one customer without a usable contact"

    listed = run_cli(settings.database_url, "followups", "list")

    assert listed.exit_code == 0, listed.output
    assert sorted(re.findall(r"unreachable \[open\] booking (\S+)", listed.output)) == expected
    assert len(re.findall(r"why: no usable contact \(sms: no (valid )?phone number.*; email: no email address\)",
                          listed.output)) == len(expected)
    exported = run_cli(settings.database_url, "followups", "list", "--csv", "--reason", "unreachable")
    rows = list(csv.DictReader(io.StringIO(exported.output)))
    assert sorted(row["booking"] for row in rows) == expected
    assert {row["reason"] for row in rows} == {"unreachable"} and all(row["detail"] for row in rows)


# --- raising -------------------------------------------------------------------------------------------------------

def test_each_follow_up_is_raised_once_and_a_closed_one_stays_closed(typhoon, tmp_settings):
    factory, _, roles = typhoon
    writes = roles["writes"]
    reply(factory, tmp_settings, 2, "Is there a later ferry with a cabin?")

    assert raise_all(factory, tmp_settings).get("free-text") == 1
    assert raise_all(factory, tmp_settings) == {}
    reply(factory, tmp_settings, 2, "Please call me after 6 pm", now=NOW + timedelta(minutes=5))
    raise_all(factory, tmp_settings, NOW + timedelta(minutes=6))
    assert [(i.reason, i.status) for i in items_of(factory, writes)] == [("free-text", "open")]

    with transaction(factory) as session:
        take(session, items_of(factory, writes)[0].id, "alice", NOW + timedelta(minutes=10))
        close(session, items_of(factory, writes)[0].id, "other", "Called back: staying on the held sailing",
              now=NOW + timedelta(minutes=20))
    assert raise_all(factory, tmp_settings, NOW + timedelta(minutes=30)) == {}

    reply(factory, tmp_settings, 2, "Sorry, one more question", now=NOW + timedelta(minutes=40))
    assert raise_all(factory, tmp_settings, NOW + timedelta(minutes=41)) == {"free-text": 1}
    assert [i.status for i in items_of(factory, writes)] == ["done", "open"]


def test_key_accounts_and_large_cargo_bookings_get_a_personal_call(typhoon, tmp_settings):
    factory, target, roles = typhoon
    with transaction(factory) as session:
        silent = session.get(Booking, roles["silent"])
        session.get(Customer, silent.customer_id).key_account = True
        silent_ref = silent.ref
        cargo = session.scalars(select(Sailing).join(Route, Route.id == Sailing.route_id)
                                .where(Route.kind == "cargo", Sailing.scheduled_departure > NOW)
                                .order_by(Sailing.scheduled_departure)).first()
        on_board = session.execute(select(Booking.ref, Booking.teu, Customer.key_account)
                                   .join(Customer, Customer.id == Booking.customer_id)
                                   .where(Booking.sailing_id == cargo.id, Booking.status == "confirmed")).all()
    create_manual(factory, BroadcastRequest(operator="duty", kind="cancelled", sailings=(cargo.code,)),
                  tmp_settings, NOW)

    raise_all(factory, tmp_settings)

    with factory() as session:
        items = worklist(session, tmp_settings, reasons=("key-account",))
    limit = tmp_settings.key_account_teu
    expected = {ref for ref, teu, flagged in on_board if flagged or teu > limit}
    assert expected and len(expected) < len(on_board)
    assert {i.booking_ref for i in items} == expected | {silent_ref}
    flagged = next(i for i in items if i.disruption_id == target)
    assert flagged.detail == "personal call: key account" and flagged.key_account
    big = [i for i in items if "TEU cargo booking" in i.detail]
    assert big and all(int(re.search(r"(\d+) TEU", i.detail).group(1)) > limit for i in big)


def test_a_choice_that_cannot_be_carried_out_goes_to_a_person(typhoon, tmp_settings):
    factory, _, roles = typhoon
    reply(factory, tmp_settings, 0, "1")  # moved onto the first alternative
    with factory() as session:
        moved_to = session.get(Sailing, session.get(Booking, roles["chooses"]).sailing_id)

    create_manual(factory, BroadcastRequest(operator="duty", kind="cancelled", sailings=(moved_to.code,)),
                  tmp_settings, NOW + timedelta(minutes=5))
    raise_all(factory, tmp_settings, NOW + timedelta(minutes=6))

    [item] = [i for i in items_of(factory, roles["chooses"]) if i.reason == "not-carried-out"]
    assert f"moved onto {moved_to.code}" in item.detail and "which is now cancelled" in item.detail


def test_the_list_is_most_urgent_first_and_filters_by_reason_and_disruption(typhoon, tmp_settings):
    factory, target, roles = typhoon
    reply(factory, tmp_settings, 2, "Which pier do I go to?")
    with transaction(factory) as session:
        # An earlier sailing's customer writes too: their item comes first.
        notice = session.scalar(select(Notification).join(Disruption, Disruption.id == Notification.disruption_id)
                                .join(Sailing, Sailing.id == Disruption.sailing_id)
                                .where(Notification.channel == "sms", Disruption.status == "active")
                                .order_by(Sailing.scheduled_departure, Notification.id).limit(1))
        handle_sms_reply(session, tmp_settings, notice.recipient, "where is my refund", now=NOW)
    raise_all(factory, tmp_settings)
    url = tmp_settings.database_url

    everything = run_cli(url, "followups", "list")
    only_target = run_cli(url, "followups", "list", "--disruption", str(target), "--reason", "free-text")
    unknown = run_cli(url, "followups", "list", "--reason", "angry")

    bookings = re.findall(r"^#\d+ \S+ \[open\] booking (\S+)", everything.output, flags=re.M)
    with factory() as session:
        first_ref = session.get(Booking, notice.booking_id).ref
        writes_ref = session.get(Booking, roles["writes"]).ref
    assert bookings.index(first_ref) < bookings.index(writes_ref)
    assert re.findall(r"^#\d+ (\S+) \[open\] booking (\S+)", only_target.output, flags=re.M) == \
        [("free-text", writes_ref)]
    assert "reply: Which pier do I go to?" in only_target.output
    assert unknown.exit_code == 2 and len(unknown.output.strip().splitlines()) == 1
    assert "unknown reason 'angry'" in unknown.output and "Traceback" not in unknown.output


# --- working the list -------------------------------------------------------------------------------------------------

def test_take_and_done_are_for_one_operator_and_say_clearly_what_is_wrong(typhoon, tmp_settings):
    factory, _, roles = typhoon
    reply(factory, tmp_settings, 2, "Can you call me?")
    raise_all(factory, tmp_settings)
    [item] = items_of(factory, roles["writes"])
    url = tmp_settings.database_url

    untaken = run_cli(url, "followups", "done", str(item.id), "--outcome", "other", "--note", "x")
    assert untaken.exit_code == 1 and "take it first" in untaken.output
    assert run_cli(url, "followups", "take", str(item.id), "--operator", "alice").exit_code == 0
    assert run_cli(url, "followups", "take", str(item.id), "--operator", "alice").exit_code == 0  # already hers
    stolen = run_cli(url, "followups", "done", str(item.id), "--outcome", "other", "--note", "x", "--operator", "bob")
    assert stolen.exit_code == 1 and "taken by alice; only alice can close it" in stolen.output
    no_note = run_cli(url, "followups", "done", str(item.id), "--outcome", "other", "--note", " ")
    assert no_note.exit_code == 2 and "--note" in no_note.output
    bad_outcome = run_cli(url, "followups", "done", str(item.id), "--outcome", "maybe", "--note", "x")
    assert bad_outcome.exit_code == 2
    missing = run_cli(url, "followups", "take", "9999", "--operator", "alice")
    assert missing.exit_code == 2 and "unknown follow-up #9999" in missing.output
    nobody = CliRunner().invoke(main, ["followups", "take", str(item.id)],
                                env={"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": url, "NOTIFIER_OPERATOR": ""})
    assert nobody.exit_code == 2 and "--operator" in nobody.output

    done = run_cli(url, "followups", "done", str(item.id), "--outcome", "refunded", "--note",
                   "Refund agreed by phone, call me on +8613912345678")
    assert done.exit_code == 0 and "done: refunded, by alice" in done.output
    again = run_cli(url, "followups", "done", str(item.id), "--outcome", "other", "--note", "x")
    assert again.exit_code == 1 and "already done (refunded, by alice)" in again.output
    shown = run_cli(url, "followups", "list", "--all")
    assert f"#{item.id} free-text [done by alice: refunded]" in shown.output
    assert "+8613912345678" not in shown.output and "+86 139****5678" in shown.output
    with factory() as session:
        actions = session.execute(select(AuditEntry.actor, AuditEntry.action).where(
            AuditEntry.subject_type == "follow_up", AuditEntry.subject_id == str(item.id))
            .order_by(AuditEntry.id)).all()
    assert actions == [("alice", "followup.taken"), ("alice", "followup.done")]


def race_to_take(factory, item_id: int) -> list[str]:
    start = threading.Barrier(2)
    results: list[str] = []

    def operator(name: str) -> None:
        start.wait()
        try:
            with transaction(factory) as session:
                results.append(take(session, item_id, name).operator)
        except FollowUpError as refused:
            results.append(str(refused))

    threads = [threading.Thread(target=operator, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_operators_taking_one_item_at_once_one_gets_it(typhoon, tmp_settings):
    factory, _, roles = typhoon
    reply(factory, tmp_settings, 2, "Call me please")
    raise_all(factory, tmp_settings)
    [item] = items_of(factory, roles["writes"])

    results = race_to_take(factory, item.id)

    [winner] = [r for r in results if r in ("alice", "bob")]
    [refusal] = [r for r in results if r not in ("alice", "bob")]
    assert f"already taken by {winner}" in refusal
    assert items_of(factory, roles["writes"])[0].operator == winner


def test_two_operators_taking_one_item_at_once_on_postgresql(postgres_url):
    engine = make_engine(postgres_url)
    factory = session_factory(engine)
    try:
        with transaction(factory) as session:
            port = Port(locode="CNHAK", name="Haikou", country="CN", lat=20.0, lon=110.3, timezone="Asia/Shanghai")
            session.add(port)
            session.flush()
            route = Route(code="R", name="R", kind="passenger", origin_port_id=port.id, destination_port_id=port.id)
            session.add(route)
            session.flush()
            sailing = Sailing(code="S", route_id=route.id, origin_port_id=port.id, destination_port_id=port.id,
                              scheduled_departure=NOW, scheduled_arrival=NOW + timedelta(hours=1))
            customer = Customer(ref="C1", name="Li Wei", phone=None, email=None)
            session.add_all([sailing, customer])
            session.flush()
            booking = Booking(ref="B1", kind="passenger", customer_id=customer.id, sailing_id=sailing.id,
                              space_class="economy", currency="CNY")
            session.add(booking)
            session.flush()
            item = FollowUp(source_key="help:1", open_key=f"{booking.id}:help", booking_id=booking.id,
                            reason="help", detail="asked for help (sms)", status="open")
            session.add(item)
        results = race_to_take(factory, item.id)
        assert sorted(r in ("alice", "bob") for r in results) == [False, True]
        with transaction(factory) as session, pytest.raises(FollowUpError, match="only .* can close it"):
            close(session, item.id, "other", "note", "carol")
    finally:
        engine.dispose()
