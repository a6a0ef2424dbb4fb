"""Gateway configuration (contract section 4) loaded from TOML into validated, typed objects."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from lifeline.config import (
    ConfigSection,
    Ident,
    MqttSettings,
    check_no_credentials,
    check_secret_file,
    load_toml_model,
    read_secret_file,
)

#: What the gateway does with an alert naming an agent it has no status or summary of (once its
#: wait is over): keep it in the dead-letter file, or store and route it flagged as unverified.
UnknownAgents = Literal["dead_letter", "accept"]


class InfluxSettings(ConfigSection):
    """`[influx]`: the time-series store, spoken to through InfluxDB's v2 write API."""

    url: str = "http://127.0.0.1:8086"
    org: str = "lifeline"
    bucket: str = "lifeline"
    #: Token inline; or `token_file`; or the environment variable LIFELINE_INFLUX_TOKEN.
    token: SecretStr = Field(default=SecretStr(""), repr=False)
    token_file: Path | None = None
    #: Most points in one write request: batches grow towards it while every write slot is busy.
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    #: Most bytes of line protocol in one write request (the other bound of a batch).
    batch_max_bytes: int = Field(default=8 * 1024 * 1024, ge=4096, le=256 * 1024 * 1024)
    #: Write requests in flight at once; a slow store is kept busy by several.
    max_writes: int = Field(default=4, ge=1, le=64)
    #: Longest a point waits for its batch while a write slot is free, in milliseconds.
    flush_interval_ms: int = Field(default=200, ge=1, le=60_000)
    timeout_ms: int = Field(default=10_000, ge=100)
    #: First and longest pause between retries of a failed write (capped, jittered backoff).
    retry_initial_s: float = Field(default=0.2, gt=0, le=60)
    retry_max_s: float = Field(default=5.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        check_no_credentials(url, "give the token as influx.token_file or LIFELINE_INFLUX_TOKEN")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {url!r}")
        return url

    @model_validator(mode="after")
    def _check_token_file(self) -> InfluxSettings:
        """A token file that will be used must be readable now, so `--check` finds it broken."""
        if self.token_file is not None and not self.token.get_secret_value():
            check_secret_file(self.token_file, "token_file")
        return self

    def resolved_token(self) -> str:
        """The token from `token`, `token_file` or LIFELINE_INFLUX_TOKEN, in that order."""
        if self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_file is not None:
            return read_secret_file(self.token_file, "influx.token_file")
        return os.environ.get("LIFELINE_INFLUX_TOKEN", "")


def default_gateway_id(config_path: str | os.PathLike[str] | None = None) -> str:
    """`gw-{host}-{hash}`: unique per machine and config file, and the same at every restart.

    Two gateways with one id share one MQTT client id, and the broker would disconnect the first
    each time the second connects: without `[gateway] id` each gets its own.
    """
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48] or "host"
    if config_path is None:
        return f"gw-{host}"
    where = hashlib.sha256(str(Path(config_path).resolve()).encode()).hexdigest()[:6]
    return f"gw-{host}-{where}"


class GatewaySection(ConfigSection):
    """`[gateway]`: this gateway's identity and scale-out settings (all optional)."""

    #: Default: derived from the host name and the config file's path (`default_gateway_id`).
    id: str = Field(default_factory=default_gateway_id, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    #: Shared-subscription group; gateways in one group split the load. Empty (the default): a
    #: plain subscription, which the broker restores after its own restart. Mosquitto 2.0.11
    #: does not restore `$share` subscriptions, so what arrives before the group re-subscribes is lost.
    share_group: str = Field(default="", pattern=r"^[A-Za-z0-9._-]{0,64}$")
    #: Most messages taken from the broker but not yet confirmed by the store.
    max_inflight: int = Field(default=20_000, ge=1)
    #: How long the broker keeps this gateway's session (and queues for it) while it is away.
    session_expiry_s: int = Field(default=7 * 86400, ge=60, le=2**32 - 1)
    #: Seconds between retained registry snapshots on `P/registry/{id}`.
    registry_interval_s: float = Field(default=10.0, gt=0, le=3600)
    #: Seconds between counter log lines and `gateway_stats` points.
    stats_interval_s: float = Field(default=60.0, gt=0, le=86400)
    #: An online agent silent this long is shown as `stale` in the registry.
    agent_stale_s: float = Field(default=120.0, gt=0)
    #: Agents whose alerts are accepted (known from the start); empty: any agent heard on its
    #: own status or summary topic.
    agents: list[Ident] = Field(default_factory=list)
    #: An alert naming an agent never heard of waits this long for the agent's status or summary.
    unknown_agent_hold_s: float = Field(default=10.0, ge=0, le=600)
    #: ... and then goes to the dead-letter file (the default) or is accepted as unverified.
    unknown_agents: UnknownAgents = "dead_letter"
    #: Sensors whose owner is fixed here (sensor id -> agent id); summaries never move them.
    owners: dict[Ident, Ident] = Field(default_factory=dict)
    #: A sensor listed by another agent than its owner moves to it only after the claimant listed
    #: it this long while the owner, still sending summaries, no longer did.
    owner_move_s: float = Field(default=600.0, ge=0, le=30 * 86400)
    #: Times further ahead of this gateway's clock than this are refused, never believed.
    clock_skew_s: float = Field(default=300.0, gt=0, le=86400)
    #: Directory of the gateway's durable state (`{id}.sqlite`: registry and dead letters).
    state_dir: Path = Path("/var/lib/lifeline-gateway")
    #: Most MiB the dead-letter records may take; beyond it the oldest go first (counted).
    dead_letter_max_mb: int = Field(default=256, ge=1, le=1024 * 1024)
    #: Open a second, clean-session connection for retained statuses and for alerts while this
    #: gateway's session is behind (restart backlog, slow store), so live alerts are not queued
    #: behind it.
    live_lane: bool = True

    @property
    def state_path(self) -> Path:
        """The SQLite file of this gateway's durable state."""
        return self.state_dir / f"{self.id}.sqlite"


class GatewayConfig(ConfigSection):
    """The whole gateway configuration file."""

    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    gateway: GatewaySection = GatewaySection()


def load_gateway_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load and validate a gateway configuration file; without `[gateway] id`, derive a unique one."""
    config = load_toml_model(path, GatewayConfig)
    if "id" in config.gateway.model_fields_set:
        return config
    gateway = config.gateway.model_copy(update={"id": default_gateway_id(path)})
    return config.model_copy(update={"gateway": gateway})
