"""The whole chain as a fault-injection harness: what the agents produced against what the store holds.

`Chain` starts two Mosquittos (a field broker that carries the simulated sensors' RawBlocks to
the agents, as a broker at the edge would, and the centre's broker between the agents' uplink and
the gateway), VictoriaMetrics, `lifeline agent` processes and `lifeline gateway` (the pieces of
`benchmarks.bench_e2e`), optionally with a `FlakyLink` (a TCP proxy that can cut and restore
connections) between the agents' uplink and the centre's broker. A `ChainTap` (a persistent-session subscriber) records every
alert and summary the agents publish; at the end `Chain.verify` compares three accounts:

- alerts: each agent's seq is contiguous from 1 and persisted in its outbox, so the expected set
  is 1..last seq per agent; the store must hold each exactly once (field `seq` of `alert`);
- summary rows: every (sensor, window end) the agents published must be in the store, with the
  same `n`;
- samples: those the agents report as processed must be in published summaries (`n`), so no
  window was lost or counted twice by the agent.

Used by `benchmarks.faults` and `tests/test_faults_chain.py`. Every wait is bounded; everything
started is stopped when the context is left, also on errors.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.bench_e2e import (
    PREFIX,
    STATUS_INTERVAL_S,
    E2ECase,
    TopicListener,
    alive_check,
    bench_scenario,
    precompile,
    simulator_process,
    start_chain,
    stop_children,
    subdir,
    wait_until,
)
from edge_agent.config import AgentConfig
from edge_agent.outbox import Outbox
from edge_agent.runtime import OUTBOX_FILE
from lifeline.config import MqttSettings
from lifeline.contract import Alert, DecodeError, decode_alert, decode_summary
from lifeline.errors import LifelineError
from simulators.agent_config import AgentSettings, agent_tables, to_toml
from simulators.collect import AlertCollector
from simulators.demo import Child, gateway_toml, start_child
from simulators.runner import RunOptions
from simulators.servers import MosquittoServer, VictoriaMetricsServer, free_port
from simulators.transports.wiring import raw_prefix

#: Seconds between the agents' full state saves: short, so a `kill -9` finds a recent one.
STATE_SAVE_S: Final = 5.0
#: The agents' cap on reconnect backoff (the config default is 30 s).
RECONNECT_MAX_S: Final = 5.0
#: Seconds between two reads of the store while waiting for it to settle or for new data.
STORE_POLL_S: Final = 0.5
SETTLE_TIMEOUT_S: Final = 120.0
#: A store that took nothing of what is missing for this long will not take it.
STALL_S: Final = 30.0
PROGRESS_EVERY_S: Final = 15.0

SeqKey = tuple[str, int]  # (agent, alert seq)
RowKey = tuple[str, int]  # (sensor, window end t1)


# --------------------------------------------------------------------------- a flaky uplink


class FlakyLink:
    """A TCP proxy to `target_port` whose connections `cut()` closes; while cut it refuses new ones.

    Closing (rather than black-holing) is what a cellular modem does when it loses the carrier and
    the agent's side of the connection is reset.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = threading.Event()
        self.up.set()
        self.cuts = 0
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name="flaky-link", daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(5)
        self._server.close()

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until `restore()`."""
        self.up.clear()
        self.cuts += 1
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            _close_pair(pair)

    def restore(self) -> None:
        """Let connections through again."""
        self.up.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.up.is_set():
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                conn.close()
                continue
            pair = (conn, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair,), name="flaky-link-pump", daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        a, b = pair
        peer = {a: b, b: a}
        try:
            while self.up.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except (OSError, ValueError):
            return  # cut under us
        finally:
            with self._lock:
                self._pairs.discard(pair)
            _close_pair(pair)


def _close_pair(pair: tuple[socket.socket, socket.socket]) -> None:
    for sock in pair:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


# --------------------------------------------------------------------------- what the agents published


class ChainTap(TopicListener):
    """Every alert and summary row the agents publish, through a persistent session (QoS 1), so
    nothing published while the tap is reconnecting (broker restart) is missed."""

    def __init__(self, settings: MqttSettings, *, client_id: str = "lifeline-fault-tap") -> None:
        self.alerts: dict[str, Alert] = {}
        self.rows: dict[RowKey, int] = {}
        self.bad_payloads = 0
        self._changed = threading.Condition()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        super().__init__(settings, client, [(f"{settings.prefix}/alert/+/+/+", 1),
                                            (f"{settings.prefix}/summary/+", 1)], what="the tap's topics")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if "/summary/" in msg.topic:
                summary = decode_summary(msg.payload)
                with self._changed:
                    for sensor, n in zip(summary.sensor, summary.n.tolist(), strict=True):
                        self.rows[(sensor, summary.t1)] = int(n)
                    self._changed.notify_all()
            else:
                alert = decode_alert(msg.payload)
                with self._changed:
                    self.alerts.setdefault(alert.id, alert)
                    self._changed.notify_all()
        except DecodeError:
            self.bad_payloads += 1

    def wait_for(self, predicate: Callable[[ChainTap], bool], timeout_s: float) -> bool:
        """Block until `predicate(self)` holds (checked on every message) or `timeout_s` passes."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout_s)

    def snapshot(self) -> tuple[dict[str, Alert], dict[RowKey, int]]:
        with self._changed:
            return dict(self.alerts), dict(self.rows)


