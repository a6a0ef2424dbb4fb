"""Road tunnel signals: CO and visibility following traffic, air temperature, water on the road,
and the convergence of the lining.

A fire raises temperature fast and brings CO and smoke (a higher extinction coefficient); water
ingress fills the carriageway at a steady rate until pumped out. Convergence (`tunnel.convergence`,
mm: the change of a chord across the lining, negative when it closes) follows the lining's
temperature by a fraction of a millimetre a day; a `convergence` event closes it at a steady
rate (squeezing ground, a nearby excavation) by `total_mm` over `duration_s` and it stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Final

import numpy as np

from simulators.signals.base import (
    TRAFFIC,
    WARMEST_HOUR,
    EventSpec,
    FloatArray,
    Rules,
    SampleTimes,
    SignalBase,
    SimSensor,
    add_during,
    at_time_of_day,
    check_positive,
    check_window,
    daily_cosine,
    expected,
    only,
    pulse,
    reject_unsupported,
)

_AMBIENT_C: Final = 20.0  # air temperature a fire's peak is measured from


@dataclass(frozen=True)
class Fire:
    """A vehicle fire: temperature, CO and smoke rise over growth_s and fall after duration_s."""

    name: ClassVar[str] = "fire"
    kinds: ClassVar[frozenset[str]] = frozenset({"tunnel.temp", "tunnel.co", "tunnel.vi"})
    at_s: float
    duration_s: float = 1800.0
    growth_s: float = 180.0
    peak_temp_c: float = 300.0
    peak_co_ppm: float = 500.0
    peak_vi: float = 0.2

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)
        check_positive(
            self.name,
            growth_s=self.growth_s,
            peak_temp_c=self.peak_temp_c - _AMBIENT_C,
            peak_co_ppm=self.peak_co_ppm,
            peak_vi=self.peak_vi,
        )

    @property
    def tau_s(self) -> float:
        """Time constant of growth and decay: 95 % of the peak after growth_s."""
        return self.growth_s / 3.0

    @property
    def end_s(self) -> float:
        """When the fire's effects have nearly gone after it is put out."""
        return self.at_s + self.duration_s + 4.0 * self.tau_s

    @property
    def until_s(self) -> float:
        """After this the fire's effects are taken as exactly zero."""
        return self.at_s + self.duration_s + 10.0 * self.tau_s

    def rise(self, kind: str) -> float:
        """How far the fire lifts a kind's reading at its peak."""
        if kind == "tunnel.temp":
            return self.peak_temp_c - _AMBIENT_C
        if kind == "tunnel.co":
            return self.peak_co_ppm
        return self.peak_vi

    def shape(self, t_s: FloatArray) -> FloatArray:
        """0..1 course of the fire at the given times."""
        return pulse(t_s, self.at_s, self.at_s + self.duration_s, self.tau_s)


@dataclass(frozen=True)
class Ingress:
    """Water entering the tunnel: rises at rate_cm_min up to max_cm, pumped out after duration_s."""

    name: ClassVar[str] = "ingress"
    kinds: ClassVar[frozenset[str]] = frozenset({"tunnel.water"})
    at_s: float
    rate_cm_min: float = 0.5
    max_cm: float = 25.0
    duration_s: float = 3600.0
    recede_cm_min: float = 1.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)
        check_positive(
            self.name,
            rate_cm_min=self.rate_cm_min,
            max_cm=self.max_cm,
            recede_cm_min=self.recede_cm_min,
        )

    @property
    def top_cm(self) -> float:
        """Depth when the inflow stops."""
        return min(self.max_cm, self.rate_cm_min * self.duration_s / 60.0)

    @property
    def end_s(self) -> float:
        """When the water has been pumped out."""
        return self.at_s + self.duration_s + 60.0 * self.top_cm / self.recede_cm_min

    def depth_cm(self, t_s: FloatArray) -> FloatArray:
        """Water depth added at the given times."""
        rising = np.minimum(self.rate_cm_min * (t_s - self.at_s) / 60.0, self.max_cm)
        falling = self.top_cm - self.recede_cm_min * (t_s - self.at_s - self.duration_s) / 60.0
        depth = np.where(t_s < self.at_s + self.duration_s, rising, falling)
        return np.where(t_s >= self.at_s, np.maximum(depth, 0.0), 0.0)


