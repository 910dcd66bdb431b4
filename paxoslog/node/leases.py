"""``LeaseKeeper``: when kv leases run out, counted on the leader's ticks.  Pure: no clock,
no I/O; the driver feeds it its tick count and applied lease commands.

Which leases exist is replicated (statemachines/leases.py); when each one runs out is not:
only the leader keeps deadlines, and keep-alives are not logged (as etcd does).  A
keep-alive is a linearizable read of the leader (its ReadIndex round confirms that no
newer leader exists), so it costs no log entry and no fsync; the price is that a new
leader does not know when the clients last renewed, which is why it extends every lease
before it may expire any.

The rules (docs/coordination.md states the guarantee they give):

* Only an *active* leader keeps deadlines.  A leader becomes active when the
  ``lease_promote`` it proposed in its own term is applied: every entry of older terms
  that will ever be applied is then applied (so no deposed leader's expiry can still
  arrive, statemachines/leases.py), and every lease in the table gets ``ttl + one
  election timeout`` from that moment.  A lease granted later gets its ttl from the apply
  of its grant.
* A keep-alive served by the active leader resets the deadline to ``ttl`` from then.  One
  that finds the deadline passed (or its expiry already proposed) is refused: the lease
  is gone even if the log does not say so yet.
* A lease whose deadline passed is expired through the log: the keeper hands out its id
  (``due``) for a ``lease_expire`` proposal, and again after ``reexpire_ticks`` if that
  proposal was lost.
* Deadlines count one tick more than the TTL: a refresh may happen just before a tick.

A TTL is ``ceil(ttl_ms / tick_ms) + 1`` ticks of the leader's clock, so the lease lasts at
least its TTL scaled by that clock's rate: a clock running fast by ``d`` may expire it up
to ``d * ttl`` early (the conf's drift bound, ``clock_drift_margin_ticks`` per
``election_ticks``).
"""

from __future__ import annotations

import heapq
import math

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    def __init__(self, tick_ms: float, election_ticks: int, expire_batch_max: int = 1000,
                 reexpire_ticks: int | None = None) -> None:
        assert tick_ms > 0 and election_ticks > 0 and expire_batch_max > 0
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.expire_batch_max = expire_batch_max
        self.reexpire_ticks = reexpire_ticks or election_ticks
        self.active_term: int | None = None
        self._ttl: dict[int, int] = {}          # lease -> ttl in ticks (active only)
        self._deadline: dict[int, int] = {}     # lease -> tick it runs out at
        self._heap: list[tuple[int, int]] = []  # (deadline, lease), stale rows skipped
        self._expiring: dict[int, int] = {}     # lease -> tick its expiry was proposed

    def ticks(self, ttl_ms: int) -> int:
        return math.ceil(ttl_ms / self.tick_ms - 1e-9) + 1

    @property
    def active(self) -> bool:
        return self.active_term is not None

    def __len__(self) -> int:
        return len(self._deadline)

    # ------------------------------------------------------------------ leadership

    def activate(self, term: int, now: int, leases: dict[int, int]) -> None:
        """This node's ``lease_promote`` of ``term`` was applied while it leads in
        ``term``: every lease (id -> ttl_ms) runs for its TTL plus an election timeout."""
        self.deactivate()
        self.active_term = term
        extra = self.election_ticks
        for lease, ttl_ms in leases.items():
            self._set(lease, self.ticks(ttl_ms), now + self.ticks(ttl_ms) + extra)

    def deactivate(self) -> None:
        """Not the leader (any more): forget every deadline."""
        self.active_term = None
        self._ttl.clear()
        self._deadline.clear()
        self._heap.clear()
        self._expiring.clear()

    # ------------------------------------------------------------------ applied commands

    def granted(self, lease: int, ttl_ms: int, now: int) -> None:
        if self.active:
            ticks = self.ticks(ttl_ms)
            self._set(lease, ticks, now + ticks)

    def removed(self, leases) -> None:
        for lease in leases:
            self._ttl.pop(lease, None)
            self._deadline.pop(lease, None)
            self._expiring.pop(lease, None)

    # ------------------------------------------------------------------ clients

    def keepalive(self, lease: int, now: int) -> int | None:
        """Renew ``lease`` (active leader only): its remaining ticks, or None when it is
        unknown or already ran out."""
        deadline = self._deadline.get(lease)
        if deadline is None or deadline <= now or lease in self._expiring:
            return None
        ticks = self._ttl[lease]
        self._set(lease, ticks, now + ticks)
        return ticks

    def remaining(self, lease: int, now: int) -> int | None:
        """Ticks until ``lease`` runs out (0: expiring now), or None when it is unknown."""
        deadline = self._deadline.get(lease)
        if deadline is None:
            return None
        return 0 if lease in self._expiring else max(0, deadline - now)

    def due(self, now: int) -> list[int]:
        """Leases to expire now (at most ``expire_batch_max``), in deadline order; each is
        handed out again ``reexpire_ticks`` later if it is still there."""
        if not self.active:
            return []
        out: list[int] = []
        for lease, proposed in list(self._expiring.items()):
            if now - proposed >= self.reexpire_ticks and len(out) < self.expire_batch_max:
                self._expiring[lease] = now
                out.append(lease)
        heap = self._heap
        while heap and heap[0][0] <= now and len(out) < self.expire_batch_max:
            deadline, lease = heapq.heappop(heap)
            if self._deadline.get(lease) != deadline or lease in self._expiring:
                continue                        # renewed since, or removed
            self._expiring[lease] = now
            out.append(lease)
        return out

    def _set(self, lease: int, ttl_ticks: int, deadline: int) -> None:
        self._ttl[lease] = ttl_ticks
        self._deadline[lease] = deadline
        heap = self._heap
        heapq.heappush(heap, (deadline, lease))
        if len(heap) > 4 * len(self._deadline) + 1024:
            # Renewals leave stale rows behind: rebuild from the live deadlines.
            self._heap = [(d, lease) for lease, d in self._deadline.items()]
            heapq.heapify(self._heap)
