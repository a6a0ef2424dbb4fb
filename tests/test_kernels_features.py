"""Window features for Summaries, and the dominant frequency of bridge vibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.kernels import WindowAccumulator
from tests.kernels_naive import Batch, window_features
from tests.test_kernels_rules import batches


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(batches(max_sensors=3), min_size=1, max_size=3))
def test_window_statistics_match_the_naive_ones(parts: list[Batch]) -> None:
    acc = WindowAccumulator(3)
    seen: list[list[float]] = [[], [], []]
    for batch in parts:
        acc.add(batch.values, batch.block_sensor, batch.block_start)
        for b, s in enumerate(batch.block_sensor):
            seen[s] += batch.values[batch.block_start[b]:batch.block_start[b + 1]].tolist()
    features = acc.take()
    for s in range(3):
        n, lo, hi, mean, last, rms = window_features(seen[s])
        assert features.n[s] == n
        got = [features.min[s], features.max[s], features.mean[s], features.last[s],
               features.rms[s]]
        np.testing.assert_allclose(got, [lo, hi, mean, last, rms], rtol=1e-9, atol=1e-12)
        assert math.isnan(features.f_peak[s]) and math.isnan(features.f_shift[s])
    empty = acc.take()  # a new window starts empty
    assert not empty.n.any() and np.isnan(empty.mean).all()


def vibration(f_hz: float, seconds: float, rate_hz: float, seed: int) -> np.ndarray:
    """Bridge deck acceleration: gravity, a first mode at `f_hz`, a weaker second mode, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (9.81 + 0.02 * np.sin(2 * np.pi * f_hz * t + rng.uniform(0, 6))
            + 0.008 * np.sin(2 * np.pi * 2.7 * f_hz * t) + rng.normal(0, 0.01, len(t)))


def one_block(acc: WindowAccumulator, x: np.ndarray, sensor: int = 0,
              times: np.ndarray | None = None) -> None:
    acc.add(x, np.array([sensor], np.int32), np.array([0, len(x)]), times)


def test_the_dominant_frequency_of_a_bridge_is_found_within_half_a_percent() -> None:
    acc = WindowAccumulator(2, kinds=["bridge.accel", "bridge.strain"], sample_rate_hz=100.0,
                            band_hz=(1.0, 10.0))
    one_block(acc, vibration(3.17, 60, 100.0, seed=1))
    one_block(acc, np.full(100, 50.0), sensor=1)
    features = acc.take()
    assert features.f_peak[0] == pytest.approx(3.17, rel=0.005)
    assert math.isnan(features.f_peak[1])  # not a vibration sensor
    assert features.n[0] == 6000 and features.mean[0] == pytest.approx(9.81, abs=0.01)


def test_a_three_percent_drop_in_frequency_shows_as_f_shift() -> None:
    acc = WindowAccumulator(1, kinds=["bridge.accel"], sample_rate_hz=50.0, baseline_windows=3)
    shifts = []
    for window, f in enumerate([2.40, 2.40, 2.40, 2.40, 2.40 * 0.97]):
        # the window arrives in blocks of 1 s
        x = vibration(f, 120, 50.0, seed=window)
        for block in np.split(x, 120):
            one_block(acc, block)
        shifts.append(acc.take().f_shift[0])
    assert all(math.isnan(s) for s in shifts[:2])  # still learning the baseline
    assert abs(shifts[3]) < 0.003
    assert shifts[4] == pytest.approx(-0.03, abs=0.003)


def test_the_sample_rate_is_learnt_from_block_times_when_not_configured() -> None:
    acc = WindowAccumulator(1, kinds=["bridge.accel"])
    x = vibration(4.0, 60, 200.0, seed=3)
    times = 1_700_000_000_000 + np.arange(len(x)) * 5
    for part, t in zip(np.split(x, 60), np.split(times, 60)):
        one_block(acc, part, times=t)
    assert acc.take().f_peak[0] == pytest.approx(4.0, rel=0.01)


def test_no_frequency_without_a_rate_or_with_too_few_samples() -> None:
    unknown = WindowAccumulator(1, kinds=["bridge.accel"])
    one_block(unknown, vibration(3.0, 30, 100.0, seed=4))
    assert math.isnan(unknown.take().f_peak[0])
    short = WindowAccumulator(1, kinds=["bridge.accel"], sample_rate_hz=100.0)
    one_block(short, vibration(3.0, 1.5, 100.0, seed=4))  # under two periods of 1 Hz
    assert math.isnan(short.take().f_peak[0])


def test_missing_samples_do_not_hide_the_frequency() -> None:
    acc = WindowAccumulator(1, kinds=["bridge.accel"], sample_rate_hz=100.0)
    x = vibration(5.5, 60, 100.0, seed=5)
    x[np.random.default_rng(5).random(len(x)) < 0.02] = np.nan
    one_block(acc, x)
    features = acc.take()
    assert features.f_peak[0] == pytest.approx(5.5, rel=0.005)
    assert features.n[0] == np.isfinite(x).sum()


def test_a_restart_keeps_the_learnt_baseline() -> None:
    acc = WindowAccumulator(1, kinds=["bridge.accel"], sample_rate_hz=50.0, baseline_windows=1)
    one_block(acc, vibration(2.0, 60, 50.0, seed=6))
    acc.take()
    again = WindowAccumulator(1, kinds=["bridge.accel"], sample_rate_hz=50.0,
                              baseline_windows=1)
    again.load_state(acc.state_arrays())
    one_block(again, vibration(1.9, 60, 50.0, seed=7))
    assert again.take().f_shift[0] == pytest.approx(-0.05, abs=0.005)
    with pytest.raises(ValueError, match="baseline_sum"):
        again.load_state({})


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="kinds"):
        WindowAccumulator(2, kinds=["bridge.accel"])
    with pytest.raises(ValueError, match="band_hz"):
        WindowAccumulator(1, band_hz=(5.0, 1.0))
    acc = WindowAccumulator(1)
    with pytest.raises(ValueError, match="block_sensor"):
        acc.add(np.zeros(3), np.array([1], np.int32), np.array([0, 3]))
