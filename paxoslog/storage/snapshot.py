"""Snapshots: one zstd frame (content checksum on) holding a CBOR sequence, streamed.

``<data_dir>/snap/<index:020d>-<term:020d>.snap.zst``.  The decompressed stream is a sequence
of CBOR items (RFC 8742)::

    {"format": 1, "index": i, "term": t, "config": <Config wire>, "state_machines": [names],
     "backup"?: {...}}                              (data format 2: see below)
    <sessions>                                      any CBOR value (the session table)
    b"chunk" b"chunk" ... {"end": name, "bytes": n, "chunks": k}     once per state machine,
                                                                      in header order
    {"trailer": 1, "sizes": {name: n}, "chunks": {name: k}}

``backup`` (optional, ignored by readers that do not know it) says where a backup taken with
``paxoslog snapshot save`` came from: cluster, protocol, node, time.

Writing streams: state machine states come as ``(name, iterable of byte chunks)`` and each
chunk goes straight through the compressor to the file, so a large state is never held
twice.  The file is written to ``*.tmp``, fsynced, renamed, and the directory fsynced.

Reading verifies twice over: the zstd frame layout is walked first (the zstd readers treat a
truncated frame as a silent end of data, so truncation and trailing bytes are checked by
hand), then decompression checks the content checksum (XXH64) at the end of the frame, and
the CBOR items are checked against the header, the end markers and the trailer.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Iterator

import cbor2
import zstandard

from statemachines.base import cbor_head
from paxoslog.core.log import SnapshotMeta
from paxoslog.core.quorum import Config

from .durable import DATA_DIR_MODE, DATA_FILE_MODE, TMP_SUFFIX, create_file, fsync_dir, make_dirs
from .errors import CorruptSnapshot, StorageError, StorageIOError
from .failpoints import ACTIVE, hit

__all__ = [
    "SNAPSHOT_FORMAT", "SNAP_SUFFIX", "SnapshotInfo", "SnapshotFile", "SnapshotReader",
    "SnapshotStore", "write_snapshot", "verify_snapshot", "snapshot_name",
    "parse_snapshot_name", "encode_snapshot_bytes", "read_snapshot_meta",
]

SNAPSHOT_FORMAT = 1
SNAP_SUFFIX = ".snap.zst"
_NAME_RE = re.compile(r"^(\d{20})-(\d{20})\.snap\.zst$")
_READ_BYTES = 1 << 20
_ZSTD_MAGIC = 0xFD2FB528


def snapshot_name(index: int, term: int) -> str:
    return f"{index:020d}-{term:020d}{SNAP_SUFFIX}"


def parse_snapshot_name(name: str) -> tuple[int, int] | None:
    match = _NAME_RE.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class SnapshotInfo:
    """What a full verification pass learned about one snapshot."""

    path: str
    meta: SnapshotMeta
    names: list[str]
    sizes: dict[str, int]
    chunks: dict[str, int]
    sessions_bytes: int
    uncompressed_bytes: int
    compressed_bytes: int
    checksum: str | None          # the frame's XXH64 content checksum (low 32 bits), hex
    backup: dict | None = None    # the header's provenance map of a backup file

    @property
    def ratio(self) -> float:
        return self.uncompressed_bytes / self.compressed_bytes if self.compressed_bytes else 0.0


def write_snapshot(out: BinaryIO, meta: SnapshotMeta,
                   states: Iterable[tuple[str, Iterable[bytes]]], sessions: object = None, *,
                   level: int = 3, threads: int = 0,
                   backup: dict | None = None) -> tuple[int, dict[str, int]]:
    """Stream one snapshot frame into ``out``.  Returns (uncompressed bytes, sizes by name).

    ``states`` is consumed lazily: only the outer (name, chunks) pairs are listed up front
    (for the header); every chunk iterable is read once, chunk by chunk.  ``backup``: the
    header's provenance map of a backup file."""
    states = list(states)
    names = [name for name, _ in states]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"state machine names must be unique non-empty strings: {names!r}")
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=threads)
    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    total = 0
    with cctx.stream_writer(out, closefd=False, write_size=_READ_BYTES) as writer:
        def put(data) -> None:
            nonlocal total
            writer.write(data)
            total += len(data)

        header = {"format": SNAPSHOT_FORMAT, "index": meta.index, "term": meta.term,
                  "config": meta.config.to_wire(), "state_machines": names}
        if backup is not None:
            header["backup"] = backup
        put(cbor2.dumps(header))
        put(cbor2.dumps(sessions))
        for name, chunks in states:
            size = count = 0
            for chunk in chunks:
                n = memoryview(chunk).nbytes
                put(cbor_head(2, n))
                writer.write(chunk)
                total += n
                size += n
                count += 1
            sizes[name], counts[name] = size, count
            put(cbor2.dumps({"end": name, "bytes": size, "chunks": count}))
        put(cbor2.dumps({"trailer": 1, "sizes": sizes, "chunks": counts}))
    return total, sizes


