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


@pytest.mark.parametrize(("line", "expected"), [
    ('debounce = "3"', "sensor[0].debounce: expected an integer, got the string '3' (write it without quotes)"),
    ("debounce = 3.0", "sensor[0].debounce: expected an integer, got 3.0"),
    ('hysteresis = "0.02"', "sensor[0].hysteresis: expected a number, got the string '0.02'"),
    ('high = ["0.6", 0.7]', "sensor[0].high[0]: expected a number, got the string '0.6'"),
    ("node = true", "sensor[0].node: expected an integer, got true"),
    ("gap_s = 1979-05-27", "sensor[0].gap_s: expected a number, got the TOML date/time 1979-05-27"),
    ("site = 12", "sensor[0].site: expected a string, got 12"),
])
def test_values_are_taken_as_toml_types_them(tmp_path: Path, line: str, expected: str) -> None:
    """A quoted number is a string, not a number: the error says so and names the key."""
    key = line.split(" = ", 1)[0]
    keys = {"id": '"S1"', "kind": '"pipe.pressure"', "site": '"x"', "source": '"serial"',
            "port": '"/dev/ttyUSB0"', "node": "1"}
    keys[key] = line.split(" = ", 1)[1]
    code, output = check(tmp_path, HEAD + "[[sensor]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
    assert code == 2, output
    assert f"agent.toml: {expected}" in output


def test_a_quoted_secret_of_the_wrong_type_is_named_not_shown(tmp_path: Path) -> None:
    code, output = check(tmp_path, HEAD + '[mqtt]\npassword = 123456\n')
    assert code == 2 and "mqtt.password: expected a string, got an integer" in output
    assert "123456" not in output


def test_an_unknown_kind_warns_naming_its_rules_and_the_built_in_kinds(tmp_path: Path) -> None:
    from edge_agent.kernels.params import enabled_rules
    from edge_agent.kernels.profiles import PROFILES, default_rules

    text = HEAD + sensor() + sensor(id='"S2"', kind='"water.ph"', high="[8.5, 9.0]")
    code, output = check(tmp_path, text)
    assert code == 0, output
    assert "agent.toml: OK: agent 'a1', 2 sensor(s), 1 warning(s)" in output
    (warning,) = [line for line in output.splitlines() if "warning" in line and "water.ph" in line]
    assert "sensor[1].kind: 'water.ph' (S2) is not a built-in kind" in warning
    runs = [*dict.fromkeys(("high", *enabled_rules(default_rules("water.ph"))))]
    assert f"it runs {', '.join(runs)};" in warning
    assert all(kind in warning for kind in PROFILES)
    assert "pipe.pressure" not in output.split("warning", 1)[0]  # the built-in sensor S1 is not warned about

