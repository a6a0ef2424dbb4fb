"""MQTT uplink: drains the durable outbox to the broker at QoS 1 and keeps the agent's retained Status.

Delivery is at-least-once: a row leaves the outbox only on its PUBACK; on a lost connection the
rows in flight are forgotten and sent again after reconnecting (consumers de-duplicate by alert
id). Alerts drain before summaries, and the bytes of summaries in flight are capped, so a backlog
never holds a live alert back by more than about `max_inflight_bytes` on the wire.

Threads: one uplink thread owns all state (in-flight map, counters, the current connection);
paho's network thread (`loop_start`) only queues events (CONNACK, PUBACK, disconnect) and wakes
it. Every connection attempt uses a fresh paho client, so nothing of an old connection (message
ids, paho's own resend queue) leaks into the next one; reconnects are paced by `backoff_delays`.
The will is the retained `offline` Status, so a killed agent shows offline within the broker's
keepalive; its `ts` is the time the connection was made.

A client-id takeover (another client connecting with our client id, again and again: a cloned SD
card; see `edge_agent.takeover`) is named in one ERROR line and the uplink reconnects under an id
of its own (`<id>-<8 hex>`), so the two stop throwing each other off and flapping the retained
status; if the broker refuses that id, it goes back to the configured one with connections
`TAKEOVER_HOLD` x `reconnect_max_s` apart. `client_id_taken_over` stays true meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.outbox import Outbox, OutboxError
from edge_agent.takeover import TAKEOVERS_NEEDED, TakeoverWatch
from lifeline.backoff import LogThrottle, backoff_delays, held_note
from lifeline.config import MqttSettings
from lifeline.contract import Status, status_topic
from lifeline.errors import ConfigError
from lifeline.mqtt import describe_connect_error, describe_refusal, stop_loop, tls_context

log = logging.getLogger(__name__)

#: Share of stop()'s timeout kept for the offline status and the disconnect, at most this long.
_STOP_RESERVE_S: Final = 0.5
#: How long a connection attempt may wait for the broker's CONNACK.
_CONNACK_TIMEOUT_S: Final = 10.0
#: TCP connect timeout of one attempt.
_CONNECT_TIMEOUT_S: Final = 5.0
#: Pause before retrying the outbox after it failed to read or write.
_OUTBOX_RETRY_S: Final = 1.0
#: A connection that lasted this long resets the backoff; shorter ones (flapping) keep backing off.
_STABLE_AFTER_S: Final = 10.0
#: What to check when the broker refuses the client id.
_ID_HINT: Final = "check mqtt.client_id; is another agent using the same id?"
#: While another client takes our client id (`edge_agent.takeover`) and the broker refuses an id
#: of our own, connections are this many times `mqtt.reconnect_max_s` apart (jittered).
TAKEOVER_HOLD: Final = (1.0, 2.0)

EventKind = Literal["connack", "puback", "disconnect"]


@dataclass(frozen=True, slots=True)
class _Event:
    """Something paho's network thread saw, handed to the uplink thread."""

    kind: EventKind
    client: mqtt.Client
    reason: ReasonCode | None = None
    mid: int = 0


@dataclass(frozen=True, slots=True)
class _InFlight:
    row_id: int
    summary_bytes: int


@dataclass(frozen=True, slots=True)
class UplinkCounters:
    """What the uplink adds to the Status map (besides the outbox's backlog and drops)."""

    connected: bool
    reconnects: int
    published: int
    inflight: int


def _plain(value: Any) -> Any:
    """NumPy scalars (common in counters) as Python numbers, so MessagePack can pack them."""
    if isinstance(value, (str, bytes, int, float, bool, list, dict, type(None))):
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else value


