"""The agent's CPU, throughput, memory and alert latency on a stream of RawBlocks
(`python -m benchmarks.bench_agent`).

Each case runs the real agent (`python -m lifeline.cli agent`) as a subprocess on a local
Mosquitto, with its baseline in the same run:
- cpu-block / cpu-single: the agent and a bare paho-mqtt subscriber (a subprocess whose
  on_message only counts) receive the same stream at once; each one's CPU time (from
  /proc/PID/stat) is read when it is ready and again when it has taken in the whole stream.
  Samples per agent CPU-second is the "one core" throughput; peak RSS is VmHWM.
- latency: blocks at a fixed rate (100 k samples/s) whose first sample crosses a threshold now
  and then; latency = when the alert reaches a subscriber - the sample's time (its block's
  publish time), so it includes both broker hops, the batch wait and the outbox commit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.contract import RawBlock, decode_alert, decode_status
from benchmarks.procstat import cpu_seconds, memory_mib
from benchmarks.suite import write_section
from simulators.servers import MosquittoServer

P = "lifeline/v1"
AGENT = "bench-agent"
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- processes


class LineWatcher:
    """Reads a subprocess's output lines on a thread; waits for a line matching a pattern."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip())
                self._changed.notify_all()

    def wait(self, pattern: str, timeout_s: float = 120.0) -> re.Match[str]:
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for m in (regex.search(line) for line in self.lines) if m][:1]
            return bool(found)

        with self._changed:
            if not self._changed.wait_for(seen, timeout_s):
                raise TimeoutError(f"no line matching {pattern!r}; last lines: {self.lines[-10:]}")
        return found[0]


