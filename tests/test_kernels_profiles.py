"""Rule ids, built-in kind profiles and config overrides."""

from __future__ import annotations

import dataclasses
import math

import pytest

from edge_agent.kernels import (
    EVENT_RULES,
    FAULT_RULES,
    KINDS,
    PROFILES,
    RULE_KEYS,
    RULE_NAMES,
    SensorRules,
    default_rules,
    rules_from_overrides,
)
from lifeline.contract.kinds import KIND_UNITS


def test_rule_names_and_fault_rules_are_the_agreed_ones() -> None:
    assert RULE_NAMES == ("high", "low", "rate", "spike", "anomaly", "drift", "flatline", "range")
    assert FAULT_RULES == frozenset({"range", "flatline", "spike", "drift"})
    assert EVENT_RULES | FAULT_RULES == set(RULE_NAMES) and not EVENT_RULES & FAULT_RULES


#: Kinds beyond the contract's built-ins that come with a profile (tunnel deformation).
EXTRA_KINDS = {"tunnel.convergence"}


def test_every_built_in_kind_has_a_profile_with_its_unit_and_physical_range() -> None:
    assert set(PROFILES) == set(KINDS) == set(KIND_UNITS) | EXTRA_KINDS
    for kind, unit in KIND_UNITS.items():
        rules = default_rules(kind)
        assert KINDS[kind].unit == unit
        assert rules.kind == kind
        assert rules.range.enabled and rules.range.lo < rules.range.hi
        assert math.isfinite(rules.range.lo) and math.isfinite(rules.range.hi)


def test_domain_defaults_follow_the_brief() -> None:
    gas, flood = default_rules("pipe.gas"), default_rules("flood.level")
    assert gas.high[:2] == (10.0, 20.0) and 50.0 in gas.high  # common %LEL alarm levels
    assert flood.high[:3] == (15.0, 27.0, 50.0)  # hinders traffic, stops cars, dangerous
    assert flood.rate.enabled and flood.rate.per_s == 60  # cm per minute
    assert default_rules("pipe.pressure").rate.fall  # a burst is a fast drop
    assert default_rules("flood.level").flatline.rest == 0.0  # dry weather reads 0


def test_an_unknown_kind_gets_every_rule_off_and_thresholds_from_config_only() -> None:
    rules = default_rules("sewer.h2s")
    assert rules == SensorRules(kind="sewer.h2s")
    assert not any(getattr(rules, name).enabled
                   for name in ("rate", "spike", "anomaly", "drift", "flatline", "range"))
    custom = rules_from_overrides("sewer.h2s", {"high": [10, 20], "debounce": 2})
    assert custom.high == (10.0, 20.0) and custom.debounce == 2


def test_overrides_take_top_level_keys_rule_tables_and_dotted_keys() -> None:
    rules = rules_from_overrides("flood.level", {
        "high": [10, 20, 30, 40],
        "hysteresis": 1,
        "rate": {"rise": [2.0, 4.0]},
        "spike.enabled": False,
        "flatline.samples": 120,
    })
    base = default_rules("flood.level")
    assert rules.high == (10.0, 20.0, 30.0, 40.0) and rules.hysteresis == 1.0
    assert rules.rate == dataclasses.replace(base.rate, rise=(2.0, 4.0))
    assert not rules.spike.enabled and rules.flatline.samples == 120
    assert rules.anomaly == base.anomaly


def test_empty_limits_switch_a_threshold_off() -> None:
    assert rules_from_overrides("pipe.pressure", {"low": []}).low == ()


@pytest.mark.parametrize(("overrides", "key"), [
    ({"hgih": [1.0]}, "hgih"),
    ({"high": [0.9, 0.8]}, "high"),
    ({"high": [1, 2, 3, 4, 5]}, "high"),
    ({"high": "0.6"}, "high"),
    ({"low": [0.1, 0.2]}, "low"),
    ({"debounce": 2.5}, "debounce"),
    ({"debounce": 0}, "debounce"),
    ({"hysteresis": -1}, "hysteresis"),
    ({"rate": {"rize": [1.0]}}, "rate.rize"),
    ({"rate.fall": [-1.0]}, "rate.fall"),
    ({"rate": 3}, "rate"),
    ({"spike.window": 4}, "spike.window"),
    ({"anomaly.enabled": "yes"}, "anomaly.enabled"),
    ({"range": {"lo": 5.0, "hi": 1.0}}, "range"),
    ({"kind": "pipe.flow"}, "kind"),
    ({"foo.bar": 1}, "foo.bar"),
])
def test_a_bad_override_raises_an_error_naming_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        rules_from_overrides("pipe.pressure", overrides)


def test_rule_keys_lists_what_config_may_set() -> None:
    assert RULE_KEYS == {"high", "low", "hysteresis", "debounce", "rate", "spike", "anomaly",
                         "drift", "flatline", "range", "spectrum", "trend", "freq_shift"}
