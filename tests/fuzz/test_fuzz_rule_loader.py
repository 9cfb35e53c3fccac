"""The rule loader reads any file an operator can drop into a rules folder and either loads it or raises RuleError.

Starting from the shipped rule files, values are swapped for wrong types, fields dropped or invented, operators
renamed, regular expressions broken; whole files are replaced by YAML tricks (alias bombs, deep nesting, tags,
bytes that are not UTF-8). A RuleError is one line that names the file; nothing else may escape, and what loads
is no bigger than what was written (an alias bomb must not be expanded into memory).

Every input that once crashed the loader, or made it say more than one line, is pinned below (KNOWN_CRASHES, with
what it did). One property draws wrong scalar values, a second draws from everything (lists, mappings, huge and
non-finite numbers).
"""

from __future__ import annotations

import copy
import tempfile
from datetime import UTC
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from notifier.messages import available_templates
from notifier.store.paths import rules_dir
from notifier.rules.conditions import OPERATORS
from notifier.rules.load import load_rule_set
from notifier.rules.model import RuleError
from tests.fuzz.budget import fuzz
from tests.fuzz.hostile import hostile_text

SHIPPED = {path.name: path.read_text(encoding="utf-8") for path in sorted(rules_dir().glob("*.yaml"))}
DOCUMENTS = {name: yaml.safe_load(text) for name, text in SHIPPED.items()}
POLICY_FILES = {name for name, document in DOCUMENTS.items() if document and document.get("policies")}
TEMPLATES = set(available_templates())


def load_folder(files: dict[str, bytes]):
    """Load a rules folder holding these files; a RuleError must name the file and be one line."""
    with tempfile.TemporaryDirectory() as folder:
        for name, body in files.items():
            (Path(folder) / name).write_bytes(body)
        try:
            return load_rule_set([Path(folder)], templates=TEMPLATES)
        except RuleError as exc:
            assert "\n" not in str(exc), "a rule error is shown as one line"
            assert folder in str(exc) or "rule folder" in str(exc), "a rule error names the file"
            return None


def with_policies(name: str, body: bytes) -> dict[str, bytes]:
    """The fuzzed file beside the shipped policy files, so rules that cite a policy get past that check."""
    files = {other: SHIPPED[other].encode() for other in POLICY_FILES if other != name}
    files[name] = body
    return files


def assert_loaded_no_bigger_than_written(rule_set, body: bytes) -> None:
    for rule in rule_set.rules:
        assert len(rule.description) <= len(body), "the description grew beyond the file: an alias was expanded"
        assert len(repr(rule.conditions)) <= 4 * len(body) + 2000, "conditions grew beyond the file"


# --- structure-aware mutations of the shipped files ----------------------------------------------------------------

# Wrong scalar values. A list or mapping where a word is expected, or a number too big for a timedelta (each of
# which once crashed the loader: KNOWN_CRASHES), are drawn by the property over everything, further down.
SAFE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**31, 2**31), st.floats(-1e6, 1e6),
    hostile_text(max_pieces=3, long=2000),
    st.sampled_from(["now", "now+6h", "now-30m", "now+2d", "now+", "2025-09-24T02:20:00", "2025-09-24T02:20:00+08:00",
                     "Severe", "Extreme", "weather_alert", "cancelled", "delayed", "advisory", "sms", "email", "both",
                     "passengers", "area", "locode", "EU", "auto", "observation", "crossing", "(", "[a-", "*", "\\",
                     "(?P<n>a)(?P<n>b)", "a{2,1}", "(?<=a+)b", "\\N{NOPE}", "(a+)+$"]),
    st.dates(), st.datetimes(timezones=st.sampled_from([None, UTC])))
FIELD_NAMES = st.sampled_from(["id", "description", "when", "where", "then", "notify", "policy", "approval",
                               "citation", "verification", "any_of", "kind", "event", "severity", "port", "route",
                               "time_overlap", "disruption", "delay_minutes", "template", "channels", "audience",
                               "grants", "applies_to", "unknown_field", "similar_to", "==", "matches", *OPERATORS])


def _paths(value, path=()):
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from _paths(item, path + (key,))


