"""The console in `lifeline demo`: started in the demo's process on a free port, with a made-up map
of the scenario's district and two generated users, stopped with the demo."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console.auth import Accounts
from console.config import ConsoleConfig
from console.db import migrate, open_database
from console.geo import grid_places, sites_toml
from console.service import start_in_thread


@dataclass(frozen=True)
class DemoConsole:
    """Where the demo's console is and who may log in."""

    url: str
    #: (user, password, what they see)
    users: list[tuple[str, str, str]]
    stop: Callable[[], None]


def start_demo_console(workdir: Path, *, port: int, broker_url: str, store_url: str, prefix: str,
                       scenario: Any) -> DemoConsole:
    """Start a console on `port` for the demo's district; `scenario` is the demo's resolved Scenario."""
    workdir.mkdir(parents=True, exist_ok=True)
    townships = [(t.id, sorted({s.sim.site for s in t.sensors})) for t in scenario.townships]
    sites, boundaries = grid_places(scenario.district, townships)
    (workdir / "sites.toml").write_text(sites_toml(sites))
    (workdir / "boundaries.geojson").write_text(json.dumps(boundaries))
    config = ConsoleConfig.model_validate({
        "console": {"id": "demo", "port": port, "sites_file": str(workdir / "sites.toml"),
                    "boundaries_file": str(workdir / "boundaries.geojson"), "ack_minutes": [5, 3, 2, 1]},
        "mqtt": {"url": broker_url, "prefix": prefix},
        "database": {"url": f"sqlite:///{workdir / 'console.db'}"},
        "store": {"url": store_url},
    })
    db = open_database(config.database)
    migrate(db)
    accounts = Accounts(db)
    first = townships[0][0] if townships else ""
    users = [("duty", secrets.token_urlsafe(9), f"supervisor of district {scenario.district} (level >= 2)"),
             (first, secrets.token_urlsafe(9), f"operator of township {first} (level >= 1)")]
    accounts.add_user(users[0][0], users[0][1], role="supervisor", area=scenario.district, display_name="Duty officer")
    if first:
        accounts.add_user(users[1][0], users[1][1], role="operator", area=f"{scenario.district}/{first}")
    db.dispose()
    service, _, stop = start_in_thread(config)
    return DemoConsole(service.url, users if first else users[:1], stop)
