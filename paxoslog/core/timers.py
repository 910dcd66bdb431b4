"""Tick timers of both protocols: the randomized election timeout, fixed intervals
(heartbeat, check-quorum period, leadership-transfer deadline), and when each peer was
last heard (check-quorum, status).

Time is ticks; the only randomness is the replica's seeded ``Rng``.  Election timeouts are
drawn uniformly from [election_ticks, 2 * election_ticks), so two candidates rarely time
out together (dueling candidates back off with a fresh draw).
"""

from __future__ import annotations

from typing import Iterable

from .quorum import Config
from .types import Rng

__all__ = ["ElectionTimer", "Interval", "PeerContact"]


class ElectionTimer:
    """Counts ticks without news from a leader; expires after a randomized timeout."""

    __slots__ = ("_base", "_rng", "elapsed", "timeout")

    def __init__(self, election_ticks: int, rng: Rng) -> None:
        assert election_ticks >= 1
        self._base = election_ticks
        self._rng = rng
        self.elapsed = 0
        self.timeout = self._draw()

    def _draw(self) -> int:
        return self._base + self._rng.randrange(self._base)

    def tick(self) -> bool:
        """One tick; True when the timeout is reached (the caller acts and resets)."""
        self.elapsed += 1
        return self.elapsed >= self.timeout

    def restart(self) -> None:
        """Count again from zero toward the same timeout (news from a leader)."""
        self.elapsed = 0

    def redraw(self) -> None:
        """Draw a new timeout, keeping the ticks counted so far."""
        self.timeout = self._draw()

    def reset(self) -> None:
        """Count from zero toward a freshly drawn timeout."""
        self.elapsed = 0
        self.timeout = self._draw()


class Interval:
    """Fires every ``ticks`` ticks, counted from the last firing or ``reset``."""

    __slots__ = ("ticks", "elapsed")

    def __init__(self, ticks: int) -> None:
        assert ticks >= 1
        self.ticks = ticks
        self.elapsed = 0

    def tick(self) -> bool:
        self.elapsed += 1
        if self.elapsed >= self.ticks:
            self.elapsed = 0
            return True
        return False

    def reset(self) -> None:
        self.elapsed = 0


class PeerContact:
    """The tick at which the leader last heard from each peer (a reply of its own term).

    Check-quorum asks whether a quorum was heard since some tick: Raft asks every tick
    about the last election timeout (its peers count as heard when it starts leading),
    Multi-Paxos asks once per election timeout about the period just ended."""

    __slots__ = ("_heard",)

    def __init__(self) -> None:
        self._heard: dict[int, int] = {}

    def heard(self, peer: int, now: int) -> None:
        self._heard[peer] = now

    def last(self, peer: int, default: int) -> int:
        return self._heard.get(peer, default)

    def forget(self, peer: int) -> None:
        self._heard.pop(peer, None)

    def clear(self) -> None:
        self._heard.clear()

    def quorum_since(self, since: int, configs: Iterable[Config], node_id: int) -> bool:
        """True when we and the peers heard at or after tick ``since`` form a quorum of
        every one of ``configs``."""
        active = {node_id}
        active.update(peer for peer, tick in self._heard.items() if tick >= since)
        return all(config.is_quorum(active) for config in configs)
