"""What the duty officer's console prints: previews, progress, reports, the booking card, feed and watcher health.

Plain text a person reads at 3 a.m. and a README can quote: one fact per line, counts before details, times in
UTC unless they are a sailing's departure (then the port's local time, as the customer sees it). Contacts never
appear unmasked.

It is one piece, past 500 lines, because it is the one place the console's wording lives: every command prints
through it, so a phrase reads the same in a preview, a report and a booking card.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session, sessionmaker

from notifier.broadcasts.manual import CancelResult
from notifier.broadcasts.preview import Preview, Progress, finish_sent_broadcasts, progress
from notifier.ops.quarantine import QuarantineView
from notifier.store.settings import Settings
from notifier.store.models import utcnow
from notifier.aftercare.reminders import preview_reminders
from notifier.ops.polling import PollResult
from notifier.rules.model import RuleSet
from notifier.store.status import AWAITING_APPROVAL, BROADCAST_AT_REST, SENDING



def when(moment: datetime | None) -> str:
    """A UTC time as the console shows it."""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'3 min ago' style age of a moment."""
    if moment is None:
        return "never"
    seconds = int(((now or utcnow()) - moment).total_seconds())
    if seconds < 90:
        return f"{max(seconds, 0)} s ago"
    if seconds < 90 * 60:
        return f"{seconds // 60} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def duration(seconds: float) -> str:
    """A rough human duration: '40 s', '12 min', '2.5 h'."""
    if seconds < 90:
        return f"{max(round(seconds), 1)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def table(rows: list[list[Any]], header: list[str], indent: str = "  ") -> list[str]:
    """Left-aligned text columns (numbers right-aligned)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and rows for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((indent + "  ".join(parts)).rstrip())
    return lines


# --- broadcasts -----------------------------------------------------------------------------------------------------

def preview_lines(preview: Preview, settings: Settings, shown: int | None = 15) -> list[str]:
    """The preview of a broadcast, top to bottom in the order a duty officer checks it (`shown` caps the list of
    bookings without a usable contact; None lists them all)."""
    b = preview.broadcast
    facts = preview.facts
    lines = [f"Broadcast #{b.id} ({b.origin}, {b.kind}) by {b.created_by}: {b.status.replace('_', ' ')}",
             f"  template {b.template}, channels {'+'.join(b.channels)}, audience {b.audience}"]
    if b.reason:
        lines.append(f"  free text: {b.reason}")
    lines += _target_lines(preview)
    total = sum(preview.messages.values())
    lines.append(f"Recipients: {total} message(s) to {preview.bookings} booking(s)")
    rows = [[channel, language, count] for (channel, language), count in sorted(preview.messages.items())]
    lines += table(rows, ["channel", "language", "messages"]) if rows else []
    lines += _skipped_lines(facts)
    lines += _unreachable_lines(preview, shown)
    sms = sum(n for (channel, _), n in preview.messages.items() if channel == "sms")
    lines.append(f"SMS: {sms} message(s), {preview.sms_segments} segment(s), estimated cost "
                 f"{settings.sms_price_currency} {preview.sms_cost} (at {settings.sms_price_per_segment} "
                 "per segment)")
    lines.append(f"Expected time to deliver: about {duration(preview.seconds_to_deliver)} "
                 f"(SMS {settings.sms_segments_per_second:g} segments/s, email {settings.emails_per_second:g}/s)")
    lines += _offer_lines(preview)
    lines += reminder_lines(preview_reminders(settings, b.id))
    lines += [f"WARNING: {warning}" for warning in preview.warnings]
    lines += _approval_lines(b, facts)
    for sample in preview.samples:
        size = f", {sample.segments} segment(s)" if sample.channel == "sms" else ""
        lines.append(f"--- sample: {sample.channel} {sample.language}{size} ---")
        if sample.subject:
            lines.append(f"Subject: {sample.subject}")
        lines += sample.body.rstrip("\n").split("\n")
    return lines


def _target_lines(preview: Preview) -> list[str]:
    target = preview.broadcast.target or {}
    mode = target.get("mode", "disruption")
    described = {"route": f"route {target.get('route')}", "port": f"port {target.get('port')}",
                 "vessel": f"vessel {target.get('vessel')} {target.get('voyage') or ''}".rstrip(),
                 "correction": f"correction of broadcast #{target.get('corrects')}",
                 "sailing": "sailings named with --sailing",
                 "disruption": "disruption(s) " + ", ".join(f"#{d}" for d in target.get("disruptions", []))
                 }.get(mode, mode)
    window = ""
    if target.get("from"):
        zone = ZoneInfo(target.get("zone") or "UTC")
        start, end = (datetime.fromisoformat(target[k]).astimezone(zone) for k in ("from", "to"))
        window = f" from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({zone.key})"
    lines = [f"Target: {described}{window}: {len(preview.sailings)} sailing(s)"]
    rows = [[s["code"], s["departure"], s["timezone"], f"#{s['disruption_id']}", s["kind"], s["revision"],
             "opened now" if s["opened"] else "existing"] for s in preview.sailings[:20]]
    lines += table(rows, ["sailing", "departs (local)", "zone", "disruption", "kind", "rev", ""]) if rows else []
    if len(preview.sailings) > 20:
        lines.append(f"  ... and {len(preview.sailings) - 20} more sailing(s)")
    for skipped in target.get("skipped_sailings", []) + (preview.facts.get("skipped_sailings") or []):
        lines.append(f"  not targeted: {skipped['sailing']} {skipped['reason']}")
    return lines


def _unreachable_lines(preview: Preview, shown: int | None) -> list[str]:
    unreached = preview.unreached
    lines = [f"Bookings without any usable contact: {len(unreached)}"]
    listed = unreached if shown is None else unreached[:shown]
    lines += table([[u["booking_ref"], u["reason"]] for u in listed], ["booking", "why"]) if listed else []
    if len(listed) < len(unreached):
        lines.append(f"  ... and {len(unreached) - len(listed)} more (all of them: `notifier broadcast preview "
                     f"{preview.broadcast.id} --all`)")
    fully = {u["booking_ref"] for u in unreached}
    partly = Counter((u["channel"], u["reason"]) for u in preview.facts.get("unreachable", [])
                     if u["booking_ref"] not in fully)
    if partly:
        lines.append("Told on fewer channels than asked: " + ", ".join(
            f"{count} without {channel} ({reason})" for (channel, reason), count in partly.most_common()))
    return lines


def _skipped_lines(facts: dict[str, Any]) -> list[str]:
    skipped = facts.get("skipped", [])
    if not skipped:
        return ["Skipped (already told): none"]
    total = sum(s["bookings"] for s in skipped)
    lines = [f"Skipped (already told): {total} booking(s), so nobody hears the same thing twice"]
    for s in skipped:
        who = f"broadcast #{s['broadcast_id']}" if s["broadcast_id"] else "another notice"
        lines.append(f"  {s['bookings']} already told about disruption #{s['disruption_id']} "
                     f"(revision {s['revision']}) by {who}")
    return lines


def _offer_lines(preview: Preview) -> list[str]:
    if not preview.bookings_with_offers:
        return ["Offers: none (this notice offers no alternatives)"]
    lines = [f"Offers: {preview.bookings_with_offers} booking(s) with choices; places held on "
             f"{len(preview.offers_held)} alternative sailing(s); {preview.bookings_without_place} booking(s) "
             f"left without a place; {preview.refunds_offered} refund(s) offered"]
    rows = [[o["code"], o["departure"], o["places"], o["bookings"]] for o in preview.offers_held[:12]]
    lines += table(rows, ["alternative sailing", "departs (local)", "places held", "bookings"]) if rows else []
    return lines


def reminder_lines(plan: dict[str, Any]) -> list[str]:
    """What reminders a broadcast leads to (notifier.aftercare.reminders.planned_reminders)."""
    if plan["lead_minutes"] <= 0:
        return ["Reminders: off (reminder_lead_minutes = 0)"]
    if not plan["bookings"]:
        queued = f"; {plan['queued']} already queued" if plan["queued"] else ""
        return [f"Reminders: none to come (no booking has a choice still to make){queued}"]
    window = plan["first_due"] if plan["first_due"] == plan["last_due"] else \
        f"{plan['first_due']} to {plan['last_due']}"
    return [f"Reminders: one each to the {plan['bookings']} booking(s) still without a choice, "
            f"{plan['lead_minutes']} min before their deadline ({window} {plan['timezone']}); on the other channel "
            f"where the notice failed; none after a choice, an opt-out or the deadline; {plan['queued']} queued "
            "so far"]


def _approval_lines(broadcast: Any, facts: dict[str, Any]) -> list[str]:
    reasons = facts.get("approval_reasons", [])
    if broadcast.status == AWAITING_APPROVAL:
        return [f"Approval: needed ({'; '.join(reasons) or 'the rule asks for it'}); an operator other than "
                f"{broadcast.created_by} runs: notifier broadcast approve {broadcast.id} --operator NAME"]
    if broadcast.approved_by:
        return [f"Approval: approved by {broadcast.approved_by} at {when(broadcast.approved_at)}"]
    return ["Approval: not needed"]


def progress_line(p: Progress) -> str:
    """One line of counts for `broadcast status`."""
    held = f"held {p.counts['held']}, " if p.counts["held"] else ""
    return (f"Broadcast #{p.broadcast_id}: {p.status.replace('_', ' ')}; {p.total} message(s): sent {p.sent}, "
            f"delivered {p.counts['delivered']}, failed {p.failed}, remaining {p.remaining} ({held}queued "
            f"{p.counts['queued']}, sending {p.counts['sending']}), cancelled {p.counts['cancelled']}; "
            f"rate {p.rate:.1f}/s")


def follow(factory: sessionmaker[Session], broadcast_id: int, settings: Settings,
           dispatch_with: Callable[[threading.Event], None] | None = None, interval: float = 0.5) -> Progress:
    """A live progress bar (rich) until the broadcast is done, paused or cancelled, or Ctrl-C. With
    `dispatch_with`, that function sends in a background thread meanwhile (`send --wait`)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn

    stop = threading.Event()
    sender = threading.Thread(target=dispatch_with, args=(stop,), daemon=True) if dispatch_with else None
    console = Console()
    columns = [TextColumn("#{task.fields[id]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("sent {task.fields[sent]}  delivered {task.fields[delivered]}  failed {task.fields[failed]}"
                          "  remaining {task.fields[remaining]}  {task.fields[rate]:.1f}/s")]
    current = progress(factory, broadcast_id)
    try:
        with Bar(*columns, console=console, transient=False) as bar:
            task = bar.add_task("broadcast", total=max(current.total, 1), **_fields(current))
            if sender is not None:
                sender.start()
            while True:
                finish_sent_broadcasts(factory)
                current = progress(factory, broadcast_id)
                bar.update(task, total=max(current.total, 1), completed=current.total - current.remaining,
                           **_fields(current))
                if current.status in BROADCAST_AT_REST or (sender is not None and not sender.is_alive()
                                                 and current.remaining and current.status != SENDING):
                    break
                if sender is not None and not sender.is_alive() and not current.remaining:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        console.print("stopped following; what is still queued stays queued for `notifier dispatch`")
    finally:
        stop.set()
        if sender is not None and sender.is_alive():
            sender.join()
    finish_sent_broadcasts(factory)
    return progress(factory, broadcast_id)


