"""Scenarios: TOML files describing a simulated district, loaded into validated, typed objects.

A scenario names a district, its townships (one agent each), their sites and sensors, the
events that happen at a site (a burst shows in every pressure and flow sensor of its site) and
the faults of single sensors, plus the run's seed, start and duration. A site with
`copies = N` stands for N alike sites (ids get `-01`..`-NN`), each copy's events and faults
shifted by `stagger_s` more than the previous one, so large districts stay short to write.
Every problem is one `ConfigError` naming the file and the key, as for the agent's config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from lifeline.config import ConfigSection, Ident, load_toml_model
from lifeline.contract.kinds import KIND_UNITS
from lifeline.contract.topics import DEFAULT_PREFIX
from lifeline.errors import ConfigError
from simulators.signals import (
    FACTORIES,
    EventSpec,
    FaultSpec,
    SignalModel,
    SimSensor,
    build_model,
    parse_event,
    parse_fault,
)

Transport = Literal["mqtt", "serial", "modbus"]

#: Folder of the built-in scenarios, one TOML file each.
BUILTIN_DIR: Final = Path(__file__).with_name("scenarios")
#: Longest id the contract allows.
MAX_ID: Final = 64


def _check_event(table: dict[str, Any]) -> dict[str, Any]:
    parse_event({k: v for k, v in table.items() if k != "sensors"})
    return table


def _check_fault(table: dict[str, Any]) -> dict[str, Any]:
    parse_fault(table)
    return table


EventTable = Annotated[dict[str, Any], AfterValidator(_check_event)]
FaultTable = Annotated[dict[str, Any], AfterValidator(_check_fault)]


class ScenarioSection(ConfigSection):
    """`[scenario]`: name, district, seed, time and defaults of the whole run."""

    name: Ident
    description: str = ""
    district: Ident
    seed: int = Field(default=1, ge=0, le=2**63 - 1)
    #: Simulated seconds from start to end.
    duration_s: float = Field(gt=0, le=366 * 86400.0)
    #: "now", or an ISO 8601 time with its UTC offset, e.g. "2024-07-15T02:00:00+08:00".
    start: str = "now"
    #: Transport of every sensor that does not name its own.
    transport: Transport = "mqtt"
    #: Simulated seconds of samples sent per RawBlock (and per pacing step).
    tick_s: float = Field(default=1.0, gt=0, le=3600)

    @field_validator("start")
    @classmethod
    def _check_start(cls, start: str) -> str:
        parse_start(start)
        return start


class MqttSection(ConfigSection):
    """`[mqtt]`: the broker the simulator publishes to and the agents use (overridable on the CLI)."""

    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = DEFAULT_PREFIX


class SensorSpecModel(ConfigSection):
    """`[[township.site.sensor]]`: one sensor, its sampling rate, transport and faults."""

    id: Ident
    kind: str
    rate_hz: float = Field(default=1.0, gt=0, le=2000)
    transport: Transport | None = None
    faults: list[FaultTable] = Field(default_factory=list)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, kind: str) -> str:
        if kind not in FACTORIES:
            raise ValueError(f"no simulator for kind {kind!r}; known: {', '.join(sorted(FACTORIES))}")
        return kind


class SiteSpecModel(ConfigSection):
    """`[[township.site]]`: sensors at one place and the events that happen there."""

    id: Ident
    copies: int = Field(default=1, ge=1, le=10_000)
    stagger_s: float = Field(default=0.0, ge=0)
    sensor: list[SensorSpecModel] = Field(min_length=1)
    event: list[EventTable] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_events(self) -> SiteSpecModel:
        ids = [s.id for s in self.sensor]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"sensor ids {dupes} appear more than once in site {self.id!r}")
        for n, table in enumerate(self.event):
            _event_targets(self, n, table)
        return self


class TownshipSpecModel(ConfigSection):
    """`[[township]]`: one township and its agent."""

    id: Ident
    agent: Ident | None = None
    site: list[SiteSpecModel] = Field(min_length=1)


class ScenarioFile(ConfigSection):
    """The whole scenario file."""

    scenario: ScenarioSection
    mqtt: MqttSection = MqttSection()
    township: list[TownshipSpecModel] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_ids(self) -> ScenarioFile:
        where: dict[str, str] = {}
        for t, township in enumerate(self.township):
            for s, site in enumerate(township.site):
                for copy in range(1, site.copies + 1):
                    for sensor in site.sensor:
                        sid = copy_id(sensor.id, copy, site.copies)
                        key = f"township[{t}].site[{s}].sensor"
                        if len(sid) > MAX_ID:
                            raise ValueError(f"{key}: id {sid!r} is longer than {MAX_ID} characters")
                        if sid in where:
                            raise ValueError(f"{key}: sensor id {sid!r} is also used in {where[sid]}")
                        where[sid] = key
                _check_timing(site, t, s, self.scenario.duration_s)
        agents = [t.agent or default_agent(self.scenario.district, t.id) for t in self.township]
        dupes = sorted({a for a in agents if agents.count(a) > 1})
        if dupes:
            raise ValueError(f"agent ids {dupes} are used by more than one township")
        return self


def _event_targets(site: SiteSpecModel, n: int, table: Mapping[str, Any]) -> list[str]:
    """Ids of the site's sensors an event shows in; ValueError names `event[n]` when none."""
    spec = parse_event({k: v for k, v in table.items() if k != "sensors"})
    kinds = {s.id: s.kind for s in site.sensor}
    wanted = table.get("sensors")
    if wanted is None:
        targets = [sid for sid, kind in kinds.items() if kind in spec.kinds]
        if not targets:
            raise ValueError(
                f"event[{n}] {spec.name!r} shows in none of site {site.id!r}'s sensors "
                f"(it needs one of the kinds {', '.join(sorted(spec.kinds))})"
            )
        return targets
    if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted) or not wanted:
        raise ValueError(f"event[{n}].sensors must be a non-empty list of sensor ids of the site")
    for sid in wanted:
        if sid not in kinds:
            raise ValueError(f"event[{n}].sensors: {sid!r} is not a sensor of site {site.id!r}")
        if kinds[sid] not in spec.kinds:
            raise ValueError(f"event[{n}].sensors: {spec.name!r} does not show in {sid!r} ({kinds[sid]})")
    return list(wanted)


