"""The attacker's findings of the security review, one test each: every request here once
ended or damaged a cluster; now each gets a clear error and the cluster keeps working."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_membership_table_is_not_writable_by_clients(make_cluster, protocol):
    """POST /api/v1/sm/membership {"op": "remove"} (which once marked members removed for
    good: two such requests ended a 3-node cluster) is refused with 404 on every node,
    never reaches the log, and the 'removed' member restarts and serves."""
    c = make_cluster(protocol)
    leader = c.wait_leader()
    victims = [n for n in c.ids if n != leader]
    _, first = c.write("before", 1)
    for n in c.ids:
        c.wait_applied(n, first["index"])
    before = c.status(leader)["commit_index"]
    for node in c.ids:
        for victim in victims:
            r = c.request(node, "POST", "/api/v1/sm/membership",
                          {"op": "remove", "node_id": victim})
            assert r.status == 404, r
            assert r.body["error"] == "not_found" and "internal" in r.body["message"], r
        r = c.request(node, "POST", "/api/v1/sm/membership",
                      {"op": "add", "node_id": 9, "address": "127.0.0.1:1"})
        assert r.status == 404, r
        r = c.request(node, "GET", "/api/v1/sm/membership?node_id=1&consistency=stale")
        assert r.status == 404, r
    assert c.status(leader)["commit_index"] == before, "a client reached the membership table"
    # The members are still members: each restarts on its data directory and serves.
    for victim in victims:
        c.kill(victim)
        c.start(victim)
        _, after = c.write("after", victim)
        c.wait_applied(victim, after["index"])
    r = c.request(leader, "GET", "/api/v1/cluster/members")
    assert r.status == 200
    assert all(row["status"] == "active" for row in r.body["members"]), r.body["members"]
