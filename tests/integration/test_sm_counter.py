"""The generic state machine endpoint (POST/GET /api/v1/sm/<name>) and the ``counter``
built-in on a real 3-node cluster: writes through the shared log next to kv, reads through
read_index, clear 400/404 errors, the CLI ``paxoslog sm``, and a snapshot holding every
state machine's state."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from paxoslog_integration import ROOT, wait_for

ENABLE = '\n[state_machines]\nenabled = ["kv", "counter"]\n'


def sm(c, node, name, body, method="POST"):
    return c.request(node, method, f"/api/v1/sm/{name}", body)


@pytest.fixture
def counters(make_cluster, protocol):
    return make_cluster(protocol, extra=ENABLE)


def test_counter_over_http_shares_the_log_with_kv(counters):
    """add/reset return the new value, on any node; kv writes interleave in one log; a read
    (op get, {"query"}, or GET with params) is linearizable on every node."""
    c = counters
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    # membership is always on: it is the address book of nodes added later
    assert c.status(follower)["state_machines"] == ["counter", "kv", "membership"]
    r = sm(c, follower, "counter", {"op": "add", "name": "hits", "delta": 5})
    assert r.status == 200, r
    assert r.body["status"] == "committed" and r.body["result"] == {"name": "hits", "value": 5}
    first = r.body["index"]
    _, put = c.write("k", "v")
    r = sm(c, leader, "counter", {"op": "add", "name": "hits"})
    assert r.body["result"]["value"] == 6 and r.body["index"] > put["index"] > first
    for node in c.ids:
        got = sm(c, node, "counter", {"op": "get", "name": "hits"})
        assert got.status == 200 and got.body["result"] == {"name": "hits", "value": 6}, got
        assert got.body["index"] >= r.body["index"]
        q = sm(c, node, "counter", {"query": {"name": "hits"}})
        assert q.body["result"]["value"] == 6
        g = c.request(node, "GET", "/api/v1/sm/counter?name=hits")
        assert g.status == 200 and g.body["result"]["value"] == 6
    r = sm(c, follower, "counter", {"op": "reset", "name": "hits"})
    assert r.body["result"] == {"name": "hits", "value": 0}
    assert c.get(follower, "k").body["value"] == "v"
    # exactly once through the generic endpoint too
    body = {"op": "add", "name": "once", "delta": 3, "client_id": "it-c", "sequence": 1}
    a = sm(c, leader, "counter", body)
    b = sm(c, follower, "counter", body)
    assert a.body["result"]["value"] == b.body["result"]["value"] == 3
    assert a.body["index"] == b.body["index"]


@pytest.mark.parametrize("protocol", ["multipaxos"])
def test_generic_endpoint_errors_are_clear(counters):
    """404 for a state machine that is unknown or not enabled; 400 for unknown ops, bad
    fields, bad reads; an apply-time failure (overflow) is a 400 error result with the
    index it was committed at, identical on every node, and the cluster goes on."""
    c = counters
    leader = c.wait_leader()
    r = sm(c, leader, "nosuch", {"op": "add"})
    assert r.status == 404 and r.body["error"] == "not_found"
    assert "nosuch" in r.body["message"] and "counter" in r.body["message"]
    cases = [
        ({"op": "incr", "name": "a"}, '"op" must be one of add, reset'),
        ({"name": "a"}, '"op" must be one of add, reset'),
        ({"op": 5}, '"op" must be a string'),
        ({"op": "add", "name": 7}, '"name" must be a string'),
        ({"op": "add", "name": "a", "delta": "x"}, '"delta"'),
        ({"op": "add", "name": "a", "bogus": 1}, "unknown field"),
        ({"query": "name"}, '"query" must be an object'),
        ({"query": {"name": "a"}, "extra": 1}, "unknown field"),
        ({"query": {"name": "a"}, "consistency": "eventual"}, '"consistency"'),
        ({"query": {"nom": "a"}}, "unknown field"),
        ({"op": "add", "name": "a", "consistency": "stale"}, "reads only"),
    ]
    for body, words in cases:
        r = sm(c, leader, "counter", body)
        assert r.status == 400 and r.body["error"] == "bad_request", (body, r)
        assert words in r.body["message"], (body, r)
    r = c.request(leader, "POST", "/api/v1/sm/counter", raw=b"[1]")
    assert r.status == 400
    r = c.request(leader, "PUT", "/api/v1/sm/counter", {"op": "add"})
    assert r.status == 405
    assert sm(c, leader, "kv", {"op": "put", "key": "", "value": 1}).status == 400
    assert sm(c, leader, "kv", {"op": "frob", "key": "a"}).status == 400
    assert sm(c, leader, "kv", {"key": "dflt", "value": 1}).status == 200   # op: put
    # apply-time error
    big = sm(c, leader, "counter", {"op": "add", "name": "big", "delta": (1 << 63) - 1})
    assert big.status == 200
    over = sm(c, leader, "counter", {"op": "add", "name": "big", "delta": 1})
    assert over.status == 400 and over.body["error"] == "bad_request", over
    assert "overflow" in over.body["message"] and over.body["index"] > big.body["index"]
    after = sm(c, leader, "counter", {"op": "add", "name": "big", "delta": -1})
    assert after.status == 200 and after.body["result"]["value"] == (1 << 63) - 2
    for node in c.ids:
        c.wait_applied(node, after.body["index"])
        got = sm(c, node, "counter", {"query": {"name": "big"}, "consistency": "stale"})
        assert got.body["result"]["value"] == (1 << 63) - 2


@pytest.mark.parametrize("protocol", ["raft"])
def test_snapshot_holds_every_state_machine(make_cluster, protocol):
    """With a tiny snapshot threshold, a node restarted from its snapshot (and one that
    was down and gets a snapshot from the leader) has both kv and counter state."""
    c = make_cluster(protocol, extra=ENABLE + "\n[snapshot]\nentries = 20\n")
    leader = c.wait_leader()
    lagging = next(n for n in c.ids if n != leader)
    c.kill(lagging)
    for i in range(60):
        c.write(f"k{i % 7}", i)
        r = sm(c, leader, "counter", {"op": "add", "name": f"n{i % 3}", "delta": i})
        assert r.status == 200, r
    expected = {f"n{j}": sum(i for i in range(60) if i % 3 == j) for j in range(3)}
    wait_for(lambda: c.status(leader)["snapshot_index"] > 0, what="a snapshot")
    c.stop(leader)
    c.start(leader)
    c.start(lagging)
    c.wait_leader()
    last = c.write("final", 1)[1]["index"]
    for node in c.ids:
        c.wait_applied(node, last)
        for name, value in expected.items():
            got = sm(c, node, "counter", {"query": {"name": name}, "consistency": "stale"})
            assert got.body["result"]["value"] == value, (node, got)
        assert c.get(node, "k6", "stale").body["value"] == 55


@pytest.mark.parametrize("protocol", ["multipaxos"])
def test_cli_sm_command(counters):
    """paxoslog sm NAME OP FIELD=VALUE: writes, reads (op get / query), JSON values, and
    exit codes for bad input (1) and unknown state machines (3)."""
    c = counters
    c.wait_leader()
    endpoints = ",".join(c.url(n) for n in c.ids)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "paxoslog.cli", "sm", "--endpoints",
                               endpoints, *args], capture_output=True, text=True, cwd=ROOT,
                              env=c.client_env(), timeout=60)

    out = cli("counter", "add", "name=hits", "delta=5")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"name": "hits", "value": 5}
    out = cli("counter", "add", "name=hits", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["result"]["value"] == 6
    out = cli("counter", "get", "name=hits")
    assert out.returncode == 0 and json.loads(out.stdout)["value"] == 6
    out = cli("counter", "query", "name=hits", "--consistency", "stale")
    assert out.returncode == 0 and json.loads(out.stdout)["value"] == 6
    out = cli("kv", "put", "key=a", 'value={"x": 1}')
    assert out.returncode == 0, out.stderr
    assert c.get(c.ids[0], "a").body["value"] == {"x": 1}
    out = cli("counter", "frob", "name=x")
    assert out.returncode == 1 and '"op" must be one of' in out.stderr
    out = cli("nosuch", "add")
    assert out.returncode == 3 and "nosuch" in out.stderr
    out = cli("counter", "add", "novalue")
    assert out.returncode == 2
