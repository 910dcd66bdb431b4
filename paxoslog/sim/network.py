"""The simulated network: per-message delay, drop, duplication, reordering, partitions.

Every decision draws from the simulation's seeded RNG, so a seed replays bit for bit.
Partitions are sets of blocked *directed* links, so any shape can be expressed: a clean
split, an isolated node, a one-way (asymmetric) cut, or a ring of overlapping majorities.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

__all__ = ["NetworkProfile", "Network", "partition_shapes"]


@dataclass(frozen=True)
class NetworkProfile:
    """Fault rates of one run (drawn per seed, VOPR-style)."""

    delay_min_ms: float = 0.2
    delay_max_ms: float = 3.0
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    # Occasionally a message is much slower than the others (reordering across turns).
    slow_rate: float = 0.0
    slow_max_ms: float = 40.0

    @classmethod
    def random(cls, rng: random.Random, faulty: bool) -> "NetworkProfile":
        if not faulty:
            return cls(delay_min_ms=0.1, delay_max_ms=rng.uniform(0.5, 3.0))
        return cls(
            delay_min_ms=rng.uniform(0.05, 1.0),
            delay_max_ms=rng.uniform(1.0, 10.0),
            drop_rate=rng.choice([0.0, 0.01, 0.05, 0.1]),
            duplicate_rate=rng.choice([0.0, 0.01, 0.05]),
            slow_rate=rng.choice([0.0, 0.01, 0.05]),
            slow_max_ms=rng.uniform(10.0, 80.0),
        )


class Network:
    """Decides, for each message, whether and when it arrives (possibly twice)."""

    def __init__(self, rng: random.Random, profile: NetworkProfile) -> None:
        self.rng = rng
        self.profile = profile
        self.blocked: set[tuple[int, int]] = set()
        self.faults_enabled = True
        self.sent = 0
        self.dropped = 0
        self.bytes = 0

    def deliveries(self, frm: int, to: int) -> list[float]:
        """Delays (ms) at which copies of a message from ``frm`` to ``to`` arrive."""
        self.sent += 1
        if (frm, to) in self.blocked:
            self.dropped += 1
            return []
        p = self.profile
        rng = self.rng
        if self.faults_enabled and p.drop_rate and rng.random() < p.drop_rate:
            self.dropped += 1
            return []
        copies = 1
        if self.faults_enabled and p.duplicate_rate and rng.random() < p.duplicate_rate:
            copies = 2
        delays = []
        for _ in range(copies):
            delay = rng.uniform(p.delay_min_ms, p.delay_max_ms)
            if self.faults_enabled and p.slow_rate and rng.random() < p.slow_rate:
                delay += rng.uniform(0, p.slow_max_ms)
            delays.append(delay)
        return delays

    def block(self, links: Iterable[tuple[int, int]]) -> None:
        self.blocked |= set(links)

    def heal(self) -> None:
        self.blocked.clear()


def _both_ways(a: Iterable[int], b: Iterable[int]) -> set[tuple[int, int]]:
    b = list(b)
    return {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}


def partition_shapes(nodes: list[int], leader: int | None, rng: random.Random
                     ) -> dict[str, set[tuple[int, int]]]:
    """The partition shapes the nemesis chooses from, as sets of blocked directed links."""
    nodes = sorted(nodes)
    victim = leader if leader in nodes else rng.choice(nodes)
    others = [n for n in nodes if n != victim]
    shuffled = nodes[:]
    rng.shuffle(shuffled)
    minority = shuffled[: (len(nodes) - 1) // 2]
    majority = shuffled[len(minority):]
    shapes = {
        "isolate-leader": _both_ways([victim], others),
        "split": _both_ways(minority, majority),
        # victim can send but not receive from one peer, and the reverse for another
        "asymmetric": {(rng.choice(others), victim)} if others else set(),
        "one-way-out": {(victim, o) for o in others},
    }
    if len(nodes) >= 5:
        # Ring: each node hears only its two neighbours (each sees a different majority).
        ring = set()
        n = len(shuffled)
        for i, a in enumerate(shuffled):
            near = {shuffled[(i - 1) % n], shuffled[(i + 1) % n], a}
            ring |= {(a, b) for b in shuffled if b not in near}
        shapes["majorities-ring"] = ring
    return shapes
