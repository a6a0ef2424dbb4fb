"""Gateway faults with the real `lifeline gateway` process: a bad day at the centre, measured.

Run: `python -m benchmarks.faults_gateway` (backlogs of 100 k and 1 M alerts, the store latency
sweep, every fault; about 12 minutes), `--quick` (a 100 k backlog, a 20 k one with the state
lost, short sweep and faults; about 5 minutes), `--fault NAME ...` to pick some (`--list`); `--write` puts one row per fault into the
"## Faults" table of RESULTS.md (offered, stored, lost, duplicated, dead-lettered) and the drain
and throughput figures into "## Gateway faults".

Every run starts Mosquitto, VictoriaMetrics (behind `simulators.faultproxy.FaultProxy` where the
fault is the store's) and `lifeline gateway` as a child process with its own state directory;
the load comes from a publisher that speaks as agents do (retained status first, QoS 1). The
same scenario functions, with small sizes, are the fault tests of tests/test_gateway_faults.py.

Faults:
- backlog: the gateway is stopped while one (known) agent queues N alerts at the broker in the
  gateway's persistent session; the gateway restarts into the backlog. Every alert must be
  stored once and none refused; measured: drain time, peak RSS (VmHWM) of the gateway, and the
  latency to ops of a live level-4 alarm published while the backlog drains.
- backlog-state-lost: the same, with the gateway's state directory deleted before the restart:
  the live lane's retained statuses make the agent known before its backlog is read.
- hijack: an agent lists another agent's sensor in summaries (one with a window end ten years
  ahead, one within the clock skew) and sends level-4 alarms in its own name for it, through
  Mosquitto with passwords and the deployed ACL: the owner stays, its alarm is routed verified,
  the forged one flagged `unverified`, a `conflict` event names both, nothing forged is stored.
- bad-rows: the store answers HTTP 400 for any batch holding a malformed row (as InfluxDB does):
  every good row is stored, every bad one dead-lettered with the store's message.
- slow-store: the store takes 1 s per write while agents offer 10,000 points/s: the gateway keeps
  up (several writes in flight, batches that grow) and stores everything.
- store-latency (figures only): points/s the gateway drains from a backlog of summaries with the
  store answering after 0, 10 ms, 100 ms and 1 s (and 1 s with one write at a time).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.fault_table import FaultOutcome, write_fault_rows
from benchmarks.procstat import memory_mib
from benchmarks.suite import write_section
from edge_agent.config import AgentConfig
from lifeline.contract import Alert, Status, Summary, alert_topic, status_topic, summary_topic
from lifeline.errors import LifelineError
from edge_agent.acl import agent_acl_block
from gateway.state import GatewayState
from simulators.demo import Child, start_child
from simulators.faultproxy import FaultProxy
from simulators.servers import MosquittoServer, VictoriaMetricsServer

Log = Callable[[str], None]

ROOT: Final = Path(__file__).resolve().parents[1]
ACL: Final = ROOT / "deploy" / "mosquitto" / "lifeline.acl"
SECTION: Final = "## Gateway faults"
#: Longest wait for one step of a scenario (a drain of a million alerts included).
STEP_TIMEOUT_S: Final = 600.0
#: Live alarms must reach ops within this even while a backlog drains (issue 13).
LIVE_TARGET_S: Final = 2.0
#: Messages published before the publisher waits for the broker's PUBACKs of them.
PUBLISH_CHUNK: Final = 10_000
TEN_YEARS_MS: Final = 10 * 365 * 86_400_000
#: How far in the past "now" messages are stamped: VictoriaMetrics may not export a point of
#: the last second yet (a sample that old is still live for ops).
RECENT_MS: Final = 2_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, *, every_s: float = 0.1) -> None:
    """Poll a condition we cannot subscribe to (the store, a child's state); raise after the timeout."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not check():
        if time.monotonic() > deadline:
            raise LifelineError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        pause.wait(every_s)


# --------------------------------------------------------------------------- the gateway process


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


@dataclass
class GatewayRun:
    """A `lifeline gateway --config` child process, its config file and its state directory."""

    workdir: Path
    gateway_id: str
    prefix: str
    sections: dict[str, dict[str, object]]
    child: Child | None = None

    @property
    def state_dir(self) -> Path:
        return Path(str(self.sections["gateway"]["state_dir"]))

    @property
    def config_path(self) -> Path:
        return self.workdir / f"gateway-{self.gateway_id}.toml"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = "".join(
            f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()) + "\n"
            for name, keys in self.sections.items()
        )
        self.config_path.write_text(text)
        self.child = start_child(
            f"gateway-{self.gateway_id}", ["gateway", "--config", str(self.config_path)], self.workdir
        )

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.proc.pid

    def check(self) -> None:
        if self.child is not None:
            self.child.check_alive()

    def peak_rss_mib(self) -> float:
        return memory_mib(self.pid)["VmHWM"]

    def stop(self) -> dict[str, int]:
        """SIGTERM (the gateway drains and says goodbye); its counters from the last log line."""
        assert self.child is not None
        proc = self.child.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise LifelineError(f"gateway {self.gateway_id} did not stop within 60 s") from None
        found = re.findall(rf"gateway {re.escape(self.gateway_id)} stopped: (\{{.*\}})", self.log())
        return ast.literal_eval(found[-1]) if found else {}

    def kill(self) -> None:
        if self.child is not None and self.child.proc.poll() is None:
            self.child.proc.kill()
            self.child.proc.wait(10)

    def log(self) -> str:
        return self.child.log_path.read_text(errors="replace") if self.child is not None else ""

    def dead_letters(self) -> dict[str, int]:
        """Dead-letter rows in the state file, by reason (read while the gateway is stopped)."""
        path = self.state_dir / f"{self.gateway_id}.sqlite"
        if not path.exists():
            return {}
        state = GatewayState(path)
        try:
            return state.dead_letter_counts()
        finally:
            state.close()


