"""A typhoon warning's life, through the whole pipeline on the demo network: Alert -> Update (wider window, more
sailings) -> Update (severity down to a delay) -> Cancel, showing exactly which notice each booking gets at each
step and that nobody is told anything twice; then flapping feeds, expiry, advisories and cargo port omissions,
and the EU regulatory clock."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from notifier.planning.audience import recipients_for
from notifier.rules.entitlements import eu_deadline_report, information_deadline
from notifier.feeds import cap
from notifier.feeds import Observation
from notifier.store.models import Booking, Customer, Disruption, Notification, Offer, Sailing
from notifier.store.paths import rules_dir
from notifier.ops.pipeline import expire_disruptions, ingest, plan_pending, process_new_items
from notifier.rules.load import load_rules
from tests.conftest import DEMO_NOW
from tests.rules.test_explain import Builder

RULES = load_rules([rules_dir()])
SENDER = "hainan-met@test.notifier"
STRAIT = "19.80,109.60 19.80,110.90 20.60,110.90 20.60,109.60 19.80,109.60"
ONSET = DEMO_NOW + timedelta(hours=4)  # 12:00 in Haikou
FIRST_END = DEMO_NOW + timedelta(hours=10)  # 18:00
LATER_END = DEMO_NOW + timedelta(hours=14)  # 22:00


def cap_alert(identifier: str, msg_type: str, sent: datetime, severity: str = "Extreme", end: datetime = FIRST_END,
              references: tuple[tuple[str, datetime], ...] = (), event: str = "Typhoon Warning",
              polygon: str = STRAIT) -> bytes:
    refs = " ".join(f"{SENDER},{ident},{at.isoformat()}" for ident, at in references)
    info = "" if msg_type == "Cancel" else f"""
      <info><language>en</language><category>Met</category><event>{event}</event><urgency>Immediate</urgency>
        <severity>{severity}</severity><certainty>Likely</certainty><onset>{ONSET.isoformat()}</onset>
        <expires>{end.isoformat()}</expires><headline>{event} for the Qiongzhou Strait</headline>
        <area><areaDesc>Qiongzhou Strait</areaDesc><polygon>{polygon}</polygon></area></info>"""
    return f"""<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>{identifier}</identifier>
      <sender>{SENDER}</sender><sent>{sent.isoformat()}</sent><status>Actual</status><msgType>{msg_type}</msgType>
      <scope>Public</scope>{f'<references>{refs}</references>' if refs else ''}{info}</alert>""".encode()


class Outbox:
    """Runs pipeline steps and reports what each step added to the outbox."""

    def __init__(self, factory, settings) -> None:
        self.factory, self.settings, self.seen = factory, settings, 0

    def step(self, feed: bytes | list[Observation], now: datetime) -> list[Notification]:
        observations = cap.parse(feed) if isinstance(feed, bytes) else feed
        ingest(self.factory, observations)
        process_new_items(self.factory, RULES, now=now, settings=self.settings)
        plan_pending(self.factory, self.settings, now=now)
        with self.factory() as session:
            rows = list(session.scalars(select(Notification).where(Notification.id > self.seen)
                                        .order_by(Notification.id)))
        self.seen = max([self.seen, *(n.id for n in rows)])
        return rows

    def deliver(self, at: datetime) -> None:
        """What the dispatcher does to every due notice (the file channel would write them out)."""
        with self.factory() as session, session.begin():
            session.execute(update(Notification).where(Notification.status == "queued",
                                                       (Notification.next_attempt_at.is_(None))
                                                       | (Notification.next_attempt_at <= at))
                            .values(status="sent", sent_at=at))


def by_booking(rows: list[Notification]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        found[row.booking_id].add(row.template)
    return dict(found)


def sailings_with(factory, kind: str, statuses=("active",)) -> set[str]:
    with factory() as session:
        return set(session.scalars(select(Sailing.code).join(Disruption, Disruption.sailing_id == Sailing.id)
                                   .where(Disruption.kind == kind, Disruption.status.in_(statuses))))


def reachable(factory, codes: set[str]) -> set[int]:
    """Bookings on these sailings that have at least one usable address."""
    with factory() as session:
        rows = session.execute(select(Booking, Customer).join(Customer, Customer.id == Booking.customer_id)
                               .join(Sailing, Sailing.id == Booking.sailing_id)
                               .where(Sailing.code.in_(codes), Booking.status == "confirmed")).all()
        return {b.id for b, c in rows if recipients_for(b, c, ["sms", "email"], set())[0]}


def assert_once_per_channel(rows: list[Notification]) -> None:
    per = Counter((n.booking_id, n.channel) for n in rows)
    assert per and max(per.values()) == 1


def test_alert_update_downgrade_cancel_walk(factory, demo_db, tmp_settings):
    outbox = Outbox(factory, tmp_settings)
    t1 = DEMO_NOW + timedelta(hours=1)

    # 1. Alert: every reachable booking on the covered sailings hears "cancelled", once per channel.
    step1 = outbox.step(cap_alert("TY-1", "Alert", t1), t1)
    first = sailings_with(factory, "cancelled")
    assert first and {t for ts in by_booking(step1).values() for t in ts} == {"cancelled"}
    assert set(by_booking(step1)) == reachable(factory, first)
    assert_once_per_channel(step1)
    outbox.deliver(t1)

    # 2. Update: a later end. Newly covered sailings hear "cancelled"; on the first sailings, only bookings whose
    # alternatives moved hear "updated"; the others keep their held places and hear nothing.
    t2 = t1 + timedelta(minutes=40)
    step2 = outbox.step(cap_alert("TY-2", "Update", t2, end=LATER_END, references=(("TY-1", t1),)), t2)
    second = sailings_with(factory, "cancelled")
    new = second - first
    heard = by_booking(step2)
    assert first < second
    assert {b for b, t in heard.items() if t == {"cancelled"}} == reachable(factory, new)
    updated = {b for b, t in heard.items() if t == {"updated"}}
    untouched = reachable(factory, first) - updated
    assert updated and untouched and updated < reachable(factory, first)
    assert all(len(t) == 1 for t in heard.values())
    assert_once_per_channel(step2)
    with factory() as session:
        untouched_offers = session.scalars(select(Offer).where(Offer.booking_id.in_(untouched),
                                                               Offer.kind == "rebook")).all()
        updated_revisions = set(session.scalars(select(Notification.revision).where(
            Notification.booking_id.in_(updated), Notification.template == "updated")))
    assert untouched_offers and {o.status for o in untouched_offers} == {"held"}
    assert updated_revisions == {2}
    outbox.deliver(t2)

    # 3. Update: severity down to Moderate. Every covered sailing is now delayed instead: customers hear
    # "delayed" (saying it sails after all) - not "all clear", not "cancelled" again.
    t3 = t2 + timedelta(minutes=40)
    step3 = outbox.step(cap_alert("TY-3", "Update", t3, severity="Moderate", end=LATER_END,
                                  references=(("TY-2", t2),)), t3)
    assert sailings_with(factory, "cancelled") == set() and sailings_with(factory, "delayed") == second
    assert set(by_booking(step3)) == reachable(factory, second)
    assert {t for ts in by_booking(step3).values() for t in ts} == {"delayed"}
    assert_once_per_channel(step3)
    sms = [n for n in step3 if n.channel == "sms"]
    assert all("sail after all" in n.body_text for n in sms if n.language == "en")
    assert all("恢复开航" in n.body_text and n.segments <= 2 for n in sms if n.language == "zh-CN")
    with factory() as session:
        statuses = set(session.scalars(select(Sailing.status).where(Sailing.code.in_(second))))
    assert statuses == {"delayed"}
    outbox.deliver(t3)

    # 4. Cancel: the warning is withdrawn; everyone told of the delay hears "all clear", once.
    t4 = t3 + timedelta(minutes=40)
    step4 = outbox.step(cap_alert("TY-4", "Cancel", t4, references=(("TY-3", t3),)), t4)
    assert set(by_booking(step4)) == reachable(factory, second)
    assert {t for ts in by_booking(step4).values() for t in ts} == {"resumed"}
    assert_once_per_channel(step4)
    assert all("WILL OPERATE" in n.body_text or "all clear" in n.body_text for n in step4
               if n.channel == "sms" and n.language == "en")
    with factory() as session:
        assert set(session.scalars(select(Sailing.status).where(Sailing.code.in_(second)))) == {"scheduled"}
        keys = [(n.booking_id, n.channel, n.disruption_id, n.revision) for n in session.scalars(
            select(Notification))]
    assert len(keys) == len(set(keys))  # never the same notice twice
    chinese_sms = [n for n in step1 + step2 + step3 + step4 if n.channel == "sms" and n.language == "zh-CN"]
    assert {n.template for n in chinese_sms} == {"cancelled", "updated", "delayed", "resumed"}
    assert max(n.segments for n in chinese_sms) <= 2

    # Replaying the whole feed changes nothing.
    for feed in (cap_alert("TY-1", "Alert", t1), cap_alert("TY-4", "Cancel", t4, references=(("TY-3", t3),))):
        assert outbox.step(feed, t4 + timedelta(hours=1)) == []


def test_an_update_that_changes_nothing_customers_see_sends_nothing(factory, demo_db, tmp_settings):
    outbox = Outbox(factory, tmp_settings)
    t1 = DEMO_NOW + timedelta(hours=1)
    assert outbox.step(cap_alert("TY-1", "Alert", t1, severity="Severe"), t1)
    outbox.deliver(t1)
    t2 = t1 + timedelta(minutes=40)
    assert outbox.step(cap_alert("TY-2", "Update", t2, severity="Extreme", references=(("TY-1", t1),)), t2) == []
    with factory() as session:
        assert set(session.scalars(select(Disruption.severity))) == {"Extreme"}  # the record is up to date


def test_a_flapping_feed_sends_the_latest_state_once_per_interval(factory, demo_db, tmp_settings):
    outbox = Outbox(factory, tmp_settings)
    t1 = DEMO_NOW + timedelta(hours=1)
    told = outbox.step(cap_alert("TY-1", "Alert", t1), t1)
    outbox.deliver(t1)

    cancelled_at = t1 + timedelta(minutes=5)
    all_clear = outbox.step(cap_alert("TY-1C", "Cancel", cancelled_at, references=(("TY-1", t1),)), cancelled_at)
    due = t1 + timedelta(minutes=tmp_settings.min_notice_interval_minutes)
    assert all_clear and {n.next_attempt_at for n in all_clear} == {due}  # not before the interval is up

    again_at = t1 + timedelta(minutes=10)
    again = outbox.step(cap_alert("TY-2", "Alert", again_at), again_at)
    with factory() as session:
        stale = {n.status for n in session.scalars(select(Notification).where(
            Notification.id.in_([n.id for n in all_clear])))}
    assert stale == {"cancelled"}  # the all-clear never goes out: the warning is back
    assert again and {n.next_attempt_at for n in again} == {due}
    assert {n.template for n in again} == {"cancelled"}
    assert {(n.booking_id, n.channel) for n in again} == {(n.booking_id, n.channel) for n in told}


def test_expiry_sends_the_all_clear_with_the_resumption_sailing(factory, demo_db, tmp_settings):
    outbox = Outbox(factory, tmp_settings)
    t1 = DEMO_NOW + timedelta(hours=1)
    outbox.step(cap_alert("TY-1", "Alert", t1), t1)
    outbox.deliver(t1)
    cancelled = sailings_with(factory, "cancelled")

    after = FIRST_END + timedelta(minutes=1)
    expired = expire_disruptions(factory, after)
    rows = outbox.step([], after)

    assert len(expired.cleared) == len(cancelled) - len(expired.retired)
    assert {n.template for n in rows} == {"resumed"}
    zh = [n for n in rows if n.channel == "sms" and n.language == "zh-CN"]
    assert zh and all(n.segments <= 2 for n in zh)
    assert any("已恢复通航" in n.body_text for n in zh)  # sailings whose time passed: the next one is named
    assert expire_disruptions(factory, after).cleared == []


def test_a_typhoon_watch_is_an_advisory_without_offers(factory, demo_db, tmp_settings):
    outbox = Outbox(factory, tmp_settings)
    t1 = DEMO_NOW + timedelta(hours=1)
    rows = outbox.step(cap_alert("TW-1", "Alert", t1, severity="Severe", event="Typhoon Watch &lt;b&gt;"), t1)
    assert rows and {n.template for n in rows} == {"advisory"}
    email = next(n for n in rows if n.channel == "email")
    assert "Typhoon Watch <b> for the Qiongzhou Strait" in email.body_text  # the feed's words, as a value
    assert "&lt;b&gt;" in email.body_html and "<b>" not in email.body_html
    with factory() as session:
        assert session.scalar(select(Offer.id).limit(1)) is None
        assert set(session.scalars(select(Sailing.status).where(Sailing.code.in_(
            sailings_with(factory, "advisory"))))) == {"scheduled"}
    assert all(n.segments <= 2 for n in rows if n.channel == "sms" and n.language == "zh-CN")


def test_a_dcsa_port_omission_tells_shippers_their_options(factory, demo_db, tmp_settings):
    with factory() as session, session.begin():
        leg = session.scalar(select(Sailing).where(Sailing.code.like("AEX1-SHA-HKG-%"))
                             .order_by(Sailing.scheduled_departure))
        voyage, arrival = leg.voyage, leg.scheduled_arrival
        chinese = session.scalars(select(Customer).join(Booking, Booking.customer_id == Customer.id)
                                  .where(Booking.sailing_id == leg.id)).first()
        chinese.language = "zh-CN"
    call = Observation(source="carrier-ovs", format="dcsa", kind="port_call", external_id="AEX1-9811000-HKHKG",
                       version="v1", event="Port call omitted", onset=arrival, ports=["HKHKG"], sailings=[voyage],
                       fields={"vessel_imo": "9811000", "port_call_status": "OMIT", "delay_reason_code": "STR",
                               "change_remark": "Terminal strike"})
    rows = Outbox(factory, tmp_settings).step([call], DEMO_NOW + timedelta(hours=1))

    assert rows and {n.template for n in rows} == {"port_omitted"}
    with factory() as session:
        kinds = set(session.scalars(select(Booking.kind).where(Booking.id.in_([n.booking_id for n in rows]))))
        disrupted = set(session.scalars(select(Sailing.code).join(Disruption, Disruption.sailing_id == Sailing.id)))
    assert kinds == {"cargo"}
    assert disrupted == {leg.code, leg.code.replace("SHA-HKG", "HKG-SIN").replace(
        f"{leg.scheduled_departure:%Y%m%d}", f"{leg.scheduled_departure + timedelta(days=3):%Y%m%d}")}
    email = next(n for n in rows if n.channel == "email" and n.language == "en")
    assert "Terminal strike" in email.body_text and "Cancel the booking without a cancellation fee" in email.body_text
    assert "industrial action" in email.body_text  # the SMDG code STR, in plain words
    zh = [n for n in rows if n.channel == "sms" and n.language == "zh-CN"]
    assert zh and all(n.segments <= 2 and "取消挂靠" in n.body_text for n in zh)


def test_a_carriers_hostile_remark_reaches_the_sms_clean_and_capped(factory, demo_db, tmp_settings):
    with factory() as session:
        leg = session.scalar(select(Sailing).where(Sailing.code.like("AEX1-SHA-HKG-%"))
                             .order_by(Sailing.scheduled_departure))
    # U+E000 R U+E001 is the slot notifier.shapes fills with each booking's reference.
    remark = "Terminal\ue000R\ue001 strike\x1b[31m " + "y" * 5000
    call = Observation(source="carrier-ovs", format="dcsa", kind="port_call", external_id="AEX1-9811000-HKHKG",
                       version="v1", event="Port call omitted", onset=leg.scheduled_arrival, ports=["HKHKG"],
                       sailings=[leg.voyage], fields={"vessel_imo": "9811000", "port_call_status": "OMIT",
                                                      "change_remark": remark})
    rows = Outbox(factory, tmp_settings).step([call], DEMO_NOW + timedelta(hours=1))

    sms = [n for n in rows if n.channel == "sms" and n.language == "en"]
    assert sms and all("(Terminal R strike [31m yyy" in n.body_text and "y...)" in n.body_text for n in sms)
    assert all(n.segments <= 4 for n in sms)
    with factory() as session:
        refs = dict(session.execute(select(Booking.id, Booking.ref).where(Booking.id.in_([n.booking_id for n in rows])))
                    .all())
    for notice in rows:
        assert not {"\ue000", "\ue001", "\x1b"} & set(notice.body_text + (notice.body_html or ""))
        assert not [ref for booking_id, ref in refs.items() if booking_id != notice.booking_id
                    and ref in notice.body_text]


# --- the EU regulatory clock -----------------------------------------------------------------------------------

@pytest.fixture
def two_lines(factory):
    """An EU crossing and a Chinese one, both in the typhoon's polygon, each with two bookings."""
    with factory() as session, session.begin():
        build = Builder(session)
        north, south = build.port("GRPIR", 20.30, 110.30, "Europe/Athens"), build.port("GRAEG", 20.10, 110.40)
        haikou = build.port("CNHAK", 20.02, 110.27, "Asia/Shanghai")
        departure = DEMO_NOW + timedelta(hours=6)
        eu = build.sailing(north, south, departure, 3, jurisdiction="EU", code="EU-1", trip="EU-TRIP")
        cn = build.sailing(haikou, south, departure - timedelta(hours=3), 3, jurisdiction="CN", code="CN-1")
        return eu.id, cn.id


