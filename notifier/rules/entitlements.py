"""What a disrupted customer is owed: EU Regulation 1177/2010, China, Hong Kong / Macau practice, and cargo options.

The law is data: `policies:` in rules/*.yaml name each grant with its citation and verification level
(POLICIES.md: P legal text, G official guidance, S secondary source, U unconfirmed). This module knows what each
grant *means* — when it is triggered, what it is worth, how it is told to a customer — and keeps the regulatory
clock (EU Art 16(1): tell passengers no later than 30 minutes after the scheduled departure).

Money is Decimal throughout, rounded half-up to the cent only at the end.

One piece, past 500 lines: each grant's trigger, value and wording belong together, so a change to what the law
owes is made in one place and read in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from notifier.store.models import Booking, Disruption, Notification, Route, Sailing, utcnow
from notifier.store.status import CANCELLED, SUPERSEDED

DISRUPTING_KINDS = ("cancelled", "delayed", "port_omitted", "advisory")
BOOKING_KINDS = ("passenger", "cargo")
VERIFICATION_LEVELS = ("P", "G", "S", "U")
CENT = Decimal("0.01")

# EU 1177/2010 Art 19(1): (longest scheduled journey of the band, arrival delay that triggers 25 %).
# Art 19(2): 50 % when the delay *exceeds* double the threshold.
EU_ART19_BANDS: tuple[tuple[timedelta | None, timedelta], ...] = (
    (timedelta(hours=4), timedelta(hours=1)),
    (timedelta(hours=8), timedelta(hours=2)),
    (timedelta(hours=24), timedelta(hours=3)),
    (None, timedelta(hours=6)),
)
# Art 19(5): a carrier may set a minimum payout, "not exceed[ing] EUR 6".
EU_MAX_MINIMUM_PAYOUT = Decimal("6.00")
EU_INFORMATION_MINUTES = 30
# EU notices whose Art 16(1) deadline is running go ahead of every other notice in the outbox (lower = sooner).
EU_PRIORITY_BAND = 10**10


class PolicyError(ValueError):
    """A policy entry that cannot be used; rules.py turns it into a RuleError naming file, policy and field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field '{field_name}': {problem}")
        self.field_name, self.problem = field_name, problem


# --- the grant vocabulary --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GrantKind:
    """What one kind of grant means: the parameters it takes, the tags planning reads, and its wording."""

    params: dict[str, type]
    tags: tuple[str, ...]
    customer_facing: bool = True


GRANT_KINDS: dict[str, GrantKind] = {
    # EU 1177/2010
    "information": GrantKind({"deadline_minutes": int}, ("information",), customer_facing=False),
    "refreshments": GrantKind({}, ("refreshments",)),
    "accommodation": GrantKind({"cap_per_night": Decimal, "currency": str, "max_nights": int}, ("accommodation",)),
    "reroute_or_refund": GrantKind({"refund_within_days": int}, ("rebook", "refund_full")),
    "compensation": GrantKind({"table": str, "minimum_payout": Decimal, "paid_within_days": int},
                              ("compensation",)),
    "rights_information": GrantKind({}, ("rights_information",)),
    # China
    "rebook_or_refund": GrantKind({}, ("rebook", "refund_full")),
    "no_refund_fee": GrantKind({}, ("no_refund_fee",)),
    "ticket_valid_after_resumption": GrantKind({"hours": int}, ("ticket_valid_after_resumption",)),
    "do_not_come_to_port": GrantKind({}, ("do_not_come_to_port",)),
    "priority_rebooking": GrantKind({}, ("rebook", "priority_rebooking")),
    # Hong Kong / Macau operators
    "refund_or_change": GrantKind({}, ("rebook", "refund_full")),
    # cargo
    "cargo_revised_schedule": GrantKind({}, ("cargo_revised_schedule",)),
    "cargo_roll": GrantKind({"window_days": int}, ("cargo_roll",)),
    "cargo_change_destination": GrantKind({}, ("cargo_change_destination",)),
    "cargo_cancel_without_fee": GrantKind({}, ("cargo_cancel_without_fee", "refund_full")),
}
_GRANT_KEYS = {"id", "grant", "cite", "kinds", "causes", "exempt_causes", "delay_over_minutes", "bookings"}


