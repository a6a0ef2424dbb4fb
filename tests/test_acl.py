"""The broker's access control as deployed (deploy/mosquitto/lifeline.acl) on a TLS listener with
passwords: an agent publishes only its own status and summary (and alerts), the gateway reads
what agents send, ops consoles only read; and a whole agent works through it end to end."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_agent.config import AgentConfig
from edge_agent.acl import agent_acl_block
from lifeline.contract import decode_alert, decode_status
from simulators.servers import MosquittoServer
from tests.agent_harness import ROOT, WAIT_S, AgentProcess, Publisher, make_ca, write_config

pytestmark = pytest.mark.integration
P = "lifeline/v1"
ACL = ROOT / "deploy" / "mosquitto" / "lifeline.acl"
PASSWORDS = {"yz-a": "pw-yz-a", "yz-b": "pw-yz-b", "gateway": "pw-gateway", "ops-console": "pw-ops"}
NOT_AUTHORIZED = 135  # MQTT 5 reason code
#: The sensors in each agent's config (its ACL block names their alert topics).
AGENT_SENSORS = {"yz-a": ["YZ-P-1", "YZ-ACL-1"], "yz-b": ["YZ-P-2"]}


@dataclass(frozen=True)
class Received:
    """One message as a subscriber saw it."""

    topic: str
    payload: bytes
    retain: bool


class Client5:
    """An MQTT 5 client over TLS that reports PUBACK/SUBACK reason codes and keeps what it receives."""

    def __init__(self, port: int, ca: Path, user: str | None, password: str | None = None, *,
                 client_id: str | None = None) -> None:
        self.received: list[Received] = []
        self.acks: dict[int, int] = {}
        self.connect_reason: int | None = None
        self._changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-acl-{user}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(ca))
        if user is not None:
            self.client.username_pw_set(user, password if password is not None else PASSWORDS[user])
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._suback: list[int] | None = None
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.wait_for(lambda: self.connect_reason is not None), "no CONNACK"

    def _notify(self, update: Callable[[], None]) -> None:
        with self._changed:
            update()
            self._changed.notify_all()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any, props: Any) -> None:
        self._notify(lambda: setattr(self, "connect_reason", reason.value))

    def _on_ack(self, client: mqtt.Client, userdata: object, mid: int, reason: Any, props: Any) -> None:
        self._notify(lambda: self.acks.__setitem__(mid, reason.value))

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: Any, props: Any) -> None:
        self._notify(lambda: setattr(self, "_suback", [r.value for r in reasons]))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._notify(lambda: self.received.append(Received(msg.topic, msg.payload, bool(msg.retain))))

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout_s)

    @property
    def connected(self) -> bool:
        return self.connect_reason == 0

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait_for(lambda: info.mid in self.acks), f"no PUBACK for {topic}"
        return self.acks[info.mid]

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK's reason codes."""
        self._suback = None
        self.client.subscribe([(f, 1) for f in filters])
        assert self.wait_for(lambda: self._suback is not None), "no SUBACK"
        assert self._suback is not None
        return self._suback

    def topics(self) -> list[str]:
        with self._changed:
            return [m.topic for m in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MosquittoServer, Path]]:
    """Mosquitto with TLS, a password file and a copy of the deployed ACL file."""
    server = MosquittoServer(listener="")
    certs = make_ca(server.workdir)
    passwd = server.workdir / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                       check=True, capture_output=True, timeout=30)
    acl = shutil.copy(ACL, server.workdir / "lifeline.acl")
    with open(acl, "a") as fh:  # one block per agent, generated from its config as the file says
        for agent, sensors in AGENT_SENSORS.items():
            config = AgentConfig.model_validate({
                "agent": {"id": agent, "district": "yuzhong", "township": "jiefangbei"},
                "sensor": [{"id": s, "kind": "test.level", "site": "site-1", "source": "mqtt"} for s in sensors],
            })
            fh.write("\n" + agent_acl_block(config))
    server.extra_config = (f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
                           f"cafile {certs['ca']}\ncertfile {certs['server']}\nkeyfile {certs['server_key']}\n")
    with server:
        yield server, certs["ca"]


