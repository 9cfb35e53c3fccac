"""What is not an answer becomes a ticket: an SMS from a booked customer we never asked anything ("what time is
check-in?") or from a stranger, an email that matches no booking. Each is kept once, sorted by keyword rules in
both languages, attached to the customer and booking where known, and answered through the outbox."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from notifier.aftercare.inbound_email import attach_reply
from notifier.aftercare.responses import handle_sms_reply
from notifier.aftercare.tickets import categorise, keyword_rules, reply, resolve, sms_ticket
from notifier.errors import UsageError
from notifier.planning.audience import normalise_phone
from notifier.store.db import transaction
from notifier.store.models import AuditEntry, Booking, Customer, Notification, Ticket
from notifier.store.settings import ConfigError
from tests.aftercare.test_responses import NOW, factory, planned_template, sms_notice  # noqa: F401 - fixtures


def never_asked(factory) -> tuple[Customer, Booking]:
    """A booked customer with a phone who was sent no SMS notice (their sailing is not disrupted)."""
    with factory() as session:
        texted = select(Notification.recipient).where(Notification.channel == "sms")
        customer = session.scalars(select(Customer).where(Customer.phone.is_not(None), Customer.phone.not_in(texted))
                                   .order_by(Customer.id)).first()
        booking = session.scalars(select(Booking).where(Booking.customer_id == customer.id)
                                  .order_by(Booking.id.desc())).first()
        return customer, booking


def texted(factory, settings, phone: str, body: str, sid: str = "SM1") -> str | None:
    with transaction(factory) as session:
        return sms_ticket(session, settings, phone, body, NOW, sid)


def tickets(factory) -> list[Ticket]:
    with factory() as session:
        return list(session.scalars(select(Ticket).order_by(Ticket.id)))


@pytest.mark.parametrize("text, category", [
    ("What time is check-in?", "inquiry"), ("请问几点登船？", "inquiry"), ("I want a refund", "refund"),
    ("我要退款", "refund"), ("This is unacceptable, I want to complain and get a refund", "complaint"),
    ("我要投诉你们的服务", "complaint"), ("thanks", "other")])
def test_keyword_rules_sort_both_languages(tmp_settings, text, category):
    assert categorise(text, keyword_rules(tmp_settings)) == category


def test_the_keyword_rules_can_be_extended_and_a_bad_rule_is_a_configuration_error(tmp_settings):
    rules = keyword_rules(replace(tmp_settings, desk_ticket_keywords=("complaint=seasick",)))
    assert categorise("we were all seasick", rules) == "complaint"
    with pytest.raises(ConfigError):
        keyword_rules(replace(tmp_settings, desk_ticket_keywords=("praise=great",)))


def test_a_booked_customer_asking_about_check_in_gets_a_ticket_and_a_kind_answer(factory, tmp_settings):
    customer, booking = never_asked(factory)
    answer = texted(factory, tmp_settings, customer.phone, "What time is check-in?")
    assert "an agent will reply" in answer and "could not find" not in answer
    [ticket] = tickets(factory)
    assert (ticket.category, ticket.customer_id, ticket.booking_id) == ("inquiry", customer.id, booking.id)
    assert ticket.due_at == NOW + timedelta(hours=tmp_settings.desk_ticket_sla_hours)
    with factory() as session:
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "ticket.opened"))
    assert customer.phone not in str(entry.details) and "check-in" not in str(entry.details)


def test_a_chinese_message_is_answered_in_chinese(factory, tmp_settings):
    customer, _ = never_asked(factory)
    assert "客服将尽快回复" in texted(factory, tmp_settings, customer.phone, "我要投诉，船晚点了")
    assert tickets(factory)[0].category == "complaint"


def test_a_stranger_is_kept_too_and_a_redelivered_sms_opens_one_ticket(factory, tmp_settings):
    for _ in range(2):
        assert "an agent will reply" in texted(factory, tmp_settings, "+8613900001111", "hello?", sid="SMsame")
    [ticket] = tickets(factory)
    assert (ticket.customer_id, ticket.sender) == (None, "+8613900001111")


def test_an_option_key_from_a_stranger_is_no_ticket_and_is_answered_as_before(factory, tmp_settings):
    assert texted(factory, tmp_settings, "+8613900001111", "1") is None  # responses' "no booking" answer follows
    assert tickets(factory) == []


def test_a_reply_to_a_question_we_asked_is_not_a_ticket(factory, tmp_settings):
    notice = sms_notice(factory, "en")
    assert texted(factory, tmp_settings, notice.recipient, "what time is check-in?") is None
    with transaction(factory) as session:
        assert "an agent will reply" in handle_sms_reply(session, tmp_settings, notice.recipient,
                                                         "what time is check-in?", NOW)
    assert tickets(factory) == []


def test_an_email_that_matches_no_booking_becomes_a_ticket(factory, tmp_settings):
    raw = (b"From: Stranger <someone@example.org>\r\nTo: desk@ferry.example\r\nSubject: lost luggage\r\n"
           b"Message-ID: <abc@example.org>\r\n\r\nWhere can I find my luggage?\r\n")
    with transaction(factory) as session:
        assert attach_reply(session, tmp_settings, raw, NOW).outcome == "unmatched"
    with transaction(factory) as session:
        attach_reply(session, tmp_settings, raw, NOW)  # re-polled
    [ticket] = tickets(factory)
    assert (ticket.channel, ticket.sender, ticket.category) == ("email", "someone@example.org", "inquiry")


def test_an_answer_goes_through_the_outbox_on_the_tickets_channel_and_starts_the_clock(factory, tmp_settings):
    customer, _ = never_asked(factory)
    texted(factory, tmp_settings, customer.phone, "What time is check-in?")
    ticket_id = tickets(factory)[0].id
    with transaction(factory) as session:
        first = reply(session, tmp_settings, ticket_id, "li.na", "Check-in opens 90 minutes before.", NOW)
        second = reply(session, tmp_settings, ticket_id, "li.na", "And closes 30 minutes before.", NOW)
    with factory() as session:
        notices = [session.get(Notification, first), session.get(Notification, second)]
        ticket = session.get(Ticket, ticket_id)
    assert [(n.channel, n.recipient, n.purpose, n.status) for n in notices] == \
        [("sms", normalise_phone(customer.phone), "desk_reply", "queued")] * 2
    assert (ticket.status, ticket.assigned_to, ticket.first_response_at) == ("answered", "li.na", NOW)
    with pytest.raises(UsageError):
        with transaction(factory) as session:
            reply(session, tmp_settings, ticket_id, "li.na", "   ", NOW)


def test_resolving_needs_a_note_and_happens_once(factory, tmp_settings):
    texted(factory, tmp_settings, "+8613900001111", "hello?")
    ticket_id = tickets(factory)[0].id
    with pytest.raises(UsageError):
        with transaction(factory) as session:
            resolve(session, ticket_id, "li.na", "", NOW)
    with transaction(factory) as session:
        resolve(session, ticket_id, "li.na", "called back", NOW)
    with pytest.raises(UsageError), transaction(factory) as session:
        resolve(session, ticket_id, "li.na", "again", NOW)
    with factory() as session:
        assert session.scalar(select(func.count(Ticket.id)).where(Ticket.status == "resolved")) == 1


def test_notifier_report_gains_the_desks_figures_once_it_has_work(factory, tmp_settings):
    from notifier.ops.console import report_lines
    from notifier.aftercare.reports import build_report

    assert not any("Service desk" in line for line in report_lines(build_report(factory, now=NOW)))
    customer, booking = never_asked(factory)
    texted(factory, tmp_settings, customer.phone, "我要投诉", sid="SMa")
    texted(factory, tmp_settings, "+8613900001111", "What time is check-in?", sid="SMb")
    with transaction(factory) as session:
        reply(session, tmp_settings, tickets(factory)[0].id, "li.na", "sorry", NOW + timedelta(hours=2))
    report = build_report(factory, now=NOW)
    lines = "\n".join(report_lines(report))
    assert "Service desk: 2 ticket(s), 1 answered (1 within the SLA), 0 resolved" in lines
    assert "by category: complaint 1, inquiry 1" in lines
    assert "median hours to first answer / to resolution: 2.0 / -" in lines
    assert report.to_json()["desk"]["by_category"] == {"complaint": 1, "inquiry": 1}
