"""Leases in the node driver: the leader's keeper (paxoslog/node/leases.py) promotes,
renews, and expires through the log, on the ticks it is given; revisions on reads."""

from __future__ import annotations

import pytest

from paxoslog.node.instructions import Reply
from paxoslog.node.leases import LeaseKeeper
from test_driver import PROTOCOLS, leader, settle


def _write(d, fields: dict, seq: int) -> dict:
    data = d.machines.encode_write("kv", fields, "c1", seq, ts=1000)
    out = d.submit_write(("w", seq), ("c1", seq), data) + settle(d)
    replies = [op for op in out if type(op) is Reply]
    assert len(replies) == 1 and replies[0].status == 200, replies
    return replies[0].body["result"]


def _read(d, query: dict, consistency: str = "linearizable") -> Reply:
    out = d.submit_read("r", query, consistency) + settle(d)
    for _ in range(10):
        replies = [op for op in out if type(op) is Reply]
        if replies:
            assert len(replies) == 1
            return replies[0]
        out = d.tick() + settle(d)
    raise AssertionError("no answer")


def _tick(d, count: int) -> None:
    for _ in range(count):
        d.tick()
        settle(d)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_lease_lives_while_kept_alive_and_its_keys_go_once_it_runs_out(protocol):
    """Promote, keep-alives without log entries, then expiry proposed by the leader."""
    d = leader(protocol)
    lease = _write(d, {"op": "lease_grant", "ttl_ms": 100}, 1)["id"]
    _write(d, {"op": "put", "key": "k", "value": 1, "lease": lease}, 2)
    _tick(d, 1)                                   # the keeper has the promote proposed
    assert d.leases.active_term == d._leadership()
    assert d.stats["lease_promotions_proposed"] == 1
    # TTL 100 ms = 10 ticks (+1), and the new leader's extension of 20 ticks.
    assert d.leases.remaining(lease, d.now) == 31
    applied = d.applied_index
    for _ in range(10):                            # 50 ticks, kept alive every 5
        _tick(d, 5)
        reply = _read(d, {"lease": {"op": "keepalive", "id": lease}})
        assert reply.status == 200 and reply.body["remaining_ms"] == 110, reply
    assert d.applied_index == applied               # keep-alives wrote nothing
    assert d.machines.kv.get("k") is not None
    _tick(d, 10)
    assert d.machines.kv.get("k") is not None       # 10 ticks after the last keep-alive
    _tick(d, 1)
    assert d.machines.kv.get("k") is None and len(d.machines.kv.leases) == 0
    assert d.stats["lease_expiries_proposed"] == 1
    reply = _read(d, {"lease": {"op": "keepalive", "id": lease}})
    assert reply.status == 404 and reply.body["error"] == "lease_not_found"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ttl_query_and_revoke(protocol):
    """The TTL query reports the leader's remaining time and the keys; revoke deletes."""
    d = leader(protocol)
    lease = _write(d, {"op": "lease_grant", "ttl_ms": 1000}, 1)["id"]
    _write(d, {"op": "put", "key": "a", "value": 1, "lease": lease}, 2)
    reply = _read(d, {"lease": {"op": "ttl", "id": lease, "keys_max": 10}})
    assert reply.status == 200
    assert reply.body["keys"] == ["a"] and reply.body["ttl_ms"] == 1000
    assert 0 < reply.body["remaining_ms"] <= 1010 + 20 * 10
    assert _write(d, {"op": "lease_revoke", "id": lease}, 3)["deleted"] == 1
    assert d.machines.kv.get("a") is None
    bad = _read(d, {"lease": {"op": "renew", "id": lease}})
    assert bad.status == 400


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_min_revision_refuses_a_read_below_it(protocol):
    """A read asking for a revision this node has not applied is refused with 503;
    ``future`` when it was served at a confirmed read point (no node has the revision)."""
    d = leader(protocol)
    _write(d, {"op": "put", "key": "a", "value": 1}, 1)
    applied = d.applied_index
    ok = _read(d, {"key": "a", "min_revision": applied}, "stale")
    assert ok.status == 200 and ok.body["index"] == applied
    refused = _read(d, {"key": "a", "min_revision": applied + 5}, "stale")
    assert refused.status == 503 and refused.body["error"] == "revision_not_reached"
    assert refused.body["applied_index"] == applied and refused.body["future"] is False
    future = _read(d, {"key": "a", "min_revision": applied + 5})     # at a read point
    assert future.status == 503 and future.body["error"] == "revision_not_reached"
    assert future.body["future"] is True and "future revision" in future.body["message"]


def test_a_new_leader_extends_every_lease_by_an_election_timeout():
    """activate() gives each lease its TTL plus one election timeout from then on."""
    keeper = LeaseKeeper(tick_ms=10.0, election_ticks=20)
    keeper.activate(term=3, now=100, leases={7: 100, 9: 1000})
    assert keeper.remaining(7, 100) == 11 + 20 and keeper.remaining(9, 100) == 101 + 20
    assert keeper.due(130) == []
    assert keeper.due(131) == [7]
    assert keeper.keepalive(7, 131) is None          # run out: no renewal
    assert keeper.due(140) == []                     # its expiry is in flight
    assert keeper.due(151) == [7]                    # re-proposed an election timeout later
    keeper.removed([7])
    assert keeper.keepalive(9, 200) == 101 and keeper.remaining(9, 250) == 51
    keeper.deactivate()
    assert keeper.remaining(9, 250) is None and keeper.due(10_000) == []


def test_expiry_batches_are_bounded():
    """At most expire_batch_max leases per proposal; the rest on the next tick."""
    keeper = LeaseKeeper(tick_ms=10.0, election_ticks=5, expire_batch_max=3)
    keeper.activate(term=1, now=0, leases={i: 10 for i in range(1, 8)})
    assert keeper.due(100) == [1, 2, 3]
    assert keeper.due(100) == [4, 5, 6]
    assert keeper.due(100) == [7]
