"""Faults of the whole chain under load (simulator -> broker -> agents -> broker -> gateway -> store),
short versions of `benchmarks.faults`: after each, the store holds every alert the agents raised
exactly once (seq 1..last from their outboxes) and every summary row they published, and data
flows again end to end."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from benchmarks.faults import BY_KEY, FaultResult, run_fault
from simulators.servers import MosquittoServer
from tests.agent_harness import Publisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
log = logging.getLogger("test_faults_chain")


def run(key: str, workdir: Path) -> FaultResult:
    result = run_fault(BY_KEY[key], workdir, quick=True, after_s=2.0, log=log.info)
    log.info(result.describe())
    return result


def assert_nothing_lost_nothing_repeated(result: FaultResult) -> None:
    v = result.verdict
    assert v.alerts_expected > 0 and v.rows_expected > 0, result.describe()
    assert v.alerts_missing == (), f"alerts missing from the store: {result.describe()}"
    assert (v.rows_missing, v.rows_wrong_n) == (0, 0), f"summary rows missing or altered: {result.describe()}"
    assert (v.alerts_extra, v.repeated_detections) == (0, 0), f"duplicates: {result.describe()}"
    assert v.samples_stored == v.samples_published, result.describe()
    assert v.window_mismatch == 0, f"samples processed but not summarised once: {result.describe()}"
    assert result.recovery_s is not None, "no new data reached the store after the fault"


def test_broker_restart_under_load(tmp_path: Path) -> None:
    """The gateway's default plain subscription (`share_group = ""`): see the broker test below for why."""
    result = run("broker-restart", tmp_path)
    assert_nothing_lost_nothing_repeated(result)


def test_store_down_under_load(tmp_path: Path) -> None:
    result = run("store-down", tmp_path)
    assert_nothing_lost_nothing_repeated(result)
    assert result.detected_during > 0, "no alert was raised while the store was down"


def test_kill_9_of_an_agent_under_load(tmp_path: Path) -> None:
    result = run("agent-kill", tmp_path)
    assert_nothing_lost_nothing_repeated(result)
    assert result.verdict.samples_published <= result.verdict.samples_sent, "samples summarised twice"


def test_kill_9_of_the_gateway_under_load(tmp_path: Path) -> None:
    result = run("gateway-kill", tmp_path)
    assert_nothing_lost_nothing_repeated(result)


def test_flapping_uplink_under_load(tmp_path: Path) -> None:
    result = run("uplink-flapping", tmp_path)
    assert_nothing_lost_nothing_repeated(result)
    assert result.detected_during > 0, "no alert was raised while the uplink flapped"


# --------------------------------------------------------------------------- what the gateway relies on


class GatewayLikeSession:
    """MQTT 5, persistent session, a shared and a plain subscription, as the gateway holds them."""

    def __init__(self, port: int, *, subscribe: bool) -> None:
        self.topics: list[str] = []
        self._changed = threading.Condition()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-share-gw", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: (c.subscribe(
            [("$share/g/t-share/+", SubscribeOptions(qos=1)), ("t-plain/+", SubscribeOptions(qos=1))])
            if subscribe else ready.set())
        self.client.on_subscribe = lambda *args: ready.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        assert ready.wait(10), "not connected"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.topics.append(msg.topic)
            self._changed.notify_all()

    def wait_for(self, topic: str) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: topic in self.topics, 10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _deliveries_after_restart(tmp_path: Path, messages: int = 10) -> tuple[int, int]:
    """(shared, plain) deliveries of messages published after a broker restart while the
    subscriber was away, once it is back with its session (before it would subscribe again)."""
    with MosquittoServer(workdir=tmp_path) as server:
        GatewayLikeSession(server.port, subscribe=True).close()
        server.restart()
        publisher = Publisher(server.port, client_id="t-share-pub")
        for i in range(messages):
            publisher.raw(f"t-share/{i}", b"x")
            publisher.raw(f"t-plain/{i}", b"x")
        back = GatewayLikeSession(server.port, subscribe=False)
        try:
            publisher.raw("t-plain/marker", b"x")  # queued messages are delivered before it
            assert back.wait_for("t-plain/marker")
        finally:
            back.close()
            publisher.close()
    return (sum(t.startswith("t-share/") for t in back.topics),
            sum(t.startswith("t-plain/") for t in back.topics) - 1)


def test_the_broker_keeps_a_plain_subscription_of_a_persistent_session_across_a_restart(tmp_path: Path) -> None:
    _, plain = _deliveries_after_restart(tmp_path)
    assert plain == 10