def _fields(p: Progress) -> dict[str, Any]:
    return {"id": p.broadcast_id, "sent": p.sent, "delivered": p.counts["delivered"], "failed": p.failed,
            "remaining": p.remaining, "rate": p.rate}


def dispatch_here(factory: sessionmaker[Session], settings: Settings) -> Callable[[threading.Event], None]:
    """A dispatcher for `follow` to run in this process until its stop event is set (`broadcast send --wait`)."""

    def run(stop: threading.Event) -> None:
        from notifier.delivery.providers import channels_for
        from notifier.delivery.dispatch import Dispatcher

        channels = channels_for(settings)
        dispatcher = Dispatcher(factory, settings, channels)
        threading.Thread(target=lambda: (stop.wait(), dispatcher.request_stop()), daemon=True).start()
        try:
            while not stop.is_set():
                dispatcher.run(drain=True)
                stop.wait(max(settings.dispatch_poll_seconds, 0.2))
        finally:
            dispatcher.close()
            for channel in channels.values():
                channel.close()

    return run


def cancelled_lines(broadcast_id: int, result: CancelResult) -> list[str]:
    """`broadcast cancel`: what was stopped, what had gone out, and how to correct it."""
    cleared = (f", disruption(s) {', '.join(f'#{d}' for d in result.disruptions_cleared)} cleared (nobody had "
               "been told)" if result.disruptions_cleared else "")
    lines = [f"Broadcast #{broadcast_id} cancelled: {result.cancelled} unsent message(s) stopped, "
             f"{result.told} already sent, {result.holds_released} held place(s) given back{cleared}."]
    if result.told:
        lines.append(f"To correct what was sent: notifier broadcast correct {broadcast_id} --reason TEXT")
    return lines


