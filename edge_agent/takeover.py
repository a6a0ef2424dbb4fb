"""Telling a client-id takeover from an ordinary lost connection.

An MQTT broker lets one connection per client id: when a second client connects with the same
id (a cloned SD card in a second cabinet, an agent started twice on two machines), it closes the
first. Under MQTT 3.1.1 Mosquitto just closes the socket, so the only sign is the pattern: a
connection that the broker accepted is closed soon after, and the very next attempt is accepted
again at once, over and over (a broker or network outage makes attempts fail in between). After
`needed` such sessions in a row the watch says so, once; it clears after a connection that stayed
up `clear_after_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

#: A session shorter than this that ends by the broker closing it counts towards a takeover.
SHORT_SESSION_S: Final = 30.0
#: Short sessions in a row (each reconnect accepted at once) that make a takeover.
TAKEOVERS_NEEDED: Final = 3
#: A connection up this long means nobody takes the id any more.
CLEAR_AFTER_S: Final = 600.0


class TakeoverWatch:
    """Fed each connection's start and end; says when the pattern of a takeover is there."""

    def __init__(self, *, short_s: float = SHORT_SESSION_S, needed: int = TAKEOVERS_NEEDED,
                 clear_after_s: float = CLEAR_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.short_s = short_s
        self.needed = needed
        self.clear_after_s = clear_after_s
        self._clock = clock
        self._streak = 0
        self._suspected = False
        self._up_since: float | None = None
        #: Connections lost to a takeover since it was first suspected (for the status).
        self.takeovers = 0

    def connected(self) -> None:
        """The broker accepted a connection."""
        self._up_since = self._clock()

    def failed_attempt(self) -> None:
        """An attempt failed (refused, unreachable): an outage, not somebody else taking the id."""
        self._streak = 0

    def lost(self) -> tuple[bool, float]:
        """The connection was closed: (a takeover is suspected now, seconds it was up); the
        first True after a clear is the moment to say so."""
        now = self._clock()
        up_s = 0.0 if self._up_since is None else now - self._up_since
        self._up_since = None
        if up_s >= self.clear_after_s:
            self._suspected = False
            self._streak = 0
        elif up_s < self.short_s or self._suspected:
            self._streak += 1
        else:
            self._streak = 0
        if self._streak >= self.needed:
            self._suspected = True
        if self._suspected:
            self.takeovers += 1
        return self._suspected, up_s

    @property
    def suspected(self) -> bool:
        """A takeover was seen and no connection has stayed up `clear_after_s` since."""
        if self._suspected and self._up_since is not None and self._clock() - self._up_since >= self.clear_after_s:
            self._suspected = False
            self._streak = 0
        return self._suspected
