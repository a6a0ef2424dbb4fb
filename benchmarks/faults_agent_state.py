"""Faults of the agent's own state (issue 13), each against real `lifeline agent` processes, a real
`lifeline gateway`, real Mosquitto and real VictoriaMetrics: what the agents offered (alert seq
1..last) is read back from the store.

- outbox damage: the outbox file zero-length, with a garbage header, truncated, or with one
  corrupted page, found on start (a power cut on an SD card) or while running;
- a second agent on the same state directory;
- `kill -9` mid-stream: a replay of recorded input, killed and restarted, against the same
  replay uninterrupted;
- a client-id takeover: two agents with the same id and client id (a cloned SD card);
- a flood of RawBlocks for sensor ids the agent does not know (the log throttle's memory).

`python -m benchmarks.faults_agent_state [--write] [--fault NAME ...]` runs them at a realistic
size and with --write puts their rows in RESULTS.md's "## Faults" table;
`tests/test_agent_state_faults.py` runs the same scenarios small. `benchmarks.faults_agent` (and so
`lifeline bench`) runs them too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from benchmarks.fault_table import FaultOutcome, write_fault_rows
from benchmarks.faults_agent import RawFeeder, fill, tmpfs
from benchmarks.procstat import memory_mib
from lifeline.contract import Alert, RawBlock, Status, Summary
from edge_agent.outbox import OutboundMessage, Outbox
from edge_agent.runtime import OUTBOX_FILE
from simulators.demo import Child, gateway_toml, start_child
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.agent_harness import AgentProcess, Collector, Publisher, write_config

COMMAND: Final = "python -m benchmarks.faults_agent_state --write"
PREFIX: Final = "lifeline/v1"
WAIT_S: Final = 60.0
#: Rules of the replayed sensors: four graded levels with debounce, and the profile's stateful
#: rules (rate, anomaly, drift, flatline, spike) on, so a restart has more than levels to get right.
REPLAY_RULES: Final[dict[str, Any]] = {"kind": "flood.level", "high": [60.0, 70.0, 80.0, 90.0],
                                       "hysteresis": 2.0, "debounce": 3, "gap_s": 3600.0}
#: One level raised by one sample and nothing else, for scenarios that only count alerts.
SIMPLE_RULES: Final[dict[str, Any]] = {
    "kind": "flood.level", "high": [60.0], "hysteresis": 5.0, "debounce": 1, "gap_s": 3600.0,
    "rules": {"rate": {"enabled": False}, "spike": {"enabled": False}, "anomaly": {"enabled": False},
              "drift": {"enabled": False}, "flatline": {"enabled": False}}}
NORMAL, HIGH = 30.0, 75.0
#: Summaries waiting in the outbox before the mid-run damage: bigger than SQLite's page cache.
MID_RUN_BACKLOG: Final = 4000


@dataclass
class StateFaultRun:
    """What one scenario saw: its table row and the facts the tests assert on."""

    outcome: FaultOutcome
    facts: dict[str, Any] = field(default_factory=dict)
    log: str = ""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------- the centre: gateway and store


class Centre:
    """A `lifeline gateway` process between the broker and the store, and what the store holds."""

    def __init__(self, workdir: Path, broker: MosquittoServer, store: VictoriaMetricsServer, *,
                 gateway_id: str) -> None:
        self.workdir = workdir
        self.broker = broker
        self.store = store
        self.since_ms = now_ms() - 3 * 3600_000  # replays stamp their samples up to 2 h back
        config = workdir / f"{gateway_id}.toml"
        toml = (gateway_toml(broker, store, workdir / f"{gateway_id}-state").replace('id = "demo-gateway"', f'id = "{gateway_id}"')
                .replace(f'prefix = "{PREFIX}"\n', f'prefix = "{PREFIX}"\nreconnect_max_s = 1.0\n', 1))
        config.write_text(toml + 'unknown_agents = "accept"\n', encoding="utf-8")
        self.gateway_id = gateway_id
        self.child: Child = start_child(gateway_id, ["gateway", "--config", str(config)], workdir)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        """Until a probe status went through the gateway into the store: the path works end to end."""
        probe = f"{self.gateway_id}-probe"
        publisher = Publisher(self.broker.port, client_id=probe)
        try:
            deadline = time.monotonic() + WAIT_S
            while True:
                self.child.check_alive()
                publisher.raw(f"{PREFIX}/status/{probe}", Status(probe, "online", now_ms()).encode())
                try:
                    if self.store.export(f'{{__name__=~"agent_status_.*", agent="{probe}"}}'):
                        return
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the gateway stored nothing within {WAIT_S:.0f} s; its log:\n"
                                         + self.log()[-2000:])
                time.sleep(0.5)  # the store has no change event to wait on
        finally:
            publisher.close()

    def log(self) -> str:
        return self.child.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.child.stop()

    def __enter__(self) -> Centre:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alert_points(self, sensors: Sequence[str]) -> list[tuple[str, str, int, int]]:
        """(sensor, rule, ts, seq) of every stored alert point of these sensors."""
        wanted = set(sensors)
        out = []
        for series in self.store.export('{__name__="alert_seq"}', start_ms=self.since_ms):
            sensor = series.metric.get("sensor", "")
            if sensor in wanted:
                out += [(sensor, series.metric.get("rule", ""), int(t), int(v))
                        for t, v in zip(series.timestamps, series.values, strict=True)]
        return out

    def wait_stored(self, sensors: Sequence[str], expected: int, timeout_s: float = WAIT_S) -> list[
            tuple[str, str, int, int]]:
        """The stored alert points of `sensors` once there are `expected` (or what is there at the
        timeout, for the caller to report)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.child.check_alive()
            try:
                points = self.alert_points(sensors)
            except OSError:
                points = []
            if len(points) >= expected:
                return points
            if time.monotonic() > deadline:
                print(f"  the store holds {len(points)} of {expected} alert points; gateway log:\n"
                      + self.log()[-1500:], flush=True)
                return points
            time.sleep(0.3)  # the store has no change event to wait on


