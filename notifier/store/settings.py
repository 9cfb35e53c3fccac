"""Settings from notifier.toml and NOTIFIER_* environment variables; secrets only from the environment.

Precedence: built-in defaults < notifier.toml (path from NOTIFIER_CONFIG, else ./notifier.toml) < environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from notifier.errors import NotifierError

SECRET_FIELDS = {"twilio_auth_token", "smtp_password", "secret_key", "imap_password", "inbound_email_secret"}
# Query parameters that carry credentials in feed and database URLs (?api_key=..., &token=..., ?password=...).
SECRET_QUERY = re.compile(r"(?i)([?&;][^=&#;\s]*(?:key|token|secret|passw|pwd|sig|auth)[^=&#;\s]*)=[^&#;\s]*")
# The password runs to the last '@' before the host (a password may itself hold '@' or ':').
URL_PASSWORD = re.compile(r"(\b[a-z][\w+.-]*://[^/\s:@]*):[^\s/]*@")


class ConfigError(NotifierError):
    """notifier.toml or an environment variable is wrong: bad input, fixed by the user."""

    exit_code = 2


@dataclass(frozen=True)
class FeedSource:
    """One configured feed: where to fetch it, how to read it, how often."""

    name: str
    url: str
    format: str = "auto"
    poll_seconds: int = 120
    stale_after_seconds: int = 1800
    mapping: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Read with `load_settings()`."""

    database_url: str = "sqlite:///notifier.db"
    outbox_dir: str = "outbox"
    rules_dirs: tuple[str, ...] = ()
    # CSV of `locode,zone` rows: marine-zone / UGC / SAME codes that cover each port (added to Port.zone_codes).
    zone_codes_file: str = ""
    operator: str = ""
    ops_email: str = ""
    # offers
    offers_per_booking: int = 2
    hold_minutes: int = 720
    offer_deadline_hours: int = 12
    # Who gets scarce places first, most important first: "departure" (earliest original departure),
    # "accessibility" (passengers with accessibility needs). Within that, earlier bookings first.
    offer_priority: tuple[str, ...] = ("departure", "accessibility")
    # A departure delay longer than this gives the refund choice (EU 1177/2010 Art 18: "more than 90 minutes").
    refund_delay_minutes: int = 90
    refund_days: int = 7
    # What a booking gets when nobody chose by the deadline, per route jurisdiction ("*" for the rest):
    # "refund" (EU Art 18: refund unless re-routing was chosen) or "first_sailing" (China weather stoppage:
    # the ticket stays valid for the first sailings after resumption; the held place becomes the booking).
    no_answer_defaults: tuple[str, ...] = ("EU=refund", "*=first_sailing")
    # planning and approval
    approval_threshold: int = 500
    min_notice_interval_minutes: int = 30
    # messages
    default_language: str = "en"
    languages: tuple[str, ...] = ("zh-CN", "en")
    public_base_url: str = "https://ferry.example"
    secret_key: str = ""
    company_name: str = "Strait Ferries"
    company_name_zh: str = "海峡轮渡"
    helpline: str = "+86 898 0000 0000"
    sms_price_per_segment: Decimal = Decimal("0.0079")
    sms_price_currency: str = "USD"
    # delivery
    # Sending rates per sender (SMS: per From number or Messaging Service, in segments) and per SMTP relay;
    # 0 means no limit.
    sms_segments_per_second: float = 10.0
    emails_per_second: float = 20.0
    dispatch_threads: int = 8
    lease_seconds: int = 120
    max_age_minutes: int = 360
    sms_validity_seconds: int = 14400
    # Opted-out recipients of a safety-critical notice: "respect" (default: the customer's STOP stands, and Twilio
    # refuses STOPped numbers with 21610 anyway) or "send" (where the operator's legal basis allows it).
    safety_critical_opt_out: str = "respect"  # respect | send
    # Per-sender SMS limits, "SENDER=SEGMENTS_PER_SECOND" (a From number or Messaging Service SID).
    sms_sender_rates: tuple[str, ...] = ()
    # How many `notifier dispatch` processes share the senders; each takes 1/N of every configured rate.
    dispatch_workers: int = 1
    provider_timeout_seconds: float = 10.0
    retry_base_seconds: float = 2.0
    retry_cap_seconds: float = 600.0
    dispatch_poll_seconds: float = 1.0
    # An email whose send was cut by a crash cannot be looked up at the relay: "resend" (same Message-ID, so
    # mail clients show one message) or "assume_sent".
    email_reconcile: str = "resend"
    # providers (credentials come from the environment only)
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_api_base: str = "https://api.twilio.com"
    twilio_status_callback: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_from: str = "notices@ferry.example"
    # feeds
    feeds: tuple[FeedSource, ...] = ()
    fetch_max_bytes: int = 5_000_000
    fetch_timeout_seconds: float = 10.0
    # The whole fetch of one feed, retries included: a server that drips a byte at a time is given up on after it.
    fetch_deadline_seconds: float = 60.0
    # How long a dispatcher keeps retrying a database that dropped its connection before it stops with a message.
    db_retry_seconds: float = 30.0
    # The choice page: POSTs allowed per minute for one link and for one client address (429 beyond them).
    choice_posts_per_minute_per_link: int = 10
    choice_posts_per_minute_per_address: int = 60
    # Addresses of reverse proxies whose X-Forwarded-For is believed; from anyone else it is ignored.
    trusted_proxies: tuple[str, ...] = ()
    # An inbound SMS whose MessageSid was first seen longer ago than this is refused (403): Twilio's signature
    # carries no timestamp, so a captured request would otherwise stay valid for ever.
    inbound_replay_window_seconds: int = 86400
    # `notifier serve` closes a client connection that sends nothing for this long (frees its thread).
    web_idle_timeout_seconds: float = 10.0
    # Personal data (names, contacts, notice texts, SMS replies) older than this many days is removed by
    # `notifier purge`; figures and the audit trail stay.
    retention_days: int = 180
    # the watcher (`notifier watch`): one leader, the others stand by and take over when its lease lapses
    watcher_lease_seconds: int = 30
    watcher_tick_seconds: float = 2.0
    watcher_pipeline_seconds: int = 30
    watcher_housekeeping_seconds: int = 60
    # closing the loop (notifier.aftercare.reminders, .followups, .satisfaction, .inbound_email)
    # One reminder this long before the offer deadline to a customer who has not chosen (0: no reminders).
    reminder_lead_minutes: int = 180
    # Cargo bookings above this many TEU get a personal call from the desk, like customers flagged key_account.
    key_account_teu: int = 10
    # Ask customers for a 1-5 score once their disruption is resolved; a score reply is taken this many days.
    satisfaction_check: bool = True
    satisfaction_reply_days: int = 7
    # Email replies: read over IMAP (the password from NOTIFIER_IMAP_PASSWORD only) and/or POSTed to
    # /email/inbound signed with NOTIFIER_INBOUND_EMAIL_SECRET.
    imap_host: str = ""
    imap_port: int = 993
    imap_ssl: bool = True
    imap_user: str = ""
    imap_password: str = ""
    imap_folder: str = "INBOX"
    inbound_email_secret: str = ""
    # the service desk (/desk): an agent is locked out for desk_lockout_minutes after this many failed sign-ins;
    # its session cookie is Secure unless desk_secure_cookies is off (plain http on a test machine only).
    desk_lockout_attempts: int = 5
    desk_lockout_minutes: int = 15
    desk_secure_cookies: bool = True
    # Behind a single-sign-on reverse proxy: the header naming the signed-in agent (e.g. "X-Remote-User"),
    # believed only on requests from trusted_proxies; empty: agents sign in with their password.
    desk_identity_header: str = ""
    # A ticket (an inquiry or complaint by SMS or email) should have its first answer within this many hours.
    desk_ticket_sla_hours: int = 24
    # More words that sort a ticket, as "category=word" (category: inquiry, complaint, refund, other).
    desk_ticket_keywords: tuple[str, ...] = ()

    @property
    def sms_configured(self) -> bool:
        """True when Twilio credentials and a sender are set."""
        return bool(self.twilio_account_sid and self.twilio_auth_token
                    and (self.twilio_from or self.twilio_messaging_service_sid))

    @property
    def smtp_configured(self) -> bool:
        """True when an SMTP relay is set."""
        return bool(self.smtp_host)

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets replaced, for `config show`."""
        shown = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "****"
            elif f.name == "database_url":
                value = mask_url(value)
            elif f.name == "feeds":
                value = tuple(replace(source, url=mask_url(source.url)) for source in value)
            shown[f.name] = value
        return shown


# Environment variables named by the providers' own conventions, besides NOTIFIER_<FIELD>.
_ENV_ALIASES = {
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "TWILIO_FROM": "twilio_from",
    "TWILIO_MESSAGING_SERVICE_SID": "twilio_messaging_service_sid",
}
_SECRET_FROM_FILE_MESSAGE = "secrets are read from the environment only; remove '{key}' from {path}"


def mask_url(text: str) -> str:
    """A URL (or a message quoting URLs) fit to show: passwords and secret-looking query values (key, token,
    password ...) masked."""
    text = URL_PASSWORD.sub(r"\1:****@", text)
    return SECRET_QUERY.sub(lambda match: f"{match.group(1)}=****", text)


def _coerce(name: str, raw: Any, current: Any) -> Any:
    try:
        if isinstance(current, bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, Decimal):
            return Decimal(str(raw))
        if isinstance(current, tuple) and name != "feeds":
            if isinstance(raw, str):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            return tuple(raw)
    except (ValueError, ArithmeticError) as exc:
        raise ConfigError(f"setting '{name}': cannot read {raw!r} ({exc})") from None
    return raw if not isinstance(current, str) else str(raw)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration ({exc})") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "feeds":
            flat["feeds"] = value
        elif isinstance(value, dict):  # [twilio] account_sid = ... -> twilio_account_sid
            for sub, subvalue in value.items():
                flat[f"{key}_{sub}"] = subvalue
        else:
            flat[key] = value
    for key in flat:
        if key in SECRET_FIELDS:
            raise ConfigError(_SECRET_FROM_FILE_MESSAGE.format(key=key, path=path))
    return flat


def _feed_sources(raw: Any) -> tuple[FeedSource, ...]:
    if not isinstance(raw, list):
        raise ConfigError("[[feeds]] must be a list of tables with name, url and format")
    sources = []
    for entry in raw:
        try:
            sources.append(FeedSource(**entry))
        except TypeError as exc:
            raise ConfigError(f"[[feeds]] entry {entry.get('name', '?')!r}: {exc}") from None
    return tuple(sources)


def load_settings(config_path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Build Settings from defaults, the TOML file, the environment and explicit overrides."""
    env = os.environ if env is None else env
    settings = Settings()
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}

    path = Path(config_path or env.get("NOTIFIER_CONFIG") or "notifier.toml")
    if path.is_file():
        values.update(_read_toml(path))
    elif config_path or env.get("NOTIFIER_CONFIG"):
        raise ConfigError(f"configuration file {path} does not exist")

    for alias, name in _ENV_ALIASES.items():
        if env.get(alias):
            values[name] = env[alias]
    for key, value in env.items():
        if key.startswith("NOTIFIER_") and key[9:].lower() in known:
            values[key[9:].lower()] = value
    values.update({k: v for k, v in overrides.items() if v is not None})

    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    coerced = {}
    for name, raw in values.items():
        coerced[name] = _feed_sources(raw) if name == "feeds" else _coerce(name, raw, getattr(settings, name))
    return replace(settings, **coerced)


def settings_shown(settings: Settings) -> dict[str, Any]:
    """The settings for `config show`: Settings.masked(), and credentials inside every URL-valued setting (a
    password in https://user:pass@host, a token= or key= query value) masked as well."""
    shown = settings.masked()
    for name, value in shown.items():
        if isinstance(value, str) and ("://" in value or name.endswith("_host")):
            shown[name] = _url_shown(value)
    shown["feeds"] = tuple(replace(source, url=_url_shown(source.url)) for source in shown["feeds"])
    return shown


def _url_shown(value: str) -> str:
    # urlsplit finds the userinfo even when the password holds '@', where mask_url's pattern stops too early;
    # a host setting without a scheme (user:pass@smtp.example) is read as a network location.
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(value if "://" in value else f"//{value}")
    except ValueError:
        return "****"  # not readable as a URL: it may hold anything
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:****@{host}"
        value = urlunsplit(parts._replace(netloc=netloc)).removeprefix("//")
    return mask_url(value)
