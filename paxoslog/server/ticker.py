"""``Ticker``: the node's clock.  Every ``tick_ms`` it gives the driver the ticks due on an
injected monotonic clock (node/ticks.py: a late call gives the missed ticks too, bounded),
so the core's timers follow the wall clock even after the process was stopped or starved.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet import task

from paxoslog.node.ticks import TickClock

__all__ = ["Ticker"]


class Ticker(Service):
    """``clock_ms()``: a monotonic clock in milliseconds; ``on_ticks(count)``: the driver."""

    name = "ticker"

    def __init__(self, reactor, tick_ms: float, election_ticks: int,
                 clock_ms: Callable[[], float], on_ticks: Callable[[int], None]) -> None:
        self.reactor = reactor
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.clock_ms = clock_ms
        self.on_ticks = on_ticks
        self.clock: TickClock | None = None
        self._loop = None

    def startService(self) -> None:
        super().startService()
        self.clock = TickClock(self.tick_ms, self.clock_ms(), self.election_ticks)
        self._loop = task.LoopingCall(self.catch_up)
        self._loop.clock = self.reactor
        self._loop.start(self.tick_ms / 1000.0, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def catch_up(self) -> int:
        """Give the driver every tick due now; the number given.  Also called before a
        lease read: the reactor may run a request before the tick call that would tick
        away a pause, and a lease that ran out meanwhile must not look valid."""
        if self.clock is None or not self.running:
            return 0
        count = self.clock.due(self.clock_ms())
        if count:
            self.on_ticks(count)
        return count
