"""The agent's streaming frame decoder against frames made by the firmware reference."""

from __future__ import annotations

import random
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

import firmware_stubs
from edge_agent import frames as agent
from edge_agent.frames import (
    MAX_FRAME_SIZE,
    Frame,
    FrameCounters,
    FrameDecoder,
    Heartbeat,
    SampleFrame,
    crc16_modbus,
)
from firmware_stubs import (
    SensorNode,
    encode_float32_frame,
    encode_heartbeat,
    encode_int16_frame,
    write_frames,
)

if TYPE_CHECKING:
    from tests.conftest import PtyPair

seeded = settings(derandomize=True, deadline=None)

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
u8 = st.integers(0, 255)
period = st.integers(1, 2**32 - 1)
scales = st.sampled_from([1.0, 0.5, 0.01, 0.0001, 3.7e-5, 1234.5, -0.25])
int16s = st.lists(st.integers(-32768, 32767), min_size=1, max_size=1024)
float32s = st.lists(st.floats(width=32), min_size=1, max_size=1024)


def f32(x: float) -> float:
    """x as the float32 a frame carries, widened back."""
    return float(np.float32(x))


def decode_all(stream: bytes, chunk_sizes: Sequence[int] = ()) -> tuple[list[Frame], FrameDecoder]:
    """Feed `stream` in chunks cycling through `chunk_sizes` (one chunk if empty)."""
    decoder = FrameDecoder()
    out: list[Frame] = []
    for chunk in chunks(stream, chunk_sizes):
        out += decoder.feed(chunk)
    return out, decoder


def chunks(stream: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    """`stream` cut into pieces whose sizes cycle through `sizes`."""
    if not sizes:
        yield stream
        return
    pos, i = 0, 0
    while pos < len(stream):
        yield stream[pos : pos + sizes[i % len(sizes)]]
        pos += sizes[i % len(sizes)]
        i += 1


def assert_every_byte_accounted(decoder: FrameDecoder, good: Sequence[bytes], fed: int) -> None:
    """Bytes fed = bytes of good frames + garbage + still buffered."""
    c = decoder.counters
    assert c.frames + c.heartbeats == len(good)
    assert sum(map(len, good)) + c.garbage_bytes + decoder.buffered == fed


def corrupt(frame: bytes, offset: int, value: bytes) -> bytes:
    """`frame` with the bytes at `offset` replaced by `value`."""
    return frame[:offset] + value + frame[offset + len(value) :]


@st.composite
def wire_frames(draw: st.DrawFn) -> tuple[bytes, Frame]:
    """A frame as the firmware sends it and as the agent must decode it."""
    node, channel, seq = draw(u32), draw(u8), draw(u16)
    kind = draw(st.sampled_from(["int16", "float32", "heartbeat"]))
    if kind == "heartbeat":
        return encode_heartbeat(node, channel, seq), Heartbeat(node, channel, seq)
    period_us = draw(period)
    if kind == "int16":
        scale = draw(scales)
        raw = draw(st.lists(st.integers(-32768, 32767), min_size=1, max_size=64))
        values = np.array(raw, dtype=np.float64) * f32(scale)
        wire = encode_int16_frame(node, channel, seq, period_us, scale, raw)
    else:
        floats = draw(st.lists(st.floats(width=32), min_size=1, max_size=64))
        values = np.array(floats, dtype=np.float32).astype(np.float64)
        wire = encode_float32_frame(node, channel, seq, period_us, floats)
    return wire, SampleFrame(node, channel, seq, period_us, values)


garbage = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=40).map(lambda b: agent.MAGIC + b),
    st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\x01", b"\xa5\x5a\x01")),
    # A frame cut short, as when a node resets while sending: its header is valid.
    wire_frames().flatmap(lambda wf: st.integers(1, len(wf[0]) - 1).map(lambda k: wf[0][:k])),
)


def test_constants_agree_with_the_firmware_reference() -> None:
    for name in ("MAGIC", "VERSION", "TYPE_SAMPLES", "TYPE_HEARTBEAT", "FORMAT_INT16"):
        assert getattr(agent, name) == getattr(firmware_stubs, name)
    for name in ("FORMAT_FLOAT32", "MAX_SAMPLES", "HEADER_SIZE", "CRC_SIZE", "MAX_FRAME_SIZE"):
        assert getattr(agent, name) == getattr(firmware_stubs, name)


def test_agent_crc_check_value() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc16_modbus(np.frombuffer(b"123456789", dtype=np.uint8)) == 0x4B37
    assert crc16_modbus(b"") == 0xFFFF


@seeded
@given(st.binary(max_size=5000))
def test_agent_crc_equals_firmware_crc(data: bytes) -> None:
    assert crc16_modbus(data) == firmware_stubs.crc16_modbus(data)


