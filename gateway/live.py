"""The live lane: a second broker connection for what must not wait behind this gateway's backlog.

The gateway's persistent session delivers in order, so after a restart into a backlog (or while a
slow store keeps its receive maximum used up) a new alert waits behind everything queued before
it: a million queued alerts are a minute or more of drain. The live lane is a clean-session
connection (client id `{client id}-live`, QoS 0 subscriptions) that the broker does not queue for:

- it subscribes to `P/status/+` for good: every retained status arrives within milliseconds of
  connecting, so the registry knows every agent before the session's backlog reaches its alerts;
- while the pipeline says the session is behind (`want_alerts(True)`; so from the start, as a
  restart may resume a backlog) it also subscribes to the alert topics (shared as
  `$share/{group}-live/...` when the gateway is in a share group), and the pipeline routes those
  alerts at once. The session's copy of each alert is stored later, without routing it again;
- while the session is behind, the routes of the backlog are published here (`publish`): on the
  session's connection the broker's PUBACKs of our publishes queue behind the backlog it sends
  us, and Mosquitto 2.0.11 sends a resumed session far more than its Receive Maximum, so waiting
  for them there would mean reading the whole backlog into memory. With their PUBACKs on this
  lane the gateway can stop reading the session (back-pressure) while it holds its receive
  maximum.

Nothing taken here is acknowledged, stored or dead-lettered: the session stays the record, so a
message lost on this lane costs only latency. It is a `BrokerLink` like the session (the same
`FastClient` on the worker thread, one `select` for both, see `link.select_links`): its messages
and PUBACKs go straight into the pipeline as `LiveMessage` and `PublishAcked` of lane 1.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from lifeline.config import MqttSettings
from lifeline.contract import subscription
from gateway.config import GatewaySection
from gateway.events import Event, LiveMessage, PublishAcked
from gateway.link import BrokerLink, client_id_for

log = logging.getLogger(__name__)

#: Lane number of the live lane in `PublishAcked` and the ack ledger (0 is the session).
LIVE: int = 1


def live_alert_filter(prefix: str, share_group: str) -> str:
    """The live lane's alert subscription: shared among the live lanes of one share group."""
    plain = subscription(prefix, "alert")
    return f"$share/{share_group}-live/{plain}" if share_group else plain


class LiveLane(BrokerLink):
    """The live lane's connection: clean session, statuses always, alerts while asked for."""

    def __init__(
        self,
        settings: MqttSettings,
        gateway: GatewaySection,
        on_event: Callable[[Event], None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            settings,
            gateway,
            on_event,
            rng=rng,
            client_id=f"{client_id_for(settings, gateway)}-live",
            clean_start=True,
            session_expiry_s=0,
        )
        self.status_filter = subscription(settings.prefix, "status")
        self.alert_filter = live_alert_filter(settings.prefix, gateway.share_group)
        self._want = True  # the session may resume a backlog: take alerts here from the start
        self._subscribed = False
        self.ready = False  # connected and subscribed: it misses nothing published from now on

    @property
    def alerts_on(self) -> bool:
        """Whether the alert subscription is asked for."""
        return self._want

    def want_alerts(self, on: bool) -> None:
        """Take alerts over this lane (the session is behind), or stop taking them."""
        self._want = on
        if not self.connected or on == self._subscribed:
            return
        self._subscribed = on
        if on:
            self._client.subscribe(self.alert_filter, options=SubscribeOptions(qos=0))
            log.info("session behind: taking live alerts on %s meanwhile", self.alert_filter)
        else:
            self._client.unsubscribe(self.alert_filter)

    def stop(self) -> None:
        """Disconnect (a clean session: nothing stays at the broker)."""
        super().stop()
        self.ready = False

    # ------------------------------------------------------------------ paho callbacks

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
                    "broker refused the live lane %s: %s; live alerts wait behind a backlog "
                    "until it connects",
                    self.client_id,
                    reason,
                )
            return
        self._throttle.reset("refused")
        self._throttle.reset("connect")
        self._mark_connected()
        filters = [(self.status_filter, SubscribeOptions(qos=0))]
        self._subscribed = self._want
        if self._want:
            filters.append((self.alert_filter, SubscribeOptions(qos=0)))
        client.subscribe(filters)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error(
                "broker refused a subscription of the live lane %s (check its ACL)", self.client_id
            )
        self.ready = True

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.ready = False
        self._subscribed = False
        self._note_disconnected()  # no Disconnected event: that is the session's

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._on_event(LiveMessage(message.topic, bytes(message.payload)))

    def _on_fast_message(self, topic: str, payload: bytes, mid: int, dup: bool) -> None:
        self._on_event(LiveMessage(topic, payload))  # QoS 0 subscriptions: not expected

    def _on_fast_puback(self, mid: int) -> None:
        self._on_event(PublishAcked(mid, lane=LIVE))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        refused = reason.is_failure
        self._on_event(PublishAcked(mid, refused, str(reason) if refused else "", LIVE))
