"""The contract's MessagePack payloads (section 2): RawBlock, Alert, Summary, Status.

Every decoder takes bytes from the wire and either returns a validated value object or raises
`DecodeError` naming the message and the key at fault; no other exception escapes for any input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgpack
import numpy as np
import numpy.typing as npt

from lifeline.contract.kinds import MAX_LEVEL, is_valid_id
from lifeline.errors import DecodeError

VERSION: Final = 1
SEQ_MODULUS: Final = 2**32
#: Largest payload any decoder accepts; bigger ones are rejected before unpacking.
MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024

F64Array = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]

_SUMMARY_KEYS: Final = frozenset(
    {"v", "agent", "township", "district", "t0", "t1", "sensor", "kind", "site", "n",
     "min", "max", "mean", "last"}
)
_STATUS_KEYS: Final = frozenset({"v", "agent", "state", "ts"})


def _unpack_map(payload: bytes | bytearray | memoryview, what: str) -> dict[str, Any]:
    """Unpack one MessagePack map, translating every unpacker failure into DecodeError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"{what}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types (ExtraData, StackError, ValueError...)
        raise DecodeError(f"{what}: not valid MessagePack ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: payload is a {type(obj).__name__}, not a map")
    return obj


def _check_version(obj: dict[str, Any], what: str) -> None:
    v = obj.get("v")
    if v is None:
        raise DecodeError(f"{what}: missing required key 'v'")
    if type(v) is not int or v != VERSION:
        raise DecodeError(f"{what}: unsupported version v={v!r} (this reader speaks v=1)")


