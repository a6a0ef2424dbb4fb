"""How simulated samples reach an agent: MQTT RawBlocks, serial sensor nodes on ptys, Modbus RTU units.

Every transport offers a `BlockSink`: `send(sensor, values, t0_ms, period_ms)` takes one block of a
sensor's samples (float32, NaN = no sample) and returns how many samples went out.
"""

from __future__ import annotations

from simulators.transports.base import BlockSink, TransportError, present_runs

__all__ = ["BlockSink", "TransportError", "present_runs"]
