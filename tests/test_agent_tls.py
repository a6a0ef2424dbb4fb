"""The whole agent on a broker that demands TLS and a password: RawBlocks in and alerts out, both
over mqtts:// with a CA made here by the openssl CLI and the password read from a file."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.servers import MosquittoServer
from tests.agent_harness import AgentProcess, Collector, Publisher, make_ca, write_config

pytestmark = pytest.mark.integration
USER, PASSWORD = "yz-jfb-01", "s3cret-Pa55"


@pytest.fixture
def tls_broker() -> Iterator[tuple[MosquittoServer, dict[str, Path]]]:
    server = MosquittoServer(listener="")  # the listener's options come below, in extra_config
    certs = make_ca(server.workdir)
    passwd = server.workdir / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), USER, PASSWORD], check=True,
                   capture_output=True, timeout=30)
    server.extra_config = (f"allow_anonymous false\npassword_file {passwd}\ncafile {certs['ca']}\n"
                           f"certfile {certs['server']}\nkeyfile {certs['server_key']}\n")
    with server:
        yield server, certs


def test_agent_over_tls_with_a_password(tmp_path: Path, tls_broker: tuple[MosquittoServer, dict[str, Path]]) -> None:
    broker, certs = tls_broker
    secret = tmp_path / "mqtt.password"
    secret.write_text(PASSWORD + "\n")
    config = write_config(
        tmp_path / "agent.toml", agent="t-tls", broker_url=f"mqtts://127.0.0.1:{broker.port}",
        state_dir=tmp_path / "state",
        mqtt_extra=f'username = "{USER}"\npassword_file = "{secret}"\nca_file = "{certs["ca"]}"',
        sensors=[{"id": "G-1", "site": "station-9", "kind": "pipe.gas", "high": [10.0, 20.0, 35.0, 50.0],
                  "debounce": 2, "gap_s": 600.0, "rules": {"rate": {"enabled": False}}}])
    creds = {"tls_ca": certs["ca"], "username": USER, "password": PASSWORD}
    collector = Collector(broker.port, client_id="test-tls-collector", **creds)  # type: ignore[arg-type]
    publisher = Publisher(broker.port, client_id="test-tls-publisher", **creds)  # type: ignore[arg-type]
    agent = AgentProcess(config).start()
    try:
        agent.wait_log(r"raw input connected")
        publisher.block("G-1", [1.0, 22.0, 23.0], t0=int(time.time() * 1000), dt=1000.0)
        assert collector.wait_for(lambda c: ("G-1", "high", 0, 2) in c.alert_changes()), \
            (collector.alert_changes(), agent.log_text())
        assert collector.wait_for(lambda c: any(s.agent == "t-tls" and s.state == "online" for s in c.status))
        assert agent.terminate() == 0
    finally:
        agent.close()
        publisher.close()
        collector.close()
    assert PASSWORD not in agent.log_text()
