"""``RaftLog``: Raft's contiguous log above a snapshot (the counterpart of log.SlotLog).

``entries[k]`` has index ``offset + 1 + k``; ``offset`` is the snapshot's index (0 without
one) and ``snap_term`` its term.  Terms never decrease along the log (Log Matching), so
term searches bisect.  The CONFIG entries above the snapshot are indexed as they come,
because Raft applies a configuration when it is appended, not when committed (thesis
4.1), and must fall back to the previous one when a truncation removes it.

The log also remembers what the shell has not persisted yet: the suffix from
``unstable_from`` and a pending ``truncate_from``; ``take_unstable`` hands both out for
the next Ready, and ``persisted`` (when that Ready is advanced) moves ``durable_upto``,
the end of the prefix known durable, which is what a leader may count as its own match.
It knows nothing of commit indexes or roles: the replica checks that it never truncates
or compacts what it must not.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from operator import itemgetter
from typing import Sequence

from .log import ENTRY_CONFIG, Entry, SnapshotMeta, entry_config
from .quorum import Config

__all__ = ["RaftLog"]

_TERM = itemgetter(1)     # Entry.term, for bisecting the log


class RaftLog:
    """Entries above a snapshot, their configurations, and the unpersisted suffix."""

    __slots__ = ("entries", "offset", "snap_term", "snapshot", "base_config",
                 "base_config_index", "conf_entries", "unstable_from", "truncate_from",
                 "checked_upto", "durable_upto", "handed_upto")

    def __init__(self, config: Config) -> None:
        self.entries: list[Entry] = []
        self.offset = 0
        self.snap_term = 0
        self.snapshot: SnapshotMeta | None = None
        self.base_config = config                      # configuration in force at offset
        self.base_config_index = 0                     # ... and the index that set it
        self.conf_entries: list[tuple[int, Config]] = []  # CONFIG entries above offset
        self.unstable_from = 1         # first index not yet handed out for persisting
        self.truncate_from: int | None = None
        self.checked_upto = 0          # check_invariants verified the log up to here
        self.durable_upto = 0          # entries <= this are durable (as held here)
        self.handed_upto = 0           # ... and these once the outstanding Ready is

    def restore(self, entries: list[Entry], snapshot: SnapshotMeta | None) -> None:
        """Load what storage kept (all of it is persisted).  Raises ValueError unless the
        entries follow the snapshot contiguously with non-decreasing terms."""
        if snapshot is not None:
            self.offset, self.snap_term, self.snapshot = snapshot.index, snapshot.term, snapshot
            self.base_config, self.base_config_index = snapshot.config, snapshot.index
        expected, last_term = self.offset + 1, self.snap_term
        for entry in entries:
            if entry.index != expected or entry.term < last_term:
                raise ValueError(f"restored log is not contiguous with non-decreasing terms at "
                                 f"index {entry.index} (expected {expected})")
            expected += 1
            last_term = entry.term
            if entry.kind == ENTRY_CONFIG:
                self.conf_entries.append((entry.index, entry_config(entry)))
        self.entries = list(entries)
        self.unstable_from = self.last_index + 1
        self.checked_upto = self.offset
        self.durable_upto = self.handed_upto = self.last_index

    # ------------------------------------------------------------------ reading

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``, or None when it is compacted away or absent."""
        k = index - self.offset
        if k == 0:
            return self.snap_term
        if 0 < k <= len(self.entries):
            return self.entries[k - 1].term
        return None

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi inclusive (all retained)."""
        return self.entries[lo - self.offset - 1: hi - self.offset]

    def first_index_of_term(self, term: int, lo: int, hi: int) -> int:
        """Smallest index in [lo, hi] whose term is ``term`` (the entry at hi has it)."""
        off = self.offset
        return bisect_left(self.entries, term, lo - off - 1, hi - off, key=_TERM) + off + 1

    def last_index_with_term_at_most(self, term: int) -> int:
        """Largest retained index whose term is <= ``term`` (offset when there is none)."""
        return bisect_right(self.entries, term, key=_TERM) + self.offset

    def current_config(self) -> tuple[int, Config]:
        """The newest configuration in the log and the index of the entry that set it."""
        if self.conf_entries:
            return self.conf_entries[-1]
        return self.base_config_index, self.base_config

    def config_at(self, index: int) -> tuple[int, Config]:
        """The configuration in force at ``index`` and the index of the entry that set it."""
        found = (self.base_config_index, self.base_config)
        for conf_index, conf in self.conf_entries:
            if conf_index > index:
                break
            found = (conf_index, conf)
        return found

    # ------------------------------------------------------------------ changing

    def append(self, entries: Sequence[Entry], configs: dict[int, Config] | None = None) -> bool:
        """Append entries that follow the last index (``configs``: their CONFIG entries,
        already parsed).  True when a configuration entry was among them."""
        self.entries.extend(entries)
        changed = False
        for entry in entries:
            if entry.kind == ENTRY_CONFIG:
                conf = configs[entry.index] if configs else entry_config(entry)
                self.conf_entries.append((entry.index, conf))
                changed = True
        return changed

    def truncate(self, index: int) -> bool:
        """Drop every entry >= ``index``; True when a configuration entry went with them."""
        del self.entries[index - self.offset - 1:]
        self.durable_upto = min(self.durable_upto, index - 1)
        self.handed_upto = min(self.handed_upto, index - 1)
        if index < self.unstable_from:
            if self.truncate_from is None or index < self.truncate_from:
                self.truncate_from = index
            self.unstable_from = index
        self.checked_upto = min(self.checked_upto, index - 1)
        dropped = False
        while self.conf_entries and self.conf_entries[-1][0] >= index:
            self.conf_entries.pop()
            dropped = True
        return dropped

    def compact(self, index: int, term: int) -> None:
        """A snapshot now covers every entry <= ``index`` (retained, with ``term``)."""
        config_index, config = self.config_at(index)
        del self.entries[: index - self.offset]
        self.offset, self.snap_term = index, term
        self.snapshot = SnapshotMeta(index, term, config)
        self.base_config, self.base_config_index = config, config_index
        self.conf_entries = [c for c in self.conf_entries if c[0] > index]
        self.unstable_from = max(self.unstable_from, index + 1)
        self.checked_upto = max(self.checked_upto, index)

    def install(self, index: int, term: int, config: Config) -> None:
        """Replace the prefix through ``index`` by a received snapshot.  The suffix after it
        survives when our entry at ``index`` has the snapshot's term; otherwise the whole
        log goes (and storage is told to truncate what it holds beyond the snapshot)."""
        keep_suffix = self.term_at(index) == term
        if keep_suffix:
            del self.entries[: index - self.offset]
            self.unstable_from = max(self.unstable_from, index + 1)
        else:
            if index < self.last_index and (self.truncate_from is None
                                            or index + 1 < self.truncate_from):
                self.truncate_from = index + 1
            self.entries = []
            self.unstable_from = index + 1
            self.durable_upto = min(self.durable_upto, index)
            self.handed_upto = min(self.handed_upto, index)
        self.offset, self.snap_term = index, term
        self.snapshot = SnapshotMeta(index, term, config)
        self.base_config, self.base_config_index = config, index
        # Configuration entries survive only with the log suffix they sit in (sim seed
        # 1867: a conflicting log was dropped but its CONFIG entry was still tracked).
        self.conf_entries = ([c for c in self.conf_entries if c[0] > index]
                             if keep_suffix else [])
        self.checked_upto = index

    # ------------------------------------------------------------------ persisting

    @property
    def has_unstable(self) -> bool:
        return self.truncate_from is not None or self.unstable_from <= self.last_index

    def take_unstable(self) -> tuple[int | None, list[Entry]]:
        """``(truncate_from, entries)`` the shell must persist next; both are then
        considered handed out."""
        truncate_from, last = self.truncate_from, self.last_index
        entries = self.slice(self.unstable_from, last) if self.unstable_from <= last else []
        self.truncate_from = None
        self.unstable_from = last + 1
        self.handed_upto = last
        return truncate_from, entries

    def persisted(self) -> None:
        """The Ready of the last ``take_unstable`` is durable: so is the log up to what it
        handed out (less what was truncated since)."""
        self.durable_upto = max(self.durable_upto, self.handed_upto)

    def check_invariants(self) -> None:
        """Contiguity and non-decreasing terms (incremental: O(new entries)), the config
        index, the snapshot, the unstable bounds."""
        last, offset = self.last_index, self.offset
        if self.entries:
            assert self.entries[0].index == offset + 1, (self.entries[0].index, offset)
            assert self.entries[-1].index == last, (self.entries[-1].index, last)
        start = max(self.checked_upto, offset)
        if start < last:
            prev_term = self.term_at(start)
            for entry in self.slice(start + 1, last):
                start += 1
                assert entry.index == start, (entry.index, start)
                assert entry.term >= prev_term, f"term decreases at {entry.index}"
                prev_term = entry.term
            self.checked_upto = last
        assert self.unstable_from <= last + 1
        assert self.durable_upto <= self.handed_upto <= last, \
            (self.durable_upto, self.handed_upto, last)
        assert self.truncate_from is None or self.truncate_from <= self.unstable_from
        previous = offset
        for index, _ in self.conf_entries:
            assert previous < index <= last, (previous, index, last)
            assert self.entries[index - offset - 1].kind == ENTRY_CONFIG
            previous = index
        if self.snapshot is not None:
            assert self.snapshot.index == offset and self.snapshot.term == self.snap_term
