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
from collections import OrderedDict
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
    At most `max_keys` keys are tracked (keys can come from the wire, e.g. unknown sensor ids):
    a new key takes the place of the key let through longest ago if that one's interval has
    passed (counted in `evicted`);
    while all tracked keys are within their interval, new keys share one overflow key, so at
    most `max_keys + 1` lines go out per interval and memory stays bounded.
    """

    def __init__(self, interval_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 256) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.interval_s = interval_s
        self.max_keys = max_keys
        #: Keys forgotten to stay within `max_keys`, and the held-back lines they took along.
        self.evicted = 0
        self.evicted_held = 0
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> [last time let through, lines held back since], oldest let through first
        self._keys: OrderedDict[str, list[float]] = OrderedDict()
        self._overflow = [-float("inf"), 0.0]

    def allow(self, key: str) -> int | None:
        """None if this line must be held back, else how many lines of `key` were held back before it."""
        now = self._clock()
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                if len(self._keys) >= self.max_keys:
                    self._evict_expired(now)
                if len(self._keys) >= self.max_keys:
                    entry = self._overflow
                else:
                    self._keys[key] = [now, 0.0]
                    return 0
            if now - entry[0] < self.interval_s:
                entry[1] += 1
                return None
            held = int(entry[1])
            entry[0], entry[1] = now, 0.0
            if entry is not self._overflow:
                self._keys.move_to_end(key)
            return held

    def _evict_expired(self, now: float) -> None:
        """Forget the key let through longest ago, if its interval has passed."""
        last, held = next(iter(self._keys.values()))
        if now - last >= self.interval_s:
            self._keys.popitem(last=False)
            self.evicted += 1
            self.evicted_held += int(held)

    @property
    def tracked(self) -> int:
        """How many keys are remembered now (at most `max_keys`)."""
        with self._lock:
            return len(self._keys)

    def reset(self, key: str) -> None:
        """Forget `key`, so its next line goes out at once (e.g. after the failure cleared)."""
        with self._lock:
            self._keys.pop(key, None)


def held_note(held: int) -> str:
    """A suffix for a throttled log line: '' or ' (3 similar messages held back)'."""
    return f" ({held} similar message{'s' if held != 1 else ''} held back)" if held else ""
