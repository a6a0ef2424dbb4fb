"""Who sees and acts on what: a user's area (city, a district, a township), tier and role.

The contract's tier rules decide visibility: a township sees its cases of level >= 1, a district
its cases of level >= 2, the city every case of level >= 3. A case escalated to a tier is seen
by that tier (and those below it) whatever its level. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from lifeline.contract.kinds import TIER_MIN_LEVEL, TIERS, is_valid_id

Tier = Literal["township", "district", "city"]
ROLES: Final[tuple[str, ...]] = ("viewer", "operator", "supervisor")
#: Rank of each tier: an escalation goes from rank r to r + 1.
TIER_RANK: Final[dict[str, int]] = {t: i for i, t in enumerate(TIERS)}


class AreaError(ValueError):
    """An area written wrongly (`city`, `district` or `district/township`)."""


@dataclass(frozen=True, slots=True)
class Area:
    """The part of the city a user works in: `district` and `township` empty for the city."""

    district: str = ""
    township: str = ""

    @property
    def tier(self) -> Tier:
        if self.township:
            return "township"
        return "district" if self.district else "city"

    @property
    def min_level(self) -> int:
        """The lowest level this area's tier sees (contract section 1)."""
        return TIER_MIN_LEVEL[self.tier]

    def contains(self, district: str, township: str) -> bool:
        """Whether a place (district, township) lies in this area."""
        if not self.district:
            return True
        if district != self.district:
            return False
        return not self.township or township == self.township

    def __str__(self) -> str:
        if self.township:
            return f"{self.district}/{self.township}"
        return self.district or "city"


def parse_area(text: str) -> Area:
    """`city`, `yuzhong` or `yuzhong/jiefangbei` as an Area; AreaError names what is wrong."""
    text = text.strip()
    if text == "city":
        return Area()
    parts = text.split("/")
    if len(parts) > 2 or not all(is_valid_id(p) for p in parts):
        raise AreaError(f"area {text!r}: write 'city', a district id, or 'district/township'")
    return Area(parts[0], parts[1] if len(parts) == 2 else "")


def sees(area: Area, district: str, township: str, max_level: int, tier: str) -> bool:
    """Whether `area` sees a case: in the area, and a level its tier sees or escalated to it."""
    if not area.contains(district, township):
        return False
    return max_level >= area.min_level or TIER_RANK.get(tier, 0) >= TIER_RANK[area.tier]


def next_tier(tier: str) -> Tier | None:
    """The tier an escalation from `tier` goes to; None from the city."""
    rank = TIER_RANK.get(tier, 0)
    return TIERS[rank + 1] if rank + 1 < len(TIERS) else None  # type: ignore[return-value]


def may_act(role: str) -> bool:
    """Operators and supervisors act on cases; viewers only look."""
    return role in ("operator", "supervisor")
