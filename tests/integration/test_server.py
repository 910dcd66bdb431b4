"""A real 3-node cluster (separate processes on 127.0.0.1) in both protocol modes: the HTTP
API end to end, crashes (kill -9), pauses (SIGSTOP), restarts, snapshot catch-up, and bad
input.  Timings are small (tick 10 ms, election 150-300 ms); every wait polls with a
deadline."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

from paxoslog_integration import PROTOCOLS, ClusterHarness, wait_for


@pytest.fixture(scope="module", params=PROTOCOLS)
def shared(request, tmp_path_factory):
    """One cluster per protocol for the tests that leave it healthy."""
    harness = ClusterHarness(tmp_path_factory.mktemp(f"shared-{request.param}"), request.param)
    harness.start_all()
    try:
        harness.wait_leader()
        yield harness
    finally:
        harness.close(failed=request.session.testsfailed > 0)


# ====================================================================== the happy path

def test_writes_through_every_node_and_reads_after_write_on_followers(shared):
    """Each node accepts writes; a linearizable read on any node sees every acknowledged
    write at once, followers included; stale reads converge."""
    c = shared
    leader = c.wait_leader()
    indexes = []
    for node in c.ids:
        response = c.put(node, f"every-{node}", {"written_via": node})
        assert response.status == 200, response
        body = response.body
        assert body["status"] == "committed" and body["leader"] == leader
        assert body["result"]["op"] == "put" and body["result"]["version"] == 1
        indexes.append(body["index"])
        for reader in c.ids:                        # read-after-write through every node
            got = c.get(reader, f"every-{node}")
            assert got.status == 200, got
            assert got.body["value"] == {"written_via": node}
            assert got.body["index"] >= body["index"]
    assert indexes == sorted(indexes) and len(set(indexes)) == 3
    follower = next(n for n in c.ids if n != leader)
    for i in range(20):                             # back-to-back on one follower
        assert c.put(follower, "counter", i).status == 200
        assert c.get(follower, "counter").body["value"] == i
    for node in c.ids:
        stale = wait_for(lambda: (lambda r: r if r.status == 200 and r.body["value"] == 19
                                  else None)(c.get(node, "counter", "stale")),
                         what="stale read to converge")
        assert stale.body["stale"] is True and stale.body["node"] == node


def test_versions_cas_delete_and_prefix_reads(shared):
    """Versioned keys: create/mod index, version counting, cas by value and by version,
    delete, prefix range."""
    c = shared
    node = c.ids[-1]
    first = c.put(node, "ver/a", "one").body
    second = c.put(node, "ver/a", "two").body
    assert second["result"]["version"] == 2
    assert second["result"]["create_index"] == first["index"]
    assert second["result"]["mod_index"] == second["index"]
    failed = c.request(node, "POST", "/api/v1/consensus/propose",
                       {"op": "cas", "key": "ver/a", "value": "x", "expected": "one"})
    assert failed.status == 200 and failed.body["result"]["succeeded"] is False
    assert failed.body["result"]["current_version"] == 2
    swapped = c.request(node, "POST", "/api/v1/consensus/propose",
                        {"op": "cas", "key": "ver/a", "value": "three", "expected_version": 2})
    assert swapped.body["result"]["succeeded"] is True
    created = c.request(node, "POST", "/api/v1/consensus/propose",
                        {"op": "cas", "key": "ver/b", "value": 1, "expected": None})
    assert created.body["result"]["succeeded"] is True
    listing = c.request(node, "GET", "/api/v1/consensus/query?prefix=ver/")
    assert [kv["key"] for kv in listing.body["kvs"]] == ["ver/a", "ver/b"]
    deleted = c.request(node, "POST", "/api/v1/consensus/propose", {"op": "delete", "key": "ver/a"})
    assert deleted.body["result"] == {"op": "delete", "deleted": True, "version": 3}
    missing = c.get(c.ids[0], "ver/a")
    assert missing.status == 404 and missing.body["error"] == "not_found"
    again = c.request(node, "POST", "/api/v1/sm/kv", {"op": "put", "key": "ver/a", "value": 5})
    assert again.status == 200 and again.body["result"]["version"] == 1


def test_retry_with_same_client_id_and_sequence_applies_once(shared):
    """A write retried with the same (client_id, sequence), through another node, returns
    the original result and is not applied twice."""
    c = shared
    session = {"client_id": "it-client", "sequence": 7}
    first = c.put(c.ids[0], "once", "a", **session)
    second = c.put(c.ids[1], "once", "a", **session)
    assert first.status == second.status == 200
    assert second.body["index"] == first.body["index"]
    assert second.body["result"] == first.body["result"]
    assert c.get(c.ids[2], "once").body["version"] == 1


def test_status_log_entries_health_and_metrics(shared):
    """Cluster status, the log entries view, /health and Prometheus /metrics."""
    c = shared
    leader = c.wait_leader()
    _, written = c.write("entries-key", "v")
    assert c.status(leader)["commit_index"] >= written["index"]
    status = c.status(c.ids[0])
    assert status["leader"] == leader and status["cluster_size"] == 3
    assert status["protocol"] == c.protocol
    assert {n["id"] for n in status["nodes"]} == set(c.ids)
    assert all({"id", "role", "last_heartbeat", "match_index"} <= set(n) for n in status["nodes"])
    leader_view = c.status(leader)
    assert all(n["match_index"] is not None for n in leader_view["nodes"])
    index = written["index"]
    c.wait_applied(c.ids[1], index)
    entries = c.request(c.ids[1], "GET",
                        f"/api/v1/log/entries?start_index={index}&end_index={index}")
    assert entries.status == 200
    [entry] = entries.body["entries"]
    assert entry["index"] == index and entry["kind"] == "normal"
    assert entry["command"][0]["key"] == "entries-key" and "timestamp" in entry
    health = c.request(c.ids[2], "GET", "/health")
    assert health.status == 200 and health.body["status"] == "ok" and health.body["ready"]
    metrics = c.request(leader, "GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body.decode()
    for series in ("paxoslog_term ", 'paxoslog_role{role="leader"} 1', "paxoslog_commit_index ",
                   "paxoslog_applied_index ", "paxoslog_proposals_total ",
                   "paxoslog_commits_total ", "paxoslog_wal_fsync_duration_seconds_bucket{le=",
                   "paxoslog_peer_connected{peer="):
        assert series in text, series


# ====================================================================== bad input

def _raw(c: ClusterHarness, node: int, data: bytes, read_until_close: bool = True) -> bytes:
    with c.raw_socket(node) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def test_bad_input_gets_documented_errors_and_the_cluster_keeps_working(shared):
    """Malformed JSON, wrong types, missing fields, unknown paths, invalid index ranges:
    400/404/405 with {"error","message"}; nothing reaches the log."""
    c = shared
    node = c.ids[1]
    c.write("before-bad-input", 1)
    before = c.status(c.wait_leader())["commit_index"]
    propose = "/api/v1/consensus/propose"
    cases = [
        ("POST", propose, b"{not json", 400),
        ("POST", propose, b"", 400),
        ("POST", propose, b'["key", "value"]', 400),
        ("POST", propose, b'{"value": 1}', 400),
        ("POST", propose, b'{"key": 12, "value": 1}', 400),
        ("POST", propose, b'{"key": "", "value": 1}', 400),
        ("POST", propose, b'{"key": "k"}', 400),
        ("POST", propose, b'{"key": "k", "value": null}', 400),
        ("POST", propose, b'{"key": "k", "value": 1, "op": "increment"}', 400),
        ("POST", propose, b'{"key": "k", "value": 1, "op": "cas"}', 400),
        ("POST", propose, b'{"key": "k", "value": 1, "client_id": "x"}', 400),
        ("POST", propose, b'{"key": "k", "value": 1, "client_id": "x", "sequence": -1}', 400),
        ("POST", propose, b'{"key": "k", "value": 1, "client_id": "x", "sequence": "1"}', 400),
        ("POST", propose, b'{"key": "k", "value": 1, "client_id": [], "sequence": 1}', 400),
        ("POST", propose, b'{"key": "k", "value": 1, "colour": "red"}', 400),
        ("POST", propose, b'{"key": "k", "value": NaN}', 400),
        ("POST", propose, b'{"key": "k", "value": "\xff\xfe"}', 400),
        ("POST", propose, b'{"key": "k", "value": 1, "op": "cas", "expected_version": -2}', 400),
        ("GET", propose, None, 405),
        ("GET", "/api/v1/consensus/query", None, 400),
        ("GET", "/api/v1/consensus/query?key=", None, 400),
        ("GET", "/api/v1/consensus/query?key=k&consistency=eventual", None, 400),
        ("GET", "/api/v1/consensus/query?prefix=a&limit=zero", None, 400),
        ("GET", "/api/v1/log/entries?start_index=0", None, 400),
        ("GET", "/api/v1/log/entries?start_index=abc", None, 400),
        ("GET", "/api/v1/log/entries?start_index=10&end_index=5", None, 400),
        ("GET", "/api/v1/log/entries?end_index=-1", None, 400),
        ("GET", "/api/v1/nope", None, 404),
        ("GET", "/", None, 404),
        ("POST", "/api/v1/sm/counter", b'{"op": "incr"}', 404),
        ("DELETE", "/api/v1/cluster/status", None, 405),
        ("POST", "/api/v1/cluster/add-node", b'{"node_id": 4, "address": "x"}', 400),
        ("POST", "/api/v1/cluster/add-node", b'{"node_id": 0, "address": "x:1"}', 400),
        ("POST", "/api/v1/cluster/add-node", b'{"node_id": 4, "address": "x:1", "x": 1}', 400),
        ("POST", "/api/v1/cluster/remove-node", b'{"node_id": "2"}', 400),
        ("POST", "/api/v1/cluster/transfer-leader", b'{"node_id": -1}', 400),
        # Found by schemathesis: each of these was answered 200, ignoring a parameter.
        ("POST", "/api/v1/cluster/transfer-leader", b'{"node_id": null}', 400),
        ("GET", "/api/v1/cluster/status?hashes=null", None, 400),
        ("GET", "/api/v1/consensus/query?key=a&prefix=b", None, 400),
        ("GET", "/api/v1/consensus/query?key=a&limit=3", None, 400),
        # A query string over 32 fields on a route with a parameter role (once a 500).
        ("GET", "/api/v1/cluster/status?" + "&".join(f"f{i}=1" for i in range(40)), None, 400),
    ]
    for method, path, raw, expected in cases:
        response = c.request(node, method, path, raw=raw,
                             headers={"Content-Type": "application/json"})
        assert response.status == expected, (method, path, raw, response)
        assert set(response.body) >= {"error", "message"}, response
        assert isinstance(response.body["message"], str) and response.body["message"]
    huge_range = c.request(node, "GET", "/api/v1/log/entries?start_index=1&end_index=999999999")
    assert huge_range.status == 200 and huge_range.body["truncated"] is True
    assert c.put(node, "after-bad-input", "ok").status == 200
    # Besides the two writes here (and a retried attempt of the first: the harness retries
    # after a 2 s client timeout), only what the leader writes on its own may be committed.
    leader = c.wait_leader()
    assert c.unexpected_commands(leader, before, {"before-bad-input", "after-bad-input"}) == []
    keys = [command.get("key") for command in c.committed_commands(leader, before)]
    assert keys.count("after-bad-input") == 1, keys


def test_huge_bodies_headers_and_garbage_are_refused_before_being_read(shared):
    """413 for a body over the limit (announced or chunked), 431 for huge headers, 400 for
    non-HTTP bytes: each closes the connection; the node keeps serving."""
    c = shared
    node = c.ids[0]
    announced = _raw(c, node, b"POST /api/v1/consensus/propose HTTP/1.1\r\nHost: localhost\r\n"
                              b"Content-Length: 50000000\r\n\r\n" + b"{" * 1000)
    assert announced.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in announced
    assert b"Connection: close" in announced
    chunk = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))
    streamed = _raw(c, node, b"POST /api/v1/consensus/propose HTTP/1.1\r\nHost: localhost\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert streamed.startswith(b"HTTP/1.1 413 ")
    headers = _raw(c, node, b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 100_000
                   + b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 431 ")
    garbage = _raw(c, node, bytes(random.Random(5).randrange(256) for _ in range(300))
                   + b"\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    small_chunked = _raw(c, node, b"POST /api/v1/consensus/propose HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                  b"10\r\n{\"key\": \"chunk\",\r\n"
                                  b"d\r\n \"value\": 42}\r\n0\r\n\r\n")
    assert small_chunked.startswith(b"HTTP/1.1 200 "), small_chunked
    pipelined = _raw(c, node, (b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n" * 3)
                     + b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert pipelined.count(b"HTTP/1.1 200 OK") == 4
    assert c.get(c.ids[2], "chunk").body["value"] == 42


# ====================================================================== failures

@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_kill_leader_writes_resume_and_the_old_leader_catches_up(make_cluster, protocol, tls):
    """kill -9 the leader: a new leader takes writes (time printed); the restarted node
    catches up and serves the latest value (over plain TCP and over TLS)."""
    c = make_cluster(protocol, tls=tls)
    for i in range(30):
        c.write(f"before-{i}", i)
    old = c.wait_leader()
    killed = time.monotonic()
    c.kill(old)
    _, body = c.write("after-kill", "x", nodes=[n for n in c.ids if n != old])
    elapsed = time.monotonic() - killed
    print(f"\n[{c.protocol}] kill -9 of leader {old} -> first acknowledged write: "
          f"{elapsed * 1000:.0f} ms")
    new = c.wait_leader()
    assert new != old
    for i in range(30):
        c.write(f"later-{i}", i)
    _, last = c.write("latest", "final")
    c.start(old)
    c.wait_applied(old, last["index"])
    assert c.get(old, "latest", "stale").body["value"] == "final"
    assert c.get(old, "before-7").body["value"] == 7
    assert c.get(old, "later-29").body["value"] == 29
    assert c.wait_leader() in c.ids


def _metric(c: ClusterHarness, node: int, name: str) -> float:
    """A counter's value from the node's /metrics (0 when absent)."""
    response = c.request(node, "GET", "/metrics")
    assert response.status == 200, response
    for line in response.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_kill_9_of_the_leader_is_taken_from_the_connection_reset(make_cluster, protocol):
    """Fast failover (issue 17): kill -9 the leader (election timeout 1-2 s here): the
    followers see their connections to it reset and count it, the new leader campaigned
    early (before its election timeout) for that reason, and a write through the other
    follower is acknowledged.  No time is asserted (tools/bench_http.py measures it)."""
    c = make_cluster(protocol, election_ticks=100)
    c.write("before", 1)
    old = c.wait_leader()
    survivors = [n for n in c.ids if n != old]
    early_before = {n: _metric(c, n, "paxoslog_early_campaigns_total") for n in survivors}
    c.kill(old)
    new = c.wait_leader(among=survivors)
    follower = next(n for n in survivors if n != new)
    _, body = c.write("after-kill", "x", nodes=[follower])
    assert body["status"] == "committed"
    for node in survivors:
        assert _metric(c, node, "paxoslog_leader_connection_lost_total") >= 1, node
    assert _metric(c, new, "paxoslog_early_campaigns_total") > early_before[new]
    assert c.get(follower, "after-kill").body["value"] == "x"


def test_kill_all_three_and_restart_keeps_every_acknowledged_write(cluster):
    """kill -9 every node while writes are in flight; after a restart every acknowledged
    write is there, with its value."""
    c = cluster
    acked: dict[str, int] = {}
    stop = threading.Event()

    def writer(slot: int) -> None:
        harness_nodes = list(c.ids)
        i = 0
        while not stop.is_set():
            key = f"w{slot}-{i}"
            node = harness_nodes[i % 3]
            try:
                response = _put_fresh(c, node, key, i)
            except OSError:
                response = None
            if response is not None and response[0] == 200:
                acked[key] = i
            i += 1

    threads = [threading.Thread(target=writer, args=(slot,), daemon=True) for slot in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 150, 30, what="150 acknowledged writes")
    for node in list(c.procs):
        c.procs[node].kill()
    for node in list(c.procs):
        c.procs.pop(node).wait()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    snapshot = dict(acked)
    c.start_all()
    leader = c.wait_leader()
    missing = []
    for key, value in snapshot.items():
        response = c.get(leader if len(missing) % 2 else c.ids[0], key)
        if response.status != 200 or response.body["value"] != value:
            missing.append((key, value, response))
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"
    c.write("after-restart", 1)


def _put_fresh(c: ClusterHarness, node: int, key: str, value) -> tuple:
    """One POST on a fresh connection (threads must not share the harness's connections)."""
    import http.client
    import json
    conn = c.connection(node, timeout=3)
    try:
        conn.request("POST", "/api/v1/consensus/propose",
                     json.dumps({"key": key, "value": value}))
        response = conn.getresponse()
        return response.status, response.read()
    except Exception:
        return (None, None)
    finally:
        conn.close()


def test_a_pause_of_the_whole_cluster_elects_nobody(cluster):
    """SIGSTOP every node for four election timeouts (a frozen VM), then SIGCONT: each makes
    up the ticks it missed, but none holds its own stall against the others (the leader
    its followers' silence, a follower the leader's), so nobody campaigns: the same leader
    in the same term takes the next write.  Before, both followers' election timers ran
    out in the catch-up, and the term moved in 2 of 6 such runs."""
    c = cluster
    c.write("before", 1)
    leader = c.wait_leader()
    term = c.status(leader)["term"]
    for node in c.ids:
        c.pause(node)
    time.sleep(4 * c.election_s)   # not synchronisation: the length of the freeze
    for node in c.ids:
        c.resume(node)
    c.write("after", 2)
    assert wait_for(lambda: c.leader(), 10, what="one leader named by every node") == leader
    assert all(c.status(node)["term"] == term for node in c.ids)


def test_paused_leader_serves_no_stale_reads_and_takes_no_writes_as_leader(cluster):
    """SIGSTOP the leader past the election timeout, write through the new leader, SIGCONT:
    requests that queued at the old leader never see the old value, and the old leader
    acknowledges nothing as leader."""
    c = cluster
    c.write("x", "old")
    old = c.wait_leader()
    others = [n for n in c.ids if n != old]
    c.pause(old)
    new = c.wait_leader(among=others)
    assert new != old
    _, committed = c.write("x", "new", nodes=others)
    # Requests sent to the paused node queue in its socket until SIGCONT.
    results = {}

    def read() -> None:
        results["read"] = _get_fresh(c, old, "x")

    def write() -> None:
        results["write"] = _put_fresh(c, old, "y", "from-old-leader")

    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    for t in threads:
        t.start()
    time.sleep(0.2)   # not synchronisation: lets the requests reach the stopped process
    c.resume(old)
    for t in threads:
        t.join(timeout=15)
    status, body = results["read"]
    assert status in (200, 503), (status, body)
    if status == 200:
        assert body["value"] == "new", f"stale read from the old leader: {body}"
    status, raw = results["write"]
    assert status in (200, 503, 504), (status, raw)
    wait_for(lambda: (c.status(old) or {}).get("role") != "leader", 5,
             what="the old leader to step down")
    assert c.wait_leader() != old or c.status(old)["term"] > committed["term"]
    if status == 200:   # acknowledged: it must really be in the log
        assert c.get(new, "y").body["value"] == "from-old-leader"
    assert c.get(old, "x").body["value"] == "new"


def _get_fresh(c: ClusterHarness, node: int, key: str) -> tuple:
    import http.client
    import json
    conn = c.connection(node, timeout=10)
    try:
        conn.request("GET", f"/api/v1/consensus/query?key={key}")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_graceful_stop_flushes_and_hands_over(cluster):
    """SIGTERM exits 0 (a leader hands leadership over first); restarted nodes have it all."""
    c = cluster
    for i in range(20):
        c.write(f"g{i}", i)
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    assert c.stop(follower) == 0
    assert c.stop(leader) == 0
    survivor = next(n for n in c.ids if n not in (leader, follower))
    c.start(follower)
    c.start(leader)
    c.wait_leader()
    _, body = c.write("after-graceful", 1)
    for node in c.ids:
        c.wait_applied(node, body["index"])
        assert c.get(node, "g19", "stale").body["value"] == 19
    assert survivor in c.ids


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_lagging_follower_catches_up_by_snapshot_transfer(make_cluster, protocol, tls):
    """With frequent snapshots the leader compacts its log while a follower is down; the
    restarted follower receives the snapshot over the peer connection (with frame MACs, or
    mutual TLS) and serves it."""
    c = make_cluster(protocol, extra="\n[snapshot]\nentries = 40\nchunk_bytes = 2048\n",
                     tls=tls)
    leader = c.wait_leader()
    lagging = next(n for n in c.ids if n != leader)
    c.kill(lagging)
    up = [n for n in c.ids if n != lagging]
    for i in range(160):
        c.write(f"s{i}", "v" * 50 + str(i), nodes=up)
    leader = c.wait_leader(among=up)
    wait_for(lambda: c.status(leader)["snapshot_index"] >= 100, 10,
             what="the leader to snapshot and compact")
    assert c.status(leader)["first_index"] > 1
    c.start(lagging)
    _, last = c.write("s-last", "end", nodes=up)
    status = c.wait_applied(lagging, last["index"], timeout=20)
    assert status["snapshot_index"] > 0, status
    assert c.get(lagging, "s3", "stale").body["value"] == "v" * 50 + "3"
    assert c.get(lagging, "s-last", "stale").body["value"] == "end"
    metrics = c.request(lagging, "GET", "/metrics").body.decode()
    assert "paxoslog_snapshots_installed_total 1" in metrics
    c.kill(leader)                      # boots from its own snapshot plus the log after it
    c.start(leader)
    _, last = c.write("s-after-restart", "x")
    restarted = c.wait_applied(leader, last["index"])
    assert restarted["snapshot_index"] >= 100
    assert c.get(leader, "s5", "stale").body["value"] == "v" * 50 + "5"
    assert c.get(leader, "s159", "stale").body["value"] == "v" * 50 + "159"
