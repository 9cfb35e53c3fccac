"""The chunk writers: a chunk planned ahead of its writes (planning.chunk_plan.prepare_chunk) is written while the
next is planned. On PostgreSQL a thread writes the chunk before (`ChunkWriter`); on SQLite, for a broadcast large
enough to pay for it, a second process does (`WriterProcess`, `writer_main`), so that planning and SQLite's writing
use both cores. planning.plan decides which.
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from notifier.planning.chunk_plan import PreparedChunk
from notifier.planning.chunks import ChunkPart
from notifier.store.db import transaction

class ChunkWriter:
    """Writes prepared chunks in a thread of its own, each in one transaction, while the next chunk is planned:
    the database does its writing (SQLite's B-trees, PostgreSQL's COPY) outside the GIL, so planning and writing
    overlap on two cores. At most one chunk waits to be written (memory stays flat). A chunk whose places were
    taken by another writer meanwhile is not written, nor is anything after it: `close` hands those chunks back
    to be planned again the ordinary way."""

    def __init__(self, factory: sessionmaker[Session], write: Callable[[Session, list[ChunkPart], PreparedChunk], bool]
                 ) -> None:
        self.factory, self.write = factory, write
        self.ready = True  # a thread is there at once
        self.waiting: queue.Queue = queue.Queue(maxsize=1)
        self.unwritten: list[list[Any]] = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="notifier-chunk-writer", daemon=True)
        self.thread.start()

    @property
    def stopped(self) -> bool:
        """True once a chunk could not be written: the rest are planned again by the caller."""
        return bool(self.unwritten) or self.failure is not None

    def put(self, parts: list[ChunkPart], prepared: PreparedChunk) -> None:
        """Queue a prepared chunk (waits while the one before is still waiting); a write that failed is raised
        here, so the planner stops at once."""
        if self.failure is not None:
            raise self.failure
        self.waiting.put((parts, prepared))

    def close(self, quietly: bool = False) -> list[list[Any]]:
        """Wait for the queued writes; the chunks not written, in order (a failed write is raised instead,
        unless `quietly`: the caller is already raising)."""
        if self.thread.is_alive():
            self.waiting.put(None)
            self.thread.join()
        if self.failure is not None and not quietly:
            raise self.failure
        return self.unwritten

    def _run(self) -> None:
        while (item := self.waiting.get()) is not None:
            parts, prepared = item
            if self.stopped:
                self.unwritten.append(parts)
                continue
            try:
                with transaction(self.factory) as session:
                    if not self.write(session, parts, prepared):
                        raise _PlacesTaken
            except _PlacesTaken:
                self.unwritten.append(parts)
            except BaseException as exc:  # noqa: BLE001 - handed to the planning thread, which raises it
                self.failure = exc


class _PlacesTaken(Exception):
    """Rolls a chunk's transaction back: another writer took places it counted on."""


