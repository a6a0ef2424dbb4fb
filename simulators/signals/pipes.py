"""Water and gas pipe signals: pressure and flow following daily demand, bursts, leaks, hammer, gas.

Demand has a morning and an evening peak and its night minimum between 02:00 and 04:00 local
time; pressure falls with the square of demand (head loss), flow follows demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Final

import numpy as np

from simulators.signals.base import (
    EventSpec,
    FloatArray,
    Rules,
    SampleTimes,
    SignalBase,
    SimSensor,
    add_during,
    at_time_of_day,
    bump,
    check_positive,
    check_window,
    daily_table,
    damped_sine,
    expected,
    only,
    pulse,
    reject_unsupported,
    rounded,
)

#: Relative water demand by local hour (1 = the daily peak); flat minimum 02:00-04:00.
DEMAND: Final = daily_table(
    lambda h: (
        0.30 + 0.85 * bump(h, 7.5, 1.0) + 0.40 * bump(h, 12.0, 1.5) + 0.75 * bump(h, 19.5, 1.6)
    )
)

_BURST_TRANSIENT_PERIOD_S: Final = 2.0
_BURST_TRANSIENT_DECAY_S: Final = 2.0
_FLOW_JUMP_PER_MPA: Final = 6.0
_SURGE_RATE_HZ: Final = 5.0  # pressure sampled this fast watches for surges
#: A gas leak is abrupt (a rupture) when its concentration builds within this; a build-up over
#: minutes is a gradual event, whose delay is counted in seconds, not against the abrupt goal.
ABRUPT_RAMP_S: Final = 30.0  # default burst flow jump, in peak flows per MPa of drop


@dataclass(frozen=True)
class Burst:
    """A main burst: pressure falls by drop_mpa within rise_s and flow jumps until it is isolated."""

    name: ClassVar[str] = "burst"
    kinds: ClassVar[frozenset[str]] = frozenset({"pipe.pressure", "pipe.flow"})
    at_s: float
    drop_mpa: float = 0.15
    duration_s: float = 1800.0
    rise_s: float = 5.0
    flow_jump_m3h: float | None = None

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)
        check_positive(self.name, drop_mpa=self.drop_mpa, rise_s=self.rise_s)

    @property
    def tau_s(self) -> float:
        """Time constant of the fall: 98 % of the drop is reached after rise_s."""
        return self.rise_s / 4.0

    def pressure_mpa(self, t_s: FloatArray) -> FloatArray:
        """Pressure change at the given times: the drop and a short transient at its onset."""
        transient = damped_sine(t_s, self.at_s, _BURST_TRANSIENT_PERIOD_S, _BURST_TRANSIENT_DECAY_S)
        return -self.drop_mpa * (pulse(t_s, self.at_s, self.end_s, self.tau_s) + 0.3 * transient)

    @property
    def end_s(self) -> float:
        """When the burst is isolated and pressure recovers."""
        return self.at_s + self.duration_s

    @property
    def until_s(self) -> float:
        """After this the burst's effect is taken as exactly zero."""
        return self.end_s + 10.0 * self.tau_s


@dataclass(frozen=True)
class Leak:
    """A slow leak: extra flow growing by growth_m3h_per_day (up to max_m3h) until repaired."""

    name: ClassVar[str] = "leak"
    kinds: ClassVar[frozenset[str]] = frozenset({"pipe.flow"})
    at_s: float
    growth_m3h_per_day: float = 5.0
    duration_s: float = 14 * 86_400.0
    max_m3h: float = 100.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)
        check_positive(self.name, growth_m3h_per_day=self.growth_m3h_per_day, max_m3h=self.max_m3h)

    @property
    def end_s(self) -> float:
        """When the leak is repaired."""
        return self.at_s + self.duration_s

    def flow_m3h(self, t_s: FloatArray) -> FloatArray:
        """Leak flow at the given times."""
        grown = np.minimum(self.growth_m3h_per_day * (t_s - self.at_s) / 86_400.0, self.max_m3h)
        return np.where((t_s >= self.at_s) & (t_s < self.end_s), grown, 0.0)


