"""Issue 21 scenario: the Hong Kong Observatory hoists the No. 8 Northeast Gale or Storm Signal over the demo
network, then cancels it. Played through the real pipeline (parse -> ingest -> rules -> disruptions -> planning ->
outbox) as the watcher runs it, with time moved by passing `now`: every Hong Kong sailing in the window is
cancelled and its passengers told; the CANCEL tells the same people that sailings resume."""

from __future__ import annotations

from datetime import datetime, timedelta

import time_machine
from sqlalchemy import select

from notifier.channels.file import FileEmailChannel, FileSmsChannel
from notifier.delivery.dispatch import dispatch_all

from notifier.feeds.sniff import parse_any
from notifier.ops.pipeline import ingest
from notifier.ops.watcher import run_pipeline
from notifier.rules.load import load_rules
from notifier.store.models import Booking, Disruption, Notification, Port, Sailing
from notifier.store.paths import rules_dir

HOISTED = "hko/warnsum-tc8ne-en.json"  # TC8NE issued 09:40 HKT (01:40 UTC), DEMO_NOW is 08:00 HKT
CANCELLED = "hko/warnsum-cancel-en.json"  # CANCEL at 19:20 HKT (11:20 UTC)


def hong_kong_sailings(factory, start: datetime, end: datetime, booked_only: bool = True) -> set[int]:
    """Sailings from or to a Hong Kong port departing between start and end (only those with bookings, by default)."""
    with factory() as session:
        hong_kong = set(session.scalars(select(Port.id).where(Port.country == "HK")))
        sailings = session.scalars(select(Sailing).where(Sailing.scheduled_departure.between(start, end)))
        booked = set(session.scalars(select(Booking.sailing_id)))
        return {s.id for s in sailings if {s.origin_port_id, s.destination_port_id} & hong_kong
                and (s.id in booked or not booked_only)}


def disruptions(factory) -> list[Disruption]:
    with factory() as session:
        return list(session.scalars(select(Disruption)))


def told(factory, template: str) -> set[int]:
    """The sailings whose bookings got a notice of this template in the outbox."""
    with factory() as session:
        rows = session.execute(select(Booking.sailing_id).join(Notification, Notification.booking_id == Booking.id)
                               .where(Notification.template == template))
        return {sailing_id for (sailing_id,) in rows}


def send(factory, tmp_settings, moment: datetime) -> None:
    """The dispatcher's run at that moment: what the outbox holds goes out (to files)."""
    with time_machine.travel(moment, tick=False):
        channels = {"sms": FileSmsChannel(tmp_settings.outbox_dir),
                    "email": FileEmailChannel(tmp_settings.outbox_dir, "ferries@example.com")}
        dispatch_all(factory, tmp_settings, channels)


def observe(feed_file, relative: str):
    feed_format, observations = parse_any(feed_file(relative))
    assert feed_format == "hko_warnings"  # recognised by its bytes, as the watcher's poll does
    return observations


def test_signal_8_cancels_every_hong_kong_sailing_and_its_cancel_tells_the_all_clear(
        factory, demo_db, tmp_settings, feed_file):
    rules = load_rules([rules_dir()])
    issued = demo_db.epoch + timedelta(hours=1, minutes=45)
    ingest(factory, observe(feed_file, HOISTED))
    first = run_pipeline(factory, tmp_settings, rules, issued)

    # The signal has no end time: the rule keeps it for 12 hours. Sailings well inside that are all cancelled.
    inside = hong_kong_sailings(factory, issued, issued + timedelta(hours=11))
    cancelled = {d.sailing_id for d in disruptions(factory) if d.kind == "cancelled" and d.status == "active"}
    assert inside and inside <= cancelled
    assert {d.rule_id for d in disruptions(factory)} == {"hk-signal-8-terminals"}
    # ... and nothing else: no Macau, Haikou or Shanghai sailing, nothing after the window.
    assert not cancelled - hong_kong_sailings(factory, issued - timedelta(hours=3), issued + timedelta(hours=14),
                                              booked_only=False)
    assert first["notifications_planned"] > 0 and inside <= told(factory, "cancelled")
    send(factory, tmp_settings, issued + timedelta(minutes=2))

    lifted = demo_db.epoch + timedelta(hours=11, minutes=25)
    ingest(factory, observe(feed_file, CANCELLED))
    second = run_pipeline(factory, tmp_settings, rules, lifted)

    assert second["disruptions_cleared"] > 0
    assert not [d for d in disruptions(factory) if d.status == "active" and d.rule_id == "hk-signal-8-terminals"]
    resumed = told(factory, "resumed")
    # The all-clear goes to those who were told, for the sailings still ahead when the signal came down.
    still_ahead = hong_kong_sailings(factory, lifted, issued + timedelta(hours=11))
    assert still_ahead and still_ahead <= resumed <= told(factory, "cancelled")
