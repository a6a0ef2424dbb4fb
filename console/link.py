"""The console's MQTT side (aiomqtt): alerts from `P/ops/+/+`, agent statuses from `P/status/+`,
other instances' case events from `P/case/+`; and the publishing of this instance's case events.

The session is persistent (fixed client id, clean_session off) and ops alerts are acknowledged
to the broker only after the database committed them, so an alert the console did not keep is
sent again, never lost. Reconnecting is an outer loop around the connection, with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
import msgpack

from lifeline.backoff import LogThrottle, backoff_delays, held_note
from lifeline.config import MqttSettings
from lifeline.contract import Alert, Status, decode_alert, decode_status
from lifeline.errors import DecodeError
from lifeline.mqtt import describe_connect_error, tls_context

log = logging.getLogger("lifeline.console.mqtt")

VERSION: Final = 1


def case_topic(prefix: str, district: str) -> str:
    """`P/case/{district}`: every step of the district's cases, as the consoles record them."""
    return f"{prefix}/case/{district}"


@dataclass(frozen=True, slots=True)
class OpsAlert:
    """An alert taken off an ops topic, with what is needed to acknowledge it after commit."""

    alert: Alert
    mid: int
    qos: int
    #: The connection it came on: an acknowledgement goes to that connection or nowhere.
    epoch: int
    #: time.monotonic() when it was taken off the connection.
    received: float


@dataclass
class LinkCounters:
    received: int = 0
    malformed: int = 0
    statuses: int = 0
    published: int = 0
    remote_events: int = 0
    connects: int = 0


class Link:
    """One persistent MQTT connection, reconnecting forever until `stop`."""

    def __init__(self, settings: MqttSettings, *, client_id: str, origin: str,
                 on_alert: Callable[[OpsAlert], Awaitable[None]],
                 on_status: Callable[[Status | None, str], None],
                 on_remote_case: Callable[[int], None]) -> None:
        self.settings = settings
        self.prefix = settings.prefix
        self.client_id = client_id
        self.origin = origin
        self._on_alert = on_alert
        self._on_status = on_status
        self._on_remote_case = on_remote_case
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.counters = LinkCounters()
        self._throttle = LogThrottle(30.0)

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        client = aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.resolved_password(),
            identifier=self.client_id, clean_session=False, keepalive=s.keepalive_s,
            tls_context=tls_context(s) if s.tls else None, max_queued_outgoing_messages=100_000)
        # aiomqtt 2 has no manual-ack option; the paho client under it does. An ops alert is
        # acknowledged only once the database holds it (see `ack`).
        client._client.manual_ack_set(True)  # noqa: SLF001
        return client

    async def run(self) -> None:
        """Connect, subscribe, read; on any connection failure wait (backoff) and do it again."""
        delays = backoff_delays(initial_s=0.5, cap_s=self.settings.reconnect_max_s)
        while True:
            try:
                client = self._make_client()
                async with client:
                    self.client = client
                    self.counters.connects += 1
                    await client.subscribe([(f"{self.prefix}/ops/+/+", 1), (f"{self.prefix}/status/+", 1),
                                            (f"{self.prefix}/case/+", 1)])
                    self.connected.set()
                    log.info("connected to %s as %s", self.settings.url, self.client_id)
                    delays = backoff_delays(initial_s=0.5, cap_s=self.settings.reconnect_max_s)
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                cause = exc.__cause__ or exc.__context__
                reason = describe_connect_error(cause) if isinstance(cause, OSError) else str(exc)
                held = self._throttle.allow("connect")
                if held is not None:
                    log.warning("MQTT %s: %s; reconnecting%s", self.settings.url, reason, held_note(held))
            finally:
                self.connected.clear()
                self.client = None
            await asyncio.sleep(next(delays))

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, (bytes, bytearray)) else b""
        kind = topic[len(self.prefix) + 1:].split("/", 1)[0]
        if kind == "ops":
            try:
                alert = decode_alert(payload)
            except DecodeError as exc:
                self.counters.malformed += 1
                held = self._throttle.allow("malformed")
                if held is not None:
                    log.warning("dropped a malformed alert on %s: %s%s", topic, exc, held_note(held))
                self.ack(message.mid, message.qos, self.counters.connects)
                return
            self.counters.received += 1
            await self._on_alert(OpsAlert(alert, message.mid, message.qos, self.counters.connects, time.monotonic()))
            return
        try:
            if kind == "status":
                self.counters.statuses += 1
                agent = topic.rsplit("/", 1)[1]
                self._on_status(decode_status(payload) if payload else None, agent)
            elif kind == "case":
                event = msgpack.unpackb(payload, raw=False)
                if isinstance(event, dict) and event.get("origin") != self.origin and type(event.get("case")) is int:
                    self.counters.remote_events += 1
                    self._on_remote_case(event["case"])
        except (DecodeError, ValueError, TypeError, msgpack.UnpackException) as exc:
            held = self._throttle.allow(kind)
            if held is not None:
                log.warning("ignored a bad %s message on %s: %s%s", kind, topic, exc, held_note(held))
        finally:
            self.ack(message.mid, message.qos, self.counters.connects)

    def ack(self, mid: int, qos: int, epoch: int) -> None:
        """Acknowledge a message received on connection `epoch` (QoS 1), once it is safe.

        A message of an earlier connection is not acknowledged: the broker sends it again.
        """
        client = self.client
        if client is not None and qos > 0 and epoch == self.counters.connects:
            with contextlib.suppress(Exception):  # gone with its connection: the broker re-sends
                client._client.ack(mid, qos)  # noqa: SLF001

    async def publish(self, topic: str, payload: bytes) -> bool:
        """Publish at QoS 1 and wait for the broker's acknowledgement; False if not connected."""
        client = self.client
        if client is None or not self.connected.is_set():
            return False
        try:
            await client.publish(topic, payload, qos=1, timeout=10)
        except aiomqtt.MqttError:
            return False
        self.counters.published += 1
        return True


def case_event_payload(row: Any, origin: str) -> bytes:
    """The `P/case/{district}` message of one case event."""
    msg: dict[str, Any] = {
        "v": VERSION, "id": f"{origin}:{row.id}", "case": row.case_id, "action": row.action,
        "actor": row.actor, "at": row.at, "detail": json.loads(row.detail) if row.detail else {},
        "state": row.state, "level": row.level, "tier": row.tier, "category": row.category,
        "sensor": row.sensor, "rule": row.rule, "kind": row.kind, "site": row.site,
        "township": row.township, "district": row.district, "version": row.version, "origin": origin,
    }
    return msgpack.packb(msg, use_bin_type=True)


__all__ = ["Link", "OpsAlert", "case_event_payload", "case_topic"]
