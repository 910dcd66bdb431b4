"""The WebSocket endpoint and batches on real clusters, both protocol modes: tails across a
leader kill, a node restart and a snapshot install (every committed entry once, in order,
equal to /api/v1/log/entries, and replaying it gives the cluster's kv state hash); watches
from an old revision; resume at an arbitrary point at another node; compacted starts;
batches (one index, exactly once); and the Twisted client's streams and put_many."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys

import cbor2

from paxoslog.client import SyncClient
from paxoslog.node.machines import StateMachines
from paxoslog.node.sessions import SessionTable
from paxoslog.wsclient import Compacted
from paxoslog_integration import ROOT, wait_for
from statemachines.base import state_hash
from statemachines.kv import KVStateMachine
from wsprobe import WsProbe

SMALL_SNAPSHOTS = "\n[snapshot]\nentries = 100\n"
# A paused Multi-Paxos follower would read every accept the leader sent it from its socket
# buffers when it resumes; a short peer queue and big values make it fall behind for real.
FALLS_BEHIND = SMALL_SNAPSHOTS + "[batching]\npeer_queue_messages_max = 16\n"


def url(c, node: int) -> str:
    return c.url(node)


def endpoints(c, first: int) -> list[str]:
    return [url(c, first)] + [url(c, n) for n in c.ids if n != first]


def write_load(c, client: SyncClient, tag: str, batches: int = 5, singles: int = 10,
               value_bytes: int = 0) -> int:
    """Batches and single puts through ``client``; the highest index acknowledged."""
    top = 0
    for b in range(batches):
        body = client.batch([{"op": "put", "key": f"{tag}/{b}/{i}",
                              "value": "v" * value_bytes if value_bytes else i}
                             for i in range(20)] + [{"op": "delete", "key": f"{tag}/{b}/0"}])
        top = max(top, body["index"])
    for i in range(singles):
        top = max(top, client.put(f"{tag}/s{i}", {"n": i})["index"])
    return top


def consume(stream, got: list, index: int) -> None:
    while not got or got[-1]["index"] < index:
        got.append(next(stream))


def replay_kv_hash(entries: list[dict]) -> str:
    """Apply a tail's commands in order to fresh state machines: the kv state hash."""
    machines = StateMachines({"kv": KVStateMachine()}, SessionTable(),
                             lambda name: KVStateMachine(), record_terms=False)
    for entry in entries:
        if entry["kind"] == "normal":
            for command in entry["command"]:
                machines.apply_command(entry["index"], 0, cbor2.dumps(command))
    return state_hash(machines.kv)


def followers(c, leader: int) -> list[int]:
    return [n for n in c.ids if n != leader]


