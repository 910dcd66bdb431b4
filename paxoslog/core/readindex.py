"""Linearizable reads at the leader: ReadIndex and the leader lease (both protocols).

A leader proves it still leads with numbered **rounds**: each heartbeat broadcast starts
one, every heartbeat (and, in Raft, every AppendEntries) carries the latest round number,
and a peer's reply acknowledges it.  A round acknowledged by a quorum of every
configuration the leader must respect proves that no other leader existed when the round
started (thesis 6.4).

* **ReadIndex.**  A read records its read point (the commit index or last proposed slot,
  the protocol decides) and the round that must confirm it; it is released as a
  ``ReadState`` once that round is confirmed and the read point is committed.  Reads
  leave in arrival order.
* **Lease.**  With ``lease_ticks > 0``, the leader may serve reads without a round while
  the newest confirmed round started less than ``lease_ticks`` ago: every node that
  acknowledged it ignores campaigns for an election timeout after hearing from the leader
  (leader stickiness), and ``lease_ticks`` is below that minus the clock-drift margin.

Who starts rounds when is the protocol's choice (Raft starts one per Ready that has new
reads, Multi-Paxos one per read); the bookkeeping and the quorum arithmetic are here.
Acknowledgements belong to one leadership: the caller clears them when it becomes leader
and forgets a peer that leaves the configuration.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from .errors import Busy
from .quorum import Config
from .ready import ReadState

__all__ = ["ReadRounds", "PendingReads"]


class ReadRounds:
    """Round numbers, when each started, and the highest round each peer acknowledged.

    Start ticks are kept for ``keep_ticks`` ticks (at least the lease: an older round can
    never grant one)."""

    __slots__ = ("round", "_keep_ticks", "_first", "_started", "_acked")

    def __init__(self, keep_ticks: int) -> None:
        self.round = 0                     # the latest round started (never reset)
        self._keep_ticks = keep_ticks
        self._first = 1                    # round number of _started[0]
        self._started: deque[int] = deque()
        self._acked: dict[int, int] = {}

    def start(self, now: int) -> int:
        """Start a new round at tick ``now``; returns its number."""
        self.round += 1
        started = self._started
        started.append(now)
        horizon = now - self._keep_ticks
        while started[0] < horizon:
            started.popleft()
            self._first += 1
        return self.round

    def started_at(self, round_: int) -> int | None:
        """The tick ``round_`` started at, or None when unknown or forgotten."""
        k = round_ - self._first
        return self._started[k] if 0 <= k < len(self._started) else None

    def ack(self, peer: int, round_: int) -> bool:
        """``peer`` acknowledged ``round_``; True when that is news (a higher round than it
        acknowledged before, and one we started)."""
        if self._acked.get(peer, 0) < round_ <= self.round:
            self._acked[peer] = round_
            return True
        return False

    def acked(self, peer: int) -> int:
        return self._acked.get(peer, 0)

    def forget(self, peer: int) -> None:
        self._acked.pop(peer, None)

    def clear_acks(self) -> None:
        self._acked.clear()

    def confirmed(self, configs: Iterable[Config], node_id: int) -> int:
        """The highest round acknowledged by a quorum of every one of ``configs`` (our own
        acknowledgement of the latest round counts); 0 when none is."""
        acked = dict(self._acked)
        acked[node_id] = self.round
        return min(config.committed_index(acked) for config in configs)

    def lease_holds(self, now: int, lease_ticks: int, configs: Iterable[Config],
                    node_id: int) -> bool:
        """True while the newest confirmed round started less than ``lease_ticks`` ago
        (always for a lone voter; never with leases off)."""
        if lease_ticks <= 0:
            return False
        configs = tuple(configs)
        if all(config.is_quorum((node_id,)) for config in configs):
            return True
        started = self.started_at(self.confirmed(configs, node_id))
        return started is not None and now - started < lease_ticks


class PendingReads:
    """ReadIndex requests waiting for their round (FIFO, bounded by ``pending_reads_max``).

    Each is ``(request_id, read point or None, round)``; a None read point means "the
    commit index when released" (Raft, before an entry of its term is committed)."""

    __slots__ = ("_max", "_reads")

    def __init__(self, pending_reads_max: int) -> None:
        self._max = pending_reads_max
        self._reads: deque[tuple[object, int | None, int]] = deque()

    def __len__(self) -> int:
        return len(self._reads)

    def __bool__(self) -> bool:
        return bool(self._reads)

    def add(self, request_id: object, point: int | None, round_: int) -> None:
        """Queue a read; Busy when ``pending_reads_max`` reads already wait."""
        if len(self._reads) >= self._max:
            raise Busy(f"too many pending reads ({self._max})")
        self._reads.append((request_id, point, round_))

    def release(self, confirmed: int, commit: int) -> list[ReadState]:
        """Pop, in order, the reads whose round is at most ``confirmed`` and whose read
        point is at most ``commit``."""
        reads = self._reads
        out: list[ReadState] = []
        while reads:
            request_id, point, round_ = reads[0]
            if round_ > confirmed or (point is not None and point > commit):
                break
            reads.popleft()
            out.append(ReadState(request_id, commit if point is None else point))
        return out

    def clear(self) -> None:
        self._reads.clear()
