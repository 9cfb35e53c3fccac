"""Fetch a feed body over HTTP(S) or from a file: timeouts, conditional GET, a size cap, retries, a deadline.

Feeds are untrusted and so are their servers. Every fetch is bounded three ways: each connect and each read has
a timeout; the body is streamed and abandoned past `max_bytes` (counted after decompression, so a gzip bomb is
stopped too); and the whole fetch, retries included, must finish within `deadline` seconds, so a server that
trickles a byte at a time (slow loris), which never trips a read timeout, still cannot hold the watcher. When the
deadline passes, the fetch's sockets are shut down, so the thread blocked reading them ends at once and the
connection is gone (not held open, thread and all, for as long as the server cares to drip).

Only failures that may pass are retried (connection errors and 5xx answers), with exponential backoff. A 304 to
a conditional GET is a normal result with no body. `file://` URLs and plain paths are read with the same cap,
and their modification time serves as Last-Modified, so polling an unchanged file is a 304 as well.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from notifier.errors import NotifierError
from notifier import __version__
from notifier.feeds import MAX_FEED_BYTES

USER_AGENT = f"notifier/{__version__} (disruption broadcaster for shipping lines)"
CHUNK_BYTES = 65_536


class FeedFetchError(NotifierError):
    """A feed that could not be fetched: recorded as a feed error, shown as one line."""

    exit_code = 2


class _Retryable(Exception):
    """A failure that may pass: a connection error or a 5xx answer."""


@dataclass
class FetchResult:
    """What a fetch gave: status 200 (or another 2xx) with a body, or 304 with body None."""

    status: int
    body: bytes | None
    etag: str | None
    last_modified: str | None


def fetch(url: str, *, etag: str | None = None, last_modified: str | None = None,
          timeout: float | tuple[float, float] = 10.0, max_bytes: int = MAX_FEED_BYTES,
          session: requests.Session | None = None, attempts: int = 3, backoff: float = 0.5,
          deadline: float = 60.0, headers: dict[str, str] | None = None) -> FetchResult:
    """Fetch a feed from an http(s):// URL, a file:// URL or a path; 304 gives body None."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        request_headers = {"User-Agent": USER_AGENT, **(headers or {}), **_conditional(etag, last_modified)}
        return _fetch_http(url, request_headers, _timeouts(timeout), max_bytes, session,
                           max(1, attempts), backoff, deadline)
    if scheme == "file":
        return read_file(url2pathname(urlsplit(url).path), max_bytes=max_bytes, last_modified=last_modified)
    if scheme == "" or len(scheme) == 1:  # a plain path (one letter is a Windows drive)
        return read_file(url, max_bytes=max_bytes, last_modified=last_modified)
    raise FeedFetchError(f"unsupported feed URL scheme {scheme!r} in {url}: use http(s)://, file:// or a path")


def _conditional(etag: str | None, last_modified: str | None) -> dict[str, str]:
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


def _timeouts(timeout: float | tuple[float, float]) -> tuple[float, float]:
    return timeout if isinstance(timeout, tuple) else (timeout, timeout)


# --- HTTP -------------------------------------------------------------------------------------------------------

