"""Segmented write-ahead log of checksummed CBOR records.

On disk: ``<data_dir>/wal/<seq>.wal`` segments (``seq`` = 16 decimal digits, consecutive).
Every record is ``[len u32][crc32 u32][type u8][CBOR payload]`` (little endian); ``len`` is the
payload length and the crc covers ``len``, ``type`` and the payload.  Record types:

=========  =================================  ==============================================
type       payload                            meaning on replay
=========  =================================  ==============================================
HEADER     ``{"format": 1, "seq": n}``        first record of every segment (names its seq)
ENTRIES    ``[[index, term, kind, [cmd]]..]`` write each entry (a later record for the same
                                              index replaces the earlier one)
TRUNCATE   ``from_index``                     drop every entry with index >= from_index
HARDSTATE  ``[term, vote, commit]``           the latest one is the hard state
SYNC       ``offset``                         every byte of this segment before ``offset``
                                              was fsynced when this record was appended
SNAPSHOT   ``[index, term]``                  a snapshot covers the log up to ``index`` and
                                              the log below it may be gone (install/compact)
=========  =================================  ==============================================

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

Recovery tells a torn tail (a crash mid-append: safe to cut) from corruption (bytes we once
fsynced and maybe acknowledged: never cut) with these rules, for the first bad record at
offset ``o``:

* in a segment other than the last: corruption;
* a later valid SYNC record says the segment was durable beyond ``o``: corruption;
* only zeros from ``o`` to the end of the file: the preallocated rest of the segment, the
  log ends at ``o`` (nothing is cut);
* a partial header, a length running past the end of the file, a zeroed 512-byte sector
  inside the record (what an unwritten page reads as), or a record running into the zeros
  that end a preallocated segment (the end of the written bytes there, as the end of the
  file is for a segment that grows): torn tail, truncated at ``o``;
* otherwise (a complete record whose checksum fails, no zero sector): corruption.

Corruption raises ``CorruptLog`` naming the file and the offset.  One case cannot be told
apart (PAR/CTRL, TOS'18): damage inside the *last* fsynced batch that looks exactly like a
torn write (e.g. a flipped length bit pointing past the end of the file).  A clean
``close()`` appends a final SYNC record, which turns that case into detected corruption too.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass, field

import cbor2
from sortedcontainers import SortedDict

from paxoslog.core.log import ENTRY_KINDS, Entry, HardState, SnapshotMeta
from paxoslog.core.replica import Restored

from .durable import fsync_dir, make_dirs, pwrite_all
from .errors import CorruptLog, SnapshotUnavailable, StorageError, StorageIOError
from .failpoints import ACTIVE, hit

__all__ = [
    "WriteAheadLog", "Replay", "TornTail", "SegmentScan", "ScannedRecord",
    "REC_HEADER", "REC_ENTRIES", "REC_TRUNCATE", "REC_HARDSTATE", "REC_SYNC", "REC_SNAPSHOT",
    "RECORD_NAMES", "WAL_FORMAT", "encode_record", "decode_record", "BadRecord", "scan_segment",
    "list_segments", "entry_wire",
    "segment_name", "SEGMENT_BYTES_DEFAULT", "RECORD_BYTES_MAX_DEFAULT",
]

WAL_FORMAT = 1
REC_HEADER = 1
REC_ENTRIES = 2
REC_TRUNCATE = 3
REC_HARDSTATE = 4
REC_SYNC = 5
REC_SNAPSHOT = 6
RECORD_NAMES = {REC_HEADER: "header", REC_ENTRIES: "entries", REC_TRUNCATE: "truncate",
                REC_HARDSTATE: "hardstate", REC_SYNC: "sync", REC_SNAPSHOT: "snapshot"}

SEGMENT_BYTES_DEFAULT = 8 << 20            # see StorageOptions.segment_bytes
RECORD_BYTES_MAX_DEFAULT = 64 << 20
SECTOR_BYTES = 512
FLUSH_BYTES = 1 << 20          # write the user-space buffer to the OS beyond this size

_HEAD = struct.Struct("<IIB")
_LEN = struct.Struct("<I")
_SEGMENT_RE = re.compile(r"^(\d{16})\.wal$")
# Candidate record starts when searching past a bad record: the type byte sits at offset 8.
_TYPE_BYTE = re.compile(rb"[\x01-\x06]")
assert set(RECORD_NAMES) == set(range(1, 7)), "keep _TYPE_BYTE in step with the record types"


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


def segment_name(seq: int) -> str:
    return f"{seq:016d}.wal"


def encode_record(rtype: int, value: object) -> bytes:
    """One framed record: ``[len][crc][type][CBOR(value)]``."""
    payload = cbor2.dumps(value)
    length = _LEN.pack(len(payload))
    crc = zlib.crc32(payload, zlib.crc32(bytes((rtype,)), zlib.crc32(length)))
    return _HEAD.pack(len(payload), crc, rtype) + payload


def _crc(length: int, rtype: int, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes((rtype,)), zlib.crc32(_LEN.pack(length))))


def _decode_value(rtype: int, payload) -> object:
    """Decode and validate a payload; raise ValueError when it does not have its type's shape."""
    value = cbor2.loads(payload)
    if rtype == REC_ENTRIES:
        entries = []
        for item in value:
            index, term, kind, commands = item
            if (type(index) is not int or type(term) is not int or index < 1 or term < 0
                    or kind not in ENTRY_KINDS or not all(type(c) is bytes for c in commands)):
                raise ValueError(f"bad entry {item!r}")
            entries.append(Entry(index, term, kind, tuple(commands)))
        return entries
    if rtype in (REC_TRUNCATE, REC_SYNC):
        if type(value) is not int or value < 0:
            raise ValueError(f"bad {RECORD_NAMES[rtype]} value {value!r}")
        return value
    if rtype == REC_HARDSTATE:
        state = HardState(*value)
        if not all(type(v) is int and v >= 0 for v in state):
            raise ValueError(f"bad hard state {value!r}")
        return state
    if rtype == REC_SNAPSHOT:
        index, term = value
        if type(index) is not int or type(term) is not int or index < 0 or term < 0:
            raise ValueError(f"bad snapshot marker {value!r}")
        return (index, term)
    if rtype == REC_HEADER:
        if not isinstance(value, dict) or type(value.get("seq")) is not int:
            raise ValueError(f"bad segment header {value!r}")
        return value
    raise ValueError(f"unknown record type {rtype}")


