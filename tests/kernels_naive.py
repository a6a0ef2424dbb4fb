"""Slow, obviously correct twins of the rule and feature kernels, one sensor at a time.

Each rule is a small class fed one sample at a time; it returns the level change that sample
causes, if any. They follow the definitions in the kernels' docstrings directly (a history
of the last `debounce` values instead of counters, explicit weighted sums instead of running
ones, `statistics.median` of a deque instead of a sorted ring) so that agreement with the
kernels means something.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.kernels.codes import (
    ANOMALY,
    DRIFT,
    FLATLINE,
    HIGH,
    LOW,
    RANGE,
    RATE,
    RULE_CODES,
    SPIKE,
)
from edge_agent.kernels.profiles import SensorRules

NAN = math.nan

#: What a sample did: (new level, limit, score, index of the causing sample), or None.
Out = tuple[int, float, float, int] | None


@dataclass(frozen=True)
class Change:
    """One level change, like a row of `Events`."""

    sensor: int
    rule: int
    level: int
    prev: int
    index: int
    limit: float
    score: float


class Graded:
    """Graded levels by definition: raise to the most limits the last `debounce` values all
    exceeded; lower when the last `debounce` values were all inside L[level-1] - hysteresis,
    to the number of limits they were not all inside."""

    def __init__(self, limits: Sequence[float], hysteresis: float, debounce: int) -> None:
        self.limits = list(limits)
        self.hysteresis = hysteresis
        self.history: deque[float] = deque(maxlen=debounce)
        self.level = 0

    def feed(self, v: float) -> int:
        self.history.append(v)
        full = len(self.history) == self.history.maxlen
        beyond = [full and all(h > lim for h in self.history) for lim in self.limits]
        up = sum(beyond)
        if up > self.level:
            self.level = up
            return up
        inside = [
            full and all(h < lim - self.hysteresis for h in self.history)
            for lim in self.limits[: self.level]
        ]
        down = sum(not ok for ok in inside)
        if down < self.level:
            self.level = down
        return self.level


def crossed(limits: Sequence[float], new: int, old: int) -> float:
    return limits[new - 1] if new > old else limits[new]


class Threshold:
    def __init__(self, rules: SensorRules, rule: int) -> None:
        self.rule = rule
        self.sign = 1.0 if rule == HIGH else -1.0
        limits = rules.high if rule == HIGH else rules.low
        self.graded = Graded([self.sign * v for v in limits], rules.hysteresis, rules.debounce)

    def feed(self, i: int, x: float, t: int) -> Out:
        if not math.isfinite(x):
            return None
        old = self.graded.level
        new = self.graded.feed(self.sign * x)
        if new == old:
            return None
        return new, self.sign * crossed(self.graded.limits, new, old), NAN, i


class Clock:
    """Seconds since the first sample, never going back (an older sample counts as now)."""

    def __init__(self) -> None:
        self.newest: int | None = None
        self.seconds = 0.0

    def tick(self, t: int) -> float:
        """Advance to `t`; returns the step in seconds (0 for the first or an older sample)."""
        if self.newest is None:
            self.newest = t
            return 0.0
        step = max(t - self.newest, 0) * 0.001
        self.newest = max(self.newest, t)
        self.seconds += step
        return step


class Rate:
    def __init__(self, rules: SensorRules) -> None:
        r = rules.rate
        self.tau, self.per = r.window_s, r.per_s
        self.rise = Graded(r.rise, r.hysteresis, r.debounce)
        self.fall = Graded(r.fall, r.hysteresis, r.debounce)
        self.clock = Clock()
        self.points: list[tuple[float, float]] = []
        self.level = 0

    def slope(self) -> float | None:
        """Weighted least-squares slope (units/s) with weights exp(-age/tau), or None if the
        weighted time spread is under tau/2 or the weights sum under 3."""
        now = self.clock.seconds
        self.points = [(c, x) for c, x in self.points if now - c < 40 * self.tau]
        c, x = np.array(self.points).T
        w = np.exp(-(now - c) / self.tau)
        total = w.sum()
        if total < 3.0:
            return None
        cbar, xbar = (w * c).sum() / total, (w * x).sum() / total
        var_t = (w * (c - cbar) ** 2).sum() / total
        if var_t < 0.25 * self.tau**2:
            return None
        return float((w * (c - cbar) * (x - xbar)).sum() / total / var_t)

    def feed(self, i: int, x: float, t: int) -> Out:
        if not math.isfinite(x):
            return None
        self.clock.tick(t)
        self.points.append((self.clock.seconds, x))
        slope = self.slope()
        if slope is None:
            return None
        r = slope * self.per
        up_old, down_old = self.rise.level, self.fall.level
        up, down = self.rise.feed(r), self.fall.feed(-r)
        new = max(up, down)
        old, self.level = self.level, new
        if new == old:
            return None
        if (new > old and up == new and up_old < new) or (new < old and up < up_old == old):
            limit = crossed(self.rise.limits, up, up_old)
        else:
            limit = -crossed(self.fall.limits, down, down_old)
        return new, limit, r, i


class Spike:
    def __init__(self, rules: SensorRules) -> None:
        p = rules.spike
        self.p = p
        self.window: deque[float] = deque(maxlen=p.window)
        self.scale, self.n_scale = 0.0, 0
        self.candidate: list[float] | None = None  # [first index, ref, band, peak z, length]
        self.in_excursion = False
        self.clean = 0
        self.level = 0
        self.activity = 0.0  # recent mean |deviation|, each clipped at the band
        self.burst_since: int | None = None  # when the activity last rose above quiet
        self.recent: deque[float] = deque([0.0, 0.0], maxlen=2)  # |deviation| of the last two
        self.returned: list[float] | None = None  # a spike back near its median, [.., left]

    def feed(self, i: int, x: float, t: int) -> Out:
        if not math.isfinite(x):
            return None
        out: Out = None
        p = self.p
        if len(self.window) == p.window:
            median = statistics.median(self.window)
            dev = x - median
            band = p.k * max(self.scale, p.min_dev)
            warm = self.n_scale >= min(p.window, p.scale_samples)
            calm = self.activity <= p.quiet * max(self.scale, p.min_dev)
            own = False  # a burst longer than a vehicle's: the sensor's own noise
            if calm:
                self.burst_since = None
            elif self.burst_since is None:
                self.burst_since = t
            elif t - self.burst_since > 1000.0 * p.burst_s:
                own = True
            self.activity += (min(abs(dev), band) - self.activity) / p.quiet_samples
            near = p.isolation * max(self.scale, p.min_dev)
            if self.returned is not None:  # the two samples after it must stay near too
                first, ref, thr, peak, left = self.returned
                if abs(x - ref) > near and not own:
                    self.returned = None
                elif left > 1:
                    self.returned = [first, ref, thr, peak, left - 1]
                else:
                    self.returned, self.clean = None, 0
                    if self.level == 0:
                        self.level = 1
                        out = (1, ref + thr if peak > 0 else ref - thr, peak, int(first))
            if self.candidate is not None:
                first, ref, thr, peak, length = self.candidate
                if abs(x - ref) <= thr / 2 and own:  # in the sensor's own noise: no wait
                    self.candidate, self.clean = None, 0
                    if self.level == 0:
                        self.level = 1
                        out = (1, ref + thr if peak > 0 else ref - thr, peak, int(first))
                elif abs(x - ref) <= thr / 2:
                    self.candidate = None
                    self.returned = [first, ref, thr, peak, 2]
                else:
                    z = (x - ref) / (thr / p.k)
                    peak = z if abs(z) > abs(peak) else peak
                    self.candidate = [first, ref, thr, peak, length + 1]
                    if length + 1 > p.max_len:
                        self.candidate, self.in_excursion = None, True
            elif warm and abs(dev) > band:
                if not self.in_excursion and (self.returned is not None or not own and (
                        not calm or max(self.recent) > near)):
                    self.in_excursion = True  # inside a burst, or loud neighbours: not isolated
                elif not self.in_excursion:
                    self.candidate = [i, median, band, dev / (band / p.k), 1]
            else:
                self.in_excursion = False
                self.n_scale = min(self.n_scale + 1, p.scale_samples)
                self.scale += (abs(dev) - self.scale) / self.n_scale
                if self.level == 1:
                    self.clean += 1
                    if self.clean >= p.clear_samples:
                        self.level, self.clean = 0, 0
                        out = (0, NAN, NAN, i)
            self.recent.append(abs(dev))
        self.window.append(x)
        return out


class Anomaly:
    def __init__(self, rules: SensorRules) -> None:
        p = rules.anomaly
        self.p = p
        self.graded = Graded(p.z, p.hysteresis, p.debounce)
        self.clock = Clock()
        self.fast = self.raw_var = self.mean = self.var = NAN
        self.held = 0.0
        self.run: list[int] = []  # time steps (ms) of the latest same-side clipped innovations
        self.side = 0

    def clip(self, d: float, var: float) -> float:
        bound = self.p.clip * math.sqrt(var)
        return max(-bound, min(bound, d))

    def follow(self, d: float, var: float) -> float:
        """Full pull up to the first z limit, then limit^2 / |d| (falling as d grows)."""
        bound = self.p.z[0] * math.sqrt(var)
        return d if abs(d) <= bound else math.copysign(bound * bound / abs(d), d)

    def feed(self, i: int, x: float, t: int) -> Out:
        if not math.isfinite(x):
            return None
        p = self.p
        before = self.clock.newest
        dt = self.clock.tick(t)
        if before is None:
            self.fast, self.raw_var, self.mean, self.var = x, 0.0, x, 0.0
            return None
        step_ms = max(t - before, 0)
        a_fast = 1.0 - math.exp(-dt / p.smooth_s) if p.smooth_s > 0 else 1.0
        a = 1.0 - math.exp(-dt / p.window_s)
        age = self.clock.seconds
        a_var = 1.0 - math.exp(-dt / p.var_window_s)
        if age < p.var_window_s:  # young: a plain average of what was seen
            a_var = max(a_var, dt / age) if age > 0 else 1.0
        warm = age >= p.warmup_s
        min_var = p.min_std**2
        e = x - self.fast
        if warm:
            ec = self.clip(e, max(self.raw_var, min_var))
            side = 0 if ec == e else (1 if e > 0 else -1)
            if side == 0 or side != self.side:
                self.run = []
            if side != 0:
                self.run.append(step_ms)
            self.side = side
            self.raw_var = (1 - a_var) * (self.raw_var + a_var * ec * ec)
            if sum(self.run) < 1000.0 * p.smooth_s:  # an outlier: clipped; longer: a step
                e = ec
        else:
            self.raw_var = (1 - a_var) * (self.raw_var + a_var * e * e)
        self.fast += a_fast * e
        base = self.mean
        d = self.fast - base
        v = max(self.var, min_var)
        if not warm:
            self.mean += a * d
            self.var = (1 - a_var) * (self.var + a_var * d * d)
            return None
        if self.graded.level == 0:  # learn the normal
            self.held = 0.0
            self.mean += a * self.follow(d, v)
            if abs(d) <= p.z[0] * math.sqrt(v):
                dc = self.clip(d, v)
                self.var = (1 - a_var) * (self.var + a_var * dc * dc)
        else:  # raised: hold the normal, for at most hold_s
            self.held += dt
            if self.held >= p.hold_s:
                self.mean = base = self.fast
                d, self.held = 0.0, 0.0
        z = d / math.sqrt(v)
        old = self.graded.level
        new = self.graded.feed(abs(z))
        if new == old:
            return None
        limit = base + math.copysign(crossed(self.graded.limits, new, old) * math.sqrt(v), z)
        return new, limit, z, i


class Drift:
    def __init__(self, rules: SensorRules) -> None:
        self.p = rules.drift
        self.clock = Clock()
        self.slow = self.mid = self.mean = self.var = NAN
        self.pos = self.neg = 0.0
        self.level = 0

    def feed(self, i: int, x: float, t: int) -> Out:
        if not math.isfinite(x):
            return None
        p = self.p
        first = self.clock.newest is None
        dt = self.clock.tick(t)
        if first:
            self.slow, self.mid, self.mean, self.var = x, x, x, 0.0
            return None
        a_smooth = 1.0 - math.exp(-dt / p.smooth_s) if p.smooth_s > 0 else 1.0
        a_base = 1.0 - math.exp(-dt / p.baseline_s)
        self.slow += a_smooth * (x - self.slow)
        self.mid += (1.0 - math.exp(-dt / p.jump_s)) * (self.slow - self.mid)
        age = self.clock.seconds
        d = self.slow - self.mean
        if age < p.warmup_s:
            a = max(dt / age, a_base) if age > 0 else 1.0
            self.mean += a * d
            self.var = (1 - a) * (self.var + a * d * d)
            return None
        std = math.sqrt(max(self.var, p.min_std**2))
        if abs(self.slow - self.mid) > p.k / 2 * std:  # a fast shift: an event, not drift
            self.mean, d, self.pos, self.neg = self.slow, 0.0, 0.0, 0.0
        z = d / std
        hours = dt / 3600.0
        self.pos = min(max(self.pos + (z - p.k) * hours, 0.0), 2 * p.h)
        self.neg = min(max(self.neg + (-z - p.k) * hours, 0.0), 2 * p.h)
        base = self.mean
        dc = max(-p.k * std, min(p.k * std, d))
        self.mean += a_base * dc
        self.var = (1 - a_base) * (self.var + a_base * dc * dc)
        if self.level == 0 and (self.pos >= p.h or self.neg >= p.h):
            self.level = 1
            return 1, base + math.copysign(p.k * std, z), z, i
        if self.level == 1 and self.pos == 0 and self.neg == 0:
            self.level = 0
            return 0, NAN, z, i
        return None


class Flatline:
    def __init__(self, rules: SensorRules) -> None:
        self.p = rules.flatline
        self.run: list[float] = []
        self.level = 0

    def feed(self, i: int, x: float, t: int) -> Out:
        if not math.isfinite(x):
            return None
        p = self.p
        if self.run and abs(x - self.run[0]) <= p.epsilon:
            self.run.append(x)
            at_rest = abs(self.run[0] - p.rest) <= p.epsilon
            if len(self.run) == p.samples and self.level == 0 and not at_rest:
                self.level = 1
                return 1, NAN, self.run[0], i
            return None
        self.run = [x]
        if self.level == 1:
            self.level = 0
            return 0, NAN, x, i
        return None


class Range:
    def __init__(self, rules: SensorRules) -> None:
        self.p = rules.range
        self.since_change: list[bool] = []
        self.level = 0

    def feed(self, i: int, x: float, t: int) -> Out:
        p = self.p
        good = math.isfinite(x) and p.lo <= x <= p.hi
        self.since_change.append(good)
        tail_bad = self.since_change[-p.debounce:]
        tail_good = self.since_change[-p.clear_samples:]
        if self.level == 0 and len(tail_bad) == p.debounce and not any(tail_bad):
            self.level, self.since_change = 1, []
            limit = NAN if not math.isfinite(x) else (p.lo if x < p.lo else p.hi)
            return 1, limit, NAN, i
        if self.level == 1 and len(tail_good) == p.clear_samples and all(tail_good):
            self.level, self.since_change = 0, []
            return 0, NAN, NAN, i
        return None


RULE_CLASSES = {
    HIGH: lambda r: Threshold(r, HIGH),
    LOW: lambda r: Threshold(r, LOW),
    RATE: Rate,
    SPIKE: Spike,
    ANOMALY: Anomaly,
    DRIFT: Drift,
    FLATLINE: Flatline,
    RANGE: Range,
}


def enabled(rules: SensorRules, rule: int) -> bool:
    return {
        HIGH: bool(rules.high),
        LOW: bool(rules.low),
        RATE: rules.rate.enabled and bool(rules.rate.rise or rules.rate.fall),
        SPIKE: rules.spike.enabled,
        ANOMALY: rules.anomaly.enabled and bool(rules.anomaly.z),
        DRIFT: rules.drift.enabled,
        FLATLINE: rules.flatline.enabled,
        RANGE: rules.range.enabled,
    }[rule]


def run_naive(
    rules: Sequence[SensorRules],
    values: np.ndarray,
    times_ms: np.ndarray,
    block_sensor: np.ndarray,
    block_start: np.ndarray,
    only: Sequence[str] | None = None,
) -> list[Change]:
    """Every level change of the batch, rule by rule and sample by sample."""
    codes = sorted(RULE_CODES[n] for n in only) if only else list(RULE_CLASSES)
    machines = {
        (s, c): RULE_CLASSES[c](r) for s, r in enumerate(rules) for c in codes if enabled(r, c)
    }
    changes: list[Change] = []
    for b, s in enumerate(block_sensor):
        for i in range(int(block_start[b]), int(block_start[b + 1])):
            for c in codes:
                machine = machines.get((int(s), c))
                if machine is None:
                    continue
                out = machine.feed(i, float(values[i]), int(times_ms[i]))
                if out is not None:
                    level, limit, score, index = out
                    prev = _prev(changes, int(s), c)
                    changes.append(Change(int(s), c, level, prev, index, limit, score))
    return changes


def _prev(changes: list[Change], sensor: int, rule: int) -> int:
    for ch in reversed(changes):
        if ch.sensor == sensor and ch.rule == rule:
            return ch.level
    return 0


def window_features(
    values: Sequence[float],
) -> tuple[int, float, float, float, float, float]:
    """n, min, max, mean, last, rms of the finite values (NaN when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0, NAN, NAN, NAN, NAN, NAN
    n = len(finite)
    return (n, min(finite), max(finite), sum(finite) / n, finite[-1],
            math.sqrt(sum(v * v for v in finite) / n))


# --- test batches ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """A batch in the RuleChain layout, plus where each sensor's samples went."""

    values: np.ndarray
    times_ms: np.ndarray
    block_sensor: np.ndarray
    block_start: np.ndarray


def make_series(rng: np.random.Generator, n: int, shape: str, nan_at: frozenset[str]) -> np.ndarray:
    """A labelled-looking test series: noise, a walk, steps, ramps, spikes, stuck runs."""
    if shape == "constant":
        x = np.full(n, float(rng.normal(3.0, 2.0)))
    else:
        x = rng.normal(0.0, 0.5, n)
        if shape in ("walk", "mixed"):
            x += np.cumsum(rng.normal(0.0, 0.3, n))
        if shape in ("steps", "mixed") and n > 4:
            for at in rng.integers(0, n, size=1 + n // 150):
                x[at:] += rng.normal(0.0, 6.0)
            for at in rng.integers(0, n, size=1 + n // 300):
                rise, length = float(rng.normal(0.0, 8.0)), int(rng.integers(5, 60))
                ramp = x[at:at + length]
                ramp += np.linspace(0.0, rise, len(ramp))
                x[at + length:] += rise
        if shape in ("spiky", "mixed") and n > 4:
            spikes = rng.random(n) < 0.02
            x[spikes] += rng.choice([-1.0, 1.0], spikes.sum()) * rng.uniform(10, 40, spikes.sum())
            at = int(rng.integers(0, n))
            x[at:at + int(rng.integers(2, 40))] = x[at]
    if n:
        holes = rng.random(n) < 0.02
        x[holes] = np.nan
        if rng.random() < 0.2:
            x[int(rng.integers(0, n))] = rng.choice([np.inf, -np.inf])
        k = max(1, n // 20)
        if "start" in nan_at:
            x[:k] = np.nan
        if "middle" in nan_at:
            x[n // 2:n // 2 + k] = np.nan
        if "end" in nan_at:
            x[n - k:] = np.nan
    return x


def make_times(rng: np.random.Generator, n: int, irregular: bool) -> np.ndarray:
    """Sample times in ms: 1 s apart with jitter, or irregular (gaps, repeats, one step back)."""
    steps = np.full(n, 1000, dtype=np.int64) + rng.integers(-150, 150, n)
    if irregular and n:
        steps[rng.random(n) < 0.05] = 0
        steps[rng.random(n) < 0.03] *= 40
        steps[int(rng.integers(0, n))] = -3000
    return 1_700_000_000_000 + np.cumsum(steps)


def interleave(
    rng: np.random.Generator, series: Sequence[np.ndarray], times: Sequence[np.ndarray],
    n_blocks: Sequence[int],
) -> Batch:
    """Cut each sensor's series into blocks and interleave the sensors, keeping each
    sensor's blocks in time order (empty blocks included)."""
    pieces: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for x, t, k in zip(series, times, n_blocks):
        cuts = np.sort(rng.integers(0, len(x) + 1, size=max(k - 1, 0)))
        pieces.append(list(zip(np.split(x, cuts), np.split(t, cuts))))
    order = np.concatenate([np.full(len(p), s) for s, p in enumerate(pieces)]).astype(int)
    rng.shuffle(order)
    nxt = [0] * len(pieces)
    vals, ts, sensors, starts = [], [], [], [0]
    for s in order:
        x, t = pieces[s][nxt[s]]
        nxt[s] += 1
        vals.append(x)
        ts.append(t)
        sensors.append(s)
        starts.append(starts[-1] + len(x))
    return Batch(
        values=np.concatenate(vals) if vals else np.zeros(0),
        times_ms=np.concatenate(ts).astype(np.int64) if ts else np.zeros(0, np.int64),
        block_sensor=np.array(sensors, dtype=np.int32),
        block_start=np.array(starts, dtype=np.int64),
    )


# --- structural kernels ---------------------------------------------------------------------


def pick_peaks_naive(log_power: Sequence[float], lo: int, hi: int, min_prominence: float,
                     min_separation: int, max_peaks: int) -> list[int]:
    """Prominent local maxima by definition: a bin above its left neighbour and not below its
    right one; prominence = its height minus the higher of the lowest points between it and the
    nearest strictly higher bin on each side (or the edge); then the highest prominent ones,
    each suppressing the bins closer than `min_separation`."""
    n = len(log_power)
    lo, hi = max(lo, 1), min(hi, n - 2)
    prominent = []
    for k in range(lo, hi + 1):
        v = log_power[k]
        if not (v > log_power[k - 1] and v >= log_power[k + 1]):
            continue
        left = k
        while left - 1 >= 0 and log_power[left - 1] <= v:
            left -= 1
        right = k
        while right + 1 < n and log_power[right + 1] <= v:
            right += 1
        base = max(min(log_power[left:k + 1]), min(log_power[k:right + 1]))
        if v - base >= min_prominence:
            prominent.append(k)
    chosen: list[int] = []
    while prominent and len(chosen) < max_peaks:
        best = max(prominent, key=lambda k: (log_power[k], -k))
        chosen.append(best)
        prominent = [k for k in prominent if abs(k - best) >= min_separation]
    return chosen


class WindowRuleNaive:
    """One window-rule machine by definition: graded levels on |z| (sustain = debounce) and two
    one-sided CUSUMs with allowance limits[0] / 2, each remembering when it last left zero."""

    def __init__(self, limits: Sequence[float], hysteresis: float, sustain: int) -> None:
        self.graded = Graded(limits, hysteresis, sustain)
        self.allowance = 0.5 * limits[0]
        self.g = [0.0, 0.0]
        self.start = [0, 0]

    def feed(self, z: float, t0_ms: int) -> tuple[int, int] | None:
        """(new level, old level) if the window changed the level."""
        if not math.isfinite(z):
            return None
        for side, v in ((0, z), (1, -z)):
            new = max(0.0, self.g[side] + v - self.allowance)
            if self.g[side] == 0.0 and new > 0.0:
                self.start[side] = t0_ms
            self.g[side] = new
        old = self.graded.level
        level = self.graded.feed(abs(z))
        return (level, old) if level != old else None
