"""The MQTT uplink against a real Mosquitto: delivery and acks, broker restarts, status and will,
password auth, TLS with a CA made here, and a bounded stop() even when the broker hangs."""

from __future__ import annotations

import logging
import os
import random
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.outbox import OutboundMessage, Outbox, OutboxError
from edge_agent.uplink import Uplink
from lifeline.config import MqttSettings
from lifeline.contract import Alert, alert_topic, decode_alert, decode_status, summary_topic
from lifeline.errors import ConfigError
from simulators.servers import MosquittoServer, free_port
from tests.test_gateway_integration import eventually

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
AGENT = "yz-jfb-01"
#: Started as root, Mosquitto drops to user `mosquitto` before reading password and certificate
#: files, which then sit in directories only root may enter; keep it root for these tests.


# --------------------------------------------------------------------------- helpers


def alert_message(prefix: str, seq: int) -> OutboundMessage:
    alert = Alert(id=f"{AGENT}-{seq}", agent=AGENT, sensor="YZ-P-0001", kind="pipe.pressure",
                  site="jfb-valve-12", township="jiefangbei", district="yuzhong", rule="low",
                  level=2, prev=1, value=0.14, ts=1_700_000_000_000 + seq, seq=seq, limit=0.15)
    return OutboundMessage(alert_topic(prefix, "yuzhong", "jfb-valve-12", "YZ-P-0001"), alert.encode(),
                           "alert")


def summary_message(prefix: str, n: int, size: int = 200) -> OutboundMessage:
    payload = msgpack.packb({"v": 1, "id": f"summary-{n}", "pad": b"x" * size})
    return OutboundMessage(summary_topic(prefix, AGENT), payload, "summary")


def message_id(topic: str, payload: bytes) -> tuple[str, int]:
    """('alert', seq) or ('summary', n) of a received message."""
    if "/alert/" in topic:
        return "alert", decode_alert(payload).seq
    return "summary", int(msgpack.unpackb(payload)["id"].split("-")[1])


class Recorder:
    """A subscriber that records every message on its topic filters."""

    def __init__(self, port: int, topics: list[str], *, name: str, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None,
                 clean_session: bool = True) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name,
                                  reconnect_on_failure=False, clean_session=clean_session)
        if auth:
            self.client.username_pw_set(*auth)
        if tls:
            self.client.tls_set_context(tls)
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *args: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert ready.wait(10), f"subscriber {name} got no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout_s: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout_s)

    def statuses(self) -> list[dict[str, Any]]:
        with self._cond:
            return [msgpack.unpackb(p) for t, p in self.messages if "/status/" in t]

    def data(self) -> list[tuple[str, int]]:
        with self._cond:
            return [message_id(t, p) for t, p in self.messages if "/status/" not in t]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Agent:
    outbox: Outbox
    uplink: Uplink
    prefix: str
    seq: int = 0

    def send_alerts(self, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            self.outbox.append([alert_message(self.prefix, self.seq)], last_alert_seq=self.seq)
            self.uplink.wake()


@pytest.fixture
def make_agent(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Agent]]:
    """Build outbox + uplink pairs named after the test; stopped and closed afterwards."""
    agents: list[Agent] = []

    def make(url: str, *, name: str = "agent", status: Callable[[], dict[str, Any]] = dict,
             **kwargs: Any) -> Agent:
        settings_keys = {k: kwargs.pop(k) for k in list(kwargs) if k in MqttSettings.model_fields}
        prefix = f"test/{request.node.name}"
        settings = MqttSettings(url=url, prefix=prefix, **{"reconnect_max_s": 0.2, **settings_keys})
        outbox = Outbox(tmp_path / name / "outbox.sqlite", max_messages=10_000)
        uplink = Uplink(settings, agent_id=AGENT, outbox=outbox, status=status,
                        rng=random.Random(1), **kwargs)
        agents.append(Agent(outbox, uplink, prefix))
        return agents[-1]

    yield make
    for agent in agents:
        agent.uplink.stop(timeout_s=1.0)
        agent.outbox.close()


