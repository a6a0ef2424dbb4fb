"""The sensor-node reference: CRC, frame byte layout, argument checks, SensorNode and its writer."""

from __future__ import annotations

import io
import math
import random
import re
import struct
from collections.abc import Callable

import pytest

from firmware_stubs import (
    FORMAT_FLOAT32,
    FORMAT_INT16,
    HEADER_SIZE,
    MAX_SAMPLES,
    SensorNode,
    crc16_modbus,
    encode_float32_frame,
    encode_heartbeat,
    encode_int16_frame,
    quantise,
    write_frames,
)

# The worked example of firmware_stubs/README.md: node 17, channel 2, seq 258, 100 Hz pressure
# in units of 0.0001 MPa, samples 0.4123, 0.4125, 0.4121 MPa.
README_EXAMPLE = bytes.fromhex(
    "a5 5a 01 01 11 00 00 00 02 02 01 10 27 00 00 01 17 b7 d1 38 03 00 1b 10 1d 10 19 10 29 80"
)
README_HEARTBEAT = bytes.fromhex(
    "a5 5a 01 02 11 00 00 00 02 03 01 00 00 00 00 00 00 00 00 00 00 00 78 2b"
)

README_FLOAT32 = bytes.fromhex(
    "a5 5a 01 01 11 00 00 00 03 07 00 e8 03 00 00 02 00 00 80 3f 02 0000 00 c0 3f 00 00 10 c0 77 19"
)


