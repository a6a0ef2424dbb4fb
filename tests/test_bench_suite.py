"""The benchmark suite runner: what it runs in each mode, how it keeps RESULTS.md, its command line.

The last test runs the whole end-to-end chain briefly (real broker, store, agent and gateway).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import benchmarks.cli as bench_cli
from benchmarks.bench_e2e import E2ECase, Percentiles, bench_scenario, block_sent_ms, run_case
from benchmarks.cli import bench
from benchmarks.machine import describe_machine
from benchmarks.suite import (
    BENCHMARKS,
    Benchmark,
    RunPlan,
    SummaryRow,
    header_markdown,
    merge_summary,
    parse_summary,
    plan_run,
    replace_header,
    replace_section,
    run_plan,
    split_results,
)
from simulators.signals import Burst, OutOfRange

RESULTS = """# Benchmark results

Old header text.

## Kernels

Kernel table.

| a | b |
| --- | --- |
| 1 | 2 |

## Detection quality (simulated scenarios)

Scores.

### Simulator load

Load table.

## Gateway

Gateway figures.
"""


# --------------------------------------------------------------------------- RESULTS.md


def test_rewriting_a_section_keeps_every_other_byte() -> None:
    new = replace_section(RESULTS, "## Detection quality (simulated scenarios)", "New scores.")
    assert "New scores." in new and "Scores.\n" not in new and "### Simulator load" not in new
    before, after = RESULTS.split("## Detection quality")[0], RESULTS.split("## Gateway")[1]
    assert new.startswith(before)
    assert new.endswith("## Gateway" + after)


def test_a_missing_section_is_appended_or_put_right_after_the_header() -> None:
    appended = replace_section(RESULTS, "## End to end", "E2E figures.")
    assert appended.startswith(RESULTS.rstrip("\n"))
    assert appended.endswith("\n\n## End to end\n\nE2E figures.\n")
    first = replace_section(RESULTS, "## End to end", "E2E figures.", after_header=True)
    header, sections = split_results(first)
    assert header == "# Benchmark results\n\nOld header text.\n\n"
    assert [h for h, _ in sections] == ["## End to end", "## Kernels",
                                        "## Detection quality (simulated scenarios)", "## Gateway"]
    assert first.replace("## End to end\n\nE2E figures.\n\n", "") == RESULTS


def test_a_section_in_an_empty_or_missing_file_starts_with_the_title() -> None:
    assert replace_section("", "## End to end", "x") == "# Benchmark results\n\n## End to end\n\nx\n"


def test_rewriting_the_header_keeps_the_sections() -> None:
    new = replace_header(RESULTS, "# Benchmark results\n\nNew header.\n")
    assert new == "# Benchmark results\n\nNew header.\n\n" + RESULTS[RESULTS.index("## Kernels"):]


def test_the_header_summary_keeps_rows_of_benchmarks_not_run_this_time() -> None:
    old_rows = [SummaryRow("kernels", "full", "120", "ok", "rewritten: Kernels", "2024-01-01 10:00"),
                SummaryRow("e2e", "full", "200", "ok", "rewritten: End to end", "2024-01-01 10:00")]
    header = header_markdown(["| machine | |"], old_rows, "python -m benchmarks", 320)
    assert parse_summary(header) == old_rows
    new_e2e = SummaryRow("e2e", "quick", "25", "ok", "rewritten: End to end", "2024-02-02 09:00")
    merged = merge_summary(parse_summary(header), [new_e2e])
    assert merged == [old_rows[0], new_e2e]  # suite order, the new run replaces the old one


# --------------------------------------------------------------------------- the registry and plans


def test_every_registered_benchmark_exists_once_and_has_a_section() -> None:
    names = [b.name for b in BENCHMARKS]
    assert len(names) == len(set(names))
    for b in BENCHMARKS:
        assert importlib.util.find_spec(b.module) is not None, b.module
        assert b.section.startswith("## ")


def test_a_quick_run_keeps_full_figures_unless_told_otherwise() -> None:
    kernels = next(b for b in BENCHMARKS if b.name == "kernels")
    e2e = next(b for b in BENCHMARKS if b.name == "e2e")
    quick = plan_run(kernels, "quick", python="py")
    assert quick.command == ("py", "-m", "benchmarks.bench_kernels", "--quick") and not quick.writes
    assert plan_run(kernels, "quick", write_all=True, python="py").command == (
        "py", "-m", "benchmarks.bench_kernels", "--quick", "--write")
    assert plan_run(kernels, "full", python="py").command == ("py", "-m", "benchmarks.bench_kernels", "--write")
    assert plan_run(e2e, "quick", python="py").command == ("py", "-m", "benchmarks.bench_e2e", "--quick", "--write")
    assert plan_run(e2e, "quick", write=False, python="py").command == ("py", "-m", "benchmarks.bench_e2e", "--quick")


def test_a_benchmark_without_a_quick_form_is_skipped_in_quick_mode() -> None:
    slow = Benchmark("slow", "benchmarks.machine", "slow one", quick_args=None, section="## Slow")
    plan = plan_run(slow, "quick")
    assert plan.command is None and plan.skip_reason == "no quick mode"
    outcome = run_plan(plan, Path("/nonexistent"))
    assert outcome.status == "skipped" and outcome.status_text() == "skipped (no quick mode)"


# --------------------------------------------------------------------------- running


def _plan(code: str, timeout_s: float = 60.0) -> RunPlan:
    b = Benchmark("probe", "probe", "probe", section="## Probe", quick_timeout_s=timeout_s)
    return RunPlan(b, "quick", (sys.executable, "-c", code), True)


def test_a_run_records_output_exit_code_and_log(tmp_path: Path) -> None:
    seen: list[str] = []
    ok = run_plan(_plan("print('figure 42')"), tmp_path, on_line=seen.append)
    assert ok.status == "ok" and ok.output == "figure 42\n" and seen == ["figure 42"]
    assert ok.log_path is not None and "figure 42" in ok.log_path.read_text()
    failed = run_plan(_plan("import sys; print('boom'); sys.exit(3)"), tmp_path)
    assert failed.status == "failed" and failed.status_text() == "failed (exit 3)"


def test_a_run_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    outcome = run_plan(_plan("import time; print('started', flush=True); time.sleep(60)", timeout_s=1.0),
                       tmp_path)
    assert outcome.status == "timeout" and outcome.seconds < 20
    assert "started" in outcome.output


# --------------------------------------------------------------------------- command line


def test_help_and_list_work() -> None:
    runner = CliRunner()
    result = runner.invoke(bench, ["--help"])
    assert result.exit_code == 0 and "--quick" in result.output and "--only" in result.output
    listed = runner.invoke(bench, ["--quick", "--list"])
    assert listed.exit_code == 0
    assert "python -m benchmarks.bench_e2e --quick --write" in listed.output
    assert "python -m benchmarks.bench_kernels --quick\n" in listed.output
    bad = runner.invoke(bench, ["--only", "nosuch"])
    assert bad.exit_code != 0 and "unknown benchmark" in bad.output


def test_a_suite_run_rewrites_header_and_its_sections_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(RESULTS)
    printer = Benchmark("machine", "benchmarks.machine", "prints the machine", section="## Machine",
                        quick_writes=True)
    broken = Benchmark("broken", "benchmarks.no_such_module", "fails", section="## Broken", quick_writes=True)
    monkeypatch.setattr(bench_cli, "BENCHMARKS", (printer, broken))
    monkeypatch.setattr(bench_cli, "RESULTS_PATH", results)
    result = CliRunner().invoke(bench, ["--quick", "--logs", str(tmp_path / "logs")])
    assert result.exit_code == 1, result.output  # one benchmark failed
    text = results.read_text()
    header, sections = split_results(text)
    assert "Last suite run: `python -m benchmarks --quick`" in header
    assert describe_machine().cpu_model in header
    rows = {r.name: r for r in parse_summary(header)}
    assert rows["machine"].status == "ok" and rows["machine"].section == "rewritten: Machine"
    assert rows["broken"].status == "failed (exit 1)" and rows["broken"].section == "kept (run failed)"
    assert [h for h, _ in sections] == ["## Kernels", "## Detection quality (simulated scenarios)", "## Gateway",
                                        "## Machine"]
    assert text[text.index("## Kernels"):text.index("## Machine")] == RESULTS[RESULTS.index("## Kernels"):] + "\n"
    assert "| numpy / numba |" in dict(sections)["## Machine"]


# --------------------------------------------------------------------------- end to end


def test_events_go_to_pressure_sensors_one_at_a_time() -> None:
    case = E2ECase(rate=2000, sensors=40, duration_s=20, events_per_s=4)
    scenario = bench_scenario(case, "mqtt://127.0.0.1:1883")
    by_sensor = {s.id: s for s in scenario.sensors}
    injected = [(s.id, e) for s in scenario.sensors for e in (*s.events, *s.faults)]
    assert injected and all(by_sensor[sid].sim.kind == "pipe.pressure" for sid, _ in injected)
    assert {type(e) for _, e in injected} == {Burst, OutOfRange}
    for s in scenario.sensors:
        injected_here: list[Burst | OutOfRange] = [*s.events, *s.faults]  # type: ignore[list-item]
        spans = sorted((e.at_s, e.at_s + e.duration_s) for e in injected_here)
        assert all(end < nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
        assert all(end < case.duration_s for _, end in spans)
    assert sum(s.sim.rate_hz for s in scenario.sensors) == pytest.approx(case.rate)


def test_a_sample_waits_for_the_end_of_its_block() -> None:
    assert block_sent_ms(1000, 1000, 0.2) == 1200  # the first sample leaves with the first block
    assert block_sent_ms(1199, 1000, 0.2) == 1200
    assert block_sent_ms(1200, 1000, 0.2) == 1400  # a sample at a tick's end starts the next block
    p = Percentiles.of([10.0, 20.0, 30.0, 40.0])
    assert (p.count, p.p50, p.max) == (4, 25.0, 40.0)
    assert Percentiles.of([]).count == 0 and math.isnan(Percentiles.of([]).p50)


def _processes_using(path: Path) -> list[int]:
    """Processes whose command line mentions `path` (the chain's configs and data live there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_whole_chain_carries_samples_and_alerts_and_stops_everything(tmp_path: Path) -> None:
    case = E2ECase(rate=4000, sensors=100, duration_s=8.0, events_per_s=2.0)
    figures = run_case(case, tmp_path, log=lambda line: None)
    assert figures.sent_samples > 0.9 * case.rate * case.duration_s
    assert figures.processed_samples == figures.sent_samples
    assert figures.stored_samples > 0 and figures.summary_rows > 0
    assert figures.alerts > 0 and figures.alert_points > 0
    for p in (figures.to_subscriber, figures.to_ops, figures.to_store):
        assert p.count > 0 and 0 < p.p50 < 10_000
    assert figures.to_subscriber.p50 <= figures.to_store.p50
    assert {p.name for p in figures.processes} == {"bench-t000", "gateway", "simulator"}
    assert all(p.peak_rss_mib > 10 for p in figures.processes)
    assert _processes_using(tmp_path) == []
