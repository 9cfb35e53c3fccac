"""Resources that run out or servers that never finish: each must end in one clear error and a clean state.

- a feed that never ends (chunks streamed for ever): cut at the size cap, recorded, connection closed;
- a slow-loris server (a byte a second, in the body or in the headers): given up at the fetch deadline, and the
  fetch's thread and connection are gone, not left dripping;
- the database going away mid-transaction (SQLite turned read-only, a PostgreSQL backend terminated): the
  dispatcher retries, or stops with one line; no notice is ever half-recorded and none is sent twice;
- a full disk under the file outbox: the notice stays queued for a retry, nothing is marked sent, no partial
  .eml or half SMS line is left, and once there is room again everything goes out exactly once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, event, func, select, text, update
from sqlalchemy.pool import NullPool

from cli import main
from notifier.store import db as notifier_db
from notifier.channels.file import FileEmailChannel, FileSmsChannel
from notifier.store.settings import FeedSource
from notifier.store.db import DatabaseError, make_engine, session_factory
from notifier.delivery.dispatch import dispatch_all
from notifier.store.models import DeliveryAttempt, FeedError, FeedItem, FeedSourceState, Notification
from notifier.ops.polling import poll_source
from tests.standins.fixtures import queue_notice, seed_sms_broadcast
from tests.aftercare.test_responses import factory, planned_template  # noqa: F401

FETCH_THREAD = "notifier-feed-fetch"


# --- hostile feed servers --------------------------------------------------------------------------------------------

class HostileServer(ThreadingHTTPServer):
    """A feed server that never finishes: /endless streams 16 KB chunks for ever, /drip-body sends its headers and
    then a byte a second, /drip-headers a byte a second of its headers. Each route notes when the client hung up."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.hung_up = {path: threading.Event() for path in ("/endless", "/drip-body", "/drip-headers")}
        self.stop = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class HostileHandler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        """Quiet."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.close_connection = True
        try:
            if self.path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "application/cap+xml")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"<alert>" * 2340
                self.keep_sending(b"%x\r\n%s\r\n" % (len(chunk), chunk), pause=0.0)
            elif self.path == "/drip-body":
                self.send_response(200)
                self.send_header("Content-Type", "application/cap+xml")
                self.end_headers()
                self.keep_sending(b"<", pause=1.0)
            elif self.path == "/drip-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self.keep_sending(b"z", pause=1.0)
        except OSError:  # the client hung up
            self.server.hung_up[self.path].set()

    def keep_sending(self, piece: bytes, pause: float) -> None:
        # Bounded at 60 s, so that a broken test cannot leave the server running for ever.
        until = time.monotonic() + 60
        while time.monotonic() < until and not self.server.stop.is_set():
            self.wfile.write(piece)
            self.wfile.flush()
            if pause:
                self.server.stop.wait(pause)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def feed_settings(tmp_settings):
    return replace(tmp_settings, fetch_timeout_seconds=3.0, fetch_deadline_seconds=2.0, fetch_max_bytes=256_000)


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == FETCH_THREAD and t.is_alive()]


def wait_for(condition, seconds: float = 5.0) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def feed_state(factory, name: str) -> tuple:  # noqa: F811
    with factory() as session:
        state = session.get(FeedSourceState, name)
        return (session.scalar(select(func.count()).select_from(FeedItem).where(FeedItem.source == name)),
                session.scalars(select(FeedError.message).where(FeedError.source == name)).all(),
                state.consecutive_failures if state else None)


def test_a_feed_that_never_ends_is_cut_at_the_size_cap(factory, feed_settings, hostile):  # noqa: F811
    source = FeedSource("endless", hostile.url("/endless"), "cap")

    result = poll_source(factory, source, replace(feed_settings, fetch_deadline_seconds=30.0))

    assert result.outcome == "error"
    assert result.errors == [f"{source.url} sent more than 256000 bytes, over the feed limit; stopped reading"]
    items, errors, failures = feed_state(factory, "endless")
    assert (items, errors, failures) == (0, result.errors, 1)
    assert hostile.hung_up["/endless"].wait(5), "the connection was left open"


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_slow_loris_server_is_given_up_at_the_deadline_and_let_go(factory, feed_settings, hostile,  # noqa: F811
                                                                    path):
    source = FeedSource("drip", hostile.url(path), "cap")

    result = poll_source(factory, source, feed_settings)

    assert result.errors == [f"{source.url} did not finish within 2 s (the server is too slow); gave up"]
    assert feed_state(factory, "drip") == (0, result.errors, 1)
    # Nothing is left behind: the server sees the hang-up at once, and the fetch's thread has ended.
    assert hostile.hung_up[path].wait(3), "the connection was left open"
    assert wait_for(lambda: not fetch_threads(), 3), "the fetch thread is still reading"


def test_feeds_poll_once_reports_a_dripping_feed_in_one_line_and_exits_1(engine, tmp_path, tmp_settings, hostile):
    config = tmp_path / "notifier.toml"
    config.write_text(f'[[feeds]]\nname = "drip"\nurl = "{hostile.url("/drip-body")}"\nformat = "cap"\n',
                      encoding="utf-8")

    result = CliRunner().invoke(main, ["--config", str(config), "feeds", "poll", "--once"],
                                env={"NOTIFIER_DATABASE_URL": tmp_settings.database_url,
                                     "NOTIFIER_FETCH_DEADLINE_SECONDS": "2", "NOTIFIER_FETCH_TIMEOUT_SECONDS": "3"})

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"drip: error: {hostile.url('/drip-body')} did not finish within 2 s (the server is too " \
                       "slow); gave up"
    assert lines[1].startswith("rules: 0 new item(s)") and "Traceback" not in result.output
    assert hostile.hung_up["/drip-body"].wait(3)


# --- the database going away -----------------------------------------------------------------------------------------

def file_channels(settings):
    return {"sms": FileSmsChannel(settings.outbox_dir), "email": FileEmailChannel(settings.outbox_dir, "n@x")}


def outbox_ids(settings) -> tuple[list[int], list[int]]:
    """Notification ids in the file outbox: every SMS line (each must be whole JSON) and every .eml file."""
    sms_file = Path(settings.outbox_dir) / "sms.jsonl"
    lines = sms_file.read_text(encoding="utf-8").splitlines() if sms_file.exists() else []
    sms = [int(json.loads(line)["id"].rsplit("-", 1)[1]) for line in lines]
    emails = [int(p.stem) for p in (Path(settings.outbox_dir) / "email").glob("*.eml")]
    return sms, emails


def assert_each_notice_recorded_whole(factory) -> dict[str, int]:  # noqa: F811
    """A notice is `sent` exactly when it has one accepted attempt with the provider's id; returns the statuses."""
    with factory() as session:
        rows = session.execute(select(Notification.id, Notification.status, Notification.provider_id)).all()
        accepted = dict(session.execute(
            select(DeliveryAttempt.notification_id, func.count()).where(
                DeliveryAttempt.outcome.in_(["sent", "reconciled"]), DeliveryAttempt.provider_id.is_not(None))
            .group_by(DeliveryAttempt.notification_id)).all())
    for notification_id, status, provider_id in rows:
        if status == "sent":
            assert provider_id and accepted.get(notification_id) == 1, notification_id
        else:
            assert notification_id not in accepted and status in ("queued", "sending"), (notification_id, status,
                                                                                         notice_error(factory,
                                                                                                      notification_id))
    statuses: dict[str, int] = {}
    for _, status, _ in rows:
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def notice_error(factory, notification_id: int) -> str | None:  # noqa: F811
    with factory() as session:
        return session.get(Notification, notification_id).error_message


