"""Simulator benchmarks against a local Mosquitto (`python -m benchmarks.bench_simulator ...`).

- `load`: one process publishes N healthy sensors at R Hz, paced in real time, for D seconds;
  prints the configured and achieved sample rate, and (with `--count`) what a subscriber in
  another process actually received.
- `quality`: runs built-in scenarios faster than real time through real agents (one process per
  township, as `lifeline agent`), collects their alerts from the broker, scores them against the
  ground truth and writes JSON reports; `--results` rewrites the section "Detection quality
  (simulated scenarios)" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from lifeline.config import MqttSettings
from simulators.agent_config import AgentSettings, write_agent_configs
from simulators.collect import AlertCollector, write_alerts
from simulators.runner import RunOptions, run_scenario
from simulators.scenario import Scenario, find_scenario, load_scenario, scenario_summary, synthetic_scenario
from simulators.scoring import ScoreReport, ScoreSettings, score
from simulators.servers import MosquittoServer

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Detection quality (simulated scenarios)"
LOAD_SUBSECTION = "### Simulator load"
BUILTIN_ORDER = ("pipes", "flood", "bridges", "tunnels", "mixed")


# --------------------------------------------------------------------------- load


def _count_raw(url: str, prefix: str, ready: Any, stop: Any, out: Any) -> None:
    """Subscriber process: count RawBlocks and their samples until `stop` is set."""
    settings = MqttSettings(url=url, prefix=prefix)
    counts = {"messages": 0, "samples": 0, "first": 0.0, "last": 0.0}

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if not counts["messages"]:
            counts["first"] = now
        counts["last"] = now
        counts["messages"] += 1
        counts["samples"] += len(msgpack.unpackb(msg.payload)["values"]) // 4

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-count")
    client.on_message = on_message
    client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{prefix}/raw/+", qos=0)
    client.on_subscribe = lambda c, u, m, r, p: ready.set()
    client.connect(settings.host, settings.port)
    client.loop_start()
    stop.wait()
    time.sleep(1.0)  # let the last messages in flight arrive
    client.loop_stop()
    out.put(counts)


def bench_load(sensors: int, rate_hz: float, duration_s: float, *, block_s: float, qos: int,
               url: str | None, count: bool) -> dict[str, Any]:
    """One paced load run; returns configured vs achieved rates (and received, with `count`)."""
    with ExitStack() as stack:
        if url is None:
            broker = stack.enter_context(MosquittoServer())
            url = broker.url
        settings = MqttSettings(url=url)
        counter = None
        if count:
            ctx = multiprocessing.get_context("spawn")
            ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
            counter = ctx.Process(target=_count_raw, args=(url, settings.prefix, ready, stop, out), daemon=True)
            counter.start()
            if not ready.wait(20):
                raise RuntimeError("the counting subscriber did not subscribe")
        scenario = synthetic_scenario(sensors=sensors, rate_hz=rate_hz, duration_s=duration_s, tick_s=block_s,
                                      mqtt_url=url)
        started = time.monotonic()
        result = run_scenario(scenario, RunOptions(mqtt=settings, speed=1.0, qos=1 if qos else 0,
                                                   client_id="bench-load"))
        total = time.monotonic() - started
        r = result.report
        row: dict[str, Any] = {
            "sensors": sensors, "rate_hz": rate_hz, "block_s": block_s, "qos": qos, "duration_s": duration_s,
            "configured_samples_per_s": r.configured_rate, "achieved_samples_per_s": round(r.achieved_rate),
            "messages_per_s": round(r.blocks / r.wall_s), "late_ticks": r.late_ticks,
            "max_lag_s": round(r.max_lag_s, 3), "setup_and_run_s": round(total, 1),
        }
        if counter is not None:
            stop.set()
            got = out.get(timeout=30)
            counter.join(10)
            span = max(got["last"] - got["first"], 1e-9)
            row.update(received_samples=got["samples"], received_share=round(got["samples"] / max(r.samples, 1), 4),
                       received_samples_per_s=round(got["samples"] / span))
        return row


# --------------------------------------------------------------------------- quality


class AgentProcesses:
    """`lifeline agent` processes, one per config, stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, configs: Sequence[Path], log_dir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        for config in configs:
            log = (log_dir / f"{config.stem}.log").open("wb")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "lifeline.cli", "--log-level", "warning", "agent", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            log.close()

    def check(self) -> None:
        """Raise if an agent exited."""
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"agent {p.args} exited with {p.returncode}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def quality_run(scenario: Scenario, work: Path, *, tick_s: float, url: str,
                speed: float | None = None) -> tuple[ScoreReport, dict[str, Any]]:
    """Run one scenario fast through real agents; returns the score and run facts."""
    settings = MqttSettings(url=url, prefix=scenario.prefix)
    configs = write_agent_configs(scenario, work / "agents", AgentSettings(
        url, settings.prefix, work / "state", work / "lines", agent_keys={"status_interval_s": 1.0}))
    agents = [t.agent for t in scenario.townships]
    procs = AgentProcesses(configs, work)
    try:
        with AlertCollector(settings, client_id=f"bench-{scenario.name}") as collector:
            if not collector.wait_for(lambda c: all(c.statuses.get(a, {}).get("raw_connected")
                                                    for a in agents), 120):
                procs.check()
                raise RuntimeError("agents did not come online within 120 s")
            started = time.monotonic()
            result = run_scenario(scenario, RunOptions(mqtt=settings, speed=speed, qos=1, tick_s=tick_s,
                                                       run_dir=work / "lines", client_id=f"bench-sim-{scenario.name}"))
            processed = collector.wait_processed(agents, result.agent_samples, 600, check=procs.check)
            elapsed = time.monotonic() - started
            alerts = collector.records()
    finally:
        procs.stop()
    write_alerts(alerts, work / "alerts.json")
    report = score(result.truth, alerts)
    any_rule = score(result.truth, alerts, ScoreSettings(policy="any")).totals(faults=False)
    facts = {"events_any_rule": any_rule["detected"],"replay": result.report.describe(), "wall_s": round(elapsed, 1), "processed": processed,
             "alerts": len(alerts), "summary": scenario_summary(scenario)}
    return report, facts


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(results: dict[str, dict[str, Any]], command: str) -> str:
    """The RESULTS.md section for scored scenarios, from their `score.json` maps (report + run facts)."""
    lines = [SECTION, "",
             f"Measured with `{command}` on this machine (2 cores, shared): each built-in scenario "
             "replayed over MQTT (QoS 1) through one real `lifeline agent` process per township, alerts "
             "collected from the broker and scored as `lifeline simulate score` does (lead 5 s, trail "
             "120 s, policy `expected`; \"any rule\": policy `any`). Fast replays send one RawBlock per "
             "sensor per simulated minute and do not score `gap` (dropouts) nor serial and Modbus "
             "sensors: the agent stamps those with its wall clock. \"real time\" runs are paced at 1x "
             "and score everything.", "",
             "| scenario | sensors | sensor-days | events detected | any rule | abrupt delay p50 (samples) "
             "| false alarms / 100 sensor-days | faults told apart | wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        ev, fa, run, alarms = r["events"], r["faults"], r["run"], r["false_alarms"]
        lines.append(
            f"| {name} | {run['summary']['sensors']} | {alarms['sensor_days']:.1f} | "
            f"{ev['detected']}/{ev['labelled']} ({_pct(ev['detection_rate'])}) | {run['events_any_rule']} | "
            f"{_f(ev['abrupt_delay_samples_median'])} | {_f(alarms['per_100_sensor_days'], '{:.2f}')} "
            f"({alarms['count']}) | {fa['told_apart']}/{fa['labelled']} | {run['wall_s']} |")
    lines += ["", "Per class:", "",
              "| scenario | domain | class | type | detected | delay p50 / p95 (s) | delay p50 / p95 (samples) "
              "| told apart |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        for c in r["classes"]:
            kind = "fault" if c["is_fault"] else ("event, abrupt" if c["abrupt"] else "event")
            p50, p95 = c["delay_ms_median"], c["delay_ms_p95"]
            delay_s = f"{_f(None if p50 is None else p50 / 1000)} / {_f(None if p95 is None else p95 / 1000)}"
            unscored = f" (+{c['unscored']} unscored)" if c["unscored"] else ""
            lines.append(f"| {name} | {c['domain']} | {c['cls']} | {kind} | {c['detected']}/{c['labelled']}"
                         f"{unscored} | {delay_s} | {_f(c['delay_samples_median'])} / "
                         f"{_f(c['delay_samples_p95'])} | {c['told_apart']}/{c['labelled']} |")
    lines += ["", "False alarms by rule: " + "; ".join(
        f"{name}: " + (", ".join(f"{k} {v}" for k, v in sorted(r["false_alarms"]["by_rule"].items())) or "none")
        for name, r in results.items()) + "."]
    latency = [(name, r["latency_ms"]) for name, r in results.items() if r.get("latency_ms", {}).get("count")]
    for name, lat in latency:
        lines.append(f"Alert latency in {name} (sample time to a subscriber of the broker): p50 "
                     f"{_f(lat['p50'], '{:.0f}')} ms, p95 {_f(lat['p95'], '{:.0f}')} ms, max {_f(lat['max'], '{:.0f}')} ms; "
                     "mostly the 1 s blocks: a sample waits for the end of its block before it is sent.")
    return "\n".join(lines) + "\n"


def _section_pattern() -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)


def _load_pattern() -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(LOAD_SUBSECTION)}\n.*?(?=^##+ |\Z)", re.S | re.M)


def _subsections(text: str) -> list[str]:
    """The `### ` subsections of a section, each up to the next heading."""
    return [m.group(0) for m in re.finditer(r"^### .*?(?=^##+ |\Z)", text, re.S | re.M)]


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, keeping the `### ` subsections
    of the old section that the new text does not bring (load figures, findings written by hand)."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = _section_pattern().search(old)
    for sub in _subsections(section.group(0)) if section else []:
        if sub.splitlines()[0] not in text:
            text = text.rstrip("\n") + "\n\n" + sub.rstrip("\n") + "\n"
    text = text.rstrip("\n") + "\n\n"
    new = _section_pattern().sub(lambda m: text, old) if section else old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def write_load(rows: Sequence[dict[str, Any]], command: str, path: Path = RESULTS) -> None:
    """Replace the load subsection inside this benchmark's section (creating the section if needed)."""
    lines = [LOAD_SUBSECTION, "", f"Measured with `{command}` (one process, paced in real time, local Mosquitto; "
             "a subscriber in another process counts what arrives):", "",
             "| sensors | rate Hz | QoS | configured samples/s | achieved samples/s | received | messages/s | late ticks | max lag s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        received = f"{100 * r['received_share']:.1f} %" if "received_share" in r else "-"
        lines.append(f"| {r['sensors']:,} | {r['rate_hz']:g} | {r['qos']} | {r['configured_samples_per_s']:,.0f} | "
                     f"{r['achieved_samples_per_s']:,} | {received} | {r['messages_per_s']:,} | {r['late_ticks']} | "
                     f"{r['max_lag_s']} |")
    block = "\n".join(lines) + "\n"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = _section_pattern().search(old)
    if section is None:
        write_section(SECTION + "\n\n" + block, path)
        return
    body = section.group(0)
    body = _load_pattern().sub(lambda m: block + "\n", body) if _load_pattern().search(body) \
        else body.rstrip("\n") + "\n\n" + block + "\n"
    new = old[:section.start()] + body.rstrip("\n") + "\n\n" + old[section.end():]
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_simulator", description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    p_load = sub.add_parser("load", help="paced publish rate of many sensors")
    p_load.add_argument("--sensors", type=int, default=10_000)
    p_load.add_argument("--rate", type=float, nargs="+", default=[1.0, 10.0])
    p_load.add_argument("--duration", type=float, default=20.0)
    p_load.add_argument("--block-s", type=float, default=1.0)
    p_load.add_argument("--qos", type=int, choices=(0, 1), default=0)
    p_load.add_argument("--url", default=None, help="an existing broker (default: a local Mosquitto)")
    p_load.add_argument("--count", action="store_true", help="also count what a subscriber receives")
    p_load.add_argument("--results", action="store_true", help="rewrite the load part of benchmarks/RESULTS.md")
    p_q = sub.add_parser("quality", help="score built-in scenarios through real agents")
    p_q.add_argument("scenarios", nargs="*", default=list(BUILTIN_ORDER),
                     help="built-in names or files; NAME@realtime paces it in real time (scores serial, Modbus, gap)")
    p_q.add_argument("--tick-s", type=float, default=60.0, help="simulated seconds per RawBlock")
    p_q.add_argument("--out", type=Path, default=None, help="directory for the JSON reports")
    p_q.add_argument("--results", action="store_true", help="rewrite the section of benchmarks/RESULTS.md")
    p_r = sub.add_parser("report", help="rewrite the RESULTS.md section from saved score.json files")
    p_r.add_argument("files", nargs="+", type=Path)
    p_r.add_argument("--command", default="python -m benchmarks.bench_simulator quality ... --results")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # clean up agents and broker
    if args.mode == "load":
        rows = []
        for rate in args.rate:
            rows.append(bench_load(args.sensors, rate, args.duration, block_s=args.block_s, qos=args.qos,
                                   url=args.url, count=args.count))
            print(json.dumps(rows[-1]), flush=True)
        if args.results:
            write_load(rows, "python -m benchmarks.bench_simulator load " + " ".join(sys.argv[2:] if argv is None
                                                                                      else list(argv)[1:]))
            print(f"wrote {RESULTS}")
        return
    if args.mode == "report":
        loaded = [json.loads(f.read_text()) for f in args.files]
        write_section(markdown({d["name"]: d for d in loaded}, args.command))
        print(f"wrote {RESULTS}")
        return
    results: dict[str, dict[str, Any]] = {}
    out = args.out or Path(tempfile.mkdtemp(prefix="lifeline-quality-"))
    with MosquittoServer() as broker:
        for arg in args.scenarios:
            name, _, mode = arg.partition("@")
            realtime = mode == "realtime"
            scenario = load_scenario(find_scenario(name)).with_changes(mqtt_url=broker.url)
            work = out / (name + ("-realtime" if realtime else ""))
            work.mkdir(parents=True, exist_ok=True)
            report, facts = quality_run(scenario, work, tick_s=1.0 if realtime else args.tick_s,
                                        url=broker.url, speed=1.0 if realtime else None)
            data = {**report.to_json(), "run": facts, "name": name + (" (real time)" if realtime else "")}
            (work / "score.json").write_text(json.dumps(data, indent=1) + "\n")
            ev = report.totals(faults=False)
            print(f"{name}: events {ev['detected']}/{ev['labelled']}, false alarms {report.false_alarms.count} "
                  f"in {report.false_alarms.sensor_days:.1f} sensor-days, {facts['replay']}; "
                  f"report {work / 'score.json'}", flush=True)
            results[data["name"]] = data
    if args.results:
        command = "python -m benchmarks.bench_simulator quality " + " ".join(args.scenarios) + " --results"
        write_section(markdown(results, command))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
