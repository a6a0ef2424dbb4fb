"""The external contract (version 1) as code: ids, levels, tiers, topics and MessagePack payloads."""

from lifeline.contract.kinds import (
    KIND_UNITS,
    LEVEL_NAMES,
    TIER_MIN_LEVEL,
    TIERS,
    domain_of,
    is_valid_id,
    tiers_for,
)
from lifeline.contract.messages import (
    Alert,
    RawBlock,
    Status,
    Summary,
    decode_alert,
    decode_raw_block,
    decode_status,
    decode_summary,
)
from lifeline.contract.topics import (
    DEFAULT_PREFIX,
    ParsedTopic,
    alert_topic,
    ops_topic,
    parse_topic,
    raw_topic,
    status_topic,
    subscription,
    summary_topic,
)
from lifeline.errors import DecodeError, TopicError

__all__ = [
    "Alert", "DEFAULT_PREFIX", "DecodeError", "KIND_UNITS", "LEVEL_NAMES", "ParsedTopic",
    "RawBlock", "Status", "Summary", "TIERS", "TIER_MIN_LEVEL", "TopicError", "alert_topic",
    "decode_alert", "decode_raw_block", "decode_status", "decode_summary", "domain_of",
    "is_valid_id", "ops_topic", "parse_topic", "raw_topic", "status_topic", "subscription",
    "summary_topic", "tiers_for",
]
