"""The lock recipe's algorithm (paxoslog/recipes.py) against a real kv state machine in
process: keys created by one log entry share their create_index, and the line breaks the
tie by key, so exactly one waiter holds and tokens stay unique and increasing."""

from __future__ import annotations

import pytest

from paxoslog.client import NotFound
from paxoslog.recipes import Lock, LockTimeout, _queue, _run_sync
from statemachines.kv import KVStateMachine


class KVClient:
    """The client calls the recipe makes, applied to one kv state machine; ``batch``
    makes the next writes land in one log entry (one index)."""

    client_id = "test"

    def __init__(self, kv: KVStateMachine) -> None:
        self.kv = kv
        self.index = 0
        self.batch = False
        self.watches: list = []
        self.clock = Clock()

    def _apply(self, fields: dict) -> dict:
        if not self.batch or self.index == 0:
            self.index += 1
        result = self.kv.apply(self.index, self.kv.validate(fields))
        if "error" in result:
            raise NotFound(result["message"], 404, result["error"], result)
        return {"index": self.index, "result": result}

    def lease_grant(self, ttl_ms):
        return self._apply({"op": "lease_grant", "ttl_ms": ttl_ms})

    def lease_revoke(self, lease):
        return self._apply({"op": "lease_revoke", "id": lease})

    def lease_keepalive(self, lease):
        if lease not in self.kv.leases:
            raise NotFound("gone", 404, "lease_not_found")
        return {"remaining_ms": 1000}

    def txn(self, compare, success, failure=()):
        return self._apply({"op": "txn", "compare": compare, "success": success,
                            "failure": list(failure)})

    page_limit = 1000

    def range(self, prefix, limit=None, after=None):
        request = {"prefix": prefix, "limit": min(limit or 1000, self.page_limit)}
        if after is not None:
            request["after"] = after
        return self.kv.query(request)

    def get(self, key):
        found = self.kv.get(key)
        if found is None:
            raise NotFound("absent", 404, "not_found")
        return {**found, "index": self.index}

    def watch(self, key, *, start, idle_s):
        """The key's delete once it is gone, else an idle tick (the watch gave up waiting:
        the recipe renews its lease and watches again)."""
        self.watches.append((key, start, idle_s))
        if self.kv.get(key) is None:
            yield {"type": "delete", "key": key, "mod_index": self.index}
        else:
            self.clock.sleep(idle_s)          # nothing happened for idle_s
            yield None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _lock(client: KVClient, clock: Clock) -> Lock:
    client.clock = clock
    return Lock(client, "job", ttl_ms=1000, clock=lambda: clock.now, sleep=clock.sleep)


def test_keys_created_in_one_entry_queue_by_key_and_tokens_are_unique():
    """Two waiters whose keys share a create_index: the first by key holds; the other
    times out, then holds after the release with a larger token."""
    kv, clock = KVStateMachine(), Clock()
    client = KVClient(kv)
    client.batch = True                      # grants and creations all in entry 1
    first, second = _lock(client, clock), _lock(client, clock)
    token = first.acquire(timeout_s=1)
    assert token == (1 << 32) | first.lease          # created at revision 1, then the lease
    with pytest.raises(LockTimeout):
        second.acquire(timeout_s=0.5)        # same create_index, later key: must wait
    assert [kv_["create_index"] for kv_ in kv.query({"prefix": "locks/job/"})["kvs"]] == [1]
    client.batch = False
    waiting = _lock(client, clock)
    first.release()
    later = waiting.acquire(timeout_s=1)
    assert later > token


def test_names_with_a_slash_are_refused():
    """'a' and 'a/b' would share a queue: such names are refused."""
    with pytest.raises(ValueError):
        Lock(KVClient(KVStateMachine()), "a/b")


def test_a_waiter_watches_its_predecessor_and_renews_between_watches():
    """Waiting is a watch of the key just before ours, from the revision it was seen at,
    bounded so the lease is renewed every third of the TTL; the release wakes the waiter."""
    kv, clock = KVStateMachine(), Clock()
    client = KVClient(kv)
    holder, waiter = _lock(client, clock), _lock(client, clock)
    holder.acquire(timeout_s=1)
    with pytest.raises(LockTimeout):
        waiter.acquire(timeout_s=1.0)
    predecessor = f"locks/job/{holder.lease:020d}"
    assert client.watches and all(key == predecessor for key, _, _ in client.watches)
    assert all(start == client.watches[0][1] and 0 <= idle <= 1000 / 3000.0
               for _, start, idle in client.watches)
    holder.release()
    assert waiter.acquire(timeout_s=1) > 0



def test_the_line_is_read_from_every_page():
    """A page of the queue is in key (lease) order and may be cut short (by count, or by
    the node's result bytes when values are large).  Here the oldest key, the holder's,
    has the largest lease, so it is on the last page: a waiter that read one page saw
    nobody before it and took the lock too (found by a review)."""
    client = KVClient(KVStateMachine())
    client.page_limit = 2
    leases = [client.lease_grant(1000)["result"]["id"] for _ in range(3)]
    for lease in (leases[2], leases[0], leases[1]):   # the largest lease's key first
        client.txn([], [{"op": "put", "key": f"q/{lease:020d}", "value": "v",
                         "lease": lease}])
    assert client.range("q/", 1000)["more"]           # one page does not hold the line
    line = _run_sync(client, _queue("q/"), lambda: 0.0, lambda s: None)
    assert [kv["key"] for kv in line] == [f"q/{leases[i]:020d}" for i in (2, 0, 1)]
