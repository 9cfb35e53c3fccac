"""SMS through Twilio's Messages API with the official `twilio` client.

The client has no base-URL setting, so `RedirectingHttpClient` rewrites `https://<anything>.twilio.com` to the
configured base (NOTIFIER_TWILIO_API_BASE; tests point it at a local stand-in) and keeps each thread's last
response headers, because the client's exceptions drop them and Retry-After would be lost.

What an answer means (Twilio error codes: https://www.twilio.com/docs/api/errors):
- 201: sent (the Message SID is the provider id).
- 429 or 20429: too many requests; nothing was created, retry after Retry-After.
- 5xx, timeouts, dropped connections: the message may or may not exist, so the result is "uncertain" and the
  dispatcher looks it up (`lookup`) before any resend.
- 21211 (invalid To), 21610 (recipient replied STOP), 21614 (not a mobile number) and every other 4xx: permanent.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from notifier.channels.base import Channel, Message, SendResult
from notifier.logs import guard_library_loggers
from notifier.privacy import redact

TWILIO_HOST = re.compile(r"^https://[^/]+\.twilio\.com")
RATE_LIMITED_CODES = {20429}
PERMANENT_CODES = {21211: "invalid 'To' number", 21610: "recipient has opted out (STOP)",
                   21614: "'To' number is not a mobile number"}
MAX_VALIDITY_SECONDS = 36000  # Twilio's own ceiling for ValidityPeriod
LOOKUP_PAGE = 100


@dataclass(frozen=True)
class TwilioConfig:
    """What the Twilio channel needs to reach Twilio, and nothing more (delivery builds it from Settings)."""

    account_sid: str
    auth_token: str = field(repr=False)  # a secret: never in a log line or an error message
    from_number: str = ""
    messaging_service_sid: str = ""
    api_base: str = "https://api.twilio.com"
    timeout_seconds: float = 10.0
    pool_size: int = 2  # pooled keep-alive connections: one per dispatch thread
    rate_per_second: float | None = None  # segments per second this process may send as `sender`; None: unlimited

    @property
    def sender(self) -> str:
        """What Twilio paces: the Messaging Service when there is one, else the From number."""
        return self.messaging_service_sid or self.from_number


class RedirectingHttpClient(TwilioHttpClient):
    """TwilioHttpClient that sends every request to `base_url` and remembers each thread's last response headers."""

    def __init__(self, base_url: str, timeout: float, pool_size: int = 16) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self._last = threading.local()
        # One pooled keep-alive connection per dispatch thread, for http:// stand-ins as well as https://.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def request(self, method: str, url: str, *args, **kwargs) -> Response:  # noqa: ANN002, ANN003
        """Send to the configured base URL instead of Twilio's host; keep the response headers."""
        self._last.headers = {}
        response = super().request(method, TWILIO_HOST.sub(self.base_url, url), *args, **kwargs)
        self._last.headers = dict(response.headers or {})
        return response

    def last_headers(self) -> dict[str, str]:
        """Headers of this thread's last response (empty when it had none)."""
        return getattr(self._last, "headers", {})

    def log_request(self, kwargs: dict) -> None:
        """One DEBUG line per request, addresses masked: the client's own logs the query (To=<number>) at INFO."""
        self.logger.debug("Twilio API %s %s%s", kwargs["method"], kwargs["url"],
                          f" {redact(str(kwargs['params']))}" if kwargs.get("params") else "")

    def log_response(self, status_code: int, response: object) -> None:
        """The status only (the client's own logs every header at INFO)."""
        self.logger.debug("Twilio API answered %s", status_code)


