"""The shipped templates render hostile feed, operator and customer text as text: never as template code, always
escaped in HTML, and with the SMS cost counted as Twilio bills it.

The hostile values go where such text really enters a notice: the feed's event and headline, a port call's
delay reason (DCSA change remarks), the duty officer's --reason, and the customer's name from the booking system.
The rest of the context has the keys `broadcasts.notice_context` (with `disruptions.notice_extras`) and
`responses.confirmation_context` give, so every template renders; test_fuzz_planning.py does the same through real
planning on the demo network.
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from markupsafe import escape

from notifier.channels.segments import sms_encoding
from notifier.messages import available_templates, render
from tests.fuzz.budget import fuzz
from tests.fuzz.hostile import hostile_text
from tests.fuzz.reference import sms_split

# The templates rendered from the notice, reminder and confirmation contexts, with the disruption kind each is
# for; a template with a context of its own (e.g. satisfaction) needs that context here before it can be fuzzed.
KINDS = {"cancelled": "cancelled", "delayed": "delayed", "port_omitted": "port_omitted", "resumed": "resumed",
         "advisory": "advisory", "updated": "delayed", "correction": "cancelled", "notice": "cancelled",
         "confirmation": "cancelled", "reminder": "cancelled"}
TEMPLATES = [name for name in available_templates() if name in KINDS]
HOSTILE_FIELDS = ("reason", "customer_name", "event", "headline", "port_reason")
LANGUAGES = ["en", "zh-CN", "zh-Hant-HK", "en-GB", "fr"]


def notice_context(kind: str, choice: str, texts: dict[str, str]) -> dict:
    """A complete notice (and confirmation) context with the hostile texts in their places."""
    sailing = {"code": "HKM-MFM-0800", "route": "Hong Kong - Macau", "status": "cancelled", "origin": "Hong Kong",
               "destination": "Macau", "departure": "Mon 14 Sep 08:00", "arrival": "Mon 14 Sep 09:00",
               "vessel": "Harbour Star", "voyage": "2603E"}
    return {
        "company": "Strait Ferries", "helpline": "+86 898 0000 0000", "customer": {"name": texts["customer_name"]},
        "booking": {"ref": "BK-000123", "kind": "passenger", "party_size": 2, "teu": None}, "sailing": sailing,
        "disruption": {"kind": kind, "delay_minutes": 40, "status": "active", "cause": "the typhoon",
                       "event": texts["event"]},
        "reason": texts["reason"],
        "alternatives": [{"key": "1", "code": "HKM-MFM-1000", "held": True, "departure": "Mon 14 Sep 10:00"}],
        "refund": {"amount": "HK$171.00", "days": 7}, "deadline": "Mon 14 Sep 07:00",
        "link": "https://ferry.example/c/abc", "do_not_come": True, "eu": True,
        "delay": {"minutes": 40, "departure": "Mon 14 Sep 08:40", "arrival": "Mon 14 Sep 09:40"},
        "window": {"start": "Mon 14 Sep 06:00", "end": "Mon 14 Sep 20:00"}, "previous_kind": "cancelled",
        "resumption": {"operates": True, "code": "HKM-MFM-1200", "departure": "Mon 14 Sep 12:00"},
        "headline": texts["headline"],
        "port_call": {"status": "OMIT", "words": "port call omitted", "port": "Macau", "reason": texts["port_reason"]},
        "entitlements": ["A full refund within 7 days."],
        "choice": choice, "by_default": False, "original": sailing,
    }


MARKERS = {name: f"QX{name.upper()}QX" for name in HOSTILE_FIELDS}


@cache
def fields_shown(channel: str, template: str, language: str, kind: str, choice: str) -> dict[str, frozenset]:
    """Which hostile fields this template shows, per output part (found by rendering unique markers)."""
    rendered = render(channel, template, language, notice_context(kind, choice, MARKERS))
    parts = {"text": (rendered.subject or "") + "\n" + rendered.body_text, "html": rendered.body_html or ""}
    return {part: frozenset(n for n, marker in MARKERS.items() if marker in out) for part, out in parts.items()}


def without(text: str, values: list[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "")
    return text


CASES = [(channel, template) for template in TEMPLATES for channel in ("sms", "email")]


@pytest.mark.parametrize("channel, template", CASES, ids=[f"{c}-{t}" for c, t in CASES])
@fuzz(25)
@given(texts=st.fixed_dictionaries({name: hostile_text() for name in HOSTILE_FIELDS}),
       language=st.sampled_from(LANGUAGES), choice=st.sampled_from(["rebook", "refund", "keep"]))
@example(texts={name: "{{ 7*7 }}{% for x in range(3) %}X{% endfor %}<script>alert(1)</script>\u202e台风😀"
                for name in HOSTILE_FIELDS}, language="en", choice="rebook")
def test_hostile_text_is_shown_literally_and_escaped_in_html(channel, template, texts, language, choice):
    kind = KINDS.get(template, "cancelled")
    rendered = render(channel, template, language, notice_context(kind, choice, texts))
    shown = fields_shown(channel, template, language, kind, choice)
    values = list(texts.values()) + [value.strip() for value in texts.values()]

    text = (rendered.subject or "") + "\n" + rendered.body_text
    for name in shown["text"]:
        assert texts[name].strip() in text, f"{name} is not shown literally"
    assert "{{" not in without(text, values) and "{%" not in without(text, values), "template syntax left over"
    assert "\r" not in (rendered.subject or "") and "\n" not in (rendered.subject or "")

    if channel == "sms":
        assert rendered.body_text, "an SMS is never empty"
        assert rendered.segments == len(sms_split(rendered.body_text).parts)
        assert rendered.encoding == sms_encoding(rendered.body_text)
        return
    html = rendered.body_html
    for name in shown["html"]:
        assert str(escape(texts[name])) in html, f"{name} is not escaped in the HTML"
    escaped = [str(escape(value)) for value in values]
    assert "<script" not in without(html, escaped).lower() and "<script" not in html.lower()
    assert "{{" not in without(html, escaped) and "{%" not in without(html, escaped)
