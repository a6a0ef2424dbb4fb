"""Streaming decoder for the serial frames of CONTRACT section 3 (sensor node -> agent).

Bytes arrive in any chunking; `FrameDecoder.feed` returns the frames completed so far, drops what
cannot be a frame, counts why, and resynchronises on the next magic. The agent side implements
the contract on its own (it does not import firmware_stubs); the tests check the two agree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Any

import numba
import numpy as np

MAGIC = b"\xa5\x5a"
VERSION = 1
TYPE_SAMPLES = 1
TYPE_HEARTBEAT = 2
FORMAT_INT16 = 1
FORMAT_FLOAT32 = 2
MAX_SAMPLES = 1024
HEADER_SIZE = 22
CRC_SIZE = 2
HEARTBEAT_SIZE = HEADER_SIZE + CRC_SIZE
MAX_FRAME_SIZE = HEADER_SIZE + 4 * MAX_SAMPLES + CRC_SIZE

# magic, version, type, node, channel, seq, period_us, format, scale, n
_HEADER = struct.Struct("<2sBBIBHIBfH")
_CRC = struct.Struct("<H")
_SAMPLE_DTYPE: dict[int, np.dtype[Any]] = {
    FORMAT_INT16: np.dtype("<i2"),
    FORMAT_FLOAT32: np.dtype("<f4"),
}

# Why a header is refused; negative so one int carries either a frame length or a reason.
_BAD_VERSION = -1
_BAD_TYPE = -2
_BAD_FORMAT = -3
_BAD_LENGTH = -4


@dataclass(frozen=True, slots=True, eq=False)
class SampleFrame:
    """Samples of one (node, channel): values in physical units, oldest first, read-only.

    Format 1 values are int16 * scale (scale widened from float32); format 2 are float32 widened.
    Equality compares the values element by element (NaN equals NaN).
    """

    node: int
    channel: int
    seq: int
    period_us: int
    values: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleFrame):
            return NotImplemented
        return (self.node, self.channel, self.seq, self.period_us) == (
            other.node,
            other.channel,
            other.seq,
            other.period_us,
        ) and np.array_equal(self.values, other.values, equal_nan=True)

    __hash__ = None  # type: ignore[assignment]  # holds an array: not hashable


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A node saying it is alive on a channel, with no samples."""

    node: int
    channel: int
    seq: int


Frame = SampleFrame | Heartbeat


@dataclass(slots=True)
class FrameCounters:
    """What a decoder has seen since it was made; every byte fed is in a frame, garbage or buffered.

    frames: good sample frames returned.
    heartbeats: good heartbeat frames returned.
    bad_crc: frames whose header was valid but whose CRC did not match.
    bad_length: headers with n out of range (0 or > 1024 for samples, not 0 for a heartbeat).
    bad_version: headers with a version other than 1.
    bad_type: headers with a type other than 1 (samples) or 2 (heartbeat).
    bad_format: sample headers with a format other than 1 (int16) or 2 (float32).
    truncated: frames still incomplete when a complete, valid frame had started inside them
        (a node reset mid-frame, or a false magic in noise); see FrameDecoder.
    garbage_bytes: bytes dropped outside good frames: skipped while hunting for magic, including
        the first byte of every refused frame (the rest of a refused frame is hunted through).
    """

    frames: int = 0
    heartbeats: int = 0
    bad_crc: int = 0
    bad_length: int = 0
    bad_version: int = 0
    bad_type: int = 0
    bad_format: int = 0
    truncated: int = 0
    garbage_bytes: int = 0

    @property
    def bad_frames(self) -> int:
        """Refused frames of every kind."""
        return (
            self.bad_crc
            + self.bad_length
            + self.bad_version
            + self.bad_type
            + self.bad_format
            + self.truncated
        )

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for status messages and logs."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _crc_table() -> np.ndarray:
    """CRC-16/MODBUS of each single byte (poly 0xA001 reflected), for the table-driven kernel."""
    table = np.zeros(256, dtype=np.uint16)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table[byte] = crc
    return table


_CRC_TABLE = _crc_table()


@numba.njit(cache=True)
def _crc16_kernel(buf: np.ndarray, start: int, stop: int, table: np.ndarray) -> int:
    """CRC-16/MODBUS (init 0xFFFF) of buf[start:stop], one table lookup per byte."""
    crc = 0xFFFF
    for i in range(start, stop):
        crc = (crc >> 8) ^ table[(crc & 0xFF) ^ buf[i]]  # stays in range without the JIT too
    return crc


