"""Rules: load rules/*.yaml, validate them, evaluate observations into impacts on sailings, and explain why.

A rule says `when` an observation counts (its kind and conditions on its fields), `where` it bites (which sailings
it selects: ports inside the alert's area or named by UN/LOCODE or zone code, a route, a vessel and voyage, a GTFS
trip, and a time overlap with the hazard window), `then` what happens to those sailings (cancelled, delayed,
port omitted, advisory), `notify` whom and how, `policy` which entitlements apply, and `approval`. Rules are data:
conditions are a fixed vocabulary (equality, sets, regex, numeric and time comparison, ordered CAP scales);
nothing is ever `eval`ed. Policies (what customers are owed) live beside the rules under `policies:`.

Spatial look-ups go through a shapely STRtree over the ports, built once per network; the ports an observation
covers are computed once per observation and shared by every rule; sailings at a port are kept sorted by
departure so a time window is two binary searches, not a scan.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from shapely import STRtree, box
from shapely.geometry import Point, Polygon, shape
from shapely.validation import make_valid

from notifier.errors import NotifierError, escape_unprintable
from notifier.rules.entitlements import Policy, PolicyError, parse_policy, policy_tags
from notifier.feeds import Observation
from notifier.messages import quotable

DISRUPTION_KINDS = ("cancelled", "delayed", "port_omitted", "advisory")
# Higher wins: a cancellation supersedes a port omission, which supersedes a delay, which supersedes an advisory.
STRENGTH = {"advisory": 0, "delayed": 1, "port_omitted": 2, "cancelled": 3}
CHANNELS = ("sms", "email")
AUDIENCES = {"passengers": "passengers", "shippers": "shippers", "all": "all", "both": "all"}
VERIFICATION_LEVELS = ("P", "G", "S", "U")
OBSERVATION_KINDS = ("weather_alert", "trip_update", "service_alert", "port_call", "port_status")
# CAP's ordered vocabularies, for `at_least` / `at_most`.
SCALES = {"severity": ("Unknown", "Minor", "Moderate", "Severe", "Extreme"),
          "urgency": ("Unknown", "Past", "Future", "Expected", "Immediate"),
          "certainty": ("Unknown", "Unlikely", "Possible", "Likely", "Observed")}
OPERATORS = ("eq", "ne", "in", "not_in", "regex", "not_regex", "gt", "gte", "lt", "lte", "at_least", "at_most",
             "exists", "contains", "contains_any")
PORT_MATCHES = ("area", "locode", "zone_code", "gtfs_stop")
SELECTORS = ("port", "route", "vessel", "voyage", "trip", "informed_entities", "sailing_code")
EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE = 111.32
# A CAP circle of radius 0 is a point; a port within this distance of it counts as "at" the point.
MIN_CIRCLE_KM = 0.5
# The longest feed text a notice quotes (a headline, a DCSA change remark): about two English SMS parts of its own.
QUOTED_MAX_CHARS = 300
_RELATIVE_TIME = re.compile(r"now\s*(?:([+-])\s*(\d+)\s*([mhd]))?\Z")


class RuleError(NotifierError):
    """A rule file that cannot be used; the message names the file, the rule and the field."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Messages quote ids, keys and values from the file, which may hold line breaks (a quoted YAML id can):
        # shown escaped, as feed errors are, so the error stays one line.
        super().__init__(escape_unprintable(message))


# --- the validated rule -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """One test on one observation value: `severity: {at_least: Severe}` is Condition('severity', 'at_least', ...)."""

    path: str
    op: str
    arg: Any
    pattern: re.Pattern[str] | None = None

    def holds(self, value: Any, now: datetime) -> bool:
        """True when the observation's value passes this test."""
        op, arg = self.op, self.arg
        if op == "eq":
            return value == arg
        if op == "ne":
            return value != arg
        if op == "in":
            return value in arg
        if op == "not_in":
            return value not in arg
        if op in ("regex", "not_regex"):
            found = value is not None and self.pattern.search(str(value)) is not None
            return found if op == "regex" else not found
        if op == "exists":
            return (value not in (None, "", [], {})) == arg
        if op == "contains":
            return isinstance(value, (list, tuple)) and arg in value
        if op == "contains_any":
            return isinstance(value, (list, tuple)) and any(a in value for a in arg)
        if op in ("at_least", "at_most"):
            scale = SCALES[self.path]
            if value not in scale:
                return False
            position, bound = scale.index(value), scale.index(arg)
            return position >= bound if op == "at_least" else position <= bound
        return _compare(op, value, arg, now)

    @cached_property
    def text(self) -> str:
        """`describe()`, worked out once (explanations quote it often)."""
        return self.describe()

    def describe(self) -> str:
        """The condition as a rule author wrote it."""
        words = {"eq": "=", "ne": "!=", "in": "in", "not_in": "not in", "regex": "matches", "not_regex":
                 "does not match", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "at_least": "at least",
                 "at_most": "at most", "exists": "exists" if self.arg else "is absent", "contains": "contains",
                 "contains_any": "contains any of"}
        if self.op == "exists":
            return words["exists"]
        arg = f"/{self.arg}/" if self.op in ("regex", "not_regex") else repr(self.arg)
        return f"{words[self.op]} {arg}"


@dataclass(frozen=True)
class AnyOf:
    """`any_of:` — at least one group of conditions holds."""

    groups: tuple[tuple[Condition | AnyOf, ...], ...]


@dataclass(frozen=True)
class PortSelector:
    """How a rule picks ports: from the observation (area, locode, zone_code, gtfs_stop) and/or named ones."""

    match: tuple[str, ...] = PORT_MATCHES[:3]
    fixed: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    ends: tuple[str, ...] = ("departure", "arrival")


@dataclass(frozen=True)
class Overlap:
    """Time overlap between the hazard window and a sailing, with margins."""

    before: timedelta = timedelta(0)
    after: timedelta = timedelta(0)
    open_end: timedelta = timedelta(hours=24)
    compare: str = "crossing"  # crossing: [departure, arrival] meets the window; departure / arrival: that moment


@dataclass(frozen=True)
class Where:
    """The sailing selectors of one rule (all given selectors must agree) and its filters."""

    port: PortSelector | None = None
    route: bool = False
    route_codes: tuple[str, ...] = ()
    vessel: bool = False
    voyage: bool = False
    trip: bool = False
    informed_entities: bool = False
    sailing_code: bool = False
    route_kinds: tuple[str, ...] = ()
    jurisdictions: tuple[str, ...] = ()
    overlap: Overlap | None = None


@dataclass(frozen=True)
class Then:
    """What a rule does to the sailings it selects."""

    kind: str
    cause: str = "weather"
    cause_from: str | None = None
    cause_map: dict[str, str] = field(default_factory=dict)
    delay_minutes: int | None = None
    delay_from_observation: bool = False
    severity: str | None = None


