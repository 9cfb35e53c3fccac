"""What a notice says: the values a notice template may use, made once per sailing where they can be, and the
outbox's dedup key.

Every path that writes a notice takes its values from here: the bulk planner (through `shapes.ShapeBook`, which
renders once per notice shape), corrections, reminders and the fallback to another channel. `notice_context` is
the whole set; `sailing_values`, `booking_values`, `offer_values`, `choice_link` and `notice_extras` are its parts,
kept apart so that the shapes can compute each once per distinct input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.messages import local_time, money
from notifier.planning import links
from notifier.store.capacity import Candidate, candidates_for
from notifier.rules.entitlements import notice_lines
from notifier.store.models import Booking, Customer, Disruption, Offer, Port, Route, Sailing
from notifier.store.settings import Settings
from notifier.store.status import HELD

CAUSE_WORDS = {"en": {"weather": "severe weather", "port_closure": "a port closure", "strike": "industrial action",
                      "technical": "a technical fault", "schedule": "a schedule change",
                      "operations": "operational reasons"},
               "zh-CN": {"weather": "恶劣天气", "port_closure": "港口关闭", "strike": "罢工",
                         "technical": "技术故障", "schedule": "班期调整", "operations": "运营原因"}}
TYPHOON_WORDS = {"en": "the typhoon", "zh-CN": "台风"}


@dataclass
class SailingFacts:
    """Everything about one disrupted sailing that every booking's message shares, computed once."""

    disruption: Disruption
    sailing: Sailing
    origin: Port
    destination: Port
    route: Route
    candidates: list[Candidate]
    candidate_ports: dict[int, Port]
    vessel_name: str = ""
    local: dict[tuple, Any] = field(default_factory=dict)  # (what, language ...) -> text or values made once


def sailing_facts(session: Session, disruption: Disruption) -> SailingFacts:
    """The facts of one disrupted sailing, read on their own (a correction, a reminder: not the bulk planner)."""
    sailing = session.get(Sailing, disruption.sailing_id)
    candidates = candidates_for(session, disruption)
    ports = {p.id: p for p in session.scalars(select(Port))} if candidates else {}
    return SailingFacts(disruption=disruption, sailing=sailing, origin=session.get(Port, sailing.origin_port_id),
                        destination=session.get(Port, sailing.destination_port_id),
                        route=session.get(Route, sailing.route_id), candidates=candidates, candidate_ports=ports,
                        vessel_name=sailing.vessel.name if sailing.vessel else "")


def dedup_key(booking_id: int | None, recipient: str, channel: str, disruption_id: int | None, revision: int) -> str:
    """The outbox's unique key: the same notice is never planned twice, whoever triggered it."""
    return f"{booking_id}:{recipient}:{channel}:{disruption_id}:{revision}"


def _port_name(port: Port, language: str) -> str:
    return port.name_zh if language.startswith("zh") and port.name_zh else port.name


def _cached(facts: SailingFacts, key: str, language: str, make) -> str:  # noqa: ANN001
    if (key, language) not in facts.local:
        facts.local[(key, language)] = make()
    return facts.local[(key, language)]


def notice_context(facts: SailingFacts, booking: Booking, customer: Customer, offers: list[Offer],
                   settings: Settings, language: str, deadline: datetime | None,
                   reason: str | None = None) -> dict[str, Any]:
    """The values a notice template may use (every one always present, so StrictUndefined catches typos).

    Built from parts that `shapes.ShapeBook` computes once and shares: what the sailing and broadcast say, what
    the booking says, what the offers say, and the three per-person values (name, booking reference, link)."""
    until = deadline or facts.sailing.scheduled_departure
    return {**sailing_values(facts, settings, language, reason), "customer": {"name": customer.name},
            "booking": booking_values(booking), **offer_values(facts, offers, language, deadline),
            "link": choice_link(settings, booking.id, facts.disruption.id, until),
            # delay, window, previous_kind, resumption, headline, port_call, entitlements (notifier.disruptions)
            **notice_extras(facts, booking, language)}


def sailing_values(facts: SailingFacts, settings: Settings, language: str, reason: str | None) -> dict[str, Any]:
    """The part of a notice's values every booking of the sailing shares (made once per language)."""
    key = ("context", language, reason or "")
    if key not in facts.local:
        lang = "zh-CN" if language.startswith("zh") else "en"
        sailing, disruption, tz = facts.sailing, facts.disruption, facts.origin.timezone
        policy = set(disruption.policy.get("entitlements", []))
        cause_key = disruption.cause
        event = (disruption.cause_text or "").lower()
        typhoon = "typhoon" in event or "cyclone" in event
        facts.local[key] = {
            "company": settings.company_name_zh if lang == "zh-CN" else settings.company_name,
            "helpline": settings.helpline,
            "sailing": {"code": sailing.code, "route": facts.route.name, "status": sailing.status,
                        "origin": _port_name(facts.origin, language),
                        "destination": _port_name(facts.destination, language),
                        "departure": local_time(sailing.scheduled_departure, tz, language),
                        "arrival": local_time(sailing.scheduled_arrival, facts.destination.timezone, language),
                        "vessel": facts.vessel_name, "voyage": sailing.voyage or ""},
            "disruption": {"kind": disruption.kind, "delay_minutes": disruption.delay_minutes,
                           "status": disruption.status,
                           "cause": TYPHOON_WORDS[lang] if typhoon else CAUSE_WORDS[lang].get(cause_key, cause_key),
                           "event": disruption.cause_text or ""},
            "reason": reason or "",
            "do_not_come": "do_not_come_to_port" in policy,
            "eu": facts.route.jurisdiction == "EU",
        }
    return facts.local[key]


