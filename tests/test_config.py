"""Configuration loading: typed values from good files, errors naming file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.config import load_agent_config
from gateway.config import load_gateway_config
from lifeline.cli import cli
from lifeline.errors import ConfigError

CONTRACT_EXAMPLE = """
[agent]
id = "yz-jfb-01"
district = "yuzhong"
township = "jiefangbei"

[mqtt]
url = "mqtt://127.0.0.1:1883"
prefix = "lifeline/v1"

[[sensor]]
id = "YZ-P-0001"
kind = "pipe.pressure"
site = "jfb-valve-12"
source = "mqtt"
high = [0.60, 0.70, 0.80, 0.90]
low = [0.20, 0.15, 0.10, 0.05]
hysteresis = 0.02
debounce = 3

[[sensor]]
id = "YZ-F-0002"
kind = "flood.level"
site = "jfb-underpass"
source = "serial"
port = "/dev/ttyUSB0"
node = 17
channel = 1

[[sensor]]
id = "YZ-T-0003"
kind = "tunnel.co"
site = "jfb-tunnel"
source = "modbus"
port = "/dev/ttyUSB1"
unit = 3
register = 100
datatype = "float32"
scale = 0.1
period_s = 2
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_contract_example_loads(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, CONTRACT_EXAMPLE))
    assert config.agent.id == "yz-jfb-01"
    assert config.mqtt.port == 1883 and not config.mqtt.tls
    pressure, level, co = config.sensor
    assert pressure.high == [0.60, 0.70, 0.80, 0.90] and pressure.debounce == 3
    assert (level.source, level.node, level.channel, level.baud) == ("serial", 17, 1, 115200)
    assert (co.unit, co.register_address, co.datatype, co.scale) == (3, 100, "float32", 0.1)


def replace_sensor_key(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("high = [0.60, 0.70, 0.80, 0.90]", "high = [0.60, 0.50]",
         "sensor[0].high: thresholds for levels 1..4 must be strictly ascending"),
        ("low = [0.20, 0.15, 0.10, 0.05]", "low = [0.05, 0.10]",
         "sensor[0].low: thresholds for levels 1..4 must be strictly descending"),
        ("debounce = 3", "debounce = 0", "sensor[0].debounce: Input should be greater than or equal to 1"),
        ("hysteresis = 0.02", "hysterisis = 0.02", "sensor[0].hysterisis: unknown key"),
        ("node = 17\n", "", "sensor[1]: source = 'serial' needs key(s) node"),
        ("register = 100\n", "", "sensor[2]: source = 'modbus' needs key(s) register"),
        ('datatype = "float32"', 'datatype = "float64"', "sensor[2].datatype: Input should be"),
        ('url = "mqtt://127.0.0.1:1883"', 'url = "tcp://broker"', "mqtt.url: must start with mqtt://"),
        ('id = "yz-jfb-01"', 'id = "yz jfb"', "agent.id: String should match pattern"),
        ('id = "YZ-F-0002"', 'id = "YZ-P-0001"', "sensor[1].id: 'YZ-P-0001' is already used by sensor[0]"),
        ('township = "jiefangbei"\n', "", "agent.township: required key is missing"),
        ('kind = "tunnel.co"', 'kind = "co"', "sensor[2].kind: must look like '<domain>.<quantity>'"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = write(tmp_path, replace_sensor_key(CONTRACT_EXAMPLE, old, new))
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent.toml: not valid TOML: .*line 1"):
        load_agent_config(write(tmp_path, "[agent\nid = 1"))
    with pytest.raises(ConfigError, match="nowhere.toml: file not found"):
        load_agent_config(tmp_path / "nowhere.toml")


def test_mqtt_password_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    text = CONTRACT_EXAMPLE.replace('prefix = "lifeline/v1"', f'prefix = "lifeline/v1"\npassword_file = "{secret}"')
    assert load_agent_config(write(tmp_path, text)).mqtt.resolved_password() == "s3cret"
    monkeypatch.setenv("LIFELINE_MQTT_PASSWORD", "from-env")
    assert load_agent_config(write(tmp_path, CONTRACT_EXAMPLE)).mqtt.resolved_password() == "from-env"


def test_password_never_shows_in_repr(tmp_path: Path) -> None:
    text = CONTRACT_EXAMPLE.replace('prefix = "lifeline/v1"', 'prefix = "lifeline/v1"\npassword = "hunter2"')
    assert "hunter2" not in repr(load_agent_config(write(tmp_path, text)))


def test_gateway_config_and_token_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[mqtt]\nurl = "mqtts://centre:8883"\n\n[influx]\nurl = "http://127.0.0.1:8428"\n'
                 'org = "lifeline"\nbucket = "lifeline"\ntoken = ""\n', "gateway.toml")
    monkeypatch.setenv("LIFELINE_INFLUX_TOKEN", "tok")
    config = load_gateway_config(path)
    assert config.mqtt.tls and config.mqtt.port == 8883
    assert config.influx.resolved_token() == "tok"
    with pytest.raises(ConfigError, match=r"gateway.toml: influx.url: must start with http"):
        load_gateway_config(write(tmp_path, '[influx]\nurl = "127.0.0.1:8086"\n', "gateway.toml"))


# ---------------------------------------------------------------- command line


def test_cli_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("agent", "gateway", "demo"):
        assert command in result.output


def test_agent_with_bad_config_exits_non_zero_naming_file_and_key(tmp_path: Path) -> None:
    bad = write(tmp_path, CONTRACT_EXAMPLE.replace("debounce = 3", "debounce = -2"), "bad.toml")
    result = CliRunner().invoke(cli, ["agent", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: sensor[0].debounce" in result.output


def test_agent_check_accepts_good_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["agent", "--check", "--config", str(write(tmp_path, CONTRACT_EXAMPLE))])
    assert result.exit_code == 0, result.output
    assert "OK: agent 'yz-jfb-01', 3 sensor(s)" in result.output


def test_a_gateway_without_an_id_gets_one_of_its_own(tmp_path: Path) -> None:
    """Two gateways from two config files never share the default id (and so the client id);
    the same file gives the same id at every restart."""
    import socket

    from gateway.link import client_id_for

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write(tmp_path / "a", "[influx]\nbucket = \"lifeline\"\n", "gateway.toml")
    second = write(tmp_path / "b", "[influx]\nbucket = \"lifeline\"\n", "gateway.toml")
    a, b = load_gateway_config(first), load_gateway_config(second)
    assert a.gateway.id != b.gateway.id
    assert client_id_for(a.mqtt, a.gateway) != client_id_for(b.mqtt, b.gateway)
    assert a.gateway.id == load_gateway_config(first).gateway.id
    host = socket.gethostname()
    assert a.gateway.id.startswith("gw-") and (host[:10] in a.gateway.id or not host.isalnum())
    named = write(tmp_path, '[gateway]\nid = "gw-centre-1"\n', "named.toml")
    assert load_gateway_config(named).gateway.id == "gw-centre-1"
