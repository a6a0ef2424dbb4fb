"""The benchmark suite: every benchmark, how it runs in full and quick mode, and RESULTS.md upkeep.

Each benchmark is a module run as its own process (`python -m benchmarks.X ...`), so one that
crashes or hangs cannot take the others with it, and each starts with a cold interpreter as a
user's would. Most modules rewrite their own section of RESULTS.md when given their write flag;
the output of the few that only print is put in a section by the runner. A quick run writes only
the sections whose quick figures stand for the benchmark (see `Benchmark.quick_writes`): the
others keep the figures of the last full run.

RESULTS.md layout: a header (everything before the first `## ` heading: title, how to re-run, the
machine, the summary of the last runs), then one `## ` section per benchmark. Every rewrite here
replaces one part and keeps every other byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TextIO

ROOT: Final = Path(__file__).resolve().parents[1]
RESULTS_PATH: Final = Path(__file__).with_name("RESULTS.md")
TITLE: Final = "# Benchmark results"
SUMMARY_HEADING: Final = "### Last runs"

Mode = Literal["full", "quick"]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark module and how the suite runs it."""

    name: str
    module: str
    what: str
    full_args: tuple[str, ...] = ()
    #: Arguments of the quick run; None: the module has no quick form and is skipped by `--quick`.
    quick_args: tuple[str, ...] | None = ()
    #: Arguments that make the module rewrite its own RESULTS.md section (empty: it only prints).
    write_args: tuple[str, ...] = ()
    #: The RESULTS.md heading its figures go under (its own, or the runner's for a printing module).
    section: str = ""
    #: Whether a quick run may replace the section: true where quick figures stand for the benchmark.
    quick_writes: bool = False
    full_timeout_s: float = 1800.0
    quick_timeout_s: float = 300.0

    @property
    def writes_own_section(self) -> bool:
        """True when the module writes its section itself; else the runner writes its output."""
        return bool(self.write_args)

    def args(self, mode: Mode) -> tuple[str, ...] | None:
        """The module's arguments in this mode (without the write flag); None when it has no such mode."""
        return self.full_args if mode == "full" else self.quick_args

    def timeout_s(self, mode: Mode) -> float:
        """Longest the run may take before it is stopped and counted as failed."""
        return self.full_timeout_s if mode == "full" else self.quick_timeout_s


