"""The interface both consensus replicas implement, and the values that cross it.

This is a leaf module: it imports the core's value types (log records, configurations,
limits, Ready) and nothing from ``paxos.py``, ``raft.py`` or ``replica.py``, so the
protocols and the factory in ``replica.py`` import it without a cycle (tests/test_layout.py
checks that).

* ``Rng``: the only randomness a replica may use, a seeded ``random.Random`` from the shell.
* ``ReplicaOptions``: timing in ticks and the ``Limits``.
* ``Restored``: what storage hands a restarting replica.
* ``ReplicaStatus`` and ``PeerProgress``: ``replica.status()``, typed, so the shell reads
  attributes instead of guessing dictionary keys.
* ``Replica``: the protocol-neutral interface the shell drives (DESIGN.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple, Protocol, Sequence

from .limits import DEFAULT_LIMITS, Limits
from .log import Entry, HardState, SnapshotMeta
from .quorum import Config
from .ready import Ready

__all__ = ["Rng", "ReplicaOptions", "Restored", "PeerProgress", "ReplicaStatus", "Replica"]


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


@dataclass(frozen=True)
class PeerProgress:
    """The leader's view of one peer: ``match`` is the highest index known replicated
    there (Multi-Paxos: the peer's chosen watermark), ``next`` the next index the leader
    sends it, ``last_heard_ticks`` how many ticks ago the peer last answered."""

    match: int
    next: int
    last_heard_ticks: int


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica's state for status pages, metrics and admin decisions.

    ``term`` is the Raft term or the round of the promised Paxos ballot (``ballot`` is the
    whole ballot as text, Multi-Paxos only).  ``config`` is ``Config.describe()``.
    ``ticks_since_leader`` is 0 on the leader.  ``holes`` (Multi-Paxos) lists up to 16
    unchosen slots below the last accepted one while slots were chosen out of order.
    ``progress`` has one entry per other member on the leader and is empty elsewhere.
    ``early_campaigns`` counts the campaigns (pre-votes) started before the election
    timeout because the leader's connection was reset (``leader_unreachable``).
    Compare by value; not hashable (``progress`` is a mapping)."""

    role: str
    term: int
    leader: int | None
    commit_index: int
    applied_index: int
    last_index: int
    first_index: int
    config: str
    ticks_since_leader: int
    holes: tuple[int, ...] = ()
    ballot: str | None = None
    progress: Mapping[int, PeerProgress] = field(default_factory=dict)
    early_campaigns: int = 0    # campaigns started early: the leader's connection was reset


class Replica(Protocol):
    """What the shell calls; both ``MultiPaxosReplica`` and ``RaftReplica`` provide it.

    ``ready()`` hands out at most one outstanding Ready: calling it again before
    ``advance()`` of that Ready, or advancing any other Ready, raises
    ``ContractViolation`` (errors.py)."""

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
    def stalled(self, ticks: int) -> None: ...
    def step(self, message) -> None: ...
    def propose(self, commands: Sequence[bytes]) -> None: ...
    def read_index(self, request_id: object) -> None: ...
    def lease_read_index(self) -> int | None: ...
    def change_config(self, voters: Iterable[int], learners: Iterable[int] = ()) -> None: ...
    def transfer_leadership(self, target: int) -> None: ...
    def leader_unreachable(self, peer: int) -> None: ...
    def compact(self, meta: SnapshotMeta) -> None: ...
    def has_ready(self) -> bool: ...
    def ready(self) -> Ready | None: ...
    def advance(self, ready: Ready) -> None: ...
    def status(self) -> ReplicaStatus: ...
    def check_invariants(self) -> None: ...
