"""Shortest round-trip decimal text for float64 values, as Numba kernels (Grisu2).

Python's `repr(float)` costs about 0.6 µs a value, which alone would cap the gateway well below
its target of 200 k summary rows (over a million field values) a second. Grisu2 (Loitsch 2010,
as in RapidJSON's dtoa.h) uses only 64-bit integer arithmetic and a table of cached powers of
ten; its output always parses back to the same double and is the shortest such text for about
99.9 % of inputs (otherwise one digit longer). Infinite and NaN values are never formatted here:
the caller skips them (line protocol cannot carry them).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Final

import numba
import numpy as np
import numpy.typing as npt
from numba.cpython.unsafe.numbers import leading_zeros

U64 = np.uint64


def _cached_powers() -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Normalised 64-bit significands and binary exponents of 10^-348, 10^-340, ..., 10^340."""
    fs: list[int] = []
    es: list[int] = []
    for i in range(87):
        value = Fraction(10) ** (-348 + 8 * i)
        e = value.numerator.bit_length() - value.denominator.bit_length() - 64
        while Fraction(2) ** e * 2**64 <= value:
            e += 1
        while Fraction(2) ** e * 2**63 > value:
            e -= 1
        scaled = value / Fraction(2) ** e
        f = int(scaled)
        if scaled - f >= Fraction(1, 2):
            f += 1
        if f == 2**64:  # rounding carried out of 64 bits
            f, e = 2**63, e + 1
        fs.append(f)
        es.append(e)
    return np.array(fs, dtype=np.uint64), np.array(es, dtype=np.int64)


_POW_F, _POW_E = _cached_powers()
_POW10: Final = np.array([10**i for i in range(20)], dtype=np.uint64)
_POW10_32: Final = np.array([10**i for i in range(10)], dtype=np.uint32)

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _mul(af: np.uint64, bf: np.uint64) -> np.uint64:
    """High 64 bits of the 128-bit product, rounded (DiyFp multiplication)."""
    m32 = U64(0xFFFFFFFF)
    s32 = U64(32)
    a = af >> s32
    b = af & m32
    c = bf >> s32
    d = bf & m32
    ac = a * c
    bc = b * c
    ad = a * d
    bd = b * d
    tmp = (bd >> s32) + (ad & m32) + (bc & m32) + (U64(1) << U64(31))
    return ac + (ad >> s32) + (bc >> s32) + (tmp >> s32)


@_jit
def _grisu_round(
    digits: npt.NDArray[np.uint8],
    n: int,
    delta: np.uint64,
    rest: np.uint64,
    ten_kappa: np.uint64,
    wp_w: np.uint64,
) -> None:
    while (
        rest < wp_w
        and delta - rest >= ten_kappa
        and (rest + ten_kappa < wp_w or wp_w - rest > rest + ten_kappa - wp_w)
    ):
        digits[n - 1] -= 1
        rest += ten_kappa


@_jit
def _count_digits(p: np.uint32) -> int:
    """Decimal digits of p (1..10)."""
    for k in range(1, 10):
        if p < _POW10_32[k]:
            return k
    return 10


