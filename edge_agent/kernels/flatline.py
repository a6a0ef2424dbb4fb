"""`flatline` (fault): a stuck sensor.

`samples` consecutive finite values within `epsilon` of the first of the run (not of the
previous value, so a slow creep is not "flat") raise level 1, unless the run sits at the
kind's `rest` value (0 cm of water in dry weather is normal). The first value that leaves
the run clears it. NaN/inf samples are skipped. `score` is the stuck value; `limit` NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import inlined, kernel
from edge_agent.kernels._layout import (
    FP_FLAT_EPS,
    FP_FLAT_REST,
    FS_FLAT_REF,
    IP_FLAT_SAMPLES,
    IS_FLAT_RUN,
)
from edge_agent.kernels.codes import FLATLINE
from edge_agent.kernels.events import emit

FlatParams = tuple[int, float, float]
FlatState = tuple[float, int, int]


@inlined
def flatline_load(
    s: int, fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8],
) -> tuple[FlatParams, FlatState]:
    """Parameters (samples, epsilon, rest) and state (ref, run, level) of sensor `s`."""
    params = (ip[s, IP_FLAT_SAMPLES], fp[s, FP_FLAT_EPS], fp[s, FP_FLAT_REST])
    return params, (fs[s, FS_FLAT_REF], is_[s, IS_FLAT_RUN], np.int64(levels[s, FLATLINE]))


@inlined
def flatline_step(
    p: FlatParams, st: FlatState, x: float, i: int, s: int,
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[FlatState, int]:
    """Feed one finite sample; returns the state and event count."""
    need, eps, rest = p
    ref, run, level = st
    if run > 0 and abs(x - ref) <= eps:
        if run < need:
            run += 1
            if run == need and level == 0 and not abs(ref - rest) <= eps:
                n_ev = emit(ev_int, ev_float, n_ev, s, FLATLINE, 1, 0, i, math.nan, ref)
                level = 1
    else:
        if level == 1:
            n_ev = emit(ev_int, ev_float, n_ev, s, FLATLINE, 0, 1, i, math.nan, x)
            level = 0
        ref, run = x, 1
    return (ref, run, level), n_ev


@inlined
def flatline_store(
    st: FlatState, s: int, fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> None:
    """Write the state back to the sensor's row."""
    fs[s, FS_FLAT_REF], is_[s, IS_FLAT_RUN], levels[s, FLATLINE] = st[0], st[1], st[2]


@kernel
def flatline_block(
    values: NDArray[np.float64], start: int, stop: int, s: int, fp: NDArray[np.float64],
    ip: NDArray[np.int64], fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8], ev_int: NDArray[np.int64], ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run rule `flatline` of sensor `s` over values[start:stop]; returns the event count."""
    p, st = flatline_load(s, fp, ip, fs, is_, levels)
    for i in range(start, stop):
        x = values[i]
        if math.isfinite(x):
            st, n_ev = flatline_step(p, st, x, i, s, ev_int, ev_float, n_ev)
    flatline_store(st, s, fs, is_, levels)
    return n_ev
