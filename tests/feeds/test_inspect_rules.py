"""Issue 21, item 4: `feeds inspect` says, for each observation, which rule would take it and how many sailings of
the configured network it reaches, so an operator sees at once whether a new feed matters to their network."""

from __future__ import annotations

from datetime import timedelta

import time_machine
from click.testing import CliRunner

from cli import main
from tests.conftest import find_feed


def inspect(relative: str, env: dict[str, str]) -> list[str]:
    result = CliRunner().invoke(main, ["feeds", "inspect", str(find_feed(relative))], env=env)
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.startswith("rules: ")]


def test_each_observation_names_the_rule_that_takes_it_and_the_sailings_it_reaches(demo_db, tmp_settings):
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url, "NOTIFIER_RULES_DIRS": ""}
    with time_machine.travel(demo_db.epoch + timedelta(hours=1, minutes=45), tick=False):
        signal, rain = inspect("hko/warnsum-tc8ne-en.json", env)
    assert signal.startswith("rules: WTCSGNL: taken by hk-signal-8-terminals (cancelled; ")
    assert int(signal.split("; ")[1].split()[0]) > 0 and signal.endswith("sailing(s) of this network)")
    assert rain == "rules: WRAIN: no rule takes it"


def test_without_a_database_the_rule_is_still_named(tmp_path):
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}",
           "NOTIFIER_RULES_DIRS": ""}
    [signal] = inspect("hko/warnsum-tc8ne-tc.json", env)
    assert signal == "rules: WTCSGNL: taken by hk-signal-8-terminals (cancelled; no database here to count sailings)"
    [cancel] = inspect("hko/warnsum-cancel-en.json", env)
    assert "a Cancel" in cancel
    assert not (tmp_path / "none.db").exists()  # inspecting never creates a database
