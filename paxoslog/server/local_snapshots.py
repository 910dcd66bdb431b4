"""``LocalSnapshots``: taking this node's snapshots and restoring received ones, off the
event loop.

Taking: the driver hands over cheap copies of the state machines (``producers``) and the
session table; the snapshot thread makes the bytes, checks that every state machine and
the session table restore from them (a snapshot that would not restore is refused, not
written: the log that produced the state is kept, so the node stays restartable), writes
the file, and finds the point the log may be compacted to.

Restoring: a received snapshot was persisted; fresh state machines are loaded from the
file on the snapshot thread, so a large snapshot never stalls ticks and heartbeats; the
driver swaps them in on the reactor.
"""

from __future__ import annotations

import os
import time

import cbor2
from twisted.internet import defer
from twisted.logger import Logger

from paxoslog.core.log import SnapshotMeta
from paxoslog.storage import SnapshotReader
from paxoslog.storage.snapshot import snapshot_name

from .metrics import Histogram

__all__ = ["LocalSnapshots", "SnapshotRefused", "verify_states", "restore_installed",
           "SNAPSHOT_BUCKETS"]

SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

log = Logger(namespace="paxoslog.snapshots")


class SnapshotRefused(Exception):
    """A state machine's snapshot would not restore: it is not written (the log that
    produced the state is kept, so the node stays restartable by replaying it)."""


def verify_states(states: list, sessions: object, create, sessions_like) -> list:
    """``states`` ([(name, pieces)]) wrapped so that each state machine's pieces are checked
    as they are consumed (written): its ``snapshot_checker()`` is fed each piece when it
    has one (a large kv store is never held twice), else the pieces are kept and restored
    into a fresh instance from ``create(name)`` at the end.  The session table is restored
    into ``sessions_like()`` at once.  The first failure raises ``SnapshotRefused`` naming
    it, before the snapshot's last piece is written.  On the snapshot thread: no applied
    command can make a snapshot every replica then fails to read (a replica that cannot
    read its snapshot cannot restart)."""
    try:
        sessions_like().restore(cbor2.loads(cbor2.dumps(sessions)))
    except Exception as exc:
        raise SnapshotRefused(f"the session table would not restore from the snapshot: "
                              f"{type(exc).__name__}: {exc}"[:500]) from None
    return [(name, _checked(name, pieces, create(name))) for name, pieces in states]


def _checked(name: str, pieces, fresh):
    """Yield ``pieces`` while checking that ``fresh`` would restore from them."""
    make_checker = getattr(fresh, "snapshot_checker", None)
    checker = make_checker() if make_checker is not None else None
    kept: list = []
    for piece in pieces:
        if checker is None:
            kept.append(piece)
        else:
            _refuse_unless(name, checker.feed, piece)
        yield piece
    if checker is None:
        _refuse_unless(name, fresh.restore, b"".join(kept))
    else:
        _refuse_unless(name, checker.close)


def _refuse_unless(name: str, check, *args) -> None:
    try:
        check(*args)
    except Exception as exc:
        raise SnapshotRefused(f"state machine {name!r} would not restore from its own "
                              f"snapshot: {type(exc).__name__}: {exc}"[:500]) from None


def restore_installed(storage, meta: SnapshotMeta, machines) -> SnapshotMeta:
    """On the snapshot thread: restore the fresh (not yet shared) ``machines`` from the
    installed snapshot ``meta``; returns the snapshot's own meta.  Falls back to the newest
    local snapshot when the file at ``meta`` is missing (the store kept a snapshot at least
    as new instead); anything older cannot stand in for ``meta`` (the log below ``meta`` is
    gone) and raises ``FileNotFoundError``."""
    path = os.path.join(storage.snap_dir, snapshot_name(meta.index, meta.term))
    if not os.path.exists(path):
        latest = storage.latest_snapshot()
        if latest is None or latest.index < meta.index:
            raise FileNotFoundError(f"{path}: the installed snapshot is missing")
        path = latest.path
    with SnapshotReader(path) as reader:
        if reader.meta.index < meta.index:
            raise FileNotFoundError(f"{path} covers index {reader.meta.index}, not "
                                    f"{meta.index}")
        for name in machines.restore_from(reader):
            log.warn("snapshot holds state machine {name}, not enabled here", name=name)
        return reader.meta


class LocalSnapshots:
    """``writer``: the StorageWriter (its snapshot thread); ``storage``: the DiskStorage;
    ``create(name)`` an empty state machine and ``sessions_like()`` an empty session table
    with the node's bounds (for verification)."""

    def __init__(self, writer, storage, create, sessions_like) -> None:
        self.writer = writer
        self.storage = storage
        self.create = create
        self.sessions_like = sessions_like
        # Seconds to take (encode, write, fsync, verify) and to restore a snapshot.
        self.save_seconds = Histogram(SNAPSHOT_BUCKETS)
        self.restore_seconds = Histogram(SNAPSHOT_BUCKETS)

    def take(self, meta: SnapshotMeta, producers: list, sessions: object) -> defer.Deferred:
        """Fires with the compaction point (a SnapshotMeta, or None: nothing to compact)."""
        current = self.storage.snapshot_meta
        if current is not None and meta.index <= current.index:
            return defer.succeed(None)          # a received snapshot already covers it
        started = time.perf_counter()
        d = self.writer.save_snapshot(
            meta, producers, sessions,
            verify=lambda states, table: verify_states(states, table, self.create,
                                                       self.sessions_like))
        # Compact only up to the previous snapshot (snapshot.keep >= 2), not this one: the
        # log keeps one snapshot interval of entries, so a follower a little behind
        # catches up by entries instead of a whole snapshot (keep = 1: up to this one).
        d.addCallback(lambda _file: self.writer.compaction_point(meta))

        def done(point):
            self.save_seconds.observe(time.perf_counter() - started)
            log.info("snapshot at index {index} in {ms:.0f} ms; log compacted to {point}",
                     index=meta.index, ms=(time.perf_counter() - started) * 1000,
                     point=point.index if point is not None else "nothing yet")
            return point
        return d.addCallback(done)

    def restore(self, meta: SnapshotMeta, machines) -> defer.Deferred:
        """Fires with the restored snapshot's meta once ``machines`` hold its state."""
        started = time.perf_counter()
        d = self.writer.in_snapshot_thread(restore_installed, self.storage, meta, machines)

        def done(restored: SnapshotMeta) -> SnapshotMeta:
            self.restore_seconds.observe(time.perf_counter() - started)
            log.info("installed snapshot at index {index} (restored off the event loop in "
                     "{ms:.0f} ms)", index=restored.index,
                     ms=(time.perf_counter() - started) * 1000)
            return restored
        return d.addCallback(done)
