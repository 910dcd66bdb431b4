"""``MemoryStorage``: the storage interface over an in-memory disk model, for the simulator.

It stores the very bytes the disk store would write (framed, checksummed WAL records from
walscan.py; snapshot files from snapshot.py), so loading runs the same decoding and checks.
The model separates *written* from *synced*: ``append`` writes, ``sync`` makes durable,
``save`` does both.  Faults, all deterministic (randomness only from an rng passed in):

``crash(rng=None, tear=False)``  power loss: keep what was synced; with ``rng`` also a random
                                  prefix of the unsynced records; with ``tear`` the next
                                  record survives only in part (load() cuts it as a torn tail)
``fail_next_sync()``              the next sync raises ``StorageIOError`` (EIO) and the store
                                  refuses everything until ``crash()`` (a restart)
``flip_bit(index)``               damage the newest durable record holding entry ``index``:
                                  load() raises ``CorruptLog`` naming the record
``corrupt_snapshot()``            damage the newest snapshot: load() falls back to an older one

Test support for the scripted scenarios (tests/interaction), faults beyond the model that
the scripts name exactly: ``lose_last_entries(count)`` (a disk that acknowledged an fsync
it never did: the newest durable entries vanish) and ``reset_commit(commit)`` (the commit
hint, written without fsync, was lost), plus ``durable_state()`` to read what a restart
would find.

Snapshot writes and installs are atomic and durable on return (as rename + fsync are).
"""

from __future__ import annotations

import errno
import random
from typing import Iterable

from paxoslog.core.log import Entry, HardState, SnapshotMeta, entry_bytes
from paxoslog.core.ready import Ready
from paxoslog.core.replica import Restored

