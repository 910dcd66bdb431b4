"""Log records shared by both protocols, and the Multi-Paxos in-memory slot log.

An ``Entry`` is one slot (Multi-Paxos) or one log index (Raft).  ``term`` is the Raft term,
or the packed ballot at which a Paxos acceptor accepted the slot.  ``payload`` is a tuple of
opaque command byte strings (a batch); a no-op has an empty payload; a configuration entry
carries one CBOR-encoded ``Config``.
"""

from __future__ import annotations

from typing import NamedTuple

import cbor2
from sortedcontainers import SortedDict

from .quorum import Config

__all__ = [
    "Entry", "HardState", "SnapshotMeta", "ENTRY_NORMAL", "ENTRY_NOOP", "ENTRY_CONFIG",
    "config_entry", "entry_config", "entry_bytes", "SlotLog", "ENTRY_HEADER_BYTES",
    "COMMAND_HEADER_BYTES",
]

ENTRY_NORMAL = 0
ENTRY_NOOP = 1
ENTRY_CONFIG = 2
ENTRY_KINDS = (ENTRY_NORMAL, ENTRY_NOOP, ENTRY_CONFIG)


class Entry(NamedTuple):
    index: int
    term: int
    kind: int
    payload: tuple[bytes, ...]

    def with_term(self, term: int) -> "Entry":
        return Entry(self.index, term, self.kind, self.payload)

    def with_index(self, index: int) -> "Entry":
        return Entry(index, self.term, self.kind, self.payload)

    def same_value(self, other: "Entry") -> bool:
        """Same proposed value (kind and commands), whatever the ballot."""
        return self.kind == other.kind and self.payload == other.payload


class HardState(NamedTuple):
    """What must be durable before a reply: Raft term+vote, or the Paxos promise (packed
    ballot in ``term``); ``commit`` is the chosen/committed watermark (a hint on restart)."""

    term: int = 0
    vote: int = 0
    commit: int = 0


class SnapshotMeta(NamedTuple):
    """A snapshot covers every entry up to and including ``index`` (whose term is ``term``)."""

    index: int
    term: int
    config: Config


def config_entry(index: int, term: int, config: Config) -> Entry:
    return Entry(index, term, ENTRY_CONFIG, (cbor2.dumps(config.to_wire()),))


def entry_config(entry: Entry) -> Config:
    assert entry.kind == ENTRY_CONFIG
    return Config.from_wire(cbor2.loads(entry.payload[0]))


# The byte accounting of batching and message bounds (both protocols): an entry costs a
# fixed header plus, per command, its length and a small per-command header.
ENTRY_HEADER_BYTES = 16
COMMAND_HEADER_BYTES = 2


def entry_bytes(entry: Entry) -> int:
    """Approximate wire size, used for batching and message bounds."""
    return ENTRY_HEADER_BYTES + sum(len(command) + COMMAND_HEADER_BYTES
                                    for command in entry.payload)


class SlotLog:
    """Accepted slots of a Multi-Paxos acceptor/learner, gap tolerant.

    ``chosen_upto`` is the watermark: every slot <= it is chosen and known here.  Slots above
    it may be chosen out of order (``chosen_above``).  ``first_index`` is the first retained
    slot after compaction (everything before it lives in a snapshot).
    """

    __slots__ = ("slots", "chosen_upto", "chosen_above", "first_index", "snapshot")

    def __init__(self, snapshot: SnapshotMeta | None = None) -> None:
        self.slots: SortedDict = SortedDict()
        self.snapshot = snapshot
        base = snapshot.index if snapshot else 0
        self.chosen_upto = base
        self.first_index = base + 1
        self.chosen_above: set[int] = set()

    def get(self, slot: int) -> Entry | None:
        return self.slots.get(slot)

    def put(self, entry: Entry) -> None:
        assert entry.index >= self.first_index, (entry.index, self.first_index)
        self.slots[entry.index] = entry

    def is_chosen(self, slot: int) -> bool:
        return slot <= self.chosen_upto or slot in self.chosen_above

    def mark_chosen(self, slot: int) -> None:
        """Record that the entry held at ``slot`` is the chosen value; advance the watermark."""
        assert slot in self.slots or slot <= self.chosen_upto, slot
        if slot <= self.chosen_upto:
            return
        self.chosen_above.add(slot)
        while self.chosen_upto + 1 in self.chosen_above:
            self.chosen_upto += 1
            self.chosen_above.discard(self.chosen_upto)

    @property
    def last_index(self) -> int:
        return self.slots.peekitem(-1)[0] if self.slots else self.first_index - 1

    def range(self, start: int, stop: int):
        """Entries with start <= index < stop, in slot order."""
        return (self.slots[i] for i in self.slots.irange(start, stop - 1))

    def holes(self, limit: int) -> tuple[int, ...]:
        """Up to ``limit`` unchosen slots below the highest chosen one (none when every
        chosen slot is contiguous)."""
        if not self.chosen_above:
            return ()
        holes: list[int] = []
        for slot in range(self.chosen_upto + 1, self.last_index + 1):
            if len(holes) >= limit:
                break
            if not self.is_chosen(slot):
                holes.append(slot)
        return tuple(holes)

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop every slot <= meta.index (they are in a snapshot)."""
        for slot in list(self.slots.irange(None, meta.index)):
            del self.slots[slot]
        self.snapshot = meta
        self.first_index = max(self.first_index, meta.index + 1)
        if meta.index > self.chosen_upto:
            self.chosen_upto = meta.index
            self.chosen_above = {s for s in self.chosen_above if s > meta.index}
            while self.chosen_upto + 1 in self.chosen_above:
                self.chosen_upto += 1
                self.chosen_above.discard(self.chosen_upto)
