"""Who may send an alert: the gateway never believes one message about who owns a sensor,
refuses (dead-letters) alerts whose `agent` contradicts its registry, routes an alarm of level
3-4 whatever it says (flagged `unverified`), and never loses a legitimate agent's alerts that
arrive before its status (restart backlog).

The first part drives the worker with fakes; the last test runs a gateway against Mosquitto with
passwords and the deployed ACL, with agents publishing as themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from collections import Counter
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
from gateway.config import GatewayConfig, GatewaySection
from gateway.counters import GatewayCounters
from gateway.events import Disconnected, StoreBatch
from gateway.pipeline import COMMIT_EVERY_S, Pipeline, PipelineSettings
from gateway.registry import AlertVerdict, Registry
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.test_gateway_integration import (
    Collector,
    Publisher,
    eventually,
    recent_ms,
    running_gateway,
    state_dir,
)
from tests.test_gateway_lineproto import parse_body
from tests.test_gateway_pipeline import WALL_MS, Clock, FakeBroker, FakeWriter, Rig

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


class HistoryWriter(FakeWriter):
    """A fake writer that also keeps every batch (the rig clears `batches` as it stores them)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[StoreBatch] = []

    def submit(self, batch: StoreBatch) -> None:
        self.history.append(batch)
        super().submit(batch)


def make_rig(registry: Registry, *, wall_ms: list[int] | None = None) -> Rig:
    broker, writer, clock, counters = HistoryBroker(), HistoryWriter(), Clock(), GatewayCounters()
    settings = PipelineSettings(
        prefix=P, gateway_id="gw-sec", stats_interval_s=1e9, registry_interval_s=1e9
    )
    wall = wall_ms if wall_ms is not None else [WALL_MS]
    pipeline = Pipeline(
        settings,
        broker=broker,
        writer=writer,
        counters=counters,
        registry=registry,
        clock=clock,
        wall_ms=lambda: wall[0],
    )
    return Rig(pipeline, broker, writer, clock, counters)


def strict(**policy: Any) -> Registry:
    """The registry as the gateway's config makes it by default."""
    return Registry.for_gateway(GatewaySection(id="gw-sec", **policy))


def alert(agent: str, sensor: str, seq: int, *, level: int = 1, prev: int = 0) -> Alert:
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


def routed(rig: Rig) -> dict[str, dict[str, Any]]:
    """The alerts routed to any ops tier so far, by id (the last copy of each)."""
    assert isinstance(rig.broker, HistoryBroker)
    return {
        decode_alert(payload).id: msgpack.unpackb(payload)
        for topic, payload in rig.broker.history
        if "/ops/" in topic
    }


def routed_ids(rig: Rig) -> set[str]:
    return set(routed(rig))


def events(rig: Rig) -> list[dict[str, Any]]:
    """The ops events published so far (`P/event/{district}`)."""
    assert isinstance(rig.broker, HistoryBroker)
    return [msgpack.unpackb(p) for topic, p in rig.broker.history if topic.startswith(f"{P}/event/")]


def stored_alert_ids(rig: Rig) -> set[int]:
    """The `seq` of every alert point in the batches handed to the writer so far."""
    assert isinstance(rig.writer, HistoryWriter)
    return {
        int(fields["seq"])
        for batch in rig.writer.history
        for measurement, _tags, fields, _ts in parse_body(batch.body)
        if measurement == "alert"
    }


def settle(rig: Rig) -> None:
    """Let the store confirm and the broker acknowledge everything routed so far (and the state
    file commit what is due: commits are at least COMMIT_EVERY_S apart)."""
    rig.clock.now += COMMIT_EVERY_S
    rig.poll()
    for _ in range(3):
        rig.store_all()
        rig.puback_all()


def dead_letters(rig: Rig) -> list[tuple[str, str]]:
    """(reason, detail) of every dead-letter row committed so far."""
    return [(d.reason, d.detail) for d in rig.pipeline.state.dead_letters()]


# ------------------------------------------------------------------ the agent check