def topics(prefix: str) -> list[str]:
    return [f"{prefix}/alert/#", f"{prefix}/summary/#", f"{prefix}/status/#"]


def first_occurrences(items: list[tuple[str, int]]) -> list[tuple[str, int]]:
    seen: set[tuple[str, int]] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


# --------------------------------------------------------------------------- delivery


def test_rows_arrive_once_in_order_and_leave_the_outbox(broker: MosquittoServer,
                                                        make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(broker.url)
    sub = Recorder(broker.port, topics(agent.prefix), name="sub-order")
    agent.uplink.start()
    assert agent.uplink.wait_connected(10)
    for n in range(1, 11):
        agent.outbox.append([summary_message(agent.prefix, n)])
        agent.send_alerts(5)
    assert agent.uplink.wait_drained(10)
    assert sub.wait_for(lambda m: len([x for x in m if "/status/" not in x[0]]) >= 60)
    got = sub.data()
    assert [n for kind, n in got if kind == "alert"] == list(range(1, 51))
    assert [n for kind, n in got if kind == "summary"] == list(range(1, 11))
    assert len(got) == 60, "no duplicates while the connection holds"
    assert agent.outbox.counters().pending == 0
    assert agent.uplink.counters().published == 60
    sub.close()


def test_an_alert_leaves_within_milliseconds_of_append(broker: MosquittoServer,
                                                       make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(broker.url)
    sub = Recorder(broker.port, [f"{agent.prefix}/alert/#"], name="sub-latency")
    agent.uplink.start()
    assert agent.uplink.wait_connected(10)
    latencies = []
    for i in range(1, 21):
        start = time.perf_counter()
        agent.send_alerts(1)
        assert sub.wait_for(lambda m, i=i: len(m) >= i)  # type: ignore[misc]
        latencies.append(time.perf_counter() - start)
    assert sorted(latencies)[10] < 0.05, f"median append-to-delivery {sorted(latencies)[10] * 1000:.1f} ms"
    sub.close()


def test_backlog_goes_alerts_first_and_live_alerts_overtake_a_summary_backlog(
        broker: MosquittoServer, make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(broker.url, max_inflight_bytes=256 * 1024)
    for n in range(1, 121):
        agent.outbox.append([summary_message(agent.prefix, n, size=50_000)])
    agent.send_alerts(3)  # appended after the summaries, sent before them
    sub = Recorder(broker.port, [f"{agent.prefix}/alert/#", f"{agent.prefix}/summary/#"], name="sub-prio")
    agent.uplink.start()
    assert sub.wait_for(lambda m: len(m) >= 10, 20)
    got = sub.data()
    assert got[:3] == [("alert", 1), ("alert", 2), ("alert", 3)]
    before = len(sub.data())
    agent.send_alerts(1)  # a live alert while about 6 MB of summaries are still queued
    assert sub.wait_for(lambda m: any(message_id(*x) == ("alert", 4) for x in m), 20)
    got = sub.data()
    overtaken = got.index(("alert", 4)) - before
    assert overtaken <= 12, f"the live alert waited behind {overtaken} summaries"
    assert agent.uplink.wait_drained(30)
    assert sub.wait_for(lambda m: ("summary", 120) in [message_id(*x) for x in m[-3:]])
    assert [n for kind, n in sub.data() if kind == "summary"] == list(range(1, 121))
    sub.close()


def test_nothing_is_lost_when_the_broker_dies_and_comes_back(make_agent: Callable[..., Agent],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.uplink")
    server = MosquittoServer().start()
    try:
        backing_off = threading.Event()
        reconnect_allowed = threading.Event()

        def sleep(delay_s: float) -> None:  # hold the uplink back until the new subscriber listens
            backing_off.set()
            reconnect_allowed.wait(20)

        agent = make_agent(server.url, sleep=sleep, max_inflight=20)
        # a persistent session: what the broker took but had not delivered when it died is kept
        # for it (a broker's own losses are not the agent's to make good)
        first = Recorder(server.port, topics(agent.prefix), name="sub-before", clean_session=False)
        agent.uplink.start()
        assert agent.uplink.wait_connected(10)
        agent.send_alerts(100)
        assert first.wait_for(lambda m: len(m) >= 20)
        server.terminate()  # mid-stream: some rows are in flight; the broker saves its sessions
        for n in range(1, 11):
            agent.outbox.append([summary_message(agent.prefix, n)])
            agent.send_alerts(5)
        assert backing_off.wait(10), "the uplink did not notice the broker died"
        assert not agent.uplink.connected
        assert agent.outbox.counters().pending > 0
        server.start()  # same port, same data directory
        first_back = Recorder(server.port, topics(agent.prefix), name="sub-before", clean_session=False)
        second = Recorder(server.port, topics(agent.prefix), name="sub-after")
        reconnect_allowed.set()
        assert agent.uplink.wait_drained(20)
        assert second.wait_for(lambda m: ("alert", 150) in [message_id(*x) for x in m
                                                            if "/status/" not in x[0]])
        assert second.wait_for(lambda m: ("summary", 10) in [message_id(*x) for x in m
                                                             if "/status/" not in x[0]])
        assert first_back.wait_for(lambda m: ("alert", 150) in [message_id(*x) for x in m
                                                                if "/status/" not in x[0]])
        got = first_occurrences(first.data() + first_back.data() + second.data())
        assert [n for kind, n in got if kind == "alert"] == list(range(1, 151))
        assert [n for kind, n in got if kind == "summary"] == list(range(1, 11))
        assert agent.outbox.counters().pending == 0
        assert agent.uplink.counters().reconnects == 1
        lines = [r.getMessage() for r in caplog.records if r.name == "edge_agent.uplink"]
        assert sum(line.startswith("connected to") for line in lines) == 2
        assert sum(line.startswith("lost connection to") and "reconnecting in" in line for line in lines) == 1
        second.close()
        first_back.close()
    finally:
        server.stop()


def test_reconnects_back_off_up_to_the_cap(make_agent: Callable[..., Agent],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.uplink")
    delays: list[float] = []
    enough, release = threading.Event(), threading.Event()

    def sleep(delay_s: float) -> None:
        delays.append(delay_s)
        if len(delays) >= 8:
            enough.set()
            release.wait(5)

    port = free_port()  # nothing listens there
    agent = make_agent(f"mqtt://127.0.0.1:{port}", sleep=sleep, reconnect_max_s=2.0,
                       reconnect_initial_s=0.25)
    agent.uplink.start()
    assert enough.wait(10)
    assert not agent.uplink.wait_connected(0.01)
    assert all(0 < d <= 2.0 for d in delays)
    assert delays[0] <= 0.25 and max(delays[5:8]) > 1.0, delays
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, "repeated failures are throttled to one line"
    assert f"127.0.0.1:{port}" in warnings[0].getMessage()
    assert "connection refused" in warnings[0].getMessage()
    release.set()


class FlakyAckOutbox(Outbox):
    """An outbox whose first deletes fail, as on a card that briefly refuses writes."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path, max_messages=1000)
        self.failures = failures

    def ack(self, row_ids: Iterable[int]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OutboxError(f"outbox {self.path}: cannot ack: disk I/O error")
        super().ack(row_ids)


def test_a_failing_ack_neither_resends_in_a_loop_nor_loses_rows(broker: MosquittoServer, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    outbox = FlakyAckOutbox(tmp_path / "o.sqlite", failures=2)
    prefix = "test/flaky-ack"
    uplink = Uplink(MqttSettings(url=broker.url, prefix=prefix), agent_id=AGENT, outbox=outbox, status=dict)
    sub = Recorder(broker.port, [f"{prefix}/alert/#"], name="sub-flaky-ack")
    try:
        uplink.start()
        assert uplink.wait_connected(10)
        for seq in range(1, 6):
            outbox.append([alert_message(prefix, seq)], last_alert_seq=seq)
        uplink.wake()
        assert uplink.wait_drained(10), "the ack was not retried"
        assert outbox.failures == 0
        outbox.append([alert_message(prefix, 6)], last_alert_seq=6)  # a marker: re-sends would precede it
        uplink.wake()
        assert sub.wait_for(lambda m: len(m) >= 6)
        assert [n for _, n in sub.data()] == [1, 2, 3, 4, 5, 6], "delivered rows were sent again"
        assert "will retry" in caplog.text
    finally:
        uplink.stop(timeout_s=1.0)
        outbox.close()
        sub.close()


def test_a_taken_over_client_id_backs_off_then_moves_to_an_id_of_its_own(
        broker: MosquittoServer, make_agent: Callable[..., Agent], caplog: pytest.LogCaptureFixture) -> None:
    """Two uplinks configured with the same client id throw each other off (a cloned SD card):
    short-lived connections keep backing off, and after a few the takeover is named and one
    moves to an id of its own, so both stay connected (and the retained status stops flapping)."""
    delays: list[float] = []

    def sleep(delay_s: float) -> None:
        delays.append(delay_s)
        threading.Event().wait(delay_s)

    first = make_agent(broker.url, name="first", sleep=sleep, reconnect_initial_s=0.01, reconnect_max_s=0.3)
    second = make_agent(broker.url, name="second", sleep=sleep, reconnect_initial_s=0.01, reconnect_max_s=0.3)
    first.uplink.start()
    assert first.uplink.wait_connected(10)
    second.uplink.start()
    eventually(lambda: first.uplink.client_id_taken_over or second.uplink.client_id_taken_over, 20,
               "the takeover to be seen")
    moved = first if first.uplink.client_id != first.uplink.configured_client_id else second
    assert moved.uplink.client_id.startswith(f"{AGENT}-") and moved.uplink.client_id_taken_over
    eventually(lambda: first.uplink.connected and second.uplink.connected, 20, "both connected at once")
    assert delays[2] > delays[0], f"short-lived connections must not reset the backoff: {delays}"
    named = [r.getMessage() for r in caplog.records if "same client id" in r.getMessage()]
    assert len(named) == 1 and f"client id {AGENT!r}" in named[0] and "cloned SD card" in named[0]
    moved.send_alerts(3)
    assert moved.uplink.wait_drained(10), "it delivers under its own id"


# --------------------------------------------------------------------------- status and will


def test_status_is_retained_online_with_counters_then_offline_on_stop(
        broker: MosquittoServer, make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(broker.url, status=lambda: {"sensors": 3, "frames": np.int64(7), "version": "t"},
                       status_interval_s=0.2)
    agent.uplink.start()
    assert agent.uplink.wait_connected(10)
    agent.send_alerts(2)
    assert agent.uplink.wait_drained(10)
    status_filter = [f"{agent.prefix}/status/{AGENT}"]
    late = Recorder(broker.port, status_filter, name="sub-status")  # gets the retained one first
    assert late.wait_for(lambda m: len(m) >= 3)
    retained = late.statuses()[0]
    assert decode_status(msgpack.packb(retained)).state == "online"
    assert retained["sensors"] == 3 and retained["agent"] == AGENT and retained["connected"] is True
    assert retained["frames"] == 7, "NumPy counters are sent as numbers"
    newest = late.statuses()[-1]
    assert newest["published"] == 2 and newest["backlog"] == 0 and newest["dropped"] == 0
    assert {"backlog_alerts", "dropped_alerts", "dropped_summaries", "reconnects"} <= set(newest)
    agent.uplink.stop(timeout_s=2.0)
    assert late.wait_for(lambda m: msgpack.unpackb(m[-1][1])["state"] == "offline")
    later = Recorder(broker.port, status_filter, name="sub-status-later")
    assert later.wait_for(lambda m: len(m) >= 1)
    assert later.statuses()[0]["state"] == "offline", "offline is retained"
    late.close()
    later.close()


def test_a_failing_status_callback_still_publishes_the_uplinks_status(
        broker: MosquittoServer, make_agent: Callable[..., Agent], caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("counters not ready")

    agent = make_agent(broker.url, status=broken)
    sub = Recorder(broker.port, [f"{agent.prefix}/status/#"], name="sub-broken-status")
    agent.uplink.start()
    assert sub.wait_for(lambda m: any(s["state"] == "online" for s in sub.statuses()))
    online = [s for s in sub.statuses() if s["state"] == "online"][-1]
    assert online["backlog"] == 0 and online["agent"] == AGENT
    assert "counters not ready" in caplog.text
    sub.close()


WILL_CHILD = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from lifeline.config import MqttSettings
    from edge_agent.outbox import Outbox
    from edge_agent.uplink import Uplink

    url, path, prefix = sys.argv[1:4]
    outbox = Outbox(Path(path), max_messages=100)
    uplink = Uplink(MqttSettings(url=url, prefix=prefix), agent_id="killed-agent", outbox=outbox,
                    status=dict)
    uplink.start()
    print("connected" if uplink.wait_connected(10) else "failed", flush=True)
    threading.Event().wait()
""")


def test_killed_agent_goes_offline_through_its_will(broker: MosquittoServer, tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(WILL_CHILD)
    prefix = "test/will"
    sub = Recorder(broker.port, [f"{prefix}/status/killed-agent"], name="sub-will")
    child = subprocess.Popen([sys.executable, str(script), broker.url, str(tmp_path / "o.sqlite"), prefix],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "connected"
        assert sub.wait_for(lambda m: any(s["state"] == "online" for s in sub.statuses()))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert sub.wait_for(lambda m: sub.statuses()[-1]["state"] == "offline")
        assert sub.statuses()[-1]["agent"] == "killed-agent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        sub.close()


def test_stop_drains_what_is_pending_before_saying_offline(broker: MosquittoServer,
                                                           make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(broker.url)
    sub = Recorder(broker.port, topics(agent.prefix), name="sub-drain")
    agent.uplink.start()
    assert agent.uplink.wait_connected(10)
    agent.send_alerts(300)
    agent.uplink.stop(timeout_s=5.0)
    assert agent.outbox.counters().pending == 0
    assert sub.wait_for(lambda m: bool(sub.statuses()) and sub.statuses()[-1]["state"] == "offline")
    assert [n for _, n in sub.data()] == list(range(1, 301))
    sub.close()


def test_stop_returns_in_time_when_the_broker_hangs(make_agent: Callable[..., Agent]) -> None:
    server = MosquittoServer().start()
    assert server.proc is not None
    try:
        agent = make_agent(server.url)
        agent.uplink.start()
        assert agent.uplink.wait_connected(10)
        os.kill(server.proc.pid, signal.SIGSTOP)  # connection stays open, nothing answers
        agent.send_alerts(50)
        started = time.monotonic()
        agent.uplink.stop(timeout_s=1.5)
        assert time.monotonic() - started < 2.5
        assert agent.outbox.counters().pending_alerts == 50, "undelivered alerts stay in the outbox"
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


# --------------------------------------------------------------------------- authentication and TLS


@pytest.fixture
def password_broker() -> Iterator[MosquittoServer]:
    server = MosquittoServer(listener="allow_anonymous false\n",
                             extra_config="password_file {dir}/passwd\n")
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(server.workdir / "passwd"), "agent-7", "s3cret-pw"],
                   check=True, capture_output=True)
    with server:
        yield server


def test_wrong_password_is_logged_clearly_and_retried(password_broker: MosquittoServer,
                                                      make_agent: Callable[..., Agent],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.uplink")
    attempts, release = threading.Semaphore(0), threading.Event()

    def sleep(delay_s: float) -> None:
        attempts.release()
        release.wait(0.05)

    bad = make_agent(password_broker.url, name="bad", username="agent-7", password="wrong-pw", sleep=sleep)
    bad.uplink.start()
    assert attempts.acquire(timeout=10) and attempts.acquire(timeout=10), "no retry after a refusal"
    assert not bad.uplink.connected
    release.set()
    bad.uplink.stop(timeout_s=1.0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "repeated refusals are throttled"
    assert "refused" in errors[0] and "not authori" in errors[0].lower()
    assert "agent-7" in errors[0] and "password" in errors[0]
    assert "wrong-pw" not in caplog.text

    good = make_agent(password_broker.url, name="good", username="agent-7", password="s3cret-pw")
    sub = Recorder(password_broker.port, [f"{good.prefix}/alert/#"], name="sub-auth",
                   auth=("agent-7", "s3cret-pw"))
    good.uplink.start()
    assert good.uplink.wait_connected(10)
    good.send_alerts(3)
    assert good.uplink.wait_drained(10)
    assert sub.wait_for(lambda m: len(m) == 3)
    assert "s3cret-pw" not in caplog.text
    sub.close()


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_ca(name: str, cwd: Path) -> tuple[Path, Path]:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd)
    return cwd / f"{name}.crt", cwd / f"{name}.key"


def make_cert(name: str, ca: tuple[Path, Path], extensions: str, cwd: Path) -> tuple[Path, Path]:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)
    return cwd / f"{name}.crt", cwd / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost, a client certificate, a stranger CA."""
    cwd = tmp_path_factory.mktemp("pki")
    ca = make_ca("lifeline-test-ca", cwd)
    server = make_cert("localhost", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                       "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n", cwd)
    client = make_cert(AGENT, ca, "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n", cwd)
    other_ca, _ = make_ca("stranger-ca", cwd)
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)


@pytest.fixture
def tls_broker(pki: Pki) -> Iterator[MosquittoServer]:
    listener = (f"allow_anonymous true\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
                f"keyfile {pki.server_key}\nrequire_certificate true\n")
    with MosquittoServer(listener=listener) as server:
        yield server


def test_tls_with_our_ca_and_a_client_certificate(tls_broker: MosquittoServer, pki: Pki,
                                                  make_agent: Callable[..., Agent]) -> None:
    url = f"mqtts://localhost:{tls_broker.port}"
    agent = make_agent(url, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    sub = Recorder(tls_broker.port, [f"{agent.prefix}/alert/#"], name="sub-tls", host="localhost",
                   tls=context)
    agent.uplink.start()
    assert agent.uplink.wait_connected(10)
    agent.send_alerts(5)
    assert agent.uplink.wait_drained(10)
    assert sub.wait_for(lambda m: len(m) == 5)
    assert agent.uplink.url.startswith("mqtts://")
    sub.close()


def test_tls_refuses_a_broker_signed_by_another_ca(tls_broker: MosquittoServer, pki: Pki,
                                                  make_agent: Callable[..., Agent],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    tried, release = threading.Event(), threading.Event()

    def sleep(delay_s: float) -> None:
        tried.set()
        release.wait(5)

    agent = make_agent(f"mqtts://127.0.0.1:{tls_broker.port}", ca_file=pki.other_ca,
                       cert_file=pki.client_cert, key_file=pki.client_key, sleep=sleep)
    agent.uplink.start()
    assert tried.wait(10)
    assert not agent.uplink.connected
    assert "certificate not trusted" in caplog.text and "mqtt.ca_file" in caplog.text
    release.set()


def test_unreadable_tls_files_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_messages=10)
    missing = tmp_path / "missing-ca.pem"
    settings = MqttSettings(url="mqtts://127.0.0.1:8883", ca_file=missing)
    with pytest.raises(ConfigError, match="mqtt.ca_file") as err:
        Uplink(settings, agent_id=AGENT, outbox=outbox, status=dict)
    assert str(missing) in str(err.value)
    outbox.close()