def broadcast_list_lines(rows: Iterable[tuple[Any, Any]]) -> list[str]:
    """`broadcast list`: newest first."""
    table_rows = []
    for broadcast, counts in rows:
        sent = counts["sent"] + counts["delivered"]
        remaining = counts["held"] + counts["queued"] + counts["sending"]
        table_rows.append([f"#{broadcast.id}", when(broadcast.created_at)[:16], broadcast.origin, broadcast.kind,
                           broadcast.status.replace("_", " "), broadcast.created_by, broadcast.recipient_count,
                           sent, remaining])
    if not table_rows:
        return ["no broadcasts yet"]
    return table(table_rows, ["id", "created (UTC)", "origin", "kind", "status", "by", "messages", "sent",
                              "remaining"], indent="")


# --- reports ---------------------------------------------------------------------------------------------------------

def report_lines(report: Any) -> list[str]:
    """`notifier report` as text: one row per disruption, then the totals and what failed."""
    if not report.disruptions:
        return ["no disruptions yet", *desk_lines(getattr(report, "desk", None))]
    rows = [[f"#{d.disruption_id}", d.sailing, d.kind, d.known_at.strftime("%m-%d %H:%M"), d.affected,
             d.told_within[5], d.told_within[15], d.told_within[30], d.sent, d.delivered, d.failed,
             d.choices.get("rebook", 0), d.choices.get("refund", 0), d.choices.get("none", 0),
             d.eu_duty + (f" ({d.eu_late} late)" if d.eu_late else "")] for d in report.disruptions]
    lines = table(rows, ["disruption", "sailing", "kind", "known (UTC)", "affected", "<=5m", "<=15m", "<=30m",
                         "sent", "delivered", "failed", "rebook", "refund", "none", "EU 30-min duty"], indent="")
    t = report.totals()
    affected = max(t["affected"], 1)
    lines += ["", f"Totals over {len(report.disruptions)} disruption(s): {t['affected']} booking(s) affected, "
                  f"{t['told']} told ({100 * t['told'] // affected}%)",
              "  told within " + ", ".join(f"{m} min: {n} ({100 * n // affected}%)"
                                           for m, n in t["told_within"].items()),
              f"  notices: {t['notices']} planned, {t['sent']} sent, {t['delivered']} delivered (carrier receipt), "
              f"{t['failed']} failed, {t['pending']} pending, {t['cancelled']} cancelled",
              "  choices: " + ", ".join(f"{k} {v}" for k, v in t["choices"].items()),
              "  EU 30-minute duty: " + (", ".join(f"{k} {v}" for k, v in t["eu_duty"].items()) or "n/a")]
    if t["failed_by_reason"]:
        lines.append("Failed by reason:")
        lines += [f"  {count:6d}  {reason}" for reason, count in sorted(t["failed_by_reason"].items(),
                                                                        key=lambda kv: -kv[1])]
    return lines + closing_lines(report) + desk_lines(getattr(report, "desk", None))


