"""The gateway's paho-mqtt overrides (`gateway.pahofast`): pinned to the paho internals they rely
on, and equal in behaviour to stock paho on the wire, at packet boundaries and across reconnects."""

from __future__ import annotations

import hashlib
import inspect
import random
import socket
import struct
import threading
from collections.abc import Iterator

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.pahofast import READ_SIZE, SUPPORTED_PAHO, FastClient, UnsupportedPaho, check_paho_version
from simulators.servers import MosquittoServer

#: sha256 (first 16 hex digits) of the source of every paho internal that `FastClient` overrides
#: or relies on, as of paho-mqtt 2.2.0. A mismatch means paho changed: re-read the new source,
#: check `gateway/pahofast.py` against it, then update the digest and `SUPPORTED_PAHO`.
PAHO_INTERNALS = {
    "Client._packet_read": "bbe32d8af1e37955",
    "Client._packet_handle": "ac4c129ed409db42",
    "Client._handle_publish": "1bbaa3ef0e3afc6d",
    "Client._handle_pubackcomp": "04d39ba283b1f3be",
    "Client._do_on_publish": "5bbcad6f9447107a",
    "Client.publish": "5c00cd3dcebceaae",
    "Client._send_publish": "4edd21dd50f58a28",
    "Client._packet_queue": "e298fa9ab31e5f79",
    "Client._packet_write": "d097b7b51bed128d",
    "Client._sock_recv": "c3b9043a46dd81b7",
    "Client._sock_close": "638e9c4e5a7f32ae",
    "Client.reconnect": "3ecdf1a8299e8c8a",
    "Client._messages_reconnect_reset_out": "464a42c69618a49b",
    "Client._handle_connack": "39267140212c8b5f",
    "Client.loop_read": "4fa11ca2d451dbec",
    "Client.loop_write": "57c360e5ae749fd9",
    "Client.ack": "92f83b7a84a46b21",
    "Client._send_puback": "bb015cefb632f942",
    "Client._mid_generate": "55fc1e4a5f1584fb",
    "Client._raise_for_invalid_topic": "985dad9e15a6396a",
    "Client._loop_rc_handle": "ee5ad3b7849433a4",
    "Client.want_write": "dc5eaf22e9d3a4ca",
    "MQTTMessage.__init__": "af92f9a50f5f90e4",
    "MQTTMessageInfo._set_as_published": "6e546f718e97af44",
}


def _digest(dotted: str) -> str:
    obj: object = mqtt
    for part in dotted.split("."):
        obj = getattr(obj, part)
    source = inspect.getsource(obj)  # type: ignore[arg-type]
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def test_installed_paho_is_a_supported_version() -> None:
    check_paho_version()
    assert paho.mqtt.__version__.startswith(SUPPORTED_PAHO)


def test_other_paho_versions_are_refused_loudly() -> None:
    with pytest.raises(UnsupportedPaho, match="paho-mqtt 2.3.0 is installed"):
        check_paho_version("2.3.0")


@pytest.mark.parametrize("name", sorted(PAHO_INTERNALS))
def test_paho_internals_are_the_ones_the_overrides_were_checked_against(name: str) -> None:
    assert _digest(name) == PAHO_INTERNALS[name], (
        f"paho-mqtt's {name} changed: re-check gateway/pahofast.py against it"
    )


# ------------------------------------------------------------------ packets over a socket pair


def publish_packet(
    topic: str, payload: bytes, mid: int, *, dup: bool = False, props: bytes = b"\0"
) -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode() + struct.pack("!H", mid) + props + payload
    return bytes([0x32 | (0x08 if dup else 0)]) + _varint(len(body)) + body


