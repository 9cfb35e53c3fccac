"""ATOM and RSS index feeds of CAP alerts: bytes -> index entries, and Observations where CAP is inlined. Pure.

Publishers announce CAP alerts in an index feed whose entries link to the full CAP documents (the watcher fetches
those through `parse_index`). Some inline the alert instead, in two ways, both read by `parse`:

* a whole CAP `<alert>` inside the entry (`<content type="text/xml"><alert ...>`), parsed exactly as a CAP
  document so the entry and the linked document give the same (source, external_id, version);
* the legacy alerts.weather.gov ATOM, which copies CAP fields into the entry as `cap:event`, `cap:effective`,
  `cap:expires`, `cap:severity`, `cap:areaDesc`, `cap:polygon`, `cap:geocode` ... The entry `<id>` (the URL of
  the CAP document) is the external id and the entry's `<updated>` the version; such an entry has no sender, so
  the feed's author (or the `source` argument) stands in.

Entries with neither are index-only and yield no Observation (a note says how many).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from xml.etree.ElementTree import Element, SubElement

from notifier.feeds import Area, FeedParseError, Observation
from notifier.feeds.cap import (MSG_TYPES, alert_to_observation, child, children, local_name, parse_time, parse_xml,
                                read_area, text)
from notifier.feeds.reading import PARSE_SECONDS, Deadline

ATOM_NAMESPACE = "http://www.w3.org/2005/Atom"


@dataclass
class IndexEntry:
    """One entry of an index feed: what it is, when it last changed, where the full CAP document is."""

    id: str
    updated: datetime | None
    link: str
    title: str


def parse_index(data: bytes, seconds: float = PARSE_SECONDS) -> list[IndexEntry]:
    """List the entries of an ATOM or RSS index feed, refusing it if that takes longer than `seconds`."""
    deadline = Deadline(seconds)
    root = _feed_root(data)
    if local_name(root.tag) == "feed":
        return [_atom_entry(entry, n) for n, entry in enumerate(deadline.over(children(root, "entry")), 1)]
    return [_rss_item(item, n) for n, item in enumerate(deadline.over(_rss_items(root)), 1)]


def parse(data: bytes, source: str = "", notes: list[str] | None = None,
          seconds: float = PARSE_SECONDS) -> list[Observation]:
    """Observations from the entries that inline CAP (a whole <alert>, or legacy NWS cap:* fields)."""
    deadline = Deadline(seconds)
    root = _feed_root(data)
    entries = children(root, "entry") if local_name(root.tag) == "feed" else _rss_items(root)
    feed_source = source or _author(root) or "atom"
    observations, index_only = [], 0
    for number, entry in enumerate(deadline.over(entries), 1):
        observation = _inline_observation(entry, number, feed_source, deadline)
        if observation is None:
            index_only += 1
        else:
            observations.append(observation)
    if index_only and notes is not None:
        notes.append(f"{index_only} entries carry no inline CAP; fetch their links to read them")
    return observations


def _feed_root(data: bytes) -> Element:
    root = parse_xml(data, what="ATOM/RSS feed")
    if local_name(root.tag) not in ("feed", "rss"):
        raise FeedParseError(f"not an ATOM or RSS feed: the document's root element is <{local_name(root.tag)}>")
    return root


def _rss_items(rss: Element) -> list[Element]:
    channel = child(rss, "channel")
    if channel is None:
        raise FeedParseError("RSS feed has no <channel>")
    return children(channel, "item")


# --- index entries ----------------------------------------------------------------------------------------------

def _atom_entry(entry: Element, number: int) -> IndexEntry:
    link = _atom_link(entry)
    entry_id = text(entry, "id") or link
    if not entry_id:
        raise FeedParseError(f"ATOM entry {number} has neither <id> nor <link>")
    updated = parse_time(text(entry, "updated") or text(entry, "published"), "updated")
    return IndexEntry(id=entry_id, updated=_utc(updated), link=link, title=text(entry, "title"))


def _atom_link(entry: Element) -> str:
    # Prefer the link that says it is CAP, then the alternate (rel absent means alternate), then any.
    links = [link for link in children(entry, "link") if link.get("href")]
    cap_links = [link for link in links if "cap" in (link.get("type") or "")]
    alternates = [link for link in links if link.get("rel", "alternate") == "alternate"]
    chosen = cap_links or alternates or links
    return chosen[0].get("href", "").strip() if chosen else ""


def _rss_item(item: Element, number: int) -> IndexEntry:
    link = text(item, "link")
    entry_id = text(item, "guid") or link
    if not entry_id:
        raise FeedParseError(f"RSS item {number} has neither <guid> nor <link>")
    return IndexEntry(id=entry_id, updated=_rss_date(text(item, "pubDate"), number), link=link,
                      title=text(item, "title"))


def _rss_date(value: str, number: int) -> datetime | None:
    """RSS dates are RFC 822 ('Mon, 30 Aug 2012 02:37:00 GMT'), not ISO 8601."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise FeedParseError(f"RSS item {number} <pubDate> is not an RFC 822 date: {value[:40]!r}") from None
    # RFC 2822 "-0000" means UTC with no local zone known; Python returns that as a naive datetime.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else _utc(moment)


