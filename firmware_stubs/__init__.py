"""Sensor-node side of the serial frame of CONTRACT section 3, as a reference to port to C.

Plain Python with no dependency on the rest of lifeline (not even the core), so firmware authors
can read it as a specification: CRC-16/MODBUS (`crc`), frame encoding (`frame`) and a node that
batches samples into frames and heartbeats (`node`). The agent's decoder, written independently,
is `edge_agent/frames.py`; the simulators use this package to play sensor nodes on pty lines.

Public names: `crc16_modbus`, `encode_int16_frame`, `encode_float32_frame`, `encode_heartbeat`,
`quantise`, `SensorNode`, `ByteSink`, `write_frames` and the frame constants (`MAGIC`, `VERSION`,
`TYPE_SAMPLES`, `TYPE_HEARTBEAT`, `FORMAT_INT16`, `FORMAT_FLOAT32`, `HEADER_SIZE`, `CRC_SIZE`,
`MAX_SAMPLES`, `MAX_FRAME_SIZE`).
"""

from firmware_stubs.crc import crc16_modbus
from firmware_stubs.frame import (
    CRC_SIZE,
    FORMAT_FLOAT32,
    FORMAT_INT16,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME_SIZE,
    MAX_SAMPLES,
    TYPE_HEARTBEAT,
    TYPE_SAMPLES,
    VERSION,
    encode_float32_frame,
    encode_heartbeat,
    encode_int16_frame,
    quantise,
)
from firmware_stubs.node import ByteSink, SensorNode, write_frames

__all__ = [
    "CRC_SIZE",
    "FORMAT_FLOAT32",
    "FORMAT_INT16",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_FRAME_SIZE",
    "MAX_SAMPLES",
    "TYPE_HEARTBEAT",
    "TYPE_SAMPLES",
    "VERSION",
    "ByteSink",
    "SensorNode",
    "crc16_modbus",
    "encode_float32_frame",
    "encode_heartbeat",
    "encode_int16_frame",
    "quantise",
    "write_frames",
]
