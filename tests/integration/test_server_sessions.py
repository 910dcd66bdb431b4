"""Exactly-once sessions on real processes: a retried (client_id, sequence) returns the
first result and is not applied again across leader changes, a full restart and a snapshot
install; a session idle for longer than ``session_idle_ms`` (on the log's clock) is gone."""

from __future__ import annotations

import time

from paxoslog_integration import wait_for
from test_observability import metrics, sample

ENABLE = '\n[state_machines]\nenabled = ["kv", "counter"]\n'


def _add(c, node, client_id, sequence, delta=1):
    return c.request(node, "POST", "/api/v1/sm/counter",
                     {"op": "add", "name": "hits", "delta": delta, "client_id": client_id,
                      "sequence": sequence}, timeout=10)


def _hits(c, node, consistency="linearizable"):
    return c.request(node, "POST", "/api/v1/sm/counter",
                     {"query": {"name": "hits"}, "consistency": consistency}).body["result"]


def _retry_until_ok(c, nodes, client_id, sequence, timeout=20.0):
    def attempt():
        for node in nodes:
            try:
                response = _add(c, node, client_id, sequence)
            except OSError:
                continue
            if response.status == 200:
                return response.body
        return None
    return wait_for(attempt, timeout, what=f"{client_id}/{sequence} to be answered")


def test_retries_apply_once_across_leader_change_restart_and_snapshot_install(
        make_cluster, protocol):
    c = make_cluster(protocol, extra=ENABLE + "[snapshot]\nentries = 30\n")
    first = _retry_until_ok(c, c.ids, "app-1", 1)
    assert first["result"]["value"] == 1
    # Leader change: the retry goes to the new leader and finds the recorded result.
    old = c.wait_leader()
    c.kill(old)
    rest = [n for n in c.ids if n != old]
    c.wait_leader(among=rest)
    assert _retry_until_ok(c, rest, "app-1", 1)["index"] == first["index"]
    c.start(old)
    # Full restart (kill -9 of everything): the table comes back from snapshot + WAL.
    for i in range(60):
        c.write(f"fill{i}", i)
    for node in c.ids:
        c.kill(node)
    c.start_all()
    c.wait_leader()
    again = _retry_until_ok(c, c.ids, "app-1", 1)
    assert again["index"] == first["index"] and again["result"] == first["result"]
    # Snapshot install: a node down while the leader compacted comes back by snapshot and
    # answers the retry from its own restored table.
    lagging = next(n for n in c.ids if n != c.wait_leader())
    c.kill(lagging)
    for i in range(100):
        c.write(f"more{i}", i, nodes=[n for n in c.ids if n != lagging])
    c.start(lagging)
    wait_for(lambda: (c.status(lagging) or {}).get("snapshot_index", 0) > first["index"], 20,
             what="the lagging node to install a snapshot")
    local = _add(c, lagging, "app-1", 1)
    assert local.status == 200 and local.body["index"] == first["index"], local
    assert _hits(c, lagging) == {"name": "hits", "value": 1}


def test_idle_sessions_expire_on_the_log_clock(make_cluster):
    c = make_cluster("raft", extra=ENABLE + "[limits]\nsession_idle_ms = 300\n")
    first = _retry_until_ok(c, c.ids, "app-2", 7)
    assert _retry_until_ok(c, c.ids, "app-2", 7)["index"] == first["index"]   # still known
    # Other clients keep the log clock moving past the idle time.
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 1.0:
        c.write(f"tick{i}", i)
        i += 1
    later = _retry_until_ok(c, c.ids, "app-2", 7)
    assert later["index"] > first["index"]            # forgotten: applied as a new command
    assert later["result"]["value"] == 2


