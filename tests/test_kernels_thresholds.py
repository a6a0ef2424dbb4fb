"""The threshold behaviour of contract section 4, on the contract's own example sensor."""

from __future__ import annotations

import math

import numpy as np

from edge_agent.kernels import Events, RuleChain, SensorRules
from edge_agent.kernels.codes import HIGH, LOW

# high = [0.60, 0.70, 0.80, 0.90], low = [0.20, 0.15, 0.10, 0.05], hysteresis 0.02, debounce 3
PIPE = SensorRules(kind="pipe.pressure", high=(0.60, 0.70, 0.80, 0.90),
                   low=(0.20, 0.15, 0.10, 0.05), hysteresis=0.02, debounce=3)


def alerts(values: list[float], rules: SensorRules = PIPE) -> list[tuple[str, int, int, int]]:
    """(rule, prev, level, sample index) of every level change of one sensor's series."""
    events = run(values, rules)
    names = {HIGH: "high", LOW: "low"}
    return [(names[int(r)], int(p), int(lv), int(i))
            for r, p, lv, i in zip(events.rule, events.prev, events.level, events.index)]


def run(values: list[float], rules: SensorRules = PIPE) -> Events:
    x = np.array(values, dtype=np.float64)
    chain = RuleChain([rules], only=("high", "low"))
    return chain.process(x, np.arange(len(x)) * 1000, np.array([0], np.int32),
                         np.array([0, len(x)]))


def test_a_value_held_beyond_a_limit_for_debounce_samples_raises_one_alert_per_level() -> None:
    series = [0.4] * 5 + [0.65] * 3 + [0.75] * 3
    assert alerts(series) == [("high", 0, 1, 7), ("high", 1, 2, 10)]


def test_a_jump_past_every_limit_raises_one_alert_to_the_top_level() -> None:
    events = run([0.4, 0.95, 0.95, 0.95])
    assert list(zip(events.prev, events.level, events.index)) == [(0, 4, 3)]
    assert events.limit[0] == 0.90


def test_an_excursion_shorter_than_debounce_raises_nothing() -> None:
    assert alerts([0.4, 0.95, 0.95, 0.4, 0.95, 0.95, 0.4, 0.01, 0.01, 0.4]) == []


def test_a_value_exactly_on_a_limit_is_not_beyond_it() -> None:
    assert alerts([0.60] * 10 + [0.20] * 10) == []


def test_the_level_lowers_only_once_back_inside_the_lower_limit_minus_hysteresis() -> None:
    series = [0.75] * 3  # level 2
    series += [0.69] * 5  # inside 0.70 but not 0.68: stays 2
    series += [0.67] * 3  # below 0.70 - 0.02 for 3 samples: level 1
    series += [0.59] * 5  # inside 0.60 but not 0.58: stays 1
    series += [0.57] * 3  # below 0.58: cleared
    assert alerts(series) == [("high", 0, 2, 2), ("high", 2, 1, 10), ("high", 1, 0, 18)]


def test_falling_from_a_high_level_straight_to_normal_clears_in_one_alert() -> None:
    events = run([0.95] * 3 + [0.3] * 3)
    assert list(zip(events.prev, events.level)) == [(0, 4), (4, 0)]
    assert events.limit[1] == 0.60  # the lowest threshold now cleared


def test_a_value_wandering_inside_the_hysteresis_band_does_not_chatter() -> None:
    rng = np.random.default_rng(3)
    series = [0.65] * 3 + list(rng.uniform(0.581, 0.64, 500))
    assert alerts(series) == [("high", 0, 1, 2)]


def test_a_value_wandering_across_a_limit_in_short_excursions_raises_nothing() -> None:
    series = ([0.61, 0.61, 0.59] * 100)
    assert alerts(series) == []


def test_low_mirrors_high_with_descending_limits() -> None:
    series = [0.3] * 3 + [0.12] * 3 + [0.16] * 5 + [0.175] * 3 + [0.23] * 3
    # 0.12: below 0.15 -> level 2; 0.16: inside 0.15 but not 0.17 -> stays;
    # 0.175: above 0.15 + 0.02 -> level 1; 0.23: above 0.22 -> cleared.
    assert alerts(series) == [("low", 0, 2, 5), ("low", 2, 1, 13), ("low", 1, 0, 16)]
    assert list(run(series).limit) == [0.15, 0.15, 0.20]


def test_missing_samples_neither_break_nor_extend_a_hold() -> None:
    nan = math.nan
    assert alerts([0.65, nan, 0.65, nan, nan, 0.65]) == [("high", 0, 1, 5)]
    assert alerts([0.65, 0.65, nan, nan, nan]) == []


def test_a_hold_continues_across_blocks_and_batches() -> None:
    chain = RuleChain([PIPE], only=("high",))
    one = np.array([0], np.int32)
    first = chain.process([0.65, 0.65], [0, 1000], one, [0, 2])
    second = chain.process([0.65], [2000], one, [0, 1])
    assert len(first) == 0 and list(second.level) == [1] and list(second.index) == [0]


def test_a_sensor_without_limits_never_alerts() -> None:
    assert alerts([5.0] * 10 + [-5.0] * 10, SensorRules(kind="custom.thing")) == []
