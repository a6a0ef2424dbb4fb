"""Serial input: one reader thread per port turning section-3 frames into sample blocks.

Nodes have no clock, so the last sample of a frame is stamped with its receive time and earlier
ones back by the frame's sample period. A port that vanishes (USB unplugged) is logged once
(one warning for the loss, none for the failed reopen attempts), reopened with jittered backoff
capped at `REOPEN_CAP_S` until it returns, and its return is logged with the outage's length;
`losses` and `reopens` count them in the status. Whether its sensors went silent long enough
for a `gap` fault is the pipeline's call (heartbeats and samples alike keep a sensor alive).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import serial

from edge_agent.frames import FrameCounters, FrameDecoder, Heartbeat, SampleFrame
from edge_agent.inputs.base import Ingress, SampleBlock, ThrottledWarnings, now_ms
from edge_agent.registry import SerialPortPlan
from lifeline.backoff import backoff_delays

log = logging.getLogger(__name__)

#: Seconds a read waits for the first byte; bounds how long stop() waits for the thread.
READ_TIMEOUT_S = 0.1
#: First and longest pause (s) between attempts to reopen a vanished port: a replugged USB
#: adapter is back within seconds, and an open attempt costs nothing.
REOPEN_INITIAL_S = 0.5
REOPEN_CAP_S = 5.0
SEQ_MODULUS = 1 << 16


@dataclass
class SerialPortCounters:
    """What one port has seen since the agent started, beside the decoder's FrameCounters."""

    bytes: int = 0
    lost_frames: int = 0
    unknown_channel: int = 0
    losses: int = 0
    reopens: int = 0


def frame_times(received_ms: int, n: int, period_us: int) -> np.ndarray:
    """Unix-ms times of a frame's n samples: the last at `received_ms`, earlier ones `period_us` apart."""
    back = np.arange(n - 1, -1, -1, dtype=np.float64) * (period_us / 1000.0)
    return received_ms - np.rint(back).astype(np.int64)


