"""The gateway's fast decoders give exactly what the contract's decode_summary and decode_alert give."""

from __future__ import annotations

from typing import Any, Final

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode import AlertDecoder, SummaryDecoder
from lifeline.contract import Alert, DecodeError, Summary, decode_alert, decode_summary
from lifeline.contract.messages import MAX_PAYLOAD_BYTES

VALID_IDS = st.sampled_from(["S-1", "S.2", "a_b", "x" * 64])
BAD_IDS = st.sampled_from(["x" * 65, "bad id", "", "ü", "S/1"])
NUMBERS = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.integers(min_value=2**63 - 2, max_value=2**64 - 1),
    st.integers(min_value=-(2**63), max_value=-(2**63) + 2),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
)


@st.composite
def summary_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """Mostly well-formed summary maps, each with up to two faults of the kinds agents get wrong."""
    rows = draw(st.integers(min_value=0, max_value=4))

    def column(values: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(values, min_size=rows, max_size=rows))

    obj: dict[Any, Any] = {
        "v": 1,
        "agent": draw(VALID_IDS),
        "township": draw(VALID_IDS),
        "district": draw(VALID_IDS),
        "t0": draw(st.sampled_from([0, 1000])),
        "t1": draw(st.sampled_from([1000, 2000, 2**63 - 1])),
        "sensor": column(VALID_IDS),
        "kind": column(st.sampled_from(["pipe.flow", "", "x y"])),
        "site": column(VALID_IDS),
        "n": column(st.integers(min_value=0, max_value=2**63 - 1)),
    }
    for name in ("min", "max", "mean", "last"):
        obj[name] = column(st.floats())
    for name in draw(st.lists(st.sampled_from(["rms", "f_peak", "note"]), max_size=3, unique=True)):
        obj[name] = column(st.one_of(st.floats(), st.integers(min_value=-5, max_value=5), NUMBERS))
    faults = draw(
        st.lists(
            st.sampled_from(
                ["drop", "wrong type", "short", "numbers", "bad id", "bad scalar", "raw key"]
            ),
            max_size=2,
        )
    )
    for fault in faults:
        key = draw(st.sampled_from(sorted(k for k in obj if isinstance(k, str))))
        if fault == "drop":
            del obj[key]
        elif fault == "wrong type":
            obj[key] = draw(st.sampled_from([None, "x", 5, {"a": 1}, b"bin", True]))
        elif fault == "short" and isinstance(obj[key], list) and obj[key]:
            obj[key] = obj[key][:-1]
        elif fault == "numbers":
            obj[key] = column(NUMBERS)
        elif fault == "bad id":
            target = draw(st.sampled_from(["agent", "township", "district", "sensor", "site"]))
            if target in ("sensor", "site") and rows:
                obj[target] = [*obj[target][:-1], draw(BAD_IDS)]
            elif target not in ("sensor", "site"):
                obj[target] = draw(BAD_IDS)
        elif fault == "bad scalar":
            obj[draw(st.sampled_from(["v", "t0", "t1"]))] = draw(
                st.sampled_from([2, True, "1", -1, 1.5, 2**63, 500, 2**64 - 1])
            )
        elif fault == "raw key":
            obj[b"raw-key"] = column(st.floats())
    return obj


def outcome(decode: Any, payload: bytes) -> tuple[str, Any]:
    try:
        s: Summary = decode(payload)
    except DecodeError as exc:
        return "error", str(exc)
    arrays = {k: getattr(s, k).tolist() for k in ("n", "min", "max", "mean", "last")}
    extra = {k: (v.dtype.str, v.tolist()) for k, v in s.extra.items()}
    return "ok", (
        s.agent,
        s.township,
        s.district,
        s.t0,
        s.t1,
        s.sensor,
        s.kind,
        s.site,
        s.n.dtype.str,
        repr(arrays),
        repr(extra),
    )


@given(summary_maps())
def test_fast_decoder_agrees_with_the_contract(obj: dict[Any, Any]) -> None:
    payload = msgpack.packb(obj, use_bin_type=True)
    assert outcome(SummaryDecoder().decode, payload) == outcome(decode_summary, payload)


