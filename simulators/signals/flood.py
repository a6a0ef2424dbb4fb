"""Flood signals: rain intensity at a gauge and the water depth it builds at a street point.

Depth rises while the lagged rain exceeds the drainage capacity and recedes after; it is integrated
once per rain spell on a fixed grid at construction, so every render reads the same trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

import numba
import numpy as np

from simulators.signals.base import (
    EventSpec,
    FloatArray,
    LabelledEvent,
    NoiseSource,
    NoiseStream,
    Rules,
    SampleTimes,
    SignalBase,
    SimSensor,
    add_during,
    check_positive,
    check_window,
    expected,
    only,
    reject_unsupported,
)

_KINDS: Final = frozenset({"flood.rain", "flood.level"})
_STEP_S: Final = 1.0  # integration step of the depth
_STORE_EVERY: Final = 10  # keep every 10th step of the depth trajectory
_RUNOFF_LAG_S: Final = 300.0  # rain reaches the street point averaged over this window
_CM_PER_S_PER_MM_H: Final = 9.0e-4  # depth rise per unit of rain above drainage capacity
_SPREAD_PER_S: Final = 1.0 / 2400.0  # extra outflow proportional to depth (overland spreading)
_RAIN_VARIATION: Final = 0.2


@dataclass(frozen=True)
class Rain:
    """A rain event: intensity rises to peak_mm_h at peak_fraction of duration_s and stops."""

    name: ClassVar[str] = "rain"
    kinds: ClassVar[frozenset[str]] = _KINDS
    at_s: float
    duration_s: float = 3600.0
    peak_mm_h: float = 80.0
    peak_fraction: float = 0.35

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)
        check_positive(self.name, peak_mm_h=self.peak_mm_h)
        if not 0.0 < self.peak_fraction < 1.0:
            raise ValueError(f"rain: peak_fraction must be in (0, 1), got {self.peak_fraction}")

    @property
    def end_s(self) -> float:
        """When the rain stops."""
        return self.at_s + self.duration_s

    def shape(self, t_s: FloatArray) -> FloatArray:
        """Intensity without variation: sin^2 of a warped time, 1 at the peak, 0 outside."""
        x = np.clip((t_s - self.at_s) / self.duration_s, 0.0, 1.0)
        power = math.log(0.5) / math.log(self.peak_fraction)
        raining = (x > 0.0) & (x < 1.0)
        return np.where(raining, self.peak_mm_h * np.sin(np.pi * x**power) ** 2, 0.0)


class RainField:
    """Rain intensity over a district: the same seed gives every gauge and street the same storm."""

    def __init__(self, seed: int, rains: Sequence[Rain]) -> None:
        self.rains = list(rains)
        self._variation: NoiseStream = NoiseSource(seed, "rain-field").stream("variation")

    def intensity(self, t_s: FloatArray) -> FloatArray:
        """Rain intensity (mm/h) at the given times."""
        total = np.zeros_like(t_s)
        for rain in self.rains:
            add_during(total, t_s, rain.at_s, rain.end_s, rain.shape)
        if not total.any():
            return total
        wobble = 1.0 + _RAIN_VARIATION * np.tanh(self._variation.smooth(t_s, 120.0))
        return total * wobble


@numba.njit(cache=True)
def _pond_depth(
    excess_cm_s: FloatArray, spread_per_s: float, step_s: float, out: FloatArray
) -> None:
    h = 0.0
    for i in range(excess_cm_s.size):
        h = max(0.0, h + (excess_cm_s[i] - spread_per_s * h) * step_s)
        out[i] = h


@dataclass(frozen=True)
class Spell:
    """Depth over one wet spell, on a regular grid from start_s; zero outside it."""

    start_s: float
    step_s: float
    depth_cm: FloatArray

    @property
    def end_s(self) -> float:
        """Time of the last grid point."""
        return self.start_s + self.step_s * (self.depth_cm.size - 1)


def _spell_groups(rains: Sequence[Rain], drainage_mm_h: float) -> list[list[Rain]]:
    """Rain events grouped so the water of one group has drained before the next starts."""
    groups: list[list[Rain]] = []
    group_end = -math.inf
    for rain in sorted(rains, key=lambda r: r.at_s):
        if rain.at_s > group_end:
            groups.append([])
        groups[-1].append(rain)
        group_end = max(group_end, _drained_by_s(groups[-1], drainage_mm_h))
    return groups


def _drained_by_s(rains: Sequence[Rain], drainage_mm_h: float) -> float:
    """A time by which the depth of these rains is back to zero (an upper bound)."""
    worst_cm = sum(
        _CM_PER_S_PER_MM_H * r.peak_mm_h * (1.0 + _RAIN_VARIATION) * r.duration_s for r in rains
    )
    recession_cm_s = _CM_PER_S_PER_MM_H * drainage_mm_h
    return max(r.end_s for r in rains) + _RUNOFF_LAG_S + worst_cm / recession_cm_s + 60.0


def _spell(field: RainField, rains: Sequence[Rain], drainage_mm_h: float) -> Spell:
    start = min(r.at_s for r in rains)
    grid = np.arange(start, _drained_by_s(rains, drainage_mm_h), _STEP_S)
    rain = field.intensity(grid)
    kernel = np.ones(int(_RUNOFF_LAG_S / _STEP_S)) / int(_RUNOFF_LAG_S / _STEP_S)
    lagged = np.convolve(rain, kernel)[: grid.size]
    excess = _CM_PER_S_PER_MM_H * (lagged - drainage_mm_h)
    depth = np.empty_like(grid)
    _pond_depth(excess, _SPREAD_PER_S, _STEP_S, depth)
    return Spell(start, _STEP_S * _STORE_EVERY, depth[::_STORE_EVERY].copy())


def _wet_runs(spell: Spell) -> list[tuple[float, float]]:
    """(start_s, end_s) of each run of standing water in a spell."""
    wet = np.concatenate(([False], spell.depth_cm > 0.0, [False]))
    edges = np.flatnonzero(np.diff(wet.astype(np.int8)))
    return [
        (spell.start_s + a * spell.step_s, spell.start_s + b * spell.step_s)
        for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]


class FloodRain(SignalBase):
    """A rain gauge (mm/h): exactly 0 in dry weather, the storm's intensity while it rains."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed)
        reject_unsupported(sensor.kind, events)
        self.field = RainField(seed, only(events, Rain))
        rules = self.rules()
        for rain in self.field.rains:
            self.events.append(
                self.label(
                    "rainstorm",
                    rain.at_s,
                    rain.end_s,
                    abrupt=False,
                    rules=expected(
                        ("high", rules.crosses_high((1.0 - _RAIN_VARIATION) * rain.peak_mm_h))
                    ),
                )
            )

    def rules(self) -> Rules:
        """Short-duration heavy rain levels: 20, 30, 50, 70 mm/h."""
        return Rules(
            self.sensor.kind,
            high=(20.0, 30.0, 50.0, 70.0),
            low=(),
            hysteresis=2.0,
            debounce=3,
            rate_per_min=20.0,
        )

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        return self.clip_to_range(self.field.intensity(times.t_s))