def mutate_document(document, data, values) -> bytes:
    """Replace, drop, add or rename a few entries of a parsed rule file; return it as YAML."""
    document = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from([p for p in _paths(document) if p] or [()]))
        if not path:
            break
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "rename"]))
        if action == "drop":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(FIELD_NAMES)] = data.draw(values)
        elif action == "rename" and isinstance(parent, dict):
            parent[data.draw(FIELD_NAMES)] = parent.pop(path[-1])
        else:
            parent[path[-1]] = data.draw(values)
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False).encode("utf-8", errors="surrogatepass")


@fuzz(100)
@given(data=st.data())
def test_mutated_shipped_rules_load_or_raise_rule_error(data):
    name = data.draw(st.sampled_from(sorted(DOCUMENTS)))
    body = mutate_document(DOCUMENTS[name], data, SAFE_VALUES)
    rule_set = load_folder(with_policies(name, body))
    if rule_set is not None:
        assert_loaded_no_bigger_than_written(rule_set, body)


# --- whole-file tricks ------------------------------------------------------------------------------------------------

RULE_HEAD = ("rules:\n  - id: fuzz\n    description: d\n    when: {kind: weather_alert}\n"
             "    where: {port: true}\n    then: {disruption: advisory}\n")
SAFE_FILES = [
    b"", b"~", b"[]", b"rules:", b"rules: 5", b"rules: [5]", b"policies: {}", b"other: []", b"- a\n- b",
    b"rules: [{}]", b"\xff\xfe\x00r", b"rules:\n\t- id: x", b"!!python/object/apply:os.system ['true']",
    b"rules: !!binary aGVsbG8=", b"rules: &a [*a]", b"%YAML 9.9\n---\nrules: []", b"--- []\n--- []",
    b"rules: [{id: a, id: b}]", b"\xef\xbb\xbfrules: []", "rules: [{id: \u202eevil}]".encode(),
    (RULE_HEAD + "    description: &d long text\n").encode(),
    (RULE_HEAD.replace("{kind: weather_alert}", "{event: {regex: '(a+)+$'}}")).encode(),
    (RULE_HEAD.replace("{kind: weather_alert}", "{event: {similar_to: x}}")).encode(),
    (RULE_HEAD.replace("{kind: weather_alert}", "{event: {regex: '['}}")).encode(),
    (RULE_HEAD.replace("{kind: weather_alert}", "{onset: {gt: 2025-01-01}}")).encode(),
    (RULE_HEAD.replace("{kind: weather_alert}", "{onset: {gt: 2025-01-01 00:00:00}}")).encode(),
    (RULE_HEAD.replace("{kind: weather_alert}", "{severity: {at_least: [Severe]}}")).encode(),
    (RULE_HEAD.replace("{disruption: advisory}", "{disruption: delayed, delay_minutes: .inf}")).encode(),
]


@pytest.mark.parametrize("body", SAFE_FILES, ids=range(len(SAFE_FILES)))
def test_yaml_tricks_load_or_raise_rule_error(body):
    rule_set = load_folder({"tricks.yaml": body})
    if rule_set is not None:
        assert_loaded_no_bigger_than_written(rule_set, body)


@fuzz(60)
@given(body=st.one_of(st.binary(max_size=300), hostile_text(max_pieces=4, long=3000).map(str.encode)))
def test_random_rule_files_load_or_raise_rule_error(body):
    load_folder({"random.yaml": body})


# --- what still crashes the loader: for the owner of notifier/rules.py (and entitlements.py) -----------------------

def _bomb(depth: int) -> bytes:
    """A rule whose description is a billion-laughs list: ten times bigger with every level."""
    levels = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"&a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, depth)]
    return RULE_HEAD.replace("description: d", f"description: [{', '.join(levels)}]").encode()


def _rule(when: str = "{kind: weather_alert}", then: str = "{disruption: advisory}") -> bytes:
    return RULE_HEAD.replace("{kind: weather_alert}", when).replace("{disruption: advisory}", then).encode()


def crash(name: str, body: bytes, escapes: type[BaseException], why: str):
    """A pinned input that once broke the loader (with `escapes`, for the reason given): now a RuleError."""
    return pytest.param(body, id=name)


