"""The HTML report as an ops manager opens it: a single file in a real (headless) browser, no network, and its
three charts actually drawn. The screenshot goes to test-artifacts/report.png."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from notifier.aftercare.reports import build_report, render_html
from tests.conftest import DEMO_NOW
from tests.e2e.test_choice_browser import ARTIFACTS, browser  # noqa: F401 - the shared chromium fixture
from tests.aftercare.test_reports import busy_sailings, cancel_on_eu_route, choose, tell


@pytest.fixture
def report_file(factory, demo_db, tmp_settings, tmp_path) -> Path:
    """A night with two disruptions: notices sent over the first hour, one failure, two choices."""
    first, second = busy_sailings(factory, "HKM-HKG-MFM", 2)
    one = cancel_on_eu_route(factory, tmp_settings, first)
    two = cancel_on_eu_route(factory, tmp_settings, second)
    told = tell(factory, one, [1, 3, 9, 22, 41])
    tell(factory, two, [2, 6, None], failure="Unreachable destination handset")
    choose(factory, one, told[0], "rebook")
    choose(factory, one, told[1], "refund")
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report(factory, now=DEMO_NOW + timedelta(days=1))), encoding="utf-8")
    return page


def test_the_report_opens_offline_and_its_charts_render(browser, report_file):  # noqa: F811
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(report_file.as_uri())
    page.wait_for_load_state("load")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)

    assert requested == [report_file.as_uri()]  # self-contained: no stylesheet, font or script fetched
    charts = page.locator("svg.chart")
    assert charts.count() == 3
    for index in range(3):
        box = charts.nth(index).bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100
    line = page.locator("#timeline polyline.series").bounding_box()
    assert line and line["width"] > 50 and line["height"] > 10  # it climbs: bookings were told over time
    bars = page.locator("#funnel rect.series")
    assert bars.count() == 5
    widths = [bars.nth(i).bounding_box()["width"] for i in range(5)]
    assert widths[0] >= widths[2] > 2  # affected >= told, and told is drawn
    segments = page.locator("#choices circle.series")
    assert segments.count() == 3  # rebook, refund, no answer
    assert all(segments.nth(i).bounding_box()["width"] > 0 for i in range(3))
    assert "missed" in page.locator("#disruptions").inner_text() or "met" in page.locator("#disruptions").inner_text()
    page.close()
