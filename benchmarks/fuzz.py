"""Coverage-guided fuzzing (atheris) of the agent's untrusted-input decoders.

`python -m benchmarks.fuzz [--target NAME] [--runs N] [--write]` runs each target in its own
subprocess (atheris exits the process when done) and reports inputs/s; `--write` rewrites the
section "## Fuzzing" of benchmarks/RESULTS.md. Targets: `frames` (FrameDecoder.feed in varied
chunkings), `rawblock` (decode_raw_block), `alert` (decode_alert), `config` (load_toml_model).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
SECTION: Final = "## Fuzzing"
TARGETS: Final = ("frames", "rawblock", "alert", "config")
#: Seconds one input may take before libFuzzer calls it a hang.
INPUT_TIMEOUT_S: Final = 10
SAMPLE_CONFIG: Final = ROOT / "deploy" / "agent.sample.toml"
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


# --------------------------------------------------------------------------- seeds


def frame_seeds() -> list[bytes]:
    """Valid frame streams (two chunking bytes, then frames), so the fuzzer starts from real frames."""
    from firmware_stubs.frame import encode_float32_frame, encode_heartbeat, encode_int16_frame

    int16 = encode_int16_frame(17, 1, 7, 100_000, 0.01, [1, -2, 300, 32767, -32768])
    f32 = encode_float32_frame(17, 2, 8, 1000, [0.5, float("nan"), float("inf"), -1.25])
    beat = encode_heartbeat(17, 0, 9)
    return [b"\x00\x00" + int16, b"\x03\x10" + int16 + beat + f32, b"\x01\x01" + b"\xa5\x5a" + beat,
            b"\xff\x07" + f32 * 3]


def rawblock_seeds() -> list[bytes]:
    """RawBlocks in each shape the contract allows: bin values, number arrays, `ts`, `seq`."""
    import numpy as np

    from lifeline.contract import RawBlock

    values = np.array([0.5, 0.61, 0.72, -1.0], dtype=np.float64)
    return [
        RawBlock("YZ-P-0001", values, t0=1_700_000_000_000, dt=100.0, seq=3).encode(),
        RawBlock("YZ-P-0001", values, t0=1_700_000_000_000, dt=100.0).encode(as_bin=False),
        RawBlock("s", values[:1]).encode(),
        RawBlock("a.b-c_d", values, ts=np.array([1, 2, 3, 4], dtype=np.int64), seq=2**32 - 1).encode(),
    ]


def alert_seeds() -> list[bytes]:
    """Alerts with and without the optional `limit` and `extra`."""
    from lifeline.contract import Alert

    base = Alert(id="yz-a:17", agent="yz-a", sensor="YZ-P-0001", kind="pipe.pressure", site="jfb-valve-12",
                 township="jiefangbei", district="yuzhong", rule="high", level=2, prev=1, value=0.75,
                 ts=1_700_000_000_000, seq=17)
    full = Alert(**{**_alert_fields(base), "limit": 0.7, "extra": {"window": [1, 2], "score": 3.5}})
    return [base.encode(), full.encode()]


def _alert_fields(alert: object) -> dict[str, object]:
    return {name: getattr(alert, name) for name in alert.__slots__}  # type: ignore[attr-defined]


def config_seeds() -> list[bytes]:
    """The sample agent config and a minimal one."""
    minimal = b'[agent]\nid = "a"\ndistrict = "d"\ntownship = "t"\n'
    return [SAMPLE_CONFIG.read_bytes(), minimal]


SEEDS: Final[dict[str, Callable[[], list[bytes]]]] = {
    "frames": frame_seeds, "rawblock": rawblock_seeds, "alert": alert_seeds, "config": config_seeds,
}


# --------------------------------------------------------------------------- targets (worker side)


def chunk_sizes(a: int, b: int) -> tuple[int, int]:
    """Two alternating chunk lengths from two fuzzed bytes: 1..256 bytes each."""
    return a + 1, b + 1


def instrument_python_functions(module: ModuleType) -> int:
    """Add atheris coverage to every plain function and method defined in `module` (numba
    dispatchers are left alone); returns how many were instrumented."""
    import atheris

    count = 0
    for value in vars(module).values():
        owners = [value] if inspect.isclass(value) and value.__module__ == module.__name__ else []
        candidates = [v for owner in owners for v in vars(owner).values()] if owners else [value]
        for func in candidates:
            if isinstance(func, property):
                func = func.fget
            if inspect.isfunction(func) and func.__module__ == module.__name__:
                atheris.instrument_func(func)
                count += 1
    return count


def frames_target() -> Callable[[bytes], None]:
    """FrameDecoder.feed on the input cut in alternating chunk lengths: returns frames, never raises."""
    import atheris

    from edge_agent import frames

    # numba cannot compile instrumented bytecode: instrument the module's Python functions only.
    instrument_python_functions(frames)
    frames.crc16_modbus(b"warm up")  # compile (or load) the numba kernel outside the timed loop
    kinds = (frames.SampleFrame, frames.Heartbeat)
    limit = frames.MAX_FRAME_SIZE - 1

    def one(data: bytes) -> None:
        if len(data) < 2:
            return
        sizes = chunk_sizes(data[0], data[1])
        stream = data[2:]
        decoder = frames.FrameDecoder()
        pos = i = 0
        while pos < len(stream):
            step = sizes[i % 2]
            for frame in decoder.feed(stream[pos:pos + step]):
                if not isinstance(frame, kinds):
                    raise AssertionError(f"feed returned {type(frame).__name__}")
            if decoder.buffered > limit:
                raise AssertionError(f"decoder holds {decoder.buffered} bytes, more than {limit}")
            pos += step
            i += 1

    return one


def rawblock_target() -> Callable[[bytes], None]:
    """decode_raw_block: a RawBlock or DecodeError, nothing else."""
    import atheris

    with atheris.instrument_imports(include=["lifeline"]):
        from lifeline.contract import DecodeError, decode_raw_block

    def one(data: bytes) -> None:
        try:
            decode_raw_block(data, "YZ-P-0001" if data[:1] == b"\x85" else None)
        except DecodeError:
            pass

    return one


def alert_target() -> Callable[[bytes], None]:
    """decode_alert: an Alert or DecodeError, nothing else."""
    import atheris

    with atheris.instrument_imports(include=["lifeline"]):
        from lifeline.contract import DecodeError, decode_alert

    def one(data: bytes) -> None:
        try:
            decode_alert(data)
        except DecodeError:
            pass

    return one


def config_target(scratch: Path) -> Callable[[bytes], None]:
    """load_toml_model(path, AgentConfig) on fuzzed file bytes: an AgentConfig or ConfigError."""
    import atheris

    with atheris.instrument_imports(include=["edge_agent.config", "lifeline.config", "lifeline.contract",
                                             "tomllib"]):
        import tomllib  # noqa: F401  (instrumented when first imported here)

        from edge_agent.config import AgentConfig
        from lifeline.config import load_toml_model
        from lifeline.errors import ConfigError
    import edge_agent.kernels.profiles  # noqa: F401  (numba kernels: import outside the instrumentation)

    path = scratch / "agent.toml"

    def one(data: bytes) -> None:
        path.write_bytes(data)
        try:
            load_toml_model(path, AgentConfig)
        except ConfigError:
            pass

    return one


BUILDERS: Final[dict[str, Callable[[Path], Callable[[bytes], None]]]] = {
    "frames": lambda scratch: frames_target(), "rawblock": lambda scratch: rawblock_target(),
    "alert": lambda scratch: alert_target(), "config": config_target,
}


def run_worker(target: str, runs: int, corpus: Path) -> None:
    """Fuzz one target in this process; atheris exits it (0: no crash, no hang)."""
    import atheris

    scratch = corpus.parent / "scratch"  # inside the driver's temporary directory, removed after
    scratch.mkdir(exist_ok=True)
    one = BUILDERS[target](scratch)
    print(f"FUZZ-START {time.time():.6f}", file=sys.stderr, flush=True)
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-timeout={INPUT_TIMEOUT_S}", "-rss_limit_mb=2048",
                   "-max_len=8192", "-print_final_stats=1", "-seed=1", str(corpus)], one)
    atheris.Fuzz()


# --------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class FuzzOutcome:
    """One target's run: how many inputs, how fast, and whether it ended cleanly."""

    target: str
    runs: int
    seconds: float
    exit_code: int
    tail: str

    @property
    def inputs_per_s(self) -> float:
        return self.runs / self.seconds if self.seconds > 0 else 0.0


