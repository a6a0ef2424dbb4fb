"""The gateway against real Mosquitto and VictoriaMetrics: stored once, routed by tier, registered,
bad payloads dropped, two gateways sharing one group, TLS with a password.

Also the harness the other gateway integration tests use (publisher, ops collector, store readers).
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks import faults_gateway
from gateway.config import GatewayConfig
from gateway.service import GatewayService
from lifeline.contract import (
    Alert,
    Status,
    Summary,
    alert_topic,
    decode_alert,
    status_topic,
    summary_topic,
    tiers_for,
)
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.agent_harness import make_ca
from tests.store_gate import StoreGate

pytestmark = pytest.mark.integration

WAIT_S = 60.0


def eventually(
    check: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "condition"
) -> None:
    """Wait until `check()` holds (polling state we cannot subscribe to); fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        pause.wait(0.05)


def connected_client(port: int, client_id: str, **tls: Any) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(0)  # publishers: no client-side limit on QoS 1 in flight
    if tls.get("username"):
        client.username_pw_set(tls["username"], tls["password"])
    if tls.get("ca"):
        client.tls_set(ca_certs=str(tls["ca"]))
    up = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: up.set() if not rc.is_failure else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert up.wait(10), f"{client_id}: no CONNACK"
    return client


class Publisher:
    """Publishes at QoS 1 and can wait until the broker acknowledged everything."""

    def __init__(self, port: int, client_id: str, **tls: Any) -> None:
        self.client = connected_client(port, client_id, **tls)
        self._infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._infos.append(self.client.publish(topic, payload, qos=1, retain=retain))

    def wait_all(self, timeout_s: float = WAIT_S) -> None:
        for info in self._infos:
            info.wait_for_publish(timeout_s)
            assert info.is_published()
        self._infos.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Collector:
    """Subscribes to topics and keeps what arrives; `wait_for` blocks on a condition."""

    port: int
    filters: list[str]
    client_id: str
    tls: dict[str, Any] = field(default_factory=dict)
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    #: (ops topic, alert id) pairs seen, kept as they arrive.
    route_set: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self.client = connected_client(self.port, self.client_id, **self.tls)
        self.client.on_message = self._on_message
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe([(f, 1) for f in self.filters])
        assert done.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        route = (msg.topic, decode_alert(msg.payload).id) if "/ops/" in msg.topic else None
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            if route is not None:
                self.route_set.add(route)
            self._cond.notify_all()

    def wait_for(
        self, check: Callable[[list[tuple[str, bytes, bool]]], bool], timeout_s: float = WAIT_S
    ) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: check(self.messages), timeout_s)

    def routes(self) -> set[tuple[str, str]]:
        """(ops topic, alert id) pairs seen."""
        with self._cond:
            return set(self.route_set)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def state_dir() -> str:
    """A fresh directory for one gateway's state file (the same config keeps it across restarts)."""
    return tempfile.mkdtemp(prefix="lifeline-gw-state-")


def gateway_config(
    broker_url: str, store_url: str, *, prefix: str, gateway_id: str, group: str, **gateway: Any
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "mqtt": {"url": broker_url, "prefix": prefix},
            "influx": {"url": store_url, "retry_initial_s": 0.1, "retry_max_s": 1.0},
            "gateway": {
                "id": gateway_id,
                "share_group": group,
                "registry_interval_s": 0.5,
                "state_dir": state_dir(),
                **gateway,
            },
        }
    )


@contextmanager
def running_gateway(config: GatewayConfig) -> Iterator[GatewayService]:
    """A gateway in a thread of this process, connected, stopped cleanly on exit."""
    service = GatewayService(config)
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(service.run()), name=f"gw-{config.gateway.id}"
    )
    thread.start()
    try:
        eventually(lambda: service.link.connected, 20, "the gateway to connect")
        yield service
    finally:
        service.request_stop()
        thread.join(30)
        assert not thread.is_alive() and codes == [0]


# ------------------------------------------------------------------ load and store readers


def recent_ms() -> int:
    """A time safely in the past (VictoriaMetrics exports only points up to now)."""
    return int(time.time() * 1000) - 600_000


def make_alerts(
    tag: str, count: int, *, start_ms: int, districts: int = 3, seed: int = 1
) -> list[Alert]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        level, prev = (int(x) for x in rng.integers(0, 5, 2))
        district = f"{tag}-d{i % districts}"
        out.append(
            Alert(
                id=f"{tag}-agent:{i}",
                agent=f"{tag}-agent",
                sensor=f"{tag}-S{i % 40}",
                kind="pipe.pressure",
                site=f"{tag}-site{i % 40 % 5}",
                township=f"{tag}-town",
                district=district,
                rule=("high", "low", "rate")[i % 3],
                level=level,
                prev=prev,
                value=float(i) + 0.25,
                ts=start_ms + i,
                seq=i,
                limit=0.6 if i % 2 else None,
            )
        )
    return out


