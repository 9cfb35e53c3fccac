"""Hong Kong Observatory warnings (Open Data API, `weather.php?dataType=warnsum|warningInfo&lang=en|tc|sc`):
bytes -> weather alert Observations. Pure: no I/O.

warnsum is an object keyed by warning statement (WTCSGNL, WRAIN ...), each with its `code` (TC8NE, WRAINB ...),
`actionCode` (ISSUE, REISSUE, EXTEND, UPDATE, CANCEL) and issue / update / expire times in +08:00. warningInfo is
`{"details": [...]}`, each with its statement, `subtype` (the code) and the warning's text lines. Either way one
warning is one Observation whose lineage is its statement: a signal replacing another (TC3 -> TC8NE) is an update
of the same warning, and CANCEL clears it. The rules test the language-independent code (`fields.warning_code`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.feeds import FeedParseError, Observation
from notifier.feeds.reading import PARSE_SECONDS, Deadline, iso, load_json, parse_time

PUBLISHER = "Hong Kong Observatory"
ACTIONS = {"ISSUE": "Alert", "REISSUE": "Update", "EXTEND": "Update", "UPDATE": "Update", "CANCEL": "Cancel"}
# Each code's name as the Observatory writes it, in English, Traditional and Simplified Chinese.
CODE_NAMES = {
    "TC1": ("Standby Signal No. 1", "一號戒備信號", "一号戒备信号"),
    "TC3": ("Strong Wind Signal No. 3", "三號強風信號", "三号强风信号"),
    "TC8NE": ("No. 8 Northeast Gale or Storm Signal", "八號東北烈風或暴風信號", "八号东北烈风或暴风信号"),
    "TC8SE": ("No. 8 Southeast Gale or Storm Signal", "八號東南烈風或暴風信號", "八号东南烈风或暴风信号"),
    "TC8SW": ("No. 8 Southwest Gale or Storm Signal", "八號西南烈風或暴風信號", "八号西南烈风或暴风信号"),
    "TC8NW": ("No. 8 Northwest Gale or Storm Signal", "八號西北烈風或暴風信號", "八号西北烈风或暴风信号"),
    "TC9": ("Increasing Gale or Storm Signal No. 9", "九號烈風或暴風風力增強信號", "九号烈风或暴风风力增强信号"),
    "TC10": ("Hurricane Signal No. 10", "十號颶風信號", "十号飓风信号"),
    "WRAINA": ("Amber Rainstorm Warning Signal", "黃色暴雨警告信號", "黄色暴雨警告信号"),
    "WRAINR": ("Red Rainstorm Warning Signal", "紅色暴雨警告信號", "红色暴雨警告信号"),
    "WRAINB": ("Black Rainstorm Warning Signal", "黑色暴雨警告信號", "黑色暴雨警告信号"),
}
# warningInfo names no statement: the English names warnsum gives the ones notifier's rules care about.
STATEMENT_NAMES = {"WTCSGNL": "Tropical Cyclone Warning Signal", "WRAIN": "Rainstorm Warning Signal"}
LANGUAGES = ("en", "zh-HK", "zh-CN")
# Characters only Simplified Chinese writes (the Traditional forms differ): enough to tell sc from tc texts.
_SIMPLIFIED = set("号带气风热强黄红飓戒备东预发时")


def parse(data: bytes, source: str = "", notes: list[str] | None = None,
          seconds: float = PARSE_SECONDS) -> list[Observation]:
    """Parse a warnsum or warningInfo response (any of the three languages) into one Observation per warning."""
    deadline = Deadline(seconds)
    document = load_json(data, what="HKO warnings")
    if not isinstance(document, dict):
        raise FeedParseError("HKO warnings must be a JSON object (warnsum) or {\"details\": [...]} (warningInfo)")
    publisher = source or PUBLISHER
    if "details" in document:
        details = document["details"]
        if not isinstance(details, list):
            raise FeedParseError("HKO warningInfo: details should be a JSON list")
        return [_info_observation(entry, publisher) for entry in deadline.over(details)]
    return [_summary_observation(statement, entry, publisher) for statement, entry in deadline.over(document.items())]


def _summary_observation(statement: str, entry: Any, source: str) -> Observation:
    """One warnsum entry: a warning statement with its current code and action."""
    where = f"HKO warning {statement[:20]}"
    if not isinstance(entry, dict):
        raise FeedParseError(f"{where} is not a JSON object")
    code = _text(entry, "code", where)
    action = _text(entry, "actionCode", where) or "ISSUE"
    if action not in ACTIONS:
        raise FeedParseError(f"{where}: actionCode {action[:20]!r} is not one of {', '.join(ACTIONS)}")
    name = _text(entry, "name", where)
    issued = parse_time(entry.get("issueTime"), f"{where}: issueTime")
    updated = parse_time(entry.get("updateTime"), f"{where}: updateTime") or issued
    if updated is None:
        raise FeedParseError(f"{where} has neither issueTime nor updateTime")
    observation = _observation(statement, code, name, updated, source, action)
    observation.effective = issued
    observation.expires = parse_time(entry.get("expireTime"), f"{where}: expireTime")
    observation.fields.update(warning_type=_text(entry, "type", where) or None, issue_time=iso(issued),
                              expire_time=iso(observation.expires))
    return observation


def _info_observation(entry: Any, source: str) -> Observation:
    """One warningInfo detail: a warning in force with its text (warningInfo lists no cancelled warning)."""
    if not isinstance(entry, dict):
        raise FeedParseError("HKO warningInfo: a detail is not a JSON object")
    statement = _text(entry, "warningStatementCode", "HKO warningInfo detail")
    where = f"HKO warning {statement[:20] or '(no warningStatementCode)'}"
    if not statement:
        raise FeedParseError(f"{where}: every detail needs its warningStatementCode")
    updated = parse_time(entry.get("updateTime"), f"{where}: updateTime")
    if updated is None:
        raise FeedParseError(f"{where} has no updateTime")
    contents = entry.get("contents") or []
    if not isinstance(contents, list) or not all(isinstance(line, str) for line in contents):
        raise FeedParseError(f"{where}: contents should be a list of text lines")
    code = _text(entry, "subtype", where) or statement
    return _observation(statement, code, STATEMENT_NAMES.get(statement, ""), updated, source, "ISSUE",
                        "\n".join(contents))


def _observation(statement: str, code: str, name: str, updated: datetime, source: str, action: str,
                 description: str = "") -> Observation:
    """The Observation for one warning; its language is the text's (English unless Chinese is written)."""
    language = _language(description or name)
    names = CODE_NAMES.get(code)
    headline = names[LANGUAGES.index(language)] if names else (name or code)
    msg_type = ACTIONS[action]
    observation = Observation(
        source=source, format="hko_warnings", kind="weather_alert", external_id=statement,
        version=f"{updated.isoformat()} {code}", msg_type=msg_type,
        references=[f"{source},{statement}"] if msg_type == "Cancel" else [], event=name or statement,
        sent=updated, headline=headline, description=description, language=language)
    if names:
        observation.texts = {lang: {"headline": text, "description": description if lang == language else ""}
                             for lang, text in zip(LANGUAGES, names)}
    observation.fields.update(warning_statement=statement, warning_code=code, action_code=action,
                              update_time=iso(updated))
    return observation


def _language(text: str) -> str:
    if not any("\u4e00" <= char <= "\u9fff" for char in text):
        return "en"
    return "zh-CN" if _SIMPLIFIED & set(text) else "zh-HK"


def _text(record: dict[str, Any], key: str, what: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FeedParseError(f"{what}: {key} should be text, not {type(value).__name__}")
    return value.strip()
