"""The simulator's disks: an ideal one, and one backed by the real storage code's memory
model (``paxoslog.storage.MemoryStorage``) that can lose unsynced writes, tear the last
write, fail an fsync (EIO) or flip a bit.

Both offer what a SimNode needs: ``write(ready)`` when a Ready's fsync starts,
``sync(ready)`` when it completes, ``crash(rng)``, ``restored()`` and ``snapshot_state``,
``take_snapshot(meta, state)``.
"""

from __future__ import annotations

import random

import cbor2

from ..core.log import Entry, HardState, SnapshotMeta
from ..core.ready import Ready
from ..core.replica import Restored
from ..storage import MemoryStorage
from ..storage.snapshot import encode_snapshot_bytes

__all__ = ["IdealDisk", "ModelDisk"]


class IdealDisk:
    """Writes become durable exactly when their fsync completes; a crash loses the rest."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: dict[int, Entry] = {}
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_state: dict = {}

    def write(self, ready: Ready) -> None:
        """The fsync of ``ready`` started (nothing is durable yet)."""

    def sync(self, ready: Ready, snapshots: dict) -> None:
        self.persist(ready, snapshots)

    def persist(self, ready: Ready, snapshots: dict) -> None:
        if ready.snapshot is not None:
            meta = ready.snapshot
            self.snapshot = meta
            self.snapshot_state = dict(snapshots[ready.snapshot_data])
            self.entries = {i: e for i, e in self.entries.items() if i > meta.index}
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state
        if ready.truncate_from is not None:
            for index in [i for i in self.entries if i >= ready.truncate_from]:
                del self.entries[index]
        for entry in ready.entries:
            if self.snapshot is None or entry.index > self.snapshot.index:
                self.entries[entry.index] = entry

    def crash(self, rng: random.Random) -> None:
        """Nothing to do: only completed syncs ever reached this disk."""

    def take_snapshot(self, meta: SnapshotMeta, state: dict) -> None:
        self.snapshot = meta
        self.snapshot_state = dict(state)
        self.entries = {i: e for i, e in self.entries.items() if i > meta.index}

    def restored(self) -> Restored:
        return Restored(self.hard_state, [self.entries[i] for i in sorted(self.entries)],
                        self.snapshot)


def _snapshot_file(meta: SnapshotMeta, state: dict) -> bytes:
    return encode_snapshot_bytes(meta, [("kv", [cbor2.dumps(state)])], None, level=1)


class ModelDisk:
    """The real storage encoding over an in-memory disk with fault injection.

    A Ready's records are *written* when its fsync starts and made durable when it ends; a
    crash in between keeps a random prefix of the unsynced records and may tear the next."""

    def __init__(self, node_id: int, rng: random.Random) -> None:
        self.store = MemoryStorage(node_id)
        self.rng = rng
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_state: dict = {}
        self.tear_rate = 0.3

    def write(self, ready: Ready) -> None:
        if ready.snapshot is None:
            self.store.append(ready)

    def sync(self, ready: Ready, snapshots: dict) -> None:
        """Raises StorageIOError when the fsync fails (the node must stop)."""
        if ready.snapshot is not None:
            state = snapshots[ready.snapshot_data]
            self.store.save(ready, snapshot_file=_snapshot_file(ready.snapshot, state))
            self.snapshot = ready.snapshot
            self.snapshot_state = dict(state)
        else:
            self.store.sync()

    def crash(self, rng: random.Random) -> None:
        self.store.crash(rng, tear=rng.random() < self.tear_rate)

    def take_snapshot(self, meta: SnapshotMeta, state: dict) -> None:
        self.store.save_snapshot(meta, [("kv", [cbor2.dumps(state)])])
        self.store.compact(meta.index)
        self.snapshot = meta
        self.snapshot_state = dict(state)

    def restored(self) -> Restored:
        """Raises CorruptLog when a durable record is damaged (the node refuses to start)."""
        restored, reader = self.store.load()
        if reader is not None:
            states = reader.read_all()
            self.snapshot = reader.meta
            self.snapshot_state = cbor2.loads(states["kv"])
        else:
            self.snapshot = None
            self.snapshot_state = {}
        return restored
