"""MQTT transport: RawBlocks (float32 bin, t0/dt/seq) on `P/raw/{sensor}` through one paho client.

The publish loop does per block only what must be per block: slice, pack one small MessagePack
map, hand it to paho. Backpressure: every `TRACK_EVERY`-th message's delivery is tracked and
the publisher waits for the oldest tracked one once more than `max_pending` messages are
unconfirmed (QoS 1) or unsent (QoS 0), so a fast replay never outruns the socket by more than
that and memory stays bounded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack
import numpy as np
import paho.mqtt.client as mqtt

from lifeline.config import MqttSettings
from lifeline.contract.topics import raw_topic
from lifeline.mqtt import make_client
from simulators.transports.base import F32Array, TransportError, present_runs

#: One delivery in this many is tracked for backpressure and flushing.
TRACK_EVERY: Final = 64
_SEQ_MASK: Final = 0xFFFFFFFF


@dataclass
class PublishCounters:
    """What a publisher has handed to paho, and what paho refused."""

    messages: int = 0
    bytes: int = 0
    refused: int = 0


class MqttPublisher:
    """A connected paho client publishing at QoS 0 or 1 with bounded unconfirmed messages."""

    def __init__(self, settings: MqttSettings, *, client_id: str, qos: Literal[0, 1] = 1,
                 max_pending: int = 20_000, max_inflight: int = 1000) -> None:
        self.settings = settings
        self.qos = qos
        self.max_pending = max(max_pending, TRACK_EVERY)
        self.counters = PublishCounters()
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._tracked: deque[mqtt.MQTTMessageInfo] = deque()
        self._last: mqtt.MQTTMessageInfo | None = None
        self.client = make_client(settings, client_id)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
        else:
            self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._connected.clear()

    def connect(self, timeout_s: float = 10.0) -> MqttPublisher:
        """Connect and start the network thread; TransportError if the broker is not there in time."""
        s = self.settings
        try:
            self.client.connect(s.host, s.port, keepalive=s.keepalive_s)
        except OSError as exc:
            raise TransportError(f"cannot connect to the broker {s.url}: {exc}") from exc
        self.client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._connected.wait(0.05):
            if self._refusal is not None or time.monotonic() > deadline:
                self.client.loop_stop()
                why = self._refusal or f"no CONNACK within {timeout_s:g} s"
                raise TransportError(f"broker {s.url} did not accept the simulator: {why}")
        return self

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one message; waits first while too many are still unconfirmed."""
        info = self.client.publish(topic, payload, qos=self.qos)
        self._last = info
        c = self.counters
        c.messages += 1
        c.bytes += len(payload)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and self.qos == 0:
            c.refused += 1
        if c.messages % TRACK_EVERY == 0:
            self._tracked.append(info)
            self._wait_room()

    def _wait_room(self) -> None:
        tracked = self._tracked
        while tracked and _settled(tracked[0]):
            tracked.popleft()
        while len(tracked) * TRACK_EVERY > self.max_pending:
            oldest = tracked[0]
            if not _settled(oldest):
                try:
                    oldest.wait_for_publish(timeout=1.0)
                except (RuntimeError, ValueError):  # sent while disconnected: untrackable
                    pass
                if not _settled(oldest) and not self._connected.is_set():
                    self._connected.wait(1.0)
                    continue
            tracked.popleft()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every message is sent (QoS 0) or acknowledged (QoS 1)."""
        deadline = time.monotonic() + timeout_s
        tracked = list(self._tracked) + ([self._last] if self._last is not None else [])
        for info in tracked:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                info.wait_for_publish(timeout=remaining)
            except (RuntimeError, ValueError):
                return False
            if not info.is_published():
                return False
        self._tracked.clear()
        return self._drained(deadline)

    def _drained(self, deadline: float) -> bool:
        """True once paho's outgoing queue is empty (QoS 0 has no acknowledgement to wait for)."""
        while self.client.want_write():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)  # paho offers no event for an empty socket queue
        return True

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


class RawBlockSink:
    """Sends blocks as RawBlocks of one publisher; sensor `i` publishes as `sensor_ids[i]`.

    `prefix` is one prefix for every sensor, or one per sensor.
    """

    def __init__(self, publisher: MqttPublisher, prefix: str | Sequence[str], sensor_ids: Sequence[str]) -> None:
        self.publisher = publisher
        self.sensor_ids = list(sensor_ids)
        prefixes = [prefix] * len(sensor_ids) if isinstance(prefix, str) else list(prefix)
        self.topics = [raw_topic(p, s) for p, s in zip(prefixes, sensor_ids, strict=True)]
        self.seq = [0] * len(sensor_ids)
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def send(self, sensor: int, values: F32Array, t0_ms: int, period_ms: float) -> int:
        """Publish the block; a run of NaN (a dropout) is left out and splits it in two."""
        if len(values) and not np.isnan(values).any():
            self._publish(sensor, values, t0_ms, period_ms)
            return len(values)
        sent = 0
        for start, stop in present_runs(values):
            self._publish(sensor, values[start:stop], t0_ms + round(start * period_ms), period_ms)
            sent += stop - start
        return sent

    def _publish(self, sensor: int, values: F32Array, t0_ms: int, period_ms: float) -> None:
        seq = self.seq[sensor]
        self.seq[sensor] = (seq + 1) & _SEQ_MASK
        payload = self._pack({
            "v": 1, "sensor": self.sensor_ids[sensor], "values": values.tobytes(), "t0": t0_ms,
            "dt": period_ms, "seq": seq,
        })
        self.publisher.publish(self.topics[sensor], payload)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every RawBlock has left (QoS 0) or been acknowledged (QoS 1)."""
        return self.publisher.flush(timeout_s)

    def close(self) -> None:
        """Nothing of its own: the publisher is closed by whoever made it."""


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """True once a message is out of our hands: acknowledged, or published while disconnected
    (paho then cannot track it, and re-sends a QoS 1 message itself after reconnecting)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True
