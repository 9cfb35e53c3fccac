"""Rule files: validation names file, rule and field; shipped rules and policies load; a later folder may override
a shipped policy; `notifier rules check` lists rules and refuses a bad folder without a traceback."""

from __future__ import annotations

import json
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from notifier.store.paths import rules_dir
from notifier.rules.load import load_rule_set
from notifier.rules.model import RuleError

TEMPLATES = {"cancelled", "delayed", "advisory", "port_omitted", "updated", "resumed"}


def rule_file(folder: Path, body: str, name: str = "test.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def load(folder: Path, body: str) -> list:
    rule_file(folder, body)
    return list(load_rule_set([folder], TEMPLATES).rules)


GOOD = """
rules:
  - id: storm
    description: storm cancels
    when: {kind: weather_alert, event: {regex: "(?i)storm"}, severity: {at_least: Severe}}
    where: {port: true, time_overlap: {margin_before_minutes: 60}}
    then: {disruption: cancelled, cause: weather}
"""


# --- validation ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field, words", [
    ({"id": "Bad Id"}, "id", "lower-case"),
    ({"when": {"kind": "weather_alert", "event": {"matches": "x"}}}, "when.event.matches", "unknown operator"),
    ({"when": {"event": {"regex": "(unclosed"}}}, "when.event.regex", "not a valid regular expression"),
    ({"when": {"event": {"at_least": "Severe"}}}, "when.event.at_least", "only for severity"),
    ({"when": {"severity": {"at_least": "Hgh"}}}, "when.severity.at_least", "not a CAP severity"),
    ({"when": {"expires": {"gt": "tomorrow"}}}, "when.expires.gt", "neither a number nor a time"),
    ({"where": {"port": True, "time_overlap": {"margin": 5}}}, "where.time_overlap.margin", "unknown"),
    ({"where": {"time_overlap": True}}, "where", "needs at least one selector"),
    ({"where": {"port": {"match": ["telepathy"]}}}, "where.port.match", "drawn from"),
    ({"then": {"disruption": "sunk"}}, "then.disruption", "must be one of"),
    ({"then": {"disruption": "delayed"}}, "then.delay_minutes", "needs minutes"),
    ({"notify": {"template": "nonesuch"}}, "notify.template", "no template 'nonesuch'"),
    ({"notify": {"audience": "everyone"}}, "notify.audience", "passengers, shippers or both"),
    ({"policy": ["no-such-policy"]}, "policy", "no policy 'no-such-policy'"),
    ({"approval": {"above": 3}}, "approval", "above_recipients"),
    ({"citation": "Art 1"}, "verification", "both citation and verification"),
    ({"colour": "red"}, "colour", "is not a rule field"),
])
def test_a_bad_rule_names_file_rule_and_field(tmp_path, change, field, words):
    rule = {"id": "broken-rule", "description": "x", "when": {"kind": "weather_alert"}, "where": {"port": True},
            "then": {"disruption": "cancelled"}}
    rule.update(change)
    rule_file(tmp_path, json.dumps({"rules": [rule]}))  # JSON is YAML
    with pytest.raises(RuleError) as caught:
        load_rule_set([tmp_path], TEMPLATES)
    message = str(caught.value)
    rule_id = rule["id"] if isinstance(rule["id"], str) else "#1"
    assert f"{tmp_path / 'test.yaml'}: rule '{rule_id}': field '{field}'" in message
    assert words in message
    assert caught.value.exit_code == 2


def test_unconfirmed_law_cannot_carry_entitlements(tmp_path):
    rule_file(tmp_path, """
        policies:
          - id: mine
            description: d
            applies_to: {jurisdictions: [EU]}
            citation: c
            verification: S
            grants: [{id: G, grant: refreshments, cite: x}]
        rules:
          - id: hearsay
            description: x
            when: {kind: port_status}
            where: {port: true}
            then: {disruption: cancelled}
            policy: [mine]
            citation: "a blog post"
            verification: U
        """)
    with pytest.raises(RuleError, match="rule 'hearsay': field 'verification': U .unconfirmed. must not ship"):
        load_rule_set([tmp_path], TEMPLATES)


def test_duplicate_ids_and_broken_yaml_are_refused(tmp_path):
    rule_file(tmp_path / "a", GOOD)
    rule_file(tmp_path / "b", GOOD)
    with pytest.raises(RuleError, match="rule 'storm': field 'id': already used in .*a/test.yaml"):
        load_rule_set([tmp_path / "a", tmp_path / "b"], TEMPLATES)
    rule_file(tmp_path / "c", "rules: [ {id: x\n")
    with pytest.raises(RuleError, match="c/test.yaml: not valid YAML"):
        load_rule_set([tmp_path / "c"], TEMPLATES)
    with pytest.raises(RuleError, match="rule folder does not exist"):
        load_rule_set([tmp_path / "missing"], TEMPLATES)


def test_a_later_folder_may_override_a_shipped_policy(tmp_path):
    rule_file(tmp_path, """
        policies:
          - id: eu-1177-2010
            description: ours pays from the first cent
            applies_to: {jurisdictions: [EU]}
            citation: "Regulation (EU) No 1177/2010 Art 19"
            verification: P
            grants: [{id: EU-19-1, grant: compensation, cite: "Art 19", exempt_causes: [weather],
                      minimum_payout: "0.00", bookings: [passenger]}]
        """)
    loaded = load_rule_set([rules_dir(), tmp_path])
    assert loaded.policies["eu-1177-2010"].grants[0].params["minimum_payout"] == Decimal("0.00")
    assert any("overrides" in note for note in loaded.notes)
    suspension = next(r for r in loaded.rules if r.id == "typhoon-port-suspension")
    assert suspension.policies[0].description == "ours pays from the first cent"


def test_the_shipped_rules_are_valid_and_encode_the_policies():
    loaded = load_rule_set([rules_dir()])
    ids = {rule.id for rule in loaded.rules}
    assert {"typhoon-port-suspension", "hk-signal-8-terminals", "port-closed", "port-strike", "gtfs-trip-cancelled",
            "gtfs-trip-delayed", "dcsa-port-omitted", "dcsa-blank-sailing", "dcsa-eta-slip"} <= ids
    assert {p.verification for p in loaded.policies.values()} <= {"P", "G", "S"}
    assert all(p.citation for p in loaded.policies.values())
    assert loaded.policies["eu-1177-2010"].verification == "P"


def test_rules_check_lists_rules_and_refuses_a_bad_folder(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["rules", "check"], env={"NOTIFIER_CONFIG": "", "NOTIFIER_RULES_DIRS": ""})
    assert ok.exit_code == 0, ok.output
    assert "typhoon-port-suspension" in ok.output and "policy eu-1177-2010" in ok.output
    rule_file(tmp_path, "rules:\n  - id: x\n    description: y\n")
    bad = runner.invoke(main, ["rules", "check"], env={"NOTIFIER_CONFIG": "", "NOTIFIER_RULES_DIRS": str(tmp_path)})
    assert bad.exit_code == 2
    assert bad.output.strip().startswith("notifier: ") and "rule 'x': field 'when': is required" in bad.output
    assert "Traceback" not in bad.output

