"""Coordination benchmark (issue 14's numbers) on a local 3-node cluster per protocol mode.

Starts the nodes of ``conf/local-3.toml`` (ports from it, data in a temporary directory)
as real processes, like tools/bench_http.py, and prints, as medians over ``--runs`` runs:

* **txn/s**: transactions of 3 compares + 3 puts (``POST /api/v1/consensus/txn``) at
  ``--clients`` (64) keep-alive connections, beside single puts (``/consensus/propose``)
  at the same concurrency;
* **keep-alives/s with 10,000 live leases**: ``--leases`` leases are granted (long TTL),
  then ``POST /api/v1/lease/keepalive`` round-robin over all of them at ``--clients``
  connections to the leader (one node: keep-alives are served by the leader alone);
* **lock hand-over**: two Twisted lock holders (paxoslog/recipes.py: the waiter watches
  the holder's key; ``--poll-ms`` is its fallback when no watch can be opened) on one
  lock; the time from the holder's release call to the waiter's
  acquisition, median and p99 over ``--handovers`` hand-overs.

The load generator is a Twisted protocol on the httptools parser in a child process (a
fresh reactor per run); the machine is shared by it and all three nodes.

    python tools/bench_coord.py [--modes multipaxos,raft] [--clients 64] [--runs 3]
                                [--duration 5] [--leases 10000] [--handovers 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from bench_http import Cluster  # noqa: E402

_LOAD = r'''
import json, sys, time
import httptools
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol

kind, targets, clients = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
duration, warmup, ids = float(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
latencies = []; errors = {"count": 0, "first": None}
state = {"measuring": False, "running": True}
clock = time.perf_counter
counter = {"n": 0}

def request(n, i, host):
    if kind == "put":
        path, body = "/api/v1/consensus/propose", {"key": f"k{n}-{i % 100}", "value": i}
    elif kind == "txn":
        keys = [f"t{n}-{j}" for j in range(3)]
        path, body = "/api/v1/consensus/txn", {
            "compare": [{"key": k, "target": "version", "cmp": ">=", "value": 0} for k in keys],
            "success": [{"op": "put", "key": k, "value": i} for k in keys]}
    elif kind == "grant":
        path, body = "/api/v1/lease/grant", {"ttl_ms": 600000}
    else:
        counter["n"] += 1
        path, body = "/api/v1/lease/keepalive", {"id": ids[counter["n"] % len(ids)]}
    data = json.dumps(body).encode()
    # The real host:port: a node refuses a Host that does not name it (DNS rebinding).
    return (b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host, len(data), data))

class Conn(Protocol):
    def __init__(self, n):
        self.n = n; self.i = 0; self.parser = httptools.HttpResponseParser(self); self.body = b""
        self.host = ("%s:%d" % tuple(targets[n % len(targets)])).encode()
    def connectionMade(self):
        self.transport.setTcpNoDelay(True); self.send()
    def send(self):
        self.i += 1; self.t0 = clock(); self.transport.write(request(self.n, self.i, self.host))
    def dataReceived(self, data):
        self.parser.feed_data(data)
    def on_body(self, body):
        self.body += body
    def on_message_complete(self):
        status = self.parser.get_status_code()
        if status != 200:
            errors["count"] += 1
            if errors["first"] is None:
                errors["first"] = "%d %s" % (status, self.body[:300].decode("utf-8", "replace"))
            if kind == "grant" and state["running"]:
                stop()                   # every lease is needed: give up, do not spin
        elif state["measuring"]:
            latencies.append(clock() - self.t0)
            if kind == "grant":
                ids.append(json.loads(self.body)["result"]["id"])
        self.body = b""
        if state["running"] and not (kind == "grant" and len(ids) >= int(duration)):
            self.send()
        elif kind == "grant" and state["running"]:
            stop()

class Factory(ClientFactory):
    def __init__(self, n): self.n = n
    def buildProtocol(self, addr): return Conn(self.n)
    def clientConnectionFailed(self, c, reason): errors["count"] += 1

for n in range(clients):
    host, port = targets[n % len(targets)]
    reactor.connectTCP(host, port, Factory(n))

def start(): state["measuring"] = True; state["t0"] = clock()
def stop():
    if state["running"]:
        state["t1"] = clock(); state["measuring"] = False; state["running"] = False
        reactor.callLater(0.5, reactor.stop)
reactor.callLater(warmup, start)
if kind != "grant":
    reactor.callLater(warmup + duration, stop)
reactor.run()
lat = sorted(latencies); elapsed = state["t1"] - state["t0"]
def pct(p): return lat[min(len(lat) - 1, int(len(lat) * p))] * 1000 if lat else float("nan")
print(json.dumps({"ops": len(lat), "rate": len(lat) / elapsed, "p50_ms": pct(0.5),
                  "p99_ms": pct(0.99), "errors": errors["count"],
                  "first_error": errors["first"], "ids": ids if kind == "grant" else []}))
'''

_HANDOVER = r'''
import json, sys, time
from twisted.internet import reactor, defer, task
from paxoslog.client import Client
from paxoslog.recipes import TwistedLock

endpoints, rounds, poll = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
gaps = []

async def main():
    a = Client(endpoints, reactor=reactor, timeout=10.0)
    b = Client(endpoints, reactor=reactor, timeout=10.0)
    holder = TwistedLock(a, "bench", ttl_ms=5000, poll_s=poll)
    await holder.acquire()
    for _ in range(rounds):
        waiter = TwistedLock(b, "bench", ttl_ms=5000, poll_s=poll)
        acquired = waiter.acquire()
        await task.deferLater(reactor, 0.2, lambda: None)     # the waiter is queued
        released = time.perf_counter()
        await holder.release()
        await acquired
        gaps.append(time.perf_counter() - released)
        holder, a, b = waiter, b, a                           # roles swap
    await holder.release()

def done(result):
    reactor.stop()
    return result
defer.Deferred.fromCoroutine(main()).addBoth(done)
reactor.run()
gaps.sort()
print(json.dumps({"p50_ms": gaps[len(gaps) // 2] * 1000,
                  "p99_ms": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] * 1000,
                  "n": len(gaps)}))
'''


def _child(code: str, *args: str, timeout: float = 600) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def load(kind: str, targets, clients: int, duration: float, warmup: float = 1.0,
         ids=()) -> dict:
    result = _child(_LOAD, kind, json.dumps(targets), str(clients), str(duration), str(warmup),
                    json.dumps(list(ids)), timeout=duration * 4 + 300)
    if result["first_error"] is not None and (kind == "grant" or not result["ops"]):
        raise RuntimeError(f"{kind}: {result['errors']} failed requests, the first: "
                           f"{result['first_error']}")
    return result


def bench_mode(mode: str, args) -> dict:
    workdir = tempfile.mkdtemp(prefix=f"bench-coord-{mode}-")
    cluster = Cluster(os.path.join(ROOT, "conf", "local-3.toml"), mode, workdir)  # fresh ports
    cluster.start_all()
    try:
        leader = cluster.wait_leader()
        everyone = [cluster.api(n) for n in sorted(cluster.procs)]
        out: dict = {}
        for kind in ("put", "txn"):
            runs = [load(kind, everyone, args.clients, args.duration) for _ in range(args.runs)]
            out[kind] = {k: statistics.median(r[k] for r in runs)
                         for k in ("rate", "p50_ms", "p99_ms", "errors")}
        granted = load("grant", [cluster.api(leader)], args.clients, args.leases, warmup=0)
        ids = granted["ids"]
        runs = [load("keepalive", [cluster.api(leader)], args.clients, args.duration, ids=ids)
                for _ in range(args.runs)]
        out["keepalive"] = {k: statistics.median(r[k] for r in runs)
                            for k in ("rate", "p50_ms", "p99_ms", "errors")}
        out["keepalive"]["leases"] = len(ids)
        endpoints = [f"http://{h}:{p}" for h, p in everyone]
        runs = [_child(_HANDOVER, json.dumps(endpoints), str(args.handovers),
                       str(args.poll_ms / 1000.0)) for _ in range(args.runs)]
        out["handover"] = {k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p99_ms")}
        return out
    finally:
        cluster.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="multipaxos,raft")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--leases", type=int, default=10_000)
    p.add_argument("--handovers", type=int, default=50)
    p.add_argument("--poll-ms", type=float, default=10.0)
    args = p.parse_args()
    results = {mode: bench_mode(mode, args) for mode in args.modes.split(",")}
    print(f"\n{'mode':<11} {'puts/s':>8} {'txn/s':>8} {'txn p50':>8} {'txn p99':>8} "
          f"{'keepalive/s':>12} {'leases':>7} {'handover p50':>13} {'p99':>8}")
    for mode, r in results.items():
        print(f"{mode:<11} {r['put']['rate']:8.0f} {r['txn']['rate']:8.0f} "
              f"{r['txn']['p50_ms']:7.1f}ms {r['txn']['p99_ms']:7.1f}ms "
              f"{r['keepalive']['rate']:12.0f} {r['keepalive']['leases']:7d} "
              f"{r['handover']['p50_ms']:11.1f}ms {r['handover']['p99_ms']:6.1f}ms")
    print(f"\n(medians over {args.runs} runs; {args.clients} connections; txn = 3 compares + "
          f"3 puts; keep-alives to the leader; lock waiters watch the holder's key)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
