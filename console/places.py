"""Where things are and how the agents are: retained agent statuses (`P/status/+`), site
coordinates (from those statuses and the optional sites file) and the boundaries GeoJSON.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.config import ConsoleSection, SiteSettings, load_sites
from lifeline.contract import Status
from lifeline.errors import ConfigError


@dataclass(slots=True)
class AgentInfo:
    """The newest status of one agent, as the cockpit shows it."""

    agent: str
    state: str
    ts: int
    received_ms: int
    district: str = ""
    township: str = ""
    backlog: int | None = None
    sensors: int | None = None
    sensors_gap: int | None = None
    dropped_alerts: int | None = None
    disk_full: bool = False
    version: str = ""

    def view(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _coords(value: Any) -> tuple[float, float] | None:
    """A `[lat, lon]` pair if it is one (finite, in range)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    lat, lon = value
    if not all(type(v) in (int, float) and math.isfinite(v) for v in (lat, lon)):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return float(lat), float(lon)


@dataclass
class Places:
    """Agents, sites and boundaries; updated from the MQTT task, read by web requests."""

    #: site -> SiteSettings of the sites file.
    file_sites: dict[str, SiteSettings] = field(default_factory=dict)
    boundaries: dict[str, Any] | None = None
    agents: dict[str, AgentInfo] = field(default_factory=dict)
    #: site -> (lat, lon, district, township) from the agents' statuses.
    status_sites: dict[str, tuple[float, float, str, str]] = field(default_factory=dict)
    #: sensor -> {"high": [...], "low": [...]} from the agents' statuses.
    limits: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_config(cls, section: ConsoleSection) -> Places:
        places = cls()
        if section.sites_file is not None:
            places.file_sites = load_sites(section.sites_file)
        if section.boundaries_file is not None:
            places.boundaries = load_boundaries(section.boundaries_file)
        return places

    def on_status(self, status: Status) -> AgentInfo | None:
        """Take a retained status in; returns the agent's new info (None if it was older)."""
        extra = status.extra
        with self.lock:
            old = self.agents.get(status.agent)
            if old is not None and status.ts < old.ts:
                return None
            info = AgentInfo(
                agent=status.agent, state=status.state, ts=status.ts, received_ms=int(time.time() * 1000),
                district=str(extra.get("district", "")), township=str(extra.get("township", "")),
                backlog=_int(extra.get("backlog")), sensors=_int(extra.get("sensors")),
                sensors_gap=_int(extra.get("sensors_gap")), dropped_alerts=_int(extra.get("dropped_alerts")),
                disk_full=extra.get("disk_full") is True, version=str(extra.get("version", "")))
            self.agents[status.agent] = info
            sites = extra.get("sites")
            if isinstance(sites, dict):
                for site, value in sites.items():
                    coords = _coords(value)
                    if isinstance(site, str) and coords is not None:
                        self.status_sites[site] = (*coords, info.district, info.township)
            limits = extra.get("limits")
            if isinstance(limits, dict):
                for sensor, rules in limits.items():
                    if isinstance(sensor, str) and isinstance(rules, dict):
                        self.limits[sensor] = {
                            k: [float(x) for x in v if type(x) in (int, float)]
                            for k, v in rules.items() if k in ("high", "low") and isinstance(v, list)}
        return info

    def forget(self, agent: str) -> None:
        with self.lock:
            self.agents.pop(agent, None)

    def site(self, site: str) -> tuple[float, float] | None:
        """Coordinates of a site: the sites file first (the centre's word), else an agent's status."""
        with self.lock:
            if site in self.file_sites:
                entry = self.file_sites[site]
                return entry.lat, entry.lon
            known = self.status_sites.get(site)
            return (known[0], known[1]) if known else None

    def site_name(self, site: str) -> str:
        entry = self.file_sites.get(site)
        return entry.name if entry else ""

    def all_sites(self) -> dict[str, tuple[str, str]]:
        """Every site with coordinates: site -> (district, township), '' where not known."""
        with self.lock:
            out = {site: (d, t) for site, (_, _, d, t) in self.status_sites.items()}
            for site, entry in self.file_sites.items():
                if entry.district or site not in out:
                    out[site] = (entry.district, entry.township)
        return out

    def agent_views(self, district: str = "", township: str = "") -> list[dict[str, Any]]:
        """Agents of an area (all for the city; agents with no district only for the city)."""
        with self.lock:
            infos = list(self.agents.values())
        out = []
        for info in sorted(infos, key=lambda i: i.agent):
            if district and info.district != district:
                continue
            if township and info.township != township:
                continue
            out.append(info.view())
        return out


def load_boundaries(path: Path) -> dict[str, Any]:
    """Read and check the boundaries GeoJSON (a FeatureCollection); ConfigError names the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"console.boundaries_file: cannot read {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"console.boundaries_file: {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(data.get("features"), list):
        raise ConfigError(f"console.boundaries_file: {path} must be a GeoJSON FeatureCollection")
    for i, feature in enumerate(data["features"]):
        props = feature.get("properties") if isinstance(feature, dict) else None
        if not isinstance(props, dict) or not isinstance(props.get("district"), str):
            raise ConfigError(f"console.boundaries_file: {path}: features[{i}] needs a string property "
                              "'district' (and 'township' for a township's boundary)")
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            raise ConfigError(f"console.boundaries_file: {path}: features[{i}] must be a Polygon or MultiPolygon")
    return data
