"""Replay: simulated sensors sent tick by tick, paced in real time (or `speed` times it) or as fast as possible.

A tick covers `tick_s` simulated seconds; each sensor sends the samples whose time falls in
it as one block. Paced, the block of a tick leaves when its last sample "happens" (wall start
+ tick end / speed); fast, ticks follow one another without waiting. A run ends after its
duration, after `max_samples` samples (the tick that would pass the bound is not sent), or
when `stop` is set. Rendering is done ahead, in chunks of `chunk_s` per sensor whose ends are
staggered over the ticks, so each tick renders only a slice of the fleet and a tick's Python
work per sensor is a slice and a send.

Samples carry their simulated time (RawBlock `t0` = time of sample 0 + index * period), so
the agent's alerts line up with the ground truth whatever the replay speed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lifeline.config import MqttSettings
from simulators.scenario import Scenario, Transport, parse_start
from simulators.signals import SignalModel
from simulators.transports.base import BlockSink, F32Array, TransportError
from simulators.transports.modbus import ModbusSink, ModbusUnits, NullModem
from simulators.transports.mqtt import MqttPublisher, RawBlockSink
from simulators.transports.serial import SerialAddress, SerialNodeSink, VirtualSerialPort
from simulators.transports.wiring import (
    ModbusWire,
    SerialWire,
    modbus_link,
    raw_prefix,
    serial_link,
    wiring,
)
from simulators.truth import GroundTruth, ground_truth

#: Wall seconds a run must be expected to last before the progress display is shown.
PROGRESS_AFTER_S: Final = 10.0
#: A sensor renders at least this many ticks of samples at a time.
CHUNK_TICKS: Final = 10
#: Starting "now", sample 0 is this far ahead, plus BUILD_MS_PER_SENSOR per sensor (model building).
BUILD_LEAD_MS: Final = 300.0
BUILD_MS_PER_SENSOR: Final = 0.15
#: Seconds `run_scenario` waits for the transports to deliver what is queued at the end.
FLUSH_TIMEOUT_S: Final = 60.0

ProgressHook = Callable[["ReplayProgress"], None]


@dataclass(frozen=True)
class ReplayPlan:
    """What to replay: from sample time `t0_ms`, `duration_s` simulated seconds, at `speed`."""

    t0_ms: int
    duration_s: float
    tick_s: float = 1.0
    speed: float | None = 1.0  # None: as fast as possible
    max_samples: int | None = None
    chunk_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.duration_s > 0 or not self.tick_s > 0 or not self.chunk_s > 0:
            raise ValueError("duration_s, tick_s and chunk_s must be > 0")
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")

    @property
    def ticks(self) -> int:
        """Number of ticks in the duration (the last one may be short)."""
        return math.ceil(self.duration_s / self.tick_s - 1e-9)


@dataclass(frozen=True)
class ReplayProgress:
    """Where a replay is: simulated seconds done, samples sent, wall time, lag behind the pace."""

    sim_s: float
    duration_s: float
    samples: int
    wall_s: float
    lag_s: float


@dataclass(frozen=True)
class ReplayReport:
    """How a replay went: what it sent, how long it took, and whether it kept the pace."""

    ticks: int
    samples: int
    blocks: int
    sim_s: float
    wall_s: float
    configured_rate: float | None  # samples per wall second the pace asks for; None when fast
    achieved_rate: float
    late_ticks: int
    max_lag_s: float
    stopped_by: Literal["duration", "count", "stop"]
    per_sensor: tuple[int, ...] = ()  # samples sent per sensor, in model order

    def describe(self) -> str:
        """One line for an operator."""
        pace = ("as fast as possible" if self.configured_rate is None
                else f"configured {self.configured_rate:,.0f} samples/s")
        return (f"{self.samples:,} samples in {self.blocks:,} blocks, {self.sim_s:,.1f} s simulated in "
                f"{self.wall_s:,.1f} s: {self.achieved_rate:,.0f} samples/s ({pace}); "
                f"{self.late_ticks} late tick(s), max lag {self.max_lag_s:.2f} s; ended by {self.stopped_by}")


class Fleet:
    """Signal models rendering ahead in staggered chunks, handing out float32 blocks by sample index."""

    def __init__(self, models: Sequence[SignalModel], *, chunk_s: float = 10.0, tick_s: float = 1.0) -> None:
        self.models = list(models)
        self.rates = np.array([m.sensor.rate_hz for m in models], dtype=np.float64)
        self.periods_ms = 1000.0 / self.rates
        self._chunk = np.maximum(1, np.ceil(chunk_s * self.rates)).astype(np.int64)
        phases = max(1, round(chunk_s / tick_s))
        first = np.ceil(self._chunk * ((np.arange(len(models)) % phases) + 1) / phases)
        self._next_len = np.maximum(1, first).astype(np.int64).tolist()
        self._start = [0] * len(models)
        self._buf: list[F32Array] = [np.empty(0, dtype="<f4") for _ in models]
        self._chunk_list = self._chunk.tolist()

    def block(self, sensor: int, first: int, stop: int) -> F32Array:
        """Samples first..stop-1 of a sensor as little-endian float32 (NaN = no sample)."""
        start, buf = self._start[sensor], self._buf[sensor]
        if first >= start and stop <= start + len(buf):
            return buf[first - start:stop - start]
        count = max(stop - first, self._next_len[sensor])
        self._next_len[sensor] = self._chunk_list[sensor]
        buf = self.models[sensor].render(first, count).astype("<f4")
        self._start[sensor], self._buf[sensor] = first, buf
        return buf[:stop - first]


def index_at(t_s: float, rates: np.ndarray) -> np.ndarray:
    """Per sensor, index of the first sample at or after t_s (as the models' clocks count)."""
    return np.maximum(0, np.ceil(t_s * rates - 1e-9)).astype(np.int64)


def replay(
    models: Sequence[SignalModel], sinks: Sequence[BlockSink], plan: ReplayPlan, *,
    on_progress: ProgressHook | None = None, stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic, anchor: float | None = None,
) -> ReplayReport:
    """Send every sensor's samples tick by tick to its sink; returns what was sent and how fast.

    `anchor` is the `clock()` reading that simulated time 0 corresponds to when paced (default:
    the start of the call).
    """
    if len(models) != len(sinks):
        raise ValueError(f"{len(models)} models but {len(sinks)} sinks")
    stop = stop or threading.Event()
    fleet = Fleet(models, chunk_s=max(plan.chunk_s, CHUNK_TICKS * plan.tick_s), tick_s=plan.tick_s)
    t0s = [m.t0_ms for m in models]
    periods = fleet.periods_ms.tolist()
    per_sensor = [0] * len(models)
    samples = blocks = late = ticks = 0
    max_lag = 0.0
    stopped_by: Literal["duration", "count", "stop"] = "duration"
    lo = index_at(0.0, fleet.rates)
    started = clock() if anchor is None else anchor
    sim_s = 0.0
    for k in range(plan.ticks):
        end_s = min((k + 1) * plan.tick_s, plan.duration_s)
        hi = index_at(end_s, fleet.rates)
        due = np.flatnonzero(hi > lo)
        if plan.max_samples is not None and samples + int((hi - lo).sum()) > plan.max_samples:
            stopped_by = "count"
            break
        if plan.speed is not None:
            lag = clock() - started - end_s / plan.speed
            if lag < 0 and stop.wait(-lag):
                stopped_by = "stop"
                break
            if lag > plan.tick_s / plan.speed:
                late += 1
            max_lag = max(max_lag, lag)
        if stop.is_set():
            stopped_by = "stop"
            break
        first, last = lo.tolist(), hi.tolist()
        for s in due.tolist():
            i0 = first[s]
            sent = sinks[s].send(s, fleet.block(s, i0, last[s]), t0s[s] + round(i0 * periods[s]), periods[s])
            per_sensor[s] += sent
            samples += sent
        blocks += len(due)
        lo = hi
        ticks += 1
        sim_s = end_s
        if on_progress is not None:
            on_progress(ReplayProgress(sim_s, plan.duration_s, samples, clock() - started, max(0.0, max_lag)))
    wall = max(clock() - started, 1e-9)
    configured = None if plan.speed is None else float(fleet.rates.sum()) * plan.speed
    return ReplayReport(ticks, samples, blocks, sim_s, wall, configured, samples / wall, late,
                        max(0.0, max_lag), stopped_by, tuple(per_sensor))


@contextmanager
def progress_display(duration_s: float, *, enabled: bool, console: Console | None = None,
                     title: str = "simulating") -> Iterator[ProgressHook | None]:
    """A rich progress bar fed by replay progress (None when disabled); redrawn at most 4 times a second."""
    if not enabled:
        yield None
        return
    with Progress(TextColumn(f"[bold]{title}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(title, total=duration_s, info="")
        last = [0.0]

        def hook(p: ReplayProgress) -> None:
            if p.wall_s - last[0] < 0.25 and p.sim_s < p.duration_s:
                return
            last[0] = p.wall_s
            rate = p.samples / p.wall_s if p.wall_s > 0 else 0.0
            bar.update(task, completed=p.sim_s,
                       info=f"{p.sim_s:,.0f}/{p.duration_s:,.0f} s sim, {p.samples:,} samples, "
                            f"{rate:,.0f}/s, lag {p.lag_s:.2f} s")

        yield hook


# --------------------------------------------------------------------------- scenario runs


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario: broker, pace, bounds, and where the virtual serial lines live."""

    mqtt: MqttSettings
    speed: float | None = 1.0  # None: as fast as possible
    duration_s: float | None = None  # None: the scenario's
    max_samples: int | None = None
    qos: Literal[0, 1] = 1
    run_dir: Path = Path("/tmp/lifeline-sim")
    start: str | None = None  # None: the scenario's
    client_id: str = "lifeline-sim"
    tick_s: float | None = None  # None: the scenario's


@dataclass
class ScenarioTransports:
    """The sinks of every sensor of a scenario, and what must be closed after the run."""

    sinks: list[BlockSink]
    publisher: MqttPublisher | None = None
    closers: list[BlockSink] = field(default_factory=list)

    def flush(self, timeout_s: float) -> bool:
        """Wait for every transport to deliver what it holds."""
        return all(sink.flush(timeout_s) for sink in self.closers)

    def close(self) -> None:
        """Close every sink and the MQTT connection."""
        for sink in self.closers:
            sink.close()
        if self.publisher is not None:
            self.publisher.close()


def open_transports(scenario: Scenario, options: RunOptions) -> ScenarioTransports:
    """Connect to the broker and open the ptys the scenario's sensors need."""
    sensors = scenario.sensors
    wires = wiring(scenario, options.run_dir)
    transports = ScenarioTransports(sinks=[])
    try:
        per_sensor: list[BlockSink | None] = [None] * len(sensors)
        if any(s.transport == "mqtt" for s in sensors):
            transports.publisher = MqttPublisher(options.mqtt, client_id=options.client_id,
                                                 qos=options.qos).connect()
            prefixes = [raw_prefix(scenario, options.mqtt.prefix, s.township) for s in sensors]
            mqtt_sink = RawBlockSink(transports.publisher, prefixes, [s.id for s in sensors])
            transports.closers.append(mqtt_sink)
            for i, s in enumerate(sensors):
                if s.transport == "mqtt":
                    per_sensor[i] = mqtt_sink
        _open_serial(scenario, options.run_dir, wires, per_sensor, transports)
        _open_modbus(scenario, options.run_dir, wires, per_sensor, transports)
    except BaseException:
        transports.close()
        raise
    transports.sinks = [sink for sink in per_sensor if sink is not None]
    if len(transports.sinks) != len(sensors):
        transports.close()
        raise TransportError("a sensor was left without a transport")
    return transports


def _open_serial(scenario: Scenario, run_dir: Path, wires: dict[str, SerialWire | ModbusWire],
                 per_sensor: list[BlockSink | None], transports: ScenarioTransports) -> None:
    sensors = scenario.sensors
    if not any(s.transport == "serial" for s in sensors):
        return
    ports: dict[str, VirtualSerialPort] = {}
    addresses: list[SerialAddress | None] = [None] * len(sensors)
    for i, s in enumerate(sensors):
        wire = wires.get(s.id)
        if isinstance(wire, SerialWire):
            if s.township not in ports:
                ports[s.township] = VirtualSerialPort(serial_link(run_dir, s.township))
            addresses[i] = SerialAddress(ports[s.township], wire.node, wire.channel)
    sink = SerialNodeSink(addresses, [s.sim.rate_hz for s in sensors])
    transports.closers.append(sink)
    for i, a in enumerate(addresses):
        if a is not None:
            per_sensor[i] = sink


def _open_modbus(scenario: Scenario, run_dir: Path, wires: dict[str, SerialWire | ModbusWire],
                 per_sensor: list[BlockSink | None], transports: ScenarioTransports) -> None:
    sensors = scenario.sensors
    units_by_township: dict[str, list[tuple[int, int]]] = {}
    for i, s in enumerate(sensors):
        wire = wires.get(s.id)
        if isinstance(wire, ModbusWire):
            units_by_township.setdefault(s.township, []).append((i, wire.unit))
    if not units_by_township:
        return
    sink = ModbusSink([None] * len(sensors))
    transports.closers.append(sink)
    for township, members in units_by_township.items():
        line = NullModem(modbus_link(run_dir, township))
        sink.attach(line)
        server = ModbusUnits(line.server_device, [unit for _, unit in members])
        for i, unit in members:
            sink.targets[i] = (server, unit)
            per_sensor[i] = sink


@dataclass(frozen=True)
class RunResult:
    """A finished scenario run: its ground truth and how the replay went."""

    truth: GroundTruth
    report: ReplayReport
    delivered: bool

    @property
    def agent_samples(self) -> int:
        """Samples the agents will count: all but Modbus ones, which they poll at their own pace."""
        transports = [s.transport for s in self.truth.sensors]
        return sum(n for n, t in zip(self.report.per_sensor, transports, strict=True) if t != "modbus")


def run_scenario(
    scenario: Scenario, options: RunOptions, *, on_progress: ProgressHook | None = None,
    stop: threading.Event | None = None, now_ms: int | None = None,
) -> RunResult:
    """Replay a scenario over its transports; returns the ground truth of what was sent."""
    timed = scenario.with_changes(start=options.start or scenario.start)
    duration = options.duration_s or scenario.duration_s
    transports = open_transports(scenario, options)
    try:
        # Starting "now", sample 0 is set a little ahead so that the models are built by then
        # and a paced run's sample times are the wall times they are sent at.
        wall_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        ahead_ms = 0 if parse_start(timed.start) is not None else round(BUILD_LEAD_MS + BUILD_MS_PER_SENSOR
                                                                         * len(scenario.sensors))
        t0_ms = timed.start_ms(wall_ms + ahead_ms)
        anchor = time.monotonic() + ahead_ms / 1000.0
        models = timed.build_models(t0_ms)
        for i, sink in enumerate(transports.sinks):
            if isinstance(sink, ModbusSink):  # a transmitter has a reading from the moment it is polled
                sink.send(i, models[i].render(0, 1).astype("<f4"), t0_ms, 0.0)
        plan = ReplayPlan(t0_ms, duration, tick_s=options.tick_s or scenario.tick_s, speed=options.speed,
                          max_samples=options.max_samples)
        report = replay(models, transports.sinks, plan, on_progress=on_progress, stop=stop,
                        anchor=anchor if options.speed is not None else None)
        delivered = transports.flush(FLUSH_TIMEOUT_S)
    finally:
        transports.close()
    truth = ground_truth(scenario, models, t0_ms=t0_ms, duration_s=report.sim_s,
                         paced=options.speed == 1.0, speed=options.speed)
    return RunResult(truth, report, delivered)


def transport_of(name: str | None) -> Transport | None:
    """A validated transport name (None stays None)."""
    if name is None:
        return None
    if name not in ("mqtt", "serial", "modbus"):
        raise ValueError(f"unknown transport {name!r}; known: mqtt, serial, modbus")
    return name  # type: ignore[return-value]
