"""A real SMTP relay for tests: aiosmtpd on a free port of 127.0.0.1, keeping every message it accepts and
answering chosen recipients with a relay's temporary (451) or permanent (550) refusal.

`Controller(port=0)` does not work (aiosmtpd needs the port up front), so a free port is found by binding one
first. STARTTLS, implicit TLS and AUTH are available for the channel's configuration tests; `latency` makes every
DATA answer that much later, as a distant relay does (the pooled connections' throughput test and the benchmark).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def self_signed_certificate(folder: Path) -> tuple[Path, Path] | None:
    """A certificate for 127.0.0.1 made with the openssl command (None where it is not installed)."""
    cert, key = folder / "relay.crt", folder / "relay.key"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        return None
    return cert, key


class _Handler:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: ANN001, ANN201
        with self.relay.lock:
            self.relay.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001, ANN201
        answer = self.relay.answers.get(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        if self.relay.latency:
            await asyncio.sleep(self.relay.latency)
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.relay.lock:
            self.relay.received.append((envelope.mail_from, list(envelope.rcpt_tos), message))
            self.relay.arrivals.append(time.monotonic())
        return "250 Message accepted for delivery"


class Relay:
    """The relay: `answers` maps a recipient to the reply its RCPT TO gets, e.g. "550 5.1.1 No such user"."""

    def __init__(self, answers: dict[str, str] | None = None, tls: tuple[Path, Path] | None = None,
                 implicit_tls: bool = False, login: tuple[str, str] | None = None, latency: float = 0.0) -> None:
        self.answers = dict(answers or {})
        self.latency = latency
        self.received: list[tuple[str, list[str], EmailMessage]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each accepted message (the benchmark's throughput)
        self.greetings = 0  # EHLOs seen: one per connection (two with STARTTLS)
        self.lock = threading.Lock()
        self.port = free_port()
        self._tls, self._implicit, self._login = tls, implicit_tls, login
        self._controller: Controller | None = None

    def start(self) -> Relay:
        """Listen (again) on this relay's port."""
        options: dict = {}
        if self._tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self._tls[0]), str(self._tls[1]))
            options.update({"ssl_context": context} if self._implicit
                           else {"tls_context": context, "require_starttls": True})
        if self._login:
            # aiosmtpd only knows about STARTTLS: over implicit TLS it must be told AUTH is safe.
            options.update(authenticator=self._authenticate, auth_require_tls=bool(self._tls) and not self._implicit)
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to(self, address: str) -> list[EmailMessage]:
        """Messages accepted for one recipient."""
        with self.lock:
            return [message for _, rcpts, message in self.received if address in rcpts]

    def _authenticate(self, server, session, envelope, mechanism, auth_data):  # noqa: ANN001, ANN202
        ok = isinstance(auth_data, LoginPassword) and \
            (auth_data.login.decode(), auth_data.password.decode()) == self._login
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself
