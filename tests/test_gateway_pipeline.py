"""The gateway worker without servers: what is stored, routed and acknowledged, and when."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import pytest

from gateway.counters import GatewayCounters
from gateway.events import BatchDone, Connected, Disconnected, Inbound, PublishAcked, StoreBatch
from gateway.pipeline import Pipeline, PipelineSettings
from gateway.registry import Registry
from gateway.state import StateError
from gateway.store import RejectedLine, WriteOutcome
from lifeline.contract import Alert, Status, Summary, alert_topic, status_topic, summary_topic
from tests.test_gateway_lineproto import parse_body

P = "lifeline/v1"
#: The rig's wall clock: after every time the tests send (later ones are "in the future").
WALL_MS = 1_700_000_600_000


@dataclass
class FakeBroker:
    """Records publishes and acks; message ids wrap like paho's."""

    epoch: int = 1
    connected: bool = True
    next_mid: int = 1
    published: list[tuple[int, str, bytes, bool]] = field(default_factory=list)
    acked: list[tuple[int, int]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        mid = self.next_mid
        self.next_mid = mid % 65535 + 1
        self.published.append((mid, topic, payload, retain))
        return mid

    def ack(self, mid: int, qos: int, epoch: int) -> bool:
        if epoch != self.epoch:
            return False
        self.acked.append((mid, epoch))
        return True


@dataclass
class FakeWriter:
    idle: bool = True
    healthy: bool = True
    free_slots: int = 1
    batches: list[StoreBatch] = field(default_factory=list)

    def submit(self, batch: StoreBatch) -> None:
        self.batches.append(batch)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    pipeline: Pipeline
    broker: FakeBroker
    writer: FakeWriter
    clock: Clock
    counters: GatewayCounters

    def deliver(self, topic: str, payload: bytes, mid: int, *, epoch: int | None = None) -> None:
        self.pipeline.handle(
            Inbound(topic, payload, mid, 1, False, self.broker.epoch if epoch is None else epoch)
        )

    def poll(self, inbox_empty: bool = True) -> None:
        self.pipeline.poll(inbox_empty=inbox_empty)

    def store_all(self, outcome: WriteOutcome = WriteOutcome.STORED) -> None:
        for batch in self.writer.batches:
            self.pipeline.handle(BatchDone(batch.number, outcome, batch.points))
        self.writer.batches.clear()
        self.poll()

    def puback_all(self) -> None:
        for mid, *_ in self.broker.published:
            self.pipeline.handle(PublishAcked(mid))
        self.broker.published.clear()
        self.poll()

    @property
    def acked_mids(self) -> list[int]:
        return [mid for mid, _ in self.broker.acked]


def make_rig(**settings: Any) -> Rig:
    broker, writer, clock, counters = FakeBroker(), FakeWriter(), Clock(), GatewayCounters()
    options: dict[str, Any] = {
        "prefix": P,
        "gateway_id": "gw-test",
        "stats_interval_s": 1e9,
        "registry_interval_s": 1e9,
    }
    options.update(settings)
    pipeline = Pipeline(
        PipelineSettings(**options),
        broker=broker,
        writer=writer,
        counters=counters,
        registry=Registry("gw-test", allowed_agents=["agent-1"]),
        clock=clock,
        wall_ms=lambda: WALL_MS,
    )
    return Rig(pipeline, broker, writer, clock, counters)


def alert(
    seq: int,
    *,
    level: int = 1,
    prev: int = 0,
    sensor: str = "S-1",
    ts: int | None = None,
    rule: str = "high",
    district: str = "yuzhong",
) -> Alert:
    return Alert(
        id=f"agent-1:{seq}",
        agent="agent-1",
        sensor=sensor,
        kind="pipe.pressure",
        site="site-1",
        township="town-1",
        district=district,
        rule=rule,
        level=level,
        prev=prev,
        value=0.5 + seq,
        ts=1_700_000_000_000 + seq if ts is None else ts,
        seq=seq,
        limit=0.6,
    )


def send_alert(rig: Rig, a: Alert, mid: int) -> None:
    rig.deliver(alert_topic(P, a.district, a.site, a.sensor), a.encode(), mid)


def summary(agent: str = "agent-1", rows: int = 3, t1: int = 1_700_000_060_000) -> Summary:
    return Summary(
        agent=agent,
        township="town-1",
        district="yuzhong",
        t0=t1 - 60_000,
        t1=t1,
        sensor=[f"{agent}-S{i}" for i in range(rows)],
        kind=["pipe.flow"] * rows,
        site=["site-1"] * rows,
        n=np.full(rows, 10),
        min=np.zeros(rows),
        max=np.ones(rows),
        mean=np.full(rows, 0.5),
        last=np.full(rows, 0.25),
    )


# ------------------------------------------------------------------ acknowledgement


def test_nothing_is_acknowledged_before_the_store_confirms() -> None:
    rig = make_rig()
    send_alert(rig, alert(1), mid=11)
    rig.deliver(summary_topic(P, "agent-1"), summary().encode(), mid=12)
    rig.poll()
    assert len(rig.writer.batches) == 1 and rig.writer.batches[0].points == 4
    rig.puback_all()
    assert rig.broker.acked == []
    rig.store_all()
    assert rig.acked_mids == [11, 12]
    assert rig.counters.points_stored == 4


def test_an_alert_is_acknowledged_only_once_its_routes_are_acknowledged_too() -> None:
    rig = make_rig()
    send_alert(rig, alert(1, level=2, prev=1), mid=7)
    rig.poll()
    rig.store_all()
    assert rig.broker.acked == []
    first_route = rig.broker.published[0][0]
    rig.pipeline.handle(PublishAcked(first_route))
    rig.poll()
    assert rig.broker.acked == []
    rig.puback_all()
    assert rig.acked_mids == [7]
    assert rig.counters.routed == 2


def test_acknowledgements_leave_in_arrival_order() -> None:
    rig = make_rig()
    rig.writer.idle = True
    rig.deliver(summary_topic(P, "agent-1"), summary().encode(), mid=1)
    rig.poll()  # batch 1 with mid 1
    rig.deliver(summary_topic(P, "agent-2"), summary("agent-2").encode(), mid=2)
    rig.poll()  # batch 2 with mid 2
    first, second = rig.writer.batches
    rig.pipeline.handle(BatchDone(second.number, WriteOutcome.STORED, second.points))
    rig.poll()
    assert rig.broker.acked == []
    rig.pipeline.handle(BatchDone(first.number, WriteOutcome.STORED, first.points))
    rig.poll()
    assert rig.acked_mids == [1, 2]


def test_deliveries_of_a_lost_connection_are_never_acknowledged() -> None:
    rig = make_rig()
    send_alert(rig, alert(1), mid=5)
    rig.pipeline.handle(Disconnected("keepalive timeout"))  # seals the open batch
    [stale] = rig.writer.batches
    rig.broker.epoch = 2
    rig.pipeline.handle(Connected(2, True))
    send_alert(rig, alert(1), mid=5)  # the broker re-sends it on the new connection
    rig.pipeline.handle(BatchDone(stale.number, WriteOutcome.STORED, stale.points))
    rig.poll()
    rig.puback_all()
    assert rig.broker.acked == []  # only the re-delivery may be acknowledged, once stored
    rig.store_all()
    assert rig.broker.acked == [(5, 2)]


def test_an_abandoned_batch_acknowledges_nothing_and_a_rejected_one_moves_on() -> None:
    rig = make_rig()
    rig.deliver(summary_topic(P, "agent-1"), summary().encode(), mid=1)
    rig.poll()
    rig.store_all(WriteOutcome.ABANDONED)
    assert rig.broker.acked == [] and rig.counters.batches_abandoned == 1



def test_rows_the_store_refused_are_dead_lettered_before_their_messages_are_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = make_rig()
    rig.deliver(summary_topic(P, "agent-1"), summary().encode(), mid=1)
    rig.poll()
    [batch] = rig.writer.batches
    bad = RejectedLine(batch.body.splitlines()[1], "HTTP 400: unable to parse")
    rig.writer.batches.clear()
    state = rig.pipeline.state
    real_commit = state.commit
    monkeypatch.setattr(state, "commit", lambda: (_ for _ in ()).throw(StateError("disk full")))
    rig.pipeline.handle(BatchDone(batch.number, WriteOutcome.STORED, batch.points, (bad,)))
    rig.poll()
    assert rig.acked_mids == []  # the refused row is not on record yet
    monkeypatch.setattr(state, "commit", real_commit)
    rig.clock.now += 2
    rig.poll()
    assert rig.acked_mids == [1]
    assert (rig.counters.batches_rejected, rig.counters.rows_rejected) == (1, 1)
    assert rig.counters.points_stored == batch.points - 1
    [letter] = state.dead_letters()
    assert (letter.reason, letter.payload, letter.detail) == ("store_rejected", bad.line, bad.error)


def test_a_bad_payload_is_dead_lettered_with_its_topic_and_the_reason() -> None:
    rig = make_rig()
    rig.deliver(f"{P}/alert/d/s/S", b"\x93not a map", mid=1)
    rig.poll()
    assert rig.acked_mids == [1] and rig.counters.bad_payloads == 1
    [letter] = rig.pipeline.state.dead_letters()
    assert (letter.reason, letter.topic, letter.payload) == ("bad_payload", f"{P}/alert/d/s/S", b"\x93not a map")
    assert letter.detail


# ------------------------------------------------------------------ routing


@pytest.mark.parametrize(
    ("level", "prev", "tiers"),
    [
        (1, 0, ["township"]),
        (2, 1, ["township", "district"]),
        (3, 2, ["township", "district", "city"]),
        (4, 0, ["township", "district", "city"]),
        (0, 3, ["township", "district", "city"]),  # a clear goes to every tier that saw the raise
        (0, 1, ["township"]),
        (1, 2, ["township", "district"]),
    ],
)
def test_alerts_are_routed_to_every_tier_that_sees_level_or_prev(
    level: int, prev: int, tiers: list[str]
) -> None:
    rig = make_rig()
    a = alert(3, level=level, prev=prev, district="shapingba")
    send_alert(rig, a, mid=1)
    assert [(topic, payload, retain) for _, topic, payload, retain in rig.broker.published] == [
        (f"{P}/ops/{tier}/shapingba", a.encode(), False) for tier in tiers
    ]


def test_routes_wait_while_the_servers_receive_maximum_is_used_up() -> None:
    rig = make_rig()
    rig.pipeline.handle(Connected(1, False, receive_maximum=3))
    for i in range(3):
        send_alert(rig, alert(i, level=2, prev=1, sensor=f"S-{i}"), mid=i + 1)  # 2 routes each
    assert len(rig.broker.published) == 3
    rig.pipeline.handle(PublishAcked(rig.broker.published[0][0]))
    rig.poll()
    assert len(rig.broker.published) == 4
    for _ in range(6):
        rig.puback_all()
    assert rig.counters.routed == 6
    rig.store_all()
    assert rig.acked_mids == [1, 2, 3]


def test_a_refused_route_is_counted_and_does_not_block_acknowledgement() -> None:
    rig = make_rig()
    send_alert(rig, alert(1), mid=1)
    rig.poll()
    rig.store_all()
    rig.pipeline.handle(
        PublishAcked(rig.broker.published[0][0], refused=True, reason="Not authorized")
    )
    rig.poll()
    assert rig.acked_mids == [1] and rig.counters.route_refused == 1


# ------------------------------------------------------------------ bad payloads


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (f"{P}/alert/yuzhong/site-1/S-1", b"\xc1 not msgpack"),
        (f"{P}/alert/yuzhong/site-1/S-1", msgpack.packb({"v": 1, "id": "x"})),
        (f"{P}/alert/yuzhong/site-1/S-9", alert(1).encode()),  # topic names another sensor
        (f"{P}/summary/agent-9", summary("agent-1").encode()),
        (
            f"{P}/status/agent-1",
            msgpack.packb({"v": 2, "agent": "agent-1", "state": "online", "ts": 1}),
        ),
        (f"{P}/raw/S-1", b"\x80"),
    ],
)
def test_bad_payloads_are_counted_acknowledged_and_dropped(topic: str, payload: bytes) -> None:
    rig = make_rig()
    rig.deliver(topic, payload, mid=1)
    send_alert(rig, alert(2), mid=2)
    rig.poll()
    assert rig.counters.bad_payloads == 1
    assert rig.acked_mids == [1]  # acknowledged at once: it can never be stored
    assert len(rig.broker.published) == 1  # only the good alert was routed
    rig.puback_all()
    rig.store_all()
    assert rig.acked_mids == [1, 2]
    assert rig.counters.points_stored == 1


