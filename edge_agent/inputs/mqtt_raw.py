"""RawBlock input: a paho-mqtt client subscribed to `P/raw/+` that only queues what it receives.

The network thread does the least possible per message (one deque append with the receive time);
decoding, validation and sequence checks happen in batches on the pipeline thread. This keeps the
agent's CPU per message close to that of a bare paho subscriber.

When another client keeps taking its client id (`edge_agent.takeover`: a cloned SD card in a
second cabinet), the input says so once and reconnects under a client id of its own
(`<id>-<8 hex>`): a clean-session subscriber needs no fixed id, and holding back would leave
this cabinet without sensor data (and raise a `gap` on every sensor) half of the time.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.inputs.base import CLOCK, Ingress
from edge_agent.takeover import SHORT_SESSION_S, TAKEOVERS_NEEDED, TakeoverWatch
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
        self.configured_client_id = client_id
        #: The configured id, or one of our own after another client kept taking it.
        self.client_id = client_id
        self.takeover = TakeoverWatch()
        self._switch_lock = threading.Lock()
        self.client = self._new_client(client_id)

    def _new_client(self, client_id: str) -> mqtt.Client:
        client = make_client(self.settings, client_id)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._message_handler()
        return client

    @property
    def client_id_taken_over(self) -> bool:
        """Another client keeps taking the configured client id (true while we use our own)."""
        return self.takeover.suspected or self.client_id != self.configured_client_id

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
        with self._switch_lock:
            self._stopping = True
            client = self.client
        client.disconnect()
        stop_loop(client, timeout_s, name="raw-input-stop")
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
            self.takeover.failed_attempt()
            self._note_failure(f"refused: {reason}")
            return
        client.subscribe(self.subscription, qos=self.qos)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: Any,
                      properties: Any) -> None:
        if any(r.is_failure for r in reasons):
            self._note_failure(f"subscription to {self.subscription} refused: {reasons[0]}")
            return
        if client is not self.client:
            return
        self.connects += 1
        self._failed_once = False
        self.takeover.connected()
        self._connected.set()
        log.info("raw input connected to %s, subscribed to %s", self._where(), self.subscription)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any,
                       properties: Any) -> None:
        if client is not self.client or not self._connected.is_set() or self._stopping:
            return
        self._connected.clear()
        was = self.takeover.suspected
        if not self.takeover.lost()[0]:
            log.warning("raw input lost connection to %s (%s); reconnecting", self._where(), reason)
        elif not was:
            new_id = f"{self.configured_client_id}-{uuid.uuid4().hex[:8]}"
            log.error("raw input: client id %r lost its connection to %s %d times in a row within %.0f s of "
                      "connecting, each time let straight back in: another client is connecting with the "
                      "same client id (a cloned SD card, or a second cabinet with this agent.id or "
                      "raw_mqtt.client_id?); reconnecting as %r so this cabinet keeps its sensor data "
                      "(status fault client_id_in_use)", self.client_id, self._where(), TAKEOVERS_NEEDED,
                      SHORT_SESSION_S, new_id)
            threading.Thread(target=self._switch_client_id, args=(client, new_id), name="raw-input-switch",
                             daemon=True).start()

    def _switch_client_id(self, old: mqtt.Client, client_id: str) -> None:
        """Replace the client by one with `client_id` (on its own thread: paho's cannot stop itself)."""
        with self._switch_lock:
            if self._stopping:
                return
            self.client_id = client_id
            self.client = self._new_client(client_id)
            new = self.client
        old.disconnect()
        old.loop_stop()
        s = self.settings
        new.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        new.loop_start()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        if client is self.client:
            self.takeover.failed_attempt()
        self._note_failure("cannot connect")

    def _note_failure(self, why: str) -> None:
        """Log the first failed attempt after a success (or start), not every retry."""
        if not self._failed_once:
            self._failed_once = True
            log.warning("raw input broker %s: %s; retrying with backoff", self._where(), why)
