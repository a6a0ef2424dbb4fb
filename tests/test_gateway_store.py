"""Writing to the store: error translation, retry until stored, splitting, the writer thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.config import InfluxSettings
from gateway.counters import GatewayCounters
from gateway.events import BatchDone, StoreBatch
from gateway.store import (
    InfluxStore,
    RejectedLine,
    StoreRejected,
    StoreTooLarge,
    StoreUnavailable,
    WriteOutcome,
    WriteResult,
    split_body,
    write_until_stored,
)
from gateway.writer import StoreWriter
from simulators.servers import free_port


@dataclass
class ScriptedSink:
    """Fails with the scripted errors first, then stores; bodies over `max_bytes` are too large,
    bodies with a line containing `bad` are refused whole (as InfluxDB answers HTTP 400)."""

    failures: list[Exception] = field(default_factory=list)
    max_bytes: int = 1 << 30
    bad: bytes | None = None
    stored: list[bytes] = field(default_factory=list)
    attempts: int = 0

    def write(self, body: bytes) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        if len(body) > self.max_bytes:
            raise StoreTooLarge("too large")
        if self.bad is not None and self.bad in body:
            first = next(line for line in body.splitlines() if self.bad in line)
            raise StoreRejected(f"HTTP 400: unable to parse {first.decode()!r}")
        self.stored.append(body)


def delays() -> Iterator[float]:
    while True:
        yield 0.5


def run(
    sink: ScriptedSink, body: bytes, *, stop_after: int | None = None, abandon: bool = False
) -> tuple[WriteResult, list[float]]:
    slept: list[float] = []

    def sleep(delay: float) -> bool:
        slept.append(delay)
        return stop_after is not None and len(slept) >= stop_after

    outcome = write_until_stored(
        sink,
        body,
        delays=delays(),
        sleep=sleep,
        abandon=lambda: abandon,
        on_retry=lambda exc, delay: None,
    )
    return outcome, slept


def test_transient_failures_are_retried_until_stored() -> None:
    sink = ScriptedSink([StoreUnavailable("down")] * 5)
    result, slept = run(sink, b"a 1 1\n")
    assert result == WriteResult(WriteOutcome.STORED) and sink.stored == [b"a 1 1\n"]
    assert slept == [0.5] * 5


def test_a_refused_single_row_is_not_retried_and_comes_back_with_the_stores_message() -> None:
    sink = ScriptedSink([StoreRejected("HTTP 400: bad line")])
    result, slept = run(sink, b"x\n")
    assert (result.outcome, slept, sink.attempts) == (WriteOutcome.STORED, [], 1)
    assert result.rejected == [RejectedLine(b"x", "HTTP 400: bad line")]


def test_shutdown_or_a_stale_connection_abandons_the_retries() -> None:
    assert (
        run(ScriptedSink([StoreUnavailable("down")] * 9), b"x\n", stop_after=2)[0].outcome
        is WriteOutcome.ABANDONED
    )
    assert (
        run(ScriptedSink([StoreUnavailable("down")]), b"x\n", abandon=True)[0].outcome
        is WriteOutcome.ABANDONED
    )


def test_a_body_too_large_is_split_at_line_boundaries_and_stored_whole() -> None:
    body = b"".join(b"m,k=v f=%di %d\n" % (i, i) for i in range(100))
    sink = ScriptedSink(max_bytes=300)
    result, _ = run(sink, body)
    assert result == WriteResult(WriteOutcome.STORED)
    assert b"".join(sink.stored) == body and all(len(b) <= 300 for b in sink.stored)
    assert all(b.endswith(b"\n") for b in sink.stored)
    assert split_body(b"one line only\n") is None
    one_line = ScriptedSink(max_bytes=3)
    assert [r.line for r in run(one_line, b"one line only\n")[0].rejected] == [b"one line only"]


@pytest.mark.parametrize("bad_rows", [[0], [1234], [4999], [7, 8, 2500]])
def test_a_refused_batch_is_bisected_until_only_its_bad_rows_are_left(bad_rows: list[int]) -> None:
    lines = [b"m,k=%s f=%di %d\n" % (b"bad" if i in bad_rows else b"ok", i, i) for i in range(5000)]
    sink = ScriptedSink(bad=b"k=bad")
    result, slept = run(sink, b"".join(lines))
    assert result.outcome is WriteOutcome.STORED and slept == []
    stored = b"".join(sink.stored).splitlines(keepends=True)
    assert sorted(stored) == sorted(line for i, line in enumerate(lines) if i not in bad_rows)
    assert [r.line for r in result.rejected] == [lines[i].rstrip() for i in bad_rows]
    assert all("HTTP 400: unable to parse" in r.error for r in result.rejected)
    assert sink.attempts <= 1 + 2 * 13 * len(bad_rows)  # about 2 log2(n) requests per bad row


def test_a_store_outage_during_bisection_is_retried_without_losing_a_half() -> None:
    lines = [b"m,k=%s f=1i %d\n" % (b"bad" if i == 3 else b"ok", i) for i in range(8)]
    # the store refuses the whole body, then goes away before and between the halves
    down = StoreUnavailable("HTTP 503")
    sink = ScriptedSink([StoreRejected("HTTP 400: bad"), down, down], bad=b"k=bad")
    result, slept = run(sink, b"".join(lines))
    assert len(slept) == 2
    assert sorted(b"".join(sink.stored).splitlines(keepends=True)) == sorted(lines[:3] + lines[4:])
    assert [r.line for r in result.rejected] == [lines[3].rstrip()]


# -------------------------------------------------- influxdb-client against a scripted HTTP store


@dataclass
class FakeInflux:
    """A tiny HTTP server answering /api/v2/write with scripted statuses, recording requests."""

    statuses: list[int]
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append((self.path, self.headers.get("Authorization", ""), body))
                status = outer.statuses.pop(0) if outer.statuses else 204
                payload = b'{"code":"invalid","message":"scripted"}' if status != 204 else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_influx() -> Iterator[FakeInflux]:
    server = FakeInflux([])
    yield server
    server.close()


def test_the_store_gets_the_token_bucket_org_and_ms_precision(
    fake_influx: FakeInflux, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFELINE_INFLUX_TOKEN", "from-env")
    store = InfluxStore(InfluxSettings(url=fake_influx.url, org="city", bucket="lifeline"))
    store.write(b"reading,sensor=S n=1i 1700000000000\n")
    store.close()
    path, auth, body = fake_influx.requests[0]
    assert auth == "Token from-env"
    assert "bucket=lifeline" in path and "org=city" in path and "precision=ms" in path
    assert body == b"reading,sensor=S n=1i 1700000000000\n"
    inline = InfluxStore(InfluxSettings(url=fake_influx.url, token="inline-token"))
    inline.write(b"x f=1 1\n")
    inline.close()
    assert fake_influx.requests[1][1] == "Token inline-token"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, StoreRejected),
        (422, StoreRejected),
        (413, StoreTooLarge),
        (401, StoreUnavailable),
        (404, StoreUnavailable),
        (429, StoreUnavailable),
        (503, StoreUnavailable),
    ],
)
def test_http_errors_are_translated(
    fake_influx: FakeInflux, status: int, error: type[Exception]
) -> None:
    fake_influx.statuses.append(status)
    store = InfluxStore(InfluxSettings(url=fake_influx.url))
    with pytest.raises(error, match=str(status)):
        store.write(b"x f=1 1\n")
    store.close()


def test_an_unreachable_store_is_unavailable() -> None:
    store = InfluxStore(InfluxSettings(url=f"http://127.0.0.1:{free_port()}", timeout_ms=2000))
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.write(b"x f=1 1\n")
    store.close()


# ------------------------------------------------------------------ the writer thread


def test_the_writer_retries_in_order_and_abandons_batches_of_a_lost_connection() -> None:
    sink = ScriptedSink([StoreUnavailable("down")] * 3)
    done: list[BatchDone] = []
    finished = threading.Event()

    def on_done(result: BatchDone) -> None:
        done.append(result)
        if result.number == 2:
            finished.set()

    counters = GatewayCounters()
    writer = StoreWriter(
        sink,
        on_done=on_done,
        current_epoch=lambda: 1,
        counters=counters,
        retry_initial_s=0.001,
        retry_max_s=0.002,
    )
    writer.start()
    writer.submit(StoreBatch(1, 1, b"a f=1 1\n", 1))
    writer.submit(StoreBatch(2, 1, b"b f=1 1\n", 1))
    assert finished.wait(10)
    assert writer.idle and writer.healthy
    sink.failures.append(StoreUnavailable("down again"))
    finished.clear()
    writer.submit(StoreBatch(3, 0, b"c f=1 1\n", 1))  # from an earlier connection
    writer.submit(StoreBatch(2, 1, b"d f=1 1\n", 1))
    assert finished.wait(10)
    writer.stop()
    assert [(d.number, d.outcome) for d in done] == [
        (1, WriteOutcome.STORED),
        (2, WriteOutcome.STORED),
        (3, WriteOutcome.ABANDONED),
        (2, WriteOutcome.STORED),
    ]
    assert sink.stored == [b"a f=1 1\n", b"b f=1 1\n", b"d f=1 1\n"]
    assert counters.store_retries == 4


def test_several_writes_are_in_flight_at_once_and_free_slots_say_how_many_more_may_start() -> None:
    gate = threading.Event()
    started = threading.Semaphore(0)

    class SlowSink:
        def write(self, body: bytes) -> None:
            started.release()
            assert gate.wait(10)

    done: list[BatchDone] = []
    writer = StoreWriter(
        SlowSink(), on_done=done.append, current_epoch=lambda: 1, counters=GatewayCounters(),
        writes=3,
    )
    writer.start()
    assert writer.free_slots == 3
    for n in range(1, 5):
        writer.submit(StoreBatch(n, 1, b"a f=1 1\n", 1))
    for _ in range(3):
        assert started.acquire(timeout=10)  # three requests in flight together
    assert not started.acquire(timeout=0.2)  # the fourth waits for a free thread
    assert writer.free_slots == 0 and writer.backlog == 4
    gate.set()
    assert started.acquire(timeout=10)
    writer.stop()
    assert sorted(d.number for d in done) == [1, 2, 3, 4]
