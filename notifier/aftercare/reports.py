"""Delivery and response figures per disruption, the regulatory clocks, the audit trail, and the agent's look-up.

"Told" means a notice (purpose "notice") was handed to the provider: its `sent_at`. The clocks run from the
disruption's `known_at` (when the feed item arrived, or when the operator opened it): told within 5 / 15 / 30
minutes. The EU duty (Regulation 1177/2010 Art 16(1), POLICIES.md EU-16-1) is judged per passenger booking on
EU routes: told no later than 30 minutes after the scheduled departure. Every query is grouped by disruption, so
a typhoon night with a hundred thousand notices is a handful of queries, not one per booking.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.errors import UsageError
from notifier.aftercare.followups import booking_followups
from notifier.store.models import (AuditEntry, Booking, Customer, CustomerResponse, Disruption, Notification, Offer,
                                   Port, Route, Sailing, utcnow)
from notifier.store.paths import templates_dir
from notifier.privacy import mask_address, mask_email, mask_name, mask_phone, redact
from notifier.aftercare.satisfaction import loop_figures
from notifier.store.status import CANCELLED, DELIVERED, IN_FLIGHT, LOST, REACHED
from notifier.aftercare.desk_stats import DeskFigures, desk_figures

TOLD_WITHIN_MINUTES = (5, 15, 30)
EU_DUTY = timedelta(minutes=30)
EU_DUTY_KINDS = ("cancelled", "delayed")


# --- per-disruption figures ---------------------------------------------------------------------------------------

@dataclass
class DisruptionFigures:
    """What happened to one disruption's customers: who was told how fast, what went wrong, what they chose."""

    disruption_id: int
    sailing: str
    route: str
    jurisdiction: str
    kind: str
    status: str
    revision: int
    known_at: datetime
    departure: datetime
    affected: int = 0
    reachable: int = 0
    told: int = 0
    told_within: dict[int, int] = field(default_factory=dict)
    notices: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    cancelled: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    choices: dict[str, int] = field(default_factory=dict)
    eu_duty: str = "n/a"  # met | missed | pending | n/a
    eu_late: int = 0
    minutes_to_tell: list[float] = field(default_factory=list)  # per told booking, for the timeline
    # Closing the loop (aftercare.satisfaction.LoopFigures): settled, settled without a person, follow-ups, time to
    # settle, satisfaction requests and scores.
    closing: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times ISO 8601 UTC; the per-booking timeline left out)."""
        data = asdict(self)
        data.pop("minutes_to_tell")
        data["known_at"], data["departure"] = self.known_at.isoformat(), self.departure.isoformat()
        data["told_within"] = {f"{m}min": n for m, n in self.told_within.items()}
        return data


@dataclass
class Report:
    """Figures for a set of disruptions, with their totals."""

    generated_at: datetime
    disruptions: list[DisruptionFigures]
    # The desk's own figures (tickets, calls, follow-ups, scores: notifier.aftercare.desk_stats), for every day.
    desk: DeskFigures | None = None

    def totals(self) -> dict[str, Any]:
        """The sums over every disruption in the report."""
        total: dict[str, Any] = {name: sum(getattr(d, name) for d in self.disruptions)
                                 for name in ("affected", "reachable", "told", "notices", "sent", "delivered",
                                              "failed", "pending", "cancelled", "eu_late")}
        total["told_within"] = {m: sum(d.told_within.get(m, 0) for d in self.disruptions)
                                for m in TOLD_WITHIN_MINUTES}
        total["failed_by_reason"] = dict(sum((Counter(d.failed_by_reason) for d in self.disruptions), Counter()))
        total["choices"] = dict(sum((Counter(d.choices) for d in self.disruptions), Counter()))
        duties = Counter(d.eu_duty for d in self.disruptions)
        total["eu_duty"] = {k: duties[k] for k in ("met", "missed", "pending", "n/a") if duties[k]}
        return total

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready data."""
        totals = self.totals()
        totals["told_within"] = {f"{m}min": n for m, n in totals["told_within"].items()}
        data = {"generated_at": self.generated_at.isoformat(), "totals": totals,
                "disruptions": [d.to_json() for d in self.disruptions]}
        if self.desk is not None and self.desk.busy:
            data["desk"] = self.desk.to_json()
        return data


