"""Agent-local faults of issue #8 against a real agent process and real Mosquitto: the disk full
(a real tmpfs), a serial port that vanishes and returns (a pty behind a symlink), and the wall
clock stepping an hour forward and back (libfaketime). The scenarios live in
`benchmarks.faults_agent`, which runs them bigger for RESULTS.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.faults_agent import clock_jumps, disk_full, find_faketime, serial_vanishes
from simulators.servers import MosquittoServer

pytestmark = pytest.mark.integration


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_drops_summaries_counts_them_keeps_every_alert_and_recovers(
        tmp_path: Path, broker: MosquittoServer) -> None:
    run = disk_full(tmp_path, broker, sensors=10, full_s=3.0)
    assert run.facts["running"], "the agent died on a full disk"
    assert run.outcome.lost.startswith("nothing") and run.outcome.duplicates == 0
    # the full disk bit: the reserve was given up (summaries are dropped, and counted, only if
    # the backlog outgrows what the disk held; the state stored with each output makes the first
    # batch on a full disk bigger than a short backlog, which is then kept whole)
    assert "released the reserve" in run.log
    assert run.facts["dropped_alerts"] == 0, "alerts are dropped last"
    status = run.facts["status"]
    assert status["disk_full"] is False and status["backlog_alerts"] == 0
    assert "cannot append" not in run.log and "are lost" not in run.log
    assert run.log.count("disk full") == 1, "the warning is throttled"
    # alerts raised while the disk was full were detected, kept and delivered
    assert len(run.alerts) >= 2 * run.facts["raised"]


def test_vanished_serial_port_is_reported_once_reopened_and_detects_again(
        tmp_path: Path, broker: MosquittoServer) -> None:
    run = serial_vanishes(tmp_path, broker, outage_s=4.0, gap_s=2.0)
    assert run.outcome.lost == "nothing" and run.outcome.duplicates == 0
    (port,) = run.facts["status"]["serial"]
    assert (port["losses"], port["reopens"], port["open"]) == (1, 1, True)
    assert run.log.count(": lost (") == 1 and "cannot open" not in run.log
    assert run.log.count(": back after") == 1
    # each sensor's silence raised `gap` and the return cleared it (a stall of a loaded machine
    # may add a raise-and-clear of its own, never a raise left standing)
    for sensor in ("SV-0", "SV-1"):
        gaps = [(a.prev, a.level) for a in sorted(run.alerts, key=lambda a: a.seq)
                if a.rule == "gap" and a.sensor == sensor]
        assert gaps and gaps == [(0, 1), (1, 0)] * (len(gaps) // 2), (sensor, gaps)


@pytest.mark.skipif(find_faketime() is None, reason="libfaketime missing (deploy/install.sh installs faketime)")
def test_clock_stepping_an_hour_forward_and_back_fabricates_nothing_and_times_follow_it(
        tmp_path: Path, broker: MosquittoServer) -> None:
    run = clock_jumps(tmp_path, broker, sensors=5, hold_s=2.0)
    f = run.facts
    assert f["gaps"] == [], "a clock step is not silence"
    assert run.outcome.lost == "nothing" and run.outcome.duplicates == 0
    assert f["status"]["clock_steps"] == 2
    seqs = [a.seq for a in sorted(run.alerts, key=lambda a: a.seq)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # published times follow the wall clock of the moment (within the test's own latency)
    for key, shift in (("alert_before", 0), ("alert_during", f["step_ms"]), ("alert_after", 0)):
        alert, _ = f[key]
        assert abs(alert.ts - (alert_wall(alert) + shift)) < 30_000, (key, alert)
    # summaries never stopped, each window is a forward interval, and windows after each step
    # are labelled in that step's wall time
    assert all(s.t1 > s.t0 for s in f["summaries"])
    assert any(s.t0 >= f["forward_at"] + f["step_ms"] for s in f["summaries"])
    assert any(f["back_at"] <= s.t0 < f["forward_at"] + f["step_ms"] for s in f["summaries"])


def alert_wall(alert: object) -> int:
    """The real wall time an alert was raised at, from its id's agent time (no step before it
    in this agent's run means agent time == real wall time at start, and agent time is
    monotonic, so it stays real wall time)."""
    return int(str(getattr(alert, "id")).rsplit("@", 1)[1])
