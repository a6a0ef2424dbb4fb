"""Outbox throughput (append, then peek+ack) for alert- and summary-sized messages, and the uplink's
drain rate and alert latency through a local Mosquitto.

Run: `python -m benchmarks.bench_outbox` (about 10 s); `--no-uplink` skips the broker part.
Appends commit one message per transaction with synchronous=FULL (an fsync each), as the
pipeline does; the figures therefore depend mostly on the disk's fsync latency.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.outbox import OutboundMessage, Outbox
from edge_agent.uplink import Uplink
from lifeline.config import MqttSettings


@dataclass(frozen=True, slots=True)
class OutboxRates:
    """Messages per second for one payload size."""

    label: str
    size: int
    count: int
    append_per_s: float
    drain_per_s: float

    @property
    def round_trip_per_s(self) -> float:
        return 1.0 / (1.0 / self.append_per_s + 1.0 / self.drain_per_s)


def bench_outbox(directory: Path, label: str, size: int, count: int, batch: int) -> OutboxRates:
    """Append `count` messages one per transaction, then drain them with peek(batch) + ack."""
    priority = "alert" if label == "alert" else "summary"
    message = OutboundMessage(f"lifeline/v1/{priority}/x", b"\xa5" * size, priority)  # type: ignore[arg-type]
    with Outbox(directory / f"{label}.sqlite", max_messages=count * 2) as box:
        started = time.perf_counter()
        for seq in range(1, count + 1):
            box.append([message], last_alert_seq=seq)
        appended = time.perf_counter()
        while rows := box.peek(batch):
            box.ack(row_id for row_id, _ in rows)
        drained = time.perf_counter()
    return OutboxRates(label, size, count, count / (appended - started), count / (drained - appended))


@dataclass(frozen=True, slots=True)
class UplinkFigures:
    """End-to-end figures through a local broker."""

    drain_per_s: float
    latency_ms_median: float
    latency_ms_p95: float


def bench_uplink(directory: Path, backlog: int, samples: int) -> UplinkFigures:
    """Drain a backlog of alerts to Mosquitto, then time single alerts from append to a subscriber."""
    from simulators.servers import MosquittoServer

    with MosquittoServer() as server:
        received = threading.Semaphore(0)
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
        ready = threading.Event()
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/alert/#", qos=1)
        sub.on_subscribe = lambda *args: ready.set()
        sub.on_message = lambda c, u, m: received.release()
        sub.connect("127.0.0.1", server.port)
        sub.loop_start()
        if not ready.wait(10):
            raise RuntimeError("benchmark subscriber got no SUBACK")
        box = Outbox(directory / "uplink.sqlite", max_messages=backlog * 2)
        box.append([OutboundMessage("bench/alert/d/s/x", b"\xa5" * 250, "alert")] * backlog)
        uplink = Uplink(MqttSettings(url=server.url, prefix="bench"), agent_id="bench", outbox=box,
                        status=dict)
        started = time.perf_counter()
        uplink.start()
        if not uplink.wait_drained(120):
            raise RuntimeError("the backlog did not drain within 120 s")
        drain_per_s = backlog / (time.perf_counter() - started)
        for _ in range(backlog):
            received.acquire(timeout=10)
        latencies = []
        for seq in range(samples):
            start = time.perf_counter()
            box.append([OutboundMessage("bench/alert/d/s/x", b"\xa5" * 250, "alert")], last_alert_seq=seq)
            uplink.wake()
            if not received.acquire(timeout=10):
                raise RuntimeError("an alert did not arrive")
            latencies.append((time.perf_counter() - start) * 1000)
        uplink.stop(timeout_s=2)
        box.close()
        sub.loop_stop()
    latencies.sort()
    return UplinkFigures(drain_per_s, statistics.median(latencies), latencies[int(len(latencies) * 0.95)])


@click.command()
@click.option("--alerts", default=2000, show_default=True, help="Alert-sized messages (250 B).")
@click.option("--summaries", default=300, show_default=True, help="Summary-sized messages (50 kB).")
@click.option("--batch", default=200, show_default=True, help="Rows per peek/ack, like the in-flight window.")
@click.option("--uplink/--no-uplink", default=True, show_default=True, help="Also measure through Mosquitto.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to put the files (default: a temporary directory); use the real disk to measure it.")
def main(alerts: int, summaries: int, batch: int, uplink: bool, directory: Path | None) -> None:
    """Print outbox and uplink throughput."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        root = Path(tmp)
        click.echo(f"outbox in {root} (append: 1 message per transaction, synchronous=FULL; "
                   f"drain: peek {batch} + ack)")
        for label, size, count in (("alert", 250, alerts), ("summary", 50_000, summaries)):
            r = bench_outbox(root, label, size, count, batch)
            click.echo(f"  {label:8s} {size:>6d} B x {count:5d}: append {r.append_per_s:8.0f} msg/s, "
                       f"peek+ack {r.drain_per_s:8.0f} msg/s, append+peek+ack {r.round_trip_per_s:8.0f} msg/s "
                       f"({r.round_trip_per_s * size / 1e6:.1f} MB/s)")
        if uplink:
            u = bench_uplink(root, backlog=5000, samples=50)
            click.echo(f"uplink to local Mosquitto: backlog drain {u.drain_per_s:.0f} alerts/s; "
                       f"alert append->subscriber latency median {u.latency_ms_median:.2f} ms, "
                       f"p95 {u.latency_ms_p95:.2f} ms")


if __name__ == "__main__":
    main()
