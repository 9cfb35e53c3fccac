"""The long fuzz run: the property tests of tests/fuzz with a large example budget, then coverage-guided fuzzing
of the XML and protobuf feed parsers with atheris (libFuzzer) where it is installed.

    python bench/fuzz_long.py                      # 20,000 examples per property, fresh ones each run,
                                                   # then 60 s of atheris per parser (cap, atom, gtfs_rt, sniff)
    python bench/fuzz_long.py --examples 2000 --atheris-seconds 0      # a shorter property run, no atheris
    python bench/fuzz_long.py --properties-only --repeatable           # the same examples as CI, only more

The property half is exactly `NOTIFIER_FUZZ_EXAMPLES=20000 NOTIFIER_FUZZ_RANDOM=1 pytest tests/fuzz -q`; the
planning property is scaled down (a broadcast per example), see tests/fuzz/budget.py. A failure prints the
falsifying example and a `@reproduce_failure` line to paste onto the test.

The atheris half needs `pip install atheris` (a manylinux wheel, no compiler needed). Each target starts from
the real documents in tests/fixtures/feeds and runs in its own process; a crash (any exception but
FeedParseError, or an observation that is not strict JSON or does not round-trip) leaves `crash-<sha1>` in
$NOTIFIER_FUZZ_ARTIFACTS (default /tmp/notifier-fuzz) with the input that caused it, and
`python bench/fuzz_long.py --replay FILE --target cap` shows its traceback. The corpus each target grows is kept
there too (corpus-<target>/), so a second run starts where the first stopped.

Prints, per half, how long it ran and what it found; exits non-zero when anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
FIXTURES = CHECKOUT / "tests" / "fixtures" / "feeds"
ARTIFACTS = Path(os.environ.get("NOTIFIER_FUZZ_ARTIFACTS") or Path(tempfile.gettempdir()) / "notifier-fuzz")
TARGETS = {
    "cap": ["cap/*/*.xml", "cap/*/*.cap"],
    "atom": ["cap/*/*.atom", "handmade/*.atom", "handmade/*.rss"],
    "gtfs_rt": ["gtfs-rt/*/*.asciipb", "handmade/*.asciipb"],
    "sniff": ["*/*.json", "*/*.csv", "*/*/*.json", "cap/*/*", "handmade/*"],
}


# --- the property tests with a large budget ----------------------------------------------------------------------

def run_properties(examples: int, repeatable: bool) -> bool:
    """pytest tests/fuzz with the raised budget; True when it passed."""
    env = {**os.environ, "NOTIFIER_FUZZ_EXAMPLES": str(examples)}
    if not repeatable:
        env["NOTIFIER_FUZZ_RANDOM"] = "1"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz"],
                          cwd=CHECKOUT, env=env, check=False)
    print(f"properties: {examples} examples per test ({'repeatable' if repeatable else 'fresh'}), "
          f"{time.monotonic() - started:.0f} s, {'passed' if done.returncode == 0 else 'FAILED'}", flush=True)
    return done.returncode == 0


# --- atheris: coverage-guided fuzzing of the parsers ---------------------------------------------------------------

def seed_corpus(target: str) -> Path:
    """The target's corpus folder, seeded with the real documents (GTFS-RT also in its binary wire form)."""
    from google.protobuf import text_format
    from google.transit import gtfs_realtime_pb2

    corpus = ARTIFACTS / f"corpus-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    for pattern in TARGETS[target]:
        for path in FIXTURES.glob(pattern):
            if not path.is_file():
                continue
            data = path.read_bytes()
            (corpus / f"seed-{path.name}").write_bytes(data)
            if path.suffix == ".asciipb":
                binary = text_format.Parse(data.decode(), gtfs_realtime_pb2.FeedMessage()).SerializeToString()
                (corpus / f"seed-{path.stem}.pb").write_bytes(binary)
    return corpus


