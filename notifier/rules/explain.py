"""Explanation for `notifier rules test`: what an observation is, which rules fired and why, which nearly did,
and whom a matched rule would reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from notifier.feeds import Observation
from notifier.rules.evaluate import Match
from notifier.rules.times import utc_minute


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
    window = (utc_minute(start) if start else "?") + " .. " + (f"{utc_minute(end)} UTC" if end else "open end")
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
