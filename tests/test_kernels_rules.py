"""Every rule kernel agrees with its naive twin, and the chain resumes, re-cuts and drains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.kernels import (
    RULE_NAMES,
    AnomalyRule,
    DriftRule,
    Events,
    FlatlineRule,
    RangeRule,
    RateRule,
    RuleChain,
    SensorRules,
    SpikeRule,
    default_rules,
)
from edge_agent.kernels.codes import HIGH, RULE_CODES, SPIKE
from tests.kernels_naive import Batch, Change, interleave, make_series, make_times, run_naive

#: Rules tested on values on a 0.25 grid, so values land exactly on limits and band edges.
GRID_RULES = frozenset({"high", "low", "flatline", "range"})

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@st.composite
def small_rules(draw: st.DrawFn) -> SensorRules:
    """Small-scale settings of every rule (seconds instead of hours) so short series fire."""
    debounce = draw(st.integers(1, 4))
    window = draw(st.sampled_from([3, 5, 7, 9]))
    return SensorRules(
        kind="test.value",
        high=draw(st.sampled_from([(1.25,), (1.25, 2.5, 4.0, 6.25), (0.5, 3.0)])),
        low=draw(st.sampled_from([(), (-1.25, -2.5, -4.0, -6.25), (-0.5,)])),
        hysteresis=draw(st.sampled_from([0.0, 0.25, 1.75])),
        debounce=debounce,
        rate=RateRule(enabled=True, rise=(0.33, 0.71, 1.37), fall=(0.29, 0.83), per_s=1.0,
                      window_s=draw(st.sampled_from([4.3, 9.7])), hysteresis=0.05,
                      debounce=debounce),
        spike=SpikeRule(enabled=True, window=window, k=draw(st.sampled_from([4.3, 7.1])),
                        max_len=draw(st.integers(1, window // 2)), min_dev=0.0137,
                        scale_samples=draw(st.sampled_from([2, 30])), clear_samples=17),
        anomaly=AnomalyRule(enabled=True, z=(2.13, 3.37, 5.11, 7.93), hysteresis=0.61,
                            debounce=debounce, smooth_s=draw(st.sampled_from([0.0, 2.3])),
                            window_s=37.3, var_window_s=draw(st.sampled_from([37.3, 211.0])),
                            warmup_s=draw(st.sampled_from([0.0, 41.3])),
                            min_std=0.0137, clip=2.9,
                            hold_s=draw(st.sampled_from([13.1, 7200.0]))),
        drift=DriftRule(enabled=True, smooth_s=draw(st.sampled_from([0.0, 5.1])),
                        jump_s=draw(st.sampled_from([30.7, 3600.0])), baseline_s=301.0,
                        warmup_s=draw(st.sampled_from([0.0, 61.3])), k=1.31,
                        h=0.0113, min_std=0.0137),
        flatline=FlatlineRule(enabled=True, samples=draw(st.integers(2, 12)),
                              epsilon=draw(st.sampled_from([0.0, 0.25])),
                              rest=draw(st.sampled_from([float("nan"), 0.0]))),
        range=RangeRule(enabled=True, lo=-8.0, hi=8.0, debounce=debounce,
                        clear_samples=draw(st.integers(1, 6))),
    )


@st.composite
def batches(draw: st.DrawFn, max_sensors: int = 3) -> Batch:
    """Several sensors' series (very short to long, NaN at start/middle/end, constant or
    eventful, regular or irregular times) cut into blocks and interleaved."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_sensors = draw(st.integers(1, max_sensors))
    series, times, n_blocks = [], [], []
    for _ in range(n_sensors):
        n = draw(st.one_of(st.integers(0, 3), st.integers(4, 300), st.integers(600, 1500)))
        shape = draw(st.sampled_from(["constant", "noise", "walk", "steps", "spiky", "mixed"]))
        nan_at = draw(st.frozensets(st.sampled_from(["start", "middle", "end"])))
        series.append(make_series(rng, n, shape, nan_at))
        times.append(make_times(rng, n, irregular=draw(st.booleans())))
        n_blocks.append(draw(st.integers(1, 6)))
    return interleave(rng, series, times, n_blocks)


def run_chain(rules: list[SensorRules], batch: Batch, only: list[str] | None) -> Events:
    chain = RuleChain(rules, only=only)
    return chain.process(batch.values, batch.times_ms, batch.block_sensor, batch.block_start)


