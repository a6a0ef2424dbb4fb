"""The time-series store through influxdb-client's v2 write API, and writing until it is stored.

influxdb-client's exceptions are translated here and nowhere else: `StoreUnavailable` (worth
retrying: connection refused, timeout, 5xx, 429, and auth or bucket errors an operator can fix
while the broker holds the backlog) and `StoreRejected` (the store refuses this body itself;
retrying cannot help). A body too large for the store is split at a line boundary.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
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

    STORED = "stored"
    REJECTED = "rejected"
    ABANDONED = "abandoned"


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
) -> WriteOutcome:
    """Write `body`, retrying transient failures after each of `delays`, until stored.

    `sleep(delay)` returns True when the wait was cut short for shutdown; `abandon()` is asked
    before every retry (the messages behind the body will be re-delivered, so give up). Only
    `StoreUnavailable` is retried.
    """
    while True:
        try:
            sink.write(body)
            return WriteOutcome.STORED
        except StoreTooLarge as exc:
            halves = split_body(body)
            if halves is None:
                log.error("%s; a single line cannot be split, dropping it", exc)
                return WriteOutcome.REJECTED
            outcomes = [
                write_until_stored(
                    sink, half, delays=delays, sleep=sleep, abandon=abandon, on_retry=on_retry
                )
                for half in halves
            ]
            for outcome in (WriteOutcome.ABANDONED, WriteOutcome.REJECTED):
                if outcome in outcomes:
                    return outcome
            return WriteOutcome.STORED
        except StoreRejected as exc:
            log.error("%s; dropping the batch's invalid points", exc)
            return WriteOutcome.REJECTED
        except StoreUnavailable as exc:
            delay = next(delays)
            on_retry(exc, delay)
            if sleep(delay) or abandon():
                return WriteOutcome.ABANDONED
