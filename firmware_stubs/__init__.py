"""Sensor-node side of the serial frame of CONTRACT section 3, as a reference to port to C."""

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