def assert_same(events: Events, changes: list[Change]) -> None:
    assert np.all(np.diff(events.index) >= 0), "events must come in sample order"
    got = sorted(zip(events.index.tolist(), events.rule.tolist(), events.sensor.tolist(),
                     events.level.tolist(), events.prev.tolist(), events.limit.tolist(),
                     events.score.tolist()))
    want = sorted((c.index, c.rule, c.sensor, c.level, c.prev, c.limit, c.score)
                  for c in changes)
    assert [g[:5] for g in got] == [w[:5] for w in want]
    np.testing.assert_allclose([g[5] for g in got], [w[5] for w in want], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([g[6] for g in got], [w[6] for w in want], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rule", [*RULE_NAMES, None], ids=[*RULE_NAMES, "chain"])
@SETTINGS
@given(batch=batches(), data=st.data())
def test_kernel_matches_naive_twin(rule: str | None, batch: Batch, data: st.DataObject) -> None:
    n_sensors = int(batch.block_sensor.max()) + 1 if len(batch.block_sensor) else 1
    rules = [data.draw(small_rules()) for _ in range(n_sensors)]
    only = None if rule is None else [rule]
    if rule in GRID_RULES:
        batch = dataclasses.replace(batch, values=np.round(batch.values * 4) / 4)
    events = run_chain(rules, batch, only)
    assert_same(events, run_naive(rules, batch.values, batch.times_ms, batch.block_sensor,
                                  batch.block_start, only=only))


def _split(batch: Batch, at_block: int) -> tuple[Batch, Batch, int]:
    cut = int(batch.block_start[at_block])
    first = Batch(batch.values[:cut], batch.times_ms[:cut], batch.block_sensor[:at_block],
                  batch.block_start[:at_block + 1])
    second = Batch(batch.values[cut:], batch.times_ms[cut:], batch.block_sensor[at_block:],
                   batch.block_start[at_block:] - cut)
    return first, second, cut


@settings(max_examples=40, deadline=None, derandomize=True)
@given(batch=batches(), data=st.data())
def test_restart_from_saved_state_gives_the_same_events(batch: Batch, data: st.DataObject) -> None:
    n_sensors = int(batch.block_sensor.max()) + 1 if len(batch.block_sensor) else 1
    rules = [data.draw(small_rules()) for _ in range(n_sensors)]
    whole = run_chain(rules, batch, None)
    first, second, offset = _split(batch, data.draw(st.integers(0, len(batch.block_sensor))))
    before = RuleChain(rules)
    a = before.process(first.values, first.times_ms, first.block_sensor, first.block_start)
    after = RuleChain(rules)  # a new process: only the saved arrays carry over
    after.load_state(before.state_arrays())
    b = after.process(second.values, second.times_ms, second.block_sensor, second.block_start)
    assert np.array_equal(after.levels(), levels_after(rules, batch))
    parts = [(a, 0), (b, offset)]
    got = [(int(e.sensor[i]), int(e.rule[i]), int(e.level[i]), int(e.prev[i]), int(e.index[i]) + o)
           for e, o in parts for i in range(len(e))]
    want = [(int(whole.sensor[i]), int(whole.rule[i]), int(whole.level[i]), int(whole.prev[i]),
             int(whole.index[i])) for i in range(len(whole))]
    # A spike that began before the restart is reported at the sample that came back.
    assert sorted(e[:4] for e in got) == sorted(e[:4] for e in want)
    exact = sorted(e for e in got if e[1] != SPIKE)
    assert exact == sorted(e for e in want if e[1] != SPIKE)


def levels_after(rules: list[SensorRules], batch: Batch) -> np.ndarray:
    chain = RuleChain(rules)
    chain.process(batch.values, batch.times_ms, batch.block_sensor, batch.block_start)
    return chain.levels()


def test_blocks_longer_than_a_chunk_give_the_same_events_as_short_ones() -> None:
    rng = np.random.default_rng(7)
    rules = SensorRules(kind="test.value", high=(1.25, 2.5), hysteresis=0.25, debounce=2,
                        rate=RateRule(enabled=True, rise=(0.33,), window_s=4.3),
                        spike=SpikeRule(enabled=True, window=5, k=4.3, min_dev=0.0137),
                        flatline=FlatlineRule(enabled=True, samples=5),
                        range=RangeRule(enabled=True, lo=-8.0, hi=8.0))
    x = make_series(rng, 20_000, "mixed", frozenset({"middle"}))
    t = make_times(rng, 20_000, irregular=False)
    long = RuleChain([rules]).process(x, t, np.array([0], np.int32), np.array([0, len(x)]))
    starts = np.arange(0, len(x) + 1, 97)
    starts[-1] = len(x)
    short = RuleChain([rules]).process(x, t, np.zeros(len(starts) - 1, np.int32), starts)
    assert len(long) > 50
    for column in ("rule", "level", "prev", "index"):
        assert np.array_equal(getattr(long, column), getattr(short, column))


def test_a_full_event_buffer_never_drops_an_event() -> None:
    rules = SensorRules(kind="test.value", high=(5.0,), debounce=1)
    x = np.tile([0.0, 10.0], 100_000)  # every sample changes the level of `high`
    chain = RuleChain([rules] * 2)
    half = len(x) // 2
    events = chain.process(x, np.arange(len(x)) * 10, np.array([0, 1], np.int32),
                           np.array([0, half, len(x)]))
    assert len(events) == len(x) - 2  # the first sample of each sensor is below the limit
    assert np.array_equal(events.index, np.delete(np.arange(len(x)), [0, half]))
    assert set(events.rule.tolist()) == {HIGH}
    assert np.all(events.level != events.prev)


def test_load_state_refuses_state_of_another_layout() -> None:
    chain = RuleChain([default_rules("pipe.pressure")])
    saved = chain.state_arrays()
    saved["layout"] = saved["layout"] + 1
    with pytest.raises(ValueError, match="layout"):
        chain.load_state(saved)
    with pytest.raises(ValueError, match="lacks"):
        chain.load_state({"levels": saved["levels"]})


def test_load_state_maps_rows_and_relearns_sensors_whose_rules_changed() -> None:
    pressure = default_rules("pipe.pressure")
    x = np.full(10, 0.95)  # beyond high[3]: level 4 after the debounce
    old = RuleChain([pressure, pressure])
    old.process(np.concatenate([x, x]), np.arange(20) * 1000, np.array([0, 1], np.int32),
                np.array([0, 10, 20]))
    changed = dataclasses.replace(pressure, debounce=5)
    new = RuleChain([changed, default_rules("flood.level"), pressure])
    new.load_state(old.state_arrays(), rows=[0, -1, 1])
    levels = new.levels()
    assert levels[0, RULE_CODES["high"]] == 4  # kept, so the raised alert can still clear
    assert levels[1].sum() == 0  # a new sensor starts fresh
    assert levels[2, RULE_CODES["high"]] == 4
    with pytest.raises(ValueError, match="rows"):
        new.load_state(old.state_arrays(), rows=[0, 5, 1])


def test_process_rejects_a_malformed_batch() -> None:
    chain = RuleChain([default_rules("pipe.pressure")])
    with pytest.raises(ValueError, match="block_sensor"):
        chain.process(np.zeros(4), np.zeros(4), np.array([1], np.int32), np.array([0, 4]))
    with pytest.raises(ValueError, match="block_start"):
        chain.process(np.zeros(4), np.zeros(4), np.array([0], np.int32), np.array([0, 5]))
    with pytest.raises(ValueError, match="times_ms"):
        chain.process(np.zeros(4), np.zeros(3), np.array([0], np.int32), np.array([0, 4]))


def test_warming_up_counts_the_sensors_whose_anomaly_rule_still_learns() -> None:
    """A sensor is warming up until its anomaly rule has seen `warmup_s` of data; kinds without
    the rule never are."""
    import numpy as np

    from edge_agent.kernels import RuleChain, rules_from_overrides

    chain = RuleChain([rules_from_overrides("pipe.pressure", {"anomaly": {"warmup_s": 60.0}}),
                       rules_from_overrides("bridge.accel", {})])  # bridge.accel runs no anomaly rule
    assert chain.warming_up() == 1
    n = 31
    values = np.full(2 * n, 0.4)
    times = np.concatenate([np.arange(n) * 1000, np.arange(n) * 1000]).astype(np.int64)
    sensors, starts = np.array([0, 1], dtype=np.int32), np.array([0, n, 2 * n], dtype=np.int64)
    chain.process(values, times, sensors, starts)  # 30 s of data
    assert chain.warming_up() == 1
    chain.process(values, times + n * 1000, sensors, starts)  # 61 s
    assert chain.warming_up() == 0
