"""RawBlock input: a paho-mqtt client subscribed to `P/raw/+` that only queues what it receives.

The network thread does the least possible per message (one deque append with the receive time);
decoding, validation and sequence checks happen in batches on the pipeline thread. This keeps the
agent's CPU per message close to that of a bare paho subscriber.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.inputs.base import CLOCK, Ingress
from lifeline.config import MqttSettings
from lifeline.mqtt import make_client, stop_loop

log = logging.getLogger(__name__)


class RawMqttInput:
    """Receives RawBlocks on `P/raw/+` into an Ingress; logs one line per connection change."""

    def __init__(self, settings: MqttSettings, *, client_id: str, ingress: Ingress, qos: int = 1) -> None:
        self.settings = settings
        self.subscription = f"{settings.prefix}/raw/+"
        self.qos = qos
        self._ingress = ingress
        self._connected = threading.Event()
        self._failed_once = False
        self._stopping = False
        self.connects = 0
        self.client = make_client(settings, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._message_handler()

    @property
    def connected(self) -> bool:
        """Whether the client is connected and subscribed now."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected and subscribed, or `timeout_s` passes."""
        return self._connected.wait(timeout_s)

    def start(self) -> None:
        """Connect in the background; paho's own thread reconnects after any loss."""
        s = self.settings
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self.client.loop_start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Disconnect and stop the network thread, waiting at most `timeout_s` for it.

        A connect attempt to a host that does not answer can hold paho's thread for seconds;
        shutdown must not wait for that.
        """
        self._stopping = True
        self.client.disconnect()
        stop_loop(self.client, timeout_s, name="raw-input-stop")
        self._connected.clear()

    def _message_handler(self) -> Any:
        """The on_message callback, with everything it touches bound locally (it runs per message)."""
        put = self._ingress.put_raw
        clock = CLOCK.now_ms

        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = ""  # counted as an unknown topic by the pipeline
            put(topic, msg.payload, clock())

        return on_message

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._note_failure(f"refused: {reason}")
            return
        client.subscribe(self.subscription, qos=self.qos)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: Any,
                      properties: Any) -> None:
        if any(r.is_failure for r in reasons):
            self._note_failure(f"subscription to {self.subscription} refused: {reasons[0]}")
            return
        self.connects += 1
        self._failed_once = False
        self._connected.set()
        log.info("raw input connected to %s, subscribed to %s", self._where(), self.subscription)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self._connected.is_set() and not self._stopping:
            self._connected.clear()
            log.warning("raw input lost connection to %s (%s); reconnecting", self._where(), reason)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._note_failure("cannot connect")

    def _note_failure(self, why: str) -> None:
        """Log the first failed attempt after a success (or start), not every retry."""
        if not self._failed_once:
            self._failed_once = True
            log.warning("raw input broker %s: %s; retrying with backoff", self._where(), why)
