"""`python -m benchmarks` / `lifeline bench`: run the benchmark suite and rewrite RESULTS.md."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from benchmarks.machine import describe_machine
from benchmarks.suite import (
    BENCHMARKS,
    RESULTS_PATH,
    Mode,
    RunOutcome,
    RunPlan,
    SummaryRow,
    find_benchmarks,
    header_markdown,
    merge_summary,
    output_section,
    parse_summary,
    plan_run,
    replace_header,
    run_plan,
    split_results,
    summary_row,
    write_section,
)

STATUS_STYLE = {"ok": "green", "failed": "bold red", "timeout": "bold red", "skipped": "yellow"}
#: Output lines shown when a benchmark fails (the whole output is in its log).
FAILURE_TAIL = 15


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--quick", is_flag=True,
              help="Smoke run of every benchmark with its smallest sensible parameters (a few minutes).")
@click.option("--only", multiple=True, metavar="NAME", help="Run only this benchmark (repeatable; see --list).")
@click.option("--skip", multiple=True, metavar="NAME", help="Leave this benchmark out (repeatable).")
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks and how each runs, and exit.")
@click.option("--write/--no-write", default=True, show_default=True,
              help="Rewrite benchmarks/RESULTS.md: the header (machine, summary) and the benchmarks' sections.")
@click.option("--write-all", is_flag=True,
              help="With --quick: also replace the sections that hold full figures with quick ones.")
@click.option("--logs", "log_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for each benchmark's output, NAME.log (default: a new temporary directory).")
def bench(quick: bool, only: tuple[str, ...], skip: tuple[str, ...], list_only: bool, write: bool,
          write_all: bool, log_dir: Path | None) -> None:
    """Run every benchmark (each as `python -m benchmarks.NAME`) and put the figures in RESULTS.md.

    A full run takes about half an hour on two cores and rewrites every section. `--quick` takes a
    few minutes: it rewrites the header and the sections whose quick figures stand for the
    benchmark, and keeps the last full figures of the others (the summary says which). The
    header names the machine, and lists each benchmark's last run: mode, seconds, status.
    Exits 1 if any benchmark failed.
    """
    console = Console()
    try:
        chosen = find_benchmarks(only, BENCHMARKS) if only else list(BENCHMARKS)
        dropped = set(find_benchmarks(skip, BENCHMARKS)) if skip else set()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only/--skip") from exc
    mode: Mode = "quick" if quick else "full"
    plans = [plan_run(b, mode, write=write, write_all=write_all) for b in chosen if b not in dropped]
    if list_only:
        click.echo("\n".join(_plan_lines(plans)))
        return
    logs = log_dir or Path(tempfile.mkdtemp(prefix="lifeline-bench-"))
    machine = describe_machine()
    console.print(f"[bold]lifeline benchmarks[/] ({mode}): {len(plans)} benchmark(s) on {machine.one_line()}; "
                  f"logs in {logs}", soft_wrap=True)
    started = time.monotonic()
    outcomes = [_run_one(console, plan, logs, n, len(plans), machine.date) for n, plan in enumerate(plans, 1)]
    total = time.monotonic() - started
    console.print(_summary_table(plans, outcomes, total))
    if write:
        command = _command_line(quick, only, skip, write_all)
        _write_header(command, total, machine.markdown_rows(),
                      [summary_row(p, o, machine.date) for p, o in zip(plans, outcomes, strict=True)])
        console.print(f"wrote {RESULTS_PATH}")
    if any(o.status in ("failed", "timeout") for o in outcomes):
        sys.exit(1)


def _run_one(console: Console, plan: RunPlan, logs: Path, n: int, of: int, when: str) -> RunOutcome:
    """Run one benchmark with a live status line; write its section if the runner owns it."""
    name = plan.benchmark.name
    if plan.command is None:
        console.print(f"[{n}/{of}] {name}: [yellow]skipped[/] ({plan.skip_reason})")
        return run_plan(plan, logs)
    console.print(f"[{n}/{of}] {name}: {plan.shell_command()}", soft_wrap=True, highlight=False)
    last = [""]
    began = time.monotonic()
    with console.status(f"{name} ...") as status:
        def tick() -> None:
            status.update(f"{name}: {time.monotonic() - began:.0f} s  {last[0][:100]}")

        def on_line(line: str) -> None:
            if line.strip():
                last[0] = line.strip()

        outcome = run_plan(plan, logs, on_line=on_line, tick=tick)
    style = STATUS_STYLE[outcome.status]
    console.print(f"[{n}/{of}] {name}: [{style}]{outcome.status_text()}[/] in {outcome.seconds:.0f} s "
                  f"(log {outcome.log_path})", soft_wrap=True, highlight=False)
    if outcome.status != "ok":
        tail = outcome.output.rstrip("\n").splitlines()[-FAILURE_TAIL:]
        console.print("\n".join("    " + line for line in tail), highlight=False, markup=False)
    elif plan.writes and not plan.benchmark.writes_own_section:
        write_section(plan.benchmark.section, output_section(plan, outcome, when), path=RESULTS_PATH)
    return outcome


def _plan_lines(plans: list[RunPlan]) -> list[str]:
    """Each benchmark: name, what it measures, its command in this mode and the section it rewrites."""
    lines = []
    for p in plans:
        rewrites = p.benchmark.section.removeprefix("## ") if p.writes else "nothing (keeps its section)"
        lines += [f"{p.benchmark.name}: {p.benchmark.what}",
                  f"    {p.shell_command() or 'skipped: ' + p.skip_reason}",
                  f"    rewrites: {rewrites}"]
    return lines


def _summary_table(plans: list[RunPlan], outcomes: list[RunOutcome], total: float) -> Table:
    table = Table(title=f"Benchmark suite: {total:.0f} s")
    for column in ("benchmark", "mode", "seconds", "status", "RESULTS.md"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for p, o in zip(plans, outcomes, strict=True):
        row = summary_row(p, o, "")
        table.add_row(row.name, row.mode, row.seconds, f"[{STATUS_STYLE[o.status]}]{row.status}", row.section)
    return table


def _command_line(quick: bool, only: tuple[str, ...], skip: tuple[str, ...], write_all: bool) -> str:
    parts = ["python -m benchmarks"]
    parts += ["--quick"] if quick else []
    parts += [f"--only {name}" for name in only]
    parts += [f"--skip {name}" for name in skip]
    parts += ["--write-all"] if write_all else []
    return " ".join(parts)


def _write_header(command: str, total_s: float, machine_rows: list[str], rows: list[SummaryRow]) -> None:
    """Rewrite the header of RESULTS.md, keeping the summary rows of benchmarks not run this time."""
    old = RESULTS_PATH.read_text(encoding="utf-8") if RESULTS_PATH.exists() else ""
    header, _ = split_results(old)
    summary = merge_summary(parse_summary(header), rows, BENCHMARKS)
    RESULTS_PATH.write_text(replace_header(old, header_markdown(machine_rows, summary, command, total_s)),
                            encoding="utf-8")
