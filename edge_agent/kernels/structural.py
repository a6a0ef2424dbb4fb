"""Rules on the summary stream: `trend` (settlement, creep, convergence, tilt) and `freq_shift`
(a modal frequency leaving its band), run once per closed window over every sensor.

Both compare a window value with a robust reference learnt from the sensor's own windows:
`trend` a window statistic (`stat`: the mean by default), `freq_shift` each tracked mode's
frequency (`f1`, `f2`, ... from `features`). The reference is the median of the reference
values and their scale 1.4826 x MAD (floored at `min_std`, for `freq_shift` at `min_std_pct`
percent of the median); with `temperature` set (the id of a temperature sensor of the same
site), a least-squares line on that sensor's window mean is taken out first and the median and
MAD are those of the residuals, so the reference follows temperature. The reference takes in
every window with a value until the rule arms, once its windows span `warmup_s` of time (and
number at least MIN_REFERENCE), then every window that raised nothing, until they span
`reference_s`; then it is frozen: a slow change later on (creep over weeks) is measured against
it, not absorbed. Both default to a day, a whole thermal and traffic cycle: a reference that
has not seen a morning rush or an afternoon's warmth would take them for a settlement. Spans
are of time, not of windows, so records with gaps (load tests on separate days) arm and freeze
on the same calendar as continuous monitoring; at most REFERENCE_CAP values are kept (a longer
reference keeps every k-th window).

Each window gives z = (value - reference) / scale. Levels 1..4 need |z| beyond limit k for
`sustain` consecutive windows (the graded machine of `graded.py`, `sustain` as its debounce,
`hysteresis` in scales): the limit of level k is `z[k]`, or more if the level also needs a size
(`trend.size` in the sensor's unit, `freq_shift.pct` in percent of the reference). A window
without a value (no data, no spectrum, no temperature) changes nothing.

Onset: two one-sided CUSUMs of z with allowance z[0] / 2 run beside the levels; the onset of a
change is the start of the window where the CUSUM on its side last left zero (the classic
change-point estimate), reported as `extra.onset_ts` with the size, the reference and the
current value. `freq_shift` has one machine per mode; the sensor's level is the highest of its
modes' and its alerts name the mode that sets it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import kernel
from edge_agent.kernels.graded import graded_step

if TYPE_CHECKING:
    from edge_agent.kernels.features import WindowFeatures
    from edge_agent.kernels.profiles import SensorRules

Limits = tuple[float, ...]

TREND: Final = "trend"
FREQ_SHIFT: Final = "freq_shift"
#: Rule names of this module, in the column order of `WindowRules.levels()`.
WINDOW_RULES: Final = (TREND, FREQ_SHIFT)
#: Window statistics `trend.stat` may name.
STATS: Final = ("mean", "min", "max", "last")
#: Most reference values kept per rule row (longer references keep every k-th window).
REFERENCE_CAP: Final = 2048
#: Machines per sensor: one trend, then one per mode (features.MAX_MODES).
MAX_MODES: Final = 6
SLOTS: Final = 1 + MAX_MODES
MAD_TO_SD: Final = 1.4826
#: Fewest reference windows worth a temperature line.
_MIN_FIT: Final = 10
#: Fewest reference windows a rule arms with, however long they span.
MIN_REFERENCE: Final = 30


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_levels(name: str, limits: Limits, *, required: bool) -> None:
    _check(len(limits) <= 4, f"{name} has {len(limits)} limits; at most 4 (levels 1..4)")
    _check(bool(limits) or not required, f"{name} needs at least one limit")
    _check(all(math.isfinite(v) and v > 0 for v in limits), f"{name} limits must be > 0, got "
           f"{list(limits)}")
    _check(all(a < b for a, b in zip(limits, limits[1:])),
           f"{name} limits must be strictly ascending, got {list(limits)}")


@dataclass(frozen=True)
class TrendRule:
    """Event: a window statistic leaves its robust reference (settlement, creep, convergence,
    tilt); levels by size in reference scales (`z`) and, if given, in the unit (`size`)."""

    enabled: bool = False
    stat: str = "mean"
    z: Limits = (4.0, 6.0, 9.0, 13.0)
    size: Limits = ()
    hysteresis: float = 1.0
    sustain: int = 5
    warmup_s: float = 86400.0
    reference_s: float = 86400.0
    min_std: float = 1e-9
    temperature: str = ""

    def __post_init__(self) -> None:
        _check(self.stat in STATS, f"trend.stat must be one of {', '.join(STATS)}, got "
               f"{self.stat!r}")
        _check_levels("trend.z", self.z, required=True)
        _check_levels("trend.size", self.size, required=False)
        _common("trend", self.hysteresis, self.sustain, self.warmup_s, self.reference_s)
        _check(self.min_std > 0, f"trend.min_std must be > 0, got {self.min_std}")


@dataclass(frozen=True)
class FreqShiftRule:
    """Event: a tracked modal frequency leaves its reference band; levels by the shift in
    reference scales (`z`) and in percent (`pct`), both needed."""

    enabled: bool = False
    z: Limits = (4.0, 6.0, 9.0, 13.0)
    pct: Limits = (1.0, 2.0, 4.0, 8.0)
    hysteresis: float = 1.0
    sustain: int = 5
    warmup_s: float = 86400.0
    reference_s: float = 86400.0
    min_std_pct: float = 0.05
    temperature: str = ""

    def __post_init__(self) -> None:
        _check_levels("freq_shift.z", self.z, required=True)
        _check_levels("freq_shift.pct", self.pct, required=False)
        _common("freq_shift", self.hysteresis, self.sustain, self.warmup_s, self.reference_s)
        _check(self.min_std_pct > 0, f"freq_shift.min_std_pct must be > 0, got "
               f"{self.min_std_pct}")


def _common(name: str, hysteresis: float, sustain: int, warmup_s: float,
            reference_s: float) -> None:
    _check(hysteresis >= 0, f"{name}.hysteresis must be >= 0, got {hysteresis}")
    _check(1 <= sustain <= 10_000, f"{name}.sustain must be in 1..10000, got {sustain}")
    _check(warmup_s >= 0, f"{name}.warmup_s must be >= 0, got {warmup_s}")
    _check(reference_s > 0 and reference_s >= warmup_s,
           f"{name}.reference_s must be > 0 and >= warmup_s, got {reference_s}")


# --------------------------------------------------------------------------- the kernel

_G_POS, _G_NEG = range(2)


@kernel
def window_rules_step(
    z: NDArray[np.float64],
    active: NDArray[np.bool_],
    limits: NDArray[np.float64],
    n_limits: NDArray[np.int64],
    hysteresis: NDArray[np.float64],
    sustain: NDArray[np.int64],
    counters: NDArray[np.int64],
    levels: NDArray[np.int8],
    cusum: NDArray[np.float64],
    cusum_start: NDArray[np.int64],
    t0_ms: int,
    changed: NDArray[np.int64],
    prev: NDArray[np.int8],
) -> int:
    """Feed one window's z of every active row (finite z only) to its graded machine and its
    CUSUMs (start of the window where each last left zero in `cusum_start`); the rows whose
    level changed go to `changed` (their old level in `prev`). Returns how many."""
    n_changed = 0
    for r in range(z.shape[0]):
        v = z[r]
        if not active[r] or not math.isfinite(v):
            continue
        allowance = 0.5 * limits[r, 0]
        g = cusum[r, _G_POS]
        g_new = max(0.0, g + v - allowance)
        if g == 0.0 and g_new > 0.0:
            cusum_start[r, _G_POS] = t0_ms
        cusum[r, _G_POS] = g_new
        g = cusum[r, _G_NEG]
        g_new = max(0.0, g - v - allowance)
        if g == 0.0 and g_new > 0.0:
            cusum_start[r, _G_NEG] = t0_ms
        cusum[r, _G_NEG] = g_new
        old = np.int64(levels[r])
        new = graded_step(abs(v), limits[r], n_limits[r], hysteresis[r], sustain[r], counters[r],
                          old)
        if new != old:
            levels[r] = new
            changed[n_changed] = r
            prev[n_changed] = old
            n_changed += 1
    return n_changed


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class WindowEvent:
    """A level change of a window rule: what an Alert needs."""

    sensor: int
    rule: str
    level: int
    prev: int
    value: float
    limit: float | None
    extra: dict[str, Any]


@dataclass(frozen=True)
class _RowSpec:
    sensor: int
    slot: int  # 0: trend, 1..: mode slot
    z: Limits
    size: Limits  # trend: unit; freq_shift: percent
    hysteresis: float
    sustain: int
    warmup_ms: int
    reference_ms: int
    reference_windows: int
    floor: float  # trend: min_std; freq_shift: min_std_pct
    temperature: int  # sensor index or -1


class WindowRules:
    """`trend` and `freq_shift` of every sensor; `step` once per closed window."""

    def __init__(self, rules: Sequence[SensorRules], *, ids: Sequence[str], sites: Sequence[str],
                 window_s: float) -> None:
        """`rules[i]` is sensor i's SensorRules (its `trend`, `freq_shift` and `spectrum`);
        ValueError names `sensor[i].rules.<rule>.temperature` if it is not a sensor of the
        same site."""
        self.n_sensors = len(rules)
        self.window_s = float(window_s)
        index = {sid: i for i, sid in enumerate(ids)}
        specs: list[_RowSpec] = []
        for i, r in enumerate(rules):
            if r.trend.enabled:
                specs.append(self._spec(i, 0, r.trend, r.trend.size, r.trend.min_std,
                                        _temperature(i, "trend", r.trend.temperature, index, ids,
                                                     sites)))
            if r.freq_shift.enabled and r.spectrum.enabled:
                t = _temperature(i, "freq_shift", r.freq_shift.temperature, index, ids, sites)
                for m in range(min(r.spectrum.modes, MAX_MODES)):
                    specs.append(self._spec(i, 1 + m, r.freq_shift, r.freq_shift.pct,
                                            r.freq_shift.min_std_pct, t))
        self._specs = specs
        self._stats = [r.trend.stat for r in rules]
        n = len(specs)
        self._sensor = np.array([s.sensor for s in specs], dtype=np.int64)
        self._slot = np.array([s.slot for s in specs], dtype=np.int64)
        self._temp = np.array([s.temperature for s in specs], dtype=np.int64)
        self._base_z = np.full((n, 4), np.inf)
        self._base_size = np.full((n, 4), 0.0)
        self._n_limits = np.array([len(s.z) for s in specs], dtype=np.int64)
        for j, s in enumerate(specs):
            self._base_z[j, :len(s.z)] = s.z
            self._base_size[j, :len(s.size)] = s.size
        self._hyst = np.array([s.hysteresis for s in specs], dtype=np.float64)
        self._sustain = np.array([s.sustain for s in specs], dtype=np.int64)
        self._warmup_ms = np.array([s.warmup_ms for s in specs], dtype=np.int64)
        self._reference_ms = np.array([s.reference_ms for s in specs], dtype=np.int64)
        self._ref_windows = np.array([s.reference_windows for s in specs], dtype=np.int64)
        self._floor = np.array([s.floor for s in specs], dtype=np.float64)
        self._stride = np.maximum(1, -(-self._ref_windows // REFERENCE_CAP))
        # state
        self._ref_x = np.full((n, REFERENCE_CAP), np.nan)
        self._ref_t = np.full((n, REFERENCE_CAP), np.nan)
        self._ref_n = np.zeros(n, dtype=np.int64)  # reference windows seen (kept or skipped)
        self._ref_start = np.full(n, -1, dtype=np.int64)  # start of the first one (ms)
        self._ref_kept = np.zeros(n, dtype=np.int64)
        self._centre = np.full(n, np.nan)  # median (of residuals with a temperature line)
        self._slope = np.zeros(n)  # of the temperature line
        self._t_mean = np.zeros(n)  # temperature the line is centred on
        self._scale = np.full(n, np.nan)
        self._frozen = np.zeros(n, dtype=np.bool_)
        self._counters = np.zeros((n, 4), dtype=np.int64)
        self._levels = np.zeros(n, dtype=np.int8)
        self._cusum = np.zeros((n, 2))
        self._cusum_start = np.zeros((n, 2), dtype=np.int64)
        self._changed = np.zeros(n, dtype=np.int64)
        self._prev = np.zeros(n, dtype=np.int8)
        self._sensor_level = np.zeros((self.n_sensors, 2), dtype=np.int8)
        #: Windows a rule row had no value for (no data, no spectrum, no temperature).
        self.counters = {"window_rule_skips": 0}

    def _spec(self, sensor: int, slot: int, rule: TrendRule | FreqShiftRule, size: Limits,
              floor: float,
              temperature: int) -> _RowSpec:
        windows = max(MIN_REFERENCE, math.ceil(rule.reference_s / self.window_s))
        return _RowSpec(sensor, slot, tuple(rule.z), tuple(size), rule.hysteresis, rule.sustain,
                        round(rule.warmup_s * 1000), round(rule.reference_s * 1000), windows,
                        floor, temperature)

    def __len__(self) -> int:
        return len(self._specs)

    def step(self, features: WindowFeatures, t0_ms: int, t1_ms: int) -> list[WindowEvent]:
        """Feed one closed window [t0_ms, t1_ms) (`features.WindowFeatures`); its level changes."""
        if not self._specs:
            return []
        x = self._values(features)
        temp = np.where(self._temp >= 0, np.asarray(features.mean)[np.maximum(self._temp, 0)],
                        0.0)
        has = np.isfinite(x) & np.isfinite(temp)
        self.counters["window_rule_skips"] += int(np.count_nonzero(~has))
        learning = has & ~self._frozen
        self._refit(np.flatnonzero(learning))
        expected = self._centre + self._slope * (temp - self._t_mean)
        z = (x - expected) / self._scale
        self._ref_start = np.where(has & (self._ref_start < 0), t0_ms, self._ref_start)
        spanned = t1_ms - self._ref_start
        armed = (has & (self._ref_kept >= MIN_REFERENCE) & (spanned >= self._warmup_ms)
                 & np.isfinite(z))
        limits = self._limits()
        n_changed = window_rules_step(np.where(armed, z, np.nan), armed, limits, self._n_limits,
                                      self._hyst, self._sustain, self._counters, self._levels,
                                      self._cusum, self._cusum_start, t0_ms, self._changed,
                                      self._prev)
        # before it arms every window joins the reference (the morning rush of its first day
        # too); once armed, only windows that raised nothing
        quiet = learning & (~armed | ((self._levels == 0) & ~(np.abs(z) >= limits[:, 0])))
        self._learn(np.flatnonzero(learning), quiet, x, temp, spanned)
        rows = self._changed[:n_changed].tolist()
        return self._events(rows, self._prev[:n_changed].tolist(), x, expected, z, limits)

    def _values(self, features: WindowFeatures) -> NDArray[np.float64]:
        """Each row's value this window: its sensor's statistic, or its mode's frequency."""
        x = np.full(len(self._specs), np.nan)
        for j, (s, slot) in enumerate(zip(self._sensor.tolist(), self._slot.tolist())):
            if slot == 0:
                x[j] = np.asarray(getattr(features, self._stats[s]))[s]
            else:
                column = features.modes.get(f"f{slot}")
                if column is not None:
                    x[j] = column[s]
        return x

    def _limits(self) -> NDArray[np.float64]:
        """Each row's z limits, raised where a level also needs a size."""
        if not len(self._specs):
            return self._base_z
        per_unit = np.where(self._slot[:, None] == 0, 1.0, np.abs(self._centre)[:, None] / 100.0)
        need = self._base_size * per_unit / self._scale[:, None]
        return np.where(np.isfinite(self._base_z), np.fmax(self._base_z, need), np.inf)

    def _learn(self, rows: NDArray[np.intp], quiet: NDArray[np.bool_], x: NDArray[np.float64],
               temp: NDArray[np.float64], spanned: NDArray[np.int64]) -> None:
        """Count a reference window for each learning row; keep its value if it was quiet;
        freeze the reference once it spans `reference_s` (and has MIN_REFERENCE values)."""
        for r in rows.tolist():
            n = int(self._ref_n[r])
            self._ref_n[r] = n + 1
            if quiet[r] and n % int(self._stride[r]) == 0 and self._ref_kept[r] < REFERENCE_CAP:
                k = int(self._ref_kept[r])
                self._ref_x[r, k], self._ref_t[r, k] = x[r], temp[r]
                self._ref_kept[r] = k + 1
            if spanned[r] >= self._reference_ms[r] and self._ref_kept[r] >= MIN_REFERENCE:
                self._refit(np.array([r]))
                self._frozen[r] = bool(np.isfinite(self._scale[r]))

    def _refit(self, rows: NDArray[np.intp]) -> None:
        """Median, scale and temperature line of each row's reference values."""
        for r in rows.tolist():
            k = int(self._ref_kept[r])
            if k == 0:
                continue
            xs, ts = self._ref_x[r, :k], self._ref_t[r, :k]
            slope, t_mean = 0.0, 0.0
            if self._temp[r] >= 0 and k >= _MIN_FIT and np.ptp(ts) > 0:
                t_mean = float(np.mean(ts))
                slope = float(np.polyfit(ts - t_mean, xs, 1)[0])
            resid = xs - slope * (ts - t_mean)
            centre = float(np.median(resid))
            mad = float(np.median(np.abs(resid - centre)))
            floor = self._floor[r] if self._slot[r] == 0 else self._floor[r] / 100.0 * abs(centre)
            self._centre[r], self._slope[r], self._t_mean[r] = centre, slope, t_mean
            self._scale[r] = max(MAD_TO_SD * mad, floor, 1e-300)

    def _events(self, rows: list[int], prevs: list[int], x: NDArray[np.float64],
                expected: NDArray[np.float64], z: NDArray[np.float64],
                limits: NDArray[np.float64]) -> list[WindowEvent]:
        """Alerts of the changed rows: trend rows directly, mode rows through their sensor."""
        out: list[WindowEvent] = []
        touched: set[int] = set()
        for r, prev in zip(rows, prevs):
            s = int(self._sensor[r])
            if self._slot[r] == 0:
                level = int(self._levels[r])
                self._sensor_level[s, 0] = level
                out.append(self._event(s, TREND, level, prev, r, x, expected, z, limits))
            else:
                touched.add(s)
        for s in sorted(touched):
            modes = np.flatnonzero((self._sensor == s) & (self._slot > 0))
            levels = self._levels[modes]
            level, prev = int(levels.max()), int(self._sensor_level[s, 1])
            if level == prev:
                continue
            self._sensor_level[s, 1] = level
            top = modes[levels == levels.max()]
            r = int(top[np.argmax(np.nan_to_num(np.abs(z[top])))])
            out.append(self._event(s, FREQ_SHIFT, level, prev, r, x, expected, z, limits))
        return out

    def _event(self, s: int, rule: str, level: int, prev: int, r: int, x: NDArray[np.float64],
               expected: NDArray[np.float64], z: NDArray[np.float64],
               limits: NDArray[np.float64]) -> WindowEvent:
        side = _G_POS if z[r] >= 0 else _G_NEG
        size = float(x[r] - expected[r])
        extra: dict[str, Any] = {"baseline": float(expected[r]), "current": float(x[r]),
                                 "size": size, "z": float(z[r]), "sd": float(self._scale[r])}
        if level > prev:
            extra["onset_ts"] = int(self._cusum_start[r, side])
        if self._temp[r] >= 0:
            extra["temperature_slope"] = float(self._slope[r])
        if rule == FREQ_SHIFT:
            extra["mode"] = int(self._slot[r])
            extra["shift_pct"] = 100.0 * size / float(expected[r])
        else:
            extra["stat"] = self._stats[s]
        limit = None
        if level > 0:
            edge = float(limits[r, level - 1] * self._scale[r])
            limit = float(expected[r] + (edge if size >= 0 else -edge))
        return WindowEvent(s, rule, level, prev, float(x[r]), limit, extra)

    def levels(self) -> NDArray[np.int8]:
        """Each sensor's level of `trend` and `freq_shift` (int8[S, 2])."""
        return self._sensor_level.copy()

    def row_levels(self) -> NDArray[np.int8]:
        """Per sensor and slot (trend, modes 1..6) the machine's level, to save with alerts."""
        out = np.zeros((self.n_sensors, SLOTS), dtype=np.int8)
        out[self._sensor, self._slot] = self._levels
        return out

    def load_row_levels(self, saved: NDArray[np.int8], rows: NDArray[np.intp]) -> None:
        """Resume levels saved by `row_levels` (`rows[i]`: saved row of sensor i, -1: none)."""
        if saved.ndim != 2 or saved.shape[1] != SLOTS or not len(self._specs):
            return
        src = rows[self._sensor]
        have = src >= 0
        self._levels[have] = saved[src[have], self._slot[have]]
        self._sync_sensor_levels()

    def _sync_sensor_levels(self) -> None:
        self._sensor_level[:] = 0
        for j in range(len(self._specs)):
            s, col = int(self._sensor[j]), 0 if self._slot[j] == 0 else 1
            self._sensor_level[s, col] = max(self._sensor_level[s, col], self._levels[j])

    _STATE = ("ref_x", "ref_t", "ref_n", "ref_start", "ref_kept", "centre", "slope", "t_mean", "scale",
              "frozen", "counters", "levels", "cusum", "cusum_start")

    def state_arrays(self) -> dict[str, NDArray[np.generic]]:
        """Every row's reference and machine state, with the (sensor, slot) of each row."""
        out: dict[str, NDArray[np.generic]] = {"sensor": self._sensor.copy(),
                                               "slot": self._slot.copy()}
        for key in self._STATE:
            out[key] = getattr(self, f"_{key}").copy()
        return out

    def load_state(self, saved: Mapping[str, NDArray[np.generic]],
                   rows: NDArray[np.intp]) -> None:
        """Resume from `state_arrays` of an earlier run; `rows[i]` is the saved row of sensor i
        (-1: a new sensor). Rows whose (sensor, slot) was not saved start afresh."""
        if any(key not in saved for key in ("sensor", "slot", *self._STATE)):
            raise ValueError("saved window-rule state is incomplete")
        where = {(int(s), int(k)): j for j, (s, k) in
                 enumerate(zip(saved["sensor"].tolist(), saved["slot"].tolist()))}
        for j in range(len(self._specs)):
            src = int(rows[self._sensor[j]])
            old = where.get((src, int(self._slot[j]))) if src >= 0 else None
            if old is None:
                continue
            for key in self._STATE:
                getattr(self, f"_{key}")[j] = saved[key][old]
        self._sync_sensor_levels()


