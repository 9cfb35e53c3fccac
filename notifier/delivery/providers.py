"""Which channel reaches customers of each kind, and each channel's provider config, built from the settings:
channels know no settings, so this is where Settings meets Twilio, SMTP and the file outbox.

The provider modules are imported only when that provider is configured: the `twilio` client is slow to load
and not needed by a run that writes to the file outbox.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from notifier.channels.base import Channel
from notifier.delivery.ratelimit import rate_for
from notifier.store.settings import Settings

if TYPE_CHECKING:
    from notifier.channels.smtp_email import SmtpConfig
    from notifier.channels.twilio_sms import TwilioConfig


def channels_for(settings: Settings) -> dict[str, Channel]:
    """The channel per kind ("sms", "email"): Twilio / SMTP when configured, else the file outbox."""
    from notifier.channels.file import FileEmailChannel, FileSmsChannel

    chosen: dict[str, Channel] = {"sms": FileSmsChannel(settings.outbox_dir),
                                  "email": FileEmailChannel(settings.outbox_dir, settings.smtp_from)}
    if settings.sms_configured:
        from notifier.channels.twilio_sms import TwilioSmsChannel

        chosen["sms"] = TwilioSmsChannel(twilio_config(settings))
    if settings.smtp_configured:
        from notifier.channels.smtp_email import SmtpEmailChannel

        chosen["email"] = SmtpEmailChannel(smtp_config(settings))
    return chosen


def twilio_config(settings: Settings) -> TwilioConfig:
    """The Twilio channel's config: credentials, sender, API base, timeout, a pooled connection per dispatch
    thread, and the sender's rate in segments per second for this dispatch process."""
    from notifier.channels.twilio_sms import TwilioConfig

    config = TwilioConfig(account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
                          from_number=settings.twilio_from,
                          messaging_service_sid=settings.twilio_messaging_service_sid,
                          api_base=settings.twilio_api_base, timeout_seconds=settings.provider_timeout_seconds,
                          pool_size=max(2, settings.dispatch_threads))
    return dataclasses.replace(config, rate_per_second=rate_for(settings, "sms_segments_per_second", config.sender))


def smtp_config(settings: Settings) -> SmtpConfig:
    """The SMTP channel's config: the relay, login, TLS, From address, timeout, a connection per dispatch thread,
    and the relay's rate in emails per second for this dispatch process."""
    from notifier.channels.smtp_email import SmtpConfig

    config = SmtpConfig(host=settings.smtp_host, from_address=settings.smtp_from, port=settings.smtp_port,
                        user=settings.smtp_user, password=settings.smtp_password, use_ssl=settings.smtp_ssl,
                        starttls=settings.smtp_starttls, timeout_seconds=settings.provider_timeout_seconds,
                        pool_size=max(1, settings.dispatch_threads))
    return dataclasses.replace(config, rate_per_second=rate_for(settings, "emails_per_second", config.sender))
