"""`high` and `low`: the contract's four-level thresholds with hysteresis and debounce.

Both run the graded machine of `graded.py`; `low` runs it on -value against the negated
(ascending) low limits. NaN and inf samples are skipped: they neither extend nor break a run
(`range` reports them). Event `limit` is the threshold crossed (on a fall: the lowest
threshold cleared); `score` is NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import inlined, kernel
from edge_agent.kernels._layout import (
    FP_HIGH,
    FP_HYST,
    FP_LOW,
    IP_DEBOUNCE,
    IP_HIGH_N,
    IP_LOW_N,
    IS_HIGH_CNT,
    IS_LOW_CNT,
)
from edge_agent.kernels.codes import HIGH
from edge_agent.kernels.events import emit
from edge_agent.kernels.graded import change_limit, graded_step

#: sign, number of limits, limits (4-view), counters (4-view), hysteresis, debounce, rule
ThresholdParams = tuple[float, int, NDArray[np.float64], NDArray[np.int64], float, int, int]


@inlined
def threshold_load(
    s: int, rule: int, fp: NDArray[np.float64], ip: NDArray[np.int64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> tuple[ThresholdParams, int]:
    """Parameters of rule `high` or `low` of sensor `s`, and its level."""
    if rule == HIGH:
        sign, n_limits = 1.0, ip[s, IP_HIGH_N]
        limits = fp[s, FP_HIGH:FP_HIGH + 4]
        counters = is_[s, IS_HIGH_CNT:IS_HIGH_CNT + 4]
    else:
        sign, n_limits = -1.0, ip[s, IP_LOW_N]
        limits = fp[s, FP_LOW:FP_LOW + 4]
        counters = is_[s, IS_LOW_CNT:IS_LOW_CNT + 4]
    params = (sign, n_limits, limits, counters, fp[s, FP_HYST], ip[s, IP_DEBOUNCE], rule)
    return params, np.int64(levels[s, rule])


@inlined
def threshold_step(
    p: ThresholdParams, level: int, x: float, i: int, s: int,
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[int, int]:
    """Feed one finite sample; returns the level and event count."""
    sign, n_limits, limits, counters, hysteresis, debounce, rule = p
    v = sign * x
    if level == 0 and v <= limits[0] and counters[0] == 0:
        return level, n_ev  # quiet: below every limit, nothing pending
    new = graded_step(v, limits, n_limits, hysteresis, debounce, counters, level)
    if new != level:
        limit = sign * change_limit(limits, new, level)
        n_ev = emit(ev_int, ev_float, n_ev, s, rule, new, level, i, limit, math.nan)
    return new, n_ev


@kernel
def threshold_block(
    values: NDArray[np.float64], start: int, stop: int, s: int, rule: int,
    fp: NDArray[np.float64], ip: NDArray[np.int64], is_: NDArray[np.int64],
    levels: NDArray[np.int8], ev_int: NDArray[np.int64], ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run rule `high` or `low` of sensor `s` over values[start:stop]; returns the event count."""
    p, level = threshold_load(s, rule, fp, ip, is_, levels)
    for i in range(start, stop):
        x = values[i]
        if math.isfinite(x):
            level, n_ev = threshold_step(p, level, x, i, s, ev_int, ev_float, n_ev)
    levels[s, rule] = level
    return n_ev
