"""Building blocks of the simulated signals: sensors, labels, sample clock, counter-based noise, shapes.

Every random number is a pure function of (seed, sensor id, stream, sample or knot index), so any
chunking of a render gives the same samples and no model keeps state between renders.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol, TypeVar

import numba
import numpy as np
import numpy.typing as npt

from lifeline.contract.kinds import domain_of

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Range a transmitter of each kind can report; a value outside it is a sensor fault.
KIND_RANGE: Final[dict[str, tuple[float, float]]] = {
    "pipe.pressure": (0.0, 1.6),
    "pipe.flow": (0.0, 5000.0),
    "pipe.gas": (0.0, 100.0),
    "flood.level": (0.0, 200.0),
    "flood.rain": (0.0, 300.0),
    "bridge.accel": (-20.0, 20.0),
    "bridge.strain": (-3000.0, 3000.0),
    "bridge.disp": (-500.0, 500.0),
    "bridge.tilt": (-10.0, 10.0),
    "bridge.temp": (-40.0, 80.0),
    "tunnel.co": (0.0, 1000.0),
    "tunnel.vi": (0.0, 0.5),
    "tunnel.temp": (-40.0, 1200.0),
    "tunnel.water": (0.0, 200.0),
    "tunnel.convergence": (-200.0, 200.0),
}

#: Label end of an event that persists to the end of any simulation (e.g. structural damage).
OPEN_END_MS: Final = 2**53

#: Local time of the simulated city (Chongqing, UTC+8): daily patterns follow local time.
CITY_UTC_OFFSET_S: Final = 8 * 3600
DAY_S: Final = 86_400.0


@dataclass(frozen=True)
class SimSensor:
    """One simulated sensor: contract id, kind and site, and its sampling rate."""

    id: str
    kind: str
    site: str
    rate_hz: float

    @property
    def domain(self) -> str:
        """The `<domain>` part of the kind, e.g. "pipe"."""
        return domain_of(self.kind)


@dataclass(frozen=True)
class LabelledEvent:
    """Ground truth of one injected event or sensor fault, for scoring what the agent caught."""

    sensor: str
    kind: str
    domain: str
    cls: str
    start_ms: int
    end_ms: int
    is_fault: bool
    abrupt: bool
    expected_rules: tuple[str, ...]


class SignalModel(Protocol):
    """A sensor's samples as a pure function of sample index, plus its labels and agent rules."""

    sensor: SimSensor
    t0_ms: int  # time of sample 0
    events: list[LabelledEvent]

    def render(self, start_index: int, count: int) -> FloatArray:
        """Physical values of samples start_index..start_index+count-1 (NaN = missing sample)."""
        ...

    def suggested_rules(self) -> dict[str, object]:
        """Agent config for this sensor: thresholds a healthy signal never crosses."""
        ...


@dataclass(frozen=True)
class SampleTimes:
    """Times of a run of samples: seconds since sample 0 and local seconds since a midnight."""

    t_s: FloatArray
    tod_s: FloatArray


@dataclass(frozen=True)
class Clock:
    """Maps sample indices to times: sample i is at t0_ms + i * 1000 / rate_hz."""

    t0_ms: int
    rate_hz: float
    utc_offset_s: int = CITY_UTC_OFFSET_S

    @property
    def tod0_s(self) -> float:
        """Local time of day of sample 0, in seconds after midnight."""
        return ((self.t0_ms + self.utc_offset_s * 1000) % 86_400_000) / 1000.0

    def times(self, start_index: int, count: int) -> SampleTimes:
        """Sample times of start_index..start_index+count-1."""
        t_s = np.arange(start_index, start_index + count, dtype=np.float64) / self.rate_hz
        return SampleTimes(t_s, t_s + self.tod0_s)

    def ms(self, t_s: float) -> int:
        """Epoch milliseconds of a time given in seconds since sample 0."""
        return self.t0_ms + round(t_s * 1000.0)

    def first_index_at(self, t_s: float) -> int:
        """Index of the first sample at or after t_s seconds."""
        return max(0, math.ceil(t_s * self.rate_hz - 1e-9))

    def index_range(self, start_s: float, end_s: float) -> tuple[int, int]:
        """Half-open range of sample indices whose time lies in [start_s, end_s)."""
        return self.first_index_at(start_s), self.first_index_at(end_s)


