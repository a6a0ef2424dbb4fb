"""Decode throughput of the serial frame decoder (`python -m benchmarks.bench_frames`).

Feeds a stream of identical-shape frames in 4 KiB chunks, as a serial reader would hand them
over, and compares the decode rate with what a 115200-baud line can carry.
"""

from __future__ import annotations

import time

import numpy as np

from edge_agent.frames import FrameDecoder
from firmware_stubs import SensorNode

CHUNK = 4096
LINE_BYTES_PER_S = 115200 / 10  # 8N1: ten bit times per byte
TARGET_S = 1.0  # approximate wall time per case


def sample_stream(frame_samples: int, n_frames: int) -> bytes:
    """`n_frames` int16 frames of `frame_samples` samples each, as one byte stream."""
    node = SensorNode(1, frame_samples=frame_samples, scale=0.001, period_us=1000)
    rng = np.random.default_rng(0)
    distinct = [
        node.frames_for(0, rng.uniform(-30.0, 30.0, frame_samples).tolist())[0]
        for _ in range(min(n_frames, 64))
    ]
    return b"".join(distinct[i % len(distinct)] for i in range(n_frames))


def decode_rate(stream: bytes) -> tuple[float, int, int]:
    """Seconds to decode `stream` fed in CHUNK-byte pieces, frames and samples decoded."""
    decoder = FrameDecoder()
    frames = samples = 0
    start = time.perf_counter()
    for pos in range(0, len(stream), CHUNK):
        for frame in decoder.feed(stream[pos : pos + CHUNK]):
            frames += 1
            samples += len(getattr(frame, "values", ()))
    return time.perf_counter() - start, frames, samples


def run_case(frame_samples: int) -> None:
    """Print throughput for one frame size, sized to take about TARGET_S seconds."""
    decode_rate(sample_stream(frame_samples, 8))  # compile the CRC kernel outside the timing
    probe, _, _ = decode_rate(sample_stream(frame_samples, 200))
    n_frames = max(200, int(200 * TARGET_S / max(probe, 1e-6)))
    stream = sample_stream(frame_samples, n_frames)
    elapsed, frames, samples = decode_rate(stream)
    assert frames == n_frames, (frames, n_frames)
    bytes_per_s = len(stream) / elapsed
    print(
        f"{frame_samples:5d} samples/frame: {frames / elapsed:12,.0f} frames/s "
        f"{samples / elapsed:14,.0f} samples/s {bytes_per_s / 1e6:7.1f} MB/s; "
        f"a 115200-baud line costs {100 * LINE_BYTES_PER_S / bytes_per_s:.3f} % of one core"
    )


def main() -> None:
    """Run both frame sizes the protocol is tuned for: the largest and a small, chatty one."""
    print(f"FrameDecoder, int16 frames fed in {CHUNK}-byte chunks")
    for frame_samples in (1024, 16):
        run_case(frame_samples)


if __name__ == "__main__":
    main()
