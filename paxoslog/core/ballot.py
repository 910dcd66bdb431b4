"""Paxos ballots: (round, node_id), totally ordered, packable into one integer.

The packed form is what the shared storage and tooling call a "term": it lets the
write-ahead log, the hard state and ``paxoslog log dump`` treat Raft terms and Paxos
ballots alike while keeping the order (round first, then node id).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Ballot", "ZERO_BALLOT", "NODE_ID_BITS"]

NODE_ID_BITS = 32
_NODE_MASK = (1 << NODE_ID_BITS) - 1


class Ballot(NamedTuple):
    """A proposal number; tuples compare round first, then node id."""

    round: int
    node_id: int

    def pack(self) -> int:
        """Encode as one non-negative integer with the same order."""
        return (self.round << NODE_ID_BITS) | self.node_id

    @classmethod
    def unpack(cls, value: int) -> "Ballot":
        return cls(value >> NODE_ID_BITS, value & _NODE_MASK)

    def next_for(self, node_id: int) -> "Ballot":
        """The smallest ballot owned by ``node_id`` that is greater than this one."""
        return Ballot(self.round + 1, node_id)

    def __str__(self) -> str:
        return f"{self.round}.{self.node_id}"


ZERO_BALLOT = Ballot(0, 0)