from .errors import CorruptLog, CorruptSnapshot, StorageError, StorageIOError
from .options import StorageOptions
from .snapshot import SnapshotReader, encode_snapshot_bytes, verify_snapshot
from .wal import Replay
from .walscan import (REC_ENTRIES, REC_HARDSTATE, REC_SNAPSHOT, REC_TRUNCATE, BadRecord,
                      TornTail, decode_record, encode_record, entry_wire)

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """Same interface as ``DiskStorage``; ``install_snapshot`` takes the snapshot file's bytes."""

    def __init__(self, node_id: int = 0, options: StorageOptions | None = None,
                 label: str | None = None) -> None:
        self.options = options or StorageOptions()
        self.label = label or f"memory:node{node_id}"
        self._records: list[bytes] = []          # written records, oldest first
        self._max_index: list[int | None] = []   # highest entry index per record
        self._synced = 0                         # _records[:_synced] are durable
        self._torn = False                       # the last record was torn by a crash
        self._checkpoint: HardState | None = None
        self._snapshots: list[tuple[SnapshotMeta, bytes]] = []
        self._failed: StorageIOError | None = None
        self._fail_next_sync = False
        self._loaded = False
        self.hard_state = HardState()
        self.snapshot_meta: SnapshotMeta | None = None
        self.floor = 0
        self.torn: TornTail | None = None
        self.skipped_snapshots: list[tuple[str, str]] = []
        self.syncs = 0

    # ------------------------------------------------------------------ loading

    def load(self, reapply: bool = False) -> tuple[Restored, SnapshotReader | None]:
        """Rebuild from the durable records (call at start and after each ``crash``);
        ``reapply``: as ``DiskStorage.load``."""
        assert self._synced == len(self._records), "load() only after crash() or at start"
        replay = Replay()
        self.torn = None
        for number, data in enumerate(self._records):
            try:
                rtype, value = decode_record(data, self.options.record_bytes_max)
            except BadRecord as bad:
                last = number == len(self._records) - 1
                if last and self._torn and bad.problem != "crc":
                    self.torn = TornTail(self.label, number, len(data), str(bad))
                    del self._records[number:], self._max_index[number:]
                    self._synced = len(self._records)
                    self._torn = False
                    break
                raise CorruptLog(self.label, number, f"record #{number}{self._describe(number)}: "
                                                     f"{bad}") from None
            replay.apply(rtype, value)
        self.skipped_snapshots = []
        valid = self._valid_snapshots()
        chosen = next(valid, None)
        base, committed = chosen, 0
        if reapply and chosen is not None:
            older = next(valid, None)
            if older is not None and replay.reapplies(older[0], chosen[0]):
                base, committed = older, chosen[0].index
        skipped = "".join(f"; skipped {path}: {why}" for path, why in self.skipped_snapshots)
        self.floor = replay.floor[0] if replay.floor else 0
        restored = replay.restored(self._checkpoint, base[0] if base else None,
                                   self.label, skipped, committed)
        self.hard_state = restored.hard_state
        self.snapshot_meta = chosen[0] if chosen else None
        self._loaded = True
        return restored, (SnapshotReader(base[1]) if base else None)

    def _valid_snapshots(self):
        """The snapshots that pass verification, newest first (corrupt ones skipped)."""
        for meta, blob in reversed(self._snapshots):
            try:
                verify_snapshot(blob)
            except CorruptSnapshot as exc:
                self.skipped_snapshots.append((f"{self.label}:snapshot@{meta.index}", exc.reason))
                continue
            yield meta, blob

    def _describe(self, number: int) -> str:
        top = self._max_index[number]
        return f" (holding entries up to index {top})" if top is not None else ""

    # ------------------------------------------------------------------ writing

    @property
    def usable(self) -> bool:
        return self._failed is None

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageIOError(f"{self.label}: storage unusable after an earlier I/O error; "
                                 "restart the node", errno.EIO)

    def _write(self, rtype: int, value: object, max_index: int | None = None) -> None:
        self._records.append(encode_record(rtype, value))
        self._max_index.append(max_index)

    def append(self, ready: Ready) -> None:
        """Write (not sync) the durable part of ``ready``: truncate, entries, hard state."""
        self._check_usable()
        assert ready.snapshot is None, "a Ready with a snapshot goes through save()"
        if ready.truncate_from is not None:
            self._write(REC_TRUNCATE, ready.truncate_from)
        batch: list[Entry] = []
        size = 0
        for entry in ready.entries:
            if batch and size + entry_bytes(entry) > self.options.entries_record_bytes:
                self._write(REC_ENTRIES, [entry_wire(e) for e in batch], batch[-1].index)
                batch, size = [], 0
            batch.append(entry)
            size += entry_bytes(entry)
        if batch:
            self._write(REC_ENTRIES, [entry_wire(e) for e in batch], max(e.index for e in batch))
        if ready.hard_state is not None:
            self._write(REC_HARDSTATE, list(ready.hard_state))
            self.hard_state = ready.hard_state

    def sync(self) -> None:
        """Make every written record durable, or fail (after ``fail_next_sync``)."""
        self._check_usable()
        if self._synced == len(self._records):
            return
        if self._fail_next_sync:
            self._fail_next_sync = False
            self._failed = StorageIOError(f"{self.label}: fsync failed (EIO)", errno.EIO)
            raise self._failed
        self._synced = len(self._records)
        self.syncs += 1

    def save(self, ready: Ready, snapshot_file: bytes | None = None) -> None:
        """Persist ``ready`` durably (install its snapshot first, from ``snapshot_file`` or
        ``ready.snapshot_data``: a snapshot file's bytes)."""
        self._check_usable()
        truncate_from = ready.truncate_from
        if ready.snapshot is not None:
            if self.snapshot_meta is None or ready.snapshot.index > self.snapshot_meta.index:
                data = snapshot_file if snapshot_file is not None else ready.snapshot_data
                if data is None:
                    raise ValueError("a Ready with a snapshot needs snapshot_file or snapshot_data")
                if truncate_from is not None:       # as DiskStorage: the suffix goes first
                    self.append(Ready(truncate_from=truncate_from))
                    self.sync()
                    truncate_from = None
                self.install_snapshot(ready.snapshot, data)
        self.append(Ready(hard_state=ready.hard_state, truncate_from=truncate_from,
                          entries=ready.entries))
        self.sync()

    def save_snapshot(self, meta: SnapshotMeta, states: Iterable[tuple[str, Iterable[bytes]]],
                      sessions: object = None) -> bytes:
        """Store a local snapshot (returns the snapshot file's bytes, e.g. to send)."""
        self._check_usable()
        blob = encode_snapshot_bytes(meta, states, sessions, level=1)
        self._keep_snapshot(meta, blob)
        return blob

    def _keep_snapshot(self, meta: SnapshotMeta, blob: bytes) -> None:
        self._snapshots = [s for s in self._snapshots
                           if (s[0].index, s[0].term) != (meta.index, meta.term)]
        self._snapshots.append((meta, blob))
        self._snapshots.sort(key=lambda s: (s[0].index, s[0].term))
        del self._snapshots[:-self.options.snapshot_keep]
        if self.snapshot_meta is None or meta.index >= self.snapshot_meta.index:
            self.snapshot_meta = meta

    def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Adopt a snapshot received from a peer (its file bytes), mark the floor, compact."""
        self._check_usable()
        info = verify_snapshot(data)
        if (info.meta.index, info.meta.term) != (meta.index, meta.term):
            raise StorageError(f"{self.label}: snapshot covers ({info.meta.index}, "
                               f"{info.meta.term}) but install was asked for "
                               f"({meta.index}, {meta.term})")
        self._keep_snapshot(meta, data)
        self.sync()
        self._write(REC_SNAPSHOT, [meta.index, meta.term])
        self.sync()
        self.floor = max(self.floor, meta.index)
        self._delete_prefix(meta.index)

    def compact(self, index: int) -> int:
        """Drop the durable record prefix covered by a snapshot (as ``DiskStorage.compact``)."""
        self._check_usable()
        if not self._snapshots:
            return 0
        limit = self._snapshots[-1][0]
        if self.options.keep_log_for_fallback and self.options.snapshot_keep >= 2:
            if len(self._snapshots) < 2:
                return 0
            limit = self._snapshots[-2][0]
        effective = min(index, limit.index)
        if effective <= self.floor:
            return self._delete_prefix(self.floor)
        self.sync()
        self._write(REC_SNAPSHOT, [effective, limit.term if effective == limit.index else 0])
        self.sync()
        self.floor = effective
        return self._delete_prefix(effective)

    def _delete_prefix(self, index: int) -> int:
        """Delete the longest durable prefix whose entries are all <= index, never the last
        record (like the active segment, it holds the newest floor marker)."""
        count = 0
        while count < self._synced - 1 and (self._max_index[count] is None
                                             or self._max_index[count] <= index):
            count += 1
        if count:
            self._checkpoint = self.hard_state
            del self._records[:count], self._max_index[:count]
            self._synced -= count
        return count

    def close(self) -> None:
        """Nothing to release; unsynced records stay unsynced (a crash may still drop them)."""

    # ------------------------------------------------------------------ faults

    @property
    def unsynced(self) -> int:
        return len(self._records) - self._synced

    def crash(self, rng: random.Random | None = None, tear: bool = False) -> int:
        """Power loss.  Keeps the synced records; with ``rng`` a random prefix of the unsynced
        ones too; with ``tear`` the record after the kept ones survives cut short.  Clears the
        failed state (the node restarts).  Returns how many unsynced records were kept."""
        unsynced = len(self._records) - self._synced
        keep = rng.randint(0, unsynced) if rng is not None and unsynced else 0
        kept_end = self._synced + keep
        torn = None
        if tear and kept_end < len(self._records):
            record = self._records[kept_end]
            cut = rng.randint(1, len(record) - 1) if rng is not None else len(record) // 2
            torn = (record[:cut], self._max_index[kept_end])
        del self._records[kept_end:], self._max_index[kept_end:]
        if torn is not None:
            self._records.append(torn[0])
            self._max_index.append(torn[1])
        self._torn = torn is not None
        self._synced = len(self._records)
        self._failed = None
        self._fail_next_sync = False
        self._loaded = False
        return keep

    def kill(self) -> None:
        """Process death (kill -9): the kernel keeps every written record (the page cache),
        synced or not; nothing is torn.  Clears the failed state (the node restarts)."""
        self._synced = len(self._records)
        self._torn = False
        self._failed = None
        self._fail_next_sync = False
        self._loaded = False

    def fail_next_sync(self) -> None:
        self._fail_next_sync = True

    def flip_bit(self, index: int, bit: int = 0) -> int:
        """Flip one payload bit of the newest durable record holding entry ``index``.
        Returns that record's number (what ``CorruptLog.offset`` will say)."""
        for number in range(self._synced - 1, -1, -1):
            top = self._max_index[number]
            if top is None or top < index:
                continue
            _, value = decode_record(self._records[number])
            if any(entry.index == index for entry in value):
                data = bytearray(self._records[number])
                data[-1 - bit // 8] ^= 1 << (bit % 8)
                self._records[number] = bytes(data)
                return number
        raise KeyError(f"{self.label}: no durable record holds entry {index}")

    def corrupt_snapshot(self, position: int = -1) -> SnapshotMeta:
        """Flip a bit in the middle of a stored snapshot (default: the newest)."""
        meta, blob = self._snapshots[position]
        data = bytearray(blob)
        data[len(data) // 2] ^= 0x10
        self._snapshots[position] = (meta, bytes(data))
        return meta

    # ------------------------------------------------------------------ test support

    def lose_last_entries(self, count: int) -> list[int]:
        """Test support: the durable log loses its ``count`` newest entries (the records
        are rewritten without them), as if the disk had lied about an fsync.  Only after
        ``crash()`` (nothing unsynced).  Returns the lost indexes.  A durable commit point
        beyond what is left makes ``load()`` raise ``CorruptLog`` (R13)."""
        assert self._synced == len(self._records), "lose_last_entries() only after crash()"
        _, entries = self.durable_state()
        lost = [e.index for e in entries[len(entries) - count:]] if count > 0 else []
        if lost:
            first = lost[0]

            def without_lost(rtype: int, value):
                if rtype != REC_ENTRIES or all(e.index < first for e in value):
                    return value
                kept = [e for e in value if e.index < first]
                return [entry_wire(e) for e in kept] if kept else None
            self._rewrite(without_lost)
        return lost

    def reset_commit(self, commit: int = 0) -> None:
        """Test support: every durable hard state says at most ``commit`` is committed (the
        commit hints, written without fsync, were lost; term and vote stay).  Only after
        ``crash()``."""
        assert self._synced == len(self._records), "reset_commit() only after crash()"

        def capped(rtype: int, value):
            if rtype != REC_HARDSTATE:
                return value
            return [value.term, value.vote, min(value.commit, commit)]
        self._rewrite(capped)
        if self._checkpoint is not None:
            hs = self._checkpoint
            self._checkpoint = HardState(hs.term, hs.vote, min(hs.commit, commit))

    def _rewrite(self, change) -> None:
        """Re-encode every record through ``change(rtype, decoded value)``: the value to
        encode (entries as wire lists), the decoded value itself when unchanged (the
        record's bytes are kept), or None to drop the record."""
        records, tops = [], []
        for data, top in zip(self._records, self._max_index):
            try:
                rtype, value = decode_record(data, self.options.record_bytes_max)
            except BadRecord:
                records.append(data)       # torn or damaged: stays as it is
                tops.append(top)
                continue
            new = change(rtype, value)
            if new is value:
                records.append(data)
                tops.append(top)
            elif new is not None:
                records.append(encode_record(rtype, new))
                tops.append(max(item[0] for item in new) if rtype == REC_ENTRIES else top)
        self._records, self._max_index = records, tops
        self._synced = len(records)

    def durable_state(self) -> tuple[HardState, list[Entry]]:
        """The hard state and log entries that are durable now (what a restart would load,
        without load()'s checks and without the snapshot): for inspection and tests."""
        replay = Replay()
        for data in self._records[:self._synced]:
            try:
                replay.apply(*decode_record(data, self.options.record_bytes_max))
            except BadRecord:
                break                      # a torn or damaged record: load() reports it
        hard_state = replay.hard_state or self._checkpoint or HardState()
        return hard_state, list(replay.entries.values())

    def compaction_point(self, taken: SnapshotMeta) -> SnapshotMeta | None:
        """As ``DiskStorage.compaction_point``: with ``snapshot_keep`` >= 2 the newest kept
        snapshot before ``taken`` (None when there is none yet); else ``taken``."""
        if self.options.snapshot_keep < 2:
            return taken
        earlier = [meta for meta, _ in self._snapshots if meta.index < taken.index]
        return earlier[-1] if earlier else None

    def find_snapshot(self, index: int, term: int) -> bytes | None:
        """The kept snapshot file at (index, term), as bytes; None when not kept."""
        for meta, blob in self._snapshots:
            if (meta.index, meta.term) == (index, term):
                return blob
        return None

    # ------------------------------------------------------------------ introspection

    def latest_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        return self._snapshots[-1] if self._snapshots else None

    @property
    def record_count(self) -> int:
        return len(self._records)
