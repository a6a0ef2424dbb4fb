"""The gateway's fast summary decoder gives exactly what the contract's decode_summary gives."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.contract import DecodeError, Summary, decode_summary
from gateway.decode import SummaryDecoder

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