def encode_snapshot_bytes(meta: SnapshotMeta, states: Iterable[tuple[str, Iterable[bytes]]],
                          sessions: object = None, *, level: int = 3) -> bytes:
    """A whole snapshot file as bytes (the memory model and small transfers)."""
    buf = io.BytesIO()
    write_snapshot(buf, meta, states, sessions, level=level)
    return buf.getvalue()


def _check_frame_layout(f: BinaryIO, size: int, label: str) -> str | None:
    """Walk the zstd frame's block headers: exactly one complete frame, nothing after it.
    Returns the content checksum (hex) or None when the frame has none."""
    head = f.read(18)
    if len(head) < 6 or struct.unpack_from("<I", head)[0] != _ZSTD_MAGIC:
        raise CorruptSnapshot(label, "not a zstd frame (bad magic)")
    try:
        header_size = zstandard.frame_header_size(head)
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError as exc:
        raise CorruptSnapshot(label, f"bad zstd frame header: {exc}") from None
    pos = header_size
    while True:
        f.seek(pos)
        block = f.read(3)
        if len(block) < 3:
            raise CorruptSnapshot(label, f"truncated: the zstd frame ends inside a block header "
                                         f"at offset {pos} of {size}")
        value = block[0] | block[1] << 8 | block[2] << 16
        last, kind, block_size = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3:
            raise CorruptSnapshot(label, f"reserved zstd block type at offset {pos}")
        pos += 3 + (1 if kind == 1 else block_size)
        if pos > size:
            raise CorruptSnapshot(label, f"truncated: a zstd block runs to offset {pos}, past the "
                                         f"end of the file ({size})")
        if last:
            break
    checksum = None
    if params.has_checksum:
        f.seek(pos)
        tail = f.read(4)
        if len(tail) < 4:
            raise CorruptSnapshot(label, "truncated: the zstd content checksum is missing")
        checksum = f"{struct.unpack('<I', tail)[0]:08x}"
        pos += 4
    if pos != size:
        raise CorruptSnapshot(label, f"{size - pos} unexpected bytes after the zstd frame")
    f.seek(0)
    return checksum