@dataclass(frozen=True)
class Rule:
    """One validated rule."""

    id: str
    description: str
    kind: str | None  # the observation kind `when.kind` names (rules are indexed by it)
    conditions: tuple[Condition | AnyOf, ...]
    where: Where
    then: Then
    notify: dict[str, Any]
    policies: tuple[Policy, ...]
    approval: dict[str, Any]
    citation: str | None
    verification: str | None
    file: str


@dataclass(frozen=True)
class RuleSet:
    """Every rule and policy loaded from the rule folders, and what loading had to say."""

    rules: tuple[Rule, ...]
    policies: dict[str, Policy]
    notes: tuple[str, ...] = ()


# --- loading and validation -----------------------------------------------------------------------------------

_RULE_FIELDS = {"id", "description", "when", "where", "then", "notify", "policy", "approval", "citation",
                "verification"}


def load_rules(directories: list[Path]) -> list[Rule]:
    """Load and validate every *.yaml rule file in the given folders; refuse the whole set on the first error."""
    return list(load_rule_set(directories).rules)


def load_rule_set(directories: list[Path], templates: set[str] | None = None) -> RuleSet:
    """Rules and policies from the folders (later folders may override a shipped policy by its id)."""
    documents = []
    for directory in directories:
        if not Path(directory).is_dir():
            raise RuleError(f"{directory}: rule folder does not exist")
        documents += [(Path(directory), path, _read(path)) for path in sorted(Path(directory).glob("*.yaml"))]
    try:
        policies, notes = _load_policies(documents)
    except MALFORMED as exc:
        raise RuleError(f"{', '.join(map(str, directories))}: a policy is malformed ({_why(exc)})") from None
    if templates is None:
        from notifier.messages import available_templates

        templates = set(available_templates())
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for _, path, document in documents:
        for index, raw in enumerate(document.get("rules", [])):
            try:
                rule = _validate(path, index, raw, policies, templates)
            except MALFORMED as exc:
                raise RuleError(f"{path}: rule #{index + 1} is malformed ({_why(exc)})") from None
            if rule.id in seen:
                raise RuleError(f"{path}: rule '{rule.id}': field 'id': already used in {seen[rule.id]}")
            seen[rule.id] = str(path)
            rules.append(rule)
    return RuleSet(tuple(rules), policies, tuple(notes))


# What a value of the wrong shape makes Python raise deep in validation (a list where a name belongs, a number
# too big for a timedelta, a regex too deep to compile): still the user's file, so still a RuleError.
MALFORMED = (TypeError, ValueError, OverflowError, RecursionError, AttributeError, KeyError, re.error)


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def _read(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read rule file ({exc})") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    except RecursionError:
        raise RuleError(f"{path}: not valid YAML (nested too deeply)") from None
    if document is None:
        return {}
    if not isinstance(document, dict) or set(document) - {"rules", "policies"}:
        raise RuleError(f"{path}: a rule file must be a mapping with a 'rules' and/or 'policies' list")
    for key in ("rules", "policies"):
        if key in document and not isinstance(document[key], list):
            raise RuleError(f"{path}: '{key}' must be a list")
    return document


def _load_policies(documents: list[tuple[Path, Path, dict[str, Any]]]) -> tuple[dict[str, Policy], list[str]]:
    policies: dict[str, Policy] = {}
    folders: dict[str, Path] = {}
    notes = []
    for directory, path, document in documents:
        for index, raw in enumerate(document.get("policies", [])):
            name = raw.get("id", f"#{index + 1}") if isinstance(raw, dict) else f"#{index + 1}"
            try:
                policy = parse_policy(raw, str(path))
            except PolicyError as exc:
                raise RuleError(f"{path}: policy '{name}': {exc}") from None
            if policy.id in policies and folders[policy.id] == directory:
                raise RuleError(f"{path}: policy '{policy.id}': field 'id': already used in "
                                f"{policies[policy.id].file}")
            if policy.id in policies:
                notes.append(f"policy '{policy.id}' from {path} overrides the one in {policies[policy.id].file}")
            policies[policy.id], folders[policy.id] = policy, directory
    return policies, notes


def _validate(path: Path, index: int, raw: Any, policies: dict[str, Policy], templates: set[str]) -> Rule:
    rule_id = raw.get("id", f"#{index + 1}") if isinstance(raw, dict) else f"#{index + 1}"

    def fail(field_name: str, problem: str) -> RuleError:
        return RuleError(f"{path}: rule '{rule_id}': field '{field_name}': {problem}")

    if not isinstance(raw, dict):
        raise fail("-", "each rule must be a mapping")
    for name in ("id", "description", "when", "where", "then"):
        if name not in raw:
            raise fail(name, "is required")
    if not isinstance(raw["description"], str):
        raise fail("description", "must be text")
    unknown = set(raw) - _RULE_FIELDS
    if unknown:
        raise fail(sorted(map(str, unknown))[0], f"is not a rule field (known: {', '.join(sorted(_RULE_FIELDS))})")
    if not isinstance(raw["id"], str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", raw["id"]):
        raise fail("id", "must be lower-case letters, digits, '-', '_' or '.'")
    for name in ("when", "where", "then"):
        if not isinstance(raw[name], dict):
            raise fail(name, "must be a mapping")
    kind, conditions = _when(raw["when"], fail)
    then = _then(raw["then"], fail)
    notify = _notify(raw.get("notify", {}), then.kind, templates, fail)
    chosen = _policy_refs(raw.get("policy", []), policies, fail)
    citation, verification = raw.get("citation"), raw.get("verification")
    if citation is not None and not isinstance(citation, str):
        raise fail("citation", "must be text")
    if verification is not None and verification not in VERIFICATION_LEVELS:
        raise fail("verification", "must be one of P, G, S, U")
    if (citation is None) != (verification is None):
        raise fail("verification" if citation else "citation", "a rule that cites law needs both citation and "
                   "verification")
    if verification == "U" and chosen:
        raise fail("verification", "U (unconfirmed) must not ship binding entitlements; verify it or drop 'policy'")
    return Rule(id=raw["id"], description=str(raw["description"]).strip(), kind=kind, conditions=conditions,
                where=_where(raw["where"], fail), then=then, notify=notify, policies=chosen,
                approval=_approval(raw.get("approval", "auto"), fail), citation=citation,
                verification=verification, file=str(path))


def _when(when: dict[str, Any], fail) -> tuple[str | None, tuple[Condition | AnyOf, ...]]:  # noqa: ANN001
    kind = when.get("kind")
    if kind is not None and kind not in OBSERVATION_KINDS and not (
            isinstance(kind, list) and set(kind) <= set(OBSERVATION_KINDS)):
        raise fail("when.kind", f"must be one of {', '.join(OBSERVATION_KINDS)}")
    return (kind if isinstance(kind, str) else None), _group(when, fail, "when.")


def _group(mapping: dict[str, Any], fail, prefix: str) -> tuple[Condition | AnyOf, ...]:  # noqa: ANN001
    # `any_of` (or `any_of_<name>`, to have several) holds a list of groups; each group is such a mapping again.
    conditions: list[Condition | AnyOf] = []
    for name, condition in mapping.items():
        if name.startswith("any_of"):
            where = f"{prefix}{name}"
            if not isinstance(condition, list) or not condition or not all(isinstance(g, dict) for g in condition):
                raise fail(where, "must be a list of mappings of conditions")
            conditions.append(AnyOf(tuple(_group(group, fail, f"{where}.") for group in condition)))
        else:
            conditions += _conditions(name, condition, fail, prefix)
    return tuple(conditions)


def _conditions(name: str, condition: Any, fail, prefix: str) -> list[Condition]:  # noqa: ANN001
    where = f"{prefix}{name}"
    path = name if name in _OBSERVATION_FIELDS or name.startswith("fields.") else f"fields.{name}"
    if isinstance(condition, list):
        return [Condition(path, "in", tuple(condition))]
    if not isinstance(condition, dict):
        return [Condition(path, "eq", condition)]
    if not condition:
        raise fail(where, "an empty mapping tests nothing")
    found = []
    for op, arg in condition.items():
        if op not in OPERATORS:
            raise fail(f"{where}.{op}", f"unknown operator (known: {', '.join(OPERATORS)})")
        found.append(_condition(path, op, arg, fail, f"{where}.{op}"))
    return found


def _condition(path: str, op: str, arg: Any, fail, where: str) -> Condition:  # noqa: ANN001
    if op in ("regex", "not_regex"):
        try:
            return Condition(path, op, arg, re.compile(str(arg)))
        except re.error as exc:
            raise fail(where, f"not a valid regular expression ({exc})") from None
    if op in ("in", "not_in", "contains_any"):
        if not isinstance(arg, list):
            raise fail(where, "must be a list")
        return Condition(path, op, tuple(arg))
    if op in ("at_least", "at_most"):
        if path not in SCALES:
            raise fail(where, f"only for {', '.join(SCALES)}")
        if arg not in SCALES[path]:
            raise fail(where, f"{arg!r} is not a CAP {path} ({', '.join(SCALES[path][1:])})")
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str, datetime)):
            raise fail(where, "must be a number, an ISO 8601 time, or 'now', 'now+6h', 'now-30m', 'now+2d'")
        if isinstance(arg, str) and _time_argument(arg, datetime.now(UTC)) is None:
            raise fail(where, f"{arg!r} is neither a number nor a time ('now+6h' or ISO 8601 with an offset)")
        if isinstance(arg, datetime) and arg.tzinfo is None:
            raise fail(where, "a time must carry its UTC offset")
    if op == "exists" and not isinstance(arg, bool):
        raise fail(where, "must be true or false")
    return Condition(path, op, arg)


