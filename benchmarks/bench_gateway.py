"""Gateway throughput into VictoriaMetrics and through Mosquitto.

Run: `python -m benchmarks.bench_gateway` (about 90 s; `--quick` about 50 s).

1. Summary rows into the store, in one run against one VictoriaMetrics, alternating:
   - `influxdb-client alone`: the same points as pre-built line protocol, `batch_size` lines per
     synchronous write (the floor: HTTP + the store's own ingest); 5000 is the gateway's
     default batch size, 20000 shows what larger writes buy;
   - `gateway writer`: MessagePack Summary payloads through the gateway's worker (decode,
     validate, line protocol, batching) and its store writer thread, without the broker;
   - `gateway end to end`: the same payloads published to Mosquitto by another process (as
     agents would) while a `GatewayService` runs, timed from the hand-over to the publisher to
     the gateway's last acknowledgement (MQTT 5, manual acks after the store confirmed).
   A warm-up pass creates every series and fills the gateway's caches (as a running gateway
   has them after the first window), so every timed run rewrites existing series.
2. Alerts end to end through Mosquitto: a backlog queued for the gateway's session, drained by
   1 and by 2 gateway processes in one shared-subscription group; a message counts when it is
   stored, routed to its tiers (PUBACKs in) and acknowledged.

`--write` puts the figures in benchmarks/RESULTS.md (section "## Gateway"); `--quick` shrinks
the loads.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import statistics
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.contract import (
    Alert,
    Summary,
    alert_topic,
    decode_summary,
    summary_topic,
    tiers_for,
)
from gateway.config import GatewayConfig, InfluxSettings
from gateway.counters import GatewayCounters
from gateway.events import BatchDone, Event, Inbound
from gateway.lineproto import PrefixCache, format_table, reading_table
from gateway.pipeline import Pipeline, PipelineSettings
from gateway.registry import Registry
from gateway.service import GatewayService
from gateway.store import InfluxStore
from gateway.writer import StoreWriter
from benchmarks.suite import write_section
from simulators.servers import MosquittoServer, VictoriaMetricsServer

PREFIX = "bench/v1"
BATCH = 5000


# ------------------------------------------------------------------ load


def summary_payloads(
    messages: int, rows: int, start_ms: int, extras: tuple[str, ...]
) -> list[tuple[str, bytes]]:
    """`messages` summaries of `rows` sensors each from 20 agents, one window per 20 messages."""
    rng = np.random.default_rng(0)
    out = []
    for m in range(messages):
        agent = f"bench-agent{m % 20}"
        t1 = start_ms + (m // 20) * 60_000
        s = Summary(
            agent=agent,
            township="bench-town",
            district="bench-d",
            t0=t1 - 60_000,
            t1=t1,
            sensor=[f"{agent}-S{i}" for i in range(rows)],
            kind=["pipe.pressure"] * rows,
            site=[f"site{i % 50}" for i in range(rows)],
            n=np.full(rows, 600),
            min=rng.normal(0.3, 0.05, rows),
            max=rng.normal(0.5, 0.05, rows),
            mean=rng.normal(0.4, 0.05, rows),
            last=rng.normal(0.4, 0.05, rows),
            extra={name: rng.normal(2.0, 0.5, rows) for name in extras},
        )
        out.append((summary_topic(PREFIX, agent), s.encode()))
    return out


def alert_payloads(count: int, start_ms: int) -> tuple[list[tuple[str, bytes]], float]:
    """Level changes of 2000 (sensor, rule) pairs, mostly low levels; payloads, routes per alert."""
    rng = np.random.default_rng(1)
    levels = np.zeros(2000, dtype=np.int64)
    out, routes = [], 0
    for i in range(count):
        pair = int(rng.integers(0, 2000))
        prev = int(levels[pair])
        level = int(rng.choice(5, p=[0.40, 0.30, 0.18, 0.08, 0.04]))
        if level == prev:
            level = 0 if prev else 1
        levels[pair] = level
        routes += len(tiers_for(level, prev))
        a = Alert(
            id=f"bench:{i}",
            agent="bench-agent",
            sensor=f"bench-S{pair // 2}",
            kind="pipe.pressure",
            site=f"site{pair % 50}",
            township="bench-town",
            district=f"bench-d{pair % 8}",
            rule=("high", "low")[pair % 2],
            level=level,
            prev=prev,
            value=0.5 + i * 1e-6,
            ts=start_ms + i,
            seq=i,
            limit=0.6,
        )
        out.append((alert_topic(PREFIX, a.district, a.site, a.sensor), a.encode()))
    return out, routes / count


def queue_backlog(broker: MosquittoServer, payloads: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait until the broker has every message."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()


def gateway_config(
    broker: MosquittoServer,
    store: VictoriaMetricsServer,
    gateway_id: str,
    group: str,
    batch: int = BATCH,
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "mqtt": {"url": broker.url, "prefix": PREFIX},
            "influx": {"url": store.url, "batch_size": batch},
            "gateway": {
                "id": gateway_id,
                "share_group": group,
                "max_inflight": 5000,
                "stats_interval_s": 3600,
            },
        }
    )


# ------------------------------------------------------------------ summary rows


def write_alone(store: VictoriaMetricsServer, bodies: list[bytes]) -> float:
    """Seconds for influxdb-client alone to write pre-built line protocol."""
    with InfluxDBClient(url=store.url, token="", org="lifeline") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        start = time.perf_counter()
        for body in bodies:
            write.write(
                bucket="lifeline", org="lifeline", record=body, write_precision=WritePrecision.MS
            )
        return time.perf_counter() - start


class _NoBroker:
    epoch = 1
    connected = True

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        return 1

    def ack(self, mid: int, qos: int, epoch: int) -> bool:
        return True


class GatewayWriter:
    """The gateway's worker and store writer without a broker, kept warm across runs like a
    long-running gateway (tag prefixes and known ids cached after the first window)."""

    def __init__(self, store: VictoriaMetricsServer, batch: int) -> None:
        self._done: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.counters = GatewayCounters()
        self._sink = InfluxStore(InfluxSettings(url=store.url))
        self._writer = StoreWriter(
            self._sink, on_done=self._done.put, current_epoch=lambda: 1, counters=self.counters
        )
        self._pipeline = Pipeline(
            PipelineSettings(
                prefix=PREFIX,
                gateway_id="bench",
                batch_points=batch,
                registry_interval_s=1e9,
                stats_interval_s=1e9,
            ),
            broker=_NoBroker(),
            writer=self._writer,
            counters=self.counters,
            registry=Registry("bench"),
        )
        self._writer.start()

    def run(self, payloads: list[tuple[str, bytes]]) -> float:
        """Seconds until every payload is stored and acknowledged."""
        pipeline, done = self._pipeline, self._done
        target = self.counters.acked + len(payloads)
        start = time.perf_counter()
        for i, (topic, payload) in enumerate(payloads):
            pipeline.handle(Inbound(topic, payload, i % 65535 + 1, 1, False, 1))
            while not done.empty():
                pipeline.handle(done.get())
            pipeline.poll(inbox_empty=False)
            time.sleep(0)  # let the writer thread take the GIL, as the service's socket reads do
        pipeline.seal()
        while self.counters.acked < target:
            event = done.get(timeout=120)
            assert isinstance(event, BatchDone)
            pipeline.handle(event)
            pipeline.poll(inbox_empty=True)
        return time.perf_counter() - start

    def close(self) -> None:
        self._writer.stop()
        self._sink.close()


def _publisher_process(port: int, orders: Connection) -> None:
    """Child process: publish each list of payloads it is sent, at QoS 1, like agents would."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-agents", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    while (payloads := orders.recv()) is not None:
        for topic, payload in payloads:
            client.publish(topic, payload, qos=1)
    client.loop_stop()
    client.disconnect()


