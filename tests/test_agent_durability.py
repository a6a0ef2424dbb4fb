"""A broker outage plus `kill -9` of the agent while alerts wait in its outbox: after the uplink
returns every alert arrives, exactly once by id, with contiguous seq, and the restarted agent
does not raise again what it had already raised."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.servers import MosquittoServer
from tests.agent_harness import AgentProcess, Collector, Publisher, write_config

pytestmark = pytest.mark.integration
SENSORS = [f"D-{i}" for i in range(1, 5)]


@pytest.fixture
def uplink_broker() -> Iterator[MosquittoServer]:
    """The centre's broker, which this test takes down and brings back with its sessions."""
    with MosquittoServer() as server:
        yield server


def test_outage_and_kill_9_lose_no_alert_and_repeat_none(
        tmp_path: Path, broker: MosquittoServer, uplink_broker: MosquittoServer) -> None:
    config = write_config(
        tmp_path / "agent.toml", agent="t-durable", broker_url=uplink_broker.url, state_dir=tmp_path / "state",
        mqtt_extra="reconnect_max_s = 1.0",
        extra=f'[raw_mqtt]\nurl = "{broker.url}"\n',  # sensors keep reporting through a local broker
        sensors=[{"id": s, "site": "bridge-3", "kind": "test.level", "high": [0.6, 0.7, 0.8, 0.9],
                  "hysteresis": 0.02, "debounce": 1, "gap_s": 3600.0} for s in SENSORS])
    collector = Collector(uplink_broker.port, client_id="test-durable-collector", clean=False)
    publisher = Publisher(broker.port, client_id="test-durable-publisher")
    agent = AgentProcess(config).start()
    t0 = int(time.time() * 1000) - 60_000

    def all_sensors(value: float, at: int) -> None:
        for sensor in SENSORS:
            publisher.block(sensor, [value], t0=at)

    try:
        agent.wait_log(r"raw input connected")
        all_sensors(0.95, t0)                                   # seq 1-4: raised to 4
        assert collector.wait_for(lambda c: len(c.alerts) == 4)

        uplink_broker.terminate()                               # the centre is cut off
        all_sensors(0.5, t0 + 1000)                             # seq 5-8: cleared
        all_sensors(0.95, t0 + 2000)                            # seq 9-12: raised again
        agent.wait_log(r"alert seq=12 ")
        agent.kill()                                            # with 8 alerts in the outbox

        agent = AgentProcess(config).start()
        agent.wait_log(r"raw input connected")
        assert "resumed detection state" in agent.log_text()
        all_sensors(0.96, t0 + 3000)                            # still level 4: nothing new
        all_sensors(0.5, t0 + 4000)                             # seq 13-16: cleared
        agent.wait_log(r"alert seq=16 ")

        uplink_broker.start()                                   # the centre is back
        assert collector.wait_for(lambda c: len({a.id for a in c.alerts}) >= 16, 30), \
            f"alerts received: {collector.alert_changes()}\nagent log:\n{agent.log_text()[-3000:]}"
        assert agent.terminate() == 0
    finally:
        agent.close()
        publisher.close()
        collector.close()

    unique = {a.id: a for a in collector.alerts}
    assert len(unique) == 16
    assert sorted(a.seq for a in unique.values()) == list(range(1, 17))
    for sensor in SENSORS:
        levels = [(a.prev, a.level) for a in sorted(unique.values(), key=lambda a: a.seq) if a.sensor == sensor]
        assert levels == [(0, 4), (4, 0), (0, 4), (4, 0)]
    for alert in collector.alerts:  # a re-send is the same alert, never a new seq for it
        assert unique[alert.id] == alert
