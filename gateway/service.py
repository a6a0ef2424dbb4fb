"""`lifeline gateway`: the central ingest from MQTT into the time-series store, with tier routing.

Threads: the calling thread drives paho (external-loop API) and the worker (`Pipeline`) that
owns all state, and also drives the live lane (a second connection, `live.py`) in the same
select; the store writer threads (`influx.max_writes`) write sealed batches and post their
outcome back through a mailbox and a wake pipe. The
durable state (registry, dead letters) is one SQLite file in `gateway.state_dir`. A
SIGTERM or SIGINT drains: no new messages are taken, open batches are written and acknowledged
(for at most `DRAIN_S`), then the broker connection is closed with the session kept.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import signal
import threading
import time
from types import FrameType
from typing import Final

from gateway.config import GatewayConfig
from gateway.counters import GatewayCounters
from gateway.events import Event
from gateway.lineproto import load_kernels
from gateway.link import BrokerLink, registry_topic, select_links
from gateway.live import LiveLane
from gateway.pipeline import Pipeline, PipelineSettings
from gateway.registry import Registry, offline_payload
from gateway.state import GatewayState
from gateway.store import InfluxStore, LineSink
from gateway.writer import StoreWriter

log = logging.getLogger(__name__)

#: Longest a shutdown waits for open batches to be stored and acknowledged.
DRAIN_S: Final = 10.0
#: Longest the start waits for the live lane's subscription before connecting the session.
LIVE_START_S: Final = 5.0
#: Cyclic-GC thresholds of a gateway process: young collections every 50 k allocations, a full
#: one every 20 M (minutes at full load) instead of every 70 k.
GC_THRESHOLDS: Final = (50_000, 20, 20)


def tune_gc() -> None:
    """Keep the cyclic collector off the hot path of a gateway process.

    Tens of thousands of in-flight messages are live objects; with Python's default thresholds
    the collector rescans them (and every module object) many times a second, about 10 % of an
    alert's cost. Objects alive after start-up are frozen out of collection, and collections are
    made rarer. Process-wide: called by `run_gateway` (and the benchmark's gateway processes).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class GatewayService:
    """One gateway: broker link, store writer, worker loop; `run()` lasts until `request_stop()`."""

    def __init__(self, config: GatewayConfig, *, sink: LineSink | None = None) -> None:
        self.config = config
        gw = config.gateway
        prefix = config.mqtt.prefix
        self.counters = GatewayCounters()
        self.state = GatewayState(
            gw.state_path, dead_letter_max_bytes=gw.dead_letter_max_mb * 1024 * 1024
        )
        self.registry = Registry.for_gateway(gw, self.state)
        topic = registry_topic(prefix, gw.id)
        #: Events from other threads (the store writer); the wake pipe ends the worker's select.
        self._mailbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.link = BrokerLink(config.mqtt, gw, self._handle, will=(topic, offline_payload(gw.id)))
        self._sink = sink if sink is not None else InfluxStore(config.influx)
        self.writer = StoreWriter(
            self._sink,
            on_done=self._post,
            current_epoch=lambda: self.link.epoch,
            counters=self.counters,
            retry_initial_s=config.influx.retry_initial_s,
            retry_max_s=config.influx.retry_max_s,
            writes=config.influx.max_writes,
        )
        self.live = LiveLane(config.mqtt, gw, self._handle) if gw.live_lane else None
        self.pipeline = Pipeline(
            PipelineSettings(
                prefix=prefix,
                gateway_id=gw.id,
                batch_points=config.influx.batch_size,
                batch_bytes=config.influx.batch_max_bytes,
                flush_interval_s=config.influx.flush_interval_ms / 1000,
                registry_interval_s=gw.registry_interval_s,
                stats_interval_s=gw.stats_interval_s,
                registry_topic=topic,
                max_inflight=self.link.receive_maximum,
                clock_skew_ms=int(gw.clock_skew_s * 1000),
            ),
            broker=self.link,
            writer=self.writer,
            counters=self.counters,
            registry=self.registry,
            state=self.state,
            live=self.live,
        )
        self._stop = threading.Event()

    def _handle(self, event: Event) -> None:
        self.pipeline.handle(event)

    def _post(self, event: Event) -> None:
        """Hand an event from another thread to the worker and wake it."""
        self._mailbox.put(event)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the worker is awake anyway

    def request_stop(self) -> None:
        """Ask `run()` to drain and return (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake()

    def run(self) -> int:
        """Run until `request_stop()`; returns the exit code (0)."""
        gw = self.config.gateway
        log.info(
            "gateway %s: broker %s (client %s, share group %s, receive maximum %d), "
            "store %s bucket %s (%d writes at once), state %s (%d agents, %d sensor owners, "
            "%d dead letters)",
            gw.id,
            self.config.mqtt.url,
            self.link.client_id,
            gw.share_group or "none",
            self.link.receive_maximum,
            self.config.influx.url,
            self.config.influx.bucket,
            self.config.influx.max_writes,
            self.state.path,
            len(self.registry.agents),
            len(self.state.owners()),
            self.state.dead_letter_rows,
        )
        self.writer.start()
        if self.live is not None:
            self._start_live_lane(self.live)
        self.link.start()
        try:
            while not self._stop.is_set():
                self._round(self.pipeline.wait_s())
        finally:
            self._shutdown()
        return 0

    def _start_live_lane(self, live: LiveLane) -> None:
        """Connect the live lane first and wait (bounded) for its subscriptions: it must take
        live alerts from before the session's backlog comes."""
        live.start()
        deadline = time.monotonic() + LIVE_START_S
        while not live.ready and not self._stop.is_set() and time.monotonic() < deadline:
            select_links([(live, True)], 0.1, self._wake_r)
        if not live.ready:
            log.warning(
                "live lane %s not subscribed after %.0f s; starting without it (live alerts wait "
                "behind a backlog until it connects)",
                live.client_id,
                LIVE_START_S,
            )

    def _round(self, timeout_s: float) -> bool:
        """One turn of the worker: broker traffic, store results, due batches and acks."""
        links = [(self.link, self.pipeline.wants_input())]
        if self.live is not None:
            links.append((self.live, True))
        drained = select_links(links, timeout_s, self._wake_r)[0]
        mailbox, handle = self._mailbox, self.pipeline.handle
        while not mailbox.empty():
            handle(mailbox.get_nowait())
        self.pipeline.poll(inbox_empty=drained)
        self.link.flush()
        return drained

    def _shutdown(self) -> None:
        log.info("gateway %s stopping: draining open batches", self.config.gateway.id)
        pipeline = self.pipeline
        pipeline.start_draining()
        deadline = time.monotonic() + DRAIN_S
        while not pipeline.settled and self.link.connected and time.monotonic() < deadline:
            self._round(0.1)
        if not pipeline.settled:
            log.warning(
                "store did not confirm every batch in time; the broker keeps those "
                "messages for the next start"
            )
        if self.link.connected:  # say goodbye on the registry topic (the will covers a crash)
            self.link.publish(
                registry_topic(self.config.mqtt.prefix, self.config.gateway.id),
                offline_payload(self.config.gateway.id),
                retain=True,
            )
        if self.live is not None:
            self.live.stop()
        self.link.stop()
        self.writer.stop()
        self.state.close()
        close = getattr(self._sink, "close", None)
        if callable(close):
            close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("gateway %s stopped: %s", self.config.gateway.id, self.counters.as_dict())


def run_gateway(config: GatewayConfig) -> int:
    """Run the gateway until SIGTERM or SIGINT, then shut down cleanly; returns the exit code."""
    service = GatewayService(config)
    load_kernels()
    tune_gc()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        service.request_stop()  # no logging: a signal may interrupt a log call holding its lock

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return service.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