@seeded
@given(u32, u8, u16, period, scales, int16s)
def test_int16_frame_round_trip(
    node: int, channel: int, seq: int, period_us: int, scale: float, raw: list[int]
) -> None:
    wire = encode_int16_frame(node, channel, seq, period_us, scale, raw)
    (frame,), decoder = decode_all(wire)
    assert isinstance(frame, SampleFrame)
    assert (frame.node, frame.channel, frame.seq, frame.period_us) == (
        node,
        channel,
        seq,
        period_us,
    )
    assert frame.values.dtype == np.float64
    np.testing.assert_array_equal(frame.values, np.array(raw, dtype=np.float64) * f32(scale))
    assert decoder.buffered == 0 and decoder.counters.frames == 1


@seeded
@given(u32, u8, u16, period, float32s)
def test_float32_frame_round_trip(
    node: int, channel: int, seq: int, period_us: int, values: list[float]
) -> None:
    wire = encode_float32_frame(node, channel, seq, period_us, values)
    (frame,), _ = decode_all(wire)
    assert frame == SampleFrame(
        node, channel, seq, period_us, np.array(values, dtype=np.float32).astype(np.float64)
    )


@seeded
@given(u32, u8, u16)
def test_heartbeat_round_trip(node: int, channel: int, seq: int) -> None:
    (frame,), decoder = decode_all(encode_heartbeat(node, channel, seq))
    assert frame == Heartbeat(node, channel, seq)
    assert decoder.counters.heartbeats == 1 and decoder.counters.frames == 0


def test_decoded_values_are_read_only() -> None:
    (frame,), _ = decode_all(encode_int16_frame(1, 0, 0, 1000, 0.5, [1, 2, 3]))
    assert isinstance(frame, SampleFrame)
    with pytest.raises(ValueError):
        frame.values[0] = 9.0


@seeded
@given(st.lists(wire_frames(), min_size=1, max_size=8), st.lists(st.integers(1, 300), max_size=20))
def test_any_chunking_gives_the_same_frames(
    sent: list[tuple[bytes, Frame]], chunk_sizes: list[int]
) -> None:
    stream = b"".join(wire for wire, _ in sent)
    out, decoder = decode_all(stream, chunk_sizes)
    assert out == [frame for _, frame in sent]
    assert decoder.buffered == 0 and decoder.counters.bad_frames == 0


def test_big_frames_fed_one_byte_at_a_time() -> None:
    rng = np.random.default_rng(7)
    node = SensorNode(9, fmt=firmware_stubs.FORMAT_FLOAT32)
    values = rng.normal(size=2 * 1024).tolist()
    stream = b"".join(node.frames_for(0, values))
    out, decoder = decode_all(stream, [1])
    assert [f.seq for f in out] == [0, 1]
    np.testing.assert_array_equal(
        np.concatenate([f.values for f in out if isinstance(f, SampleFrame)]),
        np.array(values, dtype=np.float32),
    )
    assert decoder.buffered == 0


@seeded
@given(
    st.lists(st.tuples(garbage, wire_frames()), min_size=1, max_size=6),
    garbage,
    st.lists(st.integers(1, 200), max_size=10),
)
def test_valid_frames_survive_garbage_between_them(
    pieces: list[tuple[bytes, tuple[bytes, Frame]]], tail: bytes, chunk_sizes: list[int]
) -> None:
    stream = b"".join(junk + wire for junk, (wire, _) in pieces) + tail
    out, decoder = decode_all(stream, chunk_sizes)
    assert out == [frame for _, (_, frame) in pieces]
    assert_every_byte_accounted(decoder, [wire for _, (wire, _) in pieces], len(stream))


GOOD = encode_int16_frame(17, 0, 1, 1000, 0.01, [10, 20, 30])
BEAT = encode_heartbeat(17, 0, 2)


@pytest.mark.parametrize(
    ("bad", "counter"),
    [
        (corrupt(GOOD, len(GOOD) - 1, bytes([GOOD[-1] ^ 0x01])), "bad_crc"),
        (corrupt(GOOD, 24, b"\x00\x80"), "bad_crc"),  # a sample hit by line noise
        (corrupt(GOOD, 20, b"\x00\x00"), "bad_length"),  # n = 0 for samples
        (corrupt(GOOD, 20, struct.pack("<H", 1025)), "bad_length"),
        (corrupt(BEAT, 20, b"\x03\x00"), "bad_length"),  # a heartbeat with samples
        (corrupt(GOOD, 2, b"\x02"), "bad_version"),
        (corrupt(GOOD, 3, b"\x07"), "bad_type"),
        (corrupt(GOOD, 15, b"\x03"), "bad_format"),
    ],
)
def test_a_bad_frame_is_counted_and_the_next_good_frame_decodes(bad: bytes, counter: str) -> None:
    stream = bad + GOOD + BEAT
    out, decoder = decode_all(stream, [5])
    assert [type(f) for f in out] == [SampleFrame, Heartbeat]
    assert out[0] == decode_all(GOOD)[0][0]
    refused = {k: v for k, v in decoder.counters.as_dict().items() if k.startswith("bad_")}
    assert refused == {k: int(k == counter) for k in refused}
    assert decoder.counters.truncated == 0
    assert decoder.counters.garbage_bytes == len(bad)


