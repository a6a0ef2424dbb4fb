"""Throughput of the rule kernels and the whole chain (`python -m benchmarks.bench_kernels`).

For each kernel (one rule of `RuleChain(only=...)`) and the whole chain: samples/s with numba
for 1, 100, 1000 and 10 000 sensors in blocks of 1000 samples, against the pure-Python twins
of tests/kernels_naive.py and a NumPy version (the same recurrences vectorised across
sensors, one NumPy step per sample index). Also cold JIT compile time and warm start from the
on-disk cache, each in a fresh process. `--write` puts the tables in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from benchmarks.suite import write_section
from edge_agent.kernels import RULE_NAMES, RuleChain, SensorRules, default_rules
from tests.kernels_naive import run_naive

BLOCK = 1000
SENSOR_COUNTS = (1, 100, 1000, 10_000)
KERNELS: tuple[str | None, ...] = (*RULE_NAMES, None)
RULES = default_rules("pipe.pressure")  # every rule on


def pressure_batch(n_sensors: int, block: int, seed: int, hour: int = 0) -> tuple[NDArray, ...]:
    """One block per sensor of 1 Hz pipe-pressure-like data with rare spikes and steps."""
    rng = np.random.default_rng(seed)
    t = hour * block + np.arange(block)
    x = 0.4 + 0.04 * np.sin(2 * np.pi * t / 86_400) + rng.normal(0, 0.003, (n_sensors, block))
    x[rng.random(x.shape) < 1e-4] += 0.1
    x[rng.random(x.shape) < 1e-4] = np.nan
    times = np.broadcast_to(1_767_225_600_000 + t * 1000, x.shape)
    return (x.ravel(), times.ravel().copy(), np.arange(n_sensors, dtype=np.int32),
            np.arange(n_sensors + 1, dtype=np.int64) * block)


def numba_rate(kernel: str | None, n_sensors: int, repeats: int = 15) -> float:
    """Samples/s of the chain (or one rule) on consecutive batches after a warm-up batch: the
    best of `repeats` rounds of at least 200 000 samples (the machine is shared: the best round
    is the one least disturbed)."""
    chain = RuleChain([RULES] * n_sensors, only=None if kernel is None else [kernel])
    per_round = max(1, 200_000 // (n_sensors * BLOCK))
    batches = [pressure_batch(n_sensors, BLOCK, seed, hour)
               for seed, hour in enumerate(range(min(per_round, 8) + 1))]
    chain.process(*batches[0])
    best, hour = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_round):
            chain.process(*batches[1 + hour % (len(batches) - 1)])
            hour += 1
        best = min(best, time.perf_counter() - start)
    return per_round * n_sensors * BLOCK / best


def python_rate(kernel: str | None, samples: int = 20_000) -> float:
    """Samples/s of the pure-Python twin(s) on one sensor."""
    x, t, bs, st = pressure_batch(1, samples, 99)
    start = time.perf_counter()
    run_naive([RULES], x, t, bs, st, only=None if kernel is None else [kernel])
    return samples / (time.perf_counter() - start)


# --- NumPy version: the kernels' recurrences, vectorised across sensors --------------------


class NumpyRules:
    """Every rule as NumPy operations over all sensors, one call per sample index."""

    def __init__(self, rules: SensorRules, n: int, only: str | None) -> None:
        self.r, self.n, self.only = rules, n, only
        self.levels = np.zeros((n, len(RULE_NAMES)), dtype=np.int64)
        self.cnt = {name: np.zeros((n, 4), np.int64) for name in ("high", "low", "rise", "fall",
                                                                 "anomaly")}
        self.sub = {"rise": np.zeros(n, np.int64), "fall": np.zeros(n, np.int64)}
        self.sums = np.zeros((5, n))
        self.last_x = np.full(n, np.nan)
        self.window = np.full((n, rules.spike.window), np.nan)
        self.scale = np.zeros(n)
        self.fast = self.mean = self.slow = self.dmean = np.full(n, np.nan)
        self.raw_var = self.var = self.dvar = self.pos = self.neg = np.zeros(n)
        self.flat_ref, self.flat_run = np.full(n, np.nan), np.zeros(n, np.int64)
        self.bad, self.good = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.changes = 0

    def on(self, name: str) -> bool:
        return self.only is None or self.only == name

    def graded(self, key: str, v: NDArray, limits: NDArray, h: float, deb: int,
               level: NDArray) -> NDArray:
        cnt = self.cnt[key]
        k = np.arange(4)
        up_role = k[None, :] >= level[:, None]
        cond = np.where(up_role, v[:, None] > limits, v[:, None] < limits - h)
        cond &= np.isfinite(v)[:, None]
        cnt[:] = np.where(cond, np.minimum(cnt + 1, deb), 0)
        held = cnt >= deb
        up = np.max(np.where(held & up_role, k + 1, 0), axis=1)
        down = np.min(np.where(held & ~up_role, k, level[:, None]), axis=1)
        new = np.where(up > level, up, down)
        lo, hi = np.minimum(level, new), np.maximum(level, new)
        cnt[(k >= np.where(new > level, 0, lo)[:, None]) & (k < hi[:, None])] = 0
        return new

    def step(self, x: NDArray, dt: float) -> None:
        r, lv = self.r, self.levels
        finite = np.isfinite(x)
        if self.on("high"):
            lim = np.array(r.high + (np.inf,) * (4 - len(r.high)))
            lv[:, 0] = self.graded("high", x, lim, r.hysteresis, r.debounce, lv[:, 0])
        if self.on("low"):
            lim = -np.array(r.low + (-np.inf,) * (4 - len(r.low)))
            lv[:, 1] = self.graded("low", -x, lim, r.hysteresis, r.debounce, lv[:, 1])
        if self.on("rate"):
            s0, s1, s2, sx, stx = self.sums
            d = np.exp(-dt / r.rate.window_s)
            dx = np.where(finite, x - self.last_x, 0.0)
            s2[:] = (s2 - 2 * dt * s1 + dt * dt * s0) * d
            stx[:] = stx - dt * sx
            s1[:] = s1 - dt * s0
            sx[:] = (sx - dx * s0) * d
            stx[:] = (stx - dx * s1) * d
            s1 *= d
            s0[:] = s0 * d + 1
            self.last_x = np.where(finite, x, self.last_x)
            spread = s0 * s2 - s1 * s1
            rate = np.where(spread > 0.25 * r.rate.window_s**2 * s0 * s0,
                            (s0 * stx - s1 * np.nan_to_num(sx)) / np.maximum(spread, 1e-300), 0)
            fall = np.array(r.rate.fall + (np.inf,) * (4 - len(r.rate.fall)))
            self.sub["fall"] = self.graded("fall", -rate, fall, r.rate.hysteresis,
                                           r.rate.debounce, self.sub["fall"])
            lv[:, 2] = np.maximum(self.sub["fall"], self.sub["rise"])
        if self.on("spike"):
            med = np.median(self.window, axis=1)
            dev = np.abs(x - med)
            band = r.spike.k * np.maximum(self.scale, r.spike.min_dev)
            out = dev > band
            self.scale = np.where(out | ~finite, self.scale,
                                  self.scale + (np.nan_to_num(dev) - self.scale) / 200)
            lv[:, 3] = np.where(out, 1, lv[:, 3])
            self.window = np.roll(self.window, -1, axis=1)
            self.window[:, -1] = np.where(finite, x, self.window[:, -2])
        if self.on("anomaly"):
            a = r.anomaly
            af, aslow = 1 - np.exp(-dt / a.smooth_s), 1 - np.exp(-dt / a.window_s)
            e = np.clip(x - self.fast, -a.clip * np.sqrt(self.raw_var + 1e-12),
                        a.clip * np.sqrt(self.raw_var + 1e-12))
            self.fast = np.where(finite, np.nan_to_num(self.fast, nan=x) + af * e, self.fast)
            self.raw_var = (1 - aslow) * (self.raw_var + aslow * np.nan_to_num(e) ** 2)
            dd = self.fast - np.nan_to_num(self.mean, nan=x)
            v = np.maximum(self.var, a.min_std**2)
            self.mean = np.nan_to_num(self.mean, nan=x) + aslow * np.clip(dd, -3 * np.sqrt(v),
                                                                          3 * np.sqrt(v))
            self.var = (1 - aslow) * (self.var + aslow * np.nan_to_num(dd) ** 2)
            z = np.abs(dd) / np.sqrt(v)
            lim = np.array(a.z + (np.inf,) * (4 - len(a.z)))
            lv[:, 4] = self.graded("anomaly", z, lim, a.hysteresis, a.debounce, lv[:, 4])
        if self.on("drift"):
            p = r.drift
            self.slow = np.where(finite, np.nan_to_num(self.slow, nan=x)
                                 + (1 - np.exp(-dt / p.smooth_s)) * (x - self.slow), self.slow)
            ab = 1 - np.exp(-dt / p.baseline_s)
            d = self.slow - np.nan_to_num(self.dmean, nan=x)
            std = np.sqrt(np.maximum(self.dvar, p.min_std**2))
            z = np.nan_to_num(d / std)
            self.pos = np.clip(self.pos + (z - p.k) * dt / 3600, 0, 2 * p.h)
            self.neg = np.clip(self.neg - (z + p.k) * dt / 3600, 0, 2 * p.h)
            self.dmean = np.nan_to_num(self.dmean, nan=x) + ab * np.clip(d, -p.k * std, p.k * std)
            self.dvar = (1 - ab) * (self.dvar + ab * np.nan_to_num(d) ** 2)
            lv[:, 5] = np.where((self.pos >= p.h) | (self.neg >= p.h), 1,
                                np.where((self.pos == 0) & (self.neg == 0), 0, lv[:, 5]))
        if self.on("flatline"):
            same = np.abs(x - self.flat_ref) <= r.flatline.epsilon
            self.flat_run = np.where(same, np.minimum(self.flat_run + 1, r.flatline.samples), 1)
            self.flat_ref = np.where(same | ~finite, self.flat_ref, x)
            lv[:, 6] = np.where(self.flat_run >= r.flatline.samples, 1, np.where(same, lv[:, 6], 0))
        if self.on("range"):
            good = finite & (x >= r.range.lo) & (x <= r.range.hi)
            self.bad = np.where(good, 0, self.bad + 1)
            self.good = np.where(good, self.good + 1, 0)
            lv[:, 7] = np.where(self.bad >= r.range.debounce, 1,
                                np.where(self.good >= r.range.clear_samples, 0, lv[:, 7]))


def numpy_rate(kernel: str | None, n_sensors: int, steps: int) -> float:
    """Samples/s of the NumPy version over `steps` sample indices of every sensor."""
    x, _, _, _ = pressure_batch(n_sensors, steps, 5)
    matrix = x.reshape(n_sensors, steps)
    model = NumpyRules(RULES, n_sensors, kernel)
    start = time.perf_counter()
    for j in range(steps):
        model.step(matrix[:, j], 1.0)
    return n_sensors * steps / (time.perf_counter() - start)


# --- compile and start-up times -------------------------------------------------------------

_STARTUP = """
import time
t = time.perf_counter()
import numpy as np
import edge_agent.kernels as k
imported = time.perf_counter() - t
chain = k.RuleChain([k.default_rules("pipe.pressure")])
chain.process(np.zeros(4), np.arange(4) * 1000, np.zeros(1, np.int32), np.array([0, 4]))
acc = k.WindowAccumulator(1, kinds=["bridge.accel"], sample_rate_hz=100.0)
acc.add(np.zeros(4), np.zeros(1, np.int32), np.array([0, 4]))
acc.take()
print(imported, time.perf_counter() - t)
"""


def startup_seconds(cache_dir: str | None) -> tuple[float, float]:
    """(import, import + first call of every kernel) in a fresh interpreter."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", _STARTUP], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def compile_times() -> tuple[list[str], float]:
    """Markdown rows for cold and warm start, and the warm start's seconds to ready."""
    with tempfile.TemporaryDirectory() as tmp:
        cold = startup_seconds(tmp)  # empty cache: compiles everything and writes the cache
        warm = min((startup_seconds(tmp) for _ in range(3)), key=lambda p: p[1])
    return [
        "| start | import | ready (import + first call of every kernel) |",
        "| --- | ---: | ---: |",
        f"| cold (empty cache: JIT compile) | {cold[0]:.2f} s | {cold[1]:.1f} s |",
        f"| warm (on-disk cache) | {warm[0]:.2f} s | {warm[1]:.2f} s |",
    ], warm[1]


