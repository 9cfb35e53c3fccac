"""The channel contract (after Alertmanager's notifiers and Apprise's plugins): `send` returns an outcome that
says sent, retry, give up, or "the provider may have it" (look before resending); each channel declares its
limits on the class: what the provider counts (`rate_unit`) and the longest body, which `send` enforces. A channel
is given a message and its own small provider config, never a session or the settings: delivery builds both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from notifier.channels.segments import sms_segments


@dataclass(frozen=True)
class Message:
    """What a channel needs to deliver one notification; built by the dispatcher from the outbox row."""

    notification_id: int
    channel: str  # sms | email
    recipient: str  # E.164 phone or email address
    body_text: str
    subject: str | None = None
    body_html: str | None = None
    segments: int = 1
    message_id: str | None = None  # email Message-ID, stable across retries of the same notification
    unsubscribe_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status_callback: str | None = None  # where the provider reports delivery (Twilio StatusCallback)
    validity_seconds: int | None = None  # drop the message at the provider after this long (Twilio ValidityPeriod)
    created_at: datetime | None = None  # when the notice was planned: no provider copy can be older


@dataclass(frozen=True)
class SendResult:
    """The outcome of one send: sent, retry (not sent, try later), failed (never retry), or uncertain."""

    status: str  # sent | retry | failed | uncertain
    provider_id: str | None = None
    retry_after: float | None = None  # seconds, the provider's hint (Retry-After) when it gave one
    code: str | None = None  # provider error code (Twilio 21211, SMTP 550 ...)
    reason: str | None = None

    @classmethod
    def sent(cls, provider_id: str) -> SendResult:
        """The provider accepted the message."""
        return cls("sent", provider_id=provider_id)

    @classmethod
    def retry(cls, code: str | None, reason: str, retry_after: float | None = None) -> SendResult:
        """The provider did not take the message this time; trying again later may succeed."""
        return cls("retry", code=code, reason=reason, retry_after=retry_after)

    @classmethod
    def failed(cls, code: str | None, reason: str) -> SendResult:
        """The provider refused the message for good (bad number, opted out, mailbox does not exist)."""
        return cls("failed", code=code, reason=reason)

    @classmethod
    def uncertain(cls, code: str | None, reason: str, retry_after: float | None = None) -> SendResult:
        """The answer was lost (timeout, dropped connection, 5xx): the provider may have the message, so the
        dispatcher reconciles with `lookup` before any resend."""
        return cls("uncertain", code=code, reason=reason, retry_after=retry_after)


class Channel(ABC):
    """A way to reach a customer. A channel declares its limits as class attributes and implements `deliver`;
    `send` refuses a message that breaks a declared limit before the provider hears of it."""

    kind: ClassVar[str]  # "sms" | "email"
    name: ClassVar[str]  # "twilio", "smtp", "file"
    max_length: ClassVar[int]  # the longest body text the provider accepts, in characters
    rate_unit: ClassVar[str]  # what the provider's rate counts: "segment" (SMS parts) or "message"
    reconciles: ClassVar[bool]  # True when `lookup` can really ask the provider (an SMTP relay cannot)
    sender: str  # what the rate applies to: a From number, a Messaging Service SID, an SMTP relay host:port
    rate_per_second: float | None  # this sender's rate in this process, from its config; None: unlimited

    def send(self, message: Message) -> SendResult:
        """Hand one message to the provider; a body longer than the provider takes fails here, for good, because
        the provider would refuse it too (Twilio: 21617). Never raises for provider errors."""
        length = len(message.body_text)
        if length > self.max_length:
            return SendResult.failed("too-long", f"the text is {length} characters long; the {self.name} "
                                                 f"{self.kind} channel takes at most {self.max_length}")
        return self.deliver(message)

    @abstractmethod
    def deliver(self, message: Message) -> SendResult:
        """Hand one message that fits the declared limits to the provider; never raises for provider errors."""

    @abstractmethod
    def lookup(self, message: Message) -> list[str]:
        """Provider ids of copies of this message the provider already has (crash reconciliation), newest first.
        Raises when the provider cannot be asked; an empty list means "not there"."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def cost(channel: Channel, message: Message) -> int:
    """What one message uses of its sender's rate: SMS segments (as Twilio bills them) or one message."""
    if channel.rate_unit == "segment":
        return max(1, message.segments or sms_segments(message.body_text))
    return 1
