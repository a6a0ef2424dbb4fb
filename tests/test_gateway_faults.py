"""The gateway under an operator's bad day, with the real `lifeline gateway` process, Mosquitto and
VictoriaMetrics (behind `simulators.faultproxy.FaultProxy` where the fault is the store's): short
versions of `benchmarks.faults_gateway`. Each class of issue 13's gateway faults: nothing offered is
lost or stored twice, and what is not stored is in the dead-letter file with its reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from benchmarks.faults_gateway import (
    LIVE_TARGET_S,
    run_backlog,
    run_bad_rows,
    run_hijack,
    run_slow_store,
)
from simulators.servers import MosquittoServer, VictoriaMetricsServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
log = logging.getLogger("test_gateway_faults")


@pytest.mark.parametrize("keep_state", [True, False], ids=["state-kept", "state-lost"])
def test_a_restart_into_a_backlog_refuses_nothing_and_live_alarms_do_not_wait_behind_it(
    tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer, keep_state: bool
) -> None:
    """20,000 alerts queued while the gateway was down. The store answers after 0.3 s and the
    receive maximum is 2,000, so the drain lasts at least 3 s whatever the machine: the live
    alarm published when it begins must reach ops within 2 s, before the backlog is through."""
    tag = f"flt-bl-{'kept' if keep_state else 'lost'}"
    result = run_backlog(
        broker, store, tmp_path, alerts=20_000, keep_state=keep_state, store_latency_s=0.3,
        max_inflight=2_000, tag=tag, prefix=f"{tag}/v1", log=log.info,
    )
    log.info(result.describe())
    assert result.tally.ok() and result.tally.stored == 20_001, result.describe()
    assert (result.refused, result.tally.dead_lettered) == (0, 0), result.describe()
    assert result.live_latency_s is not None and result.live_latency_s < LIVE_TARGET_S, result.describe()
    assert result.live_during_drain, f"the backlog was through before the live alarm: {result.describe()}"
    if keep_state:
        assert result.held == 0, "a restarted gateway forgot an agent it knew"


def test_an_ownership_hijack_moves_nothing_and_alarms_are_routed_flagged(
    tmp_path: Path, store: VictoriaMetricsServer
) -> None:
    result = run_hijack(store, tmp_path, log=log.info)
    log.info(result.describe())
    assert result.owner_after == "yz-a"
    assert result.real_routed and not result.real_flagged  # the owner's red alarm, verified
    assert result.forged_flagged is not None and result.forged_flagged["verdict"] == "wrong_owner"
    assert not result.forged_low_routed
    assert any(
        (e["owner"], e["claimant"], e["sensor"]) == ("yz-a", "yz-b", "GAS-A") for e in result.conflicts
    ), result.conflicts
    assert result.future_timestamps == 1
    assert result.dead_letters == {"future_timestamp": 1, "wrong_owner": 3}, result.dead_letters
    assert (result.forged_stored, result.future_rows_stored) == (0, 0)
    assert result.tally.ok(), result.describe()


def test_one_malformed_row_costs_only_itself_the_rest_of_its_batch_is_stored(
    tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer
) -> None:
    result = run_bad_rows(
        broker, store, tmp_path, summaries=40, rows=500, bad_every=5, tag="flt-bad",
        prefix="flt-bad/v1", log=log.info,
    )
    log.info(result.describe())
    assert result.proxy_rejections > 0, "the store never refused anything: the fault did not happen"
    assert result.tally.ok() and result.tally.stored == 40 * 500 - result.bad, result.describe()
    assert result.dead_letters == {"store_rejected": result.bad} and result.rows_rejected == result.bad
    assert all("HTTP 400" in m and "unable to parse" in m and "-BAD" in m for m in result.store_messages)


def test_a_store_taking_a_second_per_write_still_takes_over_5000_points_per_second(
    tmp_path: Path, broker: MosquittoServer, store: VictoriaMetricsServer
) -> None:
    """8,000 points/s offered for 8 s (summaries of 500 rows, paced) to a store answering each
    write after 1 s: several writes in flight and batches that grow keep up with it."""
    result = run_slow_store(
        broker, store, tmp_path, latency_s=1.0, points_per_s=8_000, seconds=8, tag="flt-slow",
        prefix="flt-slow/v1", log=log.info,
    )
    assert result.tally.ok() and result.tally.stored == result.tally.offered, result.describe()
    assert result.stored_per_s >= 5_000, result.describe()
    assert result.lag_s < 5, f"the gateway fell behind: {result.describe()}"
