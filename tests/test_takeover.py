"""The takeover watch: short sessions each let straight back in make a takeover; outages do not."""

from __future__ import annotations

from edge_agent.takeover import TakeoverWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session(watch: TakeoverWatch, clock: Clock, up_s: float) -> bool:
    watch.connected()
    clock.now += up_s
    return watch.lost()[0]


def test_three_short_sessions_in_a_row_are_a_takeover_and_a_long_connection_clears_it() -> None:
    clock = Clock()
    watch = TakeoverWatch(short_s=30.0, needed=3, clear_after_s=600.0, clock=clock)
    assert [session(watch, clock, 2.0) for _ in range(3)] == [False, False, True]
    assert watch.suspected and watch.takeovers == 1
    assert session(watch, clock, 100.0), "while suspected, longer sessions count too"
    watch.connected()
    clock.now += 600.0
    assert not watch.suspected, "a connection that stays up clears it"


def test_an_outage_between_short_sessions_is_no_takeover() -> None:
    clock = Clock()
    watch = TakeoverWatch(short_s=30.0, needed=3, clock=clock)
    for _ in range(10):  # a flapping link: each loss followed by refused attempts
        assert not session(watch, clock, 2.0)
        watch.failed_attempt()
    assert not session(watch, clock, 2.0) and not session(watch, clock, 45.0), "a long session resets"
    assert not watch.suspected and watch.takeovers == 0
