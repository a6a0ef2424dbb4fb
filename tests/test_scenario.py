"""Scenario files: built-ins load, copies expand, and every mistake names the file and the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge_agent.config import load_agent_config
from lifeline.errors import ConfigError
from simulators.agent_config import AgentSettings, to_toml, write_agent_configs
from simulators.scenario import (
    builtin_scenarios,
    find_scenario,
    load_scenario,
    scenario_summary,
    synthetic_scenario,
)
from simulators.signals import Burst, Fire, Spikes

SMALL = """
[scenario]
name = "small"
district = "yuzhong"
seed = 3
duration_s = 3600
start = "2024-07-15T08:00:00+08:00"

[[township]]
id = "jiefangbei"

[[township.site]]
id = "main"
copies = 3
stagger_s = 600
[[township.site.sensor]]
id = "P"
kind = "pipe.pressure"
rate_hz = 2
faults = [{ type = "spikes", at_s = 100, duration_s = 60, count = 2 }]
[[township.site.sensor]]
id = "Q"
kind = "pipe.flow"
transport = "serial"
[[township.site.event]]
type = "burst"
at_s = 1000
drop_mpa = 0.2

[[township]]
id = "chaotianmen"
agent = "ctm-01"
[[township.site]]
id = "tunnel"
[[township.site.sensor]]
id = "T"
kind = "tunnel.temp"
transport = "modbus"
[[township.site.sensor]]
id = "CO"
kind = "tunnel.co"
[[township.site.event]]
type = "fire"
at_s = 1200
sensors = ["T"]
"""


def write(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_copies_expand_with_suffixed_ids_and_staggered_events(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, SMALL))
    ids = [s.id for s in sc.sensors]
    assert ids == ["P-01", "Q-01", "P-02", "Q-02", "P-03", "Q-03", "T", "CO"]
    assert [s.sim.site for s in sc.sensors[:6:2]] == ["main-01", "main-02", "main-03"]
    bursts = [s.events for s in sc.sensors if s.id.startswith("P-")]
    assert bursts == [(Burst(1000, drop_mpa=0.2),), (Burst(1600, drop_mpa=0.2),), (Burst(2200, drop_mpa=0.2),)]
    assert sc.sensors[2].faults == (Spikes(700, 60, count=2),)
    assert [s.transport for s in sc.sensors[:2]] == ["mqtt", "serial"]
    # the fire is limited to the sensor the scenario names
    assert sc.sensors[6].events == (Fire(1200),) and sc.sensors[7].events == ()
    assert [t.agent for t in sc.townships] == ["yuzhong-jiefangbei", "ctm-01"]
    assert sc.start_ms(0) == 1_721_001_600_000
    summary = scenario_summary(sc)
    assert summary["sensors"] == 8 and summary["events"] == 7 and summary["faults"] == 3


def test_models_carry_the_labels_of_the_scenario(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, SMALL))
    t0 = sc.start_ms(0)
    models = sc.build_models(t0)
    labels = [(e.sensor, e.cls, e.start_ms - t0) for m in models for e in m.events]
    assert ("P-02", "burst", 1_600_000) in labels
    assert ("P-03", "spike", 1_300_000) not in labels  # spikes land on random samples in the window
    assert any(s == "P-03" and c == "spike" and 1_300_000 <= d < 1_360_000 for s, c, d in labels)
    assert ("T", "fire", 1_200_000) in labels


@pytest.mark.parametrize(("change", "key", "problem"), [
    (('kind = "pipe.flow"', 'kind = "pipe.flux"'), "township[0].site[0].sensor[1].kind", "no simulator"),
    (("drop_mpa = 0.2", "drop_mp = 0.2"), "township[0].site[0].event[0]", "drop_mp"),
    (('type = "fire"', 'type = "earthquake"'), "township[1].site[0].event[0]", "unknown"),
    (('sensors = ["T"]', 'sensors = ["CO2"]'), "township[1].site[0]", "'CO2' is not a sensor"),
    (('sensors = ["T"]', 'sensors = []'), "township[1].site[0]", "non-empty"),
    (("stagger_s = 600", "stagger_s = 1500"), "township[0].site[0] event[0]", "not before the end"),
    (('start = "2024-07-15T08:00:00+08:00"', 'start = "2024-07-15T08:00:00"'), "scenario.start", "UTC offset"),
    (("rate_hz = 2", "rate_hz = 0"), "township[0].site[0].sensor[0].rate_hz", "greater than 0"),
    (('id = "Q"', 'id = "P"'), "township[0].site[0]", "more than once"),
    (("duration_s = 3600\n", ""), "scenario.duration_s", "required key is missing"),
])
def test_a_mistake_names_the_file_and_the_key(tmp_path: Path, change: tuple[str, str], key: str,
                                             problem: str) -> None:
    old, new = change
    assert old in SMALL
    path = write(tmp_path, SMALL.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message and key in message and problem in message, message


def test_an_event_that_shows_in_no_sensor_of_its_site_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL.replace('type = "burst"\nat_s = 1000\ndrop_mpa = 0.2', 'type = "gas_leak"\nat_s = 1000'))
    with pytest.raises(ConfigError, match=r"gas_leak.*shows in none of site 'main'"):
        load_scenario(path)


def test_a_sensor_id_used_twice_across_copies_is_refused(tmp_path: Path) -> None:
    text = SMALL.replace('id = "CO"', 'id = "P-02"')
    with pytest.raises(ConfigError, match="'P-02' is also used"):
        load_scenario(write(tmp_path, text))


def test_not_toml_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(write(tmp_path, "[scenario\nname="))
    with pytest.raises(ConfigError, match="not a built-in scenario"):
        find_scenario(str(tmp_path / "nope.toml"))


def test_every_builtin_scenario_loads_and_has_every_domain_it_names() -> None:
    builtin = builtin_scenarios()
    assert {"pipes", "flood", "bridges", "tunnels", "mixed"} <= set(builtin)
    for name in ("pipes", "flood", "bridges", "tunnels"):
        summary = scenario_summary(load_scenario(builtin[name]))
        domain = name.rstrip("s") if name != "bridges" else "bridge"
        assert set(summary["domains"]) == {domain}, (name, summary["domains"])
        assert summary["events"] > 0 and summary["faults"] > 0
    mixed = load_scenario(builtin["mixed"])
    summary = scenario_summary(mixed)
    assert set(summary["domains"]) == {"pipe", "flood", "bridge", "tunnel"}
    assert 2 <= summary["townships"] <= 3 and 24 <= summary["sensors"] <= 80
    assert mixed.start == "now" and 300 <= mixed.duration_s <= 600


def test_demo_scenario_shows_events_within_its_first_minute() -> None:
    mixed = load_scenario(builtin_scenarios()["mixed"])
    first = min(e.at_s for s in mixed.sensors for e in s.events)
    assert first <= 30


def test_agent_configs_match_the_scenario_and_load_in_the_agent(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, SMALL))
    settings = AgentSettings("mqtt://127.0.0.1:1999", "city/v1", tmp_path / "state", tmp_path / "lines",
                             agent_keys={"status_interval_s": 2.0})
    paths = write_agent_configs(sc, tmp_path / "agents", settings)
    assert [p.name for p in paths] == ["yuzhong-jiefangbei.toml", "ctm-01.toml"]
    first = load_agent_config(paths[0])
    assert (first.agent.id, first.agent.district, first.agent.township) == (
        "yuzhong-jiefangbei", "yuzhong", "jiefangbei")
    assert first.mqtt.url == "mqtt://127.0.0.1:1999" and first.mqtt.prefix == "city/v1"
    # each township's RawBlocks come under its own prefix, so an agent gets only its sensors'
    assert first.raw_input_settings().prefix == "city/v1/jiefangbei"
    assert first.raw_input_settings().url == "mqtt://127.0.0.1:1999"
    assert first.agent.state_dir == tmp_path / "state" / "yuzhong-jiefangbei"
    assert first.agent.status_interval_s == 2.0
    models = {m.sensor.id: m for m in sc.build_models(0)}
    by_id = {s.id: s for s in first.sensor}
    p = by_id["P-01"]
    rules = models["P-01"].suggested_rules()
    assert p.source == "mqtt" and p.kind == "pipe.pressure" and p.site == "main-01"
    assert p.high == rules["high"] and p.low == rules["low"]
    assert p.hysteresis == rules["hysteresis"] and p.debounce == rules["debounce"]
    assert p.rules == {"range": {"lo": 0.0, "hi": 1.6}}
    q = by_id["Q-02"]
    assert (q.source, q.port, q.node, q.channel) == ("serial", str(tmp_path / "lines" / "jiefangbei-serial"), 2, 0)
    second = load_agent_config(paths[1])
    t = {s.id: s for s in second.sensor}["T"]
    assert (t.source, t.unit, t.register_address, t.datatype, t.period_s) == ("modbus", 1, 0, "float32", 1.0)
    assert t.port == str(tmp_path / "lines" / "chaotianmen-modbus")


def test_transport_override_rewires_every_sensor(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, SMALL)).with_transport("mqtt")
    assert {s.transport for s in sc.sensors} == {"mqtt"}
    paths = write_agent_configs(sc, tmp_path / "agents", AgentSettings(
        "mqtt://127.0.0.1:1883", "lifeline/v1", tmp_path / "s", tmp_path / "l"))
    assert all(s.source == "mqtt" and s.port is None for p in paths for s in load_agent_config(p).sensor)


def test_toml_writer_round_trips() -> None:
    doc = {"agent": {"id": "a", "n": 3, "x": 0.1, "flag": True},
           "sensor": [{"id": "s", "high": [1.0, 2.5], "low": [], "rules": {"range": {"lo": -1e-05, "hi": 1e300}}}]}
    assert tomllib.loads(to_toml(doc)) == doc


def test_load_district_splits_sensors_over_agents_and_cycles_kinds() -> None:
    sc = synthetic_scenario(sensors=25, rate_hz=2.0, duration_s=10, agents=3)
    assert [len(t.sensors) for t in sc.townships] == [9, 9, 7]
    kinds = [s.sim.kind for s in sc.sensors]
    assert len(set(kinds)) == 13 and kinds[0] == kinds[13]
    assert len({s.id for s in sc.sensors}) == 25


def test_cli_lists_builtins_and_writes_configs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from simulators.cli import simulate

    runner = CliRunner()
    listed = runner.invoke(simulate, ["list"])
    assert listed.exit_code == 0 and "mixed" in listed.output and "tunnels" in listed.output
    out = runner.invoke(simulate, ["write-config", "mixed", "--out", str(tmp_path / "cfg"), "--state-dir",
                                   str(tmp_path / "state"), "--url", "mqtt://10.0.0.9:1884"])
    assert out.exit_code == 0, out.output
    configs = sorted((tmp_path / "cfg").glob("*.toml"))
    assert [p.stem for p in configs] == ["yz-ctm-01", "yz-jfb-01", "yz-njm-01"]
    jfb = load_agent_config(tmp_path / "cfg" / "yz-jfb-01.toml")
    assert jfb.mqtt.url == "mqtt://10.0.0.9:1884"
    assert {s.source for s in jfb.sensor} == {"mqtt", "serial", "modbus"}
    bad = runner.invoke(simulate, ["write-config", str(tmp_path / "none.toml"), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "not a built-in scenario" in bad.output
