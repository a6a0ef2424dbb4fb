"""`spike` (fault): isolated outliers against a rolling median and a robust scale.

Per sensor: the median of the last `window` (3, 5, 7 or 9) finite samples, from a ring buffer
by a selection network, and a robust scale, the running mean absolute deviation from that
median over normal samples (mean over the first `scale_samples`, then EW with that span),
floored at `min_dev`. Detection starts once the window is full and `min(window,
scale_samples)` deviations were seen. A sample beyond k * scale from the median opens a
candidate; if within `max_len` samples the signal comes back to within half that band of the
same median, it was a spike (half, so a step about as large as the band, seen through noise,
does not pass for one): level 1 is raised at the candidate's first sample (or, if that
was in an earlier batch, at the sample that came back). A longer excursion is a level shift,
not a spike, and no new candidate opens until a sample is back in band, so the end of a
step or pulse is never taken for a spike. `clear_samples` normal samples clear the fault.
`score` is the spike's peak in robust scales (signed); `limit` the band edge it crossed.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import kernel
from edge_agent.kernels._layout import (
    FP_SPIKE_K,
    FP_SPIKE_MIN_DEV,
    FS_SPIKE_PEND_PEAK,
    FS_SPIKE_PEND_REF,
    FS_SPIKE_PEND_THR,
    FS_SPIKE_SCALE,
    IP_SPIKE_CLEAR,
    IP_SPIKE_MAX_LEN,
    IP_SPIKE_SCALE_N,
    IP_SPIKE_WINDOW,
    IS_SPIKE_CLEAN,
    IS_SPIKE_FILL,
    IS_SPIKE_NSCALE,
    IS_SPIKE_PEND,
    IS_SPIKE_PEND_IDX,
    IS_SPIKE_POS,
)
from edge_agent.kernels.codes import SPIKE
from edge_agent.kernels.events import emit


@kernel
def _lo(a: float, b: float) -> float:
    return a if a < b else b


@kernel
def _hi(a: float, b: float) -> float:
    return b if a < b else a


@kernel
def _median3(a: float, b: float, c: float) -> float:
    return _hi(_lo(a, b), _lo(_hi(a, b), c))


@kernel
def _median5(a: float, b: float, c: float, d: float, e: float) -> float:
    """Drop the min and max of a, b, d, e (neither can be the median of five), then the
    median of the three left."""
    return _median3(_hi(_lo(a, b), _lo(d, e)), c, _lo(_hi(a, b), _hi(d, e)))


@kernel
def _inner4(
    a: float, b: float, c: float, d: float, e: float, f: float
) -> tuple[float, float, float, float]:
    """The four of six values left after dropping the min and the max."""
    a, b = _lo(a, b), _hi(a, b)
    c, d = _lo(c, d), _hi(c, d)
    e, f = _lo(e, f), _hi(e, f)
    return _hi(a, c), _hi(_lo(a, c), e), _lo(b, d), _lo(_hi(b, d), f)


@kernel
def window_median(ring: NDArray[np.float64], w: int) -> float:
    """Median of the first `w` (3, 5, 7 or 9) values of `ring` by forgetful selection: the min
    and max of any w//2 + 3 values cannot be the median, so drop them and recurse. No
    branches and no sorted copy to maintain."""
    if w == 3:
        return _median3(ring[0], ring[1], ring[2])
    if w == 5:
        return _median5(ring[0], ring[1], ring[2], ring[3], ring[4])
    a, b, c, d = _inner4(ring[0], ring[1], ring[2], ring[3], ring[4], ring[5])
    if w == 7:
        return _median5(a, b, c, d, ring[6])
    e, f, g, h = _inner4(a, b, c, d, ring[6], ring[7])
    return _median5(e, f, g, h, ring[8])


@kernel
def spike_block(
    values: NDArray[np.float64],
    start: int,
    stop: int,
    s: int,
    fp: NDArray[np.float64],
    ip: NDArray[np.int64],
    fs: NDArray[np.float64],
    is_: NDArray[np.int64],
    levels: NDArray[np.int8],
    window: NDArray[np.float64],
    ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run rule `spike` of sensor `s` over values[start:stop]; returns the event count."""
    w = ip[s, IP_SPIKE_WINDOW]
    max_len, scale_n = ip[s, IP_SPIKE_MAX_LEN], ip[s, IP_SPIKE_SCALE_N]
    clear_n = ip[s, IP_SPIKE_CLEAR]
    warm_n = min(w, scale_n)
    k, min_dev = fp[s, FP_SPIKE_K], fp[s, FP_SPIKE_MIN_DEV]
    ring = window[s]
    fill, pos, n_scale = is_[s, IS_SPIKE_FILL], is_[s, IS_SPIKE_POS], is_[s, IS_SPIKE_NSCALE]
    pend, pend_idx, clean = is_[s, IS_SPIKE_PEND], is_[s, IS_SPIKE_PEND_IDX], is_[s, IS_SPIKE_CLEAN]
    scale = fs[s, FS_SPIKE_SCALE]
    ref, thr, peak = fs[s, FS_SPIKE_PEND_REF], fs[s, FS_SPIKE_PEND_THR], fs[s, FS_SPIKE_PEND_PEAK]
    level = np.int64(levels[s, SPIKE])
    rate = 1.0 / max(n_scale, 1)
    for i in range(start, stop):
        x = values[i]
        if not math.isfinite(x):
            continue
        if fill == w:
            median = window_median(ring, w)
            dev = x - median
            band = k * max(scale, min_dev)
            if pend > 0:
                off = x - ref
                if abs(off) <= 0.5 * thr:  # back near the old median: it was a spike
                    pend, clean = 0, 0
                    if level == 0:
                        index = pend_idx if pend_idx >= 0 else i
                        edge = ref + thr if peak > 0 else ref - thr
                        n_ev = emit(ev_int, ev_float, n_ev, s, SPIKE, 1, 0, index, edge, peak)
                        level = 1
                else:
                    pend += 1
                    z = off / (thr / k)
                    if abs(z) > abs(peak):
                        peak = z
                    if pend > max_len:
                        pend = -1  # a level shift, not a spike
            elif n_scale >= warm_n and abs(dev) > band:
                if pend == 0:  # open a candidate; pend == -1: still in a long excursion
                    pend, pend_idx, ref, thr, peak = 1, i, median, band, dev / (band / k)
            else:
                pend = 0
                if n_scale < scale_n:
                    n_scale += 1
                    rate = 1.0 / n_scale
                scale += (abs(dev) - scale) * rate
                if level == 1:
                    clean += 1
                    if clean >= clear_n:
                        n_ev = emit(ev_int, ev_float, n_ev, s, SPIKE, 0, 1, i, math.nan, math.nan)
                        level, clean = 0, 0
        ring[pos] = x
        pos = pos + 1 if pos + 1 < w else 0
        fill = min(fill + 1, w)
    is_[s, IS_SPIKE_FILL], is_[s, IS_SPIKE_POS], is_[s, IS_SPIKE_NSCALE] = fill, pos, n_scale
    is_[s, IS_SPIKE_PEND], is_[s, IS_SPIKE_PEND_IDX], is_[s, IS_SPIKE_CLEAN] = pend, pend_idx, clean
    fs[s, FS_SPIKE_SCALE] = scale
    fs[s, FS_SPIKE_PEND_REF], fs[s, FS_SPIKE_PEND_THR], fs[s, FS_SPIKE_PEND_PEAK] = ref, thr, peak
    levels[s, SPIKE] = level
    return n_ev
