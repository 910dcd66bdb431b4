"""The factory that picks a consensus replica, and the interface it returns.

The shell (server or simulator) never knows which protocol runs: it calls ``tick`` (after
``stalled`` when it makes up missed ticks), ``step``, ``propose``, ``read_index``,
``change_config``, ``transfer_leadership`` and ``compact``, drains ``ready()`` and reports
``advance(ready)`` (see ready.py for the order in which a Ready must be honoured).  The
interface types live in the leaf module types.py (the protocols import them from there);
they are re-exported here for the shell.
"""

from __future__ import annotations

from .quorum import Config
from .types import PeerProgress, Replica, ReplicaOptions, ReplicaStatus, Restored, Rng

__all__ = ["Rng", "ReplicaOptions", "Restored", "Replica", "ReplicaStatus", "PeerProgress",
           "create_replica", "PROTOCOLS"]

PROTOCOLS = ("multipaxos", "raft")


def create_replica(protocol: str, node_id: int, config: Config, options: ReplicaOptions,
                   rng: Rng, restored: Restored | None = None) -> Replica:
    """Build the replica of ``protocol`` ("multipaxos" or "raft")."""
    if protocol == "multipaxos":
        from .paxos import MultiPaxosReplica
        return MultiPaxosReplica(node_id, config, options, rng, restored)
    if protocol == "raft":
        from .raft import RaftReplica
        return RaftReplica(node_id, config, options, rng, restored)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
