"""Per-sensor rule settings, the default profile of each built-in kind, and config overrides.

`default_rules(kind)` gives the profile of a built-in kind (contract section 1); config changes
any field with `rules_from_overrides(kind, {...})`. Unknown kinds get every rule off except
the thresholds their config gives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edge_agent.kernels.codes import MAX_LIMITS
from edge_agent.kernels.features import SpectrumSettings
from edge_agent.kernels.structural import FreqShiftRule, TrendRule

Limits = tuple[float, ...]

#: Longest rolling-median window the spike kernel supports (samples).
MAX_SPIKE_WINDOW: Final = 9


def _check_limits(name: str, limits: Limits, *, ascending: bool, positive: bool = False) -> None:
    if len(limits) > MAX_LIMITS:
        raise ValueError(f"{name} has {len(limits)} limits; at most {MAX_LIMITS} (levels 1..4)")
    if not all(math.isfinite(v) for v in limits):
        raise ValueError(f"{name} limits must be finite numbers, got {list(limits)}")
    if positive and any(v <= 0 for v in limits):
        raise ValueError(f"{name} limits must be > 0, got {list(limits)}")
    pairs = zip(limits, limits[1:])
    if ascending and not all(a < b for a, b in pairs):
        raise ValueError(f"{name} limits must be strictly ascending, got {list(limits)}")
    if not ascending and not all(a > b for a, b in pairs):
        raise ValueError(f"{name} limits must be strictly descending, got {list(limits)}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class RateRule:
    """Graded limits on the rate of change, in units per `per_s` seconds (60: per minute).

    The rate is the slope of an exponentially weighted least-squares line through the recent
    samples (time constant `window_s`), so it works with irregular sample times.
    """

    enabled: bool = False
    rise: Limits = ()
    fall: Limits = ()
    per_s: float = 1.0
    window_s: float = 60.0
    hysteresis: float = 0.0
    debounce: int = 3

    def __post_init__(self) -> None:
        _check_limits("rate.rise", self.rise, ascending=True, positive=True)
        _check_limits("rate.fall", self.fall, ascending=True, positive=True)
        _check(self.per_s > 0, f"rate.per_s must be > 0, got {self.per_s}")
        _check(self.window_s > 0, f"rate.window_s must be > 0, got {self.window_s}")
        _check(self.hysteresis >= 0, f"rate.hysteresis must be >= 0, got {self.hysteresis}")
        _check(self.debounce >= 1, f"rate.debounce must be >= 1, got {self.debounce}")


@dataclass(frozen=True)
class SpikeRule:
    """Isolated outliers: an excursion of at most `max_len` samples beyond `k` robust scales
    from the rolling median of the last `window` samples, that then comes back."""

    enabled: bool = False
    window: int = 9
    k: float = 10.0
    max_len: int = 2
    min_dev: float = 1e-9
    scale_samples: int = 200
    clear_samples: int = 600
    #: No candidate opens while the recent mean deviation exceeds `quiet` scales (a burst).
    quiet: float = 3.0
    quiet_samples: int = 16
    #: ...unless the burst has lasted longer than a vehicle takes to cross (then: the sensor).
    burst_s: float = 20.0
    #: A spike's two neighbours on each side must stay within this many scales of the median.
    isolation: float = 5.0
    #: A spike while the site's accelerometer runs this many times its quiet energy is traffic.
    traffic_ratio: float = 2.5
    traffic_hold_s: float = 3.0

    def __post_init__(self) -> None:
        _check(self.quiet > 0, f"spike.quiet must be > 0, got {self.quiet}")
        _check(self.burst_s > 0, f"spike.burst_s must be > 0, got {self.burst_s}")
        _check(self.isolation > 0, f"spike.isolation must be > 0, got {self.isolation}")
        _check(self.quiet_samples >= 1,
               f"spike.quiet_samples must be >= 1, got {self.quiet_samples}")
        _check(self.traffic_ratio > 1, f"spike.traffic_ratio must be > 1, got "
               f"{self.traffic_ratio}")
        _check(0 <= self.traffic_hold_s <= 60,
               f"spike.traffic_hold_s must be in 0..60, got {self.traffic_hold_s}")
        _check(
            self.window in (3, 5, 7, 9),
            f"spike.window must be 3, 5, 7 or 9, got {self.window}",
        )
        _check(self.k > 0, f"spike.k must be > 0, got {self.k}")
        _check(1 <= self.max_len <= self.window // 2,
               f"spike.max_len must be in 1..window//2, got {self.max_len}")
        _check(self.min_dev > 0, f"spike.min_dev must be > 0, got {self.min_dev}")
        _check(self.scale_samples >= 1,
               f"spike.scale_samples must be >= 1, got {self.scale_samples}")
        _check(self.clear_samples >= 1,
               f"spike.clear_samples must be >= 1, got {self.clear_samples}")


@dataclass(frozen=True)
class AnomalyRule:
    """Graded limits on |z|, the deviation of the smoothed signal from its own recent normal
    (EWMA mean over `window_s`, variance over the longer `var_window_s`), after `warmup_s`.
    While raised, the alarm holds that normal for at most `hold_s`; then the new level is
    taken as normal."""

    enabled: bool = False
    z: Limits = (8.0, 12.0, 18.0, 27.0)
    hysteresis: float = 2.0
    debounce: int = 3
    smooth_s: float = 5.0
    window_s: float = 120.0
    var_window_s: float = 4 * 3600.0
    warmup_s: float = 3600.0
    min_std: float = 1e-9
    clip: float = 3.0
    hold_s: float = 2 * 3600.0

    def __post_init__(self) -> None:
        _check_limits("anomaly.z", self.z, ascending=True, positive=True)
        _check(self.hysteresis >= 0, f"anomaly.hysteresis must be >= 0, got {self.hysteresis}")
        _check(self.debounce >= 1, f"anomaly.debounce must be >= 1, got {self.debounce}")
        _check(self.smooth_s >= 0, f"anomaly.smooth_s must be >= 0, got {self.smooth_s}")
        _check(self.window_s > 0, f"anomaly.window_s must be > 0, got {self.window_s}")
        _check(self.var_window_s > 0,
               f"anomaly.var_window_s must be > 0, got {self.var_window_s}")
        _check(self.warmup_s >= 0, f"anomaly.warmup_s must be >= 0, got {self.warmup_s}")
        _check(self.min_std > 0, f"anomaly.min_std must be > 0, got {self.min_std}")
        _check(self.clip > 0, f"anomaly.clip must be > 0, got {self.clip}")
        _check(self.hold_s > 0, f"anomaly.hold_s must be > 0, got {self.hold_s}")


@dataclass(frozen=True)
class DriftRule:
    """Two-sided CUSUM (in sigma-hours) of the slow signal against its long-term baseline,
    learnt over `warmup_s` and then followed with time constant `baseline_s`. A shift faster
    than `jump_s` is an event, not drift: the baseline jumps to it."""

    enabled: bool = False
    smooth_s: float = 600.0
    jump_s: float = 3600.0
    baseline_s: float = 7 * 86400.0
    warmup_s: float = 86400.0
    k: float = 3.0
    h: float = 6.0
    min_std: float = 1e-9

    def __post_init__(self) -> None:
        _check(self.smooth_s >= 0, f"drift.smooth_s must be >= 0, got {self.smooth_s}")
        _check(self.jump_s > self.smooth_s,
               f"drift.jump_s must be > drift.smooth_s, got {self.jump_s}")
        _check(self.baseline_s > 0, f"drift.baseline_s must be > 0, got {self.baseline_s}")
        _check(self.warmup_s >= 0, f"drift.warmup_s must be >= 0, got {self.warmup_s}")
        _check(self.k >= 0, f"drift.k must be >= 0, got {self.k}")
        _check(self.h > 0, f"drift.h must be > 0, got {self.h}")
        _check(self.min_std > 0, f"drift.min_std must be > 0, got {self.min_std}")


@dataclass(frozen=True)
class FlatlineRule:
    """A stuck sensor: `samples` consecutive values within `epsilon` of the first of them.
    Runs at the `rest` value (e.g. 0 cm of water in dry weather) are normal, not stuck."""

    enabled: bool = False
    samples: int = 900
    epsilon: float = 0.0
    rest: float = math.nan

    def __post_init__(self) -> None:
        _check(self.samples >= 2, f"flatline.samples must be >= 2, got {self.samples}")
        _check(self.epsilon >= 0, f"flatline.epsilon must be >= 0, got {self.epsilon}")


@dataclass(frozen=True)
class RangeRule:
    """Values outside [lo, hi], NaN or inf for `debounce` samples; cleared after
    `clear_samples` good ones."""

    enabled: bool = False
    lo: float = -math.inf
    hi: float = math.inf
    debounce: int = 3
    clear_samples: int = 10

    def __post_init__(self) -> None:
        _check(self.lo < self.hi, f"range.lo must be < range.hi, got {self.lo}, {self.hi}")
        _check(self.debounce >= 1, f"range.debounce must be >= 1, got {self.debounce}")
        _check(self.clear_samples >= 1,
               f"range.clear_samples must be >= 1, got {self.clear_samples}")


@dataclass(frozen=True)
class SensorRules:
    """Every rule setting of one sensor: contract thresholds plus the rate/fault/anomaly rules."""

    kind: str
    high: Limits = ()
    low: Limits = ()
    hysteresis: float = 0.0
    debounce: int = 3
    rate: RateRule = field(default_factory=RateRule)
    spike: SpikeRule = field(default_factory=SpikeRule)
    anomaly: AnomalyRule = field(default_factory=AnomalyRule)
    drift: DriftRule = field(default_factory=DriftRule)
    flatline: FlatlineRule = field(default_factory=FlatlineRule)
    range: RangeRule = field(default_factory=RangeRule)
    #: Window features and rules on the summary stream (edge_agent/kernels/structural.py).
    spectrum: SpectrumSettings = field(default_factory=SpectrumSettings)
    trend: TrendRule = field(default_factory=TrendRule)
    freq_shift: FreqShiftRule = field(default_factory=FreqShiftRule)

    def __post_init__(self) -> None:
        _check_limits("high", self.high, ascending=True)
        _check_limits("low", self.low, ascending=False)
        _check(self.hysteresis >= 0, f"hysteresis must be >= 0, got {self.hysteresis}")
        _check(self.debounce >= 1, f"debounce must be >= 1, got {self.debounce}")


@dataclass(frozen=True)
class KindInfo:
    """Unit and physical range of a built-in kind (contract section 1)."""

    unit: str
    lo: float
    hi: float


KINDS: Final[dict[str, KindInfo]] = {
    "pipe.pressure": KindInfo("MPa", -0.1, 4.0),
    "pipe.flow": KindInfo("m3/h", -10_000.0, 10_000.0),
    "pipe.gas": KindInfo("%LEL", -5.0, 100.5),
    "flood.level": KindInfo("cm", -10.0, 1000.0),
    "flood.rain": KindInfo("mm/h", 0.0, 500.0),
    "bridge.accel": KindInfo("m/s2", -100.0, 100.0),
    "bridge.strain": KindInfo("microstrain", -5000.0, 5000.0),
    "bridge.disp": KindInfo("mm", -1000.0, 1000.0),
    "bridge.tilt": KindInfo("deg", -90.0, 90.0),
    "tunnel.co": KindInfo("ppm", -5.0, 2000.0),
    "tunnel.vi": KindInfo("1/m", -0.001, 1.0),
    "tunnel.temp": KindInfo("degC", -50.0, 1200.0),
    "tunnel.water": KindInfo("cm", -10.0, 500.0),
    # not a contract built-in: tunnel lining convergence (change of a chord length)
    "tunnel.convergence": KindInfo("mm", -500.0, 500.0),
}


def _profile(
    kind: str,
    *,
    resolution: float,
    rules: frozenset[str],
    high: Limits = (),
    low: Limits = (),
    hysteresis: float = 0.0,
    debounce: int = 3,
    rate: RateRule = RateRule(),
    rest: float = math.nan,
    spike_max_len: int = 2,
    spike_k: float = SpikeRule.k,
    anomaly_z: Limits = AnomalyRule.z,
    window_rules: frozenset[str] = frozenset(),
) -> SensorRules:
    """Build a kind's profile; `resolution` (the smallest meaningful change, in the kind's unit)
    floors the spike scale, the anomaly and drift sigmas so constant input stays quiet."""
    info = KINDS[kind]
    return SensorRules(
        kind=kind,
        high=high,
        low=low,
        hysteresis=hysteresis,
        debounce=debounce,
        rate=dataclasses.replace(rate, enabled="rate" in rules),
        spike=SpikeRule(enabled="spike" in rules, min_dev=resolution, max_len=spike_max_len,
                        k=spike_k),
        anomaly=AnomalyRule(enabled="anomaly" in rules, min_std=resolution, z=anomaly_z),
        drift=DriftRule(enabled="drift" in rules, min_std=2 * resolution),
        flatline=FlatlineRule(enabled="flatline" in rules, rest=rest),
        range=RangeRule(enabled=True, lo=info.lo, hi=info.hi),
        spectrum=SpectrumSettings(enabled="spectrum" in window_rules),
        trend=TrendRule(enabled="trend" in window_rules, min_std=resolution),
        freq_shift=FreqShiftRule(enabled="freq_shift" in window_rules),
    )


_FAULTS = frozenset({"spike", "flatline", "range"})
_VEHICLE_Z: Final = (10.0, 15.0, 22.0, 33.0)
_VEHICLE_SPIKE_K: Final = 15.0
_SLOW = frozenset({"anomaly", "drift"})
#: Settlement, creep, convergence and tilt trends show in window statistics (`trend`).
_DEFORMATION = frozenset({"trend"})

PROFILES: Final[dict[str, SensorRules]] = {
    "pipe.pressure": _profile(
        "pipe.pressure", resolution=0.002, rules=_FAULTS | _SLOW | {"rate"},
        high=(0.60, 0.70, 0.80, 0.90), low=(0.20, 0.15, 0.10, 0.05), hysteresis=0.02,
        rate=RateRule(fall=(0.005, 0.01, 0.03, 0.06), per_s=1.0, window_s=5.0,
                      hysteresis=0.005, debounce=2),
        spike_max_len=1,  # water hammer lasts seconds: only single-sample glitches are faults
    ),
    "pipe.flow": _profile("pipe.flow", resolution=1.0, rules=_FAULTS | {"anomaly"}, rest=0.0),
    "pipe.gas": _profile(
        "pipe.gas", resolution=0.5, rules=_FAULTS | _SLOW | {"rate"},
        high=(10.0, 20.0, 35.0, 50.0), hysteresis=2.0, debounce=2,
        rate=RateRule(rise=(5.0, 10.0, 20.0, 40.0), per_s=60.0, window_s=10.0,
                      hysteresis=1.0, debounce=3),
        rest=0.0,
    ),
    "flood.level": _profile(
        "flood.level", resolution=0.5, rules=_FAULTS | _SLOW | {"rate"},
        high=(15.0, 27.0, 50.0, 80.0), hysteresis=2.0,
        rate=RateRule(rise=(1.0, 3.0, 6.0, 12.0), per_s=60.0, window_s=120.0,
                      hysteresis=0.5, debounce=5),
        rest=0.0,
    ),
    "flood.rain": _profile(
        "flood.rain", resolution=0.5, rules=frozenset({"flatline", "range"}),
        high=(20.0, 30.0, 50.0, 80.0), hysteresis=2.0, rest=0.0,
    ),
    "bridge.accel": _profile(
        "bridge.accel", resolution=1e-4, rules=frozenset({"flatline", "range"}),
        window_rules=frozenset({"spectrum", "freq_shift"}),
    ),
    # every passing vehicle shows in strain and deflection: against the quiet of the night a
    # heavy one is many noise scales within a spike window and its deviations have heavy
    # tails, so the spike band and the anomaly limits are wider
    "bridge.strain": _profile("bridge.strain", resolution=1.0, rules=_FAULTS | _SLOW,
                              spike_k=_VEHICLE_SPIKE_K, anomaly_z=_VEHICLE_Z,
                              window_rules=_DEFORMATION),
    "bridge.disp": _profile("bridge.disp", resolution=0.05, rules=_FAULTS | _SLOW,
                            spike_k=_VEHICLE_SPIKE_K, anomaly_z=_VEHICLE_Z,
                            window_rules=_DEFORMATION),
    # a pier's or deck's tilt shakes with every heavy vehicle too
    "bridge.tilt": _profile("bridge.tilt", resolution=0.002, rules=_FAULTS | _SLOW,
                            spike_k=_VEHICLE_SPIKE_K, window_rules=_DEFORMATION),
    "tunnel.co": _profile(
        "tunnel.co", resolution=1.0, rules=_FAULTS | _SLOW | {"rate"},
        high=(100.0, 150.0, 200.0, 250.0), hysteresis=5.0,
        rate=RateRule(rise=(20.0, 50.0, 100.0, 200.0), per_s=60.0, window_s=15.0,
                      hysteresis=5.0, debounce=3),
        rest=0.0,
    ),
    "tunnel.vi": _profile(
        "tunnel.vi", resolution=0.0002, rules=_FAULTS | _SLOW,
        high=(0.007, 0.009, 0.012, 0.015), hysteresis=0.0005,
    ),
    "tunnel.temp": _profile(
        "tunnel.temp", resolution=0.1, rules=_FAULTS | {"anomaly", "rate"},
        high=(40.0, 50.0, 60.0, 70.0), hysteresis=1.0,
        rate=RateRule(rise=(2.0, 5.0, 10.0, 20.0), per_s=60.0, window_s=15.0,
                      hysteresis=0.5, debounce=3),
    ),
    "tunnel.water": _profile(
        "tunnel.water", resolution=0.5, rules=_FAULTS | _SLOW | {"rate"},
        high=(5.0, 10.0, 20.0, 30.0), hysteresis=1.0,
        rate=RateRule(rise=(1.0, 3.0, 6.0, 12.0), per_s=60.0, window_s=120.0,
                      hysteresis=0.5, debounce=5),
        rest=0.0,
    ),
    "tunnel.convergence": _profile("tunnel.convergence", resolution=0.05,
                                   rules=frozenset({"spike", "flatline", "range"}),
                                   window_rules=_DEFORMATION),
}

#: Keys `rules_from_overrides` accepts at the top level (the rule sections take a table each).
RULE_KEYS: Final[frozenset[str]] = frozenset(
    f.name for f in dataclasses.fields(SensorRules) if f.name != "kind"
)
_SECTIONS: Final[dict[str, type]] = {
    "rate": RateRule, "spike": SpikeRule, "anomaly": AnomalyRule,
    "drift": DriftRule, "flatline": FlatlineRule, "range": RangeRule,
    "spectrum": SpectrumSettings, "trend": TrendRule, "freq_shift": FreqShiftRule,
}


def default_rules(kind: str) -> SensorRules:
    """The built-in profile of `kind`; unknown kinds get every rule off (thresholds from config)."""
    return PROFILES.get(kind) or SensorRules(kind=kind)


def _coerce(key: str, annotation: str, value: Any) -> Any:
    """Convert one config value to the field's type; ValueError names `key`."""
    if annotation == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if annotation == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if annotation == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if annotation == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: expected a string, got {value!r}")
    if annotation == "Limits":
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return tuple(float(v) for v in value)
        raise ValueError(f"{key}: expected a list of numbers, got {value!r}")
    raise ValueError(f"{key}: cannot be overridden")