@pytest.fixture
def clients(acl_broker: tuple[MosquittoServer, Path]) -> Iterator[Callable[..., Client5]]:
    """Makes connected MQTT 5 clients and closes them after the test."""
    broker, ca = acl_broker
    made: list[Client5] = []

    def make(user: str | None, password: str | None = None, **kwargs: Any) -> Client5:
        made.append(Client5(broker.port, ca, user, password, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


def gateway_subscriber(make: Callable[..., Client5]) -> Client5:
    gateway = make("gateway")
    assert gateway.connected
    assert gateway.subscribe(f"{P}/alert/#", f"{P}/summary/#", f"{P}/status/#") == [1, 1, 1]
    return gateway


def test_wrong_or_missing_credentials_are_refused(clients: Callable[..., Client5]) -> None:
    assert not clients("yz-a", "wrong", client_id="test-acl-wrong").connected
    assert not clients(None, client_id="test-acl-anon").connected
    assert not clients("nobody", "x", client_id="test-acl-nobody").connected


def test_an_agent_publishes_its_own_status_summary_and_alerts_but_not_anothers(
        clients: Callable[..., Client5]) -> None:
    gateway = gateway_subscriber(clients)
    agent = clients("yz-a")
    assert agent.connected
    assert agent.publish(f"{P}/status/yz-b", b"forged status", retain=True) == NOT_AUTHORIZED
    assert agent.publish(f"{P}/summary/yz-b", b"forged summary") == NOT_AUTHORIZED
    assert agent.publish(f"{P}/ops/city/yuzhong", b"forged ops") == NOT_AUTHORIZED
    assert agent.publish(f"{P}/registry/yz-a", b"forged registry") == NOT_AUTHORIZED
    assert agent.publish(f"{P}/summary/yz-a", b"own summary") == 0
    assert agent.publish(f"{P}/alert/yuzhong/site-1/YZ-P-1", b"own alert") == 0
    assert agent.publish(f"{P}/status/yz-a", b"own status", retain=True) == 0
    # Messages from one client arrive in order: once its own status is in, the forgeries never come.
    assert gateway.wait_for(lambda: f"{P}/status/yz-a" in gateway.topics()), gateway.topics()
    assert gateway.topics() == [f"{P}/summary/yz-a", f"{P}/alert/yuzhong/site-1/YZ-P-1", f"{P}/status/yz-a"]
    late = clients("gateway", client_id="test-acl-gateway-late")
    late.subscribe(f"{P}/status/+")
    assert late.wait_for(lambda: late.topics() == [f"{P}/status/yz-a"]), late.topics()  # no forged retained status
    agent.publish(f"{P}/status/yz-a", b"", retain=True)  # clear the retained message for other tests


def test_an_agent_publishes_alerts_only_on_its_own_sensors_topics(clients: Callable[..., Client5]) -> None:
    gateway = gateway_subscriber(clients)
    agent = clients("yz-a")
    assert agent.publish(f"{P}/alert/yuzhong/site-1/YZ-P-2", b"yz-b's sensor") == NOT_AUTHORIZED
    assert agent.publish(f"{P}/alert/yuzhong/site-9/YZ-P-1", b"own sensor, other site") == NOT_AUTHORIZED
    assert agent.publish(f"{P}/alert/yuzhong/site-1/YZ-P-1", b"own sensor") == 0
    assert gateway.wait_for(lambda: f"{P}/alert/yuzhong/site-1/YZ-P-1" in gateway.topics())
    assert gateway.topics() == [f"{P}/alert/yuzhong/site-1/YZ-P-1"]


def test_the_ops_console_reads_routed_alerts(clients: Callable[..., Client5]) -> None:
    ops = clients("ops-console")
    assert ops.subscribe(f"{P}/ops/#") == [1]
    gateway = clients("gateway", client_id="test-acl-gateway-writer")
    assert gateway.publish(f"{P}/ops/city/yuzhong", b"routed") == 0
    assert ops.wait_for(lambda: ops.topics() == [f"{P}/ops/city/yuzhong"]), ops.topics()


def test_the_ops_console_publishes_and_follows_case_events(clients: Callable[..., Client5]) -> None:
    ops = clients("ops-console")
    assert ops.subscribe(f"{P}/case/#") == [1]
    other = clients("ops-console", client_id="test-acl-console-2")
    assert other.publish(f"{P}/case/yuzhong", b"case event") == 0
    assert ops.wait_for(lambda: ops.topics() == [f"{P}/case/yuzhong"]), ops.topics()
    assert clients("yz-a").publish(f"{P}/case/yuzhong", b"forged") == NOT_AUTHORIZED


def test_the_ops_console_cannot_read_what_agents_send(clients: Callable[..., Client5]) -> None:
    ops = clients("ops-console")
    ops.subscribe(f"{P}/alert/#", f"{P}/status/#", f"{P}/ops/#")
    agent = clients("yz-a")
    assert agent.publish(f"{P}/alert/yuzhong/site-1/YZ-P-1", b"agent alert") == 0
    gateway = clients("gateway", client_id="test-acl-gateway-writer")
    assert gateway.publish(f"{P}/ops/city/yuzhong", b"marker") == 0
    assert ops.wait_for(lambda: f"{P}/ops/city/yuzhong" in ops.topics())
    assert ops.topics() == [f"{P}/ops/city/yuzhong"]


def test_the_ops_console_cannot_publish_alerts(clients: Callable[..., Client5]) -> None:
    gateway = gateway_subscriber(clients)
    ops = clients("ops-console")
    reason = ops.publish(f"{P}/alert/yuzhong/site-1/YZ-P-1", b"forged by ops")
    marker = clients("yz-a")
    assert marker.publish(f"{P}/summary/yz-a", b"marker") == 0
    assert gateway.wait_for(lambda: f"{P}/summary/yz-a" in gateway.topics())
    assert f"{P}/alert/yuzhong/site-1/YZ-P-1" not in gateway.topics()
    assert reason == NOT_AUTHORIZED


@pytest.mark.parametrize(("user", "topic"), [
    ("gateway", f"{P}/alert/yuzhong/site-1/YZ-P-1"),
    ("ops-console", f"{P}/status/ops-console"),
    ("ops-console", f"{P}/summary/ops-console"),
])
def test_non_agent_users_cannot_publish_as_agents(clients: Callable[..., Client5], user: str, topic: str) -> None:
    assert clients(user, client_id=f"test-acl-{user}-as-agent").publish(topic, b"forged") == NOT_AUTHORIZED


# ---------------------------------------------------------------- a whole agent


def test_an_agent_works_end_to_end_through_the_acl(tmp_path: Path, acl_broker: tuple[MosquittoServer, Path],
                                                   broker: MosquittoServer, clients: Callable[..., Client5]) -> None:
    """Uplink on the ACL'd TLS broker as user yz-a (password from a file); raw blocks from a local broker."""
    acl, ca = acl_broker
    secret = tmp_path / "mqtt.password"
    secret.write_text(PASSWORDS["yz-a"] + "\n")
    config = write_config(
        tmp_path / "agent.toml", agent="yz-a", broker_url=f"mqtts://127.0.0.1:{acl.port}",
        state_dir=tmp_path / "state", agent_extra="window_s = 1",
        mqtt_extra=f'username = "yz-a"\npassword_file = "{secret}"\nca_file = "{ca}"',
        extra=f'[raw_mqtt]\nurl = "{broker.url}"',
        sensors=[{"id": "YZ-ACL-1", "site": "site-1", "kind": "test.level", "high": [0.6, 0.7, 0.8, 0.9],
                  "hysteresis": 0.02, "debounce": 3, "gap_s": 600.0}])
    gateway = gateway_subscriber(clients)
    publisher = Publisher(broker.port, client_id="test-acl-raw-publisher")
    agent = AgentProcess(config).start()
    try:
        agent.wait_log(r"raw input connected")
        publisher.block("YZ-ACL-1", [0.95] * 3, t0=int(time.time() * 1000))
        alert_topic = f"{P}/alert/yuzhong/site-1/YZ-ACL-1"
        assert gateway.wait_for(lambda: alert_topic in gateway.topics()), (gateway.topics(), agent.log_text())
        assert gateway.wait_for(lambda: f"{P}/summary/yz-a" in gateway.topics()), gateway.topics()
        late = clients("gateway", client_id="test-acl-gateway-late")
        late.subscribe(f"{P}/status/yz-a")
        assert late.wait_for(lambda: bool(late.received)), late.topics()
        first = late.received[0]
        assert first.retain and decode_status(first.payload).state == "online"
        assert agent.terminate() == 0
        assert gateway.wait_for(lambda: any(m.topic == f"{P}/status/yz-a" and decode_status(m.payload).state
                                            == "offline" for m in gateway.received if m.payload))
    finally:
        agent.close()
        publisher.close()
    assert PASSWORDS["yz-a"] not in agent.log_text()
    alert = decode_alert(next(m.payload for m in gateway.received if m.topic == alert_topic))
    assert (alert.agent, alert.sensor, alert.rule, alert.level) == ("yz-a", "YZ-ACL-1", "high", 4)
    clear = clients("yz-a", client_id="test-acl-clear")
    clear.publish(f"{P}/status/yz-a", b"", retain=True)
