"""The batch RawBlock decoder takes exactly what the Python decoder takes, with the same result."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import SensorSettings, sensor_rules
from edge_agent.inputs import raw_decode
from edge_agent.pipeline import AgentIdentity, Pipeline, fast_raw_block
from edge_agent.registry import SensorRegistry

SENSOR = "S-1"
P = "lifeline/v1"
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def encoded_int(value: int, form: str) -> bytes:
    """`value` in a chosen MessagePack integer encoding (msgpack itself picks the shortest)."""
    fmt = {"u8": (0xCC, ">B"), "u16": (0xCD, ">H"), "u32": (0xCE, ">I"), "u64": (0xCF, ">Q"),
           "i8": (0xD0, ">b"), "i16": (0xD1, ">h"), "i32": (0xD2, ">i"), "i64": (0xD3, ">q")}
    if form == "packb":
        return msgpack.packb(value)
    tag, code = fmt[form]
    return bytes([tag]) + struct.pack(code, value)


class Raw:
    """A pre-encoded MessagePack value, spliced into a map by `payload`."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def payload(fields: list[tuple[str, Any]], trailing: bytes = b"") -> bytes:
    """A map of `fields` in order (keys may repeat), values given as objects or `Raw` bytes."""
    out = bytearray([0x80 | len(fields)] if len(fields) < 16 else [0xDE, 0, len(fields)])
    for key, value in fields:
        out += msgpack.packb(key)
        out += value.data if isinstance(value, Raw) else msgpack.packb(value, use_bin_type=True)
    return bytes(out) + trailing


def ints(lo: int, hi: int) -> st.SearchStrategy[Raw]:
    forms = ["packb", "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64"]
    limits = {"u8": (0, 255), "u16": (0, 65535), "u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1),
              "i8": (-128, 127), "i16": (-2**15, 2**15 - 1), "i32": (-2**31, 2**31 - 1),
              "i64": (-2**63, 2**63 - 1), "packb": (-2**63, 2**64 - 1)}

    @st.composite
    def draw(d: st.DrawFn) -> Raw:
        form = d(st.sampled_from(forms))
        a, b = limits[form]
        value = d(st.integers(max(lo, a), min(hi, b))) if max(lo, a) <= min(hi, b) else 0
        return Raw(encoded_int(value, form if max(lo, a) <= min(hi, b) else "packb"))

    return draw()


floats = st.floats(allow_nan=True, allow_infinity=True)
float32_bits = st.floats(width=32, allow_nan=False).map(
    lambda f: Raw(b"\xca" + struct.pack(">f", f)))
