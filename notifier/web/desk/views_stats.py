"""The desk's statistics page (charts drawn on the server as inline SVG bars, nothing loaded at run time) and its
CSV export."""

from __future__ import annotations

import io

from flask import Response

from notifier.aftercare.desk_stats import bars, desk_figures, write_csv
from notifier.aftercare.reports import build_report
from notifier.store import audit
from notifier.web.desk.blueprint import agent, desk, factory, page_words, render


@desk.get("/stats")
def stats_page() -> Response:
    """Tickets by category, route and week, answer times against the SLA, calls, follow-ups and satisfaction."""
    with factory()() as db:
        figures = desk_figures(db)
    told = build_report(factory()).totals()
    t = page_words()
    weekly = {week: sum(counts.values()) for week, counts in figures.by_week.items()}
    charts = [("by_category", bars({t["categories"].get(k, k): v for k, v in figures.by_category.items()})),
              ("by_route", bars(figures.by_route)), ("by_week", bars(weekly)),
              ("satisfaction", bars({f"{k}/5": v for k, v in figures.satisfaction.items()})),
              ("worklist", bars({t["reasons"].get(k, k): v for k, v in figures.followups.items()})),
              ("choices", bars(figures.choices_by_channel)),
              ("told_within", bars({f"{m} min": n for m, n in told["told_within"].items()})),
              ("reach", bars({t["affected"]: told["affected"], t["reachable"]: told["reachable"]}))]
    return render("stats.html.j2", figures=figures, charts=charts)


@desk.get("/stats.csv")
def stats_csv() -> Response:
    """The same figures as CSV (audited: it is an export)."""
    with factory()() as db:
        figures = desk_figures(db)
        audit.record(db, agent().name, "desk.stats_exported", None, None)
        db.commit()
    out = io.StringIO()
    write_csv(figures, out, build_report(factory()).totals())
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=desk-statistics.csv"})
