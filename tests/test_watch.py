"""`lifeline alerts` and `lifeline status` against a real Mosquitto: what an operator reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from lifeline.contract import Alert, Status, alert_topic, ops_topic, status_topic
from simulators.servers import MosquittoServer, free_port
from tests.test_contract import make_alert

pytestmark = pytest.mark.integration


class Lifeline:
    """A `lifeline ...` process whose stderr lines are read as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "lifeline.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.err.append(line)
                self._changed.notify_all()

    def wait_err(self, pattern: str, timeout_s: float = 30) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: any(re.search(pattern, x) for x in self.err)
                                        or self.proc.poll() is not None, timeout_s)
            assert ok and any(re.search(pattern, x) for x in self.err), "".join(self.err)

    def finish(self, timeout_s: float = 30) -> tuple[int, str]:
        """Wait for the exit; the exit code and everything printed on stdout."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # to the end: the process has exited or closed stdout
        self.proc.wait(timeout_s)
        self._reader.join(timeout_s)
        return self.proc.returncode, out


@pytest.fixture
def publisher(broker: MosquittoServer) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-watch-pub-{time.monotonic_ns()}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish(client: mqtt.Client, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def alert(n: int, **over: object) -> Alert:
    return make_alert(id=f"t-watch-{n}", seq=n, **over)


def test_alerts_follows_the_agents_alerts_filtered(broker: MosquittoServer, publisher: mqtt.Client) -> None:
    prefix = "t-watch-follow/v1"
    follower = Lifeline("alerts", "--url", broker.url, "--prefix", prefix, "--district", "yuzhong",
                        "--level", "2", "--sensor", "YZ-P-*", "--json", "--count", "2", "--timeout", "60")
    follower.wait_err(r"following the agents' alerts on mqtt://127\.0\.0\.1")
    wanted = [alert(1, level=3, prev=2), alert(4, level=0, prev=2)]  # a raise, and the clear of a yellow
    skipped = [alert(2, district="nanan"), alert(3, level=1, prev=0), alert(5, sensor="YZ-F-0009")]
    for a in [wanted[0], *skipped, wanted[1]]:
        publish(publisher, alert_topic(prefix, a.district, a.site, a.sensor), a.encode())
    code, out = follower.finish()
    assert code == 0, "".join(follower.err)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["id"] for x in lines] == ["t-watch-1", "t-watch-4"]
    assert lines[0]["topic"] == f"{prefix}/alert/yuzhong/jfb-valve-12/YZ-P-0001"
    assert {k: lines[0][k] for k in ("sensor", "level", "prev", "rule", "value")} == {
        "sensor": "YZ-P-0001", "level": 3, "prev": 2, "rule": "high", "value": 0.73}


def test_alerts_prints_a_readable_line_per_alert_from_an_ops_tier(broker: MosquittoServer,
                                                                   publisher: mqtt.Client) -> None:
    prefix = "t-watch-ops/v1"
    follower = Lifeline("alerts", "--url", broker.url, "--prefix", prefix, "--tier", "district",
                        "--count", "1", "--timeout", "60")
    follower.wait_err(r"following what the gateway routes to the district tier")
    a = alert(7, level=3, prev=1, value=0.812, limit=0.8)
    publish(publisher, ops_topic(prefix, "township", a.district), alert(6).encode())  # another tier
    publish(publisher, ops_topic(prefix, "district", a.district), a.encode())
    code, out = follower.finish()
    assert code == 0, "".join(follower.err)
    (line,) = out.splitlines()
    assert re.fullmatch(r"2023-11-14T22:13:20Z  raise orange \(1->3\)  -> district  yuzhong/jiefangbei/"
                        r"jfb-valve-12  YZ-P-0001 pipe\.pressure high  value 0\.812 \(limit 0\.8\)  "
                        r"\[yz-jfb-01 #7\]", line.rstrip()), line


def test_status_lists_the_agents_from_their_retained_status(broker: MosquittoServer,
                                                            publisher: mqtt.Client) -> None:
    prefix = "t-watch-status/v1"
    now = time.time_ns() // 1_000_000
    online = Status("yz-jfb-01", "online", now, {
        "version": "0.1.0", "uptime_s": 12.5, "sensors": 12, "sensors_online": 11, "sensors_gap": 1,
        "sensors_warming": 4, "backlog": 30, "backlog_alerts": 2, "dropped_alerts": 0, "cold_cache": True})
    offline = Status("yz-ctm-02", "offline", now - 3_600_000, {})
    for s in (online, offline):
        publish(publisher, status_topic(prefix, s.agent), s.encode(), retain=True)
    try:
        code, out = Lifeline("status", "--url", broker.url, "--prefix", prefix, "--json").finish()
        assert code == 0
        rows = {r["agent"]: r for r in json.loads(out)}
        assert rows["yz-jfb-01"] | {"last_seen_s": 0} == {
            "agent": "yz-jfb-01", "state": "online", "last_seen_s": 0, "version": "0.1.0", "uptime_s": 12.5,
            "sensors": 12, "sensors_online": 11, "sensors_gap": 1, "sensors_warming": 4, "backlog": 30,
            "backlog_alerts": 2, "dropped_alerts": 0, "cold_cache": True}
        assert rows["yz-ctm-02"]["state"] == "offline" and rows["yz-ctm-02"]["last_seen_s"] >= 3600
        code, table = Lifeline("status", "--url", broker.url, "--prefix", prefix).finish()
        assert code == 0
        line = next(x for x in table.splitlines() if "yz-jfb-01" in x)
        for shown in ("online", "0.1.0", "11/12", "30 (2 alerts)", "cold at start"):
            assert shown in line, table
        assert re.search(r"yz-ctm-02\s+offline\s+1 min ago|yz-ctm-02\s+offline\s+60 min ago", table), table
        assert "2 agent(s): 1 online, 1 offline or stale" in table
    finally:
        for s in (online, offline):
            publish(publisher, status_topic(prefix, s.agent), b"", retain=True)


def test_an_unreachable_broker_is_named(tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    for command in (["alerts", "--timeout", "20"], ["status"]):
        proc = Lifeline(*command, "--url", url)
        code, _ = proc.finish()
        assert code == 1
        assert f"lifeline: error: cannot follow the broker {url}" in "".join(proc.err)


def test_the_broker_comes_from_an_agent_config(tmp_path: Path, broker: MosquittoServer) -> None:
    from lifeline.watch import broker_settings

    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nid = "a"\ndistrict = "d"\ntownship = "t"\n\n[mqtt]\nurl = "{broker.url}"\n'
                      'prefix = "city/v1"\nusername = "ops"\n\n[[sensor]]\nid = "s"\nkind = "pipe.flow"\n'
                      'site = "x"\n')
    settings = broker_settings(config, None, None, None)
    assert (settings.url, settings.prefix, settings.username) == (broker.url, "city/v1", "ops")
    assert broker_settings(config, None, "other/v1", None).prefix == "other/v1"


def test_a_bad_url_option_is_named(tmp_path: Path) -> None:
    proc = Lifeline("alerts", "--url", "http://127.0.0.1:1883")
    code, _ = proc.finish()
    assert code == 2
    assert "lifeline: error: --url: must start with mqtt:// or mqtts://" in "".join(proc.err)
