"""Read modes of GET /api/v1/consensus/query (and the generic sm reads): linearizable
(default, ReadIndex), stale (any node, local state, with its applied index and how long
since it heard from a leader) and lease (answered from the leader lease, with the node's
clock caught up after a pause: a leader resumed from SIGSTOP must not serve from a lease
that ran out while it was stopped)."""

from __future__ import annotations

import http.client
import json
import re
import time

import pytest

from paxoslog_integration import wait_for

LEASE = "lease_ticks = 10\n"      # election_ticks 15, drift margin 1 (default): lease <= 14


def metric(c, node, name) -> int:
    text = c.request(node, "GET", "/metrics").body.decode()
    found = re.search(rf"^{name} (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def test_linearizable_is_the_default_and_sees_every_acknowledged_write(cluster):
    c = cluster
    leader = c.wait_leader()
    for i in range(5):
        _, body = c.write("x", i, nodes=[leader])
        for node in c.ids:
            r = c.get(node, "x")                         # no consistency: linearizable
            assert r.status == 200 and r.body["value"] == i, r
            assert r.body["index"] >= body["index"] and "stale" not in r.body
            r = c.get(node, "x", "linearizable")
            assert r.body["value"] == i
    r = c.get(leader, "x", "eventual")
    assert r.status == 400 and "consistency" in r.body["message"]


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_stale_reads_report_applied_index_and_time_since_leader(make_cluster, protocol):
    """Stale reads answer on any node at once, with the node's applied index and the ms
    since it heard from a leader; alone (no leader) a node still answers, and that age
    grows."""
    c = make_cluster(protocol)
    leader = c.wait_leader()
    _, body = c.write("s", "one")
    for node in c.ids:
        c.wait_applied(node, body["index"])
        r = c.get(node, "s", "stale")
        assert r.status == 200 and r.body["value"] == "one", r
        assert r.body["stale"] is True and r.body["node"] == node
        assert r.body["applied_index"] >= body["index"] and r.body["index"] >= body["index"]
        assert isinstance(r.body["ms_since_leader"], int)
        if node == leader:
            assert r.body["ms_since_leader"] == 0
        else:
            assert 0 <= r.body["ms_since_leader"] < 1000
    q = c.request(leader, "POST", "/api/v1/sm/kv", {"query": {"key": "s"},
                                                    "consistency": "stale"})
    assert q.status == 200 and q.body["result"]["value"] == "one"
    assert q.body["applied_index"] >= body["index"] and "ms_since_leader" in q.body
    alone = next(n for n in c.ids if n != leader)
    for n in c.ids:
        if n != alone:
            c.kill(n)
    time.sleep(0.6)
    first = c.get(alone, "s", "stale").body
    assert first["value"] == "one" and first["ms_since_leader"] >= 400, first
    time.sleep(0.3)
    second = c.get(alone, "s", "stale").body
    assert second["ms_since_leader"] >= first["ms_since_leader"] + 200, (first, second)
    assert c.get(alone, "missing", "stale").status == 404


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_lease_reads_are_served_from_the_lease(make_cluster, protocol):
    """With lease_ticks > 0 the leader answers lease reads without a quorum round (counted
    in paxoslog_lease_reads_served_total); they see every acknowledged write; followers
    forward them."""
    c = make_cluster(protocol, extra=LEASE)
    leader = c.wait_leader()
    for i in range(5):
        c.write("l", i, nodes=[leader])
        r = c.get(leader, "l", "lease")
        assert r.status == 200 and r.body["value"] == i, r
    wait_for(lambda: c.get(leader, "l", "lease").status == 200
             and metric(c, leader, "paxoslog_lease_reads_served_total") > 0,
             what="a read served from the lease")
    follower = next(n for n in c.ids if n != leader)
    c.write("l", "last", nodes=[follower])
    assert c.get(follower, "l", "lease").body["value"] == "last"


@pytest.mark.parametrize("protocol", ["raft"])
def test_lease_reads_fall_back_when_the_lease_is_off(make_cluster, protocol):
    """Without lease_ticks a lease read is served like a linearizable one."""
    c = make_cluster(protocol)
    leader = c.wait_leader()
    c.write("z", 1)
    assert c.get(leader, "z", "lease").body["value"] == 1
    assert metric(c, leader, "paxoslog_lease_reads_served_total") == 0
    assert metric(c, leader, "paxoslog_lease_reads_total") >= 1


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_lease_read_after_sigstop_is_not_stale(make_cluster, protocol):
    """Pause the leader (SIGSTOP) past the election timeout, let the others elect a leader
    and overwrite a key, queue a lease read on the old leader while it is still stopped,
    then resume it: the answer must be the new value (its lease ran out while it was
    stopped; it catches up its ticks before looking at the lease)."""
    c = make_cluster(protocol, extra=LEASE)
    old = c.wait_leader()
    c.write("p", "before", nodes=[old])
    wait_for(lambda: c.get(old, "p", "lease").status == 200
             and metric(c, old, "paxoslog_lease_reads_served_total") > 0,
             what="lease reads on the old leader")
    conn = c.connection(old, timeout=10)
    conn.connect()             # before the pause: a TLS handshake needs the process
    c.pause(old)
    others = [n for n in c.ids if n != old]
    new = c.wait_leader(among=others, timeout=20)
    assert new != old
    _, body = c.write("p", "after", nodes=others)
    try:
        conn.request("GET", "/api/v1/consensus/query?key=p&consistency=lease")
        c.resume(old)
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, answer
    assert answer["value"] == "after", answer
    assert answer["index"] >= body["index"]
