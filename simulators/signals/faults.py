"""Sensor faults for any signal model: stuck, drift, spikes, dropouts, noise bursts, out of range.

`with_faults` wraps a model; the wrapper renders the healthy samples, then lets each fault rewrite
the samples in its window, in the order given. Missing samples are NaN (transports skip them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

import numpy as np

from simulators.signals.base import (
    KIND_RANGE,
    Clock,
    FloatArray,
    IntArray,
    LabelledEvent,
    NoiseStream,
    SignalModel,
    SimSensor,
    check_positive,
    check_window,
    stable_key,
)

#: A clearly visible fault size per kind (spike height; drift per 4 h; 5 x noise-burst sigma).
FAULT_SIZE: Final[dict[str, float]] = {
    "pipe.pressure": 0.25,
    "pipe.flow": 300.0,
    "pipe.gas": 30.0,
    "flood.level": 30.0,
    "flood.rain": 100.0,
    "bridge.accel": 5.0,
    "bridge.strain": 500.0,
    "bridge.disp": 50.0,
    "bridge.tilt": 1.0,
    "tunnel.co": 200.0,
    "tunnel.vi": 0.05,
    "tunnel.temp": 60.0,
    "tunnel.water": 20.0,
    "bridge.temp": 20.0,
    "tunnel.convergence": 20.0,
}


class FaultSpec(Protocol):
    """A scenario's description of one sensor fault over [at_s, at_s + duration_s)."""

    name: ClassVar[str]
    cls: ClassVar[str]
    abrupt: ClassVar[bool]
    rules: ClassVar[tuple[str, ...]]

    @property
    def at_s(self) -> float:
        """Start, in seconds after sample 0."""
        ...

    @property
    def duration_s(self) -> float:
        """Length of the fault window."""
        ...


@dataclass(frozen=True)
class Stuck:
    """The reading freezes at the last value before at_s."""

    name: ClassVar[str] = "stuck"
    cls: ClassVar[str] = "stuck"
    abrupt: ClassVar[bool] = True
    rules: ClassVar[tuple[str, ...]] = ("flatline",)
    at_s: float
    duration_s: float = 600.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)


@dataclass(frozen=True)
class Drift:
    """A slowly growing offset (per hour; default a quarter of FAULT_SIZE), gone after recalibration."""

    name: ClassVar[str] = "drift"
    cls: ClassVar[str] = "drift"
    abrupt: ClassVar[bool] = False
    rules: ClassVar[tuple[str, ...]] = ("drift",)
    at_s: float
    duration_s: float = 6 * 3600.0
    rate_per_h: float | None = None

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)


@dataclass(frozen=True)
class Spikes:
    """`count` isolated outliers of `magnitude` (default FAULT_SIZE) at random samples in the window."""

    name: ClassVar[str] = "spikes"
    cls: ClassVar[str] = "spike"
    abrupt: ClassVar[bool] = True
    rules: ClassVar[tuple[str, ...]] = ("spike",)
    at_s: float
    duration_s: float = 600.0
    count: int = 5
    magnitude: float | None = None

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)
        check_positive(self.name, count=self.count)


@dataclass(frozen=True)
class Dropout:
    """No samples (NaN) for the whole window: a dead sensor, link or battery."""

    name: ClassVar[str] = "dropout"
    cls: ClassVar[str] = "dropout"
    abrupt: ClassVar[bool] = True
    rules: ClassVar[tuple[str, ...]] = ("gap",)
    at_s: float
    duration_s: float = 60.0

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)


@dataclass(frozen=True)
class NoiseBurst:
    """Extra Gaussian noise of `sigma` (default FAULT_SIZE / 5): a loose connector, interference."""

    name: ClassVar[str] = "noise_burst"
    cls: ClassVar[str] = "noise_burst"
    abrupt: ClassVar[bool] = True
    rules: ClassVar[tuple[str, ...]] = ("anomaly",)
    at_s: float
    duration_s: float = 120.0
    sigma: float | None = None

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)


@dataclass(frozen=True)
class OutOfRange:
    """A constant impossible reading (default: the range's top plus half its span)."""

    name: ClassVar[str] = "out_of_range"
    cls: ClassVar[str] = "out_of_range"
    abrupt: ClassVar[bool] = True
    rules: ClassVar[tuple[str, ...]] = ("range",)
    at_s: float
    duration_s: float = 60.0
    value: float | None = None

    def __post_init__(self) -> None:
        check_window(self.name, self.at_s, self.duration_s)


class _Effect(Protocol):
    def apply(self, values: FloatArray, first_index: int) -> None:
        """Rewrite `values` (samples first_index..) that lie in the fault window, in place."""


def _fault_size(kind: str, given: float | None, what: str) -> float:
    if given is not None:
        return given
    if kind not in FAULT_SIZE:
        raise ValueError(f"{what} on a {kind} sensor needs an explicit size")
    return FAULT_SIZE[kind]


def _range_of(kind: str) -> tuple[float, float]:
    return KIND_RANGE.get(kind, (-np.inf, np.inf))


@dataclass
class _StuckEffect:
    inner: SignalModel
    i0: int
    _value: float | None = None

    def apply(self, values: FloatArray, first_index: int) -> None:
        if self._value is None:
            self._value = float(self.inner.render(max(self.i0 - 1, 0), 1)[0])
        values[:] = self._value