# ------------------------------------------------------------------ batching


def test_batches_seal_at_batch_points_or_after_the_flush_interval_while_the_writer_is_busy() -> (
    None
):
    rig = make_rig(batch_points=10, flush_interval_s=0.2)
    rig.writer.idle = False
    for i in range(3):
        rig.deliver(
            summary_topic(P, f"agent-{i}"), summary(f"agent-{i}", rows=4).encode(), mid=i + 1
        )
        rig.poll(inbox_empty=False)
    assert [b.points for b in rig.writer.batches] == [12]
    rig.deliver(summary_topic(P, "agent-9"), summary("agent-9", rows=4).encode(), mid=9)
    rig.poll(inbox_empty=True)
    assert len(rig.writer.batches) == 1  # writer busy: keep filling
    rig.clock.now += 0.25
    assert rig.pipeline.wait_s() == 0.0
    rig.poll(inbox_empty=True)
    assert [b.points for b in rig.writer.batches] == [12, 4]


def test_colliding_alerts_keep_the_highest_seq_in_one_batch() -> None:
    rig = make_rig()
    send_alert(rig, alert(8, level=2, prev=1, ts=1_700_000_000_000), mid=1)
    send_alert(rig, alert(9, level=3, prev=2, ts=1_700_000_000_000), mid=2)
    send_alert(
        rig, alert(9, level=3, prev=2, ts=1_700_000_000_000), mid=3
    )  # a re-send, not a collision
    rig.poll()
    [batch] = rig.writer.batches
    [(_, _, fields, _)] = parse_body(batch.body)
    assert fields["seq"] == 9 and fields["level"] == 3
    assert rig.counters.alert_collisions == 1


