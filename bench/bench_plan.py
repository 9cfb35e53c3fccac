"""Planning at scale, in one run: a two-day typhoon over the Qiongzhou Strait disrupts the ~100,000 bookings on
136 of 5,000 sailings in a 1,000,000-booking database (bench/scale_network.py, seeded, built once and cached).

For each engine (SQLite, and PostgreSQL when reachable) a fresh copy of the database gets the typhoon warning
(CAP, through the real rules: ingest -> rules -> disruptions -> automatic broadcast, committed), then the
planner turns it into committed, rendered outbox rows. Measured:
  - plan time: from the disruptions being committed to the last notice committed (planning.plan.plan_broadcast);
  - first dispatchable notice: a second process, connected before the warning arrives, polls for the first
    `queued` notice; time from the disruptions' commit to its first sight of one;
  - peak RSS of the planning: the planning process and, on SQLite, the writer process it starts, together
    (their RSS summed, sampled every 20 ms from /proc, never less than resource.getrusage(RUSAGE_CHILDREN) in
    the process that started them: the largest single process's own peak);
  - the baseline: the straightforward planner (bench/baseline_plan.py: one ORM object and one render per
    booking, one commit per booking) on the first N bookings of the same plan (--baseline-sample), extrapolated
    linearly to all affected bookings; once validating every contact as it goes (as the code did), once reading
    stored contact checks like the bulk planner (so the ratio of the planning technique alone is visible too);
  - the whole planning stage of the pipeline (pipeline.plan_pending: the plan, then EU priority, withdrawal of
    older notices and spacing), with --pipeline.

    /work/venv/bin/python bench/bench_plan.py [--postgres URL | --no-postgres] [--baseline-sample 5000]
        [--pipeline] [--results bench/RESULTS.md]

Figures depend on the machine and on what else runs on it; ratios come from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

import scale_network  # noqa: E402
from notifier.store.paths import demo_data_dir

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGETS = {"plan_seconds": 5.0, "peak_rss_mb": 300.0, "speedup": 20.0, "first_notice_seconds": 1.0}
SECTION = "## Planning at scale (issue 8) — `python bench/bench_plan.py`"


# --- the typhoon -------------------------------------------------------------------------------------------------

def typhoon_warning() -> bytes:
    """The bundled CAP typhoon warning, in force over the strait for the scale network's two storm days."""
    raw = (demo_data_dir() / "typhoon_qiongzhou.xml").read_text(encoding="utf-8")
    times = {"sent": scale_network.EPOCH, "effective": scale_network.EPOCH, "onset": scale_network.STORM_START,
             "expires": scale_network.STORM_END}
    for tag, moment in times.items():
        raw = re.sub(rf"<{tag}>[^<]+</{tag}>", f"<{tag}>{moment.isoformat()}</{tag}>", raw)
    return raw.replace("CN-HI-TY-2026-0914-0600", "CN-HI-TY-2026-0914-SCALE").encode("utf-8")


def settings_for(url: str):  # noqa: ANN201
    from notifier.store.settings import load_settings

    return load_settings(env={}, config_path=None, database_url=url, secret_key="bench-secret",
                         public_base_url="https://ferry.example", outbox_dir=tempfile.gettempdir())


def open_typhoon(factory, settings) -> tuple[float, int]:  # noqa: ANN001
    """Ingest the warning and run the rules: disruptions and the automatic broadcast, committed. Returns the
    moment (time.time) the commit was done and the broadcast id."""
    from notifier.feeds import cap
    from notifier.store.models import Broadcast
    from notifier.store.paths import rules_dir
    from notifier.ops.pipeline import ingest, process_new_items
    from notifier.rules.load import load_rules

    ingest(factory, cap.parse(typhoon_warning()))
    processed = process_new_items(factory, load_rules([rules_dir()]), now=scale_network.EPOCH, settings=settings)
    opened = time.time()
    with factory() as session:
        broadcast_id = session.scalar(select(Broadcast.id).where(Broadcast.id.in_(processed.broadcast_ids),
                                                                 Broadcast.template == "cancelled"))
    return opened, broadcast_id


# --- the measured processes ----------------------------------------------------------------------------------------

