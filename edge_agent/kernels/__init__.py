"""Numba kernels of the edge agent: threshold, rate, fault and anomaly rules, window features
(statistics and tracked modal frequencies) and the window rules `trend` and `freq_shift`.

Pure computation over NumPy arrays, batched over many sensors with per-sensor state in arrays
(see `chain.RuleChain` and `features.WindowAccumulator`). Every kernel is compiled with the
central options of `_jit` and cached on disk.

    chain = RuleChain([rules_from_overrides(kind, overrides) for kind, overrides in sensors])
    events = chain.process(values, times_ms, block_sensor, block_start)  # one batch
    for s, r, level, prev, i in zip(events.sensor, events.rule, events.level, events.prev,
                                    events.index):
        ...  # an Alert: RULE_NAMES[r], value=values[i], ts=times_ms[i], limit, extra.score
    saved = chain.state_arrays()  # on shutdown; chain.load_state(saved) on start
"""

from __future__ import annotations

from edge_agent.kernels import _jit
from edge_agent.kernels.chain import RuleChain, run_rules
from edge_agent.kernels.codes import EVENT_RULES, FAULT_RULES, RULE_CODES, RULE_NAMES
from edge_agent.kernels.events import Events
from edge_agent.kernels.features import (
    SpectrumSettings,
    WindowAccumulator,
    WindowFeatures,
    accumulate_window,
)
from edge_agent.kernels.profiles import (
    KINDS,
    PROFILES,
    RULE_KEYS,
    AnomalyRule,
    DriftRule,
    FlatlineRule,
    RangeRule,
    RateRule,
    SensorRules,
    SpikeRule,
    default_rules,
    rules_from_overrides,
)
from edge_agent.kernels.structural import FreqShiftRule, TrendRule, WindowRules

_jit.drop_stale_cache([run_rules, accumulate_window])

__all__ = [
    "EVENT_RULES", "FAULT_RULES", "KINDS", "PROFILES", "RULE_CODES", "RULE_KEYS", "RULE_NAMES",
    "AnomalyRule", "DriftRule", "Events", "FlatlineRule", "RangeRule", "RateRule", "RuleChain",
    "FreqShiftRule", "SensorRules", "SpectrumSettings", "SpikeRule", "TrendRule",
    "WindowAccumulator", "WindowFeatures", "WindowRules", "default_rules",
    "rules_from_overrides",
]
