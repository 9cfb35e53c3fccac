"""Per-sender rate limits: SMS segments per second per sender (as Twilio queues them), emails per second per relay.

A `Pacer` hands out send slots `cost / rate` seconds apart. Slots are reserved ahead, so a thread that wakes a
little late does not push every later slot back (that is what keeps the achieved rate at the limit under load),
and there is no burst beyond one message: over any interval of t seconds at most `rate * t` plus one message's
cost is sent. A provider's Retry-After pauses the sender: every slot not yet used is taken again after the pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from notifier.store.settings import ConfigError, Settings


class Pacer:
    """Send slots for one sender at `rate` units (segments or messages) per second."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ConfigError(f"a send rate must be above zero, not {rate}")
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0  # the first moment not yet handed out
        self._paused_until = 0.0
        self._pauses = 0  # bumped by each pause, so a slot taken before it is known to be void

    def reserve(self, cost: float, now: float | None = None) -> tuple[float, int]:
        """Take the next slot for a message of `cost` units: (when it may go, pause generation)."""
        with self._lock:
            now = self._clock() if now is None else now
            start = max(now, self._next, self._paused_until)
            self._next = start + cost / self.rate
            return start, self._pauses

    def still_valid(self, generation: int) -> bool:
        """False when a pause came after the slot was taken (the slot must be taken again)."""
        with self._lock:
            return generation == self._pauses

    def pause(self, seconds: float, now: float | None = None) -> None:
        """Send nothing for `seconds` (the provider said Retry-After); slots already handed out are void."""
        with self._lock:
            now = self._clock() if now is None else now
            self._paused_until = max(self._paused_until, now + seconds)
            self._next = max(self._next, self._paused_until)
            self._pauses += 1

    def acquire(self, cost: float, stop: threading.Event | None = None) -> bool:
        """Wait for a slot; False when `stop` was set while waiting (nothing may be sent then)."""
        while True:
            start, generation = self.reserve(cost)
            delay = start - self._clock()
            if delay > 0:
                if stop is not None:
                    if stop.wait(delay):
                        return False
                else:
                    time.sleep(delay)
            if self.still_valid(generation):
                return True


def parse_sender_rates(entries: tuple[str, ...] | list[str]) -> dict[str, float]:
    """"SENDER=RATE" entries (Settings.sms_sender_rates) as a dict; a malformed entry is a ConfigError."""
    rates = {}
    for entry in entries:
        sender, _, rate = entry.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = 0.0
        if not sender.strip() or value <= 0:
            raise ConfigError(f"sms_sender_rates entry {entry!r}: write SENDER=SEGMENTS_PER_SECOND, e.g. "
                              f"+15005550006=3")
        rates[sender.strip()] = value
    return rates


def rate_for(settings: Settings, setting: str | None, sender: str) -> float | None:
    """A channel's rate for one sender and one dispatch process (None: unlimited, which a rate of 0 means)."""
    if setting is None:
        return None
    rate = float(getattr(settings, setting))
    if setting == "sms_segments_per_second":
        rate = parse_sender_rates(settings.sms_sender_rates).get(sender, rate)
    if rate <= 0:
        return None
    if settings.dispatch_workers < 1:
        raise ConfigError("dispatch_workers must be at least 1")
    return rate / settings.dispatch_workers