# --------------------------------------------------------------------------- what the store holds


@dataclass(frozen=True)
class StoredPoints:
    """The alert seqs (with how often each is stored) and summary rows in the store."""

    seqs: Counter[SeqKey]
    unmapped_alerts: int  # alert points of sensors no agent owns
    rows: dict[RowKey, int]  # (sensor, t1) -> n

    @property
    def samples(self) -> int:
        return sum(self.rows.values())


def read_store(store: VictoriaMetricsServer, start_ms: int, agent_of: Mapping[str, str]) -> StoredPoints:
    """Every alert `seq` and summary row `n` stored since `start_ms` (OSError if the store is down)."""
    seqs: Counter[SeqKey] = Counter()
    unmapped = 0
    for series in store.export('{__name__="alert_seq"}', start_ms=start_ms):
        agent = agent_of.get(series.metric.get("sensor", ""))
        if agent is None:
            unmapped += len(series.values)
            continue
        seqs.update((agent, int(v)) for v in series.values)
    rows: dict[RowKey, int] = {}
    for series in store.export('{__name__="reading_n"}', start_ms=start_ms):
        sensor = series.metric.get("sensor", "")
        for t, n in zip(series.timestamps, series.values, strict=True):
            rows[(sensor, int(t))] = int(n)
    return StoredPoints(seqs, unmapped, rows)


class FirstNewRow:
    """Wall time (ms) of the first summary row in the store whose window ends after `since_ms`,
    read every `STORE_POLL_S` on a thread; only rows of `sensors` count when given."""

    def __init__(self, store: VictoriaMetricsServer, since_ms: int, sensors: frozenset[str] | None = None) -> None:
        self.store = store
        self.since_ms = since_ms
        self.sensors = sensors
        self.seen_ms: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-recovery", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(35)

    def _run(self) -> None:
        while self.seen_ms is None and not self._stop.is_set():
            try:
                series = self.store.export('{__name__="reading_n"}', start_ms=self.since_ms - 1000)
            except OSError:
                series = []  # the store is still down or starting
            now = time.time_ns() // 1_000_000
            for s in series:
                if self.sensors is None or s.metric.get("sensor", "") in self.sensors:
                    if any(int(t) > self.since_ms for t in s.timestamps):
                        self.seen_ms = now
                        break
            self._stop.wait(STORE_POLL_S)

    def recovery_s(self, timeout_s: float) -> float | None:
        """Seconds from `since_ms` to the first new row; None if none came within `timeout_s`."""
        self._thread.join(timeout_s)
        return None if self.seen_ms is None else (self.seen_ms - self.since_ms) / 1000


