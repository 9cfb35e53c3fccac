"""The file channel, the outbox a person reads when no provider is configured: what it writes, and that a notice
longer than the channel takes is refused, as a provider would refuse it, instead of being written."""

from __future__ import annotations

import json

from notifier.channels.base import Message
from notifier.channels.file import FileEmailChannel, FileSmsChannel

PHONE, EMAIL = "+8613800138000", "li.wei@example.com"


def sms(body: str, number: int = 1) -> Message:
    return Message(number, "sms", PHONE, body, segments=1)


def email(body: str, number: int = 7) -> Message:
    return Message(number, "email", EMAIL, body, subject="Your sailing is cancelled",
                   body_html="<p>Your sailing is cancelled.</p>", message_id=f"<notice-{number}@ferry.example>")


def test_an_sms_is_one_json_line_a_person_can_read(tmp_path):
    channel = FileSmsChannel(tmp_path)

    result = channel.send(sms("台风：您的船班已取消。"))

    [line] = (tmp_path / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    assert result.status == "sent" and result.provider_id == json.loads(line)["id"] == "file-sms-1"
    assert (json.loads(line)["to"], json.loads(line)["body"]) == (PHONE, "台风：您的船班已取消。")
    assert channel.lookup(sms("台风：您的船班已取消。")) == ["file-sms-1"]


def test_an_sms_longer_than_twilio_would_take_is_refused_and_not_written(tmp_path):
    channel = FileSmsChannel(tmp_path)

    refused = channel.send(sms("x" * 1601))
    taken = channel.send(sms("x" * 1600, number=2))

    assert (refused.status, refused.code) == ("failed", "too-long")
    assert "1601 characters" in refused.reason
    assert taken.status == "sent"
    lines = (tmp_path / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["file-sms-2"]
    assert channel.lookup(sms("x" * 1601)) == []


def test_an_email_is_an_eml_file_with_text_and_html(tmp_path):
    channel = FileEmailChannel(tmp_path, "notices@ferry.example")

    result = channel.send(email("Your 10:00 sailing is cancelled.\n"))

    written = (tmp_path / "email" / "7.eml").read_text(encoding="utf-8")
    assert result.status == "sent" and channel.lookup(email("")) == [result.provider_id]
    assert "Message-ID: <notice-7@ferry.example>" in written and "text/html" in written


def test_an_email_longer_than_the_channel_takes_is_refused_and_not_written(tmp_path):
    channel = FileEmailChannel(tmp_path, "notices@ferry.example")

    refused = channel.send(email("x" * 1_000_001))

    assert (refused.status, refused.code) == ("failed", "too-long")
    assert "at most 1000000" in refused.reason
    assert not (tmp_path / "email" / "7.eml").exists()
    assert channel.lookup(email("")) == []