def run_plan(url: str, pipeline: bool) -> dict:
    """Open the typhoon and plan it (the bulk planner); the first-notice poller runs beside it."""
    from notifier.ops import pipeline as stage
    from notifier.store.db import make_engine, session_factory

    settings = settings_for(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    poller = subprocess.Popen([sys.executable, __file__, "--poll", url], stdout=subprocess.PIPE, text=True)
    assert poller.stdout.readline().strip() == "ready"
    opened, broadcast_id = open_typhoon(factory, settings)
    cpu, writer_cpu = time.process_time(), _children_cpu()
    if pipeline:
        planned = {}
        real = stage.plan_broadcast

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            result = real(*args, **kwargs)
            planned.setdefault("at", time.time())
            return result

        stage.plan_broadcast = timed
        stage.plan_pending(factory, settings, now=scale_network.EPOCH)
        finished, planned_at = time.time(), planned["at"]
    else:
        from notifier.planning.plan import plan_broadcast

        plan_broadcast(factory, broadcast_id, settings, now=scale_network.EPOCH)
        finished = planned_at = time.time()
    cpu, writer_cpu = time.process_time() - cpu, _children_cpu() - writer_cpu  # the poller is not waited for yet
    first_seen = float(poller.communicate(timeout=120)[0].strip() or "nan")
    checkpoint = _checkpoint(engine)
    counts = _counts(factory, broadcast_id)
    engine.dispose()
    return {**counts, "plan_seconds": planned_at - opened, "stage_seconds": finished - opened, "plan_cpu_seconds": cpu,
            "first_notice_seconds": first_seen - opened, "checkpoint_seconds": checkpoint,
            "writer_cpu_seconds": writer_cpu}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _checkpoint(engine) -> float | None:  # noqa: ANN001
    """SQLite: how long the WAL checkpoint the planner left to the next writer takes (None elsewhere)."""
    if engine.dialect.name != "sqlite":
        return None
    started = time.perf_counter()
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    return time.perf_counter() - started


def run_baseline(url: str, sample: int, stored_contacts: bool) -> dict:
    """Open the typhoon and plan its first `sample` bookings the straightforward way."""
    from baseline_plan import plan_one_by_one
    from notifier.store.db import make_engine, session_factory

    settings = settings_for(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    _, broadcast_id = open_typhoon(factory, settings)
    started = time.perf_counter()
    result = plan_one_by_one(factory, broadcast_id, settings, now=scale_network.EPOCH, limit=sample,
                             stored_contacts=stored_contacts)
    seconds = time.perf_counter() - started
    counts = _counts(factory, broadcast_id)
    engine.dispose()
    return {**counts, "sample_bookings": result.bookings, "sample_notifications": result.notifications,
            "sample_seconds": seconds}


def _counts(factory, broadcast_id: int) -> dict:  # noqa: ANN001
    from notifier.planning.audience import AUDIENCE_KINDS
    from notifier.store.models import Booking, Broadcast, Disruption, Notification, Offer

    with factory() as session:
        broadcast = session.get(Broadcast, broadcast_id)
        disrupted = select(Disruption.sailing_id).where(Disruption.id.in_(broadcast.target["disruption_ids"]))
        return {
            "sailings": len(broadcast.target["disruption_ids"]),
            "affected_bookings": session.scalar(select(func.count()).select_from(Booking).where(
                Booking.sailing_id.in_(disrupted), Booking.status == "confirmed",
                Booking.kind.in_(AUDIENCE_KINDS.get(broadcast.audience, AUDIENCE_KINDS["all"])))),
            "notifications": session.scalar(select(func.count()).select_from(Notification).where(
                Notification.broadcast_id == broadcast_id)),
            "offers": session.scalar(select(func.count()).select_from(Offer)),
            "total_bookings": session.scalar(select(func.count()).select_from(Booking)),
        }


def poll(url: str) -> None:
    """The second connection: wait for the first dispatchable (queued) notice; print when it was seen."""
    engine = create_engine(url)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        print("ready", flush=True)
        deadline = time.time() + 600
        while time.time() < deadline:
            found = connection.execute(text("SELECT 1 FROM notifications WHERE status = 'queued' LIMIT 1")).first()
            if found is not None:
                print(time.time(), flush=True)
                return
            connection.rollback()  # a new snapshot for the next look
            time.sleep(0.002)
    print("nan", flush=True)


def measure(args: list[str]) -> dict:
    """Run one measured process under a measuring one of its own, which adds the peak RSS."""
    done = subprocess.run([sys.executable, __file__, "--measure", *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measuring(args: list[str]) -> dict:
    """In the measuring process: run the measured one; its peak RSS is that of the planning process and of the
    writer process it starts on SQLite, together: their RSS summed, sampled every 20 ms from /proc (the first-
    notice poller, an instrument of this benchmark, is left out), and never less than RUSAGE_CHILDREN's figure
    (the largest single process's own peak, exact)."""
    measured = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak = {"sum": 0}
    sampler = threading.Thread(target=_sample_rss, args=(measured, peak), daemon=True)
    sampler.start()
    output, _ = measured.communicate()
    sampler.join()
    if measured.returncode != 0:
        raise SystemExit(measured.returncode)
    figures = json.loads(output.strip().splitlines()[-1])
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures["peak_rss_mb"] = max(largest, peak["sum"] / 1024)
    figures["largest_process_rss_mb"] = largest
    return figures


def _sample_rss(measured: subprocess.Popen, peak: dict) -> None:
    while measured.poll() is None:
        pids = [pid for pid in _process_tree(measured.pid) if "--poll" not in _cmdline(pid)]
        peak["sum"] = max(peak["sum"], sum(_rss_kb(pid) for pid in pids))
        time.sleep(0.02)


def _process_tree(pid: int) -> list[int]:
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as children:
                for child in children.read().split():
                    found += _process_tree(int(child))
    except OSError:
        pass  # gone meanwhile, or no /proc: RUSAGE_CHILDREN's figure stands
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().decode(errors="replace")
    except OSError:
        return ""


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- the run -------------------------------------------------------------------------------------------------------

class Engine:
    """A fresh database per measurement, on SQLite or PostgreSQL."""

    def __init__(self, name: str, server: str | None, size: tuple[int, int, int], scratch: Path) -> None:
        self.name, self.server, self.size, self.scratch, self.made = name, server, size, scratch, 0

    def fresh(self) -> str:
        """A new copy of the scale database; returns its URL."""
        self.made += 1
        if self.server is None:
            target = self.scratch / f"plan-{self.made}.db"
            scale_network.cached_sqlite(target, *self.size)
            return f"sqlite:///{target}"
        return scale_network.postgres_copy(self.server, *self.size)

    def drop(self, url: str) -> None:
        """Throw a copy away."""
        if self.server is None:
            for suffix in ("", "-wal", "-shm"):
                Path(url[len("sqlite:///"):] + suffix).unlink(missing_ok=True)
        else:
            scale_network.drop_postgres(self.server, url)


def bench_engine(engine: Engine, sample: int, pipeline: bool) -> dict:
    """Every figure for one engine."""
    figures: dict = {}
    runs = [("plan", ["--run", "plan"]), ("baseline", ["--run", "baseline", "--sample", str(sample)]),
            ("baseline_stored", ["--run", "baseline", "--sample", str(sample), "--stored-contacts"])]
    if pipeline:
        runs.append(("pipeline", ["--run", "plan", "--pipeline"]))
    for label, args in runs:
        url = engine.fresh()
        try:
            print(f"# {engine.name}: {label} ...", file=sys.stderr, flush=True)
            figures[label] = measure([*args, "--url", url])
        finally:
            engine.drop(url)
    for label in ("baseline", "baseline_stored"):
        run = figures[label]
        run["extrapolated_seconds"] = run["sample_seconds"] * run["affected_bookings"] / max(run["sample_bookings"], 1)
        run["speedup"] = run["extrapolated_seconds"] / figures["plan"]["plan_seconds"]
    return figures


def table(results: dict[str, dict]) -> list[str]:
    """The figures as a Markdown table."""
    lines = ["| | " + " | ".join(results) + " | target |", "|---|" + "---|" * len(results) + "---|"]

    def row(label: str, value, target: str = "") -> None:  # noqa: ANN001
        lines.append(f"| {label} | " + " | ".join(value(r) for r in results.values()) + f" | {target} |")

    row("sailings disrupted / affected bookings", lambda r: f"{r['plan']['sailings']} / "
        f"{r['plan']['affected_bookings']:,}")
    row("notifications committed (offers)", lambda r: f"{r['plan']['notifications']:,} ({r['plan']['offers']:,})")
    row("plan time, disruption committed -> last notice committed",
        lambda r: f"{r['plan']['plan_seconds']:.2f} s")
    row("  CPU time of the planning process", lambda r: f"{r['plan']['plan_cpu_seconds']:.2f} s")
    row("  CPU time of its writer process (SQLite)", lambda r: f"{r['plan']['writer_cpu_seconds']:.2f} s")
    row("  WAL checkpoint left to the next writer (SQLite)",
        lambda r: f"{r['plan']['checkpoint_seconds']:.2f} s" if r['plan']['checkpoint_seconds'] is not None else "-")
    row("  per 100,000 notifications",
        lambda r: f"{r['plan']['plan_seconds'] * 1e5 / r['plan']['notifications']:.2f} s",
        f"<= {TARGETS['plan_seconds']:g} s")
    row("first dispatchable notice after the disruption's commit",
        lambda r: f"{r['plan']['first_notice_seconds']:.3f} s", f"<= {TARGETS['first_notice_seconds']:g} s")
    row("peak RSS of the planning (planner + writer process)", lambda r: f"{r['plan']['peak_rss_mb']:.0f} MB",
        f"<= {TARGETS['peak_rss_mb']:g} MB")
    row("  the largest single process", lambda r: f"{r['plan']['largest_process_rss_mb']:.0f} MB")
    for label, what in (("baseline", "validating contacts"), ("baseline_stored", "stored contact checks")):
        row(f"baseline ({what}): sample", lambda r, k=label: f"{r[k]['sample_bookings']:,} bookings in "
            f"{r[k]['sample_seconds']:.1f} s")
        row(f"baseline ({what}): extrapolated to all", lambda r, k=label: f"{r[k]['extrapolated_seconds']:.0f} s")
        row(f"speed-up over the baseline ({what})", lambda r, k=label: f"{r[k]['speedup']:.0f}x",
            f">= {TARGETS['speedup']:g}x" if label == "baseline" else "")
    if all("pipeline" in r for r in results.values()):
        row("whole planning stage (pipeline.plan_pending)", lambda r: f"{r['pipeline']['stage_seconds']:.2f} s "
            f"(plan {r['pipeline']['plan_seconds']:.2f} s)")
        row("  its peak RSS", lambda r: f"{r['pipeline']['peak_rss_mb']:.0f} MB")
    return lines


NOTES = """\
What is measured: a CAP typhoon warning over the Qiongzhou Strait for two days goes through the real rules into
disruptions and an automatic broadcast (committed); the clock starts at that commit. "Plan time" ends when the last
notice is committed (`broadcasts.plan_broadcast`); the notices are rendered (SMS and email, text and HTML, Chinese
and English), each booking holds places on up to two alternatives (or gets a standby) plus its refund offer. "First
dispatchable notice": a second process, connected before the warning, polls for the first `queued` notice. Peak
RSS: the planning process and the writer process it starts on SQLite together (their RSS summed, sampled every 20
ms from /proc; never below `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, the largest single process's exact
peak, shown on its own line). The baseline (bench/baseline_plan.py: per booking one ORM `Notification`, one
`render`, one commit, offers held one UPDATE at a time with savepoints) runs on the first N bookings of the same
plan, on a fresh copy of the same database, and is extrapolated linearly to all affected bookings. "Whole planning
stage" is `pipeline.plan_pending`: the plan, then the pipeline's own set-based post-planning step (withdrawal of
older notices, spacing). SQLite: one transaction per chunk, written by a second process (`planning.WriterProcess`)
while the planner plans the next (the first small chunks are written by the planner itself while that process
starts); the planner defers the WAL checkpoint to the next ordinary commit; its cost is shown on its own line.
PostgreSQL: each chunk is planned while a writer thread commits the one before; stock configuration (shared_buffers
128 MB, max_wal_size 1 GB, synchronous_commit on).
"""


def verdict(results: dict[str, dict]) -> list[str]:
    """One line per target: met or not, on which engine, with the figure."""
    checks = [("plan time per 100,000 notifications <= 5 s", "plan_seconds",
               lambda r: r["plan"]["plan_seconds"] * 1e5 / r["plan"]["notifications"], "{:.1f} s"),
              ("first dispatchable notice <= 1 s", "first_notice_seconds",
               lambda r: r["plan"]["first_notice_seconds"], "{:.2f} s"),
              ("peak RSS <= 300 MB", "peak_rss_mb", lambda r: r["plan"]["peak_rss_mb"], "{:.0f} MB"),
              (">= 20x the baseline", "speedup", lambda r: r["baseline"]["speedup"], "{:.0f}x")]
    lines = []
    for label, target, value, shown in checks:
        limit = TARGETS[target]
        parts = []
        for engine, figures in results.items():
            met = value(figures) >= limit if target == "speedup" else value(figures) <= limit
            parts.append(f"{engine} {shown.format(value(figures))} ({'met' if met else '**not met**'})")
        lines.append(f"- {label}: " + ", ".join(parts))
    return lines


def write_results(path: Path, lines: list[str], command: str, verdicts: list[str] | None = None) -> None:
    """Put this run's figures in the results file's section for this benchmark (the other sections stay)."""
    body = [SECTION, "", f"Command: `{command}`", "", f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end.", "", *lines, "",
            "Targets:", "", *(verdicts or []), "", NOTES]
    text_now = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    start = text_now.find(SECTION)
    if start < 0:
        updated = text_now.rstrip("\n") + "\n\n" + "\n".join(body)
    else:
        following = text_now.find("\n## ", start + len(SECTION))
        updated = text_now[:start] + "\n".join(body) + ("\n" + text_now[following + 1:] if following >= 0 else "")
    path.write_text(updated, encoding="utf-8")


def postgres_server(args: argparse.Namespace) -> str | None:
    if args.no_postgres:
        return None
    url = args.postgres or os.environ.get("NOTIFIER_TEST_POSTGRES_URL") or DEFAULT_POSTGRES
    try:
        engine = create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - report and go on with SQLite alone
        print(f"# PostgreSQL at {url} not reachable ({type(exc).__name__}); SQLite only", file=sys.stderr)
        return None
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=1_000_000)
    parser.add_argument("--sailings", type=int, default=5000)
    parser.add_argument("--affected", type=int, default=100_000)
    parser.add_argument("--baseline-sample", type=int, default=5000)
    parser.add_argument("--postgres", default=None, help=f"server URL (default {DEFAULT_POSTGRES})")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--pipeline", action="store_true", help="also time the whole pipeline.plan_pending stage")
    parser.add_argument("--results", default=None, help="write the figures into this Markdown file")
    parser.add_argument("--run", choices=("plan", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--sample", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stored-contacts", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--poll", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measuring([a for a in sys.argv[1:] if a != "--measure"])))
        return
    if args.poll:
        poll(args.poll)
        return
    if args.run == "plan":
        print(json.dumps(run_plan(args.url, args.pipeline)))
        return
    if args.run == "baseline":
        print(json.dumps(run_baseline(args.url, args.sample, args.stored_contacts)))
        return

    size = (args.bookings, args.sailings, args.affected)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as scratch:
        results["SQLite"] = bench_engine(Engine("SQLite", None, size, Path(scratch)), args.baseline_sample,
                                         args.pipeline)
        server = postgres_server(args)
        if server is not None:
            results["PostgreSQL"] = bench_engine(Engine("PostgreSQL", server, size, Path(scratch)),
                                                 args.baseline_sample, args.pipeline)
    lines = table(results)
    print("\n".join(lines + [""] + verdict(results)))
    print(json.dumps(results, indent=1), file=sys.stderr)
    if args.results:
        command = "/work/venv/bin/python bench/bench_plan.py " + " ".join(sys.argv[1:])
        write_results(Path(args.results), lines, command.strip(), verdict(results))


if __name__ == "__main__":
    main()
