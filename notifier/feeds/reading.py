"""How every parser reads untrusted bytes: the size cap, text decoding, JSON, times with their UTC offset, and the
per-item parse deadline. Pure: no I/O.

Parsers and the sniffing registry (feeds.sniff) both import this module; it imports no parser, so the registry
can import every parser without a cycle. Each helper turns every way untrusted input can be wrong into one
FeedParseError.
"""

from __future__ import annotations

import codecs
import json
import math
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from notifier.feeds import MAX_FEED_BYTES, FeedParseError

# The longest one feed item (one fetched body) may take to parse: a hostile document can be large and cheap to
# send, and the watcher must not stall on it. Parsing is linear in the input: a real feed takes milliseconds, a
# hostile one at the size cap a few seconds.
PARSE_SECONDS = 10.0
# How many elements a parser handles between two looks at the clock: enough that looking costs nothing.
CLOCK_EVERY = 1024

T = TypeVar("T")

# A byte-order mark names a text's encoding; XML and the JSON RFC allow UTF-16 and UTF-32 besides UTF-8. UTF-32LE's
# mark comes first because it begins with UTF-16LE's. The "utf-16" and "utf-32" codecs read the mark and drop it.
BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
CODEC_NAMES = {"utf-8-sig": "UTF-8", "utf-16": "UTF-16", "utf-32": "UTF-32"}


class Deadline:
    """The moment one item's parsing must be done by; `over` walks a parser's loop and refuses the item after it."""

    def __init__(self, seconds: float = PARSE_SECONDS) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.count = 0

    def over(self, elements: Iterable[T]) -> Iterator[T]:
        """The elements, one by one, with the clock read every CLOCK_EVERY elements across all of this item's loops."""
        for element in elements:
            self.count += 1
            if self.count % CLOCK_EVERY == 0:
                self.check()
            yield element

    def check(self) -> None:
        """Refuse the item once its time is up."""
        if time.monotonic() >= self.ends:
            raise FeedParseError(f"parsing took longer than {self.seconds:g} s; the item is refused")


def check_size(data: bytes, what: str) -> None:
    """Refuse a body over the feed size cap before any parsing work is spent on it."""
    if len(data) > MAX_FEED_BYTES:
        raise FeedParseError(f"{what} is {len(data)} bytes, over the {MAX_FEED_BYTES}-byte limit")


def text_encoding(data: bytes) -> str:
    """The codec for a text feed: the one its byte-order mark names (UTF-8, UTF-16 or UTF-32), else UTF-8."""
    return next((codec for mark, codec in BYTE_ORDER_MARKS if data.startswith(mark)), "utf-8-sig")


def decode_text(data: bytes, what: str) -> str:
    """The text of a feed in UTF-8, or in UTF-16 or UTF-32 by its byte-order mark; else a FeedParseError naming the
    first bad byte."""
    check_size(data, what)
    codec = text_encoding(data)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise FeedParseError(f"{what} is not valid {CODEC_NAMES[codec]} (bad byte at offset {exc.start})") from None


def load_json(data: bytes, what: str) -> Any:
    """Parse untrusted JSON; every failure, including absurd nesting, becomes a FeedParseError."""
    text = decode_text(data, what)
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise FeedParseError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") \
            from None
    except RecursionError:
        raise FeedParseError(f"{what} is nested too deeply to be a feed") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python will convert
        raise FeedParseError(f"{what} is not usable JSON ({str(exc)[:80]})") from None


def _refuse_constant(name: str) -> None:
    raise FeedParseError(f"JSON constant {name} is not allowed in a feed")


def _finite_float(text: str) -> float:
    # Python reads 1e400 as Infinity, which is no more JSON than the constant and which PostgreSQL refuses.
    number = float(text)
    if not math.isfinite(number):
        raise FeedParseError(f"JSON number {text[:40]} is too large to be a number in a feed")
    return number


def parse_time(value: Any, what: str) -> datetime | None:
    """An ISO 8601 date-time that carries its UTC offset, returned in UTC; '' and None mean absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FeedParseError(f"{what} is not a date-time string: {str(value)[:40]!r}")
    return aware_time(value, what).astimezone(UTC)


def aware_time(value: str, what: str, publisher: str = "feed") -> datetime:
    """An ISO 8601 date-time with its own UTC offset kept; refused without one (a time is never guessed), or when
    it cannot be put in UTC (0001-01-01T00:00+14:00 is before the first moment Python holds)."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise FeedParseError(f"{what} is not a date-time: {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise FeedParseError(f"{what} {value[:40]!r} has no UTC offset; {publisher} times must carry one")
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise FeedParseError(f"{what} {value[:40]!r} is outside the representable years") from None
    return moment


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 text for `fields` (which are stored as JSON), or None."""
    return moment.isoformat() if moment else None
