"""The whole agent as a subprocess against a real broker: RawBlocks in, alerts, summaries and
status out; bad RawBlocks never stop it; SIGTERM exits cleanly and quickly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from lifeline.contract import RawBlock
from simulators.servers import MosquittoServer
from tests.agent_harness import AgentProcess, Collector, P, Publisher, write_config

pytestmark = pytest.mark.integration
THRESHOLDS = {"kind": "test.level", "high": [0.6, 0.7, 0.8, 0.9], "low": [0.2, 0.1], "hysteresis": 0.02, "gap_s": 600.0,
              "debounce": 3}


@pytest.fixture
def agent_config(tmp_path: Path, broker: MosquittoServer) -> Path:
    return write_config(tmp_path / "agent.toml", agent="t-mqtt", broker_url=broker.url,
                        state_dir=tmp_path / "state", agent_extra="window_s = 1", sensors=[
                            {"id": "T-P-1", "site": "valve-12", "lat": 29.5586, "lon": 106.5772, **THRESHOLDS},
                            {"id": "T-P-2", "site": "valve-13", **THRESHOLDS, "kind": "pipe.pressure",
                             "rules": {"rate": {"enabled": False}}},
                        ])


@pytest.fixture
def running(agent_config: Path, broker: MosquittoServer) -> Iterator[tuple[AgentProcess, Collector, Publisher]]:
    collector = Collector(broker.port, client_id="test-agent-mqtt-collector", prefix=P)
    agent = AgentProcess(agent_config).start()
    publisher = Publisher(broker.port, client_id="test-agent-mqtt-publisher")
    try:
        agent.wait_log(r"raw input connected")
        yield agent, collector, publisher
    finally:
        publisher.close()
        collector.close()
        agent.close()


def test_thresholds_end_to_end_with_summaries_status_and_a_clean_stop(
        running: tuple[AgentProcess, Collector, Publisher]) -> None:
    agent, collector, publisher = running
    t0 = int(time.time() * 1000) - 10_000
    publisher.block("T-P-1", [0.5, 0.75, 0.5, 0.75, 0.75, 0.75, 0.69, 0.72], t0=t0)  # raise to 2, no chatter
    publisher.block("T-P-2", [0.4] * 3 + [0.05] * 3, t0=t0)                            # low to 2
    publisher.block("T-P-1", [0.55] * 3, t0=t0 + 800)                                  # clear
    assert collector.wait_for(lambda c: len(c.alerts) >= 3), collector.alert_changes()
    assert sorted(collector.alert_changes()) == [
        ("T-P-1", "high", 0, 2), ("T-P-1", "high", 2, 0), ("T-P-2", "low", 0, 2)]
    alerts = sorted(collector.alerts, key=lambda a: a.seq)
    assert [a.seq for a in alerts] == [1, 2, 3]
    assert len({a.id for a in alerts}) == 3
    raised = next(a for a in alerts if a.sensor == "T-P-1" and a.level == 2)
    assert (raised.ts, raised.value, raised.limit, raised.site) == (t0 + 500, 0.75, 0.7, "valve-12")
    assert f"{P}/alert/yuzhong/valve-12/T-P-1" in collector.topics
    assert collector.wait_for(lambda c: any("T-P-2" in s.sensor for s in c.summaries))
    summary = next(s for s in collector.summaries if "T-P-2" in s.sensor)
    assert summary.agent == "t-mqtt" and summary.t1 - summary.t0 == 1000
    row = summary.sensor.index("T-P-2")
    assert summary.n[row] == 6  # values travel as float32
    assert (summary.min[row], summary.max[row]) == (pytest.approx(0.05), pytest.approx(0.4))
    done = lambda s: s.extra.get("samples") == 17 and s.extra.get("alerts") == 3
    assert collector.wait_for(lambda c: any(done(s) for s in c.status))
    status = next(s for s in collector.status if done(s))
    assert status.state == "online" and status.extra["blocks"] == 3 and status.extra["version"]
    assert status.extra["sites"] == {"valve-12": [29.5586, 106.5772]}  # for the ops console's map
    assert status.extra["limits"]["T-P-1"] == {"high": [0.6, 0.7, 0.8, 0.9], "low": [0.2, 0.1]}
    assert (status.extra["district"], status.extra["township"]) == ("yuzhong", "jiefangbei")
    # the harness filled the kernel cache first; T-P-2's anomaly rule (pipe.pressure) still learns
    # its normal, and T-P-1 (an unknown kind) runs none
    assert status.extra["cold_cache"] is False and status.extra["kernels_load_s"] < 30
    assert status.extra["sensors_warming"] == 1
    agent.wait_log(r"loading kernels 1/\d: detection rules")
    agent.wait_log(r"kernels loaded from the cache \S+ in")
    started = time.monotonic()
    assert agent.terminate() == 0
    assert time.monotonic() - started < 8
    assert collector.wait_for(lambda c: c.status[-1].state == "offline")


def test_bad_raw_blocks_never_stop_the_agent(running: tuple[AgentProcess, Collector, Publisher]) -> None:
    agent, collector, publisher = running
    t0 = int(time.time() * 1000)
    for payload in (b"\xc1 garbage", b"", msgpack.packb([1, 2, 3]), msgpack.packb({"v": 1, "sensor": "T-P-1"}),
                    RawBlock("T-P-2", [0.9] * 3).encode(),  # wrong sensor in the topic  # type: ignore[arg-type]
                    msgpack.packb({"v": 1, "sensor": "T-P-1", "values": [1.0, 2.0]}),  # no dt
                    msgpack.packb({"v": 1, "sensor": "T-P-1", "values": b"\x00\x01\x02"})):
        publisher.raw(f"{P}/raw/T-P-1", payload)
    publisher.raw(f"{P}/raw/NOT-MINE", RawBlock("NOT-MINE", [1.0]).encode())  # type: ignore[arg-type]
    publisher.raw(f"{P}/raw/bad id!", b"x")
    publisher.block("T-P-1", [0.95] * 3, t0=t0)
    assert collector.wait_for(lambda c: ("T-P-1", "high", 0, 4) in c.alert_changes())
    done = lambda s: s.extra.get("decode_errors") == 7 and s.extra.get("samples") == 3
    assert collector.wait_for(lambda c: any(done(s) for s in c.status))
    status = next(s for s in collector.status if done(s))
    assert status.extra["unknown_sensor"] == 2
    assert agent.proc is not None and agent.proc.poll() is None
    log = agent.log_text()
    assert "dropped a bad RawBlock on lifeline/v1/raw/T-P-1" in log
    assert "'NOT-MINE', which is not an MQTT sensor of this agent" in log
    assert log.count("dropped a bad RawBlock on") == 1  # throttled: one line, the rest counted
    assert agent.terminate() == 0
