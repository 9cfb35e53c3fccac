"""Rule evaluation cost: 10,000 observations against 50 rules and 5,000 sailings, spatial look-ups indexed.

Prints our CPU time beside a naive baseline from the same run: the same rules and conditions, but every polygon and
circle tested against every port and every sailing scanned for the ports and the time window (no STRtree, no
per-port departure index). The baseline runs on a sample of the observations (it is slow) and is checked to pick
exactly the same (rule, sailing) pairs; the ratio compares time per observation.

    /work/venv/bin/python bench/bench_rules.py [--observations 10000] [--sailings 5000] [--sample 500]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shapely.geometry import Point, Polygon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notifier.feeds import Area, Observation
from notifier.store.paths import rules_dir
from notifier.rules.conditions import check_condition
from notifier.rules.evaluate import _delay, _impacts, decisive_impacts, evaluate
from notifier.rules.load import load_rule_set
from notifier.rules.network import Network, PortRef, SailingRef, haversine_km, normalise_zone
from notifier.rules.scene import Scene
from notifier.rules.selection import _overlaps

START = datetime(2026, 9, 14, tzinfo=UTC)
EVENTS = ["Typhoon Warning", "Tropical Storm Warning", "Gale Warning", "Storm Warning", "Typhoon Watch",
          "Small Craft Advisory", "Dense Fog Advisory", "Coastal Flood Warning", "Tsunami Warning"]


def network(ports: int, sailings: int, rng: random.Random) -> Network:
    """Ports scattered over the South and East China Seas; sailings between nearby ports over a week."""
    refs = [PortRef(i, f"X{i:04d}", rng.uniform(0, 40), rng.uniform(100, 140),
                    zone_codes=(f"UGC:PZZ{i % 200:03d}",) if i % 3 == 0 else (),
                    country="CN" if i % 2 else "HK", timezone="Asia/Shanghai") for i in range(ports)]
    trips = []
    for n in range(sailings):
        origin = rng.randrange(ports)
        destination = (origin + rng.randint(1, 5)) % ports
        departure = START + timedelta(minutes=rng.randrange(7 * 24 * 60))
        trips.append(SailingRef(n, f"S{n:05d}", origin, destination, departure,
                                departure + timedelta(minutes=rng.choice([45, 90, 180, 600])),
                                route_kind="passenger" if n % 10 else "cargo",
                                jurisdiction=rng.choice(["CN", "HK", "EU", "OTHER"])))
    return Network(refs, trips)


def rule_set(count: int) -> tuple:
    """The shipped rules plus generated area rules up to `count`."""
    shipped = load_rule_set([rules_dir()])
    extra = count - len(shipped.rules)
    folder = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    body = ["rules:"]
    for k in range(extra):
        body.append(textwrap.indent(textwrap.dedent(f"""\
            - id: bench-hazard-{k}
              description: generated area rule {k}
              when:
                kind: weather_alert
                status: Actual
                event: {{regex: "(?i){EVENTS[k % len(EVENTS)].split()[0]}"}}
                severity: {{at_least: {["Minor", "Moderate", "Severe"][k % 3]}}}
              where:
                port: {{match: [area, zone_code]}}
                time_overlap: {{margin_before_minutes: {15 * (k % 5)}, margin_after_minutes: 30}}
              then: {{disruption: {["advisory", "delayed", "cancelled"][k % 3]}, delay_minutes: 45}}
            """), "  "))
    (folder / "bench.yaml").write_text("\n".join(body).replace("delay_minutes: 45}\n", "delay_minutes: 45}\n"),
                                       encoding="utf-8")
    rules = load_rule_set([rules_dir(), folder]).rules
    assert len(rules) == count, len(rules)
    return rules


def observations(count: int, rng: random.Random) -> list[Observation]:
    """Weather alerts with polygons, circles or zone codes, and port notices, over the week."""
    found = []
    for n in range(count):
        onset = START + timedelta(minutes=rng.randrange(7 * 24 * 60))
        expires = onset + timedelta(hours=rng.choice([3, 6, 12, 24]))
        lat, lon = rng.uniform(0, 40), rng.uniform(100, 140)
        roll = n % 20
        if roll == 19:
            found.append(Observation(source="port", format="port_status", kind="port_status", external_id=f"p{n}",
                                     version="1", event="Port closed", onset=onset, expires=expires,
                                     ports=[f"X{rng.randrange(500):04d}"],
                                     fields={"status": rng.choice(["closed", "restricted"]), "reason": "wind"}))
            continue
        area = Area(description=f"area {n}")
        if roll < 13:
            size = rng.uniform(0.3, 3.0)
            area.polygons = [[(lat, lon), (lat, lon + size), (lat + size, lon + size * 0.8), (lat + size * 0.9, lon),
                              (lat, lon)]]
        elif roll < 17:
            area.circles = [(lat, lon, rng.uniform(10, 250))]
        else:
            area.geocodes = [f"UGC:PZZ{rng.randrange(200):03d}"]
        found.append(Observation(source="met", format="cap", kind="weather_alert", external_id=f"w{n}", version="1",
                                 event=rng.choice(EVENTS), severity=rng.choice(["Minor", "Moderate", "Severe",
                                                                                "Extreme"]),
                                 onset=onset, expires=expires, areas=[area]))
    return found


def indexed(rules, net: Network, items: list[Observation], now: datetime) -> list[set[tuple[str, int]]]:
    """Our evaluation: the pipeline's `evaluate` (STRtree, per-port departure index, per-observation cache)."""
    results = []
    for observation in items:
        matches = evaluate(rules, observation, net, now, explain=False)
        decisive_impacts(matches)
        results.append({(m.rule_id, i.sailing_id) for m in matches for i in m.impacts})
    return results


