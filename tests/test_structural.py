"""Structural monitoring: modal frequencies from averaged spectra, and the window rules
`trend` and `freq_shift` on the summary stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.kernels import rules_from_overrides
from edge_agent.kernels.features import (
    SpectrumSettings,
    WindowAccumulator,
    WindowFeatures,
    averaged_spectrum,
    pick_peaks,
)
from edge_agent.kernels.structural import WindowRules, window_rules_step
from tests.kernels_naive import WindowRuleNaive, pick_peaks_naive

FS = 100.0
WINDOW = 6000  # 60 s at 100 Hz
DAY_WINDOWS = 1440


def resonator(f_hz: float, zeta: float, n: int, rng: np.random.Generator,
              fs: float = FS) -> np.ndarray:
    """Unit-ish response of a lightly damped mode to white noise (traffic and wind)."""
    w = 2 * math.pi * f_hz / fs
    r = math.exp(-zeta * w)
    y = scipy.signal.lfilter([1.0], [1.0, -2 * r * math.cos(w), r * r], rng.normal(size=n))
    return y / np.std(y)


def deck(n: int, seed: int, modes: tuple[float, ...] = (10.81, 23.4, 37.0),
         fs: float = FS) -> np.ndarray:
    """A deck accelerometer: three modes (the first strongest) and sensor noise, in m/s2."""
    rng = np.random.default_rng(seed)
    amps = (0.02, 0.008, 0.004)
    x = sum(a * resonator(f, 0.01, n, rng, fs) for a, f in zip(amps, modes))
    return x + 0.002 * rng.normal(size=n)


def feed(acc: WindowAccumulator, x: np.ndarray, times: np.ndarray | None = None) -> None:
    acc.add(x, np.array([0], np.int32), np.array([0, len(x)]), times)


def welch_reference(x: np.ndarray, fs: float = FS) -> float:
    """The strongest peak of scipy's Welch spectrum (1024-sample segments) in 0.5-40 Hz,
    refined by a parabola through the log power."""
    f, p = scipy.signal.welch(x, fs, nperseg=1024)
    k = int(np.argmax(np.where((f >= 0.5) & (f <= 0.4 * fs), p, 0.0)))
    a, b, c = np.log(p[k - 1:k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * f[1])


# --------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("fs", [50.0, 100.0, 200.0])
def test_the_averaged_spectrum_is_scipys_welch(fs: float) -> None:
    x = deck(int(60 * fs), seed=int(fs), fs=fs, modes=(3.1, 7.7, 12.0))
    spectrum = averaged_spectrum(x, fs, SpectrumSettings())
    nperseg = 1 << math.ceil(math.log2(10 * fs))
    _, reference = scipy.signal.welch(x, fs, nperseg=nperseg)
    assert spectrum is not None and spectrum.bin_hz == fs / nperseg
    np.testing.assert_allclose(spectrum.psd, reference, rtol=1e-9)


def test_a_mode_near_10_8_hz_is_within_0_1_hz_of_welch_in_nine_windows_of_ten() -> None:
    acc = WindowAccumulator(1, kinds=["bridge.accel"], sample_rate_hz=FS)
    x = deck(60 * WINDOW, seed=1)
    errors, tracked = [], []
    for w in range(60):
        window = x[w * WINDOW:(w + 1) * WINDOW]
        feed(acc, window)
        features = acc.take(duration_ms=60_000)
        errors.append(features.modes["f1"][0] - welch_reference(window))
        tracked.append([features.modes[f"f{m}"][0] for m in (1, 2, 3)])
    assert np.mean(np.abs(errors) <= 0.1) >= 0.9
    modes = np.nanmedian(np.array(tracked), axis=0)
    np.testing.assert_allclose(modes, [10.81, 23.4, 37.0], atol=0.15)  # each mode kept its place
    assert set(features.modes) == {f"{c}{m}" for c in ("f", "zeta", "amp") for m in (1, 2, 3)}
    assert 0.0 < features.modes["zeta1"][0] < 0.05  # a rough damping ratio of a 1 % mode


def test_the_default_band_follows_the_sample_rate() -> None:
    assert SpectrumSettings().band(100.0, 100.0 / 1024) == (0.5, 40.0)
    assert SpectrumSettings().band(20.0, 0.5) == (1.0, 8.0)
    assert SpectrumSettings(band_hz=(2.0, 12.0)).band(100.0, 0.1) == (2.0, 12.0)
    with pytest.raises(ValueError, match="spectrum.band_hz"):
        rules_from_overrides("bridge.accel", {"spectrum.band_hz": [5.0, 1.0]})
    rules = rules_from_overrides("bridge.accel", {"spectrum": {"modes": 2, "method": "periodogram"}})
    assert (rules.spectrum.modes, rules.spectrum.method, rules.spectrum.enabled) == (
        2, "periodogram", True)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(power=st.lists(st.floats(-3.0, 3.0), min_size=5, max_size=60),
       prominence=st.floats(0.0, 2.0), separation=st.integers(1, 6),
       max_peaks=st.integers(1, 6), lo=st.integers(0, 10), hi=st.integers(0, 70))
def test_peak_picking_matches_the_naive_definition(power: list[float], prominence: float,
                                                   separation: int, max_peaks: int, lo: int,
                                                   hi: int) -> None:
    log_power = np.array(power)
    out = np.empty(max_peaks, dtype=np.int64)
    count = pick_peaks(log_power, lo, hi, prominence, separation, np.empty(len(power)), out)
    assert out[:count].tolist() == pick_peaks_naive(power, lo, hi, prominence, separation,
                                                    max_peaks)


def test_a_nan_burst_leaves_the_frequency_and_half_a_window_gives_none_and_is_counted() -> None:
    acc = WindowAccumulator(1, kinds=["bridge.accel"], sample_rate_hz=FS)
    x = deck(2 * WINDOW, seed=2)
    clean = x[:WINDOW].copy()
    burst = clean.copy()
    burst[1500:2500] = np.nan  # a 10 s NaN burst
    feed(acc, clean)
    f_clean = acc.take(duration_ms=60_000).modes["f1"][0]
    feed(acc, burst)
    f_burst = acc.take(duration_ms=60_000).modes["f1"][0]
    assert f_burst == pytest.approx(f_clean, abs=0.1)
    feed(acc, x[WINDOW:WINDOW + WINDOW // 2 - 500])  # under half of the window arrived
    assert math.isnan(acc.take(duration_ms=60_000).modes["f1"][0])
    assert acc.counters["spectra_skipped"] == 1


def test_a_changed_sample_rate_gives_no_frequency_for_a_window_and_is_counted() -> None:
    acc = WindowAccumulator(1, kinds=["bridge.accel"])  # rate learnt from block times
    t0 = 1_700_000_000_000
    blocks_100 = deck(WINDOW, seed=3)
    feed(acc, blocks_100, t0 + np.arange(WINDOW) * 10)
    f_100 = acc.take(duration_ms=60_000).modes["f1"][0]
    assert f_100 == pytest.approx(10.81, abs=0.15)
    slow = deck(3000, seed=4, fs=50.0, modes=(10.81, 17.0, 23.0))  # the sensor now sends 50 Hz
    for _ in range(2):
        feed(acc, slow, t0 + np.arange(3000) * 20)
        features = acc.take(duration_ms=60_000)
    assert acc.counters["rate_changes"] == 1  # the first 50 Hz window gave none
    assert features.modes["f1"][0] == pytest.approx(10.81, abs=0.15)  # then the new rate holds


# --------------------------------------------------------------------------- window rules


@settings(max_examples=100, deadline=None, derandomize=True)
@given(z=st.lists(st.lists(st.one_of(st.floats(-20, 20), st.just(math.nan)), min_size=3,
                           max_size=3), min_size=1, max_size=40),
       sustain=st.integers(1, 4), hysteresis=st.floats(0.0, 2.0))
def test_the_window_rule_kernel_matches_the_naive_machine(z: list[list[float]], sustain: int,
                                                          hysteresis: float) -> None:
    limits = np.array([[3.0, 5.0, 8.0, 12.0], [2.0, 4.0, np.inf, np.inf],
                       [4.0, 4.0, 6.0, 9.0]])
    n_limits = np.array([4, 2, 4], dtype=np.int64)
    naive = [WindowRuleNaive(limits[r, :n_limits[r]].tolist(), hysteresis, sustain)
             for r in range(3)]
    counters, levels = np.zeros((3, 4), np.int64), np.zeros(3, np.int8)
    cusum, start = np.zeros((3, 2)), np.zeros((3, 2), np.int64)
    changed, prev = np.zeros(3, np.int64), np.zeros(3, np.int8)
    for w, row in enumerate(z):
        values = np.array(row)
        n = window_rules_step(values, np.ones(3, np.bool_), limits, n_limits,
                              np.full(3, hysteresis), np.full(3, sustain, np.int64), counters,
                              levels, cusum, start, w * 60_000, changed, prev)
        got = {int(changed[i]): (int(levels[changed[i]]), int(prev[i])) for i in range(n)}
        want = {r: out for r in range(3) if (out := naive[r].feed(row[r], w * 60_000))}
        assert got == want
        assert start.tolist() == [m.start for m in naive]


def window(mean: float | np.ndarray, n_sensors: int = 1, **modes: float) -> WindowFeatures:
    """Features of one window with the given means (and mode frequencies of sensor 0)."""
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (n_sensors,)).copy()
    nan = np.full(n_sensors, math.nan)
    columns = {k: np.array([v] + [math.nan] * (n_sensors - 1)) for k, v in modes.items()}
    return WindowFeatures(n=np.full(n_sensors, 6000), min=m, max=m, mean=m, last=m, rms=m,
                          f_peak=nan, f_shift=nan, modes=columns)


def run_trend(values: np.ndarray, kind: str = "bridge.strain", **overrides: object) -> list:
    rules = WindowRules([rules_from_overrides(kind, overrides)], ids=["S"], sites=["span"],
                        window_s=60.0)
    events = []
    for w, v in enumerate(values):
        events += [(w, e) for e in rules.step(window(v), w * 60_000, (w + 1) * 60_000)]
    return events


def healthy_strain(days: int, seed: int) -> np.ndarray:
    """Window means of a strain gauge: a daily thermal cycle of 15 microstrain that varies from
    day to day, traffic and noise."""
    rng = np.random.default_rng(seed)
    w = np.arange(days * DAY_WINDOWS)
    swing = 15.0 * (1 + 0.15 * np.repeat(rng.normal(size=days), DAY_WINDOWS))
    return 100.0 + swing * np.cos(2 * np.pi * w / DAY_WINDOWS) + rng.normal(0, 1.0, len(w))


def test_trend_raises_nothing_on_two_weeks_of_healthy_strain() -> None:
    assert run_trend(healthy_strain(14, seed=5)) == []


def test_trend_finds_a_settlement_step_with_its_onset_and_size() -> None:
    x = healthy_strain(3, seed=6)
    step_at = 2 * DAY_WINDOWS + 300
    x[step_at:] += 120.0  # a support settles: the mean strain moves by about 7.5 sd
    events = run_trend(x)
    first_w, first = events[0]
    assert first.rule == "trend" and first.level >= 1 and first.prev == 0
    assert step_at <= first_w <= step_at + 5  # `sustain` windows
    assert first.extra["onset_ts"] == step_at * 60_000
    assert first.extra["size"] == pytest.approx(120.0, abs=20.0)
    assert first.extra["baseline"] == pytest.approx(100.0, abs=25.0)
    assert max(e.level for _, e in events) >= 2


def test_trend_finds_a_slow_ramp_long_after_the_reference() -> None:
    x = healthy_strain(20, seed=7)
    start = 10 * DAY_WINDOWS
    x[start:] += np.minimum(np.arange(len(x) - start) / (7 * DAY_WINDOWS), 1.0) * 120.0  # a week
    events = run_trend(x)
    assert events and events[0][1].level == 1
    assert start < events[0][0] < start + 4 * DAY_WINDOWS
    assert start - DAY_WINDOWS <= events[0][1].extra["onset_ts"] / 60_000 <= events[0][0]


def test_freq_shift_follows_temperature_and_finds_a_two_percent_drop() -> None:
    rng = np.random.default_rng(8)
    days = 6
    w = np.arange(days * DAY_WINDOWS)
    temp = 15 + 6 * np.cos(2 * np.pi * w / DAY_WINDOWS) + np.repeat(rng.normal(0, 3, days),
                                                                    DAY_WINDOWS)
    f1 = 10.8 * (1 - 0.002 * (temp - 15)) + rng.normal(0, 0.01, len(w))
    damage_at = 4 * DAY_WINDOWS + 100
    f1[damage_at:] *= 0.98
    rules = [rules_from_overrides("bridge.accel", {"freq_shift.temperature": "T"}),
             rules_from_overrides("tunnel.temp", {})]
    machine = WindowRules(rules, ids=["A", "T"], sites=["deck", "deck"], window_s=60.0)
    events = []
    for i in range(len(w)):
        features = window(np.array([0.0, temp[i]]), n_sensors=2, f1=f1[i], f2=25.0, f3=40.0)
        events += [(i, e) for e in machine.step(features, i * 60_000, (i + 1) * 60_000)]
    assert events, "the drop was not found"
    first_w, first = events[0]
    assert first.rule == "freq_shift" and first.extra["mode"] == 1
    assert damage_at <= first_w <= damage_at + 10
    assert first.extra["shift_pct"] == pytest.approx(-2.0, abs=0.5)
    assert first.extra["baseline"] == pytest.approx(f1[first_w] / 0.98, abs=0.05)
    assert first.level == 1  # a level 2 needs a 2 % shift (and 6 sd)


def test_freq_shift_without_temperature_raises_nothing_on_healthy_days() -> None:
    rng = np.random.default_rng(9)
    w = np.arange(6 * DAY_WINDOWS)
    f1 = 10.8 * (1 + 0.01 * np.cos(2 * np.pi * w / DAY_WINDOWS)) + rng.normal(0, 0.01, len(w))
    machine = WindowRules([rules_from_overrides("bridge.accel", {})], ids=["A"], sites=["d"],
                          window_s=60.0)
    events = [e for i in range(len(w))
              for e in machine.step(window(0.0, f1=f1[i]), i * 60_000, (i + 1) * 60_000)]
    assert events == []


def test_windows_without_a_value_change_nothing_and_are_counted() -> None:
    x = healthy_strain(2, seed=10)
    x[DAY_WINDOWS + 100:DAY_WINDOWS + 400] = np.nan  # a long dropout
    assert run_trend(x) == []


def test_the_temperature_sensor_must_be_another_sensor_of_the_same_site() -> None:
    rules = [rules_from_overrides("bridge.accel", {"freq_shift.temperature": "T"}),
             rules_from_overrides("tunnel.temp", {})]
    with pytest.raises(ValueError, match=r"sensor\[0\]\.rules\.freq_shift\.temperature"):
        WindowRules(rules, ids=["A", "T"], sites=["deck", "pier"], window_s=60.0)


# --------------------------------------------------------------------------- in the agent


def test_the_pipeline_raises_trend_on_a_tilt_step_and_a_restart_does_not_relearn() -> None:
    from tests.test_pipeline import T0, Clock, make_pipeline, raw

    clock = Clock()
    tilt = {"kind": "bridge.tilt", "high": [], "hysteresis": 0.0,
            "rules": {"trend": {"warmup_s": 3600, "reference_s": 7200}}}
    pipeline = make_pipeline(tilt, clock=clock)
    rng = np.random.default_rng(11)
    alerts = []

    def minute(p: object, m: int, offset: float) -> list:
        clock.now = T0 + m * 60_000
        values = 0.001 * np.sin(2 * np.pi * m / 1440) + rng.normal(0, 0.0003, 60) + offset
        out = p.step([raw("S0", values, t0=clock.now, dt=1000.0)], [], now=clock.now)
        clock.now += 60_000
        return out.alerts + p.step([], [], now=clock.now).alerts

    for m in range(180):
        alerts += minute(pipeline, m, 0.0)
    assert [a for a in alerts if a.rule == "trend"] == []
    second = make_pipeline(tilt, clock=clock, last_alert_seq=pipeline.last_alert_seq)
    assert second.restore(pipeline.state_blob(), pipeline.levels_blob())
    for m in range(180, 200):
        alerts += minute(second, m, 0.05)  # the pier settles by 0.05 deg
    trend = [a for a in alerts if a.rule == "trend"]
    assert trend and trend[0].level >= 1 and trend[0].prev == 0
    assert trend[0].extra["onset_ts"] == T0 + 180 * 60_000
    assert trend[0].ts == T0 + (180 + 5) * 60_000  # the window end after `sustain` windows
    assert "fault" not in trend[0].extra


# --------------------------------------------------------------------------- traffic vs glitch


def test_a_vehicle_burst_is_traffic_and_a_glitch_in_quiet_is_a_fault() -> None:
    from edge_agent.kernels import RuleChain, default_rules
    from edge_agent.kernels.spike import TrafficGate

    rng = np.random.default_rng(12)
    n = 600 * 10  # ten minutes: tilt at 10 Hz, the deck's accelerometer at 100 Hz
    t_tilt = 1_700_000_000_000 + np.arange(n) * 100
    tilt = 0.0003 * rng.normal(size=n)
    accel = 0.002 * rng.normal(size=n * 10)
    t_accel = 1_700_000_000_000 + np.arange(n * 10) * 10
    burst = slice(3000, 3030)  # a vehicle at 300 s: the deck rings for 3 s ...
    tilt[3012] += 0.05  # ... and the tilt jumps in one sample then
    accel[30000:30300] += 0.05 * np.sin(2 * np.pi * 3.0 * np.arange(300) / 100)
    tilt[5000] += 0.05  # a glitch at 500 s with the deck quiet
    assert burst.start < 3012 < burst.stop
    chain = RuleChain([default_rules("bridge.tilt"), default_rules("bridge.accel")])
    gate = TrafficGate(["bridge.tilt", "bridge.accel"], ["pier", "pier"], [True, False])
    raised = []
    for minute in range(10):
        a, b = minute * 600, (minute + 1) * 600
        values = np.concatenate([tilt[a:b], accel[a * 10:b * 10]])
        times = np.concatenate([t_tilt[a:b], t_accel[a * 10:b * 10]])
        sensors, starts = np.array([0, 1], np.int32), np.array([0, 600, 6600])
        gate.update(values, times, sensors, starts)
        events = chain.process(values, times, sensors, starts, gate)
        raised += [(int(times[i]), int(s)) for s, r, lv, i in
                   zip(events.sensor, events.rule, events.level, events.index)
                   if lv == 1 and r == 3]  # spike
    assert raised == [(int(t_tilt[5000]), 0)]
    assert chain.spikes_taken_as_traffic() == 1


def test_bad_input_raises_no_frequency_alarm_and_is_counted_but_a_real_drop_does() -> None:
    from edge_agent.inputs.base import SampleBlock
    from tests.test_pipeline import T0, Clock, make_pipeline

    clock = Clock()
    accel = {"kind": "bridge.accel", "high": [], "hysteresis": 0.0,
             "rules": {"freq_shift": {"warmup_s": 1800, "reference_s": 1800}}}
    pipeline = make_pipeline(accel, clock=clock)
    alerts = []
    rng = np.random.default_rng(13)

    def minute(m: int, x: np.ndarray, rate: float = FS) -> None:
        clock.now = T0 + m * 60_000
        times = clock.now + np.round(np.arange(len(x)) * 1000 / rate).astype(np.int64)
        blocks = [SampleBlock(0, part, t, int(t[-1])) for part, t in
                  zip(np.array_split(x, 60), np.array_split(times, 60))]
        alerts.extend(pipeline.step([], blocks, now=clock.now + 59_999).alerts)
        alerts.extend(pipeline.step([], [], now=clock.now + 60_000).alerts)

    m = 0
    for m in range(35):  # the reference: 35 healthy minutes
        minute(m, deck(WINDOW, seed=100 + m))
    for k in range(8):  # a flaky link: NaN bursts all over, then half of each window missing
        x = deck(WINDOW, seed=200 + k)
        if k < 4:
            x[rng.random(WINDOW) < 0.3] = np.nan
        else:
            x = x[:WINDOW // 2 - 600]
        m += 1
        minute(m, x)
    for k in range(2):  # the node is reconfigured to 50 Hz
        m += 1
        minute(m, deck(3000, seed=300 + k, fs=50.0, modes=(10.81, 17.0, 23.0)), rate=50.0)
    assert [a for a in alerts if a.rule == "freq_shift"] == []
    counters = pipeline.counters
    assert counters.spectra_skipped == 8 and counters.rate_changes == 1
    for k in range(8):  # the span loses stiffness: every mode 3 % lower
        m += 1
        minute(m, deck(WINDOW, seed=400 + k, modes=(10.81 * 0.97, 23.4 * 0.97, 37.0 * 0.97)))
    shift = [a for a in alerts if a.rule == "freq_shift"]
    assert shift and shift[0].level >= 2 and shift[0].extra["mode"] in (1, 2, 3)
    assert shift[0].extra["shift_pct"] == pytest.approx(-3.0, abs=0.5)
