"""How many examples each property test tries: a small fixed budget in the normal suite, more for the long run.

    NOTIFIER_FUZZ_EXAMPLES=20000    every property test tries at least this many examples (scaled down for the
                                    ones that plan a whole broadcast per example)
    NOTIFIER_FUZZ_RANDOM=1          explore new examples on each run instead of the fixed, repeatable ones

Without either, every run tries the same examples (derandomized), so a failure in CI reproduces locally.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def examples(default: int, scale: float = 1.0) -> int:
    """The example budget: `default`, or NOTIFIER_FUZZ_EXAMPLES x `scale` when that is larger."""
    raised = int(os.environ.get("NOTIFIER_FUZZ_EXAMPLES", "0") or 0)
    return max(default, int(raised * scale))


def fuzz(default: int, scale: float = 1.0, **extra) -> settings:
    """Hypothesis settings for one property test: fixed budget, no deadline, no example database."""
    randomised = os.environ.get("NOTIFIER_FUZZ_RANDOM", "") not in ("", "0")
    return settings(max_examples=examples(default, scale), deadline=None, derandomize=not randomised,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, *extra.pop("suppress", [])], **extra)
