"""`range` (fault): values the quantity cannot physically take, NaN and inf.

A sample outside [lo, hi] or not finite is bad. `debounce` consecutive bad samples raise
level 1 (limit: the bound crossed, NaN for NaN/inf); `clear_samples` consecutive good
samples clear it. `score` is NaN.

Like every rule, it is three kernels that numba inlines into the chain's loops: `*_load`
(the sensor's parameters and state as tuples), `*_step` (one sample) and `*_store`; and
`*_block`, the rule's own loop over a chunk.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import inlined, kernel
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

RangeParams = tuple[float, float, int, int]
RangeState = tuple[int, int, int]


@inlined
def range_load(
    s: int, fp: NDArray[np.float64], ip: NDArray[np.int64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> tuple[RangeParams, RangeState]:
    """Parameters (lo, hi, debounce, clear) and state (bad, good, level) of sensor `s`."""
    params = (fp[s, FP_RANGE_LO], fp[s, FP_RANGE_HI], ip[s, IP_RANGE_DEBOUNCE],
              ip[s, IP_RANGE_CLEAR])
    return params, (is_[s, IS_RANGE_BAD], is_[s, IS_RANGE_GOOD], np.int64(levels[s, RANGE]))


@inlined
def range_step(
    p: RangeParams, st: RangeState, x: float, i: int, s: int,
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[RangeState, int]:
    """Feed sample `x` (batch index `i`, NaN/inf included); returns the state and event count."""
    lo, hi, debounce, clear_n = p
    bad, good, level = st
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
    return (bad, good, level), n_ev


@inlined
def range_store(st: RangeState, s: int, is_: NDArray[np.int64], levels: NDArray[np.int8]) -> None:
    """Write the state back to the sensor's row."""
    is_[s, IS_RANGE_BAD], is_[s, IS_RANGE_GOOD] = st[0], st[1]
    levels[s, RANGE] = st[2]


@kernel
def range_block(
    values: NDArray[np.float64], start: int, stop: int, s: int, fp: NDArray[np.float64],
    ip: NDArray[np.int64], is_: NDArray[np.int64], levels: NDArray[np.int8],
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> int:
    """Run rule `range` of sensor `s` over values[start:stop]; returns the event count."""
    p, st = range_load(s, fp, ip, is_, levels)
    for i in range(start, stop):
        st, n_ev = range_step(p, st, values[i], i, s, ev_int, ev_float, n_ev)
    range_store(st, s, is_, levels)
    return n_ev
