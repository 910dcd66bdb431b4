"""Coordination recipes on leases and transactions: a fair distributed lock with a fencing
token, and leader election (campaign, observe, resign).  docs/coordination.md explains
them for users; this docstring says how they work.

**Lock** ``NAME`` (etcd's concurrency.Mutex, over HTTP):

1. grant a lease of ``ttl_ms``; every key the holder writes is attached to it, so the
   lock is released when the holder dies (its keep-alives stop and the lease expires);
2. create ``<prefix><NAME>/<lease id>`` with a transaction (create if absent, else read
   it: a retried attempt finds its own key); its place in line is ``(create_index, key)``:
   one log entry carries a batch of commands, so keys created by one entry share their
   ``create_index``, and the key (the lease id, zero-padded) breaks the tie;
3. range over ``<prefix><NAME>/``: if no key is before ours in line, the lock is ours,
   and the **fencing token** is ``create_index * 2**32 + lease id``: the revision our key
   was created at, extended by the tie-break, so it is unique and strictly increasing from
   one holder to the next;
4. else wait until the key just before ours is gone (its holder released it, or died),
   then look again (step 3): waiters queue in creation order, so the lock is fair and
   a release wakes one waiter only.

Waiting is a WebSocket ``watch`` of the predecessor's key from the revision we last saw
it at, so its delete wakes us at once (a release hands over in one round trip, and a
waiter sends nothing while it waits); the watch is reopened at least every third of the
TTL to renew our lease, and when no watch can be opened the waiter polls every ``poll_s``
instead.

A holder must pass the fencing token to whatever it protects, and the protected resource
must refuse a token lower than one it has seen: a holder paused longer than its TTL (GC,
SIGSTOP, a slow disk) wakes up still believing it holds the lock after a new holder has
taken it; only the token tells them apart.

**Election** ``NAME``: a campaign is the same queue (a key per candidate, attached to its
lease, holding the candidate's value); the leader is the candidate whose key was created
first; ``observe`` reads it; ``resign`` deletes our key (revokes the lease).

The recipes are written once, as generators of steps (a client call, a pause, the
clock); ``_run_sync`` drives them with a ``SyncClient`` and ``_run_twisted`` with the
Twisted ``Client``, so both clients run the same algorithm.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generator, NamedTuple

from .client import ClientError, NotFound

__all__ = ["Lock", "TwistedLock", "Election", "LockLost", "LockTimeout", "RANGE_LIMIT"]

RANGE_LIMIT = 1000          # queue keys per page of a look (a look reads every page)
_TIE_BITS = 32              # fencing token = create_index << _TIE_BITS | lease id


class LockLost(ClientError):
    """The lease behind a held lock (or a campaign) expired: someone else may hold it."""


class LockTimeout(ClientError):
    """The lock (or leadership) was not acquired before the deadline."""


class _Call(NamedTuple):
    method: str
    args: tuple
    kwargs: dict


class _Pause(NamedTuple):
    seconds: float


class _Gone(NamedTuple):
    """Wait at most ``max_s`` for ``key`` to be deleted after ``revision``: True when it
    was (a watch); False at ``max_s``, or after ``poll_s`` when no watch can be opened."""
    key: str
    revision: int
    max_s: float
    poll_s: float


class _Now(NamedTuple):
    pass


def _call(method: str, *args, **kwargs) -> _Call:
    return _Call(method, args, kwargs)


Steps = Generator[Any, Any, Any]


# ====================================================================== the algorithm

def _join_queue(prefix: str, ttl_ms: int, value: object) -> Steps:
    """Grant a lease and create our key in the queue: (lease, key, create_index)."""
    granted = yield _call("lease_grant", ttl_ms)
    lease = granted["result"]["id"]
    key = f"{prefix}{lease:020d}"
    body = yield _call("txn", [{"key": key, "target": "exists", "value": False}],
                       [{"op": "put", "key": key, "value": value, "lease": lease},
                        {"op": "get", "key": key}],
                       [{"op": "get", "key": key}])
    record = body["result"]["results"][-1]["kv"]
    return lease, key, (record["create_index"], key)


def _place(kv: dict) -> tuple[int, str]:
    return kv["create_index"], kv["key"]


def _token(place: tuple[int, str], lease: int) -> int:
    return (place[0] << _TIE_BITS) | (lease & ((1 << _TIE_BITS) - 1))


def _queue(prefix: str) -> Steps:
    """The queue's keys in line order (creation, then key).  Every page: a page is in key
    (lease) order, not line order, so the holder may be on any of them, and a page is cut
    by a count and by the node's result bytes, well below 1,000 keys when values are large.
    Pages are read one after another: a key present throughout is seen, and one deleted
    meanwhile has left the line, so no key before ours can be missed."""
    kvs: list = []
    after = None
    while True:
        found = yield _call("range", prefix, RANGE_LIMIT, after=after)
        kvs.extend(found["kvs"])
        if not found.get("more") or not found.get("cursor"):
            return sorted(kvs, key=_place)
        after = found["cursor"]


def _wait_turn(prefix: str, lease: int, place: tuple[int, str], deadline: float | None,
               poll_s: float, keepalive_s: float) -> Steps:
    """Wait until no key before ``place`` (create_index, key) remains under ``prefix``."""
    renewed = yield _Now()
    while True:
        queue = yield from _queue(prefix)
        before = [kv for kv in queue if _place(kv) < place]
        if not any(_place(kv) == place for kv in queue):
            raise LockLost(f"our key in {prefix!r} is gone: lease {lease} expired")
        if not before:
            return
        predecessor = before[-1]["key"]
        while True:                                   # wait until the predecessor is gone
            now = yield _Now()
            if deadline is not None and now >= deadline:
                raise LockTimeout(f"not our turn in {prefix!r} before the deadline")
            if now - renewed >= keepalive_s:
                yield from _keepalive(lease)
                renewed = now
            try:
                seen = yield _call("get", predecessor)
            except NotFound:
                break
            wait_s = keepalive_s - (now - renewed)
            if deadline is not None:
                wait_s = min(wait_s, deadline - now)
            if (yield _Gone(predecessor, seen["index"], max(wait_s, 0.0), poll_s)):
                break


def _keepalive(lease: int) -> Steps:
    try:
        return (yield _call("lease_keepalive", lease))
    except NotFound:
        raise LockLost(f"lease {lease} expired") from None


def _revoke(lease: int) -> Steps:
    try:
        yield _call("lease_revoke", lease)
    except NotFound:
        pass                                          # already expired: released anyway


def _acquire(prefix: str, ttl_ms: int, value: object, timeout_s: float | None,
             poll_s: float) -> Steps:
    now = yield _Now()
    deadline = None if timeout_s is None else now + timeout_s
    lease, key, place = yield from _join_queue(prefix, ttl_ms, value)
    try:
        yield from _wait_turn(prefix, lease, place, deadline, poll_s, ttl_ms / 3000.0)
    except ClientError:
        try:
            yield from _revoke(lease)
        except ClientError:
            pass                                      # the lease expires on its own
        raise
    return lease, key, _token(place, lease)


def _leader(prefix: str) -> Steps:
    queue = yield from _queue(prefix)
    return queue[0] if queue else None


# ====================================================================== drivers

def _run_sync(client, steps: Steps, clock: Callable[[], float],
              sleep: Callable[[float], None]):
    reply, error = None, None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        if type(step) is _Call:
            try:
                reply = getattr(client, step.method)(*step.args, **step.kwargs)
            except ClientError as exc:
                error = exc
        elif type(step) is _Pause:
            sleep(step.seconds)
        elif type(step) is _Gone:
            reply = _wait_gone_sync(client, step, sleep)
        else:
            reply = clock()


def _wait_gone_sync(client, step: _Gone, sleep: Callable[[float], None]) -> bool:
    from .wsclient import StreamError
    stream = client.watch(step.key, start=step.revision + 1, idle_s=step.max_s)
    try:
        for event in stream:
            if event is None:                 # max_s without an event
                return False
            if event["type"] == "delete":
                return True
    except (StreamError, ClientError, OSError):
        sleep(min(step.poll_s, step.max_s))
    finally:
        stream.close()
    return False


def _run_twisted(client, steps: Steps):
    """A Deferred firing with the recipe's result (the client's reactor times pauses)."""
    from twisted.internet import defer, task

    reactor = client.reactor

    async def drive():
        reply, error = None, None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if type(step) is _Call:
                try:
                    reply = await getattr(client, step.method)(*step.args, **step.kwargs)
                except ClientError as exc:
                    error = exc
            elif type(step) is _Pause:
                await task.deferLater(reactor, step.seconds, lambda: None)
            elif type(step) is _Gone:
                reply = await _wait_gone_twisted(client, step)
            else:
                reply = reactor.seconds()
    return defer.Deferred.fromCoroutine(drive())


async def _wait_gone_twisted(client, step: _Gone) -> bool:
    from twisted.internet import task

    from .wsclient import StreamError
    reactor = client.reactor
    stream = client.watch(step.key, start=step.revision + 1)
    timer = reactor.callLater(step.max_s, stream.cancel)     # ends the iteration below
    try:
        async for event in stream:
            if event["type"] == "delete":
                return True
    except (StreamError, ClientError, OSError):
        await task.deferLater(reactor, min(step.poll_s, step.max_s), lambda: None)
    finally:
        if timer.active():
            timer.cancel()
        stream.cancel()
    return False


# ====================================================================== the recipes

class _Queue:
    """A lock or a campaign: our place in the queue of ``prefix``."""

    def __init__(self, client, prefix: str, name: str, ttl_ms: int, poll_s: float) -> None:
        if not name or "/" in name:
            # "a" and "a/b" would share the queue prefix "locks/a/"
            raise ValueError(f"a lock or election name must be non-empty and without '/': "
                             f"{name!r}")
        if ttl_ms < 300:
            raise ValueError("ttl_ms must be at least 300 (keep-alives go every ttl/3)")
        self.client = client
        self.prefix = f"{prefix}{name}/"
        self.ttl_ms = ttl_ms
        self.poll_s = poll_s
        self.lease: int | None = None
        self.key: str | None = None
        self.revision: int | None = None

    def _acquired(self, result: tuple) -> int:
        self.lease, self.key, self.revision = result
        return self.revision

    def _released(self, result=None):
        self.lease = self.key = self.revision = None
        return result


class Lock(_Queue):
    """A fair distributed lock on a ``SyncClient``::

        lock = Lock(client, "backup", ttl_ms=10_000)
        token = lock.acquire(timeout_s=30)     # the fencing token
        ...                                    # call lock.keepalive() at least every ttl/3
        lock.release()

    ``clock`` and ``sleep`` are injectable (a test or simulator drives them)."""

    def __init__(self, client, name: str, *, ttl_ms: int = 10_000, prefix: str = "locks/",
                 poll_s: float = 0.05, value: object = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(client, prefix, name, ttl_ms, poll_s)
        self.value = value if value is not None else {"client": client.client_id}
        self.clock, self.sleep = clock, sleep

    @property
    def token(self) -> int | None:
        """The fencing token while held: the revision the lock was acquired at, times
        2**32, plus the lease id (unique even when two holders' keys were created by one
        log entry)."""
        return self.revision

    def _run(self, steps: Steps):
        return _run_sync(self.client, steps, self.clock, self.sleep)

    def acquire(self, timeout_s: float | None = None) -> int:
        """Wait for the lock (``LockTimeout`` after ``timeout_s``); the fencing token."""
        return self._acquired(self._run(_acquire(self.prefix, self.ttl_ms, self.value,
                                                 timeout_s, self.poll_s)))

    def keepalive(self) -> int:
        """Renew the lease; the remaining ms.  ``LockLost`` when it had expired."""
        return self._run(_keepalive(self.lease))["remaining_ms"]

    def release(self) -> None:
        if self.lease is not None:
            self._run(_revoke(self.lease))
        self._released()

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class TwistedLock(_Queue):
    """The same lock on the Twisted ``Client``: every method returns a Deferred, and a
    held lock is kept alive by a LoopingCall on the client's reactor.  ``on_lost`` is
    called if a renewal finds the lease gone, or when no renewal succeeded for a whole
    TTL (the lease may have run out).  ``renewed_sent``: ``clock()`` when the last
    acknowledged renewal was sent (before the first: when ``acquire`` was called), so
    the lease holds at least until ``renewed_sent + TTL x (1 - drift bound)``."""

    def __init__(self, client, name: str, *, ttl_ms: int = 10_000, prefix: str = "locks/",
                 poll_s: float = 0.05, value: object = None,
                 on_lost: Callable[[LockLost], None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(client, prefix, name, ttl_ms, poll_s)
        self.value = value if value is not None else {"client": client.client_id}
        self.on_lost = on_lost
        self.clock = clock or client.reactor.seconds
        self.renewed_sent: float | None = None
        self.renewals_sent: list[tuple[float, bool]] = []   # (sent, acknowledged)
        self._renewer = None

    @property
    def token(self) -> int | None:
        return self.revision

    def acquire(self, timeout_s: float | None = None):
        called = self.renewed_sent = self.clock()
        d = _run_twisted(self.client, _acquire(self.prefix, self.ttl_ms, self.value,
                                               timeout_s, self.poll_s))

        def acquired(token: int) -> int:
            # While it waited in line the lease was renewed every third of a TTL, the
            # last time at most that long ago (or the grant, after ``called``).
            self.renewed_sent = max(called, self.clock() - self.ttl_ms / 3000.0)
            return token
        return d.addCallback(self._acquired).addCallback(acquired) \
            .addCallback(self._start_renewing)

    def _start_renewing(self, token: int) -> int:
        from twisted.internet import task
        self._renewer = task.LoopingCall(self._renew)
        self._renewer.clock = self.client.reactor
        self._renewer.start(self.ttl_ms / 3000.0, now=False).addErrback(lambda f: None)
        return token

    def _renew(self):
        sent = self.clock()
        d = _run_twisted(self.client, _keepalive(self.lease))
        # A renewal that hangs (a cluster that does not answer) fails only at the client's
        # timeout, and the LoopingCall waits for it: the watchdog says "lost" when the
        # lease may run out instead.
        watchdog = self.client.reactor.callLater(
            max(0.0, self.renewed_sent + self.ttl_ms / 1000.0 - sent), self._check_expiry)

        def renewed(result):
            self.renewals_sent.append((sent, True))
            self.renewed_sent = max(self.renewed_sent, sent)
            if watchdog.active():
                watchdog.cancel()

        def failed(failure):
            self.renewals_sent.append((sent, False))
            if watchdog.active():
                watchdog.cancel()
            if self._renewer is None:
                return                      # already lost (the watchdog) or released
            if failure.check(LockLost):
                self._lost(failure.value)
            elif self.clock() - self.renewed_sent >= self.ttl_ms / 1000.0:
                self._lost(LockLost(f"no renewal of lease {self.lease} succeeded for a "
                                    f"whole TTL: {failure.getErrorMessage()}"))
            # else: the next renewal tries again
        return d.addCallbacks(renewed, failed)

    def _check_expiry(self) -> None:
        if self._renewer is not None and \
                self.clock() - self.renewed_sent >= self.ttl_ms / 1000.0:
            self._lost(LockLost(f"no renewal of lease {self.lease} was acknowledged for a "
                                f"whole TTL"))

    def _lost(self, exc: LockLost) -> None:
        self._stop_renewing()
        if self.on_lost is not None:
            self.on_lost(exc)

    def _stop_renewing(self) -> None:
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        self._renewer = None

    def release(self):
        from twisted.internet import defer
        self._stop_renewing()
        if self.lease is None:
            return defer.succeed(None)
        return _run_twisted(self.client, _revoke(self.lease)).addCallback(self._released)


class Election(_Queue):
    """Leader election on a ``SyncClient`` (etcd's concurrency.Election)::

        election = Election(client, "scheduler")
        election.campaign("host-a:8080")   # returns once we lead; keepalive() meanwhile
        election.leader()                  # {"key", "value", "create_index", ...} or None
        election.resign()
    """

    def __init__(self, client, name: str, *, ttl_ms: int = 10_000,
                 prefix: str = "elections/", poll_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(client, prefix, name, ttl_ms, poll_s)
        self.clock, self.sleep = clock, sleep

    def _run(self, steps: Steps):
        return _run_sync(self.client, steps, self.clock, self.sleep)

    def campaign(self, value: object, timeout_s: float | None = None) -> int:
        """Join the candidates with ``value``; returns once every earlier candidate is
        gone, with our token (as the lock's: increasing from one leader to the next)."""
        return self._acquired(self._run(_acquire(self.prefix, self.ttl_ms, value, timeout_s,
                                                 self.poll_s)))

    def keepalive(self) -> int:
        return self._run(_keepalive(self.lease))["remaining_ms"]

    def leader(self) -> dict | None:
        """The current leader's record (its ``value``), or None without candidates."""
        return self._run(_leader(self.prefix))

    def observe(self, on_change: Callable[[dict | None], bool], timeout_s: float | None = None):
        """Call ``on_change(leader record or None)`` on every change of leader (polling),
        until it returns False or ``timeout_s`` passes."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        last = ...
        while deadline is None or self.clock() < deadline:
            current = self.leader()
            ident = (current["key"], current["mod_index"]) if current else None
            if ident != last:
                last = ident
                if on_change(current) is False:
                    return
            self.sleep(self.poll_s)

    def resign(self) -> None:
        if self.lease is not None:
            self._run(_revoke(self.lease))
        self._released()
