"""Polling as the watcher does it, against a real HTTP server on a free port: a CAP ATOM index that changes between
polls (a new alert, its Update, a Cancel, an identical re-send, 304, 500, a timeout) hands exactly the right feed
items to the rules, oldest first, nothing twice; hostile input is a recorded feed error, never an exception."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from notifier.store.settings import FeedSource
from notifier.store.models import FeedError, FeedItem, FeedSourceState
from notifier.ops.polling import newly_stale, poll_source, source_health

SENDER = "hainan-met@demo.notifier"
HAIKOU = "19.80,109.60 19.80,110.90 20.60,110.90 20.60,109.60 19.80,109.60"


def cap(identifier: str, sent: str, msg_type: str = "Alert", references: str = "", sent_with_zone: bool = True,
        extra: str = "") -> bytes:
    """A CAP 1.2 typhoon warning for the Qiongzhou Strait (the demo's Haikou ports)."""
    sent_text = sent if sent_with_zone else sent[:19]
    refs = f"<references>{references}</references>" if references else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier><sender>{SENDER}</sender><sent>{sent_text}</sent>
  <status>Actual</status><msgType>{msg_type}</msgType><scope>Public</scope>{refs}
  <info><language>en-US</language><category>Met</category><event>Typhoon Warning{extra}</event>
    <urgency>Immediate</urgency><severity>Extreme</severity><certainty>Likely</certainty>
    <onset>2026-09-14T12:00:00+08:00</onset><expires>2026-09-15T12:00:00+08:00</expires>
    <headline>Typhoon {identifier}</headline>
    <area><areaDesc>Qiongzhou Strait</areaDesc><polygon>{HAIKOU}</polygon></area></info>
</alert>""".encode()


def atom_index(entries: list[tuple[str, str, str]]) -> bytes:
    """An ATOM index of CAP documents: (entry id, updated, link) per entry, newest first as publishers list them."""
    body = "".join(f"<entry><id>{entry_id}</id><updated>{updated}</updated><title>{entry_id}</title>"
                   f'<link rel="alternate" type="application/cap+xml" href="{link}"/></entry>'
                   for entry_id, updated, link in sorted(entries, key=lambda e: e[1], reverse=True))
    return (f'<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f"<id>urn:demo:index</id><title>Warnings</title><updated>2026-09-14T00:00:00Z</updated>"
            f"{body}</feed>").encode()


class FeedServer:
    """Serves what the test puts in `routes`: path -> (status, body, etag, delay seconds). Counts requests."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, str | None, float]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.requests.append(self.path)
                status, body, etag, delay = server.routes.get(self.path, (404, b"not here", None, 0))
                if delay:
                    time.sleep(delay)
                if etag and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(status)
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: exactly what a size cap does

            def log_message(self, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, path: str, body: bytes, status: int = 200, etag: str | None = None, delay: float = 0) -> None:
        self.routes[path] = (status, body, etag, delay)

    def count(self, path: str) -> int:
        return self.requests.count(path)


@pytest.fixture
def server():
    running = FeedServer()
    running.thread.start()
    yield running
    running.httpd.shutdown()
    running.httpd.server_close()


@pytest.fixture
def settings(tmp_settings):
    return replace(tmp_settings, fetch_timeout_seconds=0.5)


def source(server: FeedServer, path: str = "/index.atom", feed_format: str = "atom", **extra) -> FeedSource:
    return FeedSource(name="hainan-cap", url=server.url + path, format=feed_format, **extra)


def items(factory) -> list[tuple[str, str, str]]:
    with factory() as session:
        return [(i.external_id, i.msg_type, i.version) for i in session.scalars(select(FeedItem).order_by(FeedItem.id))]


def state(factory, name: str = "hainan-cap") -> FeedSourceState:
    with factory() as session:
        return session.get(FeedSourceState, name)


def errors(factory) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(FeedError.message).order_by(FeedError.id)))