def _check_timing(site: SiteSpecModel, t: int, s: int, duration_s: float) -> None:
    """Every copy's events and faults must start inside the run."""
    last_shift = (site.copies - 1) * site.stagger_s
    starts = [(f"event[{n}]", float(e["at_s"])) for n, e in enumerate(site.event)]
    for sensor in site.sensor:
        starts += [(f"sensor {sensor.id!r} fault[{n}]", float(f["at_s"]))
                   for n, f in enumerate(sensor.faults)]
    for what, at_s in starts:
        if at_s + last_shift >= duration_s:
            copy = f" in copy {site.copies} (stagger {site.stagger_s:g} s)" if last_shift else ""
            raise ValueError(
                f"township[{t}].site[{s}] {what}: starts at {at_s + last_shift:g} s{copy}, "
                f"not before the end of the run at {duration_s:g} s"
            )


# --------------------------------------------------------------------------- resolved scenario


@dataclass(frozen=True)
class ScenarioSensor:
    """One simulated sensor of a resolved scenario: where it is, how it is sent, what happens to it."""

    sim: SimSensor
    township: str
    transport: Transport
    events: tuple[EventSpec, ...]
    faults: tuple[FaultSpec, ...]

    @property
    def id(self) -> str:
        """The sensor's contract id."""
        return self.sim.id


@dataclass(frozen=True)
class Township:
    """One township of a scenario: its agent id and its sensors."""

    id: str
    agent: str
    sensors: tuple[ScenarioSensor, ...]


@dataclass(frozen=True)
class Scenario:
    """A resolved scenario: every copy expanded, every event and fault parsed."""

    name: str
    description: str
    district: str
    seed: int
    duration_s: float
    start: str
    tick_s: float
    mqtt_url: str
    prefix: str
    townships: tuple[Township, ...]
    source: str = "<memory>"

    @property
    def sensors(self) -> tuple[ScenarioSensor, ...]:
        """Every sensor of every township, in township order."""
        return tuple(s for t in self.townships for s in t.sensors)

    def start_ms(self, now_ms: int) -> int:
        """Time of sample 0: the scenario's start, or `now_ms` for "now"."""
        start = parse_start(self.start)
        return now_ms if start is None else int(start.timestamp() * 1000)

    def build_models(self, t0_ms: int) -> list[SignalModel]:
        """The signal model of every sensor (in `sensors` order), sample 0 at `t0_ms`."""
        return [build_model(s.sim, t0_ms, self.seed, s.events, s.faults) for s in self.sensors]

    def with_changes(self, **changes: Any) -> Scenario:
        """A copy with some fields replaced (duration, start, broker...)."""
        return replace(self, **changes)

    def with_transport(self, transport: Transport) -> Scenario:
        """A copy with every sensor sent over `transport`."""
        townships = tuple(
            replace(t, sensors=tuple(replace(s, transport=transport) for s in t.sensors))
            for t in self.townships
        )
        return replace(self, townships=townships)


def parse_start(start: str) -> datetime | None:
    """None for "now", else the aware datetime; ValueError for a time without a UTC offset."""
    if start == "now":
        return None
    try:
        when = datetime.fromisoformat(start)
    except ValueError as exc:
        raise ValueError(f"must be \"now\" or an ISO 8601 time, got {start!r}") from exc
    if when.tzinfo is None:
        raise ValueError(f"needs a UTC offset (e.g. +08:00), got {start!r}")
    return when.astimezone(timezone.utc)


def default_agent(district: str, township: str) -> str:
    """Agent id of a township that does not name one."""
    return f"{district}-{township}"[:MAX_ID]


