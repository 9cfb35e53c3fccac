"""A customer in a real browser: the link from a rendered Chinese notice opens the choice page (served by the real
app over HTTP), the alternative sailing is picked, the confirmation shows, and the database has moved the booking
and consumed the hold. Screenshots of the page in both languages go to test-artifacts/."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory
from notifier.ops.demo import generate
from notifier.store.migrate import upgrade
from notifier.store.models import Booking, Notification, Offer, SailingCapacity
from notifier.web.app import create_app
from tests.conftest import DEMO_NOW
from tests.aftercare.test_responses import NOW, offers_of, plan_typhoon

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture
def browser():
    """Headless Debian chromium driven by Playwright (never `playwright install`)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium fonts-noto-cjk)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The app on a free port in a thread, over a demo database whose notices carry links to it."""
    folder = tmp_path_factory.mktemp("choice-site")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    settings = load_settings(env={}, config_path=None, database_url=f"sqlite:///{folder / 'site.db'}",
                             outbox_dir=str(folder / "outbox"), secret_key="browser-test-secret",
                             public_base_url=base_url)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    generate(factory, 600, DEMO_NOW)
    server = make_server("127.0.0.1", port, create_app(settings, factory, clock=lambda: NOW), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    plan_typhoon(factory, settings)
    yield base_url, factory
    server.shutdown()
    thread.join(timeout=10)
    engine.dispose()


def notice_link(factory, base_url: str, language: str) -> tuple[Notification, str]:
    """A rendered SMS notice in `language` whose first alternative is held, and the link it carries."""
    with factory() as session:
        notice = session.scalars(
            select(Notification).join(Offer, (Offer.booking_id == Notification.booking_id)
                                      & (Offer.disruption_id == Notification.disruption_id))
            .where(Notification.channel == "sms", Notification.language == language, Offer.option_key == "1",
                   Offer.status == "held").order_by(Notification.id)).first()
    return notice, re.search(re.escape(base_url) + r"/c/[A-Za-z0-9._-]+", notice.body_text).group(0)


def test_a_customer_picks_the_alternative_sailing_in_chinese(browser, site):
    served, factory = site
    ARTIFACTS.mkdir(exist_ok=True)
    notice, link = notice_link(factory, served, "zh-CN")
    offer = offers_of(factory, notice.booking_id)["1"]
    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        held_before = session.scalar(select(SailingCapacity).where(SailingCapacity.sailing_id == offer.sailing_id,
                                                                   SailingCapacity.space_class == booking.space_class))
    page = browser.new_page(viewport={"width": 390, "height": 844}, locale="zh-CN")  # a phone

    page.goto(link)
    assert page.locator("h1").inner_text() == "您的航班已停航"
    first = page.locator('button[value="1"]')
    assert "改乘" in first.inner_text()
    assert page.get_by_text("已为您留位").first.is_visible()
    assert page.get_by_text("如未选择").is_visible()
    page.screenshot(path=str(ARTIFACTS / "choice-page.zh-CN.png"), full_page=True)

    first.click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "谢谢，您的选择已记录"
    assert offer.sailing.code in page.locator(".ok").inner_text()
    page.screenshot(path=str(ARTIFACTS / "confirmation-page.zh-CN.png"), full_page=True)

    with factory() as session:
        booking = session.get(Booking, notice.booking_id)
        capacity = session.scalar(select(SailingCapacity).where(SailingCapacity.sailing_id == offer.sailing_id,
                                                                SailingCapacity.space_class == booking.space_class))
        hold = session.get(Offer, offer.id)
    assert (booking.sailing_id, booking.status) == (offer.sailing_id, "rebooked")
    assert hold.status == "accepted"
    assert (capacity.booked, capacity.held) == (held_before.booked + booking.places,
                                                held_before.held - booking.places)


def test_the_page_in_english_for_a_screenshot(browser, site):
    served, factory = site
    ARTIFACTS.mkdir(exist_ok=True)
    _, link = notice_link(factory, served, "en")
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(link)
    assert page.locator("h1").inner_text() == "Your sailing is cancelled"
    assert page.locator("button").count() == 3
    page.screenshot(path=str(ARTIFACTS / "choice-page.en.png"), full_page=True)