def run_atheris(target: str, seconds: int) -> bool:
    """One target in its own process (libFuzzer exits the process on a crash); True when nothing crashed."""
    corpus = seed_corpus(target)
    started = time.monotonic()
    done = subprocess.run([sys.executable, __file__, "--worker", target, f"-max_total_time={seconds}",
                           f"-artifact_prefix={ARTIFACTS}/", "-max_len=65536", "-print_final_stats=1",
                           str(corpus)], cwd=CHECKOUT, check=False, capture_output=True, text=True)
    stats = dict(line[6:].split(":", 1) for line in done.stderr.splitlines() if line.startswith("stat::"))
    runs, rate = (int(stats.get(name, "0").strip() or 0) for name in ("number_of_executed_units",
                                                                      "average_exec_per_sec"))
    coverage = next((line.split("cov: ")[1].split()[0] for line in reversed(done.stderr.splitlines())
                     if "cov: " in line), "?")
    print(f"atheris {target}: {time.monotonic() - started:.0f} s, {runs:,} inputs ({rate:,}/s), {coverage} edges "
          f"covered, {'no crash' if done.returncode == 0 else 'CRASH (input saved in ' + str(ARTIFACTS) + ')'}",
          flush=True)
    if done.returncode != 0:
        print("\n".join(done.stderr.splitlines()[-40:]), file=sys.stderr)
    return done.returncode == 0


def checked_parse(target: str, data: bytes) -> None:
    """Parse as the target does; anything but FeedParseError, or an observation that would not store, raises."""
    from notifier.feeds import atom
    from notifier.feeds import cap
    from notifier.feeds import gtfs_rt
    from notifier.feeds import FeedParseError, Observation
    from notifier.feeds.sniff import parse_any

    parsers = {"cap": lambda: cap.parse(data, source="fuzz"), "atom": lambda: atom.parse(data),
               "gtfs_rt": lambda: gtfs_rt.parse(data), "sniff": lambda: parse_any(data, source="fuzz")[1]}
    try:
        observations = parsers[target]()
        if target == "atom":
            atom.parse_index(data)
    except FeedParseError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"a feed error must be one line: {exc!r}") from None
        return
    for observation in observations:
        stored = observation.to_json()
        again = Observation.from_json(json.loads(json.dumps(stored, allow_nan=False)))
        if again.to_json() != stored:
            raise AssertionError(f"observation {observation.external_id!r:.60} does not round-trip")
        for moment in (observation.sent, observation.onset, observation.effective, observation.expires):
            if moment is not None and moment.utcoffset() is None:
                raise AssertionError("a naive datetime left the parser")


def worker(target: str, libfuzzer_args: list[str]) -> None:
    """The atheris entry: instrument the parsers, then let libFuzzer drive `checked_parse`."""
    import atheris

    sys.path.insert(0, str(CHECKOUT))
    with atheris.instrument_imports(include=["notifier", "defusedxml"]):
        # Imported here, before `checked_parse` needs them, so that libFuzzer sees their branches.
        import notifier.feeds.atom
        import notifier.feeds.cap
        import notifier.feeds.dcsa
        import notifier.feeds.gtfs_rt
        import notifier.feeds.nws
        import notifier.feeds.port_status
        import notifier.feeds.sniff
    atheris.Setup([sys.argv[0], *libfuzzer_args], lambda data: checked_parse(target, data))
    atheris.Fuzz()


def replay(target: str, path: str) -> None:
    """Run one saved input through the target and show what it raises."""
    sys.path.insert(0, str(CHECKOUT))
    checked_parse(target, Path(path).read_bytes())
    print(f"{path}: read or refused cleanly")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="examples per property test")
    parser.add_argument("--repeatable", action="store_true", help="the fixed examples of CI, only more of them")
    parser.add_argument("--properties-only", action="store_true", help="skip atheris")
    parser.add_argument("--atheris-seconds", type=int, default=60, help="seconds per atheris target (0: none)")
    parser.add_argument("--target", choices=sorted(TARGETS), action="append", help="atheris target(s)")
    parser.add_argument("--replay", metavar="FILE", help="run one saved crash input through --target")
    parser.add_argument("--worker", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(args.worker, rest)
        return 0
    if args.replay:
        replay((args.target or ["sniff"])[0], args.replay)
        return 0
    passed = run_properties(args.examples, args.repeatable)
    if args.properties_only or args.atheris_seconds <= 0:
        return 0 if passed else 1
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed (pip install atheris): coverage-guided fuzzing skipped")
        return 0 if passed else 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for target in args.target or sorted(TARGETS):
        passed = run_atheris(target, args.atheris_seconds) and passed
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