class RunningGateway:
    """A GatewayService in a thread of this process, fed by a publisher in another process."""

    def __init__(self, broker: MosquittoServer, config: GatewayConfig) -> None:
        self.service = GatewayService(config)
        self._thread = threading.Thread(target=self.service.run, name="bench-gateway")
        self._thread.start()
        self._tick = threading.Event()
        while not self.service.link.connected:
            self._tick.wait(0.001)
        ctx = mp.get_context("spawn")
        self._orders, child_end = ctx.Pipe()
        self._publisher = ctx.Process(target=_publisher_process, args=(broker.port, child_end))
        self._publisher.start()

    def run(self, payloads: list[tuple[str, bytes]]) -> float:
        """Seconds from handing the payloads to the publisher until the gateway acknowledged all."""
        target = self.service.counters.acked + len(payloads)
        start = time.perf_counter()
        self._orders.send(payloads)
        while self.service.counters.acked < target:
            self._tick.wait(0.002)
        return time.perf_counter() - start

    def close(self) -> None:
        self._orders.send(None)
        self._publisher.join(60)
        self.service.request_stop()
        self._thread.join(60)


def create_session(config: GatewayConfig) -> None:
    """Connect once and leave, so the broker queues the backlog for this gateway's session."""
    service = GatewayService(config)
    thread = threading.Thread(target=service.run)
    thread.start()
    deadline = time.monotonic() + 20
    while not service.link.connected and time.monotonic() < deadline:
        threading.Event().wait(0.02)
    service.request_stop()
    thread.join(30)