#: Every benchmark, in the order the suite runs them (quick and self-contained first).
BENCHMARKS: Final[tuple[Benchmark, ...]] = (
    Benchmark("frames", "benchmarks.bench_frames", "serial frame decoder throughput",
              section="## Serial frame decoder", quick_writes=True,
              full_timeout_s=300, quick_timeout_s=120),
    Benchmark("outbox", "benchmarks.bench_outbox", "agent outbox (SQLite) and uplink drain",
              quick_args=("--alerts", "500", "--summaries", "50"), section="## Outbox and uplink",
              quick_writes=True, full_timeout_s=600, quick_timeout_s=120),
    Benchmark("quality", "benchmarks.quality", "detection quality of the kernels on labelled series",
              quick_args=("--sensors", "1", "--days", "2"), write_args=("--write",),
              section="## Detection quality (kernels)", full_timeout_s=1200, quick_timeout_s=120),
    Benchmark("structural", "benchmarks.structural",
              "structural monitoring: modes, stiffness loss, settlement, traffic vs glitches, convergence",
              quick_args=("--days", "1.2"), write_args=("--write",), section="## Structural monitoring",
              full_timeout_s=1800, quick_timeout_s=600),
    Benchmark("kernels", "benchmarks.bench_kernels", "rule kernels: numba vs Python vs NumPy, start-up",
              quick_args=("--quick",), write_args=("--write",), section="## Kernels",
              full_timeout_s=1800, quick_timeout_s=300),
    Benchmark("startup", "benchmarks.bench_startup",
              "agent first start after install: seconds to online on a precompiled and an empty cache",
              quick_args=("--quick",), write_args=("--write",), section="## Start-up",
              full_timeout_s=900, quick_timeout_s=400),
    Benchmark("agent", "benchmarks.bench_agent", "agent CPU vs bare paho, memory, alert latency",
              quick_args=("--quick",), write_args=("--write",), section="## Agent",
              full_timeout_s=1200, quick_timeout_s=300),
    Benchmark("gateway", "benchmarks.bench_gateway", "gateway rows/s and alerts/s into the store",
              quick_args=("--quick",), write_args=("--write",), section="## Gateway",
              full_timeout_s=1200, quick_timeout_s=300),
    Benchmark("simulator-quality", "benchmarks.bench_simulator",
              "built-in scenarios through real agents, scored",
              full_args=("quality", "mixed@realtime", "mixed", "pipes", "flood", "bridges", "tunnels"),
              quick_args=("quality", "mixed"), write_args=("--results",),
              section="## Detection quality (simulated scenarios)", full_timeout_s=2400, quick_timeout_s=300),
    Benchmark("simulator-load", "benchmarks.bench_simulator", "simulator publish rate, paced",
              full_args=("load", "--sensors", "10000", "--rate", "1", "10", "--duration", "20", "--count"),
              quick_args=("load", "--sensors", "1000", "--rate", "10", "--duration", "5", "--count"),
              write_args=("--results",), section="## Detection quality (simulated scenarios)",
              full_timeout_s=600, quick_timeout_s=120),
    Benchmark("e2e", "benchmarks.bench_e2e",
              "simulator -> broker -> agent -> broker -> gateway -> store: samples/s, alert latency",
              quick_args=("--quick",), write_args=("--write",), section="## End to end", quick_writes=True,
              full_timeout_s=900, quick_timeout_s=300),
    Benchmark("console", "benchmarks.bench_console",
              "ops console: board first render and live-update lag, 10 000 open cases, 100 alerts/s",
              quick_args=("--quick",), write_args=("--write",), section="## Ops console",
              full_timeout_s=900, quick_timeout_s=300),
    Benchmark("faults", "benchmarks.faults", "whole-chain faults under load: what was lost, recovery time",
              quick_args=("--quick",), write_args=("--write",), section="## Faults",
              full_timeout_s=1800, quick_timeout_s=600),
    Benchmark("faults-gateway", "benchmarks.faults_gateway",
              "gateway faults: restart into 100 k / 1 M backlogs, hijack, bad rows, slow store; points/s vs store latency",
              quick_args=("--quick",), write_args=("--write",), section="## Gateway faults",
              full_timeout_s=1800, quick_timeout_s=600),
    Benchmark("faults-agent", "benchmarks.faults_agent",
              "agent-local faults: disk full, serial port, clock steps, outbox damage, state_dir lock, "
              "kill -9 replay, client-id takeover, unknown-id flood",
              write_args=("--write",), section="## Faults", full_timeout_s=2400, quick_timeout_s=600),
    Benchmark("soak", "benchmarks.soak", "whole chain for 30 min at 100 k samples/s: memory flat, nothing lost",
              quick_args=("--duration", "120", "--warmup-s", "30", "--window-s", "30"), write_args=("--write",),
              section="## Soak", full_timeout_s=3000, quick_timeout_s=600),
)


def find_benchmarks(names: Iterable[str], registry: Sequence[Benchmark] = BENCHMARKS) -> list[Benchmark]:
    """The named benchmarks in suite order; ValueError names any unknown one."""
    wanted = list(names)
    known = {b.name for b in registry}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(b.name for b in registry)}")
    return [b for b in registry if b.name in wanted]


# --------------------------------------------------------------------------- planning and running


@dataclass(frozen=True)
class RunPlan:
    """What the runner will do with one benchmark in one run."""

    benchmark: Benchmark
    mode: Mode
    #: The full command line, or None when the benchmark is skipped in this mode.
    command: tuple[str, ...] | None
    #: Whether this run rewrites the benchmark's section (itself, or through the runner).
    writes: bool
    skip_reason: str = ""

    def shell_command(self) -> str:
        """The command as a user would type it from the repository root."""
        if self.command is None:
            return ""
        return " ".join(["python", *self.command[1:]])


def plan_run(benchmark: Benchmark, mode: Mode, *, write: bool = True, write_all: bool = False,
             python: str = sys.executable) -> RunPlan:
    """How `benchmark` runs in `mode`; `write_all` lets a quick run replace full figures too."""
    args = benchmark.args(mode)
    if args is None:
        return RunPlan(benchmark, mode, None, False, "no quick mode")
    writes = write and (mode == "full" or benchmark.quick_writes or write_all)
    extra = benchmark.write_args if writes else ()
    return RunPlan(benchmark, mode, (python, "-m", benchmark.module, *args, *extra), writes)


Status = Literal["ok", "failed", "timeout", "skipped"]


@dataclass(frozen=True)
class RunOutcome:
    """How one benchmark's run went."""

    name: str
    mode: Mode
    status: Status
    seconds: float
    detail: str = ""
    log_path: Path | None = None
    output: str = field(default="", repr=False)

    def status_text(self) -> str:
        """Status for the summary table, e.g. "failed (exit 1)"."""
        return f"{self.status} ({self.detail})" if self.detail else self.status


