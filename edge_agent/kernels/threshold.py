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

from edge_agent.kernels._jit import kernel
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


@kernel
def threshold_block(
    values: NDArray[np.float64],
    start: int,
    stop: int,
    s: int,
    rule: int,
    fp: NDArray[np.float64],
    ip: NDArray[np.int64],
    is_: NDArray[np.int64],
    levels: NDArray[np.int8],
    ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run rule `high` or `low` of sensor `s` over values[start:stop]; returns the event count."""
    if rule == HIGH:
        sign, n_limits = 1.0, ip[s, IP_HIGH_N]
        limits = fp[s, FP_HIGH:FP_HIGH + 4]
        counters = is_[s, IS_HIGH_CNT:IS_HIGH_CNT + 4]
    else:
        sign, n_limits = -1.0, ip[s, IP_LOW_N]
        limits = fp[s, FP_LOW:FP_LOW + 4]
        counters = is_[s, IS_LOW_CNT:IS_LOW_CNT + 4]
    hysteresis = fp[s, FP_HYST]
    debounce = ip[s, IP_DEBOUNCE]
    first = limits[0]
    level = np.int64(levels[s, rule])
    for i in range(start, stop):
        v = sign * values[i]
        if not math.isfinite(v):
            continue
        if level == 0 and v <= first and counters[0] == 0:
            continue  # quiet: below every limit, nothing pending
        new = graded_step(v, limits, n_limits, hysteresis, debounce, counters, level)
        if new != level:
            limit = sign * change_limit(limits, new, level)
            n_ev = emit(ev_int, ev_float, n_ev, s, rule, new, level, i, limit, math.nan)
            level = new
    levels[s, rule] = level
    return n_ev
