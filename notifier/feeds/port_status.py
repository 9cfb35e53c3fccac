"""Port authority notices (open / restricted / closed) in notifier's own simple format -> Observations. Pure.

Port authorities publish closures as web pages, PDFs and social posts, not as a standard feed, so notifier defines
a small format that ops staff (or a scraper) can write by hand. It comes as JSON or CSV:

    JSON   a list of notice objects, or {"notices": [ ... ]}
    CSV    UTF-8, one header row, one notice per row; the header must name the six columns
           locode,status,reason,from,until,source  (optionally followed by id,updated)

    locode,status,reason,from,until,source
    HKHKG,closed,Typhoon signal No. 8,2025-09-01T08:00:00+08:00,2025-09-02T06:00:00+08:00,Hong Kong Marine Department
    CNSHK,restricted,Fog: daylight berthing only,2025-09-01T00:00:00Z,,Shenzhen MSA

| field     | required | meaning                                                                                      |
|-----------|----------|----------------------------------------------------------------------------------------------|
| `locode`  | yes      | the port's UN/LOCODE: 2-letter country + 3 characters from A-Z and 2-9 (`HKHKG`, `CNSHK`)     |
| `status`  | yes      | `open`, `restricted` or `closed`                                                              |
| `reason`  | no       | free text, shown to staff and quoted in messages                                              |
| `from`    | yes      | when the status starts: ISO 8601 with a UTC offset (`2025-09-01T08:00:00+08:00`, `...Z`)     |
| `until`   | no       | when it ends, same form; empty (or null) means until further notice                           |
| `source`  | no       | who issued it; empty means the name of the configured feed                                    |
| `id`      | no       | the notice's own id: a later notice with the same id replaces it                              |
| `updated` | no       | when the notice was (re)issued, ISO 8601 with offset: the version of the notice               |

A time without an offset is refused, never guessed: a port's local time and UTC differ by up to 14 hours. Without
an `id` a notice is known by its port and start time, and without `updated` by its content, so re-reading an
unchanged file creates nothing new while a changed reason or end time is a new version of the same notice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from datetime import datetime
from typing import Any

from notifier.feeds import FeedParseError, Observation
from notifier.feeds.reading import PARSE_SECONDS, Deadline, decode_text, iso, load_json, parse_time

CSV_COLUMNS = ("locode", "status", "reason", "from", "until", "source")
STATUSES = {"open": ("Port open", "Minor"), "restricted": ("Port restricted", "Moderate"),
            "closed": ("Port closed", "Severe")}
# UN/LOCODE: ISO 3166 country code + 3 characters; the location part never uses the digits 0 and 1.
LOCODE = re.compile(r"[A-Z]{2}[A-Z2-9]{3}")


def is_locode(value: str) -> bool:
    """True when `value` has the form of a UN/LOCODE ("HKHKG")."""
    return bool(LOCODE.fullmatch(value))


def parse(data: bytes, source: str = "", notes: list[str] | None = None,
          seconds: float = PARSE_SECONDS) -> list[Observation]:
    """Parse port status notices (JSON or CSV) into one Observation per notice."""
    deadline = Deadline(seconds)
    text = decode_text(data, "port status notices").lstrip()
    if text.startswith(("[", "{")):
        labelled = [(f"port status notice {n}", notice) for n, notice in enumerate(_json_notices(data), 1)]
    else:
        labelled = [(f"port status CSV line {line}", row) for line, row in _csv_notices(text, deadline)]
    return [notice_to_observation(notice, where, source) for where, notice in deadline.over(labelled)]


def _json_notices(data: bytes) -> list[Any]:
    document = load_json(data, "port status notices")
    if isinstance(document, dict):
        document = document.get("notices")
    if not isinstance(document, list):
        raise FeedParseError('port status JSON must be a list of notices or {"notices": [...]}')
    return document


def _csv_notices(text: str, deadline: Deadline) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the line number is what a spreadsheet or editor shows (the header is line 1)."""
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [name.strip().lower() for name in reader.fieldnames or []]
        missing = [name for name in CSV_COLUMNS if name not in header]
        if missing:
            raise FeedParseError(f"port status CSV lacks the column(s) {', '.join(missing)}; the header must be "
                                 f"{','.join(CSV_COLUMNS)}")
        reader.fieldnames = header
        rows = [(reader.line_num, row) for row in deadline.over(reader)]
    except csv.Error as exc:
        raise FeedParseError(f"port status CSV is malformed ({exc})") from None
    for line, row in rows:
        # DictReader fills the columns a short row lacks with None: the sign of a cut-off file.
        if None in row.values():
            raise FeedParseError(f"port status CSV line {line} has fewer columns than the header (cut off?)")
    return rows


def notice_to_observation(notice: Any, where: str, source: str = "") -> Observation:
    """Map one notice (a JSON object or a CSV row) to an Observation of kind port_status."""
    if not isinstance(notice, dict):
        raise FeedParseError(f"{where} is not an object with locode, status and from")
    value = {name: _text(notice.get(name), f"{where}: {name}") for name in CSV_COLUMNS + ("id", "updated")}
    locode = value["locode"].upper()
    if not is_locode(locode):
        raise FeedParseError(f"{where}: locode {value['locode'][:20]!r} is not a UN/LOCODE (like HKHKG)")
    status = value["status"].lower()
    if status not in STATUSES:
        raise FeedParseError(f"{where}: status {value['status'][:20]!r} is not open, restricted or closed")
    start = parse_time(value["from"], f"{where}: from")
    if start is None:
        raise FeedParseError(f"{where}: 'from' (when the status starts) is required")
    end = parse_time(value["until"], f"{where}: until")
    if end is not None and end < start:
        raise FeedParseError(f"{where}: 'until' {value['until']} is before 'from' {value['from']}")
    updated = parse_time(value["updated"], f"{where}: updated")
    event, severity = STATUSES[status]
    reason = value["reason"]
    return Observation(
        source=value["source"] or source or "port_status", format="port_status", kind="port_status",
        external_id=value["id"] or f"{locode}@{start.isoformat()}",
        version=updated.isoformat() if updated else _content_version(locode, status, reason, start, end),
        event=event, severity=severity, sent=updated, onset=start, expires=end,
        headline=f"{locode} {status}" + (f": {reason}" if reason else ""), description=reason,
        ports=[locode], fields={"status": status, "reason": reason, "from": iso(start), "until": iso(end)})


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FeedParseError(f"{what} should be text, not {type(value).__name__}")
    return value.strip()


def _content_version(*parts: Any) -> str:
    canonical = json.dumps([iso(p) if isinstance(p, datetime) else p for p in parts])
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]