def make_summaries(
    tag: str, count: int, rows: int, *, start_ms: int, seed: int = 2
) -> list[Summary]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        agent = f"{tag}-agent{k % 4}"
        t1 = start_ms + (k // 4) * 1000
        out.append(
            Summary(
                agent=agent,
                township=f"{tag}-town",
                district=f"{tag}-d0",
                t0=t1 - 1000,
                t1=t1,
                sensor=[f"{agent}-R{i}" for i in range(rows)],
                kind=["pipe.flow"] * rows,
                site=[f"{tag}-site"] * rows,
                n=rng.integers(1, 100, rows),
                min=rng.normal(size=rows),
                max=rng.normal(size=rows),
                mean=rng.normal(size=rows),
                last=rng.normal(size=rows),
                extra={"rms": rng.uniform(0, 1, rows)},
            )
        )
    return out


def publish_alerts(pub: Publisher, prefix: str, alerts: list[Alert]) -> None:
    """The alerts, after a retained online Status of each agent sending them (as a real agent has):
    the gateway refuses alerts from agents it never heard of."""
    for agent in sorted({a.agent for a in alerts}):
        status = Status(agent, "online", int(time.time() * 1000), {"version": "test"})
        pub.publish(status_topic(prefix, agent), status.encode(), retain=True)
    for a in alerts:
        pub.publish(alert_topic(prefix, a.district, a.site, a.sensor), a.encode())


def publish_summaries(pub: Publisher, prefix: str, summaries: list[Summary]) -> None:
    for s in summaries:
        pub.publish(summary_topic(prefix, s.agent), s.encode())


def stored_alerts(store: VictoriaMetricsServer, tag: str) -> Counter[tuple[str, str, int]]:
    """How many `alert` points the store holds per (sensor, rule, ts) for sensors of `tag`."""
    return faults_gateway.stored_alerts(store, f"{tag}-S")


def stored_readings(store: VictoriaMetricsServer, tag: str) -> Counter[tuple[str, int]]:
    """How many `reading` points the store holds per (sensor, t1) for agents of `tag`."""
    return faults_gateway.stored_readings(store, f"{tag}-agent")


def expected_alerts(alerts: list[Alert]) -> Counter[tuple[str, str, int]]:
    return Counter((a.sensor, a.rule, a.ts) for a in alerts)


def expected_readings(summaries: list[Summary]) -> Counter[tuple[str, int]]:
    return Counter((sensor, s.t1) for s in summaries for sensor in s.sensor)


def expected_routes(prefix: str, alerts: list[Alert]) -> set[tuple[str, str]]:
    return {
        (f"{prefix}/ops/{tier}/{a.district}", a.id)
        for a in alerts
        for tier in tiers_for(a.level, a.prev)
    }


# ------------------------------------------------------------------ tests


def test_alerts_summaries_and_statuses_are_stored_once_routed_and_registered(
    broker: MosquittoServer, store: VictoriaMetricsServer
) -> None:
    prefix, tag = "t-e2e/v1", "e2e"
    start = recent_ms()
    alerts = make_alerts(tag, 300, start_ms=start)
    summaries = make_summaries(tag, 8, 25, start_ms=start)
    status = Status(f"{tag}-agent0", "online", start, {"backlog": 7, "version": "test"})
    ops = Collector(broker.port, [f"{prefix}/ops/#"], "t-e2e-ops")
    pub = Publisher(broker.port, "t-e2e-pub")
    config = gateway_config(
        broker.url, store.url, prefix=prefix, gateway_id="gw-e2e", group="g-e2e"
    )
    try:
        with running_gateway(config) as gateway:
            pub.publish(status_topic(prefix, status.agent), status.encode(), retain=True)
            publish_alerts(pub, prefix, alerts[:150])
            publish_summaries(pub, prefix, summaries)
            bad = [
                (alert_topic(prefix, "d", "s", "S"), b"\x93not a map"),
                (alert_topic(prefix, "d", "s", "S"), msgpack.packb({"v": 1, "id": "no-rest"})),
                (summary_topic(prefix, "someone-else"), summaries[0].encode()),
            ]
            for topic, payload in bad:
                pub.publish(topic, payload)
            publish_alerts(pub, prefix, alerts[150:])
            pub.wait_all()
            total = len(alerts) + len(summaries) + 1 + len(bad)
            eventually(lambda: gateway.counters.acked >= total, what="every message acknowledged")
            assert gateway.counters.bad_payloads == len(bad)
            routes = expected_routes(prefix, alerts)
            assert ops.wait_for(lambda _: ops.route_set >= routes)
            registry = Collector(broker.port, [f"{prefix}/registry/gw-e2e"], "t-e2e-registry")
            assert registry.wait_for(
                lambda msgs: any(
                    m[1]
                    and any(
                        a["agent"] == status.agent and a["state"] == "online" and a["backlog"] == 7
                        for a in msgpack.unpackb(m[1]).get("agents", [])
                    )
                    for m in msgs
                )
            )
            snapshot = msgpack.unpackb(registry.messages[-1][1])
            assert {sensor for s in summaries for sensor in s.sensor} <= set(
                snapshot["sensors"]["sensor"]
            )
            registry.close()
        assert ops.routes() == expected_routes(prefix, alerts)  # bad payloads were never routed
        assert stored_alerts(store, tag) == expected_alerts(alerts)
        assert stored_readings(store, tag) == expected_readings(summaries)
        [online] = store.export(
            f'{{__name__="agent_status_online",agent="{status.agent}"}}', start_ms=0
        )
        assert online.values == [1] and online.timestamps == [status.ts]
        last = Collector(broker.port, [f"{prefix}/registry/gw-e2e"], "t-e2e-registry-after")
        assert last.wait_for(lambda msgs: bool(msgs))
        assert (
            msgpack.unpackb(last.messages[0][1])["state"] == "offline"
        )  # said goodbye on a clean stop
        last.close()
    finally:
        pub.client.publish(
            status_topic(prefix, status.agent), b"", qos=1, retain=True
        ).wait_for_publish(10)
        pub.close()
        ops.close()


def test_two_gateways_in_one_group_share_the_load_with_no_duplicate_and_no_loss(
    broker: MosquittoServer, store: VictoriaMetricsServer
) -> None:
    prefix, tag = "t-share/v1", "share"
    start = recent_ms()
    alerts = make_alerts(tag, 1200, start_ms=start, seed=5)
    summaries = make_summaries(tag, 40, 10, start_ms=start, seed=6)
    pub = Publisher(broker.port, "t-share-pub")
    first = gateway_config(broker.url, store.url, prefix=prefix, gateway_id="gw-a", group="g-share")
    second = gateway_config(
        broker.url, store.url, prefix=prefix, gateway_id="gw-b", group="g-share"
    )
    try:
        with running_gateway(first) as a, running_gateway(second) as b:
            publish_alerts(pub, prefix, alerts)
            publish_summaries(pub, prefix, summaries)
            pub.wait_all()
            total = len(alerts) + len(summaries)
            eventually(
                lambda: a.counters.acked + b.counters.acked >= total, what="both gateways done"
            )
            assert a.counters.alerts > 0 and b.counters.alerts > 0
            assert a.counters.alerts + b.counters.alerts == len(alerts)  # each taken by exactly one
            assert a.counters.summaries + b.counters.summaries == len(summaries)
            assert a.counters.redelivered + b.counters.redelivered == 0
        assert stored_alerts(store, tag) == expected_alerts(alerts)
        assert stored_readings(store, tag) == expected_readings(summaries)
    finally:
        pub.close()


def test_gateway_over_tls_with_a_password(
    tmp_path: Path, store: VictoriaMetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, password = "gateway-1", "s3cret-gw"
    server = MosquittoServer(listener="")
    server.workdir.chmod(0o755)
    certs = make_ca(server.workdir)
    passwd = server.workdir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), user, password],
        check=True,
        capture_output=True,
        timeout=30,
    )
    for path in [*certs.values(), passwd]:
        path.chmod(0o644)
    server.extra_config = (
        f"allow_anonymous false\npassword_file {passwd}\ncafile {certs['ca']}\n"
        f"certfile {certs['server']}\nkeyfile {certs['server_key']}\n"
    )
    monkeypatch.setenv("LIFELINE_MQTT_PASSWORD", password)
    prefix, tag = "t-tls/v1", "tls"
    alerts = make_alerts(tag, 20, start_ms=recent_ms())
    with server:
        config = GatewayConfig.model_validate(
            {
                "mqtt": {
                    "url": f"mqtts://127.0.0.1:{server.port}",
                    "prefix": prefix,
                    "username": user,
                    "ca_file": str(certs["ca"]),
                },
                "influx": {"url": store.url},
                "gateway": {"id": "gw-tls", "state_dir": state_dir()},
            }
        )
        creds = {"username": user, "password": password, "ca": certs["ca"]}
        pub = Publisher(server.port, "t-tls-pub", **creds)
        try:
            with running_gateway(config) as gateway:
                publish_alerts(pub, prefix, alerts)
                pub.wait_all()
                eventually(lambda: gateway.counters.acked >= len(alerts), what="alerts over TLS")
        finally:
            pub.close()
    assert stored_alerts(store, tag) == expected_alerts(alerts)