@dataclass(frozen=True)
class Tally:
    """Alerts offered (seq 1..last) against what the store holds and what the tap saw."""

    offered: int
    stored: int
    lost: int
    duplicated: int

    @classmethod
    def of(cls, last_seq: int, points: Sequence[tuple[str, str, int, int]], tapped: Sequence[Alert]) -> Tally:
        seqs = Counter(seq for *_, seq in points)
        expected = set(range(1, last_seq + 1))
        stored = len(expected & seqs.keys())
        extra = sum(n for s, n in seqs.items() if s not in expected) + sum(n - 1 for n in seqs.values() if n > 1)
        events = Counter((a.sensor, a.rule, a.ts, a.level) for a in {a.id: a for a in tapped}.values())
        repeated = sum(n - 1 for n in events.values())
        return cls(last_seq, stored, last_seq - stored, extra + repeated)

    def lost_text(self) -> str:
        return "nothing" if self.lost == 0 else f"{self.lost} alert(s)"


def tapped_alerts(collector: Collector, agent: str) -> list[Alert]:
    with collector._changed:  # noqa: SLF001 (the harness's lock)
        return [a for a in collector.alerts if a.agent == agent]


def latest_status(collector: Collector, agent: str, after_ms: int = 0) -> dict[str, Any]:
    """The agent's latest online status sent after `after_ms` ({} if none)."""
    with collector._changed:  # noqa: SLF001
        for status in reversed(collector.status):
            if status.agent == agent and status.state == "online" and status.ts > after_ms:
                return dict(status.extra)
    return {}


def wait_status(collector: Collector, agent: str, predicate: Callable[[dict[str, Any]], bool],
                what: str, timeout_s: float = WAIT_S, *, after_ms: int = 0) -> dict[str, Any]:
    """The agent's latest online status (sent after `after_ms`) once `predicate` holds for it
    (AssertionError on timeout)."""
    ok = collector.wait_for(lambda c: predicate(latest_status(c, agent, after_ms)), timeout_s)
    status = latest_status(collector, agent, after_ms)
    assert ok, f"timed out waiting for {what}; last status of {agent}: {status}"
    return status


def stored_tally(offered: dict[str, tuple[str, str, int]], points: Sequence[tuple[str, str, int, int]]
                 ) -> tuple[list[str], int, int]:
    """(alert ids not in the store, alerts lost to another of the same sensor, rule and time,
    duplicated points) for alerts identified by id -> (sensor, rule, ts). The store keeps one
    point per sensor, rule and time, so of two alerts at one millisecond only one is there."""
    stored = {(s, r, t) for s, r, t, _ in points}
    missing = [i for i, key in offered.items() if key not in stored]
    shared = sum(n - 1 for n in Counter(offered.values()).values())
    repeated = sum(n - 1 for n in Counter((s, r, t) for s, r, t, _ in points).values())
    return missing, shared, repeated


def lost_text(missing: int, shared: int, extra: str = "") -> str:
    """The "lost" cell for alerts checked by id."""
    parts = [f"{missing} alert(s){extra}"] if missing else []
    if shared:
        parts.append(f"{shared} alert(s) sharing sensor, rule and millisecond with another (the store "
                     "keeps one point per time)")
    return "; ".join(parts) or "nothing"


def level_chains_ok(alerts: Sequence[Alert]) -> list[str]:
    """Where the alerts of one (sensor, rule), in seq order, do not chain (each `prev` the level
    before): a repeated raise or a lost clear."""
    level: dict[tuple[str, str], int] = {}
    broken = []
    for a in sorted({a.id: a for a in alerts}.values(), key=lambda a: a.seq):
        key = (a.sensor, a.rule)
        if a.prev != level.get(key, 0):
            broken.append(f"seq {a.seq} {a.sensor} {a.rule} {a.prev}->{a.level} after level {level.get(key, 0)}")
        level[key] = a.level
    return broken


# ---------------------------------------------------------------- outbox damage


DAMAGE_FORMS: Final = ("zero-length", "garbage header", "truncated", "corrupted page")


def settle_outbox(path: Path) -> None:
    """Fold the WAL of a stopped (or killed) agent's outbox into the file, so damage to the file
    hits all of its rows."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def table_leaf_pages(path: Path) -> list[int]:
    """Page numbers of the outbox table's leaf pages, in page order (SQLite's dbstat table)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return sorted(int(p) for (p,) in db.execute(
            "SELECT pageno FROM dbstat WHERE name = 'outbox' AND pagetype = 'leaf'"))


