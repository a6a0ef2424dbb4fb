"""Agent inputs against real pseudo-terminals: serial frames with garbage, a port that vanishes and
returns, and Modbus RTU polling of a pymodbus server with a unit that never answers."""

from __future__ import annotations

import itertools
import os
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inputs.base import SampleBlock
from edge_agent.inputs.modbus import ModbusBus, register_value
from edge_agent.inputs.serial_port import SerialPortReader, frame_times
from edge_agent.registry import ModbusBusPlan, ModbusPoint, SerialChannel, SerialPortPlan
from firmware_stubs import FORMAT_FLOAT32, SensorNode, encode_heartbeat
from tests.agent_harness import ModbusTransmitters, PtyBridge, RecordingIngress
from tests.conftest import PtyPair

pytestmark = pytest.mark.integration
WAIT_S = 10.0


def samples_of(blocks: list[SampleBlock], sensor: int) -> np.ndarray:
    parts = [b.values for b in blocks if b.sensor == sensor and len(b.values)]
    return np.concatenate(parts) if parts else np.empty(0)


# ---------------------------------------------------------------- pure helpers


def test_frame_times_end_at_receive_time_and_step_back_by_the_period() -> None:
    assert frame_times(10_000, 4, 250_000).tolist() == [9_250, 9_500, 9_750, 10_000]
    assert frame_times(10_000, 1, 1000).tolist() == [10_000]


@pytest.mark.parametrize(
    ("registers", "datatype", "order", "expected"),
    [
        ([0xFFFE], "int16", "big", -2.0),
        ([0xFFFE], "uint16", "big", 65534.0),
        ([0xFFFF, 0xFFFD], "int32", "big", -3.0),
        ([0x0001, 0x0000], "int32", "big", 65536.0),
        ([0x0000, 0x0001], "int32", "little", 65536.0),
        ([0x4049, 0x0FDB], "float32", "big", 3.1415927410125732),
        ([0x0FDB, 0x4049], "float32", "little", 3.1415927410125732),
    ],
)
def test_register_layouts(registers: list[int], datatype: str, order: str, expected: float) -> None:
    assert register_value(registers, datatype, order) == expected  # type: ignore[arg-type]


# ---------------------------------------------------------------- serial


def test_serial_frames_with_garbage_between_them_arrive_as_blocks(pty_pair: PtyPair) -> None:
    plan = SerialPortPlan(pty_pair.device, 115200, (SerialChannel(17, 0, 0), SerialChannel(17, 1, 1),
                                                    SerialChannel(42, 0, 2)))
    ingress = RecordingIngress()
    reader = SerialPortReader(plan, ingress)
    reader.start()
    assert reader.wait_open(WAIT_S)  # opening a port flushes what arrived before
    try:
        node = SensorNode(17, channels=(0, 1), period_us=10_000, fmt=FORMAT_FLOAT32, frame_samples=50)
        other = SensorNode(99, period_us=10_000, fmt=FORMAT_FLOAT32)  # no sensor is mapped to it
        rng = np.random.default_rng(7)
        ch0 = np.round(rng.normal(0.4, 0.01, 200), 3)
        ch1 = np.arange(100, dtype=np.float64)
        stream = b""
        for frame in node.frames_for(0, ch0) + node.frames_for(1, ch1) + other.frames_for(0, [1.0]):
            stream += frame + b"\xa5\x5a\x01garbage" + rng.integers(0, 256, 13, dtype=np.uint8).tobytes()
        bad = bytearray(node.frames_for(1, [5.0])[0])
        bad[-1] ^= 0xFF  # a corrupted CRC: counted, never delivered
        stream += bytes(bad) + encode_heartbeat(42, 0, 0)
        for i in range(0, len(stream), 97):  # the line delivers bytes in arbitrary chunks
            pty_pair.write(stream[i:i + 97])
        assert ingress.wait_for(lambda seen: any(b.sensor == 2 for b in seen)), "no heartbeat arrived"
    finally:
        reader.stop()
    np.testing.assert_allclose(samples_of(ingress.seen, 0), ch0.astype(np.float32))
    np.testing.assert_array_equal(samples_of(ingress.seen, 1), ch1)
    heartbeat = [b for b in ingress.seen if b.sensor == 2]
    assert len(heartbeat) == 1 and len(heartbeat[0].values) == 0
    for block in ingress.seen:
        if len(block.values) > 1:
            assert block.times[-1] == block.received_ms
            assert np.all(np.diff(block.times) == 10)
    status = reader.status()
    assert status["bad_frames"] >= 1 and status["garbage_bytes"] > 0
    assert status["unknown_channel"] == 1 and status["frames"] == 4 + 2 + 1


