"""Seeded, labelled signal generators of every built-in sensor kind, with injectable sensor faults.

`build_model` turns a sensor, a start time, a seed and scenario specs into a SignalModel;
`parse_event` / `parse_fault` turn scenario tables (`{ type = "burst", at_s = 600 }`) into specs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Final, cast

from simulators.signals import bridges, flood, pipes, tunnels
from simulators.signals.base import (
    KIND_RANGE,
    OPEN_END_MS,
    EventSpec,
    LabelledEvent,
    SignalModel,
    SimSensor,
)
from simulators.signals.bridges import Damage, Overload, Settlement, Structure
from simulators.signals.faults import (
    Drift,
    Dropout,
    FaultSpec,
    NoiseBurst,
    OutOfRange,
    Spikes,
    Stuck,
    with_faults,
)
from simulators.signals.flood import Rain
from simulators.signals.pipes import Burst, GasLeak, Hammer, Leak
from simulators.signals.tunnels import Convergence, Fire, Ingress

ModelFactory = Callable[[SimSensor, int, int, Sequence[EventSpec]], SignalModel]

#: The model factory of each built-in kind.
FACTORIES: Final[dict[str, ModelFactory]] = {
    "pipe.pressure": pipes.make_pressure,
    "pipe.flow": pipes.make_flow,
    "pipe.gas": pipes.make_gas,
    "flood.rain": flood.make_rain,
    "flood.level": flood.make_level,
    "bridge.accel": bridges.make_accel,
    "bridge.strain": bridges.make_strain,
    "bridge.disp": bridges.make_disp,
    "bridge.tilt": bridges.make_tilt,
    "bridge.temp": bridges.make_temp,
    "tunnel.co": tunnels.make_co,
    "tunnel.vi": tunnels.make_vi,
    "tunnel.temp": tunnels.make_temp,
    "tunnel.water": tunnels.make_water,
    "tunnel.convergence": tunnels.make_convergence,
}

#: Event spec types by scenario name.
EVENT_SPECS: Final[dict[str, type]] = {
    spec.name: spec
    for spec in (Burst, Leak, Hammer, GasLeak, Rain, Damage, Overload, Settlement, Structure, Fire,
                 Ingress, Convergence)
}

#: Fault spec types by scenario name ("spike" is accepted beside "spikes").
FAULT_SPECS: Final[dict[str, type]] = {
    **{spec.name: spec for spec in (Stuck, Drift, Spikes, Dropout, NoiseBurst, OutOfRange)},
    "spike": Spikes,
}


def build_model(
    sensor: SimSensor,
    t0_ms: int,
    seed: int,
    events: Sequence[EventSpec] = (),
    faults: Sequence[FaultSpec] = (),
) -> SignalModel:
    """The model of a sensor's kind with its events, wrapped in its faults if it has any."""
    factory = FACTORIES.get(sensor.kind)
    if factory is None:
        raise ValueError(f"no signal model for kind {sensor.kind!r}; known: {sorted(FACTORIES)}")
    if not sensor.rate_hz > 0.0:
        raise ValueError(f"sensor {sensor.id}: rate_hz must be > 0, got {sensor.rate_hz}")
    model = factory(sensor, t0_ms, seed, events)
    return with_faults(model, faults, seed) if faults else model


def parse_event(table: Mapping[str, object]) -> EventSpec:
    """An event spec from a scenario table such as {type = "burst", at_s = 600, drop_mpa = 0.15}."""
    return cast(EventSpec, _parse(table, EVENT_SPECS, "event"))


def parse_fault(table: Mapping[str, object]) -> FaultSpec:
    """A fault spec from a scenario table such as {type = "stuck", at_s = 60, duration_s = 300}."""
    return cast(FaultSpec, _parse(table, FAULT_SPECS, "fault"))


def _parse(table: Mapping[str, object], registry: Mapping[str, type], what: str) -> object:
    name = table.get("type")
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"{what} type {name!r} unknown; known: {sorted(registry)}")
    spec_type = registry[name]
    fields = {f.name for f in dataclasses.fields(spec_type)}
    params = {k: v for k, v in table.items() if k != "type"}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"{what} {name!r}: unknown keys {unknown}; allowed: {sorted(fields)}")
    try:
        return spec_type(**params)
    except TypeError as exc:
        raise ValueError(f"{what} {name!r}: {exc}") from exc


__all__ = [
    "EVENT_SPECS",
    "FACTORIES",
    "FAULT_SPECS",
    "KIND_RANGE",
    "OPEN_END_MS",
    "Burst",
    "Damage",
    "Drift",
    "Dropout",
    "EventSpec",
    "FaultSpec",
    "Fire",
    "GasLeak",
    "Hammer",
    "Ingress",
    "LabelledEvent",
    "Leak",
    "NoiseBurst",
    "OutOfRange",
    "Overload",
    "Rain",
    "Settlement",
    "SignalModel",
    "SimSensor",
    "Spikes",
    "Stuck",
    "build_model",
    "parse_event",
    "parse_fault",
    "with_faults",
]
