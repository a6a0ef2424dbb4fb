"""The agent's own config keys: the sample config is valid, rule overrides are checked by
`lifeline agent --check` and named `sensor[i].rules.<key>`, and shared ports must agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.config import load_agent_config
from edge_agent.registry import SensorRegistry
from lifeline.cli import cli
from lifeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HEAD = '[agent]\nid = "a1"\ndistrict = "d"\ntownship = "t"\n\n'


def sensor(**keys: str) -> str:
    body = {"id": '"S1"', "kind": '"pipe.pressure"', "site": '"x"', **keys}
    return "[[sensor]]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()) + "\n"


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["agent", "--check", "--config", str(path)])
    return result.exit_code, result.output


def test_the_sample_config_passes_check() -> None:
    config = load_agent_config(ROOT / "deploy" / "agent.sample.toml")
    registry = SensorRegistry.from_config(config)
    assert registry.count_by_source() == {"mqtt": 1, "serial": 1, "modbus": 1}
    (bus,) = registry.modbus_buses()
    assert (bus.baud, bus.points[0].datatype, bus.points[0].word_order) == (9600, "float32", "big")
    assert config.raw_input_settings() is config.mqtt


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ("{ rate = { rise = [0.5, 0.1] } }", "sensor[0].rules.rate.rise: rate.rise limits must be strictly ascending"),
        ("{ spike = { k = -1 } }", "sensor[0].rules.spike.k"),
        ('{ rate = { per_s = "fast" } }', "sensor[0].rules.rate.per_s: expected a number"),
        ("{ gust = { on = true } }", "sensor[0].rules.gust: unknown rule setting"),
        ('{ "flatline.samples" = 1 }', "sensor[0].rules.flatline.samples"),
    ],
)
def test_a_bad_rule_override_names_its_key(tmp_path: Path, rules: str, expected: str) -> None:
    code, output = check(tmp_path, HEAD + sensor(rules=rules))
    assert code == 2
    assert "agent.toml: " + expected in output


def test_good_overrides_and_unknown_kinds_pass(tmp_path: Path) -> None:
    text = HEAD + sensor(rules="{ rate = { enabled = false }, flatline = { samples = 60 } }") + \
        sensor(id='"S2"', kind='"water.ph"', high="[8.5, 9.0]")
    code, output = check(tmp_path, text)
    assert code == 0, output


def test_sensors_sharing_a_port_must_agree(tmp_path: Path) -> None:
    serial = sensor(source='"serial"', port='"/dev/ttyUSB0"', node="1")
    modbus = sensor(id='"S2"', source='"modbus"', port='"/dev/ttyUSB0"', unit="1", register="0")
    with pytest.raises(ConfigError, match=r"sensor\[1\].port: /dev/ttyUSB0 is a serial port"):
        (tmp_path / "a.toml").write_text(HEAD + serial + modbus)
        load_agent_config(tmp_path / "a.toml")
    other_baud = sensor(id='"S2"', source='"serial"', port='"/dev/ttyUSB0"', node="2", baud="9600")
    code, output = check(tmp_path, HEAD + serial + other_baud)
    assert code == 2 and "sensor[1].baud: /dev/ttyUSB0 runs at 115200" in output


def test_raw_input_broker_defaults_to_the_uplink(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(HEAD + '[raw_mqtt]\nurl = "mqtt://10.0.0.2:1883"\nqos = 0\n\n' + sensor())
    config = load_agent_config(path)
    assert config.raw_input_settings().host == "10.0.0.2" and config.raw_mqtt is not None
    assert config.raw_mqtt.qos == 0


def test_precompile_loads_the_kernels_and_exits(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["agent", "--precompile", "--config",
                                      str(ROOT / "deploy" / "agent.sample.toml")])
    assert result.exit_code == 0, result.output


def test_a_site_position_needs_both_lat_and_lon(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nid = "a"\ndistrict = "d"\ntownship = "t"\n\n'
                    '[[sensor]]\nid = "S"\nkind = "pipe.pressure"\nsite = "s"\nlat = 29.5\n')
    with pytest.raises(ConfigError, match=r"sensor\[0\]: .*lat and lon go together"):
        load_agent_config(path)
    path.write_text(path.read_text() + "lon = 106.5\n")
    assert load_agent_config(path).sensor[0].lon == 106.5
