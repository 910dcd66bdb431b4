"""Quorum systems and the replicated cluster configuration.

A configuration has voters, optional outgoing voters (joint consensus: a decision needs a
majority of the incoming AND of the outgoing set) and non-voting learners.  Flexible
(phase-1/phase-2 sized) quorums are offered by ``FlexibleQuorum`` for experiments; the
replicas use majorities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["Config", "majority", "FlexibleQuorum"]


def majority(voters: frozenset[int], acks: Iterable[int]) -> bool:
    """True when ``acks`` holds a strict majority of ``voters`` (an empty set never agrees)."""
    if not voters:
        return True
    count = sum(1 for node in set(acks) if node in voters)
    return count * 2 > len(voters)


@dataclass(frozen=True)
class FlexibleQuorum:
    """Quorums of explicit sizes with q1 + q2 > n, so every phase-1 quorum meets every phase-2 one."""

    voters: frozenset[int]
    phase1_size: int
    phase2_size: int

    def __post_init__(self) -> None:
        n = len(self.voters)
        assert 0 < self.phase1_size <= n and 0 < self.phase2_size <= n
        assert self.phase1_size + self.phase2_size > n, "phase-1 and phase-2 quorums must intersect"

    def phase1(self, acks: Iterable[int]) -> bool:
        return len(self.voters & set(acks)) >= self.phase1_size

    def phase2(self, acks: Iterable[int]) -> bool:
        return len(self.voters & set(acks)) >= self.phase2_size


@dataclass(frozen=True)
class Config:
    """Who votes.  ``outgoing`` is non-empty only during a joint-consensus transition."""

    voters: frozenset[int]
    outgoing: frozenset[int] = field(default_factory=frozenset)
    learners: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        assert self.voters, "a configuration needs at least one voter"
        assert not (self.learners & (self.voters | self.outgoing)), "a learner is not a voter"

    @property
    def joint(self) -> bool:
        return bool(self.outgoing)

    @property
    def members(self) -> frozenset[int]:
        """Every node that receives the log: voters, outgoing voters and learners."""
        return self.voters | self.outgoing | self.learners

    @property
    def all_voters(self) -> frozenset[int]:
        return self.voters | self.outgoing

    def is_quorum(self, acks: Iterable[int]) -> bool:
        """Majority of voters, and (when joint) also a majority of the outgoing voters."""
        acks = set(acks)
        if not majority(self.voters, acks):
            return False
        return not self.outgoing or majority(self.outgoing, acks)

    def committed_index(self, match: dict[int, int]) -> int:
        """Largest index acknowledged by a quorum, given each voter's match index."""
        def one(voters: frozenset[int]) -> int:
            values = sorted((match.get(node, 0) for node in voters), reverse=True)
            return values[len(values) // 2]
        index = one(self.voters)
        if self.outgoing:
            index = min(index, one(self.outgoing))
        return index

    def to_wire(self) -> list:
        return [sorted(self.voters), sorted(self.outgoing), sorted(self.learners)]

    @classmethod
    def from_wire(cls, data: object) -> "Config":
        if (not isinstance(data, list) or len(data) != 3
                or not all(isinstance(part, list) for part in data)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                           for part in data for n in part)):
            raise ValueError(f"malformed configuration: {data!r}")
        voters, outgoing, learners = (frozenset(part) for part in data)
        if not voters or learners & (voters | outgoing):
            raise ValueError(f"invalid configuration: {data!r}")
        return cls(voters, outgoing, learners)

    def describe(self) -> str:
        text = "voters=" + ",".join(map(str, sorted(self.voters)))
        if self.outgoing:
            text += " outgoing=" + ",".join(map(str, sorted(self.outgoing)))
        if self.learners:
            text += " learners=" + ",".join(map(str, sorted(self.learners)))
        return text
