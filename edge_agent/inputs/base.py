"""What every input shares: the hand-off queue to the pipeline thread and throttled warnings.

Inputs run on their own threads and only append to `Ingress`; the pipeline thread drains it in
batches. A deque append is atomic under the GIL, so the hot path takes no lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from lifeline.backoff import LogThrottle, held_note

F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]

#: A raw MQTT message as the network thread saw it: topic, payload, receive time (agent time, ms).
RawMessage = tuple[str, bytes | bytearray, int]

_EMPTY_F64: Final = np.empty(0, dtype=np.float64)
_EMPTY_I64: Final = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, slots=True, eq=False)
class SampleBlock:
    """Decoded samples of one sensor (by index) with their agent-time ms; empty = a sign of life."""

    sensor: int
    values: F64Array
    times: I64Array
    received_ms: int

    @classmethod
    def alive(cls, sensor: int, received_ms: int) -> SampleBlock:
        """A block with no samples: the sensor's node is alive (a serial heartbeat)."""
        return cls(sensor, _EMPTY_F64, _EMPTY_I64, received_ms)


class AgentClock:
    """The agent's own time: Unix ms that never jumps, and how far the wall clock has stepped from it.

    `now_ms` is the monotonic clock anchored to the wall clock when the agent started, so gap
    timers, learnt intervals, summary windows and the rules' sample times stay continuous when
    someone (NTP, an operator) steps the wall clock; both clocks run at the same NTP-disciplined
    rate, so they differ only by steps. `wall_offset_ms` is wall minus agent time (0 until the
    first step); the pipeline adds it to the times it publishes, so those follow the wall clock.
    """

    def __init__(self, *, wall_ns: Callable[[], int] = time.time_ns,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._wall_ns = wall_ns
        self._monotonic_ns = monotonic_ns
        self._anchor_ns = wall_ns() - monotonic_ns()

    def now_ms(self) -> int:
        """Agent time in Unix milliseconds (continuous; equal to the wall clock until it steps)."""
        return (self._monotonic_ns() + self._anchor_ns) // 1_000_000

    def wall_offset_ms(self) -> int | None:
        """Wall clock minus agent time, in ms; None if this reading was disturbed (the thread was
        paused between the clock reads), so a pause never looks like a step."""
        before = self._monotonic_ns()
        wall = self._wall_ns()
        after = self._monotonic_ns()
        if after - before > _STEADY_READ_NS:
            return None
        return round((wall - self._anchor_ns - (before + after) // 2) / 1_000_000)


#: The agent's clock; every input stamps with it.
CLOCK: Final = AgentClock()
#: Longest time (ns) between the reads of one `wall_offset_ms`.
_STEADY_READ_NS: Final = 2_000_000


def now_ms() -> int:
    """Agent time in Unix milliseconds (`AgentClock.now_ms` of the agent's `CLOCK`)."""
    return CLOCK.now_ms()


class Ingress:
    """The queue from inputs to the pipeline: raw MQTT payloads and already decoded blocks.

    `arrived` is set when input arrives to an empty queue, so an idle pipeline sleeps until
    there is work instead of polling; `wake` is set when a batch's worth of raw input waits
    (`max_bytes` or `wake_messages`), so it need not sleep its full batch interval under load.
    Past `max_queued_bytes` the MQTT thread waits for the pipeline to catch up: TCP then pushes
    back on the broker instead of the queue growing without bound (lost blocks show up as
    RawBlock `seq` gaps). The default, 4 MiB, is 200 ms of input at 5 M float32 samples/s:
    enough to ride out a slow batch, small enough to keep the agent's memory flat under load.
    """

    def __init__(self, *, wake_messages: int = 20_000, max_messages: int = 50_000,
                 max_bytes: int = 1 << 20, max_queued_bytes: int = 4 << 20) -> None:
        self.raw: deque[RawMessage] = deque()
        self.blocks: deque[SampleBlock] = deque()
        self.wake = threading.Event()
        self.arrived = threading.Event()
        self.wake_messages = wake_messages
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_queued_bytes = max_queued_bytes
        self.waits = 0
        self._space = threading.Event()
        self._space.set()
        self._closed = False

    def put_raw(self, topic: str, payload: bytes | bytearray, received_ms: int) -> None:
        """Queue one raw MQTT message (called on the MQTT network thread)."""
        raw = self.raw
        raw.append((topic, payload, received_ms))
        queued = len(raw)
        if queued == 1:
            self.arrived.set()
        elif queued >= self.wake_messages or queued * len(payload) >= self.max_bytes:
            self._wake_or_wait(queued * len(payload))

    def _wake_or_wait(self, queued_bytes: int) -> None:
        """Wake the pipeline; if far behind, hold the MQTT thread until it has drained some."""
        self.wake.set()
        if queued_bytes >= self.max_queued_bytes and not self._closed:
            self.waits += 1
            self._space.clear()
            self._space.wait(1.0)

    def close(self) -> None:
        """Release a waiting input thread for good (at shutdown)."""
        self._closed = True
        self._space.set()

    def put_block(self, block: SampleBlock) -> None:
        """Queue one decoded block (called on a serial or Modbus thread)."""
        self.blocks.append(block)
        if len(self.blocks) == 1:
            self.arrived.set()

    def drain(self) -> tuple[list[RawMessage], list[SampleBlock]]:
        """Take what is queued, oldest first, up to about `max_bytes` of raw payload per call.

        The cap bounds the memory of one batch when input outpaces the pipeline; the rest stays
        queued for the next call. The first payload's size stands for the others.
        """
        self.wake.clear()
        self.arrived.clear()
        raw, blocks = self.raw, self.blocks
        count = len(raw)
        if count:
            first = max(len(raw[0][1]), 1)
            count = min(count, self.max_messages, max(16, self.max_bytes // first))
        pop = raw.popleft
        raw_out = [pop() for _ in range(count)]
        block_out = [blocks.popleft() for _ in range(len(blocks))]
        self._space.set()
        return raw_out, block_out

    def pending(self) -> int:
        """Messages and blocks waiting."""
        return len(self.raw) + len(self.blocks)


class ThrottledWarnings:
    """Logs a warning per key at most once per `interval_s`, saying how many were held back.

    Bad input can arrive thousands of times a second; the operator needs one line that says what
    and how often, not a flooded journal.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self.logger = logger
        self._throttle = LogThrottle(interval_s)

    def warn(self, key: str, message: str) -> None:
        """Warn about `message` unless a warning with the same key went out less than interval_s ago."""
        held = self._throttle.allow(key)
        if held is not None:
            self.logger.warning("%s%s", message, held_note(held))
