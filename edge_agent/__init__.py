"""The edge agent: reads sensors, detects events at the edge, forwards alerts and summaries.

It runs in a roadside cabinet: inputs (`inputs/`: sensor-node frames on serial, Modbus RTU,
RawBlocks over MQTT) feed a batching pipeline (`pipeline`) that runs the Numba kernels
(`kernels/`) and turns their events into alerts and window summaries; everything outbound goes
through the durable SQLite outbox (`outbox`) and the MQTT uplink (`uplink`); `runtime` ties them
together. Its configuration models are `config`; what it shares with the gateway (contract,
shared config, MQTT helpers) is in `lifeline`.

Public names, for the CLI and for simulators that drive agents (imported on first use, so
`import edge_agent` stays cheap): `AgentConfig` and `load_agent_config` (the agent's
configuration), `config_warnings` (what in a valid config is probably a mistake, such as an
unknown kind), `run_agent` (run until SIGTERM), `precompile` (compile the kernels into the
on-disk cache, with progress lines; `precompile_kernels(on_stage)` for a caller's own progress,
returning what it cost and whether the cache was cold), `FAULT_RULES` (the kernels' rules that
mean a broken sensor rather than an event; the agent adds `gap` itself), `WINDOW_RULES` (the
rules that judge closed summary windows, such as `trend` and `freq_shift`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, config_warnings, load_agent_config
    from edge_agent.kernels.codes import FAULT_RULES
    from edge_agent.kernel_cache import precompile as precompile_kernels
    from edge_agent.kernels.structural import WINDOW_RULES
    from edge_agent.runtime import precompile, run_agent

#: Public name -> module that defines it.
_PUBLIC: dict[str, str] = {
    "AgentConfig": "edge_agent.config",
    "load_agent_config": "edge_agent.config",
    "config_warnings": "edge_agent.config",
    "FAULT_RULES": "edge_agent.kernels.codes",
    "WINDOW_RULES": "edge_agent.kernels.structural",
    "precompile": "edge_agent.runtime",
    "precompile_kernels": "edge_agent.kernel_cache",
    "run_agent": "edge_agent.runtime",
}

#: Public names that differ from the name in their module.
_ATTR: dict[str, str] = {"precompile_kernels": "precompile"}


def __getattr__(name: str) -> object:
    """Import a public name's module on first use (the runtime pulls in numba and the kernels)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _ATTR.get(name, name))
    globals()[name] = value
    return value


__all__ = ["FAULT_RULES", "WINDOW_RULES", "AgentConfig", "config_warnings", "load_agent_config",
           "precompile", "precompile_kernels", "run_agent"]
