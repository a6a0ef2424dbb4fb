"""The sink interface every transport implements, and the splitting of blocks around missing samples."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from lifeline.errors import LifelineError

F32Array = npt.NDArray[np.float32]


class TransportError(LifelineError):
    """A transport cannot start or deliver (broker refused, pty unavailable); the message says which."""


class BlockSink(Protocol):
    """Where the runner sends blocks of samples; one sink serves many sensors by index."""

    def send(self, sensor: int, values: F32Array, t0_ms: int, period_ms: float) -> int:
        """Send one block of sensor `sensor` (NaN = no sample); returns the samples sent."""
        ...

    def flush(self, timeout_s: float) -> bool:
        """Wait until what was sent has left this process; False if `timeout_s` passed first."""
        ...

    def close(self) -> None:
        """Release the transport's resources."""
        ...


def present_runs(values: F32Array) -> list[tuple[int, int]]:
    """Half-open (start, stop) index runs of samples that are not NaN: a dropout splits a block."""
    good = ~np.isnan(values)
    if good.all():
        return [(0, len(values))] if len(values) else []
    edges = np.flatnonzero(np.diff(np.concatenate(([False], good, [False])).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