class WriterProcess:
    """Writes prepared chunks in a process of its own (SQLite), each in one transaction, while this process plans
    the next: sqlite3 holds the GIL while it binds every row, so a writer thread slows the planner down as much as
    it helps, but a second process plans and writes on two cores at once. The same contract as ChunkWriter
    (`ready`, `stopped`, `put`, `close`), plus:
    - until the process has started (its imports take a moment) `ready` is False, and the caller plans the first
      small chunks the ordinary way: the first notices are never held back;
    - `write(session, item)` runs in the writer process (a module-level function: it is sent by name) and returns
      what the chunk did, handed to `merge` here at `close` (with what `put` kept here), or None when its places
      were taken meanwhile; from then on the writer writes nothing more (`close` hands those chunks back, in
      order);
    - chunks stream: the writer receives the next while it writes one (the socket and one waiting chunk bound
      the memory), and a thread of ours collects the outcomes, so neither side waits on the other's hand-over;
    - a writer process that dies takes nothing with it: the chunk it was writing (committed whole or not at all)
      and the rest come back from `close`, to be planned again the ordinary way, which skips what was committed."""

    def __init__(self, url: str, write: Any, merge: Any) -> None:
        # A fresh interpreter running only the writer (not multiprocessing's spawn, which would import the
        # caller's main module again: a script without a __main__ guard would run twice). It finds this very
        # package first, and learns the database from the socket, not from its command line (`ps` shows that).
        ours, theirs = socket.socketpair()
        package_home = str(Path(__file__).resolve().parents[2])  # the folder that holds notifier/
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [package_home, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from notifier.planning.writer import writer_main; writer_main()",
             str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=environment, stdin=subprocess.DEVNULL)
        theirs.close()
        self.connection = Connection(ours.detach())
        self.connection.send((url, write))
        self.merge = merge
        self.started = self.gone = False
        self.sent: deque[tuple[list[Any], Any]] = deque()  # chunks sent, outcome not yet known, in order
        self.done: list[Any] = []
        self.unwritten: list[list[Any]] = []  # taken or skipped by the writer, in order
        self.unsent: list[list[Any]] = []
        self.failure: BaseException | None = None
        self.outcomes = threading.Thread(target=self._collect, name="notifier-writer-outcomes", daemon=True)

    @property
    def ready(self) -> bool:
        """True once the writer process is up (never blocks); False for good if it died before that."""
        return self._answered_ready(0)

    def wait_until_ready(self, timeout: float = 60) -> bool:
        """Wait for the writer process to be up (True) or gone (False)."""
        return self._answered_ready(timeout)

    def _answered_ready(self, timeout: float) -> bool:
        if not self.started and not self.gone and self.connection.poll(timeout):
            try:
                outcome, _ = self.connection.recv()
            except (EOFError, OSError):
                outcome = "gone"
            self.started, self.gone = outcome == "ready", outcome != "ready"
            if self.started:
                self.outcomes.start()
        return self.started and not self.gone

    @property
    def stopped(self) -> bool:
        """True once a chunk could not be written: the rest are planned again by the caller."""
        return bool(self.unwritten or self.unsent) or self.failure is not None or self.gone

    def put(self, parts: list[Any], item: Any, kept: Any = None) -> None:
        """Send a prepared chunk (waits only while the writer is a chunk behind); `kept`: what of it stays here,
        handed to `merge` with what the writer did once it is written. A write that failed is raised here, so the
        planner stops at once."""
        if self.failure is not None:
            raise self.failure
        if self.stopped:
            self.unsent.append(parts)
            return
        self.sent.append((parts, kept))  # before sending: its outcome may come back at once
        try:
            self.connection.send(item)
        except OSError:  # the writer is gone: this chunk (and what it had not answered) is planned again
            self.sent.pop()
            self.unsent.append(parts)

    def close(self, quietly: bool = False) -> list[list[Any]]:
        """Wait for the chunks sent to be written and stop the process; the chunks not written, in order (a
        failed write is raised instead, unless `quietly`: the caller is already raising)."""
        with suppress(OSError):  # gone already
            self.connection.send(None)
        if self.outcomes.is_alive():
            self.outcomes.join()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.connection.close()
        for done, kept in self.done:
            self.merge(done, kept)
        if self.failure is not None and not quietly:
            raise self.failure
        return [*self.unwritten, *(parts for parts, _ in self.sent), *self.unsent]

    def _collect(self) -> None:
        # The outcomes thread: one answer per chunk sent, in order, until the writer process ends.
        while True:
            try:
                outcome, value = self.connection.recv()
            except (EOFError, OSError):
                self.gone = True  # what is still in `sent` was not written (or not known to be: planned again)
                return
            parts, kept = self.sent.popleft()
            if outcome == "written":
                self.done.append((value, kept))
            elif outcome == "failed":
                self.failure = value
            else:  # taken, or skipped after a chunk that could not be written
                self.unwritten.append(parts)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a broadcast is planned or written: planning allocates millions
    of short-lived, acyclic objects (rows, tuples, small dicts), and the collector would walk the whole heap again
    and again to find next to nothing (~2 s of ~7 for bench_plan's 150,000 notices). Reference counting still
    frees everything planning drops; the few cycles made meanwhile wait for the collector's next run."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def writer_main() -> None:
    """The writer process (WriterProcess): one transaction per chunk, in order, until told to stop or the planner
    is gone; after a chunk that could not be written, the rest are skipped (the planner plans them again)."""
    from notifier.store.db import make_engine, session_factory

    # Ctrl-C at the terminal reaches the whole process group: the planner stops and tells this process, which
    # finishes the chunk in hand (one transaction) and ends, without a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection = Connection(int(sys.argv[1]))
    try:
        url, write = connection.recv()
    except (EOFError, OSError):
        return
    engine = make_engine(url)
    factory = session_factory(engine)
    chunks: queue.Queue = queue.Queue(maxsize=1)  # received while the one before is written
    receiver = threading.Thread(target=_receive, args=(connection, chunks), daemon=True)
    gc.disable()  # this process only writes chunks (see collector_paused)
    try:
        connection.send(("ready", None))
        receiver.start()
        stopped = False
        while (item := chunks.get()) is not None:
            if stopped:
                connection.send(("skipped", None))
                continue
            try:
                with transaction(factory) as session:
                    done = write(session, item)
                    if done is None:
                        raise _PlacesTaken
                connection.send(("written", done))
            except _PlacesTaken:
                stopped = True
                connection.send(("taken", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the planner, which raises it
                stopped = True
                connection.send(("failed", _portable(exc)))
    except OSError:
        return  # the planner is gone: what it sent is written whole or not at all
    finally:
        engine.dispose()


def _receive(connection: Connection, chunks: queue.Queue) -> None:
    # The writer's receiving thread: the next chunk arrives (and is unpickled) while one is written.
    while True:
        try:
            item = connection.recv()
        except (EOFError, OSError):
            item = None  # the planner is gone
        chunks.put(item)
        if item is None:
            return


def _portable(exc: BaseException) -> BaseException:
    # What crosses back to the planner must survive pickling; a database error's driver objects may not.
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return RuntimeError(f"the planning writer process failed: {type(exc).__name__}: {exc}")
    return exc
