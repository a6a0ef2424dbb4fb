"""`spike` (fault): isolated outliers against a rolling median and a robust scale.

Per sensor: the median of the last `window` (3, 5, 7 or 9) finite samples (a ring buffer
between chunks; within one, `rolling_medians` takes every window's median by a selection
network in one vectorised pass before the rule's loop), and a robust scale, the running
mean absolute deviation from that median over normal samples (mean over the first
`scale_samples`, then EW with that span), floored at `min_dev`. Detection starts once the window is full and `min(window,
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

from edge_agent.kernels._jit import inlined, kernel
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

#: window, max_len, scale_samples, clear_samples, samples before detection, k, min_dev
SpikeParams = tuple[int, int, int, int, int, float, float]
#: fill, deviations seen, pending, its first index, clean run, scale, the candidate's ref,
#: band and peak, level, the scale's update weight
SpikeState = tuple[int, int, int, int, int, float, float, float, float, int, float]


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
def _median7(a: float, b: float, c: float, d: float, e: float, f: float, g: float) -> float:
    p, q, r, t = _inner4(a, b, c, d, e, f)
    return _median5(p, q, r, t, g)


@kernel
def _median9(
    a: float, b: float, c: float, d: float, e: float, f: float, g: float, h: float, k: float
) -> float:
    p, q, r, t = _inner4(a, b, c, d, e, f)
    p, q, r, t = _inner4(p, q, r, t, g, h)
    return _median5(p, q, r, t, k)


@kernel
def rolling_medians(
    buf: NDArray[np.float64], start: int, stop: int, w: int, meds: NDArray[np.float64]
) -> None:
    """meds[q] = median of buf[q - w:q] for q in [start, stop), start >= w; by forgetful
    selection (the min and max of any w//2 + 3 values cannot be the median: drop them and
    recurse), branch-free so the loop runs on SIMD lanes."""
    n = stop - start
    x = buf[start - w:]
    out = meds[start:]
    if w == 9:
        for j in range(n):
            out[j] = _median9(x[j], x[j + 1], x[j + 2], x[j + 3], x[j + 4], x[j + 5], x[j + 6],
                              x[j + 7], x[j + 8])
    elif w == 7:
        for j in range(n):
            out[j] = _median7(x[j], x[j + 1], x[j + 2], x[j + 3], x[j + 4], x[j + 5], x[j + 6])
    elif w == 5:
        for j in range(n):
            out[j] = _median5(x[j], x[j + 1], x[j + 2], x[j + 3], x[j + 4])
    else:
        for j in range(n):
            out[j] = _median3(x[j], x[j + 1], x[j + 2])


@kernel
def spike_window(
    values: NDArray[np.float64], start: int, stop: int, s: int, ip: NDArray[np.int64],
    is_: NDArray[np.int64], window: NDArray[np.float64], buf: NDArray[np.float64],
    meds: NDArray[np.float64],
) -> int:
    """Lay out sensor `s`'s window (oldest first) and then the finite samples of
    values[start:stop] in `buf`, and the median of the window before each sample in `meds`
    (at the sample's position in `buf`). Returns where the chunk's first sample went."""
    w, fill, pos = ip[s, IP_SPIKE_WINDOW], is_[s, IS_SPIKE_FILL], is_[s, IS_SPIKE_POS]
    ring = window[s]
    oldest = pos if fill == w else 0  # filling up: pos == fill
    for j in range(fill):
        at = oldest + j
        buf[j] = ring[at if at < w else at - w]
    q = fill
    for i in range(start, stop):
        x = values[i]
        buf[q] = x  # buf has room for one more than the chunk
        q += math.isfinite(x)
    first = max(fill, w)
    if q > first:
        rolling_medians(buf, first, q, w, meds)
    return fill


@kernel
def spike_keep_window(
    buf: NDArray[np.float64], stop: int, s: int, ip: NDArray[np.int64], is_: NDArray[np.int64],
    window: NDArray[np.float64],
) -> None:
    """Keep the last `window` samples of buf[:stop] as sensor `s`'s ring (oldest at pos 0)."""
    w = ip[s, IP_SPIKE_WINDOW]
    keep = min(stop, w)
    ring = window[s]
    for j in range(keep):
        ring[j] = buf[stop - keep + j]
    is_[s, IS_SPIKE_FILL] = keep
    is_[s, IS_SPIKE_POS] = 0 if keep == w else keep


@inlined
def spike_load(
    s: int, fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8],
) -> tuple[SpikeParams, SpikeState]:
    """Parameters and state of rule `spike` of sensor `s` (the window is `spike_window`'s)."""
    w, scale_n = ip[s, IP_SPIKE_WINDOW], ip[s, IP_SPIKE_SCALE_N]
    params = (w, ip[s, IP_SPIKE_MAX_LEN], scale_n, ip[s, IP_SPIKE_CLEAR], min(w, scale_n),
              fp[s, FP_SPIKE_K], fp[s, FP_SPIKE_MIN_DEV])
    n_scale = is_[s, IS_SPIKE_NSCALE]
    state = (is_[s, IS_SPIKE_FILL], n_scale, is_[s, IS_SPIKE_PEND], is_[s, IS_SPIKE_PEND_IDX],
             is_[s, IS_SPIKE_CLEAN], fs[s, FS_SPIKE_SCALE], fs[s, FS_SPIKE_PEND_REF],
             fs[s, FS_SPIKE_PEND_THR], fs[s, FS_SPIKE_PEND_PEAK], np.int64(levels[s, SPIKE]),
             1.0 / max(n_scale, 1))
    return params, state