LineHook = Callable[[str], None]


def run_plan(plan: RunPlan, log_dir: Path, *, on_line: LineHook | None = None,
             tick: Callable[[], None] | None = None, tick_s: float = 0.5) -> RunOutcome:
    """Run one planned benchmark as a subprocess, its output teed to `log_dir/NAME.log`.

    `on_line` sees each output line as it comes; `tick` is called every `tick_s` while it runs
    (a progress display's refresh). The process is killed (its whole group) after its timeout.
    """
    bench = plan.benchmark
    if plan.command is None:
        return RunOutcome(bench.name, plan.mode, "skipped", 0.0, plan.skip_reason)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{bench.name}.log"
    lines: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        log.write(f"$ {plan.shell_command()}\n")
        proc = subprocess.Popen(plan.command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                errors="replace", start_new_session=True)
        reader = threading.Thread(target=_tee, args=(proc, log, lines, on_line), daemon=True)
        reader.start()
        timed_out = _wait(proc, plan.benchmark.timeout_s(plan.mode), tick, tick_s)
        reader.join(10)
    seconds = time.monotonic() - started
    output = "".join(lines)
    if timed_out:
        return RunOutcome(bench.name, plan.mode, "timeout", seconds,
                          f"stopped after {bench.timeout_s(plan.mode):.0f} s", log_path=log_path, output=output)
    if proc.returncode != 0:
        return RunOutcome(bench.name, plan.mode, "failed", seconds, f"exit {proc.returncode}",
                          log_path=log_path, output=output)
    return RunOutcome(bench.name, plan.mode, "ok", seconds, log_path=log_path, output=output)


def _tee(proc: subprocess.Popen[str], log: TextIO, lines: list[str], on_line: LineHook | None) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        log.write(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))


def _wait(proc: subprocess.Popen[str], timeout_s: float, tick: Callable[[], None] | None, tick_s: float) -> bool:
    """Wait for the process, calling `tick` meanwhile; True if it had to be stopped at the deadline.

    Ctrl-C stops the benchmark too (it runs in its own session, out of the terminal's reach).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            proc.wait(timeout=max(0.0, min(tick_s, deadline - time.monotonic())))
            return False
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                _stop_group(proc)
                return True
            if tick is not None:
                tick()
        except KeyboardInterrupt:
            _stop_group(proc)
            raise


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """Stop a benchmark and what it started (it leads its own process group): TERM, then KILL."""
    for sig, grace in ((signal.SIGTERM, 40.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- RESULTS.md


def _section_starts(lines: Sequence[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.startswith("## ")]


def split_results(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The header (before the first `## ` heading) and the `## ` sections as (heading, whole text)."""
    lines = text.splitlines(keepends=True)
    starts = _section_starts(lines)
    header = "".join(lines[:starts[0]] if starts else lines)
    sections = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        sections.append((lines[start].rstrip("\n"), "".join(lines[start:end])))
    return header, sections


def read_section(heading: str, *, path: Path = RESULTS_PATH) -> str:
    """The whole text of the `## ` section `heading` of the results file ("" if there is none)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return next((whole for h, whole in split_results(text)[1] if h == heading), "")


def table_rows(section: str) -> dict[str, str]:
    """The body rows of the markdown tables in `section`, keyed by their first cell (so a
    benchmark that reruns some rows can keep the others)."""
    lines = section.splitlines()
    rows = {}
    for i, line in enumerate(lines):
        is_header = i + 1 < len(lines) and lines[i + 1].startswith("| ---")
        if line.startswith("| ") and not line.startswith("| ---") and not is_header:
            rows[line.strip().strip("|").split("|")[0].strip()] = line.rstrip()
    return rows


def replace_section(text: str, heading: str, body: str, *, after_header: bool = False) -> str:
    """`text` with the `## ` section `heading` replaced by `heading` + `body`; every other byte kept.

    A missing section is appended at the end, or put first after the header with `after_header`.
    """
    lines = (text or TITLE + "\n").splitlines(keepends=True)
    starts = _section_starts(lines)
    new = f"{heading}\n\n{body.strip(chr(10))}\n"
    found = [i for i in starts if lines[i].rstrip("\n") == heading]
    if found:
        begin = found[0]
        end = next((i for i in starts if i > begin), len(lines))
        tail = "".join(lines[end:])
        return "".join(lines[:begin]) + new + ("\n" + tail if tail else "")
    if after_header and starts:
        return ("".join(lines[:starts[0]]).rstrip("\n") + "\n\n" + new + "\n"
                + "".join(lines[starts[0]:]))
    return "".join(lines).rstrip("\n") + "\n\n" + new


def replace_header(text: str, header: str) -> str:
    """`text` with everything before the first `## ` heading replaced by `header`."""
    lines = text.splitlines(keepends=True)
    starts = _section_starts(lines)
    rest = "".join(lines[starts[0]:]) if starts else ""
    return header.rstrip("\n") + "\n" + ("\n" + rest if rest else "")


def write_section(heading: str, body: str, *, path: Path = RESULTS_PATH, after_header: bool = False) -> None:
    """Rewrite one `## ` section of the results file, leaving the rest alone."""
    old = path.read_text(encoding="utf-8") if path.exists() else TITLE + "\n"
    path.write_text(replace_section(old, heading, body, after_header=after_header), encoding="utf-8")


def output_section(plan: RunPlan, outcome: RunOutcome, when: str) -> str:
    """The section body the runner writes for a module that only prints: its command and output."""
    return (f"Command: `{plan.shell_command()}` ({plan.mode} run of `python -m benchmarks`, {when}); "
            "its output as printed:\n\n```\n" + outcome.output.strip("\n") + "\n```\n")


# --------------------------------------------------------------------------- the header


@dataclass(frozen=True)
class SummaryRow:
    """One line of the header's summary: the last run of one benchmark."""

    name: str
    mode: str
    seconds: str
    status: str
    section: str
    when: str

    def markdown(self) -> str:
        return f"| {self.name} | {self.mode} | {self.seconds} | {self.status} | {self.section} | {self.when} |"