def desk_lines(desk: Any) -> list[str]:
    """The service desk's figures (notifier.aftercare.desk_stats), once it has had any work."""
    if desk is None or not desk.busy:
        return []
    hours = desk.median_first_answer_hours, desk.median_resolution_hours
    lines = ["", f"Service desk: {desk.tickets} ticket(s), {desk.answered} answered "
                 f"({desk.answered_within_sla} within the SLA), {desk.resolved} resolved",
             "  by category: " + (", ".join(f"{k} {v}" for k, v in sorted(desk.by_category.items())) or "none"),
             "  by route: " + (", ".join(f"{k} {v}" for k, v in sorted(desk.by_route.items())) or "none"),
             "  by week: " + (", ".join(f"{week} {sum(c.values())}" for week, c in desk.by_week.items()) or "none"),
             "  median hours to first answer / to resolution: "
             + " / ".join("-" if h is None else f"{h:.1f}" for h in hours),
             "  calls: " + (", ".join(f"{k} {v}" for k, v in sorted(desk.calls.items())) or "none")]
    return lines


def closing_lines(report: Any) -> list[str]:
    """Closing the loop, per disruption: settled (and how many without a person), follow-ups done and open, how
    long settling took, and the satisfaction scores."""
    rows, scores, asked = [], Counter(), 0
    for d in report.disruptions:
        c = d.closing
        if not c or not c.get("affected"):
            continue
        share = f"{100 * c['without_person'] // c['affected']}%"
        median, last = c.get("median_minutes_to_settle"), c.get("minutes_until_all_settled")
        took = (f"all in {duration(last * 60)}" if last is not None else "not yet") + \
            (f" (median {duration(median * 60)})" if median is not None else "")
        given = {int(k): v for k, v in c["scores"].items()}
        scores.update(given)
        asked += c["requests"]
        rows.append([f"#{d.disruption_id}", d.sailing, f"{c['settled']}/{c['affected']}", share,
                     c["followups_done"], c["followups_open"], took, _score_text(given, c["requests"])])
    if not rows:
        return []
    lines = ["", "Closing the loop:"]
    lines += table(rows, ["disruption", "sailing", "settled", "no person", "follow-ups done", "open",
                          "time to settle", "scores 1/2/3/4/5 (answers/asked)"])
    lines.append(f"  satisfaction: {_score_text(dict(scores), asked)}"
                 + (f", average {sum(k * v for k, v in scores.items()) / sum(scores.values()):.1f}"
                    if scores else ""))
    return lines


