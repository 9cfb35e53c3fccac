"""An agent in a real browser (Debian's chromium via Playwright, on a tablet-sized screen): signs in, finds a
customer by a phone number typed with spaces, reads the timeline, records a rebooking agreed on the phone (the
booking moves, the hold is used, the confirmation SMS is queued, the export carries it), answers a complaint
ticket and closes a follow-up, with the keyboard where a keyboard user would. Screenshots of the desk in both
languages go to test-artifacts/."""

from __future__ import annotations

import shutil
import socket
import threading
from dataclasses import replace

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from notifier.aftercare.responses import export_rows, handle_sms_reply
from notifier.aftercare.tickets import sms_ticket
from notifier.store.db import make_engine, session_factory, transaction
from notifier.store.models import Booking, FollowUp, Notification, SailingCapacity, Ticket
from notifier.web.app import create_app
from notifier.web.desk.auth import add_agent
from tests.aftercare.test_responses import NOW, offers_of, planned_template, sms_notice  # noqa: F401 - fixture
from tests.e2e.test_choice_browser import ARTIFACTS, browser  # noqa: F401 - fixture
from tests.web.desk.test_desk import spaced

PASSWORD = "correct horse battery"
TABLET = {"width": 1024, "height": 768}


@pytest.fixture
def desk_site(planned_template, tmp_path, tmp_settings):  # noqa: F811
    """The app on a free port over a copy of the planned typhoon, with one agent, a complaint and a follow-up."""
    shutil.copyfile(planned_template, tmp_path / "test.db")
    settings = replace(tmp_settings, desk_secure_cookies=False)  # plain http on 127.0.0.1
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    notice = sms_notice(factory, "en")
    with transaction(factory) as session:
        add_agent(session, "li.na", "agent", PASSWORD, "test")
        sms_ticket(session, settings, "+8613900001111", "I want to complain: nobody told me the ferry was cancelled",
                   NOW, "SMbrowser")
        other = sms_notice(factory, "zh-CN")
        handle_sms_reply(session, settings, other.recipient, "我妈妈需要轮椅，请给我打电话", NOW)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_server("127.0.0.1", port, create_app(settings, factory, clock=lambda: NOW), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", factory, notice
    server.shutdown()
    thread.join(timeout=10)
    engine.dispose()


def test_an_agent_works_a_phone_rebooking_a_complaint_and_a_follow_up(browser, desk_site):  # noqa: F811
    served, factory, notice = desk_site
    ARTIFACTS.mkdir(exist_ok=True)
    held = offers_of(factory, notice.booking_id)["1"]
    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        before = session.scalar(select(SailingCapacity).where(SailingCapacity.sailing_id == held.sailing_id,
                                                              SailingCapacity.space_class == booking.space_class))
    page = browser.new_page(viewport=TABLET, locale="en-GB")

    page.goto(f"{served}/desk/")
    page.get_by_label("Name").fill("li.na")
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{served}/desk/")

    page.get_by_label("Booking reference, phone (any format), email or name").fill(spaced(notice.recipient))
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    page.locator(f'a[href="/desk/customers/{notice.customer_id}"]').click()
    page.wait_for_load_state()
    timeline = page.get_by_test_id("timeline").inner_text()
    assert "notice · sms" in timeline

    card = page.get_by_role("region", name=f"Booking {booking.ref}")
    card.get_by_role("radio").first.check()
    card.get_by_role("button", name="Record").click()
    page.wait_for_load_state()
    assert page.get_by_test_id(f"booking-status-{booking.ref}").inner_text() == "rebooked"
    assert "rebook · agent" in page.get_by_test_id("timeline").inner_text()
    page.screenshot(path=str(ARTIFACTS / "desk-customer.en.png"), full_page=True)
    with factory() as session:
        moved = session.get(Booking, booking.id)
        after = session.scalar(select(SailingCapacity).where(SailingCapacity.sailing_id == held.sailing_id,
                                                             SailingCapacity.space_class == booking.space_class))
        confirmation = session.scalars(select(Notification).where(Notification.booking_id == booking.id,
                                                                  Notification.purpose == "confirmation",
                                                                  Notification.channel == "sms")).all()
        exported = [row for row in export_rows(session) if row["booking_ref"] == booking.ref]
    assert (moved.sailing_id, moved.status) == (held.sailing_id, "rebooked")
    assert (after.booked, after.held) == (before.booked + booking.places, before.held - booking.places)
    assert [n.status for n in confirmation] == ["queued"]
    assert [(r["channel"], r["new_sailing"]) for r in exported] == [("agent", held.sailing.code)]

    page.get_by_role("link", name="Inbox").click()
    page.wait_for_url(f"{served}/desk/tickets")
    page.locator('a[href^="/desk/tickets/"]').first.click()
    page.wait_for_load_state()
    assert "Complaint" in page.locator("h1").inner_text()
    page.get_by_label("Answer").fill("We are sorry: the notice failed to reach you. An agent will call you today.")
    page.get_by_role("button", name="Send the answer").click()
    page.wait_for_load_state()
    page.get_by_label("How it was resolved").fill("apologised, rebooked by phone")
    page.get_by_role("button", name="Resolve").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("ticket-status").inner_text() == "resolved"

    page.get_by_role("link", name="Follow-ups").click()
    page.wait_for_url(f"{served}/desk/followups")
    page.get_by_role("heading", name="Follow-ups", level=1).wait_for()  # the list is refreshed before it shows
    item_id = _open_follow_up(factory)
    page.get_by_role("button", name=f"Take #{item_id}").click()
    page.wait_for_load_state()
    page.get_by_label("Outcome").select_option("other")
    page.get_by_label("Notes").fill("called back; wheelchair assistance booked")
    page.get_by_role("button", name=f"Close #{item_id}").click()
    page.wait_for_load_state()
    page.screenshot(path=str(ARTIFACTS / "desk-followups.en.png"), full_page=True)
    with factory() as session:
        ticket = session.scalar(select(Ticket))
        answer = session.scalar(select(Notification).where(Notification.purpose == "desk_reply"))
        item = session.get(FollowUp, item_id)
    assert (ticket.status, answer.status, answer.channel) == ("resolved", "queued", "sms")
    assert (item.status, item.operator, item.outcome) == ("done", "li.na", "other")

    page.get_by_role("link", name="中文").click()
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "zh-CN" and "回访" in page.locator("h1").inner_text()
    page.goto(f"{served}/desk/customers/{notice.customer_id}")
    assert "订单" in page.locator("main").inner_text()
    page.screenshot(path=str(ARTIFACTS / "desk-customer.zh-CN.png"), full_page=True)
    page.goto(f"{served}/desk/stats")
    page.screenshot(path=str(ARTIFACTS / "desk-stats.zh-CN.png"), full_page=True)


def _open_follow_up(factory) -> int:
    with factory() as session:
        return session.scalar(select(FollowUp.id).where(FollowUp.status == "open").order_by(FollowUp.id))
