"""Where each serial and Modbus sensor of a scenario is wired, shared by the runner and the config writer.

Each township (one agent) gets at most one serial line and one Modbus line, at stable paths in
the run directory (`{township}-serial`, `{township}-modbus`, symlinks the simulator points at
its ptys), so agent configs can be written before the simulator starts. Serial sensors are
nodes 1, 2, ... (channel 0) on their township's line; Modbus sensors are units 1..247 answering
a float32 at register 0, polled at their sampling period.

RawBlocks: in a scenario of several townships each township's sensors publish under their own
raw prefix, `{prefix}/{township}` (topics `{prefix}/{township}/raw/{sensor}`), and each agent's
config gets that prefix as its `[raw_mqtt]`, as if every township had its own network server:
an agent then receives only its own sensors' blocks, not the whole district's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lifeline.errors import ConfigError
from simulators.scenario import Scenario

MAX_UNITS: Final = 247


@dataclass(frozen=True)
class SerialWire:
    """A serial sensor's line (stable path) and node/channel on it."""

    port: str
    node: int
    channel: int = 0


@dataclass(frozen=True)
class ModbusWire:
    """A Modbus sensor's line (stable path), unit id and polling period."""

    port: str
    unit: int
    period_s: float


def raw_prefix(scenario: Scenario, prefix: str, township: str) -> str:
    """The prefix a township's sensors publish their RawBlocks under."""
    return prefix if len(scenario.townships) == 1 else f"{prefix}/{township}"


def serial_link(run_dir: Path, township: str) -> Path:
    """Stable path of a township's serial line."""
    return run_dir / f"{township}-serial"


def modbus_link(run_dir: Path, township: str) -> Path:
    """Stable path of a township's Modbus line."""
    return run_dir / f"{township}-modbus"


def wiring(scenario: Scenario, run_dir: Path) -> dict[str, SerialWire | ModbusWire]:
    """The wire of every serial or Modbus sensor, by sensor id (MQTT sensors have none)."""
    out: dict[str, SerialWire | ModbusWire] = {}
    for township in scenario.townships:
        node = unit = 0
        for s in township.sensors:
            if s.transport == "serial":
                node += 1
                out[s.id] = SerialWire(str(serial_link(run_dir, township.id)), node)
            elif s.transport == "modbus":
                unit += 1
                if unit > MAX_UNITS:
                    raise ConfigError(f"{scenario.source}: township {township.id!r} has more than "
                                      f"{MAX_UNITS} Modbus sensors, the most one RTU line can address")
                out[s.id] = ModbusWire(str(modbus_link(run_dir, township.id)), unit, 1.0 / s.sim.rate_hz)
    return out