# --- counter-based noise -------------------------------------------------------------------

_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_SALT: Final = np.uint64(0xD6E8FEB86659FD93)
_TWO_PI: Final = 2.0 * math.pi


@numba.njit(cache=True)
def _mix64(x: np.uint64) -> np.uint64:
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True)
def _unit(h: np.uint64) -> float:
    return (np.float64(h >> np.uint64(11)) + 1.0) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True)
def uniform_at(key: np.uint64, n: np.uint64) -> float:
    """Uniform (0, 1] number n of the stream `key` (a Numba kernel)."""
    return _unit(_mix64(key + n * _GOLDEN))


@numba.njit(cache=True)
def normal_at(key: np.uint64, n: np.uint64) -> float:
    """Standard normal number n of the stream `key` (a Numba kernel, Box-Muller)."""
    x = key + n * _GOLDEN
    u1 = _unit(_mix64(x))
    u2 = _unit(_mix64(x ^ _SALT))
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)


@numba.njit(cache=True)
def _normal_fill(key: np.uint64, first: np.int64, out: FloatArray) -> None:
    for i in range(out.size):
        out[i] = normal_at(key, np.uint64(first + i))


@numba.njit(cache=True)
def _smooth_fill(key: np.uint64, t_s: FloatArray, knot_s: float, out: FloatArray) -> None:
    current = -1.0
    a = 0.0
    b = 0.0
    for i in range(out.size):
        x = t_s[i] / knot_s
        k = math.floor(x)
        if k != current:  # knot values are reused along a run of increasing times
            current = k
            a = normal_at(key, np.uint64(k))
            b = normal_at(key, np.uint64(k + 1.0))
        w = x - k
        w = w * w * (3.0 - 2.0 * w)
        # Renormalise so the interpolated value has unit variance between knots too.
        out[i] = (a * (1.0 - w) + b * w) / math.sqrt((1.0 - w) ** 2 + w**2)


