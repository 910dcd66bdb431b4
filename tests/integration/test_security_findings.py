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
    c.write("probe", 1)
    rows = c.request(leader, "GET", "/api/v1/cluster/members").body["members"]
    assert all(row["status"] == "active" and row["node_id"] != 9 for row in rows), rows
    # The members are still members: each restarts on its data directory and serves.
    for victim in victims:
        c.kill(victim)
        c.start(victim)
        _, after = c.write("after", victim)
        c.wait_applied(victim, after["index"])
    r = c.request(leader, "GET", "/api/v1/cluster/members")
    assert r.status == 200
    assert all(row["status"] == "active" for row in r.body["members"]), r.body["members"]


def _nested(depth: int):
    value = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_deep_values_never_reach_a_snapshot(make_cluster, protocol):
    """A kv value nested 400 deep (once applied, then unreadable in every snapshot that
    held it: no replica could restart) is refused with 400 at the edge, on every node and
    through every write endpoint; a value at the documented limit survives snapshots and a
    restart of every node."""
    from paxoslog.config import LimitsConf
    from tests.integration.conftest import wait_for
    c = make_cluster(protocol, extra="\n[snapshot]\nentries = 20\n")
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    for node in (leader, follower):
        for depth in (400, 1000, LimitsConf.json_depth_max):
            raw = b'{"key": "deep", "value": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
            r = c.request(node, "POST", "/api/v1/consensus/propose", raw=raw)
            assert r.status == 400 and r.body["error"] == "bad_request", (depth, r)
            assert "nests deeper than" in r.body["message"], r
        r = c.request(node, "POST", "/api/v1/sm/kv",
                      {"op": "cas", "key": "deep", "value": 1, "expected": _nested(40)})
        assert r.status == 400 and "nests deeper than" in r.body["message"], r
    c.write("probe", 1)                                  # a linearizable read below
    assert c.get(leader, "deep").status == 404, "a deep value reached the log"
    ok = _nested(LimitsConf.json_depth_max - 1)         # the body object is one level
    _, wrote = c.write("deep", ok)
    for i in range(60):                                 # several snapshots hold it
        c.write(f"k{i}", i)
    wait_for(lambda: all((c.status(n) or {}).get("snapshot_index", 0) > wrote["index"]
                         for n in c.ids), 20, what="every node to snapshot past the value")
    for node in list(c.ids):
        c.kill(node)
    c.start_all()
    c.wait_leader(timeout=30)
    for node in c.ids:
        r = c.get(node, "deep", consistency="stale")
        assert r.status == 200 and r.body["value"] == ok, (node, r)
