"""``Ready``: what the shell must do, in order, for the replica's latest outputs.

1. persist ``hard_state``, ``truncate_from``, ``entries`` and ``snapshot`` durably (fsync);
2. then send ``messages``;
3. then apply ``committed`` in index order (no gaps, never twice);
4. then answer ``reads`` once the applied index reaches each read's index;
5. ``events`` are informational (status, metrics, logs).

Then call ``replica.advance(ready)``.  A replica never returns a second Ready before the
first is advanced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .log import Entry, HardState, SnapshotMeta
from .quorum import Config

__all__ = ["Ready", "ReadState", "RoleChanged", "ConfigChanged", "ProposalDropped", "Role"]


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
    messages: list = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    events: list = field(default_factory=list)

    @property
    def must_sync(self) -> bool:
        return (self.hard_state is not None or bool(self.entries)
                or self.truncate_from is not None or self.snapshot is not None)

    def __bool__(self) -> bool:
        return bool(self.must_sync or self.messages or self.committed or self.reads or self.events)
