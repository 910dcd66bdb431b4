"""``SnapshotPolicy``: when a node takes its next snapshot.  Pure bookkeeping."""

from __future__ import annotations

__all__ = ["SnapshotPolicy"]


class SnapshotPolicy:
    """When to take a snapshot: after ``entries_threshold`` applied entries or
    ``bytes_threshold`` applied payload bytes since the last one, whichever comes first.

    The server calls ``note_applied(index, nbytes)`` after applying, checks ``due``, and
    calls ``taken(index)`` once the snapshot is durable (and at start with the restored
    snapshot's index).  Pure bookkeeping: no I/O, no clock."""

    def __init__(self, entries_threshold: int = 10_000, bytes_threshold: int = 64 << 20,
                 last_index: int = 0) -> None:
        assert entries_threshold >= 1 and bytes_threshold >= 1
        self.entries_threshold = entries_threshold
        self.bytes_threshold = bytes_threshold
        self.last_index = last_index
        self.applied_index = last_index
        self.bytes_since = 0
        self.in_progress = False
        self._reapplying_to = last_index

    def reapplying(self, newest: int) -> None:
        """At start: the node restored an older snapshot and applies the log up to the
        newest one, at ``newest``, again; the next snapshot is due an interval after it,
        and the entries applied again do not count."""
        self.last_index = max(self.last_index, newest)
        self._reapplying_to = newest

    def note_applied(self, index: int, nbytes: int) -> None:
        assert index >= self.applied_index, (index, self.applied_index)
        self.applied_index = index
        if index > self._reapplying_to:
            self.bytes_since += nbytes

    @property
    def entries_since(self) -> int:
        return self.applied_index - self.last_index

    @property
    def due(self) -> bool:
        """True when a snapshot should start now (and none is already being written)."""
        return not self.in_progress and (self.entries_since >= self.entries_threshold
                                         or self.bytes_since >= self.bytes_threshold)

    def started(self) -> None:
        self.in_progress = True

    def taken(self, index: int) -> None:
        self.in_progress = False
        self.last_index = max(self.last_index, index)
        self.applied_index = max(self.applied_index, index)
        self.bytes_since = 0

    def failed(self) -> None:
        """The snapshot was not written: try again after another threshold's worth (a
        snapshot refused because its state would not restore fails the same way until
        the state changes)."""
        self.in_progress = False
        self.last_index = self.applied_index
        self.bytes_since = 0
