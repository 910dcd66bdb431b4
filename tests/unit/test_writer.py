"""StorageWriter: WAL jobs run in order on one thread; a commit hint (a Ready that only
moves the commit point) is not a job of its own but rides on the next job, ahead of its
records, or is written after HINT_DELAY when no job comes."""

from __future__ import annotations

import queue
import threading

from twisted.internet.task import Clock

from paxoslog.core.log import Entry, HardState
from paxoslog.core.ready import Ready
from paxoslog.server.writer import HINT_DELAY, StorageWriter


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