def crc16_modbus(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC-16/MODBUS of a byte string or uint8 array (check value: b"123456789" -> 0x4B37)."""
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    return int(_crc16_kernel(buf, 0, buf.size, _CRC_TABLE))


def _frame_length(version: int, ftype: int, fmt: int, n: int) -> int:
    """Total length of the frame a header announces, or a negative _BAD_* reason."""
    if version != VERSION:
        return _BAD_VERSION
    if ftype == TYPE_SAMPLES:
        dtype = _SAMPLE_DTYPE.get(fmt)
        if dtype is None:
            return _BAD_FORMAT
        if not 1 <= n <= MAX_SAMPLES:
            return _BAD_LENGTH
        return HEADER_SIZE + n * int(dtype.itemsize) + CRC_SIZE
    if ftype == TYPE_HEARTBEAT:
        # Format, scale and period mean nothing in a heartbeat: they are not checked.
        return HEARTBEAT_SIZE if n == 0 else _BAD_LENGTH
    return _BAD_TYPE


def _header_length(buf: bytes, pos: int) -> int:
    """_frame_length of the header at buf[pos:], which must hold HEADER_SIZE bytes."""
    _, version, ftype, _, _, _, _, fmt, _, n = _HEADER.unpack_from(buf, pos)
    return _frame_length(version, ftype, fmt, n)


def _crc_ok(view: np.ndarray, buf: bytes, pos: int, end: int) -> bool:
    """Whether the frame buf[pos:end] ends with the CRC of the bytes before it."""
    crc = _crc16_kernel(view, pos, end - CRC_SIZE, _CRC_TABLE)
    return bool(crc == _CRC.unpack_from(buf, end - CRC_SIZE)[0])


def _decode(buf: bytes, pos: int) -> Frame:
    """The frame at buf[pos:], whose header and CRC have been checked."""
    _, _, ftype, node, channel, seq, period_us, fmt, scale, n = _HEADER.unpack_from(buf, pos)
    if ftype == TYPE_HEARTBEAT:
        return Heartbeat(node, channel, seq)
    samples = np.frombuffer(buf, dtype=_SAMPLE_DTYPE[fmt], count=n, offset=pos + HEADER_SIZE)
    values = samples.astype(np.float64)
    if fmt == FORMAT_INT16:
        values *= scale
    values.flags.writeable = False
    return SampleFrame(node, channel, seq, period_us, values)


class FrameDecoder:
    """Turns a serial byte stream, fed in any chunking, into frames; counts what it drops.

    A refused frame (bad version, type, format, length or CRC) loses only its first byte: the hunt
    for magic restarts inside it, since a valid frame may begin there. A frame whose header is
    valid but whose tail has not arrived waits for it, unless a complete valid frame already
    starts inside it (then it is counted as truncated), so a false magic in line noise cannot
    hold back a quiet line's heartbeats. Between calls at most MAX_FRAME_SIZE - 1 bytes are kept.
    """

    def __init__(self) -> None:
        self.counters = FrameCounters()
        self._buf = b""
        self._need = HEADER_SIZE  # no decision can change before the buffer holds this many bytes

    @property
    def buffered(self) -> int:
        """Bytes held back, waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Frame]:
        """The frames completed by `chunk`, in stream order; never raises on any byte content."""
        buf = self._buf + bytes(chunk) if self._buf else bytes(chunk)
        if len(buf) < self._need:
            self._buf = buf
            return []
        frames: list[Frame] = []
        pos, need = self._scan(buf, frames)
        self._buf = buf[pos:]
        self._need = need
        return frames

    def _scan(self, buf: bytes, frames: list[Frame]) -> tuple[int, int]:
        """Decode buf into `frames`; returns where the unconsumed bytes start and how many they
        must grow to before scanning again can change anything."""
        counters = self.counters
        view = np.frombuffer(buf, dtype=np.uint8)
        size = len(buf)
        pos = 0
        inner_at = -1  # start of a complete, valid frame found ahead of pos, if any
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                keep = 1 if size > pos and buf[-1] == MAGIC[0] else 0  # maybe half a magic
                counters.garbage_bytes += size - pos - keep
                return size - keep, HEADER_SIZE
            counters.garbage_bytes += start - pos
            pos = start
            if size - pos < HEADER_SIZE:
                return pos, HEADER_SIZE
            length = _header_length(buf, pos)
            if length < 0:
                self._refuse(length)
            elif pos + length > size:
                if inner_at <= pos:
                    inner_at, earliest = _first_complete_frame(view, buf, pos + 1)
                    if inner_at < 0:
                        return pos, min(length, earliest - pos)
                counters.truncated += 1
            elif _crc_ok(view, buf, pos, pos + length):
                frame = _decode(buf, pos)
                if isinstance(frame, Heartbeat):
                    counters.heartbeats += 1
                else:
                    counters.frames += 1
                frames.append(frame)
                pos += length
                continue
            else:
                counters.bad_crc += 1
            counters.garbage_bytes += 1
            pos += 1

    def _refuse(self, reason: int) -> None:
        """Count a header refused for `reason`."""
        counters = self.counters
        if reason == _BAD_VERSION:
            counters.bad_version += 1
        elif reason == _BAD_TYPE:
            counters.bad_type += 1
        elif reason == _BAD_FORMAT:
            counters.bad_format += 1
        else:
            counters.bad_length += 1


def _first_complete_frame(view: np.ndarray, buf: bytes, pos: int) -> tuple[int, int]:
    """The start of the first complete, valid frame at or after `pos`, and -1 if there is none
    together with the smallest buffer size at which one could complete."""
    size = len(buf)
    earliest = size - 1 + HEARTBEAT_SIZE  # a magic whose first byte is the last one buffered
    start = buf.find(MAGIC, pos)
    while 0 <= start:
        if size - start < HEADER_SIZE:
            return -1, min(earliest, start + HEARTBEAT_SIZE)
        length = _header_length(buf, start)
        if length > 0:
            if start + length > size:
                earliest = min(earliest, start + length)
            elif _crc_ok(view, buf, start, start + length):
                return start, size
        start = buf.find(MAGIC, start + 1)
    return -1, earliest