def test_a_broker_restart_mid_stream_and_a_late_broker_lose_nothing(
    store: VictoriaMetricsServer,
) -> None:
    prefix, tag = "t-restart/v1", "restart"
    start = recent_ms()
    alerts = make_alerts(tag, 3000, start_ms=start, seed=31)
    summaries = make_summaries(tag, 20, 10, start_ms=start, seed=32)
    server = MosquittoServer()  # not started yet: the gateway must wait for it
    gate = StoreGate(store.url)
    config = gateway_config(
        server.url,
        gate.url,
        prefix=prefix,
        gateway_id="gw-restart",
        group="g-restart",
        max_inflight=200,
    )
    config = config.model_copy(
        update={
            "mqtt": config.mqtt.model_copy(update={"reconnect_max_s": 1.0}),
            "influx": config.influx.model_copy(update={"batch_size": 100}),  # 3 writes: <= 300 rows
        }
    )
    try:
        with gateway_before_broker(config, server) as gateway:
            pub = Publisher(server.port, "t-restart-pub")
            gate.hold_after(3)  # then a write waits: its messages are taken but unacknowledged
            publish_alerts(pub, prefix, alerts)
            publish_summaries(pub, prefix, summaries)
            pub.wait_all()
            pub.close()
            assert gate.wait_held(1), "the gateway never wrote a 4th batch"
            eventually(lambda: gateway.counters.acked > 0, what="some progress")
            eventually(lambda: len(gateway.pipeline.ledger) > 0, what="deliveries in flight")
            server.restart()  # clean stop: the broker saves the sessions and what they hold
            eventually(
                lambda: gateway.counters.broker_disconnects >= 1, what="the disconnect noticed"
            )
            gate.release()  # acks for the held deliveries belong to the old connection: dropped
            total = len(alerts) + len(summaries)
            eventually(
                lambda: stored_alerts(store, tag) == expected_alerts(alerts),
                what="every alert stored",
            )
            eventually(
                lambda: stored_readings(store, tag) == expected_readings(summaries),
                what="every row",
            )
            assert gateway.counters.alerts + gateway.counters.summaries >= total
    finally:
        server.stop()
        gate.close()