_OBSERVATION_FIELDS = set(Observation.__dataclass_fields__)


def _where(where: dict[str, Any], fail) -> Where:  # noqa: ANN001
    known = set(SELECTORS) | {"route_kind", "jurisdiction", "time_overlap"}
    unknown = set(where) - known
    if unknown:
        raise fail(f"where.{sorted(unknown)[0]}", f"unknown selector (known: {', '.join(sorted(known))})")
    if not any(where.get(s) for s in SELECTORS):
        raise fail("where", f"needs at least one selector: {', '.join(SELECTORS)}")
    for flag in ("vessel", "voyage", "trip", "informed_entities", "sailing_code"):
        if flag in where and not isinstance(where[flag], bool):
            raise fail(f"where.{flag}", "must be true or false")
    route = where.get("route", False)
    route_codes: tuple[str, ...] = ()
    if isinstance(route, dict):
        if set(route) != {"codes"} or not isinstance(route["codes"], list):
            raise fail("where.route", "must be true (the observation's routes) or {codes: [ROUTE, ...]}")
        route_codes, route = tuple(route["codes"]), False
    elif not isinstance(route, bool):
        raise fail("where.route", "must be true (the observation's routes) or {codes: [ROUTE, ...]}")
    kinds = _list_of(where.get("route_kind", []), ("passenger", "cargo"), "where.route_kind", fail)
    jurisdictions = where.get("jurisdiction", [])
    jurisdictions = [jurisdictions] if isinstance(jurisdictions, str) else jurisdictions
    if not isinstance(jurisdictions, list):
        raise fail("where.jurisdiction", "must be a list such as [EU, CN]")
    return Where(port=_port_selector(where.get("port"), fail), route=route, route_codes=route_codes,
                 vessel=where.get("vessel", False), voyage=where.get("voyage", False), trip=where.get("trip", False),
                 informed_entities=where.get("informed_entities", False),
                 sailing_code=where.get("sailing_code", False), route_kinds=kinds,
                 jurisdictions=tuple(jurisdictions), overlap=_overlap(where.get("time_overlap"), fail))


def _list_of(value: Any, allowed: tuple[str, ...], where: str, fail) -> tuple[str, ...]:  # noqa: ANN001
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not set(value) <= set(allowed):
        raise fail(where, f"must be drawn from {', '.join(allowed)}")
    return tuple(value)


def _port_selector(value: Any, fail) -> PortSelector | None:  # noqa: ANN001
    if value is None or value is False:
        return None
    if value is True:
        return PortSelector()
    if isinstance(value, list):
        return PortSelector(match=_list_of(value, PORT_MATCHES, "where.port", fail))
    if not isinstance(value, dict):
        raise fail("where.port", "must be true, a list of match methods, or a mapping")
    unknown = set(value) - {"match", "fixed", "countries", "only", "ends"}
    if unknown:
        raise fail(f"where.port.{sorted(unknown)[0]}", "unknown (known: match, fixed, countries, only, ends)")
    named = bool(value.get("fixed") or value.get("countries"))
    match = _list_of(value.get("match", [] if named else list(PORT_MATCHES[:3])), PORT_MATCHES,
                     "where.port.match", fail)
    lists = {}
    for key in ("fixed", "countries", "only"):
        items = value.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise fail(f"where.port.{key}", "must be a list of codes")
        lists[key] = tuple(items)
    if not match and not named:
        raise fail("where.port", "selects no port: give match, fixed or countries")
    ends = _list_of(value.get("ends", ["departure", "arrival"]), ("departure", "arrival"), "where.port.ends", fail)
    return PortSelector(match=match, ends=ends, **lists)


def _overlap(value: Any, fail) -> Overlap | None:  # noqa: ANN001
    if value is None or value is False:
        return None
    if value is True:
        return Overlap()
    if not isinstance(value, dict):
        raise fail("where.time_overlap", "must be true or a mapping of margins")
    allowed = {"margin_before_minutes", "margin_before_hours", "margin_after_minutes", "margin_after_hours",
               "open_end_hours", "compare"}
    unknown = set(value) - allowed
    if unknown:
        raise fail(f"where.time_overlap.{sorted(unknown)[0]}", f"unknown (known: {', '.join(sorted(allowed))})")
    for key, number in value.items():
        if key != "compare" and (isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0):
            raise fail(f"where.time_overlap.{key}", "must be a number, zero or more")
    compare = value.get("compare", "crossing")
    if compare not in ("crossing", "departure", "arrival"):
        raise fail("where.time_overlap.compare", "must be crossing, departure or arrival")

    def span(name: str) -> timedelta:
        return timedelta(minutes=value.get(f"{name}_minutes", 0)) + timedelta(hours=value.get(f"{name}_hours", 0))

    return Overlap(before=span("margin_before"), after=span("margin_after"),
                   open_end=timedelta(hours=value.get("open_end_hours", 24)), compare=compare)