def warm_up_structural() -> None:
    """Load the window-rule and peak-picking kernels now, not at the first closed window."""
    from edge_agent.kernels.features import pick_peaks

    one = np.ones(1)
    window_rules_step(one, np.zeros(1, np.bool_), np.ones((1, 4)), np.ones(1, np.int64), one,
                      np.ones(1, np.int64), np.zeros((1, 4), np.int64), np.zeros(1, np.int8),
                      np.zeros((1, 2)), np.zeros((1, 2), np.int64), 0, np.zeros(1, np.int64),
                      np.zeros(1, np.int8))
    pick_peaks(np.zeros(4), 1, 2, 0.0, 1, np.zeros(4), np.zeros(1, np.int64))


def _temperature(i: int, rule: str, sensor_id: str, index: Mapping[str, int],
                 ids: Sequence[str], sites: Sequence[str]) -> int:
    """Index of the temperature sensor a rule regresses on (-1: none); ValueError if it is not
    a sensor of the same site."""
    if not sensor_id:
        return -1
    t = index.get(sensor_id)
    if t is None or sites[t] != sites[i] or t == i:
        raise ValueError(f"sensor[{i}].rules.{rule}.temperature: {sensor_id!r} is not another "
                         f"sensor of site {sites[i]!r}")
    return t


__all__ = ["FREQ_SHIFT", "TREND", "WINDOW_RULES", "FreqShiftRule", "TrendRule", "WindowEvent",
           "WindowRules", "warm_up_structural", "window_rules_step"]
