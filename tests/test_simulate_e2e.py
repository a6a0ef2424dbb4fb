"""End to end: simulator -> real broker -> real agents (`lifeline agent` processes) -> scorer.

A small mixed district (two townships, pipes and a tunnel) replayed faster than real time: the
agents must catch every injected event with the rule the truth expects, tell the injected
sensor faults from events, and raise nothing where nothing happened.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifeline.config import MqttSettings
from simulators.agent_config import AgentSettings, write_agent_configs
from simulators.cli import simulate
from simulators.collect import AlertCollector, write_alerts
from simulators.runner import RunOptions, run_scenario
from simulators.scenario import Scenario, load_scenario
from simulators.scoring import score
from simulators.servers import MosquittoServer
from simulators.truth import write_truth

pytestmark = pytest.mark.integration

AGENT_READY_S = 120.0  # a cold numba cache compiles the kernels on the agent's first start
PROCESSED_S = 30.0

SCENARIO = """
[scenario]
name = "e2e"
district = "yuzhong"
seed = 5
duration_s = 90
start = "2024-07-15T10:00:00+08:00"

[[township]]
id = "jiefangbei"
agent = "e2e-jfb"

[[township.site]]
id = "jfb-main"
[[township.site.sensor]]
id = "E2E-P"
kind = "pipe.pressure"
rate_hz = 10
faults = [{ type = "out_of_range", at_s = 75, duration_s = 3 }]
[[township.site.sensor]]
id = "E2E-Q"
kind = "pipe.flow"
rate_hz = 1
[[township.site.event]]
type = "burst"
at_s = 30
drop_mpa = 0.2
duration_s = 30

[[township.site]]
id = "jfb-gas"
[[township.site.sensor]]
id = "E2E-G"
kind = "pipe.gas"
rate_hz = 1
[[township.site.event]]
type = "gas_leak"
at_s = 20
peak_lel = 40
ramp_s = 30
duration_s = 30

[[township]]
id = "chaotianmen"
agent = "e2e-ctm"

[[township.site]]
id = "ctm-tunnel"
[[township.site.sensor]]
id = "E2E-T"
kind = "tunnel.temp"
rate_hz = 1
[[township.site.sensor]]
id = "E2E-CO"
kind = "tunnel.co"
rate_hz = 1
[[township.site.event]]
type = "fire"
at_s = 40
duration_s = 30
growth_s = 20

[[township.site]]
id = "ctm-quiet"
[[township.site.sensor]]
id = "E2E-QF"
kind = "pipe.flow"
rate_hz = 10
faults = [{ type = "spikes", at_s = 60, duration_s = 20, count = 2 }]
"""


@pytest.fixture
def scenario(tmp_path: Path, broker: MosquittoServer) -> Scenario:
    path = tmp_path / "e2e.toml"
    path.write_text(SCENARIO)
    return load_scenario(path).with_changes(mqtt_url=broker.url)


@pytest.fixture
def agents(scenario: Scenario, tmp_path: Path, broker: MosquittoServer) -> Iterator[list[subprocess.Popen[bytes]]]:
    configs = write_agent_configs(scenario, tmp_path / "agents", AgentSettings(
        broker.url, scenario.prefix, tmp_path / "state", tmp_path / "lines",
        agent_keys={"status_interval_s": 0.5}))
    procs = []
    for config in configs:
        log = (tmp_path / f"{config.stem}.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "lifeline.cli", "agent", "--config", str(config)],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log.close()
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def agent_logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in tmp_path.glob("*.log"))


def test_agents_catch_every_injected_event_and_tell_faults_apart(
        scenario: Scenario, agents: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    settings = MqttSettings(url=scenario.mqtt_url, prefix=scenario.prefix)
    names = [t.agent for t in scenario.townships]
    with AlertCollector(settings, client_id="e2e-collector") as collector:
        ready = collector.wait_for(lambda c: all(c.statuses.get(a, {}).get("raw_connected") for a in names),
                                   AGENT_READY_S)
        assert ready, f"agents did not subscribe to RawBlocks\n{agent_logs(tmp_path)}"
        result = run_scenario(scenario, RunOptions(mqtt=settings, speed=None, qos=1, tick_s=1.0,
                                                   run_dir=tmp_path / "lines", client_id="e2e-sim"))
        assert result.delivered and result.report.samples == 90 * (10 + 1 + 1 + 1 + 1 + 10)
        processed = collector.wait_processed(names, result.agent_samples, PROCESSED_S)
        assert processed, f"agents saw {collector.processed(names)}\n{agent_logs(tmp_path)}"
        alerts = collector.records()
        # each agent got only its own township's RawBlocks
        assert all(collector.statuses[a].get("unknown_sensor") == 0 for a in names), collector.statuses
    for p in agents:
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, agent_logs(tmp_path)

    report = score(result.truth, alerts)
    events = {(r.sensor, r.cls): r for r in report.labels if not r.is_fault}
    assert set(events) == {("E2E-P", "burst"), ("E2E-Q", "burst"), ("E2E-G", "gas_leak"),
                           ("E2E-T", "fire"), ("E2E-CO", "fire")}
    missed = [k for k, r in events.items() if not r.detected]
    assert not missed, (missed, alerts)
    assert events[("E2E-P", "burst")].rule in ("low", "rate")
    assert events[("E2E-T", "fire")].delay_samples is not None and events[("E2E-T", "fire")].delay_samples <= 5
    faults = {(r.sensor, r.cls): r for r in report.labels if r.is_fault}
    assert faults[("E2E-P", "out_of_range")].rule == "range"
    assert faults[("E2E-QF", "spike")].detected and not faults[("E2E-QF", "spike")].event_rules
    assert report.false_alarms.count == 0, report.false_alarms.examples
    assert all(a.ts >= result.truth.t0_ms for a in alerts)  # alerts carry simulated time, not wall time

    # the same scoring through the command line, from the files `run --collect` would write
    truth_path = write_truth(result.truth, tmp_path / "truth.json")
    alerts_path = write_alerts(alerts, tmp_path / "alerts.json")
    out = CliRunner().invoke(simulate, ["score", "--truth", str(truth_path), "--alerts", str(alerts_path),
                                        "--json", str(tmp_path / "score.json")])
    assert out.exit_code == 0, out.output
    assert "gas_leak" in out.output and "Goals" in out.output
    data = json.loads((tmp_path / "score.json").read_text())
    assert data["events"]["detected"] == 5 and data["false_alarms"]["count"] == 0
