"""`notifier demo`: a realistic generated network, a typhoon warning, and the whole pipeline, offline.

The network (seeded, so every run builds the same one): Qiongzhou Strait ro-ro ferries Haikou <-> Hai'an and
Haikou <-> Xuwen every two hours, a Hong Kong <-> Macau fast ferry every hour, and a weekly container service
Shanghai -> Hong Kong -> Singapore. Bookings are spread over the sailings; customers write in Chinese or English,
and a few have no usable contact (so the follow-up list has real work).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from notifier.intake.upsert import upsert
from notifier.store import audit
from notifier.store.models import AuditEntry, Booking, Customer, Port, Route, Sailing, SailingCapacity, Vessel
from notifier.store.paths import demo_data_dir
from notifier.store.settings import Settings
from notifier.store.status import CONFIRMED, SCHEDULED

BUNDLED_FEED = "typhoon_qiongzhou.xml"
# Links in demo notices need a signing key; the demo has no credentials, so it uses this published one unless
# NOTIFIER_SECRET_KEY is set. Serve the demo's choice page with NOTIFIER_SECRET_KEY=notifier-demo-only-key.
DEMO_SECRET = "notifier-demo-only-key"
DAYS = 4

PORTS = [  # locode, name, Chinese name, country, lat, lon, time zone
    ("CNHAK", "Haikou (Xiuying)", "海口", "CN", 20.0199, 110.2747, "Asia/Shanghai"),
    ("CNHAI", "Hai'an", "海安", "CN", 20.2676, 110.2180, "Asia/Shanghai"),
    ("CNXWN", "Xuwen", "徐闻", "CN", 20.2305, 110.1400, "Asia/Shanghai"),
    ("HKHKG", "Hong Kong (Sheung Wan)", "香港", "HK", 22.2884, 114.1525, "Asia/Hong_Kong"),
    ("MOMFM", "Macau (Outer Harbour)", "澳门", "MO", 22.1969, 113.5590, "Asia/Macau"),
    ("CNSHA", "Shanghai (Yangshan)", "上海", "CN", 30.6200, 122.0600, "Asia/Shanghai"),
    ("SGSIN", "Singapore", "新加坡", "SG", 1.2640, 103.8400, "Asia/Singapore"),
]
# code, name, kind, origin, destination, jurisdiction, first local hour, last, every hours, crossing minutes, vessels
FERRY_ROUTES = [
    ("QZ-HAK-HAI", "Haikou - Hai'an", "CNHAK", "CNHAI", "CN", 7, 21, 2, 90),
    ("QZ-HAI-HAK", "Hai'an - Haikou", "CNHAI", "CNHAK", "CN", 8, 22, 2, 90),
    ("QZ-HAK-XWN", "Haikou - Xuwen", "CNHAK", "CNXWN", "CN", 7, 19, 3, 120),
    ("QZ-XWN-HAK", "Xuwen - Haikou", "CNXWN", "CNHAK", "CN", 8, 20, 3, 120),
    ("HKM-HKG-MFM", "Hong Kong - Macau", "HKHKG", "MOMFM", "HK", 7, 23, 1, 60),
    ("HKM-MFM-HKG", "Macau - Hong Kong", "MOMFM", "HKHKG", "HK", 7, 23, 1, 60),
]
FERRY_VESSELS = [("9200001", "Qiongzhou Pearl"), ("9200002", "Haixia Star"), ("9200003", "Cotai Jet 1")]
CARGO_LEGS = [("AEX1-SHA-HKG", "AEX1 Shanghai - Hong Kong", "CNSHA", "HKHKG", 50),
              ("AEX1-HKG-SIN", "AEX1 Hong Kong - Singapore", "HKHKG", "SGSIN", 80)]
CARGO_VESSEL = ("9811000", "Ever Demo")
SURNAMES_ZH = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
GIVEN_ZH = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛", "明", "超", "霞", "平", "刚"]
NAMES_EN = ["Alex Chan", "Maria Lopez", "John Smith", "Priya Nair", "Tom Becker", "Emma Wilson", "Luca Rossi",
            "Sarah Lee", "David Wong", "Anna Kowalska", "James Taylor", "Mei Ling Ho"]
SHIPPERS = ["Pearl River Electronics Ltd", "Yangtze Textiles Co", "Lion City Foods Pte", "Oriental Auto Parts"]


@dataclass
class DemoNetwork:
    """What the generator built (for the summary)."""

    epoch: datetime
    ports: int = 0
    sailings: int = 0
    bookings: int = 0
    customers: int = 0
    by_route: dict[str, int] = field(default_factory=dict)


def demo_epoch(session: Session) -> datetime | None:
    """The moment the demo network was generated around, if this database holds one."""
    entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "demo.generated"))
    return datetime.fromisoformat(entry.details["epoch"]) if entry else None


def bundled_feed(epoch: datetime) -> bytes:
    """The bundled typhoon warning, its times shifted so that it is issued at the demo's epoch."""
    raw = (demo_data_dir() / BUNDLED_FEED).read_text(encoding="utf-8")
    sent = datetime.fromisoformat(re.search(r"<sent>([^<]+)</sent>", raw).group(1))
    shift = epoch - sent

    def shifted(match: re.Match[str]) -> str:
        moment = datetime.fromisoformat(match.group(2)) + shift
        return f"<{match.group(1)}>{moment.isoformat()}</{match.group(1)}>"

    return re.sub(r"<(sent|effective|onset|expires)>([^<]+)</\1>", shifted, raw).encode("utf-8")


