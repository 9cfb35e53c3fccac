"""A circuit breaker per provider, so a dead endpoint is not hammered (the SMTP relay down for minutes once took
15 attempts a second).

Closed: send as usual. After BREAKER_THRESHOLD answers in a row that say the provider itself is in trouble (no
connection, a timeout, a 5xx, a relay closing down) the circuit opens: nothing is claimed for that channel for a
cool-down that doubles each time it opens again (Settings.retry_base_seconds up to Settings.retry_cap_seconds).
Then it is half-open: one notice goes as a probe; an answer from the provider (even a refusal of that one
recipient) closes the circuit, more trouble opens it again. The notices themselves are not used up meanwhile:
retries are bounded by time (notifier.delivery.outcomes), so an outage of minutes costs no notice.

The breaker's state is kept in the provider_circuits table as it changes, for `watch --status` and the report
(`circuit_lines`). The clock is the dispatcher's, so a test can run an outage of minutes on a simulated clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.channels.base import SendResult
from notifier.store.models import ProviderCircuit
from notifier.store.status import FAILED, SENT

log = logging.getLogger(__name__)

CIRCUIT_CLOSED, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN = "closed", "open", "half-open"  # provider_circuits.state
BREAKER_THRESHOLD = 5  # provider troubles in a row that open the circuit
TROUBLE_CODES = {"connection", "timeout", "421"}  # not reachable, no answer, SMTP "service not available"


def provider_trouble(result: SendResult | None) -> bool | None:
    """True when an answer says the provider itself is in trouble, False when the provider answered (sent or a
    refusal of this one message), None when it says nothing about the provider (not attempted, busy mailbox)."""
    if result is None:
        return None
    if result.status == "uncertain" or result.code in TROUBLE_CODES:
        return True
    if result.status in (SENT, FAILED):
        return False
    return None


class Breaker:
    """One provider's circuit: closed (send), open (send nothing until a probe is due), half-open (one probe)."""

    def __init__(self, channel: str, provider: str, base_seconds: float, cap_seconds: float,
                 clock: Callable[[], datetime], threshold: int = BREAKER_THRESHOLD) -> None:
        self.channel, self.provider = channel, provider
        self.base, self.cap = max(0.1, base_seconds), max(0.1, cap_seconds)
        self.clock, self.threshold = clock, threshold
        self.state = CIRCUIT_CLOSED
        self.troubles = 0  # in a row
        self.openings = 0  # in a row, for the doubling cool-down
        self.probe_at: datetime | None = None
        self.probing = False
        self.reason = ""
        self.changed = False  # not yet written to provider_circuits

    def may_claim(self) -> bool:
        """Whether anything may be claimed now (closed, or a probe is due and not yet out)."""
        if self.state == CIRCUIT_OPEN and self.probe_at is not None and self.clock() >= self.probe_at:
            self._become(CIRCUIT_HALF_OPEN, self.reason)
        return self.state == CIRCUIT_CLOSED or (self.state == CIRCUIT_HALF_OPEN and not self.probing)

    def room(self, free: int) -> int:
        """How many notices may be claimed now: all that fit (closed), one probe (half-open), none (open)."""
        if not self.may_claim() or free <= 0:
            return 0
        if self.state == CIRCUIT_HALF_OPEN:
            self.probing = True
            return 1
        return free

    def probe_unused(self) -> None:
        """The probe found nothing to send: the next notice due goes as the probe."""
        self.probing = False

    def record(self, result: SendResult | None) -> None:
        """Learn from one send's answer."""
        trouble = provider_trouble(result)
        if trouble is False:
            self.troubles, self.openings, self.probing = 0, 0, False
            if self.state != CIRCUIT_CLOSED:
                log.warning("%s: %s answers again; sending resumes", self.channel, self.provider)
                self._become(CIRCUIT_CLOSED, "")
        elif trouble:
            self.troubles += 1
            if self.state == CIRCUIT_HALF_OPEN or (self.state == CIRCUIT_CLOSED and self.troubles >= self.threshold):
                self._open(result.reason or result.code or "no answer")
        elif self.state == CIRCUIT_HALF_OPEN:
            self.probing = False  # the probe was not attempted: another may go

    def _open(self, reason: str) -> None:
        self.openings += 1
        wait = min(self.cap, self.base * 2 ** (self.openings - 1))
        self.probe_at = self.clock() + timedelta(seconds=wait)
        self.probing = False
        log.warning("%s: %s is in trouble (%s); sending paused for %.0f s", self.channel, self.provider, reason, wait)
        self._become(CIRCUIT_OPEN, reason)

    def _become(self, state: str, reason: str) -> None:
        self.state, self.reason, self.changed = state, reason, True
        if state != CIRCUIT_OPEN:
            self.probe_at = None

    def save(self, session: Session) -> None:
        """Write a changed state to provider_circuits (in the dispatcher's round transaction)."""
        if not self.changed:
            return
        row = session.get(ProviderCircuit, self.channel) or ProviderCircuit(channel=self.channel)
        row.provider, row.state, row.reason = self.provider, self.state, self.reason[:500]
        row.probe_at, row.changed_at = self.probe_at, self.clock()
        session.add(row)
        self.changed = False


def circuit_lines(session: Session) -> list[str]:
    """One line per provider whose circuit is not closed, for `watch --status` and the report."""
    lines = []
    for row in session.scalars(select(ProviderCircuit).where(ProviderCircuit.state != CIRCUIT_CLOSED)
                               .order_by(ProviderCircuit.channel)):
        probe = f", next probe {row.probe_at:%H:%M:%S} UTC" if row.probe_at else ""
        lines.append(f"{row.channel} via {row.provider}: circuit {row.state} since {row.changed_at:%H:%M:%S} UTC"
                     f"{probe} ({row.reason})")
    return lines
