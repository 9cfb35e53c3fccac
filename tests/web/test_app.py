"""The choice page over HTTP: GET only shows (in the customer's language), POST decides once and only with the
page's own form token; altered, expired and replayed links get a clear page and change nothing; personal pages
are not cached, framed or open to other sites."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select, update

from cli import main
from notifier.channels.file import FileEmailChannel, FileSmsChannel
from notifier.store.settings import ConfigError
from notifier.store.db import transaction
from notifier.delivery.dispatch import dispatch_all
from notifier.store.models import Booking, Notification, Offer, Port, SailingCapacity
from notifier.planning.offers import expire_holds
from notifier.web.app import create_app
from tests.aftercare.test_responses import NOW, db_state, factory, offers_of, planned_template, sms_notice  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


class Clock:
    """The app's idea of now, moved by the test (links expire at the offer deadline)."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def site(factory, tmp_settings):
    """The demo typhoon planned, and the app serving its links."""
    clock = Clock(NOW)
    app = create_app(tmp_settings, factory, clock=clock)
    return app.test_client(), clock


def link_path(notice: Notification) -> str:
    return urlsplit(re.search(r"https://ferry\.example/c/\S+", notice.body_text).group(0)).path


def form_of(client, path: str) -> dict[str, str]:
    page = client.get(path).get_data(as_text=True)
    return {"form_token": re.search(r'name="form_token" value="([^"]+)"', page).group(1)}


def test_the_page_shows_the_offers_in_chinese_and_a_visit_records_nothing(site, factory):
    client, _ = site
    notice = sms_notice(factory, "zh-CN")
    offers = offers_of(factory, notice.booking_id)
    before = db_state(factory)

    page = client.get(link_path(notice))
    client.get(link_path(notice))  # a mail scanner, a link preview, a second look
    client.head(link_path(notice))

    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'lang="zh-CN"' in html
    assert "您的航班已停航" in html and "台风" in html
    assert html.count('name="option"') == 3
    assert 'value="1">改乘' in html and 'value="2">改乘' in html and "退票 ¥" in html
    assert "已为您留位" in html and "前选择" in html and "如未选择" in html
    assert offers["1"].sailing.code in html
    assert db_state(factory) == before


def test_the_same_page_in_english(site, factory):
    client, _ = site
    notice = sms_notice(factory, "en")
    html = client.get(link_path(notice)).get_data(as_text=True)
    assert 'lang="en"' in html and "Your sailing is cancelled" in html
    assert "A place is held for you" in html and "Please choose by" in html and "If you do not choose" in html
    assert "Full refund of CN¥" in html or "Full refund of HK$" in html
    assert "您的航班" in client.get(link_path(notice) + "?lang=zh-CN").get_data(as_text=True)


def test_personal_pages_are_not_cached_framed_or_open_to_other_sources(site, factory):
    client, _ = site
    for response in (client.get(link_path(sms_notice(factory, "zh-CN"))), client.get("/c/forged.token")):
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert "http" not in csp and "*" not in csp and "unsafe-inline" not in csp
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert f'<style nonce="{nonce}">' in response.get_data(as_text=True)
    assert "<script" not in response.get_data(as_text=True) and "src=" not in response.get_data(as_text=True)