def test_state_hashes_agree_across_replicas_and_cover_the_session_table(make_cluster):
    c = make_cluster("multipaxos", extra=ENABLE)
    for i in range(30):
        _retry_until_ok(c, c.ids, f"h{i % 4}", i)
        c.write(f"k{i}", i)

    def same_index():
        views = [c.request(n, "GET", "/api/v1/cluster/status?hashes=1").body for n in c.ids]
        return views if len({v["applied_index"] for v in views}) == 1 else None
    views = wait_for(same_index, 15, what="the replicas to reach one applied index")
    hashes = [v["state_hashes"] for v in views]
    assert set(hashes[0]) == {"kv", "counter", "membership", "~sessions"}
    assert hashes[0] == hashes[1] == hashes[2]
    assert "state_hashes" not in c.status(1)          # only on request (it costs)


def test_a_nodes_own_sessions_are_released_on_every_replica(make_cluster, protocol):
    """Writes without a session get the node's own (a new client id every 128 writes);
    once a generation is answered a later write releases it, and every replica drops its
    results, leaving a tombstone.  Through the leader and through a follower (whose
    writes are forwarded), on real processes."""
    c = make_cluster(protocol)
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    last = 0
    for i in range(700):
        node = leader if i % 2 else follower
        response = c.put(node, f"k{i % 50}", i)
        assert response.status == 200, response
        last = max(last, response.body["index"])
    for node in c.ids:
        c.wait_applied(node, last)
    for node in c.ids:
        families = metrics(c, node)
        results = sample(families, "paxoslog_session_results")
        sessions = sample(families, "paxoslog_sessions")
        # Each origin's 350 writes: two generations finished and released, the third
        # current (at most 128 results each, and the leader's few own membership rows).
        assert results is not None and results <= 2 * 128 + 10, (node, results)
        assert sessions is not None and sessions >= 4, (node, sessions)


def test_a_client_names_the_answers_it_has_and_every_replica_forgets_them(
        make_cluster, protocol):
    """SyncClient sends ``acked`` (the sequence up to which it has every answer) with each
    write: every replica keeps only the newest results of its session, instead of up to
    ``session_results_max`` of them (here the 300 puts and five 100-put batches would
    weigh 800).  A copy of an acknowledged write is refused as stale, never applied
    again; the newest one is still answered from the table."""
    from paxoslog.client import SyncClient
    c = make_cluster(protocol)
    c.wait_leader()
    with SyncClient([c.url(n) for n in c.ids], timeout=20) as client:
        for i in range(300):
            client.put(f"k{i % 20}", i)
        for b in range(5):
            client.batch([{"op": "put", "key": f"b{b}-{j}", "value": j} for j in range(100)])
        last = client.put("last", "x")
        client_id, newest = client.client_id, client.answered.through
    assert newest == 306
    for node in c.ids:
        c.wait_applied(node, last["index"])
    for node in c.ids:
        results = sample(metrics(c, node), "paxoslog_session_results")
        # the newest answer (the last put), the batch before it until a later write acks
        # it, and the node's own few (membership rows)
        assert results is not None and results <= 10, (node, results)
    stale = c.request(c.ids[0], "POST", "/api/v1/consensus/propose",
                      {"key": "k3", "value": "again", "client_id": client_id,
                       "sequence": 3}, timeout=10)
    assert stale.status == 400 and stale.body["error"] == "stale_sequence", stale
    again = c.request(c.ids[1], "POST", "/api/v1/consensus/propose",
                      {"key": "last", "value": "x", "client_id": client_id,
                       "sequence": 306}, timeout=10)
    assert again.status == 200 and again.body["index"] == last["index"], again
    assert c.request(c.ids[0], "GET", "/api/v1/consensus/query?key=k3").body["value"] == 283
    for body in ({"key": "a", "value": 1, "acked": 2},
                 {"key": "a", "value": 1, "client_id": "c", "sequence": 4, "acked": 4},
                 {"key": "a", "value": 1, "client_id": "c", "sequence": 4, "acked": "3"},
                 {"key": "a", "value": 1, "client_id": "c", "sequence": 4, "acked": -1}):
        refused = c.request(c.ids[0], "POST", "/api/v1/consensus/propose", body)
        assert refused.status == 400 and "acked" in refused.body["message"], refused
    refused = c.request(c.ids[0], "POST", "/api/v1/consensus/batch",
                        {"ops": [{"op": "put", "key": "a", "value": 1, "acked": 1}]})
    assert refused.status == 400, refused