def test_well_formed_summaries_take_the_fast_path_and_others_the_contracts() -> None:
    decoder = SummaryDecoder(max_known_ids=3)
    rows = 5
    good = Summary(
        agent="a-1",
        township="t",
        district="d",
        t0=0,
        t1=60_000,
        sensor=[f"S-{i}" for i in range(rows)],
        kind=["pipe.flow"] * rows,
        site=["site"] * rows,
        n=np.arange(rows),
        min=np.zeros(rows),
        max=np.ones(rows),
        mean=np.full(rows, 0.5),
        last=np.full(rows, np.nan),
        extra={"rms": np.ones(rows)},
    )
    for _ in range(3):
        assert outcome(decoder.decode, good.encode()) == outcome(decode_summary, good.encode())
    assert (decoder.fast, decoder.slow) == (3, 0)
    with pytest.raises(DecodeError, match="not valid MessagePack"):
        decoder.decode(b"\xc1")
    assert decoder.slow == 1


# --------------------------------------------------------------------------- alerts

ALERT_IDS = st.sampled_from(["S-1", "S.2", "a_b", "x" * 64, "bench-agent", "d1"])
ALERT_STR_KEYS = ("id", "agent", "sensor", "kind", "site", "township", "district", "rule")
ALERT_INT_KEYS = ("v", "level", "prev", "ts", "seq")
ALERT_REQUIRED = (*ALERT_STR_KEYS, *ALERT_INT_KEYS, "value")
WRONG_VALUES = st.one_of(
    st.sampled_from(
        [None, "", "x", "bad id", "x" * 65, "ü", 0, 1, 4, 5, -1, 2**63 - 1, 2**63, 2**64 - 1,
         -(2**63), 1.0, 1.5, float("nan"), True, False, b"bin", b"S-1", [], ["S-1"], {}, {"a": 1},
         msgpack.ExtType(5, b"x")]
    ),
    BAD_IDS,
)
MSGPACK_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(),
        st.text(max_size=4),
        st.binary(max_size=4),
        ALERT_IDS,
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
#: Per key, the values just outside what the contract accepts (and a few just inside).
NEAR_MISSES: dict[str, list[Any]] = {
    **{k: ["", "bad id", "x" * 65, "S/1", "ü", b"S-1", 1, None] for k in ALERT_STR_KEYS},
    "id": ["", "bad id", b"a:1", 1, None],
    "kind": ["", "x y", b"pipe.flow", 1, None],
    "rule": ["", "x y", b"high", 1, None],
    "v": [0, 2, True, 1.0, "1", None],
    "level": [-1, 0, 4, 5, True, 1.0, "1", None],
    "prev": [-1, 0, 4, 5, True, 1.0, "1", None],
    "ts": [-1, 0, 2**63 - 1, 2**63, 2**64 - 1, True, 1.0, None],
    "seq": [-1, 0, 2**63 - 1, 2**63, 2**64 - 1, True, 1.0, None],
    "value": [True, "1", b"1", None, [1.0], 2**64 - 1, -(2**63), float("nan"), -0.0],
    "limit": [True, "1", b"1", None, [1.0], 2**64 - 1, float("inf"), 0],
    "extra": [[], "x", 1, True, b"x", None, {}, {"a": [1, {"b": None}]}],
}
#: One decoder for every example, with a small id cache, so cache hits, misses and clears all
#: meet bad payloads (a cached id must never vouch for anything but itself).
SHARED_ALERTS = AlertDecoder(max_known_ids=8)


@st.composite
def alert_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """Valid alert maps, some with a required key missing or of a wrong type, or extra keys."""
    obj: dict[Any, Any] = {
        "v": 1,
        "id": draw(st.sampled_from(["a:1", "x", "agent:S-1:high:17"])),
        "agent": draw(ALERT_IDS),
        "sensor": draw(ALERT_IDS),
        "kind": draw(st.sampled_from(["pipe.flow", "", "x y", "ü"])),
        "site": draw(ALERT_IDS),
        "township": draw(ALERT_IDS),
        "district": draw(ALERT_IDS),
        "rule": draw(st.sampled_from(["high", "low", "spike", "x y"])),
        "level": draw(st.integers(min_value=0, max_value=4)),
        "prev": draw(st.integers(min_value=0, max_value=4)),
        "value": draw(st.one_of(st.floats(), st.integers(min_value=-(2**63), max_value=2**64 - 1))),
        "ts": draw(st.sampled_from([0, 1, 1_700_000_000_000, 2**63 - 1])),
        "seq": draw(st.sampled_from([0, 7, 2**63 - 1])),
    }
    if draw(st.booleans()):
        obj["limit"] = draw(st.one_of(st.none(), st.floats(), st.integers(-5, 5), WRONG_VALUES))
    if draw(st.booleans()):
        obj["extra"] = draw(st.one_of(st.none(), MSGPACK_VALUES, WRONG_VALUES))
    for key in draw(st.lists(st.sampled_from(sorted(NEAR_MISSES)), max_size=2, unique=True)):
        fault = draw(st.sampled_from(["drop", "near miss", "near miss", "wrong"]))
        if fault == "drop":
            obj.pop(key, None)
        elif fault == "near miss":
            obj[key] = draw(st.sampled_from(NEAR_MISSES[key]))
        else:
            obj[key] = draw(WRONG_VALUES)
    for key in draw(st.lists(st.one_of(st.text(max_size=3), st.binary(max_size=3)), max_size=2)):
        obj.setdefault(key, draw(MSGPACK_VALUES))
    return obj


