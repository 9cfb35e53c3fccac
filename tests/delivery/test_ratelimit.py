"""The pacer never lets a sender go faster than its configured segments (or emails) per second, and keeps up
with it when there is work; per-sender overrides and the split between dispatch processes are read from config."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.store.settings import ConfigError
from notifier.delivery.ratelimit import Pacer, parse_sender_rates, rate_for


def most_in_any_window(slots: list[tuple[float, int]], window: float) -> int:
    """The largest total cost whose start falls inside one half-open window of `window` seconds."""
    best = 0
    for start, _ in slots:
        best = max(best, sum(cost for moment, cost in slots if start <= moment < start + window))
    return best


def paced(pacer: Pacer, clock: list[float], cost: int, stall: float = 0.0) -> float:
    """Send one message as a dispatch thread does, on a fake clock: wait for its slot, stall (a slow thread, a
    database round), then wait for room in the window; returns the moment it goes."""
    start, generation = pacer.reserve(cost)
    clock[0] = max(clock[0], start) + stall
    while (wait := pacer.admit(cost, generation)):
        clock[0] += wait
    return clock[0]


@given(rate=st.sampled_from([1.0, 3.0, 10.0, 25.0, 80.0]),
       costs=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=120),
       arrivals=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=120),
       stalls=st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.2, 0.6, 1.5]), min_size=1, max_size=120))
def test_no_one_second_window_holds_more_than_the_rate_even_after_stalls(rate, costs, arrivals, stalls):
    clock = [0.0]
    pacer = Pacer(rate, clock=lambda: clock[0])
    sends = []
    for cost, arrival, stall in zip(costs, sorted(arrivals * 2), stalls * 120):
        clock[0] = max(clock[0], arrival)
        sends.append((paced(pacer, clock, cost, stall), cost))
    assert most_in_any_window(sends, 1.0) <= max(rate, max(costs))  # a message larger than the rate goes alone


def test_slots_due_together_after_a_stall_are_spread_out_not_sent_in_a_burst():
    clock = [5.0]
    pacer = Pacer(20.0, clock=lambda: clock[0])
    slots = [pacer.reserve(1) for _ in range(40)]  # eight threads took their slots ahead ...
    clock[0] = slots[-1][0] + 0.6  # ... and every one of them woke late
    sends = []
    for _, generation in slots:
        while (wait := pacer.admit(1, generation)):
            clock[0] += wait
        sends.append((clock[0], 1))
    assert most_in_any_window(sends, 1.0) == 20


def test_a_new_pacer_leaves_room_for_a_dispatcher_killed_a_moment_ago():
    clock = [100.0]
    pacer = Pacer(10.0, clock=lambda: clock[0])
    start, generation = pacer.reserve(1)
    assert start == 100.0 and pacer.admit(1, generation) == pytest.approx(1.03)


def test_a_busy_sender_is_kept_at_its_rate():
    clock = [0.0]
    pacer = Pacer(10.0, clock=lambda: clock[0])
    starts = [pacer.reserve(2)[0] for _ in range(50)]  # 100 segments wanted at once
    assert starts[0] == 0.0
    assert starts[-1] == pytest.approx(9.8)  # 49 * 2 segments / 10 per second: not a moment later
    assert all(b - a == pytest.approx(0.2) for a, b in zip(starts, starts[1:]))


def test_an_idle_sender_does_not_save_up_a_burst():
    clock = [0.0]
    pacer = Pacer(5.0, clock=lambda: clock[0])
    pacer.reserve(1)
    clock[0] = 60.0  # a quiet minute
    starts = [pacer.reserve(1)[0] for _ in range(6)]
    assert starts == pytest.approx([60.0, 60.2, 60.4, 60.6, 60.8, 61.0])


def test_retry_after_pauses_the_sender_and_voids_slots_already_taken():
    clock = [0.0]
    pacer = Pacer(10.0, clock=lambda: clock[0])
    taken = [pacer.reserve(1) for _ in range(3)]
    pacer.pause(5.0)
    assert not any(pacer.still_valid(generation) for _, generation in taken)
    start, generation = pacer.reserve(1)
    assert start == pytest.approx(5.0)
    assert pacer.still_valid(generation)


def test_a_waiting_sender_gives_up_when_told_to_stop():
    pacer = Pacer(0.5)
    pacer.reserve(1)  # the next slot is two seconds away
    stop = threading.Event()
    stop.set()
    assert pacer.acquire(1, stop) is False


def test_per_sender_rates_and_worker_share(tmp_settings):
    settings = dataclasses.replace(tmp_settings, sms_segments_per_second=10.0,
                                   sms_sender_rates=("+15005550006=3", "MG0123=40.5"), dispatch_workers=2)
    assert rate_for(settings, "sms_segments_per_second", "+15005550006") == 1.5
    assert rate_for(settings, "sms_segments_per_second", "MG0123") == 20.25
    assert rate_for(settings, "sms_segments_per_second", "+15550000000") == 5.0
    assert rate_for(settings, None, "file") is None
    assert rate_for(dataclasses.replace(settings, emails_per_second=0.0), "emails_per_second", "relay:25") is None


@pytest.mark.parametrize("entry", ["+15005550006", "=3", "+15005550006=fast", "+15005550006=0"])
def test_a_malformed_sender_rate_is_a_clear_config_error(entry):
    with pytest.raises(ConfigError, match="SENDER=SEGMENTS_PER_SECOND"):
        parse_sender_rates([entry])


def test_sends_counted_before_a_stall_are_counted_again_from_its_end():
    clock = [10.0]
    pacer = Pacer(4.0, clock=lambda: clock[0])
    clock[0] = 12.0  # the start window is over
    for _ in range(4):
        assert pacer.admit(1, pacer.reserve(1)[1]) == 0.0  # counted at 12.0 ...
    clock[0] = 12.7
    pacer.stalled()  # ... but the process was frozen before the requests went out: they arrive from 12.7
    clock[0] = 13.2
    assert pacer.admit(1, pacer.reserve(1)[1]) == pytest.approx(12.7 + 1.03 - 13.2)
