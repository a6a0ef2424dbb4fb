"""Simulated signals: deterministic, healthy inside their limits, events and faults visible where labelled."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from simulators.signals import (
    EVENT_SPECS,
    FACTORIES,
    FAULT_SPECS,
    KIND_RANGE,
    OPEN_END_MS,
    Burst,
    Damage,
    Drift,
    Dropout,
    EventSpec,
    FaultSpec,
    Fire,
    GasLeak,
    Hammer,
    Ingress,
    Leak,
    NoiseBurst,
    OutOfRange,
    Overload,
    Rain,
    Settlement,
    SignalModel,
    SimSensor,
    Spikes,
    Stuck,
    build_model,
    parse_event,
    parse_fault,
)

T0 = 1_699_977_600_000  # 2023-11-15 00:00 local time (UTC+8)
DAY = 86_400


def sensor(kind: str, rate_hz: float = 1.0, sid: str | None = None) -> SimSensor:
    return SimSensor(sid or f"T-{kind}", kind, "site-1", rate_hz)


def model(
    kind: str,
    rate_hz: float = 1.0,
    events: Sequence[EventSpec] = (),
    faults: Sequence[FaultSpec] = (),
    seed: int = 11,
) -> SignalModel:
    return build_model(sensor(kind, rate_hz), T0, seed, events, faults)


def seconds(values: np.ndarray, rate_hz: float, start_s: float, end_s: float) -> np.ndarray:
    return values[int(start_s * rate_hz) : int(end_s * rate_hz)]


def rules_of(m: SignalModel) -> dict[str, list[float]]:
    r = m.suggested_rules()
    return {"high": list(r["high"]), "low": list(r["low"])}  # type: ignore[call-overload]


#: One scenario per event class, on a sensor it shows in.
EVENT_CASES: list[tuple[str, float, EventSpec]] = [
    ("pipe.pressure", 10.0, Burst(600, drop_mpa=0.2)),
    ("pipe.flow", 1.0, Burst(600, drop_mpa=0.2)),
    ("pipe.pressure", 10.0, Hammer(600)),
    ("pipe.flow", 0.1, Leak(3600)),
    ("pipe.gas", 1.0, GasLeak(600)),
    ("flood.rain", 1.0, Rain(600)),
    ("flood.level", 1.0, Rain(600)),
    ("bridge.accel", 50.0, Damage(600)),
    ("bridge.strain", 20.0, Overload(600)),
    ("bridge.disp", 20.0, Overload(600)),
    ("bridge.tilt", 1.0, Settlement(600)),
    ("tunnel.temp", 1.0, Fire(600)),
    ("tunnel.co", 1.0, Fire(600)),
    ("tunnel.vi", 1.0, Fire(600)),
    ("tunnel.water", 1.0, Ingress(600)),
]
ALL_FAULTS: list[FaultSpec] = [
    Stuck(100, 50),
    Drift(200, 600),
    Spikes(900, 100, count=4),
    Dropout(1100, 20),
    NoiseBurst(1200, 60),
    OutOfRange(1300, 10),
]


# --- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "rate", "event"), EVENT_CASES, ids=lambda x: str(x))
def test_same_seed_gives_same_samples_and_another_seed_differs(
    kind: str, rate: float, event: EventSpec
) -> None:
    count = int(1800 * rate)
    first = model(kind, rate, [event], ALL_FAULTS).render(0, count)
    again = model(kind, rate, [event], ALL_FAULTS).render(0, count)
    other = model(kind, rate, [event], ALL_FAULTS, seed=12).render(0, count)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(np.nan_to_num(first), np.nan_to_num(other))


@pytest.mark.parametrize(("kind", "rate", "event"), EVENT_CASES, ids=lambda x: str(x))
def test_chunked_render_equals_whole_render(kind: str, rate: float, event: EventSpec) -> None:
    count = int(1800 * rate)
    m = model(kind, rate, [event], ALL_FAULTS)
    whole = m.render(0, count)
    sizes = [1, 7, 100, 333, 1, 1024]
    pieces: list[np.ndarray] = []
    start = 0
    while start < count:
        n = min(sizes[len(pieces) % len(sizes)], count - start)
        pieces.append(m.render(start, n))
        start += n
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    np.testing.assert_array_equal(m.render(count // 2, 10), whole[count // 2 : count // 2 + 10])


# --- healthy signals -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@pytest.mark.parametrize("seed", [1, 2])
def test_healthy_day_stays_in_range_and_never_crosses_suggested_thresholds(
    kind: str, seed: int
) -> None:
    rate = 50.0 if kind == "bridge.accel" else 1.0
    m = build_model(sensor(kind, rate, f"H{seed}-{kind}"), T0, seed)
    v = m.render(0, int(DAY * rate))
    rules = m.suggested_rules()
    lo, hi = KIND_RANGE[kind]
    assert not np.isnan(v).any()
    assert lo <= v.min() and v.max() <= hi
    high, low = rules_of(m)["high"], rules_of(m)["low"]
    if high:
        assert v.max() < high[0] - float(rules["hysteresis"])  # type: ignore[arg-type]
        assert high == sorted(high) and len(high) == 4
    if low:
        assert v.min() > low[0] + float(rules["hysteresis"])  # type: ignore[arg-type]
        assert low == sorted(low, reverse=True) and len(low) == 4
    assert m.events == []


def test_pipe_demand_has_peaks_by_day_and_its_minimum_at_night() -> None:
    flow = model("pipe.flow", 1 / 60).render(0, 24 * 60)
    hourly = flow.reshape(24, 60).mean(axis=1)
    assert 2 <= int(np.argmin(hourly)) <= 3
    assert hourly[7] > 2.5 * hourly[3] and hourly[19] > 2.5 * hourly[3]
    pressure = model("pipe.pressure", 1 / 60).render(0, 24 * 60).reshape(24, 60).mean(axis=1)
    assert 0.2 <= pressure.min() and pressure.max() <= 0.6
    assert pressure[2:4].mean() - pressure[7:9].mean() > 0.05


def test_tunnel_air_follows_daily_traffic() -> None:
    co = model("tunnel.co", 1 / 60).render(0, 24 * 60).reshape(24, 60).mean(axis=1)
    vi = model("tunnel.vi", 1 / 60).render(0, 24 * 60).reshape(24, 60).mean(axis=1)
    assert co[8] > 3 * co[3] and 10 < co[8] < 100
    assert vi[8] > vi[3] and 0.005 < vi[8] < 0.009


# --- events ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "rate", "event"), EVENT_CASES, ids=lambda x: str(x))
def test_threshold_rules_expected_for_an_event_are_crossed(
    kind: str, rate: float, event: EventSpec
) -> None:
    m = model(kind, rate, [event])
    v = m.render(0, int(4 * 3600 * rate))
    (label,) = m.events
    rules = rules_of(m)
    assert label.start_ms >= T0 + 600_000 and label.end_ms > label.start_ms
    if "high" in label.expected_rules:
        assert np.max(v) > rules["high"][0]
    if "low" in label.expected_rules:
        assert np.min(v) < rules["low"][0]


def test_burst_drops_pressure_by_at_least_the_spec_within_seconds() -> None:
    burst = Burst(3600 * 8, drop_mpa=0.12, duration_s=900, rise_s=5)
    rate = 10.0
    m = model("pipe.pressure", rate, [burst])
    v = m.render(0, int(9 * 3600 * rate))
    before = seconds(v, rate, burst.at_s - 30, burst.at_s).mean()
    after = seconds(v, rate, burst.at_s + burst.rise_s, burst.at_s + burst.rise_s + 10).mean()
    assert before - after >= 0.95 * burst.drop_mpa
    recovered = seconds(v, rate, burst.end_s + 60, burst.end_s + 90).mean()
    assert abs(recovered - before) < 0.03
    (label,) = m.events
    assert (label.cls, label.abrupt, label.is_fault) == ("burst", True, False)
    assert (label.start_ms, label.end_ms) == (T0 + 8 * 3600_000, T0 + 8 * 3600_000 + 900_000)


def test_burst_makes_flow_jump() -> None:
    at = int(19.5 * 3600)
    m = model("pipe.flow", 1.0, [Burst(at, drop_mpa=0.15)])
    v = m.render(0, at + 3600)
    jump = v[at + 20 : at + 80].mean() - v[at - 60 : at].mean()
    assert jump > 0.5 * v[:at].max()
    assert m.events[0].expected_rules == ("high", "rate", "anomaly")


def test_slow_leak_raises_the_night_minimum_flow_day_over_day() -> None:
    rate = 0.1
    m = model("pipe.flow", rate, [Leak(DAY, growth_m3h_per_day=8.0)])
    v = m.render(0, int(5 * DAY * rate)).reshape(5, -1)
    night = v[:, int(2 * 3600 * rate) : int(4 * 3600 * rate)].min(axis=1)
    rises = np.diff(night)
    assert np.all(rises[1:] > 0.5 * 8.0)
    assert night[-1] - night[0] > 2.5 * 8.0
    (label,) = m.events
    assert (label.cls, label.abrupt, label.expected_rules) == ("leak", False, ("anomaly",))


def test_water_hammer_is_a_decaying_oscillation_lasting_seconds() -> None:
    rate = 20.0
    hammer = Hammer(600, amplitude_mpa=0.1, period_s=1.5, decay_s=2.0)
    m = model("pipe.pressure", rate, [hammer])
    v = m.render(0, int(700 * rate))
    base = seconds(v, rate, 590, 600).mean()
    first = seconds(v, rate, 600, 603) - base
    later = seconds(v, rate, 606, 609) - base
    calm = seconds(v, rate, 630, 640) - base
    crossings = np.count_nonzero(np.diff(np.sign(first)) != 0)
    assert crossings >= 3
    assert np.ptp(first) > 1.2 * hammer.amplitude_mpa
    assert np.ptp(later) < 0.5 * np.ptp(first)
    assert np.ptp(calm) < 0.2 * np.ptp(first)


def test_a_hammer_is_an_event_expected_on_the_limits_its_surge_passes() -> None:
    rate = 5.0
    quiet = model("pipe.pressure", rate, [Hammer(3 * 3600, amplitude_mpa=0.02)])
    surge = model("pipe.pressure", rate, [Hammer(3 * 3600, amplitude_mpa=0.3)])
    assert quiet.suggested_rules()["debounce"] == 2  # 0.4 s: a pump station watches surges
    assert model("pipe.pressure", 1.0).suggested_rules()["debounce"] == 3
    assert quiet.events[0].expected_rules == ()  # a swing inside the limits alarms nothing
    (label,) = surge.events
    assert (label.cls, label.is_fault, label.abrupt) == ("hammer", False, True)
    assert "high" in label.expected_rules and "spike" not in label.expected_rules
    v = surge.render(0, int(3 * 3600 * rate + 20 * rate))
    high = surge.suggested_rules()["high"][0]  # type: ignore[index]
    above = v[int(3 * 3600 * rate):] > high
    assert np.any(above[:-1] & above[1:])  # held for the debounce of 2 samples


def test_only_a_gas_leak_building_within_half_a_minute_is_abrupt() -> None:
    rupture = model("pipe.gas", 1.0, [GasLeak(600, ramp_s=20.0)])
    seep = model("pipe.gas", 1.0, [GasLeak(600, ramp_s=300.0)])
    assert rupture.events[0].abrupt and not seep.events[0].abrupt


def test_gas_leak_ramps_from_near_zero_into_alarm() -> None:
    leak = GasLeak(1800, peak_lel=40.0, ramp_s=300.0, duration_s=1200.0)
    m = model("pipe.gas", 1.0, [leak])
    v = m.render(0, 3 * 3600)
    assert v[:1800].max() < 3.0
    assert v[1800 + 300 : 1800 + 1200].mean() > 30.0
    assert v[3 * 3600 - 600 :].max() < 3.0


def test_rain_floods_the_street_then_it_drains() -> None:
    rain = Rain(3600, duration_s=3600, peak_mm_h=90.0)
    gauge = model("flood.rain", 1.0, [rain])
    level = model("flood.level", 1.0, [rain])
    r = gauge.render(0, 6 * 3600)
    h = level.render(0, 6 * 3600)
    assert np.all(r[:3600] == 0.0) and np.all(r[7201:] == 0.0)
    assert r[3600:7200].max() > 60.0
    assert h[:3600].max() < 2.0
    assert h.max() > 15.0
    assert int(np.argmax(r)) < int(np.argmax(h)) < 7200 + 1800
    assert h[-1800:].max() < 2.0
    per_minute = np.diff(h[::60])
    assert per_minute.max() > 2.0  # several cm/min while the cloudburst lasts
    (flooding,) = level.events
    assert flooding.cls == "waterlogging" and "high" in flooding.expected_rules
    first_wet = int(np.argmax(h > 15.0))
    assert flooding.start_ms <= T0 + first_wet * 1000 < flooding.end_ms
    assert gauge.events[0].cls == "rainstorm"


def test_rain_below_drainage_capacity_leaves_the_street_dry() -> None:
    level = model("flood.level", 1.0, [Rain(600, peak_mm_h=15.0)])
    assert level.render(0, 3 * 3600).max() < 2.0
    assert level.events == []


def dominant_frequency(x: np.ndarray, rate: float, lo: float, hi: float) -> float:
    seg = int(100 * rate)
    window = np.hanning(seg)
    power = np.mean(
        [
            np.abs(np.fft.rfft(x[i * seg : (i + 1) * seg] * window)) ** 2
            for i in range(x.size // seg)
        ],
        axis=0,
    )
    freqs = np.fft.rfftfreq(seg, 1 / rate)
    k = int(np.argmax(np.where((freqs > lo) & (freqs < hi), power, 0.0)))
    near = slice(k - 15, k + 16)
    return float(np.sum(freqs[near] * power[near]) / np.sum(power[near]))


@pytest.mark.parametrize("drop_pct", [2.0, 5.0])
def test_damage_lowers_the_dominant_frequency_by_the_given_percent(drop_pct: float) -> None:
    rate = 50.0
    damaged = build_model(sensor("bridge.accel", rate), T0, 5, [Damage(3600, drop_pct=drop_pct)])
    healthy = build_model(sensor("bridge.accel", rate), T0, 5)
    f1 = damaged.freqs_hz[0]  # type: ignore[attr-defined]
    start, count = int(3600 * rate), int(1200 * rate)
    np.testing.assert_array_equal(damaged.render(0, start), healthy.render(0, start))
    after = dominant_frequency(damaged.render(start, count), rate, 0.7 * f1, 1.2 * f1)
    twin = dominant_frequency(healthy.render(start, count), rate, 0.7 * f1, 1.2 * f1)
    assert 1.0 <= f1 <= 10.0
    assert (1.0 - after / twin) * 100.0 == pytest.approx(drop_pct, abs=0.3)
    (label,) = damaged.events
    assert (label.cls, label.end_ms) == ("damage", OPEN_END_MS)


def test_bridge_frequency_moves_slightly_with_the_daily_temperature() -> None:
    rate = 50.0
    m = build_model(sensor("bridge.accel", rate), T0, 5)
    f1 = m.freqs_hz[0]  # type: ignore[attr-defined]
    dawn = dominant_frequency(
        m.render(int(4 * 3600 * rate), int(1200 * rate)), rate, 0.7 * f1, 1.2 * f1
    )
    noon = dominant_frequency(
        m.render(int(14 * 3600 * rate), int(1200 * rate)), rate, 0.7 * f1, 1.2 * f1
    )
    assert 0.3 < (1.0 - noon / dawn) * 100.0 < 3.0


def test_fire_raises_temperature_co_and_smoke_fast() -> None:
    fire = Fire(1800, growth_s=180.0)
    temp, co, vi = (
        model(k, 1.0, [fire]).render(0, 3600) for k in ("tunnel.temp", "tunnel.co", "tunnel.vi")
    )
    assert temp[1800 + 180] - temp[1790] > 150.0
    assert temp[1800 + 60] - temp[1800] > 50.0  # far beyond a rate-of-rise alarm of 8 degC/min
    assert co[1800 + 180] > 300.0 and co[:1800].max() < 100.0
    assert vi[1800 + 180] > 0.1 and vi[:1800].max() < 0.012


def test_water_ingress_rises_steadily_then_is_pumped_out() -> None:
    ingress = Ingress(600, rate_cm_min=0.5, max_cm=20.0, duration_s=3600, recede_cm_min=1.0)
    m = model("tunnel.water", 1.0, [ingress])
    v = m.render(0, 3 * 3600)
    assert v[:600].max() < 2.0
    assert v[600 + 1200] == pytest.approx(10.0, abs=1.5)
    assert v[600 + 3000] == pytest.approx(20.0, abs=1.5)
    assert v[-600:].max() < 2.0
    (label,) = m.events
    assert label.end_ms == T0 + (600 + 3600 + 1200) * 1000


def test_an_event_on_a_sensor_it_does_not_show_in_is_rejected() -> None:
    with pytest.raises(ValueError, match="burst"):
        model("tunnel.co", events=[Burst(10)])
    with pytest.raises(ValueError, match="kind"):
        build_model(sensor("pipe.nothing"), T0, 1)


# --- faults ----------------------------------------------------------------------------------


def fault_case(
    fault: FaultSpec, kind: str = "pipe.pressure", rate: float = 2.0
) -> tuple[np.ndarray, np.ndarray, SignalModel]:
    healthy = model(kind, rate).render(0, int(3600 * rate))
    faulty = model(kind, rate, faults=[fault])
    return healthy, faulty.render(0, int(3600 * rate)), faulty


def window(m: SignalModel, rate: float) -> tuple[int, int]:
    (label,) = m.events
    assert label.is_fault
    return int((label.start_ms - T0) * rate / 1000), int((label.end_ms - T0) * rate / 1000)


def test_stuck_sensor_holds_its_last_value_with_zero_variance() -> None:
    healthy, v, m = fault_case(Stuck(600, 300))
    a, b = window(m, 2.0)
    assert (a, b) == (1200, 1800)
    assert np.all(v[a:b] == healthy[a - 1])  # a flat line: zero variance
    np.testing.assert_array_equal(v[:a], healthy[:a])
    np.testing.assert_array_equal(v[b:], healthy[b:])
    assert m.events[0].expected_rules == ("flatline",)


def test_drift_adds_a_slowly_growing_offset() -> None:
    healthy, v, m = fault_case(Drift(600, 1800, rate_per_h=0.1))
    a, b = window(m, 2.0)
    offset = v[a:b] - healthy[a:b]
    assert offset[-1] == pytest.approx(0.05, rel=0.01)
    assert np.all(np.diff(offset) > 0)
    np.testing.assert_array_equal(v[b:], healthy[b:])


def test_spikes_are_isolated_outliers_inside_their_label() -> None:
    healthy, v, m = fault_case(Spikes(600, 600, count=6))
    a, b = window(m, 2.0)
    changed = np.flatnonzero(v != healthy)
    assert changed.size == 6 and changed[0] == a and changed[-1] == b - 1
    assert np.all(np.diff(changed) > 1)
    assert np.all(np.abs(v[changed] - healthy[changed]) >= 0.2)


def test_dropout_is_a_run_of_nan_exactly_in_its_window() -> None:
    _, v, m = fault_case(Dropout(600, 30))
    a, b = window(m, 2.0)
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(v)), np.arange(a, b))
    assert (a, b) == (1200, 1260)


def test_noise_burst_raises_the_spread() -> None:
    healthy, v, m = fault_case(NoiseBurst(600, 120))
    a, b = window(m, 2.0)
    assert np.std(v[a:b] - healthy[a:b]) > 10 * np.std(np.diff(healthy))


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_out_of_range_leaves_the_kinds_physical_range(kind: str) -> None:
    _, v, m = fault_case(OutOfRange(600, 10), kind, rate=1.0)
    lo, hi = KIND_RANGE[kind]
    a, b = window(m, 1.0)
    assert np.all((v[a:b] < lo) | (v[a:b] > hi))
    assert np.all((v[:a] >= lo) & (v[:a] <= hi))


def test_fault_labels_are_faults_and_keep_the_event_labels() -> None:
    m = model("pipe.pressure", 1.0, [Burst(2000)], ALL_FAULTS)
    classes = [(e.cls, e.is_fault) for e in m.events]
    assert classes[0] == ("burst", False)
    assert [c for c, fault in classes if fault] == [
        "stuck",
        "drift",
        "spike",
        "dropout",
        "noise_burst",
        "out_of_range",
    ]
    rules = {e.cls: e.expected_rules for e in m.events}
    assert rules["dropout"] == ("gap",) and rules["out_of_range"] == ("range",)


# --- scenario tables -------------------------------------------------------------------------


def test_scenario_tables_become_specs() -> None:
    assert parse_event({"type": "burst", "at_s": 600, "drop_mpa": 0.15}) == Burst(600, 0.15)
    assert parse_fault({"type": "stuck", "at_s": 60, "duration_s": 300}) == Stuck(60, 300)
    assert FAULT_SPECS["spike"] is Spikes and EVENT_SPECS["gas_leak"] is GasLeak
    with pytest.raises(ValueError, match="unknown"):
        parse_event({"type": "earthquake", "at_s": 1})
    with pytest.raises(ValueError, match="drop_mp"):
        parse_event({"type": "burst", "at_s": 1, "drop_mp": 0.1})
    with pytest.raises(ValueError, match="at_s"):
        parse_fault({"type": "dropout", "at_s": -5})