def _then(then: dict[str, Any], fail) -> Then:  # noqa: ANN001
    unknown = set(then) - {"disruption", "cause", "delay_minutes", "severity"}
    if unknown:
        raise fail(f"then.{sorted(unknown)[0]}", "unknown (known: disruption, cause, delay_minutes, severity)")
    kind = then.get("disruption")
    if kind not in DISRUPTION_KINDS:
        raise fail("then.disruption", f"must be one of {', '.join(DISRUPTION_KINDS)}")
    delay = then.get("delay_minutes")
    if kind == "delayed" and delay is None:
        raise fail("then.delay_minutes", "a delay needs minutes: a number, or 'observation' to take the feed's")
    if delay is not None and delay != "observation" and (isinstance(delay, bool) or not isinstance(delay, int)
                                                         or delay <= 0):
        raise fail("then.delay_minutes", "must be a positive whole number of minutes or 'observation'")
    severity = then.get("severity")
    if severity is not None and severity not in SCALES["severity"]:
        raise fail("then.severity", f"must be a CAP severity ({', '.join(SCALES['severity'][1:])})")
    cause = then.get("cause", "weather")
    cause_from, cause_map = None, {}
    if isinstance(cause, dict):
        if not isinstance(cause.get("from"), str) or not isinstance(cause.get("map", {}), dict):
            raise fail("then.cause", "must be a word, or {from: FIELD, map: {VALUE: cause}, default: cause}")
        cause_from = cause["from"] if cause["from"] in _OBSERVATION_FIELDS or cause["from"].startswith(
            "fields.") else f"fields.{cause['from']}"
        cause_map = {str(k): str(v) for k, v in cause.get("map", {}).items()}
        cause = str(cause.get("default", "operations"))
    elif not isinstance(cause, str):
        raise fail("then.cause", "must be a word such as weather, port_closure, strike, technical, schedule")
    return Then(kind=kind, cause=cause, cause_from=cause_from, cause_map=cause_map,
                delay_minutes=delay if isinstance(delay, int) else None,
                delay_from_observation=delay == "observation", severity=severity)


def _notify(notify: Any, kind: str, templates: set[str], fail) -> dict[str, Any]:  # noqa: ANN001
    if not isinstance(notify, dict):
        raise fail("notify", "must be a mapping (template, channels, audience)")
    unknown = set(notify) - {"template", "channels", "audience"}
    if unknown:
        raise fail(f"notify.{sorted(unknown)[0]}", "unknown (known: template, channels, audience)")
    template = notify.get("template", kind)
    if not isinstance(template, str) or template not in templates:
        raise fail("notify.template", f"no template {template!r} under templates/ "
                   f"(have: {', '.join(sorted(templates))})")
    channels = notify.get("channels", list(CHANNELS))
    if not isinstance(channels, list) or not channels or not set(channels) <= set(CHANNELS):
        raise fail("notify.channels", f"must be a list drawn from {', '.join(CHANNELS)}")
    audience = notify.get("audience", "all")
    if audience not in AUDIENCES:
        raise fail("notify.audience", "must be passengers, shippers or both")
    return {"template": template, "channels": list(channels), "audience": AUDIENCES[audience]}


def _policy_refs(value: Any, policies: dict[str, Policy], fail) -> tuple[Policy, ...]:  # noqa: ANN001
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise fail("policy", "must be a list of policy ids")
    missing = [p for p in value if p not in policies]
    if missing:
        raise fail("policy", f"no policy {missing[0]!r} (defined: {', '.join(sorted(policies)) or 'none'})")
    return tuple(policies[p] for p in value)


def _approval(value: Any, fail) -> dict[str, Any]:  # noqa: ANN001
    if value == "auto":
        return {"mode": "auto"}
    if isinstance(value, dict) and set(value) == {"above_recipients"} and isinstance(value["above_recipients"], int) \
            and not isinstance(value["above_recipients"], bool) and value["above_recipients"] >= 0:
        return {"mode": "above", "above_recipients": value["above_recipients"]}
    raise fail("approval", "must be 'auto' or {above_recipients: N}")


# --- values and times ----------------------------------------------------------------------------------------

def observation_value(observation: Observation, path: str) -> Any:
    """A field of the observation ('event'), or a path into its format-specific `fields` ('fields.a.b')."""
    if not path.startswith("fields."):
        return getattr(observation, path, None)
    value: Any = observation.fields
    for part in path.split(".")[1:]:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _time_argument(text: str, now: datetime) -> datetime | None:
    match = _RELATIVE_TIME.match(text.strip())
    if match:
        sign, amount, unit = match.groups()
        if not sign:
            return now
        delta = timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: int(amount)})
        return now + delta if sign == "+" else now - delta
    return _as_time(text)


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        return moment if moment.tzinfo else None
    return None


def _compare(op: str, value: Any, arg: Any, now: datetime) -> bool:
    tests = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
             "lte": lambda a, b: a <= b}
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and tests[op](value, arg)
    moment = _time_argument(arg, now) if isinstance(arg, str) else _as_time(arg)
    seen = _as_time(value)
    return moment is not None and seen is not None and tests[op](seen, moment)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the network as the evaluator sees it ---------------------------------------------------------------------

@dataclass(frozen=True)
class PortRef:
    """What the evaluator needs to know of a port."""

    id: int
    locode: str
    lat: float
    lon: float
    zone_codes: tuple[str, ...] = ()
    gtfs_stop_id: str | None = None
    country: str = ""
    name: str = ""
    timezone: str = "UTC"


@dataclass(frozen=True)
class SailingRef:
    """What the evaluator needs to know of a sailing."""

    id: int
    code: str
    origin_port_id: int
    destination_port_id: int
    departure: datetime
    arrival: datetime
    route_code: str = ""
    vessel_imo: str | None = None
    voyage: str | None = None
    gtfs_trip_id: str | None = None
    gtfs_route_id: str | None = None
    route_kind: str = "passenger"
    jurisdiction: str = "OTHER"


def normalise_zone(code: str) -> str:
    """'pzz530' -> 'UGC:PZZ530'; 'same:006113' -> 'SAME:006113' (the form the parsers give geocodes in)."""
    name, _, value = code.strip().rpartition(":")
    return f"{(name or 'UGC').upper()}:{value.upper()}"


