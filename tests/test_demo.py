"""`lifeline demo --duration N`: the whole chain runs, reports, and leaves nothing running."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def running_commands() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


def test_demo_runs_the_chain_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lifeline.cli", "demo", "--duration", "25"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "lifeline demo report" in output
    samples = re.search(r"samples processed by the agents:\s*([\d,]+)", output)
    assert samples and int(samples.group(1).replace(",", "")) > 1000, output[-3000:]
    routed = re.search(r"alerts routed by tier: township: (\d+)", output)
    assert routed and int(routed.group(1)) > 0, "the burst at 20 s must reach the township tier"
    assert "events detected" in output  # the score against the ground truth
    assert re.search(r"ops console: http://127\.0\.0\.1:\d+ log in as duty / \S+", output), output[:3000]
    workdir = re.search(r"work directory (\S+)", output)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists(), "the temporary directory must be removed"
    leftovers = [c for c in running_commands() if workdir.group(1) in c]
    assert leftovers == [], f"processes left running: {leftovers}"
