"""Who may send an alert: the gateway refuses alerts whose `agent` contradicts its registry
(another agent owns the sensor, an agent never heard of, an agent off the allow-list), and never
loses a legitimate agent's alerts that arrive before its status (restart backlog).

The first part drives the worker with fakes; the last test runs a gateway against Mosquitto with
passwords and the deployed ACL, with agents publishing as themselves.
"""

from __future__ import annotations

import logging
import subprocess
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from lifeline.contract import (
    Alert,
    Status,
    Summary,
    alert_topic,
    decode_alert,
    status_topic,
    summary_topic,
)
from gateway import pipeline as pipeline_module
from gateway.config import GatewayConfig, GatewaySection
from gateway.counters import GatewayCounters
from gateway.events import Disconnected
from gateway.pipeline import Pipeline, PipelineSettings
from gateway.registry import AlertVerdict, Registry
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.test_gateway_integration import Collector, Publisher, eventually, recent_ms, running_gateway
from tests.test_gateway_pipeline import Clock, FakeBroker, FakeWriter, Rig

P = "lifeline/v1"
T1 = 1_700_000_060_000


class HistoryBroker(FakeBroker):
    """A fake broker that also keeps every publish (the rig clears `published` on PUBACKs)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        self.history.append((topic, payload))
        return super().publish(topic, payload, retain=retain)


def make_rig(registry: Registry) -> Rig:
    broker, writer, clock, counters = HistoryBroker(), FakeWriter(), Clock(), GatewayCounters()
    settings = PipelineSettings(
        prefix=P, gateway_id="gw-sec", stats_interval_s=1e9, registry_interval_s=1e9
    )
    pipeline = Pipeline(
        settings,
        broker=broker,
        writer=writer,
        counters=counters,
        registry=registry,
        clock=clock,
        wall_ms=lambda: 5_000,
    )
    return Rig(pipeline, broker, writer, clock, counters)


def strict(**policy: Any) -> Registry:
    """The registry as the gateway's config makes it by default (unknown agents refused)."""
    return Registry.for_gateway(GatewaySection(id="gw-sec", **policy))


def alert(agent: str, sensor: str, seq: int, *, level: int = 3, prev: int = 0) -> Alert:
    return Alert(
        id=f"{agent}:{seq}",
        agent=agent,
        sensor=sensor,
        kind="pipe.gas",
        site="site-1",
        township="town-1",
        district="yuzhong",
        rule="high",
        level=level,
        prev=prev,
        value=42.0,
        ts=1_700_000_000_000 + seq,
        seq=seq,
        limit=20.0,
    )


def summary(agent: str, sensors: list[str], t1: int = T1) -> Summary:
    n = len(sensors)
    return Summary(
        agent=agent,
        township="town-1",
        district="yuzhong",
        t0=t1 - 60_000,
        t1=t1,
        sensor=sensors,
        kind=["pipe.gas"] * n,
        site=["site-1"] * n,
        n=[60] * n,
        min=[0.0] * n,
        max=[1.0] * n,
        mean=[0.5] * n,
        last=[0.5] * n,
    )


def send_alert(rig: Rig, a: Alert, mid: int) -> None:
    rig.deliver(alert_topic(P, a.district, a.site, a.sensor), a.encode(), mid)


def send_summary(rig: Rig, s: Summary, mid: int) -> None:
    rig.deliver(summary_topic(P, s.agent), s.encode(), mid)


def send_status(rig: Rig, agent: str, mid: int, state: str = "online") -> None:
    rig.deliver(status_topic(P, agent), Status(agent, state, 1_700_000_000_000).encode(), mid)


def routed_ids(rig: Rig) -> set[str]:
    """Ids of the alerts routed to any ops tier so far."""
    assert isinstance(rig.broker, HistoryBroker)
    return {decode_alert(payload).id for topic, payload in rig.broker.history if "/ops/" in topic}


def settle(rig: Rig) -> None:
    """Let the store confirm and the broker acknowledge everything routed so far."""
    rig.poll()
    for _ in range(3):
        rig.store_all()
        rig.puback_all()


# ------------------------------------------------------------------ the agent check


