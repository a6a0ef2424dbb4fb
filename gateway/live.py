"""The live lane: a second broker connection for what must not wait behind this gateway's backlog.

The gateway's persistent session delivers in order, so after a restart into a backlog (or while a
slow store keeps its receive maximum used up) a new alert waits behind everything queued before
it: a million queued alerts are a minute or more of drain. The live lane is a clean-session,
QoS 0 connection (client id `{client id}-live`) that the broker does not queue for:

- it subscribes to `P/status/+` for good: every retained status arrives within milliseconds of
  connecting, so the registry knows every agent before the session's backlog reaches its alerts;
- while the pipeline says the session is behind (`want_alerts(True)`) it also subscribes to the
  alert topics (shared as `$share/{group}-live/...` when the gateway is in a share group), and
  the pipeline routes those alerts at once, publishing their routes on this connection (`publish`):
  the session's connection may have thousands of the backlog's routes in flight ahead of them.
  The session's copy of each alert is stored later, without routing it again.

Nothing taken here is acknowledged, stored or dead-lettered: the session stays the record, so a
message lost on this lane costs only latency. paho runs this connection on its own network
thread; messages reach the worker through `post` (the service's mailbox and wake pipe).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.backoff import LogThrottle, held_note
from edge_agent.config import MqttSettings
from edge_agent.contract import subscription
from edge_agent.uplink import tls_context
from gateway.events import Event, LiveMessage

log = logging.getLogger(__name__)


def live_alert_filter(prefix: str, share_group: str) -> str:
    """The live lane's alert subscription: shared among the live lanes of one share group."""
    plain = subscription(prefix, "alert")
    return f"$share/{share_group}-live/{plain}" if share_group else plain


class LiveLane:
    """Owns the live lane's paho client (its own network thread) and its two subscriptions."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        share_group: str,
        post: Callable[[Event], None],
    ) -> None:
        self.settings = settings
        self.client_id = f"{client_id}-live"
        self.status_filter = subscription(settings.prefix, "status")
        self.alert_filter = live_alert_filter(settings.prefix, share_group)
        self._post = post
        self._lock = threading.Lock()
        self._want = False
        self._subscribed = False
        self._connected = False
        self._throttle = LogThrottle(60.0)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=True,
        )
        if settings.username:
            client.username_pw_set(settings.username, settings.resolved_password())
        if settings.tls:
            client.tls_set_context(tls_context(settings))
        client.reconnect_delay_set(1, max(1, int(settings.reconnect_max_s)))
        client.max_inflight_messages_set(1000)  # live routes come in bursts at most
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    @property
    def alerts_on(self) -> bool:
        """Whether the alert subscription is asked for."""
        return self._want

    def start(self) -> None:
        """Connect in the background (paho retries until the broker answers)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=True,
            properties=props,
        )
        self._client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Disconnect and end the network thread (bounded: the broker may be gone)."""
        self._client.disconnect()
        stopper = threading.Thread(target=self._client.loop_stop, name="live-stop", daemon=True)
        stopper.start()
        stopper.join(timeout_s)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish a live alert's route at QoS 1 on this connection, ahead of any backlog of the
        session's connection (paho sends it again after a reconnect until the broker has it)."""
        self._client.publish(topic, payload, qos=1)

    def want_alerts(self, on: bool) -> None:
        """Take alerts over this lane (the session is behind), or stop taking them."""
        with self._lock:
            self._want = on
            if not self._connected or on == self._subscribed:
                return
            self._subscribed = on
        if on:
            self._client.subscribe(self.alert_filter, options=SubscribeOptions(qos=0))
            log.info("session behind: taking live alerts on %s meanwhile", self.alert_filter)
        else:
            self._client.unsubscribe(self.alert_filter)

    # ------------------------------------------------------------------ paho callbacks (its thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            held = self._throttle.allow("refused")
            if held is not None:
                log.warning(
                    "broker refused the live lane %s: %s; live alerts wait behind the backlog "
                    "until it connects%s",
                    self.client_id,
                    reason,
                    held_note(held),
                )
            return
        filters = [(self.status_filter, SubscribeOptions(qos=0))]
        with self._lock:
            self._connected = True
            self._subscribed = self._want
            if self._want:
                filters.append((self.alert_filter, SubscribeOptions(qos=0)))
        client.subscribe(filters)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._connected = False
            self._subscribed = False

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._post(LiveMessage(message.topic, bytes(message.payload)))
