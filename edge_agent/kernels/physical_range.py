"""`range` (fault): values the quantity cannot physically take, NaN and inf.

A sample outside [lo, hi] or not finite is bad. `debounce` consecutive bad samples raise
level 1 (limit: the bound crossed, NaN for NaN/inf); `clear_samples` consecutive good
samples clear it. `score` is NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import kernel
from edge_agent.kernels._layout import (
    FP_RANGE_HI,
    FP_RANGE_LO,
    IP_RANGE_CLEAR,
    IP_RANGE_DEBOUNCE,
    IS_RANGE_BAD,
    IS_RANGE_GOOD,
)
from edge_agent.kernels.codes import RANGE
from edge_agent.kernels.events import emit


@kernel
def range_block(
    values: NDArray[np.float64],
    start: int,
    stop: int,
    s: int,
    fp: NDArray[np.float64],
    ip: NDArray[np.int64],
    is_: NDArray[np.int64],
    levels: NDArray[np.int8],
    ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run rule `range` of sensor `s` over values[start:stop]; returns the event count."""
    lo, hi = fp[s, FP_RANGE_LO], fp[s, FP_RANGE_HI]
    debounce, clear_n = ip[s, IP_RANGE_DEBOUNCE], ip[s, IP_RANGE_CLEAR]
    bad, good = is_[s, IS_RANGE_BAD], is_[s, IS_RANGE_GOOD]
    level = np.int64(levels[s, RANGE])
    for i in range(start, stop):
        x = values[i]
        if lo <= x <= hi and math.isfinite(x):
            if level == 0:
                bad = 0
            else:
                good += 1
                if good >= clear_n:
                    n_ev = emit(ev_int, ev_float, n_ev, s, RANGE, 0, 1, i, math.nan, math.nan)
                    level, good = 0, 0
        else:
            good = 0
            if level == 0:
                bad += 1
                if bad >= debounce:
                    limit = lo if x < lo else (hi if x > hi else math.nan)
                    if not math.isfinite(x):
                        limit = math.nan
                    n_ev = emit(ev_int, ev_float, n_ev, s, RANGE, 1, 0, i, limit, math.nan)
                    level, bad = 1, 0
    is_[s, IS_RANGE_BAD], is_[s, IS_RANGE_GOOD] = bad, good
    levels[s, RANGE] = level
    return n_ev
