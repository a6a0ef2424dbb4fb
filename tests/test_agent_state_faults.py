"""Faults of the agent's own state (issue 13) against real `lifeline agent` processes, a real
gateway, Mosquitto and VictoriaMetrics. The scenarios live in `benchmarks.faults_agent_state`,
which runs them bigger for RESULTS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.faults_agent_state import kill9_replay
from simulators.servers import MosquittoServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration


def test_kill_9_mid_stream_neither_drops_nor_repeats_an_alert(
        tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer) -> None:
    run = kill9_replay(tmp_path, broker, store, sensors=6, steps=80)
    f = run.facts
    assert f["same"], (f"a restart replayed against the same input raised other alerts:\n"
                       f"only uninterrupted: {sorted((f['reference'] - f['resumed']).elements())}\n"
                       f"only after kill -9: {sorted((f['resumed'] - f['reference']).elements())}")
    assert f["chains"] == [], "a raise repeated or a clear lost across a kill -9"
    assert f["seqs"] == list(range(1, f["last_seq"] + 1))
    tally = f["tally"]
    assert (tally.lost, tally.duplicated) == (0, 0), tally
