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

from edge_agent.kernels._jit import kernel
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


@kernel
def rate_block(
    values: NDArray[np.float64],
    times_ms: NDArray[np.int64],
    start: int,
    stop: int,
    s: int,
    fp: NDArray[np.float64],
    ip: NDArray[np.int64],
    fs: NDArray[np.float64],
    is_: NDArray[np.int64],
    levels: NDArray[np.int8],
    ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run rule `rate` of sensor `s` over samples [start, stop); returns the event count."""
    tau = fp[s, FP_RATE_TAU]
    per = fp[s, FP_RATE_PER]
    hysteresis = fp[s, FP_RATE_HYST]
    debounce = ip[s, IP_RATE_DEBOUNCE]
    n_rise, n_fall = ip[s, IP_RATE_RISE_N], ip[s, IP_RATE_FALL_N]
    rise = fp[s, FP_RATE_RISE:FP_RATE_RISE + 4]
    fall = fp[s, FP_RATE_FALL:FP_RATE_FALL + 4]
    rise_cnt = is_[s, IS_RATE_RISE_CNT:IS_RATE_RISE_CNT + 4]
    fall_cnt = is_[s, IS_RATE_FALL_CNT:IS_RATE_FALL_CNT + 4]
    min_spread = 0.25 * tau * tau
    s0, s1, s2 = fs[s, FS_RATE_S0], fs[s, FS_RATE_S1], fs[s, FS_RATE_S2]
    sx, stx, last_x = fs[s, FS_RATE_SX], fs[s, FS_RATE_STX], fs[s, FS_RATE_LASTX]
    last_t = is_[s, IS_RATE_T]
    up, down = is_[s, IS_RATE_RISE_LVL], is_[s, IS_RATE_FALL_LVL]
    level = np.int64(levels[s, RATE])
    last_dt, decay = -1.0, 1.0
    for i in range(start, stop):
        x = values[i]
        if not math.isfinite(x):
            continue
        t = times_ms[i]
        if last_t == NO_TIME:
            s0, s1, s2, sx, stx = 1.0, 0.0, 0.0, 0.0, 0.0
            last_t, last_x = t, x
            continue
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
        if s0 < 3.0 or spread < min_spread * s0 * s0:
            continue
        r = (s0 * stx - s1 * sx) / spread * per
        new_up = graded_step(r, rise, n_rise, hysteresis, debounce, rise_cnt, up)
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
    fs[s, FS_RATE_S0], fs[s, FS_RATE_S1], fs[s, FS_RATE_S2] = s0, s1, s2
    fs[s, FS_RATE_SX], fs[s, FS_RATE_STX], fs[s, FS_RATE_LASTX] = sx, stx, last_x
    is_[s, IS_RATE_T] = last_t
    is_[s, IS_RATE_RISE_LVL], is_[s, IS_RATE_FALL_LVL] = up, down
    levels[s, RATE] = level
    return n_ev