def stable_key(*parts: object) -> int:
    """A 64-bit key from text parts, identical in every process (unlike hash())."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class NoiseStream:
    """One independent stream of deterministic noise, addressed by sample index or by time."""

    key: int

    def white(self, start_index: int, count: int) -> FloatArray:
        """Standard normal values for samples start_index..start_index+count-1."""
        out = np.empty(count, dtype=np.float64)
        _normal_fill(np.uint64(self.key), np.int64(start_index), out)
        return out

    def smooth(self, t_s: FloatArray, knot_s: float) -> FloatArray:
        """Unit-variance noise varying smoothly over about knot_s seconds (t_s >= 0)."""
        out = np.empty(t_s.size, dtype=np.float64)
        _smooth_fill(np.uint64(self.key), t_s, float(knot_s), out)
        return out


@dataclass(frozen=True)
class NoiseSource:
    """Noise streams of one sensor, keyed on (seed, sensor id, stream name)."""

    seed: int
    owner: str

    def stream(self, name: str) -> NoiseStream:
        """The named stream; the same name always gives the same values."""
        return NoiseStream(stable_key(self.seed, self.owner, name))

    def parameters(self, name: str) -> np.random.Generator:
        """A generator for drawing fixed per-sensor parameters (site constants) at construction."""
        return np.random.Generator(np.random.Philox(key=stable_key(self.seed, self.owner, name)))


# --- daily patterns and event shapes -------------------------------------------------------

_TABLE_GRID: Final = np.arange(1441, dtype=np.float64)


def daily_table(profile: Callable[[FloatArray], FloatArray]) -> FloatArray:
    """A per-minute lookup table (1441 points, periodic) of a profile of the hour of day, peak 1."""
    table = profile(_TABLE_GRID / 60.0)
    return np.asarray(table / table.max(), dtype=np.float64)


def at_time_of_day(table: FloatArray, tod_s: FloatArray) -> FloatArray:
    """Values of a per-minute daily table at local times of day (seconds, any day)."""
    return np.interp(np.mod(tod_s, DAY_S) / 60.0, _TABLE_GRID, table)


def bump(hour: FloatArray, centre_h: float, width_h: float) -> FloatArray:
    """A Gaussian bump around centre_h on the 24-hour circle."""
    d = np.abs(hour - centre_h)
    d = np.minimum(d, 24.0 - d)
    return np.exp(-0.5 * (d / width_h) ** 2)


#: Relative road traffic by local hour (1 = the daily peak), for bridges and tunnels.
TRAFFIC: Final = daily_table(
    lambda h: 0.08 + 0.9 * bump(h, 8.0, 1.2) + 0.5 * bump(h, 13.0, 2.5) + 0.85 * bump(h, 18.0, 1.5)
)

#: Local hour of the warmest air of the day.
WARMEST_HOUR: Final = 15.0


def daily_cosine(tod_s: FloatArray, peak_hour: float) -> FloatArray:
    """A cosine of the day, 1 at peak_hour local time and -1 twelve hours later."""
    return np.cos(_TWO_PI * (tod_s / DAY_S - peak_hour / 24.0))


def onset(t_s: FloatArray, at_s: float, tau_s: float) -> FloatArray:
    """0 before at_s, then 1 - exp(-(t - at_s) / tau_s): a first-order rise."""
    x = np.maximum(t_s - at_s, 0.0)
    return -np.expm1(-x / tau_s)


def pulse(t_s: FloatArray, at_s: float, end_s: float, tau_s: float) -> FloatArray:
    """A first-order rise at at_s and first-order fall from end_s (peak 1 when long)."""
    return onset(t_s, at_s, tau_s) - onset(t_s, end_s, tau_s)


def damped_sine(t_s: FloatArray, at_s: float, period_s: float, decay_s: float) -> FloatArray:
    """sin(2 pi (t - at) / period) exp(-(t - at) / decay) from at_s on, 0 before."""
    x = t_s - at_s
    after = x >= 0.0
    x = np.where(after, x, 0.0)
    return np.where(after, np.sin(_TWO_PI * x / period_s) * np.exp(-x / decay_s), 0.0)


def add_during(
    values: FloatArray,
    t_s: FloatArray,
    start_s: float,
    until_s: float,
    effect: Callable[[FloatArray], FloatArray],
) -> None:
    """Add effect(t) to the values at sorted times t in [start_s, until_s]; it is 0 elsewhere.

    Cutting every effect at fixed times keeps renders identical whatever the chunking.
    """
    lo = int(np.searchsorted(t_s, start_s, "left"))
    hi = int(np.searchsorted(t_s, until_s, "right"))
    if lo < hi:
        values[lo:hi] += effect(t_s[lo:hi])


# --- rules and labels ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """Suggested agent rules of one sensor, in the sensor's unit."""

    kind: str
    high: tuple[float, ...]
    low: tuple[float, ...]
    hysteresis: float
    debounce: int
    rate_per_min: float | None = None

    def as_config(self) -> dict[str, object]:
        """The agent config keys: contract thresholds plus rate (None: no hint) and range hints."""
        lo, hi = KIND_RANGE[self.kind]
        return {
            "high": list(self.high),
            "low": list(self.low),
            "hysteresis": self.hysteresis,
            "debounce": self.debounce,
            "rate_per_min": self.rate_per_min,
            "range": [lo, hi],
        }

    def crosses_high(self, peak: float) -> bool:
        """True if a held peak clearly passes the level-1 high threshold."""
        return bool(self.high) and peak > self.high[0] + self.hysteresis

    def exceeds_rate(self, per_min: float) -> bool:
        """True if a change of per_min (unit per minute) reaches the rate hint."""
        return self.rate_per_min is not None and abs(per_min) >= self.rate_per_min

    def crosses_low(self, trough: float) -> bool:
        """True if a held trough clearly passes the level-1 low threshold."""
        return bool(self.low) and trough < self.low[0] - self.hysteresis