class _PortIndex:
    """Sailings at one port for one end, sorted by departure (binary search on a time window)."""

    def __init__(self) -> None:
        self.sailings: list[SailingRef] = []
        self.departures: list[datetime] = []

    def add(self, sailing: SailingRef) -> None:
        self.sailings.append(sailing)

    def freeze(self) -> None:
        self.sailings.sort(key=lambda s: (s.departure, s.id))
        self.departures = [s.departure for s in self.sailings]

    def between(self, first: datetime | None, last: datetime | None) -> list[SailingRef]:
        low = bisect_left(self.departures, first) if first else 0
        high = bisect_right(self.departures, last) if last else len(self.sailings)
        return self.sailings[low:high]


class Network:
    """Ports (in an STRtree) and the sailings that can still be disrupted, indexed every way a rule selects them."""

    def __init__(self, ports: list[PortRef], sailings: list[SailingRef]) -> None:
        self.ports = list(ports)
        self.port_by_id = {p.id: p for p in self.ports}
        self.by_locode = {p.locode: p.id for p in self.ports}
        self.by_zone: dict[str, set[int]] = defaultdict(set)
        self.by_stop: dict[str, int] = {}
        self.by_country: dict[str, set[int]] = defaultdict(set)
        for port in self.ports:
            for code in port.zone_codes:
                self.by_zone[normalise_zone(code)].add(port.id)
            if port.gtfs_stop_id:
                self.by_stop[port.gtfs_stop_id] = port.id
            self.by_country[port.country].add(port.id)
        self._tree = STRtree([Point(p.lon, p.lat) for p in self.ports]) if self.ports else None
        self.sailings = list(sailings)
        self.sailing_by_id = {s.id: s for s in self.sailings}
        self._from: dict[int, _PortIndex] = defaultdict(_PortIndex)
        self._to: dict[int, _PortIndex] = defaultdict(_PortIndex)
        self.by_route: dict[str, list[SailingRef]] = defaultdict(list)
        self.by_trip: dict[str, list[SailingRef]] = defaultdict(list)
        self.by_vessel: dict[str, list[SailingRef]] = defaultdict(list)
        self.by_voyage: dict[str, list[SailingRef]] = defaultdict(list)
        self.by_code: dict[str, SailingRef] = {}
        self.longest_crossing = timedelta(0)
        for sailing in self.sailings:
            self._index(sailing)
        for index in (*self._from.values(), *self._to.values()):
            index.freeze()

    def _index(self, sailing: SailingRef) -> None:
        self._from[sailing.origin_port_id].add(sailing)
        self._to[sailing.destination_port_id].add(sailing)
        for key in {sailing.route_code, sailing.gtfs_route_id} - {None, ""}:
            self.by_route[key].append(sailing)
        if sailing.gtfs_trip_id:
            self.by_trip[sailing.gtfs_trip_id].append(sailing)
        if sailing.vessel_imo:
            self.by_vessel[sailing.vessel_imo].append(sailing)
        if sailing.voyage:
            self.by_voyage[sailing.voyage].append(sailing)
        self.by_code[sailing.code] = sailing
        self.longest_crossing = max(self.longest_crossing, sailing.arrival - sailing.departure)

    def ports_in(self, geometry: Any) -> list[int]:
        """Ports inside (or on the edge of) a shapely geometry, through the spatial index."""
        if self._tree is None:
            return []
        return [self.ports[i].id for i in self._tree.query(geometry, predicate="intersects")]

    def ports_in_circle(self, lat: float, lon: float, radius_km: float) -> list[int]:
        """Ports within radius_km (great-circle) of a point: a box query on the index, then the exact distance."""
        if self._tree is None:
            return []
        radius = max(radius_km, MIN_CIRCLE_KM)
        dlat = radius / KM_PER_DEGREE
        dlon = min(180.0, radius / (KM_PER_DEGREE * max(math.cos(math.radians(lat)), 1e-6)))
        found = self._tree.query(box(lon - dlon, lat - dlat, lon + dlon, lat + dlat))
        return [self.ports[i].id for i in found
                if haversine_km(lat, lon, self.ports[i].lat, self.ports[i].lon) <= radius]

    def sailings_at(self, port_ids: set[int] | list[int], ends: tuple[str, ...] = ("departure", "arrival"),
                    first: datetime | None = None, last: datetime | None = None) -> dict[int, SailingRef]:
        """Sailings departing from / arriving at the ports, optionally only those departing within [first, last]."""
        found: dict[int, SailingRef] = {}
        for port_id in port_ids:
            if "departure" in ends and port_id in self._from:
                found.update((s.id, s) for s in self._from[port_id].between(first, last))
            if "arrival" in ends and port_id in self._to:
                found.update((s.id, s) for s in self._to[port_id].between(first, last))
        return found


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


# --- one observation against the network -----------------------------------------------------------------------

@dataclass(frozen=True)
class Impact:
    """A rule's verdict on one sailing: the disruption it should have."""

    sailing_id: int
    kind: str
    cause: str
    severity: str
    rule_id: str
    window_start: datetime | None
    window_end: datetime | None
    delay_minutes: int | None = None
    notify: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    cause_text: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Match:
    """Why a rule did or did not fire for one observation (for `rules test`)."""

    rule_id: str
    matched: bool
    reasons: list[str]
    impacts: list[Impact] = field(default_factory=list)
    near_miss: bool = False  # the observation was of the rule's kind, but something else did not fit
    rule: Rule | None = None


