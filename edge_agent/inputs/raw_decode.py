"""RawBlocks of a whole batch decoded by three numba kernels instead of a Python loop per message.

`parse_raw_blocks` reads the MessagePack of every payload straight from one joined buffer and
takes only the plain shape (a map of `v`, `sensor`, `values` as float32 bin or one float, `t0`,
`dt`, `seq`, each key once, nothing after the map) with exactly the values the contract's
`decode_raw_block` accepts; anything else is marked for the Python decoder, so errors read the
same. `sequence_check` applies the per-sensor `seq` rules in arrival order, and `gather_samples`
writes the kept blocks' samples (as float64) and times into the batch's arrays in one pass.
"""

from __future__ import annotations

from typing import Final

import numba
import numpy as np
import numpy.typing as npt

from lifeline.contract.messages import MAX_PAYLOAD_BYTES, SEQ_MODULUS

U8Array = npt.NDArray[np.uint8]
I64Array = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]

# Columns of `parse_raw_blocks`' integer output.
OK: Final = 0  # 1: parsed; 0: leave it to decode_raw_block
COUNT: Final = 1  # samples
OFFSET: Final = 2  # byte offset of the float32 bin in the joined buffer; -1: one float
T0: Final = 3
SEQ: Final = 4  # -1: none
N_INT: Final = 5
# Columns of the float output.
DT: Final = 0  # NaN: none
SINGLE: Final = 1  # the value of a one-float block
N_FLOAT: Final = 2

_I64_MAX: Final = 2**63 - 1
#: Largest (count - 1) * dt taken here (ms); beyond it the Python path words the overflow.
_SPAN_MAX: Final = 2.0**62
_BAD: Final = -1
_NIL: Final = -2

# Keys, as the bytes of their names.
_KEY_V, _KEY_SENSOR, _KEY_VALUES, _KEY_T0, _KEY_DT, _KEY_SEQ = range(6)


@numba.njit(cache=True, nogil=True)
def _uint(buf: U8Array, at: int, size: int) -> int:
    """Big-endian unsigned integer of `size` (1, 2, 4) bytes."""
    value = 0
    for k in range(size):
        value = (value << 8) | np.int64(buf[at + k])
    return value


@numba.njit(cache=True, nogil=True)
def _head(buf: U8Array, at: int, end: int, fix: int, fix_bits: int, first: int) -> tuple[int, int]:
    """(length, offset after the header) of a fix/8/16/32-bit length header, or (-1, at).

    `fix`: the fix-type tag (its low `fix_bits` bits are the length; 0: none); `first`: the tag
    of the 8-bit form (or of the 16-bit form when there is no 8-bit one, as for maps)."""
    if at >= end:
        return -1, at
    tag = np.int64(buf[at])
    if fix and tag >> fix_bits == fix >> fix_bits:
        return tag & ((1 << fix_bits) - 1), at + 1
    size, forms = (2, 2) if first == 0xDE else (1, 3)  # map16/32; else 8/16/32-bit forms
    for form in range(forms):
        if tag == first + form:
            width = size << form
            if at + 1 + width > end:
                return -1, at
            return _uint(buf, at + 1, width), at + 1 + width
    return -1, at


@numba.njit(cache=True, nogil=True)
def _int(buf: U8Array, at: int, end: int) -> tuple[int, int, int]:
    """(kind, value, offset after) of an integer or nil: kind 1 int (value; uint64 above the
    int64 range gives kind 2), _NIL for nil, _BAD for anything else."""
    if at >= end:
        return _BAD, 0, at
    tag = np.int64(buf[at])
    if tag <= 0x7F:
        return 1, tag, at + 1
    if tag >= 0xE0:
        return 1, tag - 0x100, at + 1
    if tag == 0xC0:
        return _NIL, 0, at + 1
    if 0xCC <= tag <= 0xD3:
        width = 1 << ((tag - 0xCC) & 3)
        if at + 1 + width > end:
            return _BAD, 0, at
        if tag <= 0xCF:  # unsigned
            if width == 8:
                high = _uint(buf, at + 1, 4)
                if high >= 0x80000000:
                    return 2, 0, at + 9  # above int64: no field accepts it
                return 1, (high << 32) | _uint(buf, at + 5, 4), at + 9
            return 1, _uint(buf, at + 1, width), at + 1 + width
        raw = _uint(buf, at + 1, 4) << 32 | _uint(buf, at + 5, 4) if width == 8 else \
            _uint(buf, at + 1, width)
        if width < 8 and raw >= 1 << (8 * width - 1):
            raw -= 1 << (8 * width)
        return 1, raw, at + 1 + width
    return _BAD, 0, at


