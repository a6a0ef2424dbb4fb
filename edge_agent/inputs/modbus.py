"""Modbus RTU input: one polling thread per bus, one request at a time, each unit at its own period.

A unit that does not answer is reported once (a warning and a counter; the pipeline raises its
`gap` fault from the missing data) and asked again only at its period, then with growing backoff
while it keeps failing, so a dead transmitter never hogs the bus. Register layouts: int16, uint16
use one register; int32 and float32 two, high word first at `register` ("big" word order, the
Modbus norm) unless the sensor says `word_order = "little"`.
"""

from __future__ import annotations

import heapq
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ModbusException

from edge_agent.config import Datatype, WordOrder
from edge_agent.inputs.base import Ingress, SampleBlock, now_ms
from edge_agent.registry import ModbusBusPlan, ModbusPoint
from lifeline.backoff import backoff_delays

log = logging.getLogger(__name__)

#: Longest wait between polls of a unit that keeps failing.
FAILING_CAP_S = 60.0
REGISTERS: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "float32": 2}


def register_value(registers: Sequence[int], datatype: Datatype, word_order: WordOrder = "big") -> float:
    """The number a transmitter's registers hold (before scaling)."""
    if datatype == "uint16":
        return float(registers[0] & 0xFFFF)
    if datatype == "int16":
        return float(struct.unpack(">h", struct.pack(">H", registers[0] & 0xFFFF))[0])
    hi, lo = (registers[0], registers[1]) if word_order == "big" else (registers[1], registers[0])
    raw = struct.pack(">HH", hi & 0xFFFF, lo & 0xFFFF)
    return float(struct.unpack(">i" if datatype == "int32" else ">f", raw)[0])


@dataclass
class PointState:
    """Polling state of one point: when it is next due and how it has been failing."""

    point: ModbusPoint
    polls: int = 0
    failures: int = 0
    consecutive: int = 0
    backoff: Iterator[float] | None = None


def _open_client(plan: ModbusBusPlan, timeout_s: float) -> ModbusSerialClient:
    return ModbusSerialClient(plan.port, framer=FramerType.RTU, baudrate=plan.baud,
                              timeout=timeout_s, retries=0)


class ModbusBus:
    """Polls every point of one bus on its own thread and queues one-sample blocks."""

    def __init__(self, plan: ModbusBusPlan, ingress: Ingress, *, timeout_s: float = 0.5,
                 make_client: Callable[[ModbusBusPlan, float], Any] = _open_client) -> None:
        self.plan = plan
        self.timeout_s = timeout_s
        self._ingress = ingress
        self._make_client = make_client
        self._points = [PointState(p) for p in plan.points]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"modbus {plan.port}", daemon=True)
        self.is_open = False
        self.reopens = 0
        # pymodbus logs every unanswered request at ERROR; this module reports them once instead.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    def start(self) -> None:
        """Start the polling thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop polling; a request in flight finishes within the client timeout."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s + self.timeout_s)

    def status(self) -> dict[str, Any]:
        """Counters of this bus for the agent's status message."""
        return {
            "port": self.plan.port, "open": self.is_open, "reopens": self.reopens,
            "polls": sum(p.polls for p in self._points),
            "failures": sum(p.failures for p in self._points),
            "units_failing": sorted({p.point.unit for p in self._points if p.consecutive}),
        }

    def _run(self) -> None:
        delays = backoff_delays(initial_s=0.5, cap_s=30.0)
        failing = False
        opened_before = False
        while not self._stop.is_set():
            client = self._make_client(self.plan, self.timeout_s)
            if not client.connect():
                if not failing:
                    log.warning("modbus %s: cannot open; retrying with backoff", self.plan.port)
                    failing = True
                self._stop.wait(next(delays))
                continue
            if opened_before:
                self.reopens += 1
            opened_before, failing = True, False
            delays = backoff_delays(initial_s=0.5, cap_s=30.0)
            self.is_open = True
            log.info("modbus %s: open at %d baud, polling %d point(s)", self.plan.port, self.plan.baud,
                     len(self._points))
            try:
                self._poll_until_lost(client)
            finally:
                self.is_open = False
                client.close()

    def _poll_until_lost(self, client: Any) -> None:
        """Poll points as they fall due until stopped or the port itself fails."""
        start = time.monotonic()
        due = [(start, i) for i in range(len(self._points))]
        heapq.heapify(due)
        while not self._stop.is_set():
            at, i = heapq.heappop(due)
            if self._stop.wait(max(0.0, at - time.monotonic())):
                return
            state = self._points[i]
            try:
                delay = self._poll(client, state)
            except OSError as exc:
                log.warning("modbus %s: lost (%s); reopening with backoff", self.plan.port, exc)
                return
            heapq.heappush(due, (max(at + state.point.period_s, time.monotonic()) if delay is None
                                 else time.monotonic() + delay, i))

    def _poll(self, client: Any, state: PointState) -> float | None:
        """One request; returns None to poll again at the period, or a backoff delay after a failure."""
        p = state.point
        state.polls += 1
        read = client.read_holding_registers if p.register_type == "holding" else client.read_input_registers
        try:
            response = read(p.register, count=REGISTERS[p.datatype], device_id=p.unit)
            error = None
            if response.isError():
                code = getattr(response, "exception_code", None)
                error = (f"answers with Modbus exception {code}" if code is not None
                         else f"answers with an error ({response})")
        except ModbusException as exc:
            if not client.connected:
                raise OSError(str(exc)) from exc
            error = f"does not answer ({exc})"
            response = None
        if error is None and response is not None:
            value = register_value(response.registers, p.datatype, p.word_order) * p.scale
            t = now_ms()
            self._ingress.put_block(SampleBlock(p.sensor, np.array([value]), np.array([t], dtype=np.int64), t))
            if state.consecutive:
                log.info("modbus %s: unit %d (sensor %s) answers again after %d failed poll(s)",
                         self.plan.port, p.unit, p.sensor_id, state.consecutive)
            state.consecutive, state.backoff = 0, None
            return None
        state.failures += 1
        state.consecutive += 1
        if state.backoff is None:
            state.backoff = backoff_delays(initial_s=p.period_s, cap_s=max(p.period_s, FAILING_CAP_S))
        delay = next(state.backoff)
        if state.consecutive == 1:
            log.warning("modbus %s: unit %d register %d (sensor %s) %s; "
                        "polling it with backoff up to %.0f s", self.plan.port, p.unit, p.register,
                        p.sensor_id, error, max(p.period_s, FAILING_CAP_S))
        return delay
