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
    """Deadline and retry timers, by tick.  Each tick with timers has a bucket, the
    requests in the order their first timer of that tick was added, and a heap holds the
    ticks.  ``cancel`` takes an answered request out of its buckets at once.

    Every request has a deadline timer, request_timeout later, and most are answered long
    before it.  A heap of every timer kept the answered ones until their deadlines: at
    8,000 writes a second some 40,000 requests (with their answers and command bytes),
    which the garbage collector walked again and again (sustained throughput fell by a
    quarter within half a minute).  Rebuilding that heap whenever it doubled still kept
    hundreds alive at a time, three objects each that outlived the collector's young
    generation and brought its next collection nearer (docs/design-notes.md, "Answered
    requests keep nothing alive").  A retry that is no longer the request's current one
    (``request.retry_at`` names another tick) and any timer of a done request are
    skipped when due."""

    def __init__(self) -> None:
        self._ticks: list[int] = []                 # heap: the ticks that have a bucket
        self._buckets: dict[int, dict] = {}         # tick -> {request: kinds (bits)}

    def __len__(self) -> int:
        return sum(bin(kinds).count("1") for bucket in self._buckets.values()
                   for kinds in bucket.values())

    def add(self, tick: int, kind: int, request) -> None:
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
        bucket[request] = bucket.get(request, 0) | _BIT[kind]

    def cancel(self, request) -> None:
        """``request`` is done: drop its deadline timer and its retry, if any."""
        buckets = self._buckets
        bucket = buckets.get(request.deadline)
        if bucket is not None:
            bucket.pop(request, None)
        if request.retry_at is not None:
            bucket = buckets.get(request.retry_at)
            if bucket is not None:
                bucket.pop(request, None)

    def due(self, now: int) -> list[tuple[int, Any]]:
        """Pop every live timer at or before ``now``: [(kind, request)] in time order (a
        deadline before a retry of the same request and tick)."""
        ticks, buckets = self._ticks, self._buckets
        out = []
        while ticks and ticks[0] <= now:
            tick = heapq.heappop(ticks)
            bucket = buckets.pop(tick, None)
            if not bucket:
                continue
            for request, kinds in bucket.items():
                if request.done:
                    continue
                if kinds & _DEADLINE_BIT:
                    out.append((DEADLINE, request))
                if kinds & _RETRY_BIT and request.retry_at == tick:
                    request.retry_at = None
                    out.append((RETRY, request))
        return out


_DEADLINE_BIT = 1
_RETRY_BIT = 2
_BIT = {DEADLINE: _DEADLINE_BIT, RETRY: _RETRY_BIT}


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
