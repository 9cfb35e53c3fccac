"""Poll the configured feed sources: fetch with a conditional GET, parse, store each new version, record health.

`poll_source` never raises for anything a feed or its server can do. A network failure, an HTTP error, a body
over the size cap, a document that is not its format, a parser tripping over hostile input, a GTFS-Realtime
feed whose timestamp goes backwards: each becomes a `FeedError` row and the source's `last_error`, and the
watcher carries on with the next source. A re-sent copy (same source, identifier and version) is a no-op at
ingest; a changed one is a new feed item, handed to the rules by `pipeline.process_new_items`.

Index feeds (ATOM or RSS listing CAP documents by link) are read entry by entry: an entry is fetched once per
`<updated>` value, and the alerts of one poll are stored oldest first, so an Update or Cancel published in
the same poll as its Alert reaches the rules after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from notifier.errors import NotifierError
from notifier.store.settings import FeedSource, Settings, mask_url
from notifier.ops.quarantine import quarantined_by_source
from notifier.store.db import transaction
from notifier.feeds import FeedParseError, Observation
from notifier.feeds.fetch import FeedFetchError, FetchResult, fetch
from notifier.feeds.sniff import parse_any
from notifier.store.models import FeedError, FeedItem, FeedSourceState, utcnow
from notifier.ops.pipeline import ingest

log = logging.getLogger(__name__)
ERROR_TEXT_MAX = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FeedWentBackwards(NotifierError):
    """A feed whose own timestamp is older than one already read: a stale mirror or a misconfigured publisher."""

    exit_code = 2


@dataclass
class PollResult:
    """What one poll of one source did."""

    source: str
    outcome: str = "unchanged"  # new | unchanged | error
    documents: int = 0
    observations: int = 0
    new_item_ids: list[int] = field(default_factory=list)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _SourceMemory:
    """What the last successful poll left for the next one."""

    etag: str | None = None
    last_modified: str | None = None
    index_seen: dict[str, Any] = field(default_factory=dict)
    last_feed_timestamp: datetime | None = None


def poll_all(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None,
             http: requests.Session | None = None) -> list[PollResult]:
    """Poll every configured source once, in configuration order."""
    return [poll_source(factory, source, settings, now, http) for source in settings.feeds]


def poll_source(factory: sessionmaker[Session], source: FeedSource, settings: Settings,
                now: datetime | None = None, http: requests.Session | None = None) -> PollResult:
    """Fetch, parse and store one source; every failure is recorded, none is raised."""
    now = now or utcnow()
    result = PollResult(source.name)
    memory = _remember(factory, source.name)
    try:
        fetched = fetch(source.url, etag=memory.etag, last_modified=memory.last_modified,
                        timeout=settings.fetch_timeout_seconds, max_bytes=settings.fetch_max_bytes, session=http,
                        deadline=settings.fetch_deadline_seconds)
        if fetched.status != 304:
            memory = _read_and_store(factory, source, settings, fetched, memory, result, http, now)
        _record_success(factory, source.name, now, fetched, memory)
    except (FeedFetchError, FeedParseError, FeedWentBackwards) as exc:
        _fail(factory, source.name, now, str(exc), result)
    except Exception as exc:  # noqa: BLE001 - a parser bug on hostile input must not stop the watcher
        log.exception("feed %s: unexpected error while reading it", source.name)
        _fail(factory, source.name, now, f"internal error while reading the feed: {type(exc).__name__}: {exc}",
              result)
    return result


def _read_and_store(factory: sessionmaker[Session], source: FeedSource, settings: Settings, fetched: FetchResult,
                    memory: _SourceMemory, result: PollResult, http: requests.Session | None,
                    now: datetime) -> _SourceMemory:
    result.documents = 1
    feed_format, observations = parse_any(fetched.body, _format(source), source=source.name,
                                          filename=source.url)
    seen, feed_time = dict(memory.index_seen), memory.last_feed_timestamp
    if feed_format == "atom":
        observations, seen = _read_index(factory, source, settings, fetched.body, observations, seen, result,
                                         http, now)
    elif feed_format == "gtfs_rt":
        feed_time = _feed_time_forward(fetched.body, memory.last_feed_timestamp)
    observations = sorted(observations, key=lambda o: o.sent or EPOCH)
    _note_unknown_cancels(factory, source.name, observations, now)
    stored = ingest(factory, observations)
    result.observations += len(observations)
    result.new_item_ids, result.duplicates = stored.new_item_ids, stored.duplicates
    if stored.new_item_ids:
        result.outcome = "new"
    return _SourceMemory(fetched.etag, fetched.last_modified, seen, feed_time)


def _format(source: FeedSource) -> str | None:
    return None if source.format in ("", "auto") else source.format


def _read_index(factory: sessionmaker[Session], source: FeedSource, settings: Settings, body: bytes,
                inline: list[Observation], seen: dict[str, Any], result: PollResult,
                http: requests.Session | None, now: datetime) -> tuple[list[Observation], dict[str, Any]]:
    from notifier.feeds.atom import parse_index

    entries = sorted(parse_index(body), key=lambda e: e.updated or EPOCH)
    inline_keys = {o.external_id for o in inline} | {o.fields.get("link") for o in inline}
    observations, still_listed = list(inline), {}
    for entry in entries:
        version = entry.updated.isoformat() if entry.updated else ""
        still_listed[entry.id] = version
        if seen.get(entry.id) == version or entry.id in inline_keys or entry.link in inline_keys:
            continue
        try:
            observations += _linked_alert(source, settings, entry.link, http)
            result.documents += 1
        except (FeedFetchError, FeedParseError) as exc:
            # The entry stays unseen, so the next poll tries it again; the rest of the index goes ahead.
            still_listed[entry.id] = seen.get(entry.id)
            _record_error(factory, source.name, now, f"entry {entry.id}: {exc}")
            result.errors.append(mask_url(f"entry {entry.id}: {exc}"))
    return observations, {k: v for k, v in still_listed.items() if v is not None}


def _linked_alert(source: FeedSource, settings: Settings, link: str,
                  http: requests.Session | None) -> list[Observation]:
    if not link:
        raise FeedParseError("index entry has no link to its CAP document")
    url = urljoin(source.url, link)
    document = fetch(url, timeout=settings.fetch_timeout_seconds, max_bytes=settings.fetch_max_bytes, session=http,
                     deadline=settings.fetch_deadline_seconds)
    if document.body is None:
        return []
    return parse_any(document.body, None, source=source.name, filename=url)[1]


def _feed_time_forward(body: bytes, last: datetime | None) -> datetime | None:
    from notifier.feeds.gtfs_rt import feed_timestamp

    moment = feed_timestamp(body)
    if last is not None and moment < last:
        raise FeedWentBackwards(f"feed timestamp went backwards: {moment.isoformat()} is older than "
                                f"{last.isoformat()} already read; this copy was ignored")
    return moment


def _note_unknown_cancels(factory: sessionmaker[Session], name: str, observations: list[Observation],
                          now: datetime) -> None:
    # A Cancel for an alert never seen clears nothing; ops should know the feed referred to something we missed.
    here = {(o.source, o.external_id) for o in observations}
    for observation in observations:
        if observation.msg_type != "Cancel":
            continue
        references = [tuple(ref.split(",", 2)[:2]) for ref in observation.references if "," in ref]
        with factory() as session:
            missing = [r for r in references if r not in here and not session.scalar(
                select(FeedItem.id).where(FeedItem.source == r[0], FeedItem.external_id == r[1]).limit(1))]
        if missing or not references:
            what = ", ".join(f"{s} {i}" for s, i in missing) if missing else "no alert at all"
            _record_error(factory, name, now, f"Cancel {observation.external_id} refers to {what}, never seen "
                                              "here: nothing to clear")


# --- health -----------------------------------------------------------------------------------------------------

def _remember(factory: sessionmaker[Session], name: str) -> _SourceMemory:
    with factory() as session:
        state = session.get(FeedSourceState, name)
        if state is None:
            return _SourceMemory()
        return _SourceMemory(state.etag, state.last_modified, dict(state.index_seen or {}),
                             state.last_feed_timestamp)


def _state(session: Session, name: str) -> FeedSourceState:
    state = session.get(FeedSourceState, name)
    if state is None:
        state = FeedSourceState(name=name, consecutive_failures=0, index_seen={})
        session.add(state)
    return state


def _record_success(factory: sessionmaker[Session], name: str, now: datetime, fetched: FetchResult,
                    memory: _SourceMemory) -> None:
    with transaction(factory) as session:
        state = _state(session, name)
        state.last_polled_at = state.last_success_at = now
        state.consecutive_failures = 0
        state.etag = fetched.etag or (memory.etag if fetched.status == 304 else None)
        state.last_modified = fetched.last_modified or (memory.last_modified if fetched.status == 304 else None)
        state.index_seen = memory.index_seen
        state.last_feed_timestamp = memory.last_feed_timestamp


def _record_error(factory: sessionmaker[Session], name: str, now: datetime, message: str) -> None:
    message = mask_url(message)  # a feed URL may carry an API key or a password
    log.warning("feed %s: %s", name, message)
    with transaction(factory) as session:
        session.add(FeedError(source=name, at=now, message=message[:ERROR_TEXT_MAX]))


def _fail(factory: sessionmaker[Session], name: str, now: datetime, message: str, result: PollResult) -> None:
    result.outcome = "error"
    message = mask_url(message)
    result.errors.append(message)
    _record_error(factory, name, now, message)
    with transaction(factory) as session:
        state = _state(session, name)
        state.last_polled_at = state.last_error_at = now
        state.last_error = message[:ERROR_TEXT_MAX]
        state.consecutive_failures = (state.consecutive_failures or 0) + 1


@dataclass
class SourceHealth:
    """How one configured source is doing, for `notifier feeds list`."""

    source: FeedSource
    health: str  # ok | failing | stale | never polled
    last_polled_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error_at: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    stale_warned_at: datetime | None = None
    quarantined: int = 0  # its items a stage failed on, waiting for `notifier feeds retry ID`


def source_health(factory: sessionmaker[Session], settings: Settings,
                  now: datetime | None = None) -> list[SourceHealth]:
    """Every configured source with its health: stale when nothing was read for longer than its staleness."""
    now = now or utcnow()
    with factory() as session:
        states = {s.name: s for s in session.scalars(select(FeedSourceState))}
        quarantined = quarantined_by_source(session)
    return [replace(_health(source, states.get(source.name), now), quarantined=quarantined.get(source.name, 0))
            for source in settings.feeds]


def _health(source: FeedSource, state: FeedSourceState | None, now: datetime) -> SourceHealth:
    if state is None or state.last_polled_at is None:
        return SourceHealth(source, "never polled")
    silent_since = state.last_success_at
    if silent_since is None or now - silent_since > timedelta(seconds=source.stale_after_seconds):
        health = "stale"
    elif state.consecutive_failures:
        health = "failing"
    else:
        health = "ok"
    return SourceHealth(source, health, state.last_polled_at, state.last_success_at, state.last_error_at,
                        state.last_error, state.consecutive_failures, state.stale_warned_at)


def newly_stale(factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
                ) -> list[SourceHealth]:
    """Sources that went stale since ops were last warned about them; marks them warned (one warning per
    silence: the next one comes after the source has been read again and then falls silent again)."""
    now = now or utcnow()
    stale = [h for h in source_health(factory, settings, now) if h.health == "stale" and (
        h.stale_warned_at is None or (h.last_success_at and h.stale_warned_at < h.last_success_at))]
    if stale:
        with transaction(factory) as session:
            for health in stale:
                _state(session, health.source.name).stale_warned_at = now
    return stale

