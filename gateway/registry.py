"""The sensing resources this gateway has heard of: agents (state, last seen, backlog) and sensors.

Agents come from their retained Status (and are seen again by every summary and alert);
sensors from summaries (kind, site, last window) and alerts. A summary costs O(1) here: the
registry keeps each agent's last summary per chunk of sensors and expands it to per-sensor
rows only when a snapshot is taken (every few seconds), not per row on the hot path (sensor
ownership is re-read only when a chunk's sensor list changes, or while its agent contests a
sensor).

It is also what the gateway trusts about who sends what: statuses and summaries arrive on
topics the broker's ACL reserves for their agent, so they name agents and the sensors each one
lists reliably; an alert's topic carries no agent, so `check_alert` holds its claimed `agent`
against them (see `AlertVerdict`). Ownership never moves on one message (docs/threat-model.md):

- an owner pinned in `gateway.owners` never moves;
- the first agent to list a sensor no one owns becomes its owner;
- another agent listing it is a *conflict* (an `OwnershipEvent` for ops, naming both agents):
  the sensor moves to it only once the claimant has listed it for `owner_move_s` while the
  owner, still sending summaries, no longer lists it (a re-commissioning); an owner that stops
  listing it because it is offline keeps it, and a forger cannot make the owner stop;
- clearing an agent's retained status (decommissioning it) frees its sensors at once.

The agents heard and the owners are kept in the gateway's state file (`GatewayState`), so a
restart knows them all.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

import msgpack

from gateway.config import GatewaySection, UnknownAgents
from gateway.state import AgentRow, GatewayState, OwnerRow
from lifeline.backoff import LogThrottle, held_note
from lifeline.contract import Alert, Status, Summary

log = logging.getLogger(__name__)

VERSION: Final = 1
#: A conflict of one (sensor, claimant) is raised again at most this often while it lasts.
CONFLICT_REPEAT_MS: Final = 600_000
#: Most (sensor, claimant) pairs whose last conflict event is remembered.
MAX_CONFLICTS: Final = 100_000


class AlertVerdict(enum.Enum):
    """What the registry says about an alert's claimed `agent`."""

    #: The claimed agent owns the sensor, or is known and the sensor has no known owner.
    ACCEPT = "accept"
    #: The sensor belongs to another agent: the claim is false.
    WRONG_OWNER = "wrong_owner"
    #: The agent is not on the configured allow-list: never accepted.
    NOT_ALLOWED = "not_allowed"
    #: No status or summary of the agent seen yet: wait for one (it may be on its way).
    UNKNOWN_AGENT = "unknown_agent"
    #: Its time lies beyond the gateway's clock plus `clock_skew_s`: not believed.
    FUTURE_TIMESTAMP = "future_timestamp"


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
    #: When (gateway clock) its last summary came: an owner that sends summaries is alive.
    last_summary_ms: int = 0


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
class Ownership:
    """Who owns a sensor, since when (gateway clock) and by the summary of which window end."""

    agent: str
    since_ms: int
    since_t1: int
    pinned: bool = False


@dataclass(slots=True)
class Claim:
    """Another agent lists a sensor someone else owns; `first_ms` restarts while the owner lists it.

    `owner_without_ms`: when the owner was first seen alive (a summary) without listing the
    sensor since the claim began; the move is confirmed `owner_move_s` after it.
    """

    agent: str
    first_ms: int
    summaries: int = 0
    owner_without_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OwnershipEvent:
    """For ops: two agents claim one sensor (`conflict`), or a sensor changed owner (`moved`)."""

    event: str
    sensor: str
    owner: str
    claimant: str
    district: str
    source: str
    detail: str