@dataclass(frozen=True)
class Grant:
    """One thing a policy grants, and when."""

    id: str
    grant: str
    cite: str
    kinds: tuple[str, ...]
    causes: tuple[str, ...] = ()  # empty: any cause
    exempt_causes: tuple[str, ...] = ()  # EU Art 20: not owed when the disruption has one of these causes
    delay_over_minutes: int | None = None  # a delay must exceed this (a cancellation always qualifies)
    bookings: tuple[str, ...] = BOOKING_KINDS
    params: dict[str, Any] = field(default_factory=dict)

    def triggered(self, kind: str, cause: str, delay_minutes: int | None) -> bool:
        """True when a disruption of this kind, cause and delay sets this grant off (exemptions aside)."""
        if kind not in self.kinds or (self.causes and cause not in self.causes):
            return False
        if self.delay_over_minutes is not None and kind == "delayed":
            return (delay_minutes or 0) > self.delay_over_minutes
        return True

    def exempt(self, cause: str) -> bool:
        """True when the cause removes this grant (EU Art 20(3)/(4): weather endangering safe operation)."""
        return cause in self.exempt_causes


@dataclass(frozen=True)
class Policy:
    """A named set of grants with its legal source: EU 1177/2010, a Chinese port's ticket rules, cargo terms."""

    id: str
    description: str
    jurisdictions: tuple[str, ...]  # route jurisdictions it covers; "*" for all
    citation: str
    verification: str
    grants: tuple[Grant, ...]
    file: str = ""

    def covers(self, jurisdiction: str) -> bool:
        """True when the policy applies to sailings of this route jurisdiction."""
        return "*" in self.jurisdictions or jurisdiction in self.jurisdictions

    def to_json(self) -> dict[str, Any]:
        """The policy as stored with a disruption, so a notice tells what applied when it was decided."""
        return {"id": self.id, "citation": self.citation, "verification": self.verification,
                "grants": [{"id": g.id, "grant": g.grant, "cite": g.cite, "kinds": list(g.kinds),
                            "causes": list(g.causes), "exempt_causes": list(g.exempt_causes),
                            "delay_over_minutes": g.delay_over_minutes, "bookings": list(g.bookings),
                            "params": {k: str(v) if isinstance(v, Decimal) else v for k, v in g.params.items()}}
                           for g in self.grants]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        """Rebuild a policy stored by `to_json`."""
        grants = []
        for g in data.get("grants", []):
            kind = GRANT_KINDS.get(g["grant"])
            params = {k: (Decimal(v) if kind and kind.params.get(k) is Decimal else v)
                      for k, v in g.get("params", {}).items()}
            grants.append(Grant(id=g["id"], grant=g["grant"], cite=g.get("cite", ""), kinds=tuple(g["kinds"]),
                                causes=tuple(g.get("causes", ())), exempt_causes=tuple(g.get("exempt_causes", ())),
                                delay_over_minutes=g.get("delay_over_minutes"),
                                bookings=tuple(g.get("bookings", BOOKING_KINDS)), params=params))
        return cls(id=data["id"], description="", jurisdictions=("*",), citation=data.get("citation", ""),
                   verification=data.get("verification", ""), grants=tuple(grants))


def parse_policy(raw: Any, file: str = "") -> Policy:
    """Validate one `policies:` entry; a PolicyError names the field that is wrong."""
    if not isinstance(raw, dict):
        raise PolicyError("-", "each policy must be a mapping")
    for name in ("id", "description", "applies_to", "citation", "verification", "grants"):
        if name not in raw:
            raise PolicyError(name, "is required")
    unknown = set(raw) - {"id", "description", "applies_to", "citation", "verification", "grants", "note"}
    if unknown:
        raise PolicyError(sorted(unknown)[0], "is not a policy field")
    if raw["verification"] not in VERIFICATION_LEVELS:
        raise PolicyError("verification", "must be one of P, G, S, U")
    if raw["verification"] == "U":
        raise PolicyError("verification", "U (unconfirmed) must not ship as binding: verify it first")
    applies = raw["applies_to"]
    if not isinstance(applies, dict) or not isinstance(applies.get("jurisdictions"), list) or not all(
            isinstance(j, str) for j in applies["jurisdictions"]):
        raise PolicyError("applies_to.jurisdictions", "must be a list such as [EU] or ['*']")
    if not isinstance(raw["grants"], list) or not raw["grants"]:
        raise PolicyError("grants", "must be a non-empty list")
    grants = tuple(_parse_grant(entry, index) for index, entry in enumerate(raw["grants"]))
    return Policy(id=str(raw["id"]), description=str(raw["description"]),
                  jurisdictions=tuple(applies["jurisdictions"]), citation=str(raw["citation"]),
                  verification=raw["verification"], grants=grants, file=file)


def _parse_grant(raw: Any, index: int) -> Grant:
    where = f"grants[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(where, "must be a mapping with id, grant and cite")
    where = f"grants.{raw.get('id', index)}"
    kind = GRANT_KINDS.get(raw.get("grant"))
    if kind is None:
        raise PolicyError(f"{where}.grant", f"must be one of {', '.join(sorted(GRANT_KINDS))}")
    for name in ("id", "cite"):
        if not isinstance(raw.get(name), str):
            raise PolicyError(f"{where}.{name}", "is required (text)")
    unknown = set(raw) - _GRANT_KEYS - set(kind.params)
    if unknown:
        raise PolicyError(f"{where}.{sorted(unknown)[0]}", f"is not a parameter of grant '{raw['grant']}'")
    kinds = _word_list(raw.get("kinds", ["cancelled", "delayed", "port_omitted"]), DISRUPTING_KINDS, f"{where}.kinds")
    bookings = _word_list(raw.get("bookings", list(BOOKING_KINDS)), BOOKING_KINDS, f"{where}.bookings")
    delay = raw.get("delay_over_minutes")
    if delay is not None and (not isinstance(delay, int) or delay < 0):
        raise PolicyError(f"{where}.delay_over_minutes", "must be a whole number of minutes")
    params = {name: _param(raw[name], wanted, f"{where}.{name}") for name, wanted in kind.params.items()
              if name in raw}
    if raw["grant"] == "compensation":
        if params.setdefault("table", "eu_1177_art19") != "eu_1177_art19":
            raise PolicyError(f"{where}.table", "only 'eu_1177_art19' is known")
        payout = params.setdefault("minimum_payout", EU_MAX_MINIMUM_PAYOUT)
        if payout < 0 or payout > EU_MAX_MINIMUM_PAYOUT:
            raise PolicyError(f"{where}.minimum_payout", "must be between 0 and 6.00 (Art 19(5): not over EUR 6)")
    return Grant(id=raw["id"], grant=raw["grant"], cite=raw["cite"], kinds=kinds,
                 causes=tuple(_strings(raw.get("causes", []), f"{where}.causes")),
                 exempt_causes=tuple(_strings(raw.get("exempt_causes", []), f"{where}.exempt_causes")),
                 delay_over_minutes=delay, bookings=bookings, params=params)


def _word_list(value: Any, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not set(value) <= set(allowed):
        raise PolicyError(where, f"must be a list drawn from {', '.join(allowed)}")
    return tuple(value)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(where, "must be a list of words")
    return value


def _param(value: Any, wanted: type, where: str) -> Any:
    if wanted is Decimal:
        try:
            if isinstance(value, float):
                raise InvalidOperation  # YAML floats lose cents; money is written as a quoted string
            return Decimal(str(value))
        except InvalidOperation:
            raise PolicyError(where, "must be an amount written as text, e.g. \"6.00\"") from None
    if wanted is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise PolicyError(where, "must be a whole number")
    if wanted is str and not isinstance(value, str):
        raise PolicyError(where, "must be text")
    return value


def policy_tags(policies: list[Policy], jurisdiction: str, kind: str, cause: str,
                delay_minutes: int | None) -> list[str]:
    """The grant tags a disruption carries (planning reads `refund_full`, `do_not_come_to_port` ...)."""
    tags: list[str] = []
    for policy in policies:
        if not policy.covers(jurisdiction):
            continue
        for grant in policy.grants:
            if grant.triggered(kind, cause, delay_minutes) and not grant.exempt(cause):
                tags += [t for t in GRANT_KINDS[grant.grant].tags if t not in tags]
    return tags


# --- EU 1177/2010 -----------------------------------------------------------------------------------------------

def eu_compensation_percent(journey: timedelta, arrival_delay: timedelta) -> int:
    """Art 19(1)/(2): 0, 25 or 50 % of the price paid, by scheduled journey length and arrival delay."""
    threshold = next(t for longest, t in EU_ART19_BANDS if longest is None or journey <= longest)
    if arrival_delay > 2 * threshold:
        return 50
    if arrival_delay >= threshold:
        return 25
    return 0


def eu_compensation_threshold(journey: timedelta) -> timedelta:
    """The arrival delay from which Art 19 compensation is owed on a journey of this length."""
    return next(t for longest, t in EU_ART19_BANDS if longest is None or journey <= longest)


def eu_compensation(fare: Decimal, journey: timedelta, arrival_delay: timedelta, cause: str = "",
                    exempt_causes: tuple[str, ...] = ("weather",),
                    minimum_payout: Decimal = EU_MAX_MINIMUM_PAYOUT) -> Decimal:
    """Art 19 compensation in the fare's currency; 0 under the minimum payout or when the cause exempts it."""
    if not isinstance(fare, Decimal):
        raise TypeError("fare must be a Decimal")
    if cause in exempt_causes:
        return Decimal("0.00")
    percent = eu_compensation_percent(journey, arrival_delay)
    amount = (fare * percent / 100).quantize(CENT, rounding=ROUND_HALF_UP)
    return amount if amount >= minimum_payout and amount > 0 else Decimal("0.00")


def eu_reroute_or_refund_owed(kind: str, expected_departure_delay_minutes: int | None) -> bool:
    """Art 18: a cancellation, or a departure delay expected to exceed 90 minutes."""
    return kind in ("cancelled", "port_omitted") or (kind == "delayed"
                                                       and (expected_departure_delay_minutes or 0) > 90)


def information_deadline(scheduled_departure: datetime, minutes: int = EU_INFORMATION_MINUTES) -> datetime:
    """Art 16(1): passengers are told no later than 30 minutes after the scheduled departure."""
    return scheduled_departure + timedelta(minutes=minutes)


def notice_priority(scheduled_departure: datetime, jurisdiction: str, kind: str) -> int:
    """Outbox priority (lower goes first): EU notices under the Art 16(1) clock go ahead, by their deadline."""
    if jurisdiction == "EU" and kind in ("cancelled", "delayed", "port_omitted"):
        return int(information_deadline(scheduled_departure).timestamp()) - EU_PRIORITY_BAND
    return int(scheduled_departure.timestamp())


# --- what one booking is owed -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Situation:
    """One booking's disruption, as far as the law cares."""

    jurisdiction: str
    booking_kind: str
    kind: str
    cause: str
    delay_minutes: int | None
    journey: timedelta
    fare: Decimal
    currency: str


@dataclass(frozen=True)
class Entitlement:
    """A grant that applies to one booking, with its amount when it has one."""

    id: str
    grant: str
    cite: str
    policy_id: str
    citation: str
    verification: str
    params: dict[str, Any]
    amount: Decimal | None = None
    currency: str | None = None
    percent: int | None = None
    exempted_by: str | None = None  # the cause that removed it (shown by `rules test`, never offered)


def entitlements_for(policies: list[Policy], situation: Situation,
                     include_exempted: bool = False) -> list[Entitlement]:
    """Every grant the policies give this booking in this situation (EU Art 20 exemptions applied)."""
    found = []
    for policy in policies:
        if not policy.covers(situation.jurisdiction):
            continue
        for grant in policy.grants:
            if situation.booking_kind not in grant.bookings or not grant.triggered(
                    situation.kind, situation.cause, situation.delay_minutes):
                continue
            exempted = situation.cause if grant.exempt(situation.cause) else None
            if exempted and not include_exempted:
                continue
            entitlement = _entitlement(policy, grant, situation, exempted)
            if entitlement is not None:
                found.append(entitlement)
    return found


def _entitlement(policy: Policy, grant: Grant, situation: Situation, exempted: str | None) -> Entitlement | None:
    amount = percent = None
    if grant.grant == "compensation" and situation.kind == "delayed" and not exempted:
        delay = timedelta(minutes=situation.delay_minutes or 0)
        percent = eu_compensation_percent(situation.journey, delay)
        amount = eu_compensation(situation.fare, situation.journey, delay, situation.cause,
                                 grant.exempt_causes, grant.params.get("minimum_payout", EU_MAX_MINIMUM_PAYOUT))
        if amount == 0:
            return None  # below the threshold: nothing is owed, so nothing is promised
    return Entitlement(id=grant.id, grant=grant.grant, cite=grant.cite, policy_id=policy.id,
                       citation=policy.citation, verification=policy.verification, params=dict(grant.params),
                       amount=amount, currency=situation.currency if amount is not None else None,
                       percent=percent, exempted_by=exempted)


def stored_policies(disruption: Disruption) -> list[Policy]:
    """The policies recorded with a disruption when it was decided."""
    return [Policy.from_json(p) for p in (disruption.policy or {}).get("policies", [])]


def situation_of(booking: Booking, sailing: Sailing, route: Route, disruption: Disruption) -> Situation:
    """The Situation of one booking on a disrupted sailing."""
    return Situation(jurisdiction=route.jurisdiction, booking_kind=booking.kind, kind=disruption.kind,
                     cause=disruption.cause, delay_minutes=disruption.delay_minutes,
                     journey=sailing.scheduled_arrival - sailing.scheduled_departure, fare=booking.fare_paid,
                     currency=booking.currency)


def compensation(session: Session, booking: Booking, disruption: Disruption) -> tuple[Decimal, str] | None:
    """EU Art 19 compensation owed now (a delay with a known arrival delay), as (amount, currency), or None."""
    sailing = session.get(Sailing, disruption.sailing_id)
    route = session.get(Route, sailing.route_id)
    for entitlement in entitlements_for(stored_policies(disruption), situation_of(booking, sailing, route,
                                                                                  disruption)):
        if entitlement.grant == "compensation" and entitlement.amount:
            return entitlement.amount, booking.currency
    return None


# --- how a grant is told ------------------------------------------------------------------------------------------

def describe(entitlement: Entitlement, language: str, situation: Situation | None = None,
             money: Callable[[Decimal, str], str] | None = None) -> str:
    """One line for a notice or for `rules test`, in English or Chinese."""
    zh = language.startswith("zh")
    params = entitlement.params
    show = money or (lambda amount, currency: f"{currency} {amount}")
    texts = _TEXTS_ZH if zh else _TEXTS_EN
    if entitlement.grant == "compensation":
        if entitlement.amount is not None:
            return texts["compensation_amount"].format(amount=show(entitlement.amount, entitlement.currency),
                                                       percent=entitlement.percent, cite=entitlement.cite)
        hours = int(eu_compensation_threshold(situation.journey).total_seconds() // 3600) if situation else 1
        return texts["compensation_if"].format(hours=hours, cite=entitlement.cite)
    if entitlement.grant == "accommodation":
        return texts["accommodation"].format(cap=params.get("cap_per_night", "80.00"),
                                             currency=params.get("currency", "EUR"),
                                             nights=params.get("max_nights", 3), cite=entitlement.cite)
    return texts[entitlement.grant].format(cite=entitlement.cite, days=params.get("refund_within_days", 7),
                                           hours=params.get("hours", 24), window=params.get("window_days", 3),
                                           minutes=params.get("deadline_minutes", EU_INFORMATION_MINUTES))


_TEXTS_EN = {
    "information": "You are told the situation and new times no later than {minutes} minutes after the scheduled "
                   "departure ({cite}).",
    "refreshments": "Free snacks, meals or refreshments while you wait ({cite}).",
    "accommodation": "Accommodation and transport to it if an overnight stay becomes necessary, up to {currency} "
                     "{cap} a night for {nights} nights ({cite}).",
    "reroute_or_refund": "Your choice of re-routing to your destination at no extra cost, or a full refund paid "
                         "within {days} days ({cite}).",
    "compensation_amount": "Compensation of {amount} ({percent}% of your fare) for the late arrival, paid within "
                           "one month of your request ({cite}).",
    "compensation_if": "Compensation of 25% of your fare (50% for twice the delay) if you arrive {hours} h or more "
                       "late ({cite}).",
    "rights_information": "You can complain to us within 2 months, and then to the national enforcement body "
                          "({cite}).",
    "rebook_or_refund": "Another sailing or a full refund, as you prefer ({cite}).",
    "no_refund_fee": "No refund fee ({cite}).",
    "ticket_valid_after_resumption": "Your ticket stays valid for {hours} hours after service resumes ({cite}).",
    "do_not_come_to_port": "Please do not come to the port until service resumes ({cite}).",
    "priority_rebooking": "After service resumes you have priority on the first sailings and get an SMS with your "
                          "new sailing ({cite}).",
    "refund_or_change": "A refund or a change of ticket at no charge ({cite}).",
    "cargo_revised_schedule": "Stay on the vessel with the revised ETA/ETD and revised cut-offs ({cite}).",
    "cargo_roll": "Roll to the next sailing; within {window} days of the original ETD this counts as kept "
                  "({cite}).",
    "cargo_change_destination": "Change of destination or discharge at an alternative port ({cite}).",
    "cargo_cancel_without_fee": "Cancel the booking without a cancellation fee ({cite}).",
}
_TEXTS_ZH = {
    "information": "最迟在原定开航后{minutes}分钟内告知您最新情况和时间（{cite}）。",
    "refreshments": "等候期间免费提供餐食或饮品（{cite}）。",
    "accommodation": "如需过夜，免费提供住宿及往返交通，每晚最高{currency} {cap}，最多{nights}晚（{cite}）。",
    "reroute_or_refund": "您可免费改乘前往目的地，或全额退款（{days}天内支付）（{cite}）。",
    "compensation_amount": "因晚到可获赔偿{amount}（票价的{percent}%），申请后一个月内支付（{cite}）。",
    "compensation_if": "如晚到{hours}小时或以上，可获票价25%的赔偿（晚到加倍时为50%）（{cite}）。",
    "rights_information": "您可在2个月内向我们投诉，之后可向国家执法机构投诉（{cite}）。",
    "rebook_or_refund": "可按您的要求改乘其他航班或全额退票（{cite}）。",
    "no_refund_fee": "退票不收手续费（{cite}）。",
    "ticket_valid_after_resumption": "恢复通航后{hours}小时内船票继续有效（{cite}）。",
    "do_not_come_to_port": "恢复通航前请勿前往码头（{cite}）。",
    "priority_rebooking": "恢复通航后您可优先乘坐首批航班，并会收到新航班短信（{cite}）。",
    "refund_or_change": "可免费退票或改票（{cite}）。",
    "cargo_revised_schedule": "随原船按修订后的预计到/离港时间及截关时间运输（{cite}）。",
    "cargo_roll": "转下一航次；原预计离港时间前后{window}天内视为按约履行（{cite}）。",
    "cargo_change_destination": "更改目的港或在替代港卸货（{cite}）。",
    "cargo_cancel_without_fee": "取消订舱，不收取取消费（{cite}）。",
}


def notice_lines(disruption: Disruption, booking: Booking, sailing: Sailing, route: Route, language: str,
                 money: Callable[[Decimal, str], str] | None = None) -> list[str]:
    """What a notice tells one customer they are owed, one line per customer-facing grant."""
    situation = situation_of(booking, sailing, route, disruption)
    return [describe(e, language, situation, money) for e in entitlements_for(stored_policies(disruption), situation)
            if GRANT_KINDS[e.grant].customer_facing]


# --- the regulatory clock -------------------------------------------------------------------------------------

def first_told(session: Session, disruption_id: int) -> dict[int, datetime]:
    """When each booking was first told of a disruption (the first notice that left, on any channel)."""
    rows = session.execute(select(Notification.booking_id, func.min(Notification.sent_at))
                           .where(Notification.disruption_id == disruption_id, Notification.sent_at.is_not(None),
                                  Notification.booking_id.is_not(None))
                           .group_by(Notification.booking_id)).all()
    return {booking_id: sent_at for booking_id, sent_at in rows}


@dataclass(frozen=True)
class DeadlineMiss:
    """An EU passenger not told within 30 minutes after the scheduled departure (Art 16(1))."""

    booking_ref: str
    sailing_code: str
    disruption_id: int
    kind: str
    known_at: datetime
    deadline: datetime
    first_told_at: datetime | None

    @property
    def minutes_late(self) -> int | None:
        """How late the first notice left (None: not told at all)."""
        if self.first_told_at is None:
            return None
        return int((self.first_told_at - self.deadline).total_seconds() // 60)


def eu_deadline_report(session: Session, now: datetime | None = None) -> list[DeadlineMiss]:
    """Every EU passenger booking on a cancelled or delayed sailing not told by the Art 16(1) deadline."""
    now = now or utcnow()
    told = (select(Notification.booking_id, Notification.disruption_id,
                   func.min(Notification.sent_at).label("first_sent"))
            .where(Notification.sent_at.is_not(None)).group_by(Notification.booking_id, Notification.disruption_id)
            .subquery())
    rows = session.execute(
        select(Booking.ref, Sailing.code, Sailing.scheduled_departure, Disruption.id, Disruption.kind,
               Disruption.known_at, Disruption.cleared_at, told.c.first_sent)
        .join(Sailing, Sailing.id == Disruption.sailing_id).join(Route, Route.id == Sailing.route_id)
        .join(Booking, Booking.sailing_id == Sailing.id)
        .outerjoin(told, (told.c.booking_id == Booking.id) & (told.c.disruption_id == Disruption.id))
        .where(Route.jurisdiction == "EU", Booking.kind == "passenger", Booking.status != CANCELLED,
               Disruption.kind.in_(("cancelled", "delayed")), Disruption.status != SUPERSEDED)
        .order_by(Sailing.scheduled_departure, Booking.ref)).all()
    misses = []
    for ref, code, departure, disruption_id, kind, known_at, cleared_at, first_sent in rows:
        deadline = information_deadline(departure)
        if first_sent is None and cleared_at is not None and cleared_at <= deadline:
            continue  # withdrawn before the deadline: there was nothing left to tell
        late = first_sent > deadline if first_sent else now > deadline
        if late:
            misses.append(DeadlineMiss(ref, code, disruption_id, kind, known_at, deadline, first_sent))
    return misses