def build_report(factory: sessionmaker[Session], disruption_id: int | None = None,
                 now: datetime | None = None) -> Report:
    """Figures for one disruption, or for every disruption (oldest first)."""
    now = now or utcnow()
    with factory() as session:
        query = (select(Disruption, Sailing, Route).join(Sailing, Sailing.id == Disruption.sailing_id)
                 .join(Route, Route.id == Sailing.route_id)
                 .order_by(Disruption.known_at, Sailing.scheduled_departure, Disruption.id))
        if disruption_id is not None:
            query = query.where(Disruption.id == disruption_id)
        rows = session.execute(query).all()
        if disruption_id is not None and not rows:
            raise UsageError(f"unknown disruption #{disruption_id}")
        figures = {d.id: DisruptionFigures(d.id, s.code, r.code, r.jurisdiction, d.kind, d.status, d.revision,
                                           d.known_at, s.scheduled_departure) for d, s, r in rows}
        if figures:
            _fill(session, figures, now)
        desk = desk_figures(session)
    return Report(now, list(figures.values()), desk)


def _fill(session: Session, figures: dict[int, DisruptionFigures], now: datetime) -> None:
    ids = list(figures)
    notices = (Notification.disruption_id.in_(ids), Notification.purpose == "notice")
    affected: dict[int, set[int]] = defaultdict(set)
    reachable: dict[int, set[int]] = defaultdict(set)
    for disruption_id, booking_id in session.execute(select(Offer.disruption_id, Offer.booking_id).distinct()
                                                     .where(Offer.disruption_id.in_(ids))):
        affected[disruption_id].add(booking_id)
    for disruption_id, booking_id in session.execute(select(Notification.disruption_id, Notification.booking_id)
                                                     .distinct().where(*notices)):
        if booking_id is not None:
            affected[disruption_id].add(booking_id)
            reachable[disruption_id].add(booking_id)
    first_told: dict[int, dict[int, datetime]] = defaultdict(dict)
    for disruption_id, booking_id, at in session.execute(
            select(Notification.disruption_id, Notification.booking_id, func.min(Notification.sent_at))
            .where(*notices, Notification.sent_at.is_not(None))
            .group_by(Notification.disruption_id, Notification.booking_id)):
        first_told[disruption_id][booking_id] = at
    for disruption_id, status, count in session.execute(
            select(Notification.disruption_id, Notification.status, func.count()).where(*notices)
            .group_by(Notification.disruption_id, Notification.status)):
        _count_status(figures[disruption_id], status, count)
    for disruption_id, code, message, count in session.execute(
            select(Notification.disruption_id, Notification.error_code, Notification.error_message, func.count())
            .where(*notices, Notification.status.in_(LOST))
            .group_by(Notification.disruption_id, Notification.error_code, Notification.error_message)):
        reason = failure_reason(code, message)
        figures[disruption_id].failed_by_reason[reason] = figures[disruption_id].failed_by_reason.get(reason, 0) + count
    chosen: dict[int, Counter] = defaultdict(Counter)
    for disruption_id, choice in session.execute(
            select(CustomerResponse.disruption_id, CustomerResponse.choice)
            .where(CustomerResponse.disruption_id.in_(ids), CustomerResponse.decision_key == "choice")):
        chosen[disruption_id][choice] += 1
    passengers = _passenger_bookings(session, [d for d in ids if figures[d].jurisdiction == "EU"], affected)
    for disruption_id, figure in figures.items():
        told = first_told[disruption_id]
        _fill_clocks(figure, affected[disruption_id], reachable[disruption_id], told, chosen[disruption_id])
        if figure.jurisdiction == "EU" and figure.kind in EU_DUTY_KINDS:
            _judge_eu_duty(figure, affected[disruption_id] & passengers, told, now)
    for disruption_id, loop in loop_figures(session, ids, now).items():
        figures[disruption_id].closing = loop.to_dict()


def _count_status(figure: DisruptionFigures, status: str, count: int) -> None:
    figure.notices += count
    if status in REACHED:
        figure.sent += count
    if status == DELIVERED:
        figure.delivered += count
    elif status in LOST:
        figure.failed += count
    elif status in IN_FLIGHT:
        figure.pending += count
    elif status == CANCELLED:
        figure.cancelled += count


def failure_reason(code: str | None, message: str | None) -> str:
    """A short label for a failure: the provider's code and the first words of its message."""
    text = re.sub(r"\s+", " ", redact(message)).strip()
    return " ".join(part for part in (code or "", text[:70]) if part) or "unknown"


def _passenger_bookings(session: Session, eu_ids: list[int], affected: dict[int, set[int]]) -> set[int]:
    wanted = set().union(*(affected[d] for d in eu_ids)) if eu_ids else set()
    if not wanted:
        return set()
    return set(session.scalars(select(Booking.id).where(Booking.id.in_(wanted), Booking.kind == "passenger")))


