"""`anomaly` (event): a sudden departure of the sensor from its own recent normal.

A fast, outlier-robust smoother (EWMA with time constant `smooth_s` whose innovations are
clipped at `clip` sigmas of their own running variance, so a spike moves it little; once the
innovations have been clipped on the same side for `smooth_s`, it is a step, not a spike, and
they are taken in full) is compared with a baseline of normal: EWMA mean of the smoothed
signal over `window_s` and EWMA variance of its deviation over the longer `var_window_s` (the
size of normal deviations is a slow property; over a short window a slowly wandering signal
gives a noisy estimate), a plain average while the sensor is younger than that.
z = (smoothed - mean) / max(std, min_std) against graded limits on |z| with hysteresis and
debounce.

After warm-up, while no alarm is raised, the mean follows any deviation up to the first z
limit in full and a larger one d with a pull falling as L^2 / d (redescending), so a daily
ramp slow enough to stay under the limit is followed and never builds up an alarm, while an
event hardly moves the baseline before it is raised. The variance learns only from those
normal deviations, clipped at `clip` sigmas. While an alarm is raised the baseline holds
still, so when the event ends the sensor comes back to the normal it left and the alarm
clears, without a second raise from a baseline that chased the event; an alarm that outlasts
`hold_s` is a new level, and the mean jumps to it. No level changes during the first
`warmup_s` seconds (no clipping then either). NaN/inf samples are skipped; a sample older
than the newest counts as taken with it. `score` is z; `limit` is mean +/- z-limit * std,
in the sensor's unit.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import inlined, kernel
from edge_agent.kernels._layout import (
    FP_ANOM_CLIP,
    FP_ANOM_HOLD,
    FP_ANOM_HYST,
    FP_ANOM_MIN_STD,
    FP_ANOM_SMOOTH,
    FP_ANOM_TAU,
    FP_ANOM_VAR_TAU,
    FP_ANOM_WARMUP,
    FP_ANOM_Z,
    FS_ANOM_AGE,
    FS_ANOM_FAST,
    FS_ANOM_HELD,
    FS_ANOM_MEAN,
    FS_ANOM_RAWVAR,
    FS_ANOM_VAR,
    IP_ANOM_DEBOUNCE,
    IP_ANOM_N,
    IS_ANOM_CNT,
    IS_ANOM_RUN,
    IS_ANOM_T,
    NO_TIME,
)
from edge_agent.kernels.codes import ANOMALY
from edge_agent.kernels.events import emit
from edge_agent.kernels.graded import change_limit, graded_step

#: z limits (4-view), their count, debounce, counters (4-view), hysteresis, smooth_s, window_s,
#: warmup_s, var_window_s, min_std^2, clip^2, first limit^2, hold_s
AnomalyParams = tuple[NDArray[np.float64], int, int, NDArray[np.int64], float, float, float,
                      float, float, float, float, float, float]
#: fast, raw variance, mean, variance, age, held, last t, level, run of clipped innovations,
#: last dt and its three weights
AnomalyState = tuple[float, float, float, float, float, float, int, int, int, float, float,
                     float, float]


@kernel
def clipped(d: float, var: float, clip2: float) -> float:
    """`d` limited to +/- sqrt(clip2 * var) (a Huber step); no square root unless it clips."""
    if d * d <= clip2 * var:
        return d
    return math.copysign(math.sqrt(clip2 * var), d)


@kernel
def redescending(d: float, var: float, c2: float) -> float:
    """`d` while |d| <= sqrt(c2 * var), else c2 * var / d: the pull of a deviation beyond the
    bound falls as it grows, so a baseline follows slow changes but hardly an event."""
    if d * d <= c2 * var:
        return d
    return c2 * var / d


@inlined
def anomaly_load(
    s: int, fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8],
) -> tuple[AnomalyParams, AnomalyState]:
    """Parameters and state of rule `anomaly` of sensor `s`."""
    limits = fp[s, FP_ANOM_Z:FP_ANOM_Z + 4]
    params = (
        limits, ip[s, IP_ANOM_N], ip[s, IP_ANOM_DEBOUNCE], is_[s, IS_ANOM_CNT:IS_ANOM_CNT + 4],
        fp[s, FP_ANOM_HYST], fp[s, FP_ANOM_SMOOTH], fp[s, FP_ANOM_TAU], fp[s, FP_ANOM_WARMUP],
        fp[s, FP_ANOM_VAR_TAU], fp[s, FP_ANOM_MIN_STD] ** 2, fp[s, FP_ANOM_CLIP] ** 2,
        limits[0] * limits[0], fp[s, FP_ANOM_HOLD],
    )
    state = (fs[s, FS_ANOM_FAST], fs[s, FS_ANOM_RAWVAR], fs[s, FS_ANOM_MEAN], fs[s, FS_ANOM_VAR],
             fs[s, FS_ANOM_AGE], fs[s, FS_ANOM_HELD], is_[s, IS_ANOM_T],
             np.int64(levels[s, ANOMALY]), is_[s, IS_ANOM_RUN], -1.0, 1.0, 1.0, 1.0)
    return params, state


@inlined
def anomaly_step(
    p: AnomalyParams, st: AnomalyState, x: float, t: int, i: int, s: int,
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[AnomalyState, int]:
    """Feed one finite sample taken at `t`; returns the state and event count."""
    (limits, n_limits, debounce, counters, hysteresis, smooth, tau, warmup, var_tau, min_var,
     clip2, quiet2, hold) = p
    fast, raw_var, mean, var, age, held, last_t, level, run, last_dt, a_fast, a_slow, a_var = st
    if last_t == NO_TIME:
        return (x, 0.0, x, 0.0, 0.0, 0.0, t, level, 0, last_dt, a_fast, a_slow, a_var), n_ev
    step_ms = max(t - last_t, 0)
    dt = step_ms * 0.001
    last_t = max(last_t, t)
    if dt != last_dt:
        last_dt = dt
        a_fast = -math.expm1(-dt / smooth) if smooth > 0 else 1.0
        a_slow = -math.expm1(-dt / tau)
        a_var = -math.expm1(-dt / var_tau)
    age += dt
    a_v = a_var if age >= var_tau else (max(a_var, dt / age) if age > 0 else 1.0)
    warm = age >= warmup
    e = x - fast
    if warm:
        ec = clipped(e, max(raw_var, min_var), clip2)
        if ec == e:
            run = 0
        elif e > 0:
            run = max(run, 0) + step_ms
        else:
            run = min(run, 0) - step_ms
        raw_var = (1.0 - a_v) * (raw_var + a_v * ec * ec)
        if abs(run) < 1000.0 * smooth:  # an outlier is clipped; a longer excursion is a step
            e = ec
    else:
        raw_var = (1.0 - a_v) * (raw_var + a_v * e * e)
    fast += a_fast * e
    base = mean
    d = fast - base
    v = max(var, min_var)
    if not warm:
        mean += a_slow * d
        var = (1.0 - a_v) * (var + a_v * d * d)
    elif level == 0:
        held = 0.0
        mean += a_slow * redescending(d, v, quiet2)
        if d * d <= quiet2 * v:
            dc = clipped(d, v, clip2)
            var = (1.0 - a_v) * (var + a_v * dc * dc)
    else:
        held += dt
        if held >= hold:  # the alarm has lasted: its level is the new normal
            mean, base, d, held = fast, fast, 0.0, 0.0
    if warm and not (level == 0 and d * d <= quiet2 * v and counters[0] == 0):
        std = math.sqrt(v)
        z = d / std
        new = graded_step(abs(z), limits, n_limits, hysteresis, debounce, counters, level)
        if new != level:
            limit = base + math.copysign(change_limit(limits, new, level) * std, z)
            n_ev = emit(ev_int, ev_float, n_ev, s, ANOMALY, new, level, i, limit, z)
            level = new
    state = (fast, raw_var, mean, var, age, held, last_t, level, run, last_dt, a_fast, a_slow,
             a_var)
    return state, n_ev


@inlined
def anomaly_store(
    st: AnomalyState, s: int, fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> None:
    """Write the state back to the sensor's row."""
    fs[s, FS_ANOM_FAST], fs[s, FS_ANOM_RAWVAR] = st[0], st[1]
    fs[s, FS_ANOM_MEAN], fs[s, FS_ANOM_VAR], fs[s, FS_ANOM_AGE] = st[2], st[3], st[4]
    fs[s, FS_ANOM_HELD] = st[5]
    is_[s, IS_ANOM_T], is_[s, IS_ANOM_RUN] = st[6], st[8]
    levels[s, ANOMALY] = st[7]


@kernel
def anomaly_block(
    values: NDArray[np.float64], times_ms: NDArray[np.int64], start: int, stop: int, s: int,
    fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8], ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64], n_ev: int,
) -> int:
    """Run rule `anomaly` of sensor `s` over samples [start, stop); returns the event count."""
    p, st = anomaly_load(s, fp, ip, fs, is_, levels)
    for i in range(start, stop):
        x = values[i]
        if math.isfinite(x):
            st, n_ev = anomaly_step(p, st, x, times_ms[i], i, s, ev_int, ev_float, n_ev)
    anomaly_store(st, s, fs, is_, levels)
    return n_ev
