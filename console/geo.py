"""A made-up map for a district with no surveyed one (the demo, tests, screenshots): townships as
side-by-side cells of a district rectangle, each township's sites on a grid inside its cell.

Real centres give the console their own boundaries GeoJSON and site coordinates; this only makes
a plausible picture where none exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Centre of the made-up district (Yuzhong, Chongqing) and the size of a township cell in degrees.
CENTRE = (29.556, 106.570)
CELL = (0.018, 0.022)


def _ring(lat0: float, lon0: float, lat1: float, lon1: float) -> list[list[float]]:
    return [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]


def grid_places(district: str, townships: Sequence[tuple[str, Sequence[str]]], *,
                centre: tuple[float, float] = CENTRE) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Sites (lat, lon, district, township) and a boundaries FeatureCollection (district, townships)."""
    n = max(len(townships), 1)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    lat_top = centre[0] + rows * CELL[0] / 2
    lon_left = centre[1] - cols * CELL[1] / 2
    sites: dict[str, dict[str, Any]] = {}
    features: list[dict[str, Any]] = []
    for i, (township, township_sites) in enumerate(townships):
        r, c = divmod(i, cols)
        lat1, lon0 = lat_top - r * CELL[0], lon_left + c * CELL[1]
        lat0, lon1 = lat1 - CELL[0], lon0 + CELL[1]
        features.append({"type": "Feature", "properties": {"district": district, "township": township, "name": township},
                         "geometry": {"type": "Polygon", "coordinates": [_ring(lat0, lon0, lat1, lon1)]}})
        k = max(len(township_sites), 1)
        side = math.ceil(math.sqrt(k))
        for j, site in enumerate(township_sites):
            sr, sc = divmod(j, side)
            sites[site] = {"lat": round(lat1 - (sr + 0.5) * CELL[0] / side, 5),
                           "lon": round(lon0 + (sc + 0.5) * CELL[1] / side, 5),
                           "district": district, "township": township}
    outline = _ring(lat_top - rows * CELL[0], lon_left, lat_top, lon_left + cols * CELL[1])
    features.insert(0, {"type": "Feature", "properties": {"district": district, "name": district},
                        "geometry": {"type": "Polygon", "coordinates": [outline]}})
    return sites, {"type": "FeatureCollection", "features": features}


def sites_toml(sites: dict[str, dict[str, Any]]) -> str:
    """The sites file (`console.sites_file`) for these sites."""
    return "".join(f'[[site]]\nid = "{site}"\nlat = {s["lat"]}\nlon = {s["lon"]}\n'
                   f'district = "{s["district"]}"\ntownship = "{s["township"]}"\n\n' for site, s in sites.items())
