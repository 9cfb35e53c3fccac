"""An agent at work: finds a customer by a phone typed with spaces, reads one timeline, records a rebooking
agreed on the phone (through the choice page's own path), logs a call, answers and resolves a ticket, and takes
and closes a follow-up that the CLI then sees done; every page reads in Chinese as well as English."""

from __future__ import annotations

import re

from sqlalchemy import select

from notifier.aftercare.followups import worklist
from notifier.aftercare.responses import export_rows, handle_sms_reply
from notifier.aftercare.tickets import sms_ticket
from notifier.store.db import transaction
from notifier.store.models import AuditEntry, Booking, Customer, FollowUp, Notification, SailingCapacity, Ticket
from tests.aftercare.test_responses import NOW, offers_of, sms_notice
from tests.web.desk.conftest import post, sign_in


def spaced(phone: str) -> str:
    """A phone as a caller reads it out: country code, then the digits in groups of four."""
    digits = re.sub(r"\D", "", phone)
    country = "86" if digits.startswith("86") else digits[:3]
    rest = digits[len(country):]
    return f"+{country} " + " ".join(rest[i:i + 4] for i in range(0, len(rest), 4))


def test_a_phone_typed_with_spaces_finds_the_customer(desk_app, factory):
    notice = sms_notice(factory, "en")
    client = desk_app.test_client()
    sign_in(client)
    page = client.get("/desk/", query_string={"q": spaced(notice.recipient)}).get_data(as_text=True)
    with factory() as session:
        customer = session.get(Customer, notice.customer_id)
    assert f'href="/desk/customers/{customer.id}"' in page
    assert customer.phone not in page  # masked in the list


def test_a_rebooking_agreed_on_the_phone_moves_the_booking_uses_the_hold_and_is_exported(desk_app, factory):
    notice = sms_notice(factory, "en")
    held = offers_of(factory, notice.booking_id)["1"]
    with factory() as session:
        space = session.get(Booking, notice.booking_id).space_class
        before = session.scalar(select(SailingCapacity).where(SailingCapacity.sailing_id == held.sailing_id,
                                                              SailingCapacity.space_class == space))
    client = desk_app.test_client()
    sign_in(client)
    page = f"/desk/customers/{notice.customer_id}"
    moved = post(client, f"/desk/bookings/{notice.booking_id}/choice",
                 {"disruption_id": notice.disruption_id, "option": "1"}, page=page)
    assert moved.status_code == 303
    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        after = session.scalar(select(SailingCapacity).where(SailingCapacity.sailing_id == held.sailing_id,
                                                             SailingCapacity.space_class == space))
        confirmations = session.scalars(select(Notification).where(Notification.booking_id == booking.id,
                                                                   Notification.purpose == "confirmation")).all()
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "desk.choice_recorded"))
        export = [row for row in export_rows(session) if row["booking_ref"] == booking.ref]
    assert (booking.sailing_id, booking.status) == (held.sailing_id, "rebooked")
    assert offers_of(factory, booking.id)["1"].status == "accepted"
    assert (after.held, after.booked) == (before.held - booking.places, before.booked + booking.places)
    assert "sms" in {n.channel for n in confirmations} and {n.status for n in confirmations} == {"queued"}
    assert entry.actor == "li.na"
    assert export and export[0]["channel"] == "agent" and export[0]["option"] == "1"
    timeline = client.get(page).get_data(as_text=True)
    assert "rebook · agent" in timeline and "confirmation · sms · queued" in timeline
    again = post(client, f"/desk/bookings/{notice.booking_id}/choice",
                 {"disruption_id": notice.disruption_id, "option": "R"}, page=page)
    assert again.status_code == 409


def test_a_logged_call_is_on_the_timeline_under_the_agents_name(desk_app, factory):
    notice = sms_notice(factory, "en")
    client = desk_app.test_client()
    sign_in(client, "wang.wei")
    page = f"/desk/customers/{notice.customer_id}"
    assert post(client, f"{page}/calls", {"booking_id": notice.booking_id, "outcome": "voicemail",
                                          "note": "left a message about the typhoon"}, page=page).status_code == 303
    assert "wang.wei: voicemail. left a message about the typhoon" in client.get(page).get_data(as_text=True)


def test_a_complaint_ticket_is_answered_from_the_desk_and_resolved(desk_app, factory, tmp_settings):
    with transaction(factory) as session:
        sms_ticket(session, tmp_settings, "+8613900001111", "我要投诉：客服态度太差，请打 +8613812345678", NOW,
                   "SMcomplaint")
        ticket_id = session.scalar(select(Ticket.id))
    client = desk_app.test_client()
    sign_in(client)
    inbox = client.get("/desk/tickets?lang=zh-CN").get_data(as_text=True)
    assert f"/desk/tickets/{ticket_id}" in inbox and "投诉" in inbox
    page = f"/desk/tickets/{ticket_id}"
    shown = client.get(page).get_data(as_text=True)
    assert "客服态度太差" in shown and "+8613812345678" not in shown  # a number in the words is hidden
    assert post(client, f"{page}/reply", {"text": "非常抱歉，我们已记录您的意见。"}, page=page).status_code == 303
    assert post(client, f"{page}/resolve", {"note": "apologised; feedback passed on"}, page=page).status_code == 303
    with factory() as session:
        ticket = session.get(Ticket, ticket_id)
        [answer] = session.scalars(select(Notification).where(Notification.purpose == "desk_reply"))
    assert (ticket.status, ticket.assigned_to) == ("resolved", "li.na")
    assert (answer.recipient, answer.channel, answer.status) == ("+8613900001111", "sms", "queued")


