"""Durable storage of a replica: META, hard state, segmented WAL, zstd snapshots, transfer.

``DiskStorage`` is the real store, ``MemoryStorage`` the same interface over an in-memory
disk model with crash/EIO/bit-flip faults for the simulator.  See DESIGN.md section 4 and
the module docstrings (walscan.py has the record format and the torn-tail rules, wal.py
the writer).
"""

from .disk import DiskStorage
from .errors import (CorruptLog, CorruptSnapshot, DataDirLocked, MetaMismatch, SnapshotUnavailable,
                     StorageError, StorageIOError, UnsupportedFormat)
from .memory import MemoryStorage
from .meta import FORMAT_VERSION, Meta, ensure_meta, read_meta
from .options import StorageOptions
from .snapshot import (SnapshotFile, SnapshotInfo, SnapshotReader, SnapshotStore,
                       encode_snapshot_bytes, verify_snapshot, write_snapshot)
from .transfer import (CHUNK_BYTES_DEFAULT, BadChunk, SnapshotChunk, SnapshotOffer,
                       SnapshotReceiver, SnapshotSender, TransferFailed)
from .wal import WriteAheadLog
from .walscan import TornTail

__all__ = [
    "DiskStorage", "MemoryStorage", "StorageOptions",
    "StorageError", "CorruptLog", "CorruptSnapshot", "StorageIOError", "MetaMismatch",
    "DataDirLocked", "SnapshotUnavailable", "UnsupportedFormat",
    "Meta", "FORMAT_VERSION", "ensure_meta", "read_meta",
    "SnapshotReader", "SnapshotStore", "SnapshotFile", "SnapshotInfo",
    "write_snapshot", "verify_snapshot", "encode_snapshot_bytes",
    "SnapshotOffer", "SnapshotChunk", "SnapshotSender", "SnapshotReceiver", "BadChunk",
    "TransferFailed", "CHUNK_BYTES_DEFAULT",
    "WriteAheadLog", "TornTail",
]
