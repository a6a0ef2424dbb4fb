"""InfluxDB line protocol for the store schema (contract section 5), built column-wise.

Points are laid out as a `LineTable` (one tag prefix per row, an int64 and a float64 field
matrix, a time column) and turned into line-protocol bytes by one Numba kernel, so a summary of
thousands of rows costs microseconds, not a Python loop with `repr` per value.

Rules the kernel applies:
- Integer fields get the `i` suffix (`n`, `level`, `prev`, `seq`), so InfluxDB types them stably.
- NaN and +/-inf cannot be written to InfluxDB: such a float field is left out of its line; a
  line left with no field at all is dropped (and counted by the caller).
- Times are Unix milliseconds; write with precision `ms`.
- Tag values are escaped as influxdb-client escapes them (comma, equals, space, CR/LF/tab; a
  trailing backslash gets a space), empty tag values are left out (InfluxDB rejects them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numba
import numpy as np
import numpy.typing as npt

from gateway.floatfmt import TABLES, write_float, write_int
from lifeline.contract import Alert, Status, Summary

READING: Final = "reading"
ALERT: Final = "alert"
AGENT_STATUS: Final = "agent_status"
GATEWAY_STATS: Final = "gateway_stats"

I64Array = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]
U8Array = npt.NDArray[np.uint8]

_ESCAPE_KEY: Final = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_PLAIN: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")

_READING_TAGS: Final = ("district", "kind", "sensor", "site", "township")
_ALERT_TAGS: Final = ("district", "kind", "rule", "sensor", "site", "township")

#: Most bytes one float or int field value takes (sign, 17 digits, point, exponent; or 20 digits).
_VALUE_MAX: Final = 26


def escape_key(text: str) -> str:
    """Escape a tag key, tag value or field key for line protocol (as influxdb-client does)."""
    if _PLAIN.issuperset(text):
        return text
    out = text.translate(_ESCAPE_KEY)
    return out + " " if out.endswith("\\") else out


def tag_prefix(measurement: str, tags: Iterable[tuple[str, str]]) -> bytes:
    """`measurement,k=v,...` with tags sorted by key and empty values left out."""
    parts = [measurement]
    parts.extend(f"{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags) if v)
    return ",".join(parts).encode()


def _sorted_prefix(measurement: str, keys: tuple[str, ...], values: tuple[str, ...]) -> bytes:
    """`tag_prefix` for tag keys already sorted and plain (the store schema's own)."""
    return ",".join(
        [measurement, *[f"{k}={escape_key(v)}" for k, v in zip(keys, values) if v]]
    ).encode()


@dataclass(frozen=True, slots=True, eq=False)
class Prefixes:
    """Tag prefixes of many rows joined into one buffer, with each row's end offset."""

    buf: bytes
    ends: I64Array

    @classmethod
    def of(cls, prefixes: Sequence[bytes]) -> Prefixes:
        ends = np.cumsum(np.fromiter(map(len, prefixes), dtype=np.int64, count=len(prefixes)))
        return cls(b"".join(prefixes), ends)

    def __len__(self) -> int:
        return len(self.ends)


@dataclass(frozen=True, slots=True, eq=False)
class LineTable:
    """Points of one field layout: per-row tag prefixes, field matrices and times (Unix ms)."""

    prefixes: Prefixes
    int_names: tuple[str, ...]
    ints: I64Array  # rows x len(int_names)
    float_names: tuple[str, ...]
    floats: F64Array  # rows x len(float_names)
    times: I64Array

    def __len__(self) -> int:
        return len(self.prefixes)


@dataclass(frozen=True, slots=True)
class Lines:
    """Line-protocol text of some points, and how many points it holds or had to drop."""

    body: bytes
    points: int
    dropped: int = 0


def _keys_buffer(names: Sequence[str]) -> tuple[U8Array, I64Array]:
    """Field keys as `key=` bytes, concatenated, with end offsets."""
    encoded = [escape_key(n).encode() + b"=" for n in names]
    buf = np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8)
    ends = (
        np.cumsum([len(e) for e in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
    )
    return buf, ends


def format_table(table: LineTable) -> Lines:
    """Line protocol for every row of `table`, each line ending in a newline."""
    rows = len(table)
    if rows == 0:
        return Lines(b"", 0)
    prefix_buf = np.frombuffer(table.prefixes.buf, dtype=np.uint8)
    prefix_ends = table.prefixes.ends
    int_keys, int_ends = _keys_buffer(table.int_names)
    float_keys, float_ends = _keys_buffer(table.float_names)
    ints = np.ascontiguousarray(table.ints, dtype=np.int64).reshape(rows, len(table.int_names))
    floats = np.ascontiguousarray(table.floats, dtype=np.float64).reshape(
        rows, len(table.float_names)
    )
    key_bytes = (int(int_ends[-1]) if len(int_ends) else 0) + (
        int(float_ends[-1]) if len(float_ends) else 0
    )
    n_fields = len(table.int_names) + len(table.float_names)
    per_row = key_bytes + n_fields * (_VALUE_MAX + 1) + 2 + 21
    out = np.empty(int(prefix_ends[-1]) + rows * per_row, dtype=np.uint8)
    end, dropped = _format_lines(
        prefix_buf,
        prefix_ends,
        int_keys,
        int_ends,
        ints,
        float_keys,
        float_ends,
        floats.view(np.uint64),
        np.ascontiguousarray(table.times, dtype=np.int64),
        out,
        *TABLES,
    )
    return Lines(out[:end].tobytes(), rows - dropped, dropped)


@numba.njit(cache=True, nogil=True)
def _format_lines(
    prefix_buf: U8Array,
    prefix_ends: I64Array,
    int_keys: U8Array,
    int_ends: I64Array,
    ints: I64Array,
    float_keys: U8Array,
    float_ends: I64Array,
    float_bits: npt.NDArray[np.uint64],
    times: I64Array,
    out: U8Array,
    pow_f: npt.NDArray[np.uint64],
    pow_e: npt.NDArray[np.int64],
    pow10: npt.NDArray[np.uint64],
) -> tuple[int, int]:
    """Write one line per row into `out`; returns (bytes written, rows dropped: no fields)."""
    digits = np.empty(32, dtype=np.uint8)
    exp_mask = np.uint64(0x7FF0000000000000)
    pos = 0
    dropped = 0
    start = 0
    for row in range(prefix_ends.shape[0]):
        line_start = pos
        stop = prefix_ends[row]
        for i in range(start, stop):
            out[pos] = prefix_buf[i]
            pos += 1
        start = stop
        out[pos] = 32  # ' '
        pos += 1
        fields = 0
        key_start = 0
        for f in range(int_ends.shape[0]):
            if fields:
                out[pos] = 44  # ','
                pos += 1
            for i in range(key_start, int_ends[f]):
                out[pos] = int_keys[i]
                pos += 1
            key_start = int_ends[f]
            pos = write_int(out, pos, ints[row, f])
            out[pos] = 105  # 'i'
            pos += 1
            fields += 1
        key_start = 0
        for f in range(float_ends.shape[0]):
            bits = float_bits[row, f]
            key_stop = float_ends[f]
            if (bits & exp_mask) == exp_mask:  # NaN or inf: not representable, leave the field out
                key_start = key_stop
                continue
            if fields:
                out[pos] = 44
                pos += 1
            for i in range(key_start, key_stop):
                out[pos] = float_keys[i]
                pos += 1
            key_start = key_stop
            pos = write_float(out, pos, bits, digits, pow_f, pow_e, pow10)
            fields += 1
        if fields == 0:
            pos = line_start
            dropped += 1
            continue
        out[pos] = 32
        pos += 1
        pos = write_int(out, pos, times[row])
        out[pos] = 10  # '\n'
        pos += 1
    return pos, dropped


class PrefixCache:
    """Tag prefixes of recently seen series, so a summary row costs a dict lookup, not escaping.

    An agent sends the same sensor columns window after window, so the joined prefixes of its
    last summary are kept too and reused when the columns are equal.
    """

    def __init__(self, max_entries: int = 500_000) -> None:
        self.max_entries = max_entries
        self._rows: dict[tuple[str, str, str, str, str], bytes] = {}
        self._agents: dict[
            tuple[str, str, str], tuple[list[str], list[str], list[str], Prefixes]
        ] = {}
        self._alerts: dict[tuple[str, str, str, str, str, str], bytes] = {}

    def _admit(self, added: int) -> None:
        if len(self._rows) + len(self._alerts) + added > self.max_entries:
            self._rows.clear()
            self._alerts.clear()
            self._agents.clear()

    def readings(self, summary: Summary) -> Prefixes:
        """The `reading` tag prefix of every row of a summary."""
        key = (summary.agent, summary.township, summary.district)
        last = self._agents.get(key)
        if (
            last is not None
            and last[0] == summary.sensor
            and last[1] == summary.kind
            and last[2] == summary.site
        ):
            return last[3]
        town, district = summary.township, summary.district
        keys = [
            (s, k, site, town, district)
            for s, k, site in zip(summary.sensor, summary.kind, summary.site)
        ]
        rows = list(map(self._rows.get, keys))
        if None in rows:
            missing = [i for i, p in enumerate(rows) if p is None]
            self._admit(len(missing))
            for i in missing:
                sensor, kind, site, _, _ = keys[i]
                rows[i] = self._rows[keys[i]] = _sorted_prefix(
                    READING, _READING_TAGS, (district, kind, sensor, site, town)
                )
        prefixes = Prefixes.of(rows)  # type: ignore[arg-type]
        if len(self._agents) >= self.max_entries // 64:
            self._agents.clear()
        self._agents[key] = (summary.sensor, summary.kind, summary.site, prefixes)
        return prefixes

    def alert(self, alert: Alert) -> bytes:
        """The `alert` tag prefix of one alert."""
        key = (alert.sensor, alert.rule, alert.kind, alert.site, alert.township, alert.district)
        prefix = self._alerts.get(key)
        if prefix is None:
            self._admit(1)
            prefix = self._alerts[key] = _sorted_prefix(
                ALERT,
                _ALERT_TAGS,
                (alert.district, alert.kind, alert.rule, alert.sensor, alert.site, alert.township),
            )
        return prefix


READING_INTS: Final = ("n",)
READING_FLOATS: Final = ("min", "max", "mean", "last")
ALERT_INTS: Final = ("level", "prev", "seq")
ALERT_FLOATS: Final = ("value", "limit")


def reading_table(summary: Summary, cache: PrefixCache) -> LineTable:
    """`reading` points of a summary: one per row at the window end `t1`, extras as float fields."""
    rows = len(summary)
    extra_names = tuple(
        sorted(
            k
            for k in summary.extra
            if isinstance(k, str) and k and k not in READING_FLOATS and k != "n"
        )
    )
    columns = [summary.min, summary.max, summary.mean, summary.last]
    columns.extend(summary.extra[k] for k in extra_names)
    floats = np.empty((rows, len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        floats[:, j] = column
    return LineTable(
        prefixes=cache.readings(summary),
        int_names=READING_INTS,
        ints=np.asarray(summary.n, dtype=np.int64).reshape(rows, 1),
        float_names=READING_FLOATS + extra_names,
        floats=floats,
        times=np.full(rows, summary.t1, dtype=np.int64),
    )


def alert_table(alerts: Sequence[Alert], cache: PrefixCache) -> LineTable:
    """`alert` points: the contract's tags and fields (plus `prev`), at the alert's `ts`."""
    rows = len(alerts)
    nan = float("nan")
    return LineTable(
        prefixes=Prefixes.of([cache.alert(a) for a in alerts]),
        int_names=ALERT_INTS,
        ints=np.array([(a.level, a.prev, a.seq) for a in alerts], dtype=np.int64).reshape(rows, 3),
        float_names=ALERT_FLOATS,
        floats=np.array(
            [(a.value, nan if a.limit is None else a.limit) for a in alerts], dtype=np.float64
        ).reshape(rows, 2),
        times=np.fromiter((a.ts for a in alerts), dtype=np.int64, count=rows),
    )


def _numeric_items(extra: dict[str, object]) -> list[tuple[str, float]]:
    """Top-level numeric entries of a status map (bools and nested maps are left out)."""
    items = []
    for key, value in extra.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        try:
            items.append((key, float(value)))
        except OverflowError:
            continue
    return sorted(items)


def status_table(status: Status, district: str = "", township: str = "") -> LineTable:
    """One `agent_status` point: `online` (1/0) and the status's numeric extras as float fields."""
    numeric = [(k, v) for k, v in _numeric_items(status.extra) if k != "online"]
    return LineTable(
        prefixes=Prefixes.of(
            [
                tag_prefix(
                    AGENT_STATUS,
                    (("agent", status.agent), ("district", district), ("township", township)),
                )
            ]
        ),
        int_names=("online",),
        ints=np.array([[1 if status.state == "online" else 0]], dtype=np.int64),
        float_names=tuple(k for k, _ in numeric),
        floats=np.array([[v for _, v in numeric]], dtype=np.float64).reshape(1, len(numeric)),
        times=np.array([status.ts], dtype=np.int64),
    )


def counters_table(gateway: str, counters: dict[str, int], ts_ms: int) -> LineTable:
    """One `gateway_stats` point with this gateway's counters as integer fields."""
    names = tuple(sorted(counters))
    return LineTable(
        prefixes=Prefixes.of([tag_prefix(GATEWAY_STATS, (("gateway", gateway),))]),
        int_names=names,
        ints=np.array([[counters[k] for k in names]], dtype=np.int64).reshape(1, len(names)),
        float_names=(),
        floats=np.zeros((1, 0), dtype=np.float64),
        times=np.array([ts_ms], dtype=np.int64),
    )


def load_kernels() -> None:
    """Load the line-protocol kernels (from Numba's on-disk cache, or compile them) now, at
    start-up, instead of inside the first batch: about 0.4 s on a loaded core."""
    alert = Alert(id="warm", agent="warm", sensor="warm", kind="pipe.flow", site="warm", township="warm",
                  district="warm", rule="high", level=1, prev=0, value=1.0, ts=1, seq=0, limit=1.0)
    format_table(alert_table([alert], PrefixCache()))
    format_table(status_table(Status(agent="warm", state="online", ts=1)))