def rounded(values: Sequence[float], step: float) -> tuple[float, ...]:
    """Thresholds rounded to a readable step."""
    return tuple(round(round(v / step) * step, 10) for v in values)


def expected(*pairs: tuple[str, bool]) -> tuple[str, ...]:
    """Names of the rules whose condition holds, in the given order."""
    return tuple(name for name, holds in pairs if holds)


class SignalBase(ABC):
    """Shared plumbing of the models: clock, noise, labels; subclasses compute the values."""

    def __init__(self, sensor: SimSensor, t0_ms: int, seed: int) -> None:
        self.sensor = sensor
        self.t0_ms = t0_ms
        self.clock = Clock(t0_ms, sensor.rate_hz)
        self.noise = NoiseSource(seed, sensor.id)
        self.events: list[LabelledEvent] = []

    def render(self, start_index: int, count: int) -> FloatArray:
        """Physical values of samples start_index..start_index+count-1."""
        if start_index < 0 or count < 0:
            raise ValueError(f"bad sample range start={start_index} count={count}")
        return self._values(start_index, self.clock.times(start_index, count))

    def suggested_rules(self) -> dict[str, object]:
        """Agent config for this sensor (see Rules.as_config)."""
        return self.rules().as_config()

    @abstractmethod
    def rules(self) -> Rules:
        """Thresholds chosen so the healthy signal never crosses them."""

    @abstractmethod
    def _values(self, start_index: int, times: SampleTimes) -> FloatArray:
        """Values at the given sample times."""

    def label(
        self,
        cls: str,
        start_s: float,
        end_s: float | None,
        *,
        abrupt: bool,
        rules: tuple[str, ...],
        is_fault: bool = False,
    ) -> LabelledEvent:
        """A label of this sensor; end_s None means the event persists."""
        end_ms = OPEN_END_MS if end_s is None else self.clock.ms(end_s)
        return LabelledEvent(
            sensor=self.sensor.id,
            kind=self.sensor.kind,
            domain=self.sensor.domain,
            cls=cls,
            start_ms=self.clock.ms(start_s),
            end_ms=end_ms,
            is_fault=is_fault,
            abrupt=abrupt,
            expected_rules=rules,
        )

    def clip_to_range(self, values: FloatArray) -> FloatArray:
        """Values limited to what the transmitter can report."""
        lo, hi = KIND_RANGE[self.sensor.kind]
        np.maximum(values, lo, out=values)  # two ufuncs: np.clip costs 3x more on small chunks
        return np.minimum(values, hi, out=values)


class EventSpec(Protocol):
    """A scenario's description of one physical event; `kinds` are the sensors it shows in."""

    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]]

    @property
    def at_s(self) -> float:
        """Start, in seconds after sample 0."""
        ...


SpecT = TypeVar("SpecT")


def only(specs: Sequence[object], cls: type[SpecT]) -> list[SpecT]:
    """The specs of one type, in scenario order."""
    return [s for s in specs if isinstance(s, cls)]


def reject_unsupported(kind: str, specs: Sequence[EventSpec]) -> None:
    """Raise ValueError naming any event spec that does not show in this kind."""
    for spec in specs:
        if kind not in spec.kinds:
            raise ValueError(f"event {spec.name!r} does not apply to a {kind} sensor")


def check_window(name: str, at_s: float, duration_s: float | None = None) -> None:
    """Raise ValueError for a negative start or a non-positive duration."""
    if not at_s >= 0.0:
        raise ValueError(f"{name}: at_s must be >= 0, got {at_s}")
    if duration_s is not None and not duration_s > 0.0:
        raise ValueError(f"{name}: duration_s must be > 0, got {duration_s}")


def check_positive(name: str, **values: float) -> None:
    """Raise ValueError naming the first parameter that is not > 0."""
    for key, value in values.items():
        if not value > 0.0:
            raise ValueError(f"{name}: {key} must be > 0, got {value}")
