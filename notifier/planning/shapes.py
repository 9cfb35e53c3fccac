"""Notices rendered once per shape, not once per booking: the fast rendering path of planning.

Of 100,000 notices about one typhoon, most differ only in the customer's name, the booking reference, the signed
choice link and the refund amount. A *shape* is one real render (`messages.render` of the values
`notices.notice_context` gives) in which those four values are sentinels; each booking gets the shape with its
own values put in place of the sentinels (HTML-escaped in HTML bodies, as autoescape does), and its SMS segments
counted from the shape's precounted text plus its own values.

The result is byte-identical to a plain render (tests/test_scale.py holds it to that) because:
- the values are made by the same functions as `notice_context` (sailing, booking, offer values and
  `notices.notice_extras`), each once per distinct input: the booking attributes `notice_extras` read are
  recorded, so two bookings share its values only when everything it read is equal;
- a shape is keyed by the values the template actually uses (its syntax tree says which), so two notices share
  a shape only when everything the template could print or test is equal;
- the templates are checked once: the per-person values may only be printed as they are (`{{ customer.name }}`,
  `{{ booking.ref }}`, `{{ link }}`, `{{ refund.amount }}`), never filtered, tested or taken apart; the
  sentinels that reach the context any other way would be left in the text, which is caught;
- a value that could change what `render` strips, or where an email's subject line ends (empty, surrounding
  whitespace, a line break), is rendered plainly for that booking.
A template that fails the check, or a stray sentinel, makes every notice of that template render plainly.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

from jinja2 import nodes
from markupsafe import escape

from notifier.planning import links
from notifier.channels.segments import GSM7_BASIC, GSM7_EXTENDED, sms_segments
from notifier.messages import Rendered, environment, money, render, resolve_language
from notifier.planning.notices import (SailingFacts, booking_values, notice_context, notice_extras, offer_values,
                                       sailing_values)
from notifier.store.paths import templates_dir
from notifier.store.settings import Settings

# Private-use characters: no template, name or reference contains them, and autoescape leaves them alone.
OPEN, CLOSE = "\ue000", "\ue001"
SLOT = re.compile(f"{OPEN}([NRLA]){CLOSE}")
# The per-person values a template may print (as they are), by (context name, attribute) -> slot letter.
SLOTS = {("customer", "name"): "N", ("booking", "ref"): "R", ("link", None): "L", ("refund", "amount"): "A"}
MARKS = {letter: f"{OPEN}{letter}{CLOSE}" for letter in "NRLA"}
WHOLE = {"customer", "booking"}  # context names a template may only use through their attributes
GSM7_ALL = frozenset(GSM7_BASIC | GSM7_EXTENDED)


class ShapeError(Exception):
    """A shape came out wrong (a per-person value was transformed on its way in): render plainly."""


# --- what a template uses ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TemplateUse:
    """What the templates of one notice (channel, language) use of the context."""

    names: frozenset[str]  # top-level context names read anywhere
    booking_attrs: frozenset[str]  # attributes of `booking` read


@lru_cache(maxsize=256)
def template_use(name: str, channel: str, language: str, folder: str | None = None) -> TemplateUse | None:
    """What the templates of this notice use, or None when they cannot be shaped (a per-person value is
    filtered, tested or taken apart; another file is included; a file is missing)."""
    root = Path(folder or templates_dir())
    resolved = resolve_language(name, language, folder)
    files = [f"sms/{name}.{resolved}.txt.j2"] if channel == "sms" else \
        [f"email/{name}.{resolved}.txt.j2", f"email/{name}.{resolved}.html.j2"]
    env = environment(folder)
    names: set[str] = set()
    booking_attrs: set[str] = set()
    for file in files:
        if not (root / file).is_file():
            return None  # the plain render names the missing template
        tree = env.parse((root / file).read_text(encoding="utf-8"))
        if any(True for _ in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport))):
            return None
        if not _slots_printed_plainly(tree, printed=False):
            return None
        names |= {node.name for node in tree.find_all(nodes.Name)}
        booking_attrs |= {node.attr for node in tree.find_all(nodes.Getattr)
                          if isinstance(node.node, nodes.Name) and node.node.name == "booking"}
    return TemplateUse(frozenset(names), frozenset(booking_attrs))


def printable_slots(name: str, channel: str, language: str, folder: str | None = None) -> bool:
    """True when the templates of this notice print the per-person values only as they are."""
    return template_use(name, channel, language, folder) is not None


def _slots_printed_plainly(node: nodes.Node, printed: bool) -> bool:
    """Walk the tree; `printed` says the node is printed as it is (a direct child of an output)."""
    if isinstance(node, nodes.Name):
        if node.ctx != "load" and (node.name in WHOLE or node.name in ("link", "refund")):
            return False  # reassigned: the name no longer means the context's value
        if node.name in WHOLE:
            return False  # used whole: cannot tell what of it is printed
        return node.name != "link" or printed
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and \
            (node.node.name, node.attr) in SLOTS:
        return printed and node.node.ctx == "load"
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name in WHOLE:
        return node.node.ctx == "load"
    if isinstance(node, nodes.Output):
        return all(_slots_printed_plainly(child, printed=True) for child in node.nodes)
    return all(_slots_printed_plainly(child, printed=False) for child in node.iter_child_nodes())


# --- one shape ---------------------------------------------------------------------------------------------------

_WITHOUT_EXTENDED = str.maketrans(dict.fromkeys(GSM7_EXTENDED))


def text_units(text: str) -> tuple[bool, int, int]:
    """(all GSM-7?, GSM-7 septets, UCS-2 units) of a text, at C speed (an extension character is two septets)."""
    gsm7 = GSM7_ALL.issuperset(text)
    septets = 2 * len(text) - len(text.translate(_WITHOUT_EXTENDED)) if gsm7 else 0
    return gsm7, septets, len(text.encode("utf-16-le")) // 2


def _units(value: str, known: dict[str, tuple[bool, int, int]] | None) -> tuple[bool, int, int]:
    if known is None:
        return text_units(value)
    units = known.get(value)
    if units is None:
        units = text_units(value)
        if len(known) < 1000:  # amounts and names repeat; links do not
            known[value] = units
    return units


BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_PAIRS = [a + b for a in BASE36 for b in BASE36]


def base36(number: int) -> str:
    """`links._b36`, two digits at a time (it is called once per notice)."""
    if number < 36:
        return BASE36[number]
    out = ""
    while number:
        number, rest = divmod(number, 1296)
        out = _PAIRS[rest] + out
    return out.lstrip("0")


@dataclass(frozen=True)
class TextShape:
    """One rendered text with its slots: literal pieces and slot letters (N, R, L, A) in turn."""

    pieces: tuple[str, ...]  # even indexes literal text, odd indexes a slot letter
    gsm7: bool  # every literal character is in the GSM-7 alphabet
    gsm7_units: int
    ucs2_units: int
    letters: frozenset[str]  # the slots it has

    @classmethod
    def of(cls, text: str) -> TextShape:
        """Split a text rendered with sentinels at the sentinels, and count its literal characters."""
        pieces = tuple(SLOT.split(text))
        literal = "".join(pieces[0::2])
        if OPEN in literal or CLOSE in literal:
            raise ShapeError("a per-person value was transformed on its way into the notice")
        gsm7, septets, ucs2_units = text_units(literal)
        return cls(pieces, gsm7, septets, ucs2_units, frozenset(pieces[1::2]))

    def fill(self, values: dict[str, str]) -> str:
        """The text with these values in its slots."""
        pieces = list(self.pieces)
        pieces[1::2] = [values[letter] for letter in pieces[1::2]]
        return "".join(pieces)

    def gsm7_with(self, units: dict[str, tuple[bool, int, int]]) -> bool:
        """True when the filled text is all GSM-7 (as `channels.segments.sms_encoding` decides)."""
        return self.gsm7 and all(units[letter][0] for letter in self.pieces[1::2])

    def segments(self, units: dict[str, tuple[bool, int, int]], filled: str) -> int:
        """SMS segments of `filled` (this shape with values whose units are `units`), exactly as
        `channels.segments.sms_segments` counts them."""
        slots = self.pieces[1::2]
        if self.gsm7_with(units):
            total, single, multi = self.gsm7_units + sum(units[letter][1] for letter in slots), 160, 153
        else:
            total, single, multi = self.ucs2_units + sum(units[letter][2] for letter in slots), 70, 67
        if total == 0:
            return 0
        if total <= single:
            return 1
        if total == len(filled):
            return -(-total // multi)  # every character is one unit: the parts divide the text evenly
        # A two-unit character (GSM-7 escape, surrogate pair) may straddle a boundary and start the next part.
        return sms_segments(filled)


@dataclass(frozen=True)
class NoticeShape:
    """A notice for one channel and language with its per-person values left open."""

    channel: str
    language: str
    body: TextShape
    subject: TextShape | None
    html: TextShape | None

    def fill(self, values: dict[str, str], known: dict[str, tuple[bool, int, int]] | None = None) -> Rendered:
        """The notice for one person (`known`: units of values seen before, such as a refund amount)."""
        subject, body, html, segments = self.columns(values, known)
        if self.channel == "sms":
            units = {letter: _units(values[letter], known) for letter in self.body.letters}
            return Rendered("sms", self.language, body, segments=segments,
                            encoding="GSM-7" if self.body.gsm7_with(units) else "UCS-2")
        return Rendered("email", self.language, body, subject=subject, body_html=html)

    def columns(self, values: dict[str, str], known: dict[str, tuple[bool, int, int]] | None = None
                ) -> tuple[str | None, str, str | None, int]:
        """The notice for one person as the outbox stores it: (subject, body_text, body_html, segments)."""
        if self.channel == "sms":
            units = {letter: _units(values[letter], known) for letter in self.body.letters}
            body = self.body.fill(values)
            return None, body, None, self.body.segments(units, body)
        escaped = {letter: str(escape(values[letter])) for letter in self.html.letters}
        return self.subject.fill(values), self.body.fill(values), self.html.fill(escaped), 0


class Unfilled(NamedTuple):
    """A shaped notice whose per-person values are put in later, where it is written: planning sends the shape
    (once per chunk: pickle keeps one copy of a shared object) and a few values to the writer process instead of
    the whole text, and the writer fills it in (`chunk_plan.fill_rows`). A tuple: it crosses to the writer process
    many times faster than a dataclass."""

    shape: NoticeShape
    values: dict[str, str]

    @property
    def language(self) -> str:
        """The language of the notice."""
        return self.shape.language

    def filled(self, known: dict[str, tuple[bool, int, int]] | None = None) -> Rendered:
        """The notice as `NoticeShape.fill` makes it."""
        return self.shape.fill(self.values, known)


def shape_of(rendered: Rendered) -> NoticeShape:
    """The shape of a notice rendered with sentinels."""
    return NoticeShape(rendered.channel, rendered.language, TextShape.of(rendered.body_text),
                       TextShape.of(rendered.subject) if rendered.subject is not None else None,
                       TextShape.of(rendered.body_html) if rendered.body_html is not None else None)


# --- the book of shapes of one sailing's notices ---------------------------------------------------------------

class _Reading:
    """Stands in for a booking (or any row) while a function reads it: notes every attribute read, and answers
    the marked ones with their marks (a per-person value becomes its sentinel)."""

    __slots__ = ("_target", "_reads", "_marks")

    def __init__(self, target: Any, reads: set[str], marks: dict[str, str]) -> None:
        self._target, self._reads, self._marks = target, reads, marks

    def __getattr__(self, name: str) -> Any:
        if name in self._marks:
            return self._marks[name]
        self._reads.add(name)
        return getattr(self._target, name)


_UNSEEN = object()  # a memo's miss (None is a value worth remembering)


def _no_attributes(_row: Any) -> tuple:
    return ()


class AttributeMemo:
    """Remembers what a function made of a row, keyed by the values of the attributes it read (learned by
    watching it read them): a row whose read attributes are all equal gets the same answer, because the function
    cannot tell it apart. Marked attributes are answered with their marks and are not part of the key."""

    def __init__(self, marks: dict[str, str] | None = None) -> None:
        self.marks = marks or {}
        self.names: tuple[str, ...] = ()
        self.key_of = _no_attributes  # the read attributes' values of a row, as one tuple (attrgetter: C speed)
        self.known: dict[tuple, Any] = {}

    def __call__(self, compute: Any, row: Any, extra: Any = None) -> Any:
        """compute(row-like) for this row, from memory when an equal row was seen; `extra` keys what compute
        depends on besides the row."""
        key = (extra, self.key_of(row))
        known = self.known.get(key, _UNSEEN)
        if known is not _UNSEEN:
            return known
        reads: set[str] = set()
        value = compute(_Reading(row, reads, self.marks))
        if not reads.issubset(self.names):
            # A newly read attribute: what was remembered so far was keyed without it.
            self.names = tuple(sorted(reads.union(self.names)))
            getter = attrgetter(*self.names)
            self.key_of = getter if len(self.names) > 1 else lambda row: (getter(row),)
            self.known.clear()
            key = (extra, self.key_of(row))
        self.known[key] = value
        return value


@dataclass
class _Part:
    """Values shared by many bookings, and their key restricted to what a template could see."""

    values: dict[str, Any]
    seen: dict[tuple[str, str], str]  # (channel, language) -> the values' repr, as far as those templates use them


class ShapeBook:
    """The shapes of one disrupted sailing's notices in one broadcast, and the fill-in for each booking."""

    def __init__(self, facts: SailingFacts, template: str, settings: Settings, reason: str | None,
                 folder: str | None = None
                 ) -> None:
        self.facts, self.template, self.settings, self.reason, self.folder = facts, template, settings, reason, folder
        self.booking_parts = AttributeMemo({"ref": MARKS["R"]})
        self.offer_parts: dict[tuple, _Part] = {}
        self.amounts: dict[tuple, tuple[str, bool]] = {}
        self.shapes: dict[tuple, NoticeShape] = {}
        self.plain_only = False
        signer = links._signer(settings.secret_key or "demo-secret")  # noqa: SLF001 - links.make_token's signer
        # Its key is derived once here, not once per link (itsdangerous derives it on every sign()).
        self.sign_key, self.signature = signer.derive_key(), signer.algorithm.get_signature
        self.links: dict[datetime | None, tuple[str, str]] = {}
        self.units: dict[str, tuple[bool, int, int]] = {}
        self.link_safe = True
        self.rendered_shapes = 0
        self.plain_renders = 0

    def link(self, booking_id: int, deadline: datetime | None) -> str:
        """The signed choice link, exactly as `notices.choice_link` makes it (with a signer made once)."""
        if deadline not in self.links:
            moment = deadline or self.facts.sailing.scheduled_departure
            b36 = links._b36  # noqa: SLF001 - the same payload as links.make_token
            base = links.choice_url(self.settings.public_base_url, "")
            self.links[deadline] = (f"-{b36(self.facts.disruption.id)}-{b36(int(moment.timestamp()))}", base)
            self.link_safe = _safe(base + "0")  # the token itself is base36 and base64url: never space
        tail, base = self.links[deadline]
        payload = (base36(booking_id) + tail).encode()
        signature = base64.urlsafe_b64encode(self.signature(self.sign_key, payload)).rstrip(b"=")
        return base + (payload + b"." + signature).decode()

    def notices(self, booking: Any, customer: Any, offers: list[Any], deadline: datetime | None,
                recipients: list[Any]) -> list[Rendered]:
        """One booking's notice for each recipient (channel, language), from shapes where possible."""
        return [notice.filled(self.units) if type(notice) is Unfilled else notice
                for notice in self.unfilled_notices(booking, customer, offers, deadline, recipients)]

    def unfilled_notices(self, booking: Any, customer: Any, offers: list[Any], deadline: datetime | None,
                         recipients: list[Any]) -> list[Rendered | Unfilled]:
        """As `notices`, but a shaped notice comes with its values still to be put in (Unfilled)."""
        name, ref = customer.name, booking.ref
        values = {"N": name, "R": ref, "L": self.link(booking.id, deadline)}
        refund = next((o for o in offers if o.kind == "refund"), None)
        safe = _safe(name) and _safe(ref) and self.link_safe
        found = []
        parts: dict[str, tuple[_Part | None, _Part]] = {}
        for recipient in recipients:
            channel, language = recipient.channel, recipient.language
            use = None if self.plain_only else template_use(self.template, channel, language, self.folder)
            amount_safe = True
            if refund is not None:
                values["A"], amount_safe = self._amount(refund, language)
            if use is None or not safe or not amount_safe:
                found.append(self._plain(channel, language, booking, customer, offers, deadline))
                continue
            if language not in parts:
                parts[language] = (self._booking_part(booking, language), self._offer_part(offers, language,
                                                                                            deadline))
            booking_part, offer_part = parts[language]
            key = (channel, language, _seen(booking_part, channel, language, use),
                   _seen(offer_part, channel, language, use))
            shape = self.shapes.get(key)
            if shape is None:
                shape = self._new_shape(channel, language, booking_part, offer_part)
                if shape is None:
                    found.append(self._plain(channel, language, booking, customer, offers, deadline))
                    continue
                self.shapes[key] = shape
            found.append(Unfilled(shape, dict(values)))  # its own copy: "A" differs by language
        return found

    def _amount(self, refund: Any, language: str) -> tuple[str, bool]:
        # The refund amount as the notice prints it, and whether it can go into a shape (amounts repeat).
        key = (refund.amount, refund.currency, language)
        if key not in self.amounts:
            text = money(refund.amount, refund.currency, language)
            self.amounts[key] = (text, _safe(text))
        return self.amounts[key]

    def _booking_part(self, booking: Any, language: str) -> _Part:
        def made(row: Any) -> _Part:
            return _Part({"booking": booking_values(row), **notice_extras(self.facts, row, language)}, {})

        return self.booking_parts(made, booking, language)

    def _offer_part(self, offers: list[Any], language: str, deadline: datetime | None) -> _Part:
        # offer_values reads kind, sailing_id, option_key and status of each offer, and the refund's amount,
        # which stays open (slot A).
        key = (language, deadline, tuple((o.kind, o.sailing_id, o.option_key, o.status) for o in offers))
        part = self.offer_parts.get(key)
        if part is None:
            values = offer_values(self.facts, offers, language, deadline)
            if values["refund"] is not None:
                values["refund"] = {**values["refund"], "amount": MARKS["A"]}
            part = self.offer_parts[key] = _Part(values, {})
        return part

    def _new_shape(self, channel: str, language: str, booking_part: _Part, offer_part: _Part
                   ) -> NoticeShape | None:
        context = {**sailing_values(self.facts, self.settings, language, self.reason),
                   "customer": {"name": MARKS["N"]}, **offer_part.values, "link": MARKS["L"],
                   **booking_part.values}
        try:
            shape = shape_of(render(channel, self.template, language, context, self.folder))
        except ShapeError:
            self.plain_only = True
            return None
        self.rendered_shapes += 1
        return shape

    def _plain(self, channel: str, language: str, booking: Any, customer: Any, offers: list[Any],
               deadline: datetime | None) -> Rendered:
        self.plain_renders += 1
        context = notice_context(self.facts, booking, customer, offers, self.settings, language, deadline,
                                 self.reason)
        return render(channel, self.template, language, context, self.folder)


def _seen(part: _Part, channel: str, language: str, use: TemplateUse) -> str:
    # The part's values as far as these templates can see them: two parts that look the same to the template
    # give the same text.
    seen = part.seen.get((channel, language))
    if seen is None:
        shown = {}
        for name, value in part.values.items():
            if name == "booking":
                shown[name] = {attr: value[attr] for attr in sorted(use.booking_attrs) if attr in value}
            elif name in use.names:
                shown[name] = value
        seen = part.seen[(channel, language)] = repr(shown)
    return seen


UNSAFE = re.compile(r"\A\s|\s\Z|[\n\r\ue000\ue001]")


def _safe(value: Any) -> bool:
    # A value that render() would strip differently, or that would end the email's subject line early.
    return isinstance(value, str) and value != "" and UNSAFE.search(value) is None
