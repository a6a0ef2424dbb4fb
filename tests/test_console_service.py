"""The console service against a real Mosquitto: ops alerts de-duplicated across tiers and
re-sends, every case step published on `P/case/{district}`, unacknowledged cases escalating by
themselves, and alerts routed while the console was down arriving when it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from console.config import ConsoleConfig
from lifeline.contract import ops_topic, tiers_for
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.console_harness import ApiClient, console_config, make_alert, running_console
from tests.test_gateway_integration import Collector, Publisher

pytestmark = pytest.mark.integration
WAIT_S = 20.0
USERS = [("wang", "operator", "yz/jfb"), ("zhao", "operator", "yz")]


def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll the console's API (no change notification for a test client), bounded."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def route(publisher: Publisher, prefix: str, alert: Any) -> None:
    """Publish an alert on every ops topic the gateway would route it to."""
    for tier in tiers_for(alert.level, alert.prev):
        publisher.publish(ops_topic(prefix, tier, alert.district), alert.encode())
    publisher.wait_all()


def events(collector: Collector) -> list[dict[str, Any]]:
    return [msgpack.unpackb(p) for _, p, _ in collector.messages]


def config_for(broker: MosquittoServer, store: VictoriaMetricsServer, tmp_path: Path, prefix: str,
               **console: Any) -> ConsoleConfig:
    return console_config(broker.url, store.url, f"sqlite:///{tmp_path / 'console.db'}", prefix=prefix,
                          instance=prefix.replace("/", "-"), **console)


def test_alerts_are_deduplicated_and_every_step_is_published(
        broker: MosquittoServer, store: VictoriaMetricsServer, tmp_path: Path) -> None:
    prefix = "test/console-svc-publish"
    collector = Collector(broker.port, [f"{prefix}/case/+"], "console-svc-cases")
    publisher = Publisher(broker.port, "console-svc-pub")
    with running_console(config_for(broker, store, tmp_path, prefix), USERS) as console:
        alert = make_alert("D1", level=3)
        route(publisher, prefix, alert)  # township, district and city copies ...
        route(publisher, prefix, alert)  # ... and a re-send
        wang = ApiClient.login(console.url, "wang")
        cases = eventually(lambda: wang.board()["cases"], "the case")
        assert len(cases) == 1
        detail = wang.get(f"/api/cases/{cases[0]['id']}").json()
        assert len(detail["alerts"]) == 1 and [e["action"] for e in detail["events"]] == ["raised"]
        assert wang.act(cases[0]["id"], "acknowledge").status_code == 200
        assert collector.wait_for(lambda m: len(m) >= 2, WAIT_S)
        raised, acked = events(collector)[:2]
        assert (raised["action"], raised["actor"], raised["level"]) == ("raised", "system", 3)
        assert (acked["action"], acked["actor"], acked["state"]) == ("acknowledge", "wang", "acknowledged")
        assert collector.messages[0][0] == f"{prefix}/case/yz"
        assert console.status()["alerts_ingested"] == 1
        wang.close()
    collector.close()
    publisher.close()


def test_an_unacknowledged_case_escalates_by_itself(
        broker: MosquittoServer, store: VictoriaMetricsServer, tmp_path: Path) -> None:
    prefix = "test/console-svc-timer"
    collector = Collector(broker.port, [f"{prefix}/case/+"], "console-svc-timer-cases")
    publisher = Publisher(broker.port, "console-svc-timer-pub")
    # level 1 waits 0.6 s for an acknowledgement; the check runs every 0.2 s
    config = config_for(broker, store, tmp_path, prefix, ack_minutes=[0.01, 5, 5, 5])
    with running_console(config, USERS) as console:
        route(publisher, prefix, make_alert("T1", level=1))
        zhao = ApiClient.login(console.url, "zhao")
        cases = eventually(lambda: zhao.board()["cases"], "the district to see the escalated case")
        assert cases[0]["tier"] in ("district", "city")
        assert collector.wait_for(lambda m: any(e["action"] == "escalate" for e in events(collector)), WAIT_S)
        escalation = next(e for e in events(collector) if e["action"] == "escalate")
        assert escalation["actor"] == "system" and "not acknowledged within" in escalation["detail"]["reason"]
        zhao.close()
    collector.close()
    publisher.close()


def test_alerts_routed_while_the_console_is_down_arrive_when_it_is_back(
        broker: MosquittoServer, store: VictoriaMetricsServer, tmp_path: Path) -> None:
    prefix = "test/console-svc-down"
    config = config_for(broker, store, tmp_path, prefix)
    publisher = Publisher(broker.port, "console-svc-down-pub")
    with running_console(config, USERS):
        pass  # the broker now keeps the console's session
    for n in range(50):
        route(publisher, prefix, make_alert(f"OFF-{n}", level=1))
    with running_console(config) as console:
        wang = ApiClient.login(console.url, "wang")
        eventually(lambda: wang.board()["total"] == 50, "all 50 alerts")
        wang.close()
    publisher.close()