@dataclass(frozen=True)
class RowFigures:
    extras: tuple[str, ...]
    batch: int
    rows: int
    alone_s: list[float]
    writer_s: list[float]
    e2e_s: list[float]

    def rate(self, seconds: float) -> float:
        return self.rows / seconds


def bench_rows(
    messages: int, rows: int, repeats: int, extras: tuple[str, ...], batch: int = BATCH
) -> RowFigures:
    start_ms = int(time.time() * 1000) - 86_400_000
    payloads = summary_payloads(messages, rows, start_ms, extras)
    cache = PrefixCache()
    lines = b"".join(
        format_table(reading_table(decode_summary(p), cache)).body for _, p in payloads
    )
    split = lines.splitlines(keepends=True)
    bodies = [b"".join(split[i : i + batch]) for i in range(0, len(split), batch)]
    with MosquittoServer() as broker, VictoriaMetricsServer() as store:
        gateway = GatewayWriter(store, batch)
        gateway.run(payloads)  # warm-up: creates every series and fills the gateway's caches
        service = RunningGateway(broker, gateway_config(broker, store, "bench", "bench", batch))
        service.run(payloads)  # warm-up of the service's caches
        alone, writer, e2e = [], [], []
        for _ in range(repeats):
            alone.append(write_alone(store, bodies))
            writer.append(gateway.run(payloads))
            e2e.append(service.run(payloads))
        gateway.close()
        service.close()
    return RowFigures(extras, batch, messages * rows, alone, writer, e2e)


# ------------------------------------------------------------------ alerts


def _gateway_process(
    config_json: str,
    acked: Synchronized[int],
    connected_at: Synchronized[float],
    stop: Synchronized[int],
) -> None:
    """Child process: run one gateway; report when it connected and its acknowledged count."""
    service = GatewayService(GatewayConfig.model_validate_json(config_json))
    thread = threading.Thread(target=service.run)
    thread.start()
    tick = threading.Event()
    while not stop.value:
        if not connected_at.value and service.link.connected:
            connected_at.value = time.monotonic()  # system-wide clock on Linux
        acked.value = service.counters.acked
        tick.wait(0.002)
    service.request_stop()
    thread.join(60)


def drain_in_processes(configs: list[GatewayConfig], expected: int) -> float:
    """Messages/s at which gateway processes (one per config) acknowledge `expected` messages,
    timed from the first connection to the last acknowledgement (process start-up excluded)."""
    ctx = mp.get_context("spawn")
    counts = [ctx.Value("q", 0) for _ in configs]
    connected = [ctx.Value("d", 0.0) for _ in configs]
    stop = ctx.Value("b", 0)
    procs = [
        ctx.Process(target=_gateway_process, args=(c.model_dump_json(), n, t, stop))
        for c, n, t in zip(configs, counts, connected)
    ]
    for proc in procs:
        proc.start()
    tick = threading.Event()
    while sum(n.value for n in counts) < expected:
        if not all(p.is_alive() for p in procs):
            raise RuntimeError("a gateway process died")
        tick.wait(0.002)
    end = time.monotonic()
    stop.value = 1
    for proc in procs:
        proc.join(60)
    return expected / (end - min(float(t.value) for t in connected))


@dataclass(frozen=True)
class AlertFigures:
    alerts: int
    routes_per_alert: float
    one_per_s: float
    two_per_s: float


def bench_alerts(count: int) -> AlertFigures:
    start_ms = int(time.time() * 1000) - 3_600_000
    first, routes = alert_payloads(count, start_ms)
    second, _ = alert_payloads(count, start_ms + count)  # the same mix at later times
    with (
        MosquittoServer(extra_config="set_tcp_nodelay true\n") as broker,
        VictoriaMetricsServer() as store,
    ):
        one = gateway_config(broker, store, "bench-a1", "bench-one")
        create_session(one)
        queue_backlog(broker, first)
        one_per_s = drain_in_processes([one], count)
        pair = [gateway_config(broker, store, f"bench-b{i}", "bench-two") for i in (1, 2)]
        for config in pair:  # both members of the group before the backlog arrives
            create_session(config)
        queue_backlog(broker, second)
        two_per_s = drain_in_processes(pair, count)
    return AlertFigures(count, routes, one_per_s, two_per_s)