class Scene:
    """One observation as every rule sees it: its ports, windows and geometry, computed once and shared."""

    def __init__(self, observation: Observation, network: Network, now: datetime) -> None:
        self.observation, self.network, self.now = observation, network, now

    @cached_property
    def geometries(self) -> list[tuple[str, Any]]:
        """(label, shapely geometry) for every polygon and GeoJSON area; circles are handled apart."""
        found = []
        for area in self.observation.areas:
            label = area.description[:40] or "area"
            for ring in area.polygons:
                if len(ring) >= 3:
                    found.append((label, _valid(Polygon([(lon, lat) for lat, lon in ring]))))
            if area.geojson:
                try:
                    found.append((label, _valid(shape(area.geojson))))
                except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                    continue  # an unusable geometry selects nothing; its polygons and geocodes still count
        return found

    @cached_property
    def ports_by(self) -> dict[str, dict[int, str]]:
        """For each match method, the ports it finds and the evidence (for the explanation)."""
        network, observation = self.network, self.observation
        area: dict[int, str] = {}
        for label, geometry in self.geometries:
            for port_id in network.ports_in(geometry):
                area.setdefault(port_id, f"polygon of {label!r}")
        for area_entry in observation.areas:
            for lat, lon, radius in area_entry.circles:
                for port_id in network.ports_in_circle(lat, lon, radius):
                    area.setdefault(port_id, f"circle {lat},{lon} {radius} km")
        locode: dict[int, str] = {}
        codes = list(observation.ports) + [c[9:] for a in observation.areas for c in a.geocodes
                                           if c.upper().startswith("UNLOCODE:")]
        for code in codes:
            if code in network.by_locode:
                locode.setdefault(network.by_locode[code], f"UN/LOCODE {code}")
        zone: dict[int, str] = {}
        for area_entry in observation.areas:
            for code in area_entry.geocodes:
                for port_id in network.by_zone.get(normalise_zone(code), ()):
                    zone.setdefault(port_id, f"zone {code}")
        stop: dict[int, str] = {}
        for stop_id in observation.fields.get("stops", []) if observation.kind == "service_alert" else []:
            if stop_id in network.by_stop:
                stop.setdefault(network.by_stop[stop_id], f"GTFS stop {stop_id}")
        return {"area": area, "locode": locode, "zone_code": zone, "gtfs_stop": stop}

    @cached_property
    def windows(self) -> list[tuple[datetime, datetime | None]]:
        """The hazard's active periods (start, end or None for open-ended)."""
        observation = self.observation
        periods = observation.fields.get("active_periods") if observation.kind == "service_alert" else None
        if periods:
            found = []
            for start, end in periods:
                found.append((_as_time(start) or observation.sent or self.now, _as_time(end)))
            return found
        start = observation.onset or observation.effective or observation.sent or self.now
        end = observation.expires
        ends = _as_time(observation.fields.get("ends"))
        if ends and (end is None or ends > end):
            end = ends  # NWS: `expires` is the message's, `ends` the hazard's
        return [(start, end)]

    @cached_property
    def window(self) -> tuple[datetime, datetime | None]:
        """The overall hazard window: the first start to the last end (None when any period is open-ended)."""
        starts = [s for s, _ in self.windows]
        ends = [e for _, e in self.windows]
        return min(starts), (None if None in ends else max(ends))

    @cached_property
    def voyages(self) -> set[str]:
        """Voyage numbers the observation names (DCSA carrier, import and export voyages)."""
        fields = self.observation.fields
        found = set(self.observation.sailings)
        for key in ("carrier_voyage", "import_voyage", "export_voyage", "voyage"):
            value = fields.get(key)
            if isinstance(value, str) and value:
                found |= {part.strip() for part in value.split("/") if part.strip()}
        return found

    @cached_property
    def details(self) -> dict[str, Any]:
        """What a notice may quote from the observation (kept with the disruption). A feed's words reach an SMS
        or email only through here and `_impacts`' cause text, so both make them quotable (messages.quotable)."""
        observation, fields = self.observation, self.observation.fields
        found = {"headline": quotable(observation.headline, QUOTED_MAX_CHARS),
                 "event": quotable(observation.event, 120), "source": observation.source[:120]}
        for key in ("port_call_status", "vessel_name", "delay_reason", "change_remark", "status", "reason",
                    "skipped_stops", "effect"):
            value = fields.get(key)
            if value:
                found[key] = quotable(value, QUOTED_MAX_CHARS) if isinstance(value, str) else value
        if observation.ports:
            found["ports"] = list(observation.ports)[:10]
        return found


def _valid(geometry: Any) -> Any:
    return geometry if geometry.is_valid else make_valid(geometry)


def evaluate(rules: list[Rule] | tuple[Rule, ...], observation: Observation, network: Network,
             now: datetime | None = None, explain: bool = True) -> list[Match]:
    """Every rule's verdict on one observation, with reasons (matched or not)."""
    scene = Scene(observation, network, now or datetime.now(UTC))
    return [evaluate_rule(rule, scene, explain) for rule in rules]


def evaluate_rule(rule: Rule, scene: Scene, explain: bool = True) -> Match:
    """One rule against one observation: which sailings it disrupts, or why it does not fire."""
    observation = scene.observation
    if rule.kind is not None and observation.kind != rule.kind:
        return Match(rule.id, False, [f"when.kind: {observation.kind!r} is not {rule.kind!r}" if explain
                                      else "when.kind: another kind of observation"], rule=rule)
    reasons: list[str] = []
    failed: list[tuple[Condition | AnyOf, str]] = []
    for condition in rule.conditions:
        ok, reason = _check(condition, observation, scene.now, explain)
        if not ok:
            failed.append((condition, reason))
            if not explain:
                break
        elif explain:
            reasons.append(reason)
    if failed:
        # A near miss is one condition away from firing, and that condition is not what kind of hazard it is.
        near = len(failed) == 1 and not _names_hazard(failed[0][0])
        return Match(rule.id, False, reasons + [r for _, r in failed], near_miss=near, rule=rule)
    delay = _delay(rule, observation)
    if rule.then.kind == "delayed" and not delay:
        return Match(rule.id, False, reasons + ["then.delay_minutes: the observation gives no delay"],
                     near_miss=True, rule=rule)
    sailings, why = select_sailings(rule.where, scene, explain)
    reasons += why
    if not sailings:
        return Match(rule.id, False, reasons, near_miss=True, rule=rule)
    impacts = _impacts(rule, scene, sailings, delay)
    reasons.append(f"then: {len(impacts)} sailing(s) {rule.then.kind}"
                   + (f" {delay} min" if rule.then.kind == "delayed" else "") + f" ({impacts[0].cause})")
    return Match(rule.id, True, reasons, impacts, rule=rule)


def _check(condition: Condition | AnyOf, observation: Observation, now: datetime, explain: bool) -> tuple[bool, str]:
    if isinstance(condition, AnyOf):
        for group in condition.groups:
            results = [_check(c, observation, now, explain) for c in group]
            if all(ok for ok, _ in results):
                return True, "when.any_of: " + "; ".join(r for _, r in results)
        return False, "when.any_of: none of these holds: " + _describe(condition).replace(" | ", " -or- ")
    value = observation_value(observation, condition.path)
    ok = condition.holds(value, now)
    if not explain and ok:
        return True, ""
    if ok:
        return True, f"when.{condition.path}: {_short(value)} {condition.text}"
    return False, f"when.{condition.path}: {_short(value)} does not satisfy: {condition.text}"


HAZARD_PATHS = ("kind", "msg_type", "event", "fields.effect", "fields.port_call_status", "fields.schedule_relationship",
                "fields.status")


def _names_hazard(condition: Condition | AnyOf) -> bool:
    if isinstance(condition, Condition):
        return condition.path in HAZARD_PATHS
    return any(_names_hazard(c) for group in condition.groups for c in group)


def _describe(condition: Condition | AnyOf) -> str:
    if isinstance(condition, Condition):
        return f"{condition.path} {condition.describe()}"
    return " | ".join(" and ".join(_describe(c) for c in group) for group in condition.groups)


def _delay(rule: Rule, observation: Observation) -> int | None:
    if rule.then.delay_from_observation:
        value = observation.fields.get("delay_minutes")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None
    return rule.then.delay_minutes


