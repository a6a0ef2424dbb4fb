"""Level changes produced by the rule kernels: the output record and the kernels' emit helper."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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
from edge_agent.kernels.codes import CHAIN_ORDER, N_RULES

#: Each rule's place in `CHAIN_ORDER`, indexed by rule code.
_CHAIN_RANK: Final = np.argsort(np.array(CHAIN_ORDER)).astype(np.int64)


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
        """Columns from the kernels' event buffers, sorted by sample index and, within one
        sample, in chain order (a spike is reported at an earlier sample than it is found)."""
        if len(ev_int) == 0:
            return _NO_EVENTS
        key = ev_int[:, EV_INDEX] * N_RULES + _CHAIN_RANK[ev_int[:, EV_RULE]]
        order = np.argsort(key, kind="stable")
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


def _empty(dtype: type) -> NDArray[np.generic]:
    column = np.empty(0, dtype=dtype)
    column.flags.writeable = False  # shared by every batch without a change
    return column


_NO_EVENTS: Final = Events(
    sensor=_empty(np.int32), rule=_empty(np.int8), level=_empty(np.int8), prev=_empty(np.int8),
    index=_empty(np.int64), limit=_empty(np.float64), score=_empty(np.float64),
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
