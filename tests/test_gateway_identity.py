"""Two gateways never share an MQTT client id by accident (against a real Mosquitto and
VictoriaMetrics): each without `[gateway] id` derives its own, and neither pushes the other off."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import load_gateway_config
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.test_gateway_integration import eventually, running_gateway

pytestmark = pytest.mark.integration
P = "t-gw-identity/v1"


def test_gateways_with_their_default_ids_both_stay_connected(
        broker: MosquittoServer, store: VictoriaMetricsServer, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    configs = []
    for name in ("a", "b"):
        path = tmp_path / name / "gateway.toml"
        path.parent.mkdir()
        path.write_text(f'[mqtt]\nurl = "{broker.url}"\nprefix = "{P}"\n\n[influx]\nurl = "{store.url}"\n')
        configs.append(load_gateway_config(path))
    assert configs[0].gateway.id != configs[1].gateway.id
    with caplog.at_level(logging.ERROR, logger="gateway.link"), running_gateway(configs[0]) as first, \
            running_gateway(configs[1]) as second:
        eventually(lambda: first.link.connected and second.link.connected, 20, "both gateways connected")
        assert first.link.epoch == 1 and second.link.epoch == 1
    assert "handed this gateway's session" not in caplog.text