def retry_after_seconds(headers: dict[str, str], now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delay-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def classify(status: int, code: int | None, message: str, retry_after: float | None) -> SendResult:
    """A Twilio error answer as a send outcome."""
    text = f"Twilio {status}" + (f" error {code}" if code else "") + (f": {message}" if message else "")
    code_text = str(code) if code else str(status)
    if status == 429 or code in RATE_LIMITED_CODES:
        return SendResult.retry(code_text, text, retry_after)
    if status >= 500:
        return SendResult.uncertain(code_text, text, retry_after)
    if code in PERMANENT_CODES:
        return SendResult.failed(code_text, f"{PERMANENT_CODES[code]} ({text})")
    if 400 <= status < 500:
        return SendResult.failed(code_text, text)
    return SendResult.uncertain(code_text, text, retry_after)


class TwilioSmsChannel(Channel):
    """SMS through Twilio; the sender is a From number or a Messaging Service SID."""

    kind = "sms"
    name = "twilio"
    max_length = 1600  # Twilio refuses longer bodies (error 21617)
    rate_unit = "segment"
    reconciles = True

    def __init__(self, config: TwilioConfig, http_client: RedirectingHttpClient | None = None) -> None:
        self.from_number = config.from_number
        self.messaging_service_sid = config.messaging_service_sid
        self.sender = config.sender
        self.rate_per_second = config.rate_per_second
        guard_library_loggers()  # urllib3 logs each request line, a look-up's To=<number> included
        self.http_client = http_client or RedirectingHttpClient(config.api_base, config.timeout_seconds,
                                                                pool_size=config.pool_size)
        self.client = Client(config.account_sid, config.auth_token, http_client=self.http_client)
        self._messages = self.client.api.v2010.account.messages

    def deliver(self, message: Message) -> SendResult:
        """Create the message at Twilio; classify any refusal (see the module docstring)."""
        options = {"to": message.recipient, "body": message.body_text}
        if self.messaging_service_sid:
            options["messaging_service_sid"] = self.messaging_service_sid
        if self.from_number:
            options["from_"] = self.from_number
        if message.status_callback:
            options["status_callback"] = message.status_callback
        if message.validity_seconds:
            options["validity_period"] = max(1, min(MAX_VALIDITY_SECONDS, int(message.validity_seconds)))
        try:
            created = self._messages.create(**options)
        except TwilioRestException as exc:
            return classify(int(exc.status or 0), _int_or_none(exc.code), str(exc.msg or ""),
                            retry_after_seconds(self.http_client.last_headers()))
        except TwilioException as exc:  # TwilioServiceException (RFC 9457 bodies) and the like
            status = int(getattr(exc, "status", 0) or 0)
            return classify(status, _int_or_none(getattr(exc, "code", None)), str(exc),
                            retry_after_seconds(self.http_client.last_headers()))
        except requests.Timeout:
            return SendResult.uncertain("timeout", "Twilio did not answer in time")
        except requests.ConnectionError as exc:
            return SendResult.uncertain("connection", f"cannot reach Twilio: {type(exc).__name__}")
        if not created.sid:
            return SendResult.uncertain("no-sid", "Twilio answered without a Message SID")
        return SendResult.sent(created.sid)

    def lookup(self, message: Message) -> list[str]:
        """SIDs of messages Twilio already has for this notice: same To (and From or Messaging Service), sent
        since the notice was planned, same body. Newest first. Raises when Twilio cannot be asked."""
        since = (message.created_at or datetime.now(UTC)) - timedelta(minutes=5)
        day = since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        filters = {"to": message.recipient}
        if self.from_number and not self.messaging_service_sid:
            filters["from_"] = self.from_number
        try:
            found = self._matching(self._messages.stream(date_sent_after=day, page_size=LOOKUP_PAGE, **filters),
                                   message, since)
        except TwilioRestException as exc:
            if not 400 <= int(exc.status or 0) < 500:
                raise
            found = []  # a provider that will not filter by DateSent: the search below still finds it
        if not found:
            # A message still queued at Twilio has no DateSent yet: look through the newest ones without it.
            found = self._matching(self._messages.list(limit=LOOKUP_PAGE, page_size=LOOKUP_PAGE, **filters),
                                   message, since)
        return found

    def _matching(self, candidates, message: Message, since: datetime) -> list[str]:  # noqa: ANN001
        wanted = _normalise_body(message.body_text)
        found = []
        for candidate in candidates:
            if not str(candidate.direction or "").startswith("outbound"):
                continue
            if self.messaging_service_sid and candidate.messaging_service_sid not in (None,
                                                                                     self.messaging_service_sid):
                continue
            created = candidate.date_created or candidate.date_sent
            if created is not None and created < since:
                continue
            if _normalise_body(candidate.body or "") == wanted and candidate.sid not in found:
                found.append(candidate.sid)
        return found

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        if self.http_client.session is not None:
            self.http_client.session.close()


def _normalise_body(body: str) -> str:
    return body.replace("\r\n", "\n").strip()


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
