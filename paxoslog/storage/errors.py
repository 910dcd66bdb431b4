"""Errors raised by the storage layer.

``CorruptLog`` means "the bytes on disk are not what we wrote": the node must not vote or ack
with that log; it names the file and the byte offset so an operator (or a repair from peers)
can act.  ``StorageIOError`` means "the operating system failed a write or an fsync": the store
is unusable from then on (never retry an fsync and believe it).  ``MetaMismatch`` means the data
directory belongs to another cluster, node, protocol or format.
"""

from __future__ import annotations

__all__ = [
    "StorageError", "CorruptLog", "CorruptSnapshot", "StorageIOError", "MetaMismatch",
    "DataDirLocked", "SnapshotUnavailable", "UnsupportedFormat",
]


class StorageError(Exception):
    """Base class of every storage error."""


class CorruptLog(StorageError):
    """A durable record (WAL record, hard state, META) failed its checksum or cannot be decoded.

    ``path`` is the file (or a memory-model label), ``offset`` the byte offset of the bad
    record (or the record number in the memory model), ``reason`` a short explanation.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class CorruptSnapshot(StorageError):
    """A snapshot file failed its zstd content checksum or does not have the expected shape."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: corrupt snapshot: {reason}")
        self.path = path
        self.reason = reason


class SnapshotUnavailable(StorageError):
    """No usable snapshot covers the compacted part of the log: the node cannot rebuild its
    state locally and must fetch a snapshot from a peer (it must not vote meanwhile)."""


class StorageIOError(StorageError):
    """A write or fsync failed.  The store refuses every further write; restart the node."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class MetaMismatch(StorageError):
    """The data directory's META disagrees with the configuration (wrong dir, wrong node)."""

    def __init__(self, path: str, field: str, on_disk: object, expected: object,
                 source: str = "the conf") -> None:
        super().__init__(f"{path}: {field} is {on_disk!r} but {source} says {expected!r}")
        self.path = path
        self.field = field
        self.on_disk = on_disk
        self.expected = expected


class UnsupportedFormat(MetaMismatch):
    """The data directory's format is newer (or older) than this release reads."""

    def __init__(self, path: str, on_disk: int, supported: int, message: str) -> None:
        StorageError.__init__(self, message)
        self.path = path
        self.field = "format version"
        self.on_disk = on_disk
        self.expected = supported


class DataDirLocked(StorageError):
    """Another process holds the data directory's lock (two nodes on one directory)."""