def _fmt(rate: float) -> str:
    return f"{rate / 1e6:.2f} M" if rate >= 1e5 else f"{rate / 1e3:.1f} k"


def throughput_table(
    counts: tuple[int, ...], log: Callable[[str], None]
) -> tuple[list[str], dict[str | None, float], float]:
    """Markdown rows per kernel, numba / pure-Python speed-up per kernel, chain samples/s."""
    head = " | ".join(f"S={n}" for n in counts)
    lines = [
        f"| kernel | numba: {head} | pure Python | NumPy: {head} | numba / Python "
        f"(1000 sensors) |",
        "| --- |" + " ---: |" * (2 * len(counts) + 2),
    ]
    speedups: dict[str | None, float] = {}
    for kernel in KERNELS:
        name = kernel or "**whole chain**"
        jit = [numba_rate(kernel, n) for n in counts]
        py = python_rate(kernel)
        vec = [numpy_rate(kernel, n, steps=max(50, min(2000, 200_000 // n))) for n in counts]
        ref = jit[counts.index(1000)] if 1000 in counts else jit[-1]
        cells = " | ".join(_fmt(r) for r in jit) + f" | {_fmt(py)} | " + " | ".join(
            _fmt(r) for r in vec)
        lines.append(f"| {name} | {cells} | {ref / py:,.0f}x |")
        log(lines[-1])
        speedups[kernel] = ref / py
    return lines, speedups, ref


# --- structural kernels ---------------------------------------------------------------------

STRUCTURAL_SECTION = "## Kernels (structural)"


def _cpu_s(fn: Callable[[], None]) -> float:
    """CPU seconds of this process taken by fn()."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def structural_table(n_accel: int = 100, rate_hz: float = 100.0, minutes: int = 5) -> str:
    """Markdown: samples/s of the spectral features, the window rules and the traffic gate,
    and the CPU share of `n_accel` accelerometers at `rate_hz` on this core and a Pi's."""
    from benchmarks.machine import PI_CORE_FACTOR
    from edge_agent.kernels.features import WindowAccumulator
    from edge_agent.kernels.spike import TrafficGate
    from edge_agent.kernels.structural import WindowRules, warm_up_structural
    from edge_agent.kernels.features import WindowFeatures

    rng = np.random.default_rng(15)
    per_block = int(rate_hz)  # one block per sensor per second, as sensor nodes send them
    t = np.arange(per_block) / rate_hz
    acc = WindowAccumulator(n_accel, kinds=["bridge.accel"] * n_accel, sample_rate_hz=rate_hz)
    sensors = np.arange(n_accel, dtype=np.int32)
    starts = np.arange(n_accel + 1, dtype=np.int64) * per_block
    seconds = [np.concatenate([0.02 * np.sin(2 * np.pi * (10.8 + 0.01 * s) * (t + k))
                               + 0.004 * np.sin(2 * np.pi * 23.4 * (t + k))
                               + 0.002 * rng.normal(size=per_block) for s in range(n_accel)])
               for k in range(60)]
    times = [np.tile(1_767_225_600_000 + (k * 1000 + np.arange(per_block) * 1000 // per_block),
                     n_accel).astype(np.int64) for k in range(60)]
    warm_up_structural()
    acc.add(seconds[0], sensors, starts, times[0])
    acc.take(duration_ms=1000)
    add_s = take_s = 0.0
    for _ in range(minutes):
        add_s += _cpu_s(lambda: [acc.add(seconds[k], sensors, starts, times[k])
                                 for k in range(60)])
        take_s += _cpu_s(lambda: acc.take(duration_ms=60_000))
    samples = minutes * 60 * n_accel * per_block
    share = (add_s + take_s) / (minutes * 60.0)
    gate = TrafficGate(["bridge.accel"] * n_accel + ["bridge.tilt"] * n_accel,
                       [f"s{i}" for i in range(n_accel)] * 2, [False] * n_accel + [True] * n_accel)
    both = np.arange(n_accel, dtype=np.int32)
    gate.update(seconds[0], times[0], both, starts)
    gate_s = _cpu_s(lambda: [gate.update(seconds[k], times[k], both, starts) for k in range(60)])
    from edge_agent.kernels import default_rules, rules_from_overrides

    rows = 1000
    ids, sites = [f"S{i}" for i in range(rows)], ["x"] * rows
    learning = WindowRules([default_rules("bridge.strain")] * rows, ids=ids, sites=sites,
                           window_s=60.0)  # a day's reference: still learning
    short = rules_from_overrides("bridge.strain", {"trend": {"warmup_s": 600, "reference_s": 600}})
    armed = WindowRules([short] * rows, ids=ids, sites=sites, window_s=60.0)
    nan = np.full(rows, np.nan)

    def windows(rules: WindowRules, count: int, offset: int) -> None:
        for w in range(count):
            m = 100.0 + rng.normal(0, 1.0, rows)
            rules.step(WindowFeatures(np.full(rows, 60), m, m, m, m, m, nan, nan), (offset + w)
                       * 60_000, (offset + w + 1) * 60_000)

    learn_s = _cpu_s(lambda: windows(learning, 200, 0))
    windows(armed, 40, 0)  # its reference is frozen after 30
    rules_s = _cpu_s(lambda: windows(armed, 200, 40))
    lines = [
        f"Command: `python -m benchmarks.bench_kernels --structural --write`; one core of this "
        f"machine; a Pi-class core taken as {PI_CORE_FACTOR:g}x slower "
        "(`benchmarks.machine.PI_CORE_FACTOR`).",
        "",
        "| kernel | work | rate | CPU |",
        "| --- | --- | ---: | ---: |",
        f"| window features of spectral sensors: `WindowAccumulator.add` | {n_accel} "
        f"accelerometers at {rate_hz:g} Hz, 1 s blocks | {_fmt(samples / add_s)} samples/s | "
        f"{100 * add_s / (minutes * 60):.3f} % of a core |",
        f"| Welch spectra, peaks, modes: `WindowAccumulator.take` | the same, 60 s windows | "
        f"{_fmt(samples / take_s)} samples/s | {100 * take_s / (minutes * 60):.3f} % of a core |",
        f"| traffic gate: `traffic_activity` | {n_accel} accelerometers | "
        f"{_fmt(60 * n_accel * per_block / gate_s)} samples/s | "
        f"{100 * gate_s / 60:.3f} % of a core |",
        f"| window rules: `WindowRules.step` (trend) | {rows} sensors, reference learning / "
        f"armed | {200 * rows / learn_s:,.0f} / {200 * rows / rules_s:,.0f} sensor-windows/s | "
        f"{100 * learn_s / 200 / 60:.3f} % / {100 * rules_s / 200 / 60:.4f} % of a core for "
        f"{rows} sensors (60 s windows) |",
        "",
        f"Budget: the spectral features of {n_accel} accelerometers at {rate_hz:g} Hz cost "
        f"{100 * share:.2f} % of this core, so {100 * share * PI_CORE_FACTOR:.2f} % of a Pi-class "
        f"core (goal <= 10 %).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 and 100 sensors only")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--structural", action="store_true",
                        help="only the structural kernels (spectra, window rules, traffic gate)")
    args = parser.parse_args()
    structural = structural_table()
    print(structural)
    if args.write:
        write_section(STRUCTURAL_SECTION, structural)
    if args.structural:
        return
    counts = (1, 100) if args.quick else SENSOR_COUNTS
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), "unknown CPU")
    startup, warm_s = compile_times()
    print("\n".join(startup))
    table, speedups, chain_rate = throughput_table(counts, print)
    slowest = min(speedups, key=lambda k: speedups[k])
    targets = (
        f"Targets: whole chain at S={1000 if 1000 in counts else counts[-1]} "
        f"{chain_rate / 1e6:.1f} M samples/s (>= 20 M); slowest speed-up over pure Python "
        f"{speedups[slowest]:,.0f}x for {slowest or 'the chain'} (>= 50x); warm start "
        f"{warm_s:.2f} s (< 1.5 s)."
    )
    print(targets)
    command = "python -m benchmarks.bench_kernels" + (" --quick" if args.quick else "") + " --write"
    body = "\n".join([
        f"Command: `{command}`; {cpu}, one core, numba {_numba_version()}. Samples/s, blocks "
        f"of {BLOCK} samples of 1 Hz pipe-pressure-like data (every rule of the `pipe.pressure` "
        "profile on); pure Python: the twins in tests/kernels_naive.py on one sensor; NumPy: "
        "the same recurrences vectorised across sensors (one NumPy step per sample index).",
        "",
        *table,
        "",
        targets,
        "",
        "Start-up in a fresh interpreter (`RuleChain` and `WindowAccumulator` kernels):",
        "",
        *startup,
    ])
    if args.write:
        write_section("## Kernels", body)


def _numba_version() -> str:
    import numba

    return str(numba.__version__)


if __name__ == "__main__":
    main()
