"""A few threads that write sealed batches to the store, each batch until it is stored.

`writes` threads take batches in the order they were sealed, so at most that many write
requests are in flight at once: a slow store (a second per request) is kept busy by several
requests instead of one after another, while the pipeline lets the next batch grow until a
thread is free (`free_slots`). While the store is down every thread retries its batch with
capped, jittered backoff and the rest wait; nothing is acknowledged to the broker meanwhile, so
the broker's receive maximum bounds what the gateway holds. A batch from an earlier broker
connection is abandoned at its next retry: the broker re-sends those messages on the new
connection. Batches may finish out of order; the ack ledger keeps acknowledgements in order.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable

from gateway.counters import GatewayCounters
from gateway.events import BatchDone, StoreBatch
from gateway.store import LineSink, StoreError, WriteOutcome, WriteResult, write_until_stored
from lifeline.backoff import LogThrottle, backoff_delays, held_note

log = logging.getLogger(__name__)


class StoreWriter:
    """Writes batches on its own thread and reports each with `on_done(BatchDone)`."""

    def __init__(
        self,
        sink: LineSink,
        *,
        on_done: Callable[[BatchDone], None],
        current_epoch: Callable[[], int],
        counters: GatewayCounters,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        writes: int = 1,
        rng: random.Random | None = None,
    ) -> None:
        self._sink = sink
        self._on_done = on_done
        self._current_epoch = current_epoch
        self._counters = counters
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._rng = rng or random.Random()
        self._queue: queue.SimpleQueue[StoreBatch | None] = queue.SimpleQueue()
        self._writes = writes
        self._submitted = 0  # written by the submitting thread only
        self._finished = 0  # written by the writer threads, under _lock
        self._failing = 0  # writer threads whose last attempt failed, under _lock
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._stop = threading.Event()
        self._throttle = LogThrottle(10.0)
        self._threads = [
            threading.Thread(target=self._run, name=f"store-writer-{i}", daemon=True)
            for i in range(writes)
        ]

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        return self._submitted == self._finished

    @property
    def healthy(self) -> bool:
        """No write is failing now (the last attempt of each busy thread succeeded)."""
        return self._failing_since is None

    @property
    def backlog(self) -> int:
        """Batches submitted and not finished."""
        return self._submitted - self._finished

    @property
    def free_slots(self) -> int:
        """Writes that could start at once (threads with nothing to do)."""
        return max(0, self._writes - self.backlog)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, batch: StoreBatch) -> None:
        """Queue a batch; it is written after every batch submitted before it."""
        self._submitted += 1
        self._queue.put(batch)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current attempts; queued batches stay unwritten (and unacknowledged)."""
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None or self._stop.is_set():
                return
            result = self._write(batch)
            with self._lock:
                self._finished += 1
            self._on_done(
                BatchDone(batch.number, result.outcome, batch.points, tuple(result.rejected))
            )

    def _write(self, batch: StoreBatch) -> WriteResult:
        delays = backoff_delays(
            initial_s=self._retry_initial_s,
            cap_s=self._retry_max_s,
            factor=2.0,
            jitter=0.5,
            rng=self._rng,
        )
        failed = False

        def on_retry(exc: StoreError, delay: float) -> None:
            nonlocal failed
            if not failed:
                failed = True
                with self._lock:
                    self._failing += 1
            self._on_retry(exc, delay)

        result = write_until_stored(
            self._sink,
            batch.body,
            delays=delays,
            sleep=self._stop.wait,
            abandon=lambda: batch.epoch != self._current_epoch(),
            on_retry=on_retry,
        )
        if failed:
            with self._lock:
                self._failing -= 1
                back = self._failing == 0 and self._failing_since is not None
                since = self._failing_since
                if back:
                    self._failing_since = None
            if back and since is not None and result.outcome is WriteOutcome.STORED:
                log.warning("store is back after %.1f s of failed writes", time.monotonic() - since)
                self._throttle.reset("retry")
        return result

    def _on_retry(self, exc: StoreError, delay: float) -> None:
        with self._lock:
            self._counters.store_retries += 1
            if self._failing_since is None:
                self._failing_since = time.monotonic()
        held = self._throttle.allow("retry")
        if held is not None:
            log.warning(
                "%s; retrying in %.1f s with %d batch(es) waiting, nothing acknowledged "
                "meanwhile%s",
                exc,
                delay,
                self.backlog,
                held_note(held),
            )
