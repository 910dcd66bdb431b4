"""The driver's request timers: dead timers (answered requests, superseded retries) are
skipped when due, and the heap is rebuilt without them once it doubles, so answered
requests do not stay alive until their deadlines."""

from __future__ import annotations

from paxoslog.node.requests import DEADLINE, RETRY, PendingWrite, Timers


def write(i: int) -> PendingWrite:
    return PendingWrite(None, ("c", i), b"x", False)


def test_answered_requests_leave_the_heap_and_live_timers_keep_their_order():
    timers = Timers()
    live = []
    for i in range(20_000):
        w = write(i)
        timers.add(1000 + i % 7, DEADLINE, w)
        if i % 100 == 0:
            live.append(w)              # still waiting
        else:
            w.done = True               # answered long before its deadline
    assert len(timers) < 2 * Timers.COMPACT_MIN
    due = timers.due(10_000)
    expected = sorted(live, key=lambda w: (1000 + w.key[1] % 7, w.key[1]))
    assert [r for _, r in due] == expected
    assert all(kind == DEADLINE for kind, _ in due)


def test_a_superseded_retry_is_dead_and_the_current_one_fires():
    timers = Timers()
    w = write(1)
    w.retry_at = 5
    timers.add(5, RETRY, w)
    w.retry_at = 9                      # rescheduled: the timer at 5 is dead
    timers.add(9, RETRY, w)
    for i in range(2 * Timers.COMPACT_MIN):   # force a compaction
        other = write(i + 2)
        other.done = True
        timers.add(3, DEADLINE, other)
    assert timers.due(6) == []
    assert timers.due(9) == [(RETRY, w)] and w.retry_at is None