def _fill_clocks(figure: DisruptionFigures, affected: set[int], reachable: set[int], told: dict[int, datetime],
                 chosen: Counter) -> None:
    figure.affected, figure.reachable, figure.told = len(affected), len(reachable), len(told)
    figure.minutes_to_tell = sorted(max((at - figure.known_at).total_seconds() / 60, 0) for at in told.values())
    figure.told_within = {m: sum(1 for minutes in figure.minutes_to_tell if minutes <= m)
                          for m in TOLD_WITHIN_MINUTES}
    figure.choices = {"rebook": chosen["rebook"], "refund": chosen["refund"]}
    figure.choices.update({k: v for k, v in chosen.items() if k not in figure.choices})
    figure.choices["none"] = max(figure.affected - sum(chosen.values()), 0)


def _judge_eu_duty(figure: DisruptionFigures, passengers: set[int], told: dict[int, datetime],
                   now: datetime) -> None:
    # Art 16(1): inform no later than 30 minutes after the scheduled departure.
    if not passengers:
        return
    deadline = figure.departure + EU_DUTY
    if now <= deadline:
        figure.eu_duty = "pending" if any(b not in told for b in passengers) else "met"
        return
    figure.eu_late = sum(1 for b in passengers if b not in told or told[b] > deadline)
    figure.eu_duty = "missed" if figure.eu_late else "met"


# --- the HTML report ----------------------------------------------------------------------------------------------

CHART_WIDTH, CHART_HEIGHT = 640, 220
CHOICE_COLOURS = {"rebook": "#2563eb", "refund": "#d97706", "none": "#9ca3af"}


def render_html(report: Report, title: str = "Disruption report") -> str:
    """A self-contained HTML page (inline CSS and SVG, no external assets) with the report's charts."""
    env = Environment(loader=FileSystemLoader(str(Path(templates_dir()) / "report")), undefined=StrictUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html", "html.j2")), trim_blocks=True,
                      lstrip_blocks=True)
    totals = report.totals()
    return env.get_template("report.html.j2").render(
        title=title, report=report, totals=totals, timeline=timeline_chart(report),
        funnel=funnel_chart(report, totals), choices=choices_chart(totals["choices"]),
        minutes=TOLD_WITHIN_MINUTES)


def timeline_chart(report: Report) -> dict[str, Any]:
    """Cumulative bookings told against minutes since each disruption became known, as SVG coordinates."""
    minutes = sorted(m for d in report.disruptions for m in d.minutes_to_tell)
    span = max([60.0, *(m * 1.1 for m in minutes[-1:])])
    affected = max(sum(d.affected for d in report.disruptions), len(minutes), 1)
    x = lambda m: round(40 + (CHART_WIDTH - 60) * min(m, span) / span, 1)  # noqa: E731
    y = lambda n: round(CHART_HEIGHT - 30 - (CHART_HEIGHT - 50) * n / affected, 1)  # noqa: E731
    points = [(x(0), y(0))]
    for count, minute in enumerate(minutes, 1):
        points += [(x(minute), points[-1][1]), (x(minute), y(count))]
    points.append((x(span), points[-1][1]))
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "points": " ".join(f"{a},{b}" for a, b in points),
            "marks": [{"x": x(m), "label": f"{m} min"} for m in TOLD_WITHIN_MINUTES],
            "top": y(affected), "bottom": y(0), "left": x(0), "right": x(span), "affected": affected,
            "told": len(minutes), "span": round(span)}


def funnel_chart(report: Report, totals: dict[str, Any]) -> dict[str, Any]:
    """Bars from bookings affected down to bookings that made a choice."""
    chose = sum(v for k, v in totals["choices"].items() if k != "none")
    delivered_bookings = sum(min(d.delivered, d.told) for d in report.disruptions)
    steps = [("Bookings affected", totals["affected"]), ("Reachable (notice planned)", totals["reachable"]),
             ("Told (notice sent)", totals["told"]), ("Delivery confirmed", delivered_bookings),
             ("Made a choice", chose)]
    widest = max([n for _, n in steps] + [1])
    bar_space = CHART_WIDTH - 240
    return {"width": CHART_WIDTH, "height": 34 * len(steps) + 10,
            "bars": [{"label": label, "value": value, "y": 8 + 34 * i,
                      "width": max(round(bar_space * value / widest, 1), 2)} for i, (label, value) in enumerate(steps)]}


def choices_chart(choices: dict[str, int]) -> dict[str, Any]:
    """A donut of rebook / refund / no answer, as SVG circle dash segments."""
    radius, circumference = 70, 2 * 3.14159265 * 70
    total = sum(choices.values())
    segments, offset = [], 0.0
    for name, count in choices.items():
        if not count:
            continue
        length = circumference * count / total
        segments.append({"name": name, "count": count, "colour": CHOICE_COLOURS.get(name, "#10b981"),
                         "dash": f"{length:.2f} {circumference - length:.2f}", "offset": f"{-offset:.2f}",
                         "share": round(100 * count / total)})
        offset += length
    return {"radius": radius, "segments": segments, "total": total}


