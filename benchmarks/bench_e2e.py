"""End to end: simulator -> Mosquitto -> agent(s) -> Mosquitto -> gateway -> VictoriaMetrics.

Run: `python -m benchmarks.bench_e2e` (20 k and 100 k samples/s from 500 sensors, and 100 k
samples/s from 5000 sensors; 30 s each, about 3 min) or `--quick` (10 k samples/s for 10 s, about
20 s); `--write` rewrites the section "## End to end" of benchmarks/RESULTS.md.

Everything is real and on this machine: a local Mosquitto and VictoriaMetrics, the agents and
the gateway as `lifeline agent` / `lifeline gateway` processes, and the simulator in a process of
its own replaying a synthetic district (healthy sensors of several kinds, each sending a RawBlock
every `tick_s`) paced in real time, with pipe bursts (`low`) and out-of-range readings (`range`)
injected on pressure sensors at a steady rate so that alerts flow throughout. Measured:
- samples/s the simulator sent, and samples/s the agents processed (their status `samples`), up
  to the moment they had processed everything sent;
- alert latency from the alert's sample time (the sample that changed the level) to (a) the
  alert at a broker subscriber, (b) the alert routed by the gateway to the ops topic, and (c)
  the alert point visible in the store (polled; the poll period bounds the resolution); also
  (a) from the moment the sample's RawBlock left the simulator, which takes out the wait for the
  end of the block;
- rows the store received (summary rows and alert points) and samples covered by the stored
  summaries (their `n`);
- CPU (average and busiest second) and peak RSS (VmHWM) of every agent, the gateway and the
  simulator, from /proc.
Every wait is bounded and everything started is stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, Self

import numpy as np
import paho.mqtt.client as mqtt

from benchmarks.machine import describe_machine
from benchmarks.procstat import cpu_seconds, memory_mib
from benchmarks.suite import write_section
from lifeline.config import MqttSettings
from lifeline.contract import decode_alert
from lifeline.errors import DecodeError, LifelineError
from lifeline.mqtt import make_client
from simulators.agent_config import AgentSettings, write_agent_configs
from simulators.collect import AlertCollector
from simulators.demo import Child, gateway_toml, start_child
from simulators.runner import RunOptions, run_scenario
from simulators.scenario import Scenario, synthetic_scenario
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from simulators.signals import Burst, OutOfRange

PREFIX: Final = "lifeline/v1"
SECTION: Final = "## End to end"
#: Kinds of the synthetic district, cycled over the sensors; events go to the pressure sensors.
KINDS: Final = ("pipe.pressure", "pipe.flow", "bridge.accel", "tunnel.co")
#: Seconds between the agents' retained status updates (the resolution of "processed").
STATUS_INTERVAL_S: Final = 0.25
#: Target seconds between two reads of the store's alert points.
STORE_POLL_S: Final = 0.1
#: Seconds between two CPU readings of the processes (the "busiest second").
CPU_SAMPLE_S: Final = 1.0
READY_TIMEOUT_S: Final = 180.0
DRAIN_TIMEOUT_S: Final = 60.0
STORE_TIMEOUT_S: Final = 20.0
PRECOMPILE_TIMEOUT_S: Final = 600.0


@dataclass(frozen=True)
class E2ECase:
    """One run of the chain: load, shape of the district and how alerts are provoked."""

    rate: float  # samples/s the simulator is paced at
    sensors: int = 500
    duration_s: float = 30.0
    tick_s: float = 0.2  # seconds of samples per RawBlock
    agents: int = 1
    window_s: float = 1.0  # agent summary window: one store row per sensor per window
    events_per_s: float = 2.0
    qos: int = 1
    seed: int = 1

    @property
    def rate_hz(self) -> float:
        """Samples per second of each sensor."""
        return self.rate / self.sensors

    def describe(self) -> str:
        return (f"{self.rate:,.0f} samples/s: {self.sensors} sensors x {self.rate_hz:g} Hz, RawBlocks of "
                f"{self.tick_s:g} s (QoS {self.qos}), {self.agents} agent(s), {self.duration_s:g} s")


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles in milliseconds over `count` alerts."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Percentiles:
        if not values_ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        arr = np.asarray(values_ms, dtype=np.float64)
        p50, p95, p99 = np.percentile(arr, [50, 95, 99])
        return cls(len(arr), float(p50), float(p95), float(p99), float(arr.max()))


@dataclass(frozen=True)
class ProcessFigures:
    """CPU and memory of one process over the measured run."""

    name: str
    cpu_avg_pct: float
    cpu_peak_pct: float
    peak_rss_mib: float


@dataclass(frozen=True)
class E2EFigures:
    """What one case measured."""

    case: E2ECase
    configured_rate: float
    sent_samples: int
    sent_rate: float
    late_ticks: int
    max_lag_s: float
    processed_samples: int
    processed_rate: float
    caught_up_s: float  # after the last block left, until the agents had processed everything
    stored_samples: int
    summary_rows: int
    alert_points: int
    store_rows_per_s: float
    alerts: int
    to_subscriber: Percentiles
    block_to_subscriber: Percentiles
    to_ops: Percentiles
    to_store: Percentiles
    store_poll_s: float
    processes: tuple[ProcessFigures, ...]
    agent_startup_s: float  # from starting the agent processes until all were online and subscribed
    wall_s: float


#: The cases of a full run: the two loads of the issue, then many sensors in 1 s blocks (message-heavy).
FULL_CASES: Final = (
    E2ECase(rate=20_000),
    E2ECase(rate=100_000),
    E2ECase(rate=100_000, sensors=5000, tick_s=1.0),
)
#: The case of a quick run.
QUICK_CASES: Final = (E2ECase(rate=10_000, duration_s=10.0),)


# --------------------------------------------------------------------------- the district


def bench_scenario(case: E2ECase, mqtt_url: str) -> Scenario:
    """A synthetic district of `case.sensors` healthy sensors with events at `case.events_per_s`."""
    base = synthetic_scenario(sensors=case.sensors, rate_hz=case.rate_hz, duration_s=case.duration_s,
                              kinds=KINDS, agents=case.agents, seed=case.seed, district="bench",
                              tick_s=case.tick_s, mqtt_url=mqtt_url, prefix=PREFIX)
    return with_events(base, case.events_per_s, case.duration_s)


def with_events(scenario: Scenario, events_per_s: float, duration_s: float, *, first_s: float = 2.0,
                event_s: float = 3.0) -> Scenario:
    """Bursts and out-of-range readings, alternately, on the pressure sensors in turn, every 1/rate s.

    Each lasts `event_s` and then clears, so every one raises and clears alerts within the run;
    a sensor gets its next one only after the previous one ended (fewer events if there are few
    pressure sensors).
    """
    pressure = [s.id for s in scenario.sensors if s.sim.kind == "pipe.pressure"]
    if not pressure or events_per_s <= 0:
        return scenario
    gap_s = max(1.0 / events_per_s, (event_s + 2.0) / len(pressure))
    events: dict[str, list[Any]] = {}
    faults: dict[str, list[Any]] = {}
    at_s, k = first_s, 0
    while at_s + event_s + 1.0 < duration_s:
        sensor = pressure[k % len(pressure)]
        if k % 2 == 0:
            events.setdefault(sensor, []).append(Burst(at_s=at_s, drop_mpa=0.25, rise_s=0.3, duration_s=event_s))
        else:
            faults.setdefault(sensor, []).append(OutOfRange(at_s=at_s, duration_s=event_s))
        at_s, k = at_s + gap_s, k + 1
    townships = tuple(
        replace(t, sensors=tuple(
            replace(s, events=s.events + tuple(events.get(s.id, ())), faults=s.faults + tuple(faults.get(s.id, ())))
            for s in t.sensors))
        for t in scenario.townships)
    return scenario.with_changes(townships=townships)


# --------------------------------------------------------------------------- measuring from outside


class ProcessSampler:
    """CPU of some processes read every `interval_s` on a thread: average and busiest interval."""

    def __init__(self, interval_s: float = CPU_SAMPLE_S) -> None:
        self.interval_s = interval_s
        self._pids: dict[str, int] = {}
        self._first: dict[str, tuple[float, float]] = {}
        self._last: dict[str, tuple[float, float]] = {}
        self._peak: dict[str, float] = {}
        self._rss: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)

    def add(self, name: str, pid: int) -> None:
        """Watch one more process from now on."""
        with self._lock:
            self._pids[name] = pid
            self._read(name, pid)

    def start(self) -> ProcessSampler:
        self._thread.start()
        return self

    def _read(self, name: str, pid: int) -> None:
        try:
            now, cpu = time.monotonic(), cpu_seconds(pid)
            self._rss[name] = memory_mib(pid)["VmHWM"]
        except (OSError, IndexError, ValueError):
            return  # the process is gone: keep what was read while it ran
        last = self._last.get(name)
        if last is not None and now - last[0] > 0:
            self._peak[name] = max(self._peak.get(name, 0.0), 100 * (cpu - last[1]) / (now - last[0]))
        self._first.setdefault(name, (now, cpu))
        self._last[name] = (now, cpu)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                for name, pid in self._pids.items():
                    self._read(name, pid)

    def stop(self) -> tuple[ProcessFigures, ...]:
        """Take a last reading (the processes must still run) and return the figures."""
        self._stop.set()
        self._thread.join(5)
        out = []
        with self._lock:
            for name, pid in self._pids.items():
                self._read(name, pid)
                first, last = self._first.get(name), self._last.get(name)
                if first is None or last is None:
                    continue
                span = last[0] - first[0]
                avg = 100 * (last[1] - first[1]) / span if span > 0 else math.nan
                out.append(ProcessFigures(name, avg, self._peak.get(name, avg), self._rss.get(name, math.nan)))
        return tuple(out)


class TopicListener:
    """A paho subscriber on some topic filters (re-subscribing on every connect), run as a context
    manager; subclasses say what a message means in `_on_message`."""

    def __init__(self, settings: MqttSettings, client: mqtt.Client, filters: list[tuple[str, int]], *,
                 what: str) -> None:
        self.settings = settings
        self.client = client
        self._what = what
        self._subscribed = threading.Event()
        client.on_connect = lambda c, u, f, r, p: c.subscribe(filters)
        client.on_subscribe = lambda c, u, mid, r, p: self._subscribed.set()
        client.on_message = self._on_message

    def __enter__(self) -> Self:
        self.client.connect(self.settings.host, self.settings.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.__exit__()
            raise LifelineError(f"could not subscribe to {self._what} on {self.settings.url}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        raise NotImplementedError


class OpsListener(TopicListener):
    """Arrival time of each alert the gateway routes to the township tier (every routed alert)."""

    def __init__(self, settings: MqttSettings, *, client_id: str = "lifeline-bench-ops") -> None:
        self.arrivals: dict[str, tuple[int, int]] = {}  # alert id -> (sample ts, received ms)
        self._lock = threading.Lock()
        super().__init__(settings, make_client(settings, client_id), [(f"{settings.prefix}/ops/township/+", 1)],
                         what="the ops topics")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received = time.time_ns() // 1_000_000
        try:
            alert = decode_alert(msg.payload)
        except DecodeError:
            return
        with self._lock:
            self.arrivals.setdefault(alert.id, (alert.ts, received))

    def latencies_ms(self, t0_ms: int, t1_ms: int) -> list[float]:
        """Sample time to arrival of every routed alert whose sample lies in [t0_ms, t1_ms]."""
        with self._lock:
            return [float(r - ts) for ts, r in self.arrivals.values() if t0_ms <= ts <= t1_ms]


class StorePoller:
    """Reads the store's alert points every `interval_s` and notes when each was first seen."""

    def __init__(self, store: VictoriaMetricsServer, start_ms: int, interval_s: float = STORE_POLL_S) -> None:
        self.store = store
        self.start_ms = start_ms
        self.interval_s = interval_s
        self.first_seen: dict[tuple[str, str, int, int], int] = {}
        self.polls = 0
        self._span_s = 0.0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-store-poll", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.is_set():
            tick = time.monotonic()
            try:
                series = self.store.export('{__name__="alert_level"}', start_ms=self.start_ms)
            except OSError:
                series = []  # the store is busy or stopping; the next poll tries again
            seen = time.time_ns() // 1_000_000
            with self._changed:
                for s in series:
                    sensor, rule = s.metric.get("sensor", ""), s.metric.get("rule", "")
                    for ts, level in zip(s.timestamps, s.values, strict=True):
                        self.first_seen.setdefault((sensor, rule, int(ts), int(level)), seen)
                self.polls += 1
                self._span_s = time.monotonic() - began
                self._changed.notify_all()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - tick)))

    @property
    def period_s(self) -> float:
        """Mean time between two polls (the resolution of the store latency)."""
        with self._changed:
            return self._span_s / self.polls if self.polls else math.nan

    def wait_for(self, keys: set[tuple[str, str, int, int]], timeout_s: float) -> bool:
        """Block until every key was seen in the store, or `timeout_s` passes."""
        with self._changed:
            return self._changed.wait_for(lambda: keys <= self.first_seen.keys(), timeout_s)