def test_a_tail_across_a_leader_kill_a_restart_and_a_snapshot_install_sees_every_entry_once(
        make_cluster, protocol):
    """Two tails (the client library, resuming by itself): one reads from a follower that
    falls behind and installs a snapshot, the other from a follower that is killed -9 and
    restarted; then the leader is killed -9.  Both see 1..N, each index once, in order;
    the entries equal /api/v1/log/entries, and replaying them gives every node's kv state
    hash."""
    c = make_cluster(protocol, extra=FALLS_BEHIND)
    leader = c.wait_leader()
    a, b = followers(c, leader)
    writer = SyncClient([url(c, n) for n in c.ids], timeout=30, cafile=c.ca_file)
    tail_a = SyncClient(endpoints(c, a), timeout=60, cafile=c.ca_file).tail(1)
    tail_b = SyncClient(endpoints(c, b), timeout=60,
                        cafile=c.ca_file).tail(1, subprotocol="paxoslog.v1.cbor")
    got_a, got_b = [], []
    top = write_load(c, writer, "a")
    consume(tail_a, got_a, top)
    consume(tail_b, got_b, top)

    c.pause(b)                                       # b falls > 2 snapshot intervals behind
    writer = SyncClient([url(c, n) for n in (leader, a)], timeout=30, cafile=c.ca_file)
    for round_ in range(4):                          # 16 MB: more than socket buffers
        top = write_load(c, writer, f"b{round_}", batches=80, singles=0, value_bytes=2500)
    c.resume(b)
    wait_for(lambda: _installed(c, b), 30, what=f"node {b} to install a snapshot")
    consume(tail_b, got_b, top)                      # its tail resumed elsewhere
    assert _metric(c, b, 'paxoslog_ws_streams_ended_total{reason="compacted"}') >= 1

    c.kill(a)                                        # a's tail loses its node...
    writer = SyncClient([url(c, n) for n in (leader, b)], timeout=30, cafile=c.ca_file)
    top = write_load(c, writer, "c")
    consume(tail_a, got_a, top)                      # ...and resumed elsewhere
    c.start(a)

    c.kill(leader)                                   # the leader, kill -9
    writer = SyncClient([url(c, n) for n in (a, b)], timeout=30, cafile=c.ca_file)
    top = write_load(c, writer, "d")
    consume(tail_a, got_a, top)
    consume(tail_b, got_b, top)
    c.start(leader)

    for got in (got_a, got_b):
        assert [e["index"] for e in got] == list(range(1, len(got) + 1))
    assert _same_commands(got_a[:top], got_b[:top])
    source = a if protocol == "raft" else b          # any node that kept its log view
    c.wait_applied(source, top)
    entries = {}
    start = max(1, top - 900)
    while start <= top:
        body = c.request(source, "GET", f"/api/v1/log/entries?start_index={start}"
                                        f"&end_index={top}").body
        entries.update((e["index"], e) for e in body["entries"] if e["state"] == "applied")
        start = max(entries) + 1
    first = min(entries)
    assert _same_commands(got_a[first - 1:top], [entries[i] for i in range(first, top + 1)])
    fence = writer.put("fence", 1)["index"]          # every node at one index for hashes
    for n in c.ids:
        c.wait_applied(n, fence)
        status = c.request(n, "GET", "/api/v1/cluster/status?hashes=1").body
        consume(tail_a, got_a, status["applied_index"])
        assert status["state_hashes"]["kv"] == replay_kv_hash(
            got_a[:status["applied_index"]]), n
    tail_a.close()
    tail_b.close()


