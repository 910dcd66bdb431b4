"""Memory per node with many keys (issue 17's goal: RSS under 2x the raw data size).

Starts a local 3-node cluster per mode (``conf/local-3.toml`` timings, fresh ports, data in
a temporary directory, fsync on), loads ``--keys`` keys of ``--value-bytes`` bytes through
``POST /api/v1/consensus/batch`` (``--writers`` clients in parallel), waits until every
node applied everything, lets the nodes take their snapshot, and prints each node's
resident set size (VmRSS, once no snapshot has been taken for 3 s) and peak (VmHWM) against
the raw data size (keys + values), and whether the term moved during the load (a node that
holds its event loop too long, say while copying a large state for a snapshot, costs an
election).

    python tools/bench_memory.py [--modes multipaxos,raft] [--keys 1000000]
                                 [--value-bytes 1024] [--writers 4] [--batch 800]

The whole box is shared by the load and the three nodes; RSS does not depend on that, the
load time does.  A progress line shows the keys loaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from bench_http import Cluster  # noqa: E402
from paxoslog.client import SyncClient  # noqa: E402


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount, _unit = line.split()
                values[name] = int(amount)
    return values["VmRSS:"], values["VmHWM:"]


def key_of(i: int) -> str:
    return f"k/{i:08d}"


def load(endpoints: list[str], keys: int, value_bytes: int, writers: int, batch: int) -> float:
    """Put ``keys`` keys through ``writers`` clients; returns the seconds it took."""
    done = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(first: int, stop: int) -> None:
        client = SyncClient(endpoints, timeout=60.0, attempt_timeout=20.0)
        try:
            for lo in range(first, stop, batch):
                hi = min(stop, lo + batch)
                value = "v" * value_bytes
                client.put_many(((key_of(i), value) for i in range(lo, hi)), batch_size=batch)
                with lock:
                    done[0] += hi - lo
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    share = -(-keys // writers)
    threads = [threading.Thread(target=writer, args=(w * share, min(keys, (w + 1) * share)),
                                daemon=True) for w in range(writers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=2.0)
        elapsed = time.monotonic() - start
        rate = done[0] / elapsed if elapsed else 0.0
        print(f"\r  loaded {done[0]:,}/{keys:,} keys ({rate:,.0f}/s)", end="", flush=True)
        if errors:
            break
    print()
    if errors:
        raise RuntimeError(f"loading failed: {errors[0]!r}")
    return time.monotonic() - start


def settle(cluster: Cluster, deadline_s: float = 600.0) -> dict:
    """Wait until every node applied the leader's commit index; the statuses."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        statuses = {n: cluster.status(n, timeout=5.0) for n in cluster.procs}
        if all(statuses.values()):
            commit = max(s["commit_index"] for s in statuses.values())
            if all(s["applied_index"] >= commit for s in statuses.values()):
                return statuses
        time.sleep(0.5)  # polling with a deadline: the nodes apply on their own
    raise RuntimeError("the nodes did not apply everything in time")


def quiet(cluster: Cluster, still_s: float = 3.0, deadline_s: float = 120.0) -> None:
    """Wait until no node's snapshot index moved for ``still_s`` (a snapshot taken right
    after the load holds a copy of the rows while it is written)."""
    deadline = time.monotonic() + deadline_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = {n: (cluster.status(n, timeout=5.0) or {}).get("snapshot_index")
               for n in cluster.procs}
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= still_s:
            return
        time.sleep(0.5)  # polling with a deadline


def measure(mode: str, args) -> dict:
    work = tempfile.mkdtemp(prefix=f"bench-memory-{mode}-")
    cluster = Cluster(os.path.join(ROOT, "conf", "local-3.toml"), mode, work)
    try:
        cluster.start_all()
        leader = cluster.wait_leader()
        idle = {n: rss_kib(p.pid)[0] for n, p in cluster.procs.items()}
        term_before = max(s["term"] for s in settle(cluster).values())
        order = [leader] + [n for n in cluster.procs if n != leader]
        endpoints = ["http://%s:%d" % cluster.api(n) for n in order]
        print(f"{mode}: loading {args.keys:,} keys of {args.value_bytes} bytes "
              f"(leader node {leader})")
        seconds = load(endpoints, args.keys, args.value_bytes, args.writers, args.batch)
        settle(cluster)
        quiet(cluster)
        statuses = settle(cluster)
        memory = {n: rss_kib(p.pid) for n, p in cluster.procs.items()}
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files
                   in os.walk(os.path.join(work, "data")) for f in files)
        return {"mode": mode, "seconds": seconds, "idle": idle, "memory": memory,
                "leader": leader, "disk": disk, "terms": (term_before, max(
                    s["term"] for s in statuses.values())),
                "leader_after": statuses[leader].get("leader")}
    finally:
        cluster.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="multipaxos,raft")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=800,
                        help="puts per batch request (limits.request_bytes_max is 1 MiB)")
    args = parser.parse_args()
    raw = sum(len(key_of(i)) for i in range(args.keys)) + args.keys * args.value_bytes
    print(f"raw data: {raw / 2**20:,.0f} MiB ({args.keys:,} keys)")
    rows = []
    for mode in args.modes.split(","):
        result = measure(mode, args)
        rows.append(result)
        for node, (rss, hwm) in sorted(result["memory"].items()):
            role = "leader" if node == result["leader"] else "follower"
            print(f"  node {node} ({role}): RSS {rss / 1024:,.0f} MiB "
                  f"(x{rss * 1024 / raw:.2f} raw), peak {hwm / 1024:,.0f} MiB "
                  f"(x{hwm * 1024 / raw:.2f}), idle {result['idle'][node] / 1024:,.0f} MiB")
        print(f"  load: {result['seconds']:.0f} s ({args.keys / result['seconds']:,.0f} keys/s); "
              f"data dirs {result['disk'] / 2**20:,.0f} MiB in all")
        before, after = result["terms"]
        print(f"  term {before} before the load, {after} after it "
              f"({'no election' if after == before else 'elections happened'}); leader "
              f"node {result['leader']} before, node {result['leader_after']} after")
    print("\n| mode | RSS median (x raw) | peak median (x raw) | load keys/s |")
    print("|---|---|---|---|")
    for r in rows:
        rss = statistics.median(m[0] for m in r["memory"].values()) * 1024
        hwm = statistics.median(m[1] for m in r["memory"].values()) * 1024
        print(f"| {r['mode']} | {rss / 2**20:,.0f} MiB (x{rss / raw:.2f}) | "
              f"{hwm / 2**20:,.0f} MiB (x{hwm / raw:.2f}) | "
              f"{args.keys / r['seconds']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
