"""Agent configuration (contract section 4) loaded from TOML into validated, typed objects.

The shared machinery (loading, `[mqtt]`, secrets, error messages naming file and key) is
`lifeline.config`; this module holds the agent's own sections: `[agent]`, `[raw_mqtt]` and
`[[sensor]]`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from lifeline.config import ConfigSection, Ident, MqttSettings, load_toml_model
from lifeline.contract.kinds import KIND_PATTERN

if TYPE_CHECKING:
    from edge_agent.kernels.profiles import SensorRules


class AgentSection(ConfigSection):
    """`[agent]`: who this agent is and where it stands in the hierarchy."""

    id: Ident
    district: Ident
    township: Ident
    #: Summary window length in seconds.
    window_s: float = Field(default=60.0, gt=0, le=86400)
    #: Directory for the durable outbox and saved kernel state.
    state_dir: Path = Path("/var/lib/lifeline")
    #: Outbox bound in messages; when full, oldest summaries go first, alerts last.
    outbox_max_messages: int = Field(default=200_000, ge=10)
    #: Seconds between retained status updates.
    status_interval_s: float = Field(default=10.0, gt=0, le=3600)
    #: Milliseconds the pipeline waits to gather input into one kernel batch (latency vs. CPU).
    batch_interval_ms: float = Field(default=10.0, ge=1, le=1000)
    #: A sensor without `gap_s` raises `gap` after this many of its learnt arrival intervals...
    gap_multiple: float = Field(default=5.0, ge=1.5, le=1000)
    #: ...but never after fewer seconds than this.
    gap_floor_s: float = Field(default=5.0, gt=0, le=86400)
    #: A sensor that has not sent anything since the agent started raises `gap` after this many seconds.
    gap_startup_s: float = Field(default=300.0, gt=0, le=86400)
    #: Seconds between saves of the full detection state (it is also saved at shutdown).
    state_save_s: float = Field(default=60.0, gt=0, le=86400)
    #: Seconds a Modbus unit has to answer a request before it counts as silent.
    modbus_timeout_s: float = Field(default=0.5, gt=0, le=30)


Datatype = Literal["int16", "uint16", "int32", "float32"]
WordOrder = Literal["big", "little"]
RegisterType = Literal["holding", "input"]
Source = Literal["mqtt", "serial", "modbus"]


class SensorSettings(ConfigSection):
    """One `[[sensor]]`: identity, input source and threshold rules."""

    id: Ident
    kind: str
    site: Ident
    source: Source = "mqtt"
    # serial
    port: str | None = None
    node: int | None = Field(default=None, ge=0, le=2**32 - 1)
    channel: int = Field(default=0, ge=0, le=255)
    baud: int = Field(default=115200, gt=0)
    # modbus
    unit: int | None = Field(default=None, ge=0, le=247)
    register_address: int | None = Field(default=None, ge=0, le=65535, alias="register")
    datatype: Datatype = "int16"
    #: Modbus function: holding registers (code 3) or input registers (code 4).
    register_type: RegisterType = "holding"
    #: Word order of 2-register types: "big" = high word first at `register` (the Modbus norm).
    word_order: WordOrder = "big"
    scale: float = 1.0
    period_s: float = Field(default=1.0, gt=0)
    # thresholds
    high: list[float] = Field(default_factory=list, max_length=4)
    low: list[float] = Field(default_factory=list, max_length=4)
    hysteresis: float = Field(default=0.0, ge=0)
    debounce: int = Field(default=1, ge=1, le=100_000)
    #: Seconds without data after which the sensor raises a `gap` fault; default: learnt from data.
    gap_s: float | None = Field(default=None, gt=0)
    #: Per-rule overrides of the kind's profile (see docs/configuration.md), e.g. `rules.rate.limit`.
    rules: dict[str, Any] = Field(default_factory=dict)
    #: Where the site is (WGS 84 degrees), for the ops console's map; sent in the agent's status.
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, kind: str) -> str:
        if not KIND_PATTERN.fullmatch(kind):
            raise ValueError(f"must look like '<domain>.<quantity>' (e.g. 'pipe.pressure'), got {kind!r}")
        return kind

    @field_validator("high")
    @classmethod
    def _check_high(cls, high: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(high, high[1:])):
            raise ValueError(f"thresholds for levels 1..4 must be strictly ascending, got {high}")
        return high

    @field_validator("low")
    @classmethod
    def _check_low(cls, low: list[float]) -> list[float]:
        if any(b >= a for a, b in zip(low, low[1:])):
            raise ValueError(f"thresholds for levels 1..4 must be strictly descending, got {low}")
        return low

    @model_validator(mode="after")
    def _check_source(self) -> SensorSettings:
        if self.source == "serial":
            missing = [k for k in ("port", "node") if getattr(self, k) is None]
        elif self.source == "modbus":
            missing = [k for k, v in (("port", self.port), ("unit", self.unit), ("register", self.register_address)) if v is None]
        else:
            missing = []
        if missing:
            raise ValueError(f"source = {self.source!r} needs key(s) {', '.join(missing)}")
        if self.high and self.low and self.low[0] >= self.high[0]:
            raise ValueError(f"low[0] = {self.low[0]} must be below high[0] = {self.high[0]}")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together: give both or neither")
        return self


class RawMqttSettings(MqttSettings):
    """`[raw_mqtt]`: the broker RawBlocks come from, when it is not the uplink's `[mqtt]`."""

    #: QoS of the `P/raw/+` subscription.
    qos: Literal[0, 1] = 1