def copy_id(base: str, copy: int, copies: int) -> str:
    """Id of copy `copy` (1-based) of a site or sensor; unchanged when there is one copy."""
    if copies == 1:
        return base
    width = max(2, len(str(copies)))
    return f"{base}-{copy:0{width}d}"


def _shifted(table: Mapping[str, Any], shift_s: float) -> dict[str, Any]:
    out = {k: v for k, v in table.items() if k != "sensors"}
    out["at_s"] = float(table["at_s"]) + shift_s
    return out


def resolve(model: ScenarioFile, source: str = "<memory>") -> Scenario:
    """Expand copies and parse every event and fault of a validated scenario file."""
    sc = model.scenario
    townships = []
    for township in model.township:
        sensors: list[ScenarioSensor] = []
        for site in township.site:
            targets = {n: set(_event_targets(site, n, e)) for n, e in enumerate(site.event)}
            for copy in range(1, site.copies + 1):
                shift = (copy - 1) * site.stagger_s
                site_id = copy_id(site.id, copy, site.copies)
                for spec in site.sensor:
                    events = tuple(
                        parse_event(_shifted(e, shift))
                        for n, e in enumerate(site.event) if spec.id in targets[n]
                    )
                    faults = tuple(parse_fault(_shifted(f, shift)) for f in spec.faults)
                    sim = SimSensor(copy_id(spec.id, copy, site.copies), spec.kind, site_id, spec.rate_hz)
                    sensors.append(ScenarioSensor(sim, township.id, spec.transport or sc.transport,
                                                  events, faults))
        agent = township.agent or default_agent(sc.district, township.id)
        townships.append(Township(township.id, agent, tuple(sensors)))
    return Scenario(
        name=sc.name, description=sc.description, district=sc.district, seed=sc.seed,
        duration_s=sc.duration_s, start=sc.start, tick_s=sc.tick_s, mqtt_url=model.mqtt.url,
        prefix=model.mqtt.prefix, townships=tuple(townships), source=source,
    )


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and resolve a scenario file; ConfigError names the file, key and problem."""
    model = load_toml_model(path, ScenarioFile)
    try:
        return resolve(model, str(path))
    except ValueError as exc:  # checked by the model already; kept as a clear error all the same
        raise ConfigError(f"{path}: {exc}") from exc


def builtin_scenarios() -> dict[str, Path]:
    """The built-in scenarios by name (file stem)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def find_scenario(name_or_path: str) -> Path:
    """A built-in scenario's file, or the given path; ConfigError when neither exists."""
    builtin = builtin_scenarios()
    if name_or_path in builtin:
        return builtin[name_or_path]
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise ConfigError(
        f"{name_or_path}: no such scenario file, and not a built-in scenario "
        f"({', '.join(builtin) or 'none'})"
    )


def scenario_summary(scenario: Scenario) -> dict[str, Any]:
    """Counts an operator wants before a run: sensors by domain, events, faults, samples."""
    sensors = scenario.sensors
    domains: dict[str, int] = {}
    for s in sensors:
        domains[s.sim.domain] = domains.get(s.sim.domain, 0) + 1
    samples = sum(int(s.sim.rate_hz * scenario.duration_s) for s in sensors)
    return {
        "townships": len(scenario.townships), "sensors": len(sensors), "domains": domains,
        "events": sum(len(s.events) for s in sensors), "faults": sum(len(s.faults) for s in sensors),
        "samples": samples, "duration_s": scenario.duration_s,
    }


def synthetic_scenario(
    *, sensors: int, rate_hz: float, duration_s: float, kinds: Sequence[str] | None = None,
    agents: int = 1, seed: int = 1, district: str = "loadtest", tick_s: float = 1.0,
    mqtt_url: str = "mqtt://127.0.0.1:1883", prefix: str = DEFAULT_PREFIX,
) -> Scenario:
    """A load-test district: `sensors` healthy sensors cycling through `kinds`, split over `agents`."""
    if sensors < 1 or agents < 1:
        raise ValueError("sensors and agents must be >= 1")
    kinds = list(kinds or sorted(KIND_UNITS))  # the contract's built-in kinds
    per_agent = -(-sensors // agents)
    townships = []
    for a in range(agents):
        ids = range(a * per_agent, min(sensors, (a + 1) * per_agent))
        members = tuple(
            ScenarioSensor(SimSensor(f"L{i:06d}", kinds[i % len(kinds)], f"site-{i // 10:05d}", rate_hz),
                           f"t{a:03d}", "mqtt", (), ())
            for i in ids
        )
        townships.append(Township(f"t{a:03d}", f"{district}-t{a:03d}", members))
    return Scenario(
        name="load", description=f"{sensors} healthy sensors at {rate_hz:g} Hz", district=district,
        seed=seed, duration_s=duration_s, start="now", tick_s=tick_s, mqtt_url=mqtt_url,
        prefix=prefix, townships=tuple(townships), source="<load>",
    )
