"""Per-sender rate limits: SMS segments per second per sender (as Twilio queues them), emails per second per relay.

Carriers and Twilio count in sliding windows and filter or answer 429 on bursts, so a `Pacer` keeps two promises:
- pace: send slots are handed out `cost / rate` seconds apart and reserved ahead, so a thread that wakes a little
  late does not push every later slot back (that keeps the achieved rate near the limit under load);
- window: a slot is only used when the sends of the last WINDOW_SECONDS (one second plus a margin for the jitter
  between our clock and the provider's arrival times) leave room for it. Slots that fell due together after a
  stall (a slow thread, a paused process, a database round) are spread out again instead of going in one burst,
  and a new pacer starts with its window full, so a dispatcher restarted right after one was killed cannot add
  its own second's worth to the killed one's;
- stalls: a send counted in the window may reach the provider only after a stall (the process was frozen between
  our count and its request), so when a waiting thread wakes more than STALL_SECONDS late, every send of the
  window is counted again from that moment.
A provider's Retry-After pauses the sender: every slot not yet used is taken again after the pause.

Several dispatch processes on one sender (PostgreSQL scale-out) each take a fixed share of the rate
(Settings.dispatch_workers, `rate_for`): per-worker shares need no database round per send, and the shares add up
to the limit in every window whichever worker sends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from notifier.store.settings import ConfigError, Settings

WINDOW_SECONDS = 1.03  # the provider's one-second window, plus the jitter of arrival times at the provider
STALL_SECONDS = 0.1  # a thread that wakes this much later than it asked to was stalled


class Pacer:
    """Send slots for one sender at `rate` units (segments or messages) per second, never more than `rate` units
    in any window of WINDOW_SECONDS."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 window: float = WINDOW_SECONDS) -> None:
        if rate <= 0:
            raise ConfigError(f"a send rate must be above zero, not {rate}")
        self.rate, self.window = rate, window
        self.budget = rate * 1.0  # units in any one-second window at the provider
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0  # the first moment not yet handed out
        self._paused_until = 0.0
        self._pauses = 0  # bumped by each pause, so a slot taken before it is known to be void
        # Sends of the last window (moment, cost); at first as if a killed predecessor had used the whole window.
        self._sent: deque[tuple[float, float]] = deque([(clock(), self.budget)])
        self._used = self.budget

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

    def admit(self, cost: float, generation: int, now: float | None = None) -> float | None:
        """Use a slot that is due: 0.0 when the message may go now (it is counted in the window), else how long to
        wait for the window to make room, or None when a pause voided the slot."""
        with self._lock:
            if generation != self._pauses:
                return None
            now = self._clock() if now is None else now
            while self._sent and self._sent[0][0] <= now - self.window:
                self._used -= self._sent.popleft()[1]
            if self._sent and self._used + cost > self.budget + 1e-9:
                # Wait until enough has left the window; a message larger than the budget waits for all of it.
                needed, freed = self._used + cost - self.budget, 0.0
                for moment, used in self._sent:
                    freed += used
                    if freed >= needed - 1e-9:
                        break
                return max(1e-3, moment + self.window - now)
            self._sent.append((now, cost))
            self._used += cost
            return 0.0

    def pause(self, seconds: float, now: float | None = None) -> None:
        """Send nothing for `seconds` (the provider said Retry-After); slots already handed out are void."""
        with self._lock:
            now = self._clock() if now is None else now
            self._paused_until = max(self._paused_until, now + seconds)
            self._next = max(self._next, self._paused_until)
            self._pauses += 1

    def stalled(self, now: float | None = None) -> None:
        """We were stalled: sends counted before it may reach the provider only now, so count them from now."""
        with self._lock:
            now = self._clock() if now is None else now
            self._sent = deque((max(moment, now), used) for moment, used in self._sent)

    def acquire(self, cost: float, stop: threading.Event | None = None) -> bool:
        """Wait for a slot and for room in the window; False when `stop` was set while waiting (nothing may be
        sent then)."""
        while True:
            start, generation = self.reserve(cost)
            if not self._wait_until(start, stop):
                return False
            while (wait := self.admit(cost, generation)) is not None:
                if wait <= 0:
                    return True
                if not self._wait_until(self._clock() + wait, stop):
                    return False

    def _wait_until(self, moment: float, stop: threading.Event | None) -> bool:
        if not _wait(moment - self._clock(), stop):
            return False
        if (now := self._clock()) - moment > STALL_SECONDS:
            self.stalled(now)
        return True


def _wait(seconds: float, stop: threading.Event | None) -> bool:
    if seconds <= 0:
        return True
    if stop is not None:
        return not stop.wait(seconds)
    time.sleep(seconds)
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
