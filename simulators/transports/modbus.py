"""Modbus RTU transport: simulated transmitters (pymodbus server units) on a pseudo-terminal line.

A `NullModem` joins two pty pairs master to master, like a cable between two RS-485 adapters:
the pymodbus RTU server opens one device, the agent's poller the other (or a stable symlink to
it). Each sensor is one unit answering holding and input registers 0-1 with its latest value as
a big-endian float32 (`datatype = "float32"`, `register = 0` in the agent config). A unit whose
sensor has no value (before its first sample, or in a dropout) answers with an exception, as a
transmitter whose probe is gone does. The agent stamps polled values with their receive time,
so Modbus samples only line up with the ground truth in a real-time paced run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import select
import struct
import threading
import tty
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.transports.base import F32Array, TransportError
from simulators.transports.serial import _replace_symlink

#: Register of the float32 value (two registers, high word first).
VALUE_REGISTER: Final = 0
START_TIMEOUT_S: Final = 10.0


def float_registers(value: float) -> list[int]:
    """A float32 as two 16-bit registers, high word first (the Modbus norm)."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


class NullModem:
    """Two pty pairs whose masters are joined by a copying thread: two device paths, one line."""

    def __init__(self, link: str | os.PathLike[str] | None = None) -> None:
        try:
            self.pairs = [os.openpty(), os.openpty()]
        except OSError as exc:
            raise TransportError(f"cannot open pseudo-terminals: {exc}") from exc
        for master, slave in self.pairs:
            tty.setraw(master)
            tty.setraw(slave)
        self.server_device = os.ttyname(self.pairs[0][1])
        self.device = os.ttyname(self.pairs[1][1])
        self.link = Path(link) if link is not None else None
        if self.link is not None:
            _replace_symlink(self.link, self.device)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._copy, name="null-modem", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        """What the agent opens: the stable link if there is one, else its pty device."""
        return str(self.link) if self.link is not None else self.device

    def _copy(self) -> None:
        (a, _), (b, _) = self.pairs
        peer = {a: b, b: a}
        while True:
            ready, _, _ = select.select([a, b, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            for fd in ready:
                try:
                    os.write(peer[fd], os.read(fd, 4096))
                except OSError:
                    return

    def close(self) -> None:
        """Stop copying, close every descriptor, remove the link if it still points here."""
        os.write(self._stop_w, b"x")
        self._thread.join(5.0)
        if self.link is not None:
            try:
                if os.readlink(self.link) == self.device:
                    self.link.unlink()
            except OSError:
                pass
        for fd in (*[fd for pair in self.pairs for fd in pair], self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass


class ModbusUnits:
    """A pymodbus RTU server on its own thread answering for many units with their latest values."""

    def __init__(self, device: str, units: Sequence[int], *, baudrate: int = 115200) -> None:
        if not units or len(set(units)) != len(units) or not all(1 <= u <= 247 for u in units):
            raise TransportError(f"Modbus units must be distinct ids in 1..247, got {list(units)}")
        self.values: dict[int, float] = dict.fromkeys(units, math.nan)
        self.polls = 0
        self._device = device
        self._baudrate = baudrate
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self.server: ModbusSerialServer | None = None
        self._thread = threading.Thread(target=self._run, name="modbus-units", daemon=True)
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # deprecation and per-poll noise
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            raise TransportError(f"the simulated Modbus units did not start on {device}: {self._error}")

    def set_value(self, unit: int, value: float) -> None:
        """The unit's next answer (NaN: answer with an exception, the probe is gone)."""
        self.values[unit] = value

    def _action(self, unit: int) -> Callable[..., Any]:
        async def action(function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values: object) -> ExcCodes | None:
            self.polls += 1
            value = self.values[unit]
            if math.isnan(value):
                return ExcCodes.DEVICE_FAILURE
            registers[VALUE_REGISTER - start_address:VALUE_REGISTER - start_address + 2] = \
                float_registers(value)
            return None

        return action

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            devices = [
                SimDevice(id=unit, simdata=[SimData(VALUE_REGISTER, values=[0, 0],
                                                    datatype=DataType.REGISTERS)],
                          action=self._action(unit))
                for unit in self.values
            ]
            self.server = ModbusSerialServer(devices, framer=FramerType.RTU, port=self._device,
                                             baudrate=self._baudrate, ignore_missing_devices=True)
            await self.server.serve_forever(background=True)
            self._ready.set()
            await asyncio.Event().wait()

        try:
            self._loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # reported to the starting thread, which raises TransportError
            self._error = exc
            self._ready.set()

    def close(self) -> None:
        """Shut the server down and stop its thread."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self.server is not None:
                await self.server.shutdown()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(START_TIMEOUT_S)
        except (TimeoutError, RuntimeError, asyncio.CancelledError):
            pass
        self._thread.join(START_TIMEOUT_S)


class ModbusSink:
    """Holds each Modbus sensor's latest value in its unit; sensor `i` is `targets[i]` (or None)."""

    def __init__(self, targets: Sequence[tuple[ModbusUnits, int] | None]) -> None:
        self.targets = list(targets)
        self._lines: list[NullModem] = []

    def attach(self, line: NullModem) -> None:
        """Close this line with the sink."""
        self._lines.append(line)

    def send(self, sensor: int, values: F32Array, t0_ms: int, period_ms: float) -> int:
        """The block's last sample becomes the unit's answer (polling sees only the latest)."""
        target = self.targets[sensor]
        if target is None:
            raise ValueError(f"sensor {sensor} has no Modbus unit")
        if not len(values):
            return 0
        units, unit = target
        units.set_value(unit, float(values[-1]))
        return int(np.count_nonzero(~np.isnan(values)))

    def flush(self, timeout_s: float) -> bool:
        """Values are served as they are set: nothing to wait for."""
        return True

    def close(self) -> None:
        """Stop every server, then every line."""
        servers = {id(t[0]): t[0] for t in self.targets if t is not None}
        for server in servers.values():
            server.close()
        for line in self._lines:
            line.close()