def _replace(obj: Any, prefix: str, changes: Mapping[str, Any]) -> Any:
    """`dataclasses.replace` with type checks; errors name the offending `prefix + key`."""
    types = {f.name: str(f.type) for f in dataclasses.fields(obj)}
    coerced: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in types or key == "kind":
            raise ValueError(f"{prefix}{key}: unknown rule setting")
        coerced[key] = _coerce(prefix + key, types[key], value)
    try:
        return dataclasses.replace(obj, **coerced)
    except ValueError as exc:
        raise ValueError(f"{prefix}{', '.join(changes)}: {exc}") from exc


def rules_from_overrides(kind: str, overrides: Mapping[str, Any]) -> SensorRules:
    """`default_rules(kind)` with config `overrides` applied: top-level keys (`high`, `low`,
    `hysteresis`, `debounce`), rule tables (`{"rate": {"rise": [...]}}`) or dotted keys
    (`"rate.rise"`). Raises ValueError naming the key of a bad override."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        name, _, sub = str(key).partition(".")
        if name in _SECTIONS:
            if sub:
                sections.setdefault(name, {})[sub] = value
            elif isinstance(value, Mapping):
                sections.setdefault(name, {}).update(value)
            else:
                raise ValueError(f"{key}: expected a table of {name} settings, got {value!r}")
        elif sub or name not in RULE_KEYS:
            raise ValueError(f"{key}: unknown rule setting")
        else:
            top[name] = value
    rules = default_rules(kind)
    nested = {
        name: _replace(getattr(rules, name), f"{name}.", changes)
        for name, changes in sections.items()
    }
    rules = _replace(rules, "", top)
    return dataclasses.replace(rules, **nested)
