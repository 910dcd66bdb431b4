"""``WalHistory``: committed log entries read back from this node's own WAL, off the event
loop, for tails that start before the in-memory log view (logview.py).

Why the WAL: the log view keeps the newest ``limits.recent_entries_kept`` entries; the WAL
holds every entry since the last compaction point (at least one snapshot interval with
``snapshot.keep >= 2``), so a tail can start, or catch up after a slow spell, further
back without the node keeping more in memory.

Which entries are served: the WAL is read like ``paxoslog log dump`` (read-only, no lock),
a later record of an index replacing an earlier one.  Only indexes the caller says were
applied (``end``: at most the applied index when it asked) are returned, and only above
the highest SNAPSHOT marker (a compaction or an installed snapshot): above it, every entry
this node applied came from this log, and the last record of a committed index holds its
committed value (Raft never truncates a committed entry, a chosen Multi-Paxos slot is
only ever rewritten with its chosen value, at most under a higher ballot: the ``term``
may then differ from the one the log view showed).  Below the marker an entry might be a
stale, never-committed value superseded by a snapshot, so it is not served.

Segments deleted by a compaction while they are read make the read start over (the
marker of that compaction, fsynced before the deletion, is then in the listing).  Sealed
segments are immutable: their highest index and marker are remembered, and a segment
wholly below the start is not decoded again.  One read at a time per node.
"""

from __future__ import annotations

import os

from twisted.internet import defer, threads

from paxoslog.storage.walscan import (REC_ENTRIES, REC_SNAPSHOT, list_segments, scan_segment)

__all__ = ["WalHistory", "read_committed"]

_ATTEMPTS = 3


class _Vanished(Exception):
    """A listed segment was deleted during the read."""


def read_committed(wal_dir: str, start: int, end: int, count_max: int, bytes_max: int,
                   ranges: dict) -> tuple[list, int | None]:
    """``(entries, first)``: the WAL's entries ``start..end`` (contiguous from ``start``, at
    most ``count_max`` of them and about ``bytes_max`` payload bytes) and the lowest index
    the WAL can serve at all (None: none).  ``ranges`` caches, per sealed segment (path,
    size), its highest entry index, highest SNAPSHOT marker and lowest entry index.  Blocking: run it on a
    thread."""
    for attempt in range(_ATTEMPTS):
        try:
            return _read(wal_dir, start, end, count_max, bytes_max, ranges)
        except _Vanished:
            continue
    return [], None


def _read(wal_dir, start, end, count_max, bytes_max, ranges):
    found = list_segments(wal_dir, strict=False)
    entries: dict[int, object] = {}
    floor = 0
    lowest = None
    for position, (seq, path) in enumerate(found):
        last = position == len(found) - 1
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise _Vanished() from None
        cached = None if last else ranges.get((path, size))
        if cached is not None and cached[0] is not None and cached[0] < start:
            floor = max(floor, cached[1])
            lowest = cached[2] if lowest is None else min(lowest, cached[2])
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise _Vanished() from None
        scan = scan_segment(path, seq, data, last=last, strict=False)
        top = bottom = None
        marker = 0
        for record in scan.records:
            if record.rtype == REC_ENTRIES:
                for entry in record.value:
                    index = entry.index
                    if top is None:
                        top = bottom = index
                    elif index > top:
                        top = index
                    elif index < bottom:
                        bottom = index
                    if lowest is None or index < lowest:
                        lowest = index
                    if start <= index <= end:
                        entries[index] = entry
            elif record.rtype == REC_SNAPSHOT:
                marker = max(marker, record.value[0])
        floor = max(floor, marker)
        if not last and scan.corruption is None:
            ranges[(path, size)] = (top, marker, bottom)
    first = max(floor + 1, lowest) if lowest is not None else None
    out = []
    total = 0
    index = start
    if first is None or start < first:
        return out, first
    while index <= end and len(out) < count_max:
        entry = entries.get(index)
        if entry is None:
            break
        size = sum(len(c) for c in entry.payload) + 64
        if out and total + size > bytes_max:
            break
        out.append(entry)
        total += size
        index += 1
    return out, first


class WalHistory:
    """Reads of ``data_dir``'s WAL on the reactor's thread pool, one at a time."""

    def __init__(self, data_dir: str, reactor, count_max: int) -> None:
        self.wal_dir = os.path.join(data_dir, "wal")
        self.reactor = reactor
        self.count_max = count_max
        self.reads = 0
        self._lock = defer.DeferredLock()
        self._ranges: dict = {}

    @property
    def enabled(self) -> bool:
        return self.count_max > 0

    def read(self, start: int, end: int, bytes_max: int) -> defer.Deferred:
        """Fires with ``(entries, first)`` (see ``read_committed``)."""
        if not self.enabled:
            return defer.succeed(([], None))

        def run():
            self.reads += 1
            return threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), read_committed, self.wal_dir,
                start, end, self.count_max, bytes_max, self._ranges)
        return self._lock.run(run)
