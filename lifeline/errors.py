"""Errors a user can act on; each message names the file, key, sensor or field at fault."""

from __future__ import annotations


class LifelineError(Exception):
    """Base of every error lifeline raises on purpose."""


class ConfigError(LifelineError):
    """A configuration file is missing, unreadable or invalid; the message names file and key."""


class DecodeError(LifelineError):
    """A wire payload (MessagePack message or topic) violates the contract; the message names what."""


class TopicError(DecodeError):
    """A topic does not match the contract's layout."""
