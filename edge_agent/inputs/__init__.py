"""Sensor inputs of the agent: MQTT RawBlocks, serial sensor-node frames and Modbus RTU polling.

Each input runs on its own thread and hands its data to the pipeline through an `Ingress`.
"""

from edge_agent.inputs.base import (
    CLOCK,
    AgentClock,
    Ingress,
    RawMessage,
    SampleBlock,
    ThrottledWarnings,
    now_ms,
)

__all__ = ["CLOCK", "AgentClock", "Ingress", "RawMessage", "SampleBlock", "ThrottledWarnings", "now_ms"]
