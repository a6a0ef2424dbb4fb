"""The sensing resources this gateway has heard of: agents (state, last seen, backlog) and sensors.

Agents come from their retained Status (and are seen again by every summary and alert);
sensors from summaries (kind, site, last window) and alerts. A summary costs O(1) here: the
registry keeps each agent's last summary per chunk of sensors and expands it to per-sensor
rows only when a snapshot is taken (every few seconds), not per row on the hot path (sensor
ownership is re-read only when a chunk's sensor list changes).

It is also what the gateway trusts about who sends what: statuses and summaries arrive on
topics the broker's ACL reserves for their agent, so they name agents and the sensors each one
owns reliably; an alert's topic carries no agent, so `check_alert` holds its claimed `agent`
against them (see `AlertVerdict`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import msgpack

from gateway.config import GatewaySection, UnknownAgents
from lifeline.backoff import LogThrottle, held_note
from lifeline.contract import Alert, Status, Summary

log = logging.getLogger(__name__)

VERSION: Final = 1


class AlertVerdict(enum.Enum):
    """What the registry says about an alert's claimed `agent`."""

    #: The claimed agent owns the sensor, or is known and the sensor has no known owner.
    ACCEPT = "accept"
    #: A summary put the sensor under another agent: the claim is false.
    WRONG_OWNER = "wrong_owner"
    #: The agent is not on the configured allow-list: never accepted.
    NOT_ALLOWED = "not_allowed"
    #: No status or summary of the agent seen yet: wait for one (it may be on its way).
    UNKNOWN_AGENT = "unknown_agent"


@dataclass(slots=True)
class AgentRecord:
    """What is known about one agent."""

    agent: str
    state: str = "unknown"
    status_ts: int = 0
    last_seen_ms: int = 0
    district: str = ""
    township: str = ""
    backlog: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SensorRecord:
    """What is known about one sensor (from alerts; summaries are kept per chunk)."""

    agent: str
    kind: str
    site: str
    township: str
    district: str
    last_seen_ms: int
    last_alert_ts: int = 0
    last_level: int = 0


@dataclass(slots=True)
class _Chunk:
    summary: Summary
    received_ms: int


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


