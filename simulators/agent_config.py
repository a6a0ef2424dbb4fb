"""Agent configurations that match a scenario: one TOML file per township agent.

Each `[[sensor]]` gets the contract's threshold keys (`high`, `low`, `hysteresis`, `debounce`)
from its signal model's `suggested_rules()` (limits a healthy signal never crosses) and the
transmitter's physical range as `rules.range` (so an impossible reading is a `range` fault).
The models' `rate_per_min` hints are not written: the agent's kind profiles carry rate limits
tuned to their own estimator (a slope over `rate.window_s`), which the hint does not describe.
The source follows the sensor's transport: `mqtt`; `serial` with the township's line, node and
channel; `modbus` with its line, unit, register 0 as float32 and its sampling period. In a
scenario of several townships each agent gets `[raw_mqtt]` with its township's raw prefix (see
`transports/wiring.py`), so it receives only its own sensors' RawBlocks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent import AgentConfig
from lifeline.errors import ConfigError
from simulators.scenario import Scenario, ScenarioSensor
from simulators.transports.modbus import VALUE_REGISTER
from simulators.transports.wiring import ModbusWire, SerialWire, raw_prefix, wiring


@dataclass(frozen=True)
class AgentSettings:
    """What the written configs share: broker, prefix, state directory, extra `[agent]` keys."""

    mqtt_url: str
    prefix: str
    state_dir: Path
    run_dir: Path
    agent_keys: Mapping[str, Any] = field(default_factory=dict)


def sensor_table(sensor: ScenarioSensor, rules: Mapping[str, Any],
                 wire: SerialWire | ModbusWire | None) -> dict[str, Any]:
    """The `[[sensor]]` table of one simulated sensor."""
    table: dict[str, Any] = {"id": sensor.id, "kind": sensor.sim.kind, "site": sensor.sim.site,
                             "source": sensor.transport}
    if isinstance(wire, SerialWire):
        table.update(port=wire.port, node=wire.node, channel=wire.channel)
    elif isinstance(wire, ModbusWire):
        table.update(port=wire.port, unit=wire.unit, register=VALUE_REGISTER, datatype="float32",
                     period_s=round(wire.period_s, 6))
    elif sensor.transport != "mqtt":
        raise ValueError(f"sensor {sensor.id}: {sensor.transport} sensor has no wiring")
    table["high"] = [float(v) for v in rules.get("high", [])]
    table["low"] = [float(v) for v in rules.get("low", [])]
    table["hysteresis"] = float(rules["hysteresis"])
    table["debounce"] = int(rules["debounce"])
    lo, hi = rules["range"]
    table["rules"] = {"range": {"lo": float(lo), "hi": float(hi)}}
    return table


def agent_tables(scenario: Scenario, settings: AgentSettings,
                 rules: Sequence[Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The configuration map of every township's agent, by agent id.

    `rules` are the suggested rules of `scenario.sensors` in order; built from the models if absent.
    """
    sensors = scenario.sensors
    if rules is None:
        rules = [m.suggested_rules() for m in scenario.build_models(0)]
    by_id = dict(zip((s.id for s in sensors), rules, strict=True))
    wires = wiring(scenario, settings.run_dir)
    out = {}
    for township in scenario.townships:
        table: dict[str, Any] = {
            "agent": {"id": township.agent, "district": scenario.district, "township": township.id,
                      "state_dir": str(settings.state_dir / township.agent), **settings.agent_keys},
            "mqtt": {"url": settings.mqtt_url, "prefix": settings.prefix},
        }
        raw = raw_prefix(scenario, settings.prefix, township.id)
        if raw != settings.prefix and any(s.transport == "mqtt" for s in township.sensors):
            table["raw_mqtt"] = {"url": settings.mqtt_url, "prefix": raw}
        table["sensor"] = [sensor_table(s, by_id[s.id], wires.get(s.id)) for s in township.sensors]
        _temperature_references(table["sensor"])
        out[township.agent] = table
    return out


def _temperature_references(sensors: list[dict[str, Any]]) -> None:
    """Let each deck accelerometer's `freq_shift` regress on a thermometer of its site."""
    thermometers = {s["site"]: s["id"] for s in sensors if s["kind"] == "bridge.temp"}
    for s in sensors:
        if s["kind"] == "bridge.accel" and s["site"] in thermometers:
            s["rules"]["freq_shift"] = {"temperature": thermometers[s["site"]]}


def write_agent_configs(scenario: Scenario, out_dir: Path, settings: AgentSettings,
                        rules: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """Write `{agent}.toml` for every township into `out_dir`, each checked by the agent's loader."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for agent, table in agent_tables(scenario, settings, rules).items():
        path = out_dir / f"{agent}.toml"
        try:
            AgentConfig.model_validate(table)
        except ValidationError as exc:
            raise ConfigError(f"{path}: the generated config is not valid: {exc}") from exc
        path.write_text(to_toml(table), encoding="utf-8")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- TOML


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, Path):
        return json.dumps(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table_lines(name: str, table: Mapping[str, Any], *, array: bool = False) -> list[str]:
    plain = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    nested = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    lines = [f"[[{name}]]" if array else f"[{name}]"] if plain or array or not nested else []
    lines += [f"{k} = {_value(v)}" for k, v in plain]
    for k, v in nested:
        lines += _table_lines(f"{name}.{k}", v)
    return lines


def to_toml(config: Mapping[str, Any]) -> str:
    """A TOML document of top-level tables and arrays of tables (values: numbers, strings, lists)."""
    lines: list[str] = []
    for name, value in config.items():
        if isinstance(value, Mapping):
            lines += _table_lines(name, value) + [""]
        elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            for item in value:
                lines += _table_lines(name, item, array=True) + [""]
        else:
            raise TypeError(f"top-level key {name!r} must be a table or an array of tables")
    return "\n".join(lines)
