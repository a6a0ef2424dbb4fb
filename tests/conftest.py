"""Shared fixtures: real Mosquitto and VictoriaMetrics on free loopback ports, real pseudo-terminals."""

from __future__ import annotations

import os
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from simulators.servers import MosquittoServer, VictoriaMetricsServer

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoServer]:
    """A Mosquitto broker for the whole test session (anonymous, loopback only)."""
    with MosquittoServer() as server:
        yield server


@pytest.fixture(scope="session")
def store() -> Iterator[VictoriaMetricsServer]:
    """A VictoriaMetrics store for the whole test session, de-duplicating re-written points."""
    with VictoriaMetricsServer() as server:
        yield server


@dataclass
class PtyPair:
    """A pseudo-terminal: the sensor side writes to `master_fd`, the agent opens `device`."""

    master_fd: int
    slave_fd: int
    device: str

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master_fd, view):]


@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    """A raw-mode pseudo-terminal pair, closed after the test."""
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    pair = PtyPair(master, slave, os.ttyname(slave))
    try:
        yield pair
    finally:
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL cluster for the whole test session (loopback, trust authentication)."""
    from simulators.servers import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium (the Debian package) driven by Playwright, for the console's browser tests."""
    from playwright.sync_api import sync_playwright

    from tests.console_harness import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
