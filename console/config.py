"""Console configuration (`console.toml`) loaded into validated, typed objects.

Same rules as the agent's and gateway's files: unknown keys are errors, every error names the
file and the key, secrets are never echoed and never carried in URLs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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

#: Default minutes a case may stay unacknowledged, per level 1..4, before it escalates by itself.
DEFAULT_ACK_MINUTES: tuple[float, ...] = (30.0, 15.0, 10.0, 5.0)


class ConsoleSection(ConfigSection):
    """`[console]`: this console instance, its web listener and its operating rules."""

    #: Instance id: MQTT client id suffix and `origin` of the case events it publishes; each
    #: instance sharing one database needs its own.
    id: Ident = "console"
    #: Address and port of the web server (put a TLS reverse proxy in front, or set tls_*).
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Certificate and key to serve HTTPS directly (no reverse proxy).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Mark the session cookie `Secure` (on by default when served over TLS, directly or behind a proxy).
    secure_cookies: bool | None = None
    #: Trusted reverse proxies whose X-Forwarded-For/-Proto headers are believed.
    forwarded_allow_ips: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    #: A session ends this many hours after login, whatever happens...
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    #: ... or after this many idle minutes.
    idle_minutes: float = Field(default=60.0, gt=0, le=24 * 60)
    #: Minutes a case of level 1..4 may stay unacknowledged before it escalates to the next tier.
    ack_minutes: list[float] = Field(default_factory=lambda: list(DEFAULT_ACK_MINUTES),
                                     min_length=4, max_length=4)
    #: Seconds between checks of the acknowledgement deadlines.
    escalation_check_s: float = Field(default=5.0, gt=0, le=600)
    #: Longest note, cause, reason or crew report in characters.
    max_text_chars: int = Field(default=4000, ge=100, le=100_000)
    #: Rows the board sends at first (the rest by filter or "show more").
    board_rows: int = Field(default=100, ge=10, le=5000)
    #: Optional TOML file of site coordinates (`[[site]]` id, lat, lon, name), beside the agents' statuses.
    sites_file: Path | None = None
    #: Optional GeoJSON file of district and township boundaries (properties `district`, `township`, `name`).
    boundaries_file: Path | None = None
    #: Map tiles URL template (e.g. a local tile server's `http://tiles.local/{z}/{x}/{y}.png`);
    #: empty: no tiles, the boundaries on a plain background (works with no internet).
    tile_url: str = ""
    tile_attribution: str = ""

    @field_validator("ack_minutes")
    @classmethod
    def _check_ack(cls, minutes: list[float]) -> list[float]:
        if any(m <= 0 for m in minutes):
            raise ValueError(f"minutes for levels 1..4 must be positive, got {minutes}")
        return minutes

    @model_validator(mode="after")
    def _check_tls(self) -> ConsoleSection:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        for key in ("tls_cert_file", "tls_key_file", "sites_file", "boundaries_file"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{key}: {path} is not a readable file")
        return self

    @property
    def cookies_secure(self) -> bool:
        """Whether the session cookie carries `Secure`."""
        if self.secure_cookies is not None:
            return self.secure_cookies
        return self.tls_cert_file is not None

    def ack_seconds(self, level: int) -> float:
        """Seconds a case of `level` may stay unacknowledged."""
        return self.ack_minutes[min(max(level, 1), 4) - 1] * 60.0


class DatabaseSettings(ConfigSection):
    """`[database]`: where cases, users and the audit log live."""

    #: `sqlite:///path/console.db` (the default, one instance) or
    #: `postgresql://host:port/dbname` (several instances); no credentials in it.
    url: str = "sqlite:////var/lib/lifeline/console.db"
    username: str | None = None
    #: Password inline; prefer `password_file` or the environment variable LIFELINE_DB_PASSWORD.
    password: SecretStr | None = Field(default=None, repr=False)
    password_file: Path | None = None
    #: Connections kept per instance (PostgreSQL).
    pool_size: int = Field(default=5, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = check_no_credentials(
            url, "give the user as database.username and the password as database.password_file "
            "or LIFELINE_DB_PASSWORD")
        if parts.scheme not in ("sqlite", "postgresql"):
            raise ValueError(f"must start with sqlite:/// or postgresql://, got {url!r}")
        if parts.scheme == "sqlite" and not parts.path.strip("/"):
            raise ValueError(f"names no database file: {url!r} (e.g. sqlite:////var/lib/lifeline/console.db)")
        return url

    @model_validator(mode="after")
    def _check_password_file(self) -> DatabaseSettings:
        if self.password_file is not None and not (self.password and self.password.get_secret_value()):
            check_secret_file(self.password_file, "password_file")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:")

    def sqlite_path(self) -> Path:
        """The SQLite database file (`sqlite:////abs/path` or `sqlite:///relative`)."""
        return Path(urlsplit(self.url).path[1:])

    def resolved_password(self) -> str | None:
        """The password from `password`, `password_file` or LIFELINE_DB_PASSWORD, in that order."""
        if self.password is not None and self.password.get_secret_value():
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, "database.password_file")
        return os.environ.get("LIFELINE_DB_PASSWORD") or None


class StoreSettings(ConfigSection):
    """`[store]`: the time-series store's query API (VictoriaMetrics, Prometheus-compatible)."""

    #: Base URL of VictoriaMetrics (or another server with `/api/v1/query_range` and `/api/v1/export`).
    url: str = "http://127.0.0.1:8428"
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        check_no_credentials(url, "put an authenticating proxy on loopback in front of the store")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {url!r}")
        return url.rstrip("/")


Role = Literal["viewer", "operator", "supervisor"]


class ConsoleConfig(ConfigSection):
    """The whole console configuration file."""

    console: ConsoleSection = ConsoleSection()
    mqtt: MqttSettings = MqttSettings()
    database: DatabaseSettings = DatabaseSettings()
    store: StoreSettings = StoreSettings()


class SiteSettings(ConfigSection):
    """One `[[site]]` of the sites file: where a site is on the map."""

    id: Ident
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    name: str = ""
    #: Where the site belongs, so district and township users see it on their map before any
    #: alert of it arrives (without them only the city sees it until then).
    district: str = ""
    township: str = ""


class SitesFile(ConfigSection):
    """The optional sites file (`console.sites_file`)."""

    site: list[SiteSettings] = Field(default_factory=list)


def load_console_config(path: str | os.PathLike[str]) -> ConsoleConfig:
    """Load and validate a console configuration file."""
    return load_toml_model(path, ConsoleConfig)


def load_sites(path: str | os.PathLike[str]) -> dict[str, SiteSettings]:
    """Site id -> coordinates from a sites file."""
    return {s.id: s for s in load_toml_model(path, SitesFile).site}