def start_agent(workdir: Path, broker: MosquittoServer, sensors: int, kind: str) -> tuple[subprocess.Popen[str], LineWatcher]:
    """The agent with `sensors` MQTT sensors of `kind` (thresholds 0.6..0.9, debounce 1)."""
    lines = ["[agent]", f'id = "{AGENT}"', 'district = "bench"', 'township = "bench"',
             f'state_dir = "{workdir / "state"}"', "status_interval_s = 0.2", "gap_startup_s = 3600", "",
             "[mqtt]", f'url = "{broker.url}"', "", "[raw_mqtt]", f'url = "{broker.url}"', "qos = 0", ""]
    for i in range(sensors):
        lines += ["[[sensor]]", f'id = "B-{i:04d}"', f'kind = "{kind}"', f'site = "site-{i % 50}"',
                  "high = [0.6, 0.7, 0.8, 0.9]", "hysteresis = 0.02", "debounce = 1", "gap_s = 3600", ""]
    config = workdir / "agent.toml"
    config.write_text("\n".join(lines))
    proc = subprocess.Popen([sys.executable, "-m", "lifeline.cli", "agent",
                             "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    return proc, LineWatcher(proc.stderr)


def stop_and_reap(proc: subprocess.Popen[str], timeout_s: float = 15.0) -> float:
    """Terminate `proc` and return its peak RSS over its whole life (ru_maxrss, MiB; NaN if it
    had already ended and been reaped)."""
    proc.terminate()  # (polls first: a child that already exited is reaped here)
    if proc.returncode is not None:
        return float("nan")
    deadline = time.monotonic() + timeout_s
    while True:
        late = time.monotonic() > deadline
        if late:
            proc.kill()
        pid, status, usage = os.wait4(proc.pid, 0 if late else os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss / 1024
        time.sleep(0.05)


def precompile_kernels() -> None:
    """Fill numba's on-disk cache first, so no agent under test spends its start compiling."""
    subprocess.run([sys.executable, "-c", "from edge_agent.runtime import precompile; precompile()"],
                   check=True, cwd=ROOT)


def start_bare_subscriber(broker: MosquittoServer, count: int) -> tuple[subprocess.Popen[str], LineWatcher]:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_agent", "bare", "--port", str(broker.port),
                             "--count", str(count)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)
    return proc, LineWatcher(proc.stdout)


def bare_subscriber(port: int, count: int) -> None:
    """The baseline: a paho-mqtt 2 subscriber to P/raw/+ whose on_message only counts."""
    received = 0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received >= count:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{P}/raw/+", qos=0)
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    subscribed.wait(30)
    print("ready", flush=True)
    done.wait()
    print(f"done {received}", flush=True)
    client.disconnect()
    client.loop_stop()


class StatusWatch:
    """Follows the agent's retained Status: how many samples it has taken in so far."""

    def __init__(self, port: int) -> None:
        self.samples = -1
        self._changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-status", protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{P}/status/{AGENT}", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        status = decode_status(msg.payload)
        with self._changed:
            self.samples = int(status.extra.get("samples", -1))
            self._changed.notify_all()

    def wait_samples(self, total: int, timeout_s: float = 300.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.samples >= total, timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publisher(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


_FLOOR = """
import re, numpy as np, numba
@numba.njit(cache=True)
def one(a):
    return a.sum()
one(np.zeros(3))
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def numba_floor_mb() -> float:
    """Peak RSS (MiB) of a Python that imports NumPy and numba and loads one trivial cached
    function: what any numba-based agent costs before its own code and data."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        script = Path(tmp) / "floor.py"  # numba caches only functions defined in a file
        script.write_text(_FLOOR)
        env = {**os.environ, "NUMBA_CACHE_DIR": tmp}
        subprocess.run([sys.executable, str(script)], env=env, check=True, capture_output=True)
        out = subprocess.run([sys.executable, str(script)], env=env, check=True,
                             capture_output=True, text=True).stdout  # the cached load
    return int(out.split()[-1]) / 1024


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class CpuResult:
    case: str
    messages: int
    samples: int
    agent_cpu_s: float
    bare_cpu_s: float
    agent_wall_s: float
    agent_rss_mb: float
    agent_anon_mb: float
    agent_file_mb: float
    agent_life_rss_mb: float = float("nan")

    @property
    def ratio(self) -> float:
        return self.agent_cpu_s / self.bare_cpu_s

    def line(self) -> str:
        return (f"{self.case}: {self.messages:,} messages, {self.samples:,} samples; CPU agent "
                f"{self.agent_cpu_s:.2f} s vs bare paho {self.bare_cpu_s:.2f} s = {self.ratio:.2f}x; "
                f"{self.samples / self.agent_cpu_s / 1e6:.2f} M samples per agent CPU-second, "
                f"{self.samples / self.agent_wall_s / 1e6:.2f} M samples/s wall; agent peak RSS "
                f"{self.agent_rss_mb:.0f} MiB (now {self.agent_anon_mb:.0f} MiB anonymous + "
                f"{self.agent_file_mb:.0f} MiB file-backed; {self.agent_life_rss_mb:.0f} MiB over its "
                "whole life, ru_maxrss)")


def stream(sensors: int, samples_per_message: int, messages: int) -> list[tuple[str, bytes]]:
    """Pre-encoded RawBlocks round-robin over the sensors (a few distinct payloads per sensor)."""
    rng = np.random.default_rng(1)
    t0 = int(time.time() * 1000) - 3_600_000
    distinct: dict[int, list[bytes]] = {}
    out = []
    for i in range(messages):
        s = i % sensors
        variants = distinct.setdefault(s, [])
        k = i // sensors
        if len(variants) < 4:
            values = rng.normal(0.4, 0.01, samples_per_message).astype(np.float32)
            block = RawBlock(f"B-{s:04d}", values, t0=t0, dt=1.0, seq=k)
            if samples_per_message == 1:
                variants.append(block.encode(as_bin=False))
            else:
                variants.append(block.encode(as_bin=True))
        out.append((f"{P}/raw/B-{s:04d}", variants[k % len(variants)]))
    return out


def cpu_case(broker: MosquittoServer, case: str, sensors: int, samples_per_message: int, messages: int,
             kind: str) -> CpuResult:
    payloads = stream(sensors, samples_per_message, messages)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        agent, agent_log = start_agent(Path(tmp), broker, sensors, kind)
        bare, bare_out = start_bare_subscriber(broker, messages)
        watch = StatusWatch(broker.port)
        try:
            agent_log.wait(r"raw input connected", 120)
            bare_out.wait(r"^ready", 60)
            time.sleep(1.0)  # let both settle after start-up (imports, kernel cache load)
            agent_cpu0, bare_cpu0 = cpu_seconds(agent.pid), cpu_seconds(bare.pid)
            pub = publisher(broker.port, "bench-pub")
            started = time.perf_counter()
            for i, (topic, payload) in enumerate(payloads):
                pub.publish(topic, payload, qos=0)
                if i % 2000 == 1999:
                    time.sleep(0.001)  # keep the publisher's own queue short
            bare_out.wait(r"^done", 300)
            bare_cpu = cpu_seconds(bare.pid) - bare_cpu0
            if not watch.wait_samples(messages * samples_per_message):
                raise TimeoutError(f"agent took in {watch.samples} samples of {messages * samples_per_message}")
            agent_wall = time.perf_counter() - started
            agent_cpu = cpu_seconds(agent.pid) - agent_cpu0
            memory = memory_mib(agent.pid, ("VmHWM", "RssAnon", "RssFile"))
            pub.disconnect()
            pub.loop_stop()
        finally:
            watch.close()
            life_rss = stop_and_reap(agent)
            bare.terminate()
            try:
                bare.wait(15)
            except subprocess.TimeoutExpired:
                bare.kill()
                bare.wait(10)
    return CpuResult(case, messages, messages * samples_per_message, agent_cpu, bare_cpu, agent_wall,
                     memory["VmHWM"], memory["RssAnon"], memory["RssFile"], life_rss)


def median_case(broker: MosquittoServer, case: str, sensors: int, samples_per_message: int, messages: int,
                kind: str, runs: int = 3) -> CpuResult:
    """The run with the median CPU ratio of `runs` (short runs on a shared machine are noisy)."""
    results = []
    for _ in range(runs):
        results.append(cpu_case(broker, case, sensors, samples_per_message, messages, kind))
        print(results[-1].line(), flush=True)
    ratios = ", ".join(f"{r.ratio:.2f}x" for r in results)
    median = sorted(results, key=lambda r: r.ratio)[len(results) // 2]
    return dataclasses.replace(median, case=f"{case} [median of {ratios}]")


@dataclass(frozen=True)
class LatencyResult:
    rate: float
    alerts: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def line(self) -> str:
        return (f"latency at {self.rate / 1000:.0f} k samples/s: {self.alerts} alerts, sample -> alert "
                f"received p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms")


def latency_case(broker: MosquittoServer, duration_s: float = 8.0, sensors: int = 100,
                 block: int = 100, blocks_per_s: int = 1000) -> LatencyResult:
    latencies: list[float] = []
    lock = threading.Lock()

    def on_alert(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time() * 1000
        alert = decode_alert(msg.payload)
        with lock:
            latencies.append(now - alert.ts)

    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        agent, agent_log = start_agent(Path(tmp), broker, sensors, "test.level")
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-alerts", protocol=mqtt.MQTTv311)
        sub.on_connect = lambda c, u, f, r, p: c.subscribe(f"{P}/alert/#", qos=1)
        sub.on_message = on_alert
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        try:
            agent_log.wait(r"raw input connected", 120)
            time.sleep(1.0)
            pub = publisher(broker.port, "bench-latency-pub")
            quiet = np.full(block, 0.4, dtype=np.float32)
            alarm = np.full(block, 0.95, dtype=np.float32)
            period = 1.0 / blocks_per_s
            start = time.perf_counter()
            n_blocks = int(duration_s * blocks_per_s)
            for i in range(n_blocks):
                due = start + i * period
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                s = i % sensors
                round_ = i // sensors  # each sensor gets blocks_per_s / sensors blocks a second
                values = alarm if (round_ // 10) % 2 else quiet  # level changes every 1 s per sensor
                # The block's first sample is "now"; a change of level happens at that sample.
                payload = RawBlock(f"B-{s:04d}", values, t0=int(time.time() * 1000), dt=1.0, seq=round_).encode()
                pub.publish(f"{P}/raw/B-{s:04d}", payload, qos=0)
            rate = n_blocks * block / (time.perf_counter() - start)
            time.sleep(1.0)
            pub.disconnect()
            pub.loop_stop()
        finally:
            sub.disconnect()
            sub.loop_stop()
            agent.terminate()
            agent.wait(15)
    arr = np.array(latencies) if latencies else np.array([float("nan")])
    return LatencyResult(rate, len(arr), float(np.percentile(arr, 50)), float(np.percentile(arr, 99)),
                         float(arr.max()))


# ---------------------------------------------------------------- report


def run(quick: bool, write: bool) -> None:
    scale = 0.25 if quick else 1.0
    cpu_info = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "unknown CPU")
    precompile_kernels()
    with MosquittoServer() as broker:
        blocks = int(10_000 * scale)
        block = median_case(broker, "cpu-block, thresholds only (1000 float32 samples per message, "
                            "1000 sensors)", 1000, 1000, blocks, "test.level")
        profile = median_case(broker, "cpu-block, pipe.pressure profile: all 8 rules (same stream)", 1000,
                              1000, blocks, "pipe.pressure")
        single = cpu_case(broker, "cpu-single, pipe.pressure profile (1 sample per message, 1000 sensors)",
                          1000, 1, int(200_000 * scale), "pipe.pressure")
        print(single.line(), flush=True)
        latency = latency_case(broker, duration_s=2.0 if quick else 8.0)
        print(latency.line(), flush=True)
    floor = numba_floor_mb()
    print(f"numba floor: {floor:.0f} MiB", flush=True)
    cases = (block, profile, single)
    rows = [
        ("agent CPU / bare paho CPU, 1000-sample blocks, thresholds", f"{block.ratio:.2f}x", "<= 1.5x"),
        ("agent CPU / bare paho CPU, 1000-sample blocks, all rules", f"{profile.ratio:.2f}x", "<= 1.5x"),
        ("agent CPU / bare paho CPU, 1-sample messages", f"{single.ratio:.2f}x", "<= 1.5x"),
        ("samples per agent CPU-second, block mode, thresholds / all rules",
         f"{block.samples / block.agent_cpu_s / 1e6:.1f} M / {profile.samples / profile.agent_cpu_s / 1e6:.1f} M",
         ">= 5 M"),
        ("agent peak RSS, 1000 sensors (VmHWM)", f"{max(c.agent_rss_mb for c in cases):.0f} MiB", "< 150 MiB"),
        ("  over the agent's whole life, shutdown included (ru_maxrss)",
         f"{max(c.agent_life_rss_mb for c in cases):.0f} MiB", ""),
        ("  of it anonymous (heap, arrays) at the end", f"{max(c.agent_anon_mb for c in cases):.0f} MiB", ""),
        ("  floor: Python + NumPy + numba loading one trivial cached function", f"{floor:.0f} MiB", ""),
        ("p99 sample -> alert received, 100 k samples/s", f"{latency.p99_ms:.1f} ms", "< 50 ms"),
    ]
    lines = "\n".join(c.line() for c in cases) + "\n" + latency.line()
    table = "| measure | result | target |\n| --- | --- | --- |\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows)
    text = (f"Command: `python -m benchmarks.bench_agent{' --quick' if quick else ''}` on {os.cpu_count()} "
            f"cores ({cpu_info}), shared with other work; broker, publisher, agent and baseline all on "
            f"this machine.\n\n{table}\n\n```\n{lines}\n```\n\n"
            "Each CPU case runs the agent and a bare paho-mqtt subscriber (on_message only counts) on the "
            "same QoS 0 stream at the same time and reads each one's CPU time from /proc between "
            "'ready' and 'took in everything'. Latency is measured from a sample's own time (its "
            "block's publish time) to the alert's arrival at a subscriber: two broker hops, the batch "
            "wait (10 ms) and the outbox commit (SQLite WAL, synchronous=FULL) included.\n\n"
            "The memory floor is a Python that imports NumPy and numba and loads one trivial cached "
            "njit function (run twice, the first to fill its cache): numba's import (LLVM's "
            "libraries) and its first cached load (the target context's registries and the NRT "
            "module it compiles at start-up) are most of it, so an agent that runs numba kernels "
            "in its own process cannot meet < 150 MiB; the agent adds paho, pydantic, SQLite, its "
            "compiled kernels and its buffers (a bounded 4 MiB ingress queue, one batch).\n")
    if write:
        write_section("## Agent", text)
        print("wrote the '## Agent' section of benchmarks/RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    bare = sub.add_parser("bare", help="run the baseline subscriber (used by the benchmark itself)")
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--count", type=int, required=True)
    parser.add_argument("--quick", action="store_true", help="a quarter of the stream (a smoke run)")
    parser.add_argument("--write", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.command == "bare":
        bare_subscriber(args.port, args.count)
    else:
        run(args.quick, args.write)


if __name__ == "__main__":
    main()
