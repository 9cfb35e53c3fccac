"""Phone numbers and email addresses as customers and booking systems really type them: normalisation never
raises, gives either None or a sendable address, and normalising its own output changes nothing."""

from __future__ import annotations

import re

from email_validator import validate_email
from hypothesis import example, given
from hypothesis import strategies as st

from notifier.planning.audience import can_take_sms, normalise_email, normalise_phone
from notifier.store.models import Customer, Notification
from tests.fuzz.budget import fuzz
from tests.fuzz.hostile import EMAILS, PHONES

E164 = re.compile(r"\+[1-9]\d{6,14}")
REGIONS = st.sampled_from([None, "HK", "CN", "MO", "TW", "US", "GB", "IT", "ZZ", "xx", "", "hk", "001"])


@fuzz(400)
@given(raw=st.one_of(st.none(), PHONES), region=REGIONS)
@example(raw="+852 9123 4567", region=None)
@example(raw="９１２３４５６７", region="HK")
@example(raw="+1-800-FLOWERS", region=None)
def test_phone_normalisation_gives_e164_or_none_and_is_idempotent(raw, region):
    phone = normalise_phone(raw, region)
    if phone is None:
        return
    assert E164.fullmatch(phone), phone
    assert len(phone) <= Customer.__table__.c.phone.type.length
    assert normalise_phone(phone) == phone
    assert normalise_phone(phone, region) == phone
    assert isinstance(can_take_sms(phone), bool)


@fuzz(200)
@given(raw=PHONES)
def test_can_take_sms_answers_for_anything(raw):
    assert isinstance(can_take_sms(raw), bool)


@fuzz(400)
@given(raw=st.one_of(st.none(), EMAILS))
@example(raw="Alice.Chan@EXAMPLE.COM")
@example(raw="用户@例子.广告")
@example(raw="a@b.com\r\nBcc: x@evil.example")
def test_email_normalisation_gives_a_valid_address_or_none_and_is_idempotent(raw):
    email = normalise_email(raw)
    if email is None:
        return
    assert validate_email(email, check_deliverability=False).normalized == email
    assert normalise_email(email) == email
    assert not set(email) & set("\r\n\x00<>"), "an address must not carry header syntax"
    assert len(email) <= Notification.__table__.c.recipient.type.length
