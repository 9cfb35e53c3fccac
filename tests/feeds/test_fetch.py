"""Fetching feeds from a real local HTTP server: conditional GET, size cap, retries, slow and hanging servers."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from notifier.errors import NotifierError
from notifier.feeds.fetch import FeedFetchError, fetch

LAST_MODIFIED = "Wed, 24 Sep 2025 01:00:00 GMT"
BOMB = gzip.compress(b"\0" * 1_000_000)


class FeedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FeedHandler)
        self.hits: Counter = Counter()
        self.seen_headers: dict[str, dict[str, str]] = {}
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FeedHandler(BaseHTTPRequestHandler):
    server: FeedServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        self.server.seen_headers[self.path] = dict(self.headers)
        getattr(self, "route_" + self.path.strip("/").replace("-", "_"), self.route_missing)()

    def reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def route_alerts(self) -> None:
        if self.headers.get("If-None-Match") == '"v1"':
            self.reply(304, ETag='"v1"')
        else:
            self.reply(200, b'{"type": "FeatureCollection", "features": []}', ETag='"v1"',
                       Last_Modified=LAST_MODIFIED, Content_Length="45")

    def route_big(self) -> None:
        self.send_response(200)
        self.end_headers()  # no Content-Length: the client only finds out by counting
        for _ in range(50):
            self.wfile.write(b"x" * 1000)

    def route_big_declared(self) -> None:
        self.reply(200, Content_Length=str(10**9))

    def route_gzip_bomb(self) -> None:
        self.reply(200, BOMB, Content_Encoding="gzip", Content_Length=str(len(BOMB)))

    def route_flaky(self) -> None:
        if self.server.hits[self.path] == 1:
            self.reply(500, b"try again")
        else:
            self.reply(200, b"second time lucky", Content_Length="17")

    def route_down(self) -> None:
        self.reply(503, b"maintenance")

    def route_missing(self) -> None:
        self.reply(404, b"no such feed")

    def route_slow_body(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.trickle(b"x")

    def route_slow_headers(self) -> None:
        self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Padding: ")
        self.trickle(b"p")

    def trickle(self, byte: bytes) -> None:
        # A slow-loris server: a byte every 50 ms, never enough to trip a read timeout; bounded to 10 s.
        for _ in range(200):
            if self.server.stop.is_set():
                return
            try:
                self.wfile.write(byte)
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.05)

    def route_hang(self) -> None:
        self.server.stop.wait(3)
        self.reply(200, b"too late")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch) -> None:
    """A proxy from the environment must not carry these requests away from the local server."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    feed_server = FeedServer()
    thread = threading.Thread(target=feed_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield feed_server
    feed_server.stop.set()
    feed_server.shutdown()
    feed_server.server_close()


def test_etag_and_last_modified_make_the_second_poll_a_304(server):
    first = fetch(server.url + "/alerts")
    assert first.status == 200 and first.body.startswith(b'{"type": "FeatureCollection"')
    assert (first.etag, first.last_modified) == ('"v1"', LAST_MODIFIED)
    second = fetch(server.url + "/alerts", etag=first.etag, last_modified=first.last_modified)
    assert second.status == 304 and second.body is None
    assert (second.etag, second.last_modified) == ('"v1"', LAST_MODIFIED)
    sent = server.seen_headers["/alerts"]
    assert sent["If-None-Match"] == '"v1"' and sent["If-Modified-Since"] == LAST_MODIFIED
    assert sent["User-Agent"].startswith("notifier/")


def test_a_body_over_the_cap_is_abandoned(server):
    with pytest.raises(FeedFetchError, match="sent more than 10000 bytes"):
        fetch(server.url + "/big", max_bytes=10_000)
    assert fetch(server.url + "/big", max_bytes=60_000).body == b"x" * 50_000


def test_a_declared_length_over_the_cap_is_refused_before_reading(server):
    with pytest.raises(FeedFetchError, match="announces 1000000000 bytes"):
        fetch(server.url + "/big-declared")


def test_the_cap_counts_decompressed_bytes_so_a_gzip_bomb_is_stopped(server):
    with pytest.raises(FeedFetchError, match="sent more than 100000 bytes"):
        fetch(server.url + "/gzip-bomb", max_bytes=100_000)


def test_a_server_error_is_retried_and_the_second_try_succeeds(server):
    result = fetch(server.url + "/flaky", backoff=0.01)
    assert (result.status, result.body) == (200, b"second time lucky")
    assert server.hits["/flaky"] == 2


def test_a_server_that_stays_down_is_given_up_after_the_attempts(server):
    with pytest.raises(FeedFetchError, match=r"HTTP 503.*gave up after 3 attempts"):
        fetch(server.url + "/down", backoff=0.01)
    assert server.hits["/down"] == 3


def test_a_client_error_is_not_retried(server):
    with pytest.raises(FeedFetchError, match="answered HTTP 404"):
        fetch(server.url + "/nowhere", backoff=0.01)
    assert server.hits["/nowhere"] == 1


def test_a_refused_connection_is_retried_then_reported():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FeedFetchError, match=r"connection failed.*gave up after 2 attempts"):
        fetch(f"http://127.0.0.1:{port}/feed", attempts=2, backoff=0.01)


@pytest.mark.parametrize("path", ["/slow-body", "/slow-headers"])
def test_a_slow_loris_server_cannot_hold_the_fetch_past_its_deadline(server, path):
    started = time.monotonic()
    with pytest.raises(FeedFetchError, match="did not finish within 1 s"):
        fetch(server.url + path, timeout=0.5, deadline=1.0)
    assert time.monotonic() - started < 3


def test_a_server_that_never_answers_hits_the_read_timeout(server):
    with pytest.raises(FeedFetchError, match="sent no response within 0.3 s"):
        fetch(server.url + "/hang", timeout=(1.0, 0.3))
    assert server.hits["/hang"] == 1


def test_a_given_session_is_used(server):
    with requests.Session() as session:
        session.headers["X-Feed-Key"] = "abc"
        assert fetch(server.url + "/alerts", session=session).status == 200
    assert server.seen_headers["/alerts"]["X-Feed-Key"] == "abc"


def test_files_are_read_by_path_or_file_url_with_the_same_cap(tmp_path):
    feed = tmp_path / "notices.csv"
    feed.write_bytes(b"locode,status,reason,from,until,source\n")
    by_path, by_url = fetch(str(feed)), fetch(feed.as_uri())
    assert by_path.body == by_url.body == feed.read_bytes() and by_path.status == 200
    assert fetch(str(feed), last_modified=by_path.last_modified).status == 304
    with pytest.raises(FeedFetchError, match="over the 10-byte feed limit"):
        fetch(str(feed), max_bytes=10)
    with pytest.raises(FeedFetchError, match="cannot read feed file .*missing.csv"):
        fetch(str(tmp_path / "missing.csv"))


def test_unsupported_schemes_are_refused_and_errors_are_notifier_errors():
    with pytest.raises(FeedFetchError, match="unsupported feed URL scheme 'ftp'") as caught:
        fetch("ftp://example.org/feed.xml")
    assert isinstance(caught.value, NotifierError)
