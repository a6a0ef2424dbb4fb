"""CRC-16/MODBUS, table-driven, as a sensor node computes it over every frame byte before the CRC.

Parameters: width 16, poly 0x8005 (0xA001 reflected), init 0xFFFF, refin/refout true, xorout 0,
check value crc16_modbus(b"123456789") == 0x4B37. Port to C as a `static const uint16_t[256]` table.
"""

from __future__ import annotations

POLY_REFLECTED = 0xA001
INIT = 0xFFFF
CHECK_VALUE = 0x4B37


def _make_table() -> tuple[int, ...]:
    """The 256 CRCs of single bytes: one lookup replaces eight shift-and-xor steps per byte."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


CRC16_TABLE: tuple[int, ...] = _make_table()


def crc16_modbus(data: bytes, crc: int = INIT) -> int:
    """CRC-16/MODBUS of `data`; pass a previous result as `crc` to continue over a split buffer."""
    for byte in data:
        crc = (crc >> 8) ^ CRC16_TABLE[(crc ^ byte) & 0xFF]
    return crc