class SerialPortReader:
    """Reads one serial port on its own thread and queues blocks for the configured channels."""

    def __init__(self, plan: SerialPortPlan, ingress: Ingress, *,
                 delays: Iterator[float] | None = None, open_port: Any = None) -> None:
        self.plan = plan
        self.counters = SerialPortCounters()
        self._ingress = ingress
        self._channels = {(c.node, c.channel): c.sensor for c in plan.channels}
        self._node_sensors: dict[int, list[int]] = {}
        for c in plan.channels:
            self._node_sensors.setdefault(c.node, []).append(c.sensor)
        self._last_seq: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._open = open_port or (lambda: serial.Serial(plan.port, baudrate=plan.baud,
                                                         timeout=READ_TIMEOUT_S))
        self._delays = delays
        self._warnings = ThrottledWarnings(log)
        self._closed_frames = FrameCounters()
        self._decoder = FrameDecoder()
        self._thread = threading.Thread(target=self._run, name=f"serial {plan.port}", daemon=True)
        self._open_change = threading.Condition()
        self._opens = 0
        self.is_open = False

    def wait_open(self, timeout_s: float, *, opens: int = 1) -> bool:
        """Block until the port is open for the `opens`-th time or `timeout_s` passed.

        Opening a port flushes what the line sent before, so a test writes only after this.
        """
        with self._open_change:
            return self._open_change.wait_for(lambda: self.is_open and self._opens >= opens, timeout_s)

    def _set_open(self, is_open: bool) -> None:
        with self._open_change:
            self.is_open = is_open
            self._opens += is_open
            self._open_change.notify_all()

    def start(self) -> None:
        """Start the reader thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to stop and wait for it (a read returns within READ_TIMEOUT_S)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def status(self) -> dict[str, Any]:
        """Counters of this port for the agent's status message."""
        c = self.counters
        frames = self._frame_counters()
        return {"port": self.plan.port, "open": self.is_open, "bytes": c.bytes,
                "frames": frames.frames, "heartbeats": frames.heartbeats,
                "bad_frames": frames.bad_frames, "garbage_bytes": frames.garbage_bytes,
                "lost_frames": c.lost_frames, "unknown_channel": c.unknown_channel,
                "losses": c.losses, "reopens": c.reopens}

    def _frame_counters(self) -> FrameCounters:
        total = FrameCounters(**self._closed_frames.as_dict())
        for name, value in self._decoder.counters.as_dict().items():
            setattr(total, name, getattr(total, name) + value)
        return total

    def _new_delays(self) -> Iterator[float]:
        return self._delays or backoff_delays(initial_s=REOPEN_INITIAL_S, cap_s=REOPEN_CAP_S)

    def _run(self) -> None:
        delays = self._new_delays()
        failing = False  # the loss or the first failed open has been logged
        lost_at: float | None = None  # monotonic time the open port was lost
        while not self._stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                if not failing:
                    log.warning("serial %s: cannot open (%s); retrying with backoff", self.plan.port, exc)
                    failing = True
                self._stop.wait(next(delays))
                continue
            failing = False
            delays = self._new_delays()
            self._set_open(True)
            if lost_at is not None:
                self.counters.reopens += 1
                log.info("serial %s: back after %.1f s, reopened", self.plan.port,
                         time.monotonic() - lost_at)
            else:
                log.info("serial %s: open at %d baud, %d channel(s)", self.plan.port, self.plan.baud,
                         len(self._channels))
            try:
                if self._read_until_lost(port):
                    self.counters.losses += 1
                    lost_at, failing = time.monotonic(), True
            finally:
                self._set_open(False)
                self._retire_decoder()
                try:
                    port.close()
                except (serial.SerialException, OSError):
                    pass

    def _read_until_lost(self, port: Any) -> bool:
        """Read and decode until stopped (False) or the port fails (True, logged)."""
        while not self._stop.is_set():
            try:
                chunk = port.read(1)
                if chunk:
                    waiting = port.in_waiting
                    if waiting:
                        chunk += port.read(waiting)
            except (serial.SerialException, OSError) as exc:
                log.warning("serial %s: lost (%s); reopening with backoff up to %.0f s",
                            self.plan.port, exc, REOPEN_CAP_S)
                return True
            if chunk:
                self.counters.bytes += len(chunk)
                self._handle(self._decoder.feed(chunk), now_ms())
        return False

    def _retire_decoder(self) -> None:
        """Keep the counts of a closed connection; a partial frame from it is garbage now."""
        closed = self._closed_frames
        for name, value in self._decoder.counters.as_dict().items():
            setattr(closed, name, getattr(closed, name) + value)
        closed.garbage_bytes += self._decoder.buffered
        self._decoder = FrameDecoder()

    def _handle(self, frames: list[SampleFrame | Heartbeat], received_ms: int) -> None:
        """Queue each frame of a configured channel; count unknown channels and lost frames."""
        for frame in frames:
            key = (frame.node, frame.channel)
            self._count_seq(key, frame.seq)
            if isinstance(frame, Heartbeat):
                for alive in self._node_sensors.get(frame.node, ()):
                    self._ingress.put_block(SampleBlock.alive(alive, received_ms))
                continue
            sensor = self._channels.get(key)
            if sensor is None:
                self.counters.unknown_channel += 1
                self._warnings.warn(f"unknown {key}", f"serial {self.plan.port}: frame from node "
                                    f"{frame.node} channel {frame.channel}, which no sensor is mapped to")
                continue
            times = frame_times(received_ms, len(frame.values), frame.period_us)
            self._ingress.put_block(SampleBlock(sensor, frame.values, times, received_ms))

    def _count_seq(self, key: tuple[int, int], seq: int) -> None:
        last = self._last_seq.get(key)
        self._last_seq[key] = seq
        if last is not None:
            lost = (seq - last - 1) % SEQ_MODULUS
            if lost < SEQ_MODULUS // 2:  # a large jump back is a node restart, not loss
                self.counters.lost_frames += lost
