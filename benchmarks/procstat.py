"""What /proc says about a running process: CPU seconds and memory, for the benchmarks that watch
the agent, the gateway and the servers from outside. Each read raises OSError once the process is gone."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat, 10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mib(pid: int, keys: Sequence[str] = ("VmHWM",)) -> dict[str, float]:
    """Memory lines of /proc/PID/status in MiB, e.g. VmHWM (peak resident), VmRSS (resident now),
    RssAnon / RssFile (the split of the resident set); NaN for a line the kernel does not give."""
    text = Path(f"/proc/{pid}/status").read_text()
    out = {}
    for key in keys:
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        out[key] = int(match.group(1)) / 1024 if match else float("nan")
    return out