@dataclass(frozen=True)
class Hammer:
    """A water hammer transient (pump trip, fast valve closure): a damped pressure oscillation."""

    name: ClassVar[str] = "hammer"
    kinds: ClassVar[frozenset[str]] = frozenset({"pipe.pressure"})
    at_s: float
    amplitude_mpa: float = 0.12
    period_s: float = 1.5
    decay_s: float = 2.5

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s)
        check_positive(
            self.name,
            amplitude_mpa=self.amplitude_mpa,
            period_s=self.period_s,
            decay_s=self.decay_s,
        )

    @property
    def end_s(self) -> float:
        """When the oscillation has decayed below 1 % of its amplitude."""
        return self.at_s + 4.6 * self.decay_s

    @property
    def until_s(self) -> float:
        """After this the oscillation is taken as exactly zero."""
        return self.at_s + 12.0 * self.decay_s

    def pressure_mpa(self, t_s: FloatArray) -> FloatArray:
        """The transient's pressure at the given times."""
        return self.amplitude_mpa * damped_sine(t_s, self.at_s, self.period_s, self.decay_s)

    def held_swing_mpa(self, samples: int, rate_hz: float) -> tuple[float, float]:
        """Largest rise and fall that `samples` consecutive samples all reach, whatever the
        sampling phase: what a limit with that debounce can see of the surge."""
        phases = np.linspace(0.0, 1.0 / rate_hz, 16, endpoint=False)
        steps = np.arange(round(self.until_s * rate_hz - self.at_s * rate_hz) + 1) / rate_hz
        t = self.at_s + phases[:, None] + steps[None, :]
        p = self.pressure_mpa(t)
        windows = np.lib.stride_tricks.sliding_window_view(p, samples, axis=1)
        rise = windows.min(axis=2).max(axis=1).min()
        fall = -windows.max(axis=2).min(axis=1).max()
        return float(max(rise, 0.0)), float(max(fall, 0.0))


@dataclass(frozen=True)
class GasLeak:
    """Gas escaping near a pipe: %LEL rises to about peak_lel over ramp_s, falls after duration_s."""

    name: ClassVar[str] = "gas_leak"
    kinds: ClassVar[frozenset[str]] = frozenset({"pipe.gas"})
    at_s: float
    peak_lel: float = 40.0
    ramp_s: float = 300.0
    duration_s: float = 1800.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)
        check_positive(self.name, peak_lel=self.peak_lel, ramp_s=self.ramp_s)

    @property
    def tau_s(self) -> float:
        """Time constant of the rise and fall: 95 % of the peak after ramp_s."""
        return self.ramp_s / 3.0

    @property
    def end_s(self) -> float:
        """When the concentration has fallen back near zero after the source stops."""
        return self.at_s + self.duration_s + 4.0 * self.tau_s

    @property
    def until_s(self) -> float:
        """After this the leak's gas is taken as exactly zero."""
        return self.at_s + self.duration_s + 10.0 * self.tau_s


