"""``ClusterEvents``: what this node saw happen to the cluster, for the dashboard's timeline.

Leader changes (from the driver's ``RoleChange``) and configuration changes (``ConfigApplied``:
committed, so every node that applies the log records the same ones), each with the wall
time this node saw it.  Bounded (the newest ``kept`` events); every event has a sequence
number so a poller asks only for what it has not seen (``since``).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

__all__ = ["ClusterEvents"]


class ClusterEvents:
    def __init__(self, node_id: int, kept: int = 200,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.clock = clock
        self.recent: deque = deque(maxlen=kept)
        self.seq = 0

    def _add(self, event: dict) -> None:
        self.seq += 1
        event.update(seq=self.seq, time=round(self.clock(), 3), seen_by=self.node_id)
        self.recent.append(event)

    def role_changed(self, op) -> None:
        """A ``RoleChange`` instruction: record it when the leader changed."""
        if op.leader != op.old_leader:
            self._add({"kind": "leader", "leader": op.leader, "previous": op.old_leader,
                       "term": op.term})     # the replica's term: the Paxos ballot round

    def config_applied(self, op) -> None:
        """A ``ConfigApplied`` instruction (a committed configuration entry)."""
        new, old = op.new, op.old
        self._add({"kind": "membership", "index": op.index,
                   "voters": sorted(new.voters), "outgoing": sorted(new.outgoing),
                   "learners": sorted(new.learners),
                   "added": sorted(new.members - old.members),
                   "removed": sorted(old.members - new.members)})

    def since(self, seq: int = 0) -> list[dict]:
        return [dict(e) for e in self.recent if e["seq"] > seq]
