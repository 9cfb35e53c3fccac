"""Choice links are short, signed and expiring: an altered, truncated, foreign or stale link is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from notifier.planning.links import LinkError, LinkExpired, blank_tokens, choice_url, make_token, read_token
from notifier.channels.segments import sms_segments

DEADLINE = datetime(2026, 9, 14, 12, 0, tzinfo=UTC)
BEFORE = DEADLINE - timedelta(hours=3)


def test_a_token_reads_back_as_its_booking_disruption_and_deadline():
    token = make_token("s3cret", 123456, 789, DEADLINE)
    link = read_token("s3cret", token, now=BEFORE)
    assert (link.booking_id, link.disruption_id, link.deadline) == (123456, 789, DEADLINE)


def test_a_link_fits_a_chinese_sms_beside_the_notice():
    url = choice_url("https://ferry.example", make_token("s3cret", 2_000_000, 99_999, DEADLINE))
    assert len(url) <= 60
    notice = "【海峡轮渡】11月30日 07:00海口至海安航班因台风停航。回复1改乘12月1日 07:00(已留位)，回复R免费退票¥45.00。请勿前往码头。"
    assert sms_segments(notice + url) <= 3


def test_a_blanked_link_keeps_its_shape_and_chooses_nothing():
    token = make_token("s3cret", 2_000_000, 99_999, DEADLINE)
    notice = f"回复R免费退票。{choice_url('https://ferry.example', token)}"
    shown = blank_tokens(notice)
    assert len(shown) == len(notice) and shown.startswith("回复R免费退票。https://ferry.example/c/")
    assert token not in shown and set(shown.rsplit("/", 1)[1]) <= set("x-.")
    with pytest.raises(LinkError):
        read_token("s3cret", shown.rsplit("/", 1)[1], now=BEFORE)


@pytest.mark.parametrize("alter", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
    lambda t: t.replace(t.split("-")[0], "zz", 1),  # another booking, same signature
    lambda t: t[:-4],  # truncated (an SMS split badly)
    lambda t: t.split(".")[0],  # no signature at all
    lambda t: "",
    lambda t: "not a token at all",
])
def test_an_altered_link_is_refused(alter):
    token = make_token("s3cret", 42, 7, DEADLINE)
    with pytest.raises(LinkError, match="not valid"):
        read_token("s3cret", alter(token), now=BEFORE)


def test_a_link_signed_with_another_key_is_refused():
    with pytest.raises(LinkError, match="not valid"):
        read_token("s3cret", make_token("other-key", 42, 7, DEADLINE), now=BEFORE)


def test_a_link_expires_at_its_deadline():
    token = make_token("s3cret", 42, 7, DEADLINE)
    assert read_token("s3cret", token, now=DEADLINE).booking_id == 42
    with pytest.raises(LinkExpired, match="expired"):
        read_token("s3cret", token, now=DEADLINE + timedelta(seconds=1))


def test_without_a_secret_no_link_is_made_or_read():
    with pytest.raises(LinkError, match="NOTIFIER_SECRET_KEY"):
        make_token("", 1, 1, DEADLINE)
    with pytest.raises(LinkError, match="NOTIFIER_SECRET_KEY"):
        read_token("", "x.y", now=BEFORE)