def alert_outcome(decode: Any, payload: bytes) -> tuple[str, Any]:
    """The decoded alert field by field (type and repr, so 1 vs 1.0 and NaN count), or the error."""
    try:
        alert: Alert = decode(payload)
    except DecodeError:
        return "error", None
    return "ok", [
        (name, type(getattr(alert, name)).__name__, repr(getattr(alert, name)))
        for name in Alert.__dataclass_fields__
    ]


GOOD_ALERT: Final = Alert(
    id="a:1", agent="ag-1", sensor="S-1", kind="pipe.flow", site="site-1", township="t",
    district="d", rule="high", level=2, prev=1, value=0.7, ts=1000, seq=3, limit=0.6,
    extra={"rate": 0.1},
)


@pytest.mark.parametrize(
    ("key", "value"),
    [(k, v) for k, values in NEAR_MISSES.items() for v in [*values, "<missing>"]],
)
def test_fast_alert_decoder_agrees_on_each_key_out_of_bounds(key: str, value: Any) -> None:
    obj = GOOD_ALERT.to_map()
    if value == "<missing>":
        obj.pop(key, None)
    else:
        obj[key] = value
    payload = msgpack.packb(obj, use_bin_type=True)
    warm = AlertDecoder()
    warm.decode(GOOD_ALERT.encode())  # every id of GOOD_ALERT known to the cache
    expected = alert_outcome(decode_alert, payload)
    assert alert_outcome(warm.decode, payload) == expected
    assert alert_outcome(AlertDecoder().decode, payload) == expected


@settings(max_examples=300)
@given(alert_maps())
def test_fast_alert_decoder_agrees_with_the_contract(obj: dict[Any, Any]) -> None:
    payload = msgpack.packb(obj, use_bin_type=True)
    expected = alert_outcome(decode_alert, payload)
    assert alert_outcome(SHARED_ALERTS.decode, payload) == expected
    assert alert_outcome(AlertDecoder().decode, payload) == expected


@given(st.dictionaries(st.sampled_from(ALERT_REQUIRED) | st.text(max_size=3), MSGPACK_VALUES))
def test_fast_alert_decoder_agrees_on_arbitrary_maps(obj: dict[Any, Any]) -> None:
    payload = msgpack.packb(obj, use_bin_type=True)
    assert alert_outcome(SHARED_ALERTS.decode, payload) == alert_outcome(decode_alert, payload)


@given(st.binary(max_size=64) | MSGPACK_VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True)))
def test_fast_alert_decoder_agrees_on_arbitrary_bytes(payload: bytes) -> None:
    assert alert_outcome(SHARED_ALERTS.decode, payload) == alert_outcome(decode_alert, payload)


def test_well_formed_alerts_take_the_fast_path_and_others_the_contracts() -> None:
    decoder = AlertDecoder(max_known_ids=6)
    alerts = [
        Alert(id=f"a:{i}", agent="ag-1", sensor=f"S-{i % 3}", kind="pipe.flow", site="site",
              township="t", district="d", rule="high", level=i % 5, prev=(i + 1) % 5,
              value=0.5 * i, ts=1000 + i, seq=i, limit=0.6 if i % 2 else None,
              extra={"n": i} if i % 3 else None)
        for i in range(6)
    ]
    for alert in alerts:
        assert decoder.decode(alert.encode()) == alert
    assert (decoder.fast, decoder.slow) == (6, 0)
    with pytest.raises(DecodeError, match="not valid MessagePack"):
        decoder.decode(b"\xc1")
    too_big = {**alerts[0].to_map(), "extra": {"blob": b"x" * MAX_PAYLOAD_BYTES}}
    with pytest.raises(DecodeError, match="exceeds"):
        decoder.decode(msgpack.packb(too_big, use_bin_type=True))
    assert decoder.slow == 2
