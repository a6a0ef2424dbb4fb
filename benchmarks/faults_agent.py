"""Agent-local faults of issue #8, each against a real `lifeline agent` process and real Mosquitto:
the agent's disk full, a serial port that vanishes and returns, and the wall clock stepping an
hour forward and back. `python -m benchmarks.faults_agent [--write]` runs each once at a
realistic size, then the agent-state faults of `benchmarks.faults_agent_state` (issue 13), and
(with --write) puts one row per fault in RESULTS.md's "## Faults" table;
`tests/test_agent_faults.py` runs the same scenarios small.

How each fault is made real:
- disk full: the agent's state directory is a tmpfs of a few MiB (needs root to mount), filled
  with a file to the last byte while the uplink broker is down, so the outbox must drop to stay
  within the disk; then the file is removed and the broker started again.
- serial port: the agent opens a symlink to a pty; unplugging removes the link and closes the
  pty, replugging makes a new pty and points the link at it.
- clock: libfaketime (LD_PRELOAD) with an offset file changed while the agent runs; monotonic
  clocks stay real (FAKETIME_DONT_FAKE_MONOTONIC=1), as an NTP step leaves them.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import tempfile
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from benchmarks.fault_table import FaultOutcome, write_fault_rows
from firmware_stubs import FORMAT_INT16, SensorNode
from lifeline.contract import Alert, RawBlock
from simulators.servers import MosquittoServer
from tests.agent_harness import AgentProcess, Collector, write_config

P = "lifeline/v1"
WAIT_S = 60.0
COMMAND = "python -m benchmarks.faults_agent --write"
#: Threshold rules of every sensor here: one level, raised by one sample, no other rules.
RULES: dict[str, Any] = {"kind": "flood.level", "high": [60.0], "hysteresis": 5.0, "debounce": 1,
                         "rules": {"rate": {"enabled": False}, "spike": {"enabled": False},
                                   "anomaly": {"enabled": False}, "drift": {"enabled": False},
                                   "flatline": {"enabled": False}}}
NORMAL, HIGH = 30.0, 75.0
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/*/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1")


@dataclass
class FaultRun:
    """What one scenario saw: its table row and the facts the tests assert on."""

    outcome: FaultOutcome
    alerts: list[Alert]
    facts: dict[str, Any] = field(default_factory=dict)
    log: str = ""


def find_faketime() -> str | None:
    """The libfaketime shared object, if installed (deploy/install.sh installs it)."""
    for pattern in FAKETIME_LIBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def wait(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll `condition` (for state outside any one thread: files, processes) until true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def latest_status(collector: Collector, agent: str) -> dict[str, Any]:
    with collector._changed:  # noqa: SLF001 (the harness's lock)
        for status in reversed(collector.status):
            if status.agent == agent and status.state == "online":
                return dict(status.extra)
    return {}


def seq_report(alerts: list[Alert], last_seq: int) -> tuple[str, int]:
    """(what was lost, duplicates) from the alerts received, against seq 1..last_seq."""
    seqs = [a.seq for a in alerts]
    missing = sorted(set(range(1, last_seq + 1)) - set(seqs))
    duplicates = len(seqs) - len(set(seqs))
    ids = [a.id for a in alerts]
    duplicates = max(duplicates, len(ids) - len(set(ids)))
    return (f"{len(missing)} alert(s) (seq {missing[:5]})" if missing else "nothing"), duplicates


class RawFeeder:
    """Publishes one agent-stamped RawBlock (no `t0`) per sensor every `period_s`; `raise_high`
    makes a sensor read HIGH for its next few blocks (one alert up, one clear)."""

    def __init__(self, port: int, sensors: list[str], *, period_s: float, client_id: str) -> None:
        self.sensors = sensors
        self.period_s = period_s
        self.sent = 0
        self._high: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seq = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311)
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(WAIT_S), "the feeder could not connect"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def raise_high(self, sensor: str, blocks: int = 3) -> None:
        with self._lock:
            self._high[sensor] = blocks

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(next_at - time.monotonic(), 0.0)):
            next_at += self.period_s
            for sensor in self.sensors:
                with self._lock:
                    left = self._high.get(sensor, 0)
                    if left:
                        self._high[sensor] = left - 1
                value = HIGH if left else NORMAL
                payload = RawBlock(sensor, np.array([value]), seq=self._seq).encode()
                self.client.publish(f"{P}/raw/{sensor}", payload, qos=0)
                self.sent += 1
            self._seq = (self._seq + 1) % 2**32

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of `size_bytes` mounted at `path` (needs root); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def fill(path: Path) -> int:
    """Write `path` until the file system has no byte left; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n = f.write(chunk)
            except OSError:
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]
                continue
            written += n or 0


