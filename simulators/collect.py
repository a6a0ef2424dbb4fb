"""Collect the alerts that came out of a run: live from MQTT, or afterwards from the store.

- `AlertCollector` subscribes to `P/alert/+/+/+` (and the agents' retained `P/status/+`) on its
  own paho client and keeps every decoded Alert, de-duplicated by id; `wait_processed` waits
  until the agents report having processed a number of samples with an empty outbox, which is
  how a run knows every alert it caused is out.
- `alerts_from_victoria` reads the `alert` measurement back from VictoriaMetrics' export API
  (series `alert_level` per sensor and rule); `alerts_from_influx` runs a Flux query against
  InfluxDB 2. The store keeps no `prev`: it is rebuilt from the order of each series' levels.
- `write_alerts` / `read_alerts` keep alerts as a JSON file between `run` and `score`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from lifeline.config import MqttSettings
from lifeline.contract import DecodeError, decode_alert, decode_status
from lifeline.errors import ConfigError
from lifeline.mqtt import make_client
from simulators.scoring import AlertRecord
from simulators.transports.base import TransportError

log = logging.getLogger("lifeline.simulate.collect")


class AlertCollector:
    """Alerts (de-duplicated by id) and the latest status of each agent, from a live broker."""

    def __init__(self, settings: MqttSettings, *, client_id: str = "lifeline-sim-collect") -> None:
        self.settings = settings
        self.alerts: dict[str, AlertRecord] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.bad_payloads = 0
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = make_client(settings, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._alert_prefix = f"{settings.prefix}/alert/"
        self._status_prefix = f"{settings.prefix}/status/"

    def start(self, timeout_s: float = 10.0) -> AlertCollector:
        """Connect and subscribe; TransportError if not subscribed within `timeout_s`."""
        s = self.settings
        try:
            self.client.connect(s.host, s.port, keepalive=s.keepalive_s)
        except OSError as exc:
            raise TransportError(f"cannot connect to the broker {s.url}: {exc}") from exc
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise TransportError(f"could not subscribe to alerts on {s.url} within {timeout_s:g} s")
        return self

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> AlertCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(f"{self.settings.prefix}/alert/+/+/+", 1),
                              (f"{self.settings.prefix}/status/+", 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: Any,
                      properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic.startswith(self._alert_prefix):
                alert = decode_alert(msg.payload)
                received = time.time_ns() // 1_000_000
                with self._changed:
                    if alert.id not in self.alerts:
                        self.alerts[alert.id] = AlertRecord.from_alert(alert, received)
                    self._changed.notify_all()
            elif msg.topic.startswith(self._status_prefix) and msg.payload:
                status = decode_status(msg.payload)
                with self._changed:
                    self.statuses[status.agent] = {"state": status.state, "ts": status.ts, **status.extra}
                    self._changed.notify_all()
        except DecodeError:
            self.bad_payloads += 1

    def records(self) -> list[AlertRecord]:
        """Every alert so far, in time order."""
        with self._changed:
            return sorted(self.alerts.values(), key=lambda a: (a.ts, a.sensor, a.rule))

    def wait_for(self, predicate: Callable[[AlertCollector], bool], timeout_s: float) -> bool:
        """Block until `predicate(self)` holds (checked on every message) or `timeout_s` passes."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout_s)

    def processed(self, agents: Iterable[str]) -> tuple[int, int]:
        """Samples the given agents report as processed, and their outbox backlog, summed."""
        with self._changed:
            rows = [self.statuses.get(a, {}) for a in agents]
        return (sum(int(r.get("samples", 0)) for r in rows),
                sum(int(r.get("backlog", 0)) for r in rows))

    def wait_processed(self, agents: Sequence[str], samples: int, timeout_s: float, *,
                       settle_s: float = 2.5, quiet_s: float = 15.0,
                       check: Callable[[], None] | None = None) -> bool:
        """Wait until the agents are done with a run: True once they processed at least `samples`
        samples and their counts stayed put for `settle_s` with empty outboxes (every alert is out).

        Gives up early, returning False, when the counts stay put for `quiet_s` short of `samples`
        (samples lost on the way, e.g. serial frames sent before the agent opened its port).
        `check` is called between status updates (e.g. to fail fast when an agent died).
        """
        deadline = time.monotonic() + timeout_s
        last = self.processed(agents)
        changed = time.monotonic()
        while time.monotonic() < deadline:
            with self._changed:
                self._changed.wait(min(settle_s, max(0.0, deadline - time.monotonic())))
            if check is not None:
                check()
            now = self.processed(agents)
            if now != last:
                last, changed = now, time.monotonic()
                continue
            quiet = time.monotonic() - changed
            if now[1] == 0 and ((now[0] >= samples and quiet >= settle_s) or quiet >= quiet_s):
                return now[0] >= samples
        return False


