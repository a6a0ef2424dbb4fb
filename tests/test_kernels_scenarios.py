"""What an operator sees: default profiles on realistic 1 Hz series tell faults from events."""

from __future__ import annotations

import numpy as np

from edge_agent.kernels import RULE_NAMES, RuleChain, default_rules, rules_from_overrides
from edge_agent.kernels.profiles import SensorRules

DAY = 86_400
T0_MS = 1_767_225_600_000


def pressure_day(days: float = 1.0, seed: int = 0) -> np.ndarray:
    """Healthy mains pressure at 1 Hz: 0.4 MPa, a daily demand cycle, wander and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(days * DAY))
    cycle = 0.04 * np.sin(2 * np.pi * t / DAY - 2.0)
    wander = np.convolve(rng.normal(0, 0.0002, len(t)), np.ones(600) / np.sqrt(600), "same")
    return 0.4 + cycle + wander + rng.normal(0, 0.003, len(t))


def raised(x: np.ndarray, rules: SensorRules) -> list[tuple[str, int, int]]:
    """(rule, level, sample) of every raise from level 0, one sensor, blocks of an hour."""
    chain = RuleChain([rules])
    out = []
    for start in range(0, len(x), 3600):
        part = x[start:start + 3600]
        events = chain.process(part, T0_MS + (start + np.arange(len(part))) * 1000,
                               np.array([0], np.int32), np.array([0, len(part)]))
        for r, lv, p, i in zip(events.rule, events.level, events.prev, events.index):
            if p == 0 and lv > 0:
                out.append((RULE_NAMES[r], int(lv), start + int(i)))
    return out


PRESSURE = default_rules("pipe.pressure")


def test_a_healthy_day_of_pressure_raises_nothing() -> None:
    assert raised(pressure_day(), PRESSURE) == []


def test_a_burst_raises_rate_and_anomaly_events_and_no_fault() -> None:
    x = pressure_day(0.25)
    x[15_000:] -= 0.1  # a main bursts: 0.1 MPa lost at once
    alerts = raised(x, PRESSURE)
    rules = {r for r, _, _ in alerts}
    assert {"rate", "anomaly"} <= rules and not rules & {"spike", "drift", "flatline", "range"}
    assert all(15_000 <= i < 15_060 for _, _, i in alerts)  # within a minute


def test_a_glitch_is_a_spike_fault_not_an_event() -> None:
    x = pressure_day(0.25)
    x[12_000] = 0.95  # one bad sample, beyond every high limit
    assert raised(x, PRESSURE) == [("spike", 1, 12_000)]


def test_a_stuck_sensor_raises_flatline_and_clears_when_it_moves() -> None:
    x = pressure_day(0.25)
    x[10_000:12_000] = x[10_000]
    chain_alerts = raised(x, PRESSURE)
    assert ("flatline", 1, 10_000 + PRESSURE.flatline.samples - 1) in chain_alerts


def test_dry_weather_zero_is_not_a_stuck_flood_sensor() -> None:
    rules = default_rules("flood.level")
    assert raised(np.zeros(4 * 3600), rules) == []
    assert raised(np.full(4 * 3600, 12.0), rules)[0][0] == "flatline"


def test_impossible_values_and_missing_samples_raise_range() -> None:
    x = pressure_day(0.1)
    x[3000:3005] = -7.0  # a broken 4-20 mA loop
    x[6000:6010] = np.nan
    alerts = raised(x, PRESSURE)
    assert [a for a in alerts if a[0] == "range"] == [("range", 1, 3002), ("range", 1, 6002)]


def test_a_cloudburst_raises_rate_then_the_depth_levels() -> None:
    rng = np.random.default_rng(2)
    x = 0.0 + rng.normal(0, 0.3, 3 * 3600).clip(0)
    x[7200:] += np.minimum(np.arange(3600) * 3.0 / 60, 60.0)  # rising 3 cm/min to 60 cm
    alerts = raised(x, default_rules("flood.level"))
    first = {r: (lv, i) for r, lv, i in reversed(alerts)}
    assert first["rate"][1] < first["high"][1]  # the rise is seen before the first limit
    high = [lv for r, lv, _ in alerts if r == "high"]
    assert high == [1]  # raised once from 0, then escalated (escalations are not raises)
    assert not {r for r, _, _ in alerts} & {"spike", "range", "drift"}


def test_a_slow_drift_is_a_fault_not_an_anomaly() -> None:
    x = pressure_day(3.0, seed=4)
    x[int(1.5 * DAY):] += np.minimum(np.arange(len(x) - int(1.5 * DAY)) / DAY, 1.0) * 0.12
    alerts = raised(x, PRESSURE)
    assert [r for r, _, _ in alerts] == ["drift"]
    assert alerts[0][2] > 1.5 * DAY


def test_config_can_switch_a_fault_rule_off() -> None:
    x = pressure_day(0.1)
    x[4000] = 0.95
    assert raised(x, rules_from_overrides("pipe.pressure", {"spike.enabled": False})) == []
