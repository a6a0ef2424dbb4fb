"""Window features for Summaries: n, min, max, mean, last, RMS per sensor, and for vibration
sensors (kind `bridge.accel`) the dominant frequency in a band and its shift from a baseline.

`add` is one kernel call per batch. For spectral sensors it also keeps the window's latest
`spectrum_samples` samples; `take` then estimates the dominant frequency from a Hann-windowed,
zero-padded FFT (peak bin refined by a parabola through the log magnitudes), so resolution is
about 1 / window length / 4 before refinement. The sample rate is the configured one, or else
learnt from the blocks' times (`times_ms` given to `add`). The baseline is the mean dominant
frequency of the first `baseline_windows` windows that had one; `f_shift` is the relative
change from it (-0.03: 3 % lower, the usual early sign of lost stiffness).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.kernels._jit import kernel

SPECTRAL_KINDS = frozenset({"bridge.accel"})

_SUM, _SUMSQ, _MIN, _MAX, _LAST = range(5)
_N, _SPAN_MS, _INTERVALS = range(3)
_POS, _FILL = range(2)


@dataclass(frozen=True)
class WindowFeatures:
    """Per-sensor features of one window; NaN where a sensor had no finite sample (or, for
    f_peak/f_shift, is not spectral, had too few samples or no baseline yet)."""

    n: NDArray[np.int64]
    min: NDArray[np.float64]
    max: NDArray[np.float64]
    mean: NDArray[np.float64]
    last: NDArray[np.float64]
    rms: NDArray[np.float64]
    f_peak: NDArray[np.float64]
    f_shift: NDArray[np.float64]


@kernel
def accumulate_window(
    values: NDArray[np.float64],
    times_ms: NDArray[np.int64],
    block_sensor: NDArray[np.int32],
    block_start: NDArray[np.int64],
    acc: NDArray[np.float64],
    counts: NDArray[np.int64],
    spectral_row: NDArray[np.int64],
    ring: NDArray[np.float64],
    ring_pos: NDArray[np.int64],
) -> None:
    """Add a batch to the window: finite samples to the statistics, every sample of spectral
    sensors to their ring (NaN kept, filled at `take`), block time spans to the rate estimate.
    `times_ms` may be empty (no times known)."""
    has_times = times_ms.shape[0] == values.shape[0]
    cap = ring.shape[1]
    for b in range(block_sensor.shape[0]):
        s = block_sensor[b]
        lo, hi = block_start[b], block_start[b + 1]
        if hi <= lo:
            continue
        n, total, total_sq = counts[s, _N], acc[s, _SUM], acc[s, _SUMSQ]
        lowest, highest, last = acc[s, _MIN], acc[s, _MAX], acc[s, _LAST]
        for i in range(lo, hi):
            x = values[i]
            if math.isfinite(x):
                if n == 0 or x < lowest:
                    lowest = x
                if n == 0 or x > highest:
                    highest = x
                n += 1
                total += x
                total_sq += x * x
                last = x
        counts[s, _N], acc[s, _SUM], acc[s, _SUMSQ] = n, total, total_sq
        acc[s, _MIN], acc[s, _MAX], acc[s, _LAST] = lowest, highest, last
        row = spectral_row[s]
        if row >= 0:
            pos, fill = ring_pos[row, _POS], ring_pos[row, _FILL]
            for i in range(lo, hi):
                ring[row, pos] = values[i]
                pos = pos + 1 if pos + 1 < cap else 0
            ring_pos[row, _POS], ring_pos[row, _FILL] = pos, min(fill + hi - lo, cap)
        if has_times and hi - lo >= 2 and times_ms[hi - 1] > times_ms[lo]:
            counts[s, _SPAN_MS] += times_ms[hi - 1] - times_ms[lo]
            counts[s, _INTERVALS] += hi - lo - 1


def dominant_frequency(
    samples: NDArray[np.float64], rate_hz: float, band_hz: tuple[float, float]
) -> float:
    """Frequency (Hz) of the largest spectral peak of `samples` inside `band_hz`; NaN if the
    series is too short (under two periods of the band's low edge) or the band holds no bin."""
    n = len(samples)
    if n < 16 or not rate_hz > 0 or n < 2.0 * rate_hz / band_hz[0]:
        return math.nan
    centred = samples - np.nanmean(samples)
    centred = np.where(np.isfinite(centred), centred, 0.0) * np.hanning(n)
    n_fft = 1 << int(math.ceil(math.log2(4 * n)))
    magnitude = np.abs(np.fft.rfft(centred, n_fft))
    step = rate_hz / n_fft
    lo = max(int(math.ceil(band_hz[0] / step)), 1)
    hi = min(int(math.floor(band_hz[1] / step)), len(magnitude) - 2)
    if hi < lo or not np.any(magnitude[lo:hi + 1] > 0):
        return math.nan
    k = lo + int(np.argmax(magnitude[lo:hi + 1]))
    a, b, c = np.log(np.maximum(magnitude[k - 1:k + 2], 1e-300))
    curvature = a - 2.0 * b + c
    delta = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
    return float((k + delta) * step)


class WindowAccumulator:
    """Per-sensor window statistics over many batches; `take` returns them and starts anew."""

    def __init__(
        self,
        n_sensors: int,
        *,
        kinds: Sequence[str] | None = None,
        sample_rate_hz: Sequence[float] | float | None = None,
        band_hz: tuple[float, float] = (1.0, 10.0),
        spectrum_samples: int = 8192,
        baseline_windows: int = 10,
    ) -> None:
        if kinds is not None and len(kinds) != n_sensors:
            raise ValueError(f"kinds has {len(kinds)} entries for {n_sensors} sensors")
        if not 0 < band_hz[0] < band_hz[1]:
            raise ValueError(f"band_hz must be 0 < low < high, got {band_hz}")
        if spectrum_samples < 16 or baseline_windows < 1:
            raise ValueError("spectrum_samples must be >= 16 and baseline_windows >= 1")
        self.n_sensors = n_sensors
        self.band_hz = (float(band_hz[0]), float(band_hz[1]))
        self.baseline_windows = baseline_windows
        rates = np.full(n_sensors, math.nan) if sample_rate_hz is None else np.broadcast_to(
            np.asarray(sample_rate_hz, dtype=np.float64), (n_sensors,)).copy()
        self._rate_hz = rates
        spectral = [k in SPECTRAL_KINDS for k in (kinds or [""] * n_sensors)]
        self._spectral = np.flatnonzero(spectral)
        self._row = np.full(n_sensors, -1, dtype=np.int64)
        self._row[self._spectral] = np.arange(len(self._spectral))
        self._ring = np.zeros((len(self._spectral), spectrum_samples), dtype=np.float64)
        self._ring_pos = np.zeros((len(self._spectral), 2), dtype=np.int64)
        self._acc = np.zeros((n_sensors, 5), dtype=np.float64)
        self._counts = np.zeros((n_sensors, 3), dtype=np.int64)
        self._base_sum = np.zeros(n_sensors, dtype=np.float64)
        self._base_n = np.zeros(n_sensors, dtype=np.int64)

    def add(
        self,
        values: ArrayLike,
        block_sensor: ArrayLike,
        block_start: ArrayLike,
        times_ms: ArrayLike | None = None,
    ) -> None:
        """Add a batch (the RuleChain layout); NaN/inf samples are not counted."""
        vals = np.ascontiguousarray(values, dtype=np.float64)
        sensors = np.ascontiguousarray(block_sensor, dtype=np.int32)
        starts = np.ascontiguousarray(block_start, dtype=np.int64)
        times = np.zeros(0, np.int64) if times_ms is None else np.ascontiguousarray(
            times_ms, dtype=np.int64)
        if starts.shape != (len(sensors) + 1,) or (len(starts) and starts[-1] > len(vals)):
            raise ValueError("block_start must have len(block_sensor) + 1 offsets within values")
        if len(sensors) and (sensors.min() < 0 or sensors.max() >= self.n_sensors):
            raise ValueError(f"block_sensor must be in 0..{self.n_sensors - 1}")
        accumulate_window(vals, times, sensors, starts, self._acc, self._counts, self._row,
                          self._ring, self._ring_pos)

    def take(self) -> WindowFeatures:
        """The window's features; resets the window (learnt rates and baselines stay)."""
        n = self._counts[:, _N].copy()
        has = n > 0
        acc = np.where(has[:, None], self._acc, math.nan)
        safe_n = np.maximum(n, 1)
        f_peak = np.full(self.n_sensors, math.nan)
        for s in self._spectral:
            f_peak[s] = dominant_frequency(self._window_samples(int(self._row[s])),
                                           self._sample_rate(int(s)), self.band_hz)
        features = WindowFeatures(
            n=n,
            min=acc[:, _MIN].copy(),
            max=acc[:, _MAX].copy(),
            mean=acc[:, _SUM] / safe_n,
            last=acc[:, _LAST].copy(),
            rms=np.sqrt(acc[:, _SUMSQ] / safe_n),
            f_peak=f_peak,
            f_shift=self._shift_from_baseline(f_peak),
        )
        self._acc[:] = 0.0
        self._counts[:, _N] = 0
        self._ring_pos[:] = 0
        return features

    def _window_samples(self, row: int) -> NDArray[np.float64]:
        """The window's latest samples of spectral row `row`, oldest first."""
        pos, fill = self._ring_pos[row]
        if fill < self._ring.shape[1]:
            return self._ring[row, :fill]  # not wrapped yet
        return np.roll(self._ring[row], -pos)

    def _sample_rate(self, s: int) -> float:
        """Configured rate of sensor `s`, else the one learnt from block times (NaN if none)."""
        if self._rate_hz[s] > 0:
            return float(self._rate_hz[s])
        span, intervals = self._counts[s, _SPAN_MS], self._counts[s, _INTERVALS]
        return 1000.0 * intervals / span if span > 0 else math.nan

    def _shift_from_baseline(self, f_peak: NDArray[np.float64]) -> NDArray[np.float64]:
        """Learn baselines from the first windows with a peak; relative shift once learnt."""
        learning = np.isfinite(f_peak) & (self._base_n < self.baseline_windows)
        self._base_sum[learning] += f_peak[learning]
        self._base_n[learning] += 1
        ready = self._base_n >= self.baseline_windows
        baseline = np.where(ready, self._base_sum / np.maximum(self._base_n, 1), math.nan)
        return (f_peak - baseline) / baseline

    def state_arrays(self) -> dict[str, NDArray[np.generic]]:
        """What a restart should keep: learnt frequency baselines and sample-rate estimates."""
        return {
            "baseline_sum": self._base_sum.copy(),
            "baseline_n": self._base_n.copy(),
            "span_ms": self._counts[:, _SPAN_MS].copy(),
            "intervals": self._counts[:, _INTERVALS].copy(),
        }

    def load_state(self, saved: Mapping[str, NDArray[np.generic]]) -> None:
        """Resume baselines and rate estimates saved by `state_arrays` (same sensors)."""
        for key in ("baseline_sum", "baseline_n", "span_ms", "intervals"):
            if key not in saved or np.shape(saved[key]) != (self.n_sensors,):
                raise ValueError(f"saved window state {key!r} missing or not of shape "
                                 f"({self.n_sensors},)")
        self._base_sum[:] = saved["baseline_sum"]
        self._base_n[:] = saved["baseline_n"]
        self._counts[:, _SPAN_MS] = saved["span_ms"]
        self._counts[:, _INTERVALS] = saved["intervals"]