def entry_wire(entry: Entry) -> list:
    return [entry.index, entry.term, entry.kind, list(entry.payload)]


@dataclass(frozen=True)
class ScannedRecord:
    offset: int
    rtype: int
    value: object
    size: int           # framed size in bytes


@dataclass(frozen=True)
class TornTail:
    """An incomplete record at the end of the last segment (a crash mid-append)."""

    path: str
    offset: int
    dropped_bytes: int
    reason: str


@dataclass
class SegmentScan:
    path: str
    seq: int
    size: int
    valid_end: int
    records: list[ScannedRecord]
    torn: TornTail | None = None
    corruption: CorruptLog | None = None     # only with strict=False
    preallocated: int = 0      # zero bytes after valid_end (the free rest of the segment)


def _parse_at(data: bytes, pos: int, end: int, record_bytes_max: int):
    """Try to frame a record at ``pos``.  Returns (rtype, payload_view, next_pos, None) or
    (None, reason, record_end_or_None, problem) where problem is short|long|crc."""
    if end - pos < _HEAD.size:
        return None, f"partial record header ({end - pos} of {_HEAD.size} bytes)", None, "short"
    length, crc, rtype = _HEAD.unpack_from(data, pos)
    stop = pos + _HEAD.size + length
    if length > record_bytes_max:
        reason = f"record length {length} exceeds the {record_bytes_max}-byte limit"
        return None, reason, None, "long"
    if stop > end:
        return None, f"record of {length} bytes runs past the end of the file ({end})", None, "long"
    payload = memoryview(data)[pos + _HEAD.size:stop]
    if rtype not in RECORD_NAMES or _crc(length, rtype, payload) != crc:
        return None, "checksum mismatch", stop, "crc"
    return rtype, payload, stop, None


class BadRecord(ValueError):
    """``decode_record`` could not frame or verify a record; ``problem`` is ``short``
    (partial header), ``long`` (length past the end or over the limit) or ``crc``."""

    def __init__(self, problem: str, reason: str) -> None:
        super().__init__(reason)
        self.problem = problem


def decode_record(data: bytes,
                  record_bytes_max: int = RECORD_BYTES_MAX_DEFAULT) -> tuple[int, object]:
    """Verify and decode one whole framed record (the memory model stores records apart)."""
    rtype, payload, stop, problem = _parse_at(data, 0, len(data), record_bytes_max)
    if rtype is None:
        raise BadRecord(problem, payload)
    if stop != len(data):
        raise BadRecord("crc", f"{len(data) - stop} bytes after the record")
    try:
        return rtype, _decode_value(rtype, payload)
    except Exception as exc:
        raise BadRecord("crc", f"passes its checksum but cannot be decoded: {exc}") from None


def _durable_beyond(data: bytes, bad: int, end: int, record_bytes_max: int) -> int | None:
    """Offset of a valid SYNC record after ``bad`` proving the segment was fsynced past
    ``bad``, or None.  Searches candidate record starts after the bad one."""
    start = bad + 1
    while start + _HEAD.size <= end:
        match = _TYPE_BYTE.search(data, start + 8, end)
        if match is None:
            return None
        pos = match.start() - 8
        start = pos + 1
        # Parse forward from a candidate while records stay valid.
        while pos < end:
            rtype, payload, stop, _ = _parse_at(data, pos, end, record_bytes_max)
            if rtype is None:
                break
            if rtype == REC_SYNC:
                try:
                    synced = cbor2.loads(payload)
                except Exception:       # a 2**-32 false match of the crc; keep searching
                    break
                if type(synced) is int and synced > bad:
                    return pos
            pos = stop
            start = max(start, pos)
    return None


