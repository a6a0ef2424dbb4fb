"""Modbus faults on one RS-485 bus (a pymodbus RTU server behind a pty null-modem cable): a unit
answering with an exception (illegal data address) and a unit that never answers are reported
and asked again only with backoff, while the healthy unit on the same bus keeps being polled."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ModbusException
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.inputs.modbus import ModbusBus
from edge_agent.registry import ModbusBusPlan, ModbusPoint
from simulators.servers import MosquittoServer
from tests.agent_harness import (
    AgentProcess,
    Collector,
    ModbusTransmitters,
    PtyBridge,
    RecordingIngress,
    write_config,
)

LIVE, BAD_ADDRESS, SILENT = 3, 5, 9
PERIOD_S = 0.2
#: The agent's default reply timeout: long enough for the test's own RTU server (Python threads
#: behind a pty) to answer on a loaded machine, where a late reply would count as a failure.
TIMEOUT_S = 0.5


class TransmittersWithSilentUnits(ModbusTransmitters):
    """ModbusTransmitters whose server never sends a reply addressed to one of `silent`.

    The pymodbus simulator answers a unit it does not serve with exception 4 (device failure),
    even with ignore_missing_devices; a unit that is really gone sends nothing at all.
    """

    def __init__(self, device: str, units: dict[int, list[int]], *, silent: set[int]) -> None:
        self.silent = silent
        self.dropped = 0
        super().__init__(device, units)

    def _trace(self, sending: bool, packet: bytes) -> bytes:
        if sending and packet[:1] and packet[0] in self.silent:
            self.dropped += 1
            return b""
        return packet

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            devices = [SimDevice(id=unit, simdata=[SimData(100, values=list(regs), datatype=DataType.REGISTERS)],
                                 action=self._action(unit)) for unit, regs in self.registers.items()]
            self.server = ModbusSerialServer(devices, framer=FramerType.RTU, port=self._device, baudrate=115200,
                                             trace_packet=self._trace)
            await self.server.serve_forever(background=True)
            self._ready.set()
            await asyncio.Event().wait()

        try:
            self._loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass


def wait_answering(device: str, unit: int, timeout_s: float = 30.0) -> None:
    """Block until the test's RTU server answers `unit` on `device`: on a loaded machine its
    threads can take seconds to come up, and a unit that misses its first polls is backed off."""
    client = ModbusSerialClient(device, framer=FramerType.RTU, baudrate=115200, timeout=1.0, retries=0)
    deadline = time.monotonic() + timeout_s
    try:
        assert client.connect(), f"cannot open {device}"
        while True:
            try:
                if not client.read_holding_registers(100, count=1, device_id=unit).isError():
                    return
            except ModbusException:
                pass  # not up yet: each attempt waits out the 1 s timeout, no busy loop
            assert time.monotonic() < deadline, f"the RTU server never answered unit {unit}"
    finally:
        client.close()


@pytest.fixture
def rs485() -> Iterator[tuple[PtyBridge, TransmittersWithSilentUnits]]:
    """Units LIVE and BAD_ADDRESS serve one register at 100; unit SILENT never answers."""
    bridge = PtyBridge()
    server = TransmittersWithSilentUnits(bridge.devices[0], {LIVE: [123], BAD_ADDRESS: [7], SILENT: [1]},
                                         silent={SILENT})
    try:
        wait_answering(bridge.devices[1], LIVE)
        yield bridge, server
    finally:
        server.close()
        bridge.close()


def point(sensor: int, unit: int, register: int = 100) -> ModbusPoint:
    return ModbusPoint(sensor, f"M-{unit}", unit=unit, register=register, datatype="int16",
                       register_type="holding", word_order="big", scale=0.1, period_s=PERIOD_S)


@pytest.mark.timeout(60)
def test_exception_and_silent_units_back_off_while_the_live_unit_keeps_being_polled(
        rs485: tuple[PtyBridge, TransmittersWithSilentUnits], caplog: pytest.LogCaptureFixture) -> None:
    bridge, server = rs485
    points = (point(0, LIVE), point(1, BAD_ADDRESS, register=4000), point(2, SILENT))
    ingress = RecordingIngress()
    bus = ModbusBus(ModbusBusPlan(bridge.devices[1], 115200, points), ingress, timeout_s=TIMEOUT_S)
    caplog.set_level(logging.INFO, logger="edge_agent.inputs.modbus")
    started = time.monotonic()
    bus.start()
    try:
        assert ingress.wait_for(lambda seen: len([b for b in seen if b.sensor == 0]) >= 40)
    finally:
        bus.stop()
    elapsed = time.monotonic() - started
    assert np.allclose(ingress.samples(0), 12.3)  # no late or foreign reply taken for the live unit
    assert ingress.samples(1) == [] and ingress.samples(2) == []
    status = bus.status()
    assert status["units_failing"] == [BAD_ADDRESS, SILENT]
    live, bad, silent = bus._points
    # Each failing unit is asked at 0.05, 0.1, 0.2, 0.4 ... s: a handful of requests, not one per period.
    periods = elapsed / PERIOD_S
    for state in (bad, silent):
        assert 1 <= state.failures == state.polls <= 8, (state.failures, elapsed)
    assert live.failures == 0 and live.polls >= 40
    assert server.dropped == silent.polls  # each unanswered request waited out its timeout
    assert live.polls > 0.5 * periods  # the bus was not held up by the failing units
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # reported once each, not per request
    assert any(f"unit {BAD_ADDRESS} register 4000" in w and "xception" in w for w in warnings), warnings
    assert any(f"unit {SILENT} register 100" in w and "xception" not in w for w in warnings), warnings
    assert status["failures"] == bad.failures + silent.failures


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_the_agent_reports_failing_units_and_keeps_alerting_on_the_live_one(
        tmp_path: Path, broker: MosquittoServer, rs485: tuple[PtyBridge, TransmittersWithSilentUnits]) -> None:
    bridge, server = rs485
    common = {"source": "modbus", "port": bridge.devices[1], "baud": 115200, "datatype": "int16", "scale": 0.1,
              "period_s": PERIOD_S, "kind": "tunnel.water", "high": [15.0, 27.0, 50.0, 80.0], "debounce": 2,
              "gap_s": 600.0}
    config = write_config(tmp_path / "agent.toml", agent="t-modbus-faults", broker_url=broker.url,
                          state_dir=tmp_path / "state", agent_extra=f"modbus_timeout_s = {TIMEOUT_S}", sensors=[
                              {"id": "M-LIVE", "site": "tunnel-3", "unit": LIVE, "register": 100, **common},
                              {"id": "M-BAD", "site": "tunnel-5", "unit": BAD_ADDRESS, "register": 4000, **common},
                              {"id": "M-SILENT", "site": "tunnel-9", "unit": SILENT, "register": 100, **common},
                          ])
    collector = Collector(broker.port, client_id="test-modbus-faults-collector")
    agent = AgentProcess(config).start()
    try:
        agent.wait_log(r"modbus .*: open")
        server.registers[LIVE][0] = 300  # 30.0 cm: level 2
        assert collector.wait_for(lambda c: ("M-LIVE", "high", 0, 2) in c.alert_changes()), \
            (collector.alert_changes(), agent.log_text())

        def failing(s: object) -> bool:
            buses = getattr(s, "extra", {}).get("modbus", [])
            return bool(buses) and buses[0].get("units_failing") == [BAD_ADDRESS, SILENT]

        assert collector.wait_for(lambda c: any(failing(s) for s in c.status if s.agent == "t-modbus-faults"))
        agent.wait_log(rf"unit {BAD_ADDRESS} register 4000 \(sensor M-BAD\) answers with Modbus exception 2")
        agent.wait_log(rf"unit {SILENT} register 100 \(sensor M-SILENT\) does not answer")
        assert agent.terminate() == 0
    finally:
        agent.close()
        collector.close()
    assert not [a for a in collector.alerts if a.sensor != "M-LIVE"]
