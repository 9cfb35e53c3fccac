"""Where the feed tests find their files.

Real files are read from the copies in tests/fixtures/feeds/ (only those whose licence allows copying), else
from the project's shared folder (../shared/feeds beside the checkout, or $NOTIFIER_SHARED_FEEDS); a test whose
file is in neither is skipped with the reason, so the suite passes in a checkout without the shared folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
SHARED = Path(os.environ.get("NOTIFIER_SHARED_FEEDS") or Path(__file__).resolve().parents[3] / "shared" / "feeds")


def find_feed(relative: str) -> Path | None:
    """The fixture copy of a feed file, else the shared original, else None."""
    for base in (FIXTURES, SHARED):
        if (base / relative).is_file():
            return base / relative
    return None


@pytest.fixture
def feed_file() -> Callable[[str], bytes]:
    """Load a feed file by its path under feeds/ (e.g. 'dcsa/ovs-300-response.json'), skipping when absent."""

    def load(relative: str) -> bytes:
        path = find_feed(relative)
        if path is None:
            pytest.skip(f"{relative} is not copied into tests/fixtures/feeds (licence) and {SHARED} is absent")
        return path.read_bytes()

    return load


@pytest.fixture
def shared_feeds() -> Path:
    """The shared feeds folder, or a skip saying it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"the shared feeds folder {SHARED} is absent (set NOTIFIER_SHARED_FEEDS to use another)")
    return SHARED