def _score_text(scores: dict[int, int], asked: int) -> str:
    if not asked:
        return "not asked yet"
    answered = sum(scores.values())
    return "/".join(str(scores.get(s, 0)) for s in range(1, 6)) + f" ({answered}/{asked})"


def booking_lines(card: Any) -> list[str]:
    """`booking show`: the booking, its notices, offers and choice (contacts masked)."""
    b, c, s = card.booking, card.customer, card.sailing
    lines = [f"Booking {b['ref']} ({b['kind']}, {b['status']}): {b['places']} {b['space_class']}"
             f"{', ' + str(b['vehicles']) + ' vehicle(s)' if b['vehicles'] else ''}, paid {b['fare_paid']}",
             f"Customer {c['ref']}: {c['name']}, language {c['language']}, phone {c['phone']}, email {c['email']}, "
             f"accepts {', '.join(c['channels']) or 'nothing'}",
             f"Sailing {s['code']} ({s['status']}), departs "
             f"{s['departure'].astimezone(ZoneInfo(s['timezone'])):%Y-%m-%d %H:%M} ({s['timezone']})"]
    lines.append(f"Notices: {len(card.notices)}")
    lines += table([[f"#{n['id']}", when(n["created_at"])[:16], n["purpose"], n["template"], n["channel"], n["to"],
                     n["status"], when(n["sent_at"])[:16] if n["sent_at"] else "-",
                     f"#{n['broadcast_id']}" if n["broadcast_id"] else "-", n["error"]] for n in card.notices],
                   ["notice", "planned (UTC)", "purpose", "template", "channel", "to", "status", "sent (UTC)",
                    "broadcast", "error"]) if card.notices else []
    lines.append(f"Offers: {len(card.offers)}")
    lines += table([[f"#{o['disruption_id']}", o["revision"], o["key"], o["kind"], o["sailing"] or o["amount"],
                     o["status"], when(o["hold_expires_at"])[:16] if o["hold_expires_at"] else "-"]
                    for o in card.offers],
                   ["disruption", "rev", "key", "kind", "sailing / amount", "status", "hold until (UTC)"]) \
        if card.offers else []
    decisions = [r for r in card.choices if r.get("decision", True)]
    replies = [r for r in card.choices if not r.get("decision", True)]
    if decisions:
        lines += [f"Choice: {r['choice']} by {r['channel']} at {when(r['at'])} (disruption #{r['disruption_id']})"
                  + (f": {r['text']}" if r["text"] else "") for r in decisions]
    else:
        lines.append("Choice: none yet")
    lines += [f"Reply: {r['choice'].replace('_', ' ')} by {r['channel']} at {when(r['at'])}"
              + (f" (disruption #{r['disruption_id']})" if r["disruption_id"] else "")
              + (f": {r['text']}" if r["text"] else "") for r in replies]
    lines += followup_lines(getattr(card, "followups", []))
    return lines


