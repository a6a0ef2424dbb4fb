"""A paho-mqtt client with a buffered receive path and lean QoS 1 fast paths for the gateway.

Stock paho-mqtt 2.2 reads every packet with three or more `recv` calls (command byte,
remaining-length bytes one at a time, body) and builds an `MQTTMessage` (with a
`threading.Condition`), a `Properties` and a `ReasonCode` object per packet; it writes each
queued packet with its own `send`. For the gateway's traffic (per alert: one QoS 1 PUBLISH in,
its PUBACK out, one to three PUBLISHes out and their PUBACKs in) that is most of its CPU.
`FastClient` overrides exactly these internals and leaves everything else to paho:

- `_packet_read`: one `recv` of up to `READ_SIZE` bytes into a buffer, then every complete
  packet in it is handled. A QoS 1 PUBLISH without properties and a PUBACK with reason
  "success" and no properties take a fast path (`on_fast_message`, `on_fast_puback`); every
  other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, a PUBLISH with properties, a refused
  PUBACK, ...) is put into paho's `_in_packet` and handled by paho's own `_packet_handle`.
- `publish_qos1` / `queue_puback`: build the packet bytes directly into one write buffer that
  `flush_queued` hands to paho's write queue as a single packet (one `send` per round).
  A publish is still registered in paho's `_out_messages`, so paho re-sends it after a
  reconnect exactly as it would its own (same mid, DUP set).
- `_sock_close`: also drops both buffers, so no byte of an old connection (a PUBACK with an old
  message id, half a packet) ever reaches a new one.
- `read_once`: one turn of paho's `loop_read` (which loops up to once per message in flight for
  as long as data comes, seconds while a broker streams a backlog).

Supported paho-mqtt versions: `SUPPORTED_PAHO`; any other version makes `FastClient` refuse to
be built, and `tests/test_gateway_link_paho.py` pins the source of every paho internal relied
on, so an upgrade fails loudly instead of misbehaving.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTErrorCode, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import MessageState

#: paho-mqtt versions whose internals this module was checked against (major.minor prefixes).
SUPPORTED_PAHO: Final = ("2.2.",)
#: Bytes asked of the socket per `recv`: about 350 alerts, a few milliseconds of work.
READ_SIZE: Final = 64 * 1024

_PUBLISH: Final = 0x30
_PUBACK: Final = 0x40
_QOS1_PUBLISH: Final = 0x32  # PUBLISH, QoS 1, not DUP, not retained
_PUBACK_PACKET: Final = struct.Struct("!BBH")
_U16: Final = struct.Struct("!H")
_MID_NO_PROPS: Final = struct.Struct("!HB")
#: Fixed headers of QoS 1 publishes with a one-byte remaining length, by retain flag and length.
_PUBLISH_HEAD: Final = tuple(
    tuple(bytes((_QOS1_PUBLISH | retain, n)) for n in range(128)) for retain in (0, 1)
)
#: Most topics whose encoded form is kept (the gateway publishes to a few dozen).
_TOPIC_CACHE: Final = 4096
_WAIT_FOR_PUBACK: Final = MessageState.MQTT_MS_WAIT_FOR_PUBACK
_PUBLISH_STATE: Final = MessageState.MQTT_MS_PUBLISH

FastMessage = Callable[[str, bytes, int, bool], None]
"""`on_fast_message(topic, payload, mid, dup)` for a QoS 1 PUBLISH without properties."""
FastPuback = Callable[[int], None]
"""`on_fast_puback(mid)` for a successful PUBACK of one of our QoS 1 publishes."""


class UnsupportedPaho(RuntimeError):
    """The installed paho-mqtt is not a version `FastClient` was checked against."""


def check_paho_version(version: str = paho.mqtt.__version__) -> None:
    """Raise UnsupportedPaho unless `version` is one of `SUPPORTED_PAHO`."""
    if not version.startswith(SUPPORTED_PAHO):
        raise UnsupportedPaho(
            f"gateway.pahofast overrides paho-mqtt internals checked against paho-mqtt "
            f"{', '.join(v + 'x' for v in SUPPORTED_PAHO)}; paho-mqtt {version} is installed. "
            "Install a supported version, or re-check the overrides "
            "(tests/test_gateway_link_paho.py)."
        )


class _Untracked(MQTTMessageInfo):
    """Shared `info` of our fast publishes: nobody waits on them, so no Condition per message."""

    __slots__ = ()

    def _set_as_published(self) -> None:
        pass


_UNTRACKED: Final = _Untracked(0)


def _message(
    mid: int, topic: bytes, payload: bytes, retain: bool, state: MessageState
) -> MQTTMessage:
    """An `MQTTMessage` as paho's `publish` makes it, without its per-message Condition."""
    message = MQTTMessage.__new__(MQTTMessage)
    message.timestamp = 0.0
    message.state = state
    message.dup = False
    message.mid = mid
    message._topic = topic
    message.payload = payload
    message.qos = 1
    message.retain = retain
    message.info = _UNTRACKED
    message.properties = None
    return message


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class FastClient(mqtt.Client):
    """paho's MQTT 5 client with a buffered receive path and QoS 1 fast paths (see module doc)."""

    def __init__(
        self,
        client_id: str,
        *,
        on_fast_message: FastMessage,
        on_fast_puback: FastPuback,
        reconnect_on_failure: bool = False,
    ) -> None:
        check_paho_version()
        super().__init__(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=reconnect_on_failure,
        )
        # `publish_qos1` sends at once, as paho does without an in-flight limit: the caller
        # keeps within the server's Receive Maximum.
        self.max_inflight_messages_set(0)
        self._on_fast_message = on_fast_message
        self._on_fast_puback = on_fast_puback
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._topics: dict[str, bytes] = {}

    def message_callback_add(self, sub: str, callback: mqtt.CallbackOnMessage) -> None:
        """Not supported: the fast path hands every QoS 1 message to `on_fast_message`."""
        raise NotImplementedError("FastClient delivers every message to on_fast_message")

    # ------------------------------------------------------------------ writing

    def publish_qos1(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 without properties, like `publish`; returns the message id.

        Call it from the thread that drives the client (the message id is taken without paho's
        lock, which guards against `publish` from several threads).
        """
        topic_bytes = self._topics.get(topic)
        if topic_bytes is None:
            topic_bytes = topic.encode()
            self._raise_for_invalid_topic(topic_bytes)
            if len(self._topics) >= _TOPIC_CACHE:
                self._topics.clear()
            self._topics[topic] = topic_bytes
        out = self._out_messages
        if len(out) >= 65535:
            raise RuntimeError("65535 publishes in flight: no message id is free")
        mid = self._last_mid
        while True:  # paho would fail a publish whose id is still in flight; take the next free
            mid = mid + 1 if mid < 65535 else 1
            if mid not in out:
                break
        self._last_mid = mid
        if self._sock is None:  # paho's connack handler sends it once connected
            out[mid] = _message(mid, topic_bytes, payload, retain, _PUBLISH_STATE)
            return mid
        out[mid] = _message(mid, topic_bytes, payload, retain, _WAIT_FOR_PUBACK)
        self._inflight_messages += 1
        remaining = len(topic_bytes) + len(payload) + 5
        self._wbuf += b"".join(
            (
                _PUBLISH_HEAD[retain][remaining]
                if remaining < 128
                else bytes([_QOS1_PUBLISH | retain]) + _remaining_length(remaining),
                _U16.pack(len(topic_bytes)),
                topic_bytes,
                _MID_NO_PROPS.pack(mid, 0),
                payload,
            )
        )
        return mid

    def queue_puback(self, mid: int) -> None:
        """Acknowledge a QoS 1 delivery (reason success) with the next `flush_queued`."""
        if self._sock is not None:
            self._wbuf += _PUBACK_PACKET.pack(_PUBACK, 2, mid)

    def flush_queued(self) -> None:
        """Hand what `publish_qos1` and `queue_puback` built to paho's write queue as one packet."""
        if self._wbuf and self._sock is not None:
            body = bytes(self._wbuf)
            self._wbuf.clear()
            # Command 0 is no MQTT packet type: paho's writer treats the bytes as opaque.
            self._packet_queue(0, body, 0, 0)

    def _sock_close(self) -> None:
        self._rbuf.clear()
        self._wbuf.clear()
        super()._sock_close()

    # ------------------------------------------------------------------ reading

    def read_once(self) -> MQTTErrorCode:
        """One buffered `recv` with every complete packet in it handled: one turn of paho's
        `loop_read`. paho's own `loop_read` goes on reading, up to once per message in flight,
        while data keeps coming: with thousands of publishes in flight and a broker streaming a
        backlog that keeps the caller (the gateway's worker: its acks, timers and mailbox) away
        for seconds."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        rc = self._packet_read()
        if rc > 0:
            return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_read(self) -> MQTTErrorCode:
        try:
            chunk = self._sock_recv(READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not chunk:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        buf = self._rbuf
        buf += chunk
        return self._handle_buffered()

    def _handle_buffered(self) -> MQTTErrorCode:
        """Handle every complete packet at the start of the read buffer; keep the rest."""
        buf = self._rbuf
        size = len(buf)
        pos = 0
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            while size - pos >= 2:
                command = buf[pos]
                head = pos + 1
                length = 0
                shift = 0
                complete = False
                while head < size:
                    byte = buf[head]
                    head += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift >= 28:  # more than 4 length bytes: not MQTT
                        return MQTTErrorCode.MQTT_ERR_PROTOCOL
                if not complete:
                    break
                end = head + length
                if end > size:
                    break
                body = bytes(buf[head:end])
                pos = end  # handled even if a callback raises: never handed over twice
                rc = self._handle_one(command, body)
                if rc or self._sock is None:
                    break
        finally:
            if self._sock is None:
                buf.clear()  # the connection closed while handling; its bytes are gone with it
            elif pos:
                del buf[:pos]
        return rc

    def _handle_one(self, command: int, body: bytes) -> MQTTErrorCode:
        kind = command & 0xF0
        if kind == _PUBLISH and (command & 0x06) == 0x02 and len(body) > 2:
            topic_end = 2 + ((body[0] << 8) | body[1])
            if len(body) > topic_end + 2 and body[topic_end + 2] == 0:  # no properties
                try:
                    topic = body[2:topic_end].decode()
                except UnicodeDecodeError:
                    return self._handle_by_paho(command, body)
                mid = (body[topic_end] << 8) | body[topic_end + 1]
                self._on_fast_message(topic, body[topic_end + 3 :], mid, bool(command & 0x08))
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        elif kind == _PUBACK and self._max_inflight_messages == 0 and (
            # success or "no matching subscribers" (0x10): below 0x80, and no properties
            len(body) == 2 or (body[2] < 0x80 and (len(body) == 3 or body[3] == 0))
        ):
            mid = (body[0] << 8) | body[1]
            message = self._out_messages.pop(mid, None)
            if message is not None:
                self._inflight_messages -= 1
                message.info._set_as_published()
                self._on_fast_puback(mid)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._handle_by_paho(command, body)

    def _handle_by_paho(self, command: int, body: bytes) -> MQTTErrorCode:
        """Hand one packet to paho's own handler, as paho's `_packet_read` would."""
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = self._packet_handle()
        except mqtt.MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        return rc