def test_an_index_that_changes_between_polls(factory, demo_db, settings, server):
    feed = source(server)
    a1 = ("urn:alert:A1", "2026-09-14T06:00:00+08:00", "/alerts/A1.xml")
    a2 = ("urn:alert:A2", "2026-09-14T09:00:00+08:00", "/alerts/A2.xml")
    copy = ("urn:alert:A1-mirror", "2026-09-14T09:30:00+08:00", "/alerts/A1-copy.xml")
    a3 = ("urn:alert:A3", "2026-09-14T15:00:00+08:00", "/alerts/A3.xml")
    server.serve("/alerts/A1.xml", cap("A1", a1[1]))
    server.serve("/alerts/A2.xml", cap("A2", a2[1], "Update", f"{SENDER},A1,{a1[1]}"))
    server.serve("/alerts/A1-copy.xml", cap("A1", a1[1]))  # the same alert re-sent under another entry
    server.serve("/alerts/A3.xml", cap("A3", a3[1], "Cancel", f"{SENDER},A2,{a2[1]}"))

    server.serve("/index.atom", atom_index([a1]), etag='"v1"')
    first = poll_source(factory, feed, settings)
    again = poll_source(factory, feed, settings)  # the server answers 304
    server.serve("/index.atom", atom_index([a1, a2]), etag='"v2"')
    update = poll_source(factory, feed, settings)
    server.serve("/index.atom", b"", status=500)
    broken = poll_source(factory, feed, settings)
    server.serve("/index.atom", atom_index([a1, a2]), etag='"v2"', delay=2)
    slow = poll_source(factory, feed, settings)
    server.serve("/index.atom", atom_index([a1, a2, copy, a3]), etag='"v3"')
    cancel = poll_source(factory, feed, settings)
    server.serve("/index.atom", atom_index([a1, a2, copy, a3]))  # no ETag any more: a full copy, all seen
    quiet = poll_source(factory, feed, settings)

    assert [r.outcome for r in (first, again, update, broken, slow, cancel, quiet)] == \
        ["new", "unchanged", "new", "error", "error", "new", "unchanged"]
    assert items(factory) == [("A1", "Alert", a1[1]), ("A2", "Update", a2[1]), ("A3", "Cancel", a3[1])]
    assert cancel.duplicates == 1  # the re-sent copy reached ingest and was a no-op
    # Each linked alert was fetched once, however often the index was read.
    assert [server.count(f"/alerts/{n}.xml") for n in ("A1", "A2", "A3", "A1-copy")] == [1, 1, 1, 1]
    assert "HTTP 500" in broken.errors[0] and "no response within" in slow.errors[0]
    health = state(factory)
    assert health.consecutive_failures == 0 and health.last_error and health.last_success_at
    assert len(errors(factory)) == 2


def test_new_items_reach_the_rules_in_order(factory, demo_db, settings, server):
    from notifier.store.paths import rules_dir
    from notifier.ops.pipeline import process_new_items
    from notifier.rules.load import load_rules
    from tests.conftest import DEMO_NOW

    rules = load_rules([rules_dir()])
    feed = source(server)
    a1 = ("urn:alert:A1", "2026-09-14T06:00:00+08:00", "/alerts/A1.xml")
    a3 = ("urn:alert:A3", "2026-09-14T07:00:00+08:00", "/alerts/A3.xml")
    server.serve("/alerts/A1.xml", cap("A1", a1[1]))
    server.serve("/alerts/A3.xml", cap("A3", a3[1], "Cancel", f"{SENDER},A1,{a1[1]}"))
    server.serve("/index.atom", atom_index([a1, a3]))  # Alert and its Cancel published in the same poll

    poll_source(factory, feed, settings)
    processed = process_new_items(factory, rules, now=DEMO_NOW)

    from notifier.store.models import Disruption

    with factory() as session:
        live = session.scalars(select(Disruption).where(Disruption.status.in_(("active", "superseded")))).all()
        ever = session.scalars(select(Disruption)).all()
    assert processed.items == 2
    assert ever and not live  # opened by the Alert, then cleared by its Cancel: the Alert came first


def test_a_cancel_for_an_alert_never_seen_is_recorded(factory, settings, server):
    server.serve("/cancel.xml", cap("C9", "2026-09-14T06:00:00+08:00", "Cancel", f"{SENDER},NEVER,2026-09-13T00:00:00Z"))

    result = poll_source(factory, source(server, "/cancel.xml", "cap"), settings)

    assert result.outcome == "new"
    assert any("refers to" in e and "NEVER" in e for e in errors(factory))


