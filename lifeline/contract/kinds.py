"""Identity, hierarchy, levels and tiers of contract section 1."""

from __future__ import annotations

import re
from typing import Final

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")

LEVEL_NAMES: Final[dict[int, str]] = {0: "normal", 1: "blue", 2: "yellow", 3: "orange", 4: "red"}
MAX_LEVEL: Final = 4

#: Lowest level each tier sees (contract section 1).
TIER_MIN_LEVEL: Final[dict[str, int]] = {"township": 1, "district": 2, "city": 3}
TIERS: Final[tuple[str, ...]] = ("township", "district", "city")

#: Built-in kinds and their units.
KIND_UNITS: Final[dict[str, str]] = {
    "pipe.pressure": "MPa",
    "pipe.flow": "m3/h",
    "pipe.gas": "%LEL",
    "flood.level": "cm",
    "flood.rain": "mm/h",
    "bridge.accel": "m/s2",
    "bridge.strain": "microstrain",
    "bridge.disp": "mm",
    "bridge.tilt": "deg",
    "tunnel.co": "ppm",
    "tunnel.vi": "1/m",
    "tunnel.temp": "degC",
    "tunnel.water": "cm",
}
DOMAINS: Final[tuple[str, ...]] = ("pipe", "flood", "bridge", "tunnel")
KIND_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")


def is_valid_id(value: str) -> bool:
    """True if `value` is a valid sensor/agent id (`[A-Za-z0-9._-]{1,64}`)."""
    return ID_PATTERN.fullmatch(value) is not None


def domain_of(kind: str) -> str:
    """The domain part of a `<domain>.<quantity>` kind."""
    return kind.split(".", 1)[0]


def tiers_for(level: int, prev: int) -> tuple[str, ...]:
    """Tiers that must see an alert: every tier that sees its level or its prev."""
    top = max(level, prev)
    return tuple(t for t in TIERS if top >= TIER_MIN_LEVEL[t])
