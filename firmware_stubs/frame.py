"""Encoder for the serial frame of CONTRACT section 3, written byte by byte so it ports to C.

Layout (little-endian, no padding), offsets in bytes:
  0 magic A5 5A | 2 version u8 | 3 type u8 | 4 node u32 | 8 channel u8 | 9 seq u16 |
  11 period_us u32 | 15 format u8 | 16 scale f32 | 20 n u16 | 22 samples | end CRC u16.
The CRC is CRC-16/MODBUS over every byte before it, sent low byte first.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Sequence

from firmware_stubs.crc import crc16_modbus

MAGIC = b"\xa5\x5a"
VERSION = 1
TYPE_SAMPLES = 1
TYPE_HEARTBEAT = 2
FORMAT_INT16 = 1
FORMAT_FLOAT32 = 2
MAX_SAMPLES = 1024
HEADER_SIZE = 22
CRC_SIZE = 2
SAMPLE_SIZE = {FORMAT_INT16: 2, FORMAT_FLOAT32: 4}
MAX_FRAME_SIZE = HEADER_SIZE + MAX_SAMPLES * SAMPLE_SIZE[FORMAT_FLOAT32] + CRC_SIZE

U8_MAX = 0xFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
INT16_MIN = -32768
INT16_MAX = 32767

# magic, version, type, node, channel, seq, period_us, format, scale, n
HEADER = struct.Struct("<2sBBIBHIBfH")
assert HEADER.size == HEADER_SIZE


def require_range(field: str, value: int, lo: int, hi: int) -> int:
    """`value` as an int if it is an integer in [lo, hi]; otherwise ValueError naming `field`."""
    try:
        if isinstance(value, bool):
            raise TypeError(field)
        number = operator.index(value)  # accepts int and NumPy integers, refuses floats
    except TypeError:
        raise ValueError(f"{field}: expected an integer, got {value!r}") from None
    if not lo <= number <= hi:
        raise ValueError(f"{field}: {number} is outside {lo}..{hi}")
    return number


def require_scale(scale: float) -> float:
    """`scale` if it is finite, non-zero and fits a float32; otherwise ValueError."""
    if not math.isfinite(scale) or scale == 0.0:
        raise ValueError(f"scale: must be finite and non-zero, got {scale!r}")
    try:
        (as_f32,) = struct.unpack("<f", struct.pack("<f", scale))
    except OverflowError as exc:
        raise ValueError(f"scale: {scale!r} does not fit a float32") from exc
    if as_f32 == 0.0:
        raise ValueError(f"scale: {scale!r} rounds to 0 as a float32")
    return float(scale)


def quantise(values: Sequence[float], scale: float) -> list[int]:
    """Physical values as int16 counts of `scale`, rounded half away from zero and saturated.

    This is C's `lround(v / scale)` clamped to -32768..32767; NaN has no int16: ValueError.
    """
    scale = require_scale(scale)
    counts = []
    for index, value in enumerate(values):
        if math.isnan(value):
            raise ValueError(f"values[{index}]: NaN cannot be quantised to int16")
        ratio = value / scale
        if ratio >= INT16_MAX:
            counts.append(INT16_MAX)
        elif ratio <= INT16_MIN:
            counts.append(INT16_MIN)
        else:
            counts.append(int(math.copysign(math.floor(abs(ratio) + 0.5), ratio)))
    return counts


def _header(
    ftype: int, node: int, channel: int, seq: int, period_us: int, fmt: int, scale: float, n: int
) -> bytes:
    """The 22 header bytes after validating the identity fields every frame type carries."""
    require_range("node", node, 0, U32_MAX)
    require_range("channel", channel, 0, U8_MAX)
    # seq is a u16 that the node wraps from 65535 to 0; callers pass the already wrapped value.
    require_range("seq", seq, 0, U16_MAX)
    return HEADER.pack(MAGIC, VERSION, ftype, node, channel, seq, period_us, fmt, scale, n)


def _with_crc(body: bytes) -> bytes:
    """`body` followed by its CRC-16/MODBUS, low byte first."""
    return body + struct.pack("<H", crc16_modbus(body))


def encode_int16_frame(
    node: int, channel: int, seq: int, period_us: int, scale: float, raw: Sequence[int]
) -> bytes:
    """A samples frame of format 1: the agent reads each value as raw[i] * scale."""
    n = require_range("n", len(raw), 1, MAX_SAMPLES)
    require_range("period_us", period_us, 1, U32_MAX)
    scale = require_scale(scale)
    counts = [require_range(f"raw[{i}]", c, INT16_MIN, INT16_MAX) for i, c in enumerate(raw)]
    header = _header(TYPE_SAMPLES, node, channel, seq, period_us, FORMAT_INT16, scale, n)
    return _with_crc(header + struct.pack(f"<{n}h", *counts))


def encode_float32_frame(
    node: int, channel: int, seq: int, period_us: int, values: Sequence[float]
) -> bytes:
    """A samples frame of format 2: values sent as IEEE-754 float32 (NaN and inf pass through)."""
    n = require_range("n", len(values), 1, MAX_SAMPLES)
    require_range("period_us", period_us, 1, U32_MAX)
    # The scale field is unused in format 2; 1.0 keeps a hex dump readable.
    header = _header(TYPE_SAMPLES, node, channel, seq, period_us, FORMAT_FLOAT32, 1.0, n)
    try:
        samples = struct.pack(f"<{n}f", *values)
    except (OverflowError, struct.error) as exc:
        raise ValueError(f"values: not representable as float32 ({exc})") from exc
    return _with_crc(header + samples)


def encode_heartbeat(node: int, channel: int, seq: int) -> bytes:
    """A heartbeat frame (type 2, n = 0, no samples): period, format and scale are sent as 0."""
    return _with_crc(_header(TYPE_HEARTBEAT, node, channel, seq, 0, 0, 0.0, 0))