def worklist_lines(items: list[Any]) -> list[str]:
    """`followups list`: the desk's work, most urgent first, each with why and what happened so far."""
    if not items:
        return ["Follow-ups: nothing to do"]
    counts = Counter(item.status for item in items)
    lines = [f"Follow-ups: {counts['open'] + counts['taken']} to do ({counts['open']} open, {counts['taken']} taken)"
             + (f", {counts['done']} done" if counts["done"] else "") + ", most urgent first"]
    for item in items:
        state = {"open": "open", "taken": f"taken by {item.operator}",
                 "done": f"done by {item.operator}: {item.outcome}"}[item.status]
        key = ", key account" if item.key_account else ""
        lines.append(f"#{item.id} {item.reason} [{state}] booking {item.booking_ref} ({item.customer_name}{key}), "
                     f"{item.sailing} departs {item.departure_local} {item.timezone}")
        lines.append(f"    why: {item.detail}")
        if item.reply:
            lines.append(f"    reply: {item.reply}")
        lines.append(f"    contact: phone {item.phone}, email {item.email}, language {item.language}")
        lines += [f"    {event}" for event in item.history[-6:]]
        if item.note:
            lines.append(f"    note: {item.note}")
    return lines


def followup_lines(followups: list[dict[str, Any]]) -> list[str]:
    """A booking's follow-ups for `booking show`: reason, state, who, outcome and note."""
    if not followups:
        return ["Follow-ups: none"]
    lines = [f"Follow-ups: {len(followups)}"]
    for f in followups:
        state = {"open": "open", "taken": f"taken by {f['operator']} at {when(f['taken_at'])}",
                 "done": f"done by {f['operator']} at {when(f['done_at'])}: {f['outcome']}"}[f["status"]]
        lines.append(f"  #{f['id']} {f['reason']} (raised {when(f['created_at'])}): {state}")
        lines.append(f"      why: {f['detail']}")
        if f["note"]:
            lines.append(f"      note: {f['note']}")
    return lines


def audit_lines(entries: Iterable[Any]) -> list[str]:
    """`notifier audit`: one line per entry."""
    lines = []
    for entry in entries:
        subject = f"{entry.subject_type} {entry.subject_id}" if entry.subject_type else ""
        details = ", ".join(f"{k}={_short(v)}" for k, v in (entry.details or {}).items() if v not in (None, [], {}))
        lines.append(f"{when(entry.at)}  {entry.actor:<12} {entry.action:<24} {subject:<16} {details}".rstrip())
    return lines or ["no audit entries in that period"]


def audit_json_lines(entries: Iterable[Any]) -> list[str]:
    """`notifier audit --json`: one JSON object per entry."""
    return [json.dumps({"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "subject_type": e.subject_type,
                        "subject_id": e.subject_id, "details": e.details}, ensure_ascii=False, default=str)
            for e in entries]


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- feeds and the watcher -------------------------------------------------------------------------------------------

def feeds_lines(healths: list[Any], watchers: list[Any], now: datetime | None = None) -> list[str]:
    """`feeds list`: each configured source with its health, then the watcher's heartbeat."""
    now = now or utcnow()
    if not healths:
        lines = ["no feeds configured: add [[feeds]] tables (name, url, format, poll_seconds, "
                 "stale_after_seconds) to notifier.toml"]
    else:
        rows = [[h.source.name, h.source.format, f"{h.source.poll_seconds}s", h.health, ago(h.last_success_at, now),
                 h.consecutive_failures, h.quarantined, (h.last_error or "")[:60]] for h in healths]
        lines = table(rows, ["feed", "format", "every", "health", "last success", "failures", "quarantined",
                             "last error"], indent="")
    return lines + watcher_lines(watchers, now)


def quarantine_lines(view: QuarantineView) -> list[str]:
    """The quarantined feed items, broadcasts and webhook bodies (a stage failed on them; the ones after them went
    on)."""
    items, broadcasts, bodies = view.items, view.broadcasts, view.bodies
    if not items:
        lines = ["quarantined feed items: none"]
    else:
        rows = [[f"#{item.id}", item.source, when(item.processed_at), (item.error or "")[:70]] for item in items]
        lines = ([f"quarantined feed items: {len(items)} (fix the cause, then `notifier feeds retry ID`)"]
                 + table(rows, ["item", "feed", "failed at", "why"]))
    if broadcasts:
        rows = [[f"#{b.id}", b.kind, b.template, (b.error or "")[:70]] for b in broadcasts]
        lines += ([f"quarantined broadcasts: {len(broadcasts)} (fix the cause, then "
                   "`notifier feeds retry --broadcast ID`)"] + table(rows, ["broadcast", "kind", "template", "why"]))
    if bodies:
        rows = [[when(error.at), error.source.removeprefix("webhook:"), error.message[:80]] for error in bodies]
        lines += ([f"webhook bodies not applied in the last 24 h: {len(bodies)} (kept here for a person)"]
                  + table(rows, ["at", "webhook", "why"]))
    return lines