class PipePressure(SignalBase):
    """Network pressure (MPa): static head minus demand head loss, with burst drops and hammer."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed)
        reject_unsupported(sensor.kind, events)
        site = self.noise.parameters("site")
        self.static_mpa = float(site.uniform(0.43, 0.50))
        self.headloss_mpa = float(site.uniform(0.08, 0.12))
        self.bursts: list[Burst] = only(events, Burst)
        self.hammers: list[Hammer] = only(events, Hammer)
        self._white = self.noise.stream("white")
        self._demand_wander = self.noise.stream("demand")
        self._head_wander = self.noise.stream("head")
        rules = self.rules()
        for b in self.bursts:
            trough = self.clean(b.at_s + b.rise_s) - b.drop_mpa
            self.events.append(
                self.label(
                    "burst",
                    b.at_s,
                    b.end_s,
                    abrupt=True,
                    rules=expected(
                        ("low", rules.crosses_low(trough)),
                        ("rate", rules.exceeds_rate(b.drop_mpa)),
                        ("anomaly", True),
                    ),
                )
            )
        for h in self.hammers:
            # a surge is an event (not a sensor fault): it alarms when its swing, held for the
            # debounce, goes past the pressure limits; a swing inside them is not alarmed
            before = self.clean(h.at_s)
            held = h.held_swing_mpa(rules.debounce, sensor.rate_hz)
            self.events.append(
                self.label(
                    "hammer",
                    h.at_s,
                    h.end_s,
                    abrupt=True,
                    rules=expected(
                        ("high", rules.crosses_high(before + held[0])),
                        ("low", rules.crosses_low(before - held[1])),
                    ),
                )
            )

    def clean(self, t_s: float) -> float:
        """Noise-free healthy pressure at one time."""
        tod = np.array([t_s + self.clock.tod0_s])
        return float(self.static_mpa - self.headloss_mpa * at_time_of_day(DEMAND, tod)[0] ** 2)

    def rules(self) -> Rules:
        """Low limits from 0.05 MPa under the daily minimum, high from 0.06 MPa over static.
        A transmitter sampled at 5 Hz or more watches for surges (water hammer, whose swings
        last under a second): its limits hold for 2 samples (0.4 s), others for 3."""
        trough = self.static_mpa - self.headloss_mpa
        return Rules(
            self.sensor.kind,
            high=rounded([self.static_mpa + d for d in (0.06, 0.12, 0.18, 0.24)], 0.01),
            low=rounded([trough - d for d in (0.05, 0.10, 0.15, 0.20)], 0.01),
            hysteresis=0.01,
            debounce=2 if self.sensor.rate_hz >= _SURGE_RATE_HZ else 3,
            rate_per_min=0.04,
        )

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        demand = at_time_of_day(DEMAND, times.tod_s)
        p = self.static_mpa - self.headloss_mpa * demand**2 * (
            1.0 + 0.03 * self._demand_wander.smooth(t, 600.0)
        )
        p += 0.003 * self._head_wander.smooth(t, 1800.0)
        p += 0.002 * self._white.white(start_index, t.size)
        for b in self.bursts:
            add_during(p, t, b.at_s, b.until_s, b.pressure_mpa)
        for h in self.hammers:
            add_during(p, t, h.at_s, h.until_s, h.pressure_mpa)
        return self.clip_to_range(p)


class PipeFlow(SignalBase):
    """District meter flow (m3/h): demand times the peak flow, plus burst outflow and leaks."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed)
        reject_unsupported(sensor.kind, events)
        self.peak_m3h = float(self.noise.parameters("site").uniform(80.0, 400.0))
        self.bursts: list[Burst] = only(events, Burst)
        self.leaks: list[Leak] = only(events, Leak)
        self._white = self.noise.stream("white")
        self._demand_wander = self.noise.stream("demand")
        rules = self.rules()
        for b in self.bursts:
            jump = self.burst_jump_m3h(b)
            self.events.append(
                self.label(
                    "burst",
                    b.at_s,
                    b.end_s,
                    abrupt=True,
                    rules=expected(
                        ("high", rules.crosses_high(self.clean(b.at_s + b.rise_s) + jump)),
                        ("rate", rules.exceeds_rate(jump)),
                        ("anomaly", True),
                    ),
                )
            )
        for leak in self.leaks:
            self.events.append(
                self.label("leak", leak.at_s, leak.end_s, abrupt=False, rules=("anomaly",))
            )

    def burst_jump_m3h(self, burst: Burst) -> float:
        """Extra flow through a burst: given, or scaled from its pressure drop."""
        if burst.flow_jump_m3h is not None:
            return burst.flow_jump_m3h
        return _FLOW_JUMP_PER_MPA * burst.drop_mpa * self.peak_m3h

    def _burst_flow(self, burst: Burst, t_s: FloatArray) -> FloatArray:
        """Flow out of a burst at the given times."""
        return self.burst_jump_m3h(burst) * pulse(t_s, burst.at_s, burst.end_s, burst.tau_s)

    def clean(self, t_s: float) -> float:
        """Noise-free healthy flow at one time."""
        tod = np.array([t_s + self.clock.tod0_s])
        return float(self.peak_m3h * at_time_of_day(DEMAND, tod)[0])

    def rules(self) -> Rules:
        """High limits from 1.35 times the daily peak flow; no low limit (night flow is low)."""
        return Rules(
            self.sensor.kind,
            high=rounded([self.peak_m3h * f for f in (1.35, 1.7, 2.1, 2.6)], 1.0),
            low=(),
            hysteresis=round(0.02 * self.peak_m3h, 1),
            debounce=3,
            rate_per_min=round(0.3 * self.peak_m3h, 1),
        )

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        demand = at_time_of_day(DEMAND, times.tod_s)
        q = self.peak_m3h * demand * (1.0 + 0.03 * self._demand_wander.smooth(t, 600.0))
        q += 0.01 * self.peak_m3h * self._white.white(start_index, t.size)
        for b in self.bursts:
            add_during(q, t, b.at_s, b.until_s, partial(self._burst_flow, b))
        for leak in self.leaks:
            add_during(q, t, leak.at_s, leak.end_s, leak.flow_m3h)
        return self.clip_to_range(q)


