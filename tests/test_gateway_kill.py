"""`kill -9` of the gateway process mid-stream, then re-sends: every alert and summary row is stored
exactly once and every alert reaches its tiers.

"Mid-stream" is made certain, not timed: the store gate lets a few writes through and then holds
the next one, so at the kill some messages are stored and acknowledged, some are taken from the
broker but unacknowledged (their write is held), and the rest still wait at the broker.
"""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.store_gate import StoreGate
from tests.test_gateway_integration import (
    Collector,
    Publisher,
    eventually,
    expected_alerts,
    expected_readings,
    expected_routes,
    make_alerts,
    make_summaries,
    publish_alerts,
    publish_summaries,
    recent_ms,
    stored_alerts,
    stored_readings,
)

pytestmark = pytest.mark.integration

PREFIX, TAG, GATEWAY = "t-kill/v1", "kill", "gw-kill"


class GatewayProcess:
    """`lifeline gateway --config ...` as a child process with its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lifeline.cli", "gateway", "--config", str(config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parents[1],
            )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_config(path: Path, broker: MosquittoServer, store_url: str) -> Path:
    path.write_text(f"""
[mqtt]
url = "{broker.url}"
prefix = "{PREFIX}"

[influx]
url = "{store_url}"
batch_size = 200
flush_interval_ms = 50
retry_initial_s = 0.1
retry_max_s = 1.0

[gateway]
id = "{GATEWAY}"
state_dir = "{path.parent / 'state'}"
share_group = "g-kill"
max_inflight = 400
registry_interval_s = 0.5
stats_interval_s = 0.5
""")
    return path


def acked_in_log(log: str) -> int:
    """Messages acknowledged so far, from the gateway's last counters line."""
    found = re.findall(r", acked (\d+),", log)
    return int(found[-1]) if found else 0


def online_since(registry: Collector, t_ms: int) -> bool:
    def check(messages: list[tuple[str, bytes, bool]]) -> bool:
        for _, payload, _ in messages:
            snap = msgpack.unpackb(payload) if payload else {}
            if snap.get("state") == "online" and snap.get("ts", 0) >= t_ms:
                return True
        return False

    return registry.wait_for(check, 30)


def test_kill_9_mid_stream_then_resends_store_everything_exactly_once(
    tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer
) -> None:
    gate = StoreGate(store.url)
    config = write_config(tmp_path / "gateway.toml", broker, gate.url)
    start = recent_ms()
    alerts = make_alerts(TAG, 6000, start_ms=start, seed=9)
    summaries = make_summaries(TAG, 80, 30, start_ms=start, seed=10)
    ops = Collector(broker.port, [f"{PREFIX}/ops/#"], "t-kill-ops")
    registry = Collector(broker.port, [f"{PREFIX}/registry/{GATEWAY}"], "t-kill-registry")
    pub = Publisher(broker.port, "t-kill-pub")
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        assert online_since(registry, start), gateway.log()
        assert (
            gateway.terminate() == 0
        )  # its session (subscriptions) stays; the backlog queues there
        for k in range(0, len(alerts), 750):  # interleaved, as agents would send them
            publish_alerts(pub, PREFIX, alerts[k : k + 750])
            publish_summaries(pub, PREFIX, summaries[k // 75 : k // 75 + 10])
        pub.wait_all()

        routes = expected_routes(PREFIX, alerts)
        gate.hold_after(3)  # 3 batches stored, then the next write waits at the gate
        gateway = GatewayProcess(config, tmp_path / "gateway.log")
        assert gate.wait_held(1), f"the gateway never wrote a 4th batch\n{gateway.log()}"
        eventually(lambda: acked_in_log(gateway.log()) > 0, what="the first batches acknowledged")
        gateway.kill()  # some stored and acked, some taken but unacked (held), the rest at the broker
        assert acked_in_log(gateway.log()) < len(alerts) + len(summaries)
        gate.release()  # the held write reaches the store after its writer died, as it can for real

        restarted_at = int(time.time() * 1000)
        gateway = GatewayProcess(config, tmp_path / "gateway.log")
        assert online_since(registry, restarted_at), gateway.log()
        eventually(
            lambda: stored_alerts(store, TAG) == expected_alerts(alerts), what="every alert stored"
        )
        eventually(
            lambda: stored_readings(store, TAG) == expected_readings(summaries),
            what="every row stored",
        )
        assert ops.wait_for(lambda _: ops.route_set == routes), "some alert missed a tier"

        publish_alerts(pub, PREFIX, alerts[:500])  # agents re-send after their own restarts
        publish_summaries(pub, PREFIX, summaries[:20])
        marker = make_alerts(f"{TAG}-marker", 1, start_ms=start + 100_000)
        publish_alerts(pub, PREFIX, marker)
        pub.wait_all()
        eventually(
            lambda: sum(stored_alerts(store, f"{TAG}-marker").values()) == 1,
            what="the marker stored",
        )
        assert stored_alerts(store, TAG) == expected_alerts(alerts)
        assert stored_readings(store, TAG) == expected_readings(summaries)

        assert gateway.terminate() == 0, gateway.log()
        stopped = re.findall(r"gateway gw-kill stopped: (\{.*\})", gateway.log())
        assert stopped and ast.literal_eval(stopped[-1])["redelivered"] > 0, (
            "the broker re-sent nothing that was unacknowledged at the kill"
        )
    finally:
        if gateway.proc.poll() is None:
            gateway.proc.kill()
            gateway.proc.wait(10)
        for client in (pub, ops, registry):
            client.close()
        gate.close()
