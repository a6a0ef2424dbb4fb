"""Helpers for the console's tests: configs, a console in a thread with its users, an API client
that logs in like a browser, alerts to publish, and a Chromium page logged in as a user."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from console.auth import Accounts
from console.config import ConsoleConfig
from console.db import migrate, open_database
from console.service import ConsoleService, start_in_thread
from lifeline.contract import Alert, Status, alert_topic, status_topic

PASSWORD = "correct horse battery"
_ids = itertools.count(1)

#: Chromium as the lead's notes give it: the Debian package, headless, nothing from the network.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def console_config(broker_url: str, store_url: str, db_url: str, *, prefix: str, instance: str = "console",
                   **console: Any) -> ConsoleConfig:
    return ConsoleConfig.model_validate({
        "console": {"id": instance, "port": 0, "escalation_check_s": 0.2, **console},
        "mqtt": {"url": broker_url, "prefix": prefix, "reconnect_max_s": 1},
        "database": {"url": db_url},
        "store": {"url": store_url},
    })


def add_users(config: ConsoleConfig, users: list[tuple[str, str, str]]) -> None:
    """Create (name, role, area) users with PASSWORD in the config's database."""
    db = open_database(config.database)
    migrate(db)
    accounts = Accounts(db)
    known = {u.username for u, _ in accounts.list_users()}
    for name, role, area in users:
        if name not in known:
            accounts.add_user(name, PASSWORD, role=role, area=area)
    db.dispose()


@contextmanager
def running_console(config: ConsoleConfig, users: list[tuple[str, str, str]] = ()  # type: ignore[assignment]
                    ) -> Iterator[ConsoleService]:
    """A console in a thread, connected to its broker, stopped on exit."""
    add_users(config, list(users))
    service, thread, stop = start_in_thread(config)
    try:
        assert service.link is not None
        deadline = time.monotonic() + 20
        while not service.link.connected.is_set():
            assert time.monotonic() < deadline, "the console did not connect to the broker"
            time.sleep(0.02)  # a flag set on another thread's loop: poll it, bounded
        yield service
    finally:
        stop()
        assert not thread.is_alive()


@dataclass
class ApiClient:
    """The console's HTTP API as a logged-in user sees it."""

    http: httpx.Client
    csrf: str

    @classmethod
    def login(cls, base_url: str, username: str, password: str = PASSWORD) -> ApiClient:
        http = httpx.Client(base_url=base_url, timeout=20)
        resp = http.post("/login", json={"username": username, "password": password})
        assert resp.status_code == 200, resp.text
        return cls(http, resp.json()["csrf"])

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params)

    def act(self, case_id: int, action: str, **fields: Any) -> httpx.Response:
        return self.http.post(f"/api/cases/{case_id}/{action}", json=fields, headers={"X-CSRF-Token": self.csrf})

    def board(self, **params: Any) -> dict[str, Any]:
        resp = self.get("/api/board", **params)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.http.close()


def make_alert(sensor: str, *, level: int, prev: int = 0, rule: str = "high", district: str = "yz",
               township: str = "jfb", site: str = "", agent: str = "agent-1", kind: str = "pipe.pressure",
               value: float = 0.75, limit: float | None = 0.7, ts: int | None = None,
               extra: dict[str, Any] | None = None) -> Alert:
    seq = next(_ids)
    ts = ts if ts is not None else int(time.time() * 1000)
    return Alert(id=f"{agent}:{sensor}:{rule}:{level}@{ts}:{seq}", agent=agent, sensor=sensor, kind=kind,
                 site=site or f"site-{sensor}", township=township, district=district, rule=rule,
                 level=level, prev=prev, value=value, ts=ts, seq=seq, limit=limit, extra=extra)


def agent_topic_of(prefix: str, alert: Alert) -> str:
    """Where an agent publishes the alert (the gateway routes it on to the ops topics)."""
    return alert_topic(prefix, alert.district, alert.site, alert.sensor)


def agent_status(prefix: str, agent: str, *, district: str = "yz", township: str = "jfb",
                 sites: dict[str, list[float]] | None = None, **extra: Any) -> tuple[str, bytes]:
    """A retained online Status with the agent's place and site coordinates."""
    payload = Status(agent, "online", int(time.time() * 1000),
                     extra={"district": district, "township": township, "sites": sites or {}, **extra}).encode()
    return status_topic(prefix, agent), payload


def sqlite_url(tmp_path: Path, name: str = "console.db") -> str:
    return f"sqlite:///{tmp_path / name}"