@numba.njit(cache=True, nogil=True)
def _float(
    buf: U8Array, at: int, end: int, bits: npt.NDArray[np.uint64]
) -> tuple[bool, float, int]:
    """(found, value, offset after) of a float32 or float64 (`bits`: one word of scratch)."""
    if at < end and buf[at] == 0xCA and at + 5 <= end:
        half = bits.view(np.uint32)
        half[0] = _uint(buf, at + 1, 4)
        return True, np.float64(half.view(np.float32)[0]), at + 5
    if at < end and buf[at] == 0xCB and at + 9 <= end:
        bits[0] = np.uint64(_uint(buf, at + 1, 4)) << np.uint64(32) | np.uint64(
            _uint(buf, at + 5, 4))
        return True, bits.view(np.float64)[0], at + 9
    return False, 0.0, at


@numba.njit(cache=True, nogil=True)
def _key(buf: U8Array, at: int, end: int) -> tuple[int, int]:
    """(which of the six keys, offset after) of a fixstr key; -1 for any other key."""
    if at >= end or buf[at] & 0xE0 != 0xA0:
        return -1, at
    n = buf[at] & 0x1F
    s = at + 1
    if s + n > end:
        return -1, at
    c0 = buf[s] if n else 0
    if n == 1 and c0 == 118:  # v
        return _KEY_V, s + n
    if n == 2 and c0 == 116 and buf[s + 1] == 48:  # t0
        return _KEY_T0, s + n
    if n == 2 and c0 == 100 and buf[s + 1] == 116:  # dt
        return _KEY_DT, s + n
    if n == 3 and c0 == 115 and buf[s + 1] == 101 and buf[s + 2] == 113:  # seq
        return _KEY_SEQ, s + n
    if n == 6 and c0 == 115 and buf[s + 1] == 101 and buf[s + 2] == 110 and buf[s + 3] == 115 \
            and buf[s + 4] == 111 and buf[s + 5] == 114:  # sensor
        return _KEY_SENSOR, s + n
    if n == 6 and c0 == 118 and buf[s + 1] == 97 and buf[s + 2] == 108 and buf[s + 3] == 117 \
            and buf[s + 4] == 101 and buf[s + 5] == 115:  # values
        return _KEY_VALUES, s + n
    return -1, at


@numba.njit(cache=True, nogil=True)
def _parse_one(buf: U8Array, at: int, end: int, sensor: U8Array, out_i: I64Array,
               out_f: F64Array, e: int, bits: npt.NDArray[np.uint64]) -> bool:
    """Parse the payload buf[at:end] into row `e` of the outputs; False: not the plain shape."""
    n_keys, at = _head(buf, at, end, 0x80, 4, 0xDE)
    if n_keys < 0:
        return False
    seen = 0
    count, offset, single, t0, seq, dt = 0, -1, 0.0, 0, -1, np.nan
    for _ in range(n_keys):
        key, at = _key(buf, at, end)
        if key < 0 or seen & (1 << key):
            return False
        seen |= 1 << key
        if key == _KEY_V:
            kind, value, at = _int(buf, at, end)
            if kind != 1 or value != 1:
                return False
        elif key == _KEY_SENSOR:
            length, at = _head(buf, at, end, 0xA0, 5, 0xD9)
            if length != sensor.shape[0] or at + length > end:
                return False
            for k in range(length):
                if buf[at + k] != sensor[k]:
                    return False
            at += length
        elif key == _KEY_VALUES:
            if at < end and buf[at] == 0x91:  # an array of one float
                found, single, at = _float(buf, at + 1, end, bits)
                if not found:
                    return False
                count = 1
            else:
                length, at = _head(buf, at, end, 0, 0, 0xC4)
                if length <= 0 or length & 3 or at + length > end:
                    return False
                count, offset = length >> 2, at
                at += length
        elif key == _KEY_T0 or key == _KEY_SEQ:
            kind, value, at = _int(buf, at, end)
            if kind == _NIL:
                value = 0 if key == _KEY_T0 else -1
            elif kind != 1 or value < 0 or (key == _KEY_SEQ and value >= SEQ_MODULUS):
                return False
            if key == _KEY_T0:
                t0 = value
            else:
                seq = value
        else:  # dt
            kind, value, after = _int(buf, at, end)
            if kind == 1:
                dt, at = np.float64(value), after
            elif kind != _NIL:
                found, dt, at = _float(buf, at, end, bits)
                if not found:
                    return False
            else:
                at = after
            if kind != _NIL and not (dt > 0 and np.isfinite(dt)):
                return False
    needed = (1 << _KEY_V) | (1 << _KEY_SENSOR) | (1 << _KEY_VALUES)
    if at != end or seen & needed != needed:
        return False
    if np.isnan(dt) and count >= 2:  # dt is required for two or more values
        return False
    if count >= 2 and (count - 1) * dt > _SPAN_MAX:
        return False
    out_i[e, COUNT], out_i[e, OFFSET], out_i[e, T0], out_i[e, SEQ] = count, offset, t0, seq
    out_f[e, DT], out_f[e, SINGLE] = dt, single
    return True