def generate(factory: sessionmaker[Session], bookings: int, now: datetime, seed: int = 20260914) -> DemoNetwork:
    """Build the demo network and bookings in one transaction (all or nothing)."""
    rng = random.Random(seed)
    epoch = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    result = DemoNetwork(epoch=epoch)
    with factory() as session, session.begin():
        ports = _ports(session)
        result.ports = len(ports)
        sailings = _ferry_sailings(session, ports, epoch) + _cargo_sailings(session, ports, epoch)
        result.sailings = len(sailings)
        result.customers, result.bookings = _bookings(session, sailings, bookings, rng)
        audit.record(session, "demo", "demo.generated", epoch=epoch.isoformat(), bookings=result.bookings,
                     seed=seed)
    return result


def _ports(session: Session) -> dict[str, Port]:
    ports = {}
    for locode, name, name_zh, country, lat, lon, tz in PORTS:
        port = Port(locode=locode, name=name, name_zh=name_zh, country=country, lat=lat, lon=lon, timezone=tz,
                    zone_codes=[])
        session.add(port)
        ports[locode] = port
    session.flush()
    return ports


@dataclass
class _SailingSlot:
    id: int
    kind: str
    departure: datetime
    classes: dict[str, int]
    fares: dict[str, tuple[Decimal, str]]
    booked: dict[str, int] = field(default_factory=dict)


def _ferry_sailings(session: Session, ports: dict[str, Port], epoch: datetime) -> list[_SailingSlot]:
    vessels = [Vessel(imo=imo, name=name) for imo, name in FERRY_VESSELS]
    session.add_all(vessels)
    session.flush()
    slots = []
    for code, name, origin, destination, jurisdiction, first, last, every, minutes in FERRY_ROUTES:
        route = Route(code=code, name=name, kind="passenger", origin_port_id=ports[origin].id,
                      destination_port_id=ports[destination].id, jurisdiction=jurisdiction)
        session.add(route)
        session.flush()
        zone = ZoneInfo(ports[origin].timezone)
        local_start = epoch.astimezone(zone).replace(hour=0)
        hk = code.startswith("HKM")
        classes = {"economy": 120, "business": 20} if hk else {"economy": 300, "business": 40, "vehicle": 30}
        fares = ({"economy": (Decimal("175.00"), "HKD"), "business": (Decimal("346.00"), "HKD")} if hk else
                 {"economy": (Decimal("45.00"), "CNY"), "business": (Decimal("80.00"), "CNY")})
        vessel = vessels[2] if hk else vessels[len(slots) % 2]
        rows = []
        for day in range(-1, DAYS):
            for hour in range(first, last + 1, every):
                departure = (local_start + timedelta(days=day, hours=hour)).astimezone(UTC)
                rows.append({"code": f"{code}-{departure.astimezone(zone):%Y%m%d-%H%M}", "route_id": route.id,
                             "vessel_id": vessel.id, "origin_port_id": route.origin_port_id,
                             "destination_port_id": route.destination_port_id, "scheduled_departure": departure,
                             "scheduled_arrival": departure + timedelta(minutes=minutes),
                             "status": "departed" if departure < epoch else "scheduled"})
        slots += _insert_sailings(session, rows, "passenger", classes, fares)
    return slots


