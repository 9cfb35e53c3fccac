"""An installed notifier (plain `pip install .`) must find its templates, rules and migrations, and the
migrations must create exactly the tables the models describe."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from notifier.store.models import Base

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_templates_rules_and_migrations(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("notifier-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    shipped_templates = {str(p.relative_to(ROOT)) for p in (ROOT / "templates").rglob("*.j2")}
    assert {f"share/notifier/{t}" for t in shipped_templates} <= set(data)
    assert {f"share/notifier/rules/{p.name}" for p in (ROOT / "rules").glob("*.yaml")} <= set(data)
    assert "share/notifier/migrations/env.py" in data
    assert any(n.startswith("share/notifier/migrations/versions/") for n in data)
    assert "cli.py" in names and "notifier/demo_data/typhoon_qiongzhou.xml" in names


def test_migrations_match_the_models(engine):
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
