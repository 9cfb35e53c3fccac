"""Who cannot be told by SMS is told by email when they can be: a STOP before planning, a landline, in a broadcast
that goes by SMS only. Without a usable email the booking is reported unreachable (preview, follow-up list)."""

from __future__ import annotations

from notifier.planning.audience import recipients_for, sms_refusal
from notifier.store.models import Booking, Customer

PHONE, LANDLINE, EMAIL = "+8613800138000", "+86 898 6533 0000", "li.wei@example.com"


def booking_of(phone: str | None, email: str | None, channels: tuple[str, ...] = ("sms", "email")
               ) -> tuple[Booking, Customer]:
    customer = Customer(id=7, ref="C7", name="Li Wei", phone=phone, email=email, language="zh-CN",
                        channels=list(channels))
    return Booking(id=3, ref="B3", customer_id=7), customer


def told(phone: str | None, email: str | None, stops: set[tuple[str, str]] = frozenset(),
         channels: tuple[str, ...] = ("sms", "email")) -> tuple[list[tuple[str, str]], list[str]]:
    found, missing = recipients_for(*booking_of(phone, email, channels), ["sms"], stops)
    return [(r.channel, r.address) for r in found], [u.reason for u in missing]


def test_a_customer_who_said_stop_gets_an_sms_only_broadcast_by_email():
    assert told(PHONE, EMAIL, {("sms", PHONE)}) == ([("email", EMAIL)], [])


def test_a_landline_with_an_email_on_file_is_told_by_email_not_left_out():
    assert told(LANDLINE, EMAIL) == ([("email", EMAIL)], [])


def test_without_a_usable_email_the_booking_is_reported_with_the_reason():
    assert told(PHONE, EMAIL, {("sms", PHONE), ("email", EMAIL)}) == ([], ["opted out"])
    assert told(LANDLINE, None) == ([], ["phone number cannot take SMS (landline)"])
    assert told(PHONE, EMAIL, {("sms", PHONE)}, channels=("sms",)) == ([], ["opted out"])  # accepts no email


def test_a_personal_number_takes_sms_and_other_kinds_are_named():
    assert sms_refusal("+15005550006") == ""  # Twilio's test number: a personal number, not a landline
    assert sms_refusal("+8689865330000") == "phone number cannot take SMS (landline)"
    assert told(PHONE, EMAIL) == ([("sms", PHONE)], [])  # a mobile still gets its SMS
