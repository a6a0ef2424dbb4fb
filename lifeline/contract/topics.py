"""MQTT topic builders and parsers for contract section 2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from lifeline.contract.kinds import TIERS, is_valid_id
from lifeline.errors import TopicError

DEFAULT_PREFIX: Final = "lifeline/v1"

TopicKind = Literal["raw", "alert", "summary", "status", "ops"]

#: Number of levels after the prefix for each topic kind.
_LEVELS: Final[dict[str, int]] = {"raw": 1, "alert": 3, "summary": 1, "status": 1, "ops": 2}


def raw_topic(prefix: str, sensor: str) -> str:
    """`P/raw/{sensor}`: RawBlocks from a sensor node or network server."""
    return f"{prefix}/raw/{sensor}"


def alert_topic(prefix: str, district: str, site: str, sensor: str) -> str:
    """`P/alert/{district}/{site}/{sensor}`: alerts from an agent."""
    return f"{prefix}/alert/{district}/{site}/{sensor}"


def summary_topic(prefix: str, agent: str) -> str:
    """`P/summary/{agent}`: window summaries from an agent."""
    return f"{prefix}/summary/{agent}"


def status_topic(prefix: str, agent: str) -> str:
    """`P/status/{agent}`: retained agent status (and its will)."""
    return f"{prefix}/status/{agent}"


def ops_topic(prefix: str, tier: str, district: str) -> str:
    """`P/ops/{tier}/{district}`: alerts routed by the gateway to a tier's consoles."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
    return f"{prefix}/ops/{tier}/{district}"


def subscription(prefix: str, kind: TopicKind) -> str:
    """Wildcard filter matching every topic of one kind."""
    return f"{prefix}/{kind}/" + "/".join(["+"] * _LEVELS[kind])


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A contract topic split into its kind and the ids it carries (empty where not applicable)."""

    kind: TopicKind
    sensor: str = ""
    agent: str = ""
    district: str = ""
    site: str = ""
    tier: str = ""


def parse_topic(prefix: str, topic: str) -> ParsedTopic:
    """Split a topic under `prefix`; raise TopicError naming the topic when it breaks the layout."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise TopicError(f"topic {topic!r} is not under prefix {prefix!r}")
    parts = topic[len(head):].split("/")
    kind = parts[0]
    if kind not in _LEVELS:
        raise TopicError(f"topic {topic!r}: unknown topic kind {kind!r}")
    ids = parts[1:]
    if len(ids) != _LEVELS[kind]:
        raise TopicError(
            f"topic {topic!r}: {kind} topics have {_LEVELS[kind]} level(s) after '{kind}', got {len(ids)}"
        )
    for part in ids:
        if not is_valid_id(part):
            raise TopicError(f"topic {topic!r}: level {part!r} is not a valid id")
    if kind == "raw":
        return ParsedTopic("raw", sensor=ids[0])
    if kind == "alert":
        return ParsedTopic("alert", district=ids[0], site=ids[1], sensor=ids[2])
    if kind == "summary":
        return ParsedTopic("summary", agent=ids[0])
    if kind == "status":
        return ParsedTopic("status", agent=ids[0])
    if ids[0] not in TIERS:
        raise TopicError(f"topic {topic!r}: unknown tier {ids[0]!r}")
    return ParsedTopic("ops", tier=ids[0], district=ids[1])
