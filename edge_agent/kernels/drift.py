"""`drift` (fault): a slow walk of the sensor away from its long-term baseline.

The input is smoothed (EWMA, `smooth_s`) so noise averages out. During `warmup_s` (a day by
default, so the baseline sees a whole daily cycle) the baseline mean and variance of the
smoothed signal are learnt as time-weighted averages; afterwards they follow it with time
constant `baseline_s` (a week), updated with deviations clipped at k sigmas. Then a two-sided
CUSUM in sigma-hours, S+ = max(0, S+ + (z - k) dt/3600) (S- likewise with -z), capped at 2h,
raises level 1 when either side reaches h and clears when both are back to 0. A daily cycle
stays within about 1.5 sigma, under the allowance k; a walk beyond k sigmas accumulates.
A shift that is fast rather than slow is an event for the other rules, not drift: when the
smoothed signal moves more than k/2 sigmas away from a second EWMA of time constant `jump_s`
(a daily cycle or a drift keeps it well under that),
the baseline jumps to it and both sums restart (so a recalibration also clears the fault).
NaN/inf samples are skipped; a sample older than the newest counts as taken with it.
`score` is z; `limit` the baseline +/- k * std crossed.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import inlined, kernel
from edge_agent.kernels._layout import (
    FP_DRIFT_BASE,
    FP_DRIFT_H,
    FP_DRIFT_JUMP,
    FP_DRIFT_K,
    FP_DRIFT_MIN_STD,
    FP_DRIFT_SMOOTH,
    FP_DRIFT_WARMUP,
    FS_DRIFT_AGE,
    FS_DRIFT_MEAN,
    FS_DRIFT_MID,
    FS_DRIFT_NEG,
    FS_DRIFT_POS,
    FS_DRIFT_SLOW,
    FS_DRIFT_VAR,
    IS_DRIFT_T,
    NO_TIME,
)
from edge_agent.kernels.anomaly import clipped
from edge_agent.kernels.codes import DRIFT
from edge_agent.kernels.events import emit

#: Margin of the sqrt-free quiet test (z^2 <= 0.98 k^2), far wider than any rounding.
_QUIET: Final = 0.98

#: smooth_s, baseline_s, warmup_s, k, h, jump_s, cap (2h), k^2, (k/2)^2, min_std^2
DriftParams = tuple[float, float, float, float, float, float, float, float, float, float]
#: slow, mean, var, age, S+, S-, mid, last t, level, last dt and its three weights
DriftState = tuple[float, float, float, float, float, float, float, int, int, float, float,
                   float, float]


@inlined
def drift_load(
    s: int, fp: NDArray[np.float64], fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> tuple[DriftParams, DriftState]:
    """Parameters and state of rule `drift` of sensor `s`."""
    k, h = fp[s, FP_DRIFT_K], fp[s, FP_DRIFT_H]
    params = (fp[s, FP_DRIFT_SMOOTH], fp[s, FP_DRIFT_BASE], fp[s, FP_DRIFT_WARMUP], k, h,
              fp[s, FP_DRIFT_JUMP], 2.0 * h, k * k, 0.25 * k * k, fp[s, FP_DRIFT_MIN_STD] ** 2)
    state = (fs[s, FS_DRIFT_SLOW], fs[s, FS_DRIFT_MEAN], fs[s, FS_DRIFT_VAR], fs[s, FS_DRIFT_AGE],
             fs[s, FS_DRIFT_POS], fs[s, FS_DRIFT_NEG], fs[s, FS_DRIFT_MID], is_[s, IS_DRIFT_T],
             np.int64(levels[s, DRIFT]), -1.0, 1.0, 1.0, 1.0)
    return params, state


@inlined
def drift_step(
    p: DriftParams, st: DriftState, x: float, t: int, i: int, s: int,
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[DriftState, int]:
    """Feed one finite sample taken at `t`; returns the state and event count."""
    smooth, base_tau, warmup, k, h, jump, cap, k2, jump2, min_var = p
    slow, mean, var, age, pos, neg, mid, last_t, level, last_dt, a_smooth, a_base, a_mid = st
    if last_t == NO_TIME:
        return (x, x, 0.0, 0.0, 0.0, 0.0, x, t, level, last_dt, a_smooth, a_base, a_mid), n_ev
    dt = max(t - last_t, 0) * 0.001
    last_t = max(last_t, t)
    if dt != last_dt:
        last_dt = dt
        a_smooth = -math.expm1(-dt / smooth) if smooth > 0 else 1.0
        a_base = -math.expm1(-dt / base_tau)
        a_mid = -math.expm1(-dt / jump)
    slow += a_smooth * (x - slow)
    mid += a_mid * (slow - mid)
    age += dt
    d = slow - mean
    if age < warmup:
        a = max(dt / age, a_base) if age > 0 else 1.0
        mean += a * d
        var = (1.0 - a) * (var + a * d * d)
    else:
        v = max(var, min_var)
        jumped = (slow - mid) ** 2 > jump2 * v
        if jumped:
            mean, d, pos, neg = slow, 0.0, 0.0, 0.0
        if level == 0 and pos == 0.0 and neg == 0.0 and d * d <= _QUIET * k2 * v:
            # |z| clearly under k: both sums stay 0 and d is not clipped (no sqrt needed)
            mean += a_base * d
            var = (1.0 - a_base) * (var + a_base * d * d)
            state = (slow, mean, var, age, pos, neg, mid, last_t, level, last_dt, a_smooth,
                     a_base, a_mid)
            return state, n_ev
        std = math.sqrt(v)
        z = d / std
        hours = dt * (1.0 / 3600.0)
        pos = min(max(pos + (z - k) * hours, 0.0), cap)
        neg = min(max(neg - (z + k) * hours, 0.0), cap)
        base = mean
        dc = clipped(d, v, k2)
        mean += a_base * dc
        var = (1.0 - a_base) * (var + a_base * dc * dc)
        if level == 0 and (pos >= h or neg >= h):
            limit = base + math.copysign(k * std, z)
            n_ev = emit(ev_int, ev_float, n_ev, s, DRIFT, 1, 0, i, limit, z)
            level = 1
        elif level == 1 and pos == 0.0 and neg == 0.0:
            n_ev = emit(ev_int, ev_float, n_ev, s, DRIFT, 0, 1, i, math.nan, z)
            level = 0
    state = (slow, mean, var, age, pos, neg, mid, last_t, level, last_dt, a_smooth, a_base, a_mid)
    return state, n_ev


@inlined
def drift_store(
    st: DriftState, s: int, fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> None:
    """Write the state back to the sensor's row."""
    fs[s, FS_DRIFT_SLOW], fs[s, FS_DRIFT_MEAN], fs[s, FS_DRIFT_VAR] = st[0], st[1], st[2]
    fs[s, FS_DRIFT_AGE], fs[s, FS_DRIFT_POS], fs[s, FS_DRIFT_NEG] = st[3], st[4], st[5]
    fs[s, FS_DRIFT_MID] = st[6]
    is_[s, IS_DRIFT_T] = st[7]
    levels[s, DRIFT] = st[8]


@kernel
def drift_block(
    values: NDArray[np.float64], times_ms: NDArray[np.int64], start: int, stop: int, s: int,
    fp: NDArray[np.float64], fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8], ev_int: NDArray[np.int64], ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run rule `drift` of sensor `s` over samples [start, stop); returns the event count."""
    p, st = drift_load(s, fp, fs, is_, levels)
    for i in range(start, stop):
        x = values[i]
        if math.isfinite(x):
            st, n_ev = drift_step(p, st, x, times_ms[i], i, s, ev_int, ev_float, n_ev)
    drift_store(st, s, fs, is_, levels)
    return n_ev
