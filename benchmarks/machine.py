"""What the benchmarks ran on: CPU, cores, memory, OS, Python and library versions, load, date.

Figures mean little without the machine behind them, so the suite writes this at the top of
RESULTS.md. Everything is read from /proc, /etc/os-release and package metadata; a part that
cannot be read is given as "unknown" rather than failing the run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

UNKNOWN = "unknown"

#: How many times longer a Raspberry Pi-class core (Raspberry Pi 4, Cortex-A72 at 1.5-1.8 GHz)
#: takes than one core of this machine (AMD EPYC, a VM) for the agent's NumPy and numba work:
#: an estimate from single-core results published for both (integer and floating-point
#: throughput of a Cortex-A72 at 1.8 GHz is a fifth to a quarter of a current server core);
#: taken at the slow end so that a budget met here with this factor holds on the cabinet.
PI_CORE_FACTOR = 6.0


@dataclass(frozen=True)
class Machine:
    """A description of the machine and software a run was measured on."""

    cpu_model: str
    cores: int
    memory_gib: float
    os_name: str
    kernel: str
    python: str
    numpy: str
    numba: str
    mosquitto: str
    victoria_metrics: str
    load_average: tuple[float, float, float]
    date: str

    def one_line(self) -> str:
        """The machine in one sentence, for a results header."""
        return (f"{self.cpu_model}, {self.cores} core(s), {self.memory_gib:.0f} GiB; {self.os_name} "
                f"(Linux {self.kernel}); Python {self.python}, numpy {self.numpy}, numba {self.numba}; "
                f"Mosquitto {self.mosquitto}, VictoriaMetrics {self.victoria_metrics}")

    def markdown_rows(self) -> list[str]:
        """The machine as a two-column Markdown table."""
        rows = [("CPU", self.cpu_model), ("cores", str(self.cores)),
                ("memory", f"{self.memory_gib:.1f} GiB"), ("OS", f"{self.os_name}, Linux {self.kernel}"),
                ("Python", self.python), ("numpy / numba", f"{self.numpy} / {self.numba}"),
                ("Mosquitto / VictoriaMetrics", f"{self.mosquitto} / {self.victoria_metrics}"),
                ("load average at start (1/5/15 min)", " / ".join(f"{x:.2f}" for x in self.load_average)),
                ("date (UTC)", self.date)]
        return ["| machine | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def describe_machine(now: datetime | None = None) -> Machine:
    """Read the description of this machine now."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return Machine(
        cpu_model=cpu_model(), cores=usable_cores(), memory_gib=memory_gib(), os_name=os_name(),
        kernel=platform.release(), python=platform.python_version(), numpy=package_version("numpy"),
        numba=package_version("numba"), mosquitto=mosquitto_version(),
        victoria_metrics=victoria_metrics_version(), load_average=load_average(),
        date=when.strftime("%Y-%m-%d %H:%M"),
    )


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as the kernel reports it."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_gib(meminfo: Path = Path("/proc/meminfo")) -> float:
    """Total memory in GiB."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def os_name(os_release: Path = Path("/etc/os-release")) -> str:
    """The distribution's pretty name, e.g. "Debian GNU/Linux 12 (bookworm)"."""
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system() or UNKNOWN


def package_version(name: str) -> str:
    """An installed distribution's version."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (a shared machine shows here)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def _command_output(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def mosquitto_version() -> str:
    """Mosquitto's version, from `mosquitto -h` (it prints it on the first line)."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None)
    if binary is None:
        return "not installed"
    found = re.search(r"mosquitto version (\S+)", _command_output([binary, "-h"]))
    return found.group(1) if found else UNKNOWN


def victoria_metrics_version() -> str:
    """VictoriaMetrics' version, from `victoria-metrics -version`."""
    binary = shutil.which("victoria-metrics") or (
        "/usr/bin/victoria-metrics" if Path("/usr/bin/victoria-metrics").is_file() else None)
    if binary is None:
        return "not installed"
    found = re.search(r"v(\d+\.\d+\.\d+)", _command_output([binary, "-version"]))
    return found.group(1) if found else debian_version("victoria-metrics")


def debian_version(package: str) -> str:
    """The upstream part of an installed Debian package's version (builds without an embedded one)."""
    found = re.match(r"(?:\d+:)?([^-+~]+)", _command_output(["dpkg-query", "-W", "-f=${Version}", package]))
    return found.group(1) if found else UNKNOWN


if __name__ == "__main__":
    print("\n".join(describe_machine().markdown_rows()))
