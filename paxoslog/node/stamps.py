"""``CommandClock``: the ``ts`` a node stamps on the commands it encodes.

The session table expires a client idle for ``session_idle_ms`` on the largest ``ts``
applied (sessions.py), so one node whose wall clock ran ten minutes fast could expire
every session with one command, and a client's retry then ran twice.  A node therefore
never stamps more than the log clock allows: the largest ``ts`` it has applied, plus the
time its monotonic clock says has passed since it saw that value.  A stamp can be lower
than real time (a node that was down for a while, a wall clock behind), which only makes
sessions live longer; it cannot run ahead of the log by more than the time that passed.
Each stamp is bounded by an earlier log value plus the real time since, so the log clock
advances no faster than real time, whatever the nodes' wall clocks say.  Pure: the
clocks and the applied value are injected.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["CommandClock"]


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _mono_ms() -> int:
    return int(time.monotonic() * 1000)


class CommandClock:
    """``clock()``: the ``ts`` for a command this node encodes now (ms).  ``applied()``:
    the largest ``ts`` this node has applied (0 before any: then the wall clock starts the
    log clock)."""

    def __init__(self, applied: Callable[[], int], wall_ms: Callable[[], int] = _wall_ms,
                 mono_ms: Callable[[], int] = _mono_ms) -> None:
        self.applied = applied
        self.wall_ms = wall_ms
        self.mono_ms = mono_ms
        self._base: int | None = None     # a log clock value, and the monotonic ms it was
        self._since = 0                   # taken at

    def __call__(self) -> int:
        wall, mono, applied = self.wall_ms(), self.mono_ms(), self.applied()
        if self._base is None:
            self._base, self._since = (applied if applied > 0 else wall), mono
        elif applied > self._base + (mono - self._since):
            self._base, self._since = applied, mono      # another node is further on
        return min(wall, self._base + (mono - self._since))
