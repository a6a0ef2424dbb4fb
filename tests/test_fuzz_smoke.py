"""Each atheris harness of benchmarks/fuzz.py runs a few thousand coverage-guided inputs cleanly,
so CI notices when a harness breaks or a decoder starts raising something it should not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.agent_harness import ROOT

pytest.importorskip("atheris")

RUNS = {"frames": 2000, "rawblock": 5000, "alert": 5000, "config": 2000}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", sorted(RUNS))
def test_fuzz_target_runs_clean(target: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fuzz", "--target", target, "--runs", str(RUNS[target])],
                          cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{RUNS[target]:,} inputs" in proc.stdout, proc.stdout