@dataclass(frozen=True)
class Convergence:
    """The lining closes by total_mm over duration_s (a ramp; short: a step) and stays."""

    name: ClassVar[str] = "convergence"
    kinds: ClassVar[frozenset[str]] = frozenset({"tunnel.convergence"})
    at_s: float
    total_mm: float = 3.0
    duration_s: float = 86400.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)
        check_positive(self.name, total_mm=abs(self.total_mm))

    def closing(self, t_s: FloatArray) -> FloatArray:
        """Chord change (mm, negative: closing) at the given times."""
        return -self.total_mm * np.clip((t_s - self.at_s) / self.duration_s, 0.0, 1.0)


@dataclass(frozen=True)
class AirQuantity:
    """A traffic-driven air reading: background + gain * traffic, its noise and its limits."""

    background: float
    traffic_gain: float
    noise: float
    high: tuple[float, float, float, float]
    hysteresis: float
    rate_per_min: float | None


CO: Final = AirQuantity(5.0, 40.0, 1.0, (100.0, 150.0, 200.0, 250.0), 5.0, 50.0)
VISIBILITY: Final = AirQuantity(0.0045, 0.003, 0.0002, (0.012, 0.014, 0.017, 0.020), 0.0005, None)


class _TunnelModel(SignalBase):
    """Shared setup: event checks and fire labels for the kinds a fire shows in."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec]
    ) -> None:
        super().__init__(sensor, t0_ms, seed)
        reject_unsupported(sensor.kind, events)
        self.fires = only(events, Fire)
        self._white = self.noise.stream("white")
        self._wander = self.noise.stream("wander")

    def _label_fires(self, calm_peak: float) -> None:
        rules = self.rules()
        for f in self.fires:
            rise = f.rise(self.sensor.kind)
            self.events.append(
                self.label(
                    "fire",
                    f.at_s,
                    f.end_s,
                    abrupt=True,
                    rules=expected(
                        ("high", rules.crosses_high(calm_peak + 0.9 * rise)),
                        ("rate", rules.exceeds_rate(rise / f.tau_s * 60.0)),
                    ),
                )
            )

    def _fire_rise(self, t_s: FloatArray) -> FloatArray:
        total = np.zeros_like(t_s)
        for f in self.fires:
            add_during(total, t_s, f.at_s, f.until_s, partial(self._fire, f))
        return total

    def _fire(self, fire: Fire, t_s: FloatArray) -> FloatArray:
        return fire.rise(self.sensor.kind) * fire.shape(t_s)


class TunnelAir(_TunnelModel):
    """CO (ppm) or extinction coefficient (1/m): vehicle exhaust following traffic, fire smoke."""

    def __init__(
        self,
        sensor: SimSensor,
        t0_ms: int,
        seed: int,
        events: Sequence[EventSpec],
        quantity: AirQuantity,
    ) -> None:
        super().__init__(sensor, t0_ms, seed, events)
        self.quantity = quantity
        self._label_fires(quantity.background)

    def rules(self) -> Rules:
        """Design limits of the tunnel's ventilation (CO) or visibility."""
        q = self.quantity
        return Rules(self.sensor.kind, q.high, (), q.hysteresis, 3, q.rate_per_min)

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        q = self.quantity
        t = times.t_s
        traffic = at_time_of_day(TRAFFIC, times.tod_s)
        wander = np.tanh(self._wander.smooth(t, 600.0))  # bounded: busy traffic stays in limits
        v = q.background + q.traffic_gain * traffic * (1.0 + 0.15 * wander)
        v += q.noise * self._white.white(start_index, t.size)
        if self.fires:
            v += self._fire_rise(t)
        return self.clip_to_range(v)


