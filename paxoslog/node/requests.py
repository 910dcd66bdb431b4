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
                 "sent", "via", "done")

    def __init__(self, handle: Any, key: tuple[str, int], data: bytes, forwarded: bool) -> None:
        self.handle = handle
        self.key = key
        self.data = data
        self.forwarded = forwarded      # from another node: answer "not leader", never route
        self.deadline = 0
        self.retry_at: int | None = None
        self.submitted = False          # may have reached a leader: a timeout is "unknown"
        self.sent = 0                   # times proposed here or forwarded
        self.via: int | None = None     # the leader it is forwarded to, awaiting an answer
        self.done = False


class PendingRead:
    """A read (a query for the state machines) waiting for a safe read point."""

    __slots__ = ("handle", "query", "forwarded", "deadline", "retry_at", "via", "done")

    def __init__(self, handle: Any, query: dict, forwarded: bool) -> None:
        self.handle = handle
        self.query = query
        self.forwarded = forwarded
        self.via: int | None = None
        self.deadline = 0
        self.retry_at: int | None = None
        self.done = False


class Timers:
    """A heap of (tick, kind, request).  Cancelled timers are skipped when they come due:
    a retry is live only while ``request.retry_at`` still names its tick, and nothing
    fires for a request that is done.

    Every request has a deadline timer, request_timeout later, and most are answered long
    before it: at 8,000 writes a second the heap held some 40,000 answered requests (with
    their Deferreds, bodies and command bytes), which the garbage collector walked again
    and again (sustained throughput fell by a quarter within half a minute).  So the heap
    is rebuilt without its dead timers whenever it doubles past ``COMPACT_MIN``: amortised
    O(1) per timer, and the order of the live ones is unchanged."""

    COMPACT_MIN = 1024

    def __init__(self) -> None:
        self._heap: list = []
        self._sequence = 0
        self._compact_at = self.COMPACT_MIN

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, tick: int, kind: int, request) -> None:
        self._sequence += 1
        heap = self._heap
        heapq.heappush(heap, (tick, self._sequence, kind, request))
        if len(heap) >= self._compact_at:
            live = [t for t in heap if _live(t)]
            heapq.heapify(live)
            self._heap = live
            self._compact_at = max(self.COMPACT_MIN, 2 * len(live))

    def due(self, now: int) -> list[tuple[int, Any]]:
        """Pop every live timer at or before ``now``: [(kind, request)] in time order."""
        heap = self._heap
        out = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)
            if not _live(timer):
                continue
            tick, _, kind, request = timer
            if kind == RETRY:
                request.retry_at = None
            out.append((kind, request))
        return out


def _live(timer: tuple) -> bool:
    tick, _, kind, request = timer
    return not request.done and (kind != RETRY or request.retry_at == tick)


class ReadPoints:
    """Linearizable reads on the leader, from arrival to service.

    Reads that arrive within one turn form a batch that asks the core for one read point
    (``replica.read_index(batch_id)``: one quorum round for the whole batch).  A confirmed
    batch, like a lease read, waits until the applied index reaches its point; then it is
    served.  Leadership lost before confirmation: every unconfirmed read goes back to be
    routed again."""

    def __init__(self) -> None:
        self.arriving: list[PendingRead] = []
        self._asked: dict[int, list[PendingRead]] = {}      # batch id -> reads
        self._waiting: list[tuple[int, int]] = []            # heap of (index, batch id)
        self._confirmed: dict[int, list[PendingRead]] = {}
        self._next = 0

    def _new_id(self) -> int:
        self._next += 1
        return self._next

    def take_arriving(self) -> tuple[int, list[PendingRead]] | None:
        """The reads to ask one read point for, with the batch id to ask with."""
        batch = [r for r in self.arriving if not r.done]
        self.arriving = []
        return (self._new_id(), batch) if batch else None

    def asked(self, batch_id: int, batch: list[PendingRead]) -> None:
        self._asked[batch_id] = batch

    def confirmed(self, batch_id: object, index: int) -> None:
        """The core confirmed ``batch_id``'s read point (a ReadState)."""
        batch = self._asked.pop(batch_id, None)
        if batch is not None:
            self.wait(batch, index)

    def wait(self, batch: list[PendingRead], index: int) -> None:
        batch_id = self._new_id()
        self._confirmed[batch_id] = batch
        heapq.heappush(self._waiting, (index, batch_id))

    def unconfirmed(self) -> list[PendingRead]:
        """Every read still without a read point (leadership was lost): forget them."""
        reads = [r for batch in self._asked.values() for r in batch] + self.arriving
        self._asked, self.arriving = {}, []
        return reads

    def ready(self, applied: int) -> list[PendingRead]:
        """The reads whose read point the applied index has reached, in point order."""
        out = []
        heap = self._waiting
        while heap and heap[0][0] <= applied:
            _, batch_id = heapq.heappop(heap)
            out += self._confirmed.pop(batch_id, ())
        return out
