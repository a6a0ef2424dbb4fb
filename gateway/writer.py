"""One thread that writes sealed batches to the store in order, each until it is stored.

While the store is down the writer retries the oldest batch with capped, jittered backoff and
the rest wait behind it; nothing is acknowledged to the broker meanwhile, so the broker's
receive maximum bounds what the gateway holds. A batch from an earlier broker connection is
abandoned at its next retry: the broker re-sends those messages on the new connection.
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
from gateway.store import LineSink, StoreError, WriteOutcome, write_until_stored
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
        self._submitted = 0  # written by the submitting thread only
        self._finished = 0  # written by the writer thread only
        self._failing_since: float | None = None
        self._stop = threading.Event()
        self._throttle = LogThrottle(10.0)
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        return self._submitted == self._finished

    @property
    def healthy(self) -> bool:
        """The last write attempt succeeded (or none failed yet)."""
        return self._failing_since is None

    @property
    def backlog(self) -> int:
        """Batches submitted and not finished."""
        return self._submitted - self._finished

    def start(self) -> None:
        self._thread.start()

    def submit(self, batch: StoreBatch) -> None:
        """Queue a batch; it is written after every batch submitted before it."""
        self._submitted += 1
        self._queue.put(batch)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current attempt; queued batches stay unwritten (and unacknowledged)."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None or self._stop.is_set():
                return
            outcome = self._write(batch)
            self._finished += 1
            self._on_done(BatchDone(batch.number, outcome, batch.points))

    def _write(self, batch: StoreBatch) -> WriteOutcome:
        delays = backoff_delays(
            initial_s=self._retry_initial_s,
            cap_s=self._retry_max_s,
            factor=2.0,
            jitter=0.5,
            rng=self._rng,
        )
        outcome = write_until_stored(
            self._sink,
            batch.body,
            delays=delays,
            sleep=self._stop.wait,
            abandon=lambda: batch.epoch != self._current_epoch(),
            on_retry=self._on_retry,
        )
        if outcome is WriteOutcome.STORED and self._failing_since is not None:
            log.warning(
                "store is back after %.1f s of failed writes",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
            self._throttle.reset("retry")
        return outcome

    def _on_retry(self, exc: StoreError, delay: float) -> None:
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