def test_an_alert_naming_another_agent_than_the_sensors_owner_is_dead_lettered_acked_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(strict())
    send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"]), mid=1)
    send_alert(rig, alert("yz-b", "GAS-1", 7), mid=2)  # yz-b claims yz-a's sensor under its own name
    send_alert(rig, alert("yz-a", "GAS-1", 8), mid=3)
    with caplog.at_level(logging.WARNING, logger="gateway.pipeline"):
        settle(rig)
    assert routed_ids(rig) == {"yz-a:8"}
    assert rig.acked_mids == [1, 2, 3]  # acknowledged once the dead letter is committed
    assert (rig.counters.alerts_refused, rig.counters.alerts, rig.counters.dead_lettered) == (1, 1, 1)
    [(reason, detail)] = dead_letters(rig)
    assert reason == "wrong_owner" and "yz-b:7" in detail and "belongs to agent yz-a" in detail
    [line] = [r.getMessage() for r in caplog.records if "dead-lettered alert" in r.getMessage()]
    assert "yz-b:7" in line and "GAS-1" in line and "claims agent yz-b" in line and "owner yz-a" in line
    snapshot = rig.pipeline.registry.snapshot(WALL_MS, rig.counters.as_dict())
    assert snapshot["counters"]["alerts_refused"] == 1
    [event] = events(rig)  # the forgery is an ownership conflict, named for ops
    assert (event["event"], event["sensor"], event["owner"], event["claimant"], event["source"]) == (
        "conflict", "GAS-1", "yz-a", "yz-b", "alert"
    )


def test_a_forged_alert_is_neither_stored_nor_routed() -> None:
    rig = make_rig(strict())
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=1)
    settle(rig)
    send_alert(rig, alert("yz-b", "GAS-1", 1), mid=2)
    rig.poll()
    assert rig.writer.batches == []  # nothing to store: the forged alert added no point
    assert routed_ids(rig) == set()
    assert rig.acked_mids == [1, 2]


@pytest.mark.parametrize(("level", "prev"), [(3, 0), (4, 2), (0, 4)])
def test_an_alarm_is_never_held_back_for_who_sent_it_it_is_routed_flagged_unverified(
    level: int, prev: int
) -> None:
    rig = make_rig(strict(unknown_agent_hold_s=0))
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=1)
    send_alert(rig, alert("yz-b", "GAS-1", 1, level=level, prev=prev), mid=2)  # wrong owner
    send_alert(rig, alert("ghost", "GAS-9", 2, level=level, prev=prev), mid=3)  # never heard of
    send_alert(rig, alert("yz-a", "GAS-1", 3, level=level, prev=prev), mid=4)  # the owner
    settle(rig)
    alerts = routed(rig)
    assert set(alerts) == {"yz-b:1", "ghost:2", "yz-a:3"}
    assert alerts["yz-b:1"]["unverified"] is True and alerts["yz-b:1"]["verdict"] == "wrong_owner"
    assert alerts["ghost:2"]["verdict"] == "unknown_agent"
    assert "unverified" not in alerts["yz-a:3"]
    assert decode_alert(msgpack.packb(alerts["yz-b:1"])).id == "yz-b:1"  # still a valid Alert
    assert stored_alert_ids(rig) == {3} and rig.counters.alerts == 1  # only the owner's is stored
    assert rig.acked_mids == [1, 2, 3, 4]
    assert rig.counters.alerts_unverified == 2 and rig.counters.alerts_refused == 0
    assert sorted(reason for reason, _ in dead_letters(rig)) == ["unknown_agent", "wrong_owner"]


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


def test_an_alert_of_an_agent_never_heard_of_is_dead_lettered_when_its_time_is_up(
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
    assert [reason for reason, _ in dead_letters(rig)] == ["unknown_agent"]
    assert any("ghost:1" in r.getMessage() and "owner unknown" in r.getMessage() for r in caplog.records)


def test_a_waiting_alert_is_refused_when_a_summary_shows_the_sensor_is_anothers() -> None:
    rig = make_rig(strict())
    send_alert(rig, alert("yz-b", "GAS-1", 1), mid=1)
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=2)
    send_status(rig, "yz-b", mid=3)
    settle(rig)
    assert routed_ids(rig) == set() and rig.counters.alerts_refused == 1
    assert rig.acked_mids == [1, 2, 3]


