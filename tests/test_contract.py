"""Contract codecs: round trips, validation messages, zero-copy decode, fuzzing, topics."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifeline.contract import (
    Alert,
    DecodeError,
    RawBlock,
    Status,
    Summary,
    TopicError,
    alert_topic,
    decode_alert,
    decode_raw_block,
    decode_status,
    decode_summary,
    ops_topic,
    parse_topic,
    raw_topic,
    status_topic,
    subscription,
    summary_topic,
    tiers_for,
)

P = "lifeline/v1"
ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def make_alert(**over: object) -> Alert:
    base = dict(id="yz-jfb-01:YZ-P-0001:high:1700000000000", agent="yz-jfb-01", sensor="YZ-P-0001",
                kind="pipe.pressure", site="jfb-valve-12", township="jiefangbei", district="yuzhong",
                rule="high", level=2, prev=1, value=0.73, ts=1_700_000_000_000, seq=42, limit=0.7,
                extra={"debounce": 3})
    base.update(over)
    return Alert(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- RawBlock


@given(sensor=ids, values=st.lists(finite, min_size=1, max_size=300),
       t0=st.integers(0, 2**62), seq=st.integers(0, 2**32 - 1), as_bin=st.booleans())
def test_raw_block_round_trip(sensor: str, values: list[float], t0: int, seq: int, as_bin: bool) -> None:
    block = RawBlock(sensor, np.array(values, dtype=np.float32), t0=t0, dt=10.0, seq=seq)
    out = decode_raw_block(block.encode(as_bin=as_bin), topic_sensor=sensor)
    assert out.sensor == sensor and out.t0 == t0 and out.seq == seq and out.dt == 10.0
    np.testing.assert_array_equal(out.values.astype(np.float32), block.values)


def test_bin_values_are_a_zero_copy_view() -> None:
    payload = RawBlock("S1", np.arange(1000, dtype=np.float32), dt=1.0).encode()
    block = decode_raw_block(payload)
    assert block.values.dtype == np.dtype("<f4")
    assert not block.values.flags.owndata  # a view on the unpacked bin, not a copy
    assert block.values[999] == 999.0


def test_array_values_decode_as_float64() -> None:
    block = decode_raw_block(pack({"v": 1, "sensor": "S1", "values": [1, 2.5], "dt": 100}))
    assert block.values.dtype == np.float64
    assert block.values.tolist() == [1.0, 2.5]


def test_sample_times_from_t0_dt_ts_and_receive_time() -> None:
    values = np.zeros(3, dtype=np.float32)
    assert RawBlock("S", values, t0=1000, dt=10.0).sample_times(0).tolist() == [1000, 1010, 1020]
    ts = np.array([5, 7, 20], dtype=np.int64)
    assert RawBlock("S", values, t0=1000, dt=10.0, ts=ts).sample_times(0).tolist() == [5, 7, 20]
    # no t0: the last sample carries the receive time
    assert RawBlock("S", values, dt=10.0).sample_times(5000).tolist() == [4980, 4990, 5000]
    assert RawBlock("S", values[:1]).sample_times(5000).tolist() == [5000]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"v": 1, "sensor": "S1"}, "missing required key 'values'"),
        ({"v": 2, "sensor": "S1", "values": [1.0]}, "unsupported version"),
        ({"sensor": "S1", "values": [1.0]}, "missing required key 'v'"),
        ({"v": 1, "sensor": "bad/id", "values": [1.0]}, "not a valid id"),
        ({"v": 1, "sensor": "S1", "values": [1.0, 2.0]}, "'dt' is required"),
        ({"v": 1, "sensor": "S1", "values": [1.0], "dt": -1}, "'dt' must be a positive"),
        ({"v": 1, "sensor": "S1", "values": b"\x00\x00\x00"}, "not a whole number of float32"),
        ({"v": 1, "sensor": "S1", "values": ["x"]}, "only numbers"),
        ({"v": 1, "sensor": "S1", "values": []}, "'values' is empty"),
        ({"v": 1, "sensor": "S1", "values": [1.0, 2.0], "ts": [1]}, "'ts' must be an array of 2"),
        ({"v": 1, "sensor": "S1", "values": [1.0], "seq": 2**32}, "'seq' = 4294967296 outside"),
        ({"v": 1, "sensor": "S1", "values": [1.0], "t0": "now"}, "'t0' must be an integer"),
    ],
)
def test_bad_raw_block_names_the_problem(payload: dict[str, object], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_raw_block(pack(payload))


def test_raw_block_sensor_must_match_topic() -> None:
    payload = RawBlock("S1", np.ones(1, dtype=np.float32)).encode()
    with pytest.raises(DecodeError, match="does not match the topic's sensor 'S2'"):
        decode_raw_block(payload, topic_sensor="S2")


def test_unknown_keys_are_ignored() -> None:
    payload = pack({"v": 1, "sensor": "S1", "values": [1.0], "battery": 3.3, "rssi": -70})
    assert decode_raw_block(payload).values.tolist() == [1.0]


# ---------------------------------------------------------------- Alert


def test_alert_round_trip() -> None:
    alert = make_alert()
    assert decode_alert(alert.encode()) == alert


def test_alert_optional_keys() -> None:
    alert = make_alert(limit=None, extra=None, level=0, prev=2, value=math.nan)
    out = decode_alert(alert.encode())
    assert out.limit is None and out.extra is None and math.isnan(out.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"level": 5}, "'level' = 5 outside"),
        ({"prev": -1}, "'prev' = -1 outside"),
        ({"value": "high"}, "'value' must be a number"),
        ({"seq": 1.5}, "'seq' must be an integer"),
        ({"extra": [1]}, "'extra' must be a map"),
        ({"ts": None}, "'ts' must be an integer"),
    ],
)
def test_bad_alert_names_the_problem(change: dict[str, object], message: str) -> None:
    obj = make_alert().to_map()
    obj.update(change)
    with pytest.raises(DecodeError, match=message):
        decode_alert(pack(obj))


@pytest.mark.parametrize("key", ["id", "agent", "sensor", "kind", "site", "township", "district",
                                 "rule", "level", "prev", "value", "ts", "seq"])
def test_alert_requires_every_key(key: str) -> None:
    obj = make_alert().to_map()
    del obj[key]
    with pytest.raises(DecodeError, match=f"missing required key '{key}'"):
        decode_alert(pack(obj))


# ---------------------------------------------------------------- Summary


def make_summary(rows: int = 3) -> Summary:
    rng = np.random.default_rng(1)
    return Summary(
        agent="yz-jfb-01", township="jiefangbei", district="yuzhong", t0=1000, t1=61000,
        sensor=[f"S{i}" for i in range(rows)], kind=["pipe.pressure"] * rows,
        site=[f"site{i}" for i in range(rows)], n=np.arange(rows, dtype=np.int64) + 60,
        min=rng.random(rows), max=rng.random(rows), mean=rng.random(rows), last=rng.random(rows),
        extra={"rms": rng.random(rows)},
    )


def test_summary_round_trip_with_extra_columns() -> None:
    summary = make_summary()
    out = decode_summary(summary.encode())
    assert (out.agent, out.t0, out.t1, out.sensor, out.site) == (
        summary.agent, summary.t0, summary.t1, summary.sensor, summary.site)
    for name in ("n", "min", "max", "mean", "last"):
        np.testing.assert_array_equal(getattr(out, name), getattr(summary, name))
    np.testing.assert_array_equal(out.extra["rms"], summary.extra["rms"])


def test_summary_columns_must_agree_in_length() -> None:
    obj = msgpack.unpackb(make_summary().encode())
    obj["mean"] = obj["mean"][:-1]
    with pytest.raises(DecodeError, match="column 'mean' must be an array of 3 numbers"):
        decode_summary(pack(obj))


def test_summary_window_must_not_run_backwards() -> None:
    obj = msgpack.unpackb(make_summary().encode())
    obj["t1"] = 10
    with pytest.raises(DecodeError, match="before its start"):
        decode_summary(pack(obj))


# ---------------------------------------------------------------- Status


def test_status_round_trip_keeps_operator_detail() -> None:
    status = Status("yz-jfb-01", "online", 1_700_000_000_000, {"backlog": 12, "version": "0.1.0"})
    assert decode_status(status.encode()) == status


def test_status_state_is_checked() -> None:
    with pytest.raises(DecodeError, match="'state' must be 'online' or 'offline'"):
        decode_status(pack({"v": 1, "agent": "a", "state": "sleeping", "ts": 1}))


# ---------------------------------------------------------------- fuzzing: only DecodeError escapes

DECODERS = [decode_raw_block, decode_alert, decode_summary, decode_status]

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["v", "sensor", "values", "dt", "ts", "t0", "seq", "id", "agent",
                                       "level", "prev", "value", "n", "min", "state", "t1", "x"]),
                      children, max_size=8),
    max_leaves=30,
)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_decode_error(payload: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(payload)
        except DecodeError:
            pass


@given(msgpack_values)
def test_arbitrary_msgpack_only_raises_decode_error(obj: object) -> None:
    try:
        payload = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    for decode in DECODERS:
        try:
            decode(payload)
        except DecodeError:
            pass


def test_deeply_nested_payload_is_a_decode_error() -> None:
    payload = b"\x91" * 100_000 + b"\xc0"  # 100 000 nested one-element arrays
    with pytest.raises(DecodeError):
        decode_alert(payload)


# ---------------------------------------------------------------- topics and tiers


@given(district=ids, site=ids, sensor=ids, agent=ids)
def test_topics_round_trip(district: str, site: str, sensor: str, agent: str) -> None:
    assert parse_topic(P, raw_topic(P, sensor)).sensor == sensor
    parsed = parse_topic(P, alert_topic(P, district, site, sensor))
    assert (parsed.kind, parsed.district, parsed.site, parsed.sensor) == ("alert", district, site, sensor)
    assert parse_topic(P, summary_topic(P, agent)).agent == agent
    assert parse_topic(P, status_topic(P, agent)).agent == agent
    ops = parse_topic(P, ops_topic(P, "city", district))
    assert (ops.tier, ops.district) == ("city", district)


@pytest.mark.parametrize("topic", [
    "other/raw/S1", f"{P}/raw", f"{P}/raw/S1/extra", f"{P}/alert/d/S1", f"{P}/nope/S1",
    f"{P}/ops/planet/d", f"{P}/raw/+",
])
def test_topics_with_unexpected_levels_are_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(P, topic)


def test_subscription_filters() -> None:
    assert subscription(P, "alert") == f"{P}/alert/+/+/+"
    assert subscription(P, "raw") == f"{P}/raw/+"


@pytest.mark.parametrize(("level", "prev", "tiers"), [
    (1, 0, ("township",)),
    (2, 1, ("township", "district")),
    (4, 3, ("township", "district", "city")),
    (0, 3, ("township", "district", "city")),  # the clear reaches every tier that saw the raise
    (0, 1, ("township",)),
])
def test_tier_routing(level: int, prev: int, tiers: tuple[str, ...]) -> None:
    assert tiers_for(level, prev) == tiers
