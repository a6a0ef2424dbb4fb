"""One console instance: database (migrated at start), MQTT link, web server, and the tasks that
tie them together (alert ingest, escalation timer, case-event publisher, live counts).

Everything runs on one asyncio loop; database work runs in worker threads. Alerts are taken in
batches (up to `INGEST_BATCH` or whatever has arrived), committed in one transaction, then
acknowledged to the broker and pushed to the open boards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Final

import uvicorn
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from console.auth import Accounts
from console.cases import CaseStore
from console.config import ConsoleConfig
from console.db import Database, describe, migrate, open_database
from console.link import Link, OpsAlert, case_event_payload, case_topic
from console.live import Hub
from console.places import Places
from console.trends import TrendReader
from console.web import Context, build_app
from lifeline.backoff import LogThrottle, backoff_delays, held_note
from lifeline.contract import Status

log = logging.getLogger("lifeline.console")

INGEST_BATCH: Final = 1000
#: Alert ids remembered in memory: the copies of one alert on the tiers' topics (and re-sends)
#: skip the database; the database's own check catches what this forgets.
RECENT_IDS: Final = 200_000
#: Alerts taken off the broker but not yet committed (the link waits beyond it).
INGEST_QUEUE: Final = 5000


class _Server(uvicorn.Server):
    """uvicorn's server, ending the live feeds first when it stops (they would hold it open)."""

    hub: Hub

    async def shutdown(self, sockets: Any = None) -> None:
        self.hub.close()
        await super().shutdown(sockets)