def store_rows(store: VictoriaMetricsServer, start_ms: int) -> tuple[int, int, int]:
    """Summary rows, samples they cover (sum of `n`) and alert points in the store since `start_ms`."""
    readings = store.export('{__name__="reading_n"}', start_ms=start_ms)
    alerts = store.export('{__name__="alert_level"}', start_ms=start_ms)
    rows = sum(len(s.values) for s in readings)
    samples = int(sum(sum(s.values) for s in readings))
    return rows, samples, sum(len(s.values) for s in alerts)


# --------------------------------------------------------------------------- the simulator process


def _replay_child(scenario: Scenario, options: RunOptions, out: Any, stop: Any = None) -> None:
    """Run in the simulator's process: replay the scenario (until `stop`, if given, is set) and send
    back what was sent."""
    try:
        result = run_scenario(scenario, options, stop=stop)
        r = result.report
        out.put({"samples": r.samples, "agent_samples": result.agent_samples, "wall_s": r.wall_s,
                 "configured": r.configured_rate, "achieved": r.achieved_rate, "late_ticks": r.late_ticks,
                 "max_lag_s": r.max_lag_s, "t0_ms": result.truth.t0_ms, "delivered": result.delivered})
    except (LifelineError, OSError, ValueError) as exc:  # reported to the parent, which owns the errors
        out.put({"error": f"{type(exc).__name__}: {exc}"})


