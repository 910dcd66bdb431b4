"""How many log entries fit one outgoing message (both protocols).

Every message that carries entries (Accept, catch-up reply and Promise pages in
Multi-Paxos; AppendEntries in Raft) is cut by the same rule: at most
``entries_per_message_max`` entries and ``message_bytes_max`` bytes as ``log.entry_bytes``
counts them.  The byte bound is soft: the first entry always fits, so one entry larger than
the bound still goes, alone, instead of never going at all.  (The codec's hard limit is
``frame_bytes_max``, which ``Limits`` keeps at or above ``message_bytes_max``.)
"""

from __future__ import annotations

from typing import Iterable

from .limits import Limits
from .log import Entry, entry_bytes

__all__ = ["MessageBudget", "chunk_entries"]


class MessageBudget:
    """Admits entries into one message until a bound is reached.  ``count_max`` None
    means no count bound (Promise pages are bounded by bytes only)."""

    __slots__ = ("bytes_max", "count_max", "count", "size")

    def __init__(self, bytes_max: int, count_max: int | None = None) -> None:
        assert bytes_max >= 1 and (count_max is None or count_max >= 1)
        self.bytes_max = bytes_max
        self.count_max = count_max
        self.count = 0
        self.size = 0

    @classmethod
    def for_limits(cls, limits: Limits) -> "MessageBudget":
        """The budget of one replication message under ``limits`` (both bounds)."""
        return cls(limits.message_bytes_max, limits.entries_per_message_max)

    def admit(self, entry: Entry) -> bool:
        """Count ``entry`` in when it fits (the first always does); False when it must go
        in the next message."""
        length = entry_bytes(entry)
        if self.count and ((self.count_max is not None and self.count >= self.count_max)
                           or self.size + length > self.bytes_max):
            return False
        self.count += 1
        self.size += length
        return True


def chunk_entries(entries: Iterable[Entry], limits: Limits) -> list[tuple[Entry, ...]]:
    """Split ``entries`` (in order) into the messages ``limits`` allow."""
    chunks: list[tuple[Entry, ...]] = []
    chunk: list[Entry] = []
    budget = MessageBudget.for_limits(limits)
    for entry in entries:
        if not budget.admit(entry):
            chunks.append(tuple(chunk))
            chunk = []
            budget = MessageBudget.for_limits(limits)
            budget.admit(entry)
        chunk.append(entry)
    if chunk:
        chunks.append(tuple(chunk))
    return chunks