def assert_sent_exactly_once(factory, settings) -> None:  # noqa: F811
    sms, emails = outbox_ids(settings)
    with factory() as session:
        by_channel = dict(session.execute(select(Notification.channel, func.count())
                                          .group_by(Notification.channel)).all())
        statuses = set(session.scalars(select(Notification.status).distinct()))
    assert statuses == {"sent"}
    assert len(sms) == len(set(sms)) == by_channel["sms"]
    assert len(emails) == len(set(emails)) == by_channel["email"]


@contextlib.contextmanager
def read_only_after(sends: int, channels: dict) -> Iterator[threading.Event]:
    """After `sends` SMS have gone out, every SQLite connection refuses writes (PRAGMA query_only: what a database
    on a read-only mount or a read-only file answers), until the block ends."""
    gone = threading.Event()
    sms = channels["sms"]
    real_send = sms.send
    count = [0]

    def counting_send(message):
        result = real_send(message)
        count[0] += 1
        if count[0] >= sends:
            gone.set()
        return result

    def refuse_writes(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        cursor.connection.execute(f"PRAGMA query_only={1 if gone.is_set() else 0}")

    sms.send = counting_send
    event.listen(Engine, "before_cursor_execute", refuse_writes)
    try:
        yield gone
    finally:
        event.remove(Engine, "before_cursor_execute", refuse_writes)
        sms.send = real_send


def test_a_database_that_turns_read_only_mid_dispatch_stops_it_cleanly(factory, tmp_settings):  # noqa: F811
    settings = replace(tmp_settings, db_retry_seconds=0.5, provider_timeout_seconds=0.5, lease_seconds=4,
                       dispatch_threads=2)
    channels = file_channels(settings)

    with read_only_after(40, channels), pytest.raises(DatabaseError) as stopped:
        dispatch_all(factory, settings, channels)

    message = str(stopped.value)
    assert message.startswith("dispatch stopped: the database is unavailable (attempt to write a readonly "
                              "database);") and "run `notifier dispatch` again" in message
    statuses = assert_each_notice_recorded_whole(factory)
    sms, emails = outbox_ids(settings)
    assert statuses.get("sending", 0) > 0 and len(sms) + len(emails) > statuses["sent"]  # sent, not yet recorded

    # The database is back (with fresh connections): once the leases run out, the next run checks the outbox
    # before resending.
    factory.kw["bind"].dispose()
    time.sleep(settings.lease_seconds + 0.5)
    dispatch_all(factory, settings, file_channels(settings))
    assert_each_notice_recorded_whole(factory)
    assert_sent_exactly_once(factory, settings)


def test_notifier_dispatch_says_in_one_line_that_the_database_went_away(factory, tmp_settings,  # noqa: F811
                                                                        monkeypatch):
    env = {"NOTIFIER_DATABASE_URL": tmp_settings.database_url, "NOTIFIER_OUTBOX_DIR": tmp_settings.outbox_dir,
           "NOTIFIER_DB_RETRY_SECONDS": "0.3", "NOTIFIER_CONFIG": ""}
    gone = threading.Event()
    real_send = FileSmsChannel.send

    def send_then_lose_the_database(self, message):
        gone.set()
        return real_send(self, message)

    def refuse_writes(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        cursor.connection.execute(f"PRAGMA query_only={1 if gone.is_set() else 0}")

    monkeypatch.setattr(FileSmsChannel, "send", send_then_lose_the_database)
    event.listen(Engine, "before_cursor_execute", refuse_writes)
    try:
        result = CliRunner().invoke(main, ["dispatch", "--once"], env=env)
    finally:
        event.remove(Engine, "before_cursor_execute", refuse_writes)

    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        "notifier: dispatch stopped: the database is unavailable (attempt to write a readonly database)")
    assert "Traceback" not in result.output
    assert_each_notice_recorded_whole(factory)


@pytest.fixture
def planned_postgres(postgres_url, tmp_settings):
    """A throw-away PostgreSQL database with an outbox of 300 SMS and 50 emails waiting to go."""
    settings = replace(tmp_settings, database_url=postgres_url)
    engine = make_engine(postgres_url)
    pg_factory = session_factory(engine)
    with notifier_db.transaction(pg_factory) as session:
        seed_sms_broadcast(session, 300)
        for number in range(50):
            queue_notice(session, None, "email", "Your sailing is cancelled.", recipient=f"c{number}@example.com")
    yield pg_factory, settings, engine
    engine.dispose()


def test_a_postgresql_backend_terminated_mid_transaction_is_retried(planned_postgres, caplog):
    pg_factory, settings, engine = planned_postgres
    settings = replace(settings, db_retry_seconds=10.0)
    admin = make_engine(settings.database_url, poolclass=NullPool)
    killed = []

    def terminate_mid_transaction(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        # Between recording notices as sent and writing their attempts: the worst moment to lose the server.
        if statement.startswith("INSERT INTO delivery_attempts") and len(killed) < 2:
            pid = conn.connection.dbapi_connection.info.backend_pid
            with admin.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killed.append(pid)

    caplog.set_level(logging.WARNING, logger="notifier.delivery.dispatch")
    event.listen(engine, "before_cursor_execute", terminate_mid_transaction)
    try:
        stats = dispatch_all(pg_factory, settings, file_channels(settings))
    finally:
        event.remove(engine, "before_cursor_execute", terminate_mid_transaction)
        admin.dispose()

    assert len(killed) == 2
    assert sum("the database failed" in r.getMessage() for r in caplog.records) == 2
    assert_each_notice_recorded_whole(pg_factory)
    assert_sent_exactly_once(pg_factory, settings)
    with pg_factory() as session:
        assert stats.sent == session.scalar(select(func.count()).select_from(Notification))


# --- a full disk under the file outbox ------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 64 KB tmpfs for the outbox (needs root and mount; skipped where it cannot be mounted)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_leaves_notices_queued_and_no_partial_files(factory, tmp_settings, tiny_disk):  # noqa: F811
    # Retries are spread over a minute, so this run tries each notice about once while the disk is full.
    settings = replace(tmp_settings, outbox_dir=str(tiny_disk / "outbox"), retry_base_seconds=60.0)

    stats = dispatch_all(factory, settings, file_channels(settings))

    assert stats.sent > 0 and stats.retried > 0  # the disk filled up part way
    statuses = assert_each_notice_recorded_whole(factory)
    sms, emails = outbox_ids(settings)  # every SMS line is whole JSON
    assert statuses["sent"] == len(sms) + len(emails) and "sending" not in statuses
    assert not list((tiny_disk / "outbox").rglob("*.part"))
    with factory() as session:
        waiting = session.scalars(select(Notification.error_message).where(Notification.status == "queued",
                                                                            Notification.attempts > 0)).all()
    assert waiting and set(waiting) <= {"cannot write the SMS outbox: No space left on device",
                                        "cannot write the email outbox: No space left on device"}

    # Room again: everything goes out, exactly once.
    subprocess.run(["mount", "-o", "remount,size=32m", str(tiny_disk)], check=True)
    with notifier_db.transaction(factory) as session:
        session.execute(update(Notification).values(next_attempt_at=None))
    dispatch_all(factory, settings, file_channels(settings))
    assert_sent_exactly_once(factory, settings)


def test_a_disk_that_fills_mid_line_leaves_no_half_sms_behind(tmp_path, monkeypatch):
    from notifier.channels import file as file_channel
    from notifier.channels.base import Message

    channel = FileSmsChannel(tmp_path)
    first = Message(notification_id=1, channel="sms", recipient="+8613800138000", body_text="Sailing cancelled.")
    assert channel.send(first).status == "sent"
    real_open = open

    class FillsUp:
        """A file whose disk fills after half of the next write."""

        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[:len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_channel, "open", lambda *a, **k: FillsUp(real_open(*a, **k)), raising=False)
    second = Message(notification_id=2, channel="sms", recipient="+8613800138001", body_text="Sailing cancelled.")
    refused = channel.send(second)
    monkeypatch.undo()

    assert (refused.status, refused.reason) == ("retry", "cannot write the SMS outbox: No space left on device")
    assert channel.lookup(second) == []  # a crash-time look-up must not take half a line for a sent notice
    assert channel.send(second).status == "sent"
    lines = (tmp_path / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["file-sms-1", "file-sms-2"]


def test_a_disk_that_fills_while_writing_an_email_leaves_no_partial_eml(tmp_path, monkeypatch):
    from notifier.channels.base import Message

    channel = FileEmailChannel(tmp_path, "n@ferry.example")
    real_write = Path.write_bytes

    def fills_up(self, data):
        real_write(self, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", fills_up)
    message = Message(notification_id=7, channel="email", recipient="li.wei@example.com", body_text="Cancelled.",
                      subject="Your sailing")
    refused = channel.send(message)
    monkeypatch.undo()

    assert (refused.status, refused.reason) == ("retry", "cannot write the email outbox: No space left on device")
    assert list(tmp_path.rglob("*")) == [tmp_path / "email"]
    assert channel.lookup(message) == []
    assert channel.send(message).status == "sent" and (tmp_path / "email" / "7.eml").is_file()
