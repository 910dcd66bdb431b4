"""``TickClock``: how many core ticks are due, from a monotonic clock the caller reads.

The core counts time in ticks.  The server's ticker fires every ``tick_ms`` but may fire
late (a long stall, a SIGSTOP): then the ticks that fell meanwhile are all due at once, so
the core's timers (leader contact, check-quorum, the lease) follow the wall clock across a
pause.  They are bounded: at most ``catch_up_max`` ticks at once, which is over twice the
election timeout, so after any pause every lease and leader-contact timer has run out
before anything is served from it.

The simulator drives the same class with each node's virtual clock, so a paused simulated
node catches up exactly as a stopped process does.
"""

from __future__ import annotations

__all__ = ["TickClock", "catch_up_max"]

CATCH_UP_FLOOR = 1000


def catch_up_max(election_ticks: int) -> int:
    """The most ticks given at once after a pause: at least two election timeouts."""
    return max(CATCH_UP_FLOOR, 2 * election_ticks + 1)


class TickClock:
    """Ticks due since ``origin_ms`` on a monotonic clock, minus the ticks already given."""

    __slots__ = ("tick_ms", "origin_ms", "given", "bound")

    def __init__(self, tick_ms: float, origin_ms: float, election_ticks: int) -> None:
        assert tick_ms > 0
        self.tick_ms = tick_ms
        self.origin_ms = origin_ms
        self.given = 0
        self.bound = catch_up_max(election_ticks)

    def due(self, now_ms: float) -> int:
        """The number of ticks to run now (0 when none is due), at most ``bound``; the
        ticks beyond the bound are dropped, not owed."""
        target = int((now_ms - self.origin_ms) / self.tick_ms + 1e-6)
        missing = target - self.given
        if missing <= 0:
            return 0
        self.given = target
        return min(missing, self.bound)
