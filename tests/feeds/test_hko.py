"""Hong Kong Observatory warnings as its open-data API publishes them (warnsum and warningInfo, en / tc / sc): the
signal a duty officer sees, in the customer's language, and a CANCEL that clears it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notifier.feeds import FeedParseError, hko


def test_a_typhoon_signal_in_warnsum_is_one_warning_with_its_code_and_times(feed_file):
    signal, rain = hko.parse(feed_file("hko/warnsum-tc8ne-en.json"))
    assert (signal.format, signal.kind, signal.msg_type) == ("hko_warnings", "weather_alert", "Alert")
    assert signal.source == "Hong Kong Observatory" and signal.external_id == "WTCSGNL"
    assert signal.fields["warning_code"] == "TC8NE" and signal.fields["action_code"] == "ISSUE"
    assert signal.headline == "No. 8 Northeast Gale or Storm Signal" and signal.language == "en"
    assert signal.effective == datetime(2026, 9, 14, 1, 40, tzinfo=UTC)  # 09:40 +08:00
    assert signal.expires is None  # a signal has no end time until it is cancelled
    assert rain.fields["warning_code"] == "WRAINA" and rain.expires == datetime(2026, 9, 14, 3, 15, tzinfo=UTC)


@pytest.mark.parametrize("relative, language, headline", [
    ("hko/warnsum-tc8ne-tc.json", "zh-HK", "八號東北烈風或暴風信號"),
    ("hko/warnsum-tc8ne-sc.json", "zh-CN", "八号东北烈风或暴风信号"),
])
def test_the_chinese_responses_are_the_same_warning_in_their_language(feed_file, relative, language, headline):
    [english] = hko.parse(feed_file("hko/warnsum-tc8ne-en.json"))[:1]
    [signal] = hko.parse(feed_file(relative))
    assert signal.language == language and signal.headline == headline
    # The same warning, whichever language was fetched: read twice, it is stored once.
    assert (signal.external_id, signal.version) == (english.external_id, english.version)
    assert signal.texts["zh-HK"]["headline"] == "八號東北烈風或暴風信號"
    assert signal.texts["en"]["headline"] == english.headline


def test_warning_info_carries_the_observatory_text(feed_file):
    [signal] = hko.parse(feed_file("hko/warningInfo-tc8ne-en.json"))
    assert signal.fields["warning_code"] == "TC8NE" and signal.event == "Tropical Cyclone Warning Signal"
    assert "Ferry services may be suspended" in signal.description
    [chinese] = hko.parse(feed_file("hko/warningInfo-tc8ne-tc.json"))
    assert chinese.language == "zh-HK" and "渡輪服務可能暫停" in chinese.description


def test_cancel_clears_the_warning_it_names(feed_file):
    [cancel] = hko.parse(feed_file("hko/warnsum-cancel-en.json"))
    assert cancel.msg_type == "Cancel" and cancel.external_id == "WTCSGNL"
    assert cancel.references == ["Hong Kong Observatory,WTCSGNL"]


def test_no_warning_in_force_is_no_observation():
    assert hko.parse(b"{}") == [] and hko.parse(b'{"details": []}') == []


@pytest.mark.parametrize("data, reason", [
    (b'{"WTCSGNL": {"code": "TC8NE", "actionCode": "HOIST", "updateTime": "2026-09-14T09:40:00+08:00"}}',
     "actionCode 'HOIST' is not one of"),
    (b'{"WTCSGNL": {"code": "TC8NE", "actionCode": "ISSUE", "updateTime": "2026-09-14T09:40:00"}}',
     "has no UTC offset"),
    (b'{"WTCSGNL": {"code": "TC8NE", "actionCode": "ISSUE"}}', "neither issueTime nor updateTime"),
    (b'{"WTCSGNL": "TC8NE"}', "is not a JSON object"),
    (b'{"details": [{"subtype": "TC8NE", "updateTime": "2026-09-14T09:40:00+08:00"}]}',
     "needs its warningStatementCode"),
    (b'[1, 2]', "must be a JSON object"),
])
def test_malformed_warnings_are_refused_with_the_reason(data, reason):
    with pytest.raises(FeedParseError, match=reason):
        hko.parse(data)
