"""The gateway's broker connection: MQTT 5, persistent session, manual acks, shared subscriptions.

- A stable client id per gateway and `clean_start = False` with a session expiry interval: a
  gateway that restarts (or is killed) gets back every message it had not acknowledged, plus
  what arrived meanwhile.
- `manual_ack`: paho leaves PUBACKs to us; the worker sends them once the store has the data.
- Receive Maximum on CONNECT caps the unacknowledged deliveries the broker sends us; the rest
  wait at the broker, so a store outage costs the gateway bounded memory.
- Alerts and summaries are taken through `$share/{group}/...` so gateways of one group split
  them; statuses are taken by every gateway without sharing (they are few, retained, and every
  gateway's registry wants all of them; writing one twice writes the same point).

paho runs on the caller's thread through its external-loop API (`read_once`: one turn of
`loop_read`; `loop_write`, `loop_misc` after a `select`), not on a thread of its own: every
callback then runs on the worker thread and goes straight into the pipeline, with no queue and
no contention for the GIL between two busy threads, which roughly doubles the messages per second paho can take.
The client is `pahofast.FastClient`, paho's client with a buffered receive path and lean QoS 1
fast paths (acks and ops publishes are built into one buffer, written once per round): about a
quarter of stock paho's CPU per alert. Reconnects are paced by `backoff_delays`.
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import GatewaySection
from gateway.events import Connected, Disconnected, Event, Inbound, PublishAcked
from gateway.pahofast import FastClient
from lifeline.backoff import LogThrottle, backoff_delays, held_note
from lifeline.config import MqttSettings
from lifeline.contract import subscription
from lifeline.mqtt import describe_connect_error, describe_refusal, tls_context

log = logging.getLogger(__name__)

#: MQTT's largest Receive Maximum.
MAX_RECEIVE_MAXIMUM: Final = 65535
#: Socket reads (each up to `pahofast.READ_SIZE` bytes) in one go before the worker looks at
#: its clock and sends what is due.
_READ_BURST: Final = 4
#: Longest a `step` blocks, so keepalive pings and reconnects stay on time.
_MAX_WAIT_S: Final = 1.0
#: A connection that lasted this long resets the reconnect backoff.
_STABLE_AFTER_S: Final = 10.0
#: MQTT 5 DISCONNECT reason: another client connected with this client id (brokers that send it;
#: Mosquitto 2.0.11 closes the connection without a reason).
_SESSION_TAKEN_OVER: Final = 142
#: What to check when the broker refuses the client id.
_ID_HINT: Final = "check mqtt.client_id / gateway.id: is another gateway using the same id?"


def _pending(sock: object) -> bool:
    """TLS sockets may hold decrypted bytes that select() cannot see."""
    pending = getattr(sock, "pending", None)
    return bool(pending and pending())


def _drain(fd: int) -> None:
    try:
        os.read(fd, 4096)
    except BlockingIOError:
        pass


def select_links(links: list[tuple[BrokerLink, bool]], timeout_s: float, wake_fd: int) -> list[bool]:
    """One `select` over several links' sockets (with whether to read each) and `wake_fd`, then
    each link handles its share; returns, per link, whether its socket had no more to read."""
    readers: list[Any] = [wake_fd]
    writers: list[Any] = []
    wait = max(0.0, min(timeout_s, _MAX_WAIT_S))
    for link, read in links:
        r, w, most = link.wait_set(read)
        readers += r
        writers += w
        wait = min(wait, most)
    readable, _, _ = select.select(readers, writers, [], wait)
    if wake_fd in readable:
        _drain(wake_fd)
    return [link.after_select(readable, read) for link, read in links]


def registry_topic(prefix: str, gateway: str) -> str:
    """`P/registry/{gateway}`: this gateway's retained registry snapshot (an extra topic)."""
    return f"{prefix}/registry/{gateway}"


def subscriptions(prefix: str, share_group: str) -> list[str]:
    """Topic filters: alerts and summaries shared across the group (if any), statuses not."""
    shared = [subscription(prefix, "alert"), subscription(prefix, "summary")]
    if share_group:
        shared = [f"$share/{share_group}/{f}" for f in shared]
    return [*shared, subscription(prefix, "status")]


def client_id_for(mqtt_settings: MqttSettings, gateway: GatewaySection) -> str:
    """The stable client id of this gateway: `mqtt.client_id`, else `lifeline-gw-{gateway.id}`."""
    return mqtt_settings.client_id or f"lifeline-gw-{gateway.id}"


