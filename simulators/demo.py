"""`lifeline demo`: the whole chain on one machine with no configuration.

Starts Mosquitto and VictoriaMetrics from the system on free loopback ports (temporary
directories), one agent per township of the mixed-district scenario and the gateway as child
processes, replays the scenario in real time over MQTT, serial and Modbus, and shows a live view.
At the end (duration, scenario end or Ctrl-C) it stops everything and prints a short report with
the detection score against the scenario's ground truth.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lifeline.config import MqttSettings
from lifeline.contract import LEVEL_NAMES, TIERS, decode_alert, domain_of, parse_topic
from lifeline.errors import DecodeError, LifelineError
from lifeline.jitcache import kernel_cache_dir
from lifeline.mqtt import make_client
from lifeline.progress import stage_progress
from simulators.agent_config import AgentSettings, write_agent_configs
from simulators.collect import AlertCollector, alerts_from_victoria
from simulators.runner import RunOptions, RunResult, run_scenario
from simulators.scenario import Scenario, find_scenario, load_scenario
from simulators.scoring import FAULT_RULES, ScoreReport, render_report, score
from simulators.servers import MosquittoServer, VictoriaMetricsServer, find_binary, free_port

log = logging.getLogger("lifeline.demo")

PREFIX = "lifeline/v1"
LEVEL_STYLE = {0: "green", 1: "blue", 2: "yellow", 3: "dark_orange", 4: "red"}
CHILD_STOP_S = 15.0
#: The agents' shortest silence before a `gap` fault: longer than the demo's own stop takes
#: (`STOP_WAIT_S` for the agents to finish, then their drain), shorter than the scenario's
#: dropouts (40 s), so a stopped simulator does not look like sensors dropping out.
GAP_FLOOR_S = 15.0
#: Longest the agents get to process what the stopped simulator sent before they are stopped.
STOP_WAIT_S = 8.0
#: A run stopped early does not score events that began this many seconds before the stop.
LATE_S = 10.0
#: Seconds between the progress lines printed when the output is not a terminal.
PLAIN_EVERY_S = 10.0


class DemoError(LifelineError):
    """A part of the demo chain failed; the message says which and where its log is."""


@dataclass
class Board:
    """What the live view shows, fed from the broker by `OpsWatcher` and the alert collector."""

    tier_counts: Counter[str] = field(default_factory=Counter)
    summaries: int = 0
    reading_rows: int = 0
    latest: deque[Any] = field(default_factory=lambda: deque(maxlen=8))
    lock: threading.Lock = field(default_factory=threading.Lock)


class OpsWatcher:
    """Counts what the gateway routes to each tier and the summaries agents send."""

    def __init__(self, settings: MqttSettings, board: Board) -> None:
        self.board = board
        self.settings = settings
        self.client = make_client(settings, "lifeline-demo-ops")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def start(self) -> OpsWatcher:
        self.client.connect(self.settings.host, self.settings.port)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any,
                    properties: Any) -> None:
        client.subscribe([(f"{PREFIX}/ops/+/+", 1), (f"{PREFIX}/summary/+", 0)])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(PREFIX, msg.topic)
            if topic.kind == "ops":
                alert = decode_alert(msg.payload)
                with self.board.lock:
                    self.board.tier_counts[topic.tier] += 1
                    if topic.tier == "township":  # every routed alert reaches the township tier
                        self.board.latest.appendleft(alert)
            elif topic.kind == "summary":
                rows = len(msgpack.unpackb(msg.payload).get("sensor", ()))
                with self.board.lock:
                    self.board.summaries += 1
                    self.board.reading_rows += rows
        except (DecodeError, ValueError, TypeError, AttributeError):
            pass


@dataclass
class Child:
    """A lifeline process of the demo (agent or gateway) with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise DemoError(f"{self.name} exited with code {self.proc.returncode}; log {self.log_path}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(CHILD_STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_child(name: str, args: list[str], workdir: Path) -> Child:
    """Run `lifeline ...` as a child process in its own process group (Ctrl-C is ours to pass on)."""
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lifeline.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return Child(name, proc, log_path)


def gateway_toml(broker: MosquittoServer, store: VictoriaMetricsServer, state_dir: Path) -> str:
    """The gateway's config for a local chain; its state file (registry, dead letters) in `state_dir`."""
    return (f'[mqtt]\nurl = "{broker.url}"\nprefix = "{PREFIX}"\n\n'
            f'[influx]\nurl = "{store.url}"\norg = "lifeline"\nbucket = "lifeline"\ntoken = ""\n\n'
            f'[gateway]\nid = "demo-gateway"\nstate_dir = "{state_dir}"\n')


def render(scenario: Scenario, collector: AlertCollector, board: Board, started: float,
           sim_progress: dict[str, float]) -> Group:
    """The live view: sensors by domain and health, alerts by level and tier, latest alerts, throughput."""
    records = collector.records()
    current: dict[tuple[str, str], int] = {}
    raised: Counter[int] = Counter()
    for r in records:
        current[(r.sensor, r.rule)] = r.level
        if r.level > r.prev:
            raised[r.level] += 1
    health: dict[str, str] = {}
    for (sensor, rule), level in current.items():
        if level > 0:
            state = "fault" if rule in FAULT_RULES else "alert"
            if health.get(sensor) != "alert":
                health[sensor] = state
    sensors = Table(title="Sensors by domain and health", box=box.SIMPLE_HEAD)
    for col in ("domain", "sensors", "normal", "in alert", "sensor fault"):
        sensors.add_column(col, justify="right" if col != "domain" else "left")
    by_domain: dict[str, Counter[str]] = {}
    for s in scenario.sensors:
        by_domain.setdefault(domain_of(s.sim.kind), Counter())[health.get(s.id, "normal")] += 1
    for domain, counts in sorted(by_domain.items()):
        sensors.add_row(domain, str(sum(counts.values())), str(counts["normal"]),
                        Text(str(counts["alert"]), style="bold red" if counts["alert"] else ""),
                        Text(str(counts["fault"]), style="magenta" if counts["fault"] else ""))

    levels = Table(title="Alerts raised by level, routed by tier", box=box.SIMPLE_HEAD)
    for lvl in range(1, 5):
        levels.add_column(f"{lvl} {LEVEL_NAMES[lvl]}", justify="right", style=LEVEL_STYLE[lvl])
    for tier in TIERS:
        levels.add_column(f"-> {tier}", justify="right")
    with board.lock:
        tiers = [str(board.tier_counts[t]) for t in TIERS]
        latest = list(board.latest)
        rows = board.reading_rows
    levels.add_row(*(str(raised[lvl]) for lvl in range(1, 5)), *tiers)

    recent = Table(title="Latest alerts (as routed)", box=box.SIMPLE_HEAD)
    for col in ("time", "sensor", "kind", "site", "rule", "level", "value"):
        recent.add_column(col)
    for a in latest:
        stamp = time.strftime("%H:%M:%S", time.localtime(a.ts / 1000))
        recent.add_row(stamp, a.sensor, a.kind, a.site, a.rule,
                       Text(f"{a.prev} -> {a.level}", style=LEVEL_STYLE.get(a.level, "")), f"{a.value:.4g}")

    statuses = dict(collector.statuses)
    samples = sum(int(s.get("samples", 0)) for s in statuses.values())
    online = _online(collector)
    elapsed = time.monotonic() - started
    rate = samples / elapsed if elapsed > 0 else 0.0
    line = Text.assemble(
        ("lifeline demo ", "bold"), f"{elapsed:5.0f} s  |  agents online {online}/{len(scenario.townships)}"
        f"  |  simulated {sim_progress.get('sim_s', 0):.0f}/{scenario.duration_s:.0f} s"
        f"  |  samples processed {samples:,} ({rate:,.0f}/s)  |  summary rows {rows:,}"
        f"  |  Ctrl-C to stop")
    return Group(line, sensors, levels, recent)


@contextlib.contextmanager
def _interrupts_as(stop: threading.Event) -> Iterator[list[str]]:
    """Turn the first SIGINT/SIGTERM/SIGHUP (the terminal closed) into `stop` so the orderly
    teardown below runs: the servers, in their own process group, and the agents, in their own
    sessions, would outlive a demo killed by the signal. Yields the names of the signals received.
    A second Ctrl-C raises KeyboardInterrupt: stop at once."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    received: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop_together(children: list[Child]) -> None:
    """SIGTERM every child at once, then wait for each (an agent drains for a few seconds)."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        child.stop()


def _online(collector: AlertCollector) -> int:
    return sum(1 for s in dict(collector.statuses).values() if s.get("state") == "online")


def run_demo(duration: float | None = None, *, scenario_name: str = "mixed", keep: bool = False,
             console: Console | None = None) -> int:
    """Run the demo; returns the process exit code (0 when the chain ran and reported).

    Ctrl-C (or SIGTERM) stops the simulated district first, lets the agents finish what they
    received and the gateway store it, reports from the store, and only then stops the broker
    and the store; the report says the run was stopped early. It exits 0, as the agent and the
    gateway do on SIGINT. A second Ctrl-C stops everything at once, without the report.
    """
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # a log file gets whole lines and tables
    find_binary("mosquitto", "/usr/sbin/mosquitto")
    find_binary("victoria-metrics", "/usr/bin/victoria-metrics")
    scenario = load_scenario(find_scenario(scenario_name))
    workdir = Path(tempfile.mkdtemp(prefix="lifeline-demo-"))
    stop = threading.Event()
    children: list[Child] = []
    result: dict[str, Any] = {}
    sim_progress: dict[str, float] = {}
    plain = not console.is_terminal  # a log file, journald, CI: one line per stage, no live view
    try:
        with _interrupts_as(stop) as interrupted, contextlib.ExitStack() as stack:
            console.print(f"[bold]lifeline demo[/]: scenario [cyan]{scenario.name}[/] "
                          f"({len(scenario.sensors)} sensors, {len(scenario.townships)} townships); "
                          f"work directory {workdir}", soft_wrap=True)
            broker = stack.enter_context(MosquittoServer(workdir=_sub(workdir, "broker")))
            store = stack.enter_context(VictoriaMetricsServer(workdir=_sub(workdir, "store")))
            console.print(f"  servers up: broker {broker.url}, store {store.url} (InfluxDB v2 write API)",
                          soft_wrap=True)
            _warm_kernels(console)
            settings = MqttSettings(url=broker.url, prefix=PREFIX)
            agent_settings = AgentSettings(
                mqtt_url=broker.url, prefix=PREFIX, state_dir=workdir / "state", run_dir=workdir / "run",
                agent_keys={"window_s": 10.0, "status_interval_s": 2.0, "gap_floor_s": GAP_FLOOR_S})
            configs = write_agent_configs(scenario, workdir / "config", agent_settings)
            gw_config = workdir / "config" / "gateway.toml"
            gw_config.write_text(gateway_toml(broker, store, workdir / "gateway-state"))
            board = Board()
            collector = stack.enter_context(AlertCollector(settings, client_id="lifeline-demo-collect"))
            watcher = OpsWatcher(settings, board).start()
            stack.callback(watcher.stop)
            children.append(start_child("gateway", ["gateway", "--config", str(gw_config)], workdir))
            for path in configs:
                children.append(start_child(path.stem, ["agent", "--config", str(path)], workdir))
            console.print(f"  started the gateway and {len(configs)} agent(s); logs in {workdir}",
                          soft_wrap=True)
            from console.demo import start_demo_console

            ops = start_demo_console(workdir / "console", port=free_port(), broker_url=broker.url,
                                     store_url=store.url, prefix=PREFIX, scenario=scenario)
            stack.callback(ops.stop)
            console.print(f"  ops console: [bold]{ops.url}[/] log in as " + "; ".join(
                f"[cyan]{user}[/] / [cyan]{password}[/] ({what})" for user, password, what in ops.users),
                soft_wrap=True)

            def simulate() -> None:
                def progress(p: Any) -> None:
                    sim_progress["sim_s"] = p.sim_s

                try:
                    result["run"] = run_scenario(
                        scenario, RunOptions(mqtt=settings, speed=1.0, duration_s=duration,
                                             run_dir=workdir / "run", client_id="lifeline-demo-sim"),
                        on_progress=progress, stop=stop)
                except Exception as exc:  # reported on the main thread, which owns the teardown
                    result["error"] = exc
                finally:
                    stop.set()

            sim = threading.Thread(target=simulate, name="demo-simulator", daemon=True)
            sim.start()
            started = time.monotonic()
            if plain:
                _follow_plainly(console, scenario, collector, children, stop, started, sim_progress)
            else:
                with Live(render(scenario, collector, board, started, sim_progress), console=console,
                          refresh_per_second=2, transient=False) as live:
                    while not stop.wait(0.5):
                        for child in children:
                            child.check_alive()
                        live.update(render(scenario, collector, board, started, sim_progress))
                    live.update(render(scenario, collector, board, started, sim_progress))
            early = ", ".join(interrupted)
            console.print(("stopping early (" + early + "): " if early else "stopping: ")
                          + "the simulated district first, then the agents once they have processed "
                          "what it sent, then the gateway once it has stored it"
                          + (" (Ctrl-C again to stop at once, without a report)" if early else ""),
                          soft_wrap=True)
            sim.join(30)
            if "error" in result:
                raise DemoError(f"the simulator failed: {result['error']}") from result["error"]
            agent_ids = [t.agent for t in scenario.townships]
            run: RunResult | None = result.get("run")
            # Stop the agents as soon as they are done, before the silence of the stopped
            # simulator looks to them like sensors dropping out (`gap`).
            collector.wait_processed(agent_ids, run.agent_samples if run else 0, timeout_s=STOP_WAIT_S,
                                     settle_s=0.3, quiet_s=3.0, check=children[0].check_alive)
            final_samples, _ = collector.processed(agent_ids)
            _stop_together(children[1:])
            stored = _stored_alerts(store, collector, children[0])
            children[0].stop()
            _report(console, scenario, collector, board, run, final_samples, stored, store, workdir, keep,
                    stopped_early=early)
        return 0
    finally:
        _stop_together(children)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _follow_plainly(console: Console, scenario: Scenario, collector: AlertCollector, children: list[Child],
                    stop: threading.Event, started: float, sim_progress: dict[str, float]) -> None:
    """Without a terminal: a line when the agents come online, then one every `PLAIN_EVERY_S`."""
    online, next_line = -1, started + PLAIN_EVERY_S
    while not stop.wait(0.5):
        for child in children:
            child.check_alive()
        now_online = _online(collector)
        if now_online != online and now_online:
            online = now_online
            console.print(f"  agents online {online}/{len(scenario.townships)}")
        if time.monotonic() >= next_line:
            next_line += PLAIN_EVERY_S
            samples = sum(int(s.get("samples", 0)) for s in dict(collector.statuses).values())
            console.print(f"  {time.monotonic() - started:.0f} s: simulated "
                          f"{sim_progress.get('sim_s', 0):.0f}/{scenario.duration_s:.0f} s, samples "
                          f"processed {samples:,}, alerts {len(collector.alerts):,}")


def _sub(workdir: Path, name: str) -> Path:
    path = workdir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _warm_kernels(console: Console) -> None:
    """Load (on a cold cache: compile) the detection kernels once, so the agents start at once."""
    from edge_agent import precompile_kernels

    with stage_progress("loading the detection kernels", console=console) as on_stage:
        report = precompile_kernels(on_stage)
    console.print(f"  kernels ready in {report.seconds:.1f} s"
                  + (f" (compiled on a cold cache {kernel_cache_dir()}; cached from now on)" if report.cold
                     else " (from the cache)"), soft_wrap=True)


def _stored_alerts(store: VictoriaMetricsServer, collector: AlertCollector, gateway: Child) -> int:
    """Wait (bounded) until the store holds the alerts the agents sent; returns how many it holds."""
    wanted = len(collector.alerts)
    deadline = time.monotonic() + 15
    held = 0
    while True:
        try:
            held = len(alerts_from_victoria(store.url))
        except LifelineError:
            held = 0
        if held >= wanted or time.monotonic() > deadline or gateway.proc.poll() is not None:
            return held
        time.sleep(0.5)  # the store has no change notification: poll it, bounded


def _report(console: Console, scenario: Scenario, collector: AlertCollector, board: Board,
            run: RunResult | None, samples: int, stored: int, store: VictoriaMetricsServer,
            workdir: Path, keep: bool, *, stopped_early: str = "") -> None:
    """The short report printed at the end; a run stopped early says so and is scored as far as it got."""
    records = collector.records()
    after_end: Counter[str] = Counter()
    if run is not None:  # sensors fall silent when the simulator stops: their `gap` faults are not news
        after_end = Counter(r.rule for r in records if r.ts > run.truth.t1_ms + 1000)
        records = [r for r in records if r.ts <= run.truth.t1_ms + 1000]
    raises = [r for r in records if r.level > r.prev]
    by_level = Counter(r.level for r in raises)
    with board.lock:
        tiers = dict(board.tier_counts)
        rows = board.reading_rows
    console.rule("[bold]lifeline demo report")
    simulated = run.report.sim_s if run else 0.0
    if stopped_early:
        console.print(f"[bold yellow]stopped early[/] ({stopped_early}) after {simulated:.0f} of "
                      f"{scenario.duration_s:.0f} s simulated: the figures cover that part of the run, "
                      f"and events that began in its last {LATE_S:.0f} s are not scored", soft_wrap=True)
    console.print(f"simulated {simulated:.0f} s of district [cyan]{scenario.district}[/]: "
                  f"{len(scenario.sensors)} sensors, samples processed by the agents: {samples:,}")
    console.print("alerts raised by level: " + ", ".join(
        f"{lvl} {LEVEL_NAMES[lvl]}: {by_level.get(lvl, 0)}" for lvl in range(1, 5))
        + f"; cleared: {sum(1 for r in records if r.level == 0)}"
        + (f" ({after_end.total()} alert(s) after the simulation stopped not counted: "
           + ", ".join(f"{rule} {n}" for rule, n in after_end.most_common()) + ")" if after_end else ""))
    console.print("alerts routed by tier: " + ", ".join(f"{t}: {tiers.get(t, 0)}" for t in TIERS))
    if run is not None:
        cut = run.truth.t1_ms - round(LATE_S * 1000) if stopped_early else None
        report: ScoreReport = score(run.truth, records, cut_ms=cut)
        render_report(report, console)
        if stopped_early:
            console.print("(a run stopped early: the goals above are measured on part of the scenario, "
                          "not a verdict on detection)")
    console.print(f"store: {stored} alert points and {rows} summary rows written to {store.url} "
                  "(measurements `alert` and `reading`, InfluxDB line protocol; read back with "
                  f"{store.url}/api/v1/export?match[]={{__name__=~\"alert_.*\"}})", soft_wrap=True)
    if keep:
        console.print(f"kept: data, configs and logs in {workdir} (servers stopped)")
    else:
        console.print("the store and broker ran in a temporary directory, now removed "
                      "(use --keep to keep it)")
