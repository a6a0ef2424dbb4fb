"""Bridge signals: modal vibration, strain and deflection under passing vehicles, tilt, and
the deck's temperature.

Natural frequencies follow the daily temperature cycle (stiffness falls as it warms: -0.2 % per
degC) and drop by a given percentage from a damage time on; vehicles arrive at random in fixed
time slots, so each passing load is a pure function of its slot number. The climate (the daily
temperature swing), the vehicles and the first natural frequency belong to the site: every
sensor of a site sees the same ones, so an accelerometer's traffic bursts coincide with the
strain's and the tilt's, and a `bridge.temp` sensor reads the temperature that moves the
frequencies. Each vehicle also shakes the deck at its first mode for the ~3 s it takes to cross:
a burst in the acceleration and, smaller, in the tilt. A `structure` spec sets the first
frequency (e.g. a short test span at 10.8 Hz); `settlement` moves strain, deflection and tilt
as a step (short `duration_s`) or a slow ramp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from dataclasses import dataclass
from typing import ClassVar, Final

import numba
import numpy as np

from simulators.signals.base import (
    DAY_S,
    NoiseSource,
    TRAFFIC,
    WARMEST_HOUR,
    EventSpec,
    FloatArray,
    NoiseStream,
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
    normal_at,
    only,
    reject_unsupported,
    uniform_at,
)

_FREQ_PER_DEGC: Final = -0.002  # relative change of natural frequency per degC
_MODE_RATIOS: Final = (1.0, 1.8, 2.5)
_MODE_ACCEL: Final = (0.02, 0.01, 0.006)  # m/s2 per unit of traffic excitation
_MODE_COHERENCE_S: Final = 10.0  # how long a mode's amplitude and phase stay alike
_SLOT_S: Final = 8.0  # at most one vehicle per lane per slot
_PASS_S: Final = 3.0  # time a vehicle takes to cross the span
_LANES: Final = 2
_WEIGHT_SIGMA: Final = 0.5  # log-normal spread of vehicle loads
_WEIGHT_CAP: Final = 4.0  # heaviest legal vehicle, in median vehicles
_KINDS_RESPONDING: Final = frozenset({"bridge.accel", "bridge.strain", "bridge.disp"})
_TILT_VIBRATION_DEG: Final = 0.006  # tilt shaken by a median vehicle, at the first mode
_BURST_GAIN: Final = 1.5  # acceleration excitation added by a median vehicle on the span
_MEAN_TEMP_C: Final = 15.0


@dataclass(frozen=True)
class Structure:
    """The span itself: its first natural frequency (drawn in 1.5-4 Hz when not given)."""

    name: ClassVar[str] = "structure"
    kinds: ClassVar[frozenset[str]] = frozenset(
        {"bridge.accel", "bridge.strain", "bridge.disp", "bridge.tilt", "bridge.temp"})
    at_s: float = 0.0
    first_hz: float = 0.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s)
        if not self.first_hz >= 0.0:
            raise ValueError(f"structure: first_hz must be >= 0, got {self.first_hz}")


@dataclass(frozen=True)
class Damage:
    """Stiffness loss from at_s on: natural frequencies drop by drop_pct percent, loads bite more."""

    name: ClassVar[str] = "damage"
    kinds: ClassVar[frozenset[str]] = _KINDS_RESPONDING
    at_s: float
    drop_pct: float = 3.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s)
        if not 0.0 < self.drop_pct < 50.0:
            raise ValueError(f"damage: drop_pct must be in (0, 50), got {self.drop_pct}")


@dataclass(frozen=True)
class Overload:
    """An overweight vehicle crossing: factor times the median vehicle's strain and deflection."""

    name: ClassVar[str] = "overload"
    kinds: ClassVar[frozenset[str]] = frozenset({"bridge.strain", "bridge.disp"})
    at_s: float
    factor: float = 20.0
    pass_s: float = 4.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s)
        check_positive(self.name, factor=self.factor, pass_s=self.pass_s)

    @property
    def end_s(self) -> float:
        """When the vehicle has left the span."""
        return self.at_s + self.pass_s

    def load(self, t_s: FloatArray) -> FloatArray:
        """The vehicle on the span, in median vehicles, at the given times."""
        x = np.clip((t_s - self.at_s) / self.pass_s, 0.0, 1.0)
        return self.factor * np.sin(np.pi * x) ** 2


