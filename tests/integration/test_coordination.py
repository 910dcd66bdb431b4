"""Leases, transactions and revisions on real clusters (both protocols): real processes on
127.0.0.1, killed (-9) and paused (SIGSTOP) by pid, driven through the HTTP API with the
client library.

* A lease kept alive survives a leader kill and a leader SIGSTOP longer than its TTL;
  once the keep-alives stop, its keys go, and the expiry entry's apply time in the log is
  no earlier than the last acknowledged keep-alive's send time plus the TTL (minus the
  conf's drift margin) and not much later.
* Bank transfers in transactions from concurrent client processes keep the total, and
  every replica ends with the same kv state hash.
* ``min_revision``: a follower serves a stale read at or above the revision asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from paxoslog.client import NotFound, RequestFailed, SyncClient, Unavailable, UnknownOutcome
from paxoslog_integration import PROTOCOLS, ROOT, wait_for

TTL_MS = 1500
ELECTION_TICKS = 15
DRIFT = max(1, ELECTION_TICKS // 10) / ELECTION_TICKS     # the conf's default margin


def _client(cluster, **kw) -> SyncClient:
    return SyncClient([cluster.url(n) for n in cluster.ids], timeout=kw.pop("timeout", 5.0),
                      attempt_timeout=kw.pop("attempt_timeout", 0.3), cafile=cluster.ca_file,
                      **kw)


class KeepAlive:
    """Keep-alives every TTL/5; remembers the send time of the last acknowledged one."""

    def __init__(self, client: SyncClient, lease: int) -> None:
        self.client = client
        self.lease = lease
        self.last_acked_sent = time.time()
        self.failures = 0

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end, seconds + 1)

    def run_until(self, condition, timeout: float):
        """Keep alive until ``condition()`` is truthy (checked between keep-alives)."""
        deadline = time.monotonic() + timeout
        while True:
            found = condition()
            if found:
                return found
            assert time.monotonic() < deadline, "condition not met in time"
            sent = time.time()
            try:
                self.client.lease_keepalive(self.lease)
            except (Unavailable, UnknownOutcome):
                self.failures += 1           # no leader for a moment: the lease holds
            else:
                self.last_acked_sent = sent
            assert time.time() - self.last_acked_sent < TTL_MS / 1000.0, \
                "no keep-alive acknowledged for a whole TTL"
            time.sleep(max(0.0, TTL_MS / 5000.0 - (time.time() - sent)))   # pacing


def _expiry_entries(cluster, node: int, lease: int) -> list[dict]:
    body = cluster.request(node, "GET", "/api/v1/log/entries?start_index=1&end_index=1000").body
    out = []
    for entry in body["entries"]:
        commands = entry.get("command")
        if any(isinstance(c, dict) and c.get("op") == "lease_expire" and lease in c.get("ids", ())
               for c in (commands if isinstance(commands, list) else [commands])):
            out.append(entry)
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_kept_lease_survives_leader_kill_and_pause_and_expires_on_time(make_cluster, protocol):
    """No early expiry across a leader kill and a SIGSTOP longer than the TTL; expiry
    through the log TTL after the last acknowledged keep-alive."""
    cluster = make_cluster(protocol, election_ticks=ELECTION_TICKS)
    client = _client(cluster)
    lease = client.lease_grant(TTL_MS)["result"]["id"]
    client.put("session/a", "alive", lease=lease)
    keeper = KeepAlive(client, lease)
    keeper.run_for(0.5)

    # (every wait keeps the lease alive: cluster.leader() polls between keep-alives)
    old = keeper.run_until(cluster.leader, 15)
    cluster.kill(old)
    keeper.run_for(2 * TTL_MS / 1000.0)
    cluster.start(old)
    keeper.run_for(0.5)

    leader = keeper.run_until(cluster.leader, 15)
    cluster.pause(leader)
    keeper.run_for(2 * TTL_MS / 1000.0)          # paused longer than the TTL
    cluster.resume(leader)
    keeper.run_for(0.5)

    assert client.get("session/a")["value"] == "alive"
    assert client.lease_ttl(lease)["remaining_ms"] > 0
    stopped = keeper.last_acked_sent

    def gone() -> bool:
        try:
            client.get("session/a")
        except NotFound:
            return True
        return False
    wait_for(gone, timeout=TTL_MS / 1000.0 + 10, interval=0.05, what="the lease to expire")
    with pytest.raises(NotFound):
        client.lease_keepalive(lease)
    node = cluster.running()[0]
    entries = wait_for(lambda: _expiry_entries(cluster, node, lease), what="the expiry entry")
    applied_at = entries[0]["timestamp"]
    earliest = stopped + TTL_MS / 1000.0 * (1 - DRIFT)
    assert applied_at >= earliest, (applied_at - stopped, "expired early")
    # Later than the TTL by at most an election timeout (a leader change), the
    # keep-alive's own round trip and scheduling on a loaded machine.
    assert applied_at - stopped < TTL_MS / 1000.0 + 3.0, applied_at - stopped


BANK_WORKER = r'''
import json, os, random, sys
from paxoslog.client import SyncClient, ClientError
endpoints, accounts, transfers, seed = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
client = SyncClient(endpoints, timeout=10.0, attempt_timeout=1.0,
                    cafile=os.environ.get("PAXOSLOG_CACERT"))
done = conflicts = 0
while done < transfers:
    a, b = rng.sample(range(accounts), 2)
    ka, kb = f"bank/{a}", f"bank/{b}"
    try:
        got = client.txn([], [{"op": "get", "key": ka}, {"op": "get", "key": kb}])
        ra, rb = (r["kv"] for r in got["result"]["results"])
        amount = rng.randint(1, 10)
        if ra["value"] < amount:
            continue
        body = client.txn(
            [{"key": ka, "target": "mod_index", "value": ra["mod_index"]},
             {"key": kb, "target": "mod_index", "value": rb["mod_index"]},
             {"key": ka, "target": "value", "cmp": ">=", "value": amount}],
            [{"op": "put", "key": ka, "value": ra["value"] - amount},
             {"op": "put", "key": kb, "value": rb["value"] + amount}])
    except ClientError:
        continue
    if body["result"]["succeeded"]:
        done += 1
    else:
        conflicts += 1
print(json.dumps({"done": done, "conflicts": conflicts}))
'''


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bank_transfers_in_transactions_keep_the_total_on_every_replica(make_cluster, protocol,
                                                                       tmp_path):
    """Concurrent transfer transactions (with a leader kill): the total never changes,
    and every replica's kv state hash is the same."""
    cluster = make_cluster(protocol)
    client = _client(cluster)
    accounts, start = 8, 100
    client.txn([], [{"op": "put", "key": f"bank/{i}", "value": start} for i in range(accounts)])
    script = tmp_path / "bank_worker.py"
    script.write_text(BANK_WORKER)
    endpoints = ",".join(cluster.url(n) for n in cluster.ids)
    workers = [subprocess.Popen([sys.executable, str(script), endpoints, str(accounts), "25",
                                 str(seed)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                env=cluster.client_env()) for seed in range(6)]
    try:
        wait_for(lambda: sum(1 for kv in client.range("bank/")["kvs"]
                             if kv["version"] > 1) >= 4, timeout=30, what="transfers under way")
        cluster.kill(cluster.wait_leader())
        results = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    finally:
        for worker in workers:               # a worker that cannot finish retries forever
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert all(w.returncode == 0 for w in workers)
    assert sum(r["done"] for r in results) == 6 * 25
    kvs = client.range("bank/")["kvs"]
    assert sum(kv["value"] for kv in kvs) == accounts * start
    assert all(kv["value"] >= 0 for kv in kvs)
    index = client.get("bank/0")["index"]
    running = cluster.running()
    for node in running:
        cluster.wait_applied(node, index)

    def hashes():
        views = [cluster.request(n, "GET", "/api/v1/cluster/status?hashes=1").body
                 for n in running]
        if len({v["applied_index"] for v in views}) != 1:
            return None                       # a no-op or expiry landed in between
        return [v["state_hashes"]["kv"] for v in views]
    found = wait_for(hashes, timeout=15, what="replicas at one index")
    assert len(set(found)) == 1, found
    for node in running:
        stale = cluster.request(node, "GET", "/api/v1/consensus/query?prefix=bank/"
                                             "&consistency=stale").body
        assert sum(kv["value"] for kv in stale["kvs"]) == accounts * start


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_min_revision_reads_your_writes_from_a_follower(make_cluster, protocol):
    """A stale read at a follower with min_revision is served at or above it, or refused."""
    cluster = make_cluster(protocol)
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.ids if n != leader)
    body = cluster.put(leader, "ryw", "v1").body
    revision = body["index"]
    follower_client = SyncClient([cluster.url(follower)], timeout=5.0, cafile=cluster.ca_file)
    read = follower_client.get("ryw", "stale", min_revision=revision)
    assert read["value"] == "v1" and read["index"] >= revision
    refused = cluster.request(follower, "GET", "/api/v1/consensus/query?key=ryw&consistency="
                                              f"stale&min_revision={revision + 10_000}")
    assert refused.status == 503 and refused.body["error"] == "revision_not_reached"
    assert refused.body["applied_index"] >= revision and refused.body["future"] is False
    # A linearizable read is served by the leader; its refusal is relayed, not retried,
    # and says the revision is in the future: the client stops at once (etcd's ErrFutureRev).
    future = cluster.request(follower, "GET", "/api/v1/consensus/query?key=ryw"
                                              f"&min_revision={2**63 - 1}")
    assert future.status == 503 and future.body["error"] == "revision_not_reached"
    assert future.body["future"] is True
    with pytest.raises(RequestFailed) as refusal:     # not Unavailable after retries
        follower_client.get("ryw", min_revision=revision + 10_000)
    assert refusal.value.status == 503 and refusal.value.code == "revision_not_reached"
    assert "future revision" in str(refusal.value)
    bad = cluster.request(follower, "GET", "/api/v1/consensus/query?key=ryw&min_revision=x")
    assert bad.status == 400 and bad.body["error"] == "bad_request"
