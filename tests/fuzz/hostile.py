"""Hostile text as feeds, operators and customers can really send it, shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

# Each one has broken a real system somewhere: template syntax, markup, bidi overrides that reverse what a
# reader sees, zero-width joiners, characters that switch an SMS to UCS-2 or cost two GSM-7 septets.
SNIPPETS = [
    "{{ 7*7 }}", "{{7*7}}", "{% for x in range(3) %}X{% endfor %}", "{{ ''.__class__.__mro__[1] }}", "{# c #}",
    "{% raw %}", "{{ config }}", "${7*7}", "#{7*7}", "%s%n%x", "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>", '"><svg/onload=alert(1)>', "</p></body>", "&amp;", "&lt;b&gt;", "]]>",
    "javascript:alert(1)", "'; DROP TABLE bookings; --", "\u202e\u0644\u0627", "\u202eevil\u202c", "\u200f",
    "\u2066x\u2069", "\u200d", "\ufeff", "\u00ad", "😀", "🇭🇰", "👨‍👩‍👧", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "€[]{}^~|\\", "台风 8 号",
    "Z̸̢͎a̷l̵g̴o̷", "\r\n", "\n\n\n", "\t", "\x0b\x0c", "ﷺ", "Ω≈ç√", "\u0085", "\u2028", "@£$¥èé",
]


def repeated_to(length: int) -> st.SearchStrategy[str]:
    """One snippet repeated to exactly `length` characters (a 10,000-character headline and the like)."""
    return st.sampled_from(SNIPPETS).map(lambda s: (s * (length // len(s) + 1))[:length])


def hostile_text(max_pieces: int = 6, long: int = 10_000) -> st.SearchStrategy[str]:
    """Text mixing hostile snippets with arbitrary unicode; sometimes very long."""
    pieces = st.lists(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=20)), min_size=1, max_size=max_pieces)
    return st.one_of(pieces.map("".join), st.text(max_size=60), repeated_to(long))


# Phone numbers and email addresses as booking systems hold them: separators, foreign digits, extensions, bidi
# marks, display names, header injection, IDN domains, over-long parts.
DIGITS = "0123456789"
FOREIGN_DIGITS = "０１２３４５６７８９٠١٢٣٤٥٦٧٨٩०१२३४५६७८९"  # full-width, Arabic-Indic, Devanagari
PHONE_PIECES = st.one_of(
    st.text(alphabet=DIGITS, min_size=1, max_size=12), st.text(alphabet=FOREIGN_DIGITS, min_size=1, max_size=10),
    st.sampled_from(["+", "+852", "+86", "+1", "+44", "+39", "00", "011", "(", ")", "-", ".", " ", "/", "tel:",
                     ";ext=", " ext. 12", " x12", "#", "*", "FLOWERS", "\u202e", "\u200f", "\u00a0", "\ufeff",
                     "\x00", "\n", ";phone-context=+852", "9" * 300, "+0", "++"]),
    st.sampled_from(SNIPPETS))
PHONES = st.one_of(st.lists(PHONE_PIECES, max_size=6).map("".join), st.text(max_size=40))

EMAIL_PIECES = st.one_of(
    st.sampled_from(["a", "Alice.Chan", "用户", "ü", "a+tag", '"quoted local"', "@", "@@", ".", "..", "-", "_",
                     "example.com", "EXAMPLE.COM", "例子.广告", "xn--fsqu00a.xn--3lr804guic", "b.c", "[127.0.0.1]",
                     "localhost", "Name <a@b.com>", "\r\nBcc: x@evil.example", "\x00", " ", "\u202e", "\u200d",
                     "a" * 65, "b" * 64 + "." + "c" * 200, "xn--", "-a.com", "a-.com", "ß", "ﬁ", "İ"]),
    st.text(max_size=10))
EMAILS = st.one_of(st.emails(), st.lists(EMAIL_PIECES, max_size=6).map("".join), st.text(max_size=40))
