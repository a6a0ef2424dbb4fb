"""Ground truth of a simulator run: what was injected where and when, written to JSON for scoring.

The truth names the run's time span (simulated Unix ms), whether it was paced in real time
(only then are receive-time stamps, serial samples and `gap` alerts, on the same clock as the
labels), each sensor with its rate, and every `LabelledEvent` of the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from lifeline.errors import ConfigError
from simulators.scenario import Scenario
from simulators.signals import OPEN_END_MS, LabelledEvent, SignalModel

FORMAT: Final = 1


@dataclass(frozen=True)
class TruthSensor:
    """A simulated sensor as the scorer needs it: id, kind, place, rate and transport."""

    id: str
    kind: str
    site: str
    township: str
    rate_hz: float
    transport: str

    @property
    def domain(self) -> str:
        """The `<domain>` part of the kind."""
        return self.kind.split(".", 1)[0]


@dataclass(frozen=True)
class GroundTruth:
    """Everything injected in one run, with the run's span in simulated time."""

    scenario: str
    district: str
    seed: int
    t0_ms: int
    t1_ms: int
    paced: bool
    speed: float | None
    sensors: tuple[TruthSensor, ...]
    events: tuple[LabelledEvent, ...]
    agents: dict[str, str] = field(default_factory=dict)  # township -> agent id

    @property
    def sensor_days(self) -> float:
        """Sensors times simulated days: the exposure false alarms are counted against."""
        return len(self.sensors) * (self.t1_ms - self.t0_ms) / 86_400_000.0

    def in_run(self) -> list[LabelledEvent]:
        """Labels that start before the run ends, their open ends cut at the run's end."""
        out = []
        for e in self.events:
            if e.start_ms >= self.t1_ms:
                continue
            end = min(e.end_ms, self.t1_ms) if e.end_ms >= OPEN_END_MS else e.end_ms
            out.append(e if end == e.end_ms else _with_end(e, end))
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map of the truth."""
        return {
            "format": FORMAT, "scenario": self.scenario, "district": self.district,
            "seed": self.seed, "t0_ms": self.t0_ms, "t1_ms": self.t1_ms, "paced": self.paced,
            "speed": self.speed, "agents": dict(self.agents),
            "sensors": [asdict(s) for s in self.sensors],
            "events": [{**asdict(e), "expected_rules": list(e.expected_rules)} for e in self.events],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GroundTruth:
        """The truth from `to_json`'s map; KeyError/TypeError/ValueError on a malformed one."""
        if obj.get("format") != FORMAT:
            raise ValueError(f"unknown truth format {obj.get('format')!r}; this reader reads {FORMAT}")
        sensors = tuple(TruthSensor(**s) for s in obj["sensors"])
        events = tuple(
            LabelledEvent(**{**e, "expected_rules": tuple(e["expected_rules"])}) for e in obj["events"]
        )
        return cls(
            scenario=str(obj["scenario"]), district=str(obj["district"]), seed=int(obj["seed"]),
            t0_ms=int(obj["t0_ms"]), t1_ms=int(obj["t1_ms"]), paced=bool(obj["paced"]),
            speed=None if obj["speed"] is None else float(obj["speed"]), sensors=sensors,
            events=events, agents={str(k): str(v) for k, v in obj.get("agents", {}).items()},
        )


def _with_end(event: LabelledEvent, end_ms: int) -> LabelledEvent:
    return LabelledEvent(**{**asdict(event), "end_ms": end_ms})


def ground_truth(
    scenario: Scenario, models: Sequence[SignalModel], *, t0_ms: int, duration_s: float,
    paced: bool, speed: float | None,
) -> GroundTruth:
    """The truth of a run of `scenario` whose models are `models` (in `scenario.sensors` order)."""
    sensors = tuple(
        TruthSensor(s.id, s.sim.kind, s.sim.site, s.township, s.sim.rate_hz, s.transport)
        for s in scenario.sensors
    )
    events = tuple(e for m in models for e in m.events)
    return GroundTruth(
        scenario=scenario.name, district=scenario.district, seed=scenario.seed, t0_ms=t0_ms,
        t1_ms=t0_ms + round(duration_s * 1000), paced=paced, speed=speed, sensors=sensors,
        events=events, agents={t.id: t.agent for t in scenario.townships},
    )


def write_truth(truth: GroundTruth, path: str | os.PathLike[str]) -> Path:
    """Write the truth as indented JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(truth.to_json(), indent=1) + "\n", encoding="utf-8")
    return p


def read_truth(path: str | os.PathLike[str]) -> GroundTruth:
    """Read a truth file; ConfigError names the file when it is missing or malformed."""
    p = Path(path)
    try:
        return GroundTruth.from_json(json.loads(p.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: file not found") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{p}: not a ground-truth file of the simulator: {exc}") from exc
