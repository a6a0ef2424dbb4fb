"""A 30 s store outage: nothing is acknowledged meanwhile, memory stays bounded by the receive
maximum (the broker holds the backlog), alerts still reach the tiers, and after the store comes
back every alert and summary row is stored exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.test_gateway_integration import (
    Collector,
    Publisher,
    eventually,
    expected_alerts,
    expected_readings,
    expected_routes,
    gateway_config,
    make_alerts,
    make_summaries,
    publish_alerts,
    publish_summaries,
    recent_ms,
    running_gateway,
    stored_alerts,
    stored_readings,
)

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0
RECEIVE_MAXIMUM = 300


def test_a_30_s_store_outage_loses_nothing_and_holds_bounded_memory(
    tmp_path: Path, broker: MosquittoServer
) -> None:
    prefix, tag = "t-outage/v1", "outage"
    start = recent_ms()
    alerts = make_alerts(tag, 3000, start_ms=start, seed=21)
    summaries = make_summaries(tag, 40, 20, start_ms=start, seed=22)
    (tmp_path / "vm").mkdir()
    store = VictoriaMetricsServer(workdir=tmp_path / "vm").start()
    ops = Collector(broker.port, [f"{prefix}/ops/#"], "t-outage-ops")
    pub = Publisher(broker.port, "t-outage-pub")
    config = gateway_config(
        broker.url,
        store.url,
        prefix=prefix,
        gateway_id="gw-outage",
        group="g-outage",
        max_inflight=RECEIVE_MAXIMUM,
    )
    try:
        with running_gateway(config) as gateway:
            publish_alerts(pub, prefix, alerts[:1000])
            pub.wait_all()
            eventually(lambda: gateway.counters.acked >= 1000, what="the first part acknowledged")

            # Stopped cleanly: a SIGKILL would also make VictoriaMetrics lose the last rows it had
            # already confirmed (it buffers them in memory), a loss no client can see or prevent.
            store.terminate()
            outage_over = time.monotonic() + OUTAGE_S
            publish_alerts(pub, prefix, alerts[1000:])
            publish_summaries(pub, prefix, summaries)
            pub.wait_all()
            eventually(lambda: gateway.counters.store_retries > 0, what="a failed write")
            held = gateway.counters.acked
            in_flight: list[int] = []
            pause = threading.Event()
            while time.monotonic() < outage_over:  # the outage itself: watch the gateway hold on
                in_flight.append(len(gateway.pipeline.ledger))
                pause.wait(min(0.5, max(0.0, outage_over - time.monotonic())))
            assert gateway.counters.acked == held, "acknowledged while the store was down"
            assert max(in_flight) <= RECEIVE_MAXIMUM  # the rest waits at the broker
            assert ops.route_set >= expected_routes(
                prefix, alerts[1000 : 1000 + RECEIVE_MAXIMUM // 2]
            )

            store.start()  # same port, same data directory
            total = len(alerts) + len(summaries)
            eventually(lambda: gateway.counters.acked >= total, what="the backlog caught up")
        assert stored_alerts(store, tag) == expected_alerts(alerts)
        assert stored_readings(store, tag) == expected_readings(summaries)
        assert ops.wait_for(lambda _: ops.route_set == expected_routes(prefix, alerts))
    finally:
        pub.close()
        ops.close()
        store.stop()
