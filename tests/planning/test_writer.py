"""Planning a typhoon on SQLite with the writer process (planning.WriterProcess): the outbox, the offers and the
held places come out exactly as when one process plans and writes each chunk; a writer process killed mid-plan, a
planner that crashes and a write that fails leave nothing doubled, lost or half-written (places taken meanwhile:
tests/test_pipeline.py)."""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import func, select, text

from notifier.planning import plan as planner
from notifier.store.db import make_engine, session_factory
from notifier.ops.demo import bundled_feed
from notifier.feeds import cap
from notifier.store.models import Broadcast, Notification, Offer
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import ingest, plan_pending, process_new_items
from notifier.rules.load import load_rules
from tests.ops.test_pipeline import run_pipeline


@pytest.fixture
def reference(tmp_path):
    """The same demo network planned the ordinary way (one process reads, plans and writes each chunk)."""
    from notifier.ops.demo import generate
    from notifier.store.migrate import upgrade
    from tests.conftest import DEMO_NOW

    url = f"sqlite:///{tmp_path / 'reference.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    network = generate(factory, 600, DEMO_NOW)
    yield factory, network
    engine.dispose()


def everything(factory) -> dict[str, list]:
    """What planning wrote, in a comparable form (no ids, no creation times)."""
    with factory() as session:
        return {
            "notices": session.execute(text(
                "SELECT dedup_key, booking_id, customer_id, channel, recipient, language, template, purpose, subject, "
                "body_text, body_html, segments, safety_critical, status, priority FROM notifications "
                "ORDER BY dedup_key")).all(),
            "offers": session.execute(text(
                "SELECT booking_id, disruption_id, revision, option_key, kind, sailing_id, space_class, places, "
                "amount, currency, status, hold_expires_at, holds, deadline FROM offers "
                "ORDER BY booking_id, disruption_id, option_key")).all(),
            "places": session.execute(text(
                "SELECT sailing_id, space_class, held FROM sailing_capacities ORDER BY 1, 2")).all(),
            "planned": session.execute(text("SELECT id, planned_revision FROM disruptions ORDER BY id")).all(),
            "broadcasts": session.execute(text(
                "SELECT status, recipient_count, preview FROM broadcasts ORDER BY id")).all(),
        }


def planned_the_ordinary_way(reference, settings, monkeypatch):
    factory, network = reference
    with monkeypatch.context() as ordinary:
        ordinary.setattr(planner, "WRITER_PROCESS_MIN_BOOKINGS", 10**9)
        run_pipeline(factory, settings, network.epoch)
    return everything(factory)


def watch_calls(monkeypatch, name: str, on_call=None) -> list[int]:
    """Wrap planning.plan.<name>: `on_call(n)` runs before its n-th call (from 1); returns the calls seen so far."""
    real, calls = getattr(planner, name), []

    def watched(*args, **kwargs):
        calls.append(len(calls) + 1)
        if on_call is not None:
            on_call(len(calls))
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, name, watched)
    return calls


def test_the_writer_process_writes_exactly_what_one_process_would(factory, demo_db, tmp_settings, reference,
                                                                   writer_processes, monkeypatch):
    expected = planned_the_ordinary_way(reference, tmp_settings, monkeypatch)
    written_there = watch_calls(monkeypatch, "prepare_chunk")
    run_pipeline(factory, tmp_settings, demo_db.epoch)

    assert writer_processes and len(written_there) > 1  # the chunks went to the writer process
    assert all(writer.process.poll() == 0 for writer in writer_processes)  # and it ended cleanly
    assert everything(factory) == expected
    assert expected["notices"] and expected["offers"]


def test_a_writer_process_killed_mid_plan_loses_and_doubles_nothing(factory, demo_db, tmp_settings, reference,
                                                                    writer_processes, monkeypatch):
    expected = planned_the_ordinary_way(reference, tmp_settings, monkeypatch)

    def kill_the_writer(call):
        if call == 3:  # the writer has one chunk written, maybe one in hand
            writer_processes[0].process.kill()
            writer_processes[0].process.wait()

    watch_calls(monkeypatch, "prepare_chunk", kill_the_writer)
    ordinary = watch_calls(monkeypatch, "_plan_chunk")
    run_pipeline(factory, tmp_settings, demo_db.epoch)

    assert writer_processes[0].process.returncode != 0
    assert ordinary  # what the dead writer did not write was planned again here
    assert everything(factory) == expected


def test_a_planner_crash_stops_the_writer_process_and_a_rerun_completes_the_plan(
        factory, demo_db, tmp_settings, reference, writer_processes, monkeypatch):
    expected = planned_the_ordinary_way(reference, tmp_settings, monkeypatch)
    real_prepare = planner.prepare_chunk

    def crash_on_third_chunk(call):
        if call == 3:
            raise RuntimeError("simulated crash")

    watch_calls(monkeypatch, "prepare_chunk", crash_on_third_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(factory, tmp_settings, demo_db.epoch)
    assert writer_processes[0].process.poll() is not None  # no writer process left behind
    with factory() as session:
        partial = session.scalar(select(func.count()).select_from(Notification))
    assert partial > 0  # the chunks handed over before the crash were written

    monkeypatch.setattr(planner, "prepare_chunk", real_prepare)
    plan_pending(factory, tmp_settings, now=demo_db.epoch)
    assert everything(factory)["notices"] == expected["notices"]
    assert everything(factory)["offers"] == expected["offers"]


def test_a_write_that_fails_in_the_writer_process_fails_the_plan_and_leaves_that_chunk_unwritten(
        factory, demo_db, tmp_settings, writer_processes):
    ingest(factory, cap.parse(bundled_feed(demo_db.epoch)))
    process_new_items(factory, load_rules([rules_dir()]), now=demo_db.epoch)
    with factory() as session, session.begin():
        # The second chunk's offers cannot be stored (as a full disk or a broken database would refuse them): the
        # first chunk holds the first 10 bookings.
        session.execute(text("CREATE TRIGGER refuse_offers BEFORE INSERT ON offers "
                             "WHEN NEW.booking_id NOT IN (SELECT booking_id FROM offers) "
                             "AND (SELECT COUNT(DISTINCT booking_id) FROM offers) >= 10 "
                             "BEGIN SELECT RAISE(ABORT, 'disk is full'); END"))

    with pytest.raises(Exception, match="disk is full"):
        plan_pending(factory, tmp_settings, now=demo_db.epoch)

    with factory() as session:
        offered = set(session.scalars(select(Offer.booking_id)))
        notified = set(session.scalars(select(Notification.booking_id)))
        status = session.scalar(select(Broadcast.status))
    assert writer_processes[0].process.poll() is not None
    assert len(offered) == 10  # the first chunk, whole; nothing of the second
    assert notified and notified <= offered
    assert status == "planning"  # not marked planned: the watcher plans the rest on its next pass


def test_ctrl_c_reaching_the_writer_process_leaves_it_to_the_planner(factory, demo_db, tmp_settings, reference,
                                                                     writer_processes, monkeypatch):
    # At a terminal, Ctrl-C reaches the whole process group; the writer process leaves the decision to the planner
    # (which here goes on), so it neither dies mid-chunk nor prints a traceback of its own.
    expected = planned_the_ordinary_way(reference, tmp_settings, monkeypatch)

    def interrupt_the_writer(call):
        if call == 2:
            os.kill(writer_processes[0].process.pid, signal.SIGINT)

    watch_calls(monkeypatch, "prepare_chunk", interrupt_the_writer)
    run_pipeline(factory, tmp_settings, demo_db.epoch)

    assert writer_processes[0].process.returncode == 0
    assert everything(factory) == expected
