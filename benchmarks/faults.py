"""Whole-chain faults under load: simulator -> Mosquitto -> agents -> Mosquitto -> gateway -> store.

Run: `python -m benchmarks.faults` (every fault at full length, store down for 5 minutes; about
12 minutes), `--quick` (short versions, about 3 minutes), `--fault NAME ...` to pick some;
`--write` puts one row per fault into the "## Faults" table of benchmarks/RESULTS.md (through
`benchmarks.fault_table`, which keeps the rows other modules wrote).

Each fault gets a fresh chain (`benchmarks.chain.Chain`): a synthetic district replayed in real
time with pipe bursts and out-of-range readings throughout, so alerts and summaries flow before,
during and after the fault. The fault is injected once data flows end to end; the load goes on
until new data reaches the store again (the recovery time: end of the fault -> first summary
row of a window ending after it, of the affected agents' sensors) and some seconds more. Then
the agents drain and stop, and the store is compared with what they produced: every alert seq
1..last (from each agent's outbox) exactly once, every summary row they published with its `n`.

Faults:
- broker-restart: Mosquitto stopped (SIGTERM, sessions persisted) and started again; the gateway
  with its default plain subscription (`share_group = ""`) of its persistent session, which the
  broker restores and queues for;
- broker-restart-shared: the same with gateways in a shared-subscription group, which Mosquitto
  2.0.11 does not restore from its persistence file, so what agents publish before the gateway
  re-subscribes is lost (a known limit, documented in docs/deployment.md);
- store-down: VictoriaMetrics stopped and started again (5 minutes; 15 s quick);
- agent-kill: `kill -9` of one agent, restarted with the same state directory;
- gateway-kill: `kill -9` of the gateway, restarted;
- uplink-flapping: the agents' uplink runs through a TCP proxy that drops every connection and
  refuses new ones for 2 s out of every 3-6 s (jittered, seeded), for 60 s (15 s quick); the
  sensors' side (raw input) stays up.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks.bench_e2e import E2ECase
from benchmarks.chain import Chain, ChainVerdict, FirstNewRow
from benchmarks.fault_table import FaultOutcome, write_fault_rows
from lifeline.errors import LifelineError

#: Load of a full run and of a quick one (tests use the quick one).
FULL_LOAD: Final = E2ECase(rate=10_000, sensors=200, agents=2, events_per_s=1.0, duration_s=600.0)
QUICK_LOAD: Final = E2ECase(rate=2_000, sensors=100, agents=2, events_per_s=1.0, duration_s=300.0)
#: Seconds of load after the recovery was seen, before the replay stops.
AFTER_S: Final = 5.0
RECOVERY_TIMEOUT_S: Final = 180.0
PROGRESS_EVERY_S: Final = 30.0
FLAP_SEED: Final = 8

Log = Callable[[str], None]


@dataclass(frozen=True)
class FaultWindow:
    """When a fault began and ended (wall ms), and whose data shows the recovery (None: anyone's)."""

    start_ms: int
    end_ms: int
    sensors: frozenset[str] | None = None


@dataclass(frozen=True)
class Fault:
    """One fault: its table name, and how long it lasts in a full and a quick run."""

    key: str
    name: str
    full_s: float
    quick_s: float
    inject: Callable[[Chain, float, Watch], FaultWindow]
    share_group: str | None = None  # the gateway's; None: its default (a plain subscription)


@dataclass(frozen=True)
class FaultResult:
    """One fault run."""

    fault: Fault
    case: E2ECase
    duration_s: float
    verdict: ChainVerdict
    recovery_s: float | None
    detected_during: int  # alerts whose sample time lies within the fault
    peak_backlog: int  # most messages seen waiting in the agents' outboxes (from their statuses)

    def load_text(self) -> str:
        c = self.case
        return (f"{c.rate:,.0f} samples/s ({c.sensors} sensors, {c.agents} agents), fault {self.duration_s:.0f} s; "
                f"{self.detected_during} alerts detected during it; outbox peak {self.peak_backlog:,} msgs")

    def outcome(self, command: str) -> FaultOutcome:
        return FaultOutcome(fault=self.fault.name, load=self.load_text(), lost=self.verdict.lost_text(),
                            duplicates=self.verdict.duplicates, recovery_s=self.recovery_s, command=command)

    def describe(self) -> str:
        recovery = "never" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return f"{self.fault.key}: recovery {recovery}; {self.load_text()}; {self.verdict.describe()}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Watch:
    """Holds a fault for a while: notes the agents' peak backlog, logs progress, fails fast if a
    process that should run died."""

    def __init__(self, chain: Chain, log: Log) -> None:
        self.chain = chain
        self.log = log
        self.peak_backlog = 0
        self._never = threading.Event()

    def hold(self, seconds: float, what: str, *, check: bool = True) -> None:
        deadline = time.monotonic() + seconds
        next_note = time.monotonic() + PROGRESS_EVERY_S
        while (left := deadline - time.monotonic()) > 0:
            self._never.wait(min(left, 0.5))  # the fault's own duration, not a synchronisation
            self.peak_backlog = max(self.peak_backlog, self.chain.backlog()[1])
            if check:
                self.chain.check()
            if time.monotonic() >= next_note:
                self.log(f"  {what}: {max(deadline - time.monotonic(), 0):.0f} s to go; agents' outbox "
                         f"{self.chain.backlog()[1]:,} messages")
                next_note += PROGRESS_EVERY_S


# --------------------------------------------------------------------------- the faults


def broker_restart(chain: Chain, down_s: float, watch: Watch) -> FaultWindow:
    start = now_ms()
    chain.broker.terminate()
    watch.hold(down_s, "broker down", check=False)
    chain.broker.start()
    return FaultWindow(start, now_ms())


def store_down(chain: Chain, down_s: float, watch: Watch) -> FaultWindow:
    start = now_ms()
    chain.store.terminate()  # SIGTERM: a SIGKILL also loses what VictoriaMetrics buffered (not ours)
    watch.hold(down_s, "store down")
    chain.store.start()
    return FaultWindow(start, now_ms())


def agent_kill(chain: Chain, down_s: float, watch: Watch) -> FaultWindow:
    agent = chain.agent_ids[0]
    start = now_ms()
    chain.kill(agent)
    watch.hold(down_s, f"{agent} dead", check=False)
    chain.restart(agent)
    return FaultWindow(start, now_ms(), chain.sensors_of([agent]))


def gateway_kill(chain: Chain, down_s: float, watch: Watch) -> FaultWindow:
    start = now_ms()
    chain.kill("gateway")
    watch.hold(down_s, "gateway dead", check=False)
    chain.restart("gateway")
    return FaultWindow(start, now_ms())


def flap_schedule(total_s: float, *, seed: int = FLAP_SEED, down_s: float = 2.0) -> list[tuple[float, float]]:
    """(down, up) seconds in turn: down `down_s`, up 1-4 s (seeded), summing to `total_s` (the
    last up time is cut short; the link stays up after it)."""
    rng = random.Random(seed)
    out: list[tuple[float, float]] = []
    spent = 0.0
    while spent + down_s < total_s:
        up = min(round(rng.uniform(1.0, 4.0), 2), total_s - spent - down_s)
        out.append((down_s, up))
        spent += down_s + up
    return out


def uplink_flapping(chain: Chain, total_s: float, watch: Watch) -> FaultWindow:
    link = chain.link
    if link is None:
        raise LifelineError("uplink flapping needs a chain with a flaky uplink")
    start = now_ms()
    for down_s, up_s in flap_schedule(total_s):
        link.cut()
        watch.hold(down_s, "uplink flapping")
        link.restore()
        watch.hold(up_s, "uplink flapping")
    return FaultWindow(start, now_ms())


FAULTS: Final = (
    Fault("broker-restart", "whole chain: broker restart under load", 10.0, 3.0, broker_restart),
    Fault("broker-restart-shared", 'whole chain: broker restart under load, gateway in a share_group '
          '(Mosquitto 2.0.11 limit)', 10.0, 3.0, broker_restart, share_group="lifeline-gw"),
    Fault("store-down", "whole chain: store down under load", 300.0, 15.0, store_down),
    Fault("agent-kill", "whole chain: kill -9 of an agent under load", 5.0, 2.0, agent_kill),
    Fault("gateway-kill", "whole chain: kill -9 of the gateway under load", 10.0, 2.0, gateway_kill),
    Fault("uplink-flapping", "whole chain: uplink flapping under load", 60.0, 15.0, uplink_flapping),
)
BY_KEY: Final = {f.key: f for f in FAULTS}


# --------------------------------------------------------------------------- one run


def run_fault(fault: Fault, workdir: Path, *, quick: bool, case: E2ECase | None = None,
              after_s: float = AFTER_S, log: Log = print) -> FaultResult:
    """A fresh chain, the load, the fault once data flows, recovery, drain, and the comparison."""
    case = case or (QUICK_LOAD if quick else FULL_LOAD)
    length_s = fault.quick_s if quick else fault.full_s
    with Chain(case, workdir, flaky_uplink=fault.key == "uplink-flapping", share_group=fault.share_group,
               log=log) as chain:
        base = chain.processed_samples()
        with chain.replay(case.duration_s) as replay:
            chain.wait_flowing(replay.started_ms)
            log(f"  data flows end to end; injecting {fault.key} for {length_s:g} s")
            watch = Watch(chain, log)
            window = fault.inject(chain, length_s, watch)
            with FirstNewRow(chain.store, window.end_ms, window.sensors) as first:
                recovery = first.recovery_s(RECOVERY_TIMEOUT_S)
            log(f"  fault over after {(window.end_ms - window.start_ms) / 1000:.1f} s; "
                f"recovered in {'-' if recovery is None else f'{recovery:.1f} s'}")
            watch.hold(after_s, "load after recovery")
            sent = replay.finish(60)
        chain.drain(int(sent["agent_samples"]), base)
        verdict = chain.verify(int(sent["agent_samples"]))
        detected = sum(1 for a in chain.tap.snapshot()[0].values() if window.start_ms <= a.ts <= window.end_ms)
    return FaultResult(fault, case, (window.end_ms - window.start_ms) / 1000, verdict, recovery, detected,
                       watch.peak_backlog)


# --------------------------------------------------------------------------- report


def table(results: Sequence[FaultResult]) -> str:
    lines = ["| fault | load | lost | duplicates | recovery s |", "| --- | --- | --- | ---: | ---: |"]
    for r in results:
        recovery = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        lines.append(f"| {r.fault.name} | {r.load_text()} | {r.verdict.lost_text()} | {r.verdict.duplicates} "
                     f"| {recovery} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fault", nargs="+", choices=sorted(BY_KEY), default=None,
                        help="faults to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="short faults at a lower load (about 3 min)")
    parser.add_argument("--write", action="store_true", help="put one row per fault into RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directories (logs, configs, data)")
    args = parser.parse_args(argv)
    # SIGTERM (the suite's timeout) unwinds like Ctrl-C, so the servers and children are stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    faults = [BY_KEY[k] for k in args.fault] if args.fault else list(FAULTS)
    command = ("python -m benchmarks.faults " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    results = []
    failed = False
    for fault in faults:
        workdir = Path(tempfile.mkdtemp(prefix=f"lifeline-fault-{fault.key}-"))
        print(f"{fault.key}: {fault.name}; work directory {workdir}", flush=True)
        started = time.monotonic()
        try:
            result = run_fault(fault, workdir, quick=args.quick, log=lambda s: print(s, flush=True))
        except LifelineError as exc:
            print(f"faults: {fault.key}: error: {exc}", file=sys.stderr)
            failed = True
            continue
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        results.append(result)
        print(f"{result.describe()} ({time.monotonic() - started:.0f} s)", flush=True)
        if result.verdict.lost or result.verdict.duplicates:
            failed = True
    print(table(results))
    if args.write and results:
        write_fault_rows([r.outcome(command) for r in results])
        print("wrote the rows of the '## Faults' table of benchmarks/RESULTS.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