class Uplink:
    """Publishes outbox rows and the agent's retained Status over MQTT, reconnecting forever."""

    def __init__(self, settings: MqttSettings, *, agent_id: str, outbox: Outbox,
                 status: Callable[[], dict[str, Any]], max_inflight: int = 200,
                 status_interval_s: float = 10.0, max_inflight_bytes: int = 512 * 1024,
                 reconnect_initial_s: float = 0.5,
                 sleep: Callable[[float], object] | None = None,
                 rng: random.Random | None = None) -> None:
        """Check TLS files and the password now (ConfigError naming the key if unreadable).

        `max_inflight_bytes` caps summary bytes in flight so live alerts are not queued behind a
        backlog; `reconnect_initial_s` is the first backoff delay (the cap is
        `settings.reconnect_max_s`); `sleep(delay)` waits between attempts (default: until the
        delay passes or stop()) and `rng` seeds the jitter, so tests run fast and repeatably.
        """
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self.settings = settings
        self.agent_id = agent_id
        self.configured_client_id = settings.client_id or agent_id
        #: The configured id, or one of our own after another client kept taking it.
        self.client_id = self.configured_client_id
        self._own_id_refused_before = False
        self.status_topic = status_topic(settings.prefix, agent_id)
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.status_interval_s = status_interval_s
        self._outbox = outbox
        self._status = status
        self._reconnect_initial_s = min(reconnect_initial_s, settings.reconnect_max_s)
        self._rng = rng or random.Random()
        self._tls = tls_context(settings) if settings.tls else None
        if not settings.tls and (settings.ca_file or settings.cert_file):
            log.warning("mqtt.ca_file/cert_file are set but mqtt.url %s is not mqtts://: TLS is off",
                        settings.url)
        self._password = settings.resolved_password()
        self._sleep = sleep or self._stop_requested_wait
        self._throttle = LogThrottle()
        # Cross-thread signals.
        self._events: deque[_Event] = deque()
        self._wake_event = threading.Event()
        self._stop_requested = threading.Event()
        self._connected = threading.Event()
        self._progress = threading.Condition()
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None
        # Owned by the uplink thread.
        self._inflight: dict[int, _InFlight] = {}
        #: Rows not to publish again: those in flight and those delivered but not yet deleted.
        self._inflight_rows: set[int] = set()
        self._delivered: list[int] = []
        self._inflight_summary_bytes = 0
        self._status_mids: set[int] = set()
        self._connections = 0
        self._published = 0
        self._takeover = TakeoverWatch()

    # ------------------------------------------------------------------ public API

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.settings.tls else 'mqtt'}://{self.settings.host}:{self.settings.port}"

    @property
    def connected(self) -> bool:
        """True between the broker's CONNACK and the loss of that connection."""
        return self._connected.is_set()

    def start(self) -> None:
        """Start the background thread that connects, publishes and reconnects."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"uplink-{self.agent_id}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New rows were appended to the outbox: publish them now."""
        self._wake_event.set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected (True) or `timeout_s` passed (False)."""
        return self._connected.wait(timeout_s)

    def wait_drained(self, timeout_s: float) -> bool:
        """Block until the outbox is empty and nothing is in flight (True) or `timeout_s` passed."""
        with self._progress:
            return self._progress.wait_for(self._is_drained, timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Drain what fits in `timeout_s`, publish the retained `offline` Status, disconnect.

        Returns within `timeout_s` + 1 s even when the broker is gone; what was not delivered
        stays in the outbox for the next start.
        """
        thread = self._thread
        if thread is None:
            return
        reserve = min(_STOP_RESERVE_S, timeout_s / 4)
        self._stop_deadline = time.monotonic() + max(timeout_s - reserve, 0.0)
        self._stop_requested.set()
        self._wake_event.set()
        thread.join(timeout_s + 0.8)
        if thread.is_alive():
            log.warning("uplink to %s did not stop within %.1f s; leaving it behind", self.url, timeout_s)

    @property
    def client_id_taken_over(self) -> bool:
        """Another client keeps taking this uplink's client id (see `edge_agent.takeover`); stays
        true while we use an id of our own because of it."""
        return self._takeover.suspected or self.client_id != self.configured_client_id

    @property
    def takeovers(self) -> int:
        """Connections lost to another client with the same client id."""
        return self._takeover.takeovers

    def counters(self) -> UplinkCounters:
        """The uplink's own counters, as merged into the Status map."""
        return UplinkCounters(connected=self.connected, reconnects=max(self._connections - 1, 0),
                              published=self._published, inflight=len(self._inflight))

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: object) -> None:
        self._push(_Event("connack", client, reason))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: object) -> None:
        self._push(_Event("disconnect", client, reason))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode,
                    properties: object) -> None:
        self._push(_Event("puback", client, reason, mid))

    def _push(self, event: _Event) -> None:
        self._events.append(event)
        self._wake_event.set()

    # ------------------------------------------------------------------ uplink thread

    def _stop_requested_wait(self, delay_s: float) -> object:
        return self._stop_requested.wait(delay_s)

    def _new_delays(self) -> Iterator[float]:
        return backoff_delays(initial_s=self._reconnect_initial_s, cap_s=self.settings.reconnect_max_s,
                              rng=self._rng)

    def _run(self) -> None:
        delays = self._new_delays()
        while not self._stop_requested.is_set():
            try:
                connected_s, reason = self._session()
            except Exception:  # a bug here must not silently end delivery of alerts: log, back off, retry
                log.exception("uplink to %s failed unexpectedly; reconnecting", self.url)
                self._connected.clear()
                self._forget_inflight()
                connected_s, reason = None, "internal error (see the traceback above)"
            if self._stop_requested.is_set():
                break
            if connected_s is not None and connected_s >= _STABLE_AFTER_S:
                delays = self._new_delays()
            if connected_s is None:
                self._takeover.failed_attempt()
                if self._own_id_refused(reason):
                    delays = self._new_delays()
                delay = self._held_delay() if self._takeover.suspected else next(delays)
                self._log_failed_attempt(reason, delay)
            elif self._taken_over(reason):
                delay = self._held_delay() if self.client_id == self.configured_client_id else next(delays)
            else:
                delay = next(delays)
                log.info("lost connection to %s: %s; reconnecting in %.1f s", self.url, reason, delay)
            self._sleep(delay)
        with self._progress:
            self._progress.notify_all()

    def _held_delay(self) -> float:
        """While the configured id is taken over and we must keep it: connections this far apart."""
        cap = self.settings.reconnect_max_s
        return self._rng.uniform(cap * TAKEOVER_HOLD[0], cap * TAKEOVER_HOLD[1])

    def _taken_over(self, reason: str) -> bool:
        """Feed the takeover watch the lost connection; on a takeover say so once and move to a
        client id of our own (rate-limited notes after that)."""
        was = self._takeover.suspected
        suspected, up_s = self._takeover.lost()
        if not suspected:
            return False
        if not was and self.client_id == self.configured_client_id and not self._own_id_refused_before:
            own = f"{self.configured_client_id}-{uuid.uuid4().hex[:8]}"
            log.error("uplink to %s: client id %r lost its connection %d times in a row, each within %.0f s "
                      "of connecting, each time let straight back in: another client is connecting with the "
                      "same client id (a cloned SD card, or a second cabinet with this agent.id or "
                      "mqtt.client_id?). Reconnecting as %r so neither flaps the retained status; give each "
                      "agent its own agent.id (status fault client_id_in_use)", self.url, self.client_id,
                      TAKEOVERS_NEEDED, self._takeover.short_s, own)
            self.client_id = own
            self._throttle.reset("takeover")
            self._throttle.allow("takeover")
            return True
        held = self._throttle.allow("takeover")
        if held is not None:
            log.warning("uplink to %s: client id %r taken over again after %.0f s (%d times so far: %s)%s",
                        self.url, self.client_id, up_s, self._takeover.takeovers, reason, held_note(held))
        return True

    def _own_id_refused(self, reason: str) -> bool:
        """A broker that refuses our own client id (its ACL may tie rights to client ids): back to
        the configured one, with connections `TAKEOVER_HOLD` x reconnect_max_s apart."""
        if self.client_id == self.configured_client_id or not reason.startswith("refused"):
            return False
        log.error("uplink to %s: the broker refuses client id %r (%s); back to %r, reconnecting every "
                  "%.0f-%.0f s while another client takes it", self.url, self.client_id, reason,
                  self.configured_client_id, *(self.settings.reconnect_max_s * h for h in TAKEOVER_HOLD))
        self.client_id = self.configured_client_id
        self._own_id_refused_before = True
        return True

    def _log_failed_attempt(self, reason: str, delay: float) -> None:
        refused = reason.startswith("refused")
        key = "refused" if refused else "unreachable"
        held = self._throttle.allow(key)
        if held is None:
            return
        level = logging.ERROR if refused else logging.WARNING
        log.log(level, "cannot connect to %s: %s; retrying in %.1f s%s", self.url, reason, delay,
                held_note(held))

    def _session(self) -> tuple[float | None, str]:
        """One connection from attempt to loss: (seconds it was up, None if never; why it ended)."""
        try:
            client = self._new_client()
        except (ValueError, OSError) as exc:
            return None, describe_connect_error(exc)
        try:
            client.connect(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket errors are OSErrors
            return None, describe_connect_error(exc)
        client.loop_start()
        refusal = self._await_connack(client)
        if refusal is not None:
            client.disconnect()  # closes the socket if the broker has not already
            stop_loop(client, 0.5)
            return None, refusal
        self._on_connected()
        up_since = time.monotonic()
        reason = ""
        try:
            reason = self._pump(client)
        finally:
            self._end_session(client, graceful=not reason)
        return time.monotonic() - up_since, reason

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True, protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.connect_timeout = _CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(self.max_inflight + 16)
        if self.settings.username or self._password:
            client.username_pw_set(self.settings.username, self._current_password())
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _current_password(self) -> str | None:
        """Re-read the password (a rotated password_file takes effect on the next connect)."""
        try:
            self._password = self.settings.resolved_password()
        except ConfigError as exc:
            held = self._throttle.allow("password")
            if held is not None:
                log.error("%s; using the password read before%s", exc, held_note(held))
        return self._password

    def _await_connack(self, client: mqtt.Client) -> str | None:
        """None once the broker accepted us, else why not."""
        deadline = time.monotonic() + _CONNACK_TIMEOUT_S
        while True:
            self._wake_event.clear()
            while self._events:
                event = self._events.popleft()
                if event.client is not client:
                    continue
                if event.kind == "connack":
                    if event.reason is not None and not event.reason.is_failure:
                        return None
                    return "refused by the broker: " + describe_refusal(
                        event.reason, self.settings, id_hint=_ID_HINT)
                if event.kind == "disconnect":
                    return f"closed before CONNACK: {event.reason}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"no CONNACK within {_CONNACK_TIMEOUT_S:.0f} s"
            if self._stop_requested.is_set():
                return "stopping"
            self._wake_event.wait(remaining)

    def _on_connected(self) -> None:
        self._connections += 1
        self._takeover.connected()
        self._throttle.reset("unreachable")
        self._throttle.reset("refused")
        self._connected.set()
        backlog = self._outbox.counters()
        log.info("connected to %s as %s (backlog: %d alerts, %d summaries)", self.url, self.client_id,
                 backlog.pending_alerts, backlog.pending_summaries)

    def _pump(self, client: mqtt.Client) -> str:
        """Publish and ack until the connection is lost (returns why) or stop() is done draining ('')."""
        self._publish_status(client, "online")
        next_status = time.monotonic() + self.status_interval_s
        retry_at = 0.0
        while True:
            self._wake_event.clear()
            lost = self._handle_events(client)
            if lost is not None:
                return lost
            now = time.monotonic()
            if now >= retry_at:  # after an outbox failure, pause before touching it again
                outbox_ok = self._fill_window(client) and not self._delivered
                retry_at = 0.0 if outbox_ok else now + _OUTBOX_RETRY_S
            if now >= next_status:
                self._publish_status(client, "online")
                next_status = now + self.status_interval_s
            with self._progress:
                self._progress.notify_all()
            wait_s = next_status - now
            if retry_at > now:
                wait_s = min(wait_s, retry_at - now)
            if self._stop_requested.is_set():
                if self._is_drained() or now >= self._stop_deadline:
                    return ""
                wait_s = min(wait_s, self._stop_deadline - now)
            self._wake_event.wait(max(wait_s, 0.0))

    def _handle_events(self, client: mqtt.Client) -> str | None:
        """Ack PUBACKed rows in one batch; return the reason if the connection was lost."""
        delivered: list[int] = []
        lost: str | None = None
        while self._events:
            event = self._events.popleft()
            if event.client is not client:
                continue
            if event.kind == "disconnect":
                lost = str(event.reason) if event.reason is not None else "connection closed"
                if lost == "Unspecified error":  # what paho reports for a socket closed under it
                    lost = "connection closed by the broker or the network"
            elif event.kind == "puback":
                entry = self._inflight.pop(event.mid, None)
                if entry is None:
                    self._status_mids.discard(event.mid)
                    continue
                self._inflight_summary_bytes -= entry.summary_bytes
                delivered.append(entry.row_id)
        self._published += len(delivered)
        self._delivered += delivered
        self._ack_delivered()
        return lost

    def _ack_delivered(self) -> bool:
        """Delete delivered rows; on failure keep them excluded from publishing and retry later."""
        if not self._delivered:
            return True
        try:
            self._outbox.ack(self._delivered)
        except OutboxError as exc:
            self._warn("ack", f"cannot remove delivered messages, will retry: {exc}")
            return False
        self._inflight_rows.difference_update(self._delivered)
        self._delivered = []
        return True

    def _fill_window(self, client: mqtt.Client) -> bool:
        """Publish pending rows into the free in-flight slots; False if the outbox failed."""
        free = self.max_inflight - len(self._inflight)
        if free <= 0:
            return True
        try:
            rows = self._outbox.peek(free, self._inflight_rows,
                                     summary_bytes=self.max_inflight_bytes - self._inflight_summary_bytes)
        except OutboxError as exc:
            self._warn("peek", f"cannot read the outbox: {exc}")
            return False
        for row_id, message in rows:
            info = client.publish(message.topic, message.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # the connection is going down; its disconnect event follows
            size = len(message.payload) if message.priority == "summary" else 0
            self._inflight[info.mid] = _InFlight(row_id, size)
            self._inflight_rows.add(row_id)
            self._inflight_summary_bytes += size
        return True

    def _publish_status(self, client: mqtt.Client, state: Literal["online", "offline"]) -> int | None:
        info = client.publish(self.status_topic, self._status_payload(state), qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        self._status_mids.add(info.mid)
        return info.mid

    def _status_payload(self, state: Literal["online", "offline"]) -> bytes:
        """The Status map: the runtime's counters, then the uplink's and the outbox's."""
        ts = int(time.time() * 1000)
        own = self._own_status(state)
        try:
            runtime = {key: _plain(value) for key, value in self._status().items()}
            return Status(self.agent_id, state, ts, extra={**runtime, **own}).encode()
        except Exception as exc:  # noqa: BLE001 (a broken status callback must not stop the uplink)
            self._warn("status", f"status callback failed ({type(exc).__name__}: {exc}); "
                                 f"sending the uplink's counters only")
        return Status(self.agent_id, state, ts, extra=own).encode()

    def _own_status(self, state: str) -> dict[str, Any]:
        backlog = self._outbox.counters()
        mine = self.counters()
        return {
            "connected": state == "online", "reconnects": mine.reconnects,
            "published": mine.published, "inflight": mine.inflight,
            "backlog": backlog.pending, "backlog_alerts": backlog.pending_alerts,
            "backlog_summaries": backlog.pending_summaries,
            "dropped": backlog.dropped, "dropped_alerts": backlog.dropped_alerts,
            "dropped_summaries": backlog.dropped_summaries, "outbox_bytes": backlog.bytes_on_disk,
            "takeovers": self._takeover.takeovers, "client_id": self.client_id,
        }

    def _end_session(self, client: mqtt.Client, *, graceful: bool) -> None:
        """Forget what was in flight (it stays in the outbox); on stop, say offline and disconnect."""
        self._connected.clear()
        if graceful:
            self._say_goodbye(client)
        else:
            stop_loop(client, 0.5)
        self._forget_inflight()
        with self._progress:
            self._progress.notify_all()

    def _forget_inflight(self) -> None:
        """Rows in flight will be sent again; delivered rows awaiting deletion stay excluded."""
        self._inflight.clear()
        self._inflight_rows = set(self._delivered)
        self._inflight_summary_bytes = 0
        self._status_mids.clear()

    def _say_goodbye(self, client: mqtt.Client) -> None:
        deadline = max(self._stop_deadline, time.monotonic()) + _STOP_RESERVE_S * 0.6
        mid = self._publish_status(client, "offline")
        while mid is not None and mid in self._status_mids and time.monotonic() < deadline:
            self._wake_event.clear()
            if self._handle_events(client) is not None:
                break
            if mid in self._status_mids:
                self._wake_event.wait(max(deadline - time.monotonic(), 0.0))
        client.disconnect()
        stop_loop(client, max(deadline - time.monotonic(), 0.1))
        pending = self._outbox.counters().pending
        log.info("disconnected from %s (stopped; %d message(s) left in the outbox)", self.url, pending)

    def _is_drained(self) -> bool:
        return not self._inflight and self._outbox.counters().pending == 0

    def _warn(self, key: str, message: str) -> None:
        held = self._throttle.allow(key)
        if held is not None:
            log.warning("uplink %s: %s%s", self.url, message, held_note(held))


__all__ = ["Uplink", "UplinkCounters"]
