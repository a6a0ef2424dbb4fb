"""Window features for Summaries: n, min, max, mean, last, RMS per sensor, and for vibration
sensors (`bridge.accel`, or any sensor whose `spectrum` setting is on) the tracked modes.

`add` is one kernel call per batch. For spectral sensors it also keeps the window's latest
`spectrum_samples` samples; `take` then estimates, once per window and sensor:

- an averaged spectrum: Welch's method (segments of `segment_s` rounded up to a power of two
  samples, half overlapping, periodic Hann window, mean of the segments' periodograms, as
  `scipy.signal.welch` with its defaults computes it), or one Hann periodogram of the whole
  window (`method = "periodogram"`);
- up to `2 * modes` candidate peaks in the band: local maxima whose prominence (log-power height
  above the higher of the two minima that separate it from a higher peak) is at least
  `prominence` (a power ratio), strongest first and at least `separation_bins` apart, each
  refined by a parabola through the log power of its bin and its neighbours;
- for each candidate its amplitude (RMS of the PSD over +-2 bins, in the sensor's unit) and its
  damping ratio from the half-power bandwidth less the Hann window's own (NaN when the peak is
  no wider than the window makes it);
- modes 1..N: each mode takes the candidate nearest its reference frequency within
  `track_tol` (relative); references start as the first window's candidates in frequency order
  and follow each new estimate slowly (so the daily temperature swing is followed, but a mode
  never jumps to another peak), and a mode unseen for `LOST_WINDOWS` windows is acquired again.
  A peak wider than `max_damping` (a hump of quasi-static load or wind) is no mode.

The band defaults to [max(0.5 Hz, 2 frequency bins), 0.4 x the sample rate]. The sample rate
is the configured one, or else learnt from the blocks' times; a window whose own rate (from its
block times) differs from it by more than `RATE_TOL` gets no spectrum and counts in
`counters["rate_changes"]` (the learnt rate then follows), so a sensor that changes its rate
never reports frequencies on the wrong scale. Segments with more than `MAX_NAN_SHARE` of NaN are
left out (fewer NaN are interpolated); a window with under `min_valid` of the samples its length
and rate call for, or with fewer than two usable segments, gets no spectrum and counts in
`counters["spectra_skipped"]`. `f_peak` is the strongest peak; `f_shift` its relative change
from the mean of the first `baseline_windows` windows (-0.03: 3 % lower).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.kernels._jit import kernel

Limits = tuple[float, ...]

SPECTRAL_KINDS = frozenset({"bridge.accel"})

#: Most modes a sensor can track (columns f1..f6).
MAX_MODES: Final = 6
#: A window's own sample rate may differ this much (relative) from the sensor's rate.
RATE_TOL: Final = 0.01
#: A Welch segment with more NaN than this share is left out; fewer are interpolated.
MAX_NAN_SHARE: Final = 0.05
#: Windows a mode may go unseen before its reference is acquired again.
LOST_WINDOWS: Final = 10
#: Weight of each new estimate in a mode's tracking reference.
TRACK_WEIGHT: Final = 0.2
#: Half-power (-3 dB) bandwidth of the periodic Hann window, in frequency bins.
HANN_HALF_POWER_BINS: Final = 1.44

_SUM, _SUMSQ, _MIN, _MAX, _LAST = range(5)
_N, _SPAN_MS, _INTERVALS, _WSPAN_MS, _WINTERVALS = range(5)
_POS, _FILL = range(2)

#: Per-mode columns of a Summary (f1, zeta1, amp1, ...).
MODE_COLUMNS: Final = ("f", "zeta", "amp")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class SpectrumSettings:
    """Per-sensor spectral estimation (config `rules.spectrum`); see the module docstring."""

    enabled: bool = False
    #: (low, high) in Hz; empty: from the sample rate.
    band_hz: Limits = ()
    modes: int = 3
    method: str = "welch"
    segment_s: float = 10.0
    prominence: float = 4.0
    separation_bins: int = 3
    track_tol: float = 0.1
    min_valid: float = 0.5
    #: A peak wider than this damping ratio (half-power) is a hump (quasi-static traffic,
    #: wind), not a structural mode: no mode takes it.
    max_damping: float = 0.1

    def __post_init__(self) -> None:
        _check(len(self.band_hz) in (0, 2), f"spectrum.band_hz must be [low, high] or [], got "
               f"{list(self.band_hz)}")
        _check(not self.band_hz or 0 < self.band_hz[0] < self.band_hz[1],
               f"spectrum.band_hz must be 0 < low < high, got {list(self.band_hz)}")
        _check(1 <= self.modes <= MAX_MODES, f"spectrum.modes must be in 1..{MAX_MODES}, got "
               f"{self.modes}")
        _check(self.method in ("welch", "periodogram"),
               f"spectrum.method must be 'welch' or 'periodogram', got {self.method!r}")
        _check(self.segment_s > 0, f"spectrum.segment_s must be > 0, got {self.segment_s}")
        _check(self.prominence >= 1, f"spectrum.prominence must be >= 1, got {self.prominence}")
        _check(self.separation_bins >= 1,
               f"spectrum.separation_bins must be >= 1, got {self.separation_bins}")
        _check(0 < self.track_tol < 0.5, f"spectrum.track_tol must be in (0, 0.5), got "
               f"{self.track_tol}")
        _check(0 < self.min_valid <= 1, f"spectrum.min_valid must be in (0, 1], got "
               f"{self.min_valid}")
        _check(self.max_damping > 0, f"spectrum.max_damping must be > 0, got "
               f"{self.max_damping}")

    def band(self, rate_hz: float, bin_hz: float) -> tuple[float, float]:
        """The band searched for modes at this sample rate and frequency resolution."""
        if self.band_hz:
            return float(self.band_hz[0]), float(self.band_hz[1])
        return max(0.5, 2.0 * bin_hz), 0.4 * rate_hz


@dataclass(frozen=True)
class Spectrum:
    """An averaged one-sided power spectral density (unit^2/Hz) on bins of `bin_hz`."""

    psd: NDArray[np.float64]
    bin_hz: float
    segments: int


@dataclass(frozen=True)
class Peak:
    """One spectral peak: interpolated frequency, RMS amplitude, damping ratio (NaN: not
    resolved) and log10 power."""

    f_hz: float
    amp: float
    zeta: float
    log_power: float


@dataclass(frozen=True)
class WindowFeatures:
    """Per-sensor features of one window; NaN where a sensor had no finite sample (or, for the
    spectral columns, is not spectral, had too few samples or no baseline yet). `modes` maps
    column names (`f1`, `zeta1`, `amp1`, ...) to per-sensor columns."""

    n: NDArray[np.int64]
    min: NDArray[np.float64]
    max: NDArray[np.float64]
    mean: NDArray[np.float64]
    last: NDArray[np.float64]
    rms: NDArray[np.float64]
    f_peak: NDArray[np.float64]
    f_shift: NDArray[np.float64]
    modes: dict[str, NDArray[np.float64]] = field(default_factory=dict)


@kernel
def accumulate_window(
    values: NDArray[np.float64],
    times_ms: NDArray[np.int64],
    block_sensor: NDArray[np.int32],
    block_start: NDArray[np.int64],
    acc: NDArray[np.float64],
    counts: NDArray[np.int64],
    spectral_row: NDArray[np.int64],
    ring: NDArray[np.float32],
    ring_pos: NDArray[np.int64],
) -> None:
    """Add a batch to the window: finite samples to the statistics, every sample of spectral
    sensors to their ring (NaN kept, handled at `take`), block time spans to the rate estimates
    (all-time and this window's). `times_ms` may be empty (no times known)."""
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
            span = times_ms[hi - 1] - times_ms[lo]
            counts[s, _SPAN_MS] += span
            counts[s, _INTERVALS] += hi - lo - 1
            counts[s, _WSPAN_MS] += span
            counts[s, _WINTERVALS] += hi - lo - 1


@kernel
def pick_peaks(
    log_power: NDArray[np.float64],
    lo: int,
    hi: int,
    min_prominence: float,
    min_separation: int,
    prominence: NDArray[np.float64],
    out: NDArray[np.int64],
) -> int:
    """Indices of the strongest local maxima of log_power[lo:hi+1] (log10 power) whose
    prominence is at least `min_prominence` (log10), at least `min_separation` bins apart,
    strongest first, into `out` (its length bounds the count); returns the count.
    `prominence` is scratch of len(log_power)."""
    n = log_power.shape[0]
    lo = max(lo, 1)
    hi = min(hi, n - 2)
    for k in range(n):
        prominence[k] = -1.0
    for k in range(lo, hi + 1):
        v = log_power[k]
        if not (v > log_power[k - 1] and v >= log_power[k + 1]):
            continue
        left_min = v
        j = k - 1
        while j >= 0 and log_power[j] <= v:
            if log_power[j] < left_min:
                left_min = log_power[j]
            j -= 1
        right_min = v
        j = k + 1
        while j < n and log_power[j] <= v:
            if log_power[j] < right_min:
                right_min = log_power[j]
            j += 1
        prominence[k] = v - max(left_min, right_min)
    count = 0
    while count < out.shape[0]:
        best, best_v = -1, -math.inf
        for k in range(lo, hi + 1):
            if prominence[k] >= min_prominence and log_power[k] > best_v:
                best, best_v = k, log_power[k]
        if best < 0:
            break
        out[count] = best
        count += 1
        for k in range(max(lo, best - min_separation + 1), min(hi, best + min_separation - 1) + 1):
            prominence[k] = -1.0
    return count


def segment_length(rate_hz: float, settings: SpectrumSettings, n: int) -> int:
    """Samples per Welch segment: `segment_s` rounded up to a power of two (the whole window
    for a periodogram)."""
    if settings.method == "periodogram":
        return n
    return 1 << max(4, math.ceil(math.log2(max(settings.segment_s * rate_hz, 16.0))))


def averaged_spectrum(samples: NDArray[np.floating], rate_hz: float,
                      settings: SpectrumSettings) -> Spectrum | None:
    """Welch (or periodogram) PSD of `samples` with NaN-laden segments left out; None when
    fewer than two segments (one for a periodogram) are usable."""
    n = len(samples)
    nperseg = segment_length(rate_hz, settings, n)
    if n < nperseg or nperseg < 16:
        return None
    step = nperseg // 2 if settings.method == "welch" else nperseg
    starts = np.arange(0, n - nperseg + 1, step)
    segments = np.lib.stride_tricks.sliding_window_view(
        np.asarray(samples, dtype=np.float64), nperseg)[starts]
    bad = ~np.isfinite(segments)
    nan_share = bad.mean(axis=1)
    keep = nan_share <= MAX_NAN_SHARE
    if int(keep.sum()) < (2 if settings.method == "welch" else 1):
        return None
    segments = segments[keep]
    if bad[keep].any():
        segments = np.array([_interpolated(seg) for seg in segments])
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(nperseg) / nperseg)  # periodic Hann
    centred = segments - segments.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(centred * window, axis=1)) ** 2
    psd = power.mean(axis=0) / (rate_hz * float(np.sum(window * window)))
    psd[1:-1 if nperseg % 2 == 0 else None] *= 2.0
    return Spectrum(psd, rate_hz / nperseg, len(segments))