@contextlib.contextmanager
def simulator_process(scenario: Scenario, options: RunOptions,
                      stop: Any = None) -> Iterator[tuple[Any, Any]]:
    """The replay in a process of its own (so the measuring threads here do not slow it down).

    `stop`, a `multiprocessing` Event of the spawn context, ends the replay early when set.
    """
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_replay_child, args=(scenario, options, out, stop), name="bench-simulator",
                       daemon=True)
    proc.start()
    try:
        yield proc, out
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# --------------------------------------------------------------------------- the run


def precompile(config: Path, workdir: Path) -> None:
    """Fill the kernels' on-disk cache once, so the agents start at once (quick when already warm)."""
    log = workdir / "precompile.log"
    with log.open("wb") as out:
        done = subprocess.run([sys.executable, "-m", "lifeline.cli", "agent", "--config", str(config),
                               "--precompile"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=PRECOMPILE_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise LifelineError(f"precompiling the kernels failed; log {log}:\n{log.read_text()[-1500:]}")


def alive_check(children: Sequence[Child]) -> Callable[[], None]:
    def check() -> None:
        for child in children:
            child.check_alive()
    return check


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, check: Callable[[], None],
               step_s: float = 0.1) -> None:
    """Poll `predicate` (for state with no change event, e.g. the store) until true; LifelineError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        check()
        if time.monotonic() > deadline:
            raise LifelineError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(step_s)


def wait_agents_ready(collector: AlertCollector, agents: Sequence[str], timeout_s: float,
                      check: Callable[[], None]) -> None:
    """Wait until every agent reported online with its raw input subscribed (checked on each status)."""
    def ready(c: AlertCollector) -> bool:
        rows = [c.statuses.get(a, {}) for a in agents]
        return all(r.get("state") == "online" and r.get("raw_connected", True) for r in rows)

    deadline = time.monotonic() + timeout_s
    while not collector.wait_for(ready, 1.0):
        check()
        if time.monotonic() > deadline:
            raise LifelineError(f"the agents did not come online within {timeout_s:g} s")


def gateway_ready(store: VictoriaMetricsServer, agents: Sequence[str]) -> bool:
    """The gateway stored every agent's retained status: it is subscribed and writing."""
    try:
        series = store.export('{__name__="agent_status_online"}')
    except OSError:
        return False
    return set(agents) <= {s.metric.get("agent", "") for s in series}


def run_case(case: E2ECase, workdir: Path, *, log: Callable[[str], None] = print) -> E2EFigures:
    """Run the whole chain once at `case.rate` and measure it."""
    started = time.monotonic()
    children: list[Child] = []
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(MosquittoServer(workdir=subdir(workdir, "broker")))
        store = stack.enter_context(VictoriaMetricsServer(workdir=subdir(workdir, "store")))
        settings = MqttSettings(url=broker.url, prefix=PREFIX)
        scenario = bench_scenario(case, broker.url)
        agent_ids = [t.agent for t in scenario.townships]
        configs = write_agent_configs(scenario, workdir / "config", AgentSettings(
            mqtt_url=broker.url, prefix=PREFIX, state_dir=workdir / "state", run_dir=workdir / "run",
            agent_keys={"window_s": case.window_s, "status_interval_s": STATUS_INTERVAL_S}))
        gw_config = workdir / "config" / "gateway.toml"
        gw_config.write_text(gateway_toml(broker, store, workdir / "gateway-state"))
        precompile(configs[0], workdir)
        collector = stack.enter_context(AlertCollector(settings, client_id="lifeline-bench-collect"))
        ops = stack.enter_context(OpsListener(settings))
        stack.callback(stop_children, children)
        agent_startup_s = start_chain(children, configs, gw_config, workdir, collector, store, agent_ids)
        check = alive_check(children)
        base_samples, _ = collector.processed(agent_ids)
        sampler = ProcessSampler()
        for child in children:
            sampler.add(child.name, child.proc.pid)
        start_ms = time.time_ns() // 1_000_000
        log(f"  chain ready in {time.monotonic() - started:.1f} s (agents online {agent_startup_s:.1f} s after "
            f"their start); replaying for {case.duration_s:g} s")
        options = RunOptions(mqtt=settings, speed=1.0, duration_s=case.duration_s, qos=1 if case.qos else 0,
                             run_dir=workdir / "run", client_id="lifeline-bench-sim", tick_s=case.tick_s)
        poller = stack.enter_context(StorePoller(store, start_ms))
        sampler.start()
        replay = replay_in_child(scenario, options, sampler, case.duration_s + 120)
        wanted = base_samples + int(replay["agent_samples"])
        done = collector.wait_for(lambda c: c.processed(agent_ids)[0] >= wanted, DRAIN_TIMEOUT_S)
        caught_up_ms = time.time_ns() // 1_000_000
        processes = sampler.stop()  # CPU over the run: from before the first sample until caught up
        processed = collector.processed(agent_ids)[0] - base_samples
        collector.wait_processed(agent_ids, wanted, timeout_s=15, settle_s=1.0, quiet_s=5.0, check=check)
        # sample times are wall times: sample 0 "happened" at t0, the last block was due at t1
        t0_ms = int(replay["t0_ms"])
        t1_ms = t0_ms + round(case.duration_s * 1000)
        records = [r for r in collector.records() if t0_ms <= r.ts <= t1_ms and r.received_ms is not None]
        keys = [(r.sensor, r.rule, r.ts, r.level) for r in records]
        poller.wait_for(set(keys), STORE_TIMEOUT_S)
        rows, stored_samples, alert_points = _settled_store(store, start_ms, processed, case.window_s)
        poll_s = poller.period_s
        first_seen = dict(poller.first_seen)
        wall = time.monotonic() - started
    if not done:
        log(f"  warning: the agents processed {processed:,} of {int(replay['agent_samples']):,} samples "
            f"within {DRAIN_TIMEOUT_S:g} s")
    return E2EFigures(
        case=case, configured_rate=float(replay["configured"] or 0.0), sent_samples=int(replay["samples"]),
        sent_rate=float(replay["achieved"]), late_ticks=int(replay["late_ticks"]),
        max_lag_s=float(replay["max_lag_s"]), processed_samples=processed,
        processed_rate=processed / max((caught_up_ms - t0_ms) / 1000, 1e-9),
        caught_up_s=(caught_up_ms - t1_ms) / 1000, stored_samples=stored_samples, summary_rows=rows,
        alert_points=alert_points, store_rows_per_s=(rows + alert_points) / max((caught_up_ms - t0_ms) / 1000, 1e-9),
        alerts=len(records),
        to_subscriber=Percentiles.of([float(r.received_ms - r.ts) for r in records if r.received_ms]),
        block_to_subscriber=Percentiles.of(
            [float(r.received_ms - block_sent_ms(r.ts, t0_ms, case.tick_s)) for r in records if r.received_ms]),
        to_ops=Percentiles.of(ops.latencies_ms(t0_ms, t1_ms)),
        to_store=Percentiles.of([float(first_seen[k] - k[2]) for k in keys if k in first_seen]),
        store_poll_s=poll_s, processes=processes, agent_startup_s=agent_startup_s, wall_s=wall,
    )


def start_chain(children: list[Child], configs: Sequence[Path], gw_config: Path, workdir: Path,
                collector: AlertCollector, store: VictoriaMetricsServer, agent_ids: Sequence[str]) -> float:
    """Start the agents, then the gateway once they are online; returns the agents' start-up seconds.

    The started processes are appended to `children` as they start, so the caller stops them
    whatever happens here.
    """
    started = time.monotonic()
    for path in configs:
        children.append(start_child(path.stem, ["agent", "--config", str(path)], workdir))
    check = alive_check(children)
    wait_agents_ready(collector, agent_ids, READY_TIMEOUT_S, check)
    startup_s = time.monotonic() - started
    children.append(start_child("gateway", ["gateway", "--config", str(gw_config)], workdir))
    wait_until(lambda: gateway_ready(store, agent_ids), READY_TIMEOUT_S, "the gateway to store statuses",
               check, step_s=0.25)
    return startup_s


def replay_in_child(scenario: Scenario, options: RunOptions, sampler: ProcessSampler,
                    timeout_s: float) -> dict[str, Any]:
    """Replay in the simulator's process, watched by `sampler`; returns what it sent."""
    with simulator_process(scenario, options) as (sim, out):
        if sim.pid is not None:
            sampler.add("simulator", sim.pid)
        sim.join(timeout_s)
        if sim.is_alive():
            raise LifelineError(f"the simulator did not finish within {timeout_s:g} s")
        try:
            replay: dict[str, Any] = out.get(timeout=10)
        except Exception as exc:  # queue.Empty: the child died without a word
            raise LifelineError(f"the simulator exited with code {sim.exitcode} and no report") from exc
    if "error" in replay:
        raise LifelineError(f"the simulator failed: {replay['error']}")
    return replay


def block_sent_ms(ts: int, t0_ms: int, tick_s: float) -> float:
    """When the RawBlock holding the sample at `ts` was due to leave: the end of its tick."""
    tick_ms = tick_s * 1000
    return t0_ms + (math.floor((ts - t0_ms) / tick_ms + 1e-9) + 1) * tick_ms


def _settled_store(store: VictoriaMetricsServer, start_ms: int, processed: int,
                   window_s: float) -> tuple[int, int, int]:
    """Store counts once the last summary windows are in (bounded: they close on the agents' clock)."""
    deadline = time.monotonic() + STORE_TIMEOUT_S
    last = store_rows(store, start_ms)
    while time.monotonic() < deadline and last[1] < processed:
        time.sleep(window_s + 0.5)  # windows close on the agents' timers; the store has no change event
        now = store_rows(store, start_ms)
        if now == last and now[1] > 0:
            break
        last = now
    return last


def stop_children(children: Sequence[Child]) -> None:
    """Agents first (they flush to the broker), then the gateway (it drains into the store)."""
    for child in sorted(children, key=lambda c: c.name == "gateway"):
        child.stop()


def subdir(workdir: Path, name: str) -> Path:
    path = workdir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- report


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.0f}"


