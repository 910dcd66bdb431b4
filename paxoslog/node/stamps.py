"""``CommandClock``: the ``ts`` a node stamps on the commands it encodes.

The session table expires a client idle for ``session_idle_ms`` on the largest ``ts``
applied (sessions.py), so one node whose wall clock ran ten minutes fast could expire
every session with one command, and a client's retry then ran twice.  A node therefore
never stamps more than the log clock allows: the largest ``ts`` it has applied, plus the
time its monotonic clock says has passed since it saw that value, counted at
``CATCH_UP_RATE`` (1.1x).  Each stamp is bounded by an earlier log value plus 1.1 times the
real time since, so the log clock runs at most 10 % faster than real time, whatever the
nodes' wall clocks say: a session expires at worst a tenth of ``session_idle_ms`` early.
A stamp is never above the node's own wall clock either, so with honest clocks the log
clock is the wall time; after an outage, which it does not count, the 10 % lets it catch
up with the wall time again (an hour's gap in ten hours).  Pure: the clocks and the
applied value are injected.

A node that does not know the log clock (it has applied nothing since it started, or no
``ts`` yet) gives a ``FirstStamp``: its wall clock, encoded as ``ts_start``, which starts
the clock of a log that has none (a new cluster) and never moves a running one
(sessions.py).  Before, such a node stamped ``ts`` from its wall clock as it was, and the
simulator's skewed clocks found that a node ten minutes fast, restarted, moved the log
clock ten minutes ahead with its first command, and a retry of a write made just before
ran twice.  The sessions recorded before a log's first stamp (at clock 0) are re-based on
it, so it does not expire them.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["CommandClock", "CATCH_UP_RATE", "FirstStamp", "node_command_clock"]

CATCH_UP_RATE = 1.1     # the log clock's fastest pace against real time


class FirstStamp(int):
    """A stamp that may only start a log clock (``ts_start``): from a node that does not
    know the log's clock, so it must not move a running one."""


class CommandClock:
    """``clock()``: the ``ts`` for a command this node encodes now (ms), a ``FirstStamp``
    when the node does not know the log clock.  ``applied()``: the largest ``ts`` this node
    has applied; 0 when none carried a ``ts`` yet, or None when it has applied nothing
    since it started.  ``wall_ms``, ``mono_ms``: the wall and monotonic clocks, ms."""

    def __init__(self, applied: Callable[[], int | None], wall_ms: Callable[[], int],
                 mono_ms: Callable[[], int]) -> None:
        self.applied = applied
        self.wall_ms = wall_ms
        self.mono_ms = mono_ms
        self._base: int | None = None     # a log clock value, and the monotonic ms it was
        self._since = 0                   # taken at

    def __call__(self) -> int:
        applied = self.applied()
        wall, mono = self.wall_ms(), self.mono_ms()
        if applied is None or (applied <= 0 and self._base is None):
            return FirstStamp(wall)      # nothing to hold it to: it may only start a clock
        if self._base is None or applied > self._base + (mono - self._since) * CATCH_UP_RATE:
            self._base, self._since = applied, mono      # first seen, or another node is on
        return min(wall, self._base + int((mono - self._since) * CATCH_UP_RATE))


def node_command_clock(driver, wall_ms: Callable[[], int],
                       mono_ms: Callable[[], int]) -> CommandClock:
    """The ``CommandClock`` of the node that ``driver`` runs: held to the log clock of its
    session table once it has applied anything.  The server and the simulator wire it
    alike, so the simulator's skewed wall clocks check the stamps the server makes."""
    return CommandClock(lambda: driver.machines.sessions.clock
                        if driver.applied_index > 0 else None, wall_ms, mono_ms)