any_value = st.one_of(st.none(), st.booleans(), floats, st.text(max_size=3), st.binary(max_size=9),
                      ints(-2**63, 2**64 - 1), float32_bits, st.lists(floats, max_size=2))


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` nine times in ten, else `other`."""
    return st.integers(0, 9).flatmap(lambda k: valid if k else other)


@st.composite
def raw_blocks(draw: st.DrawFn) -> bytes:
    """Plain RawBlocks, near misses and junk, in varied encodings."""
    n = draw(st.sampled_from([1, 2, 3, 8]))
    values = mostly(
        st.one_of(st.binary(min_size=4 * n, max_size=4 * n),
                  st.lists(floats, min_size=1, max_size=1),
                  float32_bits.map(lambda r: Raw(b"\x91" + r.data))),
        st.one_of(st.binary(max_size=10), st.lists(st.integers(-3, 3), min_size=1, max_size=1),
                  any_value))
    candidates = {
        "v": mostly(st.one_of(st.just(1), ints(1, 1)), st.one_of(ints(-2, 3), any_value)),
        "sensor": mostly(st.just(SENSOR), st.sampled_from(["S-2", "S-10", ""]) | any_value),
        "values": values,
        "t0": mostly(st.one_of(st.none(), ints(0, 2**63 - 1)), ints(-5, 2**64 - 1) | any_value),
        "dt": mostly(st.one_of(st.none(), st.floats(1e-3, 1e6), ints(1, 2**40), float32_bits),
                     st.one_of(st.floats(-1, 0), ints(-3, 2**64 - 1), any_value)),
        "seq": mostly(st.one_of(st.none(), ints(0, 2**32 - 1)), ints(-3, 2**33) | any_value),
        "ts": st.lists(st.integers(0, 10), max_size=2),
        "x": any_value,
    }
    required = ["v", "sensor", "values"]
    keys = required + draw(st.lists(st.sampled_from(["t0", "dt", "seq"]), unique=True))
    if draw(st.integers(0, 9)) == 0:
        keys.append(draw(st.sampled_from(["ts", "x", "v"])))  # extra or repeated key
    if draw(st.integers(0, 9)) == 0:
        keys.remove(draw(st.sampled_from(required)))
    keys = draw(st.permutations(keys))
    trailing = b"\x00" if draw(st.integers(0, 19)) == 0 else b""
    body = payload([(k, draw(candidates[k])) for k in keys], trailing)
    if draw(st.integers(0, 19)) == 0:
        body = body[:draw(st.integers(0, len(body)))]
    return body


def parse(payloads: list[bytes], sensor: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    starts = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in payloads], out=starts[1:])
    ids = [SENSOR.encode(), b"S-2"]
    id_starts = np.array([0, len(ids[0]), len(ids[0]) + len(ids[1])], dtype=np.int64)
    out_i = np.zeros((len(payloads), raw_decode.N_INT), dtype=np.int64)
    out_f = np.zeros((len(payloads), raw_decode.N_FLOAT))
    raw_decode.parse_raw_blocks(buf, starts, np.full(len(payloads), sensor, dtype=np.int64),
                                np.frombuffer(b"".join(ids), dtype=np.uint8), id_starts, out_i,
                                out_f)
    return buf, out_i, out_f


@SETTINGS
@given(body=raw_blocks())
def test_a_block_the_kernel_takes_decodes_as_the_python_decoder_decodes_it(body: bytes) -> None:
    buf, out_i, out_f = parse([body])
    if not out_i[0, raw_decode.OK]:
        return  # left to the Python decoder: nothing to compare
    fast = fast_raw_block(body, SENSOR)
    assert fast is not None, "the kernel took a block the Python decoder refuses"
    values, t0, dt, seq = fast
    assert out_i[0, raw_decode.T0] == t0
    assert out_i[0, raw_decode.SEQ] == (-1 if seq is None else seq)
    got_dt = out_f[0, raw_decode.DT]
    assert (dt is None and math.isnan(got_dt)) or got_dt == dt
    if type(values) is float:
        assert out_i[0, raw_decode.COUNT] == 1 and out_i[0, raw_decode.OFFSET] == -1
        single = out_f[0, raw_decode.SINGLE]
        assert single == values or (math.isnan(single) and math.isnan(values))
    else:
        at, n = out_i[0, raw_decode.OFFSET], out_i[0, raw_decode.COUNT]
        assert buf[at:at + 4 * n].tobytes() == values


@pytest.mark.parametrize("body", [
    payload([("v", 1), ("sensor", SENSOR), ("values", [0.5])]),
    payload([("sensor", SENSOR), ("values", b"\0\0\x80\x3f" * 3), ("dt", 10), ("v", 1),
             ("t0", 1_700_000_000_000), ("seq", 2**32 - 1)]),
    payload([("v", Raw(encoded_int(1, "i64"))), ("sensor", SENSOR), ("values", [1.0]),
             ("t0", None), ("seq", None), ("dt", Raw(b"\xca" + struct.pack(">f", 0.5)))]),
])
def test_the_common_shapes_take_the_kernel_path(body: bytes) -> None:
    assert parse([body])[1][0, raw_decode.OK] == 1
    assert parse([body], sensor=1)[1][0, raw_decode.OK] == 0  # another sensor's topic


def make_pipeline() -> Pipeline:
    settings_ = [SensorSettings(id=sid, kind="test.level", site="s", high=[0.6, 0.7], debounce=1)
                 for sid in (SENSOR, "S-2")]
    rules = [sensor_rules(s, i) for i, s in enumerate(settings_)]
    return Pipeline(SensorRegistry(settings_), rules,
                    agent=AgentIdentity("a", "d", "t"), clock=lambda: 1_700_000_000_000)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.tuples(st.sampled_from([SENSOR, "S-2"]), st.integers(1, 5),
                                 st.sampled_from([None, 0, 1, 2, 7, 2**32 - 1]),
                                 st.sampled_from([0, 1_700_000_000_000]),
                                 st.sampled_from([None, 1.0, 2.5])), min_size=1, max_size=12))
def test_a_plain_batch_gives_the_same_batch_and_counters_as_the_python_path(
        blocks: list[tuple[str, int, int | None, int, float | None]]) -> None:
    rng = np.random.default_rng(3)
    raw = []
    for k, (sensor, n, seq, t0, dt) in enumerate(blocks):
        values = rng.normal(0.5, 0.2, n).astype(np.float32)
        fields: list[tuple[str, Any]] = [("v", 1), ("sensor", sensor)]
        fields.append(("values", [float(values[0])] if n == 1 else values.tobytes()))
        fields += [("t0", t0), ("dt", dt if dt is not None or n == 1 else 1.0), ("seq", seq)]
        raw.append((f"{P}/raw/{sensor}", payload(fields), 1_700_000_000_000 + 7 * k))
    kernel, python = make_pipeline(), make_pipeline()
    python._plain_batch = lambda raw: (False, None)  # type: ignore[method-assign]
    for part in (raw, raw[::2]):  # twice, so seqs repeat, jump and wrap across batches
        a, b = kernel.build_batch(part, []), python.build_batch(part, [])
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            for column in ("values", "times", "block_sensor", "block_start", "arrived",
                           "first_arrival", "last_arrival"):
                assert np.array_equal(getattr(a, column), getattr(b, column)), column
    assert kernel.counters == python.counters
    assert np.array_equal(kernel._last_seq, python._last_seq)
