"""Agent configuration (contract section 4) loaded from TOML into validated, typed objects.

Every problem is reported as one `ConfigError` naming the file, the key (`sensor[3].high`) and
what is wrong, so an operator can fix a cabinet's config without reading code.

Secrets (MQTT password, store token) are `SecretStr`: their repr, `str()` and `model_dump()`
show `**********`, config errors never echo them, and URLs with credentials in them are refused
(the URLs are logged), so a secret reaches only the connection that needs it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.contract.kinds import KIND_PATTERN, is_valid_id
from edge_agent.contract.topics import DEFAULT_PREFIX
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from edge_agent.kernels.profiles import SensorRules

Model = TypeVar("Model", bound=BaseModel)

Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]

#: Keys whose values are secrets: a config error names them but never shows their value.
SECRET_KEYS = frozenset({"password", "token"})


def redact_url(url: str) -> str:
    """`url` with any password (and user) in it replaced by `***`, safe to log or show."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparsable URL>"
    return SplitResult(parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment).geturl()


def check_no_credentials(url: str, hint: str) -> SplitResult:
    """Split `url`, refusing a user or password in it (URLs are logged; secrets have own keys)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL (bad port or brackets): {redact_url(url)!r}") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"must not carry credentials ({redact_url(url)!r}): URLs are logged; {hint}"
        )
    return parts


class ConfigSection(BaseModel):
    """Base for config sections: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, populate_by_name=True)


class MqttSettings(ConfigSection):
    """Broker connection shared by agent and gateway (`[mqtt]`)."""

    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    #: Password inline; prefer `password_file` or the environment variable LIFELINE_MQTT_PASSWORD.
    password: SecretStr | None = Field(default=None, repr=False)
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = check_no_credentials(
            url, "give the user as mqtt.username and the password as mqtt.password_file or "
            "LIFELINE_MQTT_PASSWORD"
        )
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"has no host: {url!r}")
        return url

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+#"):
            raise ValueError(f"must be a topic path without wildcards or leading/trailing '/', got {prefix!r}")
        return prefix

    @model_validator(mode="after")
    def _check_password_file(self) -> MqttSettings:
        """A password file that will be used must be readable now, so `--check` finds it broken."""
        if self.password_file is not None and not (self.password and self.password.get_secret_value()):
            check_secret_file(self.password_file, "password_file")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def resolved_password(self) -> str | None:
        """The password from `password`, `password_file` or LIFELINE_MQTT_PASSWORD, in that order.

        The file is read on every call, so a rotated password is used at the next reconnect.
        """
        if self.password is not None and self.password.get_secret_value():
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, "mqtt.password_file")
        return os.environ.get("LIFELINE_MQTT_PASSWORD") or None


def check_secret_file(path: Path, key: str) -> None:
    """Raise ValueError (for a validator) if the secret file at `key` cannot be read."""
    try:
        read_secret_file(path, key)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def read_secret_file(path: Path, key: str) -> str:
    """Read a secret (first line, stripped) from a file, naming the key if it cannot be read.

    The error never quotes the file's content (a wrong file may hold another secret).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret from {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:  # its message would quote a byte of the secret
        raise ConfigError(f"{key}: cannot read secret from {path}: not UTF-8 text") from None
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ConfigError(f"{key}: {path} is empty (the secret is its first line)")
    return secret


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


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _format_validation(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = _format_loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the sample config)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif (
            "input" in err
            and err["type"] not in ("value_error", "model_type")
            and not isinstance(err["input"], dict)
            and not SECRET_KEYS.intersection(str(part) for part in err["loc"])
        ):
            msg += f" (got {err['input']!r})"
        lines.append(f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}")
    return "\n".join(lines)


def load_toml_model(path: str | os.PathLike[str], model: type[Model]) -> Model:
    """Read a TOML file into `model`; raise ConfigError naming the file, key and problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        message = _format_validation(p, exc)
    # Raised outside the `except`, so the error has neither cause nor context: pydantic's own
    # message quotes every input value (secrets included), and a logged traceback would show it.
    raise ConfigError(message)


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Load and validate an agent configuration file."""
    return load_toml_model(path, AgentConfig)


__all__ = [
    "AgentConfig", "AgentSection", "ConfigError", "MqttSettings", "RawMqttSettings", "SensorSettings",
    "check_no_credentials", "check_secret_file", "is_valid_id", "load_agent_config", "load_toml_model", "read_secret_file",
    "redact_url", "sensor_rules",
]
