"""The layout is the data flow: every import inside notifier/ runs downward in LAYERS (a package may use its own
modules and any package below it, never one above or beside it), at module level and inside functions alike.

The order is the one in README.md's Layout section. Two rooms sit lower than the data flow would place them,
because the stages that feed them call into them: `channels` (given a message, never a session: it knows no
store and no stage) and `outbox` (the one writer of notification and webhook rows that planning, broadcasts,
delivery and aftercare all write through).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "notifier"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("notifier", "notifier.errors", "notifier.privacy"),
    ("notifier.logs",),
    ("notifier.channels",),
    ("notifier.store",),
    ("notifier.messages",),
    ("notifier.outbox",),
    ("notifier.feeds",),
    ("notifier.intake", "notifier.rules"),
    ("notifier.disruptions",),
    ("notifier.planning",),
    ("notifier.broadcasts",),
    ("notifier.delivery",),
    ("notifier.aftercare",),
    ("notifier.web",),
    ("notifier.ops",),
    ("notifier.commands",),
)
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}


def room_of(module: str) -> str:
    """The layout room a dotted module name lives in: the longest prefix named in LAYERS."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in RANK:
            return candidate
    raise AssertionError(f"{module} is in no room of the layout; add its package to LAYERS and the README")


def module_name(path: Path) -> str:
    """notifier/planning/offers.py -> notifier.planning.offers (a package's __init__ is the package)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, module: str) -> list[tuple[int, str]]:
    """Every notifier module that the file imports, anywhere in it, with the line number."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [(node.lineno, f"{base}.{alias.name}" if base == "notifier" else base) for alias in node.names]
    return [(line, name) for line, name in found if name == "notifier" or name.startswith("notifier.")]


def against_the_flow() -> list[str]:
    """One line per import that reaches up or sideways in the layout."""
    wrong: dict[str, None] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        here = room_of(module)
        for line, target in imported(path, module):
            there = room_of(target)
            if there != here and RANK[there] >= RANK[here]:
                wrong[f"{path.relative_to(ROOT.parent)}:{line}: {here} imports {target} ({there})"] = None
    return list(wrong)


def test_every_import_runs_down_the_layout():
    assert against_the_flow() == []


def test_the_check_sees_an_import_against_the_flow(tmp_path, monkeypatch):
    package = tmp_path / "notifier"
    (package / "feeds").mkdir(parents=True)
    (package / "feeds" / "cap.py").write_text("def parse():\n    from notifier.planning import offers\n")
    monkeypatch.setitem(globals(), "ROOT", package)
    assert against_the_flow() == ["notifier/feeds/cap.py:2: notifier.feeds imports notifier.planning "
                                  "(notifier.planning)"]


def test_every_package_has_a_room():
    for path in ROOT.rglob("__init__.py"):
        room_of(module_name(path))
