"""From an empty database to notices with the operator's own data: a real GTFS schedule (NYC Ferry), bookings
exported by a reservation system in its own layout and read through a mapping file, and a gale warning over New
York Harbor."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import select

from notifier.feeds import cap
from notifier.intake.bookings import import_bookings
from notifier.intake.gtfs import import_gtfs
from notifier.intake.mapping import load_mapping
from notifier.ops.pipeline import ingest, plan_pending, process_new_items
from notifier.planning.contacts import check_contacts
from notifier.rules.load import load_rules
from notifier.store.db import transaction
from notifier.store.models import Booking, Customer, Notification
from notifier.store.paths import rules_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
NOW = datetime(2025, 6, 2, 11, 0, tzinfo=UTC)  # 07:00 in New York
GALE_OVER_NEW_YORK_HARBOR = b"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>TEST-NYC-GALE-20250602</identifier>
  <sender>test@notifier.example</sender>
  <sent>2025-06-02T06:45:00-04:00</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <language>en-US</language>
    <category>Met</category>
    <event>Gale Warning</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <effective>2025-06-02T07:00:00-04:00</effective>
    <expires>2025-06-02T13:00:00-04:00</expires>
    <headline>Gale warning for New York Harbor</headline>
    <area>
      <areaDesc>New York Harbor and the East River</areaDesc>
      <polygon>40.60,-74.10 40.60,-73.93 40.78,-73.93 40.78,-74.10 40.60,-74.10</polygon>
    </area>
  </info>
</alert>
"""


def test_a_gale_over_new_york_harbor_reaches_bookings_imported_through_a_mapping(factory, tmp_settings, tmp_path,
                                                                                 shared_feeds):
    with transaction(factory) as session:
        import_gtfs(session, shared_feeds / "gtfs-static" / "nyc-ferry", today=date(2025, 6, 2), days=1)
    rejects = tmp_path / "rejects.csv"
    result = import_bookings(factory, FIXTURES / "nyc-ferry-reservations.csv",
                             load_mapping(FIXTURES / "nyc-ferry-mapping.yaml"), rejects_path=rejects)
    assert (result.rows, result.created, result.rejected) == (6, 5, 1)
    assert rejects.read_text().splitlines()[1].startswith("6,departure,'06/02/2025 09:99 AM' is not the mapping's")
    check_contacts(factory)

    ingest(factory, cap.parse(GALE_OVER_NEW_YORK_HARBOR))
    process_new_items(factory, load_rules([rules_dir()]), now=NOW)
    plan_pending(factory, tmp_settings, now=NOW)

    with factory() as session:
        told = session.execute(select(Booking.ref, Notification.channel, Notification.recipient)
                               .join(Notification, Notification.booking_id == Booking.id)).all()
        hostile = session.scalar(select(Customer.name).join(Booking, Booking.customer_id == Customer.id)
                                 .where(Booking.ref == "NYF-000106"))
    assert {ref for ref, _, _ in told} == {"NYF-000101", "NYF-000102", "NYF-000103", "NYF-000106"}  # not the cancelled
    assert ("NYF-000101", "sms", "+19175550123") in told  # (917) 555-0123 read in the mapping's region, US
    assert {channel for ref, channel, _ in told if ref == "NYF-000103"} == {"email"}  # "Text me: N"
    assert hostile.startswith("'=HYPERLINK(")  # stored as text, never a live formula in a spreadsheet
