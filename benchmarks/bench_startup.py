"""First start of `lifeline agent` after install: seconds from the process start to its retained
`online` status, on a kernel cache filled by `lifeline precompile` (what deploy/install.sh runs)
and, for contrast, on an empty one. Target: online within 5 s after install.

    python -m benchmarks.bench_startup [--quick] [--write]

Each measurement uses its own empty cache directory (`NUMBA_CACHE_DIR`), a real Mosquitto and a
real agent process with one sensor of every built-in kind; `--quick` skips the cold start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from benchmarks.machine import describe_machine
from benchmarks.suite import write_section
from edge_agent.kernels.profiles import PROFILES
from lifeline.contract import decode_status
from simulators.servers import MosquittoServer

PREFIX = "lifeline/v1"
TARGET_S = 5.0
ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Start-up"


class StatusWatch:
    """The retained statuses of agents on a broker: the first `online` one of each, and when."""

    def __init__(self, port: int) -> None:
        self.online: dict[str, tuple[float, dict[str, Any]]] = {}
        self.changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-startup-watch")
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{PREFIX}/status/+", 1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        status = decode_status(msg.payload)
        with self.changed:
            if status.state == "online" and status.agent not in self.online:
                self.online[status.agent] = (time.monotonic(), dict(status.extra))
                self.changed.notify_all()

    def wait_online(self, agent: str, timeout_s: float) -> tuple[float, dict[str, Any]] | None:
        with self.changed:
            self.changed.wait_for(lambda: agent in self.online, timeout_s)
            return self.online.get(agent)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def agent_config(path: Path, agent: str, broker: MosquittoServer, state_dir: Path) -> Path:
    sensors = "".join(f'[[sensor]]\nid = "{agent}-{i}"\nkind = "{kind}"\nsite = "bench"\n\n'
                      for i, kind in enumerate(sorted(PROFILES)))
    path.write_text(f'[agent]\nid = "{agent}"\ndistrict = "bench"\ntownship = "bench"\n'
                    f'state_dir = "{state_dir}"\nstatus_interval_s = 1.0\n\n'
                    f'[mqtt]\nurl = "{broker.url}"\nprefix = "{PREFIX}"\n\n{sensors}')
    return path


def lifeline(*args: str) -> list[str]:
    return [sys.executable, "-m", "lifeline.cli", *args]


def first_start(broker: MosquittoServer, watch: StatusWatch, work: Path, name: str, cache: Path,
                timeout_s: float) -> tuple[float, dict[str, Any]]:
    """Seconds from `lifeline agent` starting to its retained `online` status, and that status."""
    config = agent_config(work / f"{name}.toml", name, broker, work / name)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    log = (work / f"{name}.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(lifeline("agent", "--config", str(config)), env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work)
    try:
        seen = watch.wait_online(name, timeout_s)
        if seen is None:
            raise RuntimeError(f"agent {name} not online within {timeout_s:.0f} s; log {work / name}.log")
        return seen[0] - started, seen[1]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def precompile(cache: Path) -> float:
    """Seconds `lifeline precompile` (install.sh's step) takes to fill an empty cache."""
    started = time.monotonic()
    subprocess.run(lifeline("precompile"), env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
                   check=True, capture_output=True, cwd=ROOT)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the cold start (about a minute)")
    parser.add_argument("--starts", type=int, default=3, help="warm starts after the first")
    parser.add_argument("--write", action="store_true", help=f"rewrite `{HEADING}` in RESULTS.md")
    args = parser.parse_args()
    machine = describe_machine()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, MosquittoServer() as broker:
        work = Path(tmp)
        watch = StatusWatch(broker.port)
        try:
            installed = work / "cache-installed"
            compile_s = precompile(installed)
            first_s, first = first_start(broker, watch, work, "after-install", installed, 120)
            again = [first_start(broker, watch, work, f"restart-{i}", installed, 120)[0]
                     for i in range(args.starts)]
            cold: tuple[float, dict[str, Any]] | None = None
            if not args.quick:
                cold = first_start(broker, watch, work, "no-precompile", work / "cache-empty", 600)
        finally:
            watch.close()
    rows = [
        "| start | kernel cache | seconds to `online` | status `cold_cache` | kernels load |",
        "| --- | --- | ---: | --- | ---: |",
        f"| `lifeline precompile` (install.sh) | empty | {compile_s:.1f} (compile) | - | - |",
        f"| first start after install | filled by precompile | **{first_s:.2f}** | "
        f"{str(first.get('cold_cache')).lower()} | {first.get('kernels_load_s', '-')} s |",
        f"| restarts (median of {len(again)}) | same | {statistics.median(again):.2f} | false | - |",
    ]
    if cold is not None:
        rows.append(f"| first start without precompile | empty | {cold[0]:.1f} | "
                    f"{str(cold[1].get('cold_cache')).lower()} | {cold[1].get('kernels_load_s', '-')} s |")
    met = first_s < TARGET_S and first.get("cold_cache") is False
    body = (
        f"Command: `python -m benchmarks.bench_startup{' --quick' if args.quick else ''} --write` "
        f"({machine.one_line()}; load average at start {' / '.join(f'{x:.2f}' for x in machine.load_average)}"
        f", the compile times grow with it). One agent with a sensor of each of the {len(PROFILES)} built-in "
        "kinds, a real Mosquitto; each start is timed from the process start to its retained "
        "`online` status, with `NUMBA_CACHE_DIR` a fresh directory per case.\n\n"
        + "\n".join(rows)
        + f"\n\nTarget: online within {TARGET_S:g} s of the first start after install: "
        f"{first_s:.2f} s ({'met' if met else 'NOT met'}).\n"
    )
    print(body)
    if args.write:
        write_section(HEADING, body)
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
