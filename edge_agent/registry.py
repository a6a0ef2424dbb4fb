"""The agent's sensors as one indexed table: id <-> index, hierarchy, and how each is read.

Every array in the pipeline is indexed by the position of a sensor in the config, so inputs map
their own addresses (topic, serial node/channel, Modbus unit/register) to that index once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.config import AgentConfig, Datatype, RegisterType, SensorSettings, WordOrder


@dataclass(frozen=True, slots=True)
class SensorInfo:
    """One configured sensor and its place in the pipeline's arrays."""

    index: int
    id: str
    kind: str
    site: str
    source: str


@dataclass(frozen=True, slots=True)
class SerialChannel:
    """A (node, channel) on a serial port and the sensor it feeds."""

    node: int
    channel: int
    sensor: int


@dataclass(frozen=True, slots=True)
class SerialPortPlan:
    """One serial port carrying section-3 frames from one or more nodes."""

    port: str
    baud: int
    channels: tuple[SerialChannel, ...]


@dataclass(frozen=True, slots=True)
class ModbusPoint:
    """One polled Modbus value: where it lives on the bus and how to turn registers into a number."""

    sensor: int
    sensor_id: str
    unit: int
    register: int
    datatype: Datatype
    register_type: RegisterType
    word_order: WordOrder
    scale: float
    period_s: float


@dataclass(frozen=True, slots=True)
class ModbusBusPlan:
    """One RS-485 bus (serial port) with the points polled on it, one request at a time."""

    port: str
    baud: int
    points: tuple[ModbusPoint, ...]


class SensorRegistry:
    """The configured sensors in config order; lookups from id and per-source plans for inputs."""

    def __init__(self, sensors: Sequence[SensorSettings]) -> None:
        self.settings: tuple[SensorSettings, ...] = tuple(sensors)
        self.sensors: tuple[SensorInfo, ...] = tuple(
            SensorInfo(i, s.id, s.kind, s.site, s.source) for i, s in enumerate(sensors)
        )
        self.index: dict[str, int] = {s.id: s.index for s in self.sensors}

    @classmethod
    def from_config(cls, config: AgentConfig) -> SensorRegistry:
        """The registry of an agent configuration."""
        return cls(config.sensor)

    def __len__(self) -> int:
        return len(self.sensors)

    @property
    def ids(self) -> list[str]:
        """Sensor ids in index order."""
        return [s.id for s in self.sensors]

    def count_by_source(self) -> dict[str, int]:
        """How many sensors each source feeds, for the start-up log line and status."""
        counts: dict[str, int] = {}
        for s in self.sensors:
            counts[s.source] = counts.get(s.source, 0) + 1
        return counts

    def mqtt_sensors(self) -> list[SensorInfo]:
        """Sensors fed by RawBlocks on `P/raw/{id}`."""
        return [s for s in self.sensors if s.source == "mqtt"]

    def serial_ports(self) -> list[SerialPortPlan]:
        """Serial ports in order of first appearance, each with its (node, channel) map."""
        ports: dict[str, list[SerialChannel]] = {}
        bauds: dict[str, int] = {}
        for info, s in zip(self.sensors, self.settings):
            if s.source != "serial" or s.port is None or s.node is None:
                continue
            ports.setdefault(s.port, []).append(SerialChannel(s.node, s.channel, info.index))
            bauds.setdefault(s.port, s.baud)
        return [SerialPortPlan(p, bauds[p], tuple(chs)) for p, chs in ports.items()]

    def modbus_buses(self) -> list[ModbusBusPlan]:
        """Modbus buses in order of first appearance, each with its polled points."""
        buses: dict[str, list[ModbusPoint]] = {}
        bauds: dict[str, int] = {}
        for info, s in zip(self.sensors, self.settings):
            if s.source != "modbus" or s.port is None or s.unit is None or s.register_address is None:
                continue
            buses.setdefault(s.port, []).append(ModbusPoint(
                sensor=info.index, sensor_id=s.id, unit=s.unit, register=s.register_address,
                datatype=s.datatype, register_type=s.register_type, word_order=s.word_order,
                scale=s.scale, period_s=s.period_s,
            ))
            bauds.setdefault(s.port, s.baud)
        return [ModbusBusPlan(p, bauds[p], tuple(points)) for p, points in buses.items()]