class Registry:
    """Agents and sensors seen by this gateway; `snapshot()` is what the retained topic carries."""

    def __init__(
        self,
        gateway: str,
        *,
        stale_after_ms: int = 120_000,
        allowed_agents: Iterable[str] = (),
        unknown_agents: UnknownAgents = "accept",
        unknown_hold_s: float = 10.0,
    ) -> None:
        self.gateway = gateway
        self.stale_after_ms = stale_after_ms
        #: Empty: any agent with a status or summary is known; else only these, known at once.
        self.allowed_agents = frozenset(allowed_agents)
        #: What becomes of an alert whose agent stays unknown for `unknown_hold_s` (see docs).
        self.unknown_agents: UnknownAgents = unknown_agents
        self.unknown_hold_s = unknown_hold_s
        self.agents: dict[str, AgentRecord] = {}
        self._chunks: dict[tuple[str, str, int], _Chunk] = {}
        self._alert_sensors: dict[str, SensorRecord] = {}
        #: sensor -> (owning agent, window end of the summary that said so), from summaries only.
        self._owners: dict[str, tuple[str, int]] = {}
        #: Agents heard on their own status or summary topic (trusted; alerts never add to it).
        self._heard: set[str] = set()
        #: Agents that lost a sensor to another: their summaries are re-read until they stop.
        self._lost: set[str] = set()
        self._moves = LogThrottle(10.0)

    # ------------------------------------------------------------------ who may send what

    def owner(self, sensor: str) -> str | None:
        """The agent whose latest summary listed `sensor`, if any summary did."""
        owned = self._owners.get(sensor)
        return owned[0] if owned is not None else None

    @property
    def holds_unknown(self) -> bool:
        """Whether alerts of unknown agents wait for them (only worth it if they may be refused)."""
        return self.unknown_agents == "refuse" and self.unknown_hold_s > 0

    def known(self, agent: str) -> bool:
        """Whether alerts may name `agent`: allow-listed, or heard on its status or summary."""
        if self.allowed_agents:
            return agent in self.allowed_agents
        return agent in self._heard

    def check_alert(self, alert: Alert) -> AlertVerdict:
        """Hold the alert's claimed agent against the allow-list and the sensor's owner."""
        if self.allowed_agents and alert.agent not in self.allowed_agents:
            return AlertVerdict.NOT_ALLOWED
        owned = self._owners.get(alert.sensor)
        if owned is not None:
            return AlertVerdict.ACCEPT if owned[0] == alert.agent else AlertVerdict.WRONG_OWNER
        return AlertVerdict.ACCEPT if self.known(alert.agent) else AlertVerdict.UNKNOWN_AGENT

    def _claim(self, summary: Summary) -> None:
        """Make `summary.agent` the owner of its sensors, unless a later window said otherwise."""
        agent, t1, owners = summary.agent, summary.t1, self._owners
        contested = False
        for sensor in summary.sensor:
            owned = owners.get(sensor)
            if owned is None or owned[0] == agent:
                owners[sensor] = (agent, max(t1, owned[1]) if owned else t1)
                continue
            contested = True
            if t1 >= owned[1]:  # re-commissioned under another agent: the latest window wins
                owners[sensor] = (agent, t1)
                self._lost.add(owned[0])
                held = self._moves.allow("moved")
                if held is not None:
                    log.warning(
                        "sensor %s moved from agent %s to agent %s (summary of window ending %d); "
                        "alerts naming %s for it are refused from now on%s",
                        sensor,
                        owned[0],
                        agent,
                        t1,
                        owned[0],
                        held_note(held),
                    )
        if not contested:
            self._lost.discard(agent)

    @classmethod
    def for_gateway(cls, section: GatewaySection) -> Registry:
        """The registry with the policy of a `[gateway]` section (as the gateway runs it)."""
        return cls(
            section.id,
            stale_after_ms=int(section.agent_stale_s * 1000),
            allowed_agents=section.agents,
            unknown_agents=section.unknown_agents,
            unknown_hold_s=section.unknown_agent_hold_s,
        )

    def _agent(self, agent: str) -> AgentRecord:
        record = self.agents.get(agent)
        if record is None:
            record = self.agents[agent] = AgentRecord(agent)
        return record

    def on_status(self, status: Status, received_ms: int) -> bool:
        """Record a Status; True when the agent's state changed (worth publishing at once)."""
        record = self._agent(status.agent)
        self._heard.add(status.agent)
        if status.ts < record.status_ts:
            return False  # an older status re-delivered after a newer one
        changed = record.state != status.state
        record.state = status.state
        record.status_ts = status.ts
        record.last_seen_ms = max(record.last_seen_ms, received_ms)
        backlog = status.extra.get("backlog")
        record.backlog = backlog if type(backlog) is int else record.backlog
        record.detail = {k: v for k, v in status.extra.items() if _plain(v)}
        return changed

    def forget(self, agent: str) -> None:
        """Remove an agent whose retained status was cleared, with its sensors."""
        self.agents.pop(agent, None)
        self._heard.discard(agent)
        self._lost.discard(agent)
        for sensor in [s for s, (owner, _) in self._owners.items() if owner == agent]:
            del self._owners[sensor]
        for key in [k for k in self._chunks if k[0] == agent]:
            del self._chunks[key]
        for sensor in [s for s, r in self._alert_sensors.items() if r.agent == agent]:
            del self._alert_sensors[sensor]

    def on_summary(self, summary: Summary, received_ms: int) -> None:
        """Record a summary (O(1)): the agent is alive and its sensors reported a window."""
        record = self._agent(summary.agent)
        self._heard.add(summary.agent)
        record.last_seen_ms = max(record.last_seen_ms, received_ms)
        record.district, record.township = summary.district, summary.township
        if len(summary):
            key = (summary.agent, summary.sensor[0], len(summary))
            last = self._chunks.get(key)
            if last is None or summary.agent in self._lost or last.summary.sensor != summary.sensor:
                self._claim(summary)  # else the same sensors again: nothing to change
            if last is None or last.summary.t1 <= summary.t1:
                self._chunks[key] = _Chunk(summary, received_ms)

    def on_alert(self, alert: Alert, received_ms: int) -> None:
        """Record an alert: its agent and sensor are alive; keep the sensor's latest level."""
        record = self.agents.get(alert.agent) or self._agent(alert.agent)
        if received_ms > record.last_seen_ms:
            record.last_seen_ms = received_ms
        record.district, record.township = alert.district, alert.township
        sensor = self._alert_sensors.get(alert.sensor)
        if sensor is None:
            sensor = self._alert_sensors[alert.sensor] = SensorRecord(
                alert.agent, alert.kind, alert.site, alert.township, alert.district, received_ms
            )
        sensor.last_seen_ms = received_ms
        if alert.ts >= sensor.last_alert_ts:
            sensor.last_alert_ts, sensor.last_level = alert.ts, alert.level

    def agent_state(self, record: AgentRecord, now_ms: int) -> str:
        """`online`, `offline`, `stale` (online but silent too long) or `unknown`."""
        if record.state == "online" and now_ms - record.last_seen_ms > self.stale_after_ms:
            return "stale"
        return record.state

    def sensor_columns(self) -> dict[str, list[Any]]:
        """Every known sensor as columns (like a Summary): newest window per sensor wins."""
        rows: dict[str, tuple[Any, ...]] = {}
        for chunk in sorted(self._chunks.values(), key=lambda c: c.summary.t1):
            s = chunk.summary
            n = s.n.tolist()
            for i, sensor in enumerate(s.sensor):
                rows[sensor] = (
                    s.agent,
                    s.kind[i],
                    s.site[i],
                    s.township,
                    s.district,
                    s.t0,
                    s.t1,
                    n[i],
                    chunk.received_ms,
                )
        for sensor, r in self._alert_sensors.items():
            if sensor not in rows:
                rows[sensor] = (
                    r.agent,
                    r.kind,
                    r.site,
                    r.township,
                    r.district,
                    0,
                    0,
                    0,
                    r.last_seen_ms,
                )
            else:
                old = rows[sensor]
                rows[sensor] = (*old[:8], max(old[8], r.last_seen_ms))
        names = ("agent", "kind", "site", "township", "district", "t0", "t1", "n", "last_seen")
        columns: dict[str, list[Any]] = {"sensor": list(rows)}
        for j, name in enumerate(names):
            columns[name] = [row[j] for row in rows.values()]
        levels = {s: r.last_level for s, r in self._alert_sensors.items()}
        columns["level"] = [levels.get(s, 0) for s in columns["sensor"]]
        return columns

    def snapshot(self, now_ms: int, counters: dict[str, int]) -> dict[str, Any]:
        """The registry as one map (the retained `P/registry/{gateway}` payload)."""
        agents = [
            {
                "agent": r.agent,
                "state": self.agent_state(r, now_ms),
                "status_ts": r.status_ts,
                "last_seen": r.last_seen_ms,
                "district": r.district,
                "township": r.township,
                "backlog": r.backlog,
                "detail": r.detail,
            }
            for r in sorted(self.agents.values(), key=lambda r: r.agent)
        ]
        return {
            "v": VERSION,
            "gateway": self.gateway,
            "state": "online",
            "ts": now_ms,
            "agents": agents,
            "sensors": self.sensor_columns(),
            "counters": counters,
        }

    def encode(self, now_ms: int, counters: dict[str, int]) -> bytes:
        """The snapshot packed as MessagePack."""
        return cast(bytes, msgpack.packb(self.snapshot(now_ms, counters), use_bin_type=True))


def offline_payload(gateway: str) -> bytes:
    """The registry topic's will: this gateway went away without saying goodbye."""
    return cast(
        bytes,
        msgpack.packb({"v": VERSION, "gateway": gateway, "state": "offline"}, use_bin_type=True),
    )
