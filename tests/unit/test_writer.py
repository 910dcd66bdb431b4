"""StorageWriter: WAL jobs run in order on one thread; a commit hint (a Ready that only
moves the commit point) is not a job of its own but rides on the next job, ahead of its
records, or is written after HINT_DELAY when no job comes.  A small Ready, while the thread
is idle and the disk quick, is persisted on the calling thread instead."""

from __future__ import annotations

import queue
import threading

import pytest
from twisted.internet.task import Clock

from paxoslog.core.log import Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.server.writer import (HINT_DELAY, INLINE_BYTES_MAX, INLINE_COMMANDS_MAX,
                                    INLINE_FSYNC_MAX, StorageWriter)
from paxoslog.storage.errors import StorageIOError

CONFIG = Config(frozenset({1, 2, 3}))


class ThreadClock(Clock):
    """A Clock whose callFromThread queues the call for ``drain`` on the test's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.SimpleQueue = queue.SimpleQueue()

    def callFromThread(self, fn, *args):
        self.from_threads.put((fn, args))

    def drain(self, count: int) -> None:
        for _ in range(count):
            fn, args = self.from_threads.get(timeout=10)
            fn(*args)


class Recorder:
    """The storage calls, in the order the WAL thread made them."""

    def __init__(self) -> None:
        self.calls: list = []
        self.lock = threading.Lock()

    def _note(self, *call) -> None:
        with self.lock:
            self.calls.append(call)

    def append(self, ready: Ready) -> None:
        self._note("append", ready.hard_state.commit if ready.hard_state else None,
                   len(ready.entries))

    def sync(self) -> None:
        self._note("sync")

    def flush(self) -> None:
        self._note("flush")

    def close(self) -> None:
        self._note("close")


def hint(commit: int) -> Ready:
    return Ready(hard_state=HardState(2, 1, commit))


def entries(index: int) -> Ready:
    return Ready(entries=[Entry(index, 2, 0, (b"x",))])


def writer() -> tuple[StorageWriter, Recorder, ThreadClock]:
    storage, clock = Recorder(), ThreadClock()
    w = StorageWriter(storage, clock)
    w.start()
    return w, storage, clock


def test_hints_ride_on_the_next_job_the_newest_only():
    w, storage, clock = writer()
    fired = []
    for commit in (5, 6, 7):
        w.append_unsynced(hint(commit)).addCallback(fired.append)
    assert w._wal.pending == 0                      # no job of their own
    done = []
    w.persist(entries(8)).addCallback(done.append)
    clock.drain(1)
    assert storage.calls == [("append", 7, 0), ("append", None, 1), ("sync",)]
    assert len(done) == 1 and len(fired) == 3       # every waiter: written
    clock.advance(HINT_DELAY)                       # nothing left to write
    assert w._wal.pending == 0
    w.stop()


def test_a_hint_with_no_job_to_carry_it_is_written_after_the_delay():
    w, storage, clock = writer()
    fired = []
    w.append_unsynced(hint(3)).addCallback(fired.append)
    clock.advance(HINT_DELAY * 0.9)
    assert w._wal.pending == 0 and storage.calls == []
    clock.advance(HINT_DELAY * 0.2)
    clock.drain(1)
    assert storage.calls == [("append", 3, 0), ("flush",)] and fired == [None]
    w.stop()


def test_close_writes_the_waiting_hint_first():
    w, storage, clock = writer()
    w.append_unsynced(hint(9))
    w.close()
    clock.drain(1)
    assert storage.calls == [("append", 9, 0), ("close",)]
    assert clock.getDelayedCalls() == []            # the delayed write was cancelled
    w.stop()


# ====================================================================== on the event loop

class StepTimer:
    """The writer's clock: every reading is ``step`` seconds after the previous one, so a
    Ready's append + fsync takes exactly ``step``."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class FailingSync(Recorder):
    def sync(self) -> None:
        raise StorageIOError("fdatasync failed: EIO")


def commands(index: int, count: int, size: int = 1) -> Ready:
    return Ready(entries=[Entry(index, 2, 0, (b"x" * size,) * count)])


def timed_writer(step: float, storage=None) -> tuple[StorageWriter, Recorder, ThreadClock]:
    storage, clock = storage or Recorder(), ThreadClock()
    w = StorageWriter(storage, clock, perf_counter=StepTimer(step))
    w.start()
    return w, storage, clock


def test_a_small_ready_is_persisted_on_the_calling_thread_with_the_waiting_hint_first():
    w, storage, clock = timed_writer(0.0003)
    fired = []
    w.append_unsynced(hint(4)).addCallback(fired.append)
    ready = commands(5, INLINE_COMMANDS_MAX)
    assert w.persists_inline(ready)
    assert w.persist_now(ready) == pytest.approx(0.0003)
    assert storage.calls == [("append", 4, 0), ("append", None, 1), ("sync",)]
    assert fired == [None] and w.last_fsync == pytest.approx(0.0003)
    assert w._wal.pending == 0 and clock.getDelayedCalls() == []   # the hint's timer went
    w.stop()


def test_big_readies_snapshots_and_a_busy_wal_thread_go_to_the_thread():
    w, storage, clock = timed_writer(0.0003)
    assert not w.persists_inline(commands(5, INLINE_COMMANDS_MAX + 1))
    # Commands count across entries, not entries; bytes count too.
    assert not w.persists_inline(Ready(entries=[Entry(5, 2, 0, (b"x",) * 3),
                                                Entry(6, 2, 0, (b"y",) * 3)]))
    assert not w.persists_inline(commands(5, 1, size=INLINE_BYTES_MAX))
    assert not w.persists_inline(Ready(snapshot=SnapshotMeta(9, 2, CONFIG)))
    assert w.persists_inline(Ready(hard_state=HardState(3, 2, 0)))    # a vote: no commands
    job = w.persist(commands(5, 1))
    assert not w.persists_inline(commands(6, 1))     # the WAL thread has a job: in order
    clock.drain(1)
    assert job.called and w.persists_inline(commands(6, 1))
    w.stop()


def test_nothing_is_persisted_on_the_loop_while_a_snapshot_file_is_written_or_after_close():
    w, storage, clock = timed_writer(0.0003)
    release = threading.Event()
    saved = w.in_snapshot_thread(release.wait, 10)
    assert not w.persists_inline(commands(1, 1))
    release.set()
    clock.drain(1)                                  # the snapshot thread's result is back
    assert saved.called and w.persists_inline(commands(1, 1))
    w.close()
    clock.drain(1)
    assert not w.persists_inline(commands(2, 1))
    w.stop()


def test_after_a_slow_fsync_the_next_ready_goes_to_the_thread_until_one_is_fast():
    w, storage, clock = timed_writer(INLINE_FSYNC_MAX * 1.5)
    assert w.persists_inline(commands(1, 1))
    w.persist_now(commands(1, 1))
    assert w.last_fsync >= INLINE_FSYNC_MAX and not w.persists_inline(commands(2, 1))
    w._perf_counter.step = INLINE_FSYNC_MAX / 10    # the disk recovers
    w.persist(commands(2, 1))
    clock.drain(1)
    assert w.last_fsync < INLINE_FSYNC_MAX and w.persists_inline(commands(3, 1))
    w.stop()


def test_a_failed_inline_fsync_raises_and_fails_the_hint_waiters():
    w, storage, clock = timed_writer(0.0003, FailingSync())
    failed = []
    w.append_unsynced(hint(2)).addErrback(failed.append)
    with pytest.raises(StorageIOError):
        w.persist_now(commands(3, 1))
    assert len(failed) == 1 and failed[0].check(StorageIOError)
    w.stop()
