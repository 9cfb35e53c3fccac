"""Email through an SMTP relay with smtplib: a pool of connections (one per dispatch thread, SmtpConfig.pool_size),
each reused across messages and reopened when the relay drops it or answers with an error; SSL or STARTTLS and
login as configured; multipart text + HTML with Message-ID and List-Unsubscribe (`build_email`, shared with the
file channel).

A 4xx answer (greylisting, mailbox busy, relay overloaded) is retried later; a 5xx answer (no such mailbox,
relay refuses) is permanent, except the relay's "STARTTLS / login required" (530, 534, 535, 538), which is about
our configuration, not the recipient, and is retried. A relay cannot be asked whether it took a message, so
`lookup` knows nothing: after a crash the dispatcher applies Settings.email_reconcile (resend with the same
Message-ID, by default).
"""

from __future__ import annotations

import contextlib
import queue
import smtplib
import ssl
import threading
from dataclasses import dataclass, field

from notifier.channels.base import Channel, Message, SendResult
from notifier.channels.file import build_email

RELAY_SETUP_CODES = {530, 534, 535, 538}  # RFC 4954 / 3207: authentication or encryption required


@dataclass(frozen=True)
class SmtpConfig:
    """What the SMTP channel needs to reach its relay, and nothing more (delivery builds it from Settings)."""

    host: str
    from_address: str  # the From of every notice, and the envelope sender
    port: int = 25
    user: str = ""
    password: str = field(default="", repr=False)  # a secret: never in a log line or an error message
    use_ssl: bool = False
    starttls: bool = False
    timeout_seconds: float = 10.0
    rate_per_second: float | None = None  # emails per second this process may hand to the relay; None: unlimited
    pool_size: int = 1  # connections kept open to the relay: one per sending thread

    @property
    def sender(self) -> str:
        """What the rate applies to: the relay, as host:port."""
        return f"{self.host}:{self.port}"


class SmtpEmailChannel(Channel):
    """Email through one SMTP relay over a pool of connections; the rate applies per relay."""

    kind = "email"
    name = "smtp"
    max_length = 1_000_000
    rate_unit = "message"
    reconciles = False

    def __init__(self, config: SmtpConfig) -> None:
        self.host, self.port = config.host, config.port
        self.user, self.password = config.user, config.password
        self.use_ssl, self.starttls = config.use_ssl, config.starttls
        self.from_address = config.from_address
        self.timeout = config.timeout_seconds
        self.sender = config.sender
        self.rate_per_second = config.rate_per_second
        # Idle connections, newest first; `_slots` bounds how many are open at once (idle or in use).
        self._idle: queue.LifoQueue[smtplib.SMTP] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max(1, config.pool_size))

    def deliver(self, message: Message) -> SendResult:
        """Hand the email to the relay on a pooled connection; one the relay closed is reopened once."""
        email = build_email(message, self.from_address)
        with self._slots:
            for attempt in (1, 2):
                connection = self._take_idle()
                reused = connection is not None
                try:
                    connection = connection or self._connect()
                    connection.send_message(email, from_addr=self.from_address, to_addrs=[message.recipient])
                    self._idle.put(connection)
                    return SendResult.sent(message.message_id or f"smtp-{message.notification_id}")
                except smtplib.SMTPRecipientsRefused as exc:
                    self._idle.put(connection)  # smtplib has reset the transaction: the connection is fine
                    code, reply = next(iter(exc.recipients.values()))
                    return _by_code(code, reply)
                except smtplib.SMTPResponseException as exc:
                    _drop(connection)  # the conversation may be half-way through a transaction: start afresh
                    if isinstance(exc, smtplib.SMTPAuthenticationError):
                        return SendResult.retry(str(exc.smtp_code), "the SMTP relay refused our login "
                                                "(check NOTIFIER_SMTP_USER / NOTIFIER_SMTP_PASSWORD)")
                    return _by_code(exc.smtp_code, exc.smtp_error)
                except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
                    _drop(connection)
                    if reused and attempt == 1:
                        continue  # the relay closed an idle connection: open a new one and try again
                    return SendResult.retry("connection", f"the SMTP relay closed the connection ({exc})")
                except (OSError, smtplib.SMTPException) as exc:
                    _drop(connection)
                    return SendResult.retry("connection", f"cannot talk to the SMTP relay {self.sender}: "
                                            f"{type(exc).__name__}: {exc}")
        return SendResult.retry("connection", "the SMTP relay closed the connection twice")

    def lookup(self, message: Message) -> list[str]:
        """A relay cannot be asked what it accepted: always empty (see Settings.email_reconcile)."""
        return []

    def close(self) -> None:
        """Say QUIT to the relay on every idle connection."""
        while (connection := self._take_idle()) is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):  # a relay already gone needs no QUIT
                connection.quit()
            _drop(connection)

    def _take_idle(self) -> smtplib.SMTP | None:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return None

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        if self.use_ssl:
            connection: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            connection.ehlo()
            if self.starttls and not self.use_ssl:
                connection.starttls(context=context)
                connection.ehlo()
            if self.user:
                connection.login(self.user, self.password)
        except BaseException:
            connection.close()
            raise
        return connection


def _drop(connection: smtplib.SMTP | None) -> None:
    if connection is not None:
        with contextlib.suppress(OSError):  # closing a dead socket
            connection.close()


def _by_code(code: int, reply: bytes | str) -> SendResult:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    reason = f"SMTP {code}: {text}"
    if 400 <= code < 500:
        return SendResult.retry(str(code), reason)
    if code in RELAY_SETUP_CODES:
        # About our connection (STARTTLS or login required), not the recipient: fixable, so not the end.
        return SendResult.retry(str(code), f"{reason} (check the SMTP settings: smtp_starttls, smtp_user)")
    return SendResult.failed(str(code), reason)