@contextmanager
def gateway_before_broker(
    config: GatewayConfig, server: MosquittoServer
) -> Iterator[GatewayService]:
    """A gateway started before its broker; yields once both are up and connected."""
    service = GatewayService(config)
    thread = threading.Thread(target=service.run, name="gw-late")
    thread.start()
    try:
        eventually(lambda: service.link.epoch == 0 and thread.is_alive(), 5, "the gateway to start")
        server.start()
        eventually(lambda: service.link.connected, 20, "the gateway to connect to the late broker")
        yield service
    finally:
        service.request_stop()
        thread.join(30)
        assert not thread.is_alive()


def test_a_refused_login_is_reported_and_retried_without_stopping(
    store: VictoriaMetricsServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = MosquittoServer(
        listener="allow_anonymous false\n", extra_config="password_file {dir}/passwd\n"
    )
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(server.workdir / "passwd"), "gw", "right-password"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    config = GatewayConfig.model_validate(
        {
            "mqtt": {
                "url": server.url,
                "username": "gw",
                "password": "wrong",
                "reconnect_max_s": 0.5,
            },
            "influx": {"url": store.url},
            "gateway": {"id": "gw-refused", "state_dir": state_dir()},
        }
    )
    with server, caplog.at_level("ERROR", logger="gateway.link"):
        service = GatewayService(config)
        thread = threading.Thread(target=service.run)
        thread.start()
        try:
            eventually(
                lambda: sum("refused the connection" in r.message for r in caplog.records) >= 1,
                20,
                "the refusal logged",
            )
            assert thread.is_alive() and not service.link.connected
            assert "check mqtt.username" in caplog.text
        finally:
            service.request_stop()
            thread.join(30)
    assert not thread.is_alive()