def _has_zero_sector(data: bytes, start: int, stop: int) -> bool:
    """True when a 512-byte-aligned piece of [start, stop) is all zeros (an unwritten page)."""
    pos = start
    while pos < stop:
        piece_end = min(stop, (pos // SECTOR_BYTES + 1) * SECTOR_BYTES)
        if data.count(0, pos, piece_end) == piece_end - pos:
            return True
        pos = piece_end
    return False


_ZEROS = bytes(1 << 16)


def _zeros_to_end(data: bytes, pos: int) -> bool:
    """True when every byte from ``pos`` to the end is zero (compared 64 KiB at a time:
    about 0.3 ms for 8 MiB, where ``bytes.count`` takes 13 ms holding the GIL)."""
    step, end = len(_ZEROS), len(data)
    while pos < end:
        size = min(step, end - pos)
        if not data.startswith(_ZEROS if size == step else _ZEROS[:size], pos):
            return False
        pos += size
    return True


def scan_segment(path: str, seq: int, data: bytes, *, last: bool,
                 record_bytes_max: int = RECORD_BYTES_MAX_DEFAULT,
                 strict: bool = True) -> SegmentScan:
    """Frame, verify and decode every record of one segment's bytes.

    Raises ``CorruptLog`` (file + offset) on corruption, or with ``strict=False`` returns
    the records before it with ``corruption`` set (inspection).  A torn tail is returned in
    ``torn`` (only possible when ``last``).  Never modifies anything."""
    try:
        return _scan(path, seq, data, last, record_bytes_max)
    except _Corrupt as bad:
        if strict:
            raise bad.error from None
        return SegmentScan(path, seq, len(data), bad.error.offset, bad.records, None, bad.error)


class _Corrupt(Exception):
    def __init__(self, records: list[ScannedRecord], path: str, offset: int, reason: str) -> None:
        self.error = CorruptLog(path, offset, reason)
        self.records = records


def _scan(path: str, seq: int, data: bytes, last: bool, record_bytes_max: int) -> SegmentScan:
    end = len(data)
    records: list[ScannedRecord] = []
    pos = 0
    while pos < end:
        rtype, payload, stop, problem = _parse_at(data, pos, end, record_bytes_max)
        if rtype is not None:
            try:
                value = _decode_value(rtype, payload)
            except Exception as exc:
                reason = (f"{RECORD_NAMES[rtype]} record passes its checksum but cannot be "
                          f"decoded: {exc}")
                raise _Corrupt(records, path, pos, reason) from None
            if pos == 0:
                if rtype != REC_HEADER or value.get("seq") != seq:
                    raise _Corrupt(records, path, 0,
                                   f"first record is not the header of segment {seq}")
            elif rtype == REC_HEADER:
                raise _Corrupt(records, path, pos, "segment header in the middle of a segment")
            records.append(ScannedRecord(pos, rtype, value, stop - pos))
            pos = stop
            continue
        reason = payload
        if not last:
            raise _Corrupt(records, path, pos, f"{reason} in a segment that was fsynced in full")
        if _zeros_to_end(data, pos):
            return SegmentScan(path, seq, end, pos, records, preallocated=end - pos)
        proof = _durable_beyond(data, pos, end, record_bytes_max)
        if proof is not None:
            raise _Corrupt(records, path, pos, f"{reason}; the SYNC record at offset {proof} "
                                               "shows this record had been fsynced")
        if problem == "crc" and not _has_zero_sector(data, pos, stop) \
                and not _zeros_to_end(data, stop - 1):
            raise _Corrupt(records, path, pos, f"{reason} in a complete record with no zeroed "
                                               "sector (not a torn write)")
        return SegmentScan(path, seq, end, pos, records, TornTail(path, pos, end - pos, reason))
    return SegmentScan(path, seq, end, end, records)


def list_segments(directory: str, strict: bool = True) -> list[tuple[int, str]]:
    """(seq, path) of every segment, sorted; ``CorruptLog`` when a seq is missing between
    two present ones (a deleted middle segment would silently lose records), unless
    ``strict`` is False (inspection reports the gap itself)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = sorted((int(m.group(1)), os.path.join(directory, name))
                   for name in names if (m := _SEGMENT_RE.match(name)))
    for (prev, _), (seq, _) in zip(found, found[1:]):
        if strict and seq != prev + 1:
            raise CorruptLog(os.path.join(directory, segment_name(prev + 1)), 0,
                             f"segment missing between {segment_name(prev)} and "
                             f"{segment_name(seq)}")
    return found


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


    def restored(self, checkpoint: HardState | None, snapshot: SnapshotMeta | None,
                 where: str, skipped: str = "") -> Restored:
        """The replica's ``Restored`` given the chosen snapshot.

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
            make_dirs(self.directory)
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
        fd = os.open(path, flags, 0o644)
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
        if len(record) - _HEAD.size > self.record_bytes_max:
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
