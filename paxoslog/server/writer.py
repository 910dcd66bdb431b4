"""Storage off the reactor thread: one WAL writer thread, one snapshot thread.

Every WAL operation (append+fsync of a Ready, installing a received snapshot, compaction,
close) runs on the single writer thread, in submission order, so the store sees one writer.
Snapshot files are written on a second thread so a large snapshot never stalls the log;
the snapshot directory is the only thing both threads touch, and ``snap_lock`` serialises
those touches (a Ready that installs a received snapshot, and a local snapshot write).

Group commit falls out of the shell's loop: while one Ready is on the writer thread the
core keeps accepting proposals and messages, and they all go into the next Ready, which
costs one fsync however many client writes it carries.

The WAL thread is a plain thread fed by a ``SimpleQueue``, not a Twisted ``ThreadPool``:
a Ready's hand-off is on the path of every write (leader and followers), and the pool's
coordinator, context and Deferred plumbing cost tens of microseconds on each side of it
(issue 17).  Results come back with one ``callFromThread``; the order of submission is the
order of execution and of completion.

A commit hint (a Ready whose only durable change is the commit point) is not a job of its
own: it waits, the newest replacing older ones, and is written by the next job ahead of
that job's own records, or after ``HINT_DELAY`` seconds when no job comes.  One client
writing at a time made one hint per write on the leader, and its hand-off woke the writer
thread, which took the GIL from the event loop between the sends of the next write's
appends (strace: the second follower's append went out about 0.5 ms after the first).

A small Ready is persisted on the event loop itself (``persists_inline``, ``persist_now``):
one that carries at most ``INLINE_COMMANDS_MAX`` commands and ``INLINE_BYTES_MAX`` bytes of
entries, while no WAL job is queued or running, no snapshot file is being written, and the
last fsync took less than ``INLINE_FSYNC_MAX``.  That is the lightly loaded case, where the
hand-off to the WAL thread and the result's way back cost more than the loop could do
meanwhile: one client's write waited for two hand-offs on the leader and two on the
follower whose acknowledgement completed the quorum, 50-125 us each.  Under load a Ready
carries many commands (client commands are batched into entries) and goes to the thread,
so the loop keeps parsing requests during the fsync.  The price: an fsync that stalls on
the loop stalls the whole node until it returns (no ticks, heartbeats or answers, like a
short pause); the Readies after it go to the thread until an fsync is fast again
(docs/design-notes.md, "Small Readies are persisted on the event loop").
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from paxoslog.core.log import SnapshotMeta, entry_bytes
from paxoslog.core.ready import Ready
from paxoslog.storage import DiskStorage

__all__ = ["StorageWriter", "HINT_DELAY", "INLINE_COMMANDS_MAX", "INLINE_BYTES_MAX",
           "INLINE_FSYNC_MAX"]

HINT_DELAY = 0.05     # seconds a commit hint waits for a job to carry it
INLINE_COMMANDS_MAX = 4     # a Ready with at most this many commands
INLINE_BYTES_MAX = 65536    # ... and this many bytes of entries may skip the thread
INLINE_FSYNC_MAX = 0.002    # ... while the last fsync took less than this (seconds)


class _SerialThread:
    """One thread running submitted calls in order; each result (or failure) fires the
    call's Deferred on the reactor thread."""

    def __init__(self, reactor, name: str) -> None:
        self.reactor = reactor
        self.pending = 0              # submitted calls whose result has not come back yet
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, fn, *args) -> defer.Deferred:
        d = defer.Deferred()
        self.pending += 1
        self._queue.put((d, fn, args))
        return d

    def _run(self) -> None:
        get, call = self._queue.get, self.reactor.callFromThread
        while True:
            item = get()
            if item is None:
                return
            d, fn, args = item
            try:
                result = fn(*args)
            except BaseException:
                result = Failure()
            call(self._done, d, result)
            del item, d, fn, args, result

    def _done(self, d: defer.Deferred, result) -> None:
        self.pending -= 1
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    def stop(self) -> None:
        """After the calls already submitted have run (their results may still be on
        their way to the reactor)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class StorageWriter:
    def __init__(self, storage: DiskStorage, reactor, *,
                 perf_counter: Callable[[], float] = time.perf_counter) -> None:
        """``perf_counter``: the clock that times each Ready's append and fsync."""
        self.storage = storage
        self.reactor = reactor
        self._perf_counter = perf_counter
        self.snap_lock = threading.Lock()
        self._wal = _SerialThread(reactor, "paxoslog-wal")
        self._snap = ThreadPool(minthreads=1, maxthreads=1, name="paxoslog-snapshot")
        self._started = False
        self._hint: Ready | None = None           # the newest commit hint not yet written
        self._hint_waiters: list[defer.Deferred] = []
        self._hint_call = None
        self.last_fsync = 0.0      # seconds the last Ready's append + fsync took
        self._snapshot_jobs = 0    # submitted to the snapshot thread, not yet back
        self._closing = False

    def start(self) -> None:
        self._wal.start()
        self._snap.start()
        self._started = True

    # ------------------------------------------------------------------ WAL thread

    def persist(self, ready: Ready, snapshot_file: str | None = None) -> defer.Deferred:
        """Make ``ready``'s durable part durable; fires with the fsync time in seconds."""
        return self._submit(self._persist, ready, snapshot_file)

    def _submit(self, fn, *args) -> defer.Deferred:
        """A WAL job, carrying the waiting commit hint (written first, in order)."""
        hint, waiters = self._take_hint()
        if hint is None:
            return self._wal.submit(fn, *args)

        def with_hint():
            self.storage.append(hint)
            return fn(*args)
        d = self._wal.submit(with_hint)

        def written(result):
            self._fire(waiters, result if isinstance(result, Failure) else None)
            return result
        d.addBoth(written)
        return d

    def _take_hint(self) -> tuple[Ready | None, list[defer.Deferred]]:
        hint, waiters = self._hint, self._hint_waiters
        if hint is not None:
            self._hint, self._hint_waiters = None, []
            if self._hint_call is not None and self._hint_call.active():
                self._hint_call.cancel()
            self._hint_call = None
        return hint, waiters

    @staticmethod
    def _fire(waiters: list[defer.Deferred], result) -> None:
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def persists_inline(self, ready: Ready) -> bool:
        """Whether ``ready`` is small enough, and the disk quick enough, to be persisted
        on the calling thread (``persist_now``) rather than handed to the WAL thread."""
        if ready.snapshot is not None or not self._loop_may_write():
            return False
        commands = size = 0
        for entry in ready.entries:
            commands += len(entry.payload)
            size += entry_bytes(entry)
        return commands <= INLINE_COMMANDS_MAX and size <= INLINE_BYTES_MAX

    def _loop_may_write(self) -> bool:
        """No other write to the data directory is running or queued, none comes after
        (closing), and the disk was quick the last time."""
        return (self._started and not self._closing and not self._wal.pending
                and not self._snapshot_jobs and self.last_fsync < INLINE_FSYNC_MAX)

    def persist_now(self, ready: Ready) -> float:
        """``persist`` on the calling (reactor) thread, when ``persists_inline(ready)``;
        returns the fsync time in seconds, raises ``StorageIOError`` if it failed.  A
        waiting commit hint is written first, as a WAL job would."""
        assert self._loop_may_write() and ready.snapshot is None
        hint, waiters = self._take_hint()
        try:
            if hint is not None:
                self.storage.append(hint)
            seconds = self._persist(ready, None)
        except BaseException:
            self._fire(waiters, Failure())
            raise
        self._fire(waiters, None)
        return seconds

    def _persist(self, ready: Ready, snapshot_file: str | None) -> float:
        storage = self.storage
        started = self._perf_counter()
        if ready.snapshot is not None:
            with self.snap_lock:
                storage.save(ready, snapshot_file=snapshot_file)
        else:
            storage.append(ready)
            storage.sync()
        seconds = self._perf_counter() - started
        self.last_fsync = seconds
        return seconds

    def append_unsynced(self, ready: Ready) -> defer.Deferred:
        """Append without fsync: for a Ready whose only durable change is the commit point
        in the hard state (a restart hint; etcd's MustSync makes the same call).  The next
        fsync covers it; losing it in a crash loses nothing acknowledged.  It waits for the
        next WAL job (it replaces a hint still waiting: the newest commit point covers the
        older), or at most ``HINT_DELAY`` seconds, and is then written to the file (no
        fsync) so that read-only tools (log dump, log export) see the commit point the node
        has reached.  Fires once written."""
        self._hint = ready
        d = defer.Deferred()
        self._hint_waiters.append(d)
        if self._hint_call is None:
            self._hint_call = self.reactor.callLater(HINT_DELAY, self._write_hint)
        return d

    def _write_hint(self) -> None:
        self._hint_call = None
        if self._hint is not None:
            # A failure reaches the hint's waiters (and through them the runner).
            self._submit(self.storage.flush).addErrback(lambda _failure: None)

    def compact(self, index: int) -> defer.Deferred:
        def run() -> int:
            with self.snap_lock:
                return self.storage.compact(index)
        return self._submit(run)

    def close(self) -> defer.Deferred:
        """Seal the WAL (fsync) and release the data directory, after queued work (a
        waiting commit hint included)."""
        self._closing = True
        return self._submit(self.storage.close)

    # ------------------------------------------------------------------ snapshot thread

    def save_snapshot(self, meta: SnapshotMeta, producers: list, sessions: object,
                      verify=None) -> defer.Deferred:
        """Write a local snapshot; ``producers`` is [(name, callable -> pieces)], called on
        the snapshot thread (the copies were taken on the reactor thread).  ``verify(states,
        sessions)``, when given, returns the states wrapped so that they are checked as they
        are written; it raises to refuse the snapshot (it would not restore), and then
        nothing is written."""
        def run():
            states = [(name, produce()) for name, produce in producers]
            table = sessions()
            if verify is not None:
                states = verify(states, table)
            with self.snap_lock:
                return self.storage.save_snapshot(meta, states, table)
        return self._on_snapshot_thread(run)

    def compaction_point(self, taken: SnapshotMeta) -> defer.Deferred:
        """Fires with ``storage.compaction_point(taken)`` (it reads a snapshot header)."""
        def run():
            with self.snap_lock:
                return self.storage.compaction_point(taken)
        return self._on_snapshot_thread(run)

    def in_snapshot_thread(self, fn, *args) -> defer.Deferred:
        """Run slow snapshot-file work (checksums, verification, restoring state machines
        from a received snapshot) off the reactor, after any snapshot queued before."""
        return self._on_snapshot_thread(fn, *args)

    def _on_snapshot_thread(self, fn, *args) -> defer.Deferred:
        """Run ``fn`` on the snapshot thread; counted while it runs (a snapshot file being
        written can slow the WAL's fsyncs: Readies are not persisted on the loop then)."""
        self._snapshot_jobs += 1
        d = deferToThreadPool(self.reactor, self._snap, fn, *args)

        def back(result):
            self._snapshot_jobs -= 1
            return result
        return d.addBoth(back)

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._snap.stop()
            self._wal.stop()