def naive_crc16_modbus(data: bytes) -> int:
    """Bit-by-bit CRC-16/MODBUS, the obviously correct twin of the table-driven one."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def field(frame: bytes, offset: int, size: int) -> int:
    """The little-endian unsigned field at a CONTRACT section 3 offset."""
    return int.from_bytes(frame[offset : offset + size], "little")


def test_crc_check_value() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc16_modbus(b"") == 0xFFFF


def test_crc_table_matches_bitwise_twin_and_continues_over_split_buffers() -> None:
    rng = random.Random(3)
    for size in (1, 2, 21, 256, 4118):
        data = rng.randbytes(size)
        assert crc16_modbus(data) == naive_crc16_modbus(data)
        cut = rng.randrange(size + 1)
        assert crc16_modbus(data[cut:], crc16_modbus(data[:cut])) == crc16_modbus(data)


def test_readme_worked_example_is_what_the_encoder_sends() -> None:
    raw = quantise([0.4123, 0.4125, 0.4121], 0.0001)
    assert raw == [4123, 4125, 4121]
    assert encode_int16_frame(17, 2, 258, 10_000, 0.0001, raw) == README_EXAMPLE
    assert encode_heartbeat(17, 2, 259) == README_HEARTBEAT
    assert encode_float32_frame(17, 3, 7, 1000, [1.5, -2.25]) == README_FLOAT32


def test_int16_frame_puts_every_field_at_its_contract_offset() -> None:
    frame = encode_int16_frame(0xDEADBEEF, 200, 0xBEEF, 123_456, 0.5, [1, -2, 32767, -32768])
    assert frame[0:2] == b"\xa5\x5a"
    assert (frame[2], frame[3]) == (1, 1)
    assert field(frame, 4, 4) == 0xDEADBEEF
    assert frame[8] == 200
    assert field(frame, 9, 2) == 0xBEEF
    assert field(frame, 11, 4) == 123_456
    assert frame[15] == FORMAT_INT16
    assert struct.unpack_from("<f", frame, 16) == (0.5,)
    assert field(frame, 20, 2) == 4
    assert struct.unpack_from("<4h", frame, 22) == (1, -2, 32767, -32768)
    assert len(frame) == HEADER_SIZE + 4 * 2 + 2
    assert field(frame, len(frame) - 2, 2) == naive_crc16_modbus(frame[:-2])


def test_float32_frame_carries_ieee_values_including_nan_and_inf() -> None:
    values = [1.5, -0.0, math.inf, math.nan]
    frame = encode_float32_frame(7, 1, 9, 20_000, values)
    assert frame[15] == FORMAT_FLOAT32
    assert field(frame, 20, 2) == 4
    sent = struct.unpack_from("<4f", frame, 22)
    assert sent[:3] == (1.5, 0.0, math.inf) and math.isnan(sent[3])
    assert len(frame) == HEADER_SIZE + 4 * 4 + 2
    assert field(frame, len(frame) - 2, 2) == naive_crc16_modbus(frame[:-2])


def test_heartbeat_has_no_samples() -> None:
    frame = encode_heartbeat(5, 3, 65535)
    assert frame[3] == 2
    assert field(frame, 20, 2) == 0
    assert len(frame) == HEADER_SIZE + 2
    assert field(frame, 22, 2) == naive_crc16_modbus(frame[:22])


def test_largest_frame_holds_1024_samples() -> None:
    frame = encode_float32_frame(1, 0, 0, 1, [0.25] * MAX_SAMPLES)
    assert len(frame) == HEADER_SIZE + MAX_SAMPLES * 4 + 2


BAD_ARGUMENTS: list[tuple[str, Callable[[], bytes]]] = [
    ("n", lambda: encode_int16_frame(1, 0, 0, 1000, 1.0, [])),
    ("n", lambda: encode_float32_frame(1, 0, 0, 1000, [0.0] * (MAX_SAMPLES + 1))),
    ("node", lambda: encode_int16_frame(-1, 0, 0, 1000, 1.0, [0])),
    ("node", lambda: encode_heartbeat(2**32, 0, 0)),
    ("channel", lambda: encode_heartbeat(1, 256, 0)),
    ("seq", lambda: encode_heartbeat(1, 0, 65536)),
    ("seq", lambda: encode_float32_frame(1, 0, -1, 1000, [0.0])),
    ("period_us", lambda: encode_int16_frame(1, 0, 0, 0, 1.0, [0])),
    ("period_us", lambda: encode_float32_frame(1, 0, 0, 2**32, [0.0])),
    ("scale", lambda: encode_int16_frame(1, 0, 0, 1000, 0.0, [0])),
    ("scale", lambda: encode_int16_frame(1, 0, 0, 1000, math.nan, [0])),
    ("scale", lambda: encode_int16_frame(1, 0, 0, 1000, 1e39, [0])),
    ("raw[1]", lambda: encode_int16_frame(1, 0, 0, 1000, 1.0, [0, 32768])),
    ("raw[0]", lambda: encode_int16_frame(1, 0, 0, 1000, 1.0, [0.5])),  # type: ignore[list-item]
    ("values", lambda: encode_float32_frame(1, 0, 0, 1000, [1e39])),
    ("node", lambda: encode_heartbeat(1.0, 0, 0)),  # type: ignore[arg-type]
    ("channel", lambda: encode_heartbeat(1, True, 0)),
]


@pytest.mark.parametrize(("name", "encode"), BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_the_field(
    name: str, encode: Callable[[], bytes]
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(name)}:"):
        encode()


def test_quantise_rounds_half_away_from_zero_and_saturates() -> None:
    assert quantise([0.5, 1.5, 2.5, -0.5, -2.5, 0.49], 1.0) == [1, 2, 3, -1, -3, 0]
    assert quantise([0.41234, -0.00005], 0.0001) == [4123, -1]
    assert quantise([1e9, -1e9, math.inf, -math.inf], 0.01) == [32767, -32768, 32767, -32768]
    assert quantise([3.0], -1.0) == [-3]


def test_quantise_refuses_nan_and_a_zero_scale() -> None:
    with pytest.raises(ValueError, match=r"values\[1\]"):
        quantise([0.0, math.nan], 1.0)
    with pytest.raises(ValueError, match="scale"):
        quantise([1.0], 0.0)


def test_node_splits_values_into_frames_with_incrementing_seq() -> None:
    node = SensorNode(17, (0, 1), period_us=10_000, scale=0.01, frame_samples=100)
    frames = node.frames_for(1, [0.01 * i for i in range(250)])
    assert [field(f, 20, 2) for f in frames] == [100, 100, 50]
    assert [field(f, 9, 2) for f in frames] == [0, 1, 2]
    assert all(field(f, 4, 4) == 17 and f[8] == 1 for f in frames)
    assert all(field(f, 11, 4) == 10_000 for f in frames)
    assert struct.unpack_from("<3h", frames[2], 22) == (200, 201, 202)
    assert node.frames_for(1, []) == []


def test_each_channel_counts_its_own_seq_and_heartbeats_share_it() -> None:
    node = SensorNode(3, (4, 9), frame_samples=2)
    node.frames_for(4, [1.0, 2.0, 3.0])
    assert (node.next_seq(4), node.next_seq(9)) == (2, 0)
    assert field(node.heartbeat(), 9, 2) == 2
    assert node.heartbeat()[8] == 4
    beat = node.heartbeat(9)
    assert (beat[8], field(beat, 9, 2)) == (9, 0)
    assert node.next_seq(4) == 4


def test_seq_wraps_after_65535() -> None:
    node = SensorNode(1, first_seq=65535)
    frames = node.frames_for(0, [1.0, 2.0]) + [node.heartbeat()]
    assert field(frames[0], 9, 2) == 65535
    assert field(frames[1], 9, 2) == 0


def test_a_value_that_cannot_be_sent_sends_nothing_and_keeps_seq() -> None:
    node = SensorNode(1, frame_samples=2)
    with pytest.raises(ValueError, match=r"values\[3\]"):
        node.frames_for(0, [1.0, 2.0, 3.0, math.nan])
    assert node.next_seq(0) == 0
    float_node = SensorNode(1, fmt=FORMAT_FLOAT32, frame_samples=1)
    with pytest.raises(ValueError, match="values"):
        float_node.frames_for(0, [1.0, 1e39])
    assert float_node.next_seq(0) == 0


def test_float32_node_sends_values_unquantised() -> None:
    node = SensorNode(2, period_us=1000, fmt=FORMAT_FLOAT32)
    (frame,) = node.frames_for(0, [0.1, 12345.678])
    assert frame[15] == FORMAT_FLOAT32
    as_f32 = struct.unpack("<2f", struct.pack("<2f", 0.1, 12345.678))
    assert struct.unpack_from("<2f", frame, 22) == as_f32


def test_node_refuses_unknown_channel_and_bad_settings() -> None:
    node = SensorNode(1, (0,))
    with pytest.raises(ValueError, match="channel"):
        node.frames_for(5, [1.0])
    with pytest.raises(ValueError, match="channel"):
        node.heartbeat(5)
    bad_settings: list[tuple[Callable[[], object], str]] = [
        (lambda: SensorNode(1, ()), "channels"),
        (lambda: SensorNode(1, (0, 0)), "channels"),
        (lambda: SensorNode(1, (300,)), "channel"),
        (lambda: SensorNode(1, frame_samples=1025), "frame_samples"),
        (lambda: SensorNode(1, fmt=3), "fmt"),
        (lambda: SensorNode(1, scale=0.0), "scale"),
        (lambda: SensorNode(1, period_us=0), "period_us"),
        (lambda: SensorNode(1, first_seq=65536), "first_seq"),
    ]
    for bad, name in bad_settings:
        with pytest.raises(ValueError, match=f"^{name}:"):
            bad()


def test_write_frames_writes_every_byte_in_order() -> None:
    node = SensorNode(1, frame_samples=10)
    frames = node.frames_for(0, [float(i) for i in range(35)]) + [node.heartbeat()]
    port = io.BytesIO()
    assert write_frames(port, frames) == sum(len(f) for f in frames)
    assert port.getvalue() == b"".join(frames)


class TrickleSink:
    """A port that accepts at most 7 bytes per write, like a non-blocking fd close to full."""

    def __init__(self) -> None:
        self.received = bytearray()

    def write(self, data: bytes, /) -> int:
        self.received += data[:7]
        return min(7, len(data))


class StuckSink:
    """A port that accepts nothing."""

    def write(self, data: bytes, /) -> int:
        return 0


def test_write_frames_completes_short_writes_and_fails_on_a_stuck_port() -> None:
    frames = SensorNode(1).frames_for(0, [1.0] * 40)
    sink = TrickleSink()
    assert write_frames(sink, frames) == len(frames[0])
    assert bytes(sink.received) == frames[0]
    with pytest.raises(OSError):
        write_frames(StuckSink(), frames)
