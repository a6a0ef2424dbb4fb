"""`lifeline demo`: the whole chain runs, reports, and leaves nothing running; with `--duration N`, and
when a real Ctrl-C on its terminal stops it early."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
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
    # no terminal: one line per stage, so a log shows where a slow start is
    for stage in ("servers up: broker mqtt://127.0.0.1:", "loading the detection kernels 1/4: detection rules",
                  "kernels ready in", "started the gateway and"):
        assert stage in output, output[:3000]
    assert re.search(r"agents online (\d+)/\1\n", output), output[:3000]
    assert "stopped early" not in output  # --duration is a full run
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


_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class TerminalSession:
    """`lifeline demo` on a real pseudo-terminal (its controlling terminal), read by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "COLUMNS": "160", "LINES": "60", "TERM": "xterm-256color"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a session leader whose controlling terminal is the pty
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "lifeline.cli", *args], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
        self.raw = bytearray()
        self.exit_code: int | None = None
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            with self.changed:
                self.raw += chunk
                self.changed.notify_all()
            if not chunk:
                return

    @property
    def text(self) -> str:
        with self.changed:
            return _ANSI.sub(b"", bytes(self.raw)).decode(errors="replace")

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not predicate(_ANSI.sub(b"", bytes(self.raw)).decode(errors="replace")):
                left = deadline - time.monotonic()
                if left <= 0 or not self.reader.is_alive():
                    return False
                self.changed.wait(left)
        return True

    def ctrl_c(self) -> None:
        """Type Ctrl-C: the terminal sends SIGINT to its foreground process group."""
        os.write(self.fd, b"\x03")

    def close(self, timeout_s: float = 90) -> None:
        """Close the terminal; a demo still running (a failed test) takes the hang-up as a stop."""
        try:
            os.close(self.fd)  # SIGHUP to the demo, which stops as on Ctrl-C
        except OSError:
            pass
        if self.exit_code is None:
            try:
                self.wait_exit(timeout_s)
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)

    def wait_exit(self, timeout_s: float) -> int:
        """The demo's exit code once it exits; AssertionError if it runs on past `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.exit_code is None and time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.reader.join(10)
                self.exit_code = os.waitstatus_to_exitcode(status)
            else:
                self.reader.join(0.2)  # still tearing down; its output wakes nothing to wait on
        if self.exit_code is None:
            raise AssertionError(f"the demo did not exit within {timeout_s:.0f} s:\n{self.text[-4000:]}")
        return self.exit_code


def _simulated_s(text: str) -> int:
    found = re.findall(r"simulated (\d+)/\d+ s", text)
    return int(found[-1]) if found else 0


def test_ctrl_c_in_a_terminal_stops_the_district_first_and_reports_from_the_store(tmp_path: Path) -> None:
    """A real Ctrl-C on the demo's terminal: the servers outlive the agents, the report comes from
    the store, says the run was stopped early, and the stop itself raises no `gap` alerts."""
    session = TerminalSession(["demo"], tmp_path)
    try:
        stopped_early_by_ctrl_c(session)
    finally:
        session.close()


def stopped_early_by_ctrl_c(session: TerminalSession) -> None:
    assert session.wait_for(lambda t: re.search(r"(\d+) townships\)", t) is not None, 60), session.text[-4000:]
    agents = re.search(r"(\d+) townships\)", session.text).group(1)  # one agent per township
    assert session.wait_for(lambda t: f"agents online {agents}/{agents}" in t, 180), session.text[-4000:]
    # past the scenario's burst at 20 s, so there are alerts to store and route
    assert session.wait_for(lambda t: _simulated_s(t) >= 26, 120), session.text[-4000:]
    session.ctrl_c()
    code = session.wait_exit(150)
    output = session.text
    assert code == 0, output[-4000:]
    report = output.split("lifeline demo report", 1)[-1]
    assert "stopping early (SIGINT)" in output
    assert re.search(r"stopped early \(SIGINT\) after \d+ of 600 s simulated", report), report[-4000:]
    samples = re.search(r"samples processed by the agents:\s*([\d,]+)", report)
    assert samples and int(samples.group(1).replace(",", "")) > 1000, report[-4000:]
    routed = re.search(r"alerts routed by tier: township: (\d+)", report)
    assert routed and int(routed.group(1)) > 0, report[-4000:]
    stored = re.search(r"store: (\d+) alert points", report)
    assert stored and int(stored.group(1)) > 0, "the store must still be up when the report reads it"
    late = re.search(r"after the simulation stopped not counted: ([^)]*)\)", report)
    assert late is None or "gap" not in late.group(1), f"the demo's own stop raised gap alerts: {late.group(1)}"
    workdir = re.search(r"work directory (\S+)", output)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists(), "the temporary directory must be removed"
    assert [c for c in running_commands() if workdir.group(1) in c] == []


def test_closing_the_terminal_stops_the_demo_and_leaves_nothing_running(tmp_path: Path) -> None:
    """The terminal goes away (SIGHUP): the servers, agents and gateway are stopped with the demo."""
    session = TerminalSession(["demo"], tmp_path)
    try:
        assert session.wait_for(lambda t: re.search(r"agents online (\d+)/\1\b", t) is not None, 180), \
            session.text[-4000:]
        workdir = re.search(r"work directory (\S+)", session.text)
        assert workdir is not None
    finally:
        session.close()
    assert session.exit_code is not None
    assert [c for c in running_commands() if workdir.group(1) in c] == []
    assert not Path(workdir.group(1)).exists(), "the temporary directory must be removed"