@dataclass(slots=True)
class _Chunk:
    summary: Summary
    received_ms: int
    sensors: frozenset[str]


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
        owners: Mapping[str, str] | None = None,
        owner_move_ms: int = 600_000,
        state: GatewayState | None = None,
    ) -> None:
        self.gateway = gateway
        self.stale_after_ms = stale_after_ms
        #: Empty: any agent with a status or summary is known; else only these, known at once.
        self.allowed_agents = frozenset(allowed_agents)
        #: What becomes of an alert whose agent stays unknown for `unknown_hold_s` (see docs).
        self.unknown_agents: UnknownAgents = unknown_agents
        self.unknown_hold_s = unknown_hold_s
        self.owner_move_ms = owner_move_ms
        self.agents: dict[str, AgentRecord] = {}
        self._chunks: dict[tuple[str, str, int], _Chunk] = {}
        #: (agent, sensor) -> key of that agent's chunk that listed the sensor last.
        self._chunk_of: dict[tuple[str, str], tuple[str, str, int]] = {}
        self._alert_sensors: dict[str, SensorRecord] = {}
        self._owners: dict[str, Ownership] = {}
        self._claims: dict[str, Claim] = {}
        #: Agents contesting a sensor: their summaries are re-read until they stop.
        self._claimants: set[str] = set()
        #: Agents heard on their own status or summary topic (trusted; alerts never add to it).
        self._heard: set[str] = set()
        self._conflict_last: dict[tuple[str, str], int] = {}
        #: Ownership events for ops not yet taken by the pipeline (`take_events`).
        self._events: list[OwnershipEvent] = []
        self._moves = LogThrottle(10.0)
        self._state = state
        if state is not None:
            self._load(state)
        for sensor, agent in (owners or {}).items():
            self._owners[sensor] = Ownership(agent, 0, 0, pinned=True)

    def _load(self, state: GatewayState) -> None:
        """Take up the agents and owners of the state file (a restart knows what it knew)."""
        for row in state.agents():
            self._heard.add(row.agent)
            self.agents[row.agent] = AgentRecord(
                row.agent, row.state, row.status_ts, row.last_seen_ms, row.district, row.township
            )
        for own in state.owners():
            self._owners[own.sensor] = Ownership(own.agent, own.since_ms, own.since_t1)

    def _save_agent(self, record: AgentRecord) -> None:
        if self._state is not None:
            self._state.save_agent(
                AgentRow(record.agent, record.district, record.township, record.state,
                         record.status_ts, record.last_seen_ms)
            )

    def _save_owner(self, sensor: str, own: Ownership) -> None:
        if self._state is not None and not own.pinned:
            self._state.save_owner(OwnerRow(sensor, own.agent, own.since_ms, own.since_t1))

    # ------------------------------------------------------------------ who may send what

    def owner(self, sensor: str) -> str | None:
        """The agent that owns `sensor`, if any."""
        owned = self._owners.get(sensor)
        return owned.agent if owned is not None else None

    @property
    def holds_unknown(self) -> bool:
        """Whether alerts of unknown agents wait for them (only worth it if they may be refused)."""
        return self.unknown_agents == "dead_letter" and self.unknown_hold_s > 0

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
            return AlertVerdict.ACCEPT if owned.agent == alert.agent else AlertVerdict.WRONG_OWNER
        return AlertVerdict.ACCEPT if self.known(alert.agent) else AlertVerdict.UNKNOWN_AGENT

    def alert_conflict(self, alert: Alert, now_ms: int) -> None:
        """An alert named another agent than the sensor's owner: raise a conflict for ops."""
        owner = self.owner(alert.sensor)
        if owner is not None:
            self._conflict(
                alert.sensor, owner, alert.agent, alert.district, "alert", now_ms,
                f"alert {alert.id} (level {alert.level}) names {alert.agent}",
            )

    @property
    def has_events(self) -> bool:
        """Ownership events wait to be taken."""
        return bool(self._events)

    def take_events(self) -> list[OwnershipEvent]:
        """The ownership events raised since the last call."""
        events, self._events = self._events, []
        return events

    def _conflict(
        self, sensor: str, owner: str, claimant: str, district: str, source: str, now_ms: int,
        detail: str,
    ) -> None:
        """Raise a conflict event, at most once per CONFLICT_REPEAT_MS per (sensor, claimant)."""
        key = (sensor, claimant)
        last = self._conflict_last.get(key)
        if last is not None and now_ms - last < CONFLICT_REPEAT_MS:
            return
        if len(self._conflict_last) >= MAX_CONFLICTS:
            self._conflict_last.clear()
        self._conflict_last[key] = now_ms
        self._events.append(
            OwnershipEvent("conflict", sensor, owner, claimant, district, source, detail)
        )
        log.warning(
            "ownership conflict on sensor %s: owner %s, claimed by %s (%s: %s)",
            sensor, owner, claimant, source, detail,
        )

    def contested_rows(self, summary: Summary) -> list[int]:
        """Rows of `summary` for sensors another agent owns (only while its agent contests one):
        not stored in the owner's series, though the rest of the summary is."""
        if summary.agent not in self._claimants:
            return []
        owners, agent, t1 = self._owners, summary.agent, summary.t1
        return [
            i
            for i, sensor in enumerate(summary.sensor)
            if (own := owners.get(sensor)) is not None and own.agent != agent and t1 > own.since_t1
        ]

    def _listed_ms(self, agent: str, sensor: str) -> int:
        """When (gateway clock) `agent` last sent a summary listing `sensor`; 0 if it does not."""
        key = self._chunk_of.get((agent, sensor))
        chunk = self._chunks.get(key) if key is not None else None
        return chunk.received_ms if chunk is not None and sensor in chunk.sensors else 0

    def _claim(self, summary: Summary, key: tuple[str, str, int], received_ms: int) -> None:
        """Take the sensors of `summary` for its agent where no one owns them; contest the rest."""
        agent, t1, owners = summary.agent, summary.t1, self._owners
        allowed = not self.allowed_agents or agent in self.allowed_agents
        contested = False
        for sensor in summary.sensor:
            self._chunk_of[(agent, sensor)] = key
            owned = owners.get(sensor)
            if owned is None:
                if allowed:
                    owners[sensor] = own = Ownership(agent, received_ms, t1)
                    self._save_owner(sensor, own)
                continue
            if owned.agent == agent:
                continue
            contested = True  # re-read this agent's summaries while it lists someone else's sensor
            if t1 > owned.since_t1:  # else an old window re-sent from before the owner took it
                self._contest(sensor, owned, summary, received_ms, allowed)
        if contested:
            self._claimants.add(agent)
        else:
            self._claimants.discard(agent)

    def _contest(
        self, sensor: str, owned: Ownership, summary: Summary, now_ms: int, allowed: bool
    ) -> None:
        """Another agent lists an owned sensor: a conflict; a move once confirmed over time."""
        agent = summary.agent
        claim = self._claims.get(sensor)
        if claim is None or claim.agent != agent:
            claim = self._claims[sensor] = Claim(agent, now_ms)
        claim.summaries += 1
        if self._listed_ms(owned.agent, sensor) >= claim.first_ms:  # the owner still lists it
            claim.first_ms, claim.summaries, claim.owner_without_ms = now_ms, 1, None
        why = (
            "pinned in gateway.owners" if owned.pinned
            else "claimant not in gateway.agents" if not allowed
            else f"listed in its summary of window end {summary.t1}"
        )
        self._conflict(sensor, owned.agent, agent, summary.district, "summary", now_ms, why)
        if owned.pinned or not allowed:
            return
        owner = self.agents.get(owned.agent)
        if claim.owner_without_ms is None:
            if owner is None or owner.last_summary_ms <= claim.first_ms:
                return  # the owner is silent (offline?): no evidence it gave the sensor up
            claim.owner_without_ms = owner.last_summary_ms
        if claim.summaries >= 2 and now_ms - claim.owner_without_ms >= self.owner_move_ms:
            self._move(sensor, owned.agent, summary, now_ms, claim)

    def _move(self, sensor: str, old: str, summary: Summary, now_ms: int, claim: Claim) -> None:
        agent = summary.agent
        self._owners[sensor] = own = Ownership(agent, now_ms, summary.t1)
        self._save_owner(sensor, own)
        del self._claims[sensor]
        self._conflict_last.pop((sensor, agent), None)
        detail = (
            f"listed by {agent} for {(now_ms - claim.first_ms) / 1000:.0f} s, and {old} sent "
            f"summaries without it for {(now_ms - (claim.owner_without_ms or now_ms)) / 1000:.0f} s"
        )
        self._events.append(
            OwnershipEvent("moved", sensor, old, agent, summary.district, "summary", detail)
        )
        held = self._moves.allow("moved")
        if held is not None:
            log.warning(
                "sensor %s moved from agent %s to agent %s (%s); alerts naming %s for it are "
                "not trusted from now on%s",
                sensor, old, agent, detail, old, held_note(held),
            )

    @classmethod
    def for_gateway(cls, section: GatewaySection, state: GatewayState | None = None) -> Registry:
        """The registry with the policy of a `[gateway]` section (as the gateway runs it)."""
        return cls(
            section.id,
            stale_after_ms=int(section.agent_stale_s * 1000),
            allowed_agents=section.agents,
            unknown_agents=section.unknown_agents,
            unknown_hold_s=section.unknown_agent_hold_s,
            owners=section.owners,
            owner_move_ms=int(section.owner_move_s * 1000),
            state=state,
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
        self._save_agent(record)
        return changed

    def forget(self, agent: str) -> None:
        """Remove an agent whose retained status was cleared, with its sensors (decommissioned)."""
        self.agents.pop(agent, None)
        self._heard.discard(agent)
        self._claimants.discard(agent)
        if self._state is not None:
            self._state.forget_agent(agent)
        for sensor in [s for s, own in self._owners.items() if own.agent == agent and not own.pinned]:
            del self._owners[sensor]
            if self._state is not None:
                self._state.drop_owner(sensor)
        for sensor in [s for s, claim in self._claims.items() if claim.agent == agent]:
            del self._claims[sensor]
        for key in [k for k in self._chunks if k[0] == agent]:
            del self._chunks[key]
        for pair in [p for p in self._chunk_of if p[0] == agent]:
            del self._chunk_of[pair]
        for sensor in [s for s, r in self._alert_sensors.items() if r.agent == agent]:
            del self._alert_sensors[sensor]

    def on_summary(self, summary: Summary, received_ms: int) -> None:
        """Record a summary (O(1) unless its sensor list changed or its agent contests a sensor)."""
        agent = summary.agent
        record = self._agent(agent)
        if agent not in self._heard:
            self._heard.add(agent)
            record.district, record.township = summary.district, summary.township
            self._save_agent(record)
        record.last_seen_ms = max(record.last_seen_ms, received_ms)
        record.last_summary_ms = received_ms
        record.district, record.township = summary.district, summary.township
        if len(summary):
            key = (agent, summary.sensor[0], len(summary))
            last = self._chunks.get(key)
            changed = last is None or last.summary.sensor != summary.sensor
            if last is None or last.summary.t1 <= summary.t1:
                sensors = frozenset(summary.sensor) if changed or last is None else last.sensors
                self._chunks[key] = _Chunk(summary, received_ms, sensors)
            if changed or agent in self._claimants:
                self._claim(summary, key, received_ms)  # else the same sensors again: no change

    def on_alert(self, alert: Alert, received_ms: int) -> None:
        """Record an alert: its agent and sensor are alive; keep the sensor's latest level."""
        record = self.agents.get(alert.agent) or self._agent(alert.agent)
        record.last_seen_ms = max(record.last_seen_ms, received_ms)
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
        columns["owner"] = [self.owner(s) or "" for s in columns["sensor"]]
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
            "claims": [
                {"sensor": sensor, "owner": self.owner(sensor), "claimant": claim.agent,
                 "since": claim.first_ms, "summaries": claim.summaries}
                for sensor, claim in sorted(self._claims.items())
            ],
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