# --- the audit trail ----------------------------------------------------------------------------------------------

def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: a duration back from now ("30m", "2h", "1d") or an ISO 8601 time (naive means UTC)."""
    now = now or utcnow()
    match = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", text)
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        try:
            return now - timedelta(**{unit: int(match.group(1))})
        except OverflowError:
            raise UsageError(f"--since {text.strip()!r} reaches back before the year 1; give a shorter duration "
                             "or an ISO 8601 time") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r} is neither a duration (30m, 2h, 1d) nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)


def audit_trail(factory: sessionmaker[Session], since: datetime | None = None, actor: str | None = None,
                limit: int = 200) -> list[AuditEntry]:
    """Audit entries, oldest first: the newest `limit` since the given time, optionally by one actor."""
    with factory() as session:
        query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if actor:
            query = query.where(AuditEntry.actor == actor)
        return list(reversed(session.scalars(query).all()))


# --- the customer-service desk ------------------------------------------------------------------------------------

@dataclass
class BookingCard:
    """One booking as the customer-service desk sees it: contacts masked."""

    booking: dict[str, Any]
    customer: dict[str, Any]
    sailing: dict[str, Any]
    notices: list[dict[str, Any]]
    offers: list[dict[str, Any]]
    choices: list[dict[str, Any]]
    followups: list[dict[str, Any]] = field(default_factory=list)


def booking_card(factory: sessionmaker[Session], ref: str) -> BookingCard:
    """A booking, its notices with delivery status, its offers and the customer's choice."""
    with factory() as session:
        booking = session.scalar(select(Booking).where(Booking.ref == ref.strip()))
        if booking is None:
            raise UsageError(f"unknown booking {ref!r}")
        customer = session.get(Customer, booking.customer_id)
        sailing = session.get(Sailing, booking.sailing_id)
        zone = session.get(Port, sailing.origin_port_id).timezone
        return BookingCard(
            booking={"ref": booking.ref, "kind": booking.kind, "status": booking.status,
                     "space_class": booking.space_class, "places": booking.places, "vehicles": booking.vehicles,
                     "fare_paid": f"{booking.fare_paid} {booking.currency}"},
            customer={"ref": customer.ref, "name": mask_name(customer.name), "language": customer.language,
                      "phone": mask_phone(customer.phone), "email": mask_email(customer.email),
                      "channels": list(customer.channels or [])},
            sailing={"code": sailing.code, "status": sailing.status, "departure": sailing.scheduled_departure,
                     "timezone": zone},
            notices=_booking_notices(session, booking.id), offers=_booking_offers(session, booking.id),
            choices=[{"at": r.received_at, "channel": r.channel, "choice": r.choice, "disruption_id": r.disruption_id,
                      "text": redact(r.raw_text)[:80], "decision": r.decision_key is not None}
                     for r in session.scalars(select(CustomerResponse).where(CustomerResponse.booking_id == booking.id)
                                              .order_by(CustomerResponse.received_at))],
            followups=booking_followups(session, booking.id))


def _booking_notices(session: Session, booking_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(Notification).where(Notification.booking_id == booking_id)
                           .order_by(Notification.created_at, Notification.id))
    return [{"id": n.id, "created_at": n.created_at, "broadcast_id": n.broadcast_id,
             "disruption_id": n.disruption_id, "revision": n.revision, "channel": n.channel,
             "to": mask_address(n.channel, n.recipient), "template": n.template, "purpose": n.purpose,
             "status": n.status, "sent_at": n.sent_at, "delivered_at": n.delivered_at,
             "error": failure_reason(n.error_code, n.error_message) if n.status in LOST else ""} for n in rows]


def _booking_offers(session: Session, booking_id: int) -> list[dict[str, Any]]:
    rows = session.execute(select(Offer, Sailing.code).outerjoin(Sailing, Sailing.id == Offer.sailing_id)
                           .where(Offer.booking_id == booking_id).order_by(Offer.disruption_id, Offer.revision,
                                                                          Offer.option_key)).all()
    return [{"disruption_id": o.disruption_id, "revision": o.revision, "key": o.option_key, "kind": o.kind,
             "sailing": code or "", "status": o.status, "hold_expires_at": o.hold_expires_at,
             "amount": f"{o.amount} {o.currency}" if o.amount is not None else "", "deadline": o.deadline}
            for o, code in rows]
