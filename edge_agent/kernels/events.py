"""Level changes produced by the rule kernels: the output record and the kernels' emit helper."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import kernel
from edge_agent.kernels._layout import (
    EV_INDEX,
    EV_LEVEL,
    EV_LIMIT,
    EV_PREV,
    EV_RULE,
    EV_SCORE,
    EV_SENSOR,
)


@dataclass(frozen=True)
class Events:
    """Level changes of (sensor, rule) pairs, as equal-length columns in sample order.

    `index` points into the batch's `values` at the sample that caused the change; `limit`
    is the limit crossed (NaN if none) and `score` a rule-specific detail (NaN if none).
    """

    sensor: NDArray[np.int32]
    rule: NDArray[np.int8]
    level: NDArray[np.int8]
    prev: NDArray[np.int8]
    index: NDArray[np.int64]
    limit: NDArray[np.float64]
    score: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.sensor.shape[0])

    @staticmethod
    def from_buffers(ev_int: NDArray[np.int64], ev_float: NDArray[np.float64]) -> Events:
        """Columns from the kernels' event buffers, stably sorted by sample index."""
        order = np.argsort(ev_int[:, EV_INDEX], kind="stable")
        ints, floats = ev_int[order], ev_float[order]
        return Events(
            sensor=ints[:, EV_SENSOR].astype(np.int32),
            rule=ints[:, EV_RULE].astype(np.int8),
            level=ints[:, EV_LEVEL].astype(np.int8),
            prev=ints[:, EV_PREV].astype(np.int8),
            index=ints[:, EV_INDEX].copy(),
            limit=floats[:, EV_LIMIT].copy(),
            score=floats[:, EV_SCORE].copy(),
        )


@kernel
def emit(
    ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64],
    n: int,
    sensor: int,
    rule: int,
    level: int,
    prev: int,
    index: int,
    limit: float,
    score: float,
) -> int:
    """Append one level change to the event buffers; returns the new event count."""
    ev_int[n, EV_SENSOR] = sensor
    ev_int[n, EV_RULE] = rule
    ev_int[n, EV_LEVEL] = level
    ev_int[n, EV_PREV] = prev
    ev_int[n, EV_INDEX] = index
    ev_float[n, EV_LIMIT] = limit
    ev_float[n, EV_SCORE] = score
    return n + 1