@dataclass(frozen=True)
class Settlement:
    """A pier or support settles: tilt, strain and deflection move by tilt_deg, strain_ue and
    disp_mm over duration_s (a step when short, a ramp when long) and stay."""

    name: ClassVar[str] = "settlement"
    kinds: ClassVar[frozenset[str]] = frozenset({"bridge.tilt", "bridge.strain", "bridge.disp"})
    at_s: float
    tilt_deg: float = 0.1
    duration_s: float = 3600.0
    strain_ue: float = 60.0
    disp_mm: float = 3.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)

    def size(self, kind: str) -> float:
        """How far the settlement moves a kind's reading."""
        return {"bridge.tilt": self.tilt_deg, "bridge.strain": self.strain_ue,
                "bridge.disp": self.disp_mm}[kind]

    def shift(self, kind: str, t_s: FloatArray) -> FloatArray:
        """The kind's reading added by the settlement at the given times."""
        return self.size(kind) * np.clip((t_s - self.at_s) / self.duration_s, 0.0, 1.0)

    def tilt(self, t_s: FloatArray) -> FloatArray:
        """Tilt added by the settlement at the given times."""
        return self.shift("bridge.tilt", t_s)


@numba.njit(cache=True)
def _traffic_at(table: FloatArray, tod_s: float) -> float:
    minute = (tod_s % 86_400.0) / 60.0
    i = min(int(minute), table.size - 2)
    w = minute - i
    return table[i] * (1.0 - w) + table[i + 1] * w


@numba.njit(cache=True)
def _passing_loads(
    key: np.uint64,
    t_s: FloatArray,
    tod0_s: float,
    traffic: FloatArray,
    out: FloatArray,
) -> None:
    """Sum of the vehicles on the span, in median vehicles, at each sample time."""
    for i in range(t_s.size):
        t = t_s[i]
        now = math.floor(t / _SLOT_S)
        total = 0.0
        for slot in range(max(now - 1, 0), now + 1):
            n = np.uint64(slot) * np.uint64(4)
            if uniform_at(key, n) > 0.9 * _traffic_at(traffic, tod0_s + slot * _SLOT_S):
                continue
            arrival = (slot + uniform_at(key, n + np.uint64(1))) * _SLOT_S
            x = (t - arrival) / _PASS_S
            if 0.0 <= x < 1.0:
                z = normal_at(key, n + np.uint64(2))
                weight = min(math.exp(_WEIGHT_SIGMA * z), _WEIGHT_CAP)
                total += weight * math.sin(math.pi * x) ** 2
        out[i] = total