def _interpolated(segment: NDArray[np.float64]) -> NDArray[np.float64]:
    finite = np.isfinite(segment)
    if finite.all():
        return segment
    idx = np.arange(len(segment))
    return np.interp(idx, idx[finite], segment[finite])


def spectral_peaks(spectrum: Spectrum, band_hz: tuple[float, float], settings: SpectrumSettings,
                   max_peaks: int) -> list[Peak]:
    """The strongest prominent peaks of `spectrum` in `band_hz`, strongest first."""
    psd, df = spectrum.psd, spectrum.bin_hz
    lo = max(int(math.ceil(band_hz[0] / df)), 1)
    hi = min(int(math.floor(band_hz[1] / df)), len(psd) - 2)
    if hi < lo or not np.any(psd[lo:hi + 1] > 0):
        return []
    log_power = np.log10(np.maximum(psd, 1e-300))
    scratch = np.empty(len(psd))
    found = np.empty(max_peaks, dtype=np.int64)
    count = pick_peaks(log_power, lo, hi, math.log10(settings.prominence),
                       settings.separation_bins, scratch, found)
    return [_refine(psd, log_power, int(k), df) for k in found[:count]]


def _refine(psd: NDArray[np.float64], log_power: NDArray[np.float64], k: int, df: float) -> Peak:
    """Parabolic interpolation on log power, RMS over +-2 bins, half-power damping."""
    a, b, c = log_power[k - 1:k + 2]
    curvature = a - 2.0 * b + c
    delta = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
    f_hz = (k + delta) * df
    top = b - 0.25 * (a - c) * delta
    near = psd[max(k - 2, 0):k + 3]
    amp = math.sqrt(float(np.sum(near)) * df)
    half = 0.5 * float(psd[k])
    left, right = _half_power_edge(psd, k, half, -1), _half_power_edge(psd, k, half, 1)
    zeta = math.nan
    if math.isfinite(left) and math.isfinite(right) and f_hz > 0:
        width = (right - left) * df
        own = HANN_HALF_POWER_BINS * df
        if width > 1.2 * own:
            zeta = math.sqrt(width * width - own * own) / (2.0 * f_hz)
    return Peak(float(f_hz), amp, zeta, float(top))