def _req_str(obj: dict[str, Any], key: str, what: str, *, ident: bool = False) -> str:
    if key not in obj:
        raise DecodeError(f"{what}: missing required key {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise DecodeError(f"{what}: key {key!r} must be a string, got {type(value).__name__}")
    if ident and not is_valid_id(value):
        raise DecodeError(f"{what}: key {key!r} = {value!r} is not a valid id ([A-Za-z0-9._-]{{1,64}})")
    return value


def _req_int(obj: dict[str, Any], key: str, what: str, lo: int, hi: int) -> int:
    if key not in obj:
        raise DecodeError(f"{what}: missing required key {key!r}")
    return _int_in(obj[key], key, what, lo, hi)


def _int_in(value: Any, key: str, what: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise DecodeError(f"{what}: key {key!r} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise DecodeError(f"{what}: key {key!r} = {value} outside [{lo}, {hi}]")
    return value


def _number(value: Any, key: str, what: str) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise DecodeError(f"{what}: key {key!r} must be a number, got {type(value).__name__}")


_I64_MAX: Final = 2**63 - 1


# --------------------------------------------------------------------------- RawBlock


@dataclass(frozen=True, slots=True, eq=False)
class RawBlock:
    """A block of samples from one sensor (`P/raw/{sensor}`).

    `values` is float32 when it came as `bin` (a zero-copy view of the payload's bytes) and
    float64 when it came as an array of numbers.
    """

    sensor: str
    values: F64Array | F32Array
    t0: int = 0
    dt: float | None = None
    ts: I64Array | None = None
    seq: int | None = None

    def sample_times(self, received_ms: int) -> I64Array:
        """Unix-ms time of every sample; without `t0`/`ts` the last sample is stamped `received_ms`."""
        n = len(self.values)
        if self.ts is not None:
            return self.ts
        step = self.dt if self.dt is not None else 0.0
        offsets = np.rint(np.arange(n, dtype=np.float64) * step).astype(np.int64)
        if self.t0:
            return offsets + np.int64(self.t0)
        return offsets + np.int64(received_ms - int(round((n - 1) * step)))

    def encode(self, *, as_bin: bool = True) -> bytes:
        """Pack as MessagePack; `as_bin` sends values as little-endian float32 bytes."""
        msg: dict[str, Any] = {"v": VERSION, "sensor": self.sensor}
        if as_bin:
            msg["values"] = np.asarray(self.values, dtype="<f4").tobytes()
        else:
            msg["values"] = np.asarray(self.values, dtype=np.float64).tolist()
        if self.t0:
            msg["t0"] = int(self.t0)
        if self.dt is not None:
            msg["dt"] = float(self.dt)
        if self.ts is not None:
            msg["ts"] = np.asarray(self.ts, dtype=np.int64).tolist()
        if self.seq is not None:
            msg["seq"] = int(self.seq)
        return msgpack.packb(msg, use_bin_type=True)


def decode_raw_block(payload: bytes | bytearray | memoryview, topic_sensor: str | None = None) -> RawBlock:
    """Decode and validate a RawBlock; `topic_sensor` (from the topic) must match its `sensor`."""
    what = "RawBlock"
    obj = _unpack_map(payload, what)
    _check_version(obj, what)
    sensor = _req_str(obj, "sensor", what, ident=True)
    if topic_sensor is not None and sensor != topic_sensor:
        raise DecodeError(f"{what}: sensor {sensor!r} does not match the topic's sensor {topic_sensor!r}")
    what = f"RawBlock from {sensor!r}"
    if "values" not in obj:
        raise DecodeError(f"{what}: missing required key 'values'")
    raw = obj["values"]
    values: F64Array | F32Array
    if isinstance(raw, bytes):
        if len(raw) % 4:
            raise DecodeError(f"{what}: 'values' bin of {len(raw)} bytes is not a whole number of float32")
        values = np.frombuffer(raw, dtype="<f4")
    elif isinstance(raw, list):
        for x in raw:
            if type(x) is not float and type(x) is not int:
                raise DecodeError(f"{what}: 'values' must hold only numbers, found {type(x).__name__}")
        try:
            values = np.array(raw, dtype=np.float64)
        except OverflowError as exc:
            raise DecodeError(f"{what}: 'values' holds an integer too large for a float") from exc
    else:
        raise DecodeError(f"{what}: 'values' must be an array of numbers or float32 bin, got {type(raw).__name__}")
    n = len(values)
    if n == 0:
        raise DecodeError(f"{what}: 'values' is empty")
    t0 = obj.get("t0")
    t0 = 0 if t0 is None else _int_in(t0, "t0", what, 0, _I64_MAX)
    seq = obj.get("seq")
    if seq is not None:
        seq = _int_in(seq, "seq", what, 0, SEQ_MODULUS - 1)
    ts_arr: I64Array | None = None
    ts = obj.get("ts")
    if ts is not None:
        if not isinstance(ts, list) or len(ts) != n:
            raise DecodeError(f"{what}: 'ts' must be an array of {n} integer times")
        for x in ts:
            if type(x) is not int or not 0 <= x <= _I64_MAX:
                raise DecodeError(f"{what}: 'ts' must hold only non-negative integer times")
        ts_arr = np.array(ts, dtype=np.int64)
    dt = obj.get("dt")
    if dt is not None:
        dt = _number(dt, "dt", what)
        if not (dt > 0 and math.isfinite(dt)):
            raise DecodeError(f"{what}: 'dt' must be a positive finite number of ms, got {dt}")
    elif n >= 2 and ts_arr is None:
        raise DecodeError(f"{what}: 'dt' is required for {n} values without 'ts'")
    return RawBlock(sensor=sensor, values=values, t0=t0, dt=dt, ts=ts_arr, seq=seq)


# --------------------------------------------------------------------------- Alert


@dataclass(frozen=True, slots=True)
class Alert:
    """One level change of a (sensor, rule) pair, as sent on `P/alert/...` and `P/ops/...`."""

    id: str
    agent: str
    sensor: str
    kind: str
    site: str
    township: str
    district: str
    rule: str
    level: int
    prev: int
    value: float
    ts: int
    seq: int
    limit: float | None = None
    extra: dict[str, Any] | None = None

    def to_map(self) -> dict[str, Any]:
        """The Alert as the contract's map (optional keys only when set)."""
        msg: dict[str, Any] = {
            "v": VERSION, "id": self.id, "agent": self.agent, "sensor": self.sensor,
            "kind": self.kind, "site": self.site, "township": self.township,
            "district": self.district, "rule": self.rule, "level": self.level, "prev": self.prev,
            "value": float(self.value), "ts": self.ts, "seq": self.seq,
        }
        if self.limit is not None:
            msg["limit"] = float(self.limit)
        if self.extra:
            msg["extra"] = self.extra
        return msg

    def encode(self) -> bytes:
        """Pack as MessagePack."""
        return msgpack.packb(self.to_map(), use_bin_type=True)


def decode_alert(payload: bytes | bytearray | memoryview) -> Alert:
    """Decode and validate an Alert."""
    what = "Alert"
    obj = _unpack_map(payload, what)
    _check_version(obj, what)
    ident = _req_str(obj, "id", what)
    if not ident:
        raise DecodeError(f"{what}: key 'id' is empty")
    sensor = _req_str(obj, "sensor", what, ident=True)
    what = f"Alert from {sensor!r}"
    agent = _req_str(obj, "agent", what, ident=True)
    kind = _req_str(obj, "kind", what)
    site = _req_str(obj, "site", what, ident=True)
    township = _req_str(obj, "township", what, ident=True)
    district = _req_str(obj, "district", what, ident=True)
    rule = _req_str(obj, "rule", what)
    if not rule:
        raise DecodeError(f"{what}: key 'rule' is empty")
    level = _req_int(obj, "level", what, 0, MAX_LEVEL)
    prev = _req_int(obj, "prev", what, 0, MAX_LEVEL)
    if "value" not in obj:
        raise DecodeError(f"{what}: missing required key 'value'")
    value = _number(obj["value"], "value", what)
    ts = _req_int(obj, "ts", what, 0, _I64_MAX)
    seq = _req_int(obj, "seq", what, 0, _I64_MAX)
    limit = obj.get("limit")
    if limit is not None:
        limit = _number(limit, "limit", what)
    extra = obj.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise DecodeError(f"{what}: key 'extra' must be a map, got {type(extra).__name__}")
    return Alert(id=ident, agent=agent, sensor=sensor, kind=kind, site=site, township=township,
                 district=district, rule=rule, level=level, prev=prev, value=value, ts=ts,
                 seq=seq, limit=limit, extra=extra)


# --------------------------------------------------------------------------- Summary


@dataclass(frozen=True, slots=True, eq=False)
class Summary:
    """One window `[t0, t1)` of per-sensor features for many sensors of one agent (columnar)."""

    agent: str
    township: str
    district: str
    t0: int
    t1: int
    sensor: list[str]
    kind: list[str]
    site: list[str]
    n: I64Array
    min: F64Array
    max: F64Array
    mean: F64Array
    last: F64Array
    #: Extra numeric columns such as `rms`, `f_peak`, `f_shift`.
    extra: dict[str, F64Array] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sensor)

    def encode(self) -> bytes:
        """Pack as MessagePack with float columns as arrays of floats."""
        msg: dict[str, Any] = {
            "v": VERSION, "agent": self.agent, "township": self.township,
            "district": self.district, "t0": self.t0, "t1": self.t1,
            "sensor": list(self.sensor), "kind": list(self.kind), "site": list(self.site),
            "n": np.asarray(self.n, dtype=np.int64).tolist(),
        }
        for name in ("min", "max", "mean", "last"):
            msg[name] = np.asarray(getattr(self, name), dtype=np.float64).tolist()
        for name, column in self.extra.items():
            msg[name] = np.asarray(column, dtype=np.float64).tolist()
        return msgpack.packb(msg, use_bin_type=True)


def _str_column(obj: dict[str, Any], key: str, what: str) -> list[str]:
    if key not in obj:
        raise DecodeError(f"{what}: missing required key {key!r}")
    col = obj[key]
    if not isinstance(col, list) or not all(isinstance(x, str) for x in col):
        raise DecodeError(f"{what}: column {key!r} must be an array of strings")
    return col


def _float_column(col: Any, key: str, what: str, n: int) -> F64Array:
    if not isinstance(col, list) or len(col) != n:
        raise DecodeError(f"{what}: column {key!r} must be an array of {n} numbers")
    for x in col:
        if type(x) is not float and type(x) is not int:
            raise DecodeError(f"{what}: column {key!r} must hold only numbers, found {type(x).__name__}")
    try:
        return np.array(col, dtype=np.float64)
    except OverflowError as exc:
        raise DecodeError(f"{what}: column {key!r} holds an integer too large for a float") from exc


def decode_summary(payload: bytes | bytearray | memoryview) -> Summary:
    """Decode and validate a Summary; every column must have the same length."""
    what = "Summary"
    obj = _unpack_map(payload, what)
    _check_version(obj, what)
    agent = _req_str(obj, "agent", what, ident=True)
    what = f"Summary from agent {agent!r}"
    township = _req_str(obj, "township", what, ident=True)
    district = _req_str(obj, "district", what, ident=True)
    t0 = _req_int(obj, "t0", what, 0, _I64_MAX)
    t1 = _req_int(obj, "t1", what, 0, _I64_MAX)
    if t1 < t0:
        raise DecodeError(f"{what}: window end t1={t1} is before its start t0={t0}")
    sensor = _str_column(obj, "sensor", what)
    n_rows = len(sensor)
    for s in sensor:
        if not is_valid_id(s):
            raise DecodeError(f"{what}: sensor id {s!r} is not a valid id")
    kind = _str_column(obj, "kind", what)
    site = _str_column(obj, "site", what)
    if len(kind) != n_rows or len(site) != n_rows:
        raise DecodeError(f"{what}: columns 'sensor', 'kind', 'site' differ in length")
    for s in site:
        if not is_valid_id(s):
            raise DecodeError(f"{what}: site id {s!r} is not a valid id")
    n_col = obj.get("n")
    if not isinstance(n_col, list) or len(n_col) != n_rows:
        raise DecodeError(f"{what}: column 'n' must be an array of {n_rows} integers")
    for x in n_col:
        if type(x) is not int or not 0 <= x <= _I64_MAX:
            raise DecodeError(f"{what}: column 'n' must hold only non-negative integers")
    columns = {name: _float_column(obj.get(name), name, what, n_rows)
               for name in ("min", "max", "mean", "last")}
    extra: dict[str, F64Array] = {}
    for key, col in obj.items():
        if key in _SUMMARY_KEYS or not isinstance(col, list) or len(col) != n_rows:
            continue
        if all(type(x) is float or type(x) is int for x in col):
            try:
                extra[key] = np.array(col, dtype=np.float64)
            except OverflowError:
                continue  # an unknown column we cannot use; readers ignore what they do not know
    return Summary(agent=agent, township=township, district=district, t0=t0, t1=t1,
                   sensor=sensor, kind=kind, site=site, n=np.array(n_col, dtype=np.int64),
                   extra=extra, **columns)


# --------------------------------------------------------------------------- Status

AgentState = Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class Status:
    """An agent's retained status; `extra` holds operator detail (counters, backlog, version)."""

    agent: str
    state: AgentState
    ts: int
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Pack as MessagePack, extra keys beside the required ones."""
        msg: dict[str, Any] = dict(self.extra)
        msg.update({"v": VERSION, "agent": self.agent, "state": self.state, "ts": self.ts})
        return msgpack.packb(msg, use_bin_type=True)


def decode_status(payload: bytes | bytearray | memoryview) -> Status:
    """Decode and validate a Status."""
    what = "Status"
    obj = _unpack_map(payload, what)
    _check_version(obj, what)
    agent = _req_str(obj, "agent", what, ident=True)
    what = f"Status of agent {agent!r}"
    state = _req_str(obj, "state", what)
    if state not in ("online", "offline"):
        raise DecodeError(f"{what}: 'state' must be 'online' or 'offline', got {state!r}")
    ts = _req_int(obj, "ts", what, 0, _I64_MAX)
    extra = {k: v for k, v in obj.items() if k not in _STATUS_KEYS}
    return Status(agent=agent, state=state, ts=ts, extra=extra)  # type: ignore[arg-type]
