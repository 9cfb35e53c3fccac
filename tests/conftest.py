"""Shared fixtures: a migrated database (SQLite file by default, PostgreSQL where NOTIFIER_TEST_POSTGRES_URL is
set and a test asks for it), settings pointing at a temporary outbox, and the demo network."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from notifier.config import load_settings
from notifier.db import make_engine, session_factory
from notifier.migrate import upgrade

SHARED_FEEDS = Path(__file__).resolve().parents[2] / "shared" / "feeds"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# A fixed "now" for tests that build the demo network: times in assertions stay readable.
DEMO_NOW = datetime(2026, 9, 14, 0, 0, tzinfo=UTC)


def shared_feeds() -> Path:
    """The real feed files beside the checkout; tests that need them skip when they are absent."""
    if not SHARED_FEEDS.is_dir():
        pytest.skip(f"real feed files not present at {SHARED_FEEDS} (they live outside the repository)")
    return SHARED_FEEDS


@pytest.fixture
def tmp_settings(tmp_path):
    """Settings on a fresh SQLite file and outbox under tmp_path, ignoring any notifier.toml around."""
    return load_settings(env={}, config_path=None, database_url=f"sqlite:///{tmp_path / 'test.db'}",
                         outbox_dir=str(tmp_path / "outbox"), secret_key="test-secret",
                         public_base_url="https://ferry.example")


@pytest.fixture
def engine(tmp_settings):
    """A migrated SQLite database (through the real Alembic migrations)."""
    upgrade(tmp_settings.database_url)
    engine = make_engine(tmp_settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine):
    """A session factory on the migrated test database."""
    return session_factory(engine)


@pytest.fixture
def demo_db(factory):
    """The demo network with 600 bookings around DEMO_NOW."""
    from notifier.demo import generate

    network = generate(factory, 600, DEMO_NOW)
    return network


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL database, migrated; skips where NOTIFIER_TEST_POSTGRES_URL is unset."""
    base = os.environ.get("NOTIFIER_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("NOTIFIER_TEST_POSTGRES_URL is not set (CI sets it; see .ci/run)")
    name = f"notifier_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def writer_processes(monkeypatch):
    """Every broadcast is planned with a writer process (planning.WriterProcess, SQLite's way at scale), waited
    for (not raced) before the first chunk; the list holds the WriterProcess objects made."""
    from notifier import broadcasts, planning

    made = []
    real_init = planning.WriterProcess.__init__

    def remembered(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(broadcasts, "WRITER_PROCESS_MIN_BOOKINGS", 1)
    monkeypatch.setattr(broadcasts, "_spare_core", lambda: True)  # a one-core machine tests it too
    monkeypatch.setattr(planning.WriterProcess, "__init__", remembered)
    monkeypatch.setattr(planning.WriterProcess, "ready", property(lambda self: self.wait_until_ready()))
    return made
