"""Snapshot transfer to a lagging follower: chunks with a crc32 each, resumable, verified.

Pure data classes and file I/O; the network layer carries ``SnapshotOffer`` and
``SnapshotChunk`` (both have ``to_wire``/``from_wire`` for CBOR) and asks the receiver where
to resume.  Flow::

    sender = SnapshotSender(path, meta)                  # leader, from the snapshot file
    receiver = SnapshotReceiver(storage.transfer_dir, sender.offer)   # follower
    for chunk in sender.chunks(receiver.next_offset):    # after a reconnect: resume there
        receiver.accept(chunk)
    path = receiver.finish()                             # whole-file crc, fsync, rename
    storage.install_snapshot(meta, path)                 # verifies the zstd frame, adopts

The receiver keeps its partial file and the offer on disk (``<id>.part``, ``<id>.offer``),
so a follower that restarts resumes too.  Partial data is not fsynced chunk by chunk: the
whole-file crc32 checked by ``finish`` catches anything a power loss damaged, and the
transfer then restarts from offset 0.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import Iterator

import cbor2

from paxoslog.core.log import SnapshotMeta
from paxoslog.core.quorum import Config

from .durable import (DATA_DIR_MODE, DATA_FILE_MODE, atomic_write, create_file, fsync_dir,
                      make_dirs, write_all)
from .errors import StorageError
from .failpoints import ACTIVE, hit

__all__ = ["CHUNK_BYTES_DEFAULT", "SnapshotOffer", "SnapshotChunk", "SnapshotSender",
           "SnapshotReceiver", "BadChunk", "TransferFailed", "file_crc32"]

CHUNK_BYTES_DEFAULT = 1 << 20
_READ_BYTES = 1 << 20
_TRANSFER_FILE = re.compile(r"^\d{20}-\d{20}-[0-9a-f]{8}-\d+\.(part|offer|offer\.tmp|snap\.zst)$")


class BadChunk(StorageError):
    """A chunk failed its crc, its size or its place: ask the sender again from
    ``receiver.next_offset``."""


class TransferFailed(StorageError):
    """The assembled file failed its whole-file check; the transfer restarts from 0."""


def file_crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            crc = zlib.crc32(block, crc)
    return crc


@dataclass(frozen=True)
class SnapshotOffer:
    """What the sender announces before the first chunk."""

    index: int
    term: int
    config: Config
    total_bytes: int
    crc32: int
    chunk_bytes: int = CHUNK_BYTES_DEFAULT

    @property
    def transfer_id(self) -> str:
        return f"{self.index:020d}-{self.term:020d}-{self.crc32:08x}-{self.total_bytes}"

    @property
    def meta(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.term, self.config)

    def to_wire(self) -> list:
        return [self.index, self.term, self.config.to_wire(), self.total_bytes, self.crc32,
                self.chunk_bytes]

    @classmethod
    def from_wire(cls, data: object) -> "SnapshotOffer":
        try:
            index, term, config, total, crc, chunk_bytes = data
        except (TypeError, ValueError):
            raise ValueError(f"malformed snapshot offer {data!r:.100}") from None
        if not all(type(v) is int and v >= 0 for v in (index, term, total, crc)) \
                or type(chunk_bytes) is not int or chunk_bytes < 1:
            raise ValueError(f"malformed snapshot offer {data!r:.100}")
        return cls(index, term, Config.from_wire(config), total, crc, chunk_bytes)


@dataclass(frozen=True)
class SnapshotChunk:
    transfer_id: str
    offset: int
    data: bytes
    crc32: int

    def to_wire(self) -> list:
        return [self.transfer_id, self.offset, self.data, self.crc32]

    @classmethod
    def from_wire(cls, data: object) -> "SnapshotChunk":
        try:
            transfer_id, offset, payload, crc = data
        except (TypeError, ValueError):
            raise ValueError(f"malformed snapshot chunk {data!r:.100}") from None
        if not (isinstance(transfer_id, str) and type(offset) is int and offset >= 0
                and isinstance(payload, bytes) and type(crc) is int):
            raise ValueError("malformed snapshot chunk")
        return cls(transfer_id, offset, payload, crc)


class SnapshotSender:
    """Serves chunks of one snapshot file.  Computes the whole-file crc32 once (one pass).

    The file stays open until ``close()`` (or garbage collection), so the transfer goes on
    even if the snapshot is pruned from ``snap/`` meanwhile (POSIX keeps an unlinked open
    file readable).  ``FileNotFoundError`` when the file is already gone."""

    def __init__(self, path: str, meta: SnapshotMeta,
                 chunk_bytes: int = CHUNK_BYTES_DEFAULT) -> None:
        assert chunk_bytes >= 1
        self.path = path
        self._file = open(path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            crc = 0
            while block := self._file.read(_READ_BYTES):
                crc = zlib.crc32(block, crc)
        except BaseException:
            self._file.close()
            raise
        self.offer = SnapshotOffer(meta.index, meta.term, meta.config, size, crc, chunk_bytes)

    def chunk(self, offset: int) -> SnapshotChunk:
        """The chunk starting at ``offset`` (a multiple of ``chunk_bytes``, < total)."""
        offer = self.offer
        if offset % offer.chunk_bytes or not 0 <= offset < max(offer.total_bytes, 1):
            raise ValueError(f"bad chunk offset {offset} for a {offer.total_bytes}-byte snapshot")
        if self._file.closed:
            raise ValueError(f"the sender of {self.path} was closed")
        data = os.pread(self._file.fileno(), offer.chunk_bytes, offset)
        return SnapshotChunk(offer.transfer_id, offset, data, zlib.crc32(data))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SnapshotSender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chunks(self, start: int = 0) -> Iterator[SnapshotChunk]:
        """Every chunk from ``start`` (a receiver's ``next_offset``) to the end."""
        offset = start
        while offset < self.offer.total_bytes:
            chunk = self.chunk(offset)
            yield chunk
            offset += len(chunk.data)


class SnapshotReceiver:
    """Assembles one incoming snapshot file in ``directory``; resumable across reconnects
    and restarts.  Other transfers' leftovers in the directory are deleted (one transfer at
    a time); files that are not transfer files are left alone."""

    def __init__(self, directory: str, offer: SnapshotOffer) -> None:
        self.directory = directory
        self.offer = offer
        make_dirs(directory, DATA_DIR_MODE)
        base = os.path.join(directory, offer.transfer_id)
        self.part_path = base + ".part"
        self.offer_path = base + ".offer"
        self.done_path = base + ".snap.zst"
        for name in os.listdir(directory):
            if _TRANSFER_FILE.match(name) and not name.startswith(offer.transfer_id + "."):
                os.unlink(os.path.join(directory, name))
        self.next_offset = 0
        if os.path.exists(self.done_path):
            self.next_offset = offer.total_bytes        # finished before a restart
        elif os.path.exists(self.part_path) and self._stored_offer() == offer.to_wire():
            # Resume at the last whole chunk; each one was crc-checked before it was written.
            size = os.path.getsize(self.part_path)
            self.next_offset = min(size - size % offer.chunk_bytes, offer.total_bytes)
            if self.next_offset != size:
                os.truncate(self.part_path, self.next_offset)
        else:
            atomic_write(self.offer_path, cbor2.dumps(offer.to_wire()), mode=DATA_FILE_MODE)
            with create_file(self.part_path):
                pass

    def _stored_offer(self):
        try:
            with open(self.offer_path, "rb") as f:
                return cbor2.loads(f.read())
        except (OSError, cbor2.CBORDecodeError):
            return None

    @property
    def complete(self) -> bool:
        return self.next_offset == self.offer.total_bytes

    def accept(self, chunk: SnapshotChunk) -> int:
        """Write one chunk; returns the next offset wanted.  A duplicate or early chunk is
        ignored (the answer says where to resume); a damaged one raises ``BadChunk``."""
        offer = self.offer
        if chunk.transfer_id != offer.transfer_id:
            raise BadChunk(f"chunk of transfer {chunk.transfer_id}, expected {offer.transfer_id}")
        if chunk.offset != self.next_offset:
            return self.next_offset
        expected = min(offer.chunk_bytes, offer.total_bytes - chunk.offset)
        if len(chunk.data) != expected:
            raise BadChunk(f"chunk at offset {chunk.offset} has {len(chunk.data)} bytes, "
                           f"expected {expected}")
        if zlib.crc32(chunk.data) != chunk.crc32:
            raise BadChunk(f"chunk at offset {chunk.offset}: crc32 mismatch")
        if ACTIVE:
            hit("transfer.before_write")
        fd = os.open(self.part_path, os.O_WRONLY)
        try:
            os.lseek(fd, chunk.offset, os.SEEK_SET)
            write_all(fd, chunk.data)
        finally:
            os.close(fd)
        self.next_offset += len(chunk.data)
        return self.next_offset

    def finish(self) -> str:
        """Check the whole file (size, crc32), fsync it, rename it to ``<id>.snap.zst`` and
        return that path for ``install_snapshot``.  On a mismatch the partial file is reset
        and ``TransferFailed`` raised (start again from offset 0)."""
        if os.path.exists(self.done_path) and not os.path.exists(self.part_path):
            return self.done_path
        if not self.complete:
            raise StorageError(f"transfer {self.offer.transfer_id} incomplete: "
                               f"{self.next_offset} of {self.offer.total_bytes} bytes")
        if file_crc32(self.part_path) != self.offer.crc32 or \
                os.path.getsize(self.part_path) != self.offer.total_bytes:
            os.truncate(self.part_path, 0)
            self.next_offset = 0
            raise TransferFailed(f"{self.part_path}: whole-file crc32 mismatch; restarting at 0")
        fd = os.open(self.part_path, os.O_RDONLY)
        try:
            if ACTIVE:
                hit("transfer.before_fsync")
            os.fsync(fd)
        finally:
            os.close(fd)
        if ACTIVE:
            hit("transfer.before_rename")
        os.replace(self.part_path, self.done_path)
        os.unlink(self.offer_path)
        fsync_dir(self.directory)
        return self.done_path

    def abort(self) -> None:
        """Forget this transfer (delete its files)."""
        for path in (self.part_path, self.offer_path, self.done_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
