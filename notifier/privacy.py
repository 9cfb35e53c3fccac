"""Masking personal data for everything a person other than the customer reads: logs, error messages, the audit
trail, reports and the customer-service desk.

A phone number keeps its country code, its first digits and its last four (+86 139****9768), an email address
the first and last letter of the mailbox and the domain (c***2@example.com), a name its initials (C. T., 陈**):
enough for an agent to say "the number ending 9768", never enough to contact the customer. `redact` finds phone
numbers in E.164 form (also URL-encoded, as in a request line) and email addresses in free text, such as a
provider's error message, and masks them; it cannot recognise a national-format number or a name, so those must
never be written into a log in the first place.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

# "+" then 7 to 15 digits, a single space, dash or dot allowed between digits ("+86 139 1234 5678").
E164_IN_TEXT = re.compile(r"(?<![\w+])\+\d(?:[ .\-]?\d){6,14}(?!\d)")
E164_URL_ENCODED = re.compile(r"%2[Bb](\d{7,15})(?!\d)")
EMAIL_IN_TEXT = re.compile(r"[\w.!#$&'*+/=?^`{|}~-]+(?:@|%40)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                           r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")


def mask_phone(number: str | None) -> str:
    """A phone number fit for a log: country code, the first digits and the last four (+86 138****1234)."""
    if not number:
        return "-"
    try:
        parsed = phonenumbers.parse(number, None)
        country, national = f"+{parsed.country_code} ", str(parsed.national_number)
    except phonenumbers.NumberParseException:
        country, national = "", re.sub(r"\D", "", number)
    if len(national) <= 5:
        return country + "*" * len(national)
    head = 3 if len(national) >= 10 else 1
    return f"{country}{national[:head]}{'*' * (len(national) - head - 4)}{national[-4:]}"


def mask_email(address: str | None) -> str:
    """An email address fit for a log: first and last letter of the mailbox, the domain kept (c***9@example.com)."""
    if not address:
        return "-"
    local, _, domain = address.rpartition("@")
    if not local:
        return "***"
    shown = local[0] + "***" + (local[-1] if len(local) > 2 else "")
    return f"{shown}@{domain}"


def mask_address(channel: str, address: str | None) -> str:
    """A recipient address masked for its channel ("sms": a phone number, anything else: an email address)."""
    return mask_phone(address) if channel == "sms" else mask_email(address)


def mask_contact(address: str | None) -> str:
    """A phone number or an email address, masked as what it looks like."""
    return mask_email(address) if address and "@" in address else mask_phone(address)


def mask_name(name: str | None) -> str:
    """A person's or company's name as initials: "Chan Tai Man" -> "C. T. M.", "陈伟明" -> "陈**"."""
    if not name or not name.strip():
        return "-"
    words = name.split()
    if len(words) == 1 and _is_cjk(words[0][0]):
        return words[0][0] + "*" * (len(words[0]) - 1)
    return " ".join(f"{word[0]}." for word in words)


def _is_cjk(character: str) -> bool:
    return unicodedata.east_asian_width(character) in ("W", "F")


def redact(text: str | None) -> str:
    """Free text with every E.164 phone number (also URL-encoded) and email address in it masked."""
    if not text:
        return text or ""
    if "+" in text or "%" in text:
        text = E164_IN_TEXT.sub(lambda match: mask_phone(match.group(0)), text)
        text = E164_URL_ENCODED.sub(lambda match: "%2B" + mask_phone("+" + match.group(1))[1:].replace(" ", ""),
                                    text)
    if "@" in text or "%40" in text:
        text = EMAIL_IN_TEXT.sub(lambda match: mask_email(match.group(0).replace("%40", "@")), text)
    return text