def test_choosing_the_alternative_moves_the_booking_and_confirms_it(site, factory, tmp_settings):
    client, _ = site
    notice = sms_notice(factory, "zh-CN", with_email=True)
    offers = offers_of(factory, notice.booking_id)
    path = link_path(notice)

    posted = client.post(path, data=form_of(client, path) | {"option": "1"})

    assert posted.status_code == 303
    confirmation = client.get(posted.headers["Location"]).get_data(as_text=True)
    assert "您的选择已记录" in confirmation and offers["1"].sailing.code in confirmation
    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        sent = session.execute(select(Notification.channel, Notification.language).where(
            Notification.booking_id == booking.id, Notification.purpose == "confirmation")).all()
    assert (booking.sailing_id, booking.status) == (offers["1"].sailing_id, "rebooked")
    assert offers_of(factory, booking.id)["1"].status == "accepted"
    assert sorted(sent) == [("email", "zh-CN"), ("sms", "zh-CN")]
    # The dispatcher sends the confirmation like any notice.
    sms = FileSmsChannel(tmp_settings.outbox_dir)
    stats = dispatch_all(factory, tmp_settings, {"sms": sms, "email": FileEmailChannel(tmp_settings.outbox_dir,
                                                                                        "n@ferry.example")})
    sms.close()
    lines = (Path(tmp_settings.outbox_dir) / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    assert stats.sent >= 2
    assert any(notice.recipient in line and "已确认" in line and booking.ref in line for line in lines)


def test_a_refund_from_the_page(site, factory):
    client, _ = site
    notice = sms_notice(factory, "en")
    path = link_path(notice)
    client.post(path, data=form_of(client, path) | {"option": "R"})
    html = client.get(path).get_data(as_text=True)
    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
    assert (booking.status, booking.refund_amount) == ("refund", booking.fare_paid)
    assert "will be refunded in full" in html


def test_a_second_choice_or_a_replayed_form_is_refused_politely_and_changes_nothing(site, factory):
    client, _ = site
    notice = sms_notice(factory, "zh-CN")
    path = link_path(notice)
    form = form_of(client, path)
    client.post(path, data=form | {"option": "1"})
    before = db_state(factory)

    replayed = client.post(path, data=form | {"option": "1"})
    another = client.post(path, data=form | {"option": "R"})

    for response in (replayed, another):
        assert response.status_code == 409
        assert "您的选择已记录" in response.get_data(as_text=True)
    assert db_state(factory) == before


@pytest.mark.parametrize("alter", [lambda p: p[:-1] + ("x" if p[-1] != "x" else "y"),
                                   lambda p: p[:-6], lambda p: p.replace("/c/", "/c/1", 1)])
def test_an_altered_link_gets_a_clear_page_and_changes_nothing(site, factory, alter):
    client, _ = site
    path = link_path(sms_notice(factory, "zh-CN"))
    form = form_of(client, path)
    before = db_state(factory)

    shown = client.get(alter(path))
    posted = client.post(alter(path), data=form | {"option": "1"})

    for response in (shown, posted):
        html = response.get_data(as_text=True)
        assert response.status_code == 404
        assert "链接无效" in html and "This link is not valid" in html
    assert db_state(factory) == before


def test_an_expired_link_gets_a_clear_page_and_changes_nothing(site, factory):
    client, clock = site
    notice = sms_notice(factory, "en")
    path = link_path(notice)
    form = form_of(client, path)
    clock.now = offers_of(factory, notice.booking_id)["1"].deadline + timedelta(seconds=1)
    before = db_state(factory)

    shown = client.get(path)
    posted = client.post(path, data=form | {"option": "1"})

    for response in (shown, posted):
        assert response.status_code == 410
        assert "This link has expired" in response.get_data(as_text=True)
    assert db_state(factory) == before


def test_a_post_without_this_pages_token_or_from_another_site_is_refused(site, factory):
    client, _ = site
    notice, other = sms_notice(factory, "zh-CN"), sms_notice(factory, "en")
    path = link_path(notice)
    form = form_of(client, path)
    before = db_state(factory)

    refused = [client.post(path, data={"option": "1"}),
               client.post(path, data=form_of(client, link_path(other)) | {"option": "1"}),
               client.post(path, data={"form_token": form["form_token"][:-2] + "xx", "option": "1"}),
               client.post(path, data=form | {"option": "1"}, headers={"Origin": "https://evil.example"}),
               client.post(path, data=form | {"option": "9"})]

    assert [r.status_code for r in refused] == [400, 400, 400, 400, 400]
    assert all("请重新选择" in r.get_data(as_text=True) for r in refused)
    assert db_state(factory) == before


def test_a_lapsed_hold_on_a_sailing_that_filled_up_is_refused(site, factory):
    client, _ = site
    notice = sms_notice(factory, "en")
    path = link_path(notice)
    form = form_of(client, path)
    offer = offers_of(factory, notice.booking_id)["1"]
    with transaction(factory) as session:
        expire_holds(session, offer.hold_expires_at + timedelta(seconds=1))
        session.execute(update(SailingCapacity).where(SailingCapacity.sailing_id == offer.sailing_id)
                        .values(booked=SailingCapacity.capacity - SailingCapacity.held))
    before = db_state(factory)

    response = client.post(path, data=form | {"option": "1"})

    assert response.status_code == 409 and "just filled up" in response.get_data(as_text=True)
    assert db_state(factory) == before


def test_names_from_the_database_are_escaped(site, factory):
    client, _ = site
    notice = sms_notice(factory, "en")
    with transaction(factory) as session:
        offer = session.scalar(select(Offer).where(Offer.booking_id == notice.booking_id, Offer.option_key == "1"))
        session.execute(update(Port).where(Port.id == offer.sailing.destination_port_id)
                        .values(name="<script>alert(1)</script>"))
    html = client.get(link_path(notice)).get_data(as_text=True)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_app_needs_the_key_the_links_were_signed_with(tmp_settings, factory):
    with pytest.raises(ConfigError, match="NOTIFIER_SECRET_KEY"):
        create_app(replace(tmp_settings, secret_key=""), factory)


def test_the_twilio_webhooks_are_served_by_the_same_app_and_refuse_unsigned_calls(site, factory, tmp_settings):
    pytest.importorskip("notifier.web.twilio")
    client, _ = site
    notice = sms_notice(factory, "zh-CN")
    before = db_state(factory)
    response = client.post("/twilio/inbound", data={"From": notice.recipient, "Body": "1"})
    assert response.status_code == 403
    assert db_state(factory) == before


def test_notifier_serve_answers_over_http(engine, tmp_settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url,
                        "NOTIFIER_SECRET_KEY": "test-secret"}
    server = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", "serve", "--port", str(port)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "serving choice pages" in server.stdout.readline()
        response = requests.get(f"http://127.0.0.1:{port}/c/not-a-token", timeout=10)
        assert response.status_code == 404 and "This link is not valid" in response.text
        assert response.headers["Cache-Control"] == "no-store"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_notifier_serve_without_the_secret_says_what_to_set(engine, tmp_settings):
    result = CliRunner().invoke(main, ["serve"], env={"NOTIFIER_CONFIG": "", "NOTIFIER_SECRET_KEY": "",
                                                      "NOTIFIER_DATABASE_URL": tmp_settings.database_url})
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "notifier: the choice page needs the key the links were signed with: set NOTIFIER_SECRET_KEY"]
