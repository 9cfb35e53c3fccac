"""The file channel: with no provider configured, SMS are appended as JSON lines and emails written as .eml files,
so the whole pipeline runs offline and its output can be read by a person."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO

from notifier.channels.base import Channel, Message, SendResult

# Python folds a header longer than 78 characters by breaking right after "Subject:", which some readers show
# as a subject starting with a space; RFC 5322 allows lines up to 998 characters.
EMAIL_POLICY = policy.default.clone(max_line_length=998)


class FileSmsChannel(Channel):
    """Appends each SMS as one JSON line to <outbox>/sms.jsonl."""

    kind = "sms"
    name = "file"
    max_length = 1600
    rate_unit = "segment"
    reconciles = True
    sender = "file"
    rate_per_second = None

    def __init__(self, outbox_dir: str | os.PathLike[str]) -> None:
        self.path = Path(outbox_dir) / "sms.jsonl"
        self._lock = threading.Lock()

    def deliver(self, message: Message) -> SendResult:
        """Append the SMS; a full disk or unwritable folder is a retryable failure, never a lost line."""
        line = json.dumps({"id": f"file-sms-{message.notification_id}", "to": message.recipient,
                           "body": message.body_text, "segments": message.segments,
                           "at": datetime.now(UTC).isoformat()}, ensure_ascii=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, open(self.path, "ab", buffering=0) as handle:
                self._append(handle, line.encode("utf-8"))
        except OSError as exc:
            return SendResult.retry("file", f"cannot write the SMS outbox: {exc.strerror}")
        return SendResult.sent(f"file-sms-{message.notification_id}")

    @staticmethod
    def _append(handle: BinaryIO, line: bytes) -> None:
        # A disk that fills up mid-line leaves part of it behind; cut it off again, or the next line would be
        # glued to it and a half-written notice would pass for a sent one. Unbuffered, so nothing is left in a
        # buffer to be flushed (and fail again) by the truncation or the close.
        start = handle.seek(0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):
                written += handle.write(line[written:]) or 0
            os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                handle.truncate(start)
            raise

    def lookup(self, message: Message) -> list[str]:
        """This notification's provider id if its whole line is already in the outbox (crash reconciliation)."""
        wanted = f"file-sms-{message.notification_id}"
        quoted = f'"{wanted}"'
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                return [wanted] if any(quoted in line and _line_id(line) == wanted for line in handle) else []
        except FileNotFoundError:
            return []

    def close(self) -> None:
        """Nothing to release."""


def _line_id(line: str) -> str | None:
    """The id of one complete outbox line (None for a line cut short)."""
    if not line.endswith("\n"):
        return None
    try:
        return json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None


class FileEmailChannel(Channel):
    """Writes each email as <outbox>/email/<notification id>.eml (text + HTML multipart)."""

    kind = "email"
    name = "file"
    max_length = 1_000_000
    rate_unit = "message"
    reconciles = True
    sender = "file"
    rate_per_second = None

    def __init__(self, outbox_dir: str | os.PathLike[str], sender: str) -> None:
        self.folder = Path(outbox_dir) / "email"
        self.sender = sender

    def deliver(self, message: Message) -> SendResult:
        """Write the .eml atomically (temp file + rename) so a crash never leaves half a message."""
        email = build_email(message, self.sender)
        target = self.folder / f"{message.notification_id}.eml"
        partial = target.with_suffix(".eml.part")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(bytes(email))
            os.replace(partial, target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            return SendResult.retry("file", f"cannot write the email outbox: {exc.strerror}")
        return SendResult.sent(f"file-email-{message.notification_id}")

    def lookup(self, message: Message) -> list[str]:
        """This notification's provider id if its .eml was already written (crash reconciliation)."""
        target = self.folder / f"{message.notification_id}.eml"
        return [f"file-email-{message.notification_id}"] if target.is_file() else []

    def close(self) -> None:
        """Nothing to release."""


def build_email(message: Message, sender: str) -> EmailMessage:
    """A multipart text + HTML email with Message-ID and List-Unsubscribe headers."""
    email = EmailMessage(policy=EMAIL_POLICY)
    email["From"] = sender
    email["To"] = message.recipient
    email["Subject"] = message.subject or ""
    email["Date"] = formatdate(localtime=False)
    if message.message_id:
        email["Message-ID"] = message.message_id
    if message.unsubscribe_url:
        email["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
        if message.unsubscribe_url.startswith("https://"):
            # RFC 8058 one-click: only meaningful with an HTTPS address that takes the POST.
            email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in message.headers.items():
        email[name] = value
    email.set_content(message.body_text)
    if message.body_html:
        email.add_alternative(message.body_html, subtype="html")
    return email
