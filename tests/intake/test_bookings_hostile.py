"""Hostile and broken booking files: each bad row gets one line in the rejects file (line, field, reason), the good
rows around it go in, and nothing else changes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from notifier.intake.bookings import import_bookings
from notifier.intake.mapping import Mapping
from notifier.intake.network import import_network, load_network_file
from notifier.store.db import transaction
from notifier.store.models import Booking, Customer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
HEADER = "booking_ref,sailing,passengers_adult,fare_paid,currency,customer_name,customer_phone,customer_email," \
         "customer_language"


def line(ref: str, **cells: str) -> str:
    row = {"booking_ref": ref, "sailing": "DVR-CQF-20260914-0800", "passengers_adult": "1", "fare_paid": "45.00",
           "currency": "GBP", "customer_name": f"Passenger {ref}", "customer_phone": "+44 7911 123456",
           "customer_email": f"{ref.lower()}@example.com", "customer_language": "en"} | cells
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row.values())
    return out.getvalue()


@pytest.fixture
def network(factory):
    with transaction(factory) as session:
        import_network(session, load_network_file(FIXTURES / "network.yaml"))
    return factory


def imported(factory, path: Path, tmp_path: Path) -> tuple[set[str], list[list[str]]]:
    rejects = tmp_path / "rejects.csv"
    import_bookings(factory, path, Mapping(), rejects_path=rejects)
    with factory() as session:
        refs = set(session.scalars(select(Booking.ref)))
    return refs, list(csv.reader(rejects.open(encoding="utf-8")))[1:] if rejects.exists() else []


@pytest.mark.parametrize("bad, field, reason", [
    (line("B2", customer_name="Jos\udce9"), "customer_name", "holds bytes that are not in the file's encoding"),
    (line("B1"), "booking_ref", "'B1' appears on an earlier line of this file"),
    (line("B2", sailing="DVR-CQF-20990101-0800"), "sailing", "there is no sailing 'DVR-CQF-20990101-0800'"),
    (line("B2", customer_phone="call me maybe"), "customer_phone", "is not a valid phone number"),
    (line("B2", customer_phone="+44 7911"), "customer_phone", "is not a valid phone number"),
    (line("B2", customer_email="b2@"), "customer_email", "is not a valid email address"),
    (line("B2", customer_language="xx-YY"), "customer_language", "'xx-YY' is not a BCP 47 language tag"),
    (line("B2", currency="POUNDS"), "currency", "'POUNDS' is not an ISO 4217 currency code"),
    (line("B2", fare_paid="12.345"), "fare_paid", "'12.345' is not an amount from 0 with at most 2 decimals"),
    (line("B2", passengers_adult="-2"), "passengers_adult", "'-2' is not a whole number from 0 to 100000"),
    (line("B2", customer_name="Bad\x00Name"), "customer_name", "holds a control character"),
    (line("B2", customer_name=""), "customer_name", "is missing"),
    (line("B2", booking_ref=""), "booking_ref", "is missing"),
    (line("B2") + ",extra", "", "has 10 cells; the header has 9"),
    (line("B2", customer_name="x" * 10_000_000), "", "cannot be read as CSV (field larger than field limit"),
])
def test_a_bad_row_is_rejected_with_its_reason_and_the_good_ones_go_in(network, tmp_path, bad, field, reason):
    text = "\n".join([HEADER, line("B1"), bad, line("B3")]) + "\n"
    path = tmp_path / "bookings.csv"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    refs, rejects = imported(network, path, tmp_path)
    assert refs == {"B1", "B3"}
    assert len(rejects) == 1
    assert rejects[0][:2] == ["3", field] and rejects[0][2].startswith(reason), rejects
    assert "\n" not in rejects[0][2] and len(rejects[0][2]) < 200


def test_a_byte_order_mark_is_read_past(network, tmp_path):
    path = tmp_path / "bookings.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([HEADER, line("B1")]).encode())
    assert imported(network, path, tmp_path) == ({"B1"}, [])


def test_formula_cells_are_stored_as_text(network, tmp_path):
    path = tmp_path / "bookings.csv"
    path.write_text("\n".join([HEADER, line("B1", customer_name='=HYPERLINK("http://evil.example","x")'),
                               line("B2", customer_name="@SUM(A1)"), line("B3", customer_name="-Ann")]))
    refs, rejects = imported(network, path, tmp_path)
    assert (refs, rejects) == ({"B1", "B2", "B3"}, [])
    with network() as session:
        names = set(session.scalars(select(Customer.name)))
    assert names == {"'=HYPERLINK(\"http://evil.example\",\"x\")", "'@SUM(A1)", "'-Ann"}


def test_malformed_json_lines_are_rejected_one_by_one(network, tmp_path):
    good = {"booking_ref": "B1", "sailing": "DVR-CQF-20260914-0800", "currency": "GBP", "customer_name": "Ann"}
    path = tmp_path / "bookings.jsonl"
    path.write_text("\n".join([json.dumps(good), '{"booking_ref": "B2", ', "[1, 2]",
                               json.dumps(good | {"booking_ref": "B4", "passengers_adult": {"nested": 1}}),
                               json.dumps(good | {"booking_ref": "B5"})]) + "\n")
    refs, rejects = imported(network, path, tmp_path)
    assert refs == {"B1", "B5"}
    assert [(r[0], r[1]) for r in rejects] == [("2", ""), ("3", ""), ("4", "passengers_adult")]
    assert rejects[0][2].startswith("is not valid JSON") and rejects[1][2] == "is not a JSON object"


def test_a_file_in_another_encoding_is_read_with_the_mappings_encoding(network, tmp_path):
    path = tmp_path / "bookings.csv"
    path.write_bytes("\n".join([HEADER, line("B1", customer_name="José Muñoz")]).encode("cp1252"))
    refs, rejects = imported(network, path, tmp_path)
    assert rejects[0][1:] == ["customer_name", "holds bytes that are not in the file's encoding"]
    import_bookings(network, path, Mapping(encoding="cp1252"))
    with network() as session:
        assert session.scalar(select(Customer.name)) == "José Muñoz"