class _BridgeModel(SignalBase):
    """Shared site climate and damage history of the bridge models."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec]
    ) -> None:
        super().__init__(sensor, t0_ms, seed)
        reject_unsupported(sensor.kind, events)
        place = NoiseSource(seed, f"site:{sensor.site}")  # what every sensor of the site shares
        climate = place.parameters("climate")
        self.temp_swing_c = float(climate.uniform(4.0, 7.0))
        structures = only(events, Structure)
        drawn = float(climate.uniform(1.5, 4.0))
        self.first_hz = structures[-1].first_hz if structures and structures[-1].first_hz \
            else drawn
        self.site = self.noise.parameters("site")
        self.damages = sorted(only(events, Damage), key=lambda d: d.at_s)
        self._lane_keys = [np.uint64(place.stream(f"lane{k}").key) for k in range(_LANES)]
        # a frequency drop shows in the accelerometer's modes; the strain and deflection of a
        # few percent softer span change less than their traffic does
        rules = ("freq_shift",) if sensor.kind == "bridge.accel" else ()
        for d in self.damages:
            self.events.append(self.label("damage", d.at_s, None, abrupt=True, rules=rules))

    def temperature_c(self, tod_s: FloatArray) -> FloatArray:
        """The deck's temperature: the site's daily swing about 15 degC."""
        return _MEAN_TEMP_C + self.temp_swing_c * daily_cosine(tod_s, WARMEST_HOUR)

    def label_settlements(self, settlements: Sequence[Settlement], rules: Rules,
                          swing: float) -> None:
        """Labels of the settlements this sensor sees (`swing`: its healthy daily swing)."""
        for s in settlements:
            size = s.size(self.sensor.kind)
            self.events.append(self.label(
                "settlement", s.at_s, None, abrupt=s.duration_s <= 600.0,
                rules=("trend", *expected(("high", rules.crosses_high(size + swing)),
                                          ("low", rules.crosses_low(size - swing)))),
            ))

    def stiffness_ratio(self, t_s: FloatArray) -> FloatArray:
        """Stiffness relative to the undamaged bridge (frequency ratio squared)."""
        ratio = np.ones_like(t_s)
        for d in self.damages:
            ratio = np.where(t_s >= d.at_s, ratio * (1.0 - d.drop_pct / 100.0) ** 2, ratio)
        return ratio

    def vehicle_load(self, t_s: FloatArray) -> FloatArray:
        """Passing vehicles on all lanes, in median vehicles."""
        total = np.zeros_like(t_s)
        lane = np.empty_like(t_s)
        for key in self._lane_keys:
            _passing_loads(key, t_s, self.clock.tod0_s, TRAFFIC, lane)
            total += lane
        return total


class BridgeAccel(_BridgeModel):
    """Vertical acceleration (m/s2): a few traffic-excited modes plus sensor noise."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed, events)
        first = self.first_hz
        nyquist = sensor.rate_hz / 2.0
        self.freqs_hz = tuple(first * r for r in _MODE_RATIOS if first * r < 0.8 * nyquist)
        gain = float(self.site.uniform(0.7, 1.3))
        self.amps = tuple(gain * a for a in _MODE_ACCEL[: len(self.freqs_hz)])
        self.phases = tuple(float(p) for p in self.site.uniform(0.0, 2 * math.pi, 3))
        self._white = self.noise.stream("white")
        self._quadratures: list[tuple[NoiseStream, NoiseStream]] = [
            (self.noise.stream(f"mode{j}c"), self.noise.stream(f"mode{j}s"))
            for j in range(len(self.freqs_hz))
        ]

    def cycles(self, t_s: FloatArray) -> FloatArray:
        """Vibration cycles of a 1 Hz mode since sample 0: the integral of the frequency ratio."""
        thermal = self._thermal_cycles(t_s)
        damage_at = self._thermal_cycles(np.array([d.at_s for d in self.damages]))
        cycles = thermal.copy()
        ratio = 1.0
        for d, at_cycles in zip(self.damages, damage_at, strict=True):
            new_ratio = ratio * (1.0 - d.drop_pct / 100.0)
            cycles += (new_ratio - ratio) * np.maximum(0.0, thermal - at_cycles)
            ratio = new_ratio
        return cycles

    def _thermal_cycles(self, t_s: FloatArray) -> FloatArray:
        """Cycles of a 1 Hz mode whose frequency follows only the daily temperature cycle."""
        omega = 2 * math.pi / DAY_S
        theta = 2 * math.pi * WARMEST_HOUR / 24.0
        tod0 = self.clock.tod0_s
        swing = _FREQ_PER_DEGC * self.temp_swing_c / omega
        return t_s + swing * (np.sin(omega * (tod0 + t_s) - theta) - math.sin(omega * tod0 - theta))

    def rules(self) -> Rules:
        """Acceleration levels both ways: 1, 2, 3, 5 m/s2 (heavy vehicles shake the deck)."""
        return Rules(
            self.sensor.kind,
            high=(1.0, 2.0, 3.0, 5.0),
            low=(-1.0, -2.0, -3.0, -5.0),
            hysteresis=0.05,
            debounce=3,
        )

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        excitation = 0.3 + at_time_of_day(TRAFFIC, times.tod_s) + _BURST_GAIN * self.vehicle_load(t)
        cycles = self.cycles(t)
        a = 0.002 * self._white.white(start_index, t.size)
        for f, amp, phase, (cos_part, sin_part) in zip(
            self.freqs_hz, self.amps, self.phases, self._quadratures, strict=False
        ):
            angle = 2 * math.pi * f * cycles + phase
            a += (
                amp
                * excitation
                * (
                    cos_part.smooth(t, _MODE_COHERENCE_S) * np.cos(angle)
                    + sin_part.smooth(t, _MODE_COHERENCE_S) * np.sin(angle)
                )
            )
        return self.clip_to_range(a)


@dataclass(frozen=True)
class LoadResponse:
    """How a static sensor answers temperature and vehicles, and the limits it gets."""

    thermal: tuple[float, float]  # range of the daily thermal swing, drawn per sensor
    per_vehicle: tuple[float, float]  # range of the median vehicle's peak response
    noise: float
    high: tuple[float, ...]
    low: tuple[float, ...]
    hysteresis: float


STRAIN: Final = LoadResponse(
    thermal=(10.0, 20.0),
    per_vehicle=(8.0, 14.0),
    noise=0.5,
    high=(150.0, 200.0, 250.0, 300.0),
    low=(-60.0, -90.0, -120.0, -150.0),
    hysteresis=5.0,
)
DEFLECTION: Final = LoadResponse(
    thermal=(1.0, 2.5),
    per_vehicle=(0.8, 1.4),
    noise=0.05,
    high=(15.0, 20.0, 25.0, 30.0),
    low=(-5.0, -8.0, -12.0, -16.0),
    hysteresis=0.5,
)