def test_many_alerts_of_unknown_agents_wait_with_no_cap_and_none_is_decided_early() -> None:
    """No cap of the gateway's own: the broker's receive maximum bounds what waits (it holds the
    rest back), and each waits its full time for its agent."""
    rig = make_rig(strict(unknown_agent_hold_s=5))
    for mid in range(1, 10_001):
        send_alert(rig, alert(f"new-{mid % 7}", f"GAS-{mid}", mid), mid=mid)
    settle(rig)
    assert rig.acked_mids == [] and rig.counters.alerts_refused == 0
    for agent in range(7):
        send_status(rig, f"new-{agent}", mid=10_001 + agent)
    settle(rig)
    assert len(rig.acked_mids) == 10_007 and len(routed_ids(rig)) == 10_000
    assert rig.counters.alerts_refused == 0 and dead_letters(rig) == []


def test_the_allow_list_refuses_other_agents_at_once_and_trusts_its_own_from_the_start() -> None:
    rig = make_rig(strict(agents=["yz-a"]))
    send_alert(rig, alert("yz-a", "GAS-1", 1), mid=1)  # no status yet: listed, so known
    send_status(rig, "yz-b", mid=2)
    send_alert(rig, alert("yz-b", "GAS-2", 1), mid=3)  # has a status, but is not listed
    settle(rig)
    assert routed_ids(rig) == {"yz-a:1"}
    assert rig.acked_mids == [1, 2, 3] and rig.counters.alerts_refused == 1
    assert [reason for reason, _ in dead_letters(rig)] == ["not_allowed"]


def test_accept_policy_takes_unknown_agents_stored_and_routed_flagged_unverified() -> None:
    rig = make_rig(strict(unknown_agents="accept"))
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=1)
    send_alert(rig, alert("ghost", "GAS-7", 1), mid=2)
    send_alert(rig, alert("ghost", "GAS-1", 2), mid=3)  # the owner rule still holds
    rig.poll()
    assert stored_alert_ids(rig) == {1}
    settle(rig)
    assert routed_ids(rig) == {"ghost:1"} and routed(rig)["ghost:1"]["unverified"] is True
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


def test_a_drain_is_settled_with_only_waiting_alerts_left() -> None:
    rig = make_rig(strict())
    send_status(rig, "yz-a", mid=1)
    send_alert(rig, alert("ghost", "GAS-1", 1), mid=2)
    rig.pipeline.start_draining()
    settle(rig)
    assert rig.pipeline.settled and rig.acked_mids == [1]  # the ghost's alert is re-sent next run


# ------------------------------------------------------------------ ownership on evidence only


def test_a_summary_from_ten_years_ahead_is_dead_lettered_counted_and_never_believed() -> None:
    """The hijack: yz-b lists yz-a's sensor with a window end ten years in the future."""
    rig = make_rig(strict())
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=1)
    ten_years = 10 * 365 * 86_400_000
    send_summary(rig, summary("yz-b", ["GAS-1"], t1=WALL_MS + ten_years), mid=2)
    send_status(rig, "yz-b", mid=3)
    send_alert(rig, alert("yz-a", "GAS-1", 1, level=4), mid=4)  # the real owner's red alarm
    send_alert(rig, alert("yz-b", "GAS-1", 2, level=4), mid=5)  # the forged one
    settle(rig)
    assert rig.pipeline.registry.owner("GAS-1") == "yz-a"
    assert rig.counters.future_timestamps == 1 and rig.counters.summaries == 1
    alerts = routed(rig)
    assert "unverified" not in alerts["yz-a:1"] and alerts["yz-b:2"]["unverified"] is True
    assert stored_alert_ids(rig) == {1}
    assert sorted(reason for reason, _ in dead_letters(rig)) == ["future_timestamp", "wrong_owner"]
    assert rig.acked_mids == [1, 2, 3, 4, 5]
    # a window end just inside the skew is taken (a few minutes' clock drift is normal)
    send_summary(rig, summary("yz-a", ["GAS-1"], t1=WALL_MS + 290_000), mid=6)
    settle(rig)
    assert rig.counters.future_timestamps == 1 and rig.counters.summaries == 2