# --------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class ChainVerdict:
    """What the store holds against what the agents produced."""

    alerts_expected: int
    alerts_missing: tuple[SeqKey, ...]
    alerts_extra: int  # stored points beyond one per expected alert (a seq stored twice, unknown seqs)
    repeated_detections: int  # one event (sensor, rule, ts, level) published under several seqs
    rows_expected: int
    rows_missing: int
    rows_wrong_n: int
    samples_processed: int  # by the agents, from their statuses (their last incarnation only)
    samples_published: int  # in the summaries the agents published
    samples_stored: int
    samples_sent: int
    agent_restarted: bool

    @property
    def lost(self) -> int:
        """Alerts and rows the agents produced that the store lacks."""
        return len(self.alerts_missing) + self.rows_missing + self.rows_wrong_n

    @property
    def duplicates(self) -> int:
        return self.alerts_extra + self.repeated_detections

    @property
    def window_mismatch(self) -> int:
        """Samples the agent processed but did not publish (< 0: published more than processed).
        Only meaningful when no agent restarted (the counters start again at 0)."""
        return 0 if self.agent_restarted else self.samples_processed - self.samples_published

    def lost_text(self) -> str:
        """The "lost" cell: nothing, or what is missing."""
        parts = []
        if self.alerts_missing:
            parts.append(f"{len(self.alerts_missing):,} of {self.alerts_expected:,} alerts")
        if self.rows_missing or self.rows_wrong_n:
            parts.append(f"{self.rows_missing + self.rows_wrong_n:,} of {self.rows_expected:,} summary rows")
        if self.window_mismatch:
            parts.append(f"{self.window_mismatch:+,} samples between processing and summaries")
        if parts:
            return ", ".join(parts)
        return f"nothing ({self.alerts_expected:,} alerts, {self.rows_expected:,} summary rows checked)"

    def describe(self) -> str:
        return (f"alerts {self.alerts_expected} expected, {len(self.alerts_missing)} missing "
                f"{list(self.alerts_missing[:5])}, {self.alerts_extra} extra, {self.repeated_detections} "
                f"repeated; rows {self.rows_expected} published, {self.rows_missing} missing, "
                f"{self.rows_wrong_n} with another n; samples sent {self.samples_sent:,}, processed "
                f"{self.samples_processed:,}{' (last incarnation)' if self.agent_restarted else ''}, "
                f"published {self.samples_published:,}, stored {self.samples_stored:,}")


def compare(expected_last_seq: Mapping[str, int], tapped_alerts: Mapping[str, Alert],
            tapped_rows: Mapping[RowKey, int], stored: StoredPoints) -> tuple[
                tuple[SeqKey, ...], int, int, int, int]:
    """(missing alerts, extra alert points, repeated detections, missing rows, rows with another n)."""
    expected = {(agent, seq) for agent, last in expected_last_seq.items() for seq in range(1, last + 1)}
    missing = tuple(sorted(expected - stored.seqs.keys()))
    extra = sum(count - (1 if key in expected else 0) for key, count in stored.seqs.items()) + stored.unmapped_alerts
    events: Counter[tuple[str, str, int, int]] = Counter(
        (a.sensor, a.rule, a.ts, a.level) for a in tapped_alerts.values())
    repeated = sum(count - 1 for count in events.values())
    rows_missing = sum(1 for key in tapped_rows if key not in stored.rows)
    wrong_n = sum(1 for key, n in tapped_rows.items() if key in stored.rows and stored.rows[key] != n)
    return missing, extra, repeated, rows_missing, wrong_n


# --------------------------------------------------------------------------- the chain


@dataclass
class ReplayHandle:
    """The simulator running in its own process until `stop` is set (or its duration ends)."""

    proc: Any
    out: Any
    stop: Any
    started_ms: int

    def finish(self, timeout_s: float) -> dict[str, Any]:
        """Stop the replay and return what it sent."""
        self.stop.set()
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            raise LifelineError(f"the simulator did not stop within {timeout_s:g} s")
        try:
            replay: dict[str, Any] = self.out.get(timeout=10)
        except Exception as exc:  # queue.Empty: the child died without a word
            raise LifelineError(f"the simulator exited with code {self.proc.exitcode} and no report") from exc
        if "error" in replay:
            raise LifelineError(f"the simulator failed: {replay['error']}")
        return replay