XML_BOMB = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol2;</identifier></alert>')
EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                   b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&xxe;</identifier></alert>')


@pytest.mark.parametrize("body, feed_format, words", [
    (XML_BOMB, "cap", ""),
    (EXTERNAL_ENTITY, "cap", ""),
    (cap("U1", "2026-09-14T06:00:00+08:00").replace(b"Typhoon Warning", b"Typhoon \xff\xfe Warning"), "cap", ""),
    (cap("Z1", "2026-09-14T06:00:00+08:00", sent_with_zone=False), "cap", "offset"),
    (b"\x00\x01\x02 not a feed", "auto", ""),
    (b'{"not": "a feed"}', "auto", "unrecognised"),
])
def test_hostile_bodies_are_recorded_feed_errors(factory, settings, server, body, feed_format, words):
    server.serve("/feed", body)

    result = poll_source(factory, source(server, "/feed", feed_format), settings)

    assert result.outcome == "error" and words in result.errors[0]
    assert items(factory) == []
    assert state(factory).consecutive_failures == 1 and len(errors(factory)) == 1


def test_a_body_over_the_size_cap_is_refused_without_reading_it_all(factory, settings, server):
    server.serve("/huge", b"<alert>" + b" " * 50_000_000)

    result = poll_source(factory, source(server, "/huge", "cap"), replace(settings, fetch_max_bytes=1_000_000))

    assert result.outcome == "error" and "1000000-byte" in result.errors[0]
    assert items(factory) == []


def gtfs_feed(timestamp: datetime) -> bytes:
    from google.transit import gtfs_realtime_pb2

    feed = gtfs_realtime_pb2.FeedMessage()
    feed.header.gtfs_realtime_version = "2.0"
    feed.header.timestamp = int(timestamp.timestamp())
    return feed.SerializeToString()


def test_a_gtfs_rt_feed_whose_clock_goes_backwards_is_refused(factory, settings, server):
    feed = source(server, "/trips.pb", "gtfs_rt")
    now = datetime(2026, 9, 14, 8, 0, tzinfo=UTC)

    server.serve("/trips.pb", gtfs_feed(now))
    assert poll_source(factory, feed, settings).outcome == "unchanged"
    server.serve("/trips.pb", gtfs_feed(now - timedelta(minutes=5)))
    backwards = poll_source(factory, feed, settings)
    server.serve("/trips.pb", gtfs_feed(now + timedelta(minutes=1)))
    onwards = poll_source(factory, feed, settings)

    assert backwards.outcome == "error" and "went backwards" in backwards.errors[0]
    assert onwards.outcome != "error"
    assert state(factory).last_feed_timestamp == now + timedelta(minutes=1)


def test_a_silent_source_is_stale_and_warned_about_once_per_silence(factory, settings, server):
    server.serve("/index.atom", atom_index([]))
    feed = source(server, stale_after_seconds=600)
    settings = replace(settings, feeds=(feed,))
    start = datetime(2026, 9, 14, 0, 0, tzinfo=UTC)
    assert [h.health for h in source_health(factory, settings, start)] == ["never polled"]

    poll_source(factory, feed, settings, now=start)
    assert [h.health for h in source_health(factory, settings, start + timedelta(minutes=5))] == ["ok"]
    later = start + timedelta(minutes=11)
    server.serve("/index.atom", b"", status=503)
    poll_source(factory, feed, settings, now=later)

    assert [h.health for h in source_health(factory, settings, later)] == ["stale"]
    assert [h.source.name for h in newly_stale(factory, settings, later)] == ["hainan-cap"]
    assert newly_stale(factory, settings, later + timedelta(minutes=1)) == []
    server.serve("/index.atom", atom_index([]))
    poll_source(factory, feed, settings, now=later + timedelta(minutes=2))
    assert [h.health for h in source_health(factory, settings, later + timedelta(minutes=3))] == ["ok"]
    assert len(newly_stale(factory, settings, later + timedelta(minutes=30))) == 1  # a new silence
