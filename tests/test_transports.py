"""Transports and replay: what the simulator sends is what an agent's inputs receive, on time."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient

from edge_agent.frames import FrameDecoder, SampleFrame
from edge_agent.inputs.modbus import register_value
from lifeline.config import MqttSettings
from lifeline.contract import RawBlock, decode_raw_block
from simulators.runner import Fleet, ReplayPlan, RunOptions, index_at, open_transports, replay
from simulators.scenario import Scenario, ScenarioSensor, Township
from simulators.servers import MosquittoServer
from simulators.signals import Burst, Dropout, SignalModel, SimSensor, build_model
from simulators.transports.base import F32Array, present_runs
from simulators.transports.modbus import ModbusSink, ModbusUnits, NullModem
from simulators.transports.mqtt import MqttPublisher, RawBlockSink
from simulators.transports.serial import SerialAddress, SerialNodeSink, VirtualSerialPort

T0 = 1_721_001_600_000
WAIT_S = 10.0


class RecordingSink:
    """Keeps every block it is sent."""

    def __init__(self) -> None:
        self.blocks: list[tuple[int, np.ndarray, int, float]] = []

    def send(self, sensor: int, values: F32Array, t0_ms: int, period_ms: float) -> int:
        self.blocks.append((sensor, values.copy(), t0_ms, period_ms))
        return int(np.count_nonzero(~np.isnan(values)))

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        pass


def models(rates: tuple[float, ...] = (10.0, 1.0, 0.5)) -> list[SignalModel]:
    kinds = ("pipe.pressure", "pipe.flow", "flood.level")
    return [build_model(SimSensor(f"S{i}", kinds[i % 3], "site", r), T0, 3,
                        [Burst(5.0)] if kinds[i % 3] != "flood.level" else [])
            for i, r in enumerate(rates)]


# ---------------------------------------------------------------- replay


def test_fast_replay_sends_every_sample_once_in_order_with_its_simulated_time() -> None:
    ms = models()
    sinks = [RecordingSink() for _ in ms]
    report = replay(ms, sinks, ReplayPlan(T0, duration_s=25.0, tick_s=2.0, speed=None, chunk_s=3.0))
    assert report.stopped_by == "duration" and report.configured_rate is None
    assert report.samples == 250 + 25 + 13 and report.sim_s == 25.0 and report.ticks == 13
    for i, (m, sink) in enumerate(zip(ms, sinks, strict=True)):
        got = np.concatenate([b[1] for b in sink.blocks])
        want = m.render(0, len(got)).astype(np.float32)
        np.testing.assert_array_equal(got, want)
        period = 1000.0 / m.sensor.rate_hz
        first = 0
        for sensor, values, t0_ms, dt in sink.blocks:
            assert sensor == i and dt == period
            assert t0_ms == T0 + round(first * period)  # RawBlock t0 = time of the block's first sample
            first += len(values)


def test_replay_stops_before_the_tick_that_would_pass_max_samples() -> None:
    ms = models((10.0,))
    report = replay(ms, [RecordingSink()], ReplayPlan(T0, duration_s=100.0, tick_s=1.0, speed=None,
                                                      max_samples=95))
    assert report.stopped_by == "count" and report.samples == 90 and report.sim_s == 9.0


def test_paced_replay_keeps_the_pace_and_stops_on_request() -> None:
    ms = models((20.0, 20.0))
    plan = ReplayPlan(T0, duration_s=4.0, tick_s=0.5, speed=20.0)
    started = time.monotonic()
    report = replay(ms, [RecordingSink(), RecordingSink()], plan)
    assert time.monotonic() - started >= 4.0 / 20.0
    assert report.configured_rate == pytest.approx(40.0 * 20.0)
    assert report.samples == 160 and report.late_ticks == 0
    stop = threading.Event()
    stop.set()
    stopped = replay(ms, [RecordingSink(), RecordingSink()], ReplayPlan(T0, 1000.0, speed=1.0), stop=stop)
    assert stopped.stopped_by == "stop" and stopped.samples == 0


def test_fleet_blocks_equal_direct_renders_whatever_the_chunking() -> None:
    ms = models((7.0, 3.0))
    fleet = Fleet(ms, chunk_s=4.0, tick_s=1.0)
    lo = index_at(0.0, fleet.rates)
    for k in range(1, 30):
        hi = index_at(k * 0.7, fleet.rates)
        for s in range(2):
            np.testing.assert_array_equal(fleet.block(s, int(lo[s]), int(hi[s])),
                                          ms[s].render(int(lo[s]), int(hi[s] - lo[s])).astype(np.float32))
        lo = hi


def test_a_dropout_splits_a_block_around_its_missing_samples() -> None:
    values = np.array([1, 2, np.nan, np.nan, 5, np.nan], dtype=np.float32)
    assert present_runs(values) == [(0, 2), (4, 5)]
    assert present_runs(np.array([np.inf, 1.0], dtype=np.float32)) == [(0, 2)]  # an impossible value is sent


# ---------------------------------------------------------------- MQTT


@pytest.mark.integration
def test_raw_blocks_reach_a_subscriber_with_time_seq_and_no_missing_samples(broker: MosquittoServer) -> None:
    prefix = "test/transports"
    received: list[tuple[str, bytes]] = []
    done = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-transports-sub")
    subscribed = threading.Event()
    sub.on_subscribe = lambda c, u, m, r, p: subscribed.set()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, msg.payload))
        if len(received) >= 4:
            done.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe(f"{prefix}/raw/+", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(WAIT_S)
        publisher = MqttPublisher(MqttSettings(url=broker.url, prefix=prefix), client_id="test-transports-pub",
                                  qos=1).connect()
        try:
            sink = RawBlockSink(publisher, prefix, ["YZ-P-1", "YZ-P-2"])
            assert sink.send(0, np.array([0.4, 0.41, 0.42], dtype=np.float32), T0, 100.0) == 3
            assert sink.send(1, np.array([1.0, np.nan, np.nan, 4.0, 5.0], dtype=np.float32), T0, 1000.0) == 3
            assert sink.send(0, np.array([0.43], dtype=np.float32), T0 + 300, 100.0) == 1
            assert sink.flush(WAIT_S)
        finally:
            publisher.close()
        assert done.wait(WAIT_S), received
    finally:
        sub.loop_stop()
        sub.disconnect()
    blocks: dict[str, list[RawBlock]] = {}
    for topic, payload in received:
        sensor = topic.rsplit("/", 1)[1]
        blocks.setdefault(sensor, []).append(decode_raw_block(payload, sensor))
    first, second = blocks["YZ-P-1"]
    np.testing.assert_array_equal(first.values, np.array([0.4, 0.41, 0.42], dtype=np.float32))
    assert (first.t0, first.dt, first.seq, second.seq, second.t0) == (T0, 100.0, 0, 1, T0 + 300)
    split = blocks["YZ-P-2"]
    assert [b.values.tolist() for b in split] == [[1.0], [4.0, 5.0]]
    assert [int(b.sample_times(0)[0]) for b in split] == [T0, T0 + 3000]
    assert [b.seq for b in split] == [0, 1]


@pytest.mark.integration
def test_publisher_reports_a_broker_that_is_not_there() -> None:
    from simulators.servers import free_port
    from simulators.transports.base import TransportError

    settings = MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(TransportError, match="cannot connect"):
        MqttPublisher(settings, client_id="test-nobody").connect(timeout_s=2.0)


@pytest.mark.integration
def test_publisher_keeps_publishing_through_a_broker_restart(tmp_path: Path) -> None:
    """A replay outlives a broker restart: messages published while it is away do not crash the
    backpressure, and publishing goes on once it is back."""
    with MosquittoServer(workdir=tmp_path) as server:
        publisher = MqttPublisher(MqttSettings(url=server.url), client_id="test-restart-pub", qos=1,
                                  max_pending=64).connect()
        try:
            server.stop()
            deadline = time.monotonic() + WAIT_S
            while publisher.client.is_connected():  # paho has no disconnect event to wait on here
                assert time.monotonic() < deadline, "the publisher never noticed the broker was gone"
                time.sleep(0.05)
            for i in range(5 * 64):
                publisher.publish(f"t/away/{i}", b"x")
            server.start()
            for i in range(5 * 64):
                publisher.publish(f"t/back/{i}", b"x")
            assert publisher.counters.messages == 10 * 64
        finally:
            publisher.close()


# ---------------------------------------------------------------- serial


def read_frames(fd: int, decoder: FrameDecoder, want: int) -> list[SampleFrame]:
    frames: list[SampleFrame] = []
    deadline = time.monotonic() + WAIT_S
    while len(frames) < want and time.monotonic() < deadline:
        import select

        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            frames += [f for f in decoder.feed(os.read(fd, 65536)) if isinstance(f, SampleFrame)]
    return frames


@pytest.mark.integration
def test_serial_nodes_write_frames_an_agent_decodes_from_the_stable_link(tmp_path: Path) -> None:
    port = VirtualSerialPort(tmp_path / "jfb-serial")
    sink = SerialNodeSink([SerialAddress(port, 17), None, SerialAddress(port, 18)], [10.0, 1.0, 2.0])
    reader = os.open(tmp_path / "jfb-serial", os.O_RDONLY | os.O_NOCTTY)
    try:
        assert os.readlink(tmp_path / "jfb-serial") == port.device
        assert sink.send(0, np.arange(5, dtype=np.float32), T0, 100.0) == 5
        assert sink.send(2, np.array([7.5, np.nan, 8.5], dtype=np.float32), T0, 500.0) == 2
        with pytest.raises(ValueError, match="no serial address"):
            sink.send(1, np.ones(2, dtype=np.float32), T0, 1000.0)
        frames = read_frames(reader, FrameDecoder(), 3)
    finally:
        os.close(reader)
        sink.close()
    assert [(f.node, f.channel, f.seq, f.period_us) for f in frames] == [
        (17, 0, 0, 100_000), (18, 0, 0, 500_000), (18, 0, 1, 500_000)]
    assert frames[0].values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [f.values.tolist() for f in frames[1:]] == [[7.5], [8.5]]
    assert not (tmp_path / "jfb-serial").exists()  # the link goes with the port


@pytest.mark.integration
def test_a_serial_port_nobody_reads_drops_frames_instead_of_blocking() -> None:
    port = VirtualSerialPort()
    sink = SerialNodeSink([SerialAddress(port, 1)], [100.0])
    try:
        started = time.monotonic()
        for _ in range(200):
            sink.send(0, np.ones(1000, dtype=np.float32), T0, 10.0)
        assert time.monotonic() - started < 5.0
    finally:
        sink.close()
    assert port.counters.dropped_frames > 0 and port.counters.frames > 0


# ---------------------------------------------------------------- Modbus


@pytest.fixture
def modbus_line() -> Iterator[tuple[NullModem, ModbusUnits]]:
    line = NullModem()
    units = ModbusUnits(line.server_device, [1, 2])
    try:
        yield line, units
    finally:
        units.close()
        line.close()


@pytest.mark.integration
def test_modbus_units_answer_their_sensors_latest_value(modbus_line: tuple[NullModem, ModbusUnits]) -> None:
    line, units = modbus_line
    sink = ModbusSink([(units, 1), None, (units, 2)])
    client = ModbusSerialClient(line.path, framer=FramerType.RTU, baudrate=115200, timeout=1.0, retries=1)
    assert client.connect()
    try:
        before = client.read_holding_registers(0, count=2, device_id=1)
        assert before.isError()  # no sample yet: the transmitter has nothing to say
        assert sink.send(0, np.array([0.41, 0.45], dtype=np.float32), T0, 1000.0) == 2
        sink.send(2, np.array([np.nan, 17.25], dtype=np.float32), T0, 1000.0)
        one = client.read_holding_registers(0, count=2, device_id=1)
        two = client.read_input_registers(0, count=2, device_id=2)
        assert register_value(one.registers, "float32") == pytest.approx(0.45, abs=1e-6)
        assert register_value(two.registers, "float32") == 17.25
        sink.send(0, np.array([np.nan], dtype=np.float32), T0, 1000.0)  # a dropout: the unit goes quiet
        assert client.read_holding_registers(0, count=2, device_id=1).isError()
    finally:
        client.close()
    assert units.polls >= 4


# ---------------------------------------------------------------- a scenario over every transport


def tiny_scenario(url: str) -> Scenario:
    sensors = (
        ScenarioSensor(SimSensor("M-1", "pipe.pressure", "a", 10.0), "town", "mqtt", (), ()),
        ScenarioSensor(SimSensor("S-1", "tunnel.temp", "b", 2.0), "town", "serial", (), (Dropout(1.0, 1.0),)),
        ScenarioSensor(SimSensor("B-1", "tunnel.co", "b", 1.0), "town", "modbus", (), ()),
    )
    return Scenario("tiny", "", "yuzhong", 1, 3.0, "now", 0.5, url, "test/scenario",
                    (Township("town", "town-agent", sensors),))


@pytest.mark.integration
def test_open_transports_wires_each_sensor_to_its_line(broker: MosquittoServer, tmp_path: Path) -> None:
    sc = tiny_scenario(broker.url)
    options = RunOptions(mqtt=MqttSettings(url=broker.url, prefix=sc.prefix), speed=None, run_dir=tmp_path,
                         client_id="test-open-transports")
    transports = open_transports(sc, options)
    try:
        assert (tmp_path / "town-serial").is_symlink() and (tmp_path / "town-modbus").is_symlink()
        ms = sc.build_models(T0)
        reader = os.open(tmp_path / "town-serial", os.O_RDONLY | os.O_NOCTTY)
        try:
            report = replay(ms, transports.sinks, ReplayPlan(T0, 3.0, tick_s=0.5, speed=None))
            frames = read_frames(reader, FrameDecoder(), 4)
        finally:
            os.close(reader)
        assert transports.flush(WAIT_S)
        # 30 MQTT samples, 4 of 6 serial samples (a 1 s dropout), the Modbus unit's 3
        assert report.samples == 30 + 4 + 3
        assert sum(len(f.values) for f in frames) == 4
        assert all(f.node == 1 and f.period_us == 500_000 for f in frames)
    finally:
        transports.close()
    assert not (tmp_path / "town-serial").exists()


# ---------------------------------------------------------------- command line


@pytest.mark.integration
def test_cli_run_fast_writes_the_truth_and_reports_its_rate(broker: MosquittoServer, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from simulators.cli import simulate
    from simulators.truth import read_truth

    runner = CliRunner()
    out = runner.invoke(simulate, [
        "run", "mixed", "--fast", "--duration", "60", "--transport", "mqtt", "--url", broker.url,
        "--prefix", "test/cli-run", "--truth", str(tmp_path / "truth.json"), "--collect",
        str(tmp_path / "alerts.json"), "--drain-s", "0", "--run-dir", str(tmp_path), "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "as fast as possible" in out.output and "ended by duration" in out.output
    truth = read_truth(tmp_path / "truth.json")
    assert truth.scenario == "mixed" and not truth.paced and truth.t1_ms - truth.t0_ms == 60_000
    assert len(truth.sensors) == 37 and any(e.cls == "burst" for e in truth.events)
    assert (tmp_path / "alerts.json").read_text().strip() == "[]"  # no agent listens in this test
    bad = runner.invoke(simulate, ["run", "mixed", "--start", "yesterday", "--url", broker.url])
    assert bad.exit_code == 2 and "--start" in bad.output


@pytest.mark.integration
def test_cli_load_reports_configured_and_achieved_rate(broker: MosquittoServer) -> None:
    from click.testing import CliRunner

    from simulators.cli import simulate

    out = CliRunner().invoke(simulate, ["load", "--sensors", "200", "--rate", "5", "--duration", "2",
                                        "--block-s", "0.5", "--url", broker.url, "--no-progress"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("{"))
    import json

    row = json.loads(line)
    assert row["configured_samples_per_s"] == 1000.0 and row["samples"] == 2000
    assert row["achieved_samples_per_s"] > 500 and row["late_ticks"] == 0