@dataclass
class Chain:
    """The whole chain on loopback, with handles to break each part; a context manager."""

    case: E2ECase
    workdir: Path
    flaky_uplink: bool = False
    #: The gateway's `share_group`; None: its default (a plain subscription).
    share_group: str | None = None
    log: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    restarts: Counter[str] = field(default_factory=Counter)

    def __enter__(self) -> Self:
        self._stack = contextlib.ExitStack()
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        stack, workdir, case = self._stack, self.workdir, self.case
        self.field = stack.enter_context(MosquittoServer(workdir=subdir(workdir, "field")))
        self.broker = stack.enter_context(MosquittoServer(workdir=subdir(workdir, "broker")))
        self.store = stack.enter_context(VictoriaMetricsServer(workdir=subdir(workdir, "store")))
        self.link = stack.enter_context(FlakyLink(self.broker.port)) if self.flaky_uplink else None
        self.settings = MqttSettings(url=self.broker.url, prefix=PREFIX)
        self.scenario = bench_scenario(case, self.field.url)
        self.agent_ids = [t.agent for t in self.scenario.townships]
        self.agent_of = {s.id: t.agent for t in self.scenario.townships for s in t.sensors}
        self.configs = self._write_agent_configs()
        self.gw_config = workdir / "config" / "gateway.toml"
        share = "" if self.share_group is None else f'share_group = "{self.share_group}"\n'
        self.gw_config.write_text(gateway_toml(self.broker, self.store, workdir / "gateway-state") + share)
        precompile(self.configs[0], workdir)
        self.tap = stack.enter_context(ChainTap(self.settings))
        self.collector = stack.enter_context(AlertCollector(self.settings, client_id="lifeline-fault-collect"))
        stack.callback(stop_children, self.children)
        self.start_ms = time.time_ns() // 1_000_000
        start_chain(self.children, self.configs, self.gw_config, workdir, self.collector, self.store,
                    self.agent_ids)

    def _write_agent_configs(self) -> list[Path]:
        """One config per agent: RawBlocks from the field broker (the sensors' side, which no fault
        here touches), the uplink to the centre's broker, through the flaky link if there is one."""
        uplink = self.link.url if self.link is not None else self.broker.url
        settings = AgentSettings(mqtt_url=uplink, prefix=PREFIX, state_dir=self.workdir / "state",
                                 run_dir=self.workdir / "run",
                                 agent_keys={"window_s": self.case.window_s, "status_interval_s": STATUS_INTERVAL_S,
                                             "state_save_s": STATE_SAVE_S})
        out_dir = self.workdir / "config"
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for township, (agent, table) in zip(self.scenario.townships,
                                            agent_tables(self.scenario, settings).items(), strict=True):
            table["mqtt"]["reconnect_max_s"] = RECONNECT_MAX_S
            table["raw_mqtt"] = {"url": self.field.url, "prefix": raw_prefix(self.scenario, PREFIX, township.id)}
            AgentConfig.model_validate(table)
            path = out_dir / f"{agent}.toml"
            path.write_text(to_toml(table), encoding="utf-8")
            paths.append(path)
        return paths

    # ------------------------------------------------------------------ load

    @contextlib.contextmanager
    def replay(self, max_s: float) -> Iterator[ReplayHandle]:
        """Replay the district (for at most `max_s`) while the body runs; stopped on leaving."""
        options = RunOptions(mqtt=MqttSettings(url=self.field.url, prefix=PREFIX), speed=1.0, duration_s=max_s, qos=1 if self.case.qos else 0,
                             run_dir=self.workdir / "run", client_id="lifeline-fault-sim", tick_s=self.case.tick_s)
        stop = multiprocessing.get_context("spawn").Event()
        with simulator_process(self.scenario, options, stop) as (proc, out):
            yield ReplayHandle(proc, out, stop, time.time_ns() // 1_000_000)

    def wait_flowing(self, since_ms: int, timeout_s: float = 60.0) -> None:
        """Until every agent's summary rows from after `since_ms` are in the store (end to end)."""
        def flowing() -> bool:
            try:
                series = self.store.export('{__name__="reading_n"}', start_ms=since_ms)
            except OSError:
                return False
            agents = {self.agent_of.get(s.metric.get("sensor", "")) for s in series
                      if any(int(t) > since_ms for t in s.timestamps)}
            return set(self.agent_ids) <= agents

        wait_until(flowing, timeout_s, "data from every agent in the store", self.check, step_s=STORE_POLL_S)

    def check(self) -> None:
        """Raise if an agent or the gateway died on its own."""
        alive_check(self.children)()

    # ------------------------------------------------------------------ faults

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def kill(self, name: str) -> None:
        """`kill -9` an agent (by id) or the gateway ("gateway")."""
        child = self.child(name)
        child.proc.kill()
        child.proc.wait(10)

    def restart(self, name: str) -> None:
        """Start a killed agent or gateway again with the same config (and state)."""
        index = next(i for i, c in enumerate(self.children) if c.name == name)
        config = self.gw_config if name == "gateway" else self.workdir / "config" / f"{name}.toml"
        self.children[index] = start_child(name, ["gateway" if name == "gateway" else "agent", "--config",
                                                  str(config)], self.workdir)
        self.restarts[name] += 1

    def sensors_of(self, agents: Sequence[str]) -> frozenset[str]:
        return frozenset(s for s, a in self.agent_of.items() if a in agents)

    # ------------------------------------------------------------------ after the load

    def drain(self, sent_samples: int, base_samples: int, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until the agents processed what reached them and published it (outbox empty, last
        window closed), then until the store holds everything they published."""
        agents = self.agent_ids
        wanted = base_samples + sent_samples
        self.collector.wait_processed(agents, wanted, timeout_s=timeout_s, settle_s=1.0, quiet_s=5.0,
                                      check=self.check)
        # the last window with data closes within a window of the last sample; a summary leaves
        # the agent when it closes, so a later status with an empty outbox means it is out
        closed_ms = time.time_ns() // 1_000_000 + round(self.case.window_s * 1000) + 500

        def published(c: AlertCollector) -> bool:
            rows = [c.statuses.get(a, {}) for a in agents]
            return all(int(r.get("ts", 0)) >= closed_ms and int(r.get("backlog", 1)) == 0 for r in rows)

        if not self.collector.wait_for(published, self.case.window_s + 30):
            self.log("  warning: the agents did not report an empty outbox after their last window closed")
        self.wait_stored(timeout_s)

    def wait_stored(self, timeout_s: float, expected_last_seq: Mapping[str, int] | None = None) -> bool:
        """Until the store holds every alert and row the tap saw (and seqs up to `expected_last_seq`)."""
        deadline = time.monotonic() + timeout_s
        next_note = time.monotonic() + PROGRESS_EVERY_S
        last_what, changed = "", time.monotonic()
        while True:
            alerts, rows = self.tap.snapshot()
            last = dict(expected_last_seq or {})
            for a in alerts.values():
                last[a.agent] = max(last.get(a.agent, 0), a.seq)
            try:
                stored = read_store(self.store, self.start_ms, self.agent_of)
                missing = compare(last, alerts, rows, stored)
                if not missing[0] and not missing[3] and not missing[4]:
                    return True
                what = f"{len(missing[0])} alerts and {missing[3]} rows not stored yet"
            except OSError as exc:
                what = f"store not answering ({exc})"
            now = time.monotonic()
            if what != last_what:
                last_what, changed = what, now
            if now > deadline or now - changed > STALL_S:
                self.log(f"  gave up waiting for the store after {now - deadline + timeout_s:.0f} s: {what}")
                return False
            if now > next_note:
                self.log(f"  waiting for the store: {what}")
                next_note = now + PROGRESS_EVERY_S
            time.sleep(STORE_POLL_S)  # the store has no change event to wait on

    def stop_agents(self) -> dict[str, int]:
        """Stop the agents cleanly and read each one's last alert seq from its outbox."""
        last: dict[str, int] = {}
        for agent in self.agent_ids:  # all at once: each drains its uplink for up to a few seconds
            self.child(agent).proc.terminate()
        for agent in self.agent_ids:
            self.child(agent).stop()
            with Outbox(self.workdir / "state" / agent / OUTBOX_FILE, max_messages=1_000_000) as box:
                last[agent] = box.last_alert_seq
                pending = box.counters().pending_alerts
            if pending:
                self.log(f"  warning: {agent} stopped with {pending} alert(s) still in its outbox")
        return last

    def verify(self, sent_samples: int) -> ChainVerdict:
        """Stop the agents, wait for the store to settle and compare (see the module docstring)."""
        processed = sum(int(self.collector.statuses.get(a, {}).get("samples", 0)) for a in self.agent_ids)
        last_seq = self.stop_agents()
        self.wait_stored(30, last_seq)
        alerts, rows = self.tap.snapshot()
        stored = read_store(self.store, self.start_ms, self.agent_of)
        missing, extra, repeated, rows_missing, wrong_n = compare(last_seq, alerts, rows, stored)
        return ChainVerdict(
            alerts_expected=sum(last_seq.values()), alerts_missing=missing, alerts_extra=extra,
            repeated_detections=repeated, rows_expected=len(rows), rows_missing=rows_missing,
            rows_wrong_n=wrong_n, samples_processed=processed, samples_published=sum(rows.values()),
            samples_stored=stored.samples, samples_sent=sent_samples,
            agent_restarted=any(self.restarts[a] for a in self.agent_ids))

    def processed_samples(self) -> int:
        return self.collector.processed(self.agent_ids)[0]

    def backlog(self) -> tuple[int, int]:
        """(alerts, messages) waiting in the agents' outboxes, from their latest statuses."""
        rows = [self.collector.statuses.get(a, {}) for a in self.agent_ids]
        return (sum(int(r.get("backlog_alerts", 0)) for r in rows), sum(int(r.get("backlog", 0)) for r in rows))
