"""A sensor's trend from the time-series store, through VictoriaMetrics' Prometheus-style query API.

The gateway writes `reading` rows (fields `n`, `min`, `max`, `mean`, `last` and extras such as
`f_peak`) and `alert` rows; VictoriaMetrics names them `reading_min`, `alert_level`, ... with the
tags as labels. The trend is min/mean/max bands per step, the alerts as marks, and the recent
windows' features.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Final

import httpx

from console.config import StoreSettings
from lifeline.contract.kinds import is_valid_id
from lifeline.errors import LifelineError

#: Most points per band the chart gets (the step grows with the range).
MAX_POINTS: Final = 720
BASE_FIELDS: Final = frozenset({"n", "min", "max", "mean", "last"})


class StoreError(LifelineError):
    """The store did not answer a query; the message names the store and the cause."""


class TrendReader:
    """Queries one store; all methods are coroutines on a shared HTTP client."""

    def __init__(self, settings: StoreSettings) -> None:
        self.url = settings.url
        self.client = httpx.AsyncClient(base_url=settings.url, timeout=settings.timeout_s)

    async def close(self) -> None:
        await self.client.aclose()

    async def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        try:
            resp = await self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise StoreError(f"store {self.url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise StoreError(f"store {self.url}{path}: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp

    async def trend(self, sensor: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        """Bands (min of min, mean of mean, max of max per step), alert marks, recent features."""
        if not is_valid_id(sensor):
            raise StoreError(f"sensor id {sensor!r} is not valid")
        span_s = max((end_ms - start_ms) / 1000, 60.0)
        step = max(10, int(math.ceil(span_s / MAX_POINTS)))
        sel = f'{{sensor="{sensor}"}}'
        bands: dict[str, dict[int, float]] = {}
        for name, fn in (("min", "min_over_time"), ("mean", "avg_over_time"), ("max", "max_over_time")):
            resp = await self._get("/api/v1/query_range", {
                "query": f"{fn}(reading_{name}{sel}[{step}s])", "start": f"{start_ms / 1000:.3f}",
                "end": f"{end_ms / 1000:.3f}", "step": f"{step}s"})
            series = resp.json().get("data", {}).get("result", [])
            points: dict[int, float] = {}
            for s in series:
                for t, v in s.get("values", []):
                    points[int(float(t) * 1000)] = float(v)
            bands[name] = points
        times = sorted(set().union(*(p.keys() for p in bands.values())))
        return {
            "sensor": sensor, "start": start_ms, "end": end_ms, "step_s": step,
            "t": times, **{name: [bands[name].get(t) for t in times] for name in bands},
            "alerts": await self._alert_marks(sel, start_ms, end_ms),
            "windows": await self.recent_windows(sensor),
        }

    async def _export(self, match: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        resp = await self._get("/api/v1/export", {"match[]": match, "start": f"{start_ms / 1000:.3f}",
                                                  "end": f"{end_ms / 1000:.3f}"})
        return [json.loads(line) for line in resp.text.splitlines() if line.strip()]

    async def _alert_marks(self, sel: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        marks = []
        for row in await self._export(f"alert_level{sel}", start_ms, end_ms):
            rule = row["metric"].get("rule", "")
            for t, v in zip(row.get("timestamps", []), row.get("values", [])):
                marks.append({"t": int(t), "level": int(v), "rule": rule})
        marks.sort(key=lambda m: m["t"])
        return marks

    async def recent_windows(self, sensor: str, *, span_ms: int = 6 * 3_600_000, keep: int = 12) -> list[dict[str, Any]]:
        """The newest summary windows of a sensor: every field of its `reading` rows, newest first."""
        end = int(time.time() * 1000)
        rows: dict[int, dict[str, Any]] = {}
        for row in await self._export(f'{{__name__=~"reading_.+",sensor="{sensor}"}}', end - span_ms, end + 60_000):
            field = row["metric"]["__name__"].removeprefix("reading_")
            for t, v in zip(row.get("timestamps", []), row.get("values", [])):
                rows.setdefault(int(t), {"t1": int(t)})[field] = v
        newest = sorted(rows.values(), key=lambda r: r["t1"], reverse=True)[:keep]
        return newest
