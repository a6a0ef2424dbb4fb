"""`rate`: graded limits on the rate of change (a flood rising in cm/min, a main dropping MPa/s).

The rate is the slope of an exponentially weighted least-squares line through the samples,
weights exp(-age / window_s). Five running sums (of 1, u, u^2, x, u*x with u the time to the
newest sample and x relative to the newest value) make each update O(1) and exact for
irregular times. Until the weighted spread of sample times reaches window_s / 2 (about two
windows of data, re-learnt after a long gap) there is no estimate and samples are skipped.
The rate, in units per `per_s` seconds, feeds two graded machines: rise limits on +rate and
fall limits on -rate; the rule's level is the higher of the two. `score` is the rate; `limit`
the rise limit (or the negated fall limit) crossed. NaN/inf samples are skipped; a sample
older than the newest one counts as taken at the same time as it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import inlined, kernel
from edge_agent.kernels._layout import (
    FP_RATE_FALL,
    FP_RATE_HYST,
    FP_RATE_PER,
    FP_RATE_RISE,
    FP_RATE_TAU,
    FS_RATE_LASTX,
    FS_RATE_S0,
    FS_RATE_S1,
    FS_RATE_S2,
    FS_RATE_STX,
    FS_RATE_SX,
    IP_RATE_DEBOUNCE,
    IP_RATE_FALL_N,
    IP_RATE_RISE_N,
    IS_RATE_FALL_CNT,
    IS_RATE_FALL_LVL,
    IS_RATE_RISE_CNT,
    IS_RATE_RISE_LVL,
    IS_RATE_T,
    NO_TIME,
)
from edge_agent.kernels.codes import RATE
from edge_agent.kernels.events import emit
from edge_agent.kernels.graded import change_limit, graded_step

#: tau, per, hysteresis, debounce, rise/fall limit counts, limits and counters (4-views), the
#: least weighted spread of times that gives an estimate
RateParams = tuple[float, float, float, int, int, int, NDArray[np.float64], NDArray[np.float64],
                   NDArray[np.int64], NDArray[np.int64], float]
#: s0, s1, s2, sx, stx, last x, last t, rise level, fall level, level, last dt, its decay
RateState = tuple[float, float, float, float, float, float, int, int, int, int, float, float]


@inlined
def rate_load(
    s: int, fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8],
) -> tuple[RateParams, RateState]:
    """Parameters and state of rule `rate` of sensor `s`."""
    tau = fp[s, FP_RATE_TAU]
    params = (
        tau, fp[s, FP_RATE_PER], fp[s, FP_RATE_HYST], ip[s, IP_RATE_DEBOUNCE],
        ip[s, IP_RATE_RISE_N], ip[s, IP_RATE_FALL_N],
        fp[s, FP_RATE_RISE:FP_RATE_RISE + 4], fp[s, FP_RATE_FALL:FP_RATE_FALL + 4],
        is_[s, IS_RATE_RISE_CNT:IS_RATE_RISE_CNT + 4],
        is_[s, IS_RATE_FALL_CNT:IS_RATE_FALL_CNT + 4],
        0.25 * tau * tau,
    )
    state = (fs[s, FS_RATE_S0], fs[s, FS_RATE_S1], fs[s, FS_RATE_S2], fs[s, FS_RATE_SX],
             fs[s, FS_RATE_STX], fs[s, FS_RATE_LASTX], is_[s, IS_RATE_T], is_[s, IS_RATE_RISE_LVL],
             is_[s, IS_RATE_FALL_LVL], np.int64(levels[s, RATE]), -1.0, 1.0)
    return params, state


@inlined
def rate_step(
    p: RateParams, st: RateState, x: float, t: int, i: int, s: int,
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[RateState, int]:
    """Feed one finite sample taken at `t`; returns the state and event count."""
    tau, per, hysteresis, debounce, n_rise, n_fall, rise, fall, rise_cnt, fall_cnt, min_spread = p
    s0, s1, s2, sx, stx, last_x, last_t, up, down, level, last_dt, decay = st
    if last_t == NO_TIME:
        return (1.0, 0.0, 0.0, 0.0, 0.0, x, t, up, down, level, last_dt, decay), n_ev
    dt = max(t - last_t, 0) * 0.001
    if dt != last_dt:
        last_dt, decay = dt, math.exp(-dt / tau)
    # move the time origin to this sample and the value origin to this value, then decay
    s2 = (s2 - 2.0 * dt * s1 + dt * dt * s0) * decay
    stx = stx - dt * sx
    s1 = s1 - dt * s0
    dx = x - last_x
    sx = (sx - dx * s0) * decay
    stx = (stx - dx * s1) * decay
    s1 *= decay
    s0 = s0 * decay + 1.0
    last_t, last_x = max(last_t, t), x
    spread = s0 * s2 - s1 * s1
    if s0 >= 3.0 and spread >= min_spread * s0 * s0:
        r = (s0 * stx - s1 * sx) / spread * per
        new_up, new_down = up, down
        if not (up == 0 and r <= rise[0] and rise_cnt[0] == 0):  # else: nothing to change
            new_up = graded_step(r, rise, n_rise, hysteresis, debounce, rise_cnt, up)
        if not (down == 0 and -r <= fall[0] and fall_cnt[0] == 0):
            new_down = graded_step(-r, fall, n_fall, hysteresis, debounce, fall_cnt, down)
        new = max(new_up, new_down)
        if new != level:
            rise_moved = new_up == new > up if new > level else new_up < up == level
            if rise_moved:
                limit = change_limit(rise, new_up, up)
            else:
                limit = -change_limit(fall, new_down, down)
            n_ev = emit(ev_int, ev_float, n_ev, s, RATE, new, level, i, limit, r)
            level = new
        up, down = new_up, new_down
    return (s0, s1, s2, sx, stx, last_x, last_t, up, down, level, last_dt, decay), n_ev


@inlined
def rate_store(
    st: RateState, s: int, fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> None:
    """Write the state back to the sensor's row."""
    s0, s1, s2, sx, stx, last_x, last_t, up, down, level, _, _ = st
    fs[s, FS_RATE_S0], fs[s, FS_RATE_S1], fs[s, FS_RATE_S2] = s0, s1, s2
    fs[s, FS_RATE_SX], fs[s, FS_RATE_STX], fs[s, FS_RATE_LASTX] = sx, stx, last_x
    is_[s, IS_RATE_T] = last_t
    is_[s, IS_RATE_RISE_LVL], is_[s, IS_RATE_FALL_LVL] = up, down
    levels[s, RATE] = level


@kernel
def rate_block(
    values: NDArray[np.float64], times_ms: NDArray[np.int64], start: int, stop: int, s: int,
    fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8], ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64], n_ev: int,
) -> int:
    """Run rule `rate` of sensor `s` over samples [start, stop); returns the event count."""
    p, st = rate_load(s, fp, ip, fs, is_, levels)
    for i in range(start, stop):
        x = values[i]
        if math.isfinite(x):
            st, n_ev = rate_step(p, st, x, times_ms[i], i, s, ev_int, ev_float, n_ev)
    rate_store(st, s, fs, is_, levels)
    return n_ev
