"""Compiling the agent's kernels ahead of time, with progress, and telling a cold cache from a warm one.

`precompile` compiles every kernel signature the agent calls into numba's on-disk cache (see
`lifeline.jitcache` for where), in named stages so a caller can show progress; `warm_agent`
loads one agent's kernels the same way at start-up; `compiled_signatures` counts the kernels
this process had to compile rather than load, which is how the agent knows it started cold.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba.core.dispatcher import Dispatcher

from lifeline.progress import OnStage


@dataclass(frozen=True)
class WarmReport:
    """What loading the kernels cost: seconds, and signatures compiled (0: all from the cache)."""

    seconds: float
    compiled: int

    @property
    def cold(self) -> bool:
        return self.compiled > 0


def compiled_signatures() -> int:
    """Kernel signatures of the agent that this process compiled instead of loading from the cache."""
    misses = 0
    for name, module in list(sys.modules.items()):
        if name.split(".", 1)[0] != "edge_agent" or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher) and value.__module__ == name:
                misses += sum(value.stats.cache_misses.values())
    return misses


def run_stages(stages: Sequence[tuple[str, Callable[[], Any]]], on_stage: OnStage | None) -> WarmReport:
    """Run each (label, action) in turn, announcing it; the report covers all of them."""
    started, before = time.monotonic(), compiled_signatures()
    for i, (label, action) in enumerate(stages, 1):
        if on_stage is not None:
            on_stage(i, len(stages), label)
        action()
    return WarmReport(time.monotonic() - started, compiled_signatures() - before)


def precompile(on_stage: OnStage | None = None) -> WarmReport:
    """Compile (or load from the on-disk cache) every kernel the agent calls, for every built-in kind."""
    from edge_agent.config import SensorSettings
    from edge_agent.frames import crc16_modbus
    from edge_agent.kernels import RuleChain, WindowAccumulator, default_rules
    from edge_agent.kernels.profiles import PROFILES
    from edge_agent.pipeline import AgentIdentity, Pipeline
    from edge_agent.registry import SensorRegistry

    rules = [default_rules(kind) for kind in PROFILES]
    n = 64
    values = np.linspace(0.0, 1.0, n * len(rules))
    times = np.arange(n * len(rules), dtype=np.int64) * 10
    block_sensor = np.arange(len(rules), dtype=np.int32)
    block_start = np.arange(len(rules) + 1, dtype=np.int64) * n

    def windows() -> None:
        acc = WindowAccumulator(len(rules), kinds=[r.kind for r in rules])
        acc.add(values, block_sensor, block_start, times)
        acc.take()

    def pipeline() -> None:
        sensors = [SensorSettings(id=f"precompile-{i}", kind=r.kind, site="precompile")
                   for i, r in enumerate(rules)]
        Pipeline(SensorRegistry(sensors), rules, agent=AgentIdentity("precompile", "-", "-")).warm_up()

    return run_stages([
        ("detection rules", lambda: RuleChain(rules).process(values, times, block_sensor, block_start)),
        ("window features", windows),
        ("serial frame CRC", lambda: crc16_modbus(b"123456789")),
        ("RawBlock decoder and batching", pipeline),
    ], on_stage)


def warm_agent(pipeline: Any, *, serial: bool, on_stage: OnStage | None = None) -> WarmReport:
    """Load one agent's kernels before its inputs start (compiling them if the cache is cold)."""
    empty, no_times = np.empty(0), np.empty(0, dtype=np.int64)
    sensors, starts = np.empty(0, dtype=np.int32), np.zeros(1, dtype=np.int64)
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("detection rules", lambda: pipeline.chain.process(empty, no_times, sensors, starts)),
        ("window features", lambda: pipeline.windows.add(empty, sensors, starts, no_times)),
    ]
    if serial:
        from edge_agent.frames import crc16_modbus

        stages.append(("serial frame CRC", lambda: crc16_modbus(b"123456789")))
    stages.append(("RawBlock decoder and batching", pipeline.warm_up))
    return run_stages(stages, on_stage)


__all__ = ["WarmReport", "compiled_signatures", "precompile", "run_stages", "warm_agent"]
