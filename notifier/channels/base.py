"""The channel contract (after Alertmanager's notifiers and Apprise's plugins): `send` returns an outcome that
says sent, retry, or give up; each channel declares its limits on the class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol


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


@dataclass(frozen=True)
class SendResult:
    """The outcome of one send: exactly one of sent / retryable / permanent failure."""

    status: str  # sent | retry | failed
    provider_id: str | None = None
    retry_after: float | None = None  # seconds, the provider's hint (Retry-After) when it gave one
    code: str | None = None  # provider error code (Twilio 21211, SMTP 550 ...)
    reason: str | None = None

    @classmethod
    def sent(cls, provider_id: str) -> SendResult:
        return cls("sent", provider_id=provider_id)

    @classmethod
    def retry(cls, code: str | None, reason: str, retry_after: float | None = None) -> SendResult:
        return cls("retry", code=code, reason=reason, retry_after=retry_after)

    @classmethod
    def failed(cls, code: str | None, reason: str) -> SendResult:
        return cls("failed", code=code, reason=reason)

    @property
    def retryable(self) -> bool:
        """True when trying again later may succeed."""
        return self.status == "retry"


class Channel(Protocol):
    """A way to reach a customer. Implementations declare their limits as class attributes."""

    kind: ClassVar[str]  # "sms" | "email"
    name: ClassVar[str]  # "twilio", "smtp", "file"
    max_length: ClassVar[int]  # characters of body text the provider accepts

    def send(self, message: Message) -> SendResult:
        """Hand one message to the provider; never raises for provider errors."""

    def close(self) -> None:
        """Release connections."""
