"""MQTT connection handling every part shares: paho clients, TLS, and readable connect failures.

The agent's uplink and raw input, the gateway's broker link and the simulators' publishers all
connect with the settings of an `[mqtt]` section (`lifeline.config.MqttSettings`); this module
turns those settings into a verifying TLS context or a ready paho-mqtt 2 client, and a failed
connect or a refusal into a message naming the setting to check.
"""

from __future__ import annotations

import socket
import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from lifeline.config import MqttSettings
from lifeline.errors import ConfigError


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """A verifying TLS context from `mqtt.ca_file` (system CAs without it) and optional client cert."""
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.ca_file: cannot load CA certificates from {settings.ca_file}: {exc}") from exc
    if settings.key_file is not None and settings.cert_file is None:
        raise ConfigError("mqtt.key_file is set but mqtt.cert_file is not: a client key needs its certificate")
    if settings.cert_file is not None:
        try:
            context.load_cert_chain(str(settings.cert_file),
                                    str(settings.key_file) if settings.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt.cert_file/key_file: cannot load the client certificate "
                              f"{settings.cert_file}: {exc}") from exc
    return context


def describe_connect_error(exc: BaseException) -> str:
    """A short operator-readable cause for a failed TCP/TLS connect."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message} (check mqtt.ca_file and the broker's name)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running on that port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror or exc}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def describe_refusal(reason: ReasonCode | None, settings: MqttSettings, *, id_hint: str) -> str:
    """The broker's reason for refusing a CONNECT, with a hint at the setting to check.

    `id_hint` is what to check when the client id is refused (it differs for agent and gateway).
    """
    text = str(reason) if reason is not None else "unknown reason"
    lowered = text.lower()
    if "authori" in lowered or "password" in lowered or "bad user" in lowered:
        who = f"user {settings.username!r}" if settings.username else "no user name"
        return (f"{text} ({who}; check mqtt.username and the password from mqtt.password, "
                f"mqtt.password_file or LIFELINE_MQTT_PASSWORD)")
    if "identifier" in lowered:
        return f"{text} ({id_hint})"
    return text


def make_client(settings: MqttSettings, client_id: str) -> mqtt.Client:
    """A paho-mqtt 2 client with the settings' credentials, TLS and reconnect delays applied."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                         protocol=mqtt.MQTTv311)
    password = settings.resolved_password()
    if settings.username or password:
        client.username_pw_set(settings.username or "", password)
    if settings.tls:
        client.tls_set_context(tls_context(settings))
    client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(settings.reconnect_max_s)))
    return client


def stop_loop(client: mqtt.Client, timeout_s: float, *, name: str = "mqtt-loop-stop") -> None:
    """paho's loop_stop() joins without a timeout; bound it, since the broker may be gone.

    A connect attempt to a host that does not answer can hold paho's thread for seconds;
    shutdown must not wait for that.
    """
    stopper = threading.Thread(target=client.loop_stop, name=name, daemon=True)
    stopper.start()
    stopper.join(max(timeout_s, 0.0))


__all__ = ["describe_connect_error", "describe_refusal", "make_client", "stop_loop", "tls_context"]