# ---------------------------------------------------------------- disk full


def disk_full(workdir: Path, raw_broker: MosquittoServer, *, sensors: int = 20, full_s: float = 5.0,
              backlog_s: float = 2.0, disk_bytes: int = 16 << 20, alert_every_s: float = 0.5) -> FaultRun:
    """The agent's state directory fills up while the uplink is down; then space and the uplink return."""
    uplink = MosquittoServer().start()
    ids = [f"DF-{i:03d}" for i in range(sensors)]
    feeder: RawFeeder | None = None
    agent: AgentProcess | None = None
    collector: Collector | None = None
    with tmpfs(workdir / "disk", disk_bytes) as disk:
        try:
            config = write_config(
                workdir / "agent.toml", agent="f-disk", broker_url=uplink.url, state_dir=disk / "state",
                agent_extra="window_s = 0.2\nstate_save_s = 1.0",
                extra=f'[raw_mqtt]\nurl = "{raw_broker.url}"\n',
                sensors=[{"id": s, "site": "basin", "gap_s": 600.0, **RULES} for s in ids])
            collector = Collector(uplink.port, client_id="faults-disk-collector", clean=False)
            agent = AgentProcess(config).start()
            agent.wait_log(r"raw input connected", WAIT_S)
            feeder = RawFeeder(raw_broker.port, ids, period_s=0.1, client_id="faults-disk-feeder")
            assert collector.wait_for(lambda c: any(s.agent == "f-disk" for s in c.summaries), WAIT_S)
            collector.close()  # its session keeps what the broker queues meanwhile
            uplink.terminate()  # the backlog grows from here
            time.sleep(backlog_s)  # a backlog before the disk fills; load, not synchronisation
            filler = disk / "filler"
            filled = fill(filler)
            full_since = time.monotonic()
            agent.wait_log(r"outbox .*: disk full", WAIT_S)
            raised = 0
            while time.monotonic() - full_since < full_s or raised < 4:
                feeder.raise_high(ids[raised % len(ids)])
                raised += 1
                time.sleep(alert_every_s)  # pacing the load, not synchronisation
            running = agent.proc is not None and agent.proc.poll() is None
            os.unlink(filler)
            space_back = time.monotonic()
            line = len(agent.lines)
            agent.wait_log(r"the disk has room again", WAIT_S, since=line)
            recovery_s = time.monotonic() - space_back
            uplink.start()
            collector = Collector(uplink.port, client_id="faults-disk-collector", clean=False)
            feeder.raise_high(ids[0])  # one more alert after the fault: detection goes on
            # every alert the agent made arrives: wait until the backlog is empty and the last
            # alert counted in status is in
            assert collector.wait_for(lambda c: (st := latest_status(c, "f-disk")).get("backlog_alerts") == 0
                                      and st.get("alerts", 0) >= 2 * (raised + 1)
                                      and len({a.seq for a in c.alerts}) >= st["alerts"], WAIT_S), \
                f"backlog not delivered: {latest_status(collector, 'f-disk')}"
            status = latest_status(collector, "f-disk")
            alerts = [a for a in collector.alerts if a.agent == "f-disk"]
            lost, duplicates = seq_report(alerts, status["alerts"])
            dropped = status["dropped_summaries"]
            outcome = FaultOutcome(
                "agent disk full", f"{sensors} sensors x 10 blocks/s, summaries every 0.2 s, an alert "
                f"every {alert_every_s} s; uplink down, then tmpfs {disk_bytes >> 20} MiB (4 MiB outbox reserve) "
                f"full for {full_s:.0f} s",
                f"{lost}; {dropped} summaries dropped (counted)" if lost == "nothing" else lost,
                duplicates, recovery_s, COMMAND)
            return FaultRun(outcome, alerts, {
                "status": status, "filled_bytes": filled, "raised": raised, "running": running,
                "dropped_alerts": status["dropped_alerts"], "dropped_summaries": dropped,
            }, agent.log_text())
        finally:
            if feeder is not None:
                feeder.close()
            if agent is not None:
                if agent.proc is not None and agent.proc.poll() is None:
                    agent.terminate()
                agent.close()
            if collector is not None:
                collector.close()
            uplink.stop()


# ---------------------------------------------------------------- serial port


