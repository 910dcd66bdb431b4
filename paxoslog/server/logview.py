"""``LogView``: the recently applied log, for ``GET /api/v1/log/entries`` and the tail
streams (streams.py reads recent entries here, older ones from the node's WAL).

The runner hands it every ``Applied`` instruction; it keeps the newest entries (bounded by
count and bytes) with the wall-clock time they were applied here, contiguous by index.  Entries above the
applied index are described from the core's view (committed, pending, or a hole in
Multi-Paxos).  A snapshot install starts it afresh.
"""

from __future__ import annotations

import time
from collections import deque
from itertools import islice

from paxoslog.core.log import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry, entry_config
from paxoslog.node.commands import decode_command

__all__ = ["LogView"]

_KIND_NAMES = {ENTRY_NORMAL: "normal", ENTRY_NOOP: "noop", ENTRY_CONFIG: "config"}
_ENTRY_OVERHEAD = 64


class LogView:
    def __init__(self, entries_kept: int, bytes_max: int, multipaxos: bool,
                 api_term, entries_max: int) -> None:
        self.recent: deque = deque(maxlen=max(1, entries_kept))
        self.bytes_max = bytes_max
        self.multipaxos = multipaxos
        self.api_term = api_term
        self.entries_max = entries_max
        self._bytes = 0

    def applied(self, op) -> None:
        """An ``Applied`` instruction."""
        now = time.time()
        recent = self.recent
        for entry in op.entries:
            size = sum(len(d) for d in entry.payload) + _ENTRY_OVERHEAD
            if len(recent) == recent.maxlen:
                self._bytes -= recent[0][5]
            recent.append((entry.index, entry.term, entry.kind, entry.payload, now, size))
            self._bytes += size
            while self._bytes > self.bytes_max and len(recent) > 1:
                self._bytes -= recent.popleft()[5]

    def reset(self) -> None:
        self.recent.clear()
        self._bytes = 0

    @property
    def first_index(self) -> int | None:
        """The oldest entry kept (None: none kept)."""
        return self.recent[0][0] if self.recent else None

    def since(self, start: int, end: int, bytes_max: int) -> list | None:
        """Kept entries ``start``..``end`` (at least one, then up to ``bytes_max`` payload
        bytes), as ``(index, term, kind, payload, stamp, size)``; None when ``start`` is no
        longer kept (or not applied yet)."""
        recent = self.recent
        if not recent or start < recent[0][0] or start > recent[-1][0]:
            return None
        out = []
        total = 0
        for item in islice(recent, start - recent[0][0], None):
            if item[0] > end or (out and total + item[5] > bytes_max):
                break
            out.append(item)
            total += item[5]
        return out

    def render(self, index: int, term: int, kind: int, payload: tuple) -> dict:
        """An entry as the tail streams show it (like ``entries`` without the state)."""
        item = {"index": index, "term": self.api_term(term),
                "kind": _KIND_NAMES.get(kind, str(kind)), "command": render_payload(kind, payload)}
        if self.multipaxos and kind == ENTRY_NOOP:
            item["hole"] = True
        return item

    def entries(self, start: int, end: int, applied_index: int, commit_index: int,
                last_index: int, holes) -> dict:
        """Log entries start..end (inclusive) as far as this node still holds them."""
        out = []
        recent = self.recent
        first_kept = recent[0][0] if recent else applied_index + 1
        if recent and start <= applied_index:
            for i in range(max(start, first_kept) - first_kept, len(recent)):
                index, term, kind, payload, stamp, _ = recent[i]
                if index > end:
                    break
                item = {"index": index, "term": self.api_term(term),
                        "kind": _KIND_NAMES.get(kind, str(kind)),
                        "command": render_payload(kind, payload),
                        "timestamp": round(stamp, 6), "state": "applied"}
                if self.multipaxos and kind == ENTRY_NOOP:
                    item["hole"] = True          # a slot a new leader filled with a no-op
                out.append(item)
        last = last_index or applied_index
        holes = set(holes or ())
        for index in range(max(start, applied_index + 1), min(end, last) + 1):
            if len(out) >= self.entries_max:
                break
            item = {"index": index, "state": "committed" if index <= commit_index else "pending"}
            if self.multipaxos and index in holes:
                item["state"] = "hole"
                item["hole"] = True
            out.append(item)
        return {"entries": out, "first_index": first_kept, "applied_index": applied_index,
                "commit_index": commit_index, "last_index": last,
                "compacted_below": first_kept if start < first_kept else None}


def render_payload(kind: int, payload: tuple) -> object:
    if kind == ENTRY_NOOP:
        return None
    if kind == ENTRY_CONFIG:
        try:
            config = entry_config(Entry(0, 0, ENTRY_CONFIG, payload))
            return {"voters": sorted(config.voters), "outgoing": sorted(config.outgoing),
                    "learners": sorted(config.learners)}
        except Exception:
            return {"undecodable": True}
    out = []
    for data in payload:
        command = decode_command(data)
        out.append(command if command is not None else {"undecodable": data.hex()[:64]})
    return out
