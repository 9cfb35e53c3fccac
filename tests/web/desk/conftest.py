"""The desk over a copy of the planned typhoon: agents of each role, a test client, and signing in."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from notifier.store.db import transaction
from notifier.web.app import create_app
from notifier.web.desk.auth import add_agent
from tests.aftercare.test_responses import NOW, factory, planned_template  # noqa: F401 - fixtures

PASSWORD = "correct horse battery"
AGENTS = {"li.na": "agent", "wang.wei": "agent", "duty.chen": "duty"}


@pytest.fixture
def desk_settings(tmp_settings):
    """Plain-http cookies (the test client is not https) and a lockout after three failures."""
    return replace(tmp_settings, desk_secure_cookies=False, desk_lockout_attempts=3, desk_lockout_minutes=15)


@pytest.fixture
def desk_app(factory, desk_settings):
    """The whole web app (choice page, webhooks, desk) with the agents in AGENTS."""
    with transaction(factory) as session:
        for name, role in AGENTS.items():
            add_agent(session, name, role, PASSWORD, "test")
    clock = Clock()
    app = create_app(desk_settings, factory, clock=clock)
    app.config["TEST_CLOCK"] = clock
    return app


class Clock:
    """The app's clock, moved by tests."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self):
        return self.now


def csrf_of(html: str) -> str:
    """The CSRF token a desk page's forms carry."""
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, name: str = "li.na", password: str = PASSWORD):
    """Sign in through the form, as a browser does; returns the response."""
    token = csrf_of(client.get("/desk/signin").get_data(as_text=True))
    return client.post("/desk/signin", data={"csrf_token": token, "name": name, "password": password})


def post(client, path: str, data: dict | None = None, page: str = "/desk/"):
    """A desk form POST carrying the token of a page the agent has open."""
    token = csrf_of(client.get(page).get_data(as_text=True))
    return client.post(path, data={"csrf_token": token, **(data or {})})