def _metric(c, node: int, name: str) -> float:
    text = c.request(node, "GET", "/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " "))


def _installed(c, node: int) -> bool:
    text = c.request(node, "GET", "/metrics").body.decode()
    lines = [line for line in text.splitlines()
             if line.startswith("paxoslog_snapshots_installed_total")]
    return any(not line.endswith(" 0") for line in lines)


def _same_commands(a: list[dict], b: list[dict]) -> bool:
    """Same indexes, kinds and commands (terms may differ between Multi-Paxos acceptors)."""
    return [(e["index"], e["kind"], e["command"]) for e in a] == \
        [(e["index"], e["kind"], e["command"]) for e in b]


def test_a_watch_from_an_old_revision_replays_then_goes_live(make_cluster, protocol):
    """Events from revision R under a prefix, in revision order with previous values, then
    new ones as they commit; each put's version and indexes match the kv record."""
    c = make_cluster(protocol)
    client = SyncClient([url(c, n) for n in c.ids], timeout=20, cafile=c.ca_file)
    first = client.put("w/a", 1)["index"]
    client.put("other", 1)
    # The batch's own index: other commands (a leader's no-op, a session tick) may come
    # between the writes, so first + 2 is not necessarily it.
    batch = client.batch([{"op": "put", "key": "w/a", "value": 2},
                          {"op": "put", "key": "w/b", "value": 3},
                          {"op": "delete", "key": "w/a"}])["index"]
    follower = followers(c, c.wait_leader())[0]
    with WsProbe.of(c, follower) as probe:
        stream = probe.subscribe({"op": "watch", "prefix": "w/", "from": first, "prev": True})
        replayed = probe.wait_revision(stream, batch)
        assert [(e["type"], e["key"]) for e in replayed] == [
            ("put", "w/a"), ("put", "w/a"), ("put", "w/b"), ("delete", "w/a")]
        assert replayed[1]["prev"]["value"] == 1 and replayed[3]["prev"]["value"] == 2
        live = client.put("w/c", 4)["index"]
        client.put("x/ignored", 0)
        events = probe.wait_revision(stream, live)
        assert events[-1] == {"type": "put", "key": "w/c", "value": 4, "version": 1,
                              "create_index": live, "mod_index": live}
        record = client.get("w/b")
        assert replayed[2]["version"] == record["version"] == 1
        assert replayed[2]["mod_index"] == record["mod_index"]


def test_resuming_at_any_point_at_another_node_misses_and_repeats_nothing(make_cluster,
                                                                         protocol):
    """A tail and a watch cut at a random point and resumed at another node from the
    resume point (index after the last entry, revision after the last covered) give
    exactly what one uninterrupted stream gives."""
    c = make_cluster(protocol)
    rng = random.Random(7)
    client = SyncClient([url(c, n) for n in c.ids], timeout=20, cafile=c.ca_file)
    top = write_load(c, client, "r", batches=8, singles=20)
    a, b = c.ids[0], c.ids[1]
    with WsProbe.of(c, a) as whole:
        tail = whole.subscribe({"op": "tail", "from": 1})
        watch = whole.subscribe({"op": "watch", "prefix": "r/", "from": 1})
        expected_entries = whole.wait_index(tail, top)
        expected_events = whole.wait_revision(watch, top)
    for trial in range(3):
        cut = rng.randrange(1, top)
        with WsProbe.of(c, a) as first:
            stream = first.subscribe({"op": "tail", "from": 1})
            part = [e for e in first.wait_index(stream, cut) if e["index"] <= cut]
            wstream = first.subscribe({"op": "watch", "prefix": "r/", "from": 1})
            messages = []
            first.wait(lambda: [m for m in first.streams[wstream]
                                if m.get("type") == "events" and m["revision"] >= cut],
                       20, "the watch to pass the cut")
            for m in first.streams[wstream]:
                if m.get("type") == "events":
                    messages.append(m)
                    if m["revision"] >= cut:
                        break
        with WsProbe.of(c, b, "paxoslog.v1.cbor") as second:
            stream = second.subscribe({"op": "tail", "from": part[-1]["index"] + 1})
            rest = second.wait_index(stream, top)
            resume = messages[-1]["revision"] + 1
            wstream = second.subscribe({"op": "watch", "prefix": "r/", "from": resume})
            later = second.wait_revision(wstream, top)
        assert _same_commands(part + [e for e in rest if e["index"] <= top],
                              [e for e in expected_entries if e["index"] <= top])
        events = [e for m in messages for e in m["events"]] + later
        assert events == expected_events


def test_a_start_no_longer_kept_is_refused_compacted(make_cluster, protocol):
    """After compactions, a tail from index 1 gets 410 compacted with the first index
    and a hint how to read the state; a watch older than a restarted node's history too;
    the client library raises Compacted and the CLI exits 6."""
    c = make_cluster(protocol, extra=SMALL_SNAPSHOTS + "keep = 1\n[limits]\n"
                                                      "recent_entries_kept = 20\n")
    client = SyncClient([url(c, n) for n in c.ids], timeout=30, cafile=c.ca_file)
    for round_ in range(4):
        top = write_load(c, client, f"z{round_}", batches=30, singles=0)
    node = c.ids[0]
    c.wait_applied(node, top)
    with WsProbe.of(c, node) as probe:
        status, body = probe.request({"op": "tail", "from": 1})
        assert status == 410 and body["error"] == "compacted" and body["first_index"] > 1
        assert "snapshot" in body["message"]
        status, body = probe.request({"op": "tail", "from": body["first_index"]})
        assert status == 200
    c.kill(node)
    c.start(node)
    c.wait_applied(node, top)
    with WsProbe.of(c, node) as probe:
        status, body = probe.request({"op": "watch", "prefix": "", "from": 1})
        assert status == 410 and body["error"] == "compacted" and body["first_revision"] > 1
    try:
        next(SyncClient([url(c, n) for n in c.ids], timeout=20, cafile=c.ca_file).tail(1))
    except Compacted as exc:
        assert exc.first is not None and exc.first > 1
    else:
        raise AssertionError("a tail from 1 was served after compaction")
    # One endpoint down (a closed port): every endpoint that answers says compacted, and
    # the client still ends with Compacted once it gives up, not a bare StreamError.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        next(SyncClient([url(c, n) for n in c.ids] + [dead], timeout=3,
                        cafile=c.ca_file).tail(1))
    except Compacted as exc:
        assert exc.first is not None and exc.first > 1 and "unreachable" in str(exc)
    else:
        raise AssertionError("a tail from 1 was served after compaction")
    proc = subprocess.run([sys.executable, "-m", "paxoslog.cli", "log", "tail", "--from", "1",
                           "--endpoints", ",".join(url(c, n) for n in c.ids)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env=c.client_env())
    assert proc.returncode == 6 and "compacted" in proc.stderr


def test_after_every_node_restarts_a_watch_resumes_from_before_their_newest_snapshots(
        make_cluster, protocol):
    """Found by a chaos run: a prefix watch a little behind (it learns its position from
    its events and once a second from progress) when the whole cluster was killed found
    every node's history starting after its newest snapshot, and got 410 everywhere.  A
    node now starts from the snapshot before its newest and applies the log again, so
    after kill -9 of every node a watch from below all their newest snapshots resumes at
    any node with exactly the events (previous values included) an uninterrupted watch
    had."""
    c = make_cluster(protocol, extra=SMALL_SNAPSHOTS)
    client = SyncClient([url(c, n) for n in c.ids], timeout=30, cafile=c.ca_file)

    def newest_snapshots() -> list[int]:
        return [int(_metric(c, n, "paxoslog_snapshot_index")) for n in c.ids]

    top = 0
    for round_ in range(40):
        top = write_load(c, client, f"q{round_}", batches=25, singles=0)
        for n in c.ids:
            c.wait_applied(n, top)
        if min(newest_snapshots()) >= 300:
            break
    # A snapshot is written on a thread: wait until every node has written the one its
    # applied entries call for (the nodes' snapshot indexes then differ by a few entries).
    newest = wait_for(lambda: (lambda s: s if max(s) - min(s) < 50 else None)(
        newest_snapshots()), 20, what="every node's newest snapshot to be written")
    start = min(newest) - 10                    # above every node's previous snapshot
    with WsProbe.of(c, c.ids[0]) as whole:
        watch = whole.subscribe({"op": "watch", "prefix": "q", "from": 1, "prev": True})
        expected = [e for e in whole.wait_revision(watch, top) if e["mod_index"] >= start]
    assert expected
    for n in c.ids:
        c.kill(n)
    for n in c.ids:
        c.start(n)
    c.wait_leader()
    for n in c.ids:
        c.wait_applied(n, top)
        with WsProbe.of(c, n) as probe:
            status, body = probe.request({"op": "watch", "prefix": "q", "from": start,
                                          "prev": True})
            assert status == 200, (n, newest, body)
            assert body["first_revision"] < start
            assert probe.wait_revision(body["stream"], top) == expected
    assert newest_snapshots() == newest        # applying the log again took no snapshot


def test_a_batch_is_one_log_index_applied_once_and_validated_as_a_whole(make_cluster,
                                                                        protocol):
    """POST /api/v1/consensus/batch: every result at one index, in order, a failed cas
    undoing nothing; the same client_id/sequence again returns the first answer and
    applies nothing; one bad operation refuses the whole batch, naming it."""
    c = make_cluster(protocol)
    node = followers(c, c.wait_leader())[0]
    ops = [{"key": "b/1", "value": 1}, {"op": "cas", "key": "b/1", "value": 2, "expected": 9},
           {"op": "cas", "key": "b/1", "value": 3, "expected": 1}, {"op": "delete", "key": "b/0"}]
    body = {"ops": ops, "client_id": "batcher", "sequence": 1}
    first = c.request(node, "POST", "/api/v1/consensus/batch", body)
    assert first.status == 200
    results = first.body["results"]
    assert [r.get("succeeded") for r in results] == [None, False, True, None]
    assert {r["mod_index"] for r in results if "mod_index" in r} == {first.body["index"]}
    again = c.request(c.ids[0], "POST", "/api/v1/consensus/batch", body)
    assert again.status == 200 and again.body == first.body
    assert c.get(node, "b/1").body["version"] == 2
    bad = c.request(node, "POST", "/api/v1/consensus/batch",
                    {"ops": [{"key": "ok", "value": 1}, {"op": "put", "key": "x"}]})
    assert bad.status == 400 and "ops[1]" in bad.body["message"]
    assert c.get(node, "ok").status == 404
    for payload, words in (({"ops": []}, "non-empty"), ({"ops": [{"key": "a", "value": 1,
                                                                   "sequence": 3}]},
                                                         "one client_id"),
                           ({"ops": [{"key": "a", "value": 1, "bogus": 1}]}, "unknown field"),
                           ({"ops": [{"sm": "nope", "op": "x"}]}, "no state machine")):
        refused = c.request(node, "POST", "/api/v1/consensus/batch", payload)
        assert refused.status == 400 and words in refused.body["message"], refused


TWISTED_SCRIPT = r'''
import json, os, sys
from twisted.internet import defer, task
from paxoslog.client import Client

async def main(reactor, endpoints):
    client = Client(endpoints, reactor=reactor, timeout=30, attempt_timeout=3,
                    cafile=os.environ.get("PAXOSLOG_CACERT"))
    watch = client.watch(prefix="tw/", start=1, prev=True)
    tail = client.tail()
    results = await client.put_many([(f"tw/{i}", i) for i in range(2500)], batch_size=500,
                                    window=3)
    events = []
    async for event in watch:
        events.append(event)
        if len(events) == 2500:
            break
    watch.cancel()
    entries = []
    async for entry in tail:
        entries.append(entry)
        if entry["index"] >= results[-1]["mod_index"]:
            break
    tail.cancel()
    print(json.dumps({"results": len(results), "versions": sorted({r["version"] for r in results}),
                      "events": [e["key"] for e in events], "indexes": [e["index"] for e in entries],
                      "batches": len({r["mod_index"] for r in results})}))
    await client.close()

task.react(lambda reactor, eps: defer.Deferred.fromCoroutine(main(reactor, eps)),
           [json.loads(sys.argv[1])])
'''


def test_the_twisted_client_pipelines_put_many_and_follows_watch_and_tail(make_cluster):
    """Client.put_many (pipelined batches over one WebSocket), Client.watch from revision
    1 and Client.tail from now: every put once, every event once in order, no gap."""
    c = make_cluster("raft")
    proc = subprocess.run([sys.executable, "-c", TWISTED_SCRIPT,
                           json.dumps([url(c, n) for n in c.ids])], capture_output=True,
                          text=True, cwd=ROOT, env=c.client_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["results"] == 2500 and out["versions"] == [1] and 1 <= out["batches"] <= 5
    assert sorted(out["events"]) == sorted(f"tw/{i}" for i in range(2500))
    assert out["indexes"] == list(range(out["indexes"][0], out["indexes"][-1] + 1))


def test_the_cli_puts_many_tails_the_log_and_watches_keys(make_cluster):
    """put-many from stdin (one "key value" per line) in batches; log tail --json without
    -f stops at the newest entry and shows them all; watch --prefix --json prints each
    event as it commits."""
    c = make_cluster("multipaxos")
    eps = ",".join(url(c, n) for n in c.ids)
    env = c.client_env()
    base = [sys.executable, "-m", "paxoslog.cli"]
    watcher = subprocess.Popen(base + ["watch", "cli/", "--prefix", "--json", "--from", "1",
                                       "--endpoints", eps], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        lines = "".join(f"cli/{i} value {i}\n" for i in range(25)) + "# comment\n\n"
        put = subprocess.run(base + ["put-many", "--batch", "10", "--endpoints", eps],
                             input=lines, capture_output=True, text=True, cwd=ROOT, env=env,
                             timeout=60)
        assert put.returncode == 0 and put.stdout.strip() == "OK 25 keys", put.stderr
        events = [json.loads(watcher.stdout.readline()) for _ in range(25)]
        assert [e["key"] for e in events] == [f"cli/{i}" for i in range(25)]
        assert events[3]["value"] == "value 3" and events[0]["type"] == "put"
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
    tail = subprocess.run(base + ["log", "tail", "--json", "--from", "1", "--endpoints", eps],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert tail.returncode == 0, tail.stderr
    entries = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [e["index"] for e in entries] == list(range(1, len(entries) + 1))
    batches = [cmd for e in entries if e["kind"] == "normal" for cmd in e["command"]
               if "batch" in cmd]
    assert [len(b["batch"]) for b in batches] == [10, 10, 5]


def test_streams_and_batches_work_over_tls(make_cluster):
    """With [tls] (certificates from ``paxoslog certs init``) the endpoint is wss on the
    HTTPS port: the blocking client tails from index 1 over wss in both subprotocols, the
    Twisted client pipelines put_many and follows a watch and a tail, a probe watches with
    previous values, and the CLI tails with the CA from $PAXOSLOG_CACERT; a client that
    does not trust the CA is refused."""
    c = make_cluster("raft", tls=True)
    assert all(url(c, n).startswith("https://") for n in c.ids)
    client = SyncClient([url(c, n) for n in c.ids], timeout=30, cafile=c.ca_file)
    top = write_load(c, client, "tls")
    node = followers(c, c.wait_leader())[0]
    for subprotocol in ("paxoslog.v1.json", "paxoslog.v1.cbor"):
        got = []
        tail = SyncClient(endpoints(c, node), timeout=30,
                          cafile=c.ca_file).tail(1, subprotocol=subprotocol)
        consume(tail, got, top)
        tail.close()
        assert [e["index"] for e in got] == list(range(1, len(got) + 1))
    with WsProbe.of(c, node) as probe:
        assert probe.ssl is not None
        stream = probe.subscribe({"op": "watch", "prefix": "tls/0/", "from": 1, "prev": True})
        index = client.put("tls/0/1", "again")["index"]
        events = probe.wait_revision(stream, index)
        assert events[-1]["key"] == "tls/0/1" and events[-1]["prev"]["value"] == 1
        status, body = probe.request({"op": "batch", "ops": [{"key": "tls/w", "value": 1}]})
        assert status == 200 and body["results"][0]["version"] == 1
    proc = subprocess.run([sys.executable, "-c", TWISTED_SCRIPT,
                           json.dumps([url(c, n) for n in c.ids])], capture_output=True,
                          text=True, cwd=ROOT, env=c.client_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["results"] == 2500 and len(out["events"]) == 2500
    base = [sys.executable, "-m", "paxoslog.cli", "log", "tail", "--json", "--from",
            str(top), "--endpoints", url(c, node)]
    tail = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, env=c.client_env(),
                          timeout=60)
    assert tail.returncode == 0, tail.stderr
    assert json.loads(tail.stdout.splitlines()[0])["index"] == top
    untrusted = subprocess.run(base + ["--timeout", "2"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                               env=dict(os.environ, PYTHONPATH=ROOT, PAXOSLOG_CACERT=""))
    assert untrusted.returncode != 0 and not untrusted.stdout
