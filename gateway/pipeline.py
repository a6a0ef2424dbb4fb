"""The gateway's worker: decode, batch for the store, route alerts to tiers, acknowledge in order.

Every delivery is acknowledged to the broker only when (a) the store confirmed the batch that
holds its points, or the dead-letter file holds it (committed), and (b) the broker acknowledged
every ops publish made for it. So a `kill -9` at any moment loses nothing: whatever was not
acknowledged is re-sent to the restarted gateway, and re-writing a point is idempotent (same
series, same time). Nothing taken off the broker is dropped without a durable trace: a payload
that breaks the contract, an alert the registry contradicts, a time beyond the clock and a row
the store refuses each go to the dead-letter file (`GatewayState`) with their reason.

Alerts are routed as soon as they are decoded, before the store confirms: operators see an
alert within milliseconds even while the store is down. A crash before the acknowledgement
makes the broker re-send the alert and the gateway route it again: ops consoles get alerts
at least once and de-duplicate by the alert's `id` (contract section 2).

An alert's claimed `agent` is held against the registry first (`Registry.check_alert`): one
naming another agent than the sensor's owner, or an agent not on the allow-list, is refused:
dead-lettered, neither stored nor routed, except that an alarm of level 3 or 4 (or the clear of
one) is never held back for who sent it: it is routed flagged `unverified` (and dead-lettered,
not stored). One naming an agent not heard of yet waits (unacknowledged, so nothing behind it is
acknowledged either) for that agent's status or summary, at most the registry's
`unknown_hold_s`; the broker's receive maximum bounds how many wait (back-pressure: the broker
holds the rest), and the live lane brings every retained status at once.

While this gateway's session is behind (after a (re)connect, while the receive maximum is used
up, or while it delivers only old messages), alerts also come over the live lane
(`gateway.live`), a clean-session connection that is not queued behind the backlog: they are
routed at once, and only stored when the backlog reaches them (their routing is not repeated).
Meanwhile the backlog's routes are published on the live lane, so their PUBACKs do not queue
behind the backlog on the session's connection, and `wants_input` can stop reading the session
while the receive maximum is held (back-pressure). The lane's alert subscription ends once the
session delivers fresh messages again.

Batches are sealed when they reach `batch_points` or `batch_bytes`, or while a write slot is
free, when their oldest message is `flush_interval` old or as soon as the queue of events is
empty while no write is in flight. While every write slot is busy a batch keeps growing, so a
slow store gets a few large requests instead of a queue of small ones.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import msgpack
import numpy as np

from lifeline.backoff import LogThrottle, held_note
from lifeline.contract import (
    Alert,
    DecodeError,
    Summary,
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
    LiveMessage,
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
from gateway.registry import AlertVerdict, OwnershipEvent, Registry
from gateway.state import DeadLetterReason, GatewayState, StateError
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

    @property
    def free_slots(self) -> int: ...

    def submit(self, batch: StoreBatch) -> None: ...


class LivePort(Protocol):
    """What the worker needs from the live lane: take alerts over it (or stop), and publish
    routes on its own connection (their PUBACKs come back as `PublishAcked` of lane 1)."""

    @property
    def connected(self) -> bool: ...

    def want_alerts(self, on: bool) -> None: ...

    def publish(self, topic: str, payload: bytes) -> int: ...


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """Tuning of one worker (from `[influx]` and `[gateway]`)."""

    prefix: str
    gateway_id: str
    batch_points: int = 5000
    batch_bytes: int = 8 * 1024 * 1024
    flush_interval_s: float = 0.2
    registry_interval_s: float = 10.0
    stats_interval_s: float = 60.0
    registry_topic: str = ""
    #: The receive maximum asked of the broker: at this many deliveries in flight it holds back.
    max_inflight: int = 20_000
    #: Times further ahead of the wall clock than this are refused (`gateway.clock_skew_s`).
    clock_skew_ms: int = 300_000


AlertKey = tuple[str, str, int]

#: Most districts whose ops topics are cached; beyond it the cache starts afresh.
MAX_CACHED_DISTRICTS: Final = 10_000
#: Line-protocol bytes an alert adds to its batch, for the byte bound (an upper estimate).
ALERT_LINE_BYTES: Final = 256
#: Shortest pause between two commits of the state file (dead letters wait at most this long).
COMMIT_EVERY_S: Final = 0.05
#: Pause before retrying a failed commit of the state file.
COMMIT_RETRY_S: Final = 1.0
#: Window over which the session's lag is judged (and the least time it counts as behind).
CATCH_UP_S: Final = 2.0
#: The session is caught up when the freshest alert or summary of a window is this young (ms
#: between its time and its arrival), or none came; it fell behind when even the freshest is
#: older than BEHIND_LAG_MS.
CAUGHT_UP_LAG_MS: Final = 2_000
BEHIND_LAG_MS: Final = 10_000
#: Most alert ids routed from the live lane and not yet seen on the session (oldest dropped).
MAX_LIVE_ROUTED: Final = 100_000
#: Most routes in flight on the live lane (the broker's Receive Maximum for one connection is
#: larger: Mosquitto's max_inflight_messages, 20000 as deployed); beyond it routes use the session.
LIVE_PUBLISHES: Final = 10_000
#: While reading is paused for back-pressure, the session's socket is still read this often
#: (keepalive: paho drops a connection that brings nothing for its keepalive).
LIVENESS_READ_S: Final = 5.0
#: `max(level, prev)` from which an alert is routed even when the registry contradicts its agent.
ALARM_LEVEL: Final = 3

_REASONS: Final = {
    AlertVerdict.WRONG_OWNER: DeadLetterReason.WRONG_OWNER,
    AlertVerdict.NOT_ALLOWED: DeadLetterReason.NOT_ALLOWED,
    AlertVerdict.UNKNOWN_AGENT: DeadLetterReason.UNKNOWN_AGENT,
    AlertVerdict.FUTURE_TIMESTAMP: DeadLetterReason.FUTURE_TIMESTAMP,
}


def event_topic(prefix: str, district: str) -> str:
    """`P/event/{district}`: ops events of the gateway (ownership conflicts), an extra topic."""
    return f"{prefix}/event/{district}"


def flag_unverified(payload: bytes, verdict: AlertVerdict, detail: str) -> bytes:
    """The alert payload with `unverified: true`, `verdict` and `verdict_detail` added (readers
    ignore keys they do not know, contract section 2)."""
    body = cast(dict[str, Any], msgpack.unpackb(payload, raw=False))
    body["unverified"] = True
    body["verdict"] = verdict.value
    body["verdict_detail"] = detail
    return cast(bytes, msgpack.packb(body, use_bin_type=True))


@dataclass(slots=True, eq=False)
class _Waiting:
    """An alert held until its agent is known (or its time is up)."""

    alert: Alert
    payload: bytes
    delivery: Delivery
    epoch: int
    deadline: float
    done: bool = False


@dataclass(slots=True)
class _OpenBatch:
    """Points collected for the next store write and the deliveries they hold."""

    opened: float = 0.0
    epoch: int = 0
    chunks: list[bytes] = field(default_factory=list)
    points: int = 0
    bytes: int = 0
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
        state: GatewayState | None = None,
        live: LivePort | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.registry = registry
        self.state = state if state is not None else GatewayState(":memory:")
        self.ledger = AckLedger()
        self._broker = broker
        self._writer = writer
        self._live = live
        self._clock = clock
        self._wall_ms = wall_ms
        self._prefix = settings.prefix
        self._alert_head = f"{settings.prefix}/alert/"
        self._summary_head = f"{settings.prefix}/summary/"
        self._status_head = f"{settings.prefix}/status/"
        self._skew_ms = settings.clock_skew_ms
        self._last_wall = 0  # the wall clock as `_future` last read it
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
        #: Routes waiting for room on the live lane (LIVE_PUBLISHES in flight there).
        self._live_deferred: deque[tuple[str, bytes, bool, Delivery | None]] = deque()
        #: Alerts waiting for their agent, oldest first (decided ones are skipped), and by agent.
        self._waiting: deque[_Waiting] = deque()
        self._waiting_agents: dict[str, deque[_Waiting]] = {}
        self._waiting_count = 0
        #: Deliveries held until the dead-letter rows made for them are committed.
        self._dead_held: list[Delivery] = []
        self._next_commit = now
        #: Whether the session is behind (the live lane takes alerts) and since when; the least
        #: lag (arrival minus the message's own time) of the alerts and summaries of this window.
        self._behind = False
        self._behind_since = now
        self._lag_window = now
        self._lag_min = BEHIND_LAG_MS * 1000
        self._lag_seen = False
        #: When the session's socket was last read while paused, and whether it is paused now.
        self._last_input = now
        self._paused = False
        #: Alert ids routed from the live lane, not yet taken from the session (insertion order).
        self._live_routed: dict[str, float] = {}
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
        elif type(event) is LiveMessage:
            self._on_live(event)
        elif type(event) is Disconnected:
            self._on_disconnected(event)
        elif type(event) is Connected:
            self._publish_limit = max(1, event.receive_maximum)
            self._next_registry = self._clock()  # replace the will's `offline` at once
            self._set_behind(True)  # until shown otherwise: a resumed session may hold a backlog
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
        if len(self.ledger) > counters.in_flight_peak:  # noqa: PLR1730 (hot path: no call)
            counters.in_flight_peak = len(self.ledger)
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
            self._dead_letter(DeadLetterReason.BAD_PAYLOAD, topic, message.payload, str(exc), delivery)
            held = self._throttle.allow("bad")
            if held is not None:
                log.warning(
                    "dead-lettered a bad message on %s: %s%s", topic, exc, held_note(held)
                )
        except Exception as exc:  # a bug must not turn one message into a crash loop
            counters.bad_payloads += 1
            self._dead_letter(
                DeadLetterReason.INTERNAL_ERROR, topic, message.payload,
                f"{type(exc).__name__}: {exc}", delivery,
            )
            held = self._throttle.allow("internal")
            if held is not None:
                log.exception(
                    "internal error on a message on %s; dead-lettered it%s", topic, held_note(held)
                )

    def _hold(self, delivery: Delivery, epoch: int) -> None:
        batch = self._open
        if batch.empty:
            batch.opened = self._clock()
            batch.epoch = epoch
        self.ledger.hold(delivery)
        batch.deliveries.append(delivery)

    def _dead_letter(
        self,
        reason: DeadLetterReason,
        topic: str,
        payload: bytes,
        detail: str,
        delivery: Delivery | None,
    ) -> None:
        """Keep a message (or a refused row) in the dead-letter file; its delivery is held until
        the row is committed, so it is acknowledged only once the record is durable."""
        self.state.dead_letter(reason, topic, payload, detail, self._wall_ms())
        self.counters.dead_lettered += 1
        if delivery is not None:
            self.ledger.hold(delivery)
            self._dead_held.append(delivery)

    def _note_lag(self, ts: int) -> None:
        """Keep the least lag of this window: how far behind its own time the session delivers."""
        lag = self._last_wall - ts
        if lag < self._lag_min:  # noqa: PLR1730 (hot path: no call)
            self._lag_min = lag
        self._lag_seen = True

    def _future(self, ts: int) -> int:
        """How many ms `ts` lies beyond the wall clock plus the allowed skew (0: it does not)."""
        wall = self._last_wall = self._wall_ms()
        ahead = ts - wall - self._skew_ms
        return ahead if ahead > 0 else 0  # noqa: FURB136 (hot path: no call)

    def _refuse_future(
        self, what: str, ts: int, topic: str, payload: bytes, delivery: Delivery
    ) -> None:
        self.counters.future_timestamps += 1
        ahead_s = (ts - self._wall_ms()) / 1000
        detail = (
            f"{what} {ts} is {ahead_s:.0f} s ahead of the gateway's clock (gateway.clock_skew_s "
            f"= {self._skew_ms / 1000:.0f})"
        )
        self._dead_letter(DeadLetterReason.FUTURE_TIMESTAMP, topic, payload, detail, delivery)
        held = self._throttle.allow("future")
        if held is not None:
            log.warning("dead-lettered a message on %s: %s%s", topic, detail, held_note(held))

    def _on_alert(self, message: Inbound, delivery: Delivery) -> None:
        alert = self._alerts.decode(message.payload)
        expected = alert_topic(self._prefix, alert.district, alert.site, alert.sensor)
        if message.topic != expected:
            raise DecodeError(
                f"Alert from {alert.sensor!r}: topic {message.topic!r} does not match "
                f"its district/site/sensor ({expected!r})"
            )
        if self._future(alert.ts):
            verdict = AlertVerdict.FUTURE_TIMESTAMP
        else:
            self._note_lag(alert.ts)
            verdict = self.registry.check_alert(alert)
        if verdict is AlertVerdict.ACCEPT:
            self._accept_alert(alert, message.payload, delivery, message.epoch)
        elif verdict is AlertVerdict.UNKNOWN_AGENT and self.registry.holds_unknown:
            self._wait_for_agent(alert, message.payload, delivery, message.epoch)
        else:
            self._decide(alert, message.payload, delivery, message.epoch, verdict)

    def _accept_alert(
        self,
        alert: Alert,
        payload: bytes,
        delivery: Delivery,
        epoch: int,
        verdict: AlertVerdict | None = None,
    ) -> None:
        """Store and route an alert (flagged `unverified` when `verdict` says why)."""
        self.counters.alerts += 1
        self.registry.on_alert(alert, self._wall_ms())
        self._hold(delivery, epoch)
        self._add_alert(alert)
        if verdict is not None:
            payload = flag_unverified(payload, verdict, self._why(alert, verdict))
        self._route(alert, payload, delivery)

    def _route(self, alert: Alert, payload: bytes, delivery: Delivery | None) -> None:
        """Publish to every ops tier that sees the alert, unless the live lane already did."""
        if self._live_routed and self._live_routed.pop(alert.id, None) is not None:
            return
        level, prev = alert.level, alert.prev
        for topic in self._ops_topics(alert.district)[level if level > prev else prev]:  # noqa: FURB136 (hot path: no call)
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

    def _why(self, alert: Alert, verdict: AlertVerdict) -> str:
        owner = self.registry.owner(alert.sensor)
        return {
            AlertVerdict.WRONG_OWNER: f"sensor {alert.sensor} belongs to agent {owner}",
            AlertVerdict.NOT_ALLOWED: f"agent {alert.agent} is not in gateway.agents",
            AlertVerdict.UNKNOWN_AGENT: f"no status or summary of agent {alert.agent} came in time",
            AlertVerdict.FUTURE_TIMESTAMP: (
                f"its time {alert.ts} is beyond the gateway's clock plus gateway.clock_skew_s"
            ),
        }.get(verdict, verdict.value)

    def _decide(
        self, alert: Alert, payload: bytes, delivery: Delivery, epoch: int, verdict: AlertVerdict
    ) -> None:
        """An alert the registry did not accept: dead-lettered, and routed flagged `unverified`
        if it is an alarm (level 3-4 or its clear); with `unknown_agents = "accept"` an alert of
        an unknown agent is stored and routed flagged instead."""
        if verdict is AlertVerdict.UNKNOWN_AGENT and self.registry.unknown_agents == "accept":
            self.counters.alerts_unverified += 1
            self._accept_alert(alert, payload, delivery, epoch, verdict)
            return
        if verdict is AlertVerdict.WRONG_OWNER:
            self.registry.alert_conflict(alert, self._wall_ms())
            self._publish_events()
        why = self._why(alert, verdict)
        topic = alert_topic(self._prefix, alert.district, alert.site, alert.sensor)
        alarm = max(alert.level, alert.prev) >= ALARM_LEVEL
        if verdict is AlertVerdict.FUTURE_TIMESTAMP:
            self.counters.future_timestamps += 1
        if alarm:
            self.counters.alerts_unverified += 1
            self._route(alert, flag_unverified(payload, verdict, why), delivery)
        else:
            self.counters.alerts_refused += 1
        self._dead_letter(_REASONS[verdict], topic, payload, f"alert {alert.id}: {why}", delivery)
        held = self._throttle.allow(f"refused-alert-{alarm}")
        if held is not None:
            owner = self.registry.owner(alert.sensor)
            log.warning(
                "%s alert %s (level %d) of sensor %s: it claims agent %s, owner %s (%s)%s",
                "routed as unverified and dead-lettered" if alarm else "dead-lettered",
                alert.id,
                alert.level,
                alert.sensor,
                alert.agent,
                owner if owner is not None else "unknown",
                why,
                held_note(held),
            )

    def _wait_for_agent(self, alert: Alert, payload: bytes, delivery: Delivery, epoch: int) -> None:
        """Hold an alert of an agent not heard of yet until its status or summary comes.

        No cap of its own: the broker's receive maximum bounds the deliveries in flight, so many
        waiting alerts only make the broker hold the rest back (back-pressure), nothing is
        decided early."""
        self.counters.alerts_held += 1
        self.ledger.hold(delivery)
        waiting = _Waiting(alert, payload, delivery, epoch, self._clock() + self.registry.unknown_hold_s)
        self._waiting.append(waiting)
        queue = self._waiting_agents.get(alert.agent)
        if queue is None:
            self._waiting_agents[alert.agent] = deque((waiting,))
        else:
            queue.append(waiting)
        self._waiting_count += 1
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

    def _decide_waiting(self, waiting: _Waiting) -> None:
        """Decide one waiting alert by the registry now (its agent was heard, or time is up)."""
        waiting.done = True
        self._waiting_count -= 1
        verdict = self.registry.check_alert(waiting.alert)
        if verdict is AlertVerdict.ACCEPT:
            self._accept_alert(waiting.alert, waiting.payload, waiting.delivery, waiting.epoch)
        else:
            self._decide(waiting.alert, waiting.payload, waiting.delivery, waiting.epoch, verdict)
        self.ledger.release(waiting.delivery)

    def _agent_heard(self, agent: str) -> None:
        """A status or summary of `agent` came: decide the alerts that waited for it."""
        queue = self._waiting_agents.pop(agent, None)
        if queue is not None:
            for waiting in queue:
                if not waiting.done:
                    self._decide_waiting(waiting)

    def _add_alert(self, alert: Alert) -> None:
        """One alert per (sensor, rule, ts), the store's point identity: the highest `seq` wins."""
        batch = self._open
        alerts = batch.alerts
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
        else:
            batch.bytes += ALERT_LINE_BYTES
        alerts[key] = alert
        if len(alerts) + batch.points >= self.settings.batch_points or batch.bytes >= self.settings.batch_bytes:
            self.seal()

    def _on_summary(self, message: Inbound, delivery: Delivery) -> None:
        summary = self._summaries.decode(message.payload)
        if message.topic != summary_topic(self._prefix, summary.agent):
            raise DecodeError(f"Summary from agent {summary.agent!r} arrived on {message.topic!r}")
        if self._future(summary.t1):
            self._refuse_future("window end t1", summary.t1, message.topic, message.payload, delivery)
            return
        self._note_lag(summary.t1)
        self.counters.summaries += 1
        self.registry.on_summary(summary, self._wall_ms())
        self._publish_events()
        contested = self.registry.contested_rows(summary)
        if contested:
            summary = self._without_contested(summary, contested, message, delivery)
        lines = format_table(reading_table(summary, self._cache))
        self._hold(delivery, message.epoch)
        self._add_lines(lines)
        if self._waiting_count:
            self._agent_heard(summary.agent)

    def _without_contested(
        self, summary: Summary, rows: list[int], message: Inbound, delivery: Delivery
    ) -> Summary:
        """The summary without the rows of sensors another agent owns; those are dead-lettered
        (the whole message, with the contested sensors named)."""
        named = ", ".join(
            f"{summary.sensor[i]} (owner {self.registry.owner(summary.sensor[i])})" for i in rows[:20]
        )
        more = f" and {len(rows) - 20} more" if len(rows) > 20 else ""
        self._dead_letter(
            DeadLetterReason.WRONG_OWNER, message.topic, message.payload,
            f"summary of window end {summary.t1} from {summary.agent} lists sensors it does not "
            f"own: {named}{more}; its other rows are stored",
            delivery,
        )
        keep = np.ones(len(summary), dtype=bool)
        keep[rows] = False
        index = np.flatnonzero(keep)
        return dataclasses.replace(
            summary,
            sensor=[summary.sensor[i] for i in index],
            kind=[summary.kind[i] for i in index],
            site=[summary.site[i] for i in index],
            n=summary.n[index],
            min=summary.min[index],
            max=summary.max[index],
            mean=summary.mean[index],
            last=summary.last[index],
            extra={name: column[index] for name, column in summary.extra.items()},
        )

    def _on_status(self, message: Inbound, delivery: Delivery) -> None:
        if not message.payload:  # a cleared retained status: the agent was removed
            self.registry.forget(parse_topic(self._prefix, message.topic).agent)
            self._next_registry = min(self._next_registry, self._clock() + 1.0)
            return
        status = decode_status(message.payload)
        if message.topic != status_topic(self._prefix, status.agent):
            raise DecodeError(f"Status of agent {status.agent!r} arrived on {message.topic!r}")
        if self._future(status.ts):
            self._refuse_future("status ts", status.ts, message.topic, message.payload, delivery)
            return
        lines = format_table(status_table(status))
        self.counters.statuses += 1
        if self.registry.on_status(status, self._wall_ms()):
            self._next_registry = min(self._next_registry, self._clock() + 1.0)
        self._hold(delivery, message.epoch)
        self._add_lines(lines)
        if self._waiting_count:
            self._agent_heard(status.agent)

    def _on_live(self, message: LiveMessage) -> None:
        """A message of the live lane: a status updates the registry; an alert is routed at once
        if the session is behind (the session's copy stores it later, without routing again)."""
        if self._draining:
            return
        topic = message.topic
        try:
            if topic.startswith(self._status_head):
                if not message.payload:
                    return  # a cleared status: the session's copy removes the agent
                status = decode_status(message.payload)
                if topic != status_topic(self._prefix, status.agent) or self._future(status.ts):
                    return  # the session's copy dead-letters it
                if self.registry.on_status(status, self._wall_ms()):
                    self._next_registry = min(self._next_registry, self._clock() + 1.0)
                if self._waiting_count:
                    self._agent_heard(status.agent)
            elif topic.startswith(self._alert_head) and self._behind:
                alert = self._alerts.decode(message.payload)
                if topic != alert_topic(self._prefix, alert.district, alert.site, alert.sensor):
                    return
                if alert.id in self._live_routed or self._future(alert.ts):
                    return
                verdict = self.registry.check_alert(alert)
                payload = message.payload
                if verdict is not AlertVerdict.ACCEPT:
                    if max(alert.level, alert.prev) < ALARM_LEVEL:
                        return  # the session's copy waits for its agent or is dead-lettered
                    payload = flag_unverified(payload, verdict, self._why(alert, verdict))
                # On the session's connection: while behind, the backlog's routes are on the live
                # lane, so nothing is queued ahead of it; it holds no delivery, so its PUBACK,
                # queued behind the backlog, keeps nothing waiting.
                level, prev = alert.level, alert.prev
                for ops in self._ops_topics(alert.district)[level if level > prev else prev]:  # noqa: FURB136
                    self._publish(ops, payload, None)
                if len(self._live_routed) >= MAX_LIVE_ROUTED:
                    del self._live_routed[next(iter(self._live_routed))]
                self._live_routed[alert.id] = self._clock()
                self.counters.live_routed += 1
        except DecodeError:
            return  # the session's copy of it is dead-lettered

    def _add_lines(self, lines: Lines) -> None:
        self.counters.rows_without_fields += lines.dropped
        if lines.points:
            batch = self._open
            batch.chunks.append(lines.body)
            batch.points += lines.points
            batch.bytes += len(lines.body)
            if batch.size >= self.settings.batch_points or batch.bytes >= self.settings.batch_bytes:
                self.seal()  # now, not after the read burst: the writer works while we decode on

    def _publish(
        self, topic: str, payload: bytes, delivery: Delivery | None, *, retain: bool = False
    ) -> None:
        """Publish at QoS 1, holding `delivery` until the PUBACK; queued while the server's
        Receive Maximum of our publishes is reached. While the session is behind, a route goes
        over the live lane: its PUBACK must not queue behind the backlog the broker sends us."""
        if delivery is not None:
            self.ledger.hold(delivery)
            live = self._live
            if self._behind and live is not None and live.connected:
                if self._live_deferred or self.ledger.live_publishes_pending >= LIVE_PUBLISHES:
                    self._live_deferred.append((topic, payload, retain, delivery))
                else:
                    self.ledger.published(live.publish(topic, payload), delivery, 1)
                return
        if self._deferred or self.ledger.publishes_pending >= self._publish_limit:
            self._deferred.append((topic, payload, retain, delivery))
        else:
            self.ledger.published(self._broker.publish(topic, payload, retain=retain), delivery)

    def _publish_deferred(self) -> None:
        deferred, ledger, publish = self._deferred, self.ledger, self._broker.publish
        while deferred and ledger.publishes_pending < self._publish_limit:
            topic, payload, retain, delivery = deferred.popleft()
            ledger.published(publish(topic, payload, retain=retain), delivery)

    def _publish_live_deferred(self) -> None:
        """Routes waiting for room on the live lane; back to the session's queue if it is gone."""
        waiting, ledger, live = self._live_deferred, self.ledger, self._live
        if live is None or not live.connected:
            self._deferred.extend(waiting)
            waiting.clear()
            return
        while waiting and ledger.live_publishes_pending < LIVE_PUBLISHES:
            topic, payload, _retain, delivery = waiting.popleft()
            ledger.published(live.publish(topic, payload), delivery, 1)

    def _publish_events(self) -> None:
        """Publish the registry's ownership events on `P/event/{district}` (QoS 1)."""
        if not self.registry.has_events:
            return
        now = self._wall_ms()
        for event in self.registry.take_events():
            if event.event == "conflict":
                self.counters.ownership_conflicts += 1
            else:
                self.counters.ownership_moves += 1
            self._publish(event_topic(self._prefix, event.district), self._event_payload(event, now), None)

    def _event_payload(self, event: OwnershipEvent, now_ms: int) -> bytes:
        gateway = self.settings.gateway_id
        body = {
            "v": 1,
            "event": event.event,
            "id": f"{gateway}:{event.event}:{event.sensor}:{event.claimant}:{now_ms}",
            "ts": now_ms,
            "gateway": gateway,
            "sensor": event.sensor,
            "district": event.district,
            "owner": event.owner,
            "claimant": event.claimant,
            "source": event.source,
            "detail": event.detail,
        }
        return cast(bytes, msgpack.packb(body, use_bin_type=True))

    def _on_publish_acked(self, event: PublishAcked) -> None:
        routed = self.ledger.publish_acked(event.mid, event.lane)
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
        self.counters.batches_stored += 1
        self.counters.points_stored += done.points - len(done.rejected)
        if done.rejected:
            self.counters.batches_rejected += 1
            self.counters.rows_rejected += len(done.rejected)
            for row in done.rejected:
                self._dead_letter(DeadLetterReason.STORE_REJECTED, "", row.line, row.error, None)
            for delivery in deliveries:  # acknowledged once the refused rows are on record
                self.ledger.hold(delivery)
            self._dead_held.extend(deliveries)
        for delivery in deliveries:
            self.ledger.release(delivery)

    def _on_disconnected(self, event: Disconnected) -> None:
        self.counters.broker_disconnects += 1
        self.seal()  # a batch never mixes connections, so a stale one can be abandoned whole
        self._waiting.clear()  # their deliveries are forgotten too: the broker re-sends them
        self._waiting_agents.clear()
        self._waiting_count = 0
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
            or batch.bytes >= self.settings.batch_bytes
            or (
                self._writer.free_slots > 0
                and (now - batch.opened >= self.settings.flush_interval_s
                     or (inbox_empty and self._writer.idle))
            )
        ):
            self.seal()
        waiting = self._waiting
        while waiting and (waiting[0].done or waiting[0].deadline <= now):  # deadlines ascend
            first = waiting.popleft()
            if not first.done:
                queue = self._waiting_agents[first.alert.agent]
                queue.popleft()  # the oldest of its agent, as it is the oldest of all
                if not queue:
                    del self._waiting_agents[first.alert.agent]
                self._decide_waiting(first)
        if self._live is not None:
            self._check_behind(now, inbox_empty)
        if now >= self._next_registry:
            self._publish_registry(now)
        if now >= self._next_stats:
            self._report_stats(now)
        if self._live_deferred:
            self._publish_live_deferred()
        if self._deferred and self._broker.connected:
            self._publish_deferred()
        self._commit_state(now)
        self.acknowledge()

    def _set_behind(self, behind: bool) -> None:
        now = self._clock()
        if behind and not self._behind:
            self.counters.behind += 1
            self._behind_since = now
        if behind != self._behind and self._live is not None:
            self._live.want_alerts(behind)
            if not behind:
                log.info(
                    "caught up with the broker after %.1f s; alerts come from the session only "
                    "again (%d routed from the live lane)",
                    now - self._behind_since,
                    self.counters.live_routed,
                )
                self._live_routed.clear()
        self._behind = behind

    def _check_behind(self, now: float, inbox_empty: bool) -> None:
        """Behind while the broker holds deliveries back for us (receive maximum used up) or
        delivers only old messages; caught up once a CATCH_UP_S window brought fresh alerts or
        summaries (or none while the socket was read empty), with room in the receive maximum
        and a healthy store."""
        full = len(self.ledger) >= self.settings.max_inflight
        if full and not self._behind:
            self._set_behind(True)
        if now - self._lag_window < CATCH_UP_S:
            return
        seen, lag = self._lag_seen, self._lag_min
        self._lag_window, self._lag_seen, self._lag_min = now, False, BEHIND_LAG_MS * 1000
        if not self._behind:
            if seen and lag > BEHIND_LAG_MS:
                self._set_behind(True)
            return
        fresh = lag <= CAUGHT_UP_LAG_MS if seen else inbox_empty
        if fresh and not full and self._writer.healthy and now - self._behind_since >= CATCH_UP_S:
            self._set_behind(False)

    def wants_input(self) -> bool:
        """Whether to read the session's socket now. Not while the deliveries held reach the
        receive maximum and none waits for a PUBACK on that socket (back-pressure: the broker
        keeps the rest; Mosquitto 2.0.11 sends a resumed session more than its Receive
        Maximum), except one read every LIVENESS_READ_S for the keepalive."""
        if len(self.ledger) < self.settings.max_inflight or self.ledger.routes_pending:
            self._paused = False
            return True
        now = self._clock()
        if now - self._last_input >= LIVENESS_READ_S:
            self._last_input = now
            return True
        if not self._paused:
            self._paused = True
            self.counters.input_paused += 1
        return False

    def _commit_state(self, now: float) -> None:
        """Commit dead letters and registry changes; then release the deliveries they held."""
        if not self.state.pending or (now < self._next_commit and not self._draining):
            return
        try:
            self.state.commit()
        except StateError as exc:
            self._next_commit = now + COMMIT_RETRY_S
            held = self._throttle.allow("state")
            if held is not None:
                log.error(
                    "%s; %d message(s) stay unacknowledged until it can be written%s",
                    exc,
                    len(self._dead_held),
                    held_note(held),
                )
            return
        self._next_commit = now + COMMIT_EVERY_S
        self.counters.dead_letters_evicted = self.state.evicted
        for delivery in self._dead_held:
            self.ledger.release(delivery)
        self._dead_held = []

    def wait_s(self) -> float:
        """How long the worker may block waiting for an event before `poll` has work to do."""
        now = self._clock()
        deadline = min(self._next_registry, self._next_stats)
        if not self._open.empty:
            deadline = min(deadline, self._open.opened + self.settings.flush_interval_s)
        if self._waiting_count:
            first = next((w for w in self._waiting if not w.done), None)
            if first is not None:
                deadline = min(deadline, first.deadline)
        if self.state.pending:
            deadline = min(deadline, self._next_commit)
        if self._behind:
            deadline = min(deadline, now + 0.5)
        if self._paused:
            deadline = min(deadline, self._last_input + LIVENESS_READ_S)
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

    def status_counters(self) -> dict[str, int]:
        """The counters, with the dead-letter file's size and the alerts waiting now."""
        counters = self.counters.as_dict()
        counters["dead_letter_rows"] = self.state.dead_letter_rows
        counters["dead_letter_bytes"] = self.state.dead_letter_bytes
        counters["alerts_waiting"] = self._waiting_count
        counters["in_flight"] = len(self.ledger)
        return counters

    def _publish_registry(self, now: float) -> None:
        self._next_registry = now + self.settings.registry_interval_s
        if not self.settings.registry_topic or not self._broker.connected:
            return  # a snapshot queued while offline would be stale when sent
        payload = self.registry.encode(self._wall_ms(), self.status_counters())
        self._publish(self.settings.registry_topic, payload, None, retain=True)

    def _report_stats(self, now: float) -> None:
        self._next_stats = now + self.settings.stats_interval_s
        c = self.counters
        log.info(
            "received %d (alerts %d, summaries %d, statuses %d, bad %d, alerts refused %d, "
            "unverified %d, waiting for their agent %d), stored %d points in %d batches, "
            "routed %d (live lane %d), acked %d, in flight %d, dead-lettered %d (%d rows "
            "rejected by the store, %d future times), store retries %d, broker disconnects %d",
            c.received,
            c.alerts,
            c.summaries,
            c.statuses,
            c.bad_payloads,
            c.alerts_refused,
            c.alerts_unverified,
            self._waiting_count,
            c.points_stored,
            c.batches_stored,
            c.routed,
            c.live_routed,
            c.acked,
            len(self.ledger),
            c.dead_lettered,
            c.rows_rejected,
            c.future_timestamps,
            c.store_retries,
            c.broker_disconnects,
        )
        if self._writer.healthy:  # while the store is down, do not pile up our own points
            if self._open.empty:
                self._open.opened, self._open.epoch = now, self._broker.epoch
            self._add_lines(
                format_table(
                    counters_table(self.settings.gateway_id, self.status_counters(), self._wall_ms())
                )
            )

    # ------------------------------------------------------------------ shutdown

    def start_draining(self) -> None:
        """Take no new messages; seal what is open so it can still be stored and acknowledged."""
        self._draining = True
        self.seal()

    @property
    def settled(self) -> bool:
        """Every delivery taken is stored or dead-lettered, routed and acknowledged (nothing
        left in flight), or only alerts waiting for their agent (and what arrived after them)
        are left: the broker re-sends those to the next run."""
        if self._sealed or not self._open.empty or self.state.pending:
            return False
        return len(self.ledger) == 0 or (self._waiting_count > 0 and self.ledger.publishes_pending == 0)