@numba.njit(cache=True, nogil=True)
def parse_raw_blocks(buf: U8Array, starts: I64Array, sensor: I64Array, id_bytes: U8Array,
                     id_starts: I64Array, out_i: I64Array, out_f: F64Array) -> int:
    """Parse payload e = buf[starts[e]:starts[e + 1]], a RawBlock of sensor index sensor[e]
    whose id is id_bytes[id_starts[s]:id_starts[s + 1]]; returns how many were not plain."""
    left = 0
    bits = np.empty(1, dtype=np.uint64)
    for e in range(starts.shape[0] - 1):
        at, end = starts[e], starts[e + 1]
        s = sensor[e]
        sensor_id = id_bytes[id_starts[s]:id_starts[s + 1]]
        ok = end - at <= MAX_PAYLOAD_BYTES and _parse_one(buf, at, end, sensor_id, out_i, out_f, e,
                                                          bits)
        out_i[e, OK] = ok
        left += not ok
    return left


@numba.njit(cache=True, nogil=True)
def sequence_check(sensor: I64Array, parsed_i: I64Array, last_seq: I64Array,
                   keep: npt.NDArray[np.bool_]) -> tuple[int, int, int]:
    """Apply each block's `seq` (-1: none) in arrival order: a repeat of the sensor's last seq is
    dropped (keep False). Returns (blocks missed, duplicates, counter resets)."""
    gaps, duplicates, resets = 0, 0, 0
    for e in range(sensor.shape[0]):
        keep[e] = True
        seq = parsed_i[e, SEQ]
        if seq < 0:
            continue
        s = sensor[e]
        last = last_seq[s]
        last_seq[s] = seq
        if last < 0:
            continue
        ahead = (seq - last) % SEQ_MODULUS
        if ahead == 0:
            duplicates += 1
            keep[e] = False
        elif ahead < SEQ_MODULUS // 2:
            gaps += ahead - 1
        else:
            resets += 1
    return gaps, duplicates, resets


@numba.njit(cache=True, nogil=True)
def gather_samples(buf: U8Array, parsed_i: I64Array, parsed_f: F64Array, received: I64Array,
                   order: I64Array, starts: I64Array, values: F64Array, times: I64Array) -> None:
    """Write the samples (float64) and times of blocks `order` (rows of the parse outputs) at
    `starts` in the batch: a block without `t0` ends at its receive time, samples `dt` apart."""
    for b in range(order.shape[0]):
        e = order[b]
        n, offset, dt = parsed_i[e, COUNT], parsed_i[e, OFFSET], parsed_f[e, DT]
        dt = 0.0 if np.isnan(dt) else dt
        t = parsed_i[e, T0]
        if t == 0:
            t = received[e] - np.int64(np.rint((n - 1) * dt))
        out = values[starts[b]:starts[b] + n]
        if offset < 0:
            out[0] = parsed_f[e, SINGLE]
        else:
            out[:] = buf[offset:offset + 4 * n].view(np.float32)  # little-endian, as the machine
        stamps = times[starts[b]:starts[b] + n]
        if dt == np.floor(dt):
            whole = np.int64(dt)
            for j in range(n):
                stamps[j] = t + j * whole
        else:
            for j in range(n):
                stamps[j] = t + np.int64(np.rint(j * dt))