def test_an_alert_naming_another_agent_than_the_sensors_owner_is_refused_acked_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(strict())
    send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"]), mid=1)
    send_alert(rig, alert("yz-b", "GAS-1", 7), mid=2)  # yz-b claims yz-a's sensor under its own name
    send_alert(rig, alert("yz-a", "GAS-1", 8), mid=3)
    with caplog.at_level(logging.WARNING, logger="gateway.pipeline"):
        settle(rig)
    assert routed_ids(rig) == {"yz-a:8"}
    assert rig.acked_mids == [1, 2, 3]  # a refusal is final: acknowledged, never re-sent
    assert (rig.counters.alerts_refused, rig.counters.alerts) == (1, 1)
    [line] = [r.getMessage() for r in caplog.records if "refused alert" in r.getMessage()]
    assert "yz-b:7" in line and "GAS-1" in line and "claims agent yz-b" in line and "owner yz-a" in line
    snapshot = rig.pipeline.registry.snapshot(5_000, rig.counters.as_dict())
    assert snapshot["counters"]["alerts_refused"] == 1


def test_a_forged_alert_is_neither_stored_nor_routed() -> None:
    rig = make_rig(strict())
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=1)
    settle(rig)
    send_alert(rig, alert("yz-b", "GAS-1", 1), mid=2)
    rig.poll()
    assert rig.writer.batches == []  # nothing to store: the forged alert added no point
    assert routed_ids(rig) == set()
    assert rig.acked_mids == [1, 2]


def test_alerts_arriving_before_their_agents_status_wait_for_it_and_none_is_lost() -> None:
    """After a restart the session backlog comes before the retained statuses."""
    rig = make_rig(strict())
    send_alert(rig, alert("yz-a", "GAS-1", 1), mid=1)
    send_alert(rig, alert("yz-c", "GAS-9", 1), mid=2)
    send_alert(rig, alert("yz-a", "GAS-1", 2, level=0, prev=3), mid=3)
    settle(rig)
    assert routed_ids(rig) == set() and rig.acked_mids == []  # waiting, and so is what came after
    assert rig.counters.alerts_held == 3
    send_status(rig, "yz-a", mid=4)  # the retained status, delivered on re-subscribe
    rig.clock.now += 1
    send_summary(rig, summary("yz-c", ["GAS-9"]), mid=5)
    settle(rig)
    assert routed_ids(rig) == {"yz-a:1", "yz-a:2", "yz-c:1"}
    assert rig.acked_mids == [1, 2, 3, 4, 5]
    assert (rig.counters.alerts, rig.counters.alerts_refused) == (3, 0)


def test_an_alert_of_an_agent_never_heard_of_is_refused_when_its_time_is_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(strict(unknown_agent_hold_s=5))
    send_alert(rig, alert("ghost", "GAS-1", 1), mid=1)
    send_status(rig, "yz-a", mid=2)  # someone else's status does not help the ghost
    settle(rig)
    assert rig.acked_mids == [] and rig.pipeline.wait_s() <= 5
    rig.clock.now += 5
    with caplog.at_level(logging.WARNING, logger="gateway.pipeline"):
        settle(rig)
    assert rig.acked_mids == [1, 2]
    assert routed_ids(rig) == set() and rig.counters.alerts_refused == 1
    assert any("ghost:1" in r.getMessage() and "owner unknown" in r.getMessage() for r in caplog.records)


def test_a_waiting_alert_is_refused_when_a_summary_shows_the_sensor_is_anothers() -> None:
    rig = make_rig(strict())
    send_alert(rig, alert("yz-b", "GAS-1", 1), mid=1)
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=2)
    send_status(rig, "yz-b", mid=3)
    settle(rig)
    assert routed_ids(rig) == set() and rig.counters.alerts_refused == 1
    assert rig.acked_mids == [1, 2, 3]


def test_a_recommissioned_sensor_follows_the_latest_summary_and_the_move_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = strict()
    rig = make_rig(registry)
    send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"], t1=T1), mid=1)
    with caplog.at_level(logging.WARNING, logger="gateway.registry"):
        send_summary(rig, summary("yz-b", ["GAS-2"], t1=T1 + 60_000), mid=2)
    assert any("GAS-2 moved from agent yz-a to agent yz-b" in r.getMessage() for r in caplog.records)
    assert registry.owner("GAS-2") == "yz-b" and registry.owner("GAS-1") == "yz-a"
    send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"], t1=T1), mid=3)  # an old window re-sent
    assert registry.owner("GAS-2") == "yz-b"
    send_alert(rig, alert("yz-a", "GAS-2", 1), mid=4)
    send_alert(rig, alert("yz-b", "GAS-2", 1), mid=5)
    settle(rig)
    assert routed_ids(rig) == {"yz-b:1"}
    assert rig.counters.alerts_refused == 1
    # yz-a's own chunk, unchanged, re-read after it lost a sensor: a newer window takes it back.
    send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"], t1=T1 + 120_000), mid=6)
    assert registry.owner("GAS-2") == "yz-a"


