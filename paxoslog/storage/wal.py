"""Segmented write-ahead log of checksummed CBOR records: the writer, and replay.

The records, their types and the reading rules (torn tail or corruption) are in
walscan.py.

Writing: ``append`` buffers records (no fsync); ``sync`` writes them and calls ``fdatasync``
once (group commit).  Each batch (the records between two syncs) starts with a SYNC record
naming the offset up to which the segment was durable.  A segment is rotated once it reaches
``segment_bytes``: the old one is cut to its records and fsynced in full first, the new one
is created with its header, fsynced, and the directory fsynced.  So only the *last* segment
can hold a torn tail.

Preallocation: the last segment is extended to ``segment_bytes`` when it is created (and
when a node reopens it), with ``posix_fallocate``, as etcd does; records are written at the
log's end with ``pwrite``, so the file is the records followed by zeros.  An ``fdatasync``
then has only data to flush, not a new file size in the journal: three nodes syncing
300-byte appends at once on one ext4 disk took 121-158 us per sync instead of 165-209
(issue 17).  A reader takes zeros from a record boundary to the end of the last segment as
the free rest of the segment (``SegmentScan.preallocated``), not as a torn tail.  An older
reader sees the same bytes as a torn tail and cuts it, so both versions read each other's
directories.  Preallocation is best effort: where the file system refuses it the segment
simply grows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from paxoslog.core.log import Entry, HardState, SnapshotMeta
from paxoslog.core.replica import Restored

from .durable import DATA_DIR_MODE, DATA_FILE_MODE, fsync_dir, make_dirs, pwrite_all
from .errors import CorruptLog, SnapshotUnavailable, StorageError, StorageIOError
from .failpoints import ACTIVE, hit
from .walscan import (RECORD_BYTES_MAX_DEFAULT, RECORD_HEAD_BYTES, REC_ENTRIES, REC_HARDSTATE,
                      REC_HEADER, REC_SNAPSHOT, REC_SYNC, REC_TRUNCATE, SEGMENT_BYTES_DEFAULT,
                      WAL_FORMAT, TornTail, encode_record, entry_wire, list_segments,
                      scan_segment, segment_name)

__all__ = ["WriteAheadLog", "Replay"]

FLUSH_BYTES = 1 << 20          # write the user-space buffer to the OS beyond this size


def _preallocate(fd: int, size: int) -> None:
    """Extend the file to ``size`` bytes of reserved zeros (best effort; see the module
    docstring).  A file already longer is left as it is.  Where there is no
    ``posix_fallocate`` (macOS) the segment grows as it is written."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    try:
        allocate(fd, 0, size)
    except OSError:
        pass

@dataclass
class Replay:
    """The WAL folded into state: what ``DiskStorage.load`` builds ``Restored`` from."""

    hard_state: HardState | None = None
    entries: SortedDict = field(default_factory=SortedDict)
    floor: tuple[int, int] | None = None      # highest SNAPSHOT marker (index, term)
    torn: TornTail | None = None
    segments: int = 0
    records: int = 0

    def apply(self, rtype: int, value) -> None:
        self.records += 1
        if rtype == REC_ENTRIES:
            for entry in value:
                self.entries[entry.index] = entry
        elif rtype == REC_TRUNCATE:
            for index in list(self.entries.irange(value)):
                del self.entries[index]
        elif rtype == REC_HARDSTATE:
            self.hard_state = value
        elif rtype == REC_SNAPSHOT:
            if self.floor is None or value[0] >= self.floor[0]:
                self.floor = value

    def reapplies(self, older: SnapshotMeta, newest: SnapshotMeta) -> bool:
        """Whether a restart may restore ``older`` and apply the log up to ``newest`` again:
        ``older`` is at or above the floor (the log above it was not compacted or replaced
        by an installed snapshot) and the log holds every entry from ``older.index`` + 1
        through ``newest.index``, the last one of ``newest``'s term."""
        floor = self.floor[0] if self.floor else 0
        if not floor <= older.index < newest.index:
            return False
        entries = self.entries
        last = entries.get(newest.index)
        if last is None or last.term != newest.term:
            return False
        present = entries.bisect_right(newest.index) - entries.bisect_right(older.index)
        return present == newest.index - older.index

    def restored(self, checkpoint: HardState | None, snapshot: SnapshotMeta | None,
                 where: str, skipped: str = "", committed: int = 0) -> Restored:
        """The replica's ``Restored`` given the chosen snapshot; ``committed``: an index known
        committed (a newer snapshot's, when restoring an older one: see ``reapplies``), which
        raises the hard state's commit hint to it.

        Raises ``SnapshotUnavailable`` when the snapshot does not reach the floor (the log
        below it is gone) and ``CorruptLog`` when the hard state's commit point lies beyond
        the log and the snapshot (acknowledged entries were lost, R13)."""
        floor = self.floor[0] if self.floor else 0
        snap_index = snapshot.index if snapshot else 0
        if snap_index < floor:
            have = (f"the newest valid snapshot covers index {snap_index}" if snapshot
                    else "no valid snapshot")
            raise SnapshotUnavailable(f"{where}: {have}, but the log at or below index {floor} was "
                                      f"compacted or replaced by an installed snapshot{skipped}; "
                                      "fetch a snapshot from a peer")
        hard_state = self.hard_state or checkpoint or HardState()
        if committed > hard_state.commit:
            hard_state = hard_state._replace(commit=committed)
        entries = [self.entries[i] for i in self.entries.irange(snap_index + 1)]
        last = entries[-1].index if entries else snap_index
        if hard_state.commit > last:
            raise CorruptLog(where, 0, f"the hard state says entries up to {hard_state.commit} are "
                                       f"committed but the log ends at {last} (snapshot "
                                       f"{snap_index}): acknowledged entries were lost")
        return Restored(hard_state, entries, snapshot)