def test_a_frame_cut_short_does_not_hold_back_the_next_heartbeat() -> None:
    # A node resets mid-frame: the header promised 1000 samples, a heartbeat follows.
    node = SensorNode(4, frame_samples=1000)
    (big,) = node.frames_for(0, [1.0] * 1000)
    beat = node.heartbeat()
    decoder = FrameDecoder()
    assert decoder.feed(big[:100]) == []
    assert decoder.feed(beat) == [Heartbeat(4, 0, 1)]
    assert decoder.counters.truncated == 1
    assert decoder.buffered == 0


def test_a_frame_waits_for_its_tail() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(GOOD[:-1]) == []
    assert decoder.buffered == len(GOOD) - 1
    assert len(decoder.feed(GOOD[-1:])) == 1


@st.composite
def flipped_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with one byte changed by line noise."""
    wire, _ = draw(wire_frames())
    at = draw(st.integers(0, len(wire) - 1))
    return corrupt(wire, at, bytes([wire[at] ^ draw(st.integers(1, 255))]))


byte_streams = st.one_of(
    st.binary(max_size=6000),
    st.lists(
        st.one_of(garbage, flipped_frames(), wire_frames().map(lambda wf: wf[0])), max_size=20
    ).map(b"".join),
)


@seeded
@given(byte_streams, st.lists(st.integers(1, 700), max_size=10))
def test_arbitrary_bytes_never_raise(stream: bytes, chunk_sizes: list[int]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks(stream, chunk_sizes):
        decoder.feed(chunk)
        assert decoder.buffered < MAX_FRAME_SIZE
    assert decoder.counters.garbage_bytes <= len(stream)
    if decoder.counters.frames + decoder.counters.heartbeats == 0:
        assert decoder.counters.garbage_bytes + decoder.buffered == len(stream)


def test_buffer_stays_bounded_on_an_endless_garbage_stream() -> None:
    rng = random.Random(11)
    # The worst garbage: plausible headers promising the largest frame, plus scattered magic.
    fake = bytes.fromhex("a55a0101") + bytes(11) + b"\x02" + bytes(4) + struct.pack("<H", 1024)
    decoder = FrameDecoder()
    for i in range(400):
        chunk = bytearray(rng.randbytes(4096))
        for _ in range(8):
            at = rng.randrange(4096 - len(fake))
            piece = fake if i % 2 else agent.MAGIC
            chunk[at : at + len(piece)] = piece
        assert decoder.feed(bytes(chunk)) == []
        assert decoder.buffered < MAX_FRAME_SIZE
    assert decoder.counters.garbage_bytes + decoder.buffered == 400 * 4096
    assert decoder.counters.bad_crc + decoder.counters.bad_version > 0
    assert decoder.feed(GOOD) == decode_all(GOOD)[0]


def test_counters_start_at_zero() -> None:
    assert FrameCounters().bad_frames == 0
    assert set(FrameCounters().as_dict()) >= {
        "frames",
        "heartbeats",
        "bad_crc",
        "bad_length",
        "bad_version",
        "bad_type",
        "bad_format",
        "garbage_bytes",
    }


@pytest.mark.integration
def test_frames_through_a_real_pseudo_terminal(pty_pair: PtyPair) -> None:
    node = SensorNode(21, (0, 1), period_us=10_000, scale=0.001, frame_samples=64)
    rng = random.Random(5)
    sent: list[bytes] = []
    for i in range(10):
        sent += node.frames_for(i % 2, [rng.uniform(0.2, 0.6) for _ in range(64)])
        sent.append(node.heartbeat())
    expected, _ = decode_all(b"".join(sent))
    noisy = [rng.randbytes(rng.randrange(30)) + b"\xa5\x5a" + frame for frame in sent]

    port = serial.Serial(pty_pair.device, baudrate=115200, timeout=0.05)
    writer = threading.Thread(target=write_frames, args=(pty_pair, noisy), daemon=True)
    decoder = FrameDecoder()
    received: list[Frame] = []
    try:
        writer.start()
        deadline = time.monotonic() + 10.0
        while len(received) < len(sent) and time.monotonic() < deadline:
            received += decoder.feed(port.read(4096))
        writer.join(timeout=5.0)
    finally:
        port.close()
    assert len(expected) == 20
    assert received == expected
    assert decoder.counters.garbage_bytes >= 2 * len(sent)