class BrokerLink:
    """Owns the paho client and drives it from `step()`; hands every event to `on_event`."""

    def __init__(
        self,
        settings: MqttSettings,
        gateway: GatewaySection,
        on_event: Callable[[Event], None],
        *,
        will: tuple[str, bytes] | None = None,
        rng: random.Random | None = None,
        client_id: str | None = None,
        clean_start: bool = False,
        session_expiry_s: int | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id or client_id_for(settings, gateway)
        self.filters = subscriptions(settings.prefix, gateway.share_group)
        self.receive_maximum = min(gateway.max_inflight, MAX_RECEIVE_MAXIMUM)
        self._clean_start = clean_start
        self._session_expiry_s = (
            gateway.session_expiry_s if session_expiry_s is None else session_expiry_s
        )
        self._on_event = on_event
        self._epoch = 0
        self._throttle = LogThrottle(30.0)
        self._rng = rng or random.Random()
        self._delays: Iterator[float] = self._new_delays()
        self._next_attempt = 0.0
        self._connected_at: float | None = None
        self._client = self._make_client(will)

    @property
    def epoch(self) -> int:
        """Number of the current (or last) accepted connection; 0 before the first."""
        return self._epoch

    @property
    def connected(self) -> bool:
        return self._connected_at is not None

    def _new_delays(self) -> Iterator[float]:
        return backoff_delays(
            initial_s=0.5,
            cap_s=self.settings.reconnect_max_s,
            factor=2.0,
            jitter=0.5,
            rng=self._rng,
        )

    def _make_client(self, will: tuple[str, bytes] | None) -> FastClient:
        client = FastClient(
            self.client_id,
            on_fast_message=self._on_fast_message,
            on_fast_puback=self._on_fast_puback,
        )
        # No paho limit on our publishes in flight (its limiter rescans every in-flight message
        # on each PUBACK); the pipeline keeps within the server's Receive Maximum itself.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if self.settings.username:
            client.username_pw_set(self.settings.username, self.settings.resolved_password())
        if self.settings.tls:
            client.tls_set_context(tls_context(self.settings))
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        # Registering for write interest keeps paho from writing inside publish()/ack(); `step`
        # writes everything queued once per round.
        client.on_socket_register_write = lambda c, u, s: None
        client.on_socket_unregister_write = lambda c, u, s: None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=self._clean_start,
            properties=props,
        )
        return client

    # ------------------------------------------------------------------ driving paho

    def step(self, timeout_s: float, wake_fd: int, *, read: bool = True) -> bool:
        """Wait up to `timeout_s` for broker traffic or `wake_fd`, handle what came in.

        With `read` False the socket is not read (back-pressure: the broker keeps what it has
        not sent); queued packets are still written. Returns True when the socket had no more
        data to read (the pipeline may treat the inbound side as idle). One link alone; the
        service drives the session and the live lane together with `select_links`.
        """
        return select_links([(self, read)], timeout_s, wake_fd)[0]

    def wait_set(self, read: bool) -> tuple[list[Any], list[Any], float]:
        """What to select on for this link (readers, writers) and how long it may wait at most."""
        client = self._client
        sock = client.socket()
        if sock is None:
            return [], [], max(0.0, min(self._next_attempt - time.monotonic(), _MAX_WAIT_S))
        if read and _pending(sock):
            return [], [], 0.0  # TLS holds decrypted bytes select() cannot see: read them now
        return ([sock] if read else []), ([sock] if client.want_write() else []), _MAX_WAIT_S

    def after_select(self, readable: list[Any], read: bool) -> bool:
        """Handle this link's share of a select (read, write, keepalive, reconnect); True when
        its socket had no more data to read."""
        client = self._client
        sock = client.socket()
        if sock is None:
            if time.monotonic() >= self._next_attempt:
                self._attempt_connect()
            return True
        drained = True
        if read and (sock in readable or _pending(sock)):
            drained = self._read(sock)
        self.flush()
        client.loop_misc()
        return drained

    def _read(self, sock: Any) -> bool:
        client = self._client
        for _ in range(_READ_BURST):
            client.read_once()  # one buffered recv, every complete packet in it handled
            if client.socket() is None:
                return True
            if not _pending(sock) and not select.select([sock], [], [], 0)[0]:
                return True
        return False

    def flush(self) -> None:
        """Write every packet queued (acks, publishes), in one `send` where the socket takes it."""
        client = self._client
        client.flush_queued()
        if client.socket() is not None and client.want_write():
            client.loop_write()

    def _attempt_connect(self) -> None:
        try:
            self._client.reconnect()
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket errors are OSErrors
            delay = next(self._delays)
            self._next_attempt = time.monotonic() + delay
            held = self._throttle.allow("connect")
            if held is not None:
                log.warning(
                    "cannot connect to broker %s: %s; retrying in %.1f s%s",
                    self.settings.url,
                    describe_connect_error(exc),
                    delay,
                    held_note(held),
                )
            return
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> None:
        """Make the first connection attempt (later ones happen in `step`)."""
        self._attempt_connect()

    def stop(self) -> None:
        """Disconnect cleanly (the session, with anything unacknowledged, stays at the broker)."""
        self._connected_at = None  # our own goodbye is not a lost connection
        if self._client.socket() is not None:
            self._client.flush_queued()  # acks queued so far leave before the DISCONNECT
            self._client.disconnect()
            self.flush()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 (paho resends it after a reconnect); returns the message id."""
        return self._client.publish_qos1(topic, payload, retain=retain)

    def ack(self, mid: int, qos: int, epoch: int) -> bool:
        """Acknowledge a delivery of connection `epoch`; False (nothing sent) if it is gone."""
        if epoch != self._epoch or qos == 0 or self._connected_at is None:
            return False
        if qos == 1:
            self._client.queue_puback(mid)
        else:
            self._client.ack(mid, qos)
        return True

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if (
            reason.is_failure
        ):  # the broker closes the connection next: _on_disconnect paces the retry
            held = self._throttle.allow("refused")
            if held is not None:
                log.error(
                    "broker %s refused the connection as %s: %s; retrying%s",
                    self.settings.url,
                    self.client_id,
                    describe_refusal(reason, self.settings, id_hint=_ID_HINT),
                    held_note(held),
                )
            return
        self._throttle.reset("refused")
        self._throttle.reset("connect")
        self._mark_connected()
        server_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        log.info(
            "connected to %s as %s (session %s); subscribing to %s",
            self.settings.url,
            self.client_id,
            "resumed" if flags.session_present else "new",
            ", ".join(self.filters),
        )
        if server_max and int(server_max) < self.receive_maximum:
            log.warning(
                "broker %s takes at most %d unacknowledged publishes from this gateway (its "
                "Receive Maximum); Mosquitto derives it from max_inflight_messages, which also "
                "caps what it sends us unacknowledged: below gateway.max_inflight (%d) it costs "
                "throughput (a store round trip per %d messages). Raise max_inflight_messages.",
                self.settings.url,
                int(server_max),
                self.receive_maximum,
                int(server_max),
            )
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.filters])
        self._on_event(
            Connected(
                self._epoch,
                flags.session_present,
                int(server_max) if server_max else MAX_RECEIVE_MAXIMUM,
            )
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason == _SESSION_TAKEN_OVER:
            log.error("the broker handed this gateway's session to another client with the same client "
                      "id %s (%s); two gateways with one id keep disconnecting each other and split "
                      "its queue: give each its own [gateway] id", self.client_id, _ID_HINT)
        if self._note_disconnected():
            self._on_event(Disconnected(str(reason)))

    def _mark_connected(self) -> None:
        """A connection was accepted: count it (`epoch`)."""
        self._connected_at = time.monotonic()
        self._epoch += 1

    def _note_disconnected(self) -> bool:
        """The connection is gone: pace the next attempt; True if it had been accepted."""
        now = time.monotonic()
        if self._connected_at is not None and now - self._connected_at >= _STABLE_AFTER_S:
            self._delays = self._new_delays()
        was_connected = self._connected_at is not None
        self._connected_at = None
        self._next_attempt = now + next(self._delays)
        return was_connected

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for topic_filter, reason in zip(self.filters, reasons):
            if reason.is_failure:
                log.error(
                    "broker refused the subscription %s: %s (check the broker's ACL for %s)",
                    topic_filter,
                    reason,
                    self.client_id,
                )

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._on_event(
            Inbound(
                message.topic,
                bytes(message.payload),  # the same object when it is bytes already
                message.mid,
                message.qos,
                bool(message.dup),
                self._epoch,
            )
        )

    def _on_fast_message(self, topic: str, payload: bytes, mid: int, dup: bool) -> None:
        self._on_event(Inbound(topic, payload, mid, 1, dup, self._epoch))

    def _on_fast_puback(self, mid: int) -> None:
        self._on_event(PublishAcked(mid))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        refused = reason.is_failure
        self._on_event(PublishAcked(mid, refused, str(reason) if refused else ""))
