"""Live membership changes on real processes, in both protocol modes.

A new node starts with ``paxoslog serve --join <a member's API>`` and a conf of its own; the
members' conf files are never edited.  It joins as a learner, receives the log (or a
snapshot), and the leader promotes it once it caught up.  remove-node shrinks the cluster
(the leader hands over first when it is the one removed); a removed node exits, never
campaigns, and refuses to start again on its data directory.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from paxoslog.client import ClientError, NotFound, SyncClient, UnknownOutcome
from paxoslog.sim.linearizability import Operation, check_history
from paxoslog_integration import wait_for


def _voters(c, node) -> list[int]:
    return c.request(node, "GET", "/api/v1/cluster/members").body["applied_config"]["voters"]


def _wait_voter(c, node_id: int, among, timeout: float = 30.0) -> None:
    def done():
        for n in among:
            if node_id not in _voters(c, n):
                return False
        return True
    wait_for(done, timeout, what=f"node {node_id} to be a voter everywhere")


class Workload:
    """Client threads over a few keys (puts of unique values and linearizable gets), each
    with its own exactly-once session, recording a history for the checker and what was
    acknowledged.  ``endpoints`` may change while it runs."""

    KEYS = ("a", "b", "c")

    def __init__(self, c, nodes, clients: int = 3) -> None:
        self.c = c
        self.nodes = list(nodes)
        self.ops: list[Operation] = []
        self.acked: dict[str, object] = {}       # key -> last acknowledged unique put
        self.counts = {"ok": 0, "unknown": 0, "failed": 0}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.crashed: list[BaseException] = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(clients)]

    def endpoints(self) -> list[str]:
        return [self.c.url(n) for n in self.nodes]

    def run(self, client_id: int) -> None:
        try:
            self._run(client_id)
        except BaseException as exc:        # the test fails on any client-side crash
            self.crashed.append(exc)

    def _run(self, client_id: int) -> None:
        rng = random.Random(client_id)
        sequence = 0
        session = f"t{client_id}"
        while not self.stop.is_set():
            key = rng.choice(self.KEYS)
            with SyncClient(self.endpoints(), timeout=8.0, attempt_timeout=2.0,
                            client_id=session, cafile=self.c.ca_file) as client:
                call = time.monotonic()
                ret = output = value = None
                if rng.random() < 0.6:
                    kind = "put"
                    sequence += 1
                    value = f"{client_id}-{sequence}"
                    try:
                        client.put(key, value, client_id=session, sequence=sequence)
                        ret, outcome = time.monotonic(), "ok"
                    except UnknownOutcome:
                        outcome = "unknown"
                    except ClientError:
                        outcome = "failed"    # definitely not applied: not in the history
                else:
                    kind = "get"
                    try:
                        output = client.get(key)["value"]
                        ret, outcome = time.monotonic(), "ok"
                    except NotFound:
                        ret, outcome = time.monotonic(), "ok"
                    except ClientError:
                        outcome = "failed"    # a failed read constrains nothing
            with self.lock:
                self.counts[outcome] += 1
                if outcome != "failed":
                    self.ops.append(Operation(client_id, kind, key, value=value, call=call,
                                              ret=ret, output=output))
                if outcome == "ok" and kind == "put":
                    self.acked[value] = key

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def acknowledged(self) -> int:
        with self.lock:
            return self.counts["ok"]

    def check(self, c, node) -> None:
        """Linearizable history; every acknowledged put is in the log (applied)."""
        assert not self.crashed, self.crashed
        result = check_history(self.ops, timeout_s=120)
        assert result.ok is True, result.message
        assert self.counts["ok"] >= 50, self.counts
        applied = set()
        start = 1
        while True:
            body = c.request(node, "GET", f"/api/v1/log/entries?start_index={start}",
                             timeout=10).body
            for entry in body["entries"]:
                for command in entry.get("command") or ():
                    if isinstance(command, dict) and command.get("op") == "put":
                        applied.add(command.get("value"))
            if not body["entries"] or body["end_index"] >= body["last_index"]:
                break
            start = body["end_index"] + 1
        missing = [v for v in self.acked if v not in applied]
        assert not missing, f"acknowledged puts missing from the log: {missing[:5]}"


def test_grow_to_five_and_shrink_back_under_load(make_cluster, protocol):
    # recent_entries_kept: the whole log stays readable over /log/entries for the check.
    c = make_cluster(protocol, extra="[limits]\nrecent_entries_kept = 100000\n")
    for new in (4, 5):
        c.new_node(new)
    with Workload(c, [1, 2, 3]) as load:
        wait_for(lambda: load.acknowledged() >= 20, 30, what="writes before growing")
        for new in (4, 5):
            c.start(new, join=1)
            _wait_voter(c, new, [1, 2, 3, new])
        load.nodes = [1, 2, 3, 4, 5]
        base = load.acknowledged()
        wait_for(lambda: load.acknowledged() >= base + 30, 30, what="writes on five nodes")
        wait_for(lambda: all((c.status(n, timeout=5) or {}).get("cluster_size") == 5
                             for n in (1, 2, 3, 4, 5)), 15, what="five voters everywhere")
        # Shrink back: remove two of the original nodes (one of them may be the leader).
        load.nodes = [3, 4, 5]
        for gone in (1, 2):
            response = c.request(3, "POST", "/api/v1/cluster/remove-node", {"node_id": gone},
                                 timeout=30)
            assert response.status == 200, response
            assert gone not in response.body["applied_config"]["voters"]
            assert c.wait_exit(gone) == 0          # a removed node exits on its own
        base = load.acknowledged()
        wait_for(lambda: load.acknowledged() >= base + 30, 30, what="writes after shrinking")
    leader = c.wait_leader(among=[3, 4, 5])
    assert _voters(c, leader) == [3, 4, 5]
    load.check(c, leader)
    members = c.request(leader, "GET", "/api/v1/cluster/members").body["members"]
    by_id = {row["node_id"]: row for row in members}
    assert by_id[1]["status"] == by_id[2]["status"] == "removed"
    assert all(by_id[n]["status"] == "active" for n in (3, 4, 5))

    def converged():
        views = [c.status(n, timeout=5) for n in (3, 4, 5)]
        return None not in views and len({v["applied_index"] for v in views}) == 1
    wait_for(converged, 15, what="replicas to converge")
    for node in (3, 4, 5):
        for key in Workload.KEYS:
            expected = c.get(leader, key).body["value"]
            assert c.get(node, key, consistency="stale").body["value"] == expected


def test_remove_the_leader_hands_over_first(make_cluster, protocol):
    c = make_cluster(protocol)
    c.write("before", 1)
    leader = c.wait_leader()
    other = next(n for n in c.ids if n != leader)
    response = c.request(other, "POST", "/api/v1/cluster/remove-node", {"node_id": leader},
                         timeout=30)
    assert response.status == 200, response
    assert response.body["leader"] != leader
    assert c.wait_exit(leader) == 0
    rest = [n for n in c.ids if n != leader]
    new_leader = c.wait_leader(among=rest)
    assert new_leader != leader
    assert _voters(c, new_leader) == sorted(rest)
    c.write("after", 2, nodes=rest)
    assert c.get(new_leader, "before").body["value"] == 1
    # The removed node refuses to start again on its data directory.
    c.start(leader)
    assert c.wait_exit(leader) != 0
    with open(c.log_path(leader)) as f:
        assert "was removed from cluster" in f.read()
    # ... and two nodes still elect a leader without it (it never campaigns).
    for _ in range(3):
        c.write("more", 3, nodes=rest)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_add_a_node_that_needs_a_snapshot(make_cluster, protocol, tls):
    """A node joins (serve --join, over HTTPS with TLS) after the log was compacted and is
    brought up to date by a snapshot (over mutual TLS with TLS)."""
    # Snapshots every 50 entries, so the log that started the cluster is gone.
    c = make_cluster(protocol, extra="[snapshot]\nentries = 50\n", tls=tls)
    for i in range(200):
        c.write(f"k{i}", i)
    leader = c.wait_leader()
    wait_for(lambda: c.status(leader)["first_index"] > 1, 15,
             what="the leader to compact its log")
    c.new_node(4)
    c.start(4, join=2)
    _wait_voter(c, 4, [1, 2, 3, 4])
    status = wait_for(lambda: (lambda s: s if s and s["applied_index"] >= 200 else None)(
        c.status(4)), 20, what="node 4 to apply")
    assert status["snapshot_index"] > 0          # it was brought up to date by a snapshot
    for i in (0, 57, 199):
        assert c.get(4, f"k{i}", consistency="stale").body["value"] == i


def test_membership_requests_errors_and_idempotence(make_cluster, protocol):
    c = make_cluster(protocol)
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    # Adding node 4 (not started yet) through a follower: forwarded to the leader.
    body = {"node_id": 4, "address": "127.0.0.1:1", "api": "127.0.0.1:2"}
    first = c.request(follower, "POST", "/api/v1/cluster/add-node", body, timeout=30)
    assert first.status == 200, first
    assert first.body["role"] == "learner" and "promotion" in first.body
    again = c.request(leader, "POST", "/api/v1/cluster/add-node", body, timeout=30)
    assert again.status == 200 and again.body["role"] == "learner"
    clash = c.request(leader, "POST", "/api/v1/cluster/add-node",
                      {"node_id": 4, "address": "127.0.0.1:3"}, timeout=30)
    assert clash.status == 409 and clash.body["error"] == "conflict"
    initial = c.request(leader, "POST", "/api/v1/cluster/add-node",
                        {"node_id": 2, "address": "127.0.0.1:9"}, timeout=30)
    assert initial.status == 409, initial
    # A learner that never answers is not promoted, and does not count for quorums.
    c.write("still-writable", 1)
    assert 4 not in _voters(c, leader)
    # The leader writes the initial members' rows itself, shortly after it leads.
    members = wait_for(lambda: (lambda body: body if len(body["members"]) == 4 else None)(
        c.request(leader, "GET", "/api/v1/cluster/members").body), 10,
        what="the table to list every member")
    assert members["applied_config"]["learners"] == [4]
    assert {row["node_id"]: row["status"] for row in members["members"]} == {
        1: "active", 2: "active", 3: "active", 4: "active"}
    # Remove it again; its id is not reusable.
    gone = c.request(leader, "POST", "/api/v1/cluster/remove-node", {"node_id": 4}, timeout=30)
    assert gone.status == 200, gone
    assert gone.body["applied_config"]["learners"] == []
    reuse = c.request(leader, "POST", "/api/v1/cluster/add-node", body, timeout=30)
    assert reuse.status == 409, reuse
    unknown = c.request(leader, "POST", "/api/v1/cluster/remove-node", {"node_id": 9},
                        timeout=30)
    assert unknown.status == 404, unknown
    # transfer-leader to a named voter, then to "the best one".
    target = next(n for n in c.ids if n != leader)
    moved = c.request(follower, "POST", "/api/v1/cluster/transfer-leader", {"node_id": target},
                      timeout=30)
    assert moved.status == 200 and moved.body["leader"] == target, moved
    assert c.wait_leader() == target
    best = c.request(target, "POST", "/api/v1/cluster/transfer-leader", {}, timeout=30)
    assert best.status == 200 and best.body["leader"] != target, best


def test_join_refuses_a_wrong_protocol(make_cluster, tmp_path):
    c = make_cluster("raft")
    path = c.new_node(4)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace('protocol = "raft"', 'protocol = "multipaxos"'))
    c.start(4, join=1)
    assert c.wait_exit(4, timeout=30) != 0
    with open(c.log_path(4)) as f:
        assert "runs 'raft'" in f.read()


def _cli(c, *args, timeout: float = 60.0):
    import subprocess
    import sys
    from paxoslog_integration import ROOT
    endpoints = ",".join(c.url(n) for n in (1, 2, 3))
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args, "--endpoints", endpoints,
                           "--timeout", "30"], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=c.client_env())



def test_cli_membership_commands(make_cluster):
    c = make_cluster("raft")
    c.new_node(4)
    added = _cli(c, "cluster", "add-node", "4", "--peer", f"127.0.0.1:{c.peer_ports[4]}",
                 "--api", f"127.0.0.1:{c.api_ports[4]}", "--no-wait")
    assert added.returncode == 0, added
    assert "node 4 added: learner" in added.stdout
    members = _cli(c, "cluster", "members")
    assert members.returncode == 0, members
    assert "learners [4]" in members.stdout and "127.0.0.1:%d" % c.peer_ports[4] in members.stdout
    # The node was added before it ran: --join finds it added and starts as that learner.
    c.start(4, join=2)
    # Without --no-wait the command returns once the leader promoted it.
    voter = _cli(c, "cluster", "add-node", "4", "--peer", f"127.0.0.1:{c.peer_ports[4]}",
                 "--api", f"127.0.0.1:{c.api_ports[4]}")
    assert voter.returncode == 0 and "node 4 added: voter" in voter.stdout, voter
    _wait_voter(c, 4, [1, 2, 3, 4])
    moved = _cli(c, "cluster", "transfer-leader", "4")
    assert moved.returncode == 0 and "leader: node 4" in moved.stdout, moved
    removed = _cli(c, "cluster", "remove-node", "4")
    assert removed.returncode == 0, removed
    assert c.wait_exit(4) == 0
    assert c.wait_leader(among=[1, 2, 3])
    bad = _cli(c, "cluster", "remove-node", "4")       # already removed: nothing to do
    assert bad.returncode == 0, bad
    unknown = _cli(c, "cluster", "remove-node", "7")
    assert unknown.returncode == 3 and "not a member" in unknown.stderr, unknown


def test_a_joined_node_that_lost_its_data_cannot_join_again_under_its_id(make_cluster):
    """Node 4 joined and became a voter; its disk is wiped and the same ``serve --join``
    is run again.  add-node answered ok, and the empty voter could elect a lagging node
    (a review lost an acknowledged write so).  Its join is refused now, naming what to
    do, and the cluster goes on with the others."""
    import shutil
    c = make_cluster("raft")
    c.new_node(4)
    c.start(4, join=1)
    _wait_voter(c, 4, [1, 2, 3, 4])
    for i in range(10):
        c.write(f"w{i}", i)
    c.kill(4)
    shutil.rmtree(c.tmp_path / "data" / "4")
    c.start(4, join=2)
    assert c.wait_exit(4, timeout=30) != 0
    with open(c.log_path(4)) as f:
        log = f.read()
    assert "lost its data" in log and "new id" in log, log[-2000:]
    c.write("after", 1, nodes=[1, 2, 3])


def test_a_node_started_without_join_is_refused_by_the_members(make_cluster):
    """Operator error: a new node started with a conf that lists it, without --join, would
    bootstrap a different initial configuration.  The peer handshake compares them."""
    c = make_cluster("multipaxos")
    c.new_node(4)
    response = c.request(1, "POST", "/api/v1/cluster/add-node",
                         {"node_id": 4, "address": f"127.0.0.1:{c.peer_ports[4]}"}, timeout=30)
    assert response.status == 200, response
    c.start(4)                                        # no --join
    wait_for(lambda: "bootstrap voters or log origin differ" in open(c.log_path(4)).read(), 15,
             what="node 4 to refuse the members")
    leader = c.wait_leader(among=[1, 2, 3])
    assert 4 not in _voters(c, leader)
    assert c.status(4)["role"] != "leader"


def test_remove_node_is_refused_without_a_live_quorum(make_cluster, protocol):
    """One voter killed, another asked to be removed: the joint configuration {1,2,3} ->
    without it needs a quorum of both, which the two nodes left are not (a review wedged
    both modes this way: every write refused until the dead node came back).  The leader
    refuses (409 naming the dead voter), also when asked to remove itself or through a
    follower, and keeps taking writes; removing the dead voter itself still works."""
    c = make_cluster(protocol)
    c.write("before", 1)
    leader = c.wait_leader()
    dead = next(n for n in c.ids if n != leader)
    c.kill(dead)
    alive = [n for n in c.ids if n != dead]
    leader = c.wait_leader(among=alive)
    other = next(n for n in alive if n != leader)

    def dead_seen():
        view = c.status(leader) or {"nodes": []}
        return any(n["id"] == dead and not n["reachable"] for n in view["nodes"])
    wait_for(dead_seen, 10, what=f"the leader to see node {dead} down")
    for asked, target in ((leader, other), (other, other), (leader, leader)):
        refused = c.request(asked, "POST", "/api/v1/cluster/remove-node", {"node_id": target},
                            timeout=30)
        assert refused.status == 409, refused
        assert refused.body["error"] == "conflict", refused
        assert refused.body["unreachable"] == [dead], refused
        assert f"node(s) {dead} are unreachable" in refused.body["message"], refused
    assert _voters(c, leader) == [1, 2, 3]
    assert c.leader(among=alive) == leader
    # Still writable at once (the wedged cluster refused every write for 12 s and more).
    for i in range(5):
        c.write(f"after{i}", i, timeout=3, nodes=alive)
    # The dead voter itself can go: the two left are a quorum of {1,2,3} and of themselves.
    removed = c.request(leader, "POST", "/api/v1/cluster/remove-node", {"node_id": dead},
                        timeout=30)
    assert removed.status == 200, removed
    assert removed.body["applied_config"]["voters"] == alive
    c.write("last", 9, timeout=5, nodes=alive)
    rows = {row["node_id"]: row["status"]
            for row in c.request(leader, "GET", "/api/v1/cluster/members").body["members"]}
    assert rows[dead] == "removed" and rows[leader] == rows[other] == "active"
