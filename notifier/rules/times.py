"""Time arithmetic for rule evaluation that is total over every time a feed may give.

CAP allows any year from 0001 to 9999, so a hazard window, its margins and its open end can reach past the last
(or before the first) moment Python represents. Such a bound is held at that moment instead of raising
OverflowError: "after the end of time" selects no sailing, "before the start of time" every earlier one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def shifted(moment: datetime, delta: timedelta) -> datetime:
    """moment + delta, held at the first or last representable moment where the sum would overflow."""
    try:
        return moment + delta
    except OverflowError:
        return LATEST if delta > timedelta(0) else EARLIEST


def in_utc(moment: datetime) -> datetime:
    """The moment in UTC; one whose offset carries it past either end of the calendar is held at that end."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return LATEST if moment.year == datetime.max.year else EARLIEST


def utc_minute(moment: datetime) -> str:
    """'2026-09-14 06:00', in UTC: how explanations show a time (year 1 as 0001, which strftime's %Y does not)."""
    return in_utc(moment).isoformat(sep=" ", timespec="minutes")[:16]