def _half_power_edge(psd: NDArray[np.float64], k: int, half: float, direction: int) -> float:
    """Fractional bin where the PSD first falls to `half` going from bin k in `direction`."""
    j = k
    while 0 <= j + direction < len(psd):
        nxt = j + direction
        if psd[nxt] <= half:
            frac = (psd[j] - half) / (psd[j] - psd[nxt]) if psd[j] > psd[nxt] else 0.0
            return j + direction * frac
        j = nxt
    return math.nan


def dominant_frequency(
    samples: NDArray[np.float64], rate_hz: float, band_hz: tuple[float, float],
    settings: SpectrumSettings = SpectrumSettings(),
) -> float:
    """Frequency (Hz) of the strongest spectral peak of `samples` inside `band_hz` (NaN if the
    series is too short for the spectrum or the band holds no peak)."""
    if not rate_hz > 0:
        return math.nan
    spectrum = averaged_spectrum(samples, rate_hz, settings)
    peaks = [] if spectrum is None else spectral_peaks(spectrum, band_hz, settings, 1)
    return peaks[0].f_hz if peaks else math.nan


class WindowAccumulator:
    """Per-sensor window statistics over many batches; `take` returns them and starts anew."""

    def __init__(
        self,
        n_sensors: int,
        *,
        kinds: Sequence[str] | None = None,
        sample_rate_hz: Sequence[float | None] | float | None = None,
        band_hz: tuple[float, float] | None = None,
        spectra: Sequence[SpectrumSettings] | None = None,
        spectrum_samples: int = 16384,
        baseline_windows: int = 10,
    ) -> None:
        """`spectra` gives each sensor's spectral settings; without it, sensors of
        SPECTRAL_KINDS get the defaults (with `band_hz`, if given)."""
        if kinds is not None and len(kinds) != n_sensors:
            raise ValueError(f"kinds has {len(kinds)} entries for {n_sensors} sensors")
        if spectra is not None and len(spectra) != n_sensors:
            raise ValueError(f"spectra has {len(spectra)} entries for {n_sensors} sensors")
        if band_hz is not None and not 0 < band_hz[0] < band_hz[1]:
            raise ValueError(f"band_hz must be 0 < low < high, got {band_hz}")
        if spectrum_samples < 16 or baseline_windows < 1:
            raise ValueError("spectrum_samples must be >= 16 and baseline_windows >= 1")
        if spectra is None:
            default = SpectrumSettings(enabled=True, band_hz=tuple(band_hz or ()))
            spectra = [default if k in SPECTRAL_KINDS else SpectrumSettings()
                       for k in (kinds or [""] * n_sensors)]
        self.n_sensors = n_sensors
        self.spectra = tuple(spectra)
        self.baseline_windows = baseline_windows
        if sample_rate_hz is None or isinstance(sample_rate_hz, (int, float)):
            rates = np.full(n_sensors, math.nan if sample_rate_hz is None else sample_rate_hz,
                            dtype=np.float64)
        else:
            rates = np.array([math.nan if r is None else r for r in sample_rate_hz],
                             dtype=np.float64)
        self._rate_hz = rates
        self._learnt_hz = np.full(n_sensors, math.nan)
        self._spectral = np.flatnonzero([s.enabled for s in self.spectra])
        self._row = np.full(n_sensors, -1, dtype=np.int64)
        self._row[self._spectral] = np.arange(len(self._spectral))
        self._ring = np.zeros((len(self._spectral), spectrum_samples), dtype=np.float32)
        self._ring_pos = np.zeros((len(self._spectral), 2), dtype=np.int64)
        self._acc = np.zeros((n_sensors, 5), dtype=np.float64)
        self._counts = np.zeros((n_sensors, 5), dtype=np.int64)
        self._base_sum = np.zeros(n_sensors, dtype=np.float64)
        self._base_n = np.zeros(n_sensors, dtype=np.int64)
        self.max_modes = max((s.modes for s in self.spectra if s.enabled), default=0)
        self._mode_ref = np.full((n_sensors, max(self.max_modes, 1)), math.nan)
        self._mode_unseen = np.zeros((n_sensors, max(self.max_modes, 1)), dtype=np.int64)
        #: Windows without a spectrum for too few samples, and for a changed sample rate.
        self.counters = {"spectra_skipped": 0, "rate_changes": 0}

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

    def take(self, duration_ms: float | None = None) -> WindowFeatures:
        """The window's features (`duration_ms`: the window's length, to judge how many of
        its samples arrived); resets the window (learnt rates and references stay)."""
        n = self._counts[:, _N].copy()
        has = n > 0
        acc = np.where(has[:, None], self._acc, math.nan)
        safe_n = np.maximum(n, 1)
        f_peak = np.full(self.n_sensors, math.nan)
        modes = {f"{c}{m + 1}": np.full(self.n_sensors, math.nan)
                 for m in range(self.max_modes) for c in MODE_COLUMNS}
        for s in self._spectral.tolist():
            if n[s] == 0:
                continue
            peaks = self._window_peaks(s, duration_ms)
            if peaks:
                f_peak[s] = peaks[0].f_hz
                limit = self.spectra[s].max_damping
                modal = [p for p in peaks if not p.zeta > limit]
                if modal:
                    self._track(s, modal, modes)
        features = WindowFeatures(
            n=n,
            min=acc[:, _MIN].copy(),
            max=acc[:, _MAX].copy(),
            mean=acc[:, _SUM] / safe_n,
            last=acc[:, _LAST].copy(),
            rms=np.sqrt(acc[:, _SUMSQ] / safe_n),
            f_peak=f_peak,
            f_shift=self._shift_from_baseline(f_peak),
            modes=modes,
        )
        self._acc[:] = 0.0
        self._counts[:, _N] = 0
        self._counts[:, _WSPAN_MS] = 0
        self._counts[:, _WINTERVALS] = 0
        self._ring_pos[:] = 0
        return features

    def _window_peaks(self, s: int, duration_ms: float | None) -> list[Peak]:
        """The candidate peaks of sensor `s`'s window, or [] (counted) if it has none."""
        settings = self.spectra[s]
        rate = self._window_rate(s)
        if not rate > 0:
            return []
        samples = self._window_samples(int(self._row[s]))
        finite = int(np.count_nonzero(np.isfinite(samples)))
        wanted = min(len(self._ring[0]), rate * duration_ms / 1000.0) if duration_ms else 0.0
        spectrum = averaged_spectrum(samples, rate, settings) if finite >= settings.min_valid \
            * wanted else None
        if spectrum is None:
            self.counters["spectra_skipped"] += 1
            return []
        band = settings.band(rate, spectrum.bin_hz)
        return spectral_peaks(spectrum, band, settings, 2 * settings.modes)

    def _track(self, s: int, peaks: list[Peak], modes: dict[str, NDArray[np.float64]]) -> None:
        """Give each tracked mode of sensor `s` the peak nearest its reference."""
        n_modes = self.spectra[s].modes
        tol = self.spectra[s].track_tol
        ref, unseen = self._mode_ref[s], self._mode_unseen[s]
        free = sorted(peaks, key=lambda p: p.f_hz)
        if np.isnan(ref[:n_modes]).all():
            strongest = sorted(peaks[:n_modes], key=lambda p: p.f_hz)
            for m, p in enumerate(strongest):
                ref[m] = p.f_hz
        taken: set[int] = set()
        for m in range(n_modes):
            if math.isnan(ref[m]):
                continue
            best, best_d = -1, math.inf
            for j, p in enumerate(free):
                d = abs(p.f_hz - ref[m])
                if j not in taken and d <= tol * ref[m] and d < best_d:
                    best, best_d = j, d
            if best < 0:
                unseen[m] += 1
                if unseen[m] >= LOST_WINDOWS:
                    ref[m] = math.nan
                continue
            taken.add(best)
            p = free[best]
            unseen[m] = 0
            ref[m] += TRACK_WEIGHT * (p.f_hz - ref[m])
            modes[f"f{m + 1}"][s], modes[f"zeta{m + 1}"][s] = p.f_hz, p.zeta
            modes[f"amp{m + 1}"][s] = p.amp
        for m in range(n_modes):  # a lost mode takes an untracked peak outside the others
            if math.isnan(ref[m]):
                for j, p in enumerate(free):
                    others = ref[:n_modes][np.isfinite(ref[:n_modes])]
                    if j not in taken and not np.any(np.abs(p.f_hz - others) <= tol * others):
                        ref[m], unseen[m] = p.f_hz, 0
                        taken.add(j)
                        break

    def _window_samples(self, row: int) -> NDArray[np.float32]:
        """The window's latest samples of spectral row `row`, oldest first."""
        pos, fill = self._ring_pos[row]
        if fill < self._ring.shape[1]:
            return self._ring[row, :fill]  # not wrapped yet
        return np.roll(self._ring[row], -pos)

    def _window_rate(self, s: int) -> float:
        """Sensor `s`'s sample rate for this window: the configured or learnt one, NaN (and
        counted) when the window's own block times say otherwise."""
        span, intervals = self._counts[s, _WSPAN_MS], self._counts[s, _WINTERVALS]
        own = 1000.0 * intervals / span if span > 0 and intervals > 0 else math.nan
        known = self._rate_hz[s] if self._rate_hz[s] > 0 else self._learnt_hz[s]
        if not known > 0:
            self._learnt_hz[s] = own
            return float(own)
        if math.isfinite(own) and abs(own / known - 1.0) > RATE_TOL:
            self.counters["rate_changes"] += 1
            if not self._rate_hz[s] > 0:
                self._learnt_hz[s] = own  # the next window at this rate is used again
            return math.nan
        return float(known)

    def _shift_from_baseline(self, f_peak: NDArray[np.float64]) -> NDArray[np.float64]:
        """Learn baselines from the first windows with a peak; relative shift once learnt."""
        learning = np.isfinite(f_peak) & (self._base_n < self.baseline_windows)
        self._base_sum[learning] += f_peak[learning]
        self._base_n[learning] += 1
        ready = self._base_n >= self.baseline_windows
        baseline = np.where(ready, self._base_sum / np.maximum(self._base_n, 1), math.nan)
        return (f_peak - baseline) / baseline

    def state_arrays(self) -> dict[str, NDArray[np.generic]]:
        """What a restart should keep: learnt frequency baselines, mode references and
        sample-rate estimates."""
        return {
            "baseline_sum": self._base_sum.copy(),
            "baseline_n": self._base_n.copy(),
            "span_ms": self._counts[:, _SPAN_MS].copy(),
            "intervals": self._counts[:, _INTERVALS].copy(),
            "learnt_hz": self._learnt_hz.copy(),
            "mode_ref": self._mode_ref.copy(),
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
        if np.shape(saved.get("learnt_hz")) == (self.n_sensors,):
            self._learnt_hz[:] = saved["learnt_hz"]
        ref = saved.get("mode_ref")
        if ref is not None and ref.ndim == 2 and ref.shape[0] == self.n_sensors:
            width = min(ref.shape[1], self._mode_ref.shape[1])
            self._mode_ref[:, :width] = ref[:, :width]