# ------------------------------------------------------------------ report


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def row_table(figures: list[RowFigures]) -> list[str]:
    lines = [
        "| fields per row | points per write | path | rows/s | time vs influxdb-client alone |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for rows in figures:
        alone = statistics.median(rows.alone_s)
        writer = statistics.median(rows.writer_s)
        e2e = statistics.median(rows.e2e_s)
        fields = "n, min, max, mean, last" + "".join(f", {x}" for x in rows.extras)
        lines += [
            (
                f"| {fields} | {rows.batch} | influxdb-client alone, pre-built line protocol "
                f"| {rows.rate(alone):,.0f} | 1.00x |"
            ),
            (
                f"| | | gateway writer: decode, validate, line protocol, store writer "
                f"| {rows.rate(writer):,.0f} | {writer / alone:.2f}x |"
            ),
            (
                f"| | | gateway end to end through Mosquitto "
                f"| {rows.rate(e2e):,.0f} | {e2e / alone:.2f}x |"
            ),
        ]
    return lines


def report(
    rows: list[RowFigures], alerts: AlertFigures, command: str, load: tuple[float, float]
) -> str:
    routes = alerts.routes_per_alert
    rows_note = (
        f"Summary rows ({rows[0].rows:,} rows in summaries of 1000 sensors; median of "
        f"{len(rows[0].alone_s)} runs of the three paths in turn, after a warm-up):"
    )
    alerts_note = (
        f"Alerts end to end through Mosquitto ({alerts.alerts:,} queued alerts, "
        f"{routes:.2f} tier routes each; stored, routed and acknowledged):"
    )
    lines = [
        f"Command: `{command}`; {machine()}; Mosquitto and VictoriaMetrics on this machine.",
        "",
        rows_note,
        "",
        *row_table(rows),
        "",
        alerts_note,
        "",
        "| gateways in the group | alerts/s | ops publishes/s |",
        "| --- | ---: | ---: |",
        f"| 1 | {alerts.one_per_s:,.0f} | {alerts.one_per_s * routes:,.0f} |",
        f"| 2 (shared subscription) | {alerts.two_per_s:,.0f} | {alerts.two_per_s * routes:,.0f} |",
        "",
        *target_notes(rows, alerts, load),
    ]
    return "\n".join(lines)


def target_notes(
    rows: list[RowFigures], alerts: AlertFigures, load: tuple[float, float]
) -> list[str]:
    """The issue's targets against this run's figures, and what bounds them."""
    default = [r for r in rows if r.batch == BATCH]
    ratios = [
        max(statistics.median(r.writer_s), statistics.median(r.e2e_s))
        / statistics.median(r.alone_s)
        for r in default
    ]
    best = max(r.rate(min(statistics.median(r.writer_s), statistics.median(r.e2e_s))) for r in rows)
    store = max(r.rate(statistics.median(r.alone_s)) for r in rows)
    return [
        (
            f"Targets, this run (1-minute load average {load[0]:.1f} before, {load[1]:.1f} after: "
            "other jobs share these 2 cores, and figures vary by about +-30 % between runs): "
            f"summary rows >= 200 k/s: best gateway path {best:,.0f} rows/s, where influxdb-client "
            f"alone reaches {store:,.0f} (VictoriaMetrics on the same cores is the ceiling); "
            f"within 1.5x of influxdb-client alone: worst {max(ratios):.2f}x at the default batch "
            f"size; >= 10 k alerts/s: {alerts.one_per_s:,.0f}/s per gateway process, "
            f"{alerts.two_per_s:,.0f}/s with two, not met here. An alert costs the gateway "
            "2 + 2 x routes MQTT packets through paho-mqtt, whose pure-Python per-packet work "
            "(MQTT 5 property objects, a Condition per message) is about 80 % of the gateway's "
            "CPU in a profile; more alerts per second take more gateways in the share group, on "
            "more cores."
        ),
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller loads (about 30 s)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    messages, repeats, alert_count = (100, 3, 10_000) if args.quick else (200, 5, 40_000)
    cases: list[tuple[tuple[str, ...], int]] = [
        ((), BATCH),
        (("rms", "f_peak", "f_shift"), BATCH),
        ((), 20_000),
    ]
    rows = [bench_rows(messages, 1000, repeats, extras, batch) for extras, batch in cases]
    alerts = bench_alerts(alert_count)
    command = (
        "python -m benchmarks.bench_gateway"
        + (" --quick" if args.quick else "")
        + (" --write" if args.write else "")
    )
    text = report(rows, alerts, command, (load_before, os.getloadavg()[0]))
    print(text)
    print(f"(benchmark took {time.perf_counter() - began:.0f} s)")
    if args.write:
        write_section("## Gateway", text)


if __name__ == "__main__":
    main()