def naive(rules, net: Network, items: list[Observation], now: datetime) -> list[set[tuple[str, int]]]:
    """The same rules with no index: every polygon and circle against every port, every sailing scanned."""
    shapes = []
    for observation in items:
        polygons = [Polygon([(lon, lat) for lat, lon in ring]) for a in observation.areas for ring in a.polygons]
        shapes.append(polygons)
    results = []
    for observation, polygons in zip(items, shapes):
        scene = Scene(observation, net, now)
        found: set[tuple[str, int]] = set()
        for rule in rules:
            if rule.kind is not None and observation.kind != rule.kind:
                continue
            if not all(check_condition(c, observation, now, False)[0] for c in rule.conditions):
                continue
            delay = _delay(rule, observation)
            if rule.then.kind == "delayed" and not delay:
                continue
            selector = rule.where.port
            if selector is None or rule.where.trip or rule.where.informed_entities or rule.where.vessel:
                continue  # the benchmark's observations only exercise port selection
            ports = set()
            for port in net.ports:
                point = Point(port.lon, port.lat)
                if "area" in selector.match and (
                        any(p.intersects(point) for p in polygons) or any(
                        haversine_km(lat, lon, port.lat, port.lon) <= max(radius, 0.5)
                        for a in observation.areas for lat, lon, radius in a.circles)):
                    ports.add(port.id)
                if "zone_code" in selector.match and any(normalise_zone(z) in {normalise_zone(c) for a in
                                                                               observation.areas for c in a.geocodes}
                                                         for z in port.zone_codes):
                    ports.add(port.id)
                if "locode" in selector.match and port.locode in observation.ports:
                    ports.add(port.id)
            if not ports:
                continue
            chosen = []
            for sailing in net.sailings:
                at_port = ("departure" in selector.ends and sailing.origin_port_id in ports) or (
                    "arrival" in selector.ends and sailing.destination_port_id in ports)
                if not at_port or (rule.where.route_kinds and sailing.route_kind not in rule.where.route_kinds):
                    continue
                if rule.where.overlap and not _overlaps(sailing, scene.windows, rule.where.overlap):
                    continue
                chosen.append(sailing)
            if chosen:
                _impacts(rule, scene, chosen, delay)
                found |= {(rule.id, s.id) for s in chosen}
        results.append(found)
    return results


def main() -> None:
    """Run both, check they agree on the sample, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=50)
    parser.add_argument("--sailings", type=int, default=5_000)
    parser.add_argument("--ports", type=int, default=500)
    parser.add_argument("--sample", type=int, default=500, help="observations the naive baseline runs on")
    args = parser.parse_args()
    rng = random.Random(20260914)
    net = network(args.ports, args.sailings, rng)
    rules = rule_set(args.rules)
    items = observations(args.observations, rng)
    now = START

    # CPU time of this process: other work on a shared machine does not blur the comparison.
    began, wall = time.process_time(), time.perf_counter()
    ours = indexed(rules, net, items, now)
    ours_seconds, ours_wall = time.process_time() - began, time.perf_counter() - wall
    sample = items[:args.sample]
    began = time.process_time()
    theirs = naive(rules, net, sample, now)
    naive_seconds = time.process_time() - began
    if theirs != ours[:len(sample)]:
        raise SystemExit("the baseline and the indexed evaluation disagree: the benchmark is not comparing like "
                         "with like")

    impacts = sum(len(r) for r in ours)
    per_ours, per_naive = ours_seconds / len(items), naive_seconds / len(sample)
    print(f"{len(items)} observations x {len(rules)} rules x {len(net.sailings)} sailings ({len(net.ports)} ports); "
          f"{impacts} (rule, sailing) impacts")
    print(f"indexed : {ours_seconds:8.2f} s CPU for all {len(items)} observations = {per_ours * 1000:7.3f} ms each "
          f"({len(items) / ours_seconds:,.0f} observations/s; {ours_wall:.2f} s wall)")
    print(f"naive   : {naive_seconds:8.2f} s CPU for the first {len(sample)} (same results) = {per_naive * 1000:7.3f} ms "
          f"each; {per_naive * len(items):,.0f} s projected for all")
    print(f"ratio   : the indexed evaluation is {per_naive / per_ours:,.1f}x faster per observation")


if __name__ == "__main__":
    main()