def puback_packet(mid: int, reason: int | None = None) -> bytes:
    body = struct.pack("!H", mid) + (b"" if reason is None else bytes([reason, 0]))
    return bytes([0x40, len(body)]) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Wired:
    """A FastClient whose socket is one end of a socket pair; the test plays the broker."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.pubacks: list[int] = []
        self.slow_messages: list[MQTTMessage] = []
        self.slow_pubacks: list[tuple[int, ReasonCode]] = []
        self.client = FastClient(
            "test-wired",
            on_fast_message=lambda t, p, m, d: self.messages.append((t, p, m, d)),
            on_fast_puback=self.pubacks.append,
        )
        self.client.on_message = lambda c, u, msg: self.slow_messages.append(msg)
        self.client.on_publish = lambda c, u, mid, rc, props: self.slow_pubacks.append((mid, rc))
        self.client.on_socket_register_write = lambda c, u, s: None
        self.broker, ours = socket.socketpair()
        ours.setblocking(False)
        self.client._sock = ours
        self.client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED

    def feed(self, data: bytes) -> None:
        self.broker.sendall(data)
        while _readable(self.client.socket()):
            self.client.loop_read()

    def written(self) -> bytes:
        self.client.flush_queued()
        self.client.loop_write()
        self.broker.setblocking(False)
        try:
            return self.broker.recv(1 << 20)
        except BlockingIOError:
            return b""
        finally:
            self.broker.setblocking(True)

    def close(self) -> None:
        self.broker.close()
        self.client._sock_close()


def _readable(sock: socket.socket | None) -> bool:
    import select

    return sock is not None and bool(select.select([sock], [], [], 0)[0])


@pytest.fixture
def wired() -> Iterator[Wired]:
    rig = Wired()
    yield rig
    rig.close()


def test_read_once_takes_one_buffer_however_many_publishes_are_in_flight(wired: Wired) -> None:
    """paho's own loop_read reads once per message in flight while data comes: with a backlog
    streaming in, the worker would not get back to its acks and mailbox for seconds."""
    for i in range(500):  # our publishes in flight (paho's loop_read would read up to 500 times)
        wired.client.publish_qos1(f"ops/t/{i}", b"x")
    packet = publish_packet("alert/d/s/S", bytes(200), 1)
    backlog = packet * (4 * READ_SIZE // len(packet))
    wired.broker.sendall(backlog[: 2 * READ_SIZE])  # within a socket pair's buffer
    wired.client.read_once()
    taken = len(wired.messages)
    assert 0 < taken <= READ_SIZE // len(packet) + 1  # one recv of at most READ_SIZE bytes
    while _readable(wired.client.socket()):
        wired.client.read_once()
    assert len(wired.messages) == 2 * READ_SIZE // len(packet)


def test_publishes_split_at_every_byte_arrive_whole_and_in_order(wired: Wired) -> None:
    rng = random.Random(6)
    sent = [
        (
            f"lifeline/v1/alert/d{i}/s/S{i}",
            rng.randbytes(rng.choice([0, 1, 127, 128, 300, 20000])),
            i + 1,
        )
        for i in range(40)
    ]
    stream = b"".join(publish_packet(t, p, m, dup=m % 3 == 0) for t, p, m in sent)
    stream += puback_packet(9)  # unknown mid: ignored, as paho ignores it
    cut = 0
    while cut < len(stream):
        step = rng.choice([1, 1, 2, 3, 5, 64, 1000, 30000])
        wired.feed(stream[cut : cut + step])
        cut += step
    assert wired.messages == [(t, p, m, m % 3 == 0) for t, p, m in sent]
    assert not wired.slow_messages and not wired.pubacks and not wired.client._rbuf


def test_packets_with_properties_or_refusals_take_paho_s_own_path(wired: Wired) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("origin", "test")
    mid = wired.client.publish_qos1("lifeline/v1/ops/city/d1", b"x")
    refused = wired.client.publish_qos1("lifeline/v1/ops/city/d2", b"y")
    wired.written()
    wired.feed(
        publish_packet("lifeline/v1/status/a1", b"status", 7, props=props.pack())
        + puback_packet(mid, 0x10)  # no matching subscribers: a success
        + puback_packet(refused, 0x87)  # not authorized
    )
    assert [(m.topic, m.payload, m.mid, m.qos) for m in wired.slow_messages] == [
        ("lifeline/v1/status/a1", b"status", 7, 1)
    ]
    assert wired.pubacks == [mid]
    assert [(m, rc.is_failure) for m, rc in wired.slow_pubacks] == [(refused, True)]
    assert not wired.client._out_messages and wired.client._inflight_messages == 0


def test_our_publish_and_puback_bytes_equal_stock_paho_s() -> None:
    stock = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stock", protocol=mqtt.MQTTv5)
    stock.on_socket_register_write = lambda c, u, s: None
    for payload in (b"", b"p" * 10, b"q" * 200, b"r" * 70000):
        for retain in (False, True):
            rig = Wired()
            try:
                mid = rig.client.publish_qos1("lifeline/v1/ops/township/d1", payload, retain=retain)
                rig.client.queue_puback(513)
                ours = rig.written()
                stock._sock = socket.socket()  # only checked for None: nothing is sent
                stock._out_packet.clear()
                stock._send_publish(mid, b"lifeline/v1/ops/township/d1", payload, 1, retain)
                stock._send_puback(513)
                theirs = b"".join(bytes(p["packet"]) for p in stock._out_packet)
                stock._sock.close()
                assert ours == theirs
            finally:
                rig.close()


def test_nothing_of_an_old_connection_reaches_the_next_one(wired: Wired) -> None:
    mid = wired.client.publish_qos1("lifeline/v1/ops/city/d1", b"routed")
    wired.client.queue_puback(41)
    wired.feed(publish_packet("lifeline/v1/alert/d1/s/S1", b"half", 42)[:7])
    wired.client._sock_close()  # the connection drops before any of it was written
    assert not wired.client._wbuf and not wired.client._rbuf
    # paho still holds the publish and re-sends it (DUP) after the next CONNACK
    wired.client._messages_reconnect_reset_out()
    message = wired.client._out_messages[mid]
    assert message.dup and message.state == mqtt.mqtt_ms_publish and message.topic.endswith("d1")
    # acks and publishes made while disconnected write nothing; the publish waits for CONNACK
    wired.client.queue_puback(43)
    later = wired.client.publish_qos1("lifeline/v1/ops/city/d2", b"later")
    assert not wired.client._wbuf
    assert wired.client._out_messages[later].state == mqtt.mqtt_ms_publish


# ------------------------------------------------------------------ against Mosquitto


@pytest.mark.integration
def test_routes_and_acks_survive_a_reconnect_with_a_real_broker(broker: MosquittoServer) -> None:
    """Deliveries acked through the fast path are gone from the session; unacked ones come back,
    and an ops publish made while the connection was down reaches the subscriber."""
    prefix = "test/link-paho-reconnect"
    got: list[tuple[str, bytes, int, bool]] = []
    arrived = threading.Condition()

    def on_fast(topic: str, payload: bytes, mid: int, dup: bool) -> None:
        with arrived:
            got.append((topic, payload, mid, dup))
            arrived.notify_all()

    def wait_for(count: int) -> None:
        with arrived:
            assert arrived.wait_for(lambda: len(got) >= count, timeout=30), got

    synced = threading.Event()
    client = FastClient(
        "test-link-paho", on_fast_message=on_fast, on_fast_puback=lambda mid: synced.set()
    )
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    client.subscribe(f"{prefix}/in/#", qos=1)
    client.loop_start()

    ops = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="test-link-paho-ops", protocol=mqtt.MQTTv5
    )
    ops_got: list[bytes] = []
    ops_event = threading.Event()
    ops.on_message = lambda c, u, m: (ops_got.append(m.payload), ops_event.set())
    ops.connect("127.0.0.1", broker.port)
    ops.subscribe(f"{prefix}/ops/#", qos=1)
    ops.loop_start()

    pub = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="test-link-paho-pub", protocol=mqtt.MQTTv5
    )
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        for i in range(10):
            pub.publish(f"{prefix}/in/{i}", f"m{i}".encode(), qos=1).wait_for_publish(10)
        wait_for(10)
        client.loop_stop()  # from here this thread drives paho
        for _, _, mid, _ in got[:5]:
            client.queue_puback(mid)
        client.flush_queued()  # written at once: no network thread, no write callback
        # The broker handles packets in order: once it acknowledged this publish it has taken
        # the PUBACKs before it (a close right after writing may lose them, with stock paho too).
        client.publish_qos1(f"{prefix}/sync", b"")
        client.flush_queued()
        client.loop_start()
        assert synced.wait(30)
        client.loop_stop()
        client.disconnect()  # the first five are acked, the last five are not
        client.publish_qos1(f"{prefix}/ops/city", b"while away")
        client.reconnect()
        client.loop_start()
        wait_for(15)
        again = sorted(p for _, p, _, _ in got[10:])
        assert again == [b"m5", b"m6", b"m7", b"m8", b"m9"]
        assert all(dup for *_, dup in got[10:])
        assert ops_event.wait(30) and ops_got == [b"while away"]
    finally:
        for c in (client, ops, pub):
            c.loop_stop()
            c.disconnect()