def test_the_allow_list_refuses_other_agents_at_once_and_trusts_its_own_from_the_start() -> None:
    rig = make_rig(strict(agents=["yz-a"]))
    send_alert(rig, alert("yz-a", "GAS-1", 1), mid=1)  # no status yet: listed, so known
    send_status(rig, "yz-b", mid=2)
    send_alert(rig, alert("yz-b", "GAS-2", 1), mid=3)  # has a status, but is not listed
    settle(rig)
    assert routed_ids(rig) == {"yz-a:1"}
    assert rig.acked_mids == [1, 2, 3] and rig.counters.alerts_refused == 1


def test_accept_policy_takes_unknown_agents_and_counts_them_unverified() -> None:
    rig = make_rig(strict(unknown_agents="accept"))
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=1)
    send_alert(rig, alert("ghost", "GAS-7", 1), mid=2)
    send_alert(rig, alert("ghost", "GAS-1", 2), mid=3)  # the owner rule still holds
    settle(rig)
    assert routed_ids(rig) == {"ghost:1"}
    assert (rig.counters.alerts_unverified, rig.counters.alerts_refused) == (1, 1)


def test_waiting_alerts_are_forgotten_with_their_connection_and_taken_again_on_redelivery() -> None:
    rig = make_rig(strict())
    send_alert(rig, alert("yz-a", "GAS-1", 1), mid=1)
    rig.pipeline.handle(Disconnected("test"))
    rig.broker.epoch = 2
    send_status(rig, "yz-a", mid=7)
    send_alert(rig, alert("yz-a", "GAS-1", 1), mid=8)  # the re-delivery
    settle(rig)
    assert routed_ids(rig) == {"yz-a:1"}
    assert rig.acked_mids == [7, 8] and rig.counters.alerts_refused == 0


def test_a_flood_of_alerts_from_unknown_agents_cannot_stall_the_acknowledgements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline_module, "MAX_WAITING", 3)
    rig = make_rig(strict())
    for mid in range(1, 7):
        send_alert(rig, alert(f"ghost-{mid}", "GAS-1", mid), mid=mid)
    settle(rig)
    assert rig.acked_mids == [1, 2, 3]  # the oldest were decided to keep at most 3 waiting
    assert rig.counters.alerts_refused == 3


def test_a_drain_is_settled_with_only_waiting_alerts_left() -> None:
    rig = make_rig(strict())
    send_status(rig, "yz-a", mid=1)
    send_alert(rig, alert("ghost", "GAS-1", 1), mid=2)
    rig.pipeline.start_draining()
    settle(rig)
    assert rig.pipeline.settled and rig.acked_mids == [1]  # the ghost's alert is re-sent next run


def test_the_registry_verdicts() -> None:
    registry = Registry("gw", unknown_agents="refuse")
    registry.on_status(Status("yz-a", "offline", 1), 1)
    registry.on_summary(summary("yz-b", ["GAS-2"]), 1)
    assert registry.check_alert(alert("yz-a", "GAS-1", 1)) is AlertVerdict.ACCEPT  # offline is known
    assert registry.check_alert(alert("yz-b", "GAS-2", 1)) is AlertVerdict.ACCEPT
    assert registry.check_alert(alert("yz-a", "GAS-2", 1)) is AlertVerdict.WRONG_OWNER
    assert registry.check_alert(alert("nobody", "GAS-3", 1)) is AlertVerdict.UNKNOWN_AGENT
    registry.forget("yz-b")  # its retained status was cleared: decommissioned
    assert registry.check_alert(alert("yz-b", "GAS-2", 1)) is AlertVerdict.UNKNOWN_AGENT
    assert registry.owner("GAS-2") is None


def test_the_policy_keys_load_from_the_config() -> None:
    config = GatewayConfig.model_validate(
        {"gateway": {"agents": ["yz-a"], "unknown_agents": "accept", "unknown_agent_hold_s": 3}}
    )
    registry = Registry.for_gateway(config.gateway)
    assert (registry.allowed_agents, registry.unknown_agents, registry.unknown_hold_s) == (
        frozenset({"yz-a"}),
        "accept",
        3,
    )
    assert Registry.for_gateway(GatewaySection()).unknown_agents == "refuse"


# ------------------------------------------------------------------ through the broker's ACL

