"""Events the gateway's worker consumes from one queue, posted by the MQTT and store threads.

Everything that changes the gateway's state passes through this queue and is handled by one
thread, so the ack ledger, the open batch and the registry need no locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from gateway.store import RejectedLine, WriteOutcome


class Inbound(NamedTuple):
    """A message the broker delivered on one of our subscriptions.

    A NamedTuple rather than a frozen dataclass: one is made per message (and a PublishAcked per
    ops publish), and a tuple is built in half the time.
    """

    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    epoch: int


class LiveMessage(NamedTuple):
    """A message of the live lane (clean session, QoS 0): never acknowledged, never stored."""

    topic: str
    payload: bytes


class PublishAcked(NamedTuple):
    """The broker acknowledged (or refused: reason code >= 0x80) one of our QoS 1 publishes, on
    the session's connection (`lane` 0) or the live lane's (1)."""

    mid: int
    refused: bool = False
    reason: str = ""
    lane: int = 0


@dataclass(frozen=True, slots=True)
class Connected:
    """A broker connection was accepted; `epoch` numbers connections from 1."""

    epoch: int
    session_present: bool
    #: The server's Receive Maximum: most of our QoS 1 publishes it takes unacknowledged.
    receive_maximum: int = 65535


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The broker connection was lost or closed; unacknowledged deliveries will be re-sent."""

    reason: str


@dataclass(frozen=True, slots=True, eq=False)
class StoreBatch:
    """Line protocol of consecutive messages, written to the store as one request."""

    number: int
    epoch: int
    body: bytes
    points: int


@dataclass(frozen=True, slots=True)
class BatchDone:
    """The store writer finished with a batch."""

    number: int
    outcome: WriteOutcome
    points: int
    #: Rows the store refused, each with the store's message (the batch's other rows are stored).
    rejected: tuple[RejectedLine, ...] = ()


Event = Inbound | LiveMessage | PublishAcked | Connected | Disconnected | BatchDone
