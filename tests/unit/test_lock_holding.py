"""``paxoslog lock``/``elect`` keep their lease alive while COMMAND runs
(paxoslog/cli/coordination.py, ``_hold_while``), on a fake clock: each renewal is given only
the time the lease surely has left, so a cluster that stops answering ends the hold when
the lease may run out, not a whole client timeout later (found by a review: 8 s late with
a 3 s TTL)."""

from __future__ import annotations

from paxoslog.cli.common import EXIT_ERROR
from paxoslog.cli.coordination import _hold_while
from paxoslog.client import Unavailable
from paxoslog.recipes import LockLost


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_cluster_that_stops_answering_ends_the_hold_when_the_lease_may_expire():
    time = FakeTime()
    calls = []

    def renew(timeout_s: float) -> None:
        sent = time.now
        calls.append((sent, timeout_s))
        if len(calls) <= 2:
            time.now += 0.05                          # acknowledged
            return
        time.now += timeout_s                         # no answer until its deadline
        raise Unavailable("no endpoint answered")

    assert _hold_while(renew, 3000, [], {}, clock=time.clock, sleep=time.sleep) == EXIT_ERROR
    last_ok_sent = calls[1][0]
    assert all(sent + timeout <= last_ok_sent + 3.0 + 1e-9 for sent, timeout in calls[2:])
    assert time.now <= last_ok_sent + 3.0 + 1e-9      # stopped by the time it may expire
    assert [round(sent - 100.0, 2) for sent, _ in calls[:2]] == [1.0, 2.0]    # every ttl/3


def test_a_lease_found_gone_ends_the_hold_at_once():
    time = FakeTime()

    def renew(timeout_s: float) -> None:
        raise LockLost("lease 7 expired")

    assert _hold_while(renew, 3000, [], {}, clock=time.clock, sleep=time.sleep) == EXIT_ERROR
    assert time.now == 101.0                          # the first renewal, a third of a TTL in


def test_a_twisted_lock_whose_renewal_hangs_is_lost_when_the_lease_may_expire():
    """TwistedLock renews every ttl/3 on a LoopingCall, which waits for each renewal.  A
    renewal the cluster never answers failed only at the client's timeout (10 s), long
    after a 3 s lease could have run out; the watchdog calls ``on_lost`` at the TTL."""
    from twisted.internet import defer, task

    from paxoslog.recipes import TwistedLock

    class Hanging:
        client_id = "c"

        def __init__(self) -> None:
            self.reactor = task.Clock()
            self.renewals: list[defer.Deferred] = []

        def lease_keepalive(self, lease):
            self.renewals.append(defer.Deferred())
            return self.renewals[-1]

    client, lost = Hanging(), []
    lock = TwistedLock(client, "job", ttl_ms=3000, on_lost=lost.append)
    lock.lease, lock.renewed_sent = 7, client.reactor.seconds()
    lock._start_renewing(1)
    client.reactor.advance(1.0)                       # the first renewal: answered
    client.renewals[0].callback({"remaining_ms": 3000})
    client.reactor.advance(1.0)                       # the second: never answered
    assert len(client.renewals) == 2 and not lost
    client.reactor.advance(1.999)
    assert not lost
    client.reactor.advance(0.002)                     # 3 s after the last renewal sent
    assert len(lost) == 1 and isinstance(lost[0], LockLost)
    assert not client.reactor.getDelayedCalls()       # renewing stopped
    # The hung renewal ends later (the client's timeout, or the lease found gone): the
    # application already heard, and is not told twice (a review found it was).
    client.renewals[1].errback(LockLost("lease 7 expired"))
    assert len(lost) == 1


def test_a_twisted_lock_that_waited_in_line_is_not_lost_at_its_first_renewal():
    """The watchdog counts from the last renewal sent; a lock that waited in line longer
    than its TTL renewed its lease while waiting, and is not declared lost at its first
    renewal as held (a review found the first version of the watchdog did)."""
    from twisted.internet import defer, task

    from paxoslog.client import NotFound
    from paxoslog.recipes import TwistedLock
    from paxoslog.wsclient import StreamError

    class Queue:
        """Another holder keeps the lock for 20 s; every call is answered in 10 ms."""
        client_id = "c"

        def __init__(self) -> None:
            self.reactor = task.Clock()

        def _answer(self, value):
            d = defer.Deferred()
            self.reactor.callLater(0.01, d.callback, value)
            return d

        def _holder_alive(self) -> bool:
            return self.reactor.seconds() < 20.0

        def lease_grant(self, ttl_ms):
            return self._answer({"result": {"id": 7}})

        def txn(self, compare, success, failure):
            return self._answer({"result": {"results": [
                {}, {"kv": {"create_index": 10, "key": success[0]["key"]}}]}})

        def range(self, prefix, limit=None, after=None):
            kvs = [{"key": prefix + "00000000000000000007", "create_index": 10}]
            if self._holder_alive():
                kvs.insert(0, {"key": prefix + "00000000000000000003", "create_index": 5})
            return self._answer({"kvs": kvs, "more": False})

        def get(self, key):
            if self._holder_alive():
                return self._answer({"index": 5})
            return defer.fail(NotFound("gone"))

        def lease_keepalive(self, lease):
            return self._answer({"remaining_ms": 3000})

        def watch(self, key, start=None):
            return NoWatch()

    class NoWatch:
        """No WebSocket endpoint: the recipe falls back to polling."""

        def __aiter__(self):
            return self

        async def __anext__(self):
            raise StreamError("no watch here")

        def cancel(self) -> None:
            pass

    client, lost, got = Queue(), [], []
    lock = TwistedLock(client, "job", ttl_ms=3000, poll_s=0.05, on_lost=lost.append)
    lock.acquire().addCallback(got.append)
    for _ in range(2100):                             # 21 s in 10 ms steps
        client.reactor.advance(0.01)
    assert got and not lost
    for _ in range(300):                              # its first renewals as holder
        client.reactor.advance(0.01)
    assert not lost