def test_a_status_or_alert_from_the_future_is_not_believed_either() -> None:
    rig = make_rig(strict())
    future = WALL_MS + 3_600_000
    rig.deliver(status_topic(P, "yz-f"), Status("yz-f", "online", future).encode(), mid=1)
    settle(rig)
    assert not rig.pipeline.registry.known("yz-f")  # it would have frozen the agent's status
    send_status(rig, "yz-a", mid=2)
    late = dataclasses.replace(alert("yz-a", "GAS-1", 1), ts=future)
    send_alert(rig, late, mid=3)
    settle(rig)
    assert routed_ids(rig) == set() and rig.counters.future_timestamps == 2
    assert rig.acked_mids == [1, 2, 3]


def test_a_second_agent_listing_an_owned_sensor_raises_a_conflict_naming_both_but_moves_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wall = [T1]
    registry = strict(owner_move_s=600)
    rig = make_rig(registry, wall_ms=wall)
    send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"]), mid=1)
    with caplog.at_level(logging.WARNING, logger="gateway.registry"):
        for k in range(1, 21):  # both keep listing it for 20 minutes: the owner stays
            wall[0] += 60_000
            send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"], t1=T1 + 60_000 * k), mid=2 * k)
            send_summary(rig, summary("yz-b", ["GAS-2", "GAS-7"], t1=T1 + 60_000 * k), mid=2 * k + 1)
    settle(rig)
    assert registry.owner("GAS-2") == "yz-a" and registry.owner("GAS-7") == "yz-b"
    conflicts = [e for e in events(rig) if e["event"] == "conflict"]
    assert conflicts and all((e["owner"], e["claimant"], e["sensor"]) == ("yz-a", "yz-b", "GAS-2")
                             for e in conflicts)
    assert len(conflicts) == 2  # raised again at most every 10 minutes while it lasts
    assert any("conflict on sensor GAS-2" in r.getMessage() for r in caplog.records)
    snapshot = registry.snapshot(wall[0], {})
    assert snapshot["claims"][0]["claimant"] == "yz-b" and snapshot["claims"][0]["owner"] == "yz-a"
    owners = dict(zip(snapshot["sensors"]["sensor"], snapshot["sensors"]["owner"]))
    assert (owners["GAS-2"], owners["GAS-7"]) == ("yz-a", "yz-b")
    # yz-b's rows of GAS-2 are not put into yz-a's series: dead-lettered; its own rows are stored
    assert isinstance(rig.writer, HistoryWriter)
    rows = Counter(
        tags["sensor"]
        for batch in rig.writer.history
        for measurement, tags, _fields, _ts in parse_body(batch.body)
        if measurement == "reading"
    )
    assert rows == {"GAS-1": 21, "GAS-2": 21, "GAS-7": 20}
    wrong = [d for d in rig.pipeline.state.dead_letters() if d.reason == "wrong_owner"]
    assert len(wrong) == 20 and all("lists sensors it does not own: GAS-2 (owner yz-a)" in d.detail
                                    for d in wrong)
    assert rig.counters.future_timestamps == 0 and rig.acked_mids == list(range(1, 42))


