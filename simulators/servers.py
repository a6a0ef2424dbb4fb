"""Local Mosquitto and VictoriaMetrics servers on free loopback ports, for tests, demo and benchmarks.

Each server runs from the system's packages in its own temporary directory with its own config,
and is stopped (and its directory removed) by `stop()` or leaving the context manager.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from lifeline.errors import LifelineError


class ServerError(LifelineError):
    """A local server is missing from the system or did not start; the message says which and how to fix it."""


APT_HINT = "install it with: sudo apt-get install -y mosquitto victoria-metrics"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str, *candidates: str) -> str:
    """Locate a server binary on PATH or in the Debian package's location."""
    found = shutil.which(name)
    if found:
        return found
    for path in candidates:
        if Path(path).is_file():
            return path
    raise ServerError(f"{name} is not installed; {APT_HINT}")


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until a TCP connect to host:port succeeds; raise ServerError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"server on port {port} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ServerError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s") from None
            time.sleep(0.02)  # polling a port that is not there yet; there is no event to wait on


class _LocalServer:
    """Common lifecycle: a process in its own temporary directory, stopped on exit."""

    name = "server"

    def __init__(self, *, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"lifeline-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        assert self.proc is not None
        wait_for_port("127.0.0.1", self.port, 20.0, self.proc)

    def start(self) -> Self:
        """Start the server and wait until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = self.log_path.open("ab")
        # Its own process group: a Ctrl-C in the terminal (SIGINT to the foreground group) is for
        # the program that started it, which stops it last, after its clients are done.
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir, process_group=0)
        log.close()
        try:
            self._wait_ready()
        except ServerError as exc:
            self.kill()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServerError(f"{self.name} did not start: {exc}\n{tail}") from exc
        return self

    def kill(self) -> None:
        """Stop the process abruptly (SIGKILL), keeping its data directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """Stop the process cleanly (SIGTERM), keeping its data directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self) -> Self:
        """Stop cleanly and start again on the same port with the same data."""
        self.terminate()
        return self.start()

    def stop(self) -> None:
        """Stop the process and remove the temporary directory this object created."""
        self.terminate()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class MosquittoServer(_LocalServer):
    """A Mosquitto broker on 127.0.0.1 with its own config; `extra_config` adds auth, TLS or ACL lines.

    With `extra_config` the caller writes the listener section itself when it needs TLS: use
    `{port}` in it for the broker's port.
    """

    name = "mosquitto"

    def __init__(self, *, extra_config: str = "", listener: str | None = None, port: int | None = None,
                 workdir: Path | None = None) -> None:
        super().__init__(port=port, workdir=workdir)
        self.binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
        self.listener = listener if listener is not None else "allow_anonymous true\n"
        self.extra_config = extra_config

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        # Started as root, Mosquitto drops to its own user and then cannot write its session
        # store or read key files in our root-owned temporary directory: keep it root.
        run_as = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            run_as
            + "per_listener_settings false\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 20000\n"  # the gateway's default max_inflight (deploy/mosquitto)
            "message_size_limit 16777216\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"listener {self.port} 127.0.0.1\n"
            + self.listener + self.extra_config.format(port=self.port, dir=self.workdir)
        )
        return [self.binary, "-c", str(conf)]


@dataclass
class ExportedSeries:
    """One series read back from VictoriaMetrics' export API."""

    metric: dict[str, str]
    values: list[float] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)


class VictoriaMetricsServer(_LocalServer):
    """VictoriaMetrics speaking the InfluxDB v2 write API; a re-written point overwrites the old one."""

    name = "victoria-metrics"

    def __init__(self, *, port: int | None = None, workdir: Path | None = None) -> None:
        super().__init__(port=port, workdir=workdir)
        self.binary = find_binary("victoria-metrics", "/usr/bin/victoria-metrics")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir}/data",
            "-dedup.minScrapeInterval=1ms",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-loggerLevel=WARN",
        ]

    def _wait_ready(self) -> None:
        super()._wait_ready()
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError("victoria-metrics /health did not answer OK within 20 s")
            time.sleep(0.05)  # polling readiness; there is no event to wait on

    def flush(self) -> None:
        """Make everything written so far visible to queries."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass

    def export(self, match: str, start_ms: int | None = None) -> list[ExportedSeries]:
        """Every series matching a selector such as `{__name__=~"alert_.*"}` (JSON-lines export)."""
        self.flush()
        query: dict[str, Any] = {"match[]": match}
        if start_ms is not None:
            query["start"] = str(start_ms // 1000)
        url = f"{self.url}/api/v1/export?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = resp.read().decode()
        out = []
        for line in body.splitlines():
            if line.strip():
                row = json.loads(line)
                out.append(ExportedSeries(row["metric"], row["values"], row["timestamps"]))
        return out


class PostgresServer(_LocalServer):
    """PostgreSQL (the Debian package) in its own cluster: `initdb` in the temporary directory,
    trust authentication on 127.0.0.1 only, one database `lifeline` owned by user `lifeline`.

    PostgreSQL refuses to run as root; as root it runs as the `postgres` user (runuser).
    """

    name = "postgres"
    database = "lifeline"
    user = "lifeline"

    def __init__(self, *, port: int | None = None, workdir: Path | None = None) -> None:
        super().__init__(port=port, workdir=workdir)
        initdb = find_binary("initdb", *sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")))
        self.bindir = Path(initdb).resolve().parent  # the cluster tools sit beside it
        self.data = self.workdir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://127.0.0.1:{self.port}/{self.database}"

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def _command(self) -> list[str]:
        return self._as_owner([str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                               "-k", str(self.workdir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                               "-c", "synchronous_commit=off", "-c", "max_connections=200"])

    def start(self) -> Self:
        if not (self.data / "PG_VERSION").exists():
            if os.geteuid() == 0:
                shutil.chown(self.workdir, "postgres", "postgres")
            result = subprocess.run(self._as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                                                    "--auth=trust", "-E", "UTF8", "--no-sync"]),
                                    capture_output=True, text=True, cwd=self.workdir)
            if result.returncode != 0:
                raise ServerError(f"initdb failed: {result.stderr.strip()[-1000:]}")
        super().start()
        self._create_database()
        return self

    def _wait_ready(self) -> None:
        super()._wait_ready()
        deadline = time.monotonic() + 20
        while subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise ServerError("postgres did not accept connections within 20 s")
            time.sleep(0.05)  # polling readiness; there is no event to wait on

    def _create_database(self) -> None:
        self.new_database(self.database)

    def new_database(self, name: str) -> str:
        """Create database `name` (`[a-z0-9_]+`) if it is not there; returns its URL."""
        if not name.replace("_", "").isalnum() or not name.islower():
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        psql = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres",
                "-tAc"]
        have = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
                              capture_output=True, text=True)
        if have.stdout.strip() != "1":
            made = subprocess.run([*psql, f"CREATE DATABASE {name}"], capture_output=True, text=True)
            if made.returncode != 0:
                raise ServerError(f"cannot create database {name}: {made.stderr.strip()}")
        return f"postgresql://127.0.0.1:{self.port}/{name}"
