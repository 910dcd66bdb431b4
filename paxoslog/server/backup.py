"""``BackupService``: ``GET /api/v1/snapshot``, a consistent snapshot of the running cluster
streamed to an operator (``paxoslog snapshot save``), without stopping anything.

What the file holds: every state machine and the session table at one applied index ``A``
of this node, in the local snapshot format (storage/snapshot.py: one zstd frame with a
content checksum, a trailer that lists every state's size), with a ``backup`` header map
saying where it came from.

Why it holds every write acknowledged before the request (the consistency argument):

1. A linearizable *barrier* read goes through the driver like any read: the leader
   confirms it still leads with a quorum round (ReadIndex) and serves it once it has
   applied the read point, answering the index ``P`` it served at (a follower forwards the
   read).  A write acknowledged before the request was committed before the leader
   confirmed the read, so its index is ``<= P``.
2. This node waits until it has applied ``P`` itself (a node that cannot within the
   request timeout answers 503: take the backup from another node).
3. On the event loop, in one step, the driver hands out cheap copies of every state
   machine and the session table (``NodeDriver.capture``): one cut at its applied index
   ``A >= P``; nothing is applied in between, so the states agree with each other.
4. The snapshot thread encodes them, checks that every state and the session table
   restore from their bytes (as for a local snapshot), and writes the file to
   ``snap/outgoing/``; the event loop never encodes or compresses.
5. The file is streamed (``FileBody``: 16 KiB at a time as the socket drains) with its
   ``Content-Length`` and deleted once sent or abandoned.

Memory: one encoded copy of the state on the snapshot thread, as for a local snapshot; the
compressed bytes go to disk, not to the socket buffers.  One backup at a time per node: a
second request meanwhile gets 503 ``busy``.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from paxoslog.storage.durable import DATA_DIR_MODE, create_file, make_dirs
from paxoslog.storage.meta import FORMAT_VERSION
from paxoslog.storage.snapshot import write_snapshot

from .errors import ApiError, unavailable
from .local_snapshots import SnapshotRefused
from .http import FileBody

__all__ = ["BackupService", "SNAPSHOT_CONTENT_TYPE"]

log = Logger(namespace="paxoslog.backup")

SNAPSHOT_CONTENT_TYPE = b"application/zstd"
_TMP_SUFFIX = ".backup.tmp"


class BackupService:
    """``barrier()``: a Deferred firing with the body of a linearizable barrier read (its
    ``index``); ``applied_index()``: this node's; ``capture()``: the driver's consistent
    copies (``TakeSnapshot``); ``writer``: the StorageWriter (its snapshot thread);
    ``directory``: where backup files are staged (``snap/outgoing``); ``verify(states,
    sessions)`` raises when a state would not restore; ``provenance()``: the header's
    ``backup`` map; ``timeout_s``: how long to wait for this node to apply the read point."""

    def __init__(self, *, barrier: Callable[[], defer.Deferred],
                 applied_index: Callable[[], int], capture: Callable, writer, directory: str,
                 verify: Callable, provenance: Callable[[], dict], reactor, timeout_s: float,
                 level: int = 1) -> None:
        self.barrier = barrier
        self.applied_index = applied_index
        self.capture = capture
        self.writer = writer
        self.directory = directory
        self.verify = verify
        self.provenance = provenance
        self.reactor = reactor
        self.timeout_s = timeout_s
        self.level = level
        self.busy = False
        self.taken = 0
        self._waiters: list[tuple[int, defer.Deferred]] = []

    def start(self) -> None:
        """Create the staging directory and delete what a crash left in it."""
        make_dirs(self.directory, DATA_DIR_MODE)
        for name in os.listdir(self.directory):
            if name.endswith(_TMP_SUFFIX):
                try:
                    os.unlink(os.path.join(self.directory, name))
                except OSError:
                    pass

    # ------------------------------------------------------------------ applied index

    def applied(self, index: int) -> None:
        """The node applied up to ``index`` (entries, or an installed snapshot)."""
        if not self._waiters:
            return
        ready = [d for point, d in self._waiters if point <= index]
        self._waiters = [(point, d) for point, d in self._waiters if point > index]
        for d in ready:
            d.callback(index)

    def _applied_at_least(self, point: int) -> defer.Deferred:
        if self.applied_index() >= point:
            return defer.succeed(self.applied_index())
        d = defer.Deferred()
        self._waiters.append((point, d))

        def too_late(failure):
            self._waiters = [(p, w) for p, w in self._waiters if w is not d]
            failure.trap(defer.TimeoutError, defer.CancelledError)
            raise unavailable(f"this node has not applied index {point} (the cluster's read "
                              f"point) within {self.timeout_s:g}s: it is behind; take the "
                              "backup from another node")
        d.addTimeout(self.timeout_s, self.reactor)
        return d.addErrback(too_late)

    # ------------------------------------------------------------------ the request

    @defer.inlineCallbacks
    def request(self):
        """The response to ``GET /api/v1/snapshot``: (200, FileBody, type, headers)."""
        if self.busy:
            raise unavailable("a backup is already being taken on this node", code="busy")
        self.busy = True
        started = time.perf_counter()
        try:
            point = (yield self.barrier())["index"]
            yield self._applied_at_least(point)
            op = self.capture()                   # one consistent cut, on the event loop
            path = os.path.join(self.directory, f"{op.meta.index:020d}-{os.urandom(4).hex()}"
                                                f"{_TMP_SUFFIX}")
            provenance = dict(self.provenance(), read_index=point, format=FORMAT_VERSION)
            size = yield self.writer.in_snapshot_thread(
                self._encode, path, op.meta, op.producers, op.sessions, provenance)
        except BaseException:
            self.busy = False
            raise
        self.taken += 1
        log.info("backup at index {index} (read point {point}): {size} bytes in {ms:.0f} ms; "
                 "streaming it", index=op.meta.index, point=point, size=size,
                 ms=(time.perf_counter() - started) * 1000)

        def sent() -> None:
            self.busy = False
            try:
                os.unlink(path)
            except OSError:
                pass
        headers = ((b"X-Paxoslog-Index", str(op.meta.index).encode()),
                   (b"X-Paxoslog-Term", str(op.meta.term).encode()),
                   (b"X-Paxoslog-Read-Index", str(point).encode()),
                   (b"Content-Disposition",
                    f'attachment; filename="paxoslog-{op.meta.index}.snap.zst"'.encode()))
        return (200, FileBody(path, size, sent), SNAPSHOT_CONTENT_TYPE, headers)

    def _encode(self, path: str, meta, producers: list, sessions: object,
                provenance: dict) -> int:
        """On the snapshot thread: bytes of every state, the restore check, the file."""
        states = [(name, produce()) for name, produce in producers]
        try:
            table = sessions()
            states = self.verify(states, table)
            with create_file(path) as out:            # 0600: it holds every key
                write_snapshot(out, meta, states, table, level=self.level, backup=provenance)
            return os.stat(path).st_size
        except BaseException as exc:
            try:
                os.unlink(path)
            except OSError:
                pass
            if isinstance(exc, SnapshotRefused):
                raise ApiError(500, "snapshot_refused", str(exc)) from None
            if isinstance(exc, OSError):
                raise ApiError(500, "backup_failed",
                               f"cannot write the backup file {path}: {exc}") from None
            raise
