"""The rule model: what a validated rule file holds (`Rule`, its `Where` and `Then`) and what a rule decides for
one sailing (`Impact`). Plain frozen data; loading builds it (rules.load), evaluation reads it (rules.evaluate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from notifier.errors import NotifierError, escape_unprintable
from notifier.rules.conditions import AnyOf, Condition
from notifier.rules.entitlements import Policy

DISRUPTION_KINDS = ("cancelled", "delayed", "port_omitted", "advisory")
# Higher wins: a cancellation supersedes a port omission, which supersedes a delay, which supersedes an advisory.
STRENGTH = {"advisory": 0, "delayed": 1, "port_omitted": 2, "cancelled": 3}
CHANNELS = ("sms", "email")
AUDIENCES = {"passengers": "passengers", "shippers": "shippers", "all": "all", "both": "all"}
VERIFICATION_LEVELS = ("P", "G", "S", "U")
OBSERVATION_KINDS = ("weather_alert", "trip_update", "service_alert", "port_call", "port_status")
PORT_MATCHES = ("area", "locode", "zone_code", "gtfs_stop")
SELECTORS = ("port", "route", "vessel", "voyage", "trip", "informed_entities", "sailing_code")


class RuleError(NotifierError):
    """A rule file that cannot be used; the message names the file, the rule and the field."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Messages quote ids, keys and values from the file, which may hold line breaks (a quoted YAML id can):
        # shown escaped, as feed errors are, so the error stays one line.
        super().__init__(escape_unprintable(message))


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