def damage_outbox(path: Path, form: str, *, seed: int = 13, page: int | None = None) -> str:
    """Damage an outbox file as a power cut on an SD card can; returns what was done.

    zero-length: the file emptied; garbage header: its first 100 bytes random; truncated: cut
    in the middle; corrupted page: one leaf page of the table (the middle one, or `page`) random.
    """
    rng = random.Random(seed)
    size = path.stat().st_size
    if form == "zero-length":
        os.truncate(path, 0)
        return f"emptied ({size:,} bytes before)"
    if form == "garbage header":
        with open(path, "r+b") as f:
            f.write(rng.randbytes(100))
        return "first 100 bytes overwritten"
    if form == "truncated":
        os.truncate(path, size // 2)
        return f"cut to {size // 2:,} of {size:,} bytes"
    if form == "corrupted page":
        leaves = table_leaf_pages(path)
        victim = page if page is not None else leaves[len(leaves) // 2]
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        with open(path, "r+b") as f:
            f.seek((victim - 1) * page_size)
            f.write(rng.randbytes(page_size))
            f.flush()
            os.fsync(f.fileno())
        return f"page {victim} of {size // page_size} (a table leaf) overwritten"
    raise ValueError(f"unknown damage {form!r}; one of {', '.join(DAMAGE_FORMS)}")


ALERT_LINE: Final = re.compile(r"alert seq=(\d+) (\S+) \S+ (\S+) level (\d) -> (\d) value=\S+ id=(\S+)")


def logged_alerts(log_text: str) -> dict[str, tuple[str, str, int]]:
    """Alert id -> (sensor, rule, ts key) of every alert an agent logged (it logs each once it is stored)."""
    out = {}
    for match in ALERT_LINE.finditer(log_text):
        alert_id = match.group(6)
        out[alert_id] = (match.group(2), match.group(3), int(alert_id.rsplit("@", 1)[1]))
    return out


def synthetic_backlog(path: Path, agent: str, sensors: Sequence[str], *, rows: int, start_ms: int) -> None:
    """Summaries of an earlier outage, as the agent would have left them in its outbox (bigger
    than SQLite's page cache, so a page damaged under the running agent is read from disk again)."""
    n = len(sensors)
    with Outbox(path, max_messages=1_000_000) as box:
        for i in range(rows):
            t0 = start_ms + i * 1000
            summary = Summary(agent=agent, township="jiefangbei", district="yuzhong", t0=t0, t1=t0 + 1000,
                              sensor=list(sensors), kind=["flood.level"] * n, site=["basin"] * n,
                              n=np.full(n, 10, dtype=np.int64), min=np.full(n, NORMAL - 1.0),
                              max=np.full(n, NORMAL + 1.0), mean=np.full(n, NORMAL), last=np.full(n, NORMAL))
            box.append([OutboundMessage(f"{PREFIX}/summary/{agent}", summary.encode(), "summary")])


def outbox_damage(workdir: Path, field: MosquittoServer, store: VictoriaMetricsServer, *, form: str,
                  mid_run: bool = False, sensors: int = 10, backlog_alerts: int = 20,
                  after_alerts: int = 10) -> StateFaultRun:
    """The agent's outbox is damaged while alerts and summaries wait in it (the uplink is down):
    on a restart after a power cut (`form` applied to the file of the killed agent), or under the
    running agent (`mid_run`: one page of an old backlog corrupted, found when the uplink returns
    and reads it). The agent must keep detecting and sending, save what the file still holds,
    and show the fault in its status."""
    slug = ("mid-" if mid_run else "") + form.replace(" ", "-")
    agent_id = f"od-{slug}"
    ids = [f"OD-{slug}-{i:02d}"[:64] for i in range(sensors)]
    state_dir = workdir / "state"
    with contextlib.ExitStack() as stack:
        (workdir / "uplink").mkdir(exist_ok=True)
        uplink = stack.enter_context(MosquittoServer(workdir=workdir / "uplink"))
        centre = stack.enter_context(Centre(workdir, uplink, store, gateway_id=f"gw-{agent_id}"))
        config = write_config(
            workdir / "agent.toml", agent=agent_id, broker_url=uplink.url, state_dir=state_dir,
            agent_extra="window_s = 0.5\nstate_save_s = 1.0", mqtt_extra="reconnect_max_s = 1.0",
            extra=f'[raw_mqtt]\nurl = "{field.url}"\n',
            sensors=[{"id": s, "site": "basin", **SIMPLE_RULES} for s in ids])
        collector = Collector(uplink.port, client_id=f"{agent_id}-collector")  # reconnects by itself
        stack.callback(collector.close)
        if mid_run:  # the outage began before the start, with a big backlog the agent has not read since
            synthetic_backlog(state_dir / OUTBOX_FILE, agent_id, ids, rows=MID_RUN_BACKLOG,
                              start_ms=now_ms() - 2 * 3600_000)
            uplink.terminate()
        incarnations: list[AgentProcess] = []

        def start() -> AgentProcess:
            agent = AgentProcess(config)
            stack.callback(agent.close)
            incarnations.append(agent)
            agent.start().wait_log(r"raw input connected")
            return agent

        feeder = RawFeeder(field.port, ids, period_s=0.1, client_id=f"{agent_id}-feeder")
        stack.callback(feeder.close)
        agent = start()

        def alerts(count: int, first: int) -> None:
            """`count` alerts (raise and clear in turn) on the sensors from `first`, each once stored."""
            for k in range(count // 2):
                sensor = ids[(first + k) % len(ids)]
                line = len(agent.lines)
                feeder.raise_high(sensor, blocks=2)
                agent.wait_log(rf"alert seq=\d+ {sensor} \S+ high level 1 -> 0 ", since=line)

        alerts(4, 0)
        if not mid_run:
            assert collector.wait_for(lambda c: len(c.alerts) >= 4, WAIT_S), "nothing reached the uplink"
            uplink.terminate()   # an outage: alerts and summaries wait in the outbox from here
        alerts(backlog_alerts, 4)
        if mid_run:
            leaves = table_leaf_pages(state_dir / OUTBOX_FILE)
            done = damage_outbox(state_dir / OUTBOX_FILE, "corrupted page", page=leaves[len(leaves) // 10])
        else:
            agent.kill()   # the power cut
            settle_outbox(state_dir / OUTBOX_FILE)
            done = damage_outbox(state_dir / OUTBOX_FILE, form)
            agent = start()   # must come up, not exit 2
            agent.wait_log(r"outbox .* was damaged")
        damaged_at, damaged_line = time.monotonic(), len(agent.lines)
        alerts(after_alerts, 4 + backlog_alerts)
        uplink.start()
        if mid_run:
            agent.wait_log(r"outbox .* was damaged", WAIT_S)
        status = wait_status(collector, agent_id, lambda st: st.get("backlog", 1) == 0 and
                             "outbox_damaged" in st.get("faults", []), "the backlog to drain with the fault shown")
        recovery_s = time.monotonic() - damaged_at
        offered = logged_alerts("\n".join(a.log_text() for a in incarnations))
        after = logged_alerts("\n".join(agent.lines[damaged_line:]))
        running = agent.proc is not None and agent.proc.poll() is None
        assert agent.terminate() == 0
        points = centre.wait_stored(ids, len(set(offered.values())))
        missing_ids, shared, repeated = stored_tally(offered, points)
        missing = set(missing_ids)
        lost_new = len(missing & after.keys())
        destroyed = len(missing) - lost_new
        report = (status.get("outbox_damage") or [{}])[-1]
        unreadable = int(report.get("unreadable", -1))
        where = "under the running agent, found when the uplink returned" if mid_run else "found on restart"
        lost = lost_text(0, shared)
        if missing:
            gone = "file's content" if form == "zero-length" and not mid_run else "file (unreadable)"
            lost = (f"{lost_new} of the {len(after)} alerts after the damage; {destroyed} waiting alert(s) went "
                    f"with the damaged {gone}" + (f"; {lost}" if shared else ""))
        outcome = FaultOutcome(
            f"agent outbox damaged: {'one corrupted page under the running agent' if mid_run else form}",
            f"{sensors} sensors x 10 blocks/s, summaries every 0.5 s; uplink down with {backlog_alerts} "
            f"alerts waiting{f' behind {MID_RUN_BACKLOG:,} older summaries' if mid_run else ''}; kill -9 and {done}"
            .replace("kill -9 and ", "" if mid_run else "kill -9 and ") + f"; {where}",
            lost,
            repeated, recovery_s, COMMAND, offered=f"{len(offered)} alerts",
            stored=str(len(offered) - len(missing) - shared),
            dead_lettered=("-" if unreadable < 0 else str(unreadable)) + " unreadable row(s) kept in the "
                          "moved-aside file")
        return StateFaultRun(outcome, {
            "status": status, "report": report, "offered": offered, "missing": missing, "after": after,
            "lost_new": lost_new, "destroyed": destroyed, "repeated": repeated, "running": running,
            "damage": done, "shared": shared,
        }, "\n".join(a.log_text() for a in incarnations))


def disk_full_from_start(workdir: Path, field: MosquittoServer, store: VictoriaMetricsServer, *,
                         sensors: int = 10, alerts_each: int = 10, disk_bytes: int = 8 << 20) -> StateFaultRun:
    """The agent starts on a disk already full to the last byte (no outbox file can be made, no
    reserve, nothing to drop), detects, holds its alerts in memory and sends them from there,
    also across an uplink outage, then writes them back to disk once the disk has room."""
    agent_id = "df-start"
    ids = [f"DFS-{i:02d}" for i in range(sensors)]
    with contextlib.ExitStack() as stack:
        (workdir / "uplink").mkdir(exist_ok=True)
        uplink = stack.enter_context(MosquittoServer(workdir=workdir / "uplink"))
        centre = stack.enter_context(Centre(workdir, uplink, store, gateway_id=f"gw-{agent_id}"))
        disk = stack.enter_context(tmpfs(workdir / "disk", disk_bytes))
        config = write_config(
            workdir / "agent.toml", agent=agent_id, broker_url=uplink.url, state_dir=disk / "state",
            agent_extra="window_s = 0.5\nstate_save_s = 1.0", mqtt_extra="reconnect_max_s = 1.0",
            extra=f'[raw_mqtt]\nurl = "{field.url}"\n',
            sensors=[{"id": s, "site": "basin", **SIMPLE_RULES} for s in ids])
        (disk / "state").mkdir()
        fill(disk / "filler")
        collector = Collector(uplink.port, client_id=f"{agent_id}-collector")
        stack.callback(collector.close)
        feeder = RawFeeder(field.port, ids, period_s=0.1, client_id=f"{agent_id}-feeder")
        stack.callback(feeder.close)
        agent = AgentProcess(config)
        stack.callback(agent.close)
        agent.start().wait_log(r"raw input connected")
        in_memory = "holding new messages in memory" in agent.log_text()

        def alerts(count: int, first: int) -> None:
            for k in range(count // 2):
                sensor = ids[(first + k) % len(ids)]
                line = len(agent.lines)
                feeder.raise_high(sensor, blocks=2)
                agent.wait_log(rf"alert seq=\d+ {sensor} \S+ high level 1 -> 0 ", since=line)

        alerts(alerts_each, 0)
        full_status = wait_status(collector, agent_id, lambda st: "outbox_in_memory" in st.get("faults", [])
                                  and st.get("backlog_alerts", 1) == 0, "alerts sent from memory")
        uplink.terminate()   # and an outage on top: memory holds what waits
        alerts(alerts_each, alerts_each // 2)
        uplink.start()
        wait_status(collector, agent_id, lambda st: st.get("backlog_alerts", 1) == 0 and st.get("alerts", 0)
                    >= 2 * alerts_each, "the alerts of the outage sent from memory")
        os.unlink(disk / "filler")
        freed = time.monotonic()
        line = len(agent.lines)
        alerts(2, 0)  # the next append finds room (it tries the disk every few seconds)
        agent.wait_log(r"back on disk", WAIT_S, since=line)
        recovery_s = time.monotonic() - freed
        alerts(alerts_each, 0)
        status = wait_status(collector, agent_id, lambda st: st.get("backlog", 1) == 0 and
                             st.get("faults", ["?"]) == [] and st.get("alerts", 0) >= 3 * alerts_each + 2,
                             "the outbox back on disk with its reserve, drained")
        running = agent.proc is not None and agent.proc.poll() is None
        assert agent.terminate() == 0
        offered = logged_alerts(agent.log_text())
        points = centre.wait_stored(ids, len(set(offered.values())))
        missing, shared, repeated = stored_tally(offered, points)
        outcome = FaultOutcome(
            "agent disk full from the start (no file, no reserve, nothing to drop)",
            f"{sensors} sensors x 10 blocks/s, an alert every ~0.3 s; tmpfs {disk_bytes >> 20} MiB full before "
            f"the start, an uplink outage meanwhile, then room again", lost_text(len(missing), shared),
            repeated, recovery_s, COMMAND, offered=f"{len(offered)} alerts",
            stored=str(len(offered) - len(missing) - shared), dead_lettered="0")
        return StateFaultRun(outcome, {
            "in_memory_at_start": in_memory, "full_status": full_status, "status": status,
            "missing": missing, "repeated": repeated, "running": running, "offered": offered, "shared": shared,
        }, agent.log_text())


def second_agent(workdir: Path, broker: MosquittoServer, store: VictoriaMetricsServer, *,
                 sensors: int = 10, alerts_each: int = 10) -> StateFaultRun:
    """A second `lifeline agent` started on the state directory of a running one must exit 2
    naming it and touch nothing; after a `kill -9` of the first, the lock it leaves must not
    block the next start, which resumes where the first stopped."""
    agent_id = "sd-lock"
    ids = [f"SDL-{i:02d}" for i in range(sensors)]
    with contextlib.ExitStack() as stack:
        centre = stack.enter_context(Centre(workdir, broker, store, gateway_id=f"gw-{agent_id}"))
        config = write_config(workdir / "agent.toml", agent=agent_id, broker_url=broker.url,
                              state_dir=workdir / "state", agent_extra="window_s = 0.5",
                              sensors=[{"id": s, "site": "basin", **SIMPLE_RULES} for s in ids])
        collector = Collector(broker.port, client_id=f"{agent_id}-collector")
        stack.callback(collector.close)
        feeder = RawFeeder(broker.port, ids, period_s=0.1, client_id=f"{agent_id}-feeder")
        stack.callback(feeder.close)
        incarnations: list[AgentProcess] = []

        def start(wait: bool = True) -> AgentProcess:
            agent = AgentProcess(config)
            stack.callback(agent.close)
            incarnations.append(agent)
            agent.start()
            if wait:
                agent.wait_log(r"raw input connected")
            return agent

        def alerts(agent: AgentProcess, count: int, first: int) -> None:
            for k in range(count // 2):
                sensor = ids[(first + k) % len(ids)]
                line = len(agent.lines)
                feeder.raise_high(sensor, blocks=2)
                agent.wait_log(rf"alert seq=\d+ {sensor} \S+ high level 1 -> 0 ", since=line)

        first = start()
        alerts(first, alerts_each, 0)
        second = start(wait=False)
        assert second.proc is not None
        second_code = second.proc.wait(WAIT_S)
        refused = second.log_text()
        alerts(first, alerts_each, alerts_each // 2)   # the first one goes on undisturbed
        first.kill()
        killed = time.monotonic()
        third = start()
        resume_s = time.monotonic() - killed
        alerts(third, alerts_each, 0)
        status = wait_status(collector, agent_id, lambda st: st.get("backlog", 1) == 0 and
                             st.get("alerts", 0) >= alerts_each, "the restarted agent to drain",
                             after_ms=now_ms() - 1000)
        assert third.terminate() == 0
        with Outbox(workdir / "state" / OUTBOX_FILE, max_messages=1_000_000) as box:
            last = box.last_alert_seq
        tally = Tally.of(last, centre.wait_stored(ids, last), tapped_alerts(collector, agent_id))
        pid = first.proc.pid if first.proc is not None else -1
        outcome = FaultOutcome(
            "second agent on the same state directory",
            f"{sensors} sensors x 10 blocks/s, an alert every ~0.3 s; a second agent started on the running "
            f"one's state_dir (exit {second_code}, {'naming' if f'pid {pid}' in refused else 'NOT naming'} the "
            f"first one's pid), then kill -9 of the first and a restart on its lock", tally.lost_text(), tally.duplicated, resume_s, COMMAND,
            offered=f"{tally.offered} alerts", stored=str(tally.stored), dead_lettered="0")
        return StateFaultRun(outcome, {
            "second_code": second_code, "refused": refused, "first_pid": pid, "tally": tally,
            "status": status, "seqs": sorted({a.seq for a in tapped_alerts(collector, agent_id)}),
        }, "\n".join(a.log_text() for a in incarnations))


def offline_flips(collector: Collector, agent: str, since: int = 0) -> int:
    """`offline` statuses of `agent` (its will, published when the broker drops it) received
    after the first `since` statuses."""
    with collector._changed:  # noqa: SLF001
        return sum(1 for s in collector.status[since:] if s.agent == agent and s.state == "offline")


def client_id_takeover(workdir: Path, broker: MosquittoServer, store: VictoriaMetricsServer, *,
                       sensors: int = 5, run_s: float = 30.0, reconnect_max_s: float = 3.0) -> StateFaultRun:
    """Two agents with the same agent id, so the same client ids (an SD card cloned into a second
    cabinet, its sensors edited, agent.id left as it was), on one broker: each must name the
    takeover in its log, stop the reconnect loop that flaps the retained status (uplink and raw
    input move to client ids of their own), keep its sensor data and get every alert it raised stored."""
    agent_id = "clone"
    cabinets = {name: [f"CL{name}-{i:02d}" for i in range(sensors)] for name in ("A", "B")}
    with contextlib.ExitStack() as stack:
        centre = stack.enter_context(Centre(workdir, broker, store, gateway_id=f"gw-{agent_id}"))
        collector = Collector(broker.port, client_id=f"{agent_id}-collector")
        stack.callback(collector.close)
        feeder = RawFeeder(broker.port, cabinets["A"] + cabinets["B"], period_s=0.1,
                           client_id=f"{agent_id}-feeder")
        stack.callback(feeder.close)
        agents = {}
        for name, ids in cabinets.items():
            config = write_config(workdir / f"{name}.toml", agent=agent_id, broker_url=broker.url,
                                  state_dir=workdir / name, agent_extra="window_s = 1.0",
                                  mqtt_extra=f"reconnect_max_s = {reconnect_max_s}",
                                  sensors=[{"id": s, "site": "basin", **SIMPLE_RULES} for s in ids])
            agents[name] = AgentProcess(config)
            stack.callback(agents[name].close)
        started_ms = now_ms()
        for agent in agents.values():
            agent.start()
        for agent in agents.values():
            agent.wait_log(r"raw input connected")
        named_at: dict[str, float] = {}
        named_index: dict[str, int] = {}
        deadline = time.monotonic() + run_s
        k = 0
        while time.monotonic() < deadline:   # an alert every 0.5 s in each cabinet meanwhile
            for ids in cabinets.values():
                feeder.raise_high(ids[k % len(ids)], blocks=2)
            k += 1
            for name, agent in agents.items():
                if name not in named_at and "another client is connecting with the same client id" in agent.log_text():
                    named_at[name] = time.monotonic()
                    with collector._changed:  # noqa: SLF001
                        named_index[name] = len(collector.status)
            time.sleep(0.5)  # the load's pace, not a synchronisation
        assert named_at, "neither agent named the takeover:\n" + agents["A"].log_text()[-3000:]
        first_named = min(named_at.values())
        calm_from = max(named_at.values())   # from when both (or the only one) saw it
        flips_after = offline_flips(collector, agent_id, max(named_index.values()))
        calm_s = deadline - calm_from
        flips_total = offline_flips(collector, agent_id)
        status = latest_status(collector, agent_id)
        with collector._changed:  # noqa: SLF001
            fault_shown = any("client_id_in_use" in s.extra.get("faults", []) for s in collector.status
                              if s.agent == agent_id)
            statuses = [(s.state, s.ts - started_ms, s.extra.get("client_id"), s.extra.get("uptime_s"))
                        for s in collector.status if s.agent == agent_id]
        # let each drain: at most two holds until every alert it logged is stored
        offered: dict[str, tuple[str, str, int]] = {}
        for agent in agents.values():
            offered.update(logged_alerts(agent.log_text()))
        points = centre.wait_stored(cabinets["A"] + cabinets["B"], len(offered),
                                    timeout_s=4 * reconnect_max_s + WAIT_S)
        logs = {name: agent.log_text() for name, agent in agents.items()}
        for agent in agents.values():
            assert agent.terminate() == 0
        offered = {}
        for text in logs.values():
            offered.update(logged_alerts(text))
        missing, shared, repeated = stored_tally(offered, points)
        raw_switched = sum("raw input: client id" in text for text in logs.values())
        switched = sum(text.count("Reconnecting as") + text.count("reconnecting as") for text in logs.values())
        outcome = FaultOutcome(
            "client-id takeover (cloned SD card in a second cabinet)",
            f"2 agents with one agent.id on one broker, {sensors} sensors each x 10 blocks/s, an alert every "
            f"0.5 s in each, {run_s:.0f} s; named in the log after {first_named - deadline + run_s:.1f} s; "
            f"retained status went offline {flips_total} times, {flips_after} in the {calm_s:.0f} s after "
            f"that; {switched} connection(s) moved to an id of their own", lost_text(len(missing), shared),
            repeated, None, COMMAND, offered=f"{len(offered)} alerts",
            stored=str(len(offered) - len(missing) - shared), dead_lettered="0")
        return StateFaultRun(outcome, {
            "named": named_at, "flips_after": flips_after, "flips_total": flips_total, "calm_s": calm_s,
            "status": status, "missing": missing, "repeated": repeated, "raw_switched": raw_switched,
            "shared": shared,
            "switched": switched, "statuses": statuses, "fault_shown": fault_shown,
            "offered": offered, "logs": logs,
        }, "\n".join(logs.values()))


def unknown_sensor_flood(workdir: Path, broker: MosquittoServer, store: VictoriaMetricsServer, *,
                         unknown: int = 50_000, sensors: int = 5) -> StateFaultRun:
    """RawBlocks for `unknown` distinct sensor ids the agent does not know (a misconfigured network
    server, or someone probing), while its own sensors raise alerts: each id is counted and
    dropped, the warnings about them stay a bounded number of lines, the memory they take stays
    bounded, and every real alert is stored."""
    agent_id = "flood"
    ids = [f"FL-{i:02d}" for i in range(sensors)]
    with contextlib.ExitStack() as stack:
        centre = stack.enter_context(Centre(workdir, broker, store, gateway_id=f"gw-{agent_id}"))
        config = write_config(workdir / "agent.toml", agent=agent_id, broker_url=broker.url,
                              state_dir=workdir / "state", agent_extra="window_s = 1.0",
                              sensors=[{"id": s, "site": "basin", **SIMPLE_RULES} for s in ids])
        collector = Collector(broker.port, client_id=f"{agent_id}-collector")
        stack.callback(collector.close)
        feeder = RawFeeder(broker.port, ids, period_s=0.1, client_id=f"{agent_id}-feeder")
        stack.callback(feeder.close)
        agent = AgentProcess(config)
        stack.callback(agent.close)
        agent.start().wait_log(r"raw input connected")
        assert agent.proc is not None
        wait_status(collector, agent_id, lambda st: st.get("samples", 0) > 50, "samples flowing")
        rss_before = memory_mib(agent.proc.pid, ("VmRSS",))["VmRSS"]
        flooder = Publisher(broker.port, client_id=f"{agent_id}-flooder")
        stack.callback(flooder.close)
        payload = RawBlock("x", np.array([NORMAL]), seq=0)
        started = time.monotonic()
        k = 0
        for i in range(unknown):
            sensor = f"NOPE-{i:07d}"
            flooder.client.publish(f"{PREFIX}/raw/{sensor}",
                                   RawBlock(sensor, payload.values, seq=0).encode(), qos=0)
            if i % 500 == 0:
                feeder.raise_high(ids[k % len(ids)], blocks=2)
                k += 1
                time.sleep(0.01)  # pacing the load (QoS 0 into the broker), not a synchronisation
        status = wait_status(collector, agent_id, lambda st: st.get("unknown_sensor", 0) >= unknown * 0.99,
                             "the agent to count the unknown ids", timeout_s=WAIT_S * 2)
        flood_s = time.monotonic() - started
        rss_after = memory_mib(agent.proc.pid, ("VmRSS",))["VmRSS"]
        wait_status(collector, agent_id, lambda st: st.get("backlog", 1) == 0, "the outbox to drain")
        assert agent.terminate() == 0
        log = agent.log_text()
        lines = sum(1 for line in log.splitlines() if "which is not an MQTT sensor of this agent" in line)
        offered = logged_alerts(log)
        points = centre.wait_stored(ids, len(set(offered.values())))
        missing, shared, repeated = stored_tally(offered, points)
        outcome = FaultOutcome(
            "RawBlocks for unknown sensor ids (flood)",
            f"{unknown:,} distinct unknown ids in {flood_s:.0f} s beside {sensors} real sensors x 10 blocks/s "
            f"raising alerts; {int(status.get('unknown_sensor', 0)):,} counted, {lines} warning lines, agent "
            f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB", lost_text(len(missing), shared),
            repeated, None, COMMAND, offered=f"{len(offered)} alerts",
            stored=str(len(offered) - len(missing) - shared), dead_lettered="0")
        return StateFaultRun(outcome, {
            "lines": lines, "rss_before": rss_before, "rss_after": rss_after, "status": status,
            "missing": missing, "repeated": repeated, "offered": offered, "shared": shared,
        }, log)


# ---------------------------------------------------------------- a recorded input


@dataclass(frozen=True)
class Recording:
    """Blocks of sender-stamped samples, one list per step, all sensors in every step."""

    sensors: tuple[str, ...]
    steps: tuple[tuple[tuple[str, tuple[float, ...], int], ...], ...]  # (sensor, values, t0)

    @classmethod
    def make(cls, sensors: Sequence[str], *, steps: int, per_block: int = 5, dt_ms: int = 1000,
             seed: int = 13) -> Recording:
        """A random walk around NORMAL per sensor with excursions of 1-8 samples to 62-95 (some
        shorter than the debounce), stamped from 2 h ago in 1 s steps."""
        rng = np.random.default_rng(seed)
        t0 = now_ms() - 2 * 3600_000
        series = {}
        n = steps * per_block
        for sensor in sensors:
            values = NORMAL + np.cumsum(rng.normal(0.0, 0.3, n)).clip(-10, 10)
            at = 0
            while at < n:
                at += int(rng.integers(10, 40))
                length = int(rng.integers(1, 9))
                values[at:at + length] = rng.uniform(62.0, 95.0)
                at += length
            series[sensor] = values
        out = []
        for step in range(steps):
            lo = step * per_block
            out.append(tuple((s, tuple(float(v) for v in series[s][lo:lo + per_block]), t0 + lo * dt_ms)
                             for s in sensors))
        return cls(tuple(sensors), tuple(out))

    def renamed(self, names: Sequence[str]) -> Recording:
        """The same samples under other sensor ids."""
        rename = dict(zip(self.sensors, names, strict=True))
        return Recording(tuple(names), tuple(tuple((rename[s], v, t) for s, v, t in step)
                                             for step in self.steps))

    def samples(self, steps: range) -> int:
        return sum(len(v) for i in steps for _, v, _ in self.steps[i])


def replay(publisher: Publisher, recording: Recording, steps: range, *, last: str | None = None) -> None:
    """Publish these steps (QoS 1, each block PUBACKed before the next); `last`: that sensor's
    block goes last in its step (per sensor the order of samples is the same)."""
    for i in steps:
        step = sorted(recording.steps[i], key=lambda block: block[0] == last)
        for sensor, values, t0 in step:
            publisher.block(sensor, list(values), t0=t0, dt=1000.0, seq=i)


def events(alerts: Sequence[Alert], sensors: Sequence[str]) -> Counter[tuple[Any, ...]]:
    """Alerts as (sensor index, rule, prev, level, ts, value), so two runs under other names
    compare. Left out: seq (it follows how samples were batched), and the sample of a spike's
    raise, which `edge_agent.kernels.spike` reports at the spike's first sample when that is in
    the same batch and else at the sample that came back (as its own restart test allows)."""
    index = {s: i for i, s in enumerate(sensors)}
    return Counter((index[a.sensor], a.rule, a.prev, a.level) + ((0, 0.0) if a.rule == "spike" and a.level
                                                                 else (a.ts, round(a.value, 9)))
                   for a in {a.id: a for a in alerts}.values())


def wait_settled(collector: Collector, agent: str, after_ms: int, timeout_s: float = WAIT_S) -> dict[str, Any]:
    """The agent's status once two statuses sent after `after_ms` show the same samples count and
    an empty outbox: what reached it is processed and sent."""
    seen: list[dict[str, Any]] = []

    def settled(c: Collector) -> bool:
        with c._changed:  # noqa: SLF001
            rows = [dict(s.extra) for s in c.status if s.agent == agent and s.state == "online" and s.ts > after_ms]
        seen[:] = rows[-2:]
        return len(rows) >= 2 and rows[-1].get("samples") == rows[-2].get("samples") \
            and rows[-1].get("backlog") == 0
    assert collector.wait_for(settled, timeout_s), f"{agent} did not settle: {seen}"
    return seen[-1]


# ---------------------------------------------------------------- kill -9 mid-stream


def kill9_replay(workdir: Path, broker: MosquittoServer, store: VictoriaMetricsServer, *,
                 sensors: int = 8, steps: int = 120, seed: int = 13) -> StateFaultRun:
    """A recorded input replayed into one agent without interruption and into another that is
    `kill -9`ed right after storing an alert mid-stream, restarted on the same state, and given
    the rest of the replay: both must raise the same alerts (nothing was sent while it was down).
    Then a second kill at a random point while more input flows: samples sent while it is down
    are lost, as they would be, but every (sensor, rule)'s alerts must still chain (no repeated
    raise, no lost clear), seq stays contiguous, and the store holds each alert once."""
    base = Recording.make([f"K{i:02d}" for i in range(sensors)], steps=steps, seed=seed)
    runs = {name: base.renamed([f"{name.upper()}-{s}" for s in base.sensors]) for name in ("k9a", "k9b")}
    with contextlib.ExitStack() as stack:
        centre = stack.enter_context(Centre(workdir, broker, store, gateway_id="k9-gateway"))
        collector = Collector(broker.port, client_id="k9-collector")
        stack.callback(collector.close)
        publisher = Publisher(broker.port, client_id="k9-publisher")
        stack.callback(publisher.close)
        configs = {name: write_config(
            workdir / f"{name}.toml", agent=name, broker_url=broker.url, state_dir=workdir / name,
            agent_extra="state_save_s = 3600",  # only what goes with alerts and summaries counts
            sensors=[{"id": s, "site": "basin", **REPLAY_RULES} for s in runs[name].sensors])
            for name in runs}

        started: dict[str, int] = {}

        def start(name: str) -> AgentProcess:
            agent = AgentProcess(configs[name])
            stack.callback(agent.close)
            started[name] = now_ms()
            agent.start().wait_log(r"raw input connected")
            return agent

        a = start("k9a")  # the uninterrupted run
        replay(publisher, runs["k9a"], range(steps))
        wait_status(collector, "k9a", lambda st: st.get("samples", 0) >= base.samples(range(steps)),
                    "k9a to process the replay")
        assert a.terminate() == 0
        reference = events(tapped_alerts(collector, "k9a"), runs["k9a"].sensors)
        assert sum(reference.values()) >= 10, f"the recording raised too little to test: {reference}"
        # the interrupted run, killed just after storing the alert nearest the middle of the replay
        timed = sorted((e for e in reference if e[4]), key=lambda e: e[4])
        middle = timed[len(timed) // 2]
        sensor_b = runs["k9b"].sensors[middle[0]]
        cut = next(i for i, step in enumerate(runs["k9b"].steps) for s, v, t0 in step
                   if s == sensor_b and t0 <= middle[4] < t0 + 1000 * len(v))
        b = start("k9b")
        replay(publisher, runs["k9b"], range(cut))
        replay(publisher, runs["k9b"], range(cut, cut + 1), last=sensor_b)
        # published means stored with the state that made it (the uplink sends only what is stored)
        assert collector.wait_for(lambda c: any(
            (a.sensor, a.rule, a.prev, a.level, a.ts) == (sensor_b, *middle[1:5]) for a in c.alerts), WAIT_S), \
            f"k9b never sent {middle}"
        b.kill()
        killed = time.monotonic()
        b = start("k9b")
        resume_s = time.monotonic() - killed
        replay(publisher, runs["k9b"], range(cut + 1, steps))
        wait_status(collector, "k9b", lambda st: st.get("samples", 0) >= base.samples(range(cut + 1, steps)),
                    "k9b to process the rest of the replay", after_ms=started["k9b"])
        resumed = events(tapped_alerts(collector, "k9b"), runs["k9b"].sensors)
        # a second kill at a random point while more input flows
        more = Recording.make(base.sensors, steps=steps, seed=seed + 1).renamed(runs["k9b"].sensors)
        more = Recording(more.sensors, tuple(tuple((s, v, t + steps * 5000) for s, v, t in step)
                                             for step in more.steps))
        kill_after = random.Random(seed).randrange(steps // 4, 3 * steps // 4)
        sender = threading.Thread(target=replay, args=(publisher, more, range(steps)), daemon=True)
        sender.start()
        wait_status(collector, "k9b", lambda st: st.get("samples", 0) >= base.samples(range(cut + 1, steps))
                    + more.samples(range(kill_after)), "k9b to take part of the second replay",
                    after_ms=started["k9b"])
        b.kill()
        b = start("k9b")
        sender.join(WAIT_S)
        wait_settled(collector, "k9b", now_ms())
        assert b.terminate() == 0
        alerts_b = tapped_alerts(collector, "k9b")
        with Outbox(workdir / "k9b" / OUTBOX_FILE, max_messages=1_000_000) as box:
            last = box.last_alert_seq
        tally = Tally.of(last, centre.wait_stored(runs["k9b"].sensors, last), alerts_b)
        same = resumed == reference
        chains = level_chains_ok(alerts_b)
        seqs = sorted({a.id: a.seq for a in alerts_b}.values())
        problems = ([] if same else ["differs from the uninterrupted run"]) + \
            ([f"{len(chains)} broken raise/clear chains"] if chains else []) + \
            ([] if seqs == list(range(1, last + 1)) else ["seq not contiguous"])
        outcome = FaultOutcome(
            "agent kill -9 mid-stream, restarted on its state",
            f"{sensors} sensors x {steps * 5} samples replayed (4 levels, debounce 3, rate/anomaly/drift "
            f"on): killed after an alert mid-replay (same {sum(reference.values())} alerts as the "
            f"uninterrupted run: {'yes' if same else 'NO'}; spike raises compared without their sample, "
            f"see kernels/spike.py), then at a random point of a second replay",
            "; ".join([tally.lost_text(), *problems]), tally.duplicated, resume_s, COMMAND,
            offered=f"{tally.offered} alerts", stored=f"{tally.stored}", dead_lettered="0")
        return StateFaultRun(outcome, {
            "reference": reference, "resumed": resumed, "same": same, "chains": chains, "tally": tally,
            "seqs": seqs, "cut": cut, "last_seq": last,
        }, b.log_text())


# ---------------------------------------------------------------- the command


def _damage(form: str, mid_run: bool = False) -> Callable[[Path, MosquittoServer, VictoriaMetricsServer],
                                                          StateFaultRun]:
    return lambda d, b, s: outbox_damage(d, b, s, form=form, mid_run=mid_run, sensors=50, backlog_alerts=100,
                                         after_alerts=40)


#: Every scenario at its realistic size, by name.
SCENARIOS: Final[dict[str, Callable[[Path, MosquittoServer, VictoriaMetricsServer], StateFaultRun]]] = {
    "damage-zero": _damage("zero-length"),
    "damage-header": _damage("garbage header"),
    "damage-truncated": _damage("truncated"),
    "damage-page": _damage("corrupted page"),
    "damage-running": _damage("corrupted page", mid_run=True),
    "disk-full-start": lambda d, b, s: disk_full_from_start(d, b, s, sensors=50, alerts_each=40),
    "second-agent": lambda d, b, s: second_agent(d, b, s, sensors=50, alerts_each=40),
    "kill9": lambda d, b, s: kill9_replay(d, b, s, sensors=20, steps=300),
    "takeover": lambda d, b, s: client_id_takeover(d, b, s, sensors=20, run_s=150.0, reconnect_max_s=30.0),
    "unknown-flood": lambda d, b, s: unknown_sensor_flood(d, b, s, unknown=200_000),
}


def run_all(names: Sequence[str] = ()) -> list[FaultOutcome]:
    """Run the named scenarios (all by default) with their own servers; print and return the rows."""
    outcomes = []
    chosen = list(names) or [n for n in SCENARIOS if n != "disk-full-start" or os.geteuid() == 0]  # tmpfs: root
    with tempfile.TemporaryDirectory(prefix="faults-state-") as tmp, \
            MosquittoServer() as broker, VictoriaMetricsServer() as store:
        for name in chosen:
            workdir = Path(tmp) / name
            workdir.mkdir()
            result = SCENARIOS[name](workdir, broker, store)
            outcomes.append(result.outcome)
            print(result.outcome.row(time.strftime("%Y-%m-%d %H:%M", time.gmtime())), flush=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the rows in benchmarks/RESULTS.md")
    parser.add_argument("--fault", nargs="*", choices=sorted(SCENARIOS), default=[], help="only these")
    args = parser.parse_args()
    outcomes = run_all(args.fault)
    if args.write:
        write_fault_rows(outcomes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
