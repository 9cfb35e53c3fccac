"""Evaluation: every rule's verdict on one observation (matched or not, and why), the impacts on sailings a
matching rule gives, and the one decisive impact per sailing when several rules match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from notifier.feeds import Observation
from notifier.messages import quotable
from notifier.rules.conditions import AnyOf, Condition, check_condition, names_hazard, observation_value
from notifier.rules.entitlements import policy_tags
from notifier.rules.model import STRENGTH, Impact, Rule
from notifier.rules.network import Network, SailingRef
from notifier.rules.scene import Scene
from notifier.rules.selection import select_sailings


@dataclass
class Match:
    """Why a rule did or did not fire for one observation (for `rules test`)."""

    rule_id: str
    matched: bool
    reasons: list[str]
    impacts: list[Impact] = field(default_factory=list)
    near_miss: bool = False  # the observation was of the rule's kind, but something else did not fit
    rule: Rule | None = None


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
        ok, reason = check_condition(condition, observation, scene.now, explain)
        if not ok:
            failed.append((condition, reason))
            if not explain:
                break
        elif explain:
            reasons.append(reason)
    if failed:
        # A near miss is one condition away from firing, and that condition is not what kind of hazard it is.
        near = len(failed) == 1 and not names_hazard(failed[0][0])
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


def _delay(rule: Rule, observation: Observation) -> int | None:
    if rule.then.delay_from_observation:
        value = observation.fields.get("delay_minutes")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None
    return rule.then.delay_minutes


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