class BridgeLoad(_BridgeModel):
    """Strain (microstrain) or deflection (mm): daily thermal swing plus passing vehicle loads."""

    def __init__(
        self,
        sensor: SimSensor,
        t0_ms: int,
        seed: int,
        events: Sequence[EventSpec],
        response: LoadResponse,
    ) -> None:
        super().__init__(sensor, t0_ms, seed, events)
        self.response = response
        self.thermal = float(self.site.uniform(*response.thermal))
        self.per_vehicle = float(self.site.uniform(*response.per_vehicle))
        self.overloads = only(events, Overload)
        self.settlements = only(events, Settlement)
        self._white = self.noise.stream("white")
        rules = self.rules()
        self.label_settlements(self.settlements, rules, self.thermal)
        for o in self.overloads:
            mid = np.array([o.at_s + o.pass_s / 2.0])
            peak = self._thermal(mid + self.clock.tod0_s) + o.factor * self.per_vehicle / (
                self.stiffness_ratio(mid)
            )
            self.events.append(
                self.label(
                    "overload",
                    o.at_s,
                    o.end_s,
                    abrupt=True,
                    rules=expected(("high", rules.crosses_high(float(peak[0])))),
                )
            )

    def _thermal(self, tod_s: FloatArray) -> FloatArray:
        return self.thermal * daily_cosine(tod_s, WARMEST_HOUR)

    def rules(self) -> Rules:
        """Design-value limits of the response (strain or deflection)."""
        r = self.response
        return Rules(self.sensor.kind, r.high, r.low, r.hysteresis, debounce=3)

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        load = self.vehicle_load(t)
        for o in self.overloads:
            add_during(load, t, o.at_s, o.end_s, o.load)
        if self.damages:
            load /= self.stiffness_ratio(t)
        v = self._thermal(times.tod_s) + self.per_vehicle * load
        v += self.response.noise * self._white.white(start_index, t.size)
        for s in self.settlements:
            add_during(v, t, s.at_s, np.inf, partial(s.shift, self.sensor.kind))
        return self.clip_to_range(v)


class BridgeTilt(_BridgeModel):
    """Pier or deck tilt (deg): a small daily thermal swing; a settlement shifts it for good."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed, events)
        self.thermal = float(self.site.uniform(0.002, 0.004))
        self.settlements = only(events, Settlement)
        self._white = self.noise.stream("white")
        self._wander = self.noise.stream("wander")
        self.label_settlements(self.settlements, self.rules(), self.thermal)

    def rules(self) -> Rules:
        """Tilt limits both ways: 0.05, 0.1, 0.2, 0.4 deg (passing vehicles shake a pier by a
        few hundredths of a degree)."""
        return Rules(
            self.sensor.kind,
            high=(0.05, 0.1, 0.2, 0.4),
            low=(-0.05, -0.1, -0.2, -0.4),
            hysteresis=0.002,
            debounce=3,
        )

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        t = times.t_s
        v = self.thermal * daily_cosine(times.tod_s, WARMEST_HOUR)
        v += 0.0005 * self._wander.smooth(t, 3600.0)
        v += 0.0003 * self._white.white(start_index, t.size)
        # passing vehicles shake the pier at the span's first mode (aliased when sampled slowly)
        phase = 2 * math.pi * self.first_hz * t
        v += _TILT_VIBRATION_DEG * self.vehicle_load(t) * np.sin(phase)
        for s in self.settlements:
            add_during(v, t, s.at_s, np.inf, s.tilt)
        return self.clip_to_range(v)


class BridgeTemp(_BridgeModel):
    """Deck temperature (degC): the site's daily swing, which moves its natural frequencies."""

    def __init__(
        self, sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
    ) -> None:
        super().__init__(sensor, t0_ms, seed, events)
        self._white = self.noise.stream("white")

    def rules(self) -> Rules:
        """No limits: a reference for the bridge's frequency rule."""
        return Rules(self.sensor.kind, (), (), 0.0, debounce=3)

    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        v = self.temperature_c(times.tod_s) + 0.05 * self._white.white(start_index, times.t_s.size)
        return self.clip_to_range(v)


def make_accel(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> BridgeAccel:
    """A bridge.accel model (sample at 50-200 Hz) with optional damage."""
    return BridgeAccel(sensor, t0_ms, seed, events)


def make_strain(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> BridgeLoad:
    """A bridge.strain model with overloads and damage."""
    return BridgeLoad(sensor, t0_ms, seed, events, STRAIN)


def make_disp(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> BridgeLoad:
    """A bridge.disp (deflection) model with overloads and damage."""
    return BridgeLoad(sensor, t0_ms, seed, events, DEFLECTION)


def make_temp(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> BridgeTemp:
    """A bridge.temp (deck temperature) model."""
    return BridgeTemp(sensor, t0_ms, seed, events)


def make_tilt(
    sensor: SimSensor, t0_ms: int, seed: int, events: Sequence[EventSpec] = ()
) -> BridgeTilt:
    """A bridge.tilt model with settlements."""
    return BridgeTilt(sensor, t0_ms, seed, events)