def gateway_run(
    workdir: Path,
    *,
    broker_url: str,
    store_url: str,
    gateway_id: str,
    prefix: str,
    mqtt_keys: dict[str, object] | None = None,
    influx: dict[str, object] | None = None,
    gateway: dict[str, object] | None = None,
) -> GatewayRun:
    """A gateway's config (fast registry snapshots, a state dir in `workdir`), not started yet."""
    return GatewayRun(
        workdir,
        gateway_id,
        prefix,
        {
            "mqtt": {"url": broker_url, "prefix": prefix, "reconnect_max_s": 2, **(mqtt_keys or {})},
            "influx": {"url": store_url, "retry_initial_s": 0.1, "retry_max_s": 1.0, **(influx or {})},
            "gateway": {
                "id": gateway_id,
                "state_dir": str(workdir / f"state-{gateway_id}"),
                "registry_interval_s": 0.2,
                "stats_interval_s": 5,
                **(gateway or {}),
            },
        },
    )


# --------------------------------------------------------------------------- MQTT sides


def _client(port: int, client_id: str, username: str | None, password: str | None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(0)
    if username:
        client.username_pw_set(username, password)
    return client


class AgentPublisher:
    """Publishes as agents do (QoS 1), in chunks, waiting for the broker's PUBACK of each."""

    def __init__(self, port: int, client_id: str, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.client = _client(port, client_id, username, password)
        self.reasons: dict[int, int] = {}
        self._done = threading.Condition()
        self.client.on_publish = self._on_publish
        up = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: up.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not up.wait(20):
            raise LifelineError(f"{client_id}: no CONNACK from 127.0.0.1:{port}")

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: Any, props: Any) -> None:
        with self._done:
            self.reasons[mid] = reason.value
            self._done.notify_all()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish one message and return the PUBACK's reason code (0: taken, 135: not authorized)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._done:
            if not self._done.wait_for(lambda: info.mid in self.reasons, 60):
                raise LifelineError(f"no PUBACK for {topic}")
            return self.reasons.pop(info.mid)

    def publish_many(self, messages: Iterable[tuple[str, bytes]]) -> int:
        """Publish every message, PUBLISH_CHUNK at a time; returns how many."""
        count = 0
        infos: list[mqtt.MQTTMessageInfo] = []
        for topic, payload in messages:
            infos.append(self.client.publish(topic, payload, qos=1))
            count += 1
            if len(infos) >= PUBLISH_CHUNK:
                self._wait(infos)
        self._wait(infos)
        return count

    def _wait(self, infos: list[mqtt.MQTTMessageInfo]) -> None:
        for info in infos:
            info.wait_for_publish(120)
            if not info.is_published():
                raise LifelineError("the broker did not acknowledge a publish within 120 s")
        infos.clear()
        with self._done:
            self.reasons.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class GatewayWatch:
    """What an ops console sees: first arrival of each alert id on the ops topics it subscribes to,
    the ops events, and the gateway's latest retained registry snapshot."""

    def __init__(self, port: int, prefix: str, gateway_id: str, *, ops_filter: str, client_id: str,
                 username: str | None = None, password: str | None = None) -> None:
        self.arrivals: dict[str, float] = {}
        self.flagged: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.snapshot: dict[str, Any] = {}
        self._registry = f"{prefix}/registry/{gateway_id}"
        self._cond = threading.Condition()
        self.client = _client(port, client_id, username, password)
        subscribed = threading.Event()
        filters = [(ops_filter, 0), (f"{prefix}/event/#", 1), (self._registry, 1)]
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(filters)
        self.client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(20):
            raise LifelineError(f"{client_id}: could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        arrived = time.monotonic()
        body = msgpack.unpackb(msg.payload) if msg.payload else {}
        with self._cond:
            if msg.topic == self._registry:
                self.snapshot = body
            elif "/event/" in msg.topic:
                self.events.append(body)
            else:
                alert_id = body.get("id", "")
                self.arrivals.setdefault(alert_id, arrived)
                if body.get("unverified"):
                    self.flagged[alert_id] = body
            self._cond.notify_all()

    def wait_for(self, check: Callable[[GatewayWatch], bool], timeout_s: float = STEP_TIMEOUT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: check(self), timeout_s)

    def counters(self) -> dict[str, int]:
        with self._cond:
            return dict(self.snapshot.get("counters", {}))

    def online_since(self, t_ms: int) -> Callable[[GatewayWatch], bool]:
        return lambda w: w.snapshot.get("state") == "online" and w.snapshot.get("ts", 0) >= t_ms

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- load and store


def owner_of(snapshot: dict[str, Any], sensor: str) -> str | None:
    """The owner of `sensor` in a registry snapshot, if the gateway knows it."""
    sensors = snapshot.get("sensors") or {}
    return dict(zip(sensors.get("sensor", []), sensors.get("owner", []))).get(sensor)


def make_alert(tag: str, i: int, *, start_ms: int, agent: str, level: int = 1, prev: int = 0,
               sensor: str | None = None) -> Alert:
    """Alert `i` of a backlog: 40 sensors, three rules, one millisecond apart (unique points)."""
    return Alert(
        id=f"{agent}:{i}",
        agent=agent,
        sensor=sensor or f"{tag}-S{i % 40}",
        kind="pipe.pressure",
        site=f"{tag}-site{i % 5}",
        township=f"{tag}-town",
        district=f"{tag}-d",
        rule=("high", "low", "rate")[i % 3],
        level=level,
        prev=prev,
        value=0.5 + i * 1e-6,
        ts=start_ms + i,
        seq=i,
        limit=0.6,
    )


def alert_message(prefix: str, a: Alert) -> tuple[str, bytes]:
    return alert_topic(prefix, a.district, a.site, a.sensor), a.encode()


def make_summary(agent: str, sensors: list[str], t1: int, *, tag: str, seed: int = 0) -> Summary:
    rng = np.random.default_rng(seed)
    rows = len(sensors)
    return Summary(
        agent=agent, township=f"{tag}-town", district=f"{tag}-d", t0=t1 - 1000, t1=t1,
        sensor=sensors, kind=["pipe.flow"] * rows, site=[f"{tag}-site"] * rows,
        n=rng.integers(1, 100, rows), min=rng.normal(size=rows), max=rng.normal(size=rows),
        mean=rng.normal(size=rows), last=rng.normal(size=rows),
    )


def status_message(prefix: str, agent: str) -> tuple[str, bytes]:
    return status_topic(prefix, agent), Status(agent, "online", now_ms(), {"version": "fault"}).encode()


def stored_alerts(store: VictoriaMetricsServer, sensor_prefix: str) -> Counter[tuple[str, str, int]]:
    """`alert` points per (sensor, rule, ts) of sensors starting with `sensor_prefix`."""
    counts: Counter[tuple[str, str, int]] = Counter()
    for series in store.export(f'{{__name__="alert_level",sensor=~"{sensor_prefix}.*"}}', start_ms=0):
        for ts in series.timestamps:
            counts[(series.metric["sensor"], series.metric["rule"], ts)] += 1
    return counts


def stored_readings(store: VictoriaMetricsServer, sensor_prefix: str) -> Counter[tuple[str, int]]:
    """`reading` points per (sensor, t1) of sensors starting with `sensor_prefix`."""
    counts: Counter[tuple[str, int]] = Counter()
    for series in store.export(f'{{__name__="reading_n",sensor=~"{sensor_prefix}.*"}}', start_ms=0):
        for ts in series.timestamps:
            counts[(series.metric["sensor"], ts)] += 1
    return counts


#: Longest wait for every acknowledged point to show in the store's export (VictoriaMetrics may
#: take a moment to make freshly created series searchable on a loaded machine).
VISIBLE_TIMEOUT_S: Final = 60.0


def wait_stored(read: Callable[[], Counter[Any]], expected: Counter[Any]) -> Counter[Any]:
    """Read the store until it holds every expected point, or VISIBLE_TIMEOUT_S passed; the last
    read is returned either way (what is still missing then is lost)."""
    deadline = time.monotonic() + VISIBLE_TIMEOUT_S
    pause = threading.Event()
    while True:
        found = read()
        if all(found.get(key, 0) for key in expected) or time.monotonic() > deadline:
            return found
        pause.wait(1.0)


@dataclass(frozen=True)
class Tally:
    """Offered against stored: what is missing, what is there twice, what was dead-lettered."""

    offered: int
    stored: int
    lost: int
    duplicates: int
    dead_lettered: int

    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates == 0


def tally(expected: Counter[Any], found: Counter[Any], dead_lettered: int, *,
          expected_dead: int = 0) -> Tally:
    """`expected` holds each point that must be stored once; extra points in `found` are ignored."""
    lost = sum(1 for key in expected if found.get(key, 0) == 0)
    duplicates = sum(count - 1 for key, count in found.items() if key in expected and count > 1)
    stored = sum(1 for key in expected if found.get(key, 0) > 0)
    return Tally(len(expected) + expected_dead, stored, lost, duplicates, dead_lettered)


# --------------------------------------------------------------------------- 1. backlog


@dataclass(frozen=True)
class BacklogResult:
    alerts: int
    keep_state: bool
    store_latency_s: float
    publish_s: float
    startup_s: float
    drain_s: float
    peak_rss_mib: float
    live_latency_s: float | None
    live_during_drain: bool
    refused: int
    held: int
    live_routed: int
    tally: Tally

    @property
    def rate(self) -> float:
        return self.alerts / self.drain_s if self.drain_s > 0 else 0.0

    def describe(self) -> str:
        live = "never" if self.live_latency_s is None else f"{self.live_latency_s * 1000:.0f} ms"
        return (f"backlog of {self.alerts:,} alerts ({'state kept' if self.keep_state else 'state lost'}): "
                f"drained in {self.drain_s:.1f} s ({self.rate:,.0f}/s) after {self.startup_s:.1f} s of start-up, "
                f"gateway peak RSS {self.peak_rss_mib:.0f} MiB; live alarm to ops in {live} "
                f"({'during' if self.live_during_drain else 'after'} the drain); refused {self.refused}, "
                f"held {self.held}; {self.tally}")


def run_backlog(
    broker: MosquittoServer,
    store: VictoriaMetricsServer,
    workdir: Path,
    *,
    alerts: int,
    keep_state: bool = True,
    store_latency_s: float = 0.0,
    max_inflight: int = 20_000,
    tag: str = "backlog",
    prefix: str = "lifeline/v1",
    log: Log = print,
) -> BacklogResult:
    """Restart the gateway into a backlog of `alerts` alerts of one known agent (see module doc)."""
    agent = f"{tag}-agent"
    gateway_id = f"gw-{tag}"
    with ExitStack() as stack:
        store_url = store.url
        if store_latency_s > 0:
            store_url = stack.enter_context(FaultProxy(store.url, latency_s=store_latency_s)).url
        gw = gateway_run(workdir, broker_url=broker.url, store_url=store_url, gateway_id=gateway_id,
                         prefix=prefix, gateway={"max_inflight": max_inflight})
        stack.callback(gw.kill)
        watch = GatewayWatch(broker.port, prefix, gateway_id, ops_filter=f"{prefix}/ops/city/#",
                             client_id=f"{tag}-watch")
        stack.callback(watch.close)
        pub = AgentPublisher(broker.port, f"{tag}-agent-pub")
        stack.callback(pub.close)
        pub.publish(*status_message(prefix, agent), retain=True)
        started = now_ms()
        gw.start()
        if not watch.wait_for(lambda w: w.online_since(started)(w) and any(
                a["agent"] == agent for a in w.snapshot.get("agents", [])), 60):
            raise LifelineError(f"the gateway never listed {agent}:\n{gw.log()[-2000:]}")
        gw.stop()  # its session stays at the broker and queues what follows
        start = now_ms() - 3_600_000
        log(f"  publishing {alerts:,} alerts of {agent} while the gateway is down ...")
        t = time.monotonic()
        pub.publish_many(alert_message(prefix, make_alert(tag, i, start_ms=start, agent=agent))
                         for i in range(alerts))
        publish_s = time.monotonic() - t
        if not keep_state:
            shutil.rmtree(gw.state_dir)
        restarted = now_ms()
        t0 = time.monotonic()
        gw.start()
        if not watch.wait_for(lambda w: w.online_since(restarted)(w) and w.counters().get("received", 0) > 0, 120):
            raise LifelineError(f"the restarted gateway did not start draining:\n{gw.log()[-2000:]}")
        startup_s = time.monotonic() - t0
        live = dataclasses.replace(
            make_alert(tag, alerts, start_ms=0, agent=agent, level=4, sensor=f"{tag}-LIVE"),
            ts=now_ms() - RECENT_MS,
        )
        t_live = time.monotonic()
        pub.publish(*alert_message(prefix, live))
        arrived = watch.wait_for(lambda w: live.id in w.arrivals, 60)
        live_latency = watch.arrivals[live.id] - t_live if arrived else None
        during = watch.counters().get("alerts", 0) < alerts  # the backlog was still being read
        log(f"  live alarm to ops in {live_latency if live_latency is None else round(live_latency, 3)} s, "
            f"{'during' if during else 'after'} the drain")
        if not watch.wait_for(lambda w: w.counters().get("alerts", 0) >= alerts + 1
                              and w.counters().get("in_flight", 1) == 0, STEP_TIMEOUT_S):
            raise LifelineError(f"the backlog did not drain: {watch.counters()}\n{gw.log()[-2000:]}")
        drain_s = time.monotonic() - t0 - startup_s
        gw.check()
        peak = gw.peak_rss_mib()
        counters = gw.stop()
        dead = sum(gw.dead_letters().values())
        expected = Counter((a.sensor, a.rule, a.ts) for a in
                           (make_alert(tag, i, start_ms=start, agent=agent) for i in range(alerts)))
        expected[(live.sensor, live.rule, live.ts)] = 1
        found = wait_stored(lambda: stored_alerts(store, f"{tag}-"), expected)
        return BacklogResult(
            alerts=alerts, keep_state=keep_state, store_latency_s=store_latency_s, publish_s=publish_s,
            startup_s=startup_s, drain_s=drain_s, peak_rss_mib=peak, live_latency_s=live_latency,
            live_during_drain=during, refused=counters.get("alerts_refused", -1),
            held=counters.get("alerts_held", -1), live_routed=counters.get("live_routed", -1),
            tally=tally(expected, found, dead),
        )
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- 2. hijack


DISTRICT: Final = "yuzhong"
TOWNSHIP: Final = "town-1"
USERS: Final = {"gateway": "gw-pass-1301", "ops-console": "ops-pass-1302", "yz-a": "a-pass-1303",
                "yz-b": "b-pass-1304"}


def acl_broker(workdir: Path, *, prefix: str = "lifeline/v1") -> MosquittoServer:
    """Mosquitto with passwords and the deployed ACL: yz-a's block generated from its config
    (its sensors' alert topics only), yz-b's a wide `alert/#` block, as an old block would be."""
    server = MosquittoServer(listener="", workdir=workdir)
    passwd = workdir / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                       check=True, capture_output=True, timeout=30)
    acl = Path(shutil.copy(ACL, workdir / "lifeline.acl"))
    owner = AgentConfig.model_validate({
        "agent": {"id": "yz-a", "district": DISTRICT, "township": TOWNSHIP},
        "sensor": [{"id": "GAS-A", "kind": "pipe.gas", "site": "site-1", "source": "mqtt"}],
    })
    with acl.open("a") as fh:
        fh.write("\n" + agent_acl_block(owner))
        fh.write(f"\nuser yz-b\ntopic write {prefix}/status/yz-b\ntopic write {prefix}/summary/yz-b\n"
                 f"topic write {prefix}/alert/#\n")
    server.extra_config = f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
    return server


@dataclass(frozen=True)
class HijackResult:
    owner_after: str | None
    real_routed: bool
    real_flagged: bool
    forged_flagged: dict[str, Any] | None
    forged_low_routed: bool
    conflicts: list[dict[str, Any]]
    future_timestamps: int
    dead_letters: dict[str, int]
    forged_stored: int
    future_rows_stored: int
    tally: Tally

    def describe(self) -> str:
        return (f"owner after {self.owner_after}; real alarm routed {self.real_routed} (flagged {self.real_flagged}); "
                f"forged alarm flagged {self.forged_flagged is not None}; forged level-1 routed {self.forged_low_routed}; "
                f"{len(self.conflicts)} conflict event(s); future times {self.future_timestamps}; "
                f"dead letters {self.dead_letters}; forged points stored {self.forged_stored + self.future_rows_stored}; "
                f"{self.tally}")


def run_hijack(store: VictoriaMetricsServer, workdir: Path, *, log: Log = print) -> HijackResult:
    """yz-b tries to take yz-a's sensor GAS-A (see module doc); through the ACL broker."""
    prefix, gateway_id = "lifeline/v1", "gw-hijack"
    (workdir / "broker").mkdir(parents=True, exist_ok=True)
    password_file = workdir / "gateway.password"
    password_file.write_text(USERS["gateway"] + "\n")
    with ExitStack() as stack:
        broker = stack.enter_context(acl_broker(workdir / "broker"))
        gw = gateway_run(workdir, broker_url=broker.url, store_url=store.url, gateway_id=gateway_id,
                         prefix=prefix, mqtt_keys={"username": "gateway", "password_file": str(password_file)})
        stack.callback(gw.kill)
        watch = GatewayWatch(broker.port, prefix, gateway_id, ops_filter=f"{prefix}/ops/#",
                             client_id="hijack-console", username="ops-console", password=USERS["ops-console"])
        stack.callback(watch.close)
        owner = AgentPublisher(broker.port, "hijack-yz-a", username="yz-a", password=USERS["yz-a"])
        stack.callback(owner.close)
        thief = AgentPublisher(broker.port, "hijack-yz-b", username="yz-b", password=USERS["yz-b"])
        stack.callback(thief.close)
        started = now_ms()
        gw.start()
        if not watch.wait_for(watch.online_since(started), 60):
            raise LifelineError(f"the gateway did not come online:\n{gw.log()[-2000:]}")
        t1 = now_ms() - 60_000
        offered = 0

        def send(who: AgentPublisher, message: tuple[str, bytes], *, retain: bool = False) -> None:
            nonlocal offered
            offered += 1
            if (reason := who.publish(*message, retain=retain)) != 0:
                raise LifelineError(f"the broker refused {message[0]} (reason {reason})")

        # The broker keeps no order between two publishers' messages: each step waits until the
        # gateway has taken the one before (its registry snapshot, its events), as it would have
        # over time for a real owner long known before any thief shows up.
        send(owner, status_message(prefix, "yz-a"), retain=True)
        send(owner, (summary_topic(prefix, "yz-a"), make_summary("yz-a", ["GAS-A"], t1, tag="hijack").encode()))
        if not watch.wait_for(lambda w: owner_of(w.snapshot, "GAS-A") == "yz-a", 60):
            raise LifelineError(f"the gateway never registered yz-a as GAS-A's owner: {watch.snapshot}")
        send(thief, status_message(prefix, "yz-b"), retain=True)
        future = make_summary("yz-b", ["GAS-B", "GAS-A"], now_ms() + TEN_YEARS_MS, tag="hijack")
        send(thief, (summary_topic(prefix, "yz-b"), future.encode()))  # the hijack of the issue
        in_skew = make_summary("yz-b", ["GAS-B", "GAS-A"], now_ms() - RECENT_MS, tag="hijack")
        send(thief, (summary_topic(prefix, "yz-b"), in_skew.encode()))  # a claim: a conflict
        if not watch.wait_for(lambda w: any(e.get("event") == "conflict" for e in w.events)
                              and owner_of(w.snapshot, "GAS-B") == "yz-b", 60):
            raise LifelineError(f"the thief's claim never reached the gateway: {watch.events}")
        real = Alert(id="yz-a:1", agent="yz-a", sensor="GAS-A", kind="pipe.gas", site="site-1",
                     township=TOWNSHIP, district=DISTRICT, rule="high", level=4, prev=0,
                     value=60.0, ts=now_ms() - RECENT_MS, seq=1, limit=50.0)
        forged = dataclasses.replace(real, id="yz-b:1", agent="yz-b", ts=real.ts + 1)
        forged_low = dataclasses.replace(real, id="yz-b:2", agent="yz-b", ts=real.ts + 2, seq=2, level=1)
        # yz-a's generated ACL block binds it to GAS-A's alert topic; yz-b's wide block lets it
        # publish there too: the gateway's ownership check is what stops it.
        for who, a in ((owner, real), (thief, forged), (thief, forged_low)):
            send(who, alert_message(prefix, a))
        refused = owner.publish(*alert_message(prefix, dataclasses.replace(real, sensor="GAS-B", id="yz-a:9")))
        if refused != 135:
            raise LifelineError(f"the per-agent ACL let yz-a publish on another sensor's topic ({refused})")
        if not watch.wait_for(lambda w: {real.id, forged.id} <= set(w.arrivals)
                              and any(e.get("event") == "conflict" for e in w.events), 60):
            raise LifelineError(f"alarms or the conflict event did not arrive: {watch.arrivals} {watch.events}")
        if not watch.wait_for(lambda w: w.counters().get("acked", 0) >= offered
                              and w.counters().get("in_flight", 1) == 0, 60):
            raise LifelineError(f"not everything was acknowledged: {watch.counters()}")
        owner_after = owner_of(watch.snapshot, "GAS-A")
        counters = gw.stop()
        dead = gw.dead_letters()
        want_alerts: Counter[Any] = Counter({("GAS-A", "high", real.ts): 1})
        want_rows: Counter[Any] = Counter({("GAS-A", t1): 1, ("GAS-B", in_skew.t1): 1})
        alerts_found = wait_stored(lambda: stored_alerts(store, "GAS-"), want_alerts)
        readings = wait_stored(lambda: stored_readings(store, "GAS-"), want_rows)
        log(f"  events: {[(e['event'], e['owner'], e['claimant'], e['source']) for e in watch.events]}")
        # What must be stored once: the owner's alarm and row, the thief's row of its own sensor
        # from the in-skew summary. Dead-lettered: the future summary, the in-skew summary's row of
        # GAS-A, the forged alarm (routed flagged) and the forged level-1 alert.
        expected = want_alerts + want_rows
        return HijackResult(
            owner_after=owner_after,
            real_routed=real.id in watch.arrivals,
            real_flagged=real.id in watch.flagged,
            forged_flagged=watch.flagged.get(forged.id),
            forged_low_routed=forged_low.id in watch.arrivals,
            conflicts=[e for e in watch.events if e.get("event") == "conflict"],
            future_timestamps=counters.get("future_timestamps", -1),
            dead_letters=dead,
            forged_stored=sum(c for (s, r, ts), c in alerts_found.items() if ts in (forged.ts, forged_low.ts)),
            future_rows_stored=sum(c for (s, ts), c in readings.items()
                                   if ts == future.t1 or (s == "GAS-A" and ts == in_skew.t1)),
            tally=tally(expected, alerts_found + readings, sum(dead.values()), expected_dead=4),
        )
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- 3. bad rows


@dataclass(frozen=True)
class BadRowsResult:
    summaries: int
    rows: int
    bad: int
    acked: int
    rows_rejected: int
    dead_letters: dict[str, int]
    store_messages: list[str]
    proxy_rejections: int
    tally: Tally

    def describe(self) -> str:
        return (f"{self.summaries} summaries x {self.rows} rows, {self.bad} malformed: acked {self.acked}, "
                f"rows refused {self.rows_rejected}, dead letters {self.dead_letters}, "
                f"store answered 400 {self.proxy_rejections} times; {self.tally}")


def run_bad_rows(
    broker: MosquittoServer,
    store: VictoriaMetricsServer,
    workdir: Path,
    *,
    summaries: int,
    rows: int,
    bad_every: int,
    tag: str = "badrows",
    prefix: str = "lifeline/v1",
    log: Log = print,
) -> BadRowsResult:
    """Summaries of `rows` rows, one malformed row in every `bad_every`-th summary (see module doc)."""
    gateway_id = f"gw-{tag}"
    with ExitStack() as stack:
        proxy = stack.enter_context(FaultProxy(store.url, reject=rb"sensor=[^,]*-BAD"))
        gw = gateway_run(workdir, broker_url=broker.url, store_url=proxy.url, gateway_id=gateway_id,
                         prefix=prefix, influx={"batch_size": 5000})
        stack.callback(gw.kill)
        watch = GatewayWatch(broker.port, prefix, gateway_id, ops_filter=f"{prefix}/ops/city/#",
                             client_id=f"{tag}-watch")
        stack.callback(watch.close)
        pub = AgentPublisher(broker.port, f"{tag}-pub")
        stack.callback(pub.close)
        started = now_ms()
        gw.start()
        if not watch.wait_for(watch.online_since(started), 60):
            raise LifelineError(f"the gateway did not come online:\n{gw.log()[-2000:]}")
        agents = [f"{tag}-agent{k}" for k in range(4)]
        for agent in agents:
            pub.publish(*status_message(prefix, agent), retain=True)
        start = now_ms() - 3_600_000
        good: Counter[tuple[str, int]] = Counter()
        bad = 0
        messages = []
        for k in range(summaries):
            agent = agents[k % 4]
            t1 = start + (k // 4) * 1000
            sensors = [f"{agent}-R{i}" for i in range(rows)]
            if k % bad_every == 0:
                sensors[(k * 7) % rows] = f"{agent}-BAD{k}"  # a row the store refuses
                bad += 1
            good.update((s, t1) for s in sensors if "-BAD" not in s)
            messages.append((summary_topic(prefix, agent), make_summary(agent, sensors, t1, tag=tag, seed=k).encode()))
        pub.publish_many(messages)
        if not watch.wait_for(lambda w: w.counters().get("summaries", 0) >= summaries
                              and w.counters().get("in_flight", 1) == 0, 120):
            raise LifelineError(f"not every summary was acknowledged: {watch.counters()}\n{gw.log()[-2000:]}")
        counters = gw.stop()
        state = GatewayState(gw.state_dir / f"{gateway_id}.sqlite")
        try:
            letters = state.dead_letters(reason="store_rejected", limit=100_000)
        finally:
            state.close()
        found = wait_stored(lambda: stored_readings(store, f"{tag}-agent"), good)
        log(f"  store refused {proxy.stats.rejected} request(s); {len(letters)} row(s) dead-lettered")
        return BadRowsResult(
            summaries=summaries, rows=rows, bad=bad, acked=counters.get("acked", -1),
            rows_rejected=counters.get("rows_rejected", -1), dead_letters=gw.dead_letters(),
            store_messages=[d.detail for d in letters], proxy_rejections=proxy.stats.rejected,
            tally=tally(good, found, len(letters), expected_dead=bad),
        )
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- 4. slow store


@dataclass(frozen=True)
class SlowStoreResult:
    latency_s: float
    max_writes: int
    offered_per_s: float
    seconds: float
    stored_per_s: float
    lag_s: float
    peak_rss_mib: float
    tally: Tally

    def describe(self) -> str:
        return (f"store latency {self.latency_s * 1000:.0f} ms, {self.max_writes} write(s) in flight: offered "
                f"{self.offered_per_s:,.0f} points/s for {self.seconds:.0f} s, stored {self.stored_per_s:,.0f} points/s, "
                f"all stored {self.lag_s:.1f} s after the last publish; peak RSS {self.peak_rss_mib:.0f} MiB; {self.tally}")


def _summaries(tag: str, agents: int, rows: int, start_ms: int) -> Iterator[tuple[str, Summary]]:
    """An endless stream of summaries of `rows` rows from `agents` agents, one window per round."""
    k = 0
    while True:
        agent = f"{tag}-agent{k % agents}"
        t1 = start_ms + (k // agents) * 1000
        yield agent, make_summary(agent, [f"{agent}-R{i}" for i in range(rows)], t1, tag=tag, seed=k % 7)
        k += 1


def run_slow_store(
    broker: MosquittoServer,
    store: VictoriaMetricsServer,
    workdir: Path,
    *,
    latency_s: float,
    points_per_s: float,
    seconds: float,
    max_writes: int = 4,
    backlog: bool = False,
    rows: int = 500,
    tag: str = "slow",
    prefix: str = "lifeline/v1",
    log: Log = print,
) -> SlowStoreResult:
    """Offer `points_per_s` points/s of summaries (`rows` rows each) for `seconds` to a gateway whose
    store answers after `latency_s`; with `backlog` the points are queued first and drained."""
    gateway_id = f"gw-{tag}"
    messages = max(1, round(points_per_s * seconds / rows))
    with ExitStack() as stack:
        proxy = stack.enter_context(FaultProxy(store.url, latency_s=latency_s))
        gw = gateway_run(workdir, broker_url=broker.url, store_url=proxy.url, gateway_id=gateway_id,
                         prefix=prefix, influx={"max_writes": max_writes})
        stack.callback(gw.kill)
        watch = GatewayWatch(broker.port, prefix, gateway_id, ops_filter=f"{prefix}/ops/city/#",
                             client_id=f"{tag}-watch")
        stack.callback(watch.close)
        pub = AgentPublisher(broker.port, f"{tag}-pub")
        stack.callback(pub.close)
        for k in range(4):
            pub.publish(*status_message(prefix, f"{tag}-agent{k}"), retain=True)
        stream = _summaries(tag, 4, rows, now_ms() - 3_600_000)
        batch = [next(stream) for _ in range(messages)]
        expected = Counter((s, summary.t1) for _, summary in batch for s in summary.sensor)
        payloads = [(summary_topic(prefix, agent), summary.encode()) for agent, summary in batch]
        started = now_ms()
        if backlog:
            gw.start()
            if not watch.wait_for(watch.online_since(started), 60):
                raise LifelineError(f"the gateway did not come online:\n{gw.log()[-2000:]}")
            gw.stop()
            pub.publish_many(payloads)
            restarted = now_ms()
            gw.start()
            if not watch.wait_for(lambda w: w.online_since(restarted)(w) and w.counters().get("received", 0) > 0, 120):
                raise LifelineError(f"the gateway did not start draining:\n{gw.log()[-2000:]}")
            t0 = time.monotonic()
            last_publish = t0
        else:
            gw.start()
            if not watch.wait_for(watch.online_since(started), 60):
                raise LifelineError(f"the gateway did not come online:\n{gw.log()[-2000:]}")
            t0 = time.monotonic()
            pace = threading.Event()
            every = seconds / messages
            for i, message in enumerate(payloads):  # paced as agents would send them
                pace.wait(max(0.0, t0 + i * every - time.monotonic()))
                pub.client.publish(*message, qos=1)
            last_publish = time.monotonic()
        if not watch.wait_for(lambda w: w.counters().get("summaries", 0) >= messages
                              and w.counters().get("in_flight", 1) == 0, STEP_TIMEOUT_S):
            raise LifelineError(f"the gateway did not store everything: {watch.counters()}\n{gw.log()[-2000:]}")
        done = time.monotonic()
        peak = gw.peak_rss_mib()
        gw.stop()
        found = wait_stored(lambda: stored_readings(store, f"{tag}-agent"), expected)
        points = sum(expected.values())
        offered_s = max(last_publish - t0, 1e-9) if not backlog else 0.0
        result = SlowStoreResult(
            latency_s=latency_s, max_writes=max_writes,
            offered_per_s=points / offered_s if offered_s else 0.0, seconds=seconds if not backlog else 0.0,
            stored_per_s=points / (done - t0), lag_s=done - last_publish, peak_rss_mib=peak,
            tally=tally(expected, found, sum(gw.dead_letters().values())),
        )
        log(f"  {result.describe()}")
        return result
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the suite


@dataclass
class Report:
    """Everything one run measured, for RESULTS.md."""

    backlogs: list[BacklogResult] = field(default_factory=list)
    sweep: list[SlowStoreResult] = field(default_factory=list)
    outcomes: list[FaultOutcome] = field(default_factory=list)


FAULTS: Final = ("backlog", "backlog-state-lost", "hijack", "bad-rows", "slow-store", "store-latency")


def _servers(stack: ExitStack, workdir: Path, *, big_backlog: bool = False) -> tuple[MosquittoServer, VictoriaMetricsServer]:
    """Fresh Mosquitto and VictoriaMetrics in `workdir`, stopped with `stack`."""
    (workdir / "mosquitto").mkdir(parents=True, exist_ok=True)
    (workdir / "store").mkdir(parents=True, exist_ok=True)
    # A million queued messages: no queue limit, and no rewrite of them all every second.
    extra = "max_queued_messages 0\nautosave_interval 600\n" if big_backlog else ""
    broker = stack.enter_context(MosquittoServer(workdir=workdir / "mosquitto", extra_config=extra))
    store = stack.enter_context(VictoriaMetricsServer(workdir=workdir / "store"))
    return broker, store


def _backlog(report: Report, workdir: Path, size: int, keep: bool, command: str, log: Log) -> None:
    with ExitStack() as stack:
        broker, store = _servers(stack, workdir, big_backlog=size > 500_000)
        result = run_backlog(broker, store, workdir, alerts=size, keep_state=keep, tag=f"bl{size}", log=log)
    log(f"  {result.describe()}")
    report.backlogs.append(result)
    live = "-" if result.live_latency_s is None else f"{result.live_latency_s * 1000:,.0f} ms"
    report.outcomes.append(_outcome(
        f"gateway restart into a backlog of {size:,} alerts" + ("" if keep else ", state file lost"),
        f"one agent queued {size:,} alerts (QoS 1, persistent session) while the gateway was down; drained in "
        f"{result.drain_s:.1f} s, gateway peak RSS {result.peak_rss_mib:.0f} MiB; a live level-4 alarm during the "
        f"drain reached ops in {live}; refused {result.refused}",
        result.tally, command, recovery_s=result.startup_s))


def run_all(faults: Sequence[str], *, quick: bool, workdir: Path, command: str, log: Log = print) -> Report:
    """Run the named faults, each with fresh servers in a directory of its own."""
    report = Report()
    sizes = [100_000] if quick else [100_000, 1_000_000]
    for name in faults:
        log(f"{name} ...")
        run_dir = workdir / name
        if name == "backlog":
            for size in sizes:
                _backlog(report, run_dir / str(size), size, True, command, log)
        elif name == "backlog-state-lost":
            _backlog(report, run_dir, 20_000 if quick else sizes[0], False, command, log)
        elif name == "hijack":
            with ExitStack() as stack:
                _, store = _servers(stack, run_dir)
                hijack = run_hijack(store, run_dir / "gateway", log=log)
            log(f"  {hijack.describe()}")
            report.outcomes.append(_outcome(
                "sensor ownership hijack (future window end, forged alarms)",
                "agent yz-b lists yz-a's sensor with a window end 10 years ahead, then within the skew, and sends "
                f"level-4 and level-1 alerts for it in its own name: owner stays {hijack.owner_after}; the real alarm "
                f"routed{' flagged' if hijack.real_flagged else ' verified'}, the forged one routed flagged "
                f"unverified, the forged level 1 {'routed' if hijack.forged_low_routed else 'not routed'}; "
                f"{len(hijack.conflicts)} conflict event(s) naming both",
                hijack.tally, command))
        elif name == "bad-rows":
            summaries, rows = (40, 1000) if quick else (200, 1000)
            with ExitStack() as stack:
                broker, store = _servers(stack, run_dir)
                bad = run_bad_rows(broker, store, run_dir, summaries=summaries, rows=rows, bad_every=10, log=log)
            log(f"  {bad.describe()}")
            report.outcomes.append(_outcome(
                "store answers HTTP 400 for a batch with one malformed row",
                f"{summaries} summaries x {rows} rows, one malformed row in every 10th; the store refuses any body "
                f"holding one ({bad.proxy_rejections} refusals); the gateway bisects",
                bad.tally, command))
        elif name == "slow-store":
            with ExitStack() as stack:
                broker, store = _servers(stack, run_dir)
                slow = run_slow_store(broker, store, run_dir, latency_s=1.0, points_per_s=10_000,
                                      seconds=10 if quick else 30, log=log)
            report.outcomes.append(_outcome(
                "slow store: 1 s per write",
                f"agents offer {slow.offered_per_s:,.0f} points/s for {slow.seconds:.0f} s; stored "
                f"{slow.stored_per_s:,.0f} points/s, all stored {slow.lag_s:.1f} s after the last publish",
                slow.tally, command))
        elif name == "store-latency":
            points = 50_000 if quick else 300_000
            for k, (latency, writes) in enumerate([(0.0, 4), (0.01, 4), (0.1, 4), (1.0, 4), (1.0, 1)]):
                with ExitStack() as stack:
                    broker, store = _servers(stack, run_dir / str(k))
                    report.sweep.append(run_slow_store(
                        broker, store, run_dir / str(k), latency_s=latency, points_per_s=points, seconds=1.0,
                        max_writes=writes, backlog=True, rows=1000, tag=f"lat{k}", log=log))
        else:
            raise LifelineError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    return report


def _outcome(fault: str, load: str, t: Tally, command: str, *, recovery_s: float | None = None) -> FaultOutcome:
    return FaultOutcome(fault=fault, load=load, lost="nothing" if t.lost == 0 else f"{t.lost:,}",
                        duplicates=t.duplicates, recovery_s=recovery_s, command=command,
                        offered=f"{t.offered:,}", stored=f"{t.stored:,}", dead_lettered=f"{t.dead_lettered:,}")


BACKLOG_INTRO: Final = (
    "Restart into a backlog (one known agent queued the alerts in the gateway's persistent session, QoS 1, "
    "while it was down; default settings: receive maximum 20,000, 4 writes in flight). Start-up: process "
    "start to the first message taken; drain: from then to the last alert stored and acknowledged. The "
    "live alarm is a level-4 alert published once the drain began, timed to its arrival at an ops console "
    "subscribed to the city tier."
)
BACKLOG_HEADER: Final = (
    "| backlog | state file | start-up s | drain s | alerts/s | gateway peak RSS MiB | live alarm to ops "
    "| during the drain | refused | held | stored | lost | duplicates | dead-lettered |\n"
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)
SWEEP_INTRO: Final = (
    "Store latency: a backlog of summaries (1000 rows each) drained through a store that answers each "
    "write after the given latency; points/s from the first message taken to the last one stored."
)
SWEEP_HEADER: Final = (
    "| store latency | writes in flight | points | points/s | gateway peak RSS MiB | lost | duplicates |\n"
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def section_text(report: Report, command: str) -> str:
    """The "## Gateway faults" section: backlog drains and the store latency sweep."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = (
        f"Command: `{command}`; {when}, 2 cores shared with other work. Each case runs Mosquitto, "
        "VictoriaMetrics (behind `simulators.faultproxy.FaultProxy` for the store's faults) and "
        "`lifeline gateway` as a child process with its own state directory."
    )
    lines = [intro, ""]
    if report.backlogs:
        lines += [BACKLOG_INTRO, "", BACKLOG_HEADER]
        for b in report.backlogs:
            live = "never" if b.live_latency_s is None else f"{b.live_latency_s * 1000:,.0f} ms"
            lines.append(
                f"| {b.alerts:,} | {'kept' if b.keep_state else 'lost'} | {b.startup_s:.1f} | "
                f"{b.drain_s:.1f} | {b.rate:,.0f} | {b.peak_rss_mib:.0f} | {live} | "
                f"{'yes' if b.live_during_drain else 'no'} | {b.refused} | {b.held} | "
                f"{b.tally.stored:,} | {b.tally.lost} | {b.tally.duplicates} | {b.tally.dead_lettered} |"
            )
        lines.append("")
    if report.sweep:
        lines += [SWEEP_INTRO, "", SWEEP_HEADER]
        for s in report.sweep:
            lines.append(
                f"| {s.latency_s * 1000:,.0f} ms | {s.max_writes} | {s.tally.offered:,} | "
                f"{s.stored_per_s:,.0f} | {s.peak_rss_mib:.0f} | {s.tally.lost} | {s.tally.duplicates} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults_gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short versions (a 100 k backlog; about 3 minutes)")
    parser.add_argument("--fault", nargs="+", choices=FAULTS, default=list(FAULTS), help="faults to run")
    parser.add_argument("--list", action="store_true", help="name the faults and exit")
    parser.add_argument("--write", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(FAULTS))
        return
    command = "python -m benchmarks.faults_gateway" + (" --quick" if args.quick else "") + (
        f" --fault {' '.join(args.fault)}" if args.fault != list(FAULTS) else "") + (" --write" if args.write else "")
    workdir = Path(tempfile.mkdtemp(prefix="lifeline-faults-gw-"))
    try:
        report = run_all(args.fault, quick=args.quick, workdir=workdir, command=command)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = section_text(report, command)
    print(text)
    if args.write:
        if report.outcomes:
            write_fault_rows(report.outcomes)
        if report.backlogs or report.sweep:
            write_section(SECTION, text)
    failed = [o.fault for o in report.outcomes if o.lost != "nothing" or o.duplicates]
    if failed:
        print(f"LOST OR DUPLICATED: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
