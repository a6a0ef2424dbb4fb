"""The gateway's worker: decode, batch for the store, route alerts to tiers, acknowledge in order.

Every delivery is acknowledged to the broker only when (a) the store confirmed the batch that
holds its points and (b) the broker acknowledged every ops publish made for it. So a `kill -9`
at any moment loses nothing: whatever was not acknowledged is re-sent to the restarted gateway,
and re-writing a point is idempotent (same series, same time).

Alerts are routed as soon as they are decoded, before the store confirms: operators see an
alert within milliseconds even while the store is down. A crash before the acknowledgement
makes the broker re-send the alert and the gateway route it again: ops consoles get alerts
at least once and de-duplicate by the alert's `id` (contract section 2).

An alert's claimed `agent` is held against the registry first (`Registry.check_alert`): one
naming another agent than the sensor's owner, or an agent not on the allow-list, is refused
(counted, logged, acknowledged, never stored or routed). One naming an agent not heard of yet
waits (unacknowledged, so nothing behind it is acknowledged either) for that agent's status or
summary, at most the registry's `unknown_hold_s`: after a restart the broker re-sends the
session's backlog before the retained statuses, so a legitimate agent's alerts often come first.

Batches are sealed when they reach `batch_points`, when their oldest message is
`flush_interval` old, or as soon as the queue of events is empty while the store writer is
idle, which keeps latency low under light load and batches large under heavy load.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from lifeline.backoff import LogThrottle, held_note
from lifeline.contract import (
    Alert,
    DecodeError,
    alert_topic,
    decode_status,
    ops_topic,
    parse_topic,
    status_topic,
    summary_topic,
    tiers_for,
)
from lifeline.contract.kinds import MAX_LEVEL
from gateway.counters import GatewayCounters
from gateway.decode import AlertDecoder, SummaryDecoder
from gateway.events import (
    BatchDone,
    Connected,
    Disconnected,
    Event,
    Inbound,
    PublishAcked,
    StoreBatch,
)
from gateway.ledger import AckLedger, Delivery
from gateway.lineproto import (
    Lines,
    PrefixCache,
    alert_table,
    counters_table,
    format_table,
    reading_table,
    status_table,
)
from gateway.registry import AlertVerdict, Registry
from gateway.store import WriteOutcome

log = logging.getLogger(__name__)


class BrokerPort(Protocol):
    """What the worker needs from the broker connection."""

    @property
    def epoch(self) -> int: ...

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int: ...

    def ack(self, mid: int, qos: int, epoch: int) -> bool: ...


class WriterPort(Protocol):
    """What the worker needs from the store writer."""

    @property
    def idle(self) -> bool: ...

    @property
    def healthy(self) -> bool: ...

    def submit(self, batch: StoreBatch) -> None: ...


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """Tuning of one worker (from `[influx]` and `[gateway]`)."""

    prefix: str
    gateway_id: str
    batch_points: int = 5000
    flush_interval_s: float = 0.2
    registry_interval_s: float = 10.0
    stats_interval_s: float = 60.0
    registry_topic: str = ""


AlertKey = tuple[str, str, int]

#: Most alerts waiting for their agent to become known; beyond it the oldest is decided at once,
#: so a flood of alerts from unknown agents cannot stall every acknowledgement behind it.
MAX_WAITING: Final = 5000
#: Most districts whose ops topics are cached; beyond it the cache starts afresh.
MAX_CACHED_DISTRICTS: Final = 10_000


@dataclass(frozen=True, slots=True)
class _Waiting:
    """An alert held until its agent is known (or its time is up)."""

    alert: Alert
    payload: bytes
    delivery: Delivery
    epoch: int
    deadline: float


@dataclass(slots=True)
class _OpenBatch:
    """Points collected for the next store write and the deliveries they hold."""

    opened: float = 0.0
    epoch: int = 0
    chunks: list[bytes] = field(default_factory=list)
    points: int = 0
    alerts: dict[AlertKey, Alert] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.points + len(self.alerts)

    @property
    def empty(self) -> bool:
        return not self.chunks and not self.alerts and not self.deliveries


class Pipeline:
    """State of one gateway worker; every method runs on the worker thread."""

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        broker: BrokerPort,
        writer: WriterPort,
        counters: GatewayCounters,
        registry: Registry,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.registry = registry
        self.ledger = AckLedger()
        self._broker = broker
        self._writer = writer
        self._clock = clock
        self._wall_ms = wall_ms
        self._prefix = settings.prefix
        self._alert_head = f"{settings.prefix}/alert/"
        self._summary_head = f"{settings.prefix}/summary/"
        self._status_head = f"{settings.prefix}/status/"
        self._cache = PrefixCache()
        self._summaries = SummaryDecoder()
        self._alerts = AlertDecoder()
        self._open = _OpenBatch()
        self._sealed: dict[int, list[Delivery]] = {}
        self._next_batch = 1
        self._throttle = LogThrottle(10.0, clock=clock)
        now = clock()
        self._next_registry = now
        self._next_stats = now + settings.stats_interval_s
        self._draining = False
        self._publish_limit = 65535
        self._deferred: deque[tuple[str, bytes, bool, Delivery | None]] = deque()
        #: Alerts waiting for their agent, oldest first, and how many wait per agent.
        self._waiting: deque[_Waiting] = deque()
        self._waiting_agents: dict[str, int] = {}
        #: district -> ops topics by alert level (see `_ops_topics`).
        self._ops_cache: dict[str, list[tuple[str, ...]]] = {}

    # ------------------------------------------------------------------ events

    def handle(self, event: Event) -> None:
        """Apply one event."""
        if type(event) is Inbound:
            self._on_inbound(event)
        elif type(event) is PublishAcked:
            self._on_publish_acked(event)
        elif type(event) is BatchDone:
            self._on_batch_done(event)
        elif type(event) is Disconnected:
            self._on_disconnected(event)
        elif type(event) is Connected:
            self._publish_limit = max(1, event.receive_maximum)
            self._next_registry = self._clock()  # replace the will's `offline` at once
        else:
            raise TypeError(f"unknown event {event!r}")

    def _on_inbound(self, message: Inbound) -> None:
        if self._draining:
            return  # shutting down: left unacknowledged, the broker re-sends it to the next run
        counters = self.counters
        counters.received += 1
        if message.dup:
            counters.redelivered += 1
        delivery = self.ledger.received(message.mid, message.qos, message.epoch)
        topic = message.topic
        try:
            if topic.startswith(self._alert_head):
                self._on_alert(message, delivery)
            elif topic.startswith(self._summary_head):
                self._on_summary(message, delivery)
            elif topic.startswith(self._status_head):
                self._on_status(message, delivery)
            else:
                raise DecodeError(f"topic {topic!r} is not an alert, summary or status topic")
        except DecodeError as exc:
            counters.bad_payloads += 1
            held = self._throttle.allow("bad")
            if held is not None:
                log.warning("dropped a bad message on %s: %s%s", topic, exc, held_note(held))
        except Exception:  # a bug must not turn one message into a crash loop on every re-delivery
            counters.bad_payloads += 1
            held = self._throttle.allow("internal")
            if held is not None:
                log.exception(
                    "internal error on a message on %s; dropped it%s", topic, held_note(held)
                )

    def _hold(self, delivery: Delivery, epoch: int) -> None:
        batch = self._open
        if batch.empty:
            batch.opened = self._clock()
            batch.epoch = epoch
        self.ledger.hold(delivery)
        batch.deliveries.append(delivery)

    def _on_alert(self, message: Inbound, delivery: Delivery) -> None:
        alert = self._alerts.decode(message.payload)
        expected = alert_topic(self._prefix, alert.district, alert.site, alert.sensor)
        if message.topic != expected:
            raise DecodeError(
                f"Alert from {alert.sensor!r}: topic {message.topic!r} does not match "
                f"its district/site/sensor ({expected!r})"
            )
        verdict = self.registry.check_alert(alert)
        if verdict is AlertVerdict.ACCEPT:
            self._accept_alert(alert, message.payload, delivery, message.epoch)
        elif verdict is AlertVerdict.UNKNOWN_AGENT and self.registry.holds_unknown:
            self._wait_for_agent(alert, message.payload, delivery, message.epoch)
        else:
            self._decide_unknown(alert, message.payload, delivery, message.epoch, verdict)

    def _accept_alert(self, alert: Alert, payload: bytes, delivery: Delivery, epoch: int) -> None:
        self.counters.alerts += 1
        self.registry.on_alert(alert, self._wall_ms())
        self._hold(delivery, epoch)
        self._add_alert(alert)
        level, prev = alert.level, alert.prev
        for topic in self._ops_topics(alert.district)[level if level > prev else prev]:
            self._publish(topic, payload, delivery)

    def _ops_topics(self, district: str) -> list[tuple[str, ...]]:
        """The ops topics of `district` an alert goes to, by its max(level, prev) (cached)."""
        topics = self._ops_cache.get(district)
        if topics is None:
            if len(self._ops_cache) >= MAX_CACHED_DISTRICTS:
                self._ops_cache.clear()
            topics = self._ops_cache[district] = [
                tuple(ops_topic(self._prefix, tier, district) for tier in tiers_for(top, top))
                for top in range(MAX_LEVEL + 1)
            ]
        return topics

    def _decide_unknown(
        self, alert: Alert, payload: bytes, delivery: Delivery, epoch: int, verdict: AlertVerdict
    ) -> None:
        """Refuse an alert the registry did not accept, unless its agent is merely unknown and
        `unknown_agents = "accept"`."""
        if verdict is AlertVerdict.UNKNOWN_AGENT and self.registry.unknown_agents == "accept":
            self.counters.alerts_unverified += 1
            self._accept_alert(alert, payload, delivery, epoch)
        else:
            self._refuse_alert(alert, verdict)

    def _refuse_alert(self, alert: Alert, verdict: AlertVerdict) -> None:
        """Count and log a refused alert; its delivery is left free, so it is acknowledged."""
        self.counters.alerts_refused += 1
        held = self._throttle.allow("refused-alert")
        if held is not None:
            owner = self.registry.owner(alert.sensor)
            why = {
                AlertVerdict.WRONG_OWNER: "the sensor belongs to another agent",
                AlertVerdict.NOT_ALLOWED: "the agent is not in gateway.agents",
                AlertVerdict.UNKNOWN_AGENT: "no status or summary of the agent came in time",
            }.get(verdict, verdict.value)
            log.warning(
                "refused alert %s of sensor %s: it claims agent %s, owner %s (%s)%s",
                alert.id,
                alert.sensor,
                alert.agent,
                owner if owner is not None else "unknown",
                why,
                held_note(held),
            )

    def _wait_for_agent(self, alert: Alert, payload: bytes, delivery: Delivery, epoch: int) -> None:
        """Hold an alert of an agent not heard of yet until its status or summary comes."""
        self.counters.alerts_held += 1
        self.ledger.hold(delivery)
        deadline = self._clock() + self.registry.unknown_hold_s
        self._waiting.append(_Waiting(alert, payload, delivery, epoch, deadline))
        self._waiting_agents[alert.agent] = self._waiting_agents.get(alert.agent, 0) + 1
        if len(self._waiting) > MAX_WAITING:
            self._decide_waiting(self._waiting.popleft(), final=True)
        held = self._throttle.allow("held-alert")
        if held is not None:
            log.info(
                "holding alert %s of sensor %s for up to %.0f s: agent %s has sent no status or "
                "summary yet%s",
                alert.id,
                alert.sensor,
                self.registry.unknown_hold_s,
                alert.agent,
                held_note(held),
            )

    def _decide_waiting(self, waiting: _Waiting, *, final: bool) -> bool:
        """Decide one waiting alert by the registry now, or finally (its time is up or the queue is
        full); False, touching nothing, if it is not final and its agent is still unknown."""
        verdict = self.registry.check_alert(waiting.alert)
        if verdict is AlertVerdict.UNKNOWN_AGENT and not final:
            return False
        count = self._waiting_agents[waiting.alert.agent] - 1
        if count:
            self._waiting_agents[waiting.alert.agent] = count
        else:
            del self._waiting_agents[waiting.alert.agent]
        if verdict is AlertVerdict.ACCEPT:
            self._accept_alert(waiting.alert, waiting.payload, waiting.delivery, waiting.epoch)
        else:
            self._decide_unknown(waiting.alert, waiting.payload, waiting.delivery, waiting.epoch, verdict)
        self.ledger.release(waiting.delivery)
        return True

    def _agent_heard(self, agent: str) -> None:
        """A status or summary of `agent` came: decide the alerts that waited for it."""
        if agent in self._waiting_agents:
            self._waiting = deque(w for w in list(self._waiting)
                                  if w.alert.agent != agent or not self._decide_waiting(w, final=False))

    def _add_alert(self, alert: Alert) -> None:
        """One alert per (sensor, rule, ts), the store's point identity: the highest `seq` wins."""
        alerts = self._open.alerts
        key = (alert.sensor, alert.rule, alert.ts)
        old = alerts.get(key)
        if old is not None:
            if old.id != alert.id:
                self.counters.alert_collisions += 1
                log.warning(
                    "alerts %s and %s of sensor %s rule %s share the time %d; the store keeps "
                    "the one with the higher seq",
                    old.id,
                    alert.id,
                    alert.sensor,
                    alert.rule,
                    alert.ts,
                )
            if old.seq > alert.seq:
                return
        alerts[key] = alert
        if len(alerts) + self._open.points >= self.settings.batch_points:
            self.seal()

    def _on_summary(self, message: Inbound, delivery: Delivery) -> None:
        summary = self._summaries.decode(message.payload)
        if message.topic != summary_topic(self._prefix, summary.agent):
            raise DecodeError(f"Summary from agent {summary.agent!r} arrived on {message.topic!r}")
        lines = format_table(reading_table(summary, self._cache))
        self.counters.summaries += 1
        self.registry.on_summary(summary, self._wall_ms())
        self._hold(delivery, message.epoch)
        self._add_lines(lines)
        if self._waiting:
            self._agent_heard(summary.agent)

    def _on_status(self, message: Inbound, delivery: Delivery) -> None:
        if not message.payload:  # a cleared retained status: the agent was removed
            self.registry.forget(parse_topic(self._prefix, message.topic).agent)
            self._next_registry = min(self._next_registry, self._clock() + 1.0)
            return
        status = decode_status(message.payload)
        if message.topic != status_topic(self._prefix, status.agent):
            raise DecodeError(f"Status of agent {status.agent!r} arrived on {message.topic!r}")
        lines = format_table(status_table(status))
        self.counters.statuses += 1
        if self.registry.on_status(status, self._wall_ms()):
            self._next_registry = min(self._next_registry, self._clock() + 1.0)
        self._hold(delivery, message.epoch)
        self._add_lines(lines)
        if self._waiting:
            self._agent_heard(status.agent)

    def _add_lines(self, lines: Lines) -> None:
        self.counters.rows_without_fields += lines.dropped
        if lines.points:
            self._open.chunks.append(lines.body)
            self._open.points += lines.points
            if self._open.size >= self.settings.batch_points:
                self.seal()  # now, not after the read burst: the writer works while we decode on

    def _publish(
        self, topic: str, payload: bytes, delivery: Delivery | None, *, retain: bool = False
    ) -> None:
        """Publish at QoS 1, holding `delivery` until the PUBACK; queued while the server's
        Receive Maximum of our publishes is reached."""
        if delivery is not None:
            self.ledger.hold(delivery)
        if self._deferred or self.ledger.publishes_pending >= self._publish_limit:
            self._deferred.append((topic, payload, retain, delivery))
        else:
            self.ledger.published(self._broker.publish(topic, payload, retain=retain), delivery)

    def _publish_deferred(self) -> None:
        deferred, ledger, publish = self._deferred, self.ledger, self._broker.publish
        while deferred and ledger.publishes_pending < self._publish_limit:
            topic, payload, retain, delivery = deferred.popleft()
            ledger.published(publish(topic, payload, retain=retain), delivery)

    def _on_publish_acked(self, event: PublishAcked) -> None:
        routed = self.ledger.publish_acked(event.mid)
        if event.refused:
            self.counters.route_refused += 1
            held = self._throttle.allow("refused")
            if held is not None:
                log.error(
                    "broker refused a publish of ours: %s (check the broker's ACL for this "
                    "gateway)%s",
                    event.reason,
                    held_note(held),
                )
        elif routed:
            self.counters.routed += 1

    def _on_batch_done(self, done: BatchDone) -> None:
        deliveries = self._sealed.pop(done.number, [])
        if done.outcome is WriteOutcome.ABANDONED:
            self.counters.batches_abandoned += 1
            return  # their connection is gone; the broker re-sends them
        if done.outcome is WriteOutcome.REJECTED:
            self.counters.batches_rejected += 1
        else:
            self.counters.batches_stored += 1
            self.counters.points_stored += done.points
        for delivery in deliveries:
            self.ledger.release(delivery)

    def _on_disconnected(self, event: Disconnected) -> None:
        self.counters.broker_disconnects += 1
        self.seal()  # a batch never mixes connections, so a stale one can be abandoned whole
        self._waiting.clear()  # their deliveries are forgotten too: the broker re-sends them
        self._waiting_agents.clear()
        dropped = self.ledger.forget()
        log.warning(
            "broker connection lost (%s); %d unacknowledged message(s) will be re-sent",
            event.reason,
            dropped,
        )

    # ------------------------------------------------------------------ time-driven work

    def poll(self, *, inbox_empty: bool) -> None:
        """Seal the open batch when due, run periodic tasks, send the acknowledgements now due."""
        now = self._clock()
        batch = self._open
        if not batch.empty and (
            batch.size >= self.settings.batch_points
            or now - batch.opened >= self.settings.flush_interval_s
            or (inbox_empty and self._writer.idle)
        ):
            self.seal()
        while self._waiting and self._waiting[0].deadline <= now:  # oldest first: deadlines ascend
            self._decide_waiting(self._waiting.popleft(), final=True)
        if now >= self._next_registry:
            self._publish_registry(now)
        if now >= self._next_stats:
            self._report_stats(now)
        if self._deferred and self._broker.connected:
            self._publish_deferred()
        self.acknowledge()

    def wait_s(self) -> float:
        """How long the worker may block waiting for an event before `poll` has work to do."""
        now = self._clock()
        deadline = min(self._next_registry, self._next_stats)
        if not self._open.empty:
            deadline = min(deadline, self._open.opened + self.settings.flush_interval_s)
        if self._waiting:
            deadline = min(deadline, self._waiting[0].deadline)
        return max(0.0, deadline - now)

    def seal(self) -> None:
        """Hand the open batch to the store writer (or release it at once if it has no points)."""
        batch = self._open
        if batch.empty:
            return
        self._open = _OpenBatch()
        chunks = batch.chunks
        points = batch.points
        if batch.alerts:
            lines = format_table(alert_table(list(batch.alerts.values()), self._cache))
            self.counters.rows_without_fields += lines.dropped
            chunks.append(lines.body)
            points += lines.points
        if points == 0:
            for delivery in batch.deliveries:
                self.ledger.release(delivery)
            return
        number = self._next_batch
        self._next_batch += 1
        self._sealed[number] = batch.deliveries
        epoch = batch.epoch if batch.deliveries else self._broker.epoch
        self._writer.submit(StoreBatch(number, epoch, b"".join(chunks), points))

    def acknowledge(self) -> None:
        """Send the PUBACKs of every delivery now free to go, in arrival order."""
        ready = self.ledger.ready()
        if not ready:
            return
        ack = self._broker.ack
        sent = 0
        for delivery in ready:
            sent += ack(delivery.mid, delivery.qos, delivery.epoch)
        self.counters.acked += sent

    def _publish_registry(self, now: float) -> None:
        self._next_registry = now + self.settings.registry_interval_s
        if not self.settings.registry_topic or not self._broker.connected:
            return  # a snapshot queued while offline would be stale when sent
        payload = self.registry.encode(self._wall_ms(), self.counters.as_dict())
        self._publish(self.settings.registry_topic, payload, None, retain=True)

    def _report_stats(self, now: float) -> None:
        self._next_stats = now + self.settings.stats_interval_s
        c = self.counters
        log.info(
            "received %d (alerts %d, summaries %d, statuses %d, bad %d, alerts refused %d, "
            "waiting for their agent %d), stored %d points in %d batches, routed %d, acked %d, "
            "in flight %d, store retries %d, broker disconnects %d",
            c.received,
            c.alerts,
            c.summaries,
            c.statuses,
            c.bad_payloads,
            c.alerts_refused,
            len(self._waiting),
            c.points_stored,
            c.batches_stored,
            c.routed,
            c.acked,
            len(self.ledger),
            c.store_retries,
            c.broker_disconnects,
        )
        if self._writer.healthy:  # while the store is down, do not pile up our own points
            if self._open.empty:
                self._open.opened, self._open.epoch = now, self._broker.epoch
            self._add_lines(
                format_table(counters_table(self.settings.gateway_id, c.as_dict(), self._wall_ms()))
            )

    # ------------------------------------------------------------------ shutdown

    def start_draining(self) -> None:
        """Take no new messages; seal what is open so it can still be stored and acknowledged."""
        self._draining = True
        self.seal()

    @property
    def settled(self) -> bool:
        """Every delivery taken is stored, routed and acknowledged (nothing left in flight), or
        only alerts waiting for their agent (and what arrived after them) are left: the broker
        re-sends those to the next run."""
        if self._sealed or not self._open.empty:
            return False
        return len(self.ledger) == 0 or (bool(self._waiting) and self.ledger.publishes_pending == 0)
