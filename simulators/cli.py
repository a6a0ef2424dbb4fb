"""`lifeline simulate`: run scenarios, load-test, write matching agent configs, score detection."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Literal, NoReturn

import click
from rich.console import Console
from rich.table import Table

from lifeline.config import MqttSettings
from lifeline.errors import LifelineError
from simulators.scenario import (
    Scenario,
    builtin_scenarios,
    find_scenario,
    load_scenario,
    parse_start,
    scenario_summary,
    synthetic_scenario,
)

DEFAULT_RUN_DIR = Path("/tmp/lifeline-sim")


def _fail(error: LifelineError | str, code: int = 2) -> NoReturn:
    click.echo(f"lifeline simulate: error: {error}", err=True)
    sys.exit(code)


def _scenario(name: str, transport: str | None) -> Scenario:
    from simulators.runner import transport_of

    try:
        scenario = load_scenario(find_scenario(name))
    except LifelineError as exc:
        _fail(exc)
    t = transport_of(transport)
    return scenario.with_transport(t) if t is not None else scenario


def _mqtt(url: str | None, prefix: str | None, scenario: Scenario | None = None) -> MqttSettings:
    try:
        return MqttSettings(url=url or (scenario.mqtt_url if scenario else "mqtt://127.0.0.1:1883"),
                            prefix=prefix or (scenario.prefix if scenario else "lifeline/v1"))
    except ValueError as exc:
        _fail(f"--url/--prefix: {exc}")


url_option = click.option("--url", default=None, help="Broker URL (default: the scenario's, else mqtt://127.0.0.1:1883).")
prefix_option = click.option("--prefix", default=None, help="Topic prefix (default: the scenario's, else lifeline/v1).")
run_dir_option = click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
                              default=DEFAULT_RUN_DIR, show_default=True,
                              help="Where the virtual serial and Modbus lines are linked.")
transport_option = click.option("--transport", type=click.Choice(["mqtt", "serial", "modbus"]), default=None,
                                help="Send every sensor over this transport instead of the scenario's.")


@click.group()
def simulate() -> None:
    """Simulated districts: realistic signals, events and faults, load, and scoring against ground truth.

    A typical quality run: `write-config` for the agents, start them, `run --fast --collect alerts.json`,
    then `score --truth ... --alerts alerts.json`.
    """


@simulate.command("list")
def list_scenarios() -> None:
    """List the built-in scenarios."""
    table = Table(title="Built-in scenarios")
    for column in ("name", "townships", "sensors", "events", "faults", "simulated", "description"):
        table.add_column(column)
    for name, path in builtin_scenarios().items():
        try:
            scenario = load_scenario(path)
        except LifelineError as exc:
            table.add_row(name, "-", "-", "-", "-", "-", f"[red]{exc}")
            continue
        s = scenario_summary(scenario)
        table.add_row(name, str(s["townships"]), str(s["sensors"]), str(s["events"]), str(s["faults"]),
                      _duration(scenario.duration_s), scenario.description)
    Console().print(table)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


@simulate.command("write-config")
@click.argument("scenario")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the {agent}.toml files.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/lib/lifeline"), show_default=True,
              help="Base of the agents' state directories (one subdirectory per agent).")
@url_option
@prefix_option
@run_dir_option
@transport_option
def write_config(scenario: str, out_dir: Path, state_dir: Path, url: str | None, prefix: str | None,
                 run_dir: Path, transport: str | None) -> None:
    """Write the agent config of every township of SCENARIO (a built-in name or a TOML file)."""
    from simulators.agent_config import AgentSettings, write_agent_configs

    sc = _scenario(scenario, transport)
    mqtt = _mqtt(url, prefix, sc)
    try:
        paths = write_agent_configs(sc, out_dir, AgentSettings(mqtt.url, mqtt.prefix, state_dir, run_dir))
    except LifelineError as exc:
        _fail(exc)
    for path in paths:
        click.echo(str(path))


@simulate.command("run")
@click.argument("scenario")
@url_option
@prefix_option
@click.option("--realtime/--fast", default=True, show_default=True,
              help="Pace samples in real time (times --speed), or send them as fast as possible.")
@click.option("--speed", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Simulated seconds per wall second when paced.")
@click.option("--duration", type=click.FloatRange(min=0.001), default=None,
              help="Simulated seconds to run (default: the scenario's).")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Stop after this many samples.")
@click.option("--start", default=None, help='Time of sample 0: "now" or ISO 8601 with offset (default: the scenario\'s).')
@click.option("--qos", type=click.IntRange(0, 1), default=1, show_default=True, help="QoS of the RawBlocks.")
@click.option("--tick-s", type=click.FloatRange(min=0.001), default=None,
              help="Simulated seconds per RawBlock (default: the scenario's); larger is faster with --fast.")
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Ground-truth JSON to write (default: RUN_DIR/SCENARIO-truth.json).")
@click.option("--collect", "alerts_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also collect the agents' alerts from the broker into this JSON file.")
@click.option("--drain-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="With --collect: longest wait after the run for the agents to finish.")
@click.option("--progress/--no-progress", default=None, help="Progress display (default: on long runs in a terminal).")
@run_dir_option
@transport_option
def run(scenario: str, url: str | None, prefix: str | None, realtime: bool, speed: float,
        duration: float | None, max_samples: int | None, start: str | None, qos: int, tick_s: float | None,
        truth_path: Path | None, alerts_path: Path | None, drain_s: float, progress: bool | None,
        run_dir: Path, transport: str | None) -> None:
    """Replay SCENARIO to the agents over MQTT, virtual serial nodes or Modbus units; write its ground truth.

    Faster than real time (--fast, or --speed above 1) the agents' alerts still line up with the
    truth for MQTT sensors (RawBlocks carry the simulated time); serial and Modbus samples are
    stamped by the agent on receipt, so score them only from real-time runs.
    """
    from simulators.collect import AlertCollector, write_alerts
    from simulators.runner import PROGRESS_AFTER_S, RunOptions, progress_display, run_scenario
    from simulators.truth import write_truth

    sc = _scenario(scenario, transport)
    mqtt = _mqtt(url, prefix, sc)
    if start is not None:
        try:
            parse_start(start)
        except ValueError as exc:
            _fail(f"--start: {exc}")
    pace = speed if realtime else None
    options = RunOptions(mqtt=mqtt, speed=pace, duration_s=duration, max_samples=max_samples,
                         qos=1 if qos else 0, run_dir=run_dir, start=start, tick_s=tick_s)
    sim_s = duration or sc.duration_s
    console = Console(stderr=True)
    show = progress if progress is not None else (
        console.is_terminal and (pace is None or sim_s / pace > PROGRESS_AFTER_S))
    summary = scenario_summary(sc)
    console.print(f"scenario {sc.name}: {summary['sensors']} sensors in {summary['townships']} township(s), "
                  f"{summary['events']} events, {summary['faults']} faults, {_duration(sim_s)} simulated, "
                  + ("as fast as possible" if pace is None else f"at {pace:g}x real time"))
    stop = threading.Event()
    collector = None
    try:
        if alerts_path is not None:
            collector = AlertCollector(mqtt, client_id=f"lifeline-sim-collect-{sc.name}").start()
        with progress_display(sim_s, enabled=show, console=console, title=sc.name) as hook:
            result = run_scenario(sc, options, on_progress=hook, stop=stop)
    except KeyboardInterrupt:
        stop.set()
        _fail("interrupted")
    except LifelineError as exc:
        if collector is not None:
            collector.stop()
        _fail(exc)
    path = write_truth(result.truth, truth_path or run_dir / f"{sc.name}-truth.json")
    console.print(result.report.describe())
    if not result.delivered:
        console.print("[yellow]warning: not every message was confirmed by the broker in time")
    console.print(f"ground truth: {path}")
    if collector is not None and alerts_path is not None:
        agents = [t.agent for t in sc.townships]
        done = collector.wait_processed(agents, result.agent_samples, drain_s)
        if not done:
            seen, backlog = collector.processed(agents)
            console.print(f"[yellow]warning: agents report {seen:,} of {result.agent_samples:,} samples "
                          f"processed and {backlog} message(s) unsent after {drain_s:g} s")
        collector.stop()
        write_alerts(collector.records(), alerts_path)
        console.print(f"alerts: {len(collector.alerts)} collected into {alerts_path}")


@simulate.command("load")
@click.option("--sensors", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--rate", "rate_hz", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Samples per second of every sensor.")
@click.option("--duration", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
              help="Seconds to run (wall seconds: load is paced in real time).")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Stop after this many samples.")
@click.option("--block-s", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Seconds of samples per RawBlock (one message per sensor per block).")
@click.option("--agents", type=click.IntRange(min=1), default=1, show_default=True,
              help="Townships (agents) the sensors are split over, for --write-config.")
@click.option("--qos", type=click.IntRange(0, 1), default=0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--write-config", "config_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the agent configs of the load district here and exit.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/lib/lifeline"), show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress display (default: in a terminal).")
@url_option
@prefix_option
def load(sensors: int, rate_hz: float, duration: float, max_samples: int | None, block_s: float, agents: int,
         qos: int, seed: int, config_dir: Path | None, state_dir: Path, progress: bool | None,
         url: str | None, prefix: str | None) -> None:
    """Publish SENSORS healthy sensors at RATE Hz for DURATION seconds from one process; report the achieved rate."""
    from simulators.runner import RunOptions, progress_display, run_scenario

    mqtt = _mqtt(url, prefix)
    sc = synthetic_scenario(sensors=sensors, rate_hz=rate_hz, duration_s=duration, agents=agents, seed=seed,
                            tick_s=block_s, mqtt_url=mqtt.url, prefix=mqtt.prefix)
    if config_dir is not None:
        from simulators.agent_config import AgentSettings, write_agent_configs

        for path in write_agent_configs(sc, config_dir, AgentSettings(mqtt.url, mqtt.prefix, state_dir,
                                                                      DEFAULT_RUN_DIR)):
            click.echo(str(path))
        return
    console = Console(stderr=True)
    console.print(f"load: {sensors:,} sensors at {rate_hz:g} Hz = {sensors * rate_hz:,.0f} samples/s, "
                  f"{sensors / block_s:,.0f} messages/s, for {duration:g} s")
    options = RunOptions(mqtt=mqtt, speed=1.0, max_samples=max_samples, qos=1 if qos else 0,
                         client_id=f"lifeline-load-{seed}")
    stop = threading.Event()
    show = progress if progress is not None else console.is_terminal
    try:
        with progress_display(duration, enabled=show, console=console, title="load") as hook:
            result = run_scenario(sc, options, on_progress=hook, stop=stop)
    except KeyboardInterrupt:
        stop.set()
        _fail("interrupted")
    except LifelineError as exc:
        _fail(exc)
    r = result.report
    click.echo(json.dumps({"sensors": sensors, "rate_hz": rate_hz, "configured_samples_per_s": r.configured_rate,
                           "achieved_samples_per_s": round(r.achieved_rate, 1), "samples": r.samples,
                           "blocks": r.blocks, "wall_s": round(r.wall_s, 3), "late_ticks": r.late_ticks,
                           "max_lag_s": round(r.max_lag_s, 3), "delivered": result.delivered}))
    console.print(r.describe())


@simulate.command("score")
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Ground-truth JSON written by `run`.")
@click.option("--alerts", "alerts_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Alerts JSON written by `run --collect`.")
@click.option("--mqtt-listen", "listen_s", type=click.FloatRange(min=0.1), default=None,
              help="Instead: collect alerts live from the broker for this many seconds.")
@click.option("--store", "store_url", default=None,
              help="Instead: read alerts from the store (VictoriaMetrics URL, or InfluxDB with --influx-*).")
@click.option("--influx-org", default=None, help="With --store: read InfluxDB 2 with this org.")
@click.option("--influx-bucket", default="lifeline", show_default=True)
@click.option("--influx-token", envvar="LIFELINE_INFLUX_TOKEN", default="", show_default=False)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report as JSON here.")
@click.option("--lead-s", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="An alert this long before an event's start still counts for it.")
@click.option("--trail-s", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="An alert this long after an event's end still counts for it.")
@click.option("--policy", type=click.Choice(["expected", "any"]), default="expected", show_default=True,
              help="expected: only the rules the truth expects detect an event; any: any raise does.")
@url_option
@prefix_option
def score_cmd(truth_path: Path, alerts_path: Path | None, listen_s: float | None, store_url: str | None,
              influx_org: str | None, influx_bucket: str, influx_token: str, json_path: Path | None,
              lead_s: float, trail_s: float, policy: str, url: str | None, prefix: str | None) -> None:
    """Compare the agents' alerts with a run's ground truth: detection, delay, false alarms, faults vs events."""
    from simulators.collect import alerts_from_influx, alerts_from_victoria, collect_for, read_alerts
    from simulators.scoring import ScoreSettings, render_report, score
    from simulators.truth import read_truth

    sources = [x for x in (alerts_path, listen_s, store_url) if x is not None]
    if len(sources) != 1:
        _fail("give exactly one of --alerts, --mqtt-listen or --store")
    try:
        truth = read_truth(truth_path)
        if alerts_path is not None:
            alerts = read_alerts(alerts_path)
        elif listen_s is not None:
            alerts = collect_for(_mqtt(url, prefix), listen_s)
        elif influx_org is not None:
            alerts = alerts_from_influx(str(store_url), org=influx_org, bucket=influx_bucket, token=influx_token,
                                        start_ms=truth.t0_ms, end_ms=truth.t1_ms + round(trail_s * 1000))
        else:
            alerts = alerts_from_victoria(str(store_url), start_ms=truth.t0_ms,
                                          end_ms=truth.t1_ms + round(trail_s * 1000))
    except LifelineError as exc:
        _fail(exc)
    chosen: Literal["expected", "any"] = "any" if policy == "any" else "expected"
    report = score(truth, alerts, ScoreSettings(lead_s=lead_s, trail_s=trail_s, policy=chosen))
    render_report(report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
        click.echo(f"report: {json_path}")
