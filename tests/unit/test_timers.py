"""The driver's request timers: an answered request leaves its buckets at once (nothing
keeps it alive until its deadline), live timers come due in time order, and dead ones
(done requests, superseded retries) are skipped."""

from __future__ import annotations

import weakref

from paxoslog.node.requests import DEADLINE, RETRY, PendingWrite, Timers


class Watched(PendingWrite):
    __slots__ = ("__weakref__",)        # so that a test can see it freed


def write(i: int) -> PendingWrite:
    return Watched(None, ("c", i), b"x", False)


def answer(timers: Timers, w: PendingWrite) -> None:
    """What the driver does when a request is answered (driver._finish)."""
    timers.cancel(w)
    w.done = True
    w.retry_at = None


def test_answered_requests_leave_at_once_and_live_timers_keep_their_order():
    timers = Timers()
    live, watched = [], []
    for i in range(20_000):
        w = write(i)
        w.deadline = 1000 + i % 7
        timers.add(w.deadline, DEADLINE, w)
        if i % 100 == 0:
            live.append(w)              # still waiting
        else:
            answer(timers, w)           # answered long before its deadline
            if i % 1000 == 1:
                watched.append(weakref.ref(w))
    del w
    assert len(timers) == len(live)
    assert all(ref() is None for ref in watched)   # freed, not waiting for a deadline
    due = timers.due(10_000)
    expected = sorted(live, key=lambda w: (1000 + w.key[1] % 7, w.key[1]))
    assert [r for _, r in due] == expected
    assert all(kind == DEADLINE for kind, _ in due)
    assert len(timers) == 0 and timers.due(20_000) == []


def test_a_retry_fires_once_at_its_tick_and_a_superseded_one_is_dead():
    timers = Timers()
    w = write(1)
    w.deadline = 50
    timers.add(50, DEADLINE, w)
    w.retry_at = 5
    timers.add(5, RETRY, w)
    w.retry_at = 9                      # rescheduled: the timer at 5 is dead
    timers.add(9, RETRY, w)
    assert timers.due(6) == []
    assert timers.due(9) == [(RETRY, w)] and w.retry_at is None
    w.retry_at = 12
    timers.add(12, RETRY, w)
    answer(timers, w)                   # answered: neither its retry nor its deadline fires
    assert len(timers) == 0
    assert timers.due(100) == []


def test_a_deadline_and_a_retry_at_one_tick_both_come_due_deadline_first():
    timers = Timers()
    w, other = write(1), write(2)
    w.retry_at = 7
    timers.add(7, RETRY, w)             # the retry was added first
    other.deadline = 7
    timers.add(7, DEADLINE, other)
    w.deadline = 7
    timers.add(7, DEADLINE, w)
    assert timers.due(7) == [(DEADLINE, w), (RETRY, w), (DEADLINE, other)]
    assert w.retry_at is None


def test_a_done_request_is_skipped_even_if_nobody_cancelled_it():
    timers = Timers()
    w = write(1)
    w.deadline = 3
    timers.add(3, DEADLINE, w)
    w.done = True
    assert timers.due(3) == []
