"""What an SMS costs: `sms_segments` agrees with smsutil (the reference DESIGN.md names) for any text at all.

The text mixes the GSM-7 basic set, its two-septet extension characters, characters that force UCS-2 and
astral-plane emoji (two UTF-16 units each), at lengths around every part boundary, where a counter that divides
instead of filling parts goes wrong: an escape pair or a surrogate pair is never split across two parts. The
planning fast path (notifier.planning.shapes) counts a notice from its precounted shape plus each person's values,
and must come to the same number.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from notifier.channels.segments import GSM7_BASIC, GSM7_EXTENDED, sms_encoding, sms_segments
from notifier.planning.shapes import CLOSE, MARKS, OPEN, TextShape, text_units
from tests.fuzz.budget import fuzz
from tests.fuzz.reference import sms_split

GSM_BASIC = "".join(sorted(GSM7_BASIC))
GSM_EXTENDED = "".join(sorted(GSM7_EXTENDED))
PIECES = st.one_of(
    st.text(alphabet=GSM_BASIC, min_size=1, max_size=170),
    st.text(alphabet=GSM_EXTENDED, min_size=1, max_size=4),
    st.sampled_from(["é", "ç", "台风", "Ω", "€", "😀", "🇭🇰", "👨‍👩‍👧", "𝔘", "\u202e", "\x1b", "\x00", " " * 66, "a" * 152]),
    st.text(max_size=20))
TEXTS = st.one_of(st.text(max_size=400), st.lists(PIECES, max_size=8).map("".join))


def reference_segments(text: str) -> int:
    """The reference count; an empty body costs nothing."""
    return len(sms_split(text).parts) if text else 0


@fuzz(300)
@given(text=TEXTS)
@example("a" * 160)
@example("a" * 161)
@example("a" * 152 + "€")  # 154 septets: one part; a second € would not fit the first of two parts
@example("a" * 152 + "€" + "a" * 152)  # 306 septets, yet three parts: the escape pair may not straddle a boundary
@example("台" * 70)
@example("台" * 66 + "😀" + "台" * 66)  # 134 units, three parts: nor may a surrogate pair
def test_sms_segments_match_smsutil(text):
    assert sms_segments(text) == reference_segments(text)


@fuzz(150)
@given(text=TEXTS.filter(bool))
def test_encoding_is_gsm7_exactly_when_smsutil_says_so(text):
    expected = "GSM-7" if sms_split(text).encoding == "gsm0338" else "UCS-2"
    assert sms_encoding(text) == expected


# --- the planning fast path: a notice shape's precounted text plus each person's values ------------------------------

# The shape's sentinels are private-use characters that never reach it from outside (clean_reason drops them).
PLAIN = TEXTS.filter(lambda text: OPEN not in text and CLOSE not in text)
SLOT_VALUES = st.fixed_dictionaries({letter: st.one_of(PLAIN, st.sampled_from(["T0000545", "HK$171.00", "€12,00"]))
                                     for letter in "NRLA"})


@fuzz(150)
@given(pieces=st.lists(PLAIN, min_size=1, max_size=4), slots=st.lists(st.sampled_from("NRLA"), max_size=3),
       values=SLOT_VALUES)
@example(pieces=["台" * 66 + "😀" + "台" * 66, ""], slots=["R"], values={"N": "", "R": "", "L": "", "A": ""})
def test_a_notice_shape_counts_segments_as_sms_segments_does(pieces, slots, values):
    text = "".join(piece + (MARKS[slot] if slot else "") for piece, slot in zip(pieces, slots + [""] * len(pieces)))
    shape = TextShape.of(text)
    units = {letter: text_units(values[letter]) for letter in shape.letters}
    filled = shape.fill(values)
    assert shape.gsm7_with(units) == (sms_encoding(filled) == "GSM-7")
    assert shape.segments(units, filled) == sms_segments(filled)
