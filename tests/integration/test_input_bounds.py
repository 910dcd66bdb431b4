"""Inputs the API must bound before they reach the log or a response: numbers JSON cannot
carry back, prefix reads whose answer would be too large, and a status view too expensive
for the event loop."""

from __future__ import annotations

import json
import select
import ssl
import time

import pytest

from paxoslog_integration import wait_for


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


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_a_lone_surrogate_is_refused_at_the_edge_and_logs_nothing(make_cluster, protocol):
    """JSON may escape half of a UTF-16 pair ("\\ud800"); Python decodes it to a string
    no UTF-8 encoder takes.  Every write body that holds one gets 400 (it was a 500 and a
    traceback in the log per request), nothing is stored, and a proper pair (an emoji)
    round-trips."""
    c = make_cluster(protocol)
    node = c.ids[1]
    for path, raw in (("/api/v1/consensus/propose", b'{"key": "s", "value": "\\ud800"}'),
                      ("/api/v1/consensus/propose", b'{"key": "\\uDFFF", "value": 1}'),
                      ("/api/v1/consensus/batch",
                       b'{"ops": [{"op": "put", "key": "s", "value": {"\\ud800": 1}}]}'),
                      ("/api/v1/consensus/txn",
                       b'{"compare": [], "success": [{"op": "put", "key": "s", '
                       b'"value": ["\\udc00"]}]}'),
                      ("/api/v1/sm/kv", b'{"op": "put", "key": "s", "value": "\\ud800"}'),
                      ("/api/v1/sm/kv", b'{"query": {"key": "\\ud800"}}')):
        r = c.request(node, "POST", path, raw=raw)
        assert r.status == 400 and r.body["error"] == "bad_request", (path, raw, r)
        assert "lone UTF-16 surrogate" in r.body["message"], r
    c.write("emoji", "\U0001f600")
    assert c.get(node, "emoji").body["value"] == "\U0001f600"
    assert c.get(node, "s").status == 404, "a lone surrogate reached the log"
    for member in c.ids:
        with open(c.log_path(member), errors="replace") as f:
            assert "Traceback" not in f.read(), f"node {member} logged a traceback"


def test_prefix_reads_are_cut_by_bytes_with_more(make_cluster):
    """With query_result_bytes_max = 16 KiB, a prefix read over 40 values of 1 KB returns
    the first ~15 records and more: true (the row limit alone returned all 40); a single
    key is never cut; the sm/kv query path is bounded the same way."""
    c = make_cluster("multipaxos", extra="\n[limits]\nquery_result_bytes_max = 16384\n")
    for i in range(40):
        c.write(f"p/{i:02d}", "v" * 1000)
    leader = c.wait_leader()
    r = c.request(leader, "GET", "/api/v1/consensus/query?prefix=p/&limit=100")
    assert r.status == 200, r
    kvs = r.body["kvs"]
    assert r.body["more"] is True and 10 <= len(kvs) < 20, (len(kvs), r.body["more"])
    assert [kv["key"] for kv in kvs] == [f"p/{i:02d}" for i in range(len(kvs))]
    assert len(json.dumps(r.body)) < 16384 + 2048
    r = c.request(leader, "POST", "/api/v1/sm/kv", {"query": {"prefix": "p/", "limit": 100}})
    assert r.status == 200 and r.body["result"]["more"] is True, r
    assert len(r.body["result"]["kvs"]) == len(kvs)
    r = c.request(leader, "GET", "/api/v1/consensus/query?prefix=p/3&limit=100")
    assert r.body["more"] is False and len(r.body["kvs"]) == 10
    assert c.get(leader, "p/07").body["value"] == "v" * 1000


def test_status_hashes_are_computed_off_the_event_loop(make_cluster):
    """GET /cluster/status?hashes=1 over ~90 MB of state (hundreds of ms of hashing, which
    ran on the event loop) does not hold up a /health asked for right after it on another
    connection; the digests equal the nodes' and each other's."""
    c = make_cluster("raft", extra="\n[snapshot]\nentries = 100000\n"
                                   "bytes = 1073741824\n")
    for i in range(100):
        c.write(f"h/{i:03d}", f"{i:03d}" + "x" * 900_000, timeout=30)
    leader = c.wait_leader()
    _, last = c.write("h/last", 1)
    for node in c.ids:
        c.wait_applied(node, last["index"], timeout=30)
    node = c.ids[0]
    slow = c.raw_socket(node, timeout=30)
    fast = c.raw_socket(node, timeout=30)
    with slow, fast:
        order = []
        host = c.host_header(node)      # a Host that names the node (the Host check)
        slow.sendall(b"GET /api/v1/cluster/status?hashes=1 HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        fast.sendall(b"GET /health HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        deadline = time.monotonic() + 30
        pending = {slow: "status", fast: "health"}
        for s in pending:
            s.setblocking(False)
        while pending and time.monotonic() < deadline:
            readable, _, _ = select.select(list(pending), [], [], 1)
            for s in readable:
                try:
                    data = s.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue        # TLS records that carry no data (session tickets)
                if data:
                    order.append(pending.pop(s))
        assert order == ["health", "status"], order
    digests = {n: c.request(n, "GET", "/api/v1/cluster/status?hashes=1").body
               for n in c.ids}
    assert all(d["applied_index"] == last["index"] for d in digests.values())
    assert len({json.dumps(d["state_hashes"], sort_keys=True) for d in digests.values()}) == 1
    assert set(digests[node]["state_hashes"]) >= {"kv", "~sessions"}
    wait_for(lambda: c.request(leader, "GET", "/health").status == 200)
