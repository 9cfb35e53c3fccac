"""Channels: the only code that talks to providers. `channels_for(settings)` picks real or file channels."""

from __future__ import annotations

from notifier.store.settings import Settings
from notifier.channels.base import Channel


def channels_for(settings: Settings) -> dict[str, Channel]:
    """The channel per kind ("sms", "email"): Twilio / SMTP when configured, else the file outbox."""
    from notifier.channels.file import FileEmailChannel, FileSmsChannel

    chosen: dict[str, Channel] = {"sms": FileSmsChannel(settings.outbox_dir),
                                  "email": FileEmailChannel(settings.outbox_dir, settings.smtp_from)}
    if settings.sms_configured:
        from notifier.channels.twilio_sms import TwilioSmsChannel

        chosen["sms"] = TwilioSmsChannel(settings)
    if settings.smtp_configured:
        from notifier.channels.smtp_email import SmtpEmailChannel

        chosen["email"] = SmtpEmailChannel(settings)
    return chosen
