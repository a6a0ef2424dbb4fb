"""The whole agent reading field devices over real pseudo-terminals: sensor-node frames with line
garbage on a serial port, and Modbus RTU transmitters (one of them dead) on an RS-485 bus."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_stubs import FORMAT_INT16, SensorNode
from simulators.servers import MosquittoServer
from tests.agent_harness import AgentProcess, Collector, ModbusTransmitters, PtyBridge, write_config
from tests.conftest import PtyPair

pytestmark = pytest.mark.integration
LEVEL = {"kind": "flood.level", "high": [15.0, 27.0, 50.0, 80.0], "hysteresis": 2.0, "debounce": 3,
         "rules": {"rate": {"enabled": False}, "spike": {"enabled": False}}}


@pytest.fixture
def collector(broker: MosquittoServer, request: pytest.FixtureRequest) -> Iterator[Collector]:
    c = Collector(broker.port, client_id=f"test-{request.node.name}"[:60])
    yield c
    c.close()


def test_serial_frames_with_garbage_raise_alerts_end_to_end(
        tmp_path: Path, broker: MosquittoServer, pty_pair: PtyPair, collector: Collector) -> None:
    config = write_config(tmp_path / "agent.toml", agent="t-serial", broker_url=broker.url,
                          state_dir=tmp_path / "state", sensors=[
                              {"id": "F-1", "site": "underpass-1", "source": "serial", "port": pty_pair.device,
                               "node": 17, "channel": 0, "gap_s": 600.0, **LEVEL},
                              {"id": "F-2", "site": "underpass-2", "source": "serial", "port": pty_pair.device,
                               "node": 17, "channel": 1, "gap_s": 600.0, **LEVEL},
                          ])
    agent = AgentProcess(config).start()
    try:
        agent.wait_log(r"serial .*: open")
        node = SensorNode(17, channels=(0, 1), period_us=100_000, fmt=FORMAT_INT16, scale=0.1, frame_samples=4)
        garbage = b"\x00\xff\xa5\x5a\x01\x09noise\xa5"
        stream = b""
        for frame in node.frames_for(0, [3.0, 3.5, 31.0, 31.5, 32.0, 32.0]) + node.frames_for(1, [4.0] * 4):
            stream += garbage + frame
        corrupted = bytearray(node.frames_for(1, [90.0] * 4)[0])
        corrupted[25] ^= 0x40
        before = int(time.time() * 1000)
        pty_pair.write(stream + bytes(corrupted) + garbage)
        assert collector.wait_for(lambda c: ("F-1", "high", 0, 2) in c.alert_changes())
        assert collector.wait_for(lambda c: any(s.extra.get("bad_frames", 0) >= 1 and s.extra.get("samples") == 10
                                                for s in c.status if s.agent == "t-serial"))
        alert = next(a for a in collector.alerts if a.sensor == "F-1")
        # Nodes have no clock: the frame's last sample is stamped on arrival, earlier ones 100 ms apart.
        assert before - 100 <= alert.ts <= int(time.time() * 1000)
        assert alert.value == pytest.approx(32.0) and alert.limit == 27.0
        assert [a.sensor for a in collector.alerts] == ["F-1"]  # the corrupted 90 cm frame raised nothing
        status = next(s for s in reversed(collector.status) if s.agent == "t-serial")
        (port,) = status.extra["serial"]
        assert port["frames"] == 3 and port["bad_frames"] >= 1 and port["open"]
        assert agent.terminate() == 0
    finally:
        agent.close()


@pytest.fixture
def rs485() -> Iterator[tuple[PtyBridge, ModbusTransmitters]]:
    bridge = PtyBridge()
    transmitters = ModbusTransmitters(bridge.devices[0], {3: [120]})  # unit 3 reads 12.0 cm
    try:
        yield bridge, transmitters
    finally:
        transmitters.close()
        bridge.close()


def test_modbus_thresholds_and_a_silent_unit_reported_as_a_gap_fault(
        tmp_path: Path, broker: MosquittoServer, rs485: tuple[PtyBridge, ModbusTransmitters],
        collector: Collector) -> None:
    bridge, transmitters = rs485
    modbus = {"source": "modbus", "port": bridge.devices[1], "register": 100, "datatype": "int16",
              "scale": 0.1, "period_s": 0.1, "baud": 115200}
    config = write_config(tmp_path / "agent.toml", agent="t-modbus", broker_url=broker.url,
                          state_dir=tmp_path / "state", agent_extra="modbus_timeout_s = 0.1", sensors=[
                              {"id": "W-3", "site": "tunnel-3", "unit": 3, **modbus, **LEVEL, "gap_s": 600.0},
                              {"id": "W-7", "site": "tunnel-7", "unit": 7, **modbus, **LEVEL, "gap_s": 1.0},
                          ])
    agent = AgentProcess(config).start()
    try:
        agent.wait_log(r"modbus .*: open")
        assert collector.wait_for(lambda c: ("W-7", "gap", 0, 1) in c.alert_changes())
        gap = next(a for a in collector.alerts if a.sensor == "W-7")
        assert gap.extra is not None and gap.extra["fault"] is True and gap.site == "tunnel-7"
        transmitters.registers[3][0] = 300  # the water rises to 30.0 cm
        assert collector.wait_for(lambda c: ("W-3", "high", 0, 2) in c.alert_changes())
        assert collector.wait_for(lambda c: any(7 in s.extra.get("modbus", [{}])[0].get("units_failing", [])
                                                for s in c.status if s.agent == "t-modbus"))
        assert agent.terminate() == 0
    finally:
        agent.close()
    log = agent.log_text()
    # the pymodbus simulator answers a unit it does not serve with exception 4 (device failure)
    assert log.count("unit 7 register 100 (sensor W-7) answers with Modbus exception 4") == 1  # reported once
    assert "unit 3" not in log
