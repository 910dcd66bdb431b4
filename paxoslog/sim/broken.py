"""Deliberately broken replicas: the simulator's negative control for send before persist.

NOT FOR PRODUCTION.  Nothing outside the simulator's ``own-ack-early`` profile
(``SimOptions.own_ack_before_fsync``) builds these.  They differ from the real cores in one
rule only: the leader counts its own acceptance of the entries it proposes toward the
quorum at once, when it proposes them, instead of once the Ready that persists them is
advanced (docs/design-notes.md, "Send before persist").  Their Accepts / AppendEntries
still leave before the fsync (``early_messages``), so a leader whose own acceptance is a
quorum (a lone voter with learners) tells the learners that entries are committed which
only its page cache holds; a crash before the fsync loses them, the restarted leader
commits something else at the same index, and the agreement checker catches the learners
that applied the lost entries.  tests/sim/test_own_ack.py pins seeds where it does, and
shows the same seeds passing with the real cores.
"""

from __future__ import annotations

from ..core.log import Entry
from ..core.paxos import MultiPaxosReplica
from ..core.raft import RaftReplica

__all__ = ["EagerSelfAckPaxos", "EagerSelfAckRaft", "create_broken_replica"]


class EagerSelfAckPaxos(MultiPaxosReplica):
    """BROKEN on purpose: the leader's acceptance counts when it proposes, before its fsync."""

    def _accept_own(self, entry: Entry) -> None:
        self.inflight[entry.index].add(self.node_id)
        self._check_chosen(entry.index)


class EagerSelfAckRaft(RaftReplica):
    """BROKEN on purpose: the leader's whole log counts toward the quorum, durable or not."""

    def _own_match(self) -> int:
        return self.last_index


def create_broken_replica(protocol: str, node_id, config, options, rng, restored):
    """``create_replica`` for the negative control (same arguments)."""
    cls = EagerSelfAckPaxos if protocol == "multipaxos" else EagerSelfAckRaft
    return cls(node_id, config, options, rng, restored)