ACL = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "lifeline.acl"
USERS = {
    "gateway": "gw-pass-5301",
    "ops-console": "ops-pass-6420",
    "yz-a": "yz-a-pass-7719",
    "yz-b": "yz-b-pass-2287",
}


@pytest.fixture
def acl_broker() -> Iterator[MosquittoServer]:
    """Mosquitto with passwords and the deployed ACL (plus one block per agent)."""
    server = MosquittoServer(listener="")
    passwd = server.workdir / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(
            ["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    acl = Path(shutil.copy(ACL, server.workdir / "lifeline.acl"))
    with acl.open("a") as fh:
        for agent in ("yz-a", "yz-b"):
            fh.write(
                f"\nuser {agent}\ntopic write {P}/status/{agent}\ntopic write {P}/summary/{agent}\n"
                f"topic write {P}/alert/#\n"
            )
    server.extra_config = f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
    with server:
        yield server


@pytest.mark.integration
def test_through_the_acl_spoofed_alerts_are_refused_and_a_restart_backlog_is_kept(
    acl_broker: MosquittoServer, store: VictoriaMetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFELINE_MQTT_PASSWORD", USERS["gateway"])
    config = GatewayConfig.model_validate(
        {
            "mqtt": {"url": acl_broker.url, "username": "gateway"},
            "influx": {"url": store.url, "retry_initial_s": 0.1, "retry_max_s": 1.0},
            "gateway": {
                "id": "gw-sec",
                "share_group": "",
                "registry_interval_s": 0.5,
                "unknown_agent_hold_s": 3,
            },
        }
    )
    start = recent_ms()
    yz_a = Publisher(acl_broker.port, "t-sec-yz-a", username="yz-a", password=USERS["yz-a"])
    yz_b = Publisher(acl_broker.port, "t-sec-yz-b", username="yz-b", password=USERS["yz-b"])
    ops = Collector(
        acl_broker.port,
        [f"{P}/ops/#"],
        "t-sec-ops",
        tls={"username": "ops-console", "password": USERS["ops-console"]},
    )

    def publish_alert(who: Publisher, a: Alert) -> None:
        who.publish(alert_topic(P, a.district, a.site, a.sensor), a.encode())
        who.wait_all()

    def routed() -> set[str]:
        return {alert_id for _, alert_id in ops.routes()}

    try:
        with running_gateway(config) as gateway:
            # yz-a as it starts: retained status, then a summary naming its sensor.
            yz_a.publish(status_topic(P, "yz-a"), Status("yz-a", "online", start).encode(), retain=True)
            yz_a.publish(summary_topic(P, "yz-a"), summary("yz-a", ["GAS-A"], t1=start).encode())
            yz_a.wait_all()
            eventually(lambda: gateway.counters.summaries >= 1, what="yz-a's summary")
            publish_alert(yz_b, alert("yz-b", "GAS-A", 1))  # yz-b claims yz-a's sensor as its own
            publish_alert(yz_b, alert("ghost", "GAS-G", 1))  # an agent that does not exist
            publish_alert(yz_a, alert("yz-a", "GAS-A", 2))
            assert ops.wait_for(lambda _: "yz-a:2" in routed())
            eventually(lambda: gateway.counters.alerts_refused == 2, what="both forgeries refused")
            assert not {"yz-b:1", "ghost:1"} & routed()
        # The gateway is away: yz-a's alerts queue in its session. On the restart they come
        # before yz-a's retained status, to a registry that starts empty.
        backlog = [alert("yz-a", "GAS-A", seq) for seq in range(10, 20)]
        for a in backlog:
            yz_a.publish(alert_topic(P, a.district, a.site, a.sensor), a.encode())
        yz_a.wait_all()
        with running_gateway(config) as gateway:
            assert ops.wait_for(lambda _: {a.id for a in backlog} <= routed())
            eventually(lambda: gateway.counters.acked >= len(backlog), what="the backlog acked")
            assert gateway.counters.alerts_refused == 0
            assert gateway.counters.alerts_held >= 1  # they did come before the status
        registry = Collector(
            acl_broker.port,
            [f"{P}/registry/gw-sec"],
            "t-sec-registry",
            tls={"username": "gateway", "password": USERS["gateway"]},
        )
        assert registry.wait_for(lambda msgs: bool(msgs))
        assert msgpack.unpackb(registry.messages[0][1])["state"] == "offline"
        registry.close()
    finally:
        yz_a.client.publish(status_topic(P, "yz-a"), b"", qos=1, retain=True).wait_for_publish(10)
        for client in (yz_a, yz_b, ops):
            client.close()
