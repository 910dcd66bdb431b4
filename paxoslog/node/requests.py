"""Client requests a node holds while they are routed, proposed, forwarded or waiting, and
the tick-based timers that retry or expire them.

A request is owned by the node driver; ``handle`` is the shell's (what the answer goes
back to).  Timers count core ticks, so the simulator and the server expire and retry
requests on the same virtual or real time the consensus core runs on.
"""

from __future__ import annotations

import heapq
from typing import Any

__all__ = ["PendingWrite", "PendingRead", "Timers", "DEADLINE", "RETRY"]

DEADLINE = 0
RETRY = 1


class PendingWrite:
    """A write (command bytes with its (client_id, sequence) ``key``)."""

    __slots__ = ("handle", "key", "data", "forwarded", "deadline", "retry_at", "submitted",
                 "done")

    def __init__(self, handle: Any, key: tuple[str, int], data: bytes, forwarded: bool) -> None:
        self.handle = handle
        self.key = key
        self.data = data
        self.forwarded = forwarded      # from another node: answer "not leader", never route
        self.deadline = 0
        self.retry_at: int | None = None
        self.submitted = False          # may have reached a leader: a timeout is "unknown"
        self.done = False


class PendingRead:
    """A read (a query for the state machines) waiting for a safe read point."""

    __slots__ = ("handle", "query", "forwarded", "deadline", "retry_at", "done")

    def __init__(self, handle: Any, query: dict, forwarded: bool) -> None:
        self.handle = handle
        self.query = query
        self.forwarded = forwarded
        self.deadline = 0
        self.retry_at: int | None = None
        self.done = False


class Timers:
    """A heap of (tick, kind, request).  Cancelled timers are skipped when they come due:
    a retry is live only while ``request.retry_at`` still names its tick, and nothing
    fires for a request that is done."""

    def __init__(self) -> None:
        self._heap: list = []
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, tick: int, kind: int, request) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (tick, self._sequence, kind, request))

    def due(self, now: int) -> list[tuple[int, Any]]:
        """Pop every live timer at or before ``now``: [(kind, request)] in time order."""
        heap = self._heap
        out = []
        while heap and heap[0][0] <= now:
            tick, _, kind, request = heapq.heappop(heap)
            if request.done:
                continue
            if kind == RETRY:
                if request.retry_at != tick:
                    continue
                request.retry_at = None
            out.append((kind, request))
        return out
