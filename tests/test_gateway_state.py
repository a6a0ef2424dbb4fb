"""The gateway's durable state: dead letters within a byte budget, a registry that survives a
restart, and the live lane that keeps live alerts ahead of a backlog (worker with fakes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest

from lifeline.contract import Status, alert_topic, decode_alert, status_topic
from gateway.config import GatewaySection
from gateway.counters import GatewayCounters
from gateway.events import Connected, LiveMessage, PublishAcked
from gateway.pipeline import CATCH_UP_S, LIVE_PUBLISHES, LIVENESS_READ_S, Pipeline, PipelineSettings
from gateway.registry import AlertVerdict, Registry
from gateway.state import AgentRow, DeadLetterReason, GatewayState, StateError
from tests.test_gateway_pipeline import WALL_MS, Clock, Rig
from tests.test_gateway_security import (
    HistoryBroker,
    HistoryWriter,
    P,
    alert,
    routed,
    send_alert,
    send_status,
    send_summary,
    settle,
    stored_alert_ids,
    summary,
)

# ------------------------------------------------------------------ dead letters


def test_dead_letters_are_kept_with_reason_topic_payload_and_detail_across_a_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.sqlite"
    state = GatewayState(path)
    state.dead_letter(DeadLetterReason.BAD_PAYLOAD, "P/alert/d/s/S", b"\x93x", "not a map", 1)
    assert state.pending and state.dead_letters() == []  # nothing is on disk before the commit
    assert state.commit() == 1 and not state.pending
    state.close()
    again = GatewayState(path)
    [letter] = again.dead_letters()
    assert (letter.reason, letter.topic, letter.payload, letter.detail, letter.at_ms) == (
        "bad_payload", "P/alert/d/s/S", b"\x93x", "not a map", 1
    )
    assert again.dead_letter_rows == 1 and again.dead_letter_counts() == {"bad_payload": 1}
    again.close()


def test_the_byte_budget_removes_the_oldest_dead_letters_and_counts_them(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "gw.sqlite", dead_letter_max_bytes=10_000)
    for i in range(30):
        state.dead_letter(DeadLetterReason.BAD_PAYLOAD, "t", bytes(900), f"#{i}", i)
        state.commit()
    assert state.dead_letter_bytes <= 10_000 and state.evicted == 30 - state.dead_letter_rows
    kept = [int(d.detail[1:]) for d in state.dead_letters()]
    assert kept == list(range(30 - len(kept), 30))  # the newest stay
    state.close()
    assert GatewayState(tmp_path / "gw.sqlite").evicted == 30 - len(kept)


def test_a_huge_payload_is_cut_and_says_so() -> None:
    state = GatewayState(":memory:")
    state.dead_letter(DeadLetterReason.BAD_PAYLOAD, "t", bytes(3 << 20), "junk", 1)
    state.commit()
    [letter] = state.dead_letters()
    assert len(letter.payload) == 1 << 20 and "cut to" in letter.detail


def test_a_state_dir_that_cannot_be_made_names_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="gateway.state_dir"):
        GatewayState(blocker / "sub" / "gw.sqlite")


# ------------------------------------------------------------------ the registry across a restart


def make_rig(registry: Registry, state: GatewayState, live: FakeLive | None = None) -> Rig:
    broker, writer, clock, counters = HistoryBroker(), HistoryWriter(), Clock(), GatewayCounters()
    pipeline = Pipeline(
        PipelineSettings(
            prefix=P, gateway_id="gw-st", stats_interval_s=1e9, registry_interval_s=1e9,
            max_inflight=50,
        ),
        broker=broker,
        writer=writer,
        counters=counters,
        registry=registry,
        state=state,
        live=live,
        clock=clock,
        wall_ms=lambda: WALL_MS,
    )
    return Rig(pipeline, broker, writer, clock, counters)


def test_a_restarted_gateway_knows_every_agent_and_owner_it_knew(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite"
    section = GatewaySection(id="gw-st", unknown_agent_hold_s=30)
    state = GatewayState(path)
    rig = make_rig(Registry.for_gateway(section, state), state)
    send_status(rig, "yz-a", mid=1)
    send_summary(rig, summary("yz-b", ["GAS-2"]), mid=2)
    settle(rig)
    assert rig.acked_mids == [1, 2]
    state.close()

    state = GatewayState(path)  # the restart: the backlog comes before any status
    rig = make_rig(Registry.for_gateway(section, state), state)
    send_alert(rig, alert("yz-a", "GAS-1", 1), mid=1)
    send_alert(rig, alert("yz-b", "GAS-2", 2), mid=2)
    send_alert(rig, alert("yz-a", "GAS-2", 3), mid=3)  # still yz-b's sensor
    settle(rig)
    assert rig.counters.alerts_held == 0  # no one is "unknown" again
    assert set(routed(rig)) == {"yz-a:1", "yz-b:2"} and rig.acked_mids == [1, 2, 3]
    assert rig.pipeline.registry.owner("GAS-2") == "yz-b"
    assert {r.agent for r in state.agents()} == {"yz-a", "yz-b"}


def test_a_decommissioned_agent_is_forgotten_in_the_state_file_too(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "gw.sqlite")
    registry = Registry("gw", state=state)
    registry.on_summary(summary("yz-b", ["GAS-2"]), 1)
    state.commit()
    registry.forget("yz-b")
    state.commit()
    again = Registry("gw", state=state)
    assert not again.known("yz-b") and again.owner("GAS-2") is None


def test_a_failed_commit_keeps_everything_for_the_next_one(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "gw.sqlite")
    state.save_agent(AgentRow("yz-a", "d", "t", "online", 1, 1))
    state.dead_letter(DeadLetterReason.BAD_PAYLOAD, "t", b"x", "why", 1)
    state._db.execute("CREATE TRIGGER nope BEFORE INSERT ON dead_letter BEGIN "
                      "SELECT RAISE(ABORT, 'disk I/O error'); END")
    with pytest.raises(StateError, match="disk I/O error"):
        state.commit()
    assert state.pending and state.agents() == []  # rolled back, still buffered
    state._db.execute("DROP TRIGGER nope")
    assert state.commit() == 1 and [a.agent for a in state.agents()] == ["yz-a"]


# ------------------------------------------------------------------ the live lane


@dataclass
class FakeLive:
    wanted: list[bool] = field(default_factory=list)
    published: list[tuple[str, bytes]] = field(default_factory=list)
    connected: bool = True

    def want_alerts(self, on: bool) -> None:
        self.wanted.append(on)

    def publish(self, topic: str, payload: bytes) -> int:
        self.published.append((topic, payload))
        return len(self.published)  # message ids 1, 2, ...

    def puback_all(self, rig: Rig) -> None:
        for mid in range(1, len(self.published) + 1):
            rig.pipeline.handle(PublishAcked(mid, lane=1))
        rig.poll()


def live(rig: Rig, topic: str, payload: bytes) -> None:
    rig.pipeline.handle(LiveMessage(topic, payload))


def test_while_behind_live_alerts_are_routed_at_once_and_stored_when_the_backlog_gets_there() -> None:
    lane = FakeLive()
    state = GatewayState(":memory:")
    rig = make_rig(Registry("gw", state=state), state, lane)
    rig.pipeline.handle(Connected(1, True))
    assert lane.wanted == [True]
    send_status(rig, "yz-a", mid=1)
    backlog = [alert("yz-a", "GAS-1", i) for i in range(1, 6)]
    fresh = alert("yz-a", "GAS-1", 99, level=4)
    live(rig, alert_topic(P, fresh.district, fresh.site, fresh.sensor), fresh.encode())
    # routed at once, ahead of the backlog still queued at the broker; on the session's
    # connection, whose outbound carries no backlog routes while behind (those use the lane)
    assert set(routed(rig)) == {"yz-a:99"}
    for i, a in enumerate([*backlog, fresh]):
        send_alert(rig, a, mid=10 + i)
    settle(rig)
    lane.puback_all(rig)  # while behind, the backlog's routes go over the live lane
    assert {decode_alert(p).id for _, p in lane.published} == {a.id for a in backlog}
    assert isinstance(rig.broker, HistoryBroker)
    ids = [decode_alert(p).id for t, p in rig.broker.history if "/ops/city/" in t]
    assert ids.count("yz-a:99") == 1  # the session's copy is not routed again ...
    assert 99 in stored_alert_ids(rig)  # ... but stored
    assert rig.counters.live_routed == 1 and rig.acked_mids == [1, *range(10, 16)]


def test_the_live_lane_takes_alerts_until_the_session_delivers_fresh_ones_again() -> None:
    """Judged by the age of what the session delivers, not by an empty socket: while a slow
    broker trickles out an old backlog, every read may find the socket empty."""
    lane = FakeLive()
    state = GatewayState(":memory:")
    rig = make_rig(Registry("gw", state=state), state, lane)
    rig.pipeline.handle(Connected(1, True))
    send_status(rig, "yz-a", mid=1)
    mid = 2
    for _ in range(3):  # the backlog: alerts an hour old, read as fast as they come
        send_alert(rig, dataclasses.replace(alert("yz-a", "GAS-1", mid), ts=WALL_MS - 3_600_000 + mid), mid=mid)
        mid += 1
        rig.clock.now += CATCH_UP_S
        settle(rig)
    assert lane.wanted == [True]
    fresh = dataclasses.replace(alert("yz-a", "GAS-1", mid), ts=WALL_MS - 300)  # then live traffic
    send_alert(rig, fresh, mid=mid)
    lane.puback_all(rig)
    rig.clock.now += CATCH_UP_S
    settle(rig)
    assert lane.wanted == [True, False] and rig.acked_mids == list(range(1, mid + 1))
    for m in range(mid + 1, mid + 60):  # the receive maximum (50) used up by a stalled store
        send_alert(rig, alert("yz-a", "GAS-1", m), mid=m)
    rig.poll(inbox_empty=True)
    assert lane.wanted == [True, False, True] and rig.counters.behind == 2


def test_a_session_that_brings_only_old_messages_falls_behind_and_an_idle_one_catches_up() -> None:
    lane = FakeLive()
    state = GatewayState(":memory:")
    rig = make_rig(Registry("gw", state=state), state, lane)
    rig.pipeline.handle(Connected(1, True))
    rig.clock.now += CATCH_UP_S
    rig.poll(inbox_empty=True)  # nothing came and nothing waits: caught up
    rig.clock.now += CATCH_UP_S
    rig.poll(inbox_empty=True)
    assert lane.wanted == [True, False]
    send_status(rig, "yz-a", mid=1)
    send_alert(rig, dataclasses.replace(alert("yz-a", "GAS-1", 2), ts=WALL_MS - 60_000), mid=2)
    rig.clock.now += CATCH_UP_S
    rig.poll(inbox_empty=True)
    assert lane.wanted == [True, False, True]


def test_retained_statuses_on_the_live_lane_release_the_alerts_waiting_for_them() -> None:
    state = GatewayState(":memory:")
    rig = make_rig(Registry("gw", unknown_agents="dead_letter", unknown_hold_s=30, state=state), state,
                   FakeLive())
    send_alert(rig, alert("yz-new", "GAS-1", 1), mid=1)
    settle(rig)
    assert rig.acked_mids == [] and rig.counters.alerts_held == 1
    live(rig, status_topic(P, "yz-new"), Status("yz-new", "online", WALL_MS).encode())
    settle(rig)
    assert rig.acked_mids == [1] and set(routed(rig)) == {"yz-new:1"}
    assert rig.counters.statuses == 0  # a live status is not stored: its session copy is


def test_live_alarms_of_a_contradicted_agent_are_flagged_and_others_left_to_the_session() -> None:
    state = GatewayState(":memory:")
    lane = FakeLive()
    rig = make_rig(Registry("gw", state=state), state, lane)
    rig.pipeline.handle(Connected(1, True))
    send_summary(rig, summary("yz-a", ["GAS-1"]), mid=1)
    for a in (alert("yz-b", "GAS-1", 1, level=4), alert("yz-b", "GAS-1", 2, level=1)):
        live(rig, alert_topic(P, a.district, a.site, a.sensor), a.encode())
    alerts = routed(rig)
    assert set(alerts) == {"yz-b:1"} and alerts["yz-b:1"]["verdict"] == AlertVerdict.WRONG_OWNER.value
    live(rig, alert_topic(P, "d", "s", "S"), msgpack.packb({"v": 1}))  # junk: ignored here
    assert rig.counters.bad_payloads == 0 and rig.pipeline.state.dead_letters() == []


def test_while_behind_routes_go_over_the_live_lane_and_its_pubacks_release_the_deliveries() -> None:
    """On the session's connection the broker's PUBACKs of our routes queue behind the backlog
    it is sending: waiting for them there would mean reading the backlog into memory."""
    lane = FakeLive()
    state = GatewayState(":memory:")
    rig = make_rig(Registry("gw", state=state), state, lane)
    rig.pipeline.handle(Connected(1, True))
    send_status(rig, "yz-a", mid=1)
    for i in range(2, 6):
        send_alert(rig, alert("yz-a", f"GAS-{i}", i), mid=i)
    rig.poll()
    rig.store_all()
    assert [decode_alert(p).id for _, p in lane.published] == [f"yz-a:{i}" for i in range(2, 6)]
    assert routed(rig) == {} and rig.acked_mids == [1]  # nothing on the session; not acked yet
    lane.puback_all(rig)
    assert rig.acked_mids == [1, 2, 3, 4, 5] and rig.counters.routed == 4


def test_with_the_receive_maximum_held_the_session_is_not_read_but_for_the_keepalive() -> None:
    lane = FakeLive()
    state = GatewayState(":memory:")
    rig = make_rig(Registry("gw", state=state), state, lane)  # max_inflight 50
    rig.pipeline.handle(Connected(1, True))
    send_status(rig, "yz-a", mid=1)
    for i in range(2, 60):  # the broker sends more than the receive maximum (Mosquitto 2.0.11)
        send_alert(rig, alert("yz-a", f"GAS-{i}", i), mid=i)
    rig.poll()
    assert not rig.pipeline.wants_input() and rig.counters.input_paused == 1
    assert rig.pipeline.wait_s() <= LIVENESS_READ_S
    rig.clock.now += LIVENESS_READ_S
    assert rig.pipeline.wants_input()  # one read for the keepalive
    assert not rig.pipeline.wants_input()
    rig.store_all()
    lane.puback_all(rig)  # stored and routed: acknowledged, room again
    assert rig.pipeline.wants_input() and len(rig.acked_mids) == 59


def test_when_the_live_lane_is_full_routes_wait_for_room_there_not_on_the_session() -> None:
    lane = FakeLive()
    state = GatewayState(":memory:")
    rig = make_rig(Registry("gw", state=state), state, lane)
    rig.pipeline.handle(Connected(1, True))
    send_status(rig, "yz-a", mid=1)
    for i in range(2, 2 + LIVE_PUBLISHES + 5):
        send_alert(rig, alert("yz-a", f"GAS-{i % 50}", i), mid=i)
    rig.poll()
    assert len(lane.published) == LIVE_PUBLISHES and routed(rig) == {}
    rig.pipeline.handle(PublishAcked(1, lane=1))
    rig.poll()
    assert len(lane.published) == LIVE_PUBLISHES + 1
    lane.connected = False  # the lane is gone: what waits goes over the session after all
    rig.poll()
    assert len(routed(rig)) == 4
