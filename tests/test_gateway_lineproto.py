"""Line protocol of the store schema: exact float text, escaping, NaN/inf, idempotent bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from gateway.floatfmt import format_floats
from gateway.lineproto import (
    PrefixCache,
    alert_table,
    counters_table,
    escape_key,
    format_table,
    reading_table,
    status_table,
)
from lifeline.contract import Alert, Status, Summary

Fields = dict[str, float | int]


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in ",= ":
            current += text[i : i + 2]
            i += 2
            continue
        if c == sep:
            parts.append(current)
            current = ""
        else:
            current += c
        i += 1
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    return text.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")


def parse_line(line: str) -> tuple[str, dict[str, str], Fields, int]:
    """A line-protocol line as (measurement, tags, fields, time), numbers parsed like a store."""
    series, fields_text, ts = _split_unescaped(line, " ")
    measurement, *tag_parts = _split_unescaped(series, ",")
    tags: dict[str, str] = {}
    for part in tag_parts:
        key, value = _split_unescaped(part, "=")
        tags[_unescape(key)] = _unescape(value)
    fields: Fields = {}
    for item in _split_unescaped(fields_text, ","):
        key, value = _split_unescaped(item, "=")
        fields[_unescape(key)] = int(value[:-1]) if value.endswith("i") else float(value)
    return _unescape(measurement), tags, fields, int(ts)


def parse_body(body: bytes) -> list[tuple[str, dict[str, str], Fields, int]]:
    text = body.decode()
    assert text.endswith("\n")
    return [parse_line(line) for line in text.splitlines()]


def _summary(rows: int, seed: int = 3) -> Summary:
    rng = np.random.default_rng(seed)
    return Summary(
        agent="yz-jfb-01",
        township="jiefangbei",
        district="yuzhong",
        t0=1_700_000_000_000,
        t1=1_700_000_060_000,
        sensor=[f"YZ-P-{i:04d}" for i in range(rows)],
        kind=["pipe.pressure"] * rows,
        site=[f"jfb-valve-{i % 7}" for i in range(rows)],
        n=rng.integers(0, 1000, rows),
        min=rng.normal(0.3, 0.05, rows),
        max=rng.normal(0.5, 0.05, rows),
        mean=rng.normal(0.4, 0.05, rows),
        last=rng.normal(0.4, 0.05, rows),
        extra={"rms": rng.normal(0.4, 0.01, rows), "f_peak": rng.uniform(1, 10, rows)},
    )


def _alert(**overrides: object) -> Alert:
    base: dict[str, object] = {
        "id": "yz-jfb-01:17",
        "agent": "yz-jfb-01",
        "sensor": "YZ-P-0001",
        "kind": "pipe.pressure",
        "site": "jfb-valve-12",
        "township": "jiefangbei",
        "district": "yuzhong",
        "rule": "high",
        "level": 2,
        "prev": 1,
        "value": 0.7123,
        "ts": 1_700_000_000_123,
        "seq": 17,
        "limit": 0.7,
    }
    base.update(overrides)
    return Alert(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ float text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_float_parses_back_exactly(value: float) -> None:
    [text] = format_floats([value])
    assert float(text) == value
    assert math.copysign(1.0, float(text)) == math.copysign(1.0, value)


def test_random_bit_patterns_and_edge_values_parse_back_exactly_and_are_short() -> None:
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**64 - 1, 200_000, dtype=np.uint64, endpoint=True).view(np.float64)
    edge = [
        0.0,
        -0.0,
        5e-324,
        -5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        0.1,
        0.3,
        1e21,
        1e22,
        1e-7,
        123456.789,
        9007199254740993.0,
        0.41727920960323933,
    ]
    values = np.concatenate([bits[np.isfinite(bits)], edge, rng.normal(0.4, 0.05, 50_000)])
    texts = format_floats(values)

    def digits(text: str) -> int:
        return len(text.lstrip("-").split("e")[0].replace(".", "").strip("0"))

    longer = 0
    for value, text in zip(values.tolist(), texts):
        assert float(text) == value, (value, text)
        longer += digits(text) > digits(repr(value))
    assert longer < len(values) * 0.002  # Grisu2: shortest except in rare cases (one digit more)
    assert texts[-len(edge) - 50_000 : -50_000][:8] == [
        "0",
        "-0",
        "5e-324",
        "-5e-324",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "0.1",
        "0.3",
    ]


def test_format_floats_refuses_nan_and_inf() -> None:
    with pytest.raises(ValueError):
        format_floats([1.0, float("nan")])


# ------------------------------------------------------------------ schema and escaping


def test_reading_lines_carry_the_contract_schema_at_the_window_end() -> None:
    summary = _summary(50)
    lines = format_table(reading_table(summary, PrefixCache()))
    parsed = parse_body(lines.body)
    assert lines.points == 50 and lines.dropped == 0
    for i, (measurement, tags, fields, ts) in enumerate(parsed):
        assert measurement == "reading"
        assert tags == {
            "sensor": summary.sensor[i],
            "kind": "pipe.pressure",
            "site": summary.site[i],
            "township": "jiefangbei",
            "district": "yuzhong",
        }
        assert ts == summary.t1
        assert fields == {
            "n": int(summary.n[i]),
            "min": summary.min[i],
            "max": summary.max[i],
            "mean": summary.mean[i],
            "last": summary.last[i],
            "rms": summary.extra["rms"][i],
            "f_peak": summary.extra["f_peak"][i],
        }


def test_reading_lines_match_what_influxdb_client_points_would_write() -> None:
    summary = _summary(5)
    mine = parse_body(format_table(reading_table(summary, PrefixCache())).body)
    for i, row in enumerate(mine):
        point = (
            Point("reading")  # type: ignore[no-untyped-call]
            .tag("sensor", summary.sensor[i])
            .tag("kind", summary.kind[i])
            .tag("site", summary.site[i])
            .tag("township", summary.township)
            .tag("district", summary.district)
            .field("n", int(summary.n[i]))
            .time(summary.t1, WritePrecision.MS)
        )
        for name in ("min", "max", "mean", "last"):
            point.field(name, float(getattr(summary, name)[i]))
        for name, column in summary.extra.items():
            point.field(name, float(column[i]))
        assert row == parse_line(point.to_line_protocol())


def test_nan_and_inf_fields_are_left_out_and_a_row_without_fields_is_dropped() -> None:
    summary = _summary(3)
    summary.mean[0] = np.nan
    summary.max[1] = np.inf
    summary.min[1] = -np.inf
    parsed = parse_body(format_table(reading_table(summary, PrefixCache())).body)
    assert "mean" not in parsed[0][2] and "max" in parsed[0][2]
    assert (
        "max" not in parsed[1][2]
        and "min" not in parsed[1][2]
        and parsed[1][2]["n"] == summary.n[1]
    )

    table = alert_table([_alert(value=float("nan"), limit=None)], PrefixCache())
    [(_, _, fields, _)] = parse_body(format_table(table).body)
    assert fields == {"level": 2, "prev": 1, "seq": 17}

    empty = status_table(Status("yz-jfb-01", "online", 1, {"backlog": float("nan")}))
    assert parse_body(format_table(empty).body)[0][2] == {"online": 1}


def test_alert_line_has_rule_tag_and_integer_level_prev_seq() -> None:
    alert = _alert()
    [(measurement, tags, fields, ts)] = parse_body(
        format_table(alert_table([alert], PrefixCache())).body
    )
    assert measurement == "alert" and ts == alert.ts
    assert tags == {
        "sensor": "YZ-P-0001",
        "kind": "pipe.pressure",
        "site": "jfb-valve-12",
        "township": "jiefangbei",
        "district": "yuzhong",
        "rule": "high",
    }
    assert fields == {"level": 2, "prev": 1, "seq": 17, "value": 0.7123, "limit": 0.7}
    body = format_table(alert_table([alert], PrefixCache())).body.decode()
    assert "level=2i" in body and "seq=17i" in body


@pytest.mark.parametrize("rule", ["a b", "a,b", "a=b", "tail\\", "new\nline", "ünï"])
def test_awkward_tag_values_are_escaped_like_influxdb_client(rule: str) -> None:
    alert = _alert(rule=rule)
    mine = format_table(alert_table([alert], PrefixCache())).body.decode().splitlines()
    assert len(mine) == 1
    point = Point("alert").tag("rule", rule)  # type: ignore[no-untyped-call]
    point = point.field("level", 1).time(1, WritePrecision.MS)
    expected_tag = point.to_line_protocol().split(" level=")[0].removeprefix("alert,")
    assert f",{expected_tag}," in mine[0]
    assert escape_key("YZ-P-0001") == "YZ-P-0001"


def test_empty_tag_values_are_left_out() -> None:
    summary = _summary(2)
    summary.kind[0] = ""
    [(_, tags, _, _), (_, tags2, _, _)] = parse_body(
        format_table(reading_table(summary, PrefixCache())).body
    )
    assert "kind" not in tags and tags2["kind"] == "pipe.pressure"


def test_the_same_message_always_gives_the_same_bytes() -> None:
    cache = PrefixCache()
    first = format_table(reading_table(_summary(100), cache)).body
    again = format_table(reading_table(_summary(100), cache)).body  # served from the cache
    fresh = format_table(reading_table(_summary(100), PrefixCache(max_entries=10))).body
    assert first == again == fresh


def test_status_and_counters_points() -> None:
    status = Status(
        "yz-jfb-01",
        "offline",
        1_700_000_000_000,
        {"backlog": 12, "version": "0.1", "connected": True, "dropped": {"a": 1}},
    )
    [(m, tags, fields, ts)] = parse_body(format_table(status_table(status)).body)
    assert (m, tags, ts) == ("agent_status", {"agent": "yz-jfb-01"}, status.ts)
    assert fields == {"online": 0, "backlog": 12.0}
    [(m, tags, fields, ts)] = parse_body(
        format_table(
            counters_table("gw-1", {"received": 2**63 - 1, "bad": 0, "low": -(2**63)}, 5)
        ).body
    )
    assert (m, tags, ts) == ("gateway_stats", {"gateway": "gw-1"}, 5)
    assert fields == {"received": 2**63 - 1, "bad": 0, "low": -(2**63)}
