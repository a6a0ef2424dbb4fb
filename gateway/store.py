"""The time-series store through influxdb-client's v2 write API, and writing until it is stored.

influxdb-client's exceptions are translated here and nowhere else: `StoreUnavailable` (worth
retrying: connection refused, timeout, 5xx, 429, and auth or bucket errors an operator can fix
while the broker holds the backlog) and `StoreRejected` (the store refuses this body itself;
retrying cannot help). A body the store refuses (HTTP 400/422, or 413 too large) is bisected at
line boundaries until the refused rows are alone: every other row is stored, and the refused
ones come back with the store's message, for the dead-letter file.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

import urllib3
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from gateway.config import InfluxSettings
from lifeline.errors import LifelineError

log = logging.getLogger(__name__)

#: HTTP statuses meaning the body itself is at fault (bad line protocol, unprocessable).
_REJECTED: Final = frozenset({400, 422})
_TOO_LARGE: Final = 413
#: influxdb-client declares the precision as WritePrecision but defines its members as plain str.
_MS: Final = cast(WritePrecision, WritePrecision.MS)


class StoreError(LifelineError):
    """A write to the store did not succeed."""


class StoreUnavailable(StoreError):
    """The store cannot take writes now; retry later."""


class StoreRejected(StoreError):
    """The store refused the data; the same body will never succeed."""


class StoreTooLarge(StoreRejected):
    """The body exceeds the store's request size limit; smaller bodies may succeed."""


class LineSink(Protocol):
    """Anything that stores a line-protocol body or raises a StoreError."""

    def write(self, body: bytes) -> None: ...


class InfluxStore:
    """Writes line protocol (precision ms) to one bucket, synchronously, through influxdb-client."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.bucket = settings.bucket
        self.org = settings.org
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.resolved_token(),
            org=settings.org,
            timeout=settings.timeout_ms,
            enable_gzip=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        """Store `body`; raise StoreUnavailable or StoreRejected."""
        try:
            self._write_api.write(
                bucket=self.bucket, org=self.org, record=body, write_precision=_MS
            )
        except InfluxDBError as exc:
            status = getattr(exc, "status", None)
            detail = f"HTTP {status}: {exc.message or getattr(exc, 'reason', '')}".strip()
            if status == _TOO_LARGE:
                raise StoreTooLarge(
                    f"store refused a {len(body)}-byte body as too large ({detail})"
                ) from exc
            if status in _REJECTED:
                raise StoreRejected(f"store rejected the points ({detail})") from exc
            raise StoreUnavailable(f"store unavailable ({detail})") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"store unreachable: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()  # type: ignore[no-untyped-call]


class WriteOutcome(enum.Enum):
    """How a write attempt ended."""

    #: Every row is stored, except those in `WriteResult.rejected`.
    STORED = "stored"
    #: Given up (shutdown, or the broker connection of its messages is gone): re-sent later.
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """One line-protocol row the store refused on its own, with the store's message."""

    line: bytes
    error: str


@dataclass(slots=True)
class WriteResult:
    """The outcome of writing a body, and the rows the store refused (the rest is stored)."""

    outcome: WriteOutcome
    rejected: list[RejectedLine] = field(default_factory=list)


def split_body(body: bytes) -> tuple[bytes, bytes] | None:
    """Two halves of a line-protocol body, cut at the line boundary nearest the middle."""
    cut = body.rfind(b"\n", 0, len(body) // 2)
    if cut < 0:
        cut = body.find(b"\n", len(body) // 2)
    if cut < 0 or cut == len(body) - 1:
        return None
    return body[: cut + 1], body[cut + 1 :]


def write_until_stored(
    sink: LineSink,
    body: bytes,
    *,
    delays: Iterator[float],
    sleep: Callable[[float], bool],
    abandon: Callable[[], bool],
    on_retry: Callable[[StoreError, float], None],
) -> WriteResult:
    """Write `body`, retrying transient failures after each of `delays`, until stored.

    `sleep(delay)` returns True when the wait was cut short for shutdown; `abandon()` is asked
    before every retry (the messages behind the body will be re-delivered, so give up). Only
    `StoreUnavailable` is retried. A body the store refuses is bisected at line boundaries
    until each refused row is alone (about 2 log2(n) requests for one bad row in n): every
    other row is stored, the refused ones are returned with the store's message.
    """
    result = WriteResult(WriteOutcome.STORED)
    parts = [body]  # a stack: the first half is written before the second
    while parts:
        part = parts.pop()
        try:
            sink.write(part)
        except StoreRejected as exc:  # StoreTooLarge included
            halves = split_body(part)
            if halves is None:
                result.rejected.append(RejectedLine(part.rstrip(b"\n"), str(exc)))
            else:
                parts.extend(reversed(halves))
        except StoreUnavailable as exc:
            delay = next(delays)
            on_retry(exc, delay)
            if sleep(delay) or abandon():
                return WriteResult(WriteOutcome.ABANDONED)
            parts.append(part)
    if result.rejected:
        log.error(
            "store refused %d row(s) of a %d-byte batch (first: %s); stored the rest, the "
            "refused rows go to the dead-letter file",
            len(result.rejected),
            len(body),
            result.rejected[0].error,
        )
    return result
