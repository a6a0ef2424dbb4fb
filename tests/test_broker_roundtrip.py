"""A RawBlock through a real Mosquitto broker, and the store fixture answering the v2 write API."""

from __future__ import annotations

import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from lifeline.contract import RawBlock, decode_raw_block, parse_topic, raw_topic
from simulators.servers import MosquittoServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration
P = "lifeline/v1"


def connected_client(broker: MosquittoServer, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(10), "no CONNACK from the broker"
    return client


def test_raw_block_round_trip_through_broker(broker: MosquittoServer) -> None:
    received: list[tuple[str, bytes]] = []
    got = threading.Event()
    sub = connected_client(broker, "test-roundtrip-sub")

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, msg.payload))
        got.set()

    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.subscribe(f"{P}/raw/+", qos=1)
    assert subscribed.wait(10)

    pub = connected_client(broker, "test-roundtrip-pub")
    block = RawBlock("YZ-P-0001", np.linspace(0.3, 0.4, 1000, dtype=np.float32), t0=1_700_000_000_000,
                     dt=10.0, seq=7)
    pub.publish(raw_topic(P, block.sensor), block.encode(), qos=1).wait_for_publish(10)
    assert got.wait(10), "the block did not come back from the broker"
    for client in (pub, sub):
        client.loop_stop()
        client.disconnect()

    topic, payload = received[0]
    out = decode_raw_block(payload, topic_sensor=parse_topic(P, topic).sensor)
    assert (out.sensor, out.t0, out.dt, out.seq) == ("YZ-P-0001", block.t0, 10.0, 7)
    np.testing.assert_array_equal(out.values, block.values)


def test_store_overwrites_a_rewritten_point(store: VictoriaMetricsServer) -> None:
    now_ms = int(time.time() * 1000) - 60_000
    with InfluxDBClient(url=store.url, token="", org="lifeline") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        for level in (2, 3):  # the same series and time written twice: the second must win
            point = (Point("alert").tag("sensor", "S-fixture").tag("rule", "high")
                     .field("level", level).time(now_ms, WritePrecision.MS))
            write.write(bucket="lifeline", record=point)
    series = store.export('{__name__="alert_level",sensor="S-fixture"}')
    assert len(series) == 1
    assert series[0].timestamps == [now_ms]
    assert series[0].values == [3]