def _utc(moment: datetime | None) -> datetime | None:
    try:
        return moment.astimezone(UTC) if moment else None
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is a year before the first one Python can hold
        raise FeedParseError(f"date {moment.isoformat()[:40]} is outside the representable years") from None


# --- inline CAP -------------------------------------------------------------------------------------------------

def _inline_observation(entry: Element, number: int, feed_source: str, deadline: Deadline) -> Observation | None:
    alert = next((e for e in entry.iter() if local_name(e.tag) == "alert" and e is not entry), None)
    if alert is not None:
        return alert_to_observation(alert, deadline)
    if _cap_child(entry, "event") is not None:
        return _legacy_nws_entry(entry, number, feed_source, deadline)
    return None


def _cap_child(entry: Element, name: str) -> Element | None:
    # Only CAP-namespaced children count: ATOM's own <title> or <updated> must not be read as CAP fields.
    for sub in entry:
        if local_name(sub.tag) == name and not sub.tag.startswith("{" + ATOM_NAMESPACE):
            return sub
    return None


def _cap_text(entry: Element, name: str) -> str:
    found = _cap_child(entry, name)
    return (found.text or "").strip() if found is not None else ""


def _legacy_nws_entry(entry: Element, number: int, feed_source: str, deadline: Deadline) -> Observation:
    entry_id = text(entry, "id") or _atom_link(entry)
    updated = parse_time(text(entry, "updated") or text(entry, "published"), "updated")
    if not entry_id or updated is None:
        raise FeedParseError(f"ATOM entry {number} with inline CAP fields lacks <id> or <updated>")
    msg_type = _cap_text(entry, "msgType") or "Alert"
    if msg_type not in MSG_TYPES:
        raise FeedParseError(f"ATOM entry {number} cap:msgType {msg_type!r} is not one of "
                             f"{', '.join(sorted(MSG_TYPES))}")
    observation = Observation(
        source=_author(entry) or feed_source, format="cap",
        kind="weather_alert", external_id=entry_id, version=updated.isoformat(), msg_type=msg_type,
        status=_cap_text(entry, "status") or "Actual", event=_cap_text(entry, "event"),
        severity=_cap_text(entry, "severity") or None, urgency=_cap_text(entry, "urgency") or None,
        certainty=_cap_text(entry, "certainty") or None, sent=updated,
        effective=parse_time(_cap_text(entry, "effective"), "cap:effective"),
        onset=parse_time(_cap_text(entry, "onset"), "cap:onset"),
        expires=parse_time(_cap_text(entry, "expires"), "cap:expires"),
        headline=text(entry, "title"), description=text(entry, "summary"), language="en-US")
    observation.fields["link"] = _atom_link(entry)
    observation.fields["categories"] = [_cap_text(entry, "category")] if _cap_text(entry, "category") else []
    observation.fields["parameters"] = dict(_legacy_pairs(entry, "parameter"))
    observation.areas.append(_legacy_area(entry, deadline))
    return observation


def _author(element: Element) -> str:
    author = child(element, "author")
    return text(author, "name") if author is not None else ""


def _legacy_pairs(entry: Element, name: str) -> list[tuple[str, str]]:
    """(valueName, value) pairs of every cap:<name>; the legacy feed packs several pairs into one element."""
    pairs = []
    for packed in (e for e in entry if local_name(e.tag) == name):
        names, values = children(packed, "valueName"), children(packed, "value")
        pairs.extend(((n.text or "").strip(), (v.text or "").strip()) for n, v in zip(names, values))
    return [(n, v) for n, v in pairs if n]


def _legacy_area(entry: Element, deadline: Deadline) -> Area:
    # The legacy feed flattens <area> into the entry and lists several codes in one geocode value
    # ("022005 022121"), so rebuild a CAP <area> with one geocode per code and let the CAP parser read it.
    area = Element("area")
    for name in ("areaDesc", "polygon", "circle"):
        area.extend(e for e in entry if local_name(e.tag) == name)
    for value_name, values in _legacy_pairs(entry, "geocode"):
        for value in deadline.over(values.split()):
            geocode = SubElement(area, "geocode")
            SubElement(geocode, "valueName").text = value_name
            SubElement(geocode, "value").text = value
    return read_area(area, deadline)
