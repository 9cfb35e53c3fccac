"""Stored contact checks: a customer's phone and email are validated once, not once per broadcast.

Checking one phone number with `phonenumbers` (parse, valid, SMS-capable) and one address with `email-validator`
costs about half a millisecond: a minute for the 100,000 customers of a typhoon, at the worst moment. So the
outcome of `audience`'s own check is stored on the customer (`Customer.contact_check`) together with the phone
and email it was made for. Planning uses a stored check while it matches the customer's current phone and email
and checks (and stores) afresh otherwise, so a stale or missing check costs time, never a wrong address.
`check_contacts` fills the checks in bulk (after a booking import; the scale benchmark's generator uses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from notifier.planning.audience import Recipient, Unreachable, recipients_for
from notifier.planning.audience import _address as checked_address
from notifier.store.db import transaction
from notifier.store.models import Customer

# Bump when audience's idea of a usable address changes: every stored check then counts as stale.
CHECK_VERSION = 1


def contact_check(phone: str | None, email: str | None) -> dict[str, Any]:
    """Check a phone and an email as `audience.recipients_for` would, remembering what was checked."""
    holder = _Contacts(phone, email)
    return {"v": CHECK_VERSION, "phone": phone, "email": email,
            "sms": list(checked_address(holder, "sms")), "mail": list(checked_address(holder, "email"))}


def is_current(check: dict[str, Any] | None, phone: str | None, email: str | None) -> bool:
    """True when a stored check was made, by this version, for exactly this phone and email."""
    return bool(check) and check.get("v") == CHECK_VERSION and check.get("phone") == phone \
        and check.get("email") == email


def recipients_checked(booking: Any, customer: Any, check: dict[str, Any], channels: list[str],
                       opt_outs: set[tuple[str, str]] | frozenset[tuple[str, str]], respect_opt_out: bool = True
                       ) -> tuple[list[Recipient], list[Unreachable]]:
    """`audience.recipients_for` with the addresses taken from a current stored check (same results)."""
    return recipients_for(booking, customer, channels, opt_outs, respect_opt_out,
                          address_of=partial(_stored_address, check))


def _stored_address(check: dict[str, Any], channel: str) -> tuple[str | None, str]:
    address, reason = check["sms"] if channel == "sms" else check["mail"]
    return address, reason


def store_checks(session: Session, checks: dict[int, dict[str, Any]]) -> None:
    """Write fresh checks (customer id -> check) in one executemany."""
    if not checks:
        return
    table = Customer.__table__
    session.execute(update(table).where(table.c.id == bindparam("b_id")).values(contact_check=bindparam("b_check")),
                    [{"b_id": customer_id, "b_check": check} for customer_id, check in checks.items()])


def check_contacts(factory: sessionmaker[Session], chunk: int = 20_000, processes: int = 1) -> int:
    """Check and store the contacts of every customer whose stored check is missing or stale; returns how many
    were checked. `processes` > 1 spreads the checking (CPU-bound) over that many worker processes."""
    checked, after = 0, 0
    pool = ProcessPoolExecutor(processes) if processes > 1 else None
    try:
        while True:
            with factory() as session:
                rows = session.execute(select(Customer.id, Customer.phone, Customer.email, Customer.contact_check)
                                       .where(Customer.id > after).order_by(Customer.id).limit(chunk)).all()
            if not rows:
                return checked
            after = rows[-1].id
            stale = [(row.id, row.phone, row.email) for row in rows
                     if not is_current(row.contact_check, row.phone, row.email)]
            with transaction(factory) as session:
                store_checks(session, dict(_checked(stale, pool)))
            checked += len(stale)
    finally:
        if pool is not None:
            pool.shutdown()


def _checked(stale: list[tuple[int, str | None, str | None]], pool: ProcessPoolExecutor | None
             ) -> Iterable[tuple[int, dict[str, Any]]]:
    if pool is None:
        return ((customer_id, contact_check(phone, email)) for customer_id, phone, email in stale)
    slices = [stale[start:start + 2000] for start in range(0, len(stale), 2000)]
    return (pair for done in pool.map(_check_slice, slices) for pair in done)


def _check_slice(stale: list[tuple[int, str | None, str | None]]) -> list[tuple[int, dict[str, Any]]]:
    return [(customer_id, contact_check(phone, email)) for customer_id, phone, email in stale]


class _Contacts:
    """What `audience._address` reads of a customer."""

    __slots__ = ("phone", "email")

    def __init__(self, phone: str | None, email: str | None) -> None:
        self.phone, self.email = phone, email
