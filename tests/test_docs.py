"""The configuration reference and the sample configs stay true to the code's models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge_agent.config import AgentSection, RawMqttSettings, SensorSettings, load_agent_config
from gateway.config import GatewaySection, InfluxSettings, load_gateway_config
from lifeline.config import MqttSettings

ROOT = Path(__file__).resolve().parent.parent
AGENT_SAMPLE = ROOT / "deploy" / "agent.sample.toml"
GATEWAY_SAMPLE = ROOT / "deploy" / "gateway.sample.toml"
REFERENCE = ROOT / "docs" / "configuration.md"


def keys(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def sample_keys(path: Path) -> set[str]:
    """Keys set or shown commented out (`# key = ...`) in a sample file, and inline-table keys."""
    text = path.read_text()
    return set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))


def test_samples_load() -> None:
    assert load_agent_config(AGENT_SAMPLE).sensor
    assert load_gateway_config(GATEWAY_SAMPLE).influx.bucket == "lifeline"


@pytest.mark.parametrize(("sample", "models"), [
    (AGENT_SAMPLE, [AgentSection, MqttSettings, RawMqttSettings, SensorSettings]),
    (GATEWAY_SAMPLE, [MqttSettings, InfluxSettings, GatewaySection]),
])
def test_every_key_is_in_its_sample(sample: Path, models: list[type[BaseModel]]) -> None:
    shown = sample_keys(sample)
    missing = {k for m in models for k in keys(m)} - shown
    assert not missing, f"{sample.name} does not show key(s) {sorted(missing)}"


def test_every_key_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    documented = set(re.findall(r"`([a-z_]+)`", text))
    models = [AgentSection, MqttSettings, RawMqttSettings, SensorSettings, InfluxSettings, GatewaySection]
    missing = {k for m in models for k in keys(m)} - documented
    assert not missing, f"docs/configuration.md does not document {sorted(missing)}"
