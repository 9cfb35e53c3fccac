"""Provider outages on a simulated clock (time-machine): a relay or Twilio down for minutes costs no notice, a
dead endpoint is not hammered (the circuit breaker opens, probes, and closes on its own), and a notice that
cannot go before its deadline goes by the customer's other channel instead."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import select

from notifier.delivery.breaker import circuit_lines
from notifier.delivery.dispatch import Dispatcher
from notifier.delivery.providers import channels_for
from notifier.store.db import transaction
from notifier.store.models import Notification, ProviderCircuit, utcnow
from tests.standins.fixtures import add_customer, provider_settings, queue_notice, relay, twilio_standin  # noqa: F401
from tests.standins.twilio_standin import Fault

STEP_SECONDS = 15


@pytest.fixture
def settings(tmp_settings, twilio_standin, relay):
    return provider_settings(tmp_settings, twilio_standin, relay, retry_base_seconds=2.0, retry_cap_seconds=60.0)


class Outage:
    """A dispatcher on a frozen clock that moves STEP_SECONDS between runs (no sleeping through back-offs)."""

    def __init__(self, factory, settings, traveller) -> None:
        self.factory, self.traveller = factory, traveller
        self.channels = channels_for(settings)
        self.dispatcher = Dispatcher(factory, settings, self.channels)
        self.states: dict[str, set[str]] = {"sms": set(), "email": set()}

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds // STEP_SECONDS)):
            self.dispatcher.run(drain=True)
            for kind, breaker in self.dispatcher.breakers.items():
                self.states[kind].add(breaker.state)
            if not self.open_notices():
                return
            self.traveller.shift(STEP_SECONDS)

    def open_notices(self) -> list[Notification]:
        with self.factory() as session:
            return list(session.scalars(select(Notification).where(Notification.status.in_(("queued", "sending")))))

    def close(self) -> None:
        self.dispatcher.close()
        for channel in self.channels.values():
            channel.close()


def statuses(factory) -> list[tuple[str, str]]:
    with factory() as session:
        return [(n.channel, n.status) for n in session.scalars(select(Notification).order_by(Notification.id))]


def test_a_relay_down_for_five_minutes_then_back_delivers_every_email_once(factory, settings, relay):
    addresses = [f"guest{i}@example.com" for i in range(6)]
    with transaction(factory) as session:
        for address in addresses:
            queue_notice(session, add_customer(session, phone=None, email=address, channels=("email",)), "email",
                         "Your sailing is cancelled.\n")
    relay.stop()
    with time_machine.travel(utcnow(), tick=False) as traveller:
        outage = Outage(factory, settings, traveller)
        try:
            outage.run(300)  # far longer than 8 attempts 2 s apart would last
            assert statuses(factory) == [("email", "queued")] * 6  # nothing given up
            assert "open" in outage.states["email"]
            relay.start()
            outage.run(600)
        finally:
            outage.close()
    assert statuses(factory) == [("email", "sent")] * 6
    assert [len(relay.to(address)) for address in addresses] == [1] * 6


def test_twilio_answering_500_for_ten_minutes_fails_nothing_and_the_breaker_opens_then_closes(
        factory, settings, twilio_standin):
    with transaction(factory) as session:
        for i in range(3):
            queue_notice(session, add_customer(session, phone=f"+861380013800{i}"), "sms", "Sailing cancelled.")
    twilio_standin.add_fault(Fault(500, 20500, "Internal Server Error", times=None))
    with time_machine.travel(utcnow(), tick=False) as traveller:
        outage = Outage(factory, settings, traveller)
        try:
            outage.run(600)
            assert {status for _, status in statuses(factory)} <= {"queued", "sending"}
            assert "open" in outage.states["sms"]
            assert outage.dispatcher.breakers["sms"].openings > 3  # it probed, found Twilio still down, waited longer
            with factory() as session:
                assert any("sms via twilio: circuit" in line for line in circuit_lines(session))
            twilio_standin.faults.clear()
            outage.run(600)
        finally:
            outage.close()
    assert statuses(factory) == [("sms", "sent")] * 3
    assert [len(twilio_standin.messages_to(f"+861380013800{i}")) for i in range(3)] == [1, 1, 1]
    with factory() as session:
        assert session.get(ProviderCircuit, "sms").state == "closed" and circuit_lines(session) == []


def test_an_sms_not_through_before_departure_goes_by_email_and_only_then(factory, settings, twilio_standin,
                                                                          relay):
    departure = utcnow() + timedelta(minutes=10)
    with transaction(factory) as session:
        queue_notice(session, add_customer(session), "sms", "Sailing delayed.", priority=int(departure.timestamp()))
    twilio_standin.add_fault(Fault(429, 20429, "Too Many Requests", times=None))
    with time_machine.travel(utcnow(), tick=False) as traveller:
        outage = Outage(factory, dataclasses.replace(settings, max_age_minutes=360), traveller)
        try:
            outage.run(5 * 60)
            assert statuses(factory) == [("sms", "queued")]  # still worth trying: the sailing has not left
            outage.run(10 * 60)
        finally:
            outage.close()
    with factory() as session:
        sms, email = session.scalars(select(Notification).order_by(Notification.id))
    assert (sms.status, email.status, email.purpose) == ("failed", "sent", "fallback")
    assert sms.error_message.startswith("not delivered by")
    assert len(relay.to("li.wei@example.com")) == 1 and twilio_standin.messages == []


def test_an_open_circuit_shows_in_watch_status_and_the_report(factory, tmp_settings):
    from click.testing import CliRunner

    from cli import main
    from notifier.store.models import ProviderCircuit, utcnow

    with factory() as session:
        session.add(ProviderCircuit(channel="sms", provider="twilio", state="open", changed_at=utcnow(),
                                    probe_at=utcnow(), reason="HTTP 500 five times in a row"))
        session.commit()
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url}
    status = CliRunner().invoke(main, ["watch", "--status"], env=env)
    report = CliRunner().invoke(main, ["report"], env=env)
    assert status.exit_code == 0 and "sms via twilio: circuit open" in status.output
    assert report.exit_code == 0 and "sms via twilio: circuit open" in report.output