def test_a_follow_up_is_taken_and_closed_at_the_desk_and_the_cli_sees_it_done(desk_app, factory, tmp_settings):
    notice = sms_notice(factory, "en")
    with transaction(factory) as session:  # a reply that is no option: the worklist's "free-text"
        handle_sms_reply(session, tmp_settings, notice.recipient, "my mother needs a wheelchair, please call", NOW)
    client = desk_app.test_client()
    sign_in(client)
    listing = client.get("/desk/followups").get_data(as_text=True)
    with factory() as session:
        item = session.scalars(select(FollowUp).where(FollowUp.status == "open").order_by(FollowUp.id)).first()
    assert f"#{item.id}" in listing and "Next step" in listing
    assert post(client, f"/desk/followups/{item.id}/take", page="/desk/followups").status_code == 303
    assert post(client, f"/desk/followups/{item.id}/close", {"outcome": "rebooked", "note": "moved by phone"},
                page="/desk/followups").status_code == 303
    with factory() as session:
        done = [w for w in worklist(session, tmp_settings, include_done=True) if w.id == item.id]
    assert [(w.status, w.operator, w.outcome) for w in done] == [("done", "li.na", "rebooked")]


def test_the_pages_read_in_chinese_and_english(desk_app, factory):
    client = desk_app.test_client()
    sign_in(client)
    chinese = client.get("/desk/?lang=zh-CN").get_data(as_text=True)
    assert '<html lang="zh-CN">' in chinese and "查找客户" in chinese
    assert "查找客户" in client.get("/desk/stats").get_data(as_text=True)  # the language is remembered
    english = client.get("/desk/stats?lang=en").get_data(as_text=True)
    assert '<html lang="en">' in english and "Statistics" in english


def test_statistics_count_tickets_by_category_and_export_them_as_csv(desk_app, factory, tmp_settings):
    with transaction(factory) as session:
        sms_ticket(session, tmp_settings, "+8613900001111", "I want to complain", NOW, "SMa")
        sms_ticket(session, tmp_settings, "+8613900002222", "What time is check-in?", NOW, "SMb")
    client = desk_app.test_client()
    sign_in(client)
    page = client.get("/desk/stats?lang=en").get_data(as_text=True)
    assert "<svg" in page and "Complaint" in page and "Inquiry" in page
    notice = sms_notice(factory, "en")
    post(client, f"/desk/bookings/{notice.booking_id}/choice", {"disruption_id": notice.disruption_id, "option": "R"})
    csv_text = client.get("/desk/stats.csv").get_data(as_text=True)
    assert "choices_by_channel,agent,1" in csv_text
    assert "tickets_by_category,complaint,1" in csv_text and "tickets_by_category,inquiry,1" in csv_text


def test_keep_my_ticket_agreed_on_the_phone_is_recorded_as_the_agents_decision(desk_app, factory):
    notice = sms_notice(factory, "en")
    client = desk_app.test_client()
    sign_in(client)
    page = f"/desk/customers/{notice.customer_id}"
    with factory() as session:
        before = session.get(Booking, notice.booking_id).sailing_id
    kept = post(client, f"/desk/bookings/{notice.booking_id}/choice",
                {"disruption_id": notice.disruption_id, "option": "keep"}, page=page)
    again = post(client, f"/desk/bookings/{notice.booking_id}/choice",
                 {"disruption_id": notice.disruption_id, "option": "keep"}, page=page)
    assert kept.status_code == 303 and again.status_code == 409
    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        export = [row for row in export_rows(session) if row["booking_ref"] == booking.ref]
        confirmations = session.scalars(select(Notification).where(Notification.booking_id == booking.id,
                                                                   Notification.purpose == "confirmation")).all()
    assert booking.sailing_id == before and offers_of(factory, booking.id)["1"].status != "accepted"
    assert export and export[0]["channel"] == "agent" and confirmations


def test_statistics_show_how_fast_a_disruption_was_told_and_who_was_reachable(desk_app, factory):
    notice = sms_notice(factory, "en")  # a planned typhoon notice: one disruption with affected bookings
    client = desk_app.test_client()
    sign_in(client)
    page = client.get("/desk/stats?lang=en").get_data(as_text=True)
    assert "Told within" in page and "5 min" in page and "30 min" in page
    assert "Disruptions: bookings" in page and "affected" in page and "reachable" in page
    chinese = client.get("/desk/stats?lang=zh-CN").get_data(as_text=True)
    assert "通知送达于" in chinese and "受影响" in chinese
    csv_text = client.get("/desk/stats.csv").get_data(as_text=True)
    assert "disruptions_told_within,5min," in csv_text and "disruptions_bookings,affected," in csv_text
    assert notice.disruption_id