class ConsoleService:
    """Builds and runs a console instance; `run()` blocks until `request_stop()` or a signal."""

    def __init__(self, config: ConsoleConfig, *, install_signal_handlers: bool = True) -> None:
        self.config = config
        c = config.console
        self.db: Database = open_database(config.database)
        self.accounts = Accounts(self.db, session_hours=c.session_hours, idle_minutes=c.idle_minutes)
        self.cases = CaseStore(self.db, origin=c.id, ack_seconds=[c.ack_seconds(level) for level in range(1, 5)],
                               max_text_chars=c.max_text_chars)
        self.hub = Hub()
        self.places = Places.from_config(c)
        self.install_signal_handlers = install_signal_handlers
        self.server: _Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.link: Link | None = None
        self.started = threading.Event()
        self.ingested = 0
        self.ingest_batches = 0
        self._publish_wake: asyncio.Event | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        #: Seconds from taking an alert off the broker to pushing its case to the open pages.
        self._lags: deque[float] = deque(maxlen=10_000)
        self._throttle = LogThrottle(30.0)

    @property
    def url(self) -> str:
        c = self.config.console
        scheme = "https" if c.tls_cert_file else "http"
        port = self.bound_port or c.port
        return f"{scheme}://{c.host}:{port}"

    @property
    def bound_port(self) -> int | None:
        """The port the web server listens on (useful with `port = 0`)."""
        server = self.server
        if server is None or not server.servers:
            return None
        for sock in server.servers[0].sockets:
            return int(sock.getsockname()[1])
        return None

    def status(self) -> dict[str, Any]:
        """The instance's own counters (cockpit, /healthz)."""
        link = self.link
        counters = link.counters if link else None
        return {
            "instance": self.config.console.id,
            "mqtt_connected": bool(link and link.connected.is_set()),
            "alerts_received": counters.received if counters else 0,
            "alerts_malformed": counters.malformed if counters else 0,
            "alerts_ingested": self.ingested,
            "case_events_published": counters.published if counters else 0,
            "live_subscribers": len(self.hub.subscribers),
            "push_lag_ms": self._lag_percentiles(),
        }

    def _lag_percentiles(self) -> dict[str, float]:
        """Median, p95 and p99 of the last 10 000 alerts' broker-to-page-feed time, in ms."""
        lags = sorted(self._lags)
        if not lags:
            return {}
        pick = lambda q: round(1000 * lags[min(len(lags) - 1, int(q * len(lags)))], 1)  # noqa: E731
        return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99)}

    def run(self) -> int:
        """Migrate, then serve until stopped; returns the exit code."""
        migrate(self.db)
        try:
            asyncio.run(self._main())
        finally:
            self.db.dispose()
        return 0

    def request_stop(self) -> None:
        """Stop from any thread."""
        server, loop = self.server, self.loop
        if server is not None:
            server.should_exit = True
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: None)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        c = self.config.console
        trends = TrendReader(self.config.store)
        queue: asyncio.Queue[OpsAlert] = asyncio.Queue(INGEST_QUEUE)
        self._publish_wake = asyncio.Event()
        ctx = Context(config=self.config, accounts=self.accounts, cases=self.cases, hub=self.hub,
                      places=self.places, trends=trends, status=self.status)
        app = build_app(ctx)
        app.app.state.set_on_change(self._publish_wake.set)  # type: ignore[attr-defined]
        self.link = Link(self.config.mqtt, client_id=self.config.mqtt.client_id or f"lifeline-console-{c.id}",
                         origin=c.id, on_alert=queue.put, on_status=self._on_status,
                         on_remote_case=self._on_remote_case)
        uv_config = uvicorn.Config(
            app, host=c.host, port=c.port, log_level="warning", access_log=False, lifespan="off",
            proxy_headers=True, forwarded_allow_ips=c.forwarded_allow_ips,
            ssl_certfile=str(c.tls_cert_file) if c.tls_cert_file else None,
            ssl_keyfile=str(c.tls_key_file) if c.tls_key_file else None, timeout_graceful_shutdown=2)
        self.server = _Server(uv_config)
        self.server.hub = self.hub
        if not self.install_signal_handlers:
            self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        tasks = [asyncio.create_task(coro, name=name) for name, coro in (
            ("mqtt", self.link.run()), ("ingest", self._ingest(queue)), ("escalate", self._escalate()),
            ("publish", self._publish()), ("counts", self._counts()))]
        watcher = asyncio.create_task(self._announce())
        try:
            await self.server.serve()
        finally:
            watcher.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
            await trends.close()
            log.info("console %s stopped", c.id)

    async def _announce(self) -> None:
        assert self.server is not None
        while not self.server.started:
            await asyncio.sleep(0.02)  # uvicorn has no started event to wait on
        log.info("console %s listening on %s (database %s)", self.config.console.id, self.url,
                 self.config.database.url)
        self.started.set()

    # ------------------------------------------------------------------ tasks

    def _on_status(self, status: Status | None, agent: str) -> None:
        if status is None:
            self.places.forget(agent)
            return
        info = self.places.on_status(status)
        if info is not None:
            self.hub.broadcast("agent", info.view(), area_of=(info.district, info.township) if info.district else None)

    def _on_remote_case(self, case_id: int) -> None:
        asyncio.get_running_loop().create_task(self._push_cases([case_id]))

    async def _push_cases(self, ids: list[int]) -> None:
        if ids and self.hub.subscribers:
            self.hub.cases(await run_in_threadpool(self.cases.rows, ids))

    async def _ingest(self, queue: asyncio.Queue[OpsAlert]) -> None:
        """Commit alerts in batches, then acknowledge them and push the cases they changed."""
        while True:
            batch = [await queue.get()]
            while len(batch) < INGEST_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            fresh, ids = [], set()
            for item in batch:
                if item.alert.id not in self._recent and item.alert.id not in ids:
                    fresh.append(item.alert)
                    ids.add(item.alert.id)
            delays = backoff_delays(initial_s=0.2, cap_s=10.0)
            while True:
                try:
                    result = await run_in_threadpool(self.cases.ingest, fresh)
                    break
                except (SQLAlchemyError, OSError) as exc:  # a database outage: keep the batch, retry
                    held = self._throttle.allow("ingest")
                    if held is not None:
                        log.error("cannot store %d alert(s) in %s: %s; retrying (they stay "
                                  "unacknowledged on the broker)%s", len(batch), self.config.database.url,
                                  describe(exc), held_note(held))
                    await asyncio.sleep(next(delays))
            assert self.link is not None
            for item in batch:
                self.link.ack(item.mid, item.qos, item.epoch)
            for alert_id in ids:
                self._recent[alert_id] = None
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
            self.ingested += result.alerts - result.duplicates
            self.ingest_batches += 1
            if self.hub.subscribers:
                self.hub.cases(result.rows)
            pushed = time.monotonic()
            self._lags.extend(pushed - item.received for item in batch)
            if self._publish_wake is not None:
                self._publish_wake.set()

    async def _escalate(self) -> None:
        """Escalate cases nobody acknowledged in time (every `escalation_check_s`)."""
        interval = self.config.console.escalation_check_s
        while True:
            await asyncio.sleep(interval)
            try:
                ids = await run_in_threadpool(self.cases.escalate_overdue)
            except (SQLAlchemyError, OSError) as exc:  # the database may be away for a while
                log.error("escalation check failed: %s", describe(exc))
                continue
            if ids:
                log.info("escalated %d unacknowledged case(s): %s", len(ids), ", ".join(map(str, ids[:20])))
                await self._push_cases(ids)
                assert self._publish_wake is not None
                self._publish_wake.set()

    async def _publish(self) -> None:
        """Publish this instance's case events on `P/case/{district}` in order, at QoS 1."""
        assert self._publish_wake is not None and self.link is not None
        prefix = self.config.mqtt.prefix
        origin = self.config.console.id
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publish_wake.wait(), 2.0)
            self._publish_wake.clear()
            await self.link.connected.wait()
            try:
                rows = await run_in_threadpool(self.cases.unpublished)
            except (SQLAlchemyError, OSError) as exc:
                log.error("cannot read case events to publish: %s", describe(exc))
                continue
            done: list[int] = []
            for row in rows:
                if not await self.link.publish(case_topic(prefix, row.district), case_event_payload(row, origin)):
                    break
                done.append(row.id)
            if done:
                await run_in_threadpool(self.cases.mark_published, done)
            if len(done) == len(rows) == 500:
                self._publish_wake.set()  # more waiting

    async def _counts(self) -> None:
        """Every second, each open board gets its area's counts."""
        while True:
            await asyncio.sleep(1.0)
            areas = self.hub.areas()
            if not areas:
                continue
            try:
                data = await run_in_threadpool(lambda: {k: self.cases.counts(u) for k, u in areas.items()})
            except (SQLAlchemyError, OSError) as exc:
                log.error("cannot count cases: %s", describe(exc))
                continue
            self.hub.per_area("counts", data)


def run_console(config: ConsoleConfig) -> int:
    """`lifeline console`: run one instance until SIGTERM/SIGINT."""
    return ConsoleService(config).run()


def start_in_thread(config: ConsoleConfig, *, timeout_s: float = 60.0) -> tuple[ConsoleService, threading.Thread, Callable[[], None]]:
    """A console in a thread of this process (tests, benchmarks, demo); returns it and a stopper."""
    service = ConsoleService(config, install_signal_handlers=False)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the starter
            errors.append(exc)
            service.started.set()

    thread = threading.Thread(target=target, name=f"console-{config.console.id}", daemon=True)
    thread.start()
    if not service.started.wait(timeout_s) or errors:
        service.request_stop()
        raise RuntimeError(f"console did not start: {errors[0] if errors else 'timeout'}")

    def stop() -> None:
        service.request_stop()
        thread.join(30)

    return service, thread, stop
