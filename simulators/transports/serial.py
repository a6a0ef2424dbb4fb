"""Serial transport: virtual sensor nodes writing section-3 frames into pseudo-terminals.

Each `VirtualSerialPort` is an `os.openpty()` pair in raw mode; the agent opens the slave side
by its device path, or by a stable symlink (like /dev/serial/by-id) that `write-config` can
name before the simulator runs. Every serial sensor is its own `firmware_stubs.SensorNode`
(one channel, float32 frames, its own sample period). A node does not block on a port nobody
reads: a frame that does not fit in the pty's buffer is dropped and counted, as a UART with
no listener loses bytes.

Frames carry no time: the agent stamps a frame's last sample with its receive time, so serial
samples only line up with the ground truth in a real-time paced run.
"""

from __future__ import annotations

import errno
import os
import select
import tty
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from firmware_stubs import FORMAT_FLOAT32, MAX_SAMPLES, SensorNode
from simulators.transports.base import F32Array, TransportError, present_runs

#: Longest a frame that started going out may wait for room in the pty before it is given up.
PARTIAL_WRITE_TIMEOUT_S: Final = 0.5


@dataclass
class PortCounters:
    """Bytes and frames that went into a port, and frames dropped because nobody read."""

    frames: int = 0
    bytes: int = 0
    dropped_frames: int = 0


class VirtualSerialPort:
    """A raw-mode pseudo-terminal; frames go in at the master, the agent reads the slave device."""

    def __init__(self, link: str | os.PathLike[str] | None = None) -> None:
        try:
            self.master_fd, self.slave_fd = os.openpty()
        except OSError as exc:
            raise TransportError(f"cannot open a pseudo-terminal: {exc}") from exc
        tty.setraw(self.master_fd)
        tty.setraw(self.slave_fd)
        os.set_blocking(self.master_fd, False)
        self.device = os.ttyname(self.slave_fd)
        self.link = Path(link) if link is not None else None
        self.counters = PortCounters()
        if self.link is not None:
            _replace_symlink(self.link, self.device)

    @property
    def path(self) -> str:
        """What the agent opens: the stable link if there is one, else the pty device."""
        return str(self.link) if self.link is not None else self.device

    def write_frame(self, frame: bytes) -> bool:
        """Write one whole frame; False (and counted) if the pty had no room for it."""
        try:
            written = os.write(self.master_fd, frame)
        except BlockingIOError:
            self.counters.dropped_frames += 1
            return False
        view = memoryview(frame)[written:]
        while view:  # a frame half in the line must be finished or the reader loses sync
            _, ready, _ = select.select([], [self.master_fd], [], PARTIAL_WRITE_TIMEOUT_S)
            if not ready:
                self.counters.dropped_frames += 1
                return False
            try:
                view = view[os.write(self.master_fd, view):]
            except BlockingIOError:
                continue
        self.counters.frames += 1
        self.counters.bytes += len(frame)
        return True

    def close(self) -> None:
        """Close both sides and remove the link if it still points at this pty."""
        if self.link is not None:
            try:
                if os.readlink(self.link) == self.device:
                    self.link.unlink()
            except OSError:
                pass
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise


def _replace_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` atomically (a re-plugged adapter keeps its by-id name)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(link.name + ".tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    tmp.symlink_to(target)
    tmp.replace(link)


@dataclass(frozen=True)
class SerialAddress:
    """Where a sensor's frames go: a port, the node id and the channel."""

    port: VirtualSerialPort
    node: int
    channel: int = 0


class SerialNodeSink:
    """Sensor nodes on virtual ports; sensor `i` is the node at `addresses[i]` (None: not serial)."""

    def __init__(self, addresses: Sequence[SerialAddress | None], rates_hz: Sequence[float]) -> None:
        self.addresses = list(addresses)
        self.nodes: list[SensorNode | None] = [
            None if a is None else SensorNode(a.node, (a.channel,), period_us=max(1, round(1e6 / r)),
                                              fmt=FORMAT_FLOAT32)
            for a, r in zip(addresses, rates_hz, strict=True)
        ]

    def send(self, sensor: int, values: F32Array, t0_ms: int, period_ms: float) -> int:
        """Write the block as frames of at most MAX_SAMPLES; NaN samples are not sent."""
        address, node = self.addresses[sensor], self.nodes[sensor]
        if address is None or node is None:
            raise ValueError(f"sensor {sensor} has no serial address")
        sent = 0
        for start, stop in present_runs(values):
            run = np.asarray(values[start:stop], dtype=np.float64).tolist()
            for k in range(0, len(run), MAX_SAMPLES):
                chunk = run[k:k + MAX_SAMPLES]
                for frame in node.frames_for(address.channel, chunk):
                    if address.port.write_frame(frame):
                        sent += len(chunk)
        return sent

    def heartbeat(self, sensor: int) -> bool:
        """Send a heartbeat frame of the sensor's node (a live node with nothing to report)."""
        address, node = self.addresses[sensor], self.nodes[sensor]
        if address is None or node is None:
            raise ValueError(f"sensor {sensor} has no serial address")
        return address.port.write_frame(node.heartbeat(address.channel))

    def flush(self, timeout_s: float) -> bool:
        """Frames are in the pty once written: nothing to wait for."""
        return True

    def close(self) -> None:
        """Close every port."""
        ports = {id(a.port): a.port for a in self.addresses if a is not None}
        for port in ports.values():
            port.close()
