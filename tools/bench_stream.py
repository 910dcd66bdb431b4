"""Batches, pipelined requests and streams on a local 3-node cluster (a benchmark, not a
test): durable writes per second through ``POST /api/v1/consensus/batch`` and through the
WebSocket channel, and tail/watch delivery to one consumer and to 100 watchers of one
prefix, with the write-to-watcher latency.

For each protocol mode it starts three ``paxoslog serve`` processes (free ports, data in a
temporary directory, fsync on as always), then runs each measurement ``--runs`` times and
prints the medians:

* ``http-batch``: ``--writers`` processes, each a keep-alive HTTP client sending one batch
  of ``--batch`` puts (128-byte values) at a time to the leader;
* ``ws-batch``: one process, one WebSocket connection, ``--window`` batch requests in
  flight (the pipelined channel carrying batches);
* ``ws-ops``: one process, one WebSocket connection, single ``put`` requests, 100 per
  frame, up to 1000 in flight (the pipelined channel request by request);
* ``watch-1``: ``ws-batch`` load while one client follows a watch of the written prefix
  and a tail, on a follower;
* ``watch-100``: the same load while 100 connections each watch the prefix on a follower;
* ``watch-latency``: a steady 5,000 puts/s (50 batches of 100 per second) while one
  client watches: the write-to-watcher latency when nothing is saturated.

A batch or put answered 503/504 (an overloaded machine: "no answer in time") is not
acknowledged, so it is not counted; the run goes on and reports ``unacked_ops``.

Every value starts with the time it was sent, so a watcher measures write-to-watcher
latency (send -> commit -> apply on its node -> delivery; the commit is inside it).  The
watcher processes count events without decoding every message (the count of ``"type":
"put"`` in each frame; one connection decodes everything for the latency); the nodes,
the load generators and the watchers all share this machine's cores.

    python tools/bench_stream.py [--modes multipaxos,raft] [--runs 3] [--duration 8]
                                 [--only http-batch,ws-batch,...] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VALUE_BYTES = 128
PREFIX = "bench/"
SESSION_RESULTS = 50_000
_HEAD = re.compile(rb'\{"id":(\d+),"status":(\d+)')
# Answers that say "no answer in time" / "not now" on an overloaded machine (other work on
# the cores): the batch is not acknowledged, so it is not counted; the run goes on and
# reports how many operations went unacknowledged.  Anything else but 200 is a bug.
_OVERLOADED = (503, 504)


# ====================================================================== workers

def value(n: int) -> str:
    head = f"{time.time():.6f}:{n}:"
    return head + "x" * (VALUE_BYTES - len(head))


def worker_http_batch(args) -> dict:
    host, port = args.endpoint.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    done = total = unacked = 0
    latencies = []
    t_end = time.monotonic() + args.warmup + args.duration
    t_start = time.monotonic() + args.warmup
    n = 0
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        ops = [{"key": f"{PREFIX}{args.tag}/{(n + i) % 5000}", "value": value(n + i)}
               for i in range(args.batch)]
        n += args.batch
        sent = time.monotonic()
        conn.request("POST", "/api/v1/consensus/batch", json.dumps({"ops": ops}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        if response.status in _OVERLOADED:
            unacked += args.batch                 # not acknowledged: not counted
            continue
        if response.status != 200:
            raise SystemExit(f"batch answered {response.status}: {body[:200]!r}")
        total += args.batch
        if sent >= t_start:
            done += args.batch
            latencies.append(time.monotonic() - sent)
    return {"ops": done, "ops_all": total, "seconds": args.duration,
            "batch_latency": latencies, "unacked": unacked}


def _ws_factory(url: str, protocol_class, loop):
    from autobahn.asyncio.websocket import WebSocketClientFactory
    factory = WebSocketClientFactory(url, protocols=["paxoslog.v1.json"], loop=loop)
    factory.protocol = protocol_class
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0,
                               autoPingInterval=0, utf8validateIncoming=False)
    return factory


async def _connect(endpoint: str, protocol_class):
    loop = asyncio.get_running_loop()
    host, port = endpoint.split(":")
    _, proto = await loop.create_connection(
        _ws_factory(f"ws://{endpoint}/api/v1/ws", protocol_class, loop), host, int(port))
    await proto.opened
    return proto


def _client_protocol():
    from autobahn.asyncio.websocket import WebSocketClientProtocol

    class Proto(WebSocketClientProtocol):
        def __init__(self):
            super().__init__()
            self.opened = asyncio.get_event_loop().create_future()
            self.on_frame = None

        def onOpen(self):
            self.opened.set_result(True)

        def onMessage(self, payload, isBinary):
            self.on_frame(payload)
    return Proto


def worker_ws_batch(args) -> dict:
    async def main():
        proto = await _connect(args.endpoint, _client_protocol())
        state = {"done": 0, "all": 0, "inflight": 0, "n": 0, "measuring": False,
                 "unacked": 0}
        latencies = []
        sent_at = {}
        wake = asyncio.Event()

        def on_frame(payload: bytes) -> None:
            # Only the answers' heads are read (ids and statuses): a client that checks
            # every result would spend more than the nodes do per operation.
            heads = _HEAD.findall(payload)
            for request_id, status in heads:
                if status != b"200" and int(status) not in _OVERLOADED:
                    raise SystemExit(f"batch answered {payload[:300]!r}")
                request_id = int(request_id)
                reply = {"id": request_id}
                state["inflight"] -= 1
                if status != b"200":
                    sent_at.pop(request_id)
                    state["unacked"] += args.batch
                    continue
                state["all"] += args.batch
                t0, counted = sent_at.pop(reply["id"])
                if counted and state["measuring"]:
                    state["done"] += args.batch
                    latencies.append(time.monotonic() - t0)
            wake.set()
        proto.on_frame = on_frame
        loop = asyncio.get_running_loop()
        t_start = loop.time() + args.warmup
        t_end = t_start + args.duration
        request_id = 0

        def send_one() -> None:
            nonlocal request_id
            request_id += 1
            ops = [{"key": f"{PREFIX}{args.tag}/{(state['n'] + i) % 5000}",
                    "value": value(state["n"] + i)} for i in range(args.batch)]
            state["n"] += args.batch
            sent_at[request_id] = (time.monotonic(), loop.time() >= t_start)
            proto.sendMessage(json.dumps({"id": request_id, "op": "batch",
                                          "ops": ops}).encode())
            state["inflight"] += 1
        while loop.time() < t_end:
            state["measuring"] = loop.time() >= t_start
            if args.rate:                         # paced: one batch per tick
                await asyncio.sleep(1.0 / args.rate)
                if state["inflight"] < args.window:
                    send_one()
                continue
            while state["inflight"] < args.window:
                send_one()
            wake.clear()
            await wake.wait()
        proto.sendClose(1000)
        return {"ops": state["done"], "ops_all": state["all"], "seconds": args.duration,
                "batch_latency": latencies, "unacked": state["unacked"]}
    return asyncio.run(main())


def worker_ws_ops(args) -> dict:
    async def main():
        proto = await _connect(args.endpoint, _client_protocol())
        state = {"done": 0, "all": 0, "inflight": 0, "measuring": False, "unacked": 0}
        wake = asyncio.Event()

        def on_frame(payload: bytes) -> None:
            count = payload.count(b',"status":200,')
            overloaded = sum(payload.count(b',"status":%d,' % s) for s in _OVERLOADED)
            state["all"] += count
            state["unacked"] += overloaded
            if payload.count(b'{"id":') != count + overloaded:
                raise SystemExit(f"a request failed: {payload[:300]!r}")
            state["inflight"] -= count + overloaded
            if state["measuring"]:
                state["done"] += count
            wake.set()
        proto.on_frame = on_frame
        loop = asyncio.get_running_loop()
        t_start = loop.time() + args.warmup
        t_end = t_start + args.duration
        n = 0
        while loop.time() < t_end:
            state["measuring"] = loop.time() >= t_start
            while state["inflight"] + 100 <= args.window:
                frame = [{"id": n + i, "op": "put", "key": f"{PREFIX}{args.tag}/{(n + i) % 5000}",
                          "value": value(n + i)} for i in range(100)]
                n += 100
                proto.sendMessage(json.dumps(frame).encode())
                state["inflight"] += 100
            wake.clear()
            await wake.wait()
        proto.sendClose(1000)
        return {"ops": state["done"], "ops_all": state["all"], "seconds": args.duration,
                "unacked": state["unacked"]}
    return asyncio.run(main())


def worker_watch(args) -> dict:
    """``args.watchers`` connections watch PREFIX (one also tails); counts and latency."""
    async def main():
        protos = []
        counts = [0] * args.watchers
        latencies = []
        entries = {"ops": 0, "entries": 0}
        state = {"measuring": False}
        for i in range(args.watchers):
            proto = await _connect(args.endpoint, _client_protocol())
            protos.append(proto)

            def on_frame(payload: bytes, i=i) -> None:
                if not state["measuring"]:
                    return
                counts[i] += payload.count(b'{"type":"put"')
                if i == 0:
                    now = time.time()
                    for message in ([json.loads(payload)] if payload[:1] == b"{"
                                    else json.loads(payload)):
                        if message.get("type") == "events":
                            for event in message["events"]:
                                latencies.append(now - float(event["value"].split(":", 1)[0]))
                        elif message.get("type") == "entries":
                            entries["entries"] += len(message["entries"])
                            for entry in message["entries"]:
                                for command in entry["command"] or ():
                                    entries["ops"] += len(command.get("batch", ())) or 1
            proto.on_frame = on_frame
            proto.sendMessage(json.dumps({"id": 1, "op": "watch", "prefix": PREFIX}).encode())
            if i == 0 and args.tail:
                proto.sendMessage(json.dumps({"id": 2, "op": "tail"}).encode())
        print("READY", flush=True)
        await asyncio.sleep(args.warmup)
        state["measuring"] = True
        await asyncio.sleep(args.duration)
        state["measuring"] = False
        for proto in protos:
            proto.sendClose(1000)
        return {"events": sum(counts), "per_watcher": counts, "seconds": args.duration,
                "latency": latencies, "tail_entries": entries["entries"],
                "tail_ops": entries["ops"]}
    return asyncio.run(main())


WORKERS = {"http-batch": worker_http_batch, "ws-batch": worker_ws_batch,
           "ws-ops": worker_ws_ops, "watch": worker_watch}


def run_worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(WORKERS))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--watchers", type=int, default=1)
    parser.add_argument("--tail", action="store_true")
    parser.add_argument("--tag", default="w")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="ws-batch: batches per second (0: as fast as the window allows)")
    args = parser.parse_args(argv)
    started = time.process_time()
    result = WORKERS[args.kind](args)
    result["cpu_s"] = time.process_time() - started
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ====================================================================== the cluster

class Cluster:
    def __init__(self, protocol: str, workdir: str, profile_dir: str | None) -> None:
        from paxoslog.chaos.cluster import allocate_ports
        self.workdir = workdir
        self.profile_dir = profile_dir
        ports = allocate_ports(6)
        self.api = {n: ports[2 + n] for n in (1, 2, 3)}
        nodes = "".join(f'\n[[nodes]]\nid = {n}\npeer = "127.0.0.1:{ports[n - 1]}"\n'
                        f'api = "127.0.0.1:{self.api[n]}"\n' for n in (1, 2, 3))
        self.conf = os.path.join(workdir, "cluster.toml")
        with open(self.conf, "w") as f:
            f.write(f'cluster = "bench-stream"\nprotocol = "{protocol}"\n'
                    f'data_dir = "{workdir}/data/{{node}}"\nsecret = "bench-secret-123"\n'
                    "\n[timing]\ntick_ms = 50\nheartbeat_ticks = 2\nelection_ticks = 20\n"
                    # Each local snapshot encodes and verifies the session table in single
                    # GIL-holding calls: 500,000 kept results (the default) stall a node
                    # for seconds, and batches fill the table in seconds (docs/websocket.md).
                    f"\n[limits]\nsession_results_total_max = {SESSION_RESULTS}\n"
                    f"{nodes}")
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self) -> None:
        for n in (1, 2, 3):
            env = dict(os.environ, PYTHONPATH=ROOT)
            if self.profile_dir:
                env["PAXOSLOG_PROFILE"] = os.path.join(self.profile_dir, "node")
            log = open(os.path.join(self.workdir, f"n{n}.log"), "ab")
            self.procs[n] = subprocess.Popen(
                [sys.executable, "-m", "paxoslog.cli", "serve", "--config", self.conf,
                 "--node", str(n), "--log-level", "warn"], stdout=log,
                stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def status(self, n: int) -> dict | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.api[n], timeout=2)
            conn.request("GET", "/api/v1/cluster/status")
            response = conn.getresponse()
            return json.loads(response.read()) if response.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def leader(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = [self.status(n) for n in (1, 2, 3)]
            leaders = {v["leader"] for v in views if v}
            if len(leaders) == 1 and None not in leaders and all(views):
                return leaders.pop()
            time.sleep(0.1)
        raise SystemExit("no leader")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM if self.profile_dir else signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=60)


def spawn(kind: str, endpoint: str, duration: float, **options) -> subprocess.Popen:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--endpoint",
            endpoint, "--duration", str(duration)]
    for name, value_ in options.items():
        flag = "--" + name.replace("_", "-")
        if value_ is not False:
            argv += [flag] if value_ is True else [flag, str(value_)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))


def result_of(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=300)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"a worker failed (exit {proc.returncode}): {out[-500:]}")


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        raise SystemExit(f"a watcher failed to start: {line!r}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


# ====================================================================== measurements

def measure(cluster: Cluster, kind: str, duration: float, writers: int, window: int) -> dict:
    """One measurement; adds the CPU the nodes and the load generators used per 1,000
    operations, and what that projects to on two otherwise idle cores."""
    before = {n: cpu_seconds(p.pid) for n, p in cluster.procs.items()}
    leader = cluster.leader()
    out = _measure(cluster, kind, duration, writers, window)
    used = {n: cpu_seconds(p.pid) - before[n] for n, p in cluster.procs.items()}
    nodes_cpu = sum(used.values())
    ops = out.pop("ops_all")
    worker = out.pop("worker_cpu_s", 0.0)
    total = nodes_cpu + worker
    if ops:
        out["cpu_us_per_op"] = 1e6 * total / ops
        out["leader_us"] = 1e6 * used[leader] / ops
        out["followers_us"] = 1e6 * (nodes_cpu - used[leader]) / ops / 2
        out["client_us"] = 1e6 * worker / ops
        out["projected_ops_per_s_2_cores"] = 2 * ops / total
    out["box_load"] = os.getloadavg()[0]
    return out


def _measure(cluster: Cluster, kind: str, duration: float, writers: int, window: int) -> dict:
    leader = cluster.leader()
    follower = next(n for n in (1, 2, 3) if n != leader)
    at = lambda n: f"127.0.0.1:{cluster.api[n]}"          # noqa: E731
    if kind == "http-batch":
        procs = [spawn("http-batch", at(leader), duration, tag=f"h{i}")
                 for i in range(writers)]
        results = [result_of(p) for p in procs]
        ops = sum(r["ops"] for r in results)
        lat = [x for r in results for x in r["batch_latency"]]
        return {"ops_per_s": ops / duration, "batch_p50_ms": pct(lat, 0.5) * 1000,
                "batch_p99_ms": pct(lat, 0.99) * 1000,
                "worker_cpu_s": sum(r["cpu_s"] for r in results),
                "ops_all": sum(r["ops_all"] for r in results),
                "unacked_ops": sum(r["unacked"] for r in results)}
    if kind == "ws-batch":
        r = result_of(spawn("ws-batch", at(leader), duration, window=window))
        return {"ops_per_s": r["ops"] / duration,
                "batch_p50_ms": pct(r["batch_latency"], 0.5) * 1000,
                "batch_p99_ms": pct(r["batch_latency"], 0.99) * 1000, "worker_cpu_s": r["cpu_s"],
                "ops_all": r["ops_all"], "unacked_ops": r["unacked"]}
    if kind == "ws-ops":
        r = result_of(spawn("ws-ops", at(leader), duration, window=1000))
        return {"ops_per_s": r["ops"] / duration, "worker_cpu_s": r["cpu_s"],
                "ops_all": r["ops_all"], "unacked_ops": r["unacked"]}
    watchers = 100 if kind == "watch-100" else 1
    watch = spawn("watch", at(follower), duration, watchers=watchers,
                  tail=kind == "watch-1", warmup=3.0)
    wait_ready(watch)
    paced = {"rate": 50, "batch": 100} if kind == "watch-latency" else {}
    writer = spawn("ws-batch", at(leader), duration + 1.0, window=window, warmup=2.5, **paced)
    w = result_of(writer)
    r = result_of(watch)
    out = {"write_ops_per_s": w["ops"] / (duration + 1.0), "ops_all": w["ops_all"],
           "unacked_ops": w["unacked"],
           "worker_cpu_s": w["cpu_s"] + r["cpu_s"],
           "events_per_s_per_watcher": statistics.median(r["per_watcher"]) / duration,
           "events_per_s_total": r["events"] / duration,
           "latency_p50_ms": pct(r["latency"], 0.5) * 1000,
           "latency_p99_ms": pct(r["latency"], 0.99) * 1000}
    if kind == "watch-1":
        out["tail_ops_per_s"] = r["tail_ops"] / duration
        out["tail_entries_per_s"] = r["tail_entries"] / duration
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return run_worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="multipaxos,raft")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--writers", type=int, default=3, help="HTTP batch writers")
    parser.add_argument("--window", type=int, default=8, help="WebSocket batches in flight")
    parser.add_argument("--only",
                        default="http-batch,ws-batch,ws-ops,watch-1,watch-100,watch-latency")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="cProfile the nodes (PAXOSLOG_PROFILE) into DIR")
    parser.add_argument("--json", default=None, help="also write the medians here")
    args = parser.parse_args()
    kinds = args.only.split(",")
    table: dict = {}
    for mode in args.modes.split(","):
        workdir = tempfile.mkdtemp(prefix=f"bench-stream-{mode}-")
        cluster = Cluster(mode, workdir, args.profile)
        cluster.start()
        try:
            cluster.leader()
            for kind in kinds:
                runs = []
                for run in range(args.runs):
                    runs.append(measure(cluster, kind, args.duration, args.writers,
                                        args.window))
                    print(f"{mode:10} {kind:11} run {run + 1}: "
                          + ", ".join(f"{k}={v:,.1f}" for k, v in runs[-1].items()),
                          flush=True)
                table[(mode, kind)] = {k: statistics.median(r[k] for r in runs)
                                       for k in runs[0]}
        finally:
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nmedians of", args.runs, "runs:")
    for (mode, kind), row in table.items():
        print(f"{mode:10} {kind:11} " + ", ".join(f"{k}={v:,.1f}" for k, v in row.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{m} {k}": v for (m, k), v in table.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