class AgentConfig(ConfigSection):
    """The whole agent configuration file."""

    agent: AgentSection
    mqtt: MqttSettings = MqttSettings()
    #: Broker for RawBlock input; absent: the `[mqtt]` broker (with its own connection).
    raw_mqtt: RawMqttSettings | None = None
    sensor: list[SensorSettings] = Field(default_factory=list)

    def raw_input_settings(self) -> MqttSettings:
        """The broker RawBlocks come from: `[raw_mqtt]` if given, else the uplink's `[mqtt]`."""
        return self.raw_mqtt if self.raw_mqtt is not None else self.mqtt

    @model_validator(mode="after")
    def _check_unique(self) -> AgentConfig:
        seen: dict[str, int] = {}
        channels: dict[tuple[str, int, int], int] = {}
        for i, s in enumerate(self.sensor):
            if s.id in seen:
                raise ValueError(f"sensor[{i}].id: {s.id!r} is already used by sensor[{seen[s.id]}]")
            seen[s.id] = i
            if s.source == "serial" and s.port is not None and s.node is not None:
                key = (s.port, s.node, s.channel)
                if key in channels:
                    raise ValueError(
                        f"sensor[{i}]: port {s.port} node {s.node} channel {s.channel} is already "
                        f"mapped to sensor[{channels[key]}]"
                    )
                channels[key] = i
        return self

    @model_validator(mode="after")
    def _check_rules(self) -> AgentConfig:
        """Every sensor's thresholds and `rules` overrides must make a valid rule set."""
        rules = [sensor_rules(s, i) for i, s in enumerate(self.sensor)]
        from edge_agent.kernels.structural import WindowRules

        # window rules name other sensors (a temperature sensor of the same site)
        WindowRules(rules, ids=[s.id for s in self.sensor], sites=[s.site for s in self.sensor],
                    window_s=self.agent.window_s)
        return self

    @model_validator(mode="after")
    def _check_ports(self) -> AgentConfig:
        """Sensors sharing a port must agree on what the port is (frames or Modbus) and its baud."""
        first: dict[str, int] = {}
        for i, s in enumerate(self.sensor):
            if s.source == "mqtt" or s.port is None:
                continue
            if s.port not in first:
                first[s.port] = i
                continue
            j = first[s.port]
            other = self.sensor[j]
            if other.source != s.source:
                raise ValueError(f"sensor[{i}].port: {s.port} is a {other.source} port (sensor[{j}]), "
                                 f"not {s.source}")
            if other.baud != s.baud:
                raise ValueError(f"sensor[{i}].baud: {s.port} runs at {other.baud} (sensor[{j}]), "
                                 f"got {s.baud}")
        return self


def sensor_rules(sensor: SensorSettings, index: int) -> SensorRules:
    """The detection rules of one sensor: its kind's profile, then the contract keys, then `rules`.

    `high` and `low` always come from the config (absent: none, as the contract says);
    `hysteresis` and `debounce` only when set, else the kind's profile values. A bad value raises
    ValueError naming `sensor[i].rules.<key>` (or `sensor[i].<key>`).
    """
    from edge_agent.kernels.profiles import rules_from_overrides

    overrides: dict[str, Any] = {"high": list(sensor.high), "low": list(sensor.low)}
    for key in ("hysteresis", "debounce"):
        if key in sensor.model_fields_set:
            overrides[key] = getattr(sensor, key)
    overrides.update(sensor.rules)
    try:
        return rules_from_overrides(sensor.kind, overrides)
    except ValueError as exc:
        message = str(exc)
        key = message.split(":", 1)[0]
        section = key.split(".", 1)[0]
        where = "rules." if key in sensor.rules or section in sensor.rules else ""
        raise ValueError(f"sensor[{index}].{where}{message}") from exc


def config_warnings(config: AgentConfig) -> list[str]:
    """What in a valid config is probably a mistake, one line each naming the sensor and key.

    An unknown `kind` is allowed (contract section 1) but gets no built-in profile: the warning
    names the built-in kinds and the rules the sensor will run, computed from its rules.
    """
    from edge_agent.kernels.codes import RULE_NAMES
    from edge_agent.kernels.params import enabled_rules
    from edge_agent.kernels.profiles import PROFILES

    out = []
    for i, s in enumerate(config.sensor):
        if s.kind in PROFILES:
            continue
        runs = enabled_rules(sensor_rules(s, i))
        off = [name for name in RULE_NAMES if name not in runs]
        out.append(
            f"sensor[{i}].kind: {s.kind!r} ({s.id}) is not a built-in kind and gets no built-in "
            f"profile: it runs {', '.join(runs) or 'no rule at all'}; not {', '.join(off) or '-'} "
            f"(set them with high/low and rules, or use a built-in kind: {', '.join(sorted(PROFILES))})")
    return out


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Load and validate an agent configuration file."""
    return load_toml_model(path, AgentConfig)


__all__ = [
    "AgentConfig", "AgentSection", "RawMqttSettings", "SensorSettings", "config_warnings", "load_agent_config",
    "sensor_rules",
]