class ReplugPort:
    """A device path (symlink) to a pty that can be unplugged and plugged back."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.slave: int | None = None
        self._lock = threading.Lock()
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        with self._lock:
            self.master, self.slave = master, slave
            os.symlink(os.ttyname(slave), self.link)

    def unplug(self) -> None:
        with self._lock:
            self.link.unlink()
            for fd in (self.master, self.slave):
                if fd is not None:
                    os.close(fd)
            self.master = self.slave = None

    def write(self, data: bytes) -> bool:
        """Write to the sensor side; False while unplugged."""
        with self._lock:
            if self.master is None:
                return False
            view = memoryview(data)
            while view:
                view = view[os.write(self.master, view):]
            return True

    def close(self) -> None:
        if self.master is not None:
            self.unplug()


def serial_vanishes(workdir: Path, broker: MosquittoServer, *, outage_s: float = 5.0,
                    channels: int = 2, gap_s: float = 2.0) -> FaultRun:
    """A USB serial adapter unplugged for `outage_s` and plugged back while frames flow."""
    port = ReplugPort(workdir / "ttyLIFELINE0")
    node = SensorNode(17, channels=tuple(range(channels)), period_us=100_000, fmt=FORMAT_INT16,
                      scale=0.1, frame_samples=2)
    ids = [f"SV-{c}" for c in range(channels)]
    config = write_config(workdir / "agent.toml", agent="f-serial", broker_url=broker.url,
                          state_dir=workdir / "state", sensors=[
                              {"id": s, "site": "underpass", "source": "serial", "port": str(port.link),
                               "node": 17, "channel": c, "gap_s": gap_s, **RULES}
                              for c, s in enumerate(ids)])
    collector = Collector(broker.port, client_id="faults-serial-collector")
    agent = AgentProcess(config).start()
    stop = threading.Event()
    level = {"value": NORMAL}

    def write_loop() -> None:  # a node sending 2 samples per channel every 0.2 s
        while not stop.wait(0.2):
            frames = b"".join(node.frames_for(c, [level["value"]] * 2)[0] for c in range(channels))
            try:
                port.write(frames)
            except OSError:
                pass

    writer = threading.Thread(target=write_loop, daemon=True)
    try:
        agent.wait_log(r"serial .*: open", WAIT_S)
        writer.start()
        assert collector.wait_for(lambda c: latest_status(c, "f-serial").get("samples", 0) >= 10,
                                  WAIT_S)
        line = len(agent.lines)
        port.unplug()
        unplugged = time.monotonic()
        agent.wait_log(r"serial .*: lost", WAIT_S, since=line)
        assert collector.wait_for(lambda c: all((s, "gap", 0, 1) in c.alert_changes() for s in ids), WAIT_S)
        while time.monotonic() - unplugged < outage_s:
            time.sleep(0.05)  # the outage's length, not synchronisation
        level["value"] = HIGH
        port.plug()
        plugged = time.monotonic()
        agent.wait_log(r"serial .*: back after", WAIT_S, since=line)
        assert collector.wait_for(lambda c: all((s, "high", 0, 1) in c.alert_changes() for s in ids), WAIT_S)
        recovery_s = time.monotonic() - plugged
        assert collector.wait_for(lambda c: all((s, "gap", 1, 0) in c.alert_changes() for s in ids), WAIT_S)
        assert collector.wait_for(lambda c: latest_status(c, "f-serial").get("serial", [{}])[0]
                                  .get("reopens") == 1, WAIT_S)
        status = latest_status(collector, "f-serial")
        alerts = [a for a in collector.alerts if a.agent == "f-serial"]
        lost, duplicates = seq_report(alerts, status["alerts"])
        outcome = FaultOutcome(
            "serial port vanishes and returns", f"1 node, {channels} channels x 10 samples/s; port "
            f"unplugged {outage_s:.0f} s", lost, duplicates, recovery_s, COMMAND)
        log = agent.log_text()
        assert agent.terminate() == 0
        return FaultRun(outcome, alerts, {"status": status, "unplugged_s": plugged - unplugged}, log)
    finally:
        stop.set()
        if writer.is_alive():
            writer.join(5)
        agent.close()
        collector.close()
        port.close()


# ---------------------------------------------------------------- clock


def clock_jumps(workdir: Path, broker: MosquittoServer, *, sensors: int = 10, hold_s: float = 3.0,
                step_s: int = 3600) -> FaultRun:
    """The agent's wall clock steps `step_s` forward, then back, while data flows (libfaketime)."""
    lib = find_faketime()
    if lib is None:
        raise RuntimeError("libfaketime is not installed (apt-get install faketime; deploy/install.sh does)")
    offset_file = workdir / "faketime"
    offset_file.write_text("+0\n")
    env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(offset_file), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    ids = [f"CJ-{i:02d}" for i in range(sensors)]
    config = write_config(workdir / "agent.toml", agent="f-clock", broker_url=broker.url,
                          state_dir=workdir / "state",
                          agent_extra="window_s = 1.0\ngap_floor_s = 1.0\ngap_multiple = 5.0",
                          sensors=[{"id": s, "site": "tunnel", **RULES} for s in ids])
    collector = Collector(broker.port, client_id="faults-clock-collector")
    agent = AgentProcess(config, env=env).start()
    feeder: RawFeeder | None = None

    def step(to_s: int) -> int:
        line = len(agent.lines)
        staged = offset_file.with_suffix(".new")  # replaced at once: libfaketime never reads half a file
        staged.write_text(f"{to_s:+d}\n")
        os.replace(staged, offset_file)
        agent.wait_log(r"wall clock stepped", WAIT_S, since=line)
        return time.time_ns() // 1_000_000

    def alert_now(sensor: str) -> Alert:
        before = len(collector.alerts)
        feeder.raise_high(sensor)  # type: ignore[union-attr]
        assert collector.wait_for(lambda c: any(a.sensor == sensor and a.level == 1 for a in c.alerts[before:]),
                                  WAIT_S)
        return next(a for a in collector.alerts[before:] if a.sensor == sensor and a.level == 1)

    def summary_after(wall_ms: int) -> float:
        started = time.monotonic()
        # labelled in that wall time (not the other side of a step)
        assert collector.wait_for(lambda c: any(s.agent == "f-clock" and wall_ms <= s.t0 < wall_ms + 600_000
                                                for s in c.summaries), WAIT_S)
        return time.monotonic() - started

    try:
        agent.wait_log(r"raw input connected", WAIT_S)
        feeder = RawFeeder(broker.port, ids, period_s=0.1, client_id="faults-clock-feeder")
        assert collector.wait_for(lambda c: any(s.agent == "f-clock" for s in c.summaries), WAIT_S)
        before_step = alert_now(ids[0])
        time.sleep(hold_s)  # the gap limits learn the 0.1 s interval; load, not synchronisation
        forward_at = step(step_s)
        summary_after(forward_at + step_s * 1000)
        during = alert_now(ids[1])
        time.sleep(hold_s)
        back_at = step(0)
        back_mono = time.monotonic()
        summary_after(back_at)
        after = alert_now(ids[2])
        recovery_s = time.monotonic() - back_mono
        assert collector.wait_for(lambda c: latest_status(c, "f-clock").get("clock_steps", 0) >= 2, WAIT_S), (
            f"status never counted both steps: {latest_status(collector, 'f-clock')}")
        status = latest_status(collector, "f-clock")
        assert status["clock_steps"] == 2, (
            f"{status['clock_steps']} clock steps counted for 2 made; the agent logged: "
            + "; ".join(line for line in agent.lines if "stepped" in line))
        assert collector.wait_for(lambda c: len({a.seq for a in c.alerts if a.agent == "f-clock"})
                                  >= latest_status(c, "f-clock")["alerts"], WAIT_S)
        alerts = [a for a in collector.alerts if a.agent == "f-clock"]
        lost, duplicates = seq_report(alerts, latest_status(collector, "f-clock")["alerts"])
        gaps = [a for a in alerts if a.rule == "gap"]
        summaries = [s for s in collector.summaries if s.agent == "f-clock"]
        outcome = FaultOutcome(
            "agent clock steps +1 h and back", f"{sensors} sensors x 10 blocks/s (agent-stamped), "
            f"summaries every 1 s; libfaketime +{step_s} s for {hold_s:.0f} s, then back",
            lost if not gaps else f"{lost}; {len(gaps)} false gap alert(s)", duplicates, recovery_s, COMMAND)
        log = agent.log_text()
        assert agent.terminate() == 0
        return FaultRun(outcome, alerts, {
            "status": status, "gaps": gaps, "summaries": summaries, "step_ms": step_s * 1000,
            "alert_before": (before_step, forward_at), "alert_during": (during, forward_at),
            "alert_after": (after, back_at), "forward_at": forward_at, "back_at": back_at,
        }, log)
    finally:
        if feeder is not None:
            feeder.close()
        agent.close()
        collector.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the rows in benchmarks/RESULTS.md")
    args = parser.parse_args()
    outcomes = []
    with MosquittoServer() as broker, tempfile.TemporaryDirectory(prefix="faults-agent-") as tmp:
        root = Path(tmp)
        for name, run in (("disk", lambda d: disk_full(d, broker, sensors=100, full_s=20.0)),
                          ("serial", lambda d: serial_vanishes(d, broker, outage_s=10.0, channels=4)),
                          ("clock", lambda d: clock_jumps(d, broker, sensors=100, hold_s=15.0))):
            workdir = root / name
            workdir.mkdir()
            result = run(workdir)
            outcomes.append(result.outcome)
            print(result.outcome.row(time.strftime("%Y-%m-%d %H:%M", time.gmtime())), flush=True)
    from benchmarks.faults_agent_state import run_all  # it builds on this module's feeder

    outcomes += run_all()
    if args.write:
        write_fault_rows(outcomes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
