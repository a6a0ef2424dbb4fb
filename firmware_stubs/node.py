"""A simulated sensor node: splits samples into section-3 frames and writes them to a port."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from firmware_stubs.frame import (
    FORMAT_FLOAT32,
    FORMAT_INT16,
    MAX_SAMPLES,
    U8_MAX,
    U16_MAX,
    U32_MAX,
    encode_float32_frame,
    encode_heartbeat,
    encode_int16_frame,
    quantise,
    require_range,
    require_scale,
)


class ByteSink(Protocol):
    """Anything frames can be written to: a pyserial `Serial`, an `os.fdopen`ed pty, a BytesIO."""

    def write(self, data: bytes, /) -> int | None: ...


class SensorNode:
    """One node: a u32 id, its u8 channels, a sample period and a sample format.

    Each channel keeps its own u16 seq, counting every frame sent on it (heartbeats included) and
    wrapping from 65535 to 0, so the agent can count lost frames per channel. `first_seq` starts
    every channel's counter elsewhere than 0, e.g. to exercise the wrap.
    """

    def __init__(
        self,
        node: int,
        channels: Sequence[int] = (0,),
        *,
        period_us: int = 1000,
        fmt: int = FORMAT_INT16,
        scale: float = 1.0,
        frame_samples: int = MAX_SAMPLES,
        first_seq: int = 0,
    ) -> None:
        self.node = require_range("node", node, 0, U32_MAX)
        if not channels:
            raise ValueError("channels: a node needs at least one channel")
        self.channels = tuple(require_range("channel", c, 0, U8_MAX) for c in channels)
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels: duplicates in {self.channels}")
        self.period_us = require_range("period_us", period_us, 1, U32_MAX)
        if fmt not in (FORMAT_INT16, FORMAT_FLOAT32):
            raise ValueError(f"fmt: {fmt!r} is neither FORMAT_INT16 (1) nor FORMAT_FLOAT32 (2)")
        self.fmt = fmt
        self.scale = require_scale(scale)
        self.frame_samples = require_range("frame_samples", frame_samples, 1, MAX_SAMPLES)
        first_seq = require_range("first_seq", first_seq, 0, U16_MAX)
        self._seq = dict.fromkeys(self.channels, first_seq)

    def next_seq(self, channel: int) -> int:
        """The seq the next frame on `channel` will carry."""
        return self._seq[self._known(channel)]

    def frames_for(self, channel: int, values: Sequence[float]) -> list[bytes]:
        """`values` (physical units) as consecutive frames of at most `frame_samples` samples.

        If a value cannot be sent (NaN in int16, beyond float32) nothing is sent and seq stays.
        """
        channel = self._known(channel)
        values = list(values)
        counts = quantise(values, self.scale) if self.fmt == FORMAT_INT16 else []
        seq = self._seq[channel]
        frames = []
        for start in range(0, len(values), self.frame_samples):
            stop = start + self.frame_samples
            if self.fmt == FORMAT_INT16:
                raw = counts[start:stop]
                frame = encode_int16_frame(self.node, channel, seq, self.period_us, self.scale, raw)
            else:
                frame = encode_float32_frame(
                    self.node, channel, seq, self.period_us, values[start:stop]
                )
            frames.append(frame)
            seq = (seq + 1) & U16_MAX
        self._seq[channel] = seq
        return frames

    def heartbeat(self, channel: int | None = None) -> bytes:
        """A heartbeat frame on `channel` (default: the node's first channel)."""
        channel = self._known(self.channels[0] if channel is None else channel)
        return encode_heartbeat(self.node, channel, self._advance(channel))

    def _known(self, channel: int) -> int:
        if channel not in self._seq:
            raise ValueError(
                f"channel: {channel!r} is not one of node {self.node}'s {self.channels}"
            )
        return channel

    def _advance(self, channel: int) -> int:
        """The seq for the frame being built on `channel`; the counter moves on, wraps at 2^16."""
        seq = self._seq[channel]
        self._seq[channel] = (seq + 1) & U16_MAX
        return seq


def write_frames(port: ByteSink, frames: Iterable[bytes]) -> int:
    """Write every frame in order to a blocking `port`, retrying short writes; returns the bytes.

    A `write` that returns None is taken to have written everything, as a blocking sink does.
    """
    total = 0
    for frame in frames:
        offset = 0
        while offset < len(frame):
            written = port.write(frame[offset:] if offset else frame)
            step = len(frame) - offset if written is None else written
            if step <= 0:
                raise OSError(f"port {port!r} accepted no bytes")
            offset += step
        total += offset
    flush = getattr(port, "flush", None)
    if callable(flush):
        flush()
    return total
