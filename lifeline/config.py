"""Configuration machinery every part shares: TOML loading into validated models, the `[mqtt]`
section, and secrets.

Every problem is reported as one `ConfigError` naming the file, the key (`sensor[3].high`) and
what is wrong, so an operator can fix a cabinet's config without reading code.

Secrets (MQTT password, store token) are `SecretStr`: their repr, `str()` and `model_dump()`
show `**********`, config errors never echo them, and URLs with credentials in them are refused
(the URLs are logged), so a secret reaches only the connection that needs it.
"""

from __future__ import annotations

import datetime
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, TypeVar
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

from lifeline.contract.topics import DEFAULT_PREFIX
from lifeline.errors import ConfigError

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
        elif err["type"] in _TYPE_WORDS and "input" in err:
            secret = bool(SECRET_KEYS.intersection(str(part) for part in err["loc"]))
            got = _describe_input(err["input"], secret)
            if isinstance(err["input"], str) and not secret and err["type"] in _SCALARS:
                got += " (write it without quotes)"
            msg = f"expected {_TYPE_WORDS[err['type']]}, got {got}"
        elif (
            "input" in err
            and err["type"] not in ("value_error", "model_type")
            and not isinstance(err["input"], dict)
            and not SECRET_KEYS.intersection(str(part) for part in err["loc"])
        ):
            msg += f" (got {err['input']!r})"
        lines.append(f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}")
    return "\n".join(lines)


#: Pydantic's type errors in words for the config's reader.
_TYPE_WORDS: dict[str, str] = {
    "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a table",
}
#: Types a TOML value is written without quotes for.
_SCALARS = frozenset({"int_type", "float_type", "bool_type"})
#: How a TOML date or time reaches the model: as a table nothing accepts, so it is refused.
_TOML_VALUE = "toml date/time"


def _describe_input(value: object, secret: bool) -> str:
    """The wrong value of a key in words; a secret's value is never shown, only its type."""
    if isinstance(value, dict) and _TOML_VALUE in value:
        return f"the TOML date/time {value[_TOML_VALUE]}"
    words = {str: "a string", bool: "true/false", int: "an integer", float: "a number",
             list: "a list", dict: "a table"}
    if secret:
        return words.get(type(value), type(value).__name__)
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _json_value(value: object) -> object:
    """A TOML value JSON cannot hold (date, time, datetime) as a table no config key accepts."""
    if isinstance(value, (datetime.date, datetime.time)):
        return {_TOML_VALUE: value.isoformat()}
    raise TypeError(f"unexpected TOML value {type(value).__name__}")


def load_toml_model(path: str | os.PathLike[str], model: type[Model]) -> Model:
    """Read a TOML file into `model`; raise ConfigError naming the file, key and problem.

    Values are checked strictly, as TOML types them: `debounce = "3"` (a string) is an error,
    not a 3, so a quoted number or `true` in the wrong place never passes unseen. (Validated as
    JSON, where pydantic's strict mode still reads a path from a string.)
    """
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
        return model.model_validate_json(json.dumps(raw, default=_json_value), strict=True)
    except ValidationError as exc:
        message = _format_validation(p, exc)
    # Raised outside the `except`, so the error has neither cause nor context: pydantic's own
    # message quotes every input value (secrets included), and a logged traceback would show it.
    raise ConfigError(message)


__all__ = [
    "SECRET_KEYS",
    "ConfigSection",
    "Ident",
    "MqttSettings",
    "check_no_credentials",
    "check_secret_file",
    "load_toml_model",
    "read_secret_file",
    "redact_url",
]