def test_a_recommissioned_sensor_moves_once_the_old_owner_stopped_listing_it_for_long_enough(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wall = [WALL_MS]
    registry = strict(owner_move_s=600)
    rig = make_rig(registry, wall_ms=wall)

    def minute(k: int, a_sensors: list[str] | None, b_sensors: list[str]) -> None:
        wall[0] += 60_000
        if a_sensors is not None:
            send_summary(rig, summary("yz-a", a_sensors, t1=T1 + 60_000 * k), mid=100 + 2 * k)
        send_summary(rig, summary("yz-b", b_sensors, t1=T1 + 60_000 * k), mid=101 + 2 * k)

    send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"]), mid=1)
    for k in range(1, 30):  # yz-a is offline (no summaries): nothing is confirmed
        minute(k, None, ["GAS-2"])
    assert registry.owner("GAS-2") == "yz-a"
    with caplog.at_level(logging.WARNING, logger="gateway.registry"):
        for k in range(30, 45):  # yz-a is back without GAS-2: after 10 minutes it moves
            minute(k, ["GAS-1"], ["GAS-2"])
            if registry.owner("GAS-2") == "yz-b":
                break
    assert registry.owner("GAS-2") == "yz-b" and registry.owner("GAS-1") == "yz-a"
    assert 40 <= k <= 41
    assert any("GAS-2 moved from agent yz-a to agent yz-b" in r.getMessage() for r in caplog.records)
    settle(rig)
    moved = [e for e in events(rig) if e["event"] == "moved"]
    assert [(e["sensor"], e["owner"], e["claimant"]) for e in moved] == [("GAS-2", "yz-a", "yz-b")]
    assert rig.counters.ownership_moves == 1
    send_summary(rig, summary("yz-a", ["GAS-1", "GAS-2"], t1=T1), mid=999)  # an old window re-sent
    assert registry.owner("GAS-2") == "yz-b"
    send_alert(rig, alert("yz-a", "GAS-2", 1), mid=1000)
    send_alert(rig, alert("yz-b", "GAS-2", 1), mid=1001)
    settle(rig)
    assert {"yz-b:1"} <= routed_ids(rig) and "yz-a:1" not in routed_ids(rig)


def test_a_pinned_owner_never_moves_and_a_cleared_status_frees_an_agents_sensors() -> None:
    wall = [WALL_MS]
    registry = strict(owners={"GAS-1": "yz-a"}, owner_move_s=0)
    rig = make_rig(registry, wall_ms=wall)
    send_summary(rig, summary("yz-b", ["GAS-1", "GAS-3"]), mid=1)
    for k in range(5):
        wall[0] += 60_000
        send_summary(rig, summary("yz-a", ["GAS-9"], t1=T1 + 60_000 * (k + 1)), mid=2 + 2 * k)
        send_summary(rig, summary("yz-b", ["GAS-1", "GAS-3"], t1=T1 + 60_000 * (k + 1)), mid=3 + 2 * k)
    assert registry.owner("GAS-1") == "yz-a" and registry.owner("GAS-3") == "yz-b"
    rig.deliver(status_topic(P, "yz-b"), b"", mid=50)  # yz-b decommissioned
    assert registry.owner("GAS-3") is None and registry.owner("GAS-1") == "yz-a"


def test_the_registry_verdicts() -> None:
    registry = Registry("gw", unknown_agents="dead_letter")
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
        {
            "gateway": {
                "agents": ["yz-a"],
                "unknown_agents": "accept",
                "unknown_agent_hold_s": 3,
                "owners": {"GAS-1": "yz-a"},
                "owner_move_s": 60,
            }
        }
    )
    registry = Registry.for_gateway(config.gateway)
    assert (registry.allowed_agents, registry.unknown_agents, registry.unknown_hold_s) == (
        frozenset({"yz-a"}),
        "accept",
        3,
    )
    assert registry.owner("GAS-1") == "yz-a" and registry.owner_move_ms == 60_000
    assert Registry.for_gateway(GatewaySection()).unknown_agents == "dead_letter"


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
                "state_dir": state_dir(),
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
        # before yz-a's retained status, to a registry that remembers yz-a (its state file).
        backlog = [alert("yz-a", "GAS-A", seq) for seq in range(10, 20)]
        for a in backlog:
            yz_a.publish(alert_topic(P, a.district, a.site, a.sensor), a.encode())
        yz_a.wait_all()
        with running_gateway(config) as gateway:
            assert ops.wait_for(lambda _: {a.id for a in backlog} <= routed())
            eventually(lambda: gateway.counters.acked >= len(backlog), what="the backlog acked")
            assert gateway.counters.alerts_refused == 0
            assert gateway.counters.alerts_held == 0  # known from the state file: no wait
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