def _cargo_sailings(session: Session, ports: dict[str, Port], epoch: datetime) -> list[_SailingSlot]:
    vessel = Vessel(imo=CARGO_VESSEL[0], name=CARGO_VESSEL[1])
    session.add(vessel)
    session.flush()
    slots = []
    for index, (code, name, origin, destination, hours) in enumerate(CARGO_LEGS):
        route = Route(code=code, name=name, kind="cargo", origin_port_id=ports[origin].id,
                      destination_port_id=ports[destination].id, jurisdiction="OTHER")
        session.add(route)
        session.flush()
        rows = []
        for week in range(2):
            departure = epoch + timedelta(days=1 + 7 * week + 3 * index, hours=10)
            rows.append({"code": f"{code}-{departure:%Y%m%d}", "route_id": route.id, "vessel_id": vessel.id,
                         "voyage": f"{640 + week}E", "origin_port_id": route.origin_port_id,
                         "destination_port_id": route.destination_port_id, "scheduled_departure": departure,
                         "scheduled_arrival": departure + timedelta(hours=hours), "status": SCHEDULED})
        slots += _insert_sailings(session, rows, "cargo", {"teu": 2000, "reefer": 150},
                                  {"teu": (Decimal("1150.00"), "USD")})
    return slots


def _insert_sailings(session: Session, rows: list[dict], kind: str, classes: dict[str, int],
                     fares: dict[str, tuple[Decimal, str]]) -> list[_SailingSlot]:
    session.execute(insert(Sailing.__table__), rows)
    codes = [row["code"] for row in rows]
    ids = dict(session.execute(select(Sailing.code, Sailing.id).where(Sailing.code.in_(codes))).all())
    return [_SailingSlot(ids[row["code"]], kind, row["scheduled_departure"], dict(classes), fares)
            for row in rows]


