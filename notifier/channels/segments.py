"""What an SMS costs at the provider: its encoding (GSM-7 or UCS-2) and how many parts Twilio bills for it.

This is the provider's own counting, so it lives with the channels: the SMS channels pace their sender by it,
and planning, preview and rendering count a notice's cost with the same rules.
"""

from __future__ import annotations

# GSM 03.38 basic character set; the extension table costs two septets per character (escape + char).
GSM7_BASIC = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENDED = set("^{}\\[~]|€\f")


def sms_encoding(text: str) -> str:
    """'GSM-7' when every character is in the GSM 03.38 alphabet, else 'UCS-2' (as Twilio decides)."""
    return "GSM-7" if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text) else "UCS-2"


def sms_segments(text: str) -> int:
    """How many SMS parts Twilio bills for this body: GSM-7 160/153 septets, UCS-2 70/67 UTF-16 units."""
    if not text:
        return 0
    if sms_encoding(text) == "GSM-7":
        costs = [2 if c in GSM7_EXTENDED else 1 for c in text]
        single, multi = 160, 153
    else:
        costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, multi = 70, 67
    if sum(costs) <= single:
        return 1
    # Parts are filled, not divided: an escape pair (GSM-7) or a surrogate pair (UCS-2) that would straddle a
    # boundary starts the next part, so "a" * 152 + "€" + "a" * 152 is three parts, not two.
    parts, filled = 1, 0
    for cost in costs:
        if filled + cost > multi:
            parts, filled = parts + 1, 0
        filled += cost
    return parts