class TunnelTemp(_TunnelModel):
    """Tunnel air temperature (degC): daily cycle warmed by traffic; a fire sends it up fast."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed, events)
        self.mean_c = float(self.noise.parameters("site").uniform(16.0, 22.0))
        self._label_fires(self.mean_c)

    def rules(self) -> Rules:
        """Heat detector levels 45, 60, 75, 90 degC and a rate-of-rise of 8 degC/min."""
        return Rules(self.sensor.kind, (45.0, 60.0, 75.0, 90.0), (), 2.0, 3, 8.0)

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        v = self.mean_c + 3.0 * daily_cosine(times.tod_s, WARMEST_HOUR)
        v += 3.0 * at_time_of_day(TRAFFIC, times.tod_s)
        v += 0.3 * self._wander.smooth(t, 1800.0) + 0.1 * self._white.white(start_index, t.size)
        if self.fires:
            v += self._fire_rise(t)
        return self.clip_to_range(v)


class TunnelWater(_TunnelModel):
    """Water on the carriageway (cm): 0 with level-sensor noise, rising during an ingress."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed, events)
        self.ingresses = only(events, Ingress)
        rules = self.rules()
        for w in self.ingresses:
            self.events.append(
                self.label(
                    "ingress",
                    w.at_s,
                    w.end_s,
                    abrupt=False,
                    rules=expected(
                        ("high", rules.crosses_high(w.top_cm)),
                        ("rate", rules.exceeds_rate(w.rate_cm_min)),
                    ),
                )
            )

    def rules(self) -> Rules:
        """Water depth levels: 5, 10, 20, 30 cm."""
        return Rules(self.sensor.kind, (5.0, 10.0, 20.0, 30.0), (), 1.0, 3, 2.0)

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        v = 0.2 * self._white.white(start_index, t.size)
        for w in self.ingresses:
            add_during(v, t, w.at_s, w.end_s, w.depth_cm)
        return self.clip_to_range(v)


class TunnelConvergence(_TunnelModel):
    """Lining convergence (mm): a small daily thermal breathing, gauge noise, and closing."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed, events)
        self.thermal_mm = float(self.noise.parameters("site").uniform(0.1, 0.3))
        self.closings = only(events, Convergence)
        for c in self.closings:
            self.events.append(self.label("convergence", c.at_s, None,
                                          abrupt=c.duration_s <= 600.0, rules=("trend",)))

    def rules(self) -> Rules:
        """No fixed limits: design values are the tunnel's; the `trend` rule watches it."""
        return Rules(self.sensor.kind, (), (), 0.0, 3)

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        v = self.thermal_mm * daily_cosine(times.tod_s, WARMEST_HOUR)
        v += 0.02 * self._wander.smooth(t, 3600.0) + 0.03 * self._white.white(start_index, t.size)
        for c in self.closings:
            add_during(v, t, c.at_s, np.inf, c.closing)
        return self.clip_to_range(v)


def make_convergence(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> TunnelConvergence:
    """A tunnel.convergence model with closing events."""
    return TunnelConvergence(sensor, t0_ms, seed, events)


def make_co(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> TunnelAir:
    """A tunnel.co model with fires."""
    return TunnelAir(sensor, t0_ms, seed, events, CO)


def make_vi(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> TunnelAir:
    """A tunnel.vi (extinction coefficient) model with fires."""
    return TunnelAir(sensor, t0_ms, seed, events, VISIBILITY)


def make_temp(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> TunnelTemp:
    """A tunnel.temp model with fires."""
    return TunnelTemp(sensor, t0_ms, seed, events)


def make_water(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> TunnelWater:
    """A tunnel.water model with water ingress."""
    return TunnelWater(sensor, t0_ms, seed, events)
