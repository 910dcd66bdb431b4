"""``RemovalWitnesses``: when a removed node may go for good.

A node removed from the configuration is told so by the members that applied the
configuration without it (the server's ``REMOVED`` frame; the simulator's direct call).
Each teller reports how far it has applied and the voters of the final configuration it
applied.  The removed node exits, and never starts again, only once the tellers include
a quorum of one such configuration's voters, each having applied at least that far.

Why a quorum and not the first word: a Multi-Paxos voter follows a configuration only
once it knows it chosen.  Were the removed nodes gone after one member's word, and that
member then lost (a disk that lost its log), the voters left might all still follow the
old configuration and need promises from nodes that no longer exist (the membership
profile's seed 569).  Once a quorum of the new voters knows it chosen, any quorum of
them that is alive holds one voter that knows, and its campaign teaches the rest.

Pure: no clock, no I/O.  The server and the simulator both use it.
"""

from __future__ import annotations

from typing import Iterable

from paxoslog.core.quorum import majority

__all__ = ["RemovalWitnesses"]


class RemovalWitnesses:
    """Who told this node it was removed, and how far each had applied."""

    def __init__(self) -> None:
        self._told: dict[int, tuple[int, frozenset[int]]] = {}

    def told(self, member: int, applied: int, voters: Iterable[int]) -> bool:
        """``member`` applied up to ``applied`` a final configuration with ``voters``,
        without this node.  True once the tellers are enough (module docstring)."""
        voters = frozenset(voters)
        known = self._told.get(member)
        if voters and (known is None or applied >= known[0]):
            self._told[member] = (applied, voters)
        return self.enough()

    def enough(self) -> bool:
        told = self._told
        for index, voters in set(told.values()):
            # Who applied at least as far knows that configuration chosen too.
            if majority(voters, [m for m, (applied, _) in told.items() if applied >= index]):
                return True
        return False

    def tellers(self) -> list[int]:
        return sorted(self._told)

    def voters_named(self, member: int) -> frozenset[int]:
        """The voters ``member`` last said it applied (empty: it said nothing)."""
        known = self._told.get(member)
        return known[1] if known is not None else frozenset()