@inlined
def spike_step(
    p: SpikeParams, st: SpikeState, x: float, median: float, i: int, s: int,
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[SpikeState, int]:
    """Feed one finite sample and the median of the window before it (unused until the
    window is full); returns the state and event count."""
    w, max_len, scale_n, clear_n, warm_n, k, min_dev = p
    fill, n_scale, pend, pend_idx, clean, scale, ref, thr, peak, level, rate = st
    if fill < w:
        fill += 1
    else:
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
    return (fill, n_scale, pend, pend_idx, clean, scale, ref, thr, peak, level, rate), n_ev


@inlined
def spike_store(
    st: SpikeState, s: int, fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> None:
    """Write the state back to the sensor's row (the ring is `spike_keep_window`'s)."""
    fill, n_scale, pend, pend_idx, clean, scale, ref, thr, peak, level, _ = st
    is_[s, IS_SPIKE_NSCALE], is_[s, IS_SPIKE_PEND] = n_scale, pend
    is_[s, IS_SPIKE_PEND_IDX], is_[s, IS_SPIKE_CLEAN] = pend_idx, clean
    fs[s, FS_SPIKE_SCALE] = scale
    fs[s, FS_SPIKE_PEND_REF], fs[s, FS_SPIKE_PEND_THR], fs[s, FS_SPIKE_PEND_PEAK] = ref, thr, peak
    levels[s, SPIKE] = level


@kernel
def spike_block(
    values: NDArray[np.float64], start: int, stop: int, s: int, fp: NDArray[np.float64],
    ip: NDArray[np.int64], fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8], window: NDArray[np.float64], scratch: NDArray[np.float64],
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> int:
    """Run rule `spike` of sensor `s` over values[start:stop] (`scratch`: two rows of at least
    stop - start + window + 1); returns the event count."""
    buf, meds = scratch[0], scratch[1]
    q = spike_window(values, start, stop, s, ip, is_, window, buf, meds)
    p, st = spike_load(s, fp, ip, fs, is_, levels)
    for i in range(start, stop):
        x = values[i]
        if math.isfinite(x):
            st, n_ev = spike_step(p, st, x, meds[q], i, s, ev_int, ev_float, n_ev)
            q += 1
    spike_store(st, s, fs, is_, levels)
    spike_keep_window(buf, q, s, ip, is_, window)
    return n_ev