def _n(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.0f}"


READING_NOTES: Final = (
    "How to read it: \"sent\" is the simulator's own pace (below the target when it falls behind on the "
    "shared cores); \"processed\" is the samples the agents report (status `samples`) divided by the time "
    "from the first sample until they had processed the last one, so a lag at the end lowers it, and "
    "\"caught up\" is that lag (the agents report every {status:g} s, which bounds it). \"sample ->\" "
    "latencies start at the sample's own time, so they include the wait for the end of its RawBlock (up "
    "to one block length); \"block sent ->\" starts when the block was due to leave the simulator (which "
    "sends one tick's blocks of every sensor at once, so with many sensors the last ones leave later). "
    "Store latency is the time of the first poll that saw the point (each poll makes VictoriaMetrics "
    "flush its in-memory buffer, which it otherwise does about once a second), an upper bound within "
    "one poll period."
)


def report(figures: Sequence[E2EFigures], command: str, quick: bool) -> str:
    """The RESULTS.md section body for these runs."""
    lines = [*_intro(figures[0].case, command, quick), "", *_throughput_table(figures), "",
             "Alert latency (ms):", "", *_latency_table(figures), "",
             "Processes (CPU in % of one core: average over the run and busiest second; peak RSS = VmHWM):",
             "", *_process_table(figures), "", READING_NOTES.format(status=STATUS_INTERVAL_S)]
    return "\n".join(lines) + "\n"


