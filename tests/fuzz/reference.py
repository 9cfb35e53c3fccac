"""The reference for what an SMS costs: smsutil, as DESIGN.md names it, with one correction."""

from __future__ import annotations

import smsutil


def sms_split(text: str) -> smsutil.SplitResult:
    """smsutil's split, except that a bare ESC (0x1B) forces UCS-2: GSM 03.38 reserves it as the escape to the
    extension table, and smsutil's counting it as a plain character could only undercount."""
    return smsutil.unicode_split(text) if "\x1b" in text else smsutil.split(text)
