"""Short signed links to the choice page: booking, disruption and deadline, signed with itsdangerous.

The token must fit a Chinese SMS of two UCS-2 segments beside the notice itself, so ids are base-36 and the
HMAC-SHA256 signature is truncated to 96 bits: plenty against forgery for a link that expires within days.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from itsdangerous import BadSignature, Signer
from itsdangerous.signer import SigningAlgorithm

from notifier.errors import NotifierError


class LinkError(NotifierError):
    """A link that is forged, truncated or expired."""


class LinkExpired(LinkError):
    """A genuine link whose deadline has passed."""


class _TruncatedHMAC(SigningAlgorithm):
    """HMAC-SHA256 cut to 12 bytes (16 URL-safe characters)."""

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        # hmac.digest: the same bytes as hmac.new(...).digest(), in one C call (planning signs 100,000 links).
        return hmac.digest(key, value, "sha256")[:12]


@dataclass(frozen=True)
class ChoiceLink:
    """What a choice-page token says."""

    booking_id: int
    disruption_id: int
    deadline: datetime


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def _signer(secret: str) -> Signer:
    if not secret:
        raise LinkError("no secret_key configured (set NOTIFIER_SECRET_KEY)")
    return Signer(secret, salt="notifier.choice", sep=".", algorithm=_TruncatedHMAC())


def make_token(secret: str, booking_id: int, disruption_id: int, deadline: datetime) -> str:
    """A signed token for one booking's choice about one disruption, valid until the deadline."""
    payload = f"{_b36(booking_id)}-{_b36(disruption_id)}-{_b36(int(deadline.timestamp()))}"
    return _signer(secret).sign(payload).decode()


INVALID = "this link is not valid (it may be incomplete or altered)"
# A token exactly as make_token writes it: three base-36 ids (an id of up to 64 bits is 13 digits), a dot, and the
# 12-byte signature in unpadded base64url (16 characters). base64 decoding skips characters outside its alphabet
# and padding, so "<token>==" or "<token>%20" would verify; the syntax is checked first, and strictly.
TOKEN_SYNTAX = re.compile(r"[0-9a-z]{1,13}-[0-9a-z]{1,13}-[0-9a-z]{1,13}\.[A-Za-z0-9_-]{16}")


def read_token(secret: str, token: str, now: datetime | None = None) -> ChoiceLink:
    """Check a token's syntax, signature and deadline; LinkError says which check failed."""
    if not TOKEN_SYNTAX.fullmatch(token):
        _signer(secret)  # no secret configured is said as such, whatever the token
        raise LinkError(INVALID)
    try:
        payload = _signer(secret).unsign(token.encode()).decode()
        booking, disruption, deadline = (int(part, 36) for part in payload.split("-"))
    except (BadSignature, ValueError, UnicodeError):
        raise LinkError(INVALID) from None
    link = ChoiceLink(booking, disruption, datetime.fromtimestamp(deadline, UTC))
    if (now or datetime.now(UTC)) > link.deadline:
        raise LinkExpired("this link has expired")
    return link


def choice_url(base_url: str, token: str) -> str:
    """The customer-facing URL for a token."""
    return f"{base_url.rstrip('/')}/c/{token}"


# A choice URL's token as make_token writes it: three base-36 ids, a dot, the URL-safe signature.
_CHOICE_TOKEN = re.compile(r"(?<=/c/)[0-9a-z]+-[0-9a-z]+-[0-9a-z]+\.[A-Za-z0-9_-]+")


def blank_tokens(text: str) -> str:
    """The text with every choice link's token replaced by x's of the same shape: a link that shows what the
    customer gets (its length counts towards the SMS segments) but chooses nothing for anyone."""
    return _CHOICE_TOKEN.sub(lambda token: re.sub(r"[0-9A-Za-z_]", "x", token.group()), text)