KNOWN_CRASHES = [
    crash("deep-nesting", b"rules: " + b"[" * 600 + b"]" * 600, RecursionError,
          "yaml.safe_load's composer recurses: deep nesting raises RecursionError, not YAMLError"),
    crash("integer-key-in-when", _rule(when="{1: x}"), AttributeError,
          "rules._group calls name.startswith on a key that is not text"),
    crash("mixed-unknown-keys", _rule(then="{disruption: advisory, 1: x, y: 2}"), TypeError,
          "rules._then sorts unknown keys of mixed types for its message"),
    crash("huge-regex-repeat", _rule(when="{event: {regex: 'a{4294967296}'}}"), OverflowError,
          "re.compile raises OverflowError, not re.error; rules._condition catches only re.error"),
    crash("deeply-nested-regex", _rule(when="{event: {regex: '" + "(" * 1000 + ")" * 1000 + "'}}"), RecursionError,
          "re.compile raises RecursionError, not re.error; rules._condition catches only re.error"),
    crash("relative-time-overflow", _rule(when="{onset: {gt: now+99999999d}}"), OverflowError,
          "rules._time_argument: now + timedelta(days=99999999) overflows datetime"),
    crash("huge-margin", RULE_HEAD.replace("{port: true}", "{port: true, time_overlap: {margin_before_minutes: "
                                           "1440000032768}}").encode(), OverflowError,
          "rules._overlap: timedelta(minutes=1440000032768) is beyond timedelta's range"),
    crash("infinite-margin", RULE_HEAD.replace("{port: true}", "{port: true, time_overlap: {open_end_hours: .inf}}"
                                               ).encode(), OverflowError,
          "rules._overlap: timedelta(hours=inf) cannot be built"),
    crash("nan-margin", RULE_HEAD.replace("{port: true}", "{port: true, time_overlap: {margin_after_hours: .nan}}"
                                          ).encode(), ValueError,
          "rules._overlap: NaN passes the 'zero or more' check, then timedelta(hours=nan) fails"),
    crash("list-as-audience", RULE_HEAD.encode() + b"    notify: {audience: [all]}\n", TypeError,
          "rules._notify looks a list up in the AUDIENCES dict: unhashable type"),
    crash("list-as-kind-list", _rule(when="{kind: [[weather_alert]]}"), TypeError,
          "rules._when builds set(kind) of lists: unhashable type"),
    crash("list-as-grant", b"policies:\n  - {id: p, description: d, applies_to: {jurisdictions: [EU]}, citation: c, "
                           b"verification: P, grants: [{id: g, grant: [refund], cite: c}]}\n", TypeError,
          "entitlements._parse_grant looks a list up in the GRANT_KINDS dict: unhashable type"),
    crash("line-break-in-rule-id", _rule().replace(b"id: fuzz", b'id: "a\\nb"'), AssertionError,
          "rules._validate quoted the rule id raw, so the RuleError was two lines"),
    crash("alias-bomb-description", _bomb(5), AssertionError,
          "rules._validate str()s a non-text description: a 400-byte alias bomb becomes 800 kB (10x per level)"),
]


@pytest.mark.parametrize("body", KNOWN_CRASHES)
def test_known_loader_crashes_are_rule_errors(body):
    rule_set = load_folder({"crash.yaml": body})
    if rule_set is not None:
        assert_loaded_no_bigger_than_written(rule_set, body)


ANY_VALUES = st.one_of(
    SAFE_VALUES, st.sampled_from(["a{4294967296}", "(" * 500 + ")" * 500, "now+99999999d"]),
    st.integers(-2**70, 2**70), st.floats(),
    st.lists(st.sampled_from(["sms", "email", "Severe", "EU", "area", 3, None]), max_size=3),
    st.dictionaries(st.sampled_from(["regex", "eq", "in", "similar_to", "at_least", "gt", "exists", "codes", "match",
                                     "from", "map", "above_recipients", 1]),
                    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=8),
                              st.sampled_from(["(", "Severe", "now+1h"])), max_size=3),
    st.lists(st.lists(st.integers(), max_size=2), max_size=2))


@fuzz(150)
@given(data=st.data())
def test_any_mutation_of_shipped_rules_loads_or_raises_rule_error(data):
    name = data.draw(st.sampled_from(sorted(DOCUMENTS)))
    body = mutate_document(DOCUMENTS[name], data, ANY_VALUES)
    rule_set = load_folder(with_policies(name, body))
    if rule_set is not None:
        assert_loaded_no_bigger_than_written(rule_set, body)


def test_the_shipped_rules_load_as_they_are():
    rule_set = load_folder({name: text.encode() for name, text in SHIPPED.items()})
    assert rule_set is not None and rule_set.rules
