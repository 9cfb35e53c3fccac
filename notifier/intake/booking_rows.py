"""One booking row, checked: our fields (after the mapping) in, the booking and customer values out, or the
field at fault and why.

Checked with the libraries made for it: phone numbers parsed to E.164 with `phonenumbers` (a number without
a country code is read in the mapping's default region), email addresses with `email-validator` (no DNS
look-up), languages as BCP 47 tags with Babel, currencies against Babel's ISO 4217 list. Free text (names,
shipper, commodity) that a spreadsheet would run as a formula (starting with = + - @, a tab or a carriage
return) is stored with a leading apostrophe, so an export of it opened in a spreadsheet shows text, not a formula.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import phonenumbers
from babel import Locale, UnknownLocaleError
from babel.numbers import list_currencies
from email_validator import EmailNotValidError, validate_email

from notifier.intake.mapping import Mapping

STATUSES = ("confirmed", "cancelled", "travelled")
PASSENGER_TYPES = ("adult", "child", "infant", "senior")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TRUE, FALSE = {"true", "yes", "y", "1", "t"}, {"false", "no", "n", "0", "f", ""}
LIMITS = {"booking_ref": 32, "customer_ref": 32, "customer_name": 200, "shipper": 200, "commodity": 120,
          "customer_email": 254, "customer_phone": 40, "space_class": 32, "sailing": 64, "route": 32}
CURRENCIES = frozenset(list_currencies())
# Control characters other than tab and line breaks, and the lone surrogates that stand for undecodable bytes.
UNWANTED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\udc80-\udcff]")
UNDECODABLE = re.compile("[\udc80-\udcff]")


class RowError(ValueError):
    """A field of a row that fails its check."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


@dataclass
class CheckedBooking:
    """A row that passed every check: what it writes, and the sailing it names (code, or route + departure)."""

    booking: dict[str, Any]
    customer: dict[str, Any]
    sailing: str | None
    route: str | None
    departure: datetime | None  # naive: the local time at the route's departure port
    party: dict[str, int]
    commodity: str | None


def row_hash(row: dict[str, Any], mapping: Mapping) -> str:
    """A digest of a mapped row and the mapping settings that shape it: the same digest means nothing changed."""
    text = repr((sorted((k, str(v)) for k, v in row.items()), mapping.default_region, mapping.date_format))
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def check_row(row: dict[str, Any], mapping: Mapping) -> CheckedBooking:
    """The booking, customer and sailing a mapped row describes; RowError names the first field that is wrong."""
    for name, value in row.items():
        _check_text(name, value)
    ref = _required(row, "booking_ref")
    status = _choice(row, "status", STATUSES, "confirmed")
    cargo = str(row.get("kind", "")).lower() == "cargo" or _integer(row, "teu") > 0
    booking = {"ref": ref, "status": status, "kind": "cargo" if cargo else "passenger",
               "fare_paid": _money(row), "currency": _currency(row),
               "accessibility_needs": _flag(row, "accessibility_needs", False), "vehicles": _integer(row, "vehicles"),
               "dangerous_goods": _flag(row, "dangerous_goods", False), "shipper": _free_text(row, "shipper")}
    party = {kind: _integer(row, f"passengers_{kind}") for kind in PASSENGER_TYPES}
    party = {kind: count for kind, count in party.items() if count}
    booking.update(_cargo(row) if cargo else _passengers(row, party))
    sailing, route = row.get("sailing"), row.get("route")
    if not sailing and not (route and row.get("departure")):
        raise RowError("sailing", "names no sailing: give sailing (a code) or route and departure")
    departure = None if sailing else _departure(str(row["departure"]), mapping.date_format)
    return CheckedBooking(booking, _customer(row, mapping), str(sailing) if sailing else None,
                          None if sailing else str(route), departure, party, _free_text(row, "commodity"))


def _passengers(row: dict[str, Any], party: dict[str, int]) -> dict[str, Any]:
    size = sum(party.values()) if party else 1
    if size > 999:
        raise RowError("passengers_adult", f"a party of {size} is not one booking")
    return {"space_class": _limited(row, "space_class", "economy").lower(), "party_size": size, "teu": 0,
            "containers": 0, "reefer_plugs": 0}