@dataclass
class _Segment:
    seq: int
    path: str
    size: int
    max_index: int | None
    header_bytes: int


class WriteAheadLog:
    """The WAL of one data directory.  Not thread-safe; one writer (the data-dir lock is the
    caller's).  After any ``OSError`` it raises ``StorageIOError`` forever (fail-stop)."""

    def __init__(self, directory: str, *, segment_bytes: int = SEGMENT_BYTES_DEFAULT,
                 record_bytes_max: int = RECORD_BYTES_MAX_DEFAULT, read_only: bool = False) -> None:
        assert segment_bytes >= 4096 and record_bytes_max >= 4096
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.record_bytes_max = record_bytes_max
        self.read_only = read_only
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._buf = bytearray()
        self._synced = 0           # offset in the active segment known durable
        self._batch_open = False   # a SYNC record was emitted for the current batch
        self._failed: BaseException | None = None
        self._opened = False

    # ------------------------------------------------------------------ open / replay

    def open(self) -> Replay:
        """Scan every segment, cut a torn tail (unless read-only), return the folded state."""
        assert not self._opened, "open() once"
        self._opened = True
        if not self.read_only:
            make_dirs(self.directory, DATA_DIR_MODE)
        replay = Replay()
        found = list_segments(self.directory)
        for position, (seq, path) in enumerate(found):
            last = position == len(found) - 1
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                if self.read_only and replay.segments == 0:
                    continue        # a prefix compacted away by the running node meanwhile
                raise
            scan = scan_segment(path, seq, data, last=last, record_bytes_max=self.record_bytes_max)
            max_index = None
            for record in scan.records:
                replay.apply(record.rtype, record.value)
                if record.rtype == REC_ENTRIES and record.value:
                    top = max(entry.index for entry in record.value)
                    max_index = top if max_index is None else max(max_index, top)
            replay.segments += 1
            if scan.torn is not None:
                replay.torn = scan.torn
            header_bytes = scan.records[0].size if scan.records else 0
            self._segments.append(_Segment(seq, path, scan.valid_end, max_index, header_bytes))
        if not self.read_only:
            self._recover_tail(replay.torn)
        return replay

    def _recover_tail(self, torn: TornTail | None) -> None:
        try:
            if not self._segments:
                self._create_segment(1)
                return
            active = self._segments[-1]
            if torn is not None:
                # Cut the torn record (never acknowledged: its batch was not fsynced) and
                # everything after it; the preallocation below brings zeros back.
                fd = os.open(active.path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, torn.offset)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                active.size = torn.offset
            if active.size == 0:
                # Even the header was torn: rewrite it in place (keeps the seq sequence).
                self._segments.pop()
                self._create_segment(active.seq, exist_ok=True)
                return
            self._fd = os.open(active.path, os.O_WRONLY)
            _preallocate(self._fd, self.segment_bytes)
            os.fdatasync(self._fd)  # bytes read back may have been only in the page cache
            self._synced = active.size
        except OSError as exc:
            self._fail(exc)

    # ------------------------------------------------------------------ writing

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def _check_writable(self) -> None:
        if self.read_only:
            raise StorageError(f"{self.directory}: the WAL was opened read-only")
        if self._failed is not None:
            raise StorageIOError(f"{self.directory}: WAL unusable after an earlier I/O error "
                                 f"({self._failed}); restart the node",
                                 getattr(self._failed, "errno", None))
        assert self._opened, "open() the WAL before writing"

    def _fail(self, exc: OSError) -> None:
        """Fail-stop after an I/O error: best-effort cut of the unsynced bytes (a failed
        fsync may leave them readable from the page cache though never durable, and a
        restart must not believe them), then refuse everything."""
        self._failed = exc
        self._buf.clear()
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._synced)
            except OSError:
                pass
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        raise StorageIOError(f"{self.directory}: WAL I/O error: {exc}", exc.errno) from exc

    def _create_segment(self, seq: int, exist_ok: bool = False) -> None:
        if ACTIVE:
            hit("wal.before_create_segment")
        path = os.path.join(self.directory, segment_name(seq))
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if exist_ok else os.O_EXCL)
        fd = os.open(path, flags, DATA_FILE_MODE)
        header = encode_record(REC_HEADER, {"format": WAL_FORMAT, "seq": seq})
        try:
            pwrite_all(fd, header, 0)
            _preallocate(fd, self.segment_bytes)
            os.fdatasync(fd)
            fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._segments.append(_Segment(seq, path, len(header), None, len(header)))
        self._synced = len(header)
        if ACTIVE:
            hit("wal.after_create_segment")

    def _flush(self) -> None:
        if self._buf:
            active = self._segments[-1]
            pwrite_all(self._fd, self._buf, active.size)
            active.size += len(self._buf)
            self._buf.clear()

    def _rotate(self) -> None:
        """Seal the active segment (flush, cut its preallocated rest, fsync in full) and
        start the next one.  The cut is durable before the next segment exists: only the
        last segment may end in zeros."""
        self._flush()
        os.ftruncate(self._fd, self._segments[-1].size)
        os.fdatasync(self._fd)
        self._create_segment(self._segments[-1].seq + 1)

    def append(self, rtype: int, value: object, max_index: int | None = None) -> None:
        """Buffer one record (no fsync).  ``max_index`` is the highest entry index it holds
        (ENTRIES only), remembered per segment for ``compact``."""
        self._check_writable()
        record = encode_record(rtype, value)
        if len(record) - RECORD_HEAD_BYTES > self.record_bytes_max:
            raise ValueError(f"record of {len(record)} bytes exceeds record_bytes_max")
        try:
            if ACTIVE:
                hit("wal.before_append")
            active = self._segments[-1]
            if active.size + len(self._buf) + len(record) > self.segment_bytes and \
                    active.size + len(self._buf) > active.header_bytes:
                self._rotate()
                active = self._segments[-1]
            if not self._batch_open:
                self._buf += encode_record(REC_SYNC, self._synced)
                self._batch_open = True
            self._buf += record
            if max_index is not None and (active.max_index is None or max_index > active.max_index):
                active.max_index = max_index
            if len(self._buf) >= FLUSH_BYTES:
                self._flush()
            if ACTIVE:
                hit("wal.after_append")
        except OSError as exc:
            self._fail(exc)

    def append_entries(self, entries: list[Entry]) -> None:
        if entries:
            self.append(REC_ENTRIES, [entry_wire(e) for e in entries],
                        max(entry.index for entry in entries))

    def flush(self) -> None:
        """Hand the buffered records to the OS without fsync: readers of the files (log
        dump, export) see them at once; a crash may still lose them, like any unsynced
        record (the next SYNC record decides what was durable)."""
        self._check_writable()
        try:
            self._flush()
        except OSError as exc:
            self._fail(exc)

    def sync(self) -> None:
        """Write buffered records and fdatasync once: after it returns they are durable."""
        self._check_writable()
        if not self._buf and not self._batch_open:
            return
        try:
            self._flush()
            if ACTIVE:
                hit("wal.before_fsync")
            os.fdatasync(self._fd)
            if ACTIVE:
                hit("wal.after_fsync")
        except OSError as exc:
            self._fail(exc)
        self._synced = self._segments[-1].size
        self._batch_open = False

    # ------------------------------------------------------------------ compaction

    def compact(self, index: int) -> int:
        """Delete the longest prefix of sealed segments whose entries are all <= ``index``.

        Only a prefix: a later record may override an earlier one (re-accepted slot,
        truncation), so keeping an older segment while deleting a newer one could revive
        stale data.  The directory is fsynced after each deletion, so a crash leaves a
        prefix deleted, never a hole.  Returns the number of segments deleted."""
        self._check_writable()
        deleted = 0
        try:
            while len(self._segments) > 1:
                segment = self._segments[0]
                if segment.max_index is not None and segment.max_index > index:
                    break
                if ACTIVE:
                    hit("compact.before_delete")
                os.unlink(segment.path)
                fsync_dir(self.directory)
                self._segments.pop(0)
                deleted += 1
                if ACTIVE:
                    hit("compact.after_delete")
        except OSError as exc:
            self._fail(exc)
        return deleted

    # ------------------------------------------------------------------ misc

    @property
    def segments(self) -> list[tuple[int, str, int, int | None]]:
        """(seq, path, size, max entry index) of each segment, oldest first."""
        return [(s.seq, s.path, s.size, s.max_index) for s in self._segments]

    def close(self) -> None:
        """Seal the last batch with a SYNC record (so damage to it is detectable), close."""
        if self._fd is None:
            return
        if self._failed is None and not self.read_only:
            try:
                self._flush()
                if self._segments[-1].size > self._synced:
                    os.fdatasync(self._fd)
                    self._synced = self._segments[-1].size
                self._buf += encode_record(REC_SYNC, self._synced)
                self._flush()
                os.fdatasync(self._fd)
            except OSError as exc:
                self._failed = exc
        os.close(self._fd)
        self._fd = None
