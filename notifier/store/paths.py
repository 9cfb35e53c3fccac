"""Where the shipped templates, rules, migrations and schemas live, for a checkout and for an installed notifier."""

import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # notifier/
_CHECKOUT = _PACKAGE.parent
_INSTALLED = Path(sys.prefix) / "share" / "notifier"


def _resolve(name: str) -> Path:
    # A checkout (or an editable install) wins, so a developer's edits are what runs.
    for base in (_CHECKOUT, _INSTALLED):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the shipped '{name}' folder (looked in {_CHECKOUT} and {_INSTALLED})")


def templates_dir() -> Path:
    """The shipped templates/ folder."""
    return _resolve("templates")


def rules_dir() -> Path:
    """The shipped rules/ folder."""
    return _resolve("rules")


def migrations_dir() -> Path:
    """The Alembic migrations/ folder."""
    return _resolve("migrations")


def schemas_dir() -> Path:
    """The JSON Schemas of the files operators import (bookings, network, column mapping)."""
    return _resolve("schemas")


def demo_data_dir() -> Path:
    """Bundled demo inputs (the typhoon CAP warning)."""
    return _PACKAGE / "demo_data"