def select_sailings(where: Where, scene: Scene, explain: bool = True) -> tuple[list[SailingRef], list[str]]:
    """The sailings every selector of `where` agrees on, then filtered by route kind, jurisdiction and time."""
    reasons: list[str] = []
    chosen: dict[int, SailingRef] | None = None
    for label, found in _selections(where, scene):
        if found is None:
            return [], reasons + [label]  # the selector found nothing; the label says why
        before = len(found)
        chosen = found if chosen is None else {k: v for k, v in found.items() if k in chosen}
        if explain or not chosen:
            reasons.append(f"where.{label}: {before} sailing(s)" + ("" if len(chosen) == before
                                                                    else f", {len(chosen)} agree with the above"))
        if not chosen:
            return [], reasons
    sailings = _filtered(where, scene, list(chosen.values()), explain, reasons)
    return sorted(sailings, key=lambda s: (s.departure, s.id)), reasons


def _selections(where: Where, scene: Scene):  # noqa: ANN202 - yields (label, sailings or None)
    # Lazily, so a selector that finds nothing spares the work of the ones after it.
    network, observation = scene.network, scene.observation
    if where.trip:
        yield f"trip {_short(observation.sailings)}", _trip_sailings(scene)
    if where.sailing_code:
        yield f"sailing_code {_short(observation.sailings)}", {
            network.by_code[c].id: network.by_code[c] for c in observation.sailings if c in network.by_code}
    if where.vessel:
        imo = str(observation.fields.get("vessel_imo") or "")
        yield f"vessel IMO {imo or '(none)'}", {s.id: s for s in network.by_vessel.get(imo, [])}
    if where.voyage:
        yield f"voyage {', '.join(sorted(scene.voyages)) or '(none)'}", {
            s.id: s for v in scene.voyages for s in network.by_voyage.get(v, [])}
    if where.route or where.route_codes:
        codes = where.route_codes or tuple(observation.routes)
        yield f"route {', '.join(codes) or '(none named)'}", {
            s.id: s for c in codes for s in network.by_route.get(c, [])}
    if where.informed_entities:
        found, label = _informed_sailings(scene)
        yield label, found
    if where.port is not None:
        yield _port_selection(where, scene)


def _port_selection(where: Where, scene: Scene) -> tuple[str, dict[int, SailingRef] | None]:
    port_ids, evidence = _ports(where.port, scene)
    if not port_ids:
        return "where.port: no known port " + ("lies in the alert's area or is named by it" if where.port.match
                                               else "matches the rule's list"), None
    first, last = _departure_bounds(where.overlap, scene) if where.overlap else (None, None)
    found = scene.network.sailings_at(port_ids, where.port.ends, first, last)
    if not found and where.overlap:
        return (f"where.port {evidence}: no sailing there meets {_window_text(scene.window)} "
                f"(margins -{_span(where.overlap.before)} +{_span(where.overlap.after)})"), None
    return f"port {evidence}", found


def _filtered(where: Where, scene: Scene, sailings: list[SailingRef], explain: bool,
              reasons: list[str]) -> list[SailingRef]:
    if where.route_kinds:
        sailings = [s for s in sailings if s.route_kind in where.route_kinds]
        if explain or not sailings:
            reasons.append(f"where.route_kind {'/'.join(where.route_kinds)}: {len(sailings)} sailing(s)")
    if where.jurisdictions:
        sailings = [s for s in sailings if s.jurisdiction in where.jurisdictions]
        if explain or not sailings:
            reasons.append(f"where.jurisdiction {'/'.join(where.jurisdictions)}: {len(sailings)} sailing(s)")
    if where.overlap and sailings:
        kept = [s for s in sailings if _overlaps(s, scene.windows, where.overlap)]
        if explain or not kept:
            reasons.append(f"where.time_overlap: {len(kept)} of {len(sailings)} sailing(s) meet "
                           f"{_window_text(scene.window)} (margins -{_span(where.overlap.before)} "
                           f"+{_span(where.overlap.after)}, {where.overlap.compare})")
        sailings = kept
    return sailings


def _ports(selector: PortSelector, scene: Scene) -> tuple[set[int], str]:
    network = scene.network
    found: dict[int, str] = {}
    for method in selector.match:
        for port_id, why in scene.ports_by[method].items():
            found.setdefault(port_id, why)
    for locode in selector.fixed:
        if locode in network.by_locode:
            found.setdefault(network.by_locode[locode], "named by the rule")
    for country in selector.countries:
        for port_id in network.by_country.get(country, ()):
            found.setdefault(port_id, f"in {country}")
    if selector.only:
        found = {p: w for p, w in found.items() if network.port_by_id[p].locode in selector.only}
    listed = sorted(found, key=lambda p: network.port_by_id[p].locode)
    shown = ", ".join(f"{network.port_by_id[p].locode} ({found[p]})" for p in listed[:6])
    return set(found), shown + (f" and {len(listed) - 6} more" if len(listed) > 6 else "")


def _trip_sailings(scene: Scene) -> dict[int, SailingRef]:
    # A GTFS trip runs every service day: start_date picks the day; without it, the run nearest the feed's time.
    network, observation = scene.network, scene.observation
    start_date = str(observation.fields.get("start_date") or "")
    moment = observation.sent or scene.now
    found: dict[int, SailingRef] = {}
    for trip_id in observation.sailings:
        runs = network.by_trip.get(trip_id, [])
        if not runs:
            continue
        if start_date:
            day = [s for s in runs if s.code == f"{trip_id}@{start_date}"] or [
                s for s in runs if _local_day(s, network) == start_date]
            found.update((s.id, s) for s in day)
        else:
            nearest = min(runs, key=lambda s: abs((s.departure - moment).total_seconds()))
            found[nearest.id] = nearest
    return found


def _local_day(sailing: SailingRef, network: Network) -> str:
    port = network.port_by_id.get(sailing.origin_port_id)
    zone = ZoneInfo(port.timezone) if port and port.timezone else UTC
    return sailing.departure.astimezone(zone).strftime("%Y%m%d")


def _informed_sailings(scene: Scene) -> tuple[dict[int, SailingRef], str]:
    # Each GTFS-RT informed entity is an AND of its fields; the entities together are an OR.
    network, found, labels = scene.network, {}, []
    for selector in scene.observation.fields.get("informed_entities", []):
        sets = []
        if selector.get("trip_id"):
            sets.append({s.id: s for s in network.by_trip.get(selector["trip_id"], [])})
        if selector.get("route_id"):
            sets.append({s.id: s for s in network.by_route.get(selector["route_id"], [])})
        if selector.get("stop_id"):
            port = network.by_stop.get(selector["stop_id"])
            sets.append(network.sailings_at([port]) if port else {})
        if not sets:
            labels.append("agency-wide entity skipped (routes do not record their agency)")
            continue
        matched = sets[0]
        for other in sets[1:]:
            matched = {k: v for k, v in matched.items() if k in other}
        found.update(matched)
        labels.append("+".join(f"{k}={v}" for k, v in selector.items() if k != "agency_id"))
    return found, "informed_entities " + (", ".join(labels) or "(none)")


def _departure_bounds(overlap: Overlap, scene: Scene) -> tuple[datetime | None, datetime | None]:
    # Only sailings departing in this range can meet the window: the index returns just those.
    start = min(s for s, _ in scene.windows)
    ends = [e or s + overlap.open_end for s, e in scene.windows]
    reach_back = overlap.before + (scene.network.longest_crossing if overlap.compare != "departure" else timedelta(0))
    return start - reach_back, max(ends) + overlap.after