SUMMARY_COLUMNS: Final = "| benchmark | mode | seconds | status | RESULTS.md section | when (UTC) |"


def summary_row(plan: RunPlan, outcome: RunOutcome, when: str) -> SummaryRow:
    """The summary line of a benchmark just run."""
    if outcome.status == "skipped":
        section = "kept" if plan.benchmark.section else "-"
    elif outcome.status != "ok":
        section = "kept (run failed)"
    elif plan.writes:
        section = f"rewritten: {plan.benchmark.section.removeprefix('## ')}"
    else:
        section = "kept (quick figures not written)"
    seconds = "-" if outcome.status == "skipped" else f"{outcome.seconds:.0f}"
    return SummaryRow(plan.benchmark.name, plan.mode, seconds, outcome.status_text(), section, when)


def parse_summary(header: str) -> list[SummaryRow]:
    """The summary rows of an existing header (to keep those of benchmarks not run this time)."""
    rows = []
    in_table = False
    for line in header.splitlines():
        if line.startswith(SUMMARY_COLUMNS[:20]):
            in_table = True
            continue
        if in_table and line.startswith("| ---"):
            continue
        if in_table and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 6:
                rows.append(SummaryRow(*cells))
            continue
        in_table = False
    return rows


def merge_summary(old: Sequence[SummaryRow], new: Sequence[SummaryRow],
                  order: Sequence[Benchmark] = BENCHMARKS) -> list[SummaryRow]:
    """New rows replace old ones of the same benchmark; rows follow the suite's order."""
    by_name = {r.name: r for r in old}
    by_name.update({r.name: r for r in new})
    rank = {b.name: i for i, b in enumerate(order)}
    return sorted(by_name.values(), key=lambda r: (rank.get(r.name, len(rank)), r.name))


def header_markdown(machine_rows: Sequence[str], summary: Sequence[SummaryRow], command: str,
                    total_s: float) -> str:
    """The header of RESULTS.md: title, how to re-run, the machine, the last runs."""
    lines = [
        TITLE, "",
        ("The table below is the machine of the last suite run; each section names the command that "
         "produced its figures, all on this kind of machine: a small virtual machine whose 2 cores are "
         "shared with other work, so figures vary by about +-30 % from run to run."), "",
        ("Re-run: `python -m benchmarks` (or `lifeline bench`) runs every benchmark in full (about "
         "half an hour) and rewrites every section; `--quick` is a smoke run of a few minutes that "
         "rewrites this header and the sections whose quick figures stand for the benchmark (end to "
         "end, serial frames, outbox) and keeps the full figures of the others; `--only NAME` runs "
         "one benchmark (`--list` names them); `--no-write` leaves this file alone. Each "
         "benchmark also runs alone as `python -m benchmarks.NAME` (see its `--help`)."), "",
        *machine_rows, "",
        SUMMARY_HEADING, "",
        f"Last suite run: `{command}`, {total_s:.0f} s in all.", "",
        SUMMARY_COLUMNS,
        "| --- | --- | ---: | --- | --- | --- |",
        *(r.markdown() for r in summary),
    ]
    return "\n".join(lines) + "\n"