# --------------------------------------------------------------------------- the store


def _records_from_series(rows: Iterable[tuple[dict[str, str], Sequence[float], Sequence[int]]]) -> list[AlertRecord]:
    """Alert records from (labels, levels, times) series of one sensor and rule each."""
    out = []
    for labels, levels, times in rows:
        prev = 0
        for ts, level in sorted(zip(times, levels, strict=True)):
            out.append(AlertRecord(sensor=labels.get("sensor", ""), rule=labels.get("rule", ""),
                                   level=int(level), prev=prev, ts=int(ts), agent=labels.get("agent", "")))
            prev = int(level)
    return sorted(out, key=lambda a: (a.ts, a.sensor, a.rule))


def alerts_from_victoria(url: str, *, start_ms: int | None = None, end_ms: int | None = None,
                         timeout_s: float = 60.0) -> list[AlertRecord]:
    """Alerts stored in VictoriaMetrics (measurement `alert`, read back as series `alert_level`)."""
    query: dict[str, str] = {"match[]": '{__name__="alert_level"}'}
    if start_ms is not None:
        query["start"] = f"{start_ms / 1000:.3f}"
    if end_ms is not None:
        query["end"] = f"{end_ms / 1000:.3f}"
    base = url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/internal/force_flush", timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError):
        pass  # an older or remote store may not offer it; the export still answers
    try:
        with urllib.request.urlopen(f"{base}/api/v1/export?{urllib.parse.urlencode(query)}",
                                    timeout=timeout_s) as resp:
            body = resp.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise TransportError(f"cannot read alerts from the store at {url}: {exc}") from exc
    rows = []
    for line in body.splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append((row["metric"], row["values"], row["timestamps"]))
    return _records_from_series(rows)


def alerts_from_influx(url: str, *, org: str, bucket: str, token: str, start_ms: int,
                       end_ms: int) -> list[AlertRecord]:
    """Alerts stored in InfluxDB 2 (measurement `alert`, field `level`), via a Flux query."""
    from influxdb_client import InfluxDBClient

    flux = (f'from(bucket: "{bucket}") |> range(start: time(v: {start_ms * 1_000_000}), '
            f'stop: time(v: {(end_ms + 1) * 1_000_000})) '
            '|> filter(fn: (r) => r._measurement == "alert" and r._field == "level")')
    series: dict[tuple[str, str], tuple[dict[str, str], list[float], list[int]]] = {}
    try:
        with InfluxDBClient(url=url, token=token, org=org) as client:
            for table in client.query_api().query(flux):
                for rec in table.records:
                    labels = {"sensor": str(rec.values.get("sensor", "")), "rule": str(rec.values.get("rule", ""))}
                    key = (labels["sensor"], labels["rule"])
                    entry = series.setdefault(key, (labels, [], []))
                    entry[1].append(float(rec.get_value()))
                    entry[2].append(int(rec.get_time().timestamp() * 1000))
    except Exception as exc:  # influxdb-client raises many types; translate at this boundary
        raise TransportError(f"cannot read alerts from InfluxDB at {url}: {exc}") from exc
    return _records_from_series(series.values())


# --------------------------------------------------------------------------- files


def write_alerts(alerts: Sequence[AlertRecord], path: str | os.PathLike[str]) -> Path:
    """Write alerts as a JSON list; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps([asdict(a) for a in alerts], indent=0) + "\n", encoding="utf-8")
    return p


def read_alerts(path: str | os.PathLike[str]) -> list[AlertRecord]:
    """Read alerts written by `write_alerts`; ConfigError names the file when it is malformed."""
    p = Path(path)
    try:
        rows = json.loads(p.read_text(encoding="utf-8"))
        return [AlertRecord(**row) for row in rows]
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: file not found") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{p}: not an alerts file of the simulator: {exc}") from exc


def collect_for(settings: MqttSettings, seconds: float) -> list[AlertRecord]:
    """Every alert that arrives on the broker within `seconds`."""
    with AlertCollector(settings) as collector:
        time.sleep(seconds)  # listening for a fixed time is the point: there is no end event
        return collector.records()
