"""Bad commands for each built-in state machine over HTTP get clear 400s (never reaching
the log: the commit index does not move), and the cluster keeps working."""

from __future__ import annotations

import pytest

KV_BAD = [
    ({"op": "frob", "key": "a", "value": 1}, '"op" must be one of put, delete, cas'),
    ({"op": "put", "value": 1}, '"key" must be a string'),
    ({"op": "put", "key": "", "value": 1}, "must not be empty"),
    ({"op": "put", "key": 3, "value": 1}, '"key" must be a string'),
    ({"op": "put", "key": "a"}, "non-null"),
    ({"op": "put", "key": "a", "value": None}, "non-null"),
    ({"op": "cas", "key": "a", "value": 1}, "exactly one"),
    ({"op": "cas", "key": "a", "value": 1, "expected_version": -1}, "non-negative"),
    ({"op": "put", "key": "k" * 5000, "value": 1}, "longer than"),
    ({"query": {"key": ""}}, "must not be empty"),
    ({"query": {"prefix": 5}}, '"prefix" must be a string'),
    ({"query": {"prefix": "a", "limit": 0}}, '"limit"'),
    ({"client_id": "c", "op": "put", "key": "a", "value": 1}, '"client_id" and "sequence"'),
]
COUNTER_BAD = [
    ({"op": "increment", "name": "a"}, '"op" must be one of add, reset'),
    ({"op": "add"}, '"name" must be a string'),
    ({"op": "add", "name": "a", "delta": 0.5}, '"delta" must be a 64-bit integer'),
    ({"op": "add", "name": "a", "delta": 1 << 64}, '"delta" must be a 64-bit integer'),
    ({"op": "reset", "name": "a", "delta": 2}, "unknown field"),
    ({"op": "get"}, '"name" must be a string'),
    ({"query": {"name": "a", "x": 1}}, "unknown field"),
    ({"op": "add", "name": "a", "sequence": -1, "client_id": "c"}, '"sequence"'),
]


@pytest.mark.parametrize("protocol", ["multipaxos"])
def test_bad_commands_for_each_state_machine(make_cluster, protocol):
    c = make_cluster(protocol,
                     extra='\n[state_machines]\nenabled = ["kv", "counter", "membership"]\n')
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    _, first = c.write("ok", 1)
    c.wait_applied(follower, first["index"])
    before = c.status(leader)["commit_index"]
    for name, cases in (("kv", KV_BAD), ("counter", COUNTER_BAD)):
        for body, words in cases:
            for node in (leader, follower):
                r = c.request(node, "POST", f"/api/v1/sm/{name}", body)
                assert r.status == 400, (name, body, r)
                assert r.body["error"] == "bad_request", (name, body, r)
                assert words in r.body["message"], (name, body, r)
    for raw in (b"", b"{", b"[]", b'"x"', b'{"op": NaN}'):
        r = c.request(leader, "POST", "/api/v1/sm/counter", raw=raw)
        assert r.status == 400, (raw, r)
    _, last = c.write("ok", 2)
    assert last["index"] > before
    assert c.unexpected_commands(leader, before, {"ok"}) == [], "a bad command reached the log"
    r = c.request(follower, "POST", "/api/v1/sm/counter", {"op": "add", "name": "a"})
    assert r.status == 200 and r.body["result"]["value"] == 1