def _intro(case: E2ECase, command: str, quick: bool) -> list[str]:
    machine = describe_machine()
    return [
        (f"Command: `{command}`{' (quick)' if quick else ''}; {machine.date} UTC, {machine.cpu_model}, "
         f"{machine.cores} cores shared with other work (load average {machine.load_average[0]:.1f} at "
         "the end)."),
        "",
        ("The whole chain on one machine: the simulator (one process, paced in real time, one RawBlock "
         "per sensor per block) -> Mosquitto -> `lifeline agent` -> Mosquitto -> `lifeline gateway` -> "
         "VictoriaMetrics (InfluxDB v2 write API). A synthetic district of pressure, flow, bridge "
         "acceleration and tunnel CO sensors; bursts and out-of-range readings on pressure sensors, "
         f"{case.events_per_s:g} per second, each raising and clearing alerts; agent summary window "
         f"{case.window_s:g} s; RawBlocks at QoS {case.qos}."),
    ]


def _throughput_table(figures: Sequence[E2EFigures]) -> list[str]:
    lines = [("| target samples/s | sensors x Hz | block | messages/s | agents | agents online after "
              "| sent samples/s | processed by the agents /s | caught up after the last block "
              "| samples in stored summaries | store rows/s | alerts |"),
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for f in figures:
        c = f.case
        share = f"{100 * f.stored_samples / f.processed_samples:.1f} %" if f.processed_samples else "-"
        lines.append(
            f"| {c.rate:,.0f} | {c.sensors:,} x {c.rate_hz:g} | {c.tick_s:g} s | {c.sensors / c.tick_s:,.0f} "
            f"| {c.agents} | {f.agent_startup_s:.1f} s | {f.sent_rate:,.0f} | {f.processed_rate:,.0f} "
            f"| {f.caught_up_s:.1f} s | {share} | {f.store_rows_per_s:,.0f} | {f.alerts} |")
    return lines


def _latency_table(figures: Sequence[E2EFigures]) -> list[str]:
    lines = ["| target samples/s | from -> to | alerts | p50 | p95 | p99 | max |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for f in figures:
        paths = [("sample -> alert at a broker subscriber", f.to_subscriber),
                 ("block sent -> alert at a broker subscriber", f.block_to_subscriber),
                 ("sample -> routed by the gateway to ops", f.to_ops),
                 (f"sample -> visible in the store (polled every {f.store_poll_s:.2f} s)", f.to_store)]
        for i, (name, q) in enumerate(paths):
            rate = f"{f.case.rate:,.0f}" if i == 0 else ""
            lines.append(f"| {rate} | {name} | {q.count} | {_ms(q.p50)} | {_ms(q.p95)} | {_ms(q.p99)} "
                         f"| {_ms(q.max)} |")
    return lines


def _process_table(figures: Sequence[E2EFigures]) -> list[str]:
    lines = ["| target samples/s | process | CPU avg | CPU peak | peak RSS MiB |",
             "| ---: | --- | ---: | ---: | ---: |"]
    for f in figures:
        for i, p in enumerate(f.processes):
            rate = f"{f.case.rate:,.0f}" if i == 0 else ""
            lines.append(f"| {rate} | {p.name} | {_n(p.cpu_avg_pct)} % | {_n(p.cpu_peak_pct)} % "
                         f"| {_n(p.peak_rss_mib)} |")
    return lines


def describe(f: E2EFigures) -> str:
    """One line per case for the console."""
    return (f"{f.case.rate:,.0f}/s: sent {f.sent_rate:,.0f}/s ({f.late_ticks} late ticks), processed "
            f"{f.processed_rate:,.0f}/s (caught up {f.caught_up_s:.1f} s after the end), {f.alerts} alerts: "
            f"to subscriber p50 {_ms(f.to_subscriber.p50)} / p99 {_ms(f.to_subscriber.p99)} ms, to ops p50 "
            f"{_ms(f.to_ops.p50)} ms, to store p50 {_ms(f.to_store.p50)} / p99 {_ms(f.to_store.p99)} ms; "
            f"store {f.store_rows_per_s:,.0f} rows/s; "
            + ", ".join(f"{p.name} CPU {_n(p.cpu_avg_pct)} % (peak {_n(p.cpu_peak_pct)} %), "
                        f"RSS {_n(p.peak_rss_mib)} MiB" for p in f.processes))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short case at 10 k samples/s (about 30 s)")
    parser.add_argument("--rate", type=float, nargs="+", default=None,
                        help="samples/s to pace the simulator at, one case each with the options below "
                             "(default: the cases listed above)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per case (default 30; quick 10)")
    parser.add_argument("--sensors", type=int, default=500, help="with --rate: sensors in the district")
    parser.add_argument("--agents", type=int, default=1, help="with --rate: agents (townships) the sensors are split over")
    parser.add_argument("--tick-s", type=float, default=0.2, help="with --rate: seconds of samples per RawBlock")
    parser.add_argument("--events-per-s", type=float, default=2.0, help="with --rate: injected events per second")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="with --rate: QoS of the RawBlocks")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, data)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--write", action="store_true", help="rewrite the section 'End to end' of RESULTS.md")
    args = parser.parse_args(argv)
    # SIGTERM (the suite's timeout) unwinds like Ctrl-C, so the servers and children are stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    if args.rate:
        cases = [E2ECase(rate=rate, sensors=args.sensors, tick_s=args.tick_s, agents=args.agents,
                         events_per_s=args.events_per_s, qos=args.qos) for rate in args.rate]
    else:
        cases = list(QUICK_CASES if args.quick else FULL_CASES)
    if args.duration is not None:
        cases = [replace(c, duration_s=args.duration) for c in cases]
    if not all(1 <= c.duration_s <= 600 and 1 <= c.agents <= c.sensors for c in cases):
        parser.error("need 1 <= --duration <= 600, --sensors >= 1 and 1 <= --agents <= --sensors")
    figures = []
    for case in cases:
        workdir = Path(tempfile.mkdtemp(prefix="lifeline-bench-e2e-"))
        print(f"case {case.describe()}; work directory {workdir}", flush=True)
        try:
            figures.append(run_case(case, workdir, log=lambda s: print(s, flush=True)))
        except LifelineError as exc:
            print(f"bench_e2e: error: {exc}", file=sys.stderr)
            return 1
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        print(describe(figures[-1]), flush=True)
    command = "python -m benchmarks.bench_e2e " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=1) + "\n")
    text = report(figures, command.strip(), args.quick)
    print(text)
    if args.write:
        write_section(SECTION, text, after_header=True)
        print(f"wrote the section '{SECTION}' of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
