"""The one interface both consensus replicas implement, and the factory that picks one.

The shell (server or simulator) never knows which protocol runs: it calls ``tick``,
``step``, ``propose``, ``read_index``, ``change_config``, ``transfer_leadership`` and
``compact``, drains ``ready()`` and reports ``advance(ready)`` (see ready.py for the order
in which a Ready must be honoured).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Protocol, Sequence

from .limits import DEFAULT_LIMITS, Limits
from .log import Entry, HardState, SnapshotMeta
from .quorum import Config
from .ready import Ready

__all__ = ["Rng", "ReplicaOptions", "Restored", "Replica", "create_replica", "PROTOCOLS"]

PROTOCOLS = ("multipaxos", "raft")


class Rng(Protocol):
    """The randomness a replica may use: a seeded ``random.Random`` passed in by the shell."""

    def random(self) -> float: ...
    def randrange(self, stop: int) -> int: ...


@dataclass(frozen=True)
class ReplicaOptions:
    """Timing (in ticks) and bounds.  Election timeouts are drawn uniformly from
    [election_ticks, 2 * election_ticks) with the replica's own seeded RNG."""

    heartbeat_ticks: int = 2
    election_ticks: int = 20
    pre_vote: bool = True
    check_quorum: bool = True
    # Lease reads are allowed for this many ticks after a quorum confirmed leadership;
    # must be < election_ticks minus the clock-drift margin (see docs on read modes).
    lease_ticks: int = 0
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        assert 1 <= self.heartbeat_ticks < self.election_ticks
        assert 0 <= self.lease_ticks < self.election_ticks


class Restored(NamedTuple):
    """Durable state handed to a restarting replica by the storage layer.

    ``entries`` are sorted by index, one per index (latest record wins, truncations
    applied), all above ``snapshot.index`` when there is a snapshot."""

    hard_state: HardState
    entries: list[Entry]
    snapshot: SnapshotMeta | None = None


class Replica(Protocol):
    node_id: int

    @property
    def role(self) -> str: ...
    @property
    def term(self) -> int: ...
    @property
    def leader_id(self) -> int | None: ...
    @property
    def commit_index(self) -> int: ...
    @property
    def applied_index(self) -> int: ...
    @property
    def config(self) -> Config: ...

    def tick(self) -> None: ...
    def step(self, message) -> None: ...
    def propose(self, commands: Sequence[bytes]) -> None: ...
    def read_index(self, request_id: object) -> None: ...
    def lease_read_index(self) -> int | None: ...
    def change_config(self, voters: Iterable[int], learners: Iterable[int] = ()) -> None: ...
    def transfer_leadership(self, target: int) -> None: ...
    def compact(self, meta: SnapshotMeta) -> None: ...
    def has_ready(self) -> bool: ...
    def ready(self) -> Ready | None: ...
    def advance(self, ready: Ready) -> None: ...
    def status(self) -> dict: ...
    def check_invariants(self) -> None: ...


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