def test_eu_notices_go_first_and_late_ones_are_reported(factory, tmp_settings, two_lines):
    eu_id, _ = two_lines
    outbox = Outbox(factory, tmp_settings)
    t1 = DEMO_NOW + timedelta(hours=1)
    rows = outbox.step(cap_alert("TY-EU", "Alert", t1, end=DEMO_NOW + timedelta(hours=12)), t1)
    with factory() as session:
        eu_bookings = set(session.scalars(select(Booking.id).where(Booking.sailing_id == eu_id)))
        departure = session.get(Sailing, eu_id).scheduled_departure
    eu_rows = [n for n in rows if n.booking_id in eu_bookings]
    others = [n for n in rows if n.booking_id not in eu_bookings]
    assert eu_rows and others
    # The CN sailing leaves three hours earlier, yet the EU notices (Art 16 clock) are claimed first.
    assert max(n.priority for n in eu_rows) < min(n.priority for n in others)

    deadline = information_deadline(departure)
    late_booking, on_time_booking = sorted(eu_bookings)
    with factory() as session, session.begin():
        session.execute(update(Notification).where(Notification.booking_id == on_time_booking)
                        .values(status="sent", sent_at=deadline - timedelta(minutes=1)))
        session.execute(update(Notification).where(Notification.booking_id == late_booking)
                        .values(status="sent", sent_at=deadline + timedelta(minutes=7)))
    with factory() as session:
        report = eu_deadline_report(session, now=deadline + timedelta(hours=1))
    assert [(m.sailing_code, m.minutes_late) for m in report] == [("EU-1", 7)]
    assert report[0].first_told_at == deadline + timedelta(minutes=7) and report[0].known_at is not None


