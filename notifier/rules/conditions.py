"""Conditions: the fixed vocabulary a rule's `when:` tests an observation with, and how each test is decided.

Equality, sets, regex, numeric and time comparison (ISO 8601 or 'now+6h'), ordered CAP scales, presence and list
membership; nothing is ever `eval`ed. `check_condition` decides one condition (or an `any_of` group) and says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from notifier.feeds import Observation
from notifier.rules.times import shifted

# CAP's ordered vocabularies, for `at_least` / `at_most`.
SCALES = {"severity": ("Unknown", "Minor", "Moderate", "Severe", "Extreme"),
          "urgency": ("Unknown", "Past", "Future", "Expected", "Immediate"),
          "certainty": ("Unknown", "Unlikely", "Possible", "Likely", "Observed")}
OPERATORS = ("eq", "ne", "in", "not_in", "regex", "not_regex", "gt", "gte", "lt", "lte", "at_least", "at_most",
             "exists", "contains", "contains_any")
_RELATIVE_TIME = re.compile(r"now\s*(?:([+-])\s*(\d+)\s*([mhd]))?\Z")


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


def time_argument(text: str, now: datetime) -> datetime | None:
    """A time a rule names: 'now', 'now+6h', 'now-30m', 'now+2d' or ISO 8601 with an offset; None if it is neither."""
    match = _RELATIVE_TIME.match(text.strip())
    if match:
        sign, amount, unit = match.groups()
        if not sign:
            return now
        delta = timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: int(amount)})
        return shifted(now, delta if sign == "+" else -delta)
    return as_time(text)


def as_time(value: Any) -> datetime | None:
    """A feed value as an aware datetime, or None: a time without its UTC offset is not guessed."""
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
    moment = time_argument(arg, now) if isinstance(arg, str) else as_time(arg)
    seen = as_time(value)
    return moment is not None and seen is not None and tests[op](seen, moment)


def short_repr(value: Any) -> str:
    """A value as an explanation quotes it: its repr, cut to 80 characters so one line stays one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_condition(condition: Condition | AnyOf, observation: Observation, now: datetime,
                    explain: bool) -> tuple[bool, str]:
    """Whether a condition (or an `any_of` group) holds, and the reason `rules test` shows (only when explaining)."""
    if isinstance(condition, AnyOf):
        for group in condition.groups:
            results = [check_condition(c, observation, now, explain) for c in group]
            if all(ok for ok, _ in results):
                return True, "when.any_of: " + "; ".join(r for _, r in results)
        return False, "when.any_of: none of these holds: " + _describe(condition).replace(" | ", " -or- ")
    value = observation_value(observation, condition.path)
    ok = condition.holds(value, now)
    if not explain and ok:
        return True, ""
    if ok:
        return True, f"when.{condition.path}: {short_repr(value)} {condition.text}"
    return False, f"when.{condition.path}: {short_repr(value)} does not satisfy: {condition.text}"


# The fields that say what kind of hazard or state an observation is (a near miss is never one of these).
HAZARD_PATHS = ("kind", "msg_type", "event", "fields.effect", "fields.port_call_status", "fields.schedule_relationship",
                "fields.status", "fields.warning_code")


def names_hazard(condition: Condition | AnyOf) -> bool:
    """True when the condition tests what kind of hazard it is, so failing it is no near miss."""
    if isinstance(condition, Condition):
        return condition.path in HAZARD_PATHS
    return any(names_hazard(c) for group in condition.groups for c in group)


def _describe(condition: Condition | AnyOf) -> str:
    if isinstance(condition, Condition):
        return f"{condition.path} {condition.describe()}"
    return " | ".join(" and ".join(_describe(c) for c in group) for group in condition.groups)