def watcher_lines(watchers: list[Any], now: datetime | None = None) -> list[str]:
    """The watchers' heartbeats, the leader first."""
    if not watchers:
        return ["watcher: none has run against this database (start one with `notifier watch`)"]
    ordered = sorted(watchers, key=lambda w: (w.role != "leader", w.silent, -w.beat_at.timestamp()))
    lines = []
    for w in ordered[:6]:
        state = "SILENT (died?)" if w.silent else w.role
        lines.append(f"watcher {w.owner}: {state}, last heartbeat {ago(w.beat_at, now)}, "
                     f"up since {when(w.started_at)}")
    return lines


def watcher_detail_lines(watcher: Any) -> list[str]:
    """What the watcher's last cycle of each job did."""
    lines = []
    for job, done in sorted(watcher.details.items()):
        facts = ", ".join(f"{k}={_short(v)}" for k, v in done.items() if k != "at" and v not in (None, [], {}))
        lines.append(f"  {job:<22} {done.get('at', '')[:19]}  {facts}".rstrip())
    return lines


def poll_lines(results: list[PollResult], pipeline: dict[str, Any]) -> list[str]:
    """`feeds poll --once`: one line per feed, then what the rules made of the new items."""
    lines = []
    for result in results:
        if result.outcome == "error":
            lines.append(f"{result.source}: error: {result.errors[0]}")
            continue
        extra = f"; {len(result.errors)} entry error(s): {result.errors[0]}" if result.errors else ""
        lines.append(f"{result.source}: {result.outcome}, {result.documents} document(s), {result.observations} "
                     f"observation(s), {len(result.new_item_ids)} new, {result.duplicates} already seen{extra}")
    lines.append(f"rules: {pipeline['items']} new item(s), {pipeline['disruptions_changed']} disruption(s) opened or "
                 f"revised, {pipeline['disruptions_cleared']} cleared, broadcasts {pipeline['broadcasts'] or 'none'}")
    return lines


# --- rules and configuration ------------------------------------------------------------------------------------------

def rule_set_lines(loaded: RuleSet) -> list[str]:
    """`rules check`: each rule and policy loaded, the loader's notes, and the count."""
    lines = []
    for rule in loaded.rules:
        cites = f"  [{rule.verification}] {rule.citation}" if rule.citation else ""
        lines.append(f"ok  {rule.id:28} {Path(rule.file).name:22} {rule.then.kind:12}{cites}")
    for policy in loaded.policies.values():
        lines.append(f"ok  policy {policy.id:21} {Path(policy.file).name:22} [{policy.verification}] "
                     f"{policy.citation}")
    lines += [f"note: {note}" for note in loaded.notes]
    lines.append(f"{len(loaded.rules)} rule(s) and {len(loaded.policies)} policy(ies) valid")
    return lines


def inspect_rule_lines(verdicts: list[tuple[Any, list[tuple[str, str, int]]]], network: bool) -> list[str]:
    """`feeds inspect`: for each observation, the rules that would take it (rule id, what it makes, how many
    sailings of this network it reaches), or that none would; a Cancel clears instead of matching."""
    lines = []
    for observation, taken in verdicts:
        item = f"rules: {observation.external_id[:60]}"
        if observation.msg_type == "Cancel":
            lines.append(f"{item}: a Cancel - clears what its earlier versions raised (no rule is needed)")
        elif not taken:
            lines.append(f"{item}: no rule takes it")
        for rule_id, kind, sailings in taken:
            reach = f"{sailings} sailing(s) of this network" if network else "no database here to count sailings"
            lines.append(f"{item}: taken by {rule_id} ({kind}; {reach})")
    return lines


def config_lines(masked: dict[str, Any]) -> list[str]:
    """`config show`: every setting, secrets masked."""
    lines = []
    for name, value in masked.items():
        if name == "feeds":
            for source in value:
                lines.append(f"[[feeds]] name={source.name} url={source.url} format={source.format} "
                             f"poll_seconds={source.poll_seconds} stale_after_seconds={source.stale_after_seconds}")
            continue
        lines.append(f"{name} = {value!r}" if isinstance(value, str) else f"{name} = {value}")
    return lines

