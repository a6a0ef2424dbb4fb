"""Helpers for the agent's integration tests: the agent as a subprocess, an MQTT collector, a
pymodbus RTU server behind a pty 'null-modem cable', and a TLS certificate authority."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import select
import signal
import subprocess
import sys
import threading
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.inputs import Ingress, SampleBlock
from lifeline.contract import (
    Alert,
    RawBlock,
    Status,
    Summary,
    decode_alert,
    decode_status,
    decode_summary,
)

WAIT_S = 20.0


class RecordingIngress(Ingress):
    """An Ingress that lets a test wait until a condition on the queued blocks holds."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[SampleBlock] = []
        self._changed = threading.Condition()

    def put_block(self, block: SampleBlock) -> None:
        with self._changed:
            self.seen.append(block)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[SampleBlock]], bool], timeout_s: float = WAIT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.seen), timeout_s)

    def samples(self, sensor: int) -> list[float]:
        with self._changed:
            return [float(v) for b in self.seen if b.sensor == sensor for v in np.asarray(b.values)]
P = "lifeline/v1"
ROOT = Path(__file__).resolve().parents[1]


_precompiled = threading.Lock()
_precompiled_done: list[bool] = []


def ensure_precompiled() -> None:
    """Fill numba's on-disk cache once, so no agent subprocess spends its first seconds compiling."""
    with _precompiled:
        if not _precompiled_done:
            from edge_agent.runtime import precompile

            precompile()
            _precompiled_done.append(True)


class AgentProcess:
    """`python -m lifeline.cli agent --config ...` with its log lines readable as they come."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> AgentProcess:
        ensure_precompiled()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lifeline.cli", "agent", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            cwd=ROOT, env=self.env)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_log(self, pattern: str, timeout_s: float = WAIT_S, *, since: int = 0) -> re.Match[str]:
        """The first log line (from index `since`) matching `pattern`; fails the test on timeout."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in self.lines[since:]:
                match = regex.search(line)
                if match:
                    found.append(match)
                    return True
            return self.proc is not None and self.proc.poll() is not None

        with self._changed:
            self._changed.wait_for(seen, timeout_s)
        assert found, f"no log line matching {pattern!r}; agent log:\n" + "\n".join(self.lines[-40:])
        return found[0]

    def log_text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for the exit code (generous: a loaded machine, libfaketime on every
        clock read, a flush of the outbox; systemd itself allows 90 s)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def write_config(path: Path, *, agent: str, broker_url: str, state_dir: Path, sensors: list[dict[str, Any]],
                 agent_extra: str = "", mqtt_extra: str = "", extra: str = "") -> Path:
    """An agent TOML file: [agent], [mqtt] and one [[sensor]] table per dict."""
    lines = ["[agent]", f'id = "{agent}"', 'district = "yuzhong"', 'township = "jiefangbei"',
             f'state_dir = "{state_dir}"', "status_interval_s = 0.5", agent_extra, "",
             "[mqtt]", f'url = "{broker_url}"', mqtt_extra, "", extra, ""]
    for sensor in sensors:
        lines.append("[[sensor]]")
        for key, value in sensor.items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


class Collector:
    """An MQTT subscriber that keeps every Alert, Summary and Status it receives."""

    def __init__(self, port: int, *, client_id: str, host: str = "127.0.0.1", clean: bool = True,
                 prefix: str = P, tls_ca: Path | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        self.alerts: list[Alert] = []
        self.summaries: list[Summary] = []
        self.status: list[Status] = []
        self.topics: list[str] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                                  protocol=mqtt.MQTTv311)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.prefix = prefix
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), "the collector could not subscribe"

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe([(f"{self.prefix}/alert/#", 1), (f"{self.prefix}/summary/+", 1),
                          (f"{self.prefix}/status/+", 1)])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.split("/")[2]
        with self._changed:
            self.topics.append(msg.topic)
            if kind == "alert":
                self.alerts.append(decode_alert(msg.payload))
            elif kind == "summary":
                self.summaries.append(decode_summary(msg.payload))
            elif kind == "status":
                self.status.append(decode_status(msg.payload))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Collector], bool], timeout_s: float = WAIT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout_s)

    def alert_changes(self) -> list[tuple[str, str, int, int]]:
        with self._changed:
            return [(a.sensor, a.rule, a.prev, a.level) for a in sorted(self.alerts, key=lambda a: a.seq)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """A connected paho client that publishes RawBlocks at QoS 1 and waits for each PUBACK."""

    def __init__(self, port: int, *, client_id: str, host: str = "127.0.0.1", tls_ca: Path | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        if username is not None:
            self.client.username_pw_set(username, password)
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect(host, port)
        self.client.loop_start()
        assert connected.wait(WAIT_S), "the publisher could not connect"
        self._seq = itertools.count()

    def block(self, sensor: str, values: list[float], *, t0: int, dt: float = 100.0, seq: int | None = None) -> None:
        payload = RawBlock(sensor, np.asarray(values, dtype=np.float64), t0=t0, dt=dt,
                           seq=next(self._seq) if seq is None else seq).encode()
        self.raw(f"{P}/raw/{sensor}", payload)

    def raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------- Modbus over ptys


class PtyBridge:
    """Two pty pairs joined master to master: a null-modem cable between two device paths."""

    def __init__(self) -> None:
        self.pairs = [os.openpty(), os.openpty()]
        for master, slave in self.pairs:
            tty.setraw(master)
            tty.setraw(slave)
        self.devices = [os.ttyname(slave) for _, slave in self.pairs]
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        (a, _), (b, _) = self.pairs
        peer = {a: b, b: a}
        while True:
            ready, _, _ = select.select([a, b, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue  # the other side has the device closed for now
                os.write(peer[fd], data)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in [*itertools.chain.from_iterable(self.pairs), self._stop_r, self._stop_w]:
            os.close(fd)


class ModbusTransmitters:
    """A pymodbus RTU server on a device path answering for some units; registers settable live."""

    def __init__(self, device: str, units: dict[int, list[int]], *, register: int = 100) -> None:
        self.registers = units
        self._device = device
        self._register = register
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self.server: ModbusSerialServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT_S), "the Modbus server did not start"

    def _action(self, unit: int) -> Callable[..., object]:
        async def action(func_code: int, start: int, address: int, count: int, registers: list[int],
                         values: object) -> None:
            registers[:len(self.registers[unit])] = self.registers[unit]  # serve the test's latest value

        return action

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            devices = [SimDevice(id=unit, simdata=[SimData(self._register, values=list(regs),
                                                           datatype=DataType.REGISTERS)],
                                 action=self._action(unit)) for unit, regs in self.registers.items()]
            self.server = ModbusSerialServer(devices, framer=FramerType.RTU, port=self._device,
                                             baudrate=115200, ignore_missing_devices=True)
            await self.server.serve_forever(background=True)
            self._ready.set()
            await asyncio.Event().wait()

        try:
            self._loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass

    def close(self) -> None:
        async def shutdown() -> None:
            assert self.server is not None
            await self.server.shutdown()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(WAIT_S)
        self._thread.join(WAIT_S)


# ---------------------------------------------------------------- TLS


def make_ca(directory: Path, host: str = "localhost") -> dict[str, Path]:
    """A throwaway CA and a server certificate for `host`, made with the openssl CLI."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca_key", "server", "server_key")}
    csr = directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text(f"subjectAltName=DNS:{host},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lifeline test CA",
        "-keyout", str(files["ca_key"]), "-out", str(files["ca"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", str(files["server_key"]),
        "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca_key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(files["server"]))
    return files
