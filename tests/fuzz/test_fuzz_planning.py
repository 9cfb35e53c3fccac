"""No input makes planning put anything malformed in the outbox.

On the demo network, the customers booked on one sailing are given hostile names, phone numbers, email addresses
and languages, and a duty officer's advisory carries hostile --reason text; the broadcast is planned through the
real `broadcasts.create_manual`. Either it stops with a NotifierError (a reason too long, nobody reachable) or
every outbox row it planned is sendable: a valid E.164 number or email address, a non-empty body, no template
syntax left unrendered (the injected text itself aside), HTML escaped, and the SMS cost counted as Twilio bills.
"""

from __future__ import annotations

import re

import pytest
from email_validator import validate_email
from hypothesis import event, given
from hypothesis import strategies as st
from markupsafe import escape
from sqlalchemy import func, select, update

from notifier.errors import NotifierError
from notifier.planning.audience import can_take_sms, normalise_phone
from notifier.broadcasts.manual import BroadcastRequest, clean_reason, create_manual
from notifier.store.settings import load_settings
from notifier.store.db import make_engine, session_factory
from notifier.ops.demo import generate
from notifier.store.migrate import upgrade
from notifier.store.models import Booking, Customer, Notification, Sailing
from tests.conftest import DEMO_NOW
from tests.fuzz.budget import fuzz
from tests.fuzz.hostile import EMAILS, PHONES, hostile_text
from tests.fuzz.reference import sms_split

E164 = re.compile(r"\+[1-9]\d{6,14}")


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """One demo network for every example (building it takes seconds); each example plans a new advisory."""
    folder = tmp_path_factory.mktemp("planning-fuzz")
    settings = load_settings(env={}, config_path=None, database_url=f"sqlite:///{folder / 'fuzz.db'}",
                             outbox_dir=str(folder / "outbox"), secret_key="fuzz-secret",
                             public_base_url="https://ferry.example")
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    generate(factory, 600, DEMO_NOW)
    with factory() as session:
        busiest = session.execute(
            select(Sailing.code, Sailing.id).join(Booking, Booking.sailing_id == Sailing.id)
            .where(Sailing.scheduled_departure > DEMO_NOW)
            .group_by(Sailing.code, Sailing.id).order_by(func.count().desc(), Sailing.code).limit(4)).all()
        customer_ids = sorted(set(session.scalars(select(Booking.customer_id).where(
            Booking.sailing_id.in_([sailing_id for _, sailing_id in busiest])))))
    yield factory, settings, tuple(code for code, _ in busiest), customer_ids
    engine.dispose()


CUSTOMER = st.fixed_dictionaries({
    "name": hostile_text(long=200).map(lambda text: text[:200]),
    "phone": st.one_of(st.none(), PHONES.map(lambda text: text[:20]), st.just("+852 9123 4567")),
    "email": st.one_of(st.none(), EMAILS.map(lambda text: text[:254]), st.just("passenger@example.com")),
    "language": st.sampled_from(["en", "zh-CN", "zh-Hant-HK", "zh-TW", "en-GB", "fr", "xx", "", "qq-ZZ"]),
    "channels": st.sampled_from([["sms", "email"], ["email", "sms"], ["sms"], ["email"], []]),
})


@fuzz(12, scale=0.005)
@given(data=st.data(), reason=hostile_text(long=480), template=st.sampled_from([None, "advisory", "notice"]))
def test_planning_hostile_text_and_contacts_puts_only_sendable_rows_in_the_outbox(network, data, reason, template):
    factory, settings, codes, customer_ids = network
    customers = {customer_id: data.draw(CUSTOMER) for customer_id in customer_ids}
    with factory() as session, session.begin():
        for customer_id, values in customers.items():
            session.execute(update(Customer).where(Customer.id == customer_id).values(**values))
    request = BroadcastRequest(operator="fuzz", kind="advisory", sailings=codes, reason=reason, template=template)
    try:
        broadcast_id = create_manual(factory, request, settings, now=DEMO_NOW)
    except NotifierError as exc:
        assert "\n" not in str(exc)
        event(f"refused: {type(exc).__name__}")
        return
    with factory() as session:
        rows = list(session.scalars(select(Notification).where(Notification.broadcast_id == broadcast_id)))
    assert rows
    event(f"planned {len(rows)} notices")
    injected = [clean_reason(reason) or ""] + [c["name"] for c in customers.values()]
    injected += [text.strip() for text in injected]
    for row in rows:
        assert_sendable(row, customers[row.customer_id], injected)


def assert_sendable(row: Notification, customer: dict, injected: list[str]) -> None:
    if row.channel == "sms":
        assert E164.fullmatch(row.recipient) and can_take_sms(row.recipient)
        assert row.recipient == normalise_phone(customer["phone"])
        assert row.segments == len(sms_split(row.body_text).parts), "the SMS cost is what Twilio bills"
    else:
        assert row.channel == "email"
        assert validate_email(row.recipient, check_deliverability=False).normalized == row.recipient
        assert row.subject and "\n" not in row.subject and "\r" not in row.subject
        html = _without(row.body_html, [str(escape(text)) for text in injected])
        assert "<script" not in row.body_html.lower() and "{{" not in html and "{%" not in html
        assert str(escape(customer["name"])) in row.body_html, "the customer's name, escaped, in the HTML"
    assert row.channel in customer["channels"]
    assert row.body_text.strip(), "a notice is never empty"
    text = _without(f"{row.subject or ''}\n{row.body_text}", injected)
    assert "{{" not in text and "{%" not in text, "template syntax left unrendered"


def _without(text: str, values: list[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        if value:
            text = text.replace(value, "")
    return text
