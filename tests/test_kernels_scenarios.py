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


def flow_day(days: float = 1.0, seed: int = 1) -> np.ndarray:
    """District-meter flow at 1 Hz (m3/h): a night minimum, a steep morning rise to three times
    the night flow between 05:00 and 08:00, wander and 1 % noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(days * DAY))
    hour = (t % DAY) / 3600.0
    demand = 0.3 + 0.7 * np.exp(-0.5 * ((hour - 7.5) / 1.0) ** 2)
    wander = np.convolve(rng.normal(0, 0.05, len(t)), np.ones(600) / np.sqrt(600), "same")
    return 200.0 * demand + wander + rng.normal(0, 2.0, len(t))


FLOW = default_rules("pipe.flow")


def anomalies(x: np.ndarray) -> list[int]:
    return [i for r, _, i in raised(x, FLOW) if r == "anomaly"]


def test_the_morning_demand_rise_is_not_an_anomaly() -> None:
    assert anomalies(flow_day()) == []


def anomaly_changes(x: np.ndarray, rules: SensorRules) -> tuple[np.ndarray, np.ndarray]:
    """Samples where `anomaly` was raised from 0, and where it cleared."""
    chain = RuleChain([rules])
    events = chain.process(x, T0_MS + np.arange(len(x)) * 1000, np.array([0], np.int32),
                           np.array([0, len(x)]))
    anomaly = events.rule == RULE_NAMES.index("anomaly")
    return (events.index[anomaly & (events.prev == 0) & (events.level > 0)],
            events.index[anomaly & (events.level == 0)])


def test_a_burst_is_one_anomaly_that_clears_when_the_main_is_isolated() -> None:
    x = flow_day()
    x[2 * 3600:2 * 3600 + 1800] += 60.0  # a burst at 02:00, isolated at 02:30
    x[6 * 3600:6 * 3600 + 1800] += 100.0  # another at 06:00, in the morning rise
    raises, clears = anomaly_changes(x, FLOW)
    assert [r // 3600 for r in raises] == [2, 6]
    assert all(0 <= r % 3600 < 30 for r in raises)
    # back to the night flow it left: cleared within minutes; after the one in the rise the
    # flow is no longer where it was, and that alarm lasts until the baseline takes it up
    assert 2 * 3600 + 1800 <= clears[0] < 2 * 3600 + 1800 + 300


def test_a_lasting_new_level_is_taken_as_normal_after_hold_s() -> None:
    rules = rules_from_overrides("pipe.flow", {"anomaly": {"hold_s": 1800.0}})
    x = flow_day(0.5)
    x[3 * 3600:] += 50.0  # a valve opened at 03:00 for good
    up, down = anomaly_changes(x, rules)
    assert len(up) == 1 and 3 * 3600 <= up[0] < 3 * 3600 + 30
    assert len(down) == 1 and 3 * 3600 + 1800 <= down[0] < 3 * 3600 + 1900