class FloodLevel(SignalBase):
    """Water depth at a street point (cm): 0 when dry, rising while rain exceeds drainage."""

    def __init__(
        self,
        sensor: SimSensor,
        t0_ms: int,
        seed: int,
        events: Sequence[EventSpec] = (),
        drainage_mm_h: float = 30.0,
    ) -> None:
        super().__init__(sensor, t0_ms, seed)
        reject_unsupported(sensor.kind, events)
        check_positive("flood.level", drainage_mm_h=drainage_mm_h)
        field = RainField(seed, only(events, Rain))
        self.spells = [
            _spell(field, group, drainage_mm_h)
            for group in _spell_groups(field.rains, drainage_mm_h)
        ]
        self._white = self.noise.stream("white")
        rules = self.rules()
        for spell in self.spells:
            for start_s, end_s in _wet_runs(spell):
                self.events.append(self._waterlogging(spell, start_s, end_s, rules))

    def _waterlogging(
        self, spell: Spell, start_s: float, end_s: float, rules: Rules
    ) -> LabelledEvent:
        i0 = round((start_s - spell.start_s) / spell.step_s)
        i1 = round((end_s - spell.start_s) / spell.step_s)
        run = spell.depth_cm[i0:i1]
        per_min = round(60.0 / spell.step_s)
        max_rise = float(np.max(run[per_min:] - run[:-per_min])) if run.size > per_min else 0.0
        return self.label(
            "waterlogging",
            start_s,
            end_s,
            abrupt=False,
            rules=expected(
                ("high", rules.crosses_high(float(run.max()))),
                ("rate", rules.exceeds_rate(max_rise)),
            ),
        )

    def depth_cm(self, t_s: FloatArray) -> FloatArray:
        """Noise-free depth at the given times."""
        depth = np.zeros_like(t_s)
        for spell in self.spells:
            if t_s.size and t_s[0] <= spell.end_s and t_s[-1] >= spell.start_s:
                grid = spell.start_s + spell.step_s * np.arange(spell.depth_cm.size)
                depth += np.interp(t_s, grid, spell.depth_cm, left=0.0, right=0.0)
        return depth

    def rules(self) -> Rules:
        """Depth levels: 15 cm hinders traffic, 27 cm stops cars, 40 cm, 50 cm is dangerous."""
        return Rules(
            self.sensor.kind,
            high=(15.0, 27.0, 40.0, 50.0),
            low=(),
            hysteresis=1.0,
            debounce=3,
            rate_per_min=2.0,
        )

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        depth = self.depth_cm(times.t_s) + 0.2 * self._white.white(start_index, times.t_s.size)
        return self.clip_to_range(depth)


def make_rain(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> FloodRain:
    """A flood.rain gauge model driven by Rain events."""
    return FloodRain(sensor, t0_ms, seed, events)


def make_level(
    sensor: SimSensor,
    t0_ms: int,
    seed: int,
    events: Sequence[EventSpec] = (),
    drainage_mm_h: float = 30.0,
) -> FloodLevel:
    """A flood.level model: depth built by Rain events above the street's drainage capacity."""
    return FloodLevel(sensor, t0_ms, seed, events, drainage_mm_h)