class SnapshotReader:
    """Streaming reader of one snapshot (a path, or bytes for the memory model).

    On open it reads the header and the session table: ``meta``, ``names``, ``sessions``.
    ``states()`` then yields ``(name, chunk iterator)`` in header order, once; a chunk
    iterator the caller does not finish is drained before the next state machine.  After
    the last one the trailer and the frame's content checksum are verified; corruption
    anywhere raises ``CorruptSnapshot``.  Use as a context manager (or call ``close``).
    """

    def __init__(self, source: str | bytes, *, check_layout: bool = True) -> None:
        self.path = source if isinstance(source, str) else "<memory snapshot>"
        self._file: BinaryIO = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)
        self.sizes: dict[str, int] = {}
        self.chunk_counts: dict[str, int] = {}
        self.sessions_bytes = 0
        self._consumed = False
        try:
            size = os.fstat(self._file.fileno()).st_size if isinstance(source, str) else len(source)
            self.compressed_bytes = size
            self.checksum = (_check_frame_layout(self._file, size, self.path)
                             if check_layout else None)
            self._raw = zstandard.ZstdDecompressor().stream_reader(self._file,
                                                                   read_size=_READ_BYTES)
            self._stream = io.BufferedReader(self._raw, _READ_BYTES)
            self._decoder = cbor2.CBORDecoder(self._stream)
            header = self._item()
            self.header = header
            if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
                raise CorruptSnapshot(self.path, f"unexpected header {header!r:.200}")
            try:
                self.meta = SnapshotMeta(header["index"], header["term"],
                                         Config.from_wire(header["config"]))
                self.names = list(header["state_machines"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptSnapshot(self.path, f"bad header field: {exc}") from None
            if type(self.meta.index) is not int or type(self.meta.term) is not int \
                    or not all(isinstance(n, str) for n in self.names):
                raise CorruptSnapshot(self.path, f"bad header {header!r:.200}")
            before = self._stream.tell()
            self.sessions = self._item()
            self.sessions_bytes = self._stream.tell() - before
        except BaseException:
            self.close()
            raise

    def _item(self):
        try:
            return self._decoder.decode()
        except zstandard.ZstdError as exc:
            raise CorruptSnapshot(self.path, f"zstd: {exc}") from None
        except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
            raise CorruptSnapshot(self.path, f"bad CBOR stream: {exc}") from None

    def _chunks(self, name: str) -> Iterator[bytes]:
        size = count = 0
        while True:
            item = self._item()
            if isinstance(item, bytes):
                size += len(item)
                count += 1
                yield item
                continue
            if (isinstance(item, dict) and item.get("end") == name and item.get("bytes") == size
                    and item.get("chunks") == count):
                self.sizes[name], self.chunk_counts[name] = size, count
                return
            raise CorruptSnapshot(self.path, f"state machine {name!r}: unexpected item "
                                             f"{item!r:.100} after {count} chunks")

    def states(self) -> Iterator[tuple[str, Iterator[bytes]]]:
        assert not self._consumed, "a snapshot's states can be read once"
        self._consumed = True
        for name in self.names:
            chunks = self._chunks(name)
            yield name, chunks
            for _ in chunks:
                pass
        self._finish()

    def _finish(self) -> None:
        trailer = self._item()
        if (not isinstance(trailer, dict) or trailer.get("trailer") != 1
                or trailer.get("sizes") != self.sizes
                or trailer.get("chunks") != self.chunk_counts):
            raise CorruptSnapshot(self.path, f"trailer {trailer!r:.200} does not match the data")
        try:
            rest = self._stream.read(1)     # reach the frame end: the checksum is verified
        except zstandard.ZstdError as exc:
            raise CorruptSnapshot(self.path, f"zstd: {exc}") from None
        if rest:
            raise CorruptSnapshot(self.path, "data after the trailer")

    def read_all(self) -> dict[str, bytes]:
        """Every state joined in memory (small states and tests only)."""
        return {name: b"".join(chunks) for name, chunks in self.states()}

    @property
    def uncompressed_bytes(self) -> int:
        return self._stream.tell()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SnapshotReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_snapshot_meta(path: str) -> SnapshotMeta:
    """The (index, term, config) in a snapshot file's header, without reading further (the
    session table and the states are not decoded, the checksum is not verified).
    ``CorruptSnapshot`` when the header is unreadable; ``FileNotFoundError`` passes."""
    with open(path, "rb") as f:
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=64 << 10)
            header = cbor2.CBORDecoder(io.BufferedReader(reader, 64 << 10)).decode()
            if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"unexpected header {header!r:.200}")
            meta = SnapshotMeta(header["index"], header["term"],
                                Config.from_wire(header["config"]))
        except (zstandard.ZstdError, cbor2.CBORDecodeError, EOFError, KeyError, TypeError,
                ValueError) as exc:
            raise CorruptSnapshot(path, f"unreadable header: {exc}") from None
    if type(meta.index) is not int or type(meta.term) is not int:
        raise CorruptSnapshot(path, f"bad header {header!r:.200}")
    return meta


def verify_snapshot(source: str | bytes) -> SnapshotInfo:
    """Read a whole snapshot without keeping it; ``CorruptSnapshot`` on any damage."""
    try:
        reader = SnapshotReader(source)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptSnapshot(source if isinstance(source, str) else "<memory snapshot>",
                              f"unreadable: {exc}") from None
    with reader:
        for _name, chunks in reader.states():
            for _ in chunks:
                pass
        backup = reader.header.get("backup")
        return SnapshotInfo(reader.path, reader.meta, reader.names, dict(reader.sizes),
                            dict(reader.chunk_counts), reader.sessions_bytes,
                            reader.uncompressed_bytes, reader.compressed_bytes, reader.checksum,
                            backup if isinstance(backup, dict) else None)


@dataclass(frozen=True, order=True)
class SnapshotFile:
    index: int
    term: int
    path: str = field(compare=False)


