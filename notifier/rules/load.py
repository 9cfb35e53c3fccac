"""Loading and validation of rule files: rules/*.yaml -> a RuleSet, or a RuleError naming file, rule and field.

Every check a rule author can fail is here, so evaluation never meets a malformed rule. Policies (what customers
are owed) are read from the same files under `policies:`; a later folder may override a shipped policy by its id.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from notifier.feeds import Observation
from notifier.messages import available_templates
from notifier.rules.conditions import OPERATORS, SCALES, AnyOf, Condition, time_argument
from notifier.rules.entitlements import Policy, PolicyError, parse_policy
from notifier.rules.model import (AUDIENCES, CHANNELS, DISRUPTION_KINDS, OBSERVATION_KINDS, PORT_MATCHES, SELECTORS,
                                  VERIFICATION_LEVELS, Overlap, PortSelector, Rule, RuleError, RuleSet, Then, Where)

# How validation reports a problem: fail(field, problem) -> the RuleError to raise, naming file and rule.
Fail = Callable[[str, str], RuleError]

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


def _when(when: dict[str, Any], fail: Fail) -> tuple[str | None, tuple[Condition | AnyOf, ...]]:
    kind = when.get("kind")
    if kind is not None and kind not in OBSERVATION_KINDS and not (
            isinstance(kind, list) and set(kind) <= set(OBSERVATION_KINDS)):
        raise fail("when.kind", f"must be one of {', '.join(OBSERVATION_KINDS)}")
    return (kind if isinstance(kind, str) else None), _group(when, fail, "when.")


def _group(mapping: dict[str, Any], fail: Fail, prefix: str) -> tuple[Condition | AnyOf, ...]:
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


def _conditions(name: str, condition: Any, fail: Fail, prefix: str) -> list[Condition]:
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


def _condition(path: str, op: str, arg: Any, fail: Fail, where: str) -> Condition:
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
        if isinstance(arg, str) and time_argument(arg, datetime.now(UTC)) is None:
            raise fail(where, f"{arg!r} is neither a number nor a time ('now+6h' or ISO 8601 with an offset)")
        if isinstance(arg, datetime) and arg.tzinfo is None:
            raise fail(where, "a time must carry its UTC offset")
    if op == "exists" and not isinstance(arg, bool):
        raise fail(where, "must be true or false")
    return Condition(path, op, arg)


_OBSERVATION_FIELDS = set(Observation.__dataclass_fields__)


def _where(where: dict[str, Any], fail: Fail) -> Where:
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


def _list_of(value: Any, allowed: tuple[str, ...], where: str, fail: Fail) -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not set(value) <= set(allowed):
        raise fail(where, f"must be drawn from {', '.join(allowed)}")
    return tuple(value)


def _port_selector(value: Any, fail: Fail) -> PortSelector | None:
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


def _overlap(value: Any, fail: Fail) -> Overlap | None:
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


def _then(then: dict[str, Any], fail: Fail) -> Then:
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


def _notify(notify: Any, kind: str, templates: set[str], fail: Fail) -> dict[str, Any]:
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


def _policy_refs(value: Any, policies: dict[str, Policy], fail: Fail) -> tuple[Policy, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise fail("policy", "must be a list of policy ids")
    missing = [p for p in value if p not in policies]
    if missing:
        raise fail("policy", f"no policy {missing[0]!r} (defined: {', '.join(sorted(policies)) or 'none'})")
    return tuple(policies[p] for p in value)


def _approval(value: Any, fail: Fail) -> dict[str, Any]:
    if value == "auto":
        return {"mode": "auto"}
    if isinstance(value, dict) and set(value) == {"above_recipients"} and isinstance(value["above_recipients"], int) \
            and not isinstance(value["above_recipients"], bool) and value["above_recipients"] >= 0:
        return {"mode": "above", "above_recipients": value["above_recipients"]}
    raise fail("approval", "must be 'auto' or {above_recipients: N}")