def write_corpus(target: str, directory: Path) -> Path:
    """A fresh corpus directory holding the target's seeds."""
    corpus = directory / target
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS[target]()):
        (corpus / f"seed-{i}").write_bytes(seed)
    return corpus


def fuzz_target(target: str, runs: int, timeout_s: float | None = None) -> FuzzOutcome:
    """Run one target's worker in a subprocess and measure it."""
    with tempfile.TemporaryDirectory(prefix="lifeline-fuzz-") as tmp:
        corpus = write_corpus(target, Path(tmp))
        cmd = [sys.executable, "-m", "benchmarks.fuzz", "--worker", target, "--runs", str(runs),
               "--corpus", str(corpus)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONHASHSEED": "0"})
    end = time.time()
    started = re.search(r"FUZZ-START ([0-9.]+)", proc.stderr)
    done = _DONE.search(proc.stderr)
    seconds = end - float(started.group(1)) if started else float("nan")
    executed = int(done.group(1)) if done else 0
    tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
    return FuzzOutcome(target, executed, seconds, proc.returncode, tail)


def result_row(outcome: FuzzOutcome) -> str:
    """One table row; the date says when, since rows of separate runs are kept side by side."""
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    crashed = "none" if outcome.exit_code == 0 else f"exit {outcome.exit_code}"
    return (f"| {outcome.target} | {outcome.runs:,} | {outcome.seconds:,.0f} | {outcome.inputs_per_s:,.0f} | "
            f"{crashed} | {when} |")


def previous_rows(section_text: str) -> dict[str, str]:
    """Table rows by target from an existing "## Fuzzing" section (kept for targets not re-run)."""
    from benchmarks.suite import table_rows

    return {target: row for target, row in table_rows(section_text).items()
            if target in TARGETS and row.count("|") == 7}  # six cells: this table's current layout


def results_section(outcomes: list[FuzzOutcome], old_section: str = "") -> str:
    """The "## Fuzzing" section body: rows of this run, and earlier rows of targets it did not run."""
    rows = previous_rows(old_section)
    rows.update({o.target: result_row(o) for o in outcomes})
    return ("Command: `python -m benchmarks.fuzz --runs 1000000 --write` (or `--target NAME` for one "
            f"target; its row is replaced, the others kept). atheris {_atheris_version()}, libFuzzer "
            f"`-seed=1 -timeout={INPUT_TIMEOUT_S} -max_len=8192`, one target at a time in its own process, "
            "seeded from valid examples; 2-core machine shared with other work, so inputs/s are a floor. "
            "A crash is any exception other than the decoder's own error (DecodeError, ConfigError) or a "
            f"broken invariant (FrameDecoder.feed returning a non-frame or holding over MAX_FRAME_SIZE - 1 "
            f"bytes); a hang is an input taking over {INPUT_TIMEOUT_S} s.\n\n"
            "| target | inputs | seconds | inputs/s | crashes or hangs | when (UTC) |\n"
            "| --- | ---: | ---: | ---: | --- | --- |\n"
            + "\n".join(rows[t] for t in TARGETS if t in rows) + "\n")


def write_results(outcomes: list[FuzzOutcome]) -> None:
    """Rewrite the "## Fuzzing" section of RESULTS.md, keeping rows of targets not run now."""
    from benchmarks.suite import read_section, write_section

    write_section(SECTION, results_section(outcomes, read_section(SECTION)))


def _atheris_version() -> str:
    from importlib.metadata import version

    return version("atheris")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    parser.add_argument("--target", choices=TARGETS, action="append",
                        help="fuzz only this target (repeatable); default: all")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--write", action="store_true", help="rewrite the '## Fuzzing' section of RESULTS.md")
    parser.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.runs, args.corpus)
        return 0
    outcomes: list[FuzzOutcome] = []
    for target in args.target or TARGETS:
        outcome = fuzz_target(target, args.runs)
        outcomes.append(outcome)
        status = "ok" if outcome.exit_code == 0 else f"FAILED (exit {outcome.exit_code})"
        print(f"{target:9s} {outcome.runs:>10,} inputs in {outcome.seconds:8.1f} s "
              f"= {outcome.inputs_per_s:>9,.0f} inputs/s  {status}", flush=True)
        if outcome.exit_code != 0:
            print(outcome.tail, flush=True)
        if args.write:  # after every target, so a long run keeps what it has measured so far
            write_results([outcome])
            print(f"wrote the {target} row of the section '{SECTION}' of benchmarks/RESULTS.md", flush=True)
    return 0 if all(o.exit_code == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