@_jit
def _split_digit(p: np.uint32, kappa: int) -> tuple[int, np.uint32]:
    """Leading digit of a kappa-digit number and the rest, dividing by literal constants.

    A division by a constant compiles to a multiply and shift; by a table entry it would not.
    """
    if kappa == 10:
        return int(p // np.uint32(1000000000)), p % np.uint32(1000000000)
    if kappa == 9:
        return int(p // np.uint32(100000000)), p % np.uint32(100000000)
    if kappa == 8:
        return int(p // np.uint32(10000000)), p % np.uint32(10000000)
    if kappa == 7:
        return int(p // np.uint32(1000000)), p % np.uint32(1000000)
    if kappa == 6:
        return int(p // np.uint32(100000)), p % np.uint32(100000)
    if kappa == 5:
        return int(p // np.uint32(10000)), p % np.uint32(10000)
    if kappa == 4:
        return int(p // np.uint32(1000)), p % np.uint32(1000)
    if kappa == 3:
        return int(p // np.uint32(100)), p % np.uint32(100)
    if kappa == 2:
        return int(p // np.uint32(10)), p % np.uint32(10)
    return int(p), np.uint32(0)


@_jit
def _grisu2(
    bits: np.uint64,
    digits: npt.NDArray[np.uint8],
    pow_f: npt.NDArray[np.uint64],
    pow_e: npt.NDArray[np.int64],
    pow10: npt.NDArray[np.uint64],
) -> tuple[int, int]:
    """Digits of a positive finite double (by its bits) into `digits`: value = digits * 10^K."""
    one = U64(1)
    biased = np.int64((bits & U64(0x7FF0000000000000)) >> U64(52))
    significand = bits & U64((1 << 52) - 1)
    hidden = U64(1 << 52)
    if biased != 0:
        f = significand + hidden
        e = biased - 1075
    else:
        f = significand
        e = np.int64(-1074)
    # boundaries m+ and m-, normalised to the same exponent
    pf = (f << one) + one
    pe = e - 1
    lz: int = leading_zeros(pf)  # type: ignore[call-arg]  # normalise m+ so its top bit is set
    pf <<= U64(lz)
    pe -= lz
    if f == hidden:
        mf = (f << U64(2)) - one
        me = e - 2
    else:
        mf = (f << one) - one
        me = e - 1
    mf <<= U64(me - pe)
    # cached power c_mk so that the product's exponent lands in [-60, -32]
    dk = (-61 - pe) * 0.30102999566398114 + 347.0
    k = np.int64(dk)
    if dk - k > 0.0:
        k += 1
    index = (k >> 3) + 1
    big_k = -(-348 + index * 8)
    cf = pow_f[index]
    ce = pow_e[index]
    # normalise v
    wf = f << U64(leading_zeros(f))
    w_f = _mul(wf, cf)
    wp_f = _mul(pf, cf) - one
    wp_e = pe + ce + 64
    wm_f = _mul(mf, cf) + one
    delta = wp_f - wm_f
    # digit generation
    shift = U64(-wp_e)
    one_f = one << shift
    wp_w = wp_f - w_f
    p1 = np.uint32(wp_f >> shift)  # < 2^32: the cached power puts the exponent in [-60, -32]
    p2 = wp_f & (one_f - one)
    kappa = _count_digits(p1)
    n = 0
    while kappa > 0:
        d, p1 = _split_digit(p1, kappa)
        if d != 0 or n != 0:
            digits[n] = np.uint8(48 + d)
            n += 1
        kappa -= 1
        tmp = (U64(p1) << shift) + p2
        if tmp <= delta:
            big_k += kappa
            _grisu_round(digits, n, delta, tmp, pow10[kappa] << shift, wp_w)
            return n, big_k
    while True:
        p2 *= U64(10)
        delta *= U64(10)
        d = p2 >> shift
        if d != U64(0) or n != 0:
            digits[n] = np.uint8(48 + d)
            n += 1
        p2 &= one_f - one
        kappa -= 1
        if p2 < delta:
            big_k += kappa
            scale = pow10[-kappa] if -kappa < 20 else U64(0)
            _grisu_round(digits, n, delta, p2, one_f, wp_w * scale)
            return n, big_k


@_jit
def _write_exponent(out: npt.NDArray[np.uint8], pos: int, exp: int) -> int:
    out[pos] = 101  # 'e'
    pos += 1
    if exp < 0:
        out[pos] = 45  # '-'
        pos += 1
        exp = -exp
    if exp >= 100:
        out[pos] = 48 + exp // 100
        pos += 1
        exp %= 100
        out[pos] = 48 + exp // 10
        pos += 1
    elif exp >= 10:
        out[pos] = 48 + exp // 10
        pos += 1
    out[pos] = 48 + exp % 10
    return pos + 1


@_jit
def write_float(
    out: npt.NDArray[np.uint8],
    pos: int,
    bits: np.uint64,
    digits: npt.NDArray[np.uint8],
    pow_f: npt.NDArray[np.uint64],
    pow_e: npt.NDArray[np.int64],
    pow10: npt.NDArray[np.uint64],
) -> int:
    """Write the finite double with these bits as shortest decimal text at `out[pos]` (<= 25 bytes).

    Returns the new position. Taking the bits (a uint64 view of the caller's float64 array)
    avoids a bit-cast per value inside the kernel.
    """
    sign = U64(1) << U64(63)
    if bits & sign:
        out[pos] = 45
        pos += 1
        bits &= ~sign
    if bits == U64(0):
        out[pos] = 48
        return pos + 1
    n, k = _grisu2(bits, digits, pow_f, pow_e, pow10)
    kk = n + k  # 10^(kk-1) <= value < 10^kk
    if 0 <= k and kk <= 21:
        for i in range(n):
            out[pos + i] = digits[i]
        pos += n
        for _ in range(k):
            out[pos] = 48
            pos += 1
    elif 0 < kk <= 21:
        for i in range(kk):
            out[pos + i] = digits[i]
        pos += kk
        out[pos] = 46  # '.'
        pos += 1
        for i in range(kk, n):
            out[pos] = digits[i]
            pos += 1
    elif -6 < kk <= 0:
        out[pos] = 48
        out[pos + 1] = 46
        pos += 2
        for _ in range(-kk):
            out[pos] = 48
            pos += 1
        for i in range(n):
            out[pos] = digits[i]
            pos += 1
    elif n == 1:
        out[pos] = digits[0]
        pos = _write_exponent(out, pos + 1, kk - 1)
    else:
        out[pos] = digits[0]
        out[pos + 1] = 46
        pos += 2
        for i in range(1, n):
            out[pos] = digits[i]
            pos += 1
        pos = _write_exponent(out, pos, kk - 1)
    return pos


@_jit
def write_int(out: npt.NDArray[np.uint8], pos: int, value: np.int64) -> int:
    """Write a signed 64-bit integer in decimal at `out[pos]`; returns the new position."""
    if value < 0:
        out[pos] = 45
        pos += 1
        mag = U64(0) - U64(value)  # two's complement magnitude, right for the minimum too
    else:
        mag = U64(value)
    if mag == U64(0):
        out[pos] = 48
        return pos + 1
    start = pos
    while mag != U64(0):
        out[pos] = np.uint8(U64(48) + mag % U64(10))
        mag //= U64(10)
        pos += 1
    i = start
    j = pos - 1
    while i < j:
        out[i], out[j] = out[j], out[i]
        i += 1
        j -= 1
    return pos


@_jit
def _format_all(
    values: npt.NDArray[np.uint64],
    out: npt.NDArray[np.uint8],
    ends: npt.NDArray[np.int64],
    pow_f: npt.NDArray[np.uint64],
    pow_e: npt.NDArray[np.int64],
    pow10: npt.NDArray[np.uint64],
) -> None:
    digits = np.empty(32, dtype=np.uint8)
    pos = 0
    for i in range(values.shape[0]):
        pos = write_float(out, pos, values[i], digits, pow_f, pow_e, pow10)
        ends[i] = pos


def format_floats(values: npt.ArrayLike) -> list[str]:
    """Each finite value as shortest round-trip decimal text (for tests and diagnostics)."""
    arr = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if not np.isfinite(arr).all():
        raise ValueError("format_floats takes finite values only")
    out = np.empty(arr.size * 25 + 1, dtype=np.uint8)
    ends = np.empty(arr.size, dtype=np.int64)
    _format_all(arr.view(np.uint64), out, ends, _POW_F, _POW_E, _POW10)
    text = out[: int(ends[-1]) if arr.size else 0].tobytes().decode("ascii")
    starts = np.concatenate(([0], ends[:-1])) if arr.size else ends
    return [text[int(s) : int(e)] for s, e in zip(starts, ends)]


#: The tables the kernels need, passed explicitly so the cached machine code stays valid.
TABLES: Final = (_POW_F, _POW_E, _POW10)