def test_eu_passengers_never_told_are_reported_once_the_deadline_passes(factory, tmp_settings, two_lines):
    eu_id, _ = two_lines
    outbox = Outbox(factory, tmp_settings)
    t1 = DEMO_NOW + timedelta(hours=1)
    outbox.step(cap_alert("TY-EU", "Alert", t1, end=DEMO_NOW + timedelta(hours=12)), t1)
    with factory() as session:
        departure = session.get(Sailing, eu_id).scheduled_departure
        assert eu_deadline_report(session, now=departure) == []  # still in time
        missed = eu_deadline_report(session, now=information_deadline(departure) + timedelta(seconds=1))
    assert len(missed) == 2 and {m.first_told_at for m in missed} == {None}


def test_an_eu_long_delay_tells_art17_18_and_the_compensation_owed(factory, tmp_settings, two_lines):
    eu_id, cn_id = two_lines
    sent = DEMO_NOW + timedelta(hours=1)
    late = Observation(source="operator-rt", format="gtfs_rt", kind="trip_update", external_id="tu-eu-1",
                       version="1", event="Trip delayed", sent=sent, sailings=["EU-TRIP"],
                       fields={"schedule_relationship": "SCHEDULED", "start_date": "20260914",
                               "delay_minutes": 120, "skipped_stops": []})
    rows = Outbox(factory, tmp_settings).step([late], sent)

    assert rows and {n.template for n in rows} == {"delayed"}
    email = next(n for n in rows if n.channel == "email")
    # A 3-hour crossing 2 hours late for a technical reason: Art 17(1), 17(2), 18 and 19 (25 % of EUR 50.00).
    assert "refreshments" in email.body_text and "re-routing" in email.body_text
    assert "Accommodation" in email.body_text
    assert "Compensation of €12.50 (25% of your fare)" in email.body_text
    with factory() as session:
        owed = session.scalars(select(Offer).where(Offer.kind == "compensation")).all()
        refund = session.scalars(select(Offer).where(Offer.kind == "refund")).all()
    assert owed and {(o.amount, o.currency) for o in owed} == {(Decimal("12.50"), "EUR")}
    assert refund  # Art 18: more than 90 minutes


def test_weather_removes_compensation_and_accommodation_from_an_eu_notice(factory, tmp_settings, two_lines):
    t1 = DEMO_NOW + timedelta(hours=1)
    rows = Outbox(factory, tmp_settings).step(
        cap_alert("TY-EU", "Alert", t1, severity="Moderate", end=DEMO_NOW + timedelta(hours=12)), t1)
    eu = [n for n in rows if n.channel == "email" and "EU-1" in n.body_text]
    assert eu
    # A 60-minute weather hold: told of it (Art 16), but Art 17/18 start beyond 90 minutes and the weather
    # exemption removes compensation and accommodation whatever the delay.
    assert "Compensation" not in eu[0].body_text and "Accommodation" not in eu[0].body_text


def test_the_walk_on_postgresql(postgres_url, tmp_settings):
    from notifier.store.db import make_engine, session_factory
    from notifier.ops.demo import generate

    engine = make_engine(postgres_url)
    try:
        factory = session_factory(engine)
        network = generate(factory, 600, DEMO_NOW)
        test_alert_update_downgrade_cancel_walk(factory, network, replace(tmp_settings, database_url=postgres_url))
    finally:
        engine.dispose()
