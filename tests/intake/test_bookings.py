"""`import bookings`: CSV and JSON Lines in, upserted by reference, one transaction per chunk, rejects with reasons."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from notifier.intake import bookings as bookings_module
from notifier.intake.bookings import import_bookings
from notifier.intake.mapping import Mapping, load_mapping
from notifier.intake.network import import_network, load_network_file
from notifier.errors import UsageError
from notifier.store.db import transaction
from notifier.store.models import Booking, BookingImport, Customer, Sailing, SailingCapacity

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
HEADER = ["booking_ref", "sailing", "passengers_adult", "passengers_child", "vehicles", "fare_paid", "currency",
          "customer_ref", "customer_name", "customer_phone", "customer_email", "customer_language"]


@pytest.fixture
def network(factory):
    with transaction(factory) as session:
        import_network(session, load_network_file(FIXTURES / "network.yaml"))
    return factory


def booking_row(number: int, **changes: str) -> dict[str, str]:
    row = dict(zip(HEADER, [f"CSF{number:05d}", "DVR-CQF-20260914-0800", "2", "1", "0", "90.00", "GBP",
                            f"P{number}", f"Passenger {number}", f"+44 7911 1{number:05d}",
                            f"p{number}@example.com", "en-GB"]))
    return row | changes


def write_csv(path: Path, rows: list[dict[str, str]], encoding: str = "utf-8") -> Path:
    with open(path, "w", encoding=encoding, newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def booked(factory, code: str = "DVR-CQF-20260914-0800") -> dict[str, int]:
    with factory() as session:
        return dict(session.execute(select(SailingCapacity.space_class, SailingCapacity.booked)
                                    .join(Sailing).where(Sailing.code == code)).all())


def test_bookings_and_customers_come_in_checked_and_take_their_places(network, tmp_path):
    result = import_bookings(network, FIXTURES / "bookings.csv", Mapping(default_region="GB"),
                             rejects_path=tmp_path / "rejects.csv")
    assert (result.rows, result.created, result.rejected) == (3, 3, 0)
    with network() as session:
        alice = session.scalars(select(Booking).where(Booking.ref == "CSF1001")).one()
        assert (alice.party_size, alice.vehicles, alice.fare_paid, alice.currency) == (3, 1, 189.5, "GBP")
        assert alice.customer.phone == "+447911123456"  # 07911 123456, read in the default region GB
        assert (alice.customer.language, alice.customer.channels) == ("en-GB", ["sms", "email"])
        assert session.get(BookingImport, alice.id).party == {"adult": 2, "child": 1}
        jean = session.scalars(select(Booking).where(Booking.ref == "CSF1002")).one()
        assert jean.sailing.code == "DVR-CQF-20260914-1200"  # found by route and local departure
        assert jean.accessibility_needs and jean.customer.channels == ["sms"]  # no consent to email
        assert session.scalar(select(Booking.status).where(Booking.ref == "CSF1003")) == "cancelled"
    assert booked(network) == {"economy": 3, "vehicle": 1, "lane_metres": 0}
    assert not (tmp_path / "rejects.csv").exists()


def test_reimporting_skips_unchanged_rows_and_updates_changed_ones_in_place(network, tmp_path):
    rows = [booking_row(n) for n in range(1, 21)]
    import_bookings(network, write_csv(tmp_path / "b.csv", rows), Mapping())
    assert booked(network)["economy"] == 60
    rows[4] = booking_row(5, passengers_child="0", sailing="DVR-CQF-20260914-1200")
    again = import_bookings(network, write_csv(tmp_path / "b.csv", rows), Mapping(), chunk=7)
    assert (again.created, again.updated, again.unchanged) == (0, 1, 19)
    assert booked(network)["economy"] == 57 and booked(network, "DVR-CQF-20260914-1200")["economy"] == 2
    with network() as session:
        assert session.scalar(select(func.count()).select_from(Booking)) == 20


def test_json_lines_give_what_csv_gives(network, tmp_path):
    lines = [json.dumps(booking_row(1) | {"passengers_adult": 2, "accessibility_needs": True}),
             json.dumps(booking_row(2) | {"kind": "cargo", "teu": 4, "commodity": "Frozen fish", "key_account": True,
                                          "passengers_adult": None})]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    result = import_bookings(network, tmp_path / "b.jsonl", Mapping())
    assert (result.created, result.rejected) == (2, 0)
    with network() as session:
        cargo = session.scalars(select(Booking).where(Booking.ref == "CSF00002")).one()
        assert (cargo.kind, cargo.space_class, cargo.teu, cargo.customer.key_account) == ("cargo", "teu", 4, True)
        assert session.get(BookingImport, cargo.id).commodity == "Frozen fish"


def test_a_dry_run_reports_and_writes_nothing(network, tmp_path):
    rows = [booking_row(1), booking_row(2, customer_phone="not a phone")]
    result = import_bookings(network, write_csv(tmp_path / "b.csv", rows), Mapping(), dry_run=True,
                             rejects_path=tmp_path / "rejects.csv")
    assert (result.created, result.rejected, result.dry_run) == (1, 1, True)
    assert (tmp_path / "rejects.csv").exists()
    with network() as session:
        assert session.scalar(select(func.count()).select_from(Booking)) == 0
        assert session.scalar(select(func.count()).select_from(Customer)) == 0


def test_a_booking_rebooked_here_is_kept_as_notifier_left_it(network, tmp_path):
    path = write_csv(tmp_path / "b.csv", [booking_row(1)])
    import_bookings(network, path, Mapping())
    with transaction(network) as session:
        session.execute(update(Booking).values(status="rebooked"))
    result = import_bookings(network, write_csv(tmp_path / "b.csv", [booking_row(1, passengers_adult="4")]),
                             Mapping())
    assert (result.kept, result.updated) == (1, 0)
    with network() as session:
        assert session.scalar(select(Booking.party_size)) == 3


def test_a_chunk_that_fails_to_write_writes_none_of_its_bookings(network, tmp_path, monkeypatch):
    rows = [booking_row(n) for n in range(1, 6)]

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bookings_module, "move_booked", broken)
    with pytest.raises(RuntimeError):
        import_bookings(network, write_csv(tmp_path / "b.csv", rows), Mapping())
    with network() as session:
        assert session.scalar(select(func.count()).select_from(Booking)) == 0
        assert session.scalar(select(func.count()).select_from(Customer)) == 0


def test_the_mapping_file_reads_a_foreign_layout_and_refuses_a_wrong_one(tmp_path):
    mapping = load_mapping(FIXTURES / "nyc-ferry-mapping.yaml")
    row = mapping.apply({"Confirmation #": "X1", "State": "CXL", "Text me": "N", "Cell": "", "Line": "ER"})
    assert row == {"booking_ref": "X1", "status": "cancelled", "consent_sms": "no", "route": "ER", "currency": "USD",
                   "consent_email": "yes"}
    for text, reason in [("columns: {pnr: PNR}", "unknown field"), ("delimiter: ';;'", "one character"),
                         ("default_region: Britain", "ISO 3166"), ("colums: {}", "unknown key"),
                         ("columns: [", "not valid YAML")]:
        (tmp_path / "map.yaml").write_text(text)
        with pytest.raises(UsageError, match=reason):
            load_mapping(tmp_path / "map.yaml")
