"""Disrupted sailings -> bookings -> recipients: which channel, which address, which language.

A booking without a usable contact is not dropped silently: it comes back with the reason, so the preview and
the follow-up worklist can show it. A customer who cannot be told by SMS (opted out, no number that can take SMS)
is told by email instead when they have a usable email and accept email, even in an SMS-only broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Set as AbstractSet
from dataclasses import dataclass
from functools import partial

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from notifier.store.models import Booking, Broadcast, Customer, Disruption, Notification, OptOut
from notifier.store.status import CONFIRMED, TOLD

_KIND = phonenumbers.PhoneNumberType
# Personal numbers (a "follow-me" number, and Twilio's test numbers) forward to a mobile, so they take SMS too.
SMS_CAPABLE = {_KIND.MOBILE, _KIND.FIXED_LINE_OR_MOBILE, _KIND.PERSONAL_NUMBER}
NUMBER_KINDS = {_KIND.FIXED_LINE: "landline", _KIND.TOLL_FREE: "toll-free", _KIND.PREMIUM_RATE: "premium rate",
                _KIND.SHARED_COST: "shared cost", _KIND.VOIP: "VoIP", _KIND.PAGER: "pager", _KIND.UAN: "company number",
                _KIND.VOICEMAIL: "voicemail"}
AUDIENCE_KINDS = {"passengers": {"passenger"}, "shippers": {"cargo"}, "all": {"passenger", "cargo"}}
# Automatic broadcasts whose notices carry no offers: the all-clear, and advisories ("may be disrupted").
NOTICE_ONLY_KINDS = ("resumed", "advisory")
# channel -> (address, "" or why there is no usable one)
AddressLookup = Callable[[str], tuple[str | None, str]]


@dataclass(frozen=True)
class Recipient:
    """One address to tell about one booking."""

    booking_id: int
    customer_id: int
    channel: str
    address: str
    language: str


@dataclass(frozen=True)
class Unreachable:
    """A booking (or one of its channels) that cannot be told, and why."""

    booking_id: int
    booking_ref: str
    channel: str
    reason: str


def normalise_phone(raw: str | None, default_region: str | None = None) -> str | None:
    """E.164 form of a phone number, or None when it is not a valid number."""
    if not raw:
        return None
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def can_take_sms(e164: str) -> bool:
    """True for numbers that can receive SMS (mobiles, and numbers the plan cannot tell apart from one)."""
    try:
        return phonenumbers.number_type(phonenumbers.parse(e164)) in SMS_CAPABLE
    except phonenumbers.NumberParseException:
        return False


def sms_refusal(e164: str) -> str:
    """Why a valid number cannot take SMS, in words for the preview and the follow-up list ("" when it can)."""
    try:
        kind = phonenumbers.number_type(phonenumbers.parse(e164))  # parsed once: this runs per customer
    except phonenumbers.NumberParseException:
        return "phone number cannot take SMS (not a mobile)"
    return "" if kind in SMS_CAPABLE else f"phone number cannot take SMS ({NUMBER_KINDS.get(kind, 'not a mobile')})"


def normalise_email(raw: str | None) -> str | None:
    """The normalised address, or None when it is not a deliverable-looking address (no DNS look-up)."""
    if not raw:
        return None
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def opted_out(session: Session) -> set[tuple[str, str]]:
    """Every (channel, address) that asked not to be messaged."""
    return {(row.channel, row.address) for row in session.scalars(select(OptOut))}


def recipients_for(booking: Booking, customer: Customer, channels: list[str], opt_outs: AbstractSet[tuple[str, str]],
                   respect_opt_out: bool = True, *, address_of: AddressLookup | None = None
                   ) -> tuple[list[Recipient], list[Unreachable]]:
    """The recipients for one booking on the wanted channels, and the channels it cannot be reached on.
    `address_of` gives a channel's (address, reason it is unusable); by default the customer's contact is checked
    now (`contacts` passes the outcome of a stored check instead)."""
    address_of = address_of or partial(_address, customer)
    found, missing = [], []
    wanted = [c for c in customer.channels if c in channels] or []
    if not wanted:
        missing.append(Unreachable(booking.id, booking.ref, ",".join(channels), "customer accepts none of "
                                   f"the broadcast's channels ({', '.join(channels)})"))
    for channel in wanted:
        address, reason = _usable(address_of, channel, opt_outs, respect_opt_out)
        if address is None and channel == "sms" and "email" not in wanted and "email" in customer.channels:
            address, _ = _usable(address_of, "email", opt_outs, respect_opt_out)  # told by email instead
            channel = "email" if address else channel
        if address:
            found.append(Recipient(booking.id, customer.id, channel, address, customer.language))
        else:
            missing.append(Unreachable(booking.id, booking.ref, channel, reason))
    return found, missing


def _usable(address_of: AddressLookup, channel: str, opt_outs: AbstractSet[tuple[str, str]],
            respect_opt_out: bool) -> tuple[str | None, str]:
    address, reason = address_of(channel)
    if address and respect_opt_out and (channel, address) in opt_outs:
        return None, "opted out"
    return address, reason


def _address(customer: Customer, channel: str) -> tuple[str | None, str]:
    if channel == "sms":
        phone = normalise_phone(customer.phone)
        if phone is None:
            return None, "no valid phone number" if customer.phone else "no phone number"
        refusal = sms_refusal(phone)
        return (None, refusal) if refusal else (phone, "")
    email = normalise_email(customer.email)
    if email is None:
        return None, "no valid email address" if customer.email else "no email address"
    return email, ""


def booking_ids_page(session: Session, sailing_id: int, audience: str, accessibility: bool | None,
                     after_id: int, limit: int) -> list[int]:
    """One page (keyset by id) of live bookings on a sailing for an audience."""
    kinds = AUDIENCE_KINDS.get(audience, AUDIENCE_KINDS["all"])
    conditions = [Booking.sailing_id == sailing_id, Booking.status == CONFIRMED, Booking.kind.in_(kinds),
                  Booking.id > after_id]
    if accessibility is not None:
        conditions.append(Booking.accessibility_needs.is_(accessibility))
    return list(session.scalars(select(Booking.id).where(*conditions).order_by(Booking.id).limit(limit)))


def told_only(broadcast: Broadcast) -> bool:
    """True for an automatic all-clear: it goes only to the bookings that were told of what ended."""
    return broadcast.origin == "automatic" and broadcast.kind == "resumed"


def audience_of(broadcast: Broadcast, disruption: Disruption) -> list[ColumnElement[bool]]:
    """Which bookings a broadcast tells about one disrupted sailing, as query conditions: the sailing's confirmed
    bookings of the broadcast's audience (an automatic all-clear: only those that were told of the disruption)."""
    conditions = [Booking.sailing_id == disruption.sailing_id, Booking.status == CONFIRMED,
                  Booking.kind.in_(AUDIENCE_KINDS.get(broadcast.audience, AUDIENCE_KINDS["all"]))]
    if told_only(broadcast):
        conditions.append(Booking.id.in_(select(Notification.booking_id).where(
            Notification.disruption_id == disruption.id, Notification.status.in_(TOLD))))
    return conditions
