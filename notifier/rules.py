"""Rules: load rules/*.yaml, validate them, and evaluate observations into impacts on sailings.

A rule says `when` an observation counts (its kind and field conditions), `where` it bites (area contains a port,
UN/LOCODE named, time overlap with a sailing), and `then` what happens to the sailings it selects. Rules are data:
conditions are a fixed vocabulary (equals, one-of, regex, numeric comparisons); nothing is ever `eval`ed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from shapely import STRtree
from shapely.geometry import Point, Polygon, shape

from . import NotifierError
from .feeds import Observation

DISRUPTION_KINDS = {"cancelled", "delayed", "port_omitted", "advisory"}
CHANNELS = {"sms", "email"}
AUDIENCES = {"passengers", "shippers", "all"}
VERIFICATION_LEVELS = {"P", "G", "S", "U"}
KM_PER_DEGREE = 111.32


class RuleError(NotifierError):
    """A rule file that cannot be used; the message names the file, the rule and the field."""

    exit_code = 2


@dataclass(frozen=True)
class Rule:
    """One validated rule."""

    id: str
    description: str
    when: dict[str, Any]
    where: dict[str, Any]
    then: dict[str, Any]
    notify: dict[str, Any]
    policy: list[str]
    approval: dict[str, Any]
    citation: str | None
    verification: str | None
    file: str


@dataclass(frozen=True)
class PortRef:
    """What the evaluator needs to know of a port."""

    id: int
    locode: str
    lat: float
    lon: float
    zone_codes: tuple[str, ...] = ()


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
    policy: tuple[str, ...] = ()
    cause_text: str = ""


@dataclass
class Match:
    """Why a rule did or did not fire for one observation (for `rules test`)."""

    rule_id: str
    matched: bool
    reasons: list[str]
    impacts: list[Impact] = field(default_factory=list)


# --- loading and validation -----------------------------------------------------------------------------------

_REQUIRED = ("id", "description", "when", "where", "then", "notify")
_KNOWN = set(_REQUIRED) | {"policy", "approval", "citation", "verification"}


def load_rules(directories: list[Path]) -> list[Rule]:
    """Load and validate every *.yaml rule file in the given folders; refuse the whole set on the first error."""
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for directory in directories:
        if not Path(directory).is_dir():
            raise RuleError(f"{directory}: rule folder does not exist")
        for path in sorted(Path(directory).glob("*.yaml")):
            for rule in load_rule_file(path):
                if rule.id in seen:
                    raise RuleError(f"{path}: rule '{rule.id}': id already used in {seen[rule.id]}")
                seen[rule.id] = str(path)
                rules.append(rule)
    return rules


def load_rule_file(path: Path) -> list[Rule]:
    """Parse one YAML rule file into validated rules."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read rule file ({exc})") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise RuleError(f"{path}: a rule file must be a mapping with a 'rules' list")
    return [_validate(path, index, raw) for index, raw in enumerate(document["rules"])]


