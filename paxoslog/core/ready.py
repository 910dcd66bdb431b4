"""``Ready``: what the shell must do, in order, for the replica's latest outputs.

0. ``early_messages`` may be sent at once, before or while the Ready is persisted;
1. persist ``hard_state``, ``truncate_from``, ``entries`` and ``snapshot`` durably (fsync);
2. then send ``messages``;
3. then apply ``committed`` in index order (no gaps, never twice);
4. then answer ``reads`` once the applied index reaches each read's index;
5. ``events`` are informational (status, metrics, logs).

Then call ``replica.advance(ready)``.  One Ready is outstanding at a time: ``ready()``
before the previous Ready was advanced, or ``advance()`` of any other Ready, raises
``ContractViolation`` (``ReadyGate`` below enforces it for both protocols).

Step 3 may start before step 1 for the committed entries that this Ready does not write
itself (their index is below its ``truncate_from`` and its lowest new entry): they are
chosen on a quorum and were persisted by an earlier Ready, so nothing this Ready persists
changes them.  The node driver applies those at once on the leader, while the fsync of the
Ready's new entries runs (what etcd does with its committed entries).

``early_messages`` are a leader's replication traffic at a term (ballot) that is already
durable: Accept and Heartbeat (Multi-Paxos), AppendEntries (Raft), which may carry the
leader's own new entries of this very Ready (DESIGN.md section 2; the Raft dissertation
10.2.1).  They promise nothing: the leader counts its own copy of those entries toward a
quorum only in ``advance``, once the shell reports them durable.  Every message that
promises something (a promise, vote, accepted, append acknowledgement) and everything a
Ready sends that changes the term or promise is in ``messages``.  A shell that sends
everything after persisting (``early_messages`` first) is correct too, only slower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import ContractViolation
from .log import Entry, HardState, SnapshotMeta
from .quorum import Config

__all__ = ["Ready", "ReadState", "RoleChanged", "ConfigChanged", "ProposalDropped", "Role",
           "ReadyGate", "Outbox"]


class Role:
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"


class ReadState(NamedTuple):
    """A linearizable read may be served once the applied index reaches ``index``."""

    request_id: object
    index: int


class RoleChanged(NamedTuple):
    role: str
    term: int
    leader: int | None


class ConfigChanged(NamedTuple):
    config: Config
    index: int


class ProposalDropped(NamedTuple):
    """Commands the leader accepted but can no longer commit (it lost leadership before
    proposing them).  They were never sent to peers: the outcome is definitely "not applied"."""

    commands: tuple[bytes, ...]


@dataclass
class Ready:
    hard_state: HardState | None = None
    truncate_from: int | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes | None = None
    early_messages: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    events: list = field(default_factory=list)

    @property
    def must_sync(self) -> bool:
        return (self.hard_state is not None or bool(self.entries)
                or self.truncate_from is not None or self.snapshot is not None)

    def __bool__(self) -> bool:
        return bool(self.must_sync or self.early_messages or self.messages or self.committed
                    or self.reads or self.events)


class ReadyGate:
    """The one-outstanding-Ready rule.  A replica calls ``check_ready()`` before it builds
    a Ready, ``hand_out(ready)`` when it returns one and ``take_back(ready)`` in
    ``advance``; a misuse raises ``ContractViolation`` before anything changes."""

    __slots__ = ("_outstanding",)

    def __init__(self) -> None:
        self._outstanding: Ready | None = None

    @property
    def outstanding(self) -> bool:
        return self._outstanding is not None

    def check_ready(self) -> None:
        if self._outstanding is not None:
            raise ContractViolation(
                "ready() called while the previous Ready is outstanding: persist it, send its "
                "messages, apply it, then call advance(ready) before asking for the next one")

    def hand_out(self, ready: Ready) -> Ready:
        self.check_ready()
        self._outstanding = ready
        return ready

    def take_back(self, ready: Ready) -> None:
        if self._outstanding is None:
            raise ContractViolation("advance() called with no Ready outstanding")
        if ready is not self._outstanding:
            raise ContractViolation("advance() takes the Ready last returned by ready(), "
                                    "not another one")
        self._outstanding = None


class Outbox:
    """What a replica has to say between two Readies, and the one-outstanding-Ready gate;
    both protocols assemble their Ready through it.

    ``early`` holds leader replication traffic that may leave before the Ready is durable,
    ``messages`` everything that must wait for the fsync; ``fill`` decides which is which
    for the Ready being built (nothing leaves early in a Ready that changes the term,
    ballot or vote)."""

    __slots__ = ("messages", "early", "reads", "events", "gate")

    def __init__(self) -> None:
        self.messages: list = []
        self.early: list = []
        self.reads: list[ReadState] = []
        self.events: list = []
        self.gate = ReadyGate()

    def __bool__(self) -> bool:
        return bool(self.messages or self.early or self.reads or self.events)

    def fill(self, ready: Ready, promise_durable: bool) -> Ready:
        """Move the collected outputs into ``ready``.  ``promise_durable``: the term or
        ballot (and vote) the messages were sent at is already on disk, so ``early`` may
        precede this Ready's fsync; otherwise every message waits for it."""
        if promise_durable:
            ready.early_messages, ready.messages = self.early, self.messages
        else:
            ready.messages = self.early + self.messages
        ready.reads, ready.events = self.reads, self.events
        self.messages, self.early, self.reads, self.events = [], [], [], []
        return ready