class _Hangup:
    """The sockets one fetch opened, so that the caller can cut them when its deadline passes."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False

    def add(self, sock: socket.socket | None) -> None:
        """Remember a socket (shut at once if the fetch was already given up)."""
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self._cut:
                _shut(sock)

    def cut(self) -> None:
        """Shut every socket: a thread blocked reading one wakes up with an error."""
        with self._lock:
            self._cut = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _session_with_hangup(hangup: _Hangup) -> requests.Session:
    # A connection class that hands its socket to `hangup` as soon as it is connected: a server that drips its
    # headers holds the request before any response object (and its socket) exists.
    def tracked(base: type[HTTPConnection]) -> type[HTTPConnection]:
        def connect(self: HTTPConnection) -> None:
            base.connect(self)
            hangup.add(self.sock)

        return type(f"Tracked{base.__name__}", (base,), {"connect": connect})

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {
                "http": type("TrackedPool", (HTTPConnectionPool,), {"ConnectionCls": tracked(HTTPConnection)}),
                "https": type("TrackedTLSPool", (HTTPSConnectionPool,), {"ConnectionCls": tracked(HTTPSConnection)})}

    session = requests.Session()
    session.mount("http://", Adapter())
    session.mount("https://", Adapter())
    return session


def _fetch_http(url: str, headers: dict[str, str], timeouts: tuple[float, float], max_bytes: int,
                session: requests.Session | None, attempts: int, backoff: float, deadline: float) -> FetchResult:
    give_up_at = time.monotonic() + deadline
    own_session = session is None
    hangup = _Hangup()
    session = session or _session_with_hangup(hangup)
    try:
        for attempt in range(1, attempts + 1):
            try:
                return _get_before(give_up_at, deadline, session, url, headers, timeouts, max_bytes, hangup)
            except _Retryable as exc:
                pause = backoff * 2 ** (attempt - 1)
                if attempt == attempts or time.monotonic() + pause >= give_up_at:
                    raise FeedFetchError(f"{url}: {exc} (gave up after {attempt} attempt"
                                         f"{'s' if attempt > 1 else ''})") from None
                time.sleep(pause)
        raise AssertionError("unreachable: the last attempt either returns or raises")
    finally:
        if own_session:
            session.close()


def _get_before(give_up_at: float, deadline: float, session: requests.Session, url: str, headers: dict[str, str],
                timeouts: tuple[float, float], max_bytes: int, hangup: _Hangup) -> FetchResult:
    # requests has no overall deadline, so the request runs in a worker thread that is given up on when time is
    # up: its sockets are shut down, which wakes it from any read, and it ends.
    outcome: dict[str, Any] = {}
    cancelled = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = _get_once(session, url, headers, timeouts, max_bytes, cancelled, hangup)
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="notifier-feed-fetch", daemon=True)
    worker.start()
    worker.join(max(0.0, give_up_at - time.monotonic()))
    if worker.is_alive():
        cancelled.set()
        hangup.cut()
        raise FeedFetchError(f"{url} did not finish within {deadline:g} s (the server is too slow); gave up")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _get_once(session: requests.Session, url: str, headers: dict[str, str], timeouts: tuple[float, float],
              max_bytes: int, cancelled: threading.Event, hangup: _Hangup) -> FetchResult:
    try:
        with session.get(url, headers=headers, timeout=timeouts, stream=True) as response:
            hangup.add(_socket_of(response))  # a session passed in by the caller does not track its sockets
            return _read_response(response, url, headers, max_bytes, cancelled)
    except requests.ConnectionError as exc:  # includes connect timeouts and a read timeout mid-body
        raise _Retryable(f"connection failed ({_reason(exc)})") from None
    except requests.Timeout:
        raise FeedFetchError(f"{url} sent no response within {timeouts[1]:g} s") from None
    except requests.RequestException as exc:
        raise FeedFetchError(f"{url} could not be fetched ({_reason(exc)})") from None


def _read_response(response: requests.Response, url: str, headers: dict[str, str], max_bytes: int,
                   cancelled: threading.Event) -> FetchResult:
    status = response.status_code
    if status == 304:
        return FetchResult(304, None, response.headers.get("ETag") or headers.get("If-None-Match"),
                           response.headers.get("Last-Modified") or headers.get("If-Modified-Since"))
    if status >= 500:
        raise _Retryable(f"server error HTTP {status} {response.reason or ''}".rstrip())
    if not 200 <= status < 300:
        raise FeedFetchError(f"{url} answered HTTP {status} {response.reason or ''}".rstrip())
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FeedFetchError(f"{url} announces {declared} bytes, over the {max_bytes}-byte feed limit")
    body = _read_capped(response, url, max_bytes, cancelled)
    return FetchResult(status, body, response.headers.get("ETag"), response.headers.get("Last-Modified"))


def _read_capped(response: requests.Response, url: str, max_bytes: int, cancelled: threading.Event) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
        if cancelled.is_set():
            raise FeedFetchError(f"{url}: fetch abandoned at the deadline")
        size += len(chunk)
        if size > max_bytes:
            raise FeedFetchError(f"{url} sent more than {max_bytes} bytes, over the feed limit; stopped reading")
        chunks.append(chunk)
    return b"".join(chunks)


def _socket_of(response: requests.Response) -> socket.socket | None:
    connection = getattr(response.raw, "_connection", None) or getattr(response.raw, "connection", None)
    return getattr(connection, "sock", None)


def _reason(exc: Exception) -> str:
    # requests nests urllib3's reason several levels deep; the innermost line is the readable one.
    return str(exc).splitlines()[-1][:160] if str(exc) else type(exc).__name__


# --- files ------------------------------------------------------------------------------------------------------

def read_file(path: str, *, max_bytes: int = MAX_FEED_BYTES, last_modified: str | None = None) -> FetchResult:
    """Read a feed file with the fetch size cap; its mtime is its Last-Modified (equal to the given one: 304)."""
    try:
        modified = formatdate(os.stat(path).st_mtime, usegmt=True)
        if last_modified and last_modified == modified:
            return FetchResult(304, None, None, modified)
        with open(path, "rb") as feed_file:
            body = feed_file.read(max_bytes + 1)  # +1 tells "exactly the cap" from "over it", also for pipes
    except OSError as exc:
        raise FeedFetchError(f"cannot read feed file {path}: {exc.strerror or exc}") from None
    if len(body) > max_bytes:
        raise FeedFetchError(f"feed file {path} is over the {max_bytes}-byte feed limit")
    return FetchResult(200, body, None, modified)
