"""Capped, jittered exponential backoff as a pure generator of delays (seconds).

Attempt n (from 0) has a ceiling `min(cap_s, initial_s * factor**n)`; the delay is drawn
uniformly from `[ceiling * (1 - jitter), ceiling]`. `jitter=0.5` is "equal jitter" (at least half
the ceiling, so a fleet of agents losing one broker does not hammer it at once yet never retries
in a tight loop), `jitter=1.0` is "full jitter" and `jitter=0.0` no jitter. No delay ever
exceeds `cap_s`. The caller sleeps; this module never does. `LogThrottle` paces the warnings
that repeat while a retry keeps failing.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator


def backoff_delays(*, initial_s: float = 0.5, cap_s: float = 30.0, factor: float = 2.0,
                   jitter: float = 0.5, rng: random.Random | None = None) -> Iterator[float]:
    """Endless delays for successive retries: growing by `factor`, capped at `cap_s`, jittered."""
    if not initial_s > 0 or not cap_s > 0:
        raise ValueError(f"initial_s and cap_s must be positive, got {initial_s} and {cap_s}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {jitter}")
    draw = (rng or random.Random()).random
    ceiling = min(initial_s, cap_s)
    while True:
        yield ceiling * (1.0 - jitter * draw())
        ceiling = min(ceiling * factor, cap_s)


class LogThrottle:
    """Lets one log line per key through every `interval_s` and counts those held back.

    Repeated failures (broker refusing, disk full) must stay visible without flooding an SD card.
    """

    def __init__(self, interval_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None if this line must be held back, else how many lines of `key` were held back before it."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    def reset(self, key: str) -> None:
        """Forget `key`, so its next line goes out at once (e.g. after the failure cleared)."""
        with self._lock:
            self._last.pop(key, None)
            self._held.pop(key, None)


def held_note(held: int) -> str:
    """A suffix for a throttled log line: '' or ' (3 similar messages held back)'."""
    return f" ({held} similar message{'s' if held != 1 else ''} held back)" if held else ""
