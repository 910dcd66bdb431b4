"""Inputs the API must bound before they reach the log or a response: numbers JSON cannot
carry back, prefix reads whose answer would be too large, and a status view too expensive
for the event loop."""

from __future__ import annotations

import json

import pytest


def _strict(raw: bytes):
    """Parse JSON as a strict parser would: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(raw, parse_constant=refuse)


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_non_finite_numbers_are_refused_at_the_edge(make_cluster, protocol):
    """1e400 (parsed as infinity, stored and served back as invalid JSON) and NaN or
    Infinity literals are refused with 400 through every write and read body; nothing is
    stored, and a large finite number round-trips as valid JSON."""
    c = make_cluster(protocol)
    node = c.ids[1]
    for raw in (b'{"key": "inf", "value": 1e400}',
                b'{"key": "inf", "value": [1, {"a": -1e400}]}',
                b'{"key": "inf", "value": NaN}',
                b'{"key": "inf", "value": Infinity}'):
        r = c.request(node, "POST", "/api/v1/consensus/propose", raw=raw)
        assert r.status == 400 and r.body["error"] == "bad_request", (raw, r)
    r = c.request(node, "POST", "/api/v1/consensus/propose", raw=b'{"key": "inf", '
                                                               b'"value": 1e400}')
    assert "out of range" in r.body["message"] and "finite" in r.body["message"], r
    r = c.request(node, "POST", "/api/v1/sm/kv", raw=b'{"op": "put", "key": "inf", '
                                                   b'"value": 2e999}')
    assert r.status == 400, r
    r = c.request(node, "POST", "/api/v1/sm/kv", raw=b'{"query": {"key": "inf"}, '
                                                   b'"x": 1e400}')
    assert r.status == 400, r
    c.write("probe", 1)
    assert c.get(node, "inf").status == 404, "a non-finite number reached the log"
    c.write("big", 1.5e308)
    conn = c.connection(node)
    try:
        conn.request("GET", "/api/v1/consensus/query?key=big")
        response = conn.getresponse()
        assert _strict(response.read())["value"] == 1.5e308
    finally:
        conn.close()