def _validate(path: Path, index: int, raw: Any) -> Rule:
    def fail(field_name: str, problem: str) -> RuleError:
        rule_id = raw.get("id", f"#{index + 1}") if isinstance(raw, dict) else f"#{index + 1}"
        return RuleError(f"{path}: rule '{rule_id}': field '{field_name}': {problem}")

    if not isinstance(raw, dict):
        raise fail("-", "each rule must be a mapping")
    for name in _REQUIRED:
        if name not in raw:
            raise fail(name, "is required")
    unknown = set(raw) - _KNOWN
    if unknown:
        raise fail(sorted(unknown)[0], "is not a rule field")
    if not isinstance(raw["id"], str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", raw["id"]):
        raise fail("id", "must be lower-case letters, digits, '-', '_' or '.'")
    for name in ("when", "where", "then", "notify"):
        if not isinstance(raw[name], dict):
            raise fail(name, "must be a mapping")
    _validate_when(raw["when"], fail)
    then = raw["then"]
    if then.get("disruption") not in DISRUPTION_KINDS:
        raise fail("then.disruption", f"must be one of {', '.join(sorted(DISRUPTION_KINDS))}")
    if then["disruption"] == "delayed" and not isinstance(then.get("delay_minutes", 0), int):
        raise fail("then.delay_minutes", "must be a whole number of minutes")
    notify = raw["notify"]
    if not isinstance(notify.get("template"), str):
        raise fail("notify.template", "is required (a template name under templates/)")
    channels = notify.get("channels", ["sms", "email"])
    if not isinstance(channels, list) or not set(channels) <= CHANNELS:
        raise fail("notify.channels", f"must be a list drawn from {', '.join(sorted(CHANNELS))}")
    if notify.get("audience", "all") not in AUDIENCES:
        raise fail("notify.audience", f"must be one of {', '.join(sorted(AUDIENCES))}")
    approval = _approval(raw.get("approval", "auto"), fail)
    policy = raw.get("policy", [])
    if not isinstance(policy, list) or not all(isinstance(p, str) for p in policy):
        raise fail("policy", "must be a list of entitlement names")
    verification = raw.get("verification")
    if verification is not None and verification not in VERIFICATION_LEVELS:
        raise fail("verification", "must be one of P, G, S, U")
    return Rule(id=raw["id"], description=str(raw["description"]), when=raw["when"], where=raw["where"],
                then=then, notify={"template": notify["template"], "channels": channels,
                                   "audience": notify.get("audience", "all")},
                policy=policy, approval=approval, citation=raw.get("citation"), verification=verification,
                file=str(path))


def _validate_when(when: dict[str, Any], fail) -> None:  # noqa: ANN001
    for name, condition in when.items():
        if isinstance(condition, dict):
            operators = set(condition) - {"regex", "in", "gte", "lte", "gt", "lt", "eq"}
            if operators:
                raise fail(f"when.{name}", f"unknown operator '{sorted(operators)[0]}'")
            if "regex" in condition:
                try:
                    re.compile(condition["regex"])
                except re.error as exc:
                    raise fail(f"when.{name}.regex", f"not a valid regular expression ({exc})") from None


def _approval(value: Any, fail) -> dict[str, Any]:  # noqa: ANN001
    if value == "auto":
        return {"mode": "auto"}
    if isinstance(value, dict) and isinstance(value.get("above_recipients"), int):
        return {"mode": "above", "above_recipients": value["above_recipients"]}
    raise fail("approval", "must be 'auto' or {above_recipients: N}")


# --- evaluation ------------------------------------------------------------------------------------------------

def condition_holds(value: Any, condition: Any) -> bool:
    """One `when` condition against one observation value."""
    if isinstance(condition, list):
        return value in condition
    if isinstance(condition, dict):
        checks = []
        if "regex" in condition:
            checks.append(value is not None and re.search(condition["regex"], str(value)) is not None)
        if "in" in condition:
            checks.append(value in condition["in"])
        if "eq" in condition:
            checks.append(value == condition["eq"])
        for op, test in (("gte", lambda a, b: a >= b), ("lte", lambda a, b: a <= b),
                         ("gt", lambda a, b: a > b), ("lt", lambda a, b: a < b)):
            if op in condition:
                checks.append(isinstance(value, (int, float)) and test(value, condition[op]))
        return all(checks)
    return value == condition


def observation_value(observation: Observation, name: str) -> Any:
    """A field of the observation, or of its format-specific `fields`."""
    if hasattr(observation, name):
        return getattr(observation, name)
    return observation.fields.get(name)


class Network:
    """Ports (spatially indexed) and sailings, as the evaluator sees them."""

    def __init__(self, ports: list[PortRef], sailings: list[SailingRef]) -> None:
        self.ports = ports
        self.ports_by_locode = {p.locode: p for p in ports}
        self.sailings = sailings
        self._tree = STRtree([Point(p.lon, p.lat) for p in ports]) if ports else None
        self._sailings_by_port: dict[int, list[SailingRef]] = {}
        for sailing in sailings:
            self._sailings_by_port.setdefault(sailing.origin_port_id, []).append(sailing)
            if sailing.destination_port_id != sailing.origin_port_id:
                self._sailings_by_port.setdefault(sailing.destination_port_id, []).append(sailing)

    def ports_in_areas(self, observation: Observation) -> set[int]:
        """Ports inside any polygon or circle of the observation, or named by UN/LOCODE or zone geocode."""
        found: set[int] = set()
        for locode in observation.ports:
            if locode in self.ports_by_locode:
                found.add(self.ports_by_locode[locode].id)
        for area in observation.areas:
            for geometry in _area_geometries(area):
                found |= self._ports_within(geometry)
            for code in area.geocodes:
                if code.startswith("UNLOCODE:") and code[9:] in self.ports_by_locode:
                    found.add(self.ports_by_locode[code[9:]].id)
                found |= {p.id for p in self.ports if code in p.zone_codes}
        return found

    def _ports_within(self, geometry) -> set[int]:  # noqa: ANN001
        if self._tree is None:
            return set()
        return {self.ports[i].id for i in self._tree.query(geometry, predicate="intersects")}

    def sailings_at(self, port_ids: set[int]) -> list[SailingRef]:
        """Sailings departing from or arriving at any of the ports."""
        seen: dict[int, SailingRef] = {}
        for port_id in port_ids:
            for sailing in self._sailings_by_port.get(port_id, []):
                seen[sailing.id] = sailing
        return sorted(seen.values(), key=lambda s: s.departure)


def _area_geometries(area) -> list:  # noqa: ANN001
    geometries = []
    for ring in area.polygons:
        polygon = Polygon([(lon, lat) for lat, lon in ring])
        geometries.append(polygon if polygon.is_valid else polygon.buffer(0))
    for lat, lon, radius_km in area.circles:
        # Degrees of longitude shrink with latitude; a small-angle ellipse is accurate enough for port lookups.
        radius_deg = max(radius_km, 0.5) / KM_PER_DEGREE
        geometries.append(Point(lon, lat).buffer(radius_deg))
    if area.geojson:
        try:
            geometries.append(shape(area.geojson))
        except (ValueError, TypeError, AttributeError, KeyError):
            pass  # a malformed geometry selects nothing; the feed parser already validated what it could
    return geometries


def evaluate(rules: list[Rule], observation: Observation, network: Network) -> list[Match]:
    """Every rule's verdict on one observation, with reasons (matched or not)."""
    return [evaluate_rule(rule, observation, network) for rule in rules]


def evaluate_rule(rule: Rule, observation: Observation, network: Network) -> Match:
    """One rule against one observation: which sailings it disrupts, or why it does not fire."""
    reasons = []
    for name, condition in rule.when.items():
        value = observation_value(observation, name)
        if not condition_holds(value, condition):
            return Match(rule.id, False, [f"when.{name}: {value!r} does not satisfy {condition!r}"])
        reasons.append(f"when.{name}: {value!r} satisfies {condition!r}")
    port_ids = network.ports_in_areas(observation) if rule.where.get("area_contains_port", True) else set()
    if not port_ids:
        return Match(rule.id, False, reasons + ["where: no known port lies in the alert's area"])
    locodes = sorted(p.locode for p in network.ports if p.id in port_ids)
    reasons.append(f"where: area contains {', '.join(locodes)}")
    start, end = observation.window
    overlap = rule.where.get("time_overlap", {})
    before = timedelta(minutes=int(overlap.get("margin_before_minutes", 0)))
    after = timedelta(minutes=int(overlap.get("margin_after_minutes", 0)))
    sailings = [s for s in network.sailings_at(port_ids) if _overlaps(s, start, end, before, after)]
    if not sailings:
        return Match(rule.id, False, reasons + ["where: no sailing at those ports overlaps the hazard window"])
    impacts = [_impact(rule, observation, sailing, start, end) for sailing in sailings]
    return Match(rule.id, True, reasons + [f"then: {len(impacts)} sailing(s) {rule.then['disruption']}"], impacts)


def _overlaps(sailing: SailingRef, start: datetime | None, end: datetime | None,
              before: timedelta, after: timedelta) -> bool:
    if start is None:
        return False
    window_end = end if end is not None else start + timedelta(hours=24)
    return sailing.departure <= window_end + after and sailing.arrival >= start - before


def _impact(rule: Rule, observation: Observation, sailing: SailingRef, start: datetime | None,
            end: datetime | None) -> Impact:
    return Impact(sailing_id=sailing.id, kind=rule.then["disruption"], cause=rule.then.get("cause", "weather"),
                  severity=observation.severity or rule.then.get("severity", "Severe"), rule_id=rule.id,
                  window_start=start, window_end=end, delay_minutes=rule.then.get("delay_minutes"),
                  notify=rule.notify | {"approval": rule.approval}, policy=tuple(rule.policy),
                  cause_text=observation.event)