def _bookings(session: Session, slots: list[_SailingSlot], count: int, rng: random.Random) -> tuple[int, int]:
    customers, bookings = [], []
    bookable = [s for s in slots if s.kind == "passenger"]
    cargo = [s for s in slots if s.kind == "cargo"]
    cargo_count = min(len(cargo) * 12, max(count // 50, 8))
    for number in range(count):
        slot = cargo[number % len(cargo)] if number < cargo_count else rng.choice(bookable)
        customer = _customer(number, rng, slot.kind)
        booking = _booking(number, slot, rng)
        if booking is None:
            continue
        customers.append(customer)
        bookings.append(booking)
    upsert(session, Customer.__table__, customers, ("ref",))  # the bookings importer's own bulk write
    ids = dict(session.execute(select(Customer.ref, Customer.id)).all())
    rows = []
    for booking in bookings:
        booking["customer_id"] = ids[booking.pop("customer_ref")]
        rows.append(BOOKING_DEFAULTS | booking)  # executemany wants the same columns in every row
    upsert(session, Booking.__table__, rows, ("ref",))
    for slot in slots:
        for space_class, capacity in slot.classes.items():
            session.add(SailingCapacity(sailing_id=slot.id, space_class=space_class, capacity=capacity,
                                        booked=slot.booked.get(space_class, 0), held=0))
    session.flush()
    return len(customers), len(bookings)


BOOKING_DEFAULTS = {"party_size": 1, "vehicles": 0, "accessibility_needs": False, "containers": 0, "teu": 0,
                    "reefer_plugs": 0, "dangerous_goods": False, "shipper": None, "cutoffs": {}}


def _customer(number: int, rng: random.Random, kind: str) -> dict:
    chinese = kind == "passenger" and rng.random() < 0.7
    name = (rng.choice(SURNAMES_ZH) + rng.choice(GIVEN_ZH) + rng.choice(GIVEN_ZH)) if chinese else \
        (rng.choice(SHIPPERS) if kind == "cargo" else rng.choice(NAMES_EN))
    phone = f"+86 13{rng.randint(0, 9)}{rng.randint(0, 99999999):08d}" if chinese else \
        f"+852 9{rng.randint(0, 9999999):07d}"
    email = f"customer{number}@example.com" if rng.random() < (0.5 if chinese else 0.9) else None
    roll = rng.random()
    if roll < 0.006:
        phone, email = None, None  # no usable contact: must reach the follow-up list, not vanish
    elif roll < 0.012:
        phone = "+86 898 6533 0000"  # a landline: cannot take SMS
    return {"ref": f"C{number:07d}", "name": name, "phone": phone, "email": email,
            "language": "zh-CN" if chinese else "en", "channels": ["sms", "email"],
            "key_account": kind == "cargo" and rng.random() < 0.3}


def _booking(number: int, slot: _SailingSlot, rng: random.Random) -> dict | None:
    if slot.kind == "cargo":
        teu = rng.randint(1, 12)
        reefer = rng.randint(0, 2)
        if not _take(slot, {"teu": teu, "reefer": reefer}):
            return None
        price, currency = slot.fares["teu"]
        return {"ref": f"BKG{number:07d}", "kind": "cargo", "customer_ref": f"C{number:07d}",
                "sailing_id": slot.id, "space_class": "teu", "party_size": 0, "containers": max(1, teu // 2),
                "teu": teu, "reefer_plugs": reefer, "dangerous_goods": rng.random() < 0.1,
                "shipper": rng.choice(SHIPPERS), "cutoffs": {"DCO": (slot.departure - timedelta(hours=48)).isoformat(),
                                             "FCO": (slot.departure - timedelta(hours=24)).isoformat()},
                "fare_paid": price * teu, "currency": currency, "status": CONFIRMED}
    space = "business" if rng.random() < 0.1 else "economy"
    party = rng.choice([1, 1, 1, 2, 2, 3, 4])
    vehicles = 1 if "vehicle" in slot.classes and rng.random() < 0.08 else 0
    if not _take(slot, {space: party, "vehicle": vehicles}):
        return None
    price, currency = slot.fares[space]
    return {"ref": f"T{number:07d}", "kind": "passenger", "customer_ref": f"C{number:07d}", "sailing_id": slot.id,
            "space_class": space, "party_size": party, "vehicles": vehicles,
            "accessibility_needs": rng.random() < 0.03, "fare_paid": price * party, "currency": currency,
            "status": CONFIRMED, "cutoffs": {}}


def _take(slot: _SailingSlot, wanted: dict[str, int]) -> bool:
    if any(slot.booked.get(k, 0) + v > slot.classes.get(k, 0) for k, v in wanted.items() if v):
        return False
    for key, value in wanted.items():
        slot.booked[key] = slot.booked.get(key, 0) + value
    return True


def count_bookings(session: Session) -> int:
    """How many bookings the database holds."""
    return session.scalar(select(func.count()).select_from(Booking)) or 0


@dataclass
class DemoSummary:
    """Everything `notifier demo` reports."""

    database: str
    outbox: str
    network: DemoNetwork | None
    feed_label: str
    observations: list = field(default_factory=list)
    new_items: int = 0
    duplicates: int = 0
    near_misses: list[str] = field(default_factory=list)
    sailings: list[str] = field(default_factory=list)
    bookings_affected: int = 0
    unreachable: list = field(default_factory=list)
    by_channel_language: dict = field(default_factory=dict)
    notifications_planned: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    samples: dict[str, str] = field(default_factory=dict)
    channel_names: dict[str, str] = field(default_factory=dict)


def run(settings: Settings, bookings: int, feed_path: str | None, now: datetime | None = None) -> DemoSummary:
    """Build (once) the demo database, replay the feed through the whole pipeline, and dispatch the outbox."""
    from notifier.delivery.providers import channels_for
    from notifier.store.db import make_engine, session_factory
    from notifier.delivery.dispatch import dispatch_all
    from notifier.feeds import cap
    from notifier.store.migrate import upgrade
    from notifier.store.paths import rules_dir
    from notifier.ops.pipeline import ingest, plan_pending, process_new_items
    from notifier.rules.load import load_rules

    now = now or datetime.now(UTC)
    if not settings.secret_key:
        settings = replace(settings, secret_key=DEMO_SECRET)
    rules = load_rules([rules_dir(), *map(Path, settings.rules_dirs)])  # refuse bad rules before any write
    user_feed = _read_user_feed(feed_path)  # and a bad feed, too
    user_observations = cap.parse(user_feed, source=feed_path) if user_feed is not None else None
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    try:
        summary = DemoSummary(database=settings.database_url, outbox=str(Path(settings.outbox_dir).resolve()),
                              network=None, feed_label=feed_path or f"bundled {BUNDLED_FEED}")
        with factory() as session:
            epoch = demo_epoch(session)
            existing = count_bookings(session)
        if epoch is None:
            if existing:
                from notifier.errors import NotifierError
                raise NotifierError("this database already holds bookings that the demo did not make; "
                                    "use --db with a new file")
            summary.network = generate(factory, bookings, now)
            epoch = summary.network.epoch
        observations = user_observations if user_observations is not None else cap.parse(bundled_feed(epoch))
        summary.observations = observations
        ingested = ingest(factory, observations)
        summary.new_items, summary.duplicates = len(ingested.new_item_ids), ingested.duplicates
        processed = process_new_items(factory, rules, now=epoch)
        summary.near_misses = [f"{m.rule_id}: {m.reasons[-1]}" for _, m in processed.matches if not m.matched]
        plans = plan_pending(factory, settings, now=epoch)
        _summarise_plans(factory, summary, plans, processed)
        channels = channels_for(settings)
        summary.channel_names = {kind: channel.name for kind, channel in channels.items()}
        stats = dispatch_all(factory, settings, channels)
        summary.sent, summary.failed, summary.retried = stats.sent, stats.failed, stats.retried
        for channel in channels.values():
            channel.close()
        return summary
    finally:
        engine.dispose()


def _read_user_feed(feed_path: str | None) -> bytes | None:
    # A missing or oversized feed file is bad input (exit 2), like a feed that does not parse.
    from notifier.errors import UsageError
    from notifier.feeds import MAX_FEED_BYTES, FeedParseError

    if feed_path is None:
        return None
    path = Path(feed_path)
    if not path.is_file():
        raise UsageError(f"{feed_path}: no such feed file")
    if path.stat().st_size > MAX_FEED_BYTES:
        raise FeedParseError(f"{feed_path}: {path.stat().st_size} bytes, over the {MAX_FEED_BYTES}-byte feed limit")
    return path.read_bytes()


def _summarise_plans(factory, summary: DemoSummary, plans, processed) -> None:  # noqa: ANN001
    from notifier.store.models import Disruption, Notification

    with factory() as session:
        disruption_ids = processed.disruptions_changed
        summary.sailings = list(session.scalars(
            select(Sailing.code).join(Disruption, Disruption.sailing_id == Sailing.id)
            .where(Disruption.id.in_(disruption_ids)).order_by(Sailing.scheduled_departure)))
        for plan in plans:
            summary.bookings_affected += plan.bookings
            summary.unreachable += plan.unreachable
            summary.notifications_planned += plan.notifications
            for key, value in plan.by_channel_language.items():
                summary.by_channel_language[key] = summary.by_channel_language.get(key, 0) + value
        for language in ("zh-CN", "en"):
            body = session.scalar(select(Notification.body_text).where(
                Notification.channel == "sms", Notification.language == language,
                Notification.broadcast_id.in_([p.broadcast_id for p in plans])).limit(1))
            if body:
                summary.samples[language] = body


def summary_lines(summary: DemoSummary) -> list[str]:
    """The demo's report: alert -> sailings -> bookings -> notifications -> outbox."""
    if summary.network:
        n = summary.network
        lines = [f"Built demo network: {n.ports} ports, {n.sailings} sailings, {n.bookings} bookings "
                 f"({n.customers} customers), around {n.epoch:%Y-%m-%d %H:%M} UTC."]
    else:
        lines = ["Reusing the demo network already in this database."]
    lines += [f"Alert: {observation.headline or observation.event or observation.external_id} "
              f"[{observation.msg_type}, {observation.severity or 'no severity'}] from {observation.source}"
              for observation in summary.observations]
    if summary.duplicates and not summary.new_items:
        lines.append("This alert was already processed: nothing new to plan or send.")
    if not summary.sailings and summary.new_items:
        lines.append("Nothing matched: no rule selected a demo sailing.")
        lines += [f"  - {reason}" for reason in sorted(set(summary.near_misses))[:5]]
    if summary.sailings:
        lines += _affected_lines(summary)
    lines.append(f"Sent: {summary.sent}, failed: {summary.failed}, retrying later: {summary.retried} "
                 f"(sms via {summary.channel_names.get('sms')}, email via {summary.channel_names.get('email')})")
    lines.append(f"Outbox: {summary.outbox}   Database: {summary.database}")
    for language, body in summary.samples.items():
        lines += [f"\nSample SMS ({language}):\n  " + body.replace("\n", "\n  ")]
    return lines


def _affected_lines(summary: DemoSummary) -> list[str]:
    parts = ", ".join(f"{channel} {language}: {count}"
                      for (channel, language), count in sorted(summary.by_channel_language.items()))
    lines = [f"Sailings suspended: {len(summary.sailings)} ({', '.join(summary.sailings[:4])}"
             f"{', ...' if len(summary.sailings) > 4 else ''})",
             f"Bookings affected: {summary.bookings_affected}",
             f"Notifications planned: {summary.notifications_planned} ({parts})"]
    if summary.unreachable:
        lines.append(f"Without a usable contact on some channel: {len(summary.unreachable)} "
                     f"(see `notifier followups list`)")
    return lines
