"""Shared fixtures: a migrated database (SQLite file by default, PostgreSQL where NOTIFIER_TEST_POSTGRES_URL is
set and a test asks for it), settings pointing at a temporary outbox, the demo network, and the feed files
(tests/fixtures/feeds, else ../shared/feeds; a test whose file is in neither skips saying why)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory
from notifier.store.migrate import upgrade

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FEED_FIXTURES = FIXTURES / "feeds"
SHARED_FEEDS = Path(os.environ.get("NOTIFIER_SHARED_FEEDS") or Path(__file__).resolve().parents[2] / "shared" / "feeds")
# A fixed "now" for tests that build the demo network: times in assertions stay readable.
DEMO_NOW = datetime(2026, 9, 14, 0, 0, tzinfo=UTC)


def shared_feeds_folder() -> Path:
    """The real feed files beside the checkout (../shared/feeds, or $NOTIFIER_SHARED_FEEDS); a test that needs
    them skips, saying so, when they are absent."""
    if not SHARED_FEEDS.is_dir():
        pytest.skip(f"the shared feeds folder {SHARED_FEEDS} is absent (set NOTIFIER_SHARED_FEEDS to use another)")
    return SHARED_FEEDS


@pytest.fixture
def shared_feeds() -> Path:
    """The shared feeds folder, or a skip saying it is absent."""
    return shared_feeds_folder()


def find_feed(relative: str) -> Path | None:
    """The fixture copy of a feed file (tests/fixtures/feeds, where its licence allows copying), else the shared
    original, else None."""
    for base in (FEED_FIXTURES, SHARED_FEEDS):
        if (base / relative).is_file():
            return base / relative
    return None


@pytest.fixture
def feed_file() -> Callable[[str], bytes]:
    """Load a feed file by its path under feeds/ (e.g. 'dcsa/ovs-300-response.json'), skipping when absent."""

    def load(relative: str) -> bytes:
        path = find_feed(relative)
        if path is None:
            pytest.skip(f"{relative} is not copied into tests/fixtures/feeds (licence) and {SHARED_FEEDS} is absent")
        return path.read_bytes()

    return load


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
    from notifier.ops.demo import generate

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
    from notifier.planning import plan as planner
    from notifier.planning import writer as planning

    made = []
    real_init = planning.WriterProcess.__init__

    def remembered(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(planner, "WRITER_PROCESS_MIN_BOOKINGS", 1)
    monkeypatch.setattr(planner, "_spare_core", lambda: True)  # a one-core machine tests it too
    monkeypatch.setattr(planning.WriterProcess, "__init__", remembered)
    monkeypatch.setattr(planning.WriterProcess, "ready", property(lambda self: self.wait_until_ready()))
    return made
