"""Soak: the whole chain at 100 k samples/s for 30 minutes, with memory flat and nothing lost.

Run: `python -m benchmarks.soak [--duration S] [--rate R] [--write]` (default 1800 s at 100 k
samples/s; `--write` rewrites the section "## Soak" of benchmarks/RESULTS.md).

The chain is the end-to-end benchmark's (simulator process -> Mosquitto -> `lifeline agent` ->
Mosquitto -> `lifeline gateway` -> VictoriaMetrics, all real, on this machine), with bursts and
out-of-range readings injected throughout so alerts flow all the time. Every `--sample-s` the
resident memory (VmRSS) of the agent, the gateway, Mosquitto and VictoriaMetrics is read from
/proc. Memory is *flat* when each process's mean RSS over the last `--window-s` is within 5 % of
its mean over the first `--window-s` after `--warmup-s`. *Nothing lost* means: the agent
processed every sample the simulator sent; the store's summary rows cover every processed sample
(sum of `n`); every alert a broker subscriber saw is in the store, and the agent's alert `seq`
numbers have no hole.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import paho.mqtt.client as mqtt

from benchmarks.bench_e2e import (
    PREFIX,
    STATUS_INTERVAL_S,
    E2ECase,
    ProcessSampler,
    bench_scenario,
    precompile,
    replay_in_child,
    TopicListener,
    start_chain,
    store_rows,
)
from benchmarks.machine import describe_machine
from benchmarks.procstat import memory_mib
from benchmarks.suite import write_section
from lifeline.config import MqttSettings
from lifeline.contract import DecodeError, decode_alert
from lifeline.errors import LifelineError
from lifeline.mqtt import make_client
from simulators.agent_config import AgentSettings, write_agent_configs
from simulators.collect import AlertCollector, alerts_from_victoria
from simulators.demo import Child, gateway_toml
from simulators.servers import MosquittoServer, VictoriaMetricsServer

SECTION: Final = "## Soak"
#: Allowed growth of mean RSS from the first window after warm-up to the last one.
FLAT_LIMIT: Final = 0.05
DRAIN_TIMEOUT_S: Final = 180.0
STORE_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True)
class MemoryTrend:
    """RSS of one process over the soak, in MiB."""

    name: str
    first_window_mib: float  # mean over the first window after warm-up
    last_window_mib: float  # mean over the last window
    peak_mib: float
    points: tuple[tuple[float, float], ...]  # (seconds since start, MiB)

    @property
    def growth(self) -> float:
        return self.last_window_mib / self.first_window_mib - 1.0

    @property
    def flat(self) -> bool:
        return self.growth < FLAT_LIMIT

    @property
    def judged(self) -> bool:
        """The store is shown, not judged: its memory follows the data it holds."""
        return self.name != "victoria-metrics"


@dataclass(frozen=True)
class SoakFigures:
    """What one soak measured."""

    case: E2ECase
    sent_samples: int
    sent_rate: float
    late_ticks: int
    processed_samples: int
    stored_samples: int
    summary_rows: int
    alerts_seen: int
    alerts_stored: int
    alerts_missing: int
    seq_holes: int
    memory: tuple[MemoryTrend, ...]
    cpu: dict[str, float]  # average CPU % per process
    wall_s: float

    @property
    def nothing_lost(self) -> bool:
        return (self.processed_samples >= self.sent_samples and self.stored_samples >= self.processed_samples
                and self.alerts_missing == 0 and self.seq_holes == 0)


class RssWatch:
    """Reads VmRSS of named processes every `interval_s` on a thread."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.pids: dict[str, int] = {}
        self.points: dict[str, list[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rss", daemon=True)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            at = time.monotonic() - self.started
            for name, pid in list(self.pids.items()):
                try:
                    rss = memory_mib(pid, ("VmRSS",))["VmRSS"]
                except OSError:
                    continue  # the process is gone: keep what was read while it ran
                self.points.setdefault(name, []).append((at, rss))

    def trends(self, warmup_s: float, window_s: float) -> tuple[MemoryTrend, ...]:
        out = []
        for name, points in self.points.items():
            t = np.array([p[0] for p in points])
            mib = np.array([p[1] for p in points])
            first = mib[(t >= warmup_s) & (t < warmup_s + window_s)]
            last = mib[t >= t.max() - window_s]
            if len(first) == 0 or len(last) == 0:
                continue
            out.append(MemoryTrend(name, float(first.mean()), float(last.mean()), float(mib.max()),
                                   tuple(points)))
        return tuple(out)


class SeqWatch(TopicListener):
    """Every alert `seq` per agent seen at the broker, to find holes in the agents' counters."""

    def __init__(self, settings: MqttSettings) -> None:
        self.seqs: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        super().__init__(settings, make_client(settings, "lifeline-soak-seq"),
                         [(f"{settings.prefix}/alert/+/+/+", 1)], what="alerts")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            alert = decode_alert(msg.payload)
        except DecodeError:
            return
        with self._lock:
            self.seqs.setdefault(alert.agent, set()).add(alert.seq)

    def holes(self) -> int:
        """Numbers missing between each agent's first and last seq seen."""
        with self._lock:
            return sum(max(s) - min(s) + 1 - len(s) for s in self.seqs.values() if s)


def run_soak(case: E2ECase, workdir: Path, *, sample_s: float, warmup_s: float, window_s: float,
             log: Any = print) -> SoakFigures:
    """Run the chain for `case.duration_s` and measure memory and loss."""
    started = time.monotonic()
    children: list[Child] = []
    for sub in ("broker", "store"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(MosquittoServer(workdir=workdir / "broker"))
        store = stack.enter_context(VictoriaMetricsServer(workdir=workdir / "store"))
        settings = MqttSettings(url=broker.url, prefix=PREFIX)
        scenario = bench_scenario(case, broker.url)
        agent_ids = [t.agent for t in scenario.townships]
        configs = write_agent_configs(scenario, workdir / "config", AgentSettings(
            mqtt_url=broker.url, prefix=PREFIX, state_dir=workdir / "state", run_dir=workdir / "run",
            agent_keys={"window_s": case.window_s, "status_interval_s": STATUS_INTERVAL_S}))
        gw_config = workdir / "config" / "gateway.toml"
        gw_config.write_text(gateway_toml(broker, store, workdir / "gateway-state"))
        precompile(configs[0], workdir)
        collector = stack.enter_context(AlertCollector(settings, client_id="lifeline-soak-collect"))
        seqs = stack.enter_context(SeqWatch(settings))
        stack.callback(lambda: [c.stop() for c in sorted(children, key=lambda c: c.name == "gateway")])
        start_chain(children, configs, gw_config, workdir, collector, store, agent_ids)
        start_ms = time.time_ns() // 1_000_000
        rss = stack.enter_context(RssWatch(sample_s))
        for child in children:
            rss.pids[child.name] = child.proc.pid
        for name, server in (("mosquitto", broker), ("victoria-metrics", store)):
            if server.proc is not None:
                rss.pids[name] = server.proc.pid
        cpu = ProcessSampler(interval_s=10.0)
        for child in children:
            cpu.add(child.name, child.proc.pid)
        cpu.start()
        base, _ = collector.processed(agent_ids)
        log(f"chain ready in {time.monotonic() - started:.0f} s; soaking for {case.duration_s:g} s "
            f"at {case.rate:,.0f} samples/s")
        stop_progress = threading.Event()
        threading.Thread(target=_progress, args=(collector, agent_ids, base, rss, case, stop_progress, log),
                         daemon=True).start()
        options_replay = _options(case, settings, workdir)
        try:
            replay = replay_in_child(scenario, options_replay, cpu, case.duration_s + 300)
        finally:
            stop_progress.set()
        wanted = base + int(replay["agent_samples"])
        collector.wait_processed(agent_ids, wanted, timeout_s=DRAIN_TIMEOUT_S, settle_s=2.0, quiet_s=30.0)
        processed = collector.processed(agent_ids)[0] - base
        cpu_figures = {p.name: p.cpu_avg_pct for p in cpu.stop()}
        seen = {(r.sensor, r.rule, r.ts, r.level) for r in collector.records()}
        log(f"drained: {processed:,} samples processed, {len(seen):,} alerts seen; reading the store back")
        stored = _wait_store_alerts(store.url, start_ms, seen)
        rows, samples = _wait_store_rows(store, start_ms, processed, case.window_s)
        memory = rss.trends(warmup_s, window_s)
        return SoakFigures(
            case=case, sent_samples=int(replay["agent_samples"]), sent_rate=float(replay["achieved"]),
            late_ticks=int(replay["late_ticks"]), processed_samples=processed, stored_samples=samples,
            summary_rows=rows, alerts_seen=len(seen), alerts_stored=len(stored & seen),
            alerts_missing=len(seen - stored), seq_holes=seqs.holes(), memory=memory, cpu=cpu_figures,
            wall_s=time.monotonic() - started)


def _options(case: E2ECase, settings: MqttSettings, workdir: Path) -> Any:
    from simulators.runner import RunOptions

    return RunOptions(mqtt=settings, speed=1.0, duration_s=case.duration_s, qos=1 if case.qos else 0,
                      run_dir=workdir / "run", client_id="lifeline-soak-sim", tick_s=case.tick_s)


def _progress(collector: AlertCollector, agents: Sequence[str], base: int, rss: RssWatch, case: E2ECase,
              stop: threading.Event, log: Any) -> None:
    """A line a minute: how far, how much processed, memory now."""
    began = time.monotonic()
    while not stop.wait(60.0):
        done, backlog = collector.processed(agents)
        memory = ", ".join(f"{name} {pts[-1][1]:.0f} MiB" for name, pts in rss.points.items() if pts)
        log(f"  {time.monotonic() - began:5.0f}/{case.duration_s:g} s: {done - base:,} samples processed, "
            f"outbox {backlog}, {len(collector.alerts):,} alerts; {memory}")


def _wait_store_alerts(url: str, start_ms: int, seen: set[tuple[str, str, int, int]]) -> set[tuple[str, str, int, int]]:
    """The alert points in the store, once they include everything seen (or the timeout passes)."""
    deadline = time.monotonic() + STORE_TIMEOUT_S
    while True:
        stored = {(r.sensor, r.rule, r.ts, r.level) for r in alerts_from_victoria(url, start_ms=start_ms)}
        if seen <= stored or time.monotonic() > deadline:
            return stored
        time.sleep(2.0)  # the store has no change event; the gateway writes in batches


def _wait_store_rows(store: VictoriaMetricsServer, start_ms: int, processed: int,
                     window_s: float) -> tuple[int, int]:
    """Summary rows and the samples they cover, once they cover every processed sample (bounded)."""
    deadline = time.monotonic() + STORE_TIMEOUT_S
    while True:
        rows, samples, _ = store_rows(store, start_ms)
        if samples >= processed or time.monotonic() > deadline:
            return rows, samples
        time.sleep(window_s + 1.0)  # the last windows close on the agent's timer


# --------------------------------------------------------------------------- report


def report(f: SoakFigures, command: str, sample_s: float, warmup_s: float, window_s: float) -> str:
    c = f.case
    lines = [
        f"Command: `{command}`; {describe_machine().one_line()}.",
        "",
        f"{c.describe()}; bursts and out-of-range readings injected {c.events_per_s:g}/s. RSS (VmRSS) read "
        f"every {sample_s:g} s; *flat* = mean RSS over the last {window_s:g} s within {FLAT_LIMIT:.0%} of the mean "
        f"over the first {window_s:g} s after a {warmup_s:g} s warm-up. VictoriaMetrics is shown but not judged: "
        "a store's memory grows with the data it holds.",
        "",
        "| process | RSS after warm-up MiB | RSS at the end MiB | growth | peak MiB | avg CPU | flat |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for m in f.memory:
        cpu = f.cpu.get(m.name)
        lines.append(f"| {m.name} | {m.first_window_mib:.1f} | {m.last_window_mib:.1f} | {m.growth:+.1%} | "
                     f"{m.peak_mib:.1f} | {'-' if cpu is None else f'{cpu:.0f} %'} | {'yes' if m.flat else 'NO' if m.judged else '(not judged)'} |")
    lines += [
        "",
        "| sent samples | sent/s | late ticks | processed | covered by stored rows | summary rows | alerts seen | "
        "in the store | missing | seq holes | nothing lost |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {f.sent_samples:,} | {f.sent_rate:,.0f} | {f.late_ticks} | {f.processed_samples:,} | "
        f"{f.stored_samples:,} | {f.summary_rows:,} | {f.alerts_seen:,} | {f.alerts_stored:,} | "
        f"{f.alerts_missing} | {f.seq_holes} | {'yes' if f.nothing_lost else 'NO'} |",
        "",
        "RSS over time (MiB, every 5 min):",
        "",
    ]
    names = [m.name for m in f.memory]
    lines += ["| min | " + " | ".join(names) + " |", "| ---: |" + " ---: |" * len(names)]
    horizon = max((m.points[-1][0] for m in f.memory), default=0.0)
    for at in np.arange(0.0, horizon + 1, 300.0):
        cells = []
        for m in f.memory:
            t = np.array([p[0] for p in m.points])
            cells.append(f"{m.points[int(np.abs(t - at).argmin())][1]:.1f}")
        lines.append(f"| {at / 60:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 1800)")
    parser.add_argument("--rate", type=float, default=100_000.0, help="samples/s (default 100000)")
    parser.add_argument("--sensors", type=int, default=500, help="sensors in the district (default 500)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS readings")
    parser.add_argument("--warmup-s", type=float, default=300.0, help="warm-up left out of the memory check")
    parser.add_argument("--window-s", type=float, default=300.0, help="averaging window of the memory check")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, data)")
    parser.add_argument("--write", action="store_true", help="rewrite the section 'Soak' of RESULTS.md")
    args = parser.parse_args(argv)
    if not 60 <= args.duration <= 7200 or args.warmup_s + 2 * args.window_s > args.duration:
        parser.error("need 60 <= --duration <= 7200 and --warmup-s + 2 x --window-s <= --duration")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    case = replace(E2ECase(rate=args.rate, sensors=args.sensors), duration_s=args.duration)
    workdir = Path(tempfile.mkdtemp(prefix="lifeline-soak-"))
    print(f"soak: {case.describe()}; work directory {workdir}", flush=True)
    try:
        figures = run_soak(case, workdir, sample_s=args.sample_s, warmup_s=args.warmup_s,
                           window_s=args.window_s, log=lambda s: print(s, flush=True))
    except LifelineError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    command = "python -m benchmarks.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(figures, command.strip(), args.sample_s, args.warmup_s, args.window_s)
    print(text)
    if args.write:
        write_section(SECTION, text)
        print(f"wrote the section '{SECTION}' of benchmarks/RESULTS.md")
    return 0 if figures.nothing_lost and all(m.flat for m in figures.memory if m.judged) else 1


if __name__ == "__main__":
    sys.exit(main())