def _overlaps(sailing: SailingRef, windows: list[tuple[datetime, datetime | None]], overlap: Overlap) -> bool:
    for start, end in windows:
        low, high = start - overlap.before, (end or start + overlap.open_end) + overlap.after
        if overlap.compare == "departure" and low <= sailing.departure <= high:
            return True
        if overlap.compare == "arrival" and low <= sailing.arrival <= high:
            return True
        if overlap.compare == "crossing" and sailing.departure <= high and sailing.arrival >= low:
            return True
    return False


def _window_text(window: tuple[datetime, datetime | None]) -> str:
    start, end = window
    return f"{start.astimezone(UTC):%Y-%m-%d %H:%M} .. " + (f"{end.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if end
                                                            else "open end")


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h" if minutes and minutes % 60 == 0 else f"{minutes}m"


def _impacts(rule: Rule, scene: Scene, sailings: list[SailingRef], delay: int | None) -> list[Impact]:
    observation = scene.observation
    cause = rule.then.cause
    if rule.then.cause_from:
        cause = rule.then.cause_map.get(str(observation_value(observation, rule.then.cause_from)), cause)
    severity = rule.then.severity or observation.severity or "Severe"
    start, end = scene.window
    notify = dict(rule.notify) | {"approval": rule.approval}
    cause_text = quotable(observation.event or observation.headline, 200)
    policies: dict[str, dict[str, Any]] = {}
    impacts = []
    for sailing in sailings:
        if sailing.jurisdiction not in policies:
            applicable = [p for p in rule.policies if p.covers(sailing.jurisdiction)]
            policies[sailing.jurisdiction] = {
                "policies": [p.to_json() for p in applicable],
                "entitlements": policy_tags(applicable, sailing.jurisdiction, rule.then.kind, cause, delay)}
        impacts.append(Impact(sailing_id=sailing.id, kind=rule.then.kind, cause=cause, severity=severity,
                              rule_id=rule.id, window_start=start, window_end=end, delay_minutes=delay,
                              notify=notify, policy=policies[sailing.jurisdiction], cause_text=cause_text,
                              details=scene.details))
    return impacts


def decisive_impacts(matches: list[Match]) -> list[Impact]:
    """One impact per sailing: the strongest kind any matching rule gives it (the first such rule wins)."""
    best: dict[int, Impact] = {}
    for match in matches:
        for impact in match.impacts:
            current = best.get(impact.sailing_id)
            if current is None or STRENGTH[impact.kind] > STRENGTH[current.kind]:
                best[impact.sailing_id] = impact
    return list(best.values())


# --- explanation (for `notifier rules test`) ------------------------------------------------------------------

@dataclass
class Reach:
    """Who a matched rule would reach: sailings, bookings, recipients, and what they would be offered."""

    sailings: list[str]
    bookings: int = 0
    recipients: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    unreachable: int = 0
    entitlements: list[str] = field(default_factory=list)
    decisive: int = 0  # sailings where this rule's kind is the one customers would hear


def describe_observation(observation: Observation) -> list[str]:
    """Two or three lines saying what an observation is."""
    title = observation.headline or observation.event or observation.external_id
    start, end = observation.onset or observation.effective or observation.sent, observation.expires
    window = (f"{start.astimezone(UTC):%Y-%m-%d %H:%M}" if start else "?") + " .. " + (
        f"{end.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if end else "open end")
    lines = [f"{observation.format} {observation.kind} {title[:90]!r} [{observation.msg_type}, "
             f"{observation.status}, {observation.severity or 'no severity'}] from {observation.source[:60]}",
             f"  id {observation.external_id[:70]}  window {window}"]
    facts = [f"{len(observation.areas)} area(s)"] if observation.areas else []
    if observation.ports:
        facts.append("ports " + ", ".join(observation.ports[:6]))
    if observation.sailings:
        facts.append("sailings/trips " + ", ".join(observation.sailings[:4]))
    if observation.routes:
        facts.append("routes " + ", ".join(observation.routes[:4]))
    for key in ("delay_minutes", "schedule_relationship", "port_call_status", "status", "effect", "vessel_imo"):
        if observation.fields.get(key) not in (None, "", []):
            facts.append(f"{key} {observation.fields[key]}")
    if facts:
        lines.append("  " + "; ".join(facts))
    return lines


def render_explanation(observation: Observation, matches: list[Match], reach: dict[str, Reach],
                       number: int, total: int) -> list[str]:
    """The `rules test` text for one observation: what it is, what fired and why, what nearly did."""
    lines = [f"Observation {number}/{total}: " + describe_observation(observation)[0],
             *describe_observation(observation)[1:]]
    fired = [m for m in matches if m.matched]
    for match in fired:
        where = Path(match.rule.file).name if match.rule else ""
        lines.append(f"  MATCHED {match.rule_id} ({where})")
        lines += [f"    {reason}" for reason in match.reasons]
        found = reach.get(match.rule_id)
        if found:
            lines += _reach_lines(found, match)
    for match in (m for m in matches if m.near_miss and not m.matched):
        lines.append(f"  near miss {match.rule_id}: {match.reasons[-1]}")
    other_kind = sum(1 for m in matches if m.rule is not None and m.rule.kind not in (None, observation.kind))
    other_hazard = sum(1 for m in matches if not m.matched and not m.near_miss) - other_kind
    rest = "; ".join(part for part in (f"{other_kind} rule(s) are for other kinds of observation" if other_kind
                                       else "", f"{other_hazard} test for other hazards or states"
                                       if other_hazard else "") if part)
    lines.append("  no rule matched" + (f" ({rest})" if rest else "") if not fired else (f"  ({rest})" if rest else ""))
    return [line for line in lines if line.strip()]


def _reach_lines(reach: Reach, match: Match) -> list[str]:
    shown = ", ".join(reach.sailings[:8]) + (f" and {len(reach.sailings) - 8} more" if len(reach.sailings) > 8
                                             else "")
    lines = [f"    sailings ({len(reach.sailings)}): {shown}"]
    if reach.decisive < len(reach.sailings):
        lines.append(f"    ({len(reach.sailings) - reach.decisive} of them get a stronger disruption from another "
                     "rule; customers hear that one)")
    channels = ", ".join(f"{c} {n}" for c, n in sorted(reach.by_channel.items()))
    lines.append(f"    would reach {reach.bookings} booking(s), {reach.recipients} recipient(s)"
                 + (f" ({channels})" if channels else "")
                 + (f"; {reach.unreachable} booking(s) lack a usable contact on some channel"
                    if reach.unreachable else ""))
    if reach.entitlements:
        lines.append("    entitlements offered:")
        lines += [f"      {line}" for line in reach.entitlements]
    elif match.rule is not None and not match.rule.policies:
        lines.append("    entitlements: none named by this rule (policy: [])")
    return lines
