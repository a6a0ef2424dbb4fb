"""Live updates for the browsers (server-sent events): each open board gets the changes of the
cases, agents and counts it may see, at once, without reloading.

A subscriber whose browser falls too far behind is told to reload (`resync`) rather than made to
wait or silently dropping updates: what the board shows is then fetched afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from console.areas import sees
from console.auth import User
from console.cases import case_view

#: Events a subscriber may have queued before it is told to reload instead.
QUEUE_LIMIT = 2000


@dataclass(eq=False)
class Subscriber:
    """One open page's feed."""

    user: User
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False

    def put(self, message: str) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(sse("resync", {"reason": "too many updates at once"}))


def sse(event: str, data: Any, ident: str | None = None) -> str:
    """One server-sent event."""
    head = f"id: {ident}\n" if ident else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


class Hub:
    """Fans changes out to the subscribers that may see them (all on the event loop's thread)."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self._ids = itertools.count(1)

    def subscribe(self, user: User) -> Subscriber:
        sub = Subscriber(user)
        self.subscribers.add(sub)
        return sub

    def close(self) -> None:
        """End every feed (the server is stopping): each gets an empty message and returns."""
        for sub in list(self.subscribers):
            sub.overflowed = True
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait("")

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def cases(self, rows: Iterable[Any]) -> None:
        """Send changed case rows to each subscriber that sees them (one message per batch)."""
        views = [(row, case_view(row)) for row in rows]
        if not views or not self.subscribers:
            return
        ident = str(next(self._ids))
        for sub in list(self.subscribers):
            area = sub.user.area
            mine = [v for row, v in views
                    if sees(area, row.district, row.township, row.max_level, row.tier)]
            if mine:
                sub.put(sse("cases", mine, ident))

    def broadcast(self, event: str, data: Any, *, area_of: tuple[str, str] | None = None) -> None:
        """Send one event to every subscriber (or to those whose area holds `area_of`)."""
        message = sse(event, data)
        for sub in list(self.subscribers):
            if area_of is None or sub.user.area.contains(*area_of):
                sub.put(message)

    def areas(self) -> dict[str, User]:
        """One user per distinct area among the subscribers (to compute per-area data once)."""
        return {str(sub.user.area): sub.user for sub in self.subscribers}

    def per_area(self, event: str, data_by_area: dict[str, Any]) -> None:
        """Send each subscriber the data of its area."""
        cache: dict[str, str] = {}
        for sub in list(self.subscribers):
            key = str(sub.user.area)
            if key in data_by_area:
                if key not in cache:
                    cache[key] = sse(event, data_by_area[key])
                sub.put(cache[key])