def booking_values(booking: Booking) -> dict[str, Any]:
    """What a notice may say about the booking itself."""
    return {"ref": booking.ref, "kind": booking.kind, "party_size": booking.party_size, "teu": booking.teu}


def offer_values(facts: SailingFacts, offers: list[Offer], language: str, deadline: datetime | None
                 ) -> dict[str, Any]:
    """What a notice may say about the booking's choices: the alternatives, the refund, the deadline."""
    tz = facts.origin.timezone
    by_id = {c.sailing_id: c for c in facts.candidates}
    alternatives = []
    for offer in offers:
        if offer.kind in {"rebook", "standby"} and offer.sailing_id in by_id:
            candidate = by_id[offer.sailing_id]
            alternatives.append({"key": offer.option_key, "code": candidate.code, "held": offer.status == HELD,
                                 "departure": _cached(facts, f"dep{candidate.sailing_id}", language,
                                                      lambda c=candidate: local_time(c.departure, tz, language))})
    refund = next((o for o in offers if o.kind == "refund"), None)
    return {"alternatives": alternatives,
            "refund": {"amount": money(refund.amount, refund.currency, language)} if refund else None,
            "deadline": local_time(deadline, tz, language) if deadline else ""}


def choice_link(settings: Settings, booking_id: int, disruption_id: int, until: datetime) -> str:
    """The signed link to a booking's choice page."""
    return links.choice_url(settings.public_base_url, links.make_token(settings.secret_key or "demo-secret",
                                                                       booking_id, disruption_id, until))


# --- what a notice says about the lifecycle --------------------------------------------------------------------

def notice_extras(facts: SailingFacts, booking: Any, language: str) -> dict[str, Any]:
    """Template values beyond the basic notice: delay and new times, the hazard window, what the disruption
    replaced, the resumption sailing, the omitted port, and the entitlements this customer has."""
    disruption, sailing = facts.disruption, facts.sailing
    details = disruption.details or {}
    tz, arrival_tz = facts.origin.timezone, facts.destination.timezone
    delay = None
    if disruption.delay_minutes:
        shift = timedelta(minutes=disruption.delay_minutes)
        delay = {"minutes": disruption.delay_minutes,
                 "departure": local_time(sailing.scheduled_departure + shift, tz, language),
                 "arrival": local_time(sailing.scheduled_arrival + shift, arrival_tz, language)}
    resumption = details.get("resumption")
    if resumption:
        resumption = {"operates": resumption["operates"], "code": resumption["code"],
                      "departure": local_time(datetime.fromisoformat(resumption["departure"]), tz, language)}
    return {
        "delay": delay,
        "window": {"start": local_time(disruption.window_start, tz, language) if disruption.window_start else "",
                   "end": local_time(disruption.window_end, tz, language) if disruption.window_end else ""},
        "previous_kind": details.get("previous_kind", ""),
        "resumption": resumption,
        "headline": details.get("headline", ""),
        "port_call": _port_call(facts, details, language) if disruption.kind == "port_omitted" else None,
        "entitlements": notice_lines(disruption, booking, sailing, facts.route, language,
                                     lambda amount, currency: money(amount, currency, language)),
    }


_PORT_CALL_WORDS = {"en": {"OMIT": "port call omitted", "BLNK": "sailing blanked", "CUTR": "cut and run",
                           "SLID": "voyage slid", "ROTC": "rotation changed"},
                    "zh-CN": {"OMIT": "取消挂靠", "BLNK": "航次取消（空班）", "CUTR": "提前离港（甩柜）",
                              "SLID": "航次顺延", "ROTC": "挂港顺序调整"}}


def _port_call(facts: SailingFacts, details: dict[str, Any], language: str) -> dict[str, str]:
    lang = "zh-CN" if language.startswith("zh") else "en"
    names = {facts.origin.locode: facts.origin, facts.destination.locode: facts.destination}
    ports = details.get("ports") or [facts.destination.locode]
    shown = []
    for locode in ports:
        port: Port | None = names.get(locode)
        shown.append((port.name_zh if lang == "zh-CN" and port.name_zh else port.name) if port else locode)
    status = details.get("port_call_status") or "OMIT"
    return {"status": status, "words": _PORT_CALL_WORDS[lang].get(status, status), "port": ", ".join(shown),
            "reason": details.get("delay_reason") or details.get("change_remark") or ""}
