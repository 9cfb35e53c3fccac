"""The dispatcher with real channels: the real `twilio` client over HTTP to the stand-in, real SMTP to aiosmtpd,
a real SQLite (and PostgreSQL where configured) outbox. What a customer or duty officer would notice: who got
what, how many times, in which order, and what the outbox says about each notice."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from notifier.delivery.providers import channels_for
from notifier.store.settings import ConfigError
from notifier.store.db import make_engine, session_factory, transaction
from notifier.delivery.dispatch import Dispatcher, dispatch_all
from notifier.delivery.leases import worker_id
from notifier.store.models import (AuditEntry, Broadcast, DeliveryAttempt, Disruption, Notification, OptOut, Port,
                                   Route, Sailing, utcnow)
from tests.standins.fixtures import (add_customer, provider_settings, queue_notice, relay,  # noqa: F401
                                     seed_sms_broadcast, twilio_standin)
from tests.standins.twilio_standin import Fault, TwilioStandIn

PHONE, EMAIL = "+8613800138000", "li.wei@example.com"
_sailings = itertools.count(1)


@pytest.fixture
def settings(tmp_settings, twilio_standin, relay):
    return provider_settings(tmp_settings, twilio_standin, relay)


def deliver(factory, settings, seconds: float = 20.0):
    """Dispatch until nothing is queued or sending (retries and reconciliations included)."""
    channels = channels_for(settings)
    dispatcher = Dispatcher(factory, settings, channels)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            dispatcher.run(drain=True)
            with factory() as session:
                if session.scalar(select(Notification.id).where(
                        Notification.status.in_(("queued", "sending"))).limit(1)) is None:
                    break
            time.sleep(0.02)
    finally:
        dispatcher.close()
        for channel in channels.values():
            channel.close()
    return dispatcher.stats


def rows(factory) -> list[Notification]:
    with factory() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def attempts(factory, notification_id: int) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(DeliveryAttempt.outcome).where(
            DeliveryAttempt.notification_id == notification_id).order_by(DeliveryAttempt.id)))


def sailing_disruption(session, kind: str = "cancelled", departs_in: timedelta = timedelta(hours=3),
                       status: str = "active", revision: int = 1) -> Disruption:
    number = next(_sailings)
    ports = [Port(locode=f"{side}{number:04d}", name=side, country="CN", lat=20.0, lon=110.0,
                  timezone="Asia/Shanghai") for side in ("A", "B")]
    session.add_all(ports)
    session.flush()
    route = Route(code=f"QZ{number}", name="Haikou - Hai'an", kind="passenger", origin_port_id=ports[0].id,
                  destination_port_id=ports[1].id)
    session.add(route)
    session.flush()
    departure = utcnow() + departs_in
    sailing = Sailing(code=f"QZ-{number}", route_id=route.id, origin_port_id=ports[0].id,
                      destination_port_id=ports[1].id, scheduled_departure=departure,
                      scheduled_arrival=departure + timedelta(minutes=90))
    session.add(sailing)
    session.flush()
    disruption = Disruption(sailing_id=sailing.id, kind=kind, status=status, revision=revision, cause="weather",
                            cleared_at=utcnow() if status == "cleared" else None)
    session.add(disruption)
    session.flush()
    return disruption


# --- sending -----------------------------------------------------------------------------------------------------

def test_every_notice_goes_out_once_most_urgent_departure_first(factory, settings, twilio_standin):
    with transaction(factory) as session:
        for departs in (300, 100, 200):
            customer = add_customer(session, phone=f"+86138001{departs:05d}")
            queue_notice(session, customer, "sms", f"Sailing at +{departs} min cancelled.", priority=departs)
    stats = deliver(factory, dataclasses.replace(settings, dispatch_threads=1))

    assert stats.sent == 3
    assert [m["body"] for m in twilio_standin.messages] == [
        "Sailing at +100 min cancelled.", "Sailing at +200 min cancelled.", "Sailing at +300 min cancelled."]
    assert {(n.status, n.provider_id) for n in rows(factory)} == {("sent", m["sid"]) for m in twilio_standin.messages}


def test_sms_and_email_both_arrive(factory, settings, twilio_standin, relay):
    with transaction(factory) as session:
        customer = add_customer(session)
        queue_notice(session, customer, "sms", "Sailing cancelled.")
        queue_notice(session, customer, "email", "Your sailing is cancelled.\n")
    deliver(factory, settings)

    assert len(twilio_standin.messages_to(PHONE)) == 1
    [email] = relay.to(EMAIL)
    assert email["Message-ID"] == rows(factory)[1].message_id  # stored, so a resend would carry the same one
    assert email["List-Unsubscribe"].startswith("<https://ferry.example/unsubscribe/")


def test_too_many_requests_waits_for_retry_after_then_goes_once(factory, settings, twilio_standin):
    twilio_standin.add_fault(Fault(status=429, code=20429, message="Too Many Requests", retry_after="1"))
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "sms", "Sailing cancelled.")

    first = dispatch_all(factory, settings, channels_for(settings))
    [waiting] = rows(factory)
    assert (first.sent, waiting.status, waiting.error_code) == (0, "queued", "20429")
    assert waiting.next_attempt_at - waiting.created_at >= timedelta(seconds=1)

    deliver(factory, settings)
    assert len(twilio_standin.messages_to(PHONE)) == 1
    assert attempts(factory, waiting.id) == ["retry", "sent"]


def test_a_server_error_is_checked_with_twilio_then_sent_exactly_once(factory, settings, twilio_standin):
    twilio_standin.add_fault(Fault(status=500, code=20500, message="Internal Server Error"))
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "sms", "Sailing cancelled.")
    deliver(factory, settings)

    [notice] = rows(factory)
    assert len(twilio_standin.messages_to(PHONE)) == 1
    assert notice.status == "sent"
    assert attempts(factory, notice.id) == ["uncertain", "reconciled", "sent"]


def test_an_answer_lost_in_a_timeout_is_found_at_twilio_and_never_resent(factory, settings, twilio_standin):
    twilio_standin.add_fault(Fault(status=201, delay=1.5, accept=True))  # Twilio took it; our 1 s timeout hit
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "sms", "Sailing cancelled.")
    deliver(factory, settings)

    [notice] = rows(factory)
    [message] = twilio_standin.messages_to(PHONE)
    assert (notice.status, notice.provider_id) == ("sent", message["sid"])
    assert attempts(factory, notice.id) == ["uncertain", "reconciled"]


@pytest.mark.parametrize("code", [21211, 21610, 21614])
def test_a_number_twilio_refuses_fails_at_once_and_the_notice_goes_by_email(factory, settings, twilio_standin,
                                                                             relay, code):
    twilio_standin.add_fault(Fault(status=400, code=code, to=PHONE, times=None))
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "sms", "Typhoon: your sailing is cancelled. Reply R to refund.")
    stats = deliver(factory, settings)

    sms, fallback = rows(factory)
    assert (sms.status, sms.error_code, sms.attempts) == ("failed", str(code), 1)
    assert (fallback.channel, fallback.purpose, fallback.status) == ("email", "fallback", "sent")
    assert fallback.dedup_key == f"{sms.dedup_key}:fallback"
    [email] = relay.to(EMAIL)
    assert "Typhoon: your sailing is cancelled." in email.get_body(("plain",)).get_content()
    assert stats.fallbacks == 1
    with factory() as session:
        opted_out = session.scalar(select(OptOut).where(OptOut.address == PHONE))
        audit = session.scalar(select(AuditEntry).where(AuditEntry.action == "notification.fallback"))
    assert (opted_out is not None) == (code == 21610)
    assert audit.subject_id == str(sms.id) and audit.details["to_channel"] == "email"
    assert PHONE not in str(audit.details) and EMAIL not in str(audit.details)


def test_an_sms_too_long_for_twilio_fails_without_a_request_and_goes_by_email(factory, settings, twilio_standin,
                                                                              relay):
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "sms", "Typhoon: your sailing is cancelled. " * 50)
    stats = deliver(factory, settings)

    sms, fallback = rows(factory)
    assert (sms.status, sms.error_code, sms.attempts) == ("failed", "too-long", 1)
    assert "at most 1600" in sms.error_message
    assert twilio_standin.messages == []
    assert (fallback.channel, fallback.status) == ("email", "sent") and len(relay.to(EMAIL)) == 1
    assert stats.fallbacks == 1


def test_a_planned_notice_falls_back_to_its_own_email_template(factory, demo_db, settings, twilio_standin, relay):
    from notifier.ops.demo import bundled_feed
    from notifier.feeds import cap
    from notifier.store.models import Booking, Customer
    from notifier.store.paths import rules_dir
    from notifier.ops.pipeline import ingest, plan_pending, process_new_items
    from notifier.rules.load import load_rules

    ingest(factory, cap.parse(bundled_feed(demo_db.epoch)))
    process_new_items(factory, load_rules([rules_dir()]), now=demo_db.epoch)
    with transaction(factory) as session:  # customers who chose SMS only, though we hold their email too
        session.execute(Customer.__table__.update().where(Customer.email.is_not(None)).values(channels=["sms"]))
    plan_pending(factory, settings, now=demo_db.epoch)
    with factory() as session:
        sms = session.scalars(select(Notification).join(Customer, Customer.id == Notification.customer_id)
                              .where(Notification.channel == "sms", Customer.language == "en",
                                     Customer.email.is_not(None)).limit(1)).one()
        booking_ref = session.get(Booking, sms.booking_id).ref
        session.execute(Notification.__table__.update().where(Notification.id != sms.id).values(status="cancelled"))
    twilio_standin.add_fault(Fault(status=400, code=21614, to=sms.recipient, times=None))

    deliver(factory, settings)

    [email] = relay.received
    assert email[2]["Subject"].startswith("Cancelled: ") and booking_ref in email[2]["Subject"]
    assert f"booking {booking_ref}" in email[2].get_body(("plain",)).get_content()


def test_an_email_refused_for_good_goes_by_sms_once(factory, settings, twilio_standin, relay):
    relay.answers = {EMAIL: "550 5.1.1 No such user"}
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "email", "Your sailing is cancelled.\n")
    deliver(factory, settings)
    deliver(factory, settings)

    email, fallback = rows(factory)
    assert (email.status, email.error_code) == ("failed", "550")
    assert (fallback.channel, fallback.status) == ("sms", "sent")
    assert len(twilio_standin.messages_to(PHONE)) == 1


def test_no_fallback_when_the_customer_is_already_told_on_the_other_channel(factory, settings, twilio_standin,
                                                                            relay):
    twilio_standin.add_fault(Fault(status=400, code=21211, to=PHONE, times=None))
    with transaction(factory) as session:
        customer = add_customer(session)
        queue_notice(session, customer, "sms", "Sailing cancelled.", broadcast_id=None)
        queue_notice(session, customer, "email", "Sailing cancelled.\n")
    deliver(factory, settings)

    assert [n.purpose for n in rows(factory)] == ["notice", "notice"]
    assert len(relay.to(EMAIL)) == 1


def test_a_temporary_email_refusal_is_retried_until_the_relay_takes_it(factory, settings, relay):
    relay.answers = {EMAIL: "451 4.3.0 Mailbox busy"}
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "email", "Your sailing is cancelled.\n")
    dispatch_all(factory, settings, channels_for(settings))
    [waiting] = rows(factory)
    assert (waiting.status, waiting.error_code) == ("queued", "451")

    relay.answers = {}
    deliver(factory, settings)
    assert rows(factory)[0].status == "sent"
    assert len(relay.to(EMAIL)) == 1


# --- what must not go out ------------------------------------------------------------------------------------------

def test_stale_notices_expire_instead_of_going_out_late(factory, settings, twilio_standin):
    with transaction(factory) as session:
        customer = add_customer(session)
        old = queue_notice(session, customer, "sms", "Too old", created_at=utcnow() - timedelta(hours=7))
        superseded = queue_notice(session, customer, "sms", "Superseded", revision=1,
                                  disruption_id=sailing_disruption(session, "advisory", status="superseded").id)
        revised = queue_notice(session, customer, "sms", "Old revision", revision=1,
                               disruption_id=sailing_disruption(session, "port_omitted", revision=2).id)
        departed = queue_notice(session, customer, "sms", "Delay notice after departure", revision=1,
                                disruption_id=sailing_disruption(session, "delayed", timedelta(minutes=-5)).id)
        cleared = queue_notice(session, customer, "sms", "Planned before the all-clear", revision=1,
                               created_at=utcnow() - timedelta(minutes=10),
                               disruption_id=sailing_disruption(session, "resumed", status="cleared").id)
        cancelled = queue_notice(session, customer, "sms", "Cancelled, departed, still useful", revision=1,
                                 disruption_id=sailing_disruption(session, "cancelled", timedelta(minutes=-20)).id)
    stats = deliver(factory, settings)

    by_id = {n.id: n for n in rows(factory)}
    for stale in (old, superseded, revised, departed, cleared):
        assert by_id[stale.id].status == "expired", by_id[stale.id].body_text
    assert "360 minutes" in by_id[old.id].error_message
    assert "revision 2" in by_id[revised.id].error_message
    assert by_id[cancelled.id].status == "sent"
    assert [m["body"] for m in twilio_standin.messages] == ["Cancelled, departed, still useful"]
    assert stats.expired == 5


def test_sms_validity_never_outlasts_the_notices_useful_life(factory, settings, twilio_standin):
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "sms", "Sailing cancelled.",
                     created_at=utcnow() - timedelta(minutes=350))
    deliver(factory, settings)
    [message] = twilio_standin.messages
    assert 0 < int(message["validity_period"]) <= 600  # 10 of the 360 minutes were left


@pytest.mark.parametrize("policy, safety_critical, sent", [("respect", True, False), ("send", True, True),
                                                           ("send", False, False)])
def test_opted_out_numbers_follow_the_safety_critical_policy(factory, settings, twilio_standin, policy,
                                                              safety_critical, sent):
    with transaction(factory) as session:
        customer = add_customer(session)
        queue_notice(session, customer, "sms", "Typhoon warning", safety_critical=safety_critical)
        session.add(OptOut(channel="sms", address=PHONE, source="sms_stop"))
    deliver(factory, dataclasses.replace(settings, safety_critical_opt_out=policy))

    notice = rows(factory)[0]
    assert notice.status == ("sent" if sent else "suppressed")
    assert len(twilio_standin.messages) == (1 if sent else 0)


def test_a_customer_who_said_stop_after_planning_gets_the_notice_by_email(factory, settings, twilio_standin, relay):
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "sms", "Typhoon: your sailing is cancelled.")
        queue_notice(session, add_customer(session, phone="+8613800138009", email=None), "sms", "Cancelled.")
        session.add_all([OptOut(channel="sms", address=PHONE, source="sms_stop"),
                         OptOut(channel="sms", address="+8613800138009", source="sms_stop")])
    stats = deliver(factory, settings)

    stopped, no_email, email = rows(factory)
    assert (stopped.status, no_email.status) == ("suppressed", "suppressed")  # the second: a follow-up item
    assert (email.channel, email.purpose, email.status) == ("email", "fallback", "sent")
    [received] = relay.to(EMAIL)
    assert "Typhoon: your sailing is cancelled." in received.get_body(("plain",)).get_content()
    assert twilio_standin.messages == [] and stats.fallbacks == 1


def test_a_customer_who_no_longer_accepts_sms_gets_none(factory, settings, twilio_standin):
    with transaction(factory) as session:
        customer = add_customer(session)
        queue_notice(session, customer, "sms", "Sailing cancelled.")
        customer.channels = ["email"]
    deliver(factory, settings)
    assert rows(factory)[0].status == "suppressed"
    assert twilio_standin.messages == []


@pytest.mark.parametrize("held", ["paused", "awaiting_approval", "cancelled"])
def test_notices_of_a_held_broadcast_wait(factory, settings, twilio_standin, held):
    with transaction(factory) as session:
        broadcast = Broadcast(origin="manual", status=held, kind="cancelled", template="cancelled",
                              created_by="duty officer")
        session.add(broadcast)
        session.flush()
        queue_notice(session, add_customer(session), "sms", "Sailing cancelled.", broadcast_id=broadcast.id)
    deliver(factory, settings, seconds=0.5)
    assert rows(factory)[0].status == "queued" and twilio_standin.messages == []

    with transaction(factory) as session:
        session.get(Broadcast, broadcast.id).status = "sending"
    deliver(factory, settings)
    assert len(twilio_standin.messages) == 1


# --- crashes -------------------------------------------------------------------------------------------------------

def abandon_mid_send(factory, notification_ids: list[int], seconds_ago: int = 60) -> None:
    """What a killed worker leaves behind: rows `sending` under a lease that has run out."""
    with transaction(factory) as session:
        for notification_id in notification_ids:
            notification = session.get(Notification, notification_id)
            notification.status, notification.attempts = "sending", 1
            notification.lease_owner = "dead-host:4242"
            notification.lease_expires_at = utcnow() - timedelta(seconds=seconds_ago)


def test_after_a_crash_a_message_twilio_has_is_recorded_and_a_missing_one_is_sent(factory, settings,
                                                                                 twilio_standin):
    with transaction(factory) as session:
        went = queue_notice(session, add_customer(session, phone="+8613800138001"), "sms", "Sailing A cancelled.")
        lost = queue_notice(session, add_customer(session, phone="+8613800138002"), "sms", "Sailing B cancelled.")
    channel = channels_for(settings)["sms"]
    from notifier.delivery.claims import to_message
    with factory() as session:
        sid = channel.send(to_message(session.get(Notification, went.id), settings)).provider_id  # then: kill -9
    abandon_mid_send(factory, [went.id, lost.id])

    stats = deliver(factory, settings)

    by_id = {n.id: n for n in rows(factory)}
    assert (by_id[went.id].status, by_id[went.id].provider_id) == ("sent", sid)
    assert by_id[lost.id].status == "sent"
    assert len(twilio_standin.messages_to("+8613800138001")) == len(twilio_standin.messages_to("+8613800138002")) == 1
    assert stats.reconciled == 1


def test_two_identical_notices_cut_by_a_crash_are_not_both_taken_as_sent(factory, settings, twilio_standin):
    with transaction(factory) as session:
        customer = add_customer(session)
        first = queue_notice(session, customer, "sms", "Sailing cancelled.")
        second = queue_notice(session, customer, "sms", "Sailing cancelled.")
    channel = channels_for(settings)["sms"]
    from notifier.delivery.claims import to_message
    with factory() as session:
        channel.send(to_message(session.get(Notification, first.id), settings))
    abandon_mid_send(factory, [first.id, second.id])

    deliver(factory, settings)

    notices = rows(factory)
    assert len(twilio_standin.messages_to(PHONE)) == 2
    assert {n.provider_id for n in notices} == {m["sid"] for m in twilio_standin.messages}


@pytest.mark.parametrize("policy, copies", [("resend", 1), ("assume_sent", 0)])
def test_an_email_cut_by_a_crash_follows_the_reconcile_policy(factory, settings, relay, policy, copies):
    with transaction(factory) as session:
        notice = queue_notice(session, add_customer(session), "email", "Your sailing is cancelled.\n")
        notice.message_id = "<notice-1.fixed@ferry.example>"
    abandon_mid_send(factory, [notice.id])
    deliver(factory, dataclasses.replace(settings, email_reconcile=policy))

    assert rows(factory)[0].status == "sent"
    assert [m["Message-ID"] for m in relay.to(EMAIL)] == ["<notice-1.fixed@ferry.example>"] * copies


def test_a_lease_of_a_dead_process_on_this_machine_is_reconciled_without_waiting_for_it(factory, settings,
                                                                                       twilio_standin):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    owner = worker_id().split(":")
    owner[1] = finished.stdout.strip()  # a dispatcher of this machine that has exited
    with transaction(factory) as session:
        notice = queue_notice(session, add_customer(session), "sms", "Sailing cancelled.")
    abandon_mid_send(factory, [notice.id], seconds_ago=-600)  # its lease has ten more minutes to run
    with transaction(factory) as session:
        session.get(Notification, notice.id).lease_owner = ":".join(owner)

    deliver(factory, settings)

    assert rows(factory)[0].status == "sent"
    assert len(twilio_standin.messages) == 1
    assert attempts(factory, notice.id) == ["reconciled", "sent"]


def test_a_live_lease_is_left_alone(factory, settings, twilio_standin):
    with transaction(factory) as session:
        notice = queue_notice(session, add_customer(session), "sms", "Sailing cancelled.")
    abandon_mid_send(factory, [notice.id], seconds_ago=-60)  # another worker holds it for one more minute
    stats = dispatch_all(factory, settings, channels_for(settings))
    assert rows(factory)[0].status == "sending" and twilio_standin.messages == []
    [why] = stats.waiting  # what `dispatch --once` says is left, and why
    assert why.startswith("1 sending under another dispatcher's live lease")


# --- pacing and scale-out ------------------------------------------------------------------------------------------

def test_a_sender_never_goes_faster_than_its_segments_per_second(factory, settings, twilio_standin):
    with transaction(factory) as session:
        numbers = seed_sms_broadcast(session, 45)
        session.execute(Notification.__table__.update().values(
            body_text="Typhoon Haikui: sailing QZ cancelled. " * 5, segments=2))  # 190 GSM-7 characters
    deliver(factory, dataclasses.replace(settings, sms_segments_per_second=30.0))

    arrivals = sorted((m["arrived"], m["num_segments"]) for m in twilio_standin.messages)
    assert len(arrivals) == len(numbers) and {segments for _, segments in arrivals} == {2}
    # The pacer's own slots are checked exactly in test_ratelimit.py; here, at the provider, two threads woken a
    # little late can land one message early, so a window may hold one message more than the slots allow.
    busiest = max(sum(s for t, s in arrivals if start <= t < start + 2.0) for start, _ in arrivals)
    assert busiest <= 2 * 30 + 2 + 2  # two seconds' worth, the message opening the window, one of jitter


def test_two_workers_on_postgresql_send_each_notice_once(postgres_url, tmp_settings):
    engine = make_engine(postgres_url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        numbers = seed_sms_broadcast(session, 200)
    with TwilioStandIn(validate="sample") as standin:  # full validation would starve this process's threads
        settings = provider_settings(dataclasses.replace(tmp_settings, database_url=postgres_url), standin,
                                     dispatch_threads=4)
        workers = [Dispatcher(factory, settings, channels_for(settings), owner=f"worker-{n}") for n in (1, 2)]
        threads = [threading.Thread(target=worker.run) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for worker in workers:
            worker.close()
    engine.dispose()

    assert standin.validation_errors == []
    assert sorted(m["to"] for m in standin.messages) == sorted(numbers)
    assert all(worker.stats.sent > 0 for worker in workers)
    assert sum(worker.stats.sent for worker in workers) == len(numbers)


def test_a_lease_too_short_for_the_provider_timeout_is_refused(factory, settings):
    with pytest.raises(ConfigError, match="lease_seconds"):
        Dispatcher(factory, dataclasses.replace(settings, lease_seconds=10, provider_timeout_seconds=10.0), {})