def _cargo(row: dict[str, Any]) -> dict[str, Any]:
    teu = _integer(row, "teu")
    if teu < 1:
        raise RowError("teu", "a cargo booking needs at least 1 TEU")
    return {"space_class": _limited(row, "space_class", "teu").lower(), "party_size": 0, "teu": teu,
            "containers": _integer(row, "containers") or max(1, teu // 2),
            "reefer_plugs": _integer(row, "reefer_plugs")}


def _customer(row: dict[str, Any], mapping: Mapping) -> dict[str, Any]:
    phone = _phone(str(row["customer_phone"]), mapping.default_region) if row.get("customer_phone") else None
    email = _email(str(row["customer_email"])) if row.get("customer_email") else None
    name = _free_text(row, "customer_name")
    if not name:
        raise RowError("customer_name", "is missing")
    ref = row.get("customer_ref") or "H" + hashlib.blake2b(
        (email or phone or f"{name}|{row['booking_ref']}").encode("utf-8", "surrogateescape"),
        digest_size=10).hexdigest()
    channels = [channel for channel in ("sms", "email") if _flag(row, f"consent_{channel}", True)]
    return {"ref": _limited({"customer_ref": ref}, "customer_ref"), "name": name, "phone": phone, "email": email,
            "language": _language(str(row.get("customer_language") or "en")), "channels": channels,
            "key_account": _flag(row, "key_account", False)}


@lru_cache(maxsize=65_536)
def _phone(raw: str, region: str | None) -> str:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        where = f" (read in region {region})" if region else " (no default_region given for numbers without +)"
        raise RowError("customer_phone", f"is not a valid phone number{where}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=65_536)
def _email(raw: str) -> str:
    if len(raw) > LIMITS["customer_email"]:
        raise RowError("customer_email", f"is longer than {LIMITS['customer_email']} characters")
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise RowError("customer_email", f"is not a valid email address ({str(exc).rstrip('.')})") from None


@lru_cache(maxsize=4_096)
def _language(tag: str) -> str:
    written = tag.strip().replace("_", "-")
    try:
        Locale.parse(written, sep="-")
    except (UnknownLocaleError, ValueError, TypeError):
        raise RowError("customer_language", f"{tag[:20]!r} is not a BCP 47 language tag Babel knows "
                                            "(such as en, zh-CN, zh-Hant-HK)") from None
    # Kept as written, only its case made canonical: templates and catalogs are chosen by this tag, and Babel's
    # own form would add a script the sender never wrote (zh-CN -> zh_Hans_CN).
    return "-".join(part.lower() if index == 0 else part.title() if len(part) == 4 else part.upper()
                    for index, part in enumerate(written.split("-")))


def _departure(value: str, date_format: str | None) -> datetime:
    try:
        return datetime.strptime(value, date_format) if date_format else datetime.fromisoformat(value)
    except ValueError:
        expected = f"the mapping's date_format {date_format}" if date_format else "ISO 8601 (2026-09-14T08:30)"
        raise RowError("departure", f"{value[:30]!r} is not {expected}") from None


def _check_text(name: str, value: Any) -> None:
    if isinstance(value, str):
        suspect = UNWANTED.search(value)  # one scan in C for both; most cells have neither
        if suspect and UNDECODABLE.search(value):
            raise RowError(name, "holds bytes that are not in the file's encoding")
        if suspect:
            raise RowError(name, "holds a control character")
        if len(value) > LIMITS.get(name, 1000):
            raise RowError(name, f"is longer than {LIMITS.get(name, 1000)} characters")
    elif not isinstance(value, int | float | bool):
        raise RowError(name, "must be text, a number or true/false")


def _required(row: dict[str, Any], name: str) -> str:
    value = str(row.get(name, "")).strip()
    if not value:
        raise RowError(name, "is missing")
    return _limited({name: value}, name)


def _limited(row: dict[str, Any], name: str, default: str = "") -> str:
    value = str(row.get(name) or default).strip()
    if len(value) > LIMITS[name]:
        raise RowError(name, f"is longer than {LIMITS[name]} characters")
    return value


def _free_text(row: dict[str, Any], name: str) -> str | None:
    value = str(row.get(name) or "").strip(" \n")
    if not value:
        return None
    value = "'" + value if value.startswith(FORMULA_STARTS) else value
    if len(value) > LIMITS[name]:
        raise RowError(name, f"is longer than {LIMITS[name]} characters")
    return value


def _choice(row: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = str(row.get(name) or default).strip().lower()
    if value not in allowed:
        raise RowError(name, f"{value[:20]!r} is not one of {', '.join(allowed)}")
    return value


def _integer(row: dict[str, Any], name: str) -> int:
    value = row.get(name)
    if value is None or value == "":
        return 0
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except ValueError:
        number = None
    if number is None or isinstance(value, bool) or not 0 <= number <= 100_000:
        raise RowError(name, f"{str(value)[:20]!r} is not a whole number from 0 to 100000")
    return number


def _flag(row: dict[str, Any], name: str, default: bool) -> bool:
    value = row.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise RowError(name, f"{text[:20]!r} is not true or false")


def _money(row: dict[str, Any]) -> Decimal:
    value = row.get("fare_paid")
    try:
        amount = Decimal(str(value).strip()) if value not in (None, "") else Decimal("0")
    except InvalidOperation:
        raise RowError("fare_paid", f"{str(value)[:20]!r} is not an amount such as 45.00") from None
    if not amount.is_finite() or not 0 <= amount < Decimal("1e10") or amount != amount.quantize(Decimal("0.01")):
        raise RowError("fare_paid", f"{str(value)[:20]!r} is not an amount from 0 with at most 2 decimals")
    return amount


def _currency(row: dict[str, Any]) -> str:
    code = str(row.get("currency") or "").strip().upper()
    if code not in CURRENCIES:
        raise RowError("currency", f"{code[:10]!r} is not an ISO 4217 currency code such as EUR"
                       if code else "is missing")
    return code
