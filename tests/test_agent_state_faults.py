"""Faults of the agent's own state (issue 13) against real `lifeline agent` processes, a real
gateway, Mosquitto and VictoriaMetrics. The scenarios live in `benchmarks.faults_agent_state`,
which runs them bigger for RESULTS.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.faults_agent_state import (
    DAMAGE_FORMS,
    client_id_takeover,
    disk_full_from_start,
    kill9_replay,
    outbox_damage,
    second_agent,
    unknown_sensor_flood,
)
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


@pytest.mark.parametrize("form", DAMAGE_FORMS)
def test_damaged_outbox_on_restart_keeps_detecting_saves_what_is_readable_and_shows_the_fault(
        form: str, tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer) -> None:
    run = outbox_damage(tmp_path, broker, store, form=form)
    f = run.facts
    assert f["running"], "the agent must keep running on a damaged outbox"
    assert f["lost_new"] == 0 and f["after"], "alerts detected after the damage must all be stored"
    assert f["repeated"] == 0
    status, report = f["status"], f["report"]
    assert "outbox_damaged" in status["faults"] and status["outbox_damaged"] == 1
    assert Path(report["file"]).exists() and report["file"].startswith(str(tmp_path))
    assert run.log.count("was damaged") == 1, "one clear line"
    line = next(line for line in run.log.splitlines() if "was damaged" in line)
    assert "outbox.sqlite" in line and report["file"] in line and "saved" in line
    if form == "garbage header":
        assert f["destroyed"] == 0, "a rebuilt header gives every row back"
    if form == "zero-length":
        assert (report["saved_alerts"], report["saved_summaries"]) == (0, 0)
    if form in ("garbage header", "corrupted page"):
        assert report["saved_summaries"] > 0 and report["saved_alerts"] > 0
    if form == "corrupted page":  # only the rows on that page are gone, and they are counted
        assert report["unreadable"] >= f["destroyed"] and f["destroyed"] < len(f["offered"]) // 2


def test_a_page_damaged_under_the_running_agent_is_found_recovered_and_sending_goes_on(
        tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer) -> None:
    run = outbox_damage(tmp_path, broker, store, form="corrupted page", mid_run=True)
    f = run.facts
    assert f["running"] and f["lost_new"] == 0 and f["repeated"] == 0
    assert f["destroyed"] == 0, "the damaged page held old summaries, no alert"
    assert "outbox_damaged" in f["status"]["faults"] and f["report"]["unreadable"] > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_from_the_start_keeps_detecting_and_sends_every_alert_from_memory(
        tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer) -> None:
    run = disk_full_from_start(tmp_path, broker, store, alerts_each=6)
    f = run.facts
    assert f["in_memory_at_start"] and f["running"]
    assert f["missing"] == [] and f["repeated"] == 0
    assert "outbox_in_memory" in f["full_status"]["faults"]
    assert f["status"]["outbox_in_memory"] == 0 and f["status"]["faults"] == []


def test_a_second_agent_on_the_same_state_dir_exits_2_naming_the_first_and_a_stale_lock_never_blocks(
        tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer) -> None:
    run = second_agent(tmp_path, broker, store, alerts_each=6)
    f = run.facts
    assert f["second_code"] == 2
    assert f"pid {f['first_pid']}" in f["refused"] and "state_dir" in f["refused"], f["refused"]
    assert run.log.count("resumed detection state") == 1, "the restart after kill -9 resumed at once"
    tally = f["tally"]
    assert (tally.lost, tally.duplicated) == (0, 0) and f["seqs"] == list(range(1, tally.offered + 1))


def test_a_client_id_takeover_is_named_stops_flapping_and_loses_no_alert(
        tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer) -> None:
    run = client_id_takeover(tmp_path, broker, store, run_s=15.0, reconnect_max_s=3.0)
    f = run.facts
    assert f["named"], "the takeover must be named in the log"
    for text in f["logs"].values():
        assert text.count("another client is connecting with the same client id") <= 2, "one line per connection"
    # with an id of its own neither throws the other off: the retained status stays online
    assert f["flips_after"] <= 1, (f["flips_after"], f["calm_s"])
    assert f["raw_switched"] >= 1, "the raw input keeps its sensor data under an id of its own"
    assert f["fault_shown"], "the agent that saw it says so in its status"
    assert f["missing"] == [] and f["repeated"] == 0


def test_a_flood_of_unknown_sensor_ids_stays_a_bounded_number_of_log_lines_and_loses_no_alert(
        tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer) -> None:
    run = unknown_sensor_flood(tmp_path, broker, store, unknown=20_000)
    f = run.facts
    assert f["lines"] <= 257, "at most one line per tracked key plus one for the rest"
    assert f["status"]["unknown_sensor"] >= 19_800, "every one counted"
    assert f["rss_after"] - f["rss_before"] < 30, (f["rss_before"], f["rss_after"])
    assert f["missing"] == [] and f["repeated"] == 0 and f["offered"]