class PipeGas(SignalBase):
    """Combustible gas near a pipe (%LEL): near zero with sensor noise, ramps up in a gas leak."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed)
        reject_unsupported(sensor.kind, events)
        self.gas_leaks: list[GasLeak] = only(events, GasLeak)
        self._white = self.noise.stream("white")
        self._background = self.noise.stream("background")
        self._plume = self.noise.stream("plume")
        rules = self.rules()
        for g in self.gas_leaks:
            self.events.append(
                self.label(
                    "gas_leak",
                    g.at_s,
                    g.end_s,
                    abrupt=g.ramp_s <= ABRUPT_RAMP_S,
                    rules=expected(
                        ("high", rules.crosses_high(0.8 * g.peak_lel)),
                        ("rate", rules.exceeds_rate(g.peak_lel / g.tau_s * 60.0)),
                    ),
                )
            )

    def rules(self) -> Rules:
        """Alarm levels of gas detectors: 10, 20, 35, 50 %LEL."""
        return Rules(
            self.sensor.kind,
            high=(10.0, 20.0, 35.0, 50.0),
            low=(),
            hysteresis=2.0,
            debounce=2,
            rate_per_min=5.0,
        )

    def _gas(self, leak: GasLeak, t_s: FloatArray) -> FloatArray:
        """%LEL a leak adds: its course times a turbulent plume factor."""
        plume = 1.0 + 0.2 * self._plume.smooth(t_s, 10.0)
        return (
            leak.peak_lel * pulse(t_s, leak.at_s, leak.at_s + leak.duration_s, leak.tau_s) * plume
        )

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        c = 0.3 + 0.15 * self._background.smooth(t, 300.0)
        c += 0.2 * self._white.white(start_index, t.size)
        for g in self.gas_leaks:
            add_during(c, t, g.at_s, g.until_s, partial(self._gas, g))
        return self.clip_to_range(c)


def make_pressure(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> PipePressure:
    """A pipe.pressure model with bursts and hammer transients."""
    return PipePressure(sensor, t0_ms, seed, events)


def make_flow(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> PipeFlow:
    """A pipe.flow model with bursts and slow leaks."""
    return PipeFlow(sensor, t0_ms, seed, events)


def make_gas(sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()) -> PipeGas:
    """A pipe.gas model with gas leaks."""
    return PipeGas(sensor, t0_ms, seed, events)