@dataclass(frozen=True)
class _DriftEffect:
    i0: int
    per_sample: float
    limits: tuple[float, float]

    def apply(self, values: FloatArray, first_index: int) -> None:
        steps = np.arange(first_index - self.i0, first_index - self.i0 + values.size)
        np.clip(values + self.per_sample * steps, *self.limits, out=values)


@dataclass(frozen=True)
class _SpikeEffect:
    indices: IntArray
    magnitude: float
    top: float

    def apply(self, values: FloatArray, first_index: int) -> None:
        hit = (
            self.indices[(self.indices >= first_index) & (self.indices < first_index + values.size)]
            - first_index
        )
        base = values[hit]
        values[hit] = np.where(
            base + self.magnitude <= self.top, base + self.magnitude, base - self.magnitude
        )


@dataclass(frozen=True)
class _ConstantEffect:
    value: float

    def apply(self, values: FloatArray, first_index: int) -> None:
        values[:] = self.value


@dataclass(frozen=True)
class _NoiseEffect:
    stream: NoiseStream
    sigma: float

    def apply(self, values: FloatArray, first_index: int) -> None:
        values += self.sigma * self.stream.white(first_index, values.size)


class FaultedSignal:
    """A signal model seen through a faulty sensor; its events add one label per fault."""

    def __init__(self, inner: SignalModel, faults: Sequence[FaultSpec], seed: int = 0) -> None:
        self.inner = inner
        self.sensor: SimSensor = inner.sensor
        self.t0_ms: int = inner.t0_ms
        self.events: list[LabelledEvent] = list(inner.events)
        self.clock = Clock(inner.t0_ms, inner.sensor.rate_hz)
        self._windows: list[tuple[int, int, _Effect]] = []
        for n, fault in enumerate(faults):
            i0, i1 = self.clock.index_range(fault.at_s, fault.at_s + fault.duration_s)
            if i1 <= i0:
                continue  # the window holds no sample: nothing to see, nothing to label
            effect, first, last = self._effect(
                fault, i0, i1, stable_key(seed, self.sensor.id, "fault", n)
            )
            self._windows.append((i0, i1, effect))
            self.events.append(self._label(fault, first, last))

    def _effect(self, fault: FaultSpec, i0: int, i1: int, key: int) -> tuple[_Effect, int, int]:
        """The effect of a fault, and the first and last sample it changes."""
        kind = self.sensor.kind
        lo, hi = _range_of(kind)
        if isinstance(fault, Stuck):
            return _StuckEffect(self.inner, i0), i0, i1 - 1
        if isinstance(fault, Drift):
            per_hour = _fault_size(kind, fault.rate_per_h, "drift") / (
                4.0 if fault.rate_per_h is None else 1.0
            )
            return _DriftEffect(i0, per_hour / 3600.0 / self.sensor.rate_hz, (lo, hi)), i0, i1 - 1
        if isinstance(fault, Spikes):
            rng = np.random.Generator(np.random.Philox(key=key))
            every_other = np.arange(i0, i1, 2, dtype=np.int64)  # never two spikes side by side
            picks = rng.choice(
                every_other.size, size=min(fault.count, every_other.size), replace=False
            )
            indices = every_other[np.sort(picks)]
            size = _fault_size(kind, fault.magnitude, "spikes")
            return _SpikeEffect(indices, size, hi), int(indices[0]), int(indices[-1])
        if isinstance(fault, Dropout):
            return _ConstantEffect(np.nan), i0, i1 - 1
        if isinstance(fault, NoiseBurst):
            sigma = _fault_size(kind, fault.sigma, "noise_burst") / (
                5.0 if fault.sigma is None else 1.0
            )
            return _NoiseEffect(NoiseStream(key), sigma), i0, i1 - 1
        if isinstance(fault, OutOfRange):
            if fault.value is None and kind not in KIND_RANGE:
                raise ValueError(f"out_of_range on a {kind} sensor needs an explicit value")
            value = hi + 0.5 * (hi - lo) if fault.value is None else fault.value
            return _ConstantEffect(value), i0, i1 - 1
        raise ValueError(f"unknown fault {type(fault).__name__}")

    def _label(self, fault: FaultSpec, first: int, last: int) -> LabelledEvent:
        """Label from the first changed sample to just after the last one."""
        period_ms = 1000.0 / self.sensor.rate_hz
        return LabelledEvent(
            sensor=self.sensor.id,
            kind=self.sensor.kind,
            domain=self.sensor.domain,
            cls=fault.cls,
            start_ms=self.t0_ms + round(first * period_ms),
            end_ms=self.t0_ms + round((last + 1) * period_ms),
            is_fault=True,
            abrupt=fault.abrupt,
            expected_rules=fault.rules,
        )

    def render(self, start_index: int, count: int) -> FloatArray:
        """The inner model's samples with every fault window rewritten, in fault order."""
        values = self.inner.render(start_index, count)
        end = start_index + count
        for i0, i1, effect in self._windows:
            lo, hi = max(i0, start_index), min(i1, end)
            if lo < hi:
                effect.apply(values[lo - start_index : hi - start_index], lo)
        return values

    def suggested_rules(self) -> dict[str, object]:
        """The inner model's rules: faults do not change what a healthy sensor needs."""
        return self.inner.suggested_rules()


def with_faults(model: SignalModel, faults: Sequence[FaultSpec], seed: int = 0) -> FaultedSignal:
    """Wrap a model so it shows the given sensor faults and labels them."""
    return FaultedSignal(model, faults, seed)
