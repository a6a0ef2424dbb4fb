"""Reconnect pacing: delays grow, stop at the cap, stay inside their jitter band, repeat under a seed."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifeline.backoff import LogThrottle, backoff_delays, held_note


def take(n: int, **kwargs: object) -> list[float]:
    return list(itertools.islice(backoff_delays(**kwargs), n))  # type: ignore[arg-type]


def test_without_jitter_delays_double_up_to_the_cap() -> None:
    assert take(9, initial_s=0.5, cap_s=30.0, jitter=0.0) == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_initial_delay_above_the_cap_is_capped() -> None:
    assert take(3, initial_s=5.0, cap_s=0.2, jitter=0.0) == [0.2, 0.2, 0.2]


@given(initial=st.floats(0.001, 10), cap=st.floats(0.001, 100), factor=st.floats(1, 4),
       jitter=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_every_delay_lies_in_its_jitter_band_below_the_cap(initial: float, cap: float, factor: float,
                                                            jitter: float, seed: int) -> None:
    delays = take(40, initial_s=initial, cap_s=cap, factor=factor, jitter=jitter, rng=random.Random(seed))
    ceiling = min(initial, cap)
    for delay in delays:
        assert 0 < delay <= cap
        assert ceiling * (1 - jitter) - 1e-12 <= delay <= ceiling + 1e-12
        ceiling = min(ceiling * factor, cap)


def test_equal_jitter_keeps_at_least_half_the_ceiling_and_spreads_retries() -> None:
    delays = take(200, initial_s=1.0, cap_s=1.0, jitter=0.5, rng=random.Random(7))
    assert min(delays) >= 0.5 and max(delays) <= 1.0
    assert max(delays) - min(delays) > 0.4, "a fleet of agents would retry in lockstep"


def test_jittered_delays_still_grow_on_average() -> None:
    delays = take(8, initial_s=0.5, cap_s=1000.0, jitter=0.5, rng=random.Random(1))
    assert all(later > earlier for earlier, later in zip(delays[::2], delays[2::2]))


def test_same_seed_gives_the_same_delays_and_other_seeds_differ() -> None:
    first = take(30, rng=random.Random(42))
    assert first == take(30, rng=random.Random(42))
    assert first != take(30, rng=random.Random(43))


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"cap_s": -1}, {"factor": 0.5},
                                    {"jitter": 1.5}, {"jitter": -0.1}])
def test_nonsense_parameters_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        next(backoff_delays(**kwargs))  # type: ignore[arg-type]


def test_log_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = LogThrottle(60.0, clock=lambda: now[0])
    assert throttle.allow("refused") == 0
    assert throttle.allow("refused") is None
    assert throttle.allow("refused") is None
    assert throttle.allow("disk-full") == 0, "keys are throttled independently"
    now[0] += 60.0
    assert throttle.allow("refused") == 2
    assert throttle.allow("refused") is None
    throttle.reset("refused")
    assert throttle.allow("refused") == 0
    assert held_note(0) == "" and "2 similar messages held back" in held_note(2)


def test_log_throttle_stays_bounded_under_endless_distinct_keys() -> None:
    """Keys can come off the wire (an unknown sensor id per RawBlock): memory and lines stay bounded."""
    now = [0.0]
    throttle = LogThrottle(60.0, clock=lambda: now[0], max_keys=100)
    let_through = sum(throttle.allow(f"unknown S-{i}") is not None for i in range(100_000))
    assert throttle.tracked == 100
    assert let_through == 101, "one line per tracked key plus one for all the others"
    assert throttle.allow("unknown S-5") is None, "tracked keys stay throttled"
    now[0] += 60.0
    assert throttle.allow("unknown S-5") == 1, "a tracked key still reports what it held back"
    fresh = [throttle.allow(f"fresh {i}") for i in range(150)]
    assert fresh[:99] == [0] * 99, "keys past their interval make room, oldest first"
    assert fresh[99] == 100_000 - 101, "then the overflow's line, counting the keys it held back"
    assert fresh[100:] == [None] * 50
    assert throttle.tracked == 100 and throttle.evicted == 99


def test_log_throttle_overflow_key_reports_what_it_held_back() -> None:
    now = [0.0]
    throttle = LogThrottle(10.0, clock=lambda: now[0], max_keys=1)
    assert throttle.allow("a") == 0
    assert throttle.allow("b") == 0   # overflow's first line
    assert throttle.allow("c") is None
    assert throttle.allow("d") is None
    now[0] += 10.0
    assert throttle.allow("e") == 0, "a is past its interval: evicted, e takes its place"
    assert throttle.allow("f") == 2, "the overflow's next line counts c and d"
    with pytest.raises(ValueError):
        LogThrottle(max_keys=0)