@pytest.fixture
def replugged_port(tmp_path: Path) -> Iterator[Callable[[], PtyPair]]:
    """A stable device path (a symlink, like /dev/serial/by-id) that can be 'plugged' to new ptys."""
    link = tmp_path / "ttyUSB-node"
    opened: list[PtyPair] = []

    def plug() -> PtyPair:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        pair = PtyPair(master, slave, str(link))
        tmp = tmp_path / "link.tmp"
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(link)
        opened.append(pair)
        return pair

    yield plug
    for pair in opened:
        for fd in (pair.master_fd, pair.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def test_a_vanished_port_is_reopened_and_reading_resumes(replugged_port: Callable[[], PtyPair]) -> None:
    first = replugged_port()
    plan = SerialPortPlan(first.device, 115200, (SerialChannel(5, 0, 0),))
    ingress = RecordingIngress()
    reader = SerialPortReader(plan, ingress, delays=itertools.repeat(0.05))
    reader.start()
    assert reader.wait_open(WAIT_S)
    node = SensorNode(5, period_us=1000, fmt=FORMAT_FLOAT32)
    try:
        first.write(node.frames_for(0, [1.0, 2.0])[0])
        assert ingress.wait_for(lambda seen: len(samples_of(seen, 0)) == 2)
        # Unplug: the device side goes away (the reader sees an I/O error) and the path is gone.
        os.close(first.master_fd)
        os.close(first.slave_fd)
        Path(first.device).unlink()
        second = replugged_port()
        assert reader.wait_open(WAIT_S, opens=2), "the port was not reopened"
        second.write(node.frames_for(0, [3.0])[0])
        assert ingress.wait_for(lambda seen: len(samples_of(seen, 0)) == 3), "no data after replug"
    finally:
        reader.stop()
    assert samples_of(ingress.seen, 0).tolist() == [1.0, 2.0, 3.0]
    assert reader.status()["reopens"] == 1


# ---------------------------------------------------------------- Modbus


@pytest.fixture
def modbus_line() -> Iterator[tuple[PtyBridge, ModbusTransmitters]]:
    bridge = PtyBridge()
    server = ModbusTransmitters(bridge.devices[0], {3: [0x4049, 0x0FDB], 4: [0xFFF6]})
    try:
        yield bridge, server
    finally:
        server.close()
        bridge.close()


def test_modbus_points_are_polled_and_a_silent_unit_backs_off(
        modbus_line: tuple[PtyBridge, ModbusTransmitters]) -> None:
    bridge, server = modbus_line
    points = (
        ModbusPoint(0, "T-float", unit=3, register=100, datatype="float32", register_type="holding",
                    word_order="big", scale=2.0, period_s=0.05),
        ModbusPoint(1, "T-int", unit=4, register=100, datatype="int16", register_type="holding",
                    word_order="big", scale=0.5, period_s=0.05),
        ModbusPoint(2, "T-dead", unit=9, register=100, datatype="int16", register_type="holding",
                    word_order="big", scale=1.0, period_s=0.05),
    )
    ingress = RecordingIngress()
    bus = ModbusBus(ModbusBusPlan(bridge.devices[1], 115200, points), ingress, timeout_s=0.1)
    bus.start()
    try:
        assert ingress.wait_for(lambda seen: len(samples_of(seen, 1)) >= 3)
        server.registers[4][0] = 40  # the transmitter's reading changes: the next poll sees it
        assert ingress.wait_for(lambda seen: 20.0 in samples_of(seen, 1).tolist())
        assert ingress.wait_for(lambda seen: len(samples_of(seen, 1)) >= 30)
    finally:
        bus.stop()
    assert samples_of(ingress.seen, 0)[0] == pytest.approx(2 * 3.14159274)
    assert samples_of(ingress.seen, 1)[0] == -5.0
    assert len(samples_of(ingress.seen, 2)) == 0
    status = bus.status()
    assert status["units_failing"] == [9]
    live, dead = bus._points[1], bus._points[2]
    # Polled at its period without backoff, the dead unit would have failed as often as the live
    # unit answered; with backoff (0.05, 0.1, 0.2, 0.4 ... s) it is asked only a few times.
    assert 1 <= dead.failures <= 8
    assert dead.failures * 3 < live.polls
