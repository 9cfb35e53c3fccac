"""The desk's figures (统计客户咨询、投诉数据): tickets by category, route and week, first-answer and resolution
times against the SLA, calls logged, and how the follow-ups ended. The disruption figures (told within 5/15/30
minutes, EU duty) are `notifier report`'s own (notifier.aftercare.reports), which the desk page shows beside
the decisions by channel, the follow-ups by reason (unreachable ...) and the satisfaction scores kept here.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from statistics import median
from typing import Any, TextIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from notifier.aftercare.responses import DECISION
from notifier.store.models import (Booking, CustomerResponse, DeskCall, FollowUp, Route, Sailing, SatisfactionRequest,
                                   Ticket)

CSV_COLUMNS = ("figure", "key", "value")


@dataclass
class DeskFigures:
    """Counts and times over every ticket, call and follow-up so far."""

    by_category: dict[str, int] = field(default_factory=dict)
    by_route: dict[str, int] = field(default_factory=dict)
    by_week: dict[str, dict[str, int]] = field(default_factory=dict)  # "2026-W49" -> category -> count
    tickets: int = 0
    answered: int = 0
    answered_within_sla: int = 0
    resolved: int = 0
    median_first_answer_hours: float | None = None
    median_resolution_hours: float | None = None
    calls: dict[str, int] = field(default_factory=dict)
    followups: dict[str, int] = field(default_factory=dict)  # reason -> count (unreachable, key-account ...)
    followup_outcomes: dict[str, int] = field(default_factory=dict)
    satisfaction: dict[int, int] = field(default_factory=dict)  # score 1-5 -> count
    # Decisions by who took them: web, sms, email, agent (recorded at the desk), default (nobody answered).
    choices_by_channel: dict[str, int] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        """Whether the desk has had any work (tickets or calls) to report."""
        return bool(self.tickets or self.calls)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = dict(self.__dict__)
        data["satisfaction"] = {str(k): v for k, v in self.satisfaction.items()}
        return data


def desk_figures(session: Session) -> DeskFigures:
    """Every desk figure, read in one go."""
    figures = DeskFigures()
    _ticket_figures(session, figures)
    figures.calls = dict(session.execute(select(DeskCall.outcome, func.count()).group_by(DeskCall.outcome)).all())
    figures.followups = dict(session.execute(select(FollowUp.reason, func.count()).group_by(FollowUp.reason)).all())
    figures.followup_outcomes = dict(session.execute(select(FollowUp.outcome, func.count())
                                                     .where(FollowUp.outcome.is_not(None))
                                                     .group_by(FollowUp.outcome)).all())
    figures.choices_by_channel = dict(session.execute(
        select(CustomerResponse.channel, func.count()).where(CustomerResponse.decision_key == DECISION)
        .group_by(CustomerResponse.channel)).all())
    figures.satisfaction = dict(sorted(session.execute(
        select(SatisfactionRequest.score, func.count()).where(SatisfactionRequest.score.is_not(None))
        .group_by(SatisfactionRequest.score)).all()))
    return figures


def _ticket_figures(session: Session, figures: DeskFigures) -> None:
    rows = session.execute(select(Ticket.category, Ticket.created_at, Ticket.due_at, Ticket.first_response_at,
                                  Ticket.resolved_at, Route.code)
                           .outerjoin(Booking, Booking.id == Ticket.booking_id)
                           .outerjoin(Sailing, Sailing.id == Booking.sailing_id)
                           .outerjoin(Route, Route.id == Sailing.route_id)).all()
    categories, routes, weeks = Counter(), Counter(), {}
    first, resolution = [], []
    for category, created, due, answered, resolved, route in rows:
        categories[category] += 1
        routes[route or "-"] += 1
        week = f"{created.isocalendar().year}-W{created.isocalendar().week:02d}"
        weeks.setdefault(week, Counter())[category] += 1
        if answered is not None:
            first.append(_hours(created, answered))
            figures.answered += 1
            figures.answered_within_sla += answered <= due
        if resolved is not None:
            resolution.append(_hours(created, resolved))
    figures.tickets, figures.resolved = len(rows), len(resolution)
    figures.by_category, figures.by_route = dict(categories), dict(routes)
    figures.by_week = {week: dict(counts) for week, counts in sorted(weeks.items())}
    figures.median_first_answer_hours = round(median(first), 1) if first else None
    figures.median_resolution_hours = round(median(resolution), 1) if resolution else None


def _hours(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0) / 3600


def write_csv(figures: DeskFigures, out: TextIO, disruptions: dict[str, Any] | None = None) -> int:
    """The figures as CSV rows (figure, key, value), with the disruptions' totals when given (`Report.totals()`:
    told within 5/15/30 minutes, affected and reachable bookings); returns how many rows."""
    told = (disruptions or {}).get("told_within", {})
    reach = {k: (disruptions or {})[k] for k in ("affected", "reachable") if k in (disruptions or {})}
    rows = [*(("disruptions_told_within", f"{minutes}min", n) for minutes, n in told.items()),
            *(("disruptions_bookings", k, v) for k, v in reach.items()),
            *(("tickets_by_category", k, v) for k, v in figures.by_category.items()),
            *(("tickets_by_route", k, v) for k, v in figures.by_route.items()),
            *((f"tickets_in_{week}", k, v) for week, counts in figures.by_week.items() for k, v in counts.items()),
            ("tickets", "all", figures.tickets), ("tickets", "answered", figures.answered),
            ("tickets", "answered_within_sla", figures.answered_within_sla), ("tickets", "resolved", figures.resolved),
            ("hours", "median_first_answer", _blank(figures.median_first_answer_hours)),
            ("hours", "median_resolution", _blank(figures.median_resolution_hours)),
            *(("calls", k, v) for k, v in figures.calls.items()),
            *(("followups", k, v) for k, v in figures.followups.items()),
            *(("followup_outcomes", k, v) for k, v in figures.followup_outcomes.items()),
            *(("satisfaction_score", str(k), v) for k, v in figures.satisfaction.items()),
            *(("choices_by_channel", k, v) for k, v in figures.choices_by_channel.items())]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    return len(rows)


def _blank(value: float | None) -> str:
    return "" if value is None else str(value)


def bars(counts: dict[str, int], width: int = 300) -> list[dict[str, Any]]:
    """Rows for an inline SVG bar chart: label, count and bar length in pixels (the longest is `width`)."""
    top = max(counts.values(), default=0) or 1
    return [{"label": label, "count": count, "length": round(width * count / top)} for label, count in counts.items()]
