"""The README opens with the two commands a new user runs, and CI runs exactly the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_opens_with_demo_then_test_command():
    demo, tests = readme_commands()[:2]
    assert demo.endswith("notifier demo")
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert readme_commands()[1] in ci_lines


def test_the_layout_section_names_every_room():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rooms = sorted(p.parent.name + "/" for p in (ROOT / "notifier").glob("*/__init__.py"))
    modules = sorted(p.name for p in (ROOT / "notifier").glob("*.py") if p.name != "__init__.py")
    missing = [name for name in rooms + modules if not re.search(rf"(^|\s){re.escape(name)}", section, re.M)]
    assert missing == [], f"README's Layout section does not name {missing}"


def test_every_test_the_readme_names_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = sorted({path for path in re.findall(r"tests/[\w/]+\.py", readme) if not (ROOT / path).is_file()})
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", readme)
    absent = [f"{path}::{name}" for path, name in named
              if (ROOT / path).is_file() and f"def {name}(" not in (ROOT / path).read_text(encoding="utf-8")]
    assert missing == [] and absent == []


def test_the_configuration_table_names_every_setting():
    import dataclasses

    from notifier.store.settings import Settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    missing = [f.name for f in dataclasses.fields(Settings) if f"`{f.name}`" not in table]
    assert missing == [], f"settings missing from README's configuration table: {missing}"