def test_status_rows_and_registry_snapshot() -> None:
    rig = make_rig(registry_topic=f"{P}/registry/gw-test", registry_interval_s=10.0)
    status = Status("agent-1", "online", 1_700_000_000_000, {"backlog": 4, "version": "0.1"})
    rig.deliver(status_topic(P, "agent-1"), status.encode(), mid=1)
    rig.deliver(summary_topic(P, "agent-1"), summary().encode(), mid=2)
    send_alert(rig, alert(1, level=2, prev=1, sensor="agent-1-S0"), mid=3)
    rig.pipeline.handle(Connected(1, False))
    rig.poll()
    registry = [m for m in rig.broker.published if m[1].endswith("/registry/gw-test")]
    [(_, _, payload, retain)] = registry
    snap = msgpack.unpackb(payload)
    assert retain and snap["gateway"] == "gw-test" and snap["state"] == "online"
    [agent] = snap["agents"]
    assert (agent["agent"], agent["state"], agent["backlog"], agent["district"]) == (
        "agent-1",
        "online",
        4,
        "yuzhong",
    )
    sensors = dict(zip(snap["sensors"]["sensor"], snap["sensors"]["level"]))
    assert sensors == {"agent-1-S0": 2, "agent-1-S1": 0, "agent-1-S2": 0}
    assert snap["counters"]["statuses"] == 1
    body = b"".join(b.body for b in rig.writer.batches)
    assert any(m == "agent_status" and f["online"] == 1 for m, _, f, _ in parse_body(body))


def test_a_cleared_retained_status_removes_the_agent() -> None:
    rig = make_rig()
    rig.deliver(status_topic(P, "agent-1"), Status("agent-1", "online", 1).encode(), mid=1)
    rig.deliver(status_topic(P, "agent-1"), b"", mid=2)
    assert "agent-1" not in rig.pipeline.registry.agents
    assert rig.counters.bad_payloads == 0


def test_draining_takes_no_new_messages() -> None:
    rig = make_rig()
    send_alert(rig, alert(1), mid=1)
    rig.pipeline.start_draining()
    send_alert(rig, alert(2), mid=2)
    assert [b.points for b in rig.writer.batches] == [1]
    assert not rig.pipeline.settled
    rig.puback_all()
    rig.store_all()
    assert rig.pipeline.settled and rig.acked_mids == [1]