class SnapshotStore:
    """The ``snap/`` directory: write, adopt, list, prune, and pick the newest valid one."""

    def __init__(self, directory: str, *, keep: int = 2, level: int = 1, threads: int = 0,
                 read_only: bool = False) -> None:
        assert keep >= 1
        self.directory = directory
        self.keep = keep
        self.level = level
        self.threads = threads
        self.read_only = read_only
        self.skipped: list[tuple[str, str]] = []    # (path, reason) of corrupt snapshots seen
        if not read_only:
            make_dirs(directory, DATA_DIR_MODE)
            for name in os.listdir(directory):
                if name.endswith(TMP_SUFFIX):       # a crash before the rename: never adopted
                    os.unlink(os.path.join(directory, name))

    def list(self) -> list[SnapshotFile]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        files = []
        for name in names:
            parsed = parse_snapshot_name(name)
            if parsed:
                files.append(SnapshotFile(parsed[0], parsed[1], os.path.join(self.directory, name)))
        return sorted(files)

    def save(self, meta: SnapshotMeta, states: Iterable[tuple[str, Iterable[bytes]]],
             sessions: object = None) -> SnapshotFile:
        """Write a snapshot durably (temp, fsync, rename, fsync dir), then prune to ``keep``.

        An I/O error before the rename leaves no trace (the temp file is removed) and raises
        ``StorageIOError``: nothing durable changed.  An ``OSError`` at or after the rename
        propagates as is: the directory state is then uncertain (the caller fails stop)."""
        assert not self.read_only
        if ACTIVE:
            hit("snapshot.before_write")
        target = SnapshotFile(meta.index, meta.term,
                              os.path.join(self.directory, snapshot_name(meta.index, meta.term)))
        tmp = target.path + TMP_SUFFIX
        try:
            with create_file(tmp) as out:
                write_snapshot(out, meta, states, sessions, level=self.level, threads=self.threads)
                out.flush()
                if ACTIVE:
                    hit("snapshot.before_fsync")
                os.fsync(out.fileno())
            if ACTIVE:
                hit("snapshot.before_rename")
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise StorageIOError(f"{tmp}: snapshot not written: {exc}", exc.errno) from exc
            raise
        self._rename_in(tmp, target, "snapshot")
        self.prune()
        return target

    def adopt(self, meta: SnapshotMeta, source: str) -> SnapshotFile:
        """Move a received, verified snapshot file in (rename; copy if on another file
        system).  Its header must say ``meta.index``/``meta.term``."""
        assert not self.read_only
        info = verify_snapshot(source)
        if (info.meta.index, info.meta.term) != (meta.index, meta.term):
            raise StorageError(f"{source}: snapshot covers ({info.meta.index}, {info.meta.term}) "
                               f"but install was asked for ({meta.index}, {meta.term})")
        target = SnapshotFile(meta.index, meta.term,
                              os.path.join(self.directory, snapshot_name(meta.index, meta.term)))
        source_stat = os.stat(source)
        if source_stat.st_dev != os.stat(self.directory).st_dev:
            tmp = target.path + TMP_SUFFIX
            with open(source, "rb") as src, create_file(tmp) as dst:
                shutil.copyfileobj(src, dst, _READ_BYTES)
                dst.flush()
                os.fsync(dst.fileno())
            os.unlink(source)
            source = tmp
        elif source_stat.st_mode & 0o077:
            # Renamed in as it is: a file staged by an older release (a transfer resumed
            # after an upgrade) may be readable by others.  Best effort: not worth failing on.
            try:
                os.chmod(source, DATA_FILE_MODE)
            except OSError:
                pass
        self._rename_in(source, target, "install")
        self.prune()
        return target

    def _rename_in(self, source: str, target: SnapshotFile, failpoint: str) -> None:
        if ACTIVE and failpoint == "install":
            hit("install.before_rename")
        os.replace(source, target.path)
        fsync_dir(self.directory)
        if ACTIVE:
            hit(failpoint + ".after_rename")

    def prune(self) -> list[str]:
        """Delete all but the newest ``keep`` snapshots (directory fsynced after each)."""
        removed = []
        files = self.list()
        for old in files[:-self.keep]:
            if ACTIVE:
                hit("snapshot.before_prune")
            os.unlink(old.path)
            fsync_dir(self.directory)
            removed.append(old.path)
        return removed

    def newest_valid(self) -> tuple[SnapshotFile, SnapshotInfo] | None:
        """The newest snapshot that passes full verification, falling back to older ones;
        every corrupt one passed over is listed in ``skipped``."""
        return self._valid(reversed(self.list()))

    def valid_before(self, newer: SnapshotFile, wanted=None) -> tuple[SnapshotFile,
                                                                        SnapshotInfo] | None:
        """The newest valid snapshot older than ``newer`` for which ``wanted(file)`` (given
        the index and term of its name) holds, checked before the file is read (corrupt
        ones are listed in ``skipped``)."""
        return self._valid(f for f in reversed(self.list())
                           if f < newer and (wanted is None or wanted(f)))

    def _valid(self, candidates) -> tuple[SnapshotFile, SnapshotInfo] | None:
        for candidate in candidates:
            try:
                info = verify_snapshot(candidate.path)
            except CorruptSnapshot as exc:
                self.skipped.append((candidate.path, exc.reason))
                continue
            except FileNotFoundError:
                continue
            if (info.meta.index, info.meta.term) != (candidate.index, candidate.term):
                self.skipped.append((candidate.path, f"header says ({info.meta.index}, "
                                                     f"{info.meta.term}), not the file name"))
                continue
            return candidate, info
        return None
