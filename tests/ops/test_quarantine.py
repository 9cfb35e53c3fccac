"""Issue 16, finding 1 ("poison feed item"): no input blocks the line. An item that a stage fails on is
quarantined — marked failed with its reason, recorded against its feed, shown by `feeds list` and `watch
--status` — and the items after it go on; `notifier feeds retry ID` puts it back once the cause is fixed.

The property test plays CAP messages with extreme but schema-valid values (years 0001-9999, zero-area and
antimeridian polygons, empty infos, thousands of areas) through the whole pipeline as the watcher runs it —
parse, rules, disruptions, planning — and then a real typhoon warning: nothing raises, the warning is told.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import func, select

from notifier.feeds import FeedParseError, cap
from notifier.ops import console
from notifier.ops.demo import bundled_feed
from notifier.ops.pipeline import ingest
from notifier.ops.polling import source_health
from notifier.ops.quarantine import quarantined, retry_item
from notifier.ops.watcher import run_pipeline
from notifier.rules.load import load_rules
from notifier.store.models import AuditEntry, FeedError, FeedItem, Notification
from notifier.store.paths import rules_dir
from notifier.store.settings import FeedSource
from notifier.store.status import FAILED, NEW, PROCESSED

STRAIT = "19.80,109.60 19.80,110.90 20.60,110.90 20.60,109.60 19.80,109.60"
HONG_KONG_MACAU = "22.05,113.45 22.05,114.35 22.45,114.35 22.45,113.45 22.05,113.45"


def cap_alert(identifier: str, *, sent: str = "2026-09-14T06:00:00+08:00", onset: str | None = None,
              expires: str | None = None, areas: list[str] | None = None, infos: int = 1,
              event: str = "Typhoon Warning (Red)") -> bytes:
    """A CAP 1.2 alert as a met service would publish it, with the times and areas given."""
    times = "".join(f"<{name}>{value}</{name}>" for name, value in (("onset", onset), ("expires", expires)) if value)
    area_xml = "".join(f"<area><areaDesc>area {n}</areaDesc>{shape}</area>" for n, shape in enumerate(areas or []))
    info = (f"<info><language>en-US</language><category>Met</category><event>{event}</event>"
            f"<urgency>Immediate</urgency><severity>Extreme</severity><certainty>Likely</certainty>{times}"
            f"<headline>{event}</headline>{area_xml}</info>")
    return (f'<?xml version="1.0" encoding="UTF-8"?><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">'
            f"<identifier>{identifier}</identifier><sender>test@met.example</sender><sent>{sent}</sent>"
            f"<status>Actual</status><msgType>Alert</msgType><scope>Public</scope>{info * infos}</alert>"
            ).encode()


def polygon(points: str) -> str:
    return f"<polygon>{points}</polygon>"


def told(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Notification))


def item_statuses(factory) -> dict[str, str]:
    with factory() as session:
        return dict(session.execute(select(FeedItem.external_id, FeedItem.status)).all())


def test_poison_feed_item_does_not_block_the_typhoon_warning_after_it(factory, demo_db, tmp_settings):
    rules = load_rules([rules_dir()])
    poison = cap_alert("poison-9999", onset="9999-12-31T23:00:00+00:00", areas=[polygon(STRAIT)])
    ingest(factory, cap.parse(poison))
    ingest(factory, cap.parse(bundled_feed(demo_db.epoch)))

    first = run_pipeline(factory, tmp_settings, rules, demo_db.epoch)
    second = run_pipeline(factory, tmp_settings, rules, demo_db.epoch + timedelta(minutes=1))

    statuses = item_statuses(factory)
    assert statuses["poison-9999"] in (PROCESSED, FAILED)  # never left `new`, blocking the queue
    assert statuses["CN-HI-TY-2026-0914-0600"] == PROCESSED
    assert first["notifications_planned"] > 0 and told(factory) > 0
    assert second["items"] == 0 and second["quarantined"] == []  # a quarantined item is not retried every tick


def test_an_item_a_stage_fails_on_is_quarantined_with_its_reason(factory, demo_db, tmp_settings, monkeypatch):
    rules = load_rules([rules_dir()])
    ingest(factory, cap.parse(cap_alert("bad-one", areas=[polygon(STRAIT)])))
    ingest(factory, cap.parse(bundled_feed(demo_db.epoch)))
    from notifier.ops import pipeline

    real_evaluate = pipeline.evaluate

    def evaluate(rules, observation, *args, **kwargs):
        if observation.external_id == "bad-one":
            raise OverflowError("date value out of range")
        return real_evaluate(rules, observation, *args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate", evaluate)
    done = run_pipeline(factory, tmp_settings, rules, demo_db.epoch)

    assert item_statuses(factory) == {"bad-one": FAILED, "CN-HI-TY-2026-0914-0600": PROCESSED}
    assert done["notifications_planned"] > 0 and len(done["quarantined"]) == 1
    with factory() as session:
        item = session.scalar(select(FeedItem).where(FeedItem.external_id == "bad-one"))
        assert item.error == "rules: OverflowError: date value out of range"
        assert "quarantined at rules" in session.scalar(select(FeedError.message).where(
            FeedError.source == "test@met.example"))
        assert session.scalar(select(AuditEntry.action).where(AuditEntry.subject_id == str(item.id))) \
            == "feed_item.quarantined"
        listed = console.quarantine_lines(quarantined(session, demo_db.epoch))
    assert listed[0].startswith("quarantined feed items: 1") and "OverflowError" in "\n".join(listed)

    source = FeedSource(name="test@met.example", url="https://met.example/cap.xml", format="cap")
    health = source_health(factory, replace(tmp_settings, feeds=(source,)))
    assert health[0].quarantined == 1
    assert "quarantined" in console.feeds_lines(health, [])[0]

    monkeypatch.setattr(pipeline, "evaluate", real_evaluate)  # the cause is fixed
    retry_item(factory, item.id, "alice")
    assert item_statuses(factory)["bad-one"] == NEW
    again = run_pipeline(factory, tmp_settings, rules, demo_db.epoch + timedelta(minutes=5))
    assert again["items"] == 1 and item_statuses(factory)["bad-one"] == PROCESSED


YEARS = st.sampled_from(["0001", "0002", "1970", "2026", "9998", "9999"])


@st.composite
def cap_times(draw) -> str:
    year, month, day = draw(YEARS), draw(st.sampled_from(["01", "12"])), draw(st.sampled_from(["01", "31"]))
    clock = draw(st.sampled_from(["00:00:00", "23:59:59"]))
    offset = draw(st.sampled_from(["+00:00", "+14:00", "-12:00"]))
    return f"{year}-{month}-{day}T{clock}{offset}"


SHAPES = st.one_of(
    st.just(polygon(STRAIT)),
    st.just(polygon("20.0,110.0 20.0,110.0 20.0,110.0 20.0,110.0")),  # zero area
    st.just(polygon("-10,179.9 -10,-179.9 10,-179.9 10,179.9 -10,179.9")),  # across the antimeridian
    st.just(polygon("90,0 90,180 -90,180 -90,0 90,0")),  # half the globe
    st.just("<circle>20.2,110.2 0</circle>"),  # a point
    st.just("<circle>20.2,110.2 20000</circle>"),  # larger than the earth
    st.just("<geocode><valueName>UGC</valueName><value>PZZ210</value></geocode>"),
)


@st.composite
def extreme_alerts(draw) -> bytes:
    count = draw(st.sampled_from([0, 1, 3, 1200]))
    areas = [draw(SHAPES) for _ in range(min(count, 3))] * (count // 3 or 1) if count else []
    return cap_alert(f"extreme-{draw(st.integers(0, 10**9))}", sent=draw(cap_times()),
                     onset=draw(st.none() | cap_times()), expires=draw(st.none() | cap_times()),
                     areas=areas, infos=draw(st.sampled_from([0, 1, 2])))


@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])
@given(extreme=extreme_alerts())
def test_extreme_cap_messages_never_block_the_pipeline(factory, demo_db, tmp_settings, extreme):
    rules = load_rules([rules_dir()])
    try:
        observations = cap.parse(extreme)
    except FeedParseError:
        observations = []  # refused at the parse stage: polling records it as its feed's error, stores nothing
    ingest(factory, observations)
    done = run_pipeline(factory, tmp_settings, rules, demo_db.epoch)  # raises nothing, whatever the item holds
    assert done["quarantined"] == []  # and no stage failed on it: the rules are total over valid times
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(FeedItem).where(FeedItem.status == NEW)) == 0


def test_the_cli_lists_a_quarantined_item_and_retries_it(factory, demo_db, tmp_settings, monkeypatch):
    from click.testing import CliRunner

    from cli import main
    from notifier.ops import pipeline

    ingest(factory, cap.parse(cap_alert("bad-one", areas=[polygon(STRAIT)])))
    monkeypatch.setattr(pipeline, "evaluate", lambda *args, **kwargs: 1 / 0)
    run_pipeline(factory, tmp_settings, load_rules([rules_dir()]), demo_db.epoch)
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url, "NOTIFIER_OPERATOR": "alice"}
    with factory() as session:
        item_id = session.scalar(select(FeedItem.id).where(FeedItem.external_id == "bad-one"))

    listed = CliRunner().invoke(main, ["feeds", "list"], env=env)
    status = CliRunner().invoke(main, ["watch", "--status"], env=env)
    retried = CliRunner().invoke(main, ["feeds", "retry", str(item_id)], env=env)
    again = CliRunner().invoke(main, ["feeds", "retry", str(item_id)], env=env)

    assert listed.exit_code == 0 and f"#{item_id}" in listed.output and "ZeroDivisionError" in listed.output
    assert status.exit_code == 0 and "quarantined feed items: 1" in status.output
    assert retried.exit_code == 0 and "queued again" in retried.output
    assert item_statuses(factory)["bad-one"] == NEW
    assert again.exit_code == 2 and "not quarantined" in again.stderr


def test_a_broadcast_that_cannot_be_planned_is_quarantined_and_the_others_are_planned(
        factory, demo_db, tmp_settings, monkeypatch):
    from click.testing import CliRunner

    from cli import main
    from notifier.messages import TemplateError
    from notifier.ops import pipeline
    from notifier.store.models import Broadcast

    ingest(factory, cap.parse(bundled_feed(demo_db.epoch)))
    real_plan = pipeline.plan_broadcast
    planned: list[int] = []

    def plan_broadcast(factory, broadcast_id, *args, **kwargs):
        if not planned:  # the first broadcast holds a notice its template cannot render
            planned.append(broadcast_id)
            raise TemplateError("template 'cancelled' (sms, zh-CN) needs a value it was not given: 'deadline'")
        return real_plan(factory, broadcast_id, *args, **kwargs)

    monkeypatch.setattr(pipeline, "plan_broadcast", plan_broadcast)
    ingest(factory, cap.parse(cap_alert("hk-signal", sent=demo_db.epoch.isoformat(),
                                        areas=[polygon(HONG_KONG_MACAU)])))  # a second broadcast, after it
    done = run_pipeline(factory, tmp_settings, load_rules([rules_dir()]), demo_db.epoch)

    with factory() as session:
        failed = session.get(Broadcast, planned[0])
        others = session.scalars(select(Broadcast).where(Broadcast.id != planned[0])).all()
    assert failed.status == "failed" and "TemplateError" in failed.error and "'deadline'" in failed.error
    env = {"NOTIFIER_CONFIG": "", "NOTIFIER_DATABASE_URL": tmp_settings.database_url, "NOTIFIER_OPERATOR": "bob"}
    listed = CliRunner().invoke(main, ["feeds", "list"], env=env)
    assert f"#{planned[0]}" in listed.output and "quarantined broadcasts: 1" in listed.output

    monkeypatch.setattr(pipeline, "plan_broadcast", real_plan)  # the template is fixed
    retried = CliRunner().invoke(main, ["feeds", "retry", "--broadcast", str(planned[0])], env=env)
    assert retried.exit_code == 0, retried.output
    again = run_pipeline(factory, tmp_settings, load_rules([rules_dir()]), demo_db.epoch)
    assert again["notifications_planned"] > 0 and told(factory) > 0
    assert others and all(b.status != "failed" for b in others) and done["notifications_planned"] > 0
