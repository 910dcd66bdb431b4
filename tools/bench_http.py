"""HTTP write benchmark and failover timer for a local 3-node cluster (``make bench``).

For each protocol mode it starts the nodes of ``conf/local-3.toml`` (on free ports, data in
a temporary directory) as real processes, then:

* write throughput and latency with 1, 16 and 64 concurrent keep-alive HTTP clients
  (each client sends one ``POST /api/v1/consensus/propose`` at a time and the next as soon
  as the answer arrives); every figure is the median over ``--runs`` runs;
* failover: kill -9 the leader while a writer keeps writing through the other nodes, and
  time from the kill to the next acknowledged write; the node is restarted and caught up
  between rounds; the median and the worst of ``--failovers`` rounds (issue 17's targets:
  median <= 150 ms, worst <= 400 ms).  ``--clients ''`` skips the load runs.
* the cost of TLS: with ``--tls off,on`` (the default) each mode runs twice, on plain TCP
  and with ``[tls]`` (HTTPS to the API, mutual TLS between peers; certificates from
  ``paxoslog certs init``), and the summary prints the throughput change at each client
  count.  Without TLS the peers MAC every frame (the conf has a secret).

The load generator is wrk when it is installed (``apt-get install -y wrk``; ``--generator``
picks), else a Twisted protocol on the httptools response parser in a child process (a
thread-per-client generator would measure the GIL instead of the cluster).  The machine
is shared by the load generator and all three nodes, so the numbers are for the whole box;
wrk's TLS is C, the Python generator's costs the box about as much as the node's own, so
the TLS cost reads higher with ``--generator builtin``.

    python tools/bench_http.py [--modes multipaxos,raft] [--clients 1,16,64] [--runs 3]
                               [--duration 5] [--failovers 5] [--target leader|all]
                               [--tls off,on] [--auth off|on|both]
                               [--generator auto|wrk|builtin]

``--auth on`` requires client tokens ([auth] required = true): every write carries a
write token (verified once per node, then a SHA-256 lookup).  ``--auth both`` gives each
cluster a tokens file and ``required = false`` and measures each concurrency with
anonymous writes and with token-carrying writes, alternating the runs so that the machine's
other load falls on both alike (anonymous requests there take the no-auth path plus one
header lookup).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from paxoslog.config import load_config  # noqa: E402


# ====================================================================== cluster processes

class Cluster:
    def __init__(self, base_conf: str, protocol: str, workdir: str, tls: str = "off",
                 auth: str = "off") -> None:
        """``tls``: off, on (API and peers), api or peers (only that side).  ``auth``: off,
        on (tokens required) or both (a tokens file, tokens optional)."""
        api_tls = tls in ("on", "api")
        self.workdir = workdir
        self.tokens: dict[str, str] = {}
        self.tls = api_tls            # the API speaks HTTPS
        self.conf_path = os.path.join(workdir, "cluster.toml")
        with open(base_conf) as f:
            text = f.read()
        # Fresh ports, not the conf's: two benchmarks (or a `make run`) on one machine must
        # not measure each other's nodes.
        from paxoslog.chaos.cluster import allocate_ports
        ports = iter(allocate_ports(2 * text.count("[[nodes]]")))
        lines = []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("protocol ="):
                line = f'protocol = "{protocol}"'
            elif stripped.startswith("data_dir ="):
                line = f'data_dir = "{workdir}/data/{{node}}"'
            elif stripped.startswith(("peer =", "api =")):
                key = stripped.split("=")[0].strip()
                line = f'{key} = "127.0.0.1:{next(ports)}"'
            lines.append(line)
        if auth != "off":
            from paxoslog.tokens import Role, TokensFile, new_token, write_tokens
            records = TokensFile()
            for role in (Role.ADMIN, Role.WRITE):
                self.tokens[role.label], record = new_token(records, role, f"bench-{role.label}")
                records = TokensFile(records.tokens + (record,))
            tokens_file = os.path.join(workdir, "tokens.json")
            write_tokens(tokens_file, records)
            lines += ["", "[auth]", f'tokens_file = "{tokens_file}"',
                      f"required = {'true' if auth == 'on' else 'false'}"]
        if tls != "off":
            lines += ["", "[tls]", 'ca_file = "certs/ca.pem"',
                      'cert_file = "certs/node-{node}.pem"', 'key_file = "certs/node-{node}.key"',
                      f"api = {str(api_tls).lower()}", f"peers = {str(tls != 'api').lower()}"]
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.config = load_config(self.conf_path)
        self.ca_file = None
        self.ssl = None
        if tls != "off":
            from paxoslog.certs import init_certs
            init_certs(self.config)
        if api_tls:
            self.ca_file = self.config.tls.ca_file
            self.ssl = ssl.create_default_context(cafile=self.ca_file)
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, node_id: int) -> None:
        log = open(os.path.join(self.workdir, f"n{node_id}.log"), "ab")
        self.procs[node_id] = subprocess.Popen(
            [sys.executable, "-m", "paxoslog.cli", "serve", "--config", self.conf_path,
             "--node", str(node_id), "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT))

    def start_all(self) -> None:
        for node in self.config.nodes:
            self.start(node.id)

    def kill(self, node_id: int) -> None:
        proc = self.procs.pop(node_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        stop_processes(self.procs.values())
        self.procs.clear()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the running node processes so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for proc in self.procs.values():
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
            except OSError:
                pass
        return total

    def api(self, node_id: int):
        node = self.config.node(node_id)
        return node.api.host, node.api.port

    def connection(self, node_id: int, timeout: float):
        host, port = self.api(node_id)
        if self.tls:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self.ssl)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def status(self, node_id: int, timeout: float = 0.5) -> dict | None:
        try:
            conn = self.connection(node_id, timeout)
            conn.request("GET", "/api/v1/cluster/status", headers=self.headers("admin"))
            response = conn.getresponse()
            body = json.loads(response.read())
            conn.close()
            return body if response.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def headers(self, role: str) -> dict:
        token = self.tokens.get(role)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def wait_leader(self, timeout: float = 30.0, exclude: int | None = None) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node_id in self.procs:
                if node_id == exclude:
                    continue
                status = self.status(node_id)
                if status and status.get("role") == "leader":
                    return node_id
            time.sleep(0.05)
        raise RuntimeError("no leader")

    def wait_caught_up(self, node_id: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.wait_leader()
            top = self.status(leader)
            mine = self.status(node_id)
            if top and mine and mine["applied_index"] >= top["commit_index"] - 1:
                return
            time.sleep(0.05)
        raise RuntimeError(f"node {node_id} did not catch up")


def stop_processes(procs, timeout: float = 20.0) -> None:
    """SIGTERM every process, then wait for each; kill -9 the ones still there after
    ``timeout`` seconds."""
    procs = list(procs)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ====================================================================== load generator

def run_load(targets: list[tuple[str, int]], clients: int, duration: float,
             warmup: float, ca_file: str | None = None, token: str | None = None,
             generator: str = "builtin") -> dict:
    """Drive ``clients`` keep-alive connections for warmup+duration seconds; HTTPS when
    ``ca_file`` is given; ``token``: sent with every write.  ``generator`` "wrk" (one
    target only) runs wrk, else the Python generator below in a child process (so every
    run gets a fresh reactor)."""
    if generator == "wrk" and len(targets) == 1:
        return _run_wrk(targets[0], clients, duration, warmup, bool(ca_file), token)
    code = _LOAD_SCRIPT
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(targets), str(clients),
                           str(duration), str(warmup), ca_file or "", token or ""],
                          capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=duration * 4 + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_wrk(target, clients, duration, warmup, https: bool, token: str | None) -> dict:
    from wrkload import run_wrk
    value = "v" * 64
    requests = [("POST", "/api/v1/consensus/propose",
                 json.dumps({"key": f"k{i}", "value": value}).encode()) for i in range(1000)]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    scheme = "https" if https else "http"
    with tempfile.TemporaryDirectory(prefix="paxoslog-wrk-") as scratch:
        warm = (run_wrk(target, requests, clients, warmup, scratch, scheme, headers)
                if warmup > 0 else {"answered": 0})
        result = run_wrk(target, requests, clients, duration, scratch, scheme, headers)
    result["writes"] = round(result["rate"] * max(1, round(duration)))
    # The nodes' CPU is read around both runs: count the warm-up's answers too.
    result["answered"] += warm["answered"]
    return result


_LOAD_SCRIPT = r'''
import json, os, sys, time
import httptools
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol

targets = json.loads(sys.argv[1]); clients = int(sys.argv[2])
duration = float(sys.argv[3]); warmup = float(sys.argv[4]); ca_file = sys.argv[5]
if ca_file:
    from twisted.internet import ssl
    trust = ssl.Certificate.loadPEM(open(ca_file, "rb").read())
auth = (b"Authorization: Bearer %s\r\n" % sys.argv[6].encode()) if sys.argv[6] else b""
value = "v" * 64
latencies = []; errors = {"count": 0}; state = {"measuring": False, "running": True}
answered = {"count": 0}
clock = time.perf_counter

class Conn(Protocol):
    def __init__(self, n, host):
        self.n = n; self.i = 0; self.parser = httptools.HttpResponseParser(self)
        self.head = (b"POST /api/v1/consensus/propose HTTP/1.1\r\nHost: %s\r\n%s"
                     b"Content-Type: application/json\r\n" % (host.encode(), auth))
    def connectionMade(self):
        self.transport.setTcpNoDelay(True); self.send()
    def send(self):
        self.i += 1
        body = json.dumps({"key": f"k{self.n}-{self.i % 1000}", "value": value}).encode()
        self.t0 = clock()
        self.transport.write(self.head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    def dataReceived(self, data):
        self.parser.feed_data(data)
    def on_message_complete(self):
        answered["count"] += 1
        if self.parser.get_status_code() != 200:
            errors["count"] += 1
        elif state["measuring"]:
            latencies.append(clock() - self.t0)
        if state["running"]:
            self.send()

class Factory(ClientFactory):
    def __init__(self, n, host): self.n = n; self.host = host
    def buildProtocol(self, addr): return Conn(self.n, self.host)
    def clientConnectionFailed(self, c, reason): errors["count"] += 1

for n in range(clients):
    host, port = targets[n % len(targets)]
    if ca_file:
        reactor.connectSSL(host, port, Factory(n, f"{host}:{port}"),
                           ssl.optionsForClientTLS(host, trust))
    else:
        reactor.connectTCP(host, port, Factory(n, f"{host}:{port}"))

def start(): state["measuring"] = True; state["t0"] = clock()
def stop():
    state["t1"] = clock(); state["measuring"] = False; state["running"] = False
    reactor.callLater(0.5, reactor.stop)
reactor.callLater(warmup, start)
reactor.callLater(warmup + duration, stop)
reactor.run()
lat = sorted(latencies); elapsed = state["t1"] - state["t0"]
def pct(p): return lat[min(len(lat) - 1, int(len(lat) * p))] * 1000 if lat else float("nan")
print(json.dumps({"writes": len(lat), "rate": len(lat) / elapsed, "p50_ms": pct(0.5),
                  "p99_ms": pct(0.99), "errors": errors["count"], "answered": answered["count"]}))
'''


# ====================================================================== failover

def failover_once(cluster: Cluster) -> float:
    """Kill -9 the leader; seconds until a write sent after the kill is acknowledged."""
    leader = cluster.wait_leader()
    others = [n for n in cluster.procs if n != leader]
    conns = {}
    for n in others:
        conns[n] = cluster.connection(n, 2.0)
    body = json.dumps({"key": "failover", "value": "x"}).encode()
    headers = cluster.headers("write")
    # warm the connections
    for conn in conns.values():
        conn.request("POST", "/api/v1/consensus/propose", body, headers)
        conn.getresponse().read()
    killed_at = time.monotonic()
    cluster.kill(leader)
    attempt = 0
    while time.monotonic() - killed_at < 30:
        node = others[attempt % len(others)]
        attempt += 1
        conn = conns[node]
        try:
            conn.request("POST", "/api/v1/consensus/propose", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                elapsed = time.monotonic() - killed_at
                break
        except (OSError, http.client.HTTPException):
            conns[node] = cluster.connection(node, 2.0)
    else:
        raise RuntimeError("no write acknowledged within 30 s of the kill")
    for conn in conns.values():
        conn.close()
    cluster.start(leader)
    cluster.wait_caught_up(leader)
    return elapsed


# ====================================================================== main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default=os.path.join(ROOT, "conf", "local-3.toml"))
    parser.add_argument("--modes", default="multipaxos,raft")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--target", choices=("leader", "all"), default="leader",
                        help="send the writes to the leader only, or spread over all nodes")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    parser.add_argument("--auth", choices=("off", "on", "both"), default="off",
                        help="client tokens: off, required (on), or both alternated")
    parser.add_argument("--generator", choices=("auto", "wrk", "builtin"), default="auto",
                        help="load generator: wrk (when installed; one target), or the "
                             "built-in Python one; auto picks wrk when it is installed")
    parser.add_argument("--tls", default="off,on",
                        help="transports to measure, comma separated: off (TCP, frame MACs), "
                             "on (TLS), api or peers (TLS on that side only)")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.clients.split(",") if c]
    transports = [t for t in args.tls.split(",") if t]
    if not transports or any(t not in ("off", "on", "api", "peers") for t in transports):
        parser.error("--tls takes off, on, api, peers, comma separated")
    import wrkload
    if args.generator == "wrk" and not wrkload.available():
        parser.error("--generator wrk: wrk is not installed (apt-get install -y wrk)")
    generator = ("wrk" if args.generator != "builtin" and wrkload.available()
                 and args.target == "leader" else "builtin")
    print(f"load generator: {generator}", flush=True)
    summary = []
    modes = [m for m in args.modes.split(",") if m]
    auth_variants = {"off": [None], "on": ["token"], "both": [None, "token"]}[args.auth]
    for mode in modes:
        # Both transports' clusters run side by side (each on free ports) and their
        # runs alternate (and so do anonymous and token runs with --auth both), so a
        # change in the machine's load hits every variant alike.
        clusters: dict[str, Cluster] = {}
        try:
            for transport in transports:
                workdir = tempfile.mkdtemp(prefix=f"paxoslog-bench-{mode}-{transport}-")
                clusters[transport] = Cluster(args.conf, mode, workdir, tls=transport,
                                              auth=args.auth)
                clusters[transport].start_all()
            targets = {}
            for transport, cluster in clusters.items():
                leader = cluster.wait_leader()
                targets[transport] = ([cluster.api(leader)] if args.target == "leader"
                                      else [cluster.api(n) for n in cluster.procs])
                print(f"== {mode}, TLS {transport}: leader node {leader}, writes to "
                      f"{args.target}, {args.runs} runs x {args.duration:.0f}s", flush=True)
            for clients in concurrency:
                runs: dict[tuple, list] = {(t, v): [] for t in clusters for v in auth_variants}
                for round_ in range(args.runs):
                    # Every other round in the opposite order: a variant that always ran
                    # right after another would inherit its leftovers (the other cluster's
                    # compaction, a warm or cold cache).
                    order = list(runs.items())
                    for (transport, variant), results in (order[::-1] if round_ % 2 else order):
                        cluster = clusters[transport]
                        token = cluster.tokens.get("write") if variant else None
                        cpu = cluster.cpu_seconds()
                        result = run_load(targets[transport], clients, args.duration,
                                          args.warmup, cluster.ca_file, token, generator)
                        result["node_cpu_us"] = ((cluster.cpu_seconds() - cpu) * 1e6
                                                 / max(1, result["answered"]))
                        results.append(result)
                for (transport, variant), results in runs.items():
                    row = {"mode": mode, "tls": transport, "clients": clients,
                           "auth": "token" if variant else "anonymous",
                           "rate": statistics.median(r["rate"] for r in results),
                           "p50_ms": statistics.median(r["p50_ms"] for r in results),
                           "p99_ms": statistics.median(r["p99_ms"] for r in results),
                           "node_cpu_us": statistics.median(r["node_cpu_us"] for r in results),
                           "errors": sum(r["errors"] for r in results),
                           "runs": [round(r["rate"]) for r in results]}
                    summary.append(row)
                    print(f"   TLS {transport:3} {clients:3d} clients {row['auth']:9}: "
                          f"{row['rate']:8.0f} writes/s  p50 {row['p50_ms']:6.2f} ms  "
                          f"p99 {row['p99_ms']:7.2f} ms  nodes' CPU {row['node_cpu_us']:4.0f} us/write"
                          f"  (runs: {row['runs']}, errors {row['errors']})", flush=True)
            for transport, cluster in clusters.items() if args.failovers else ():
                times = []
                for _ in range(args.failovers):
                    times.append(failover_once(cluster))
                    print(f"   TLS {transport:3} failover: {times[-1] * 1000:.0f} ms", flush=True)
                median = statistics.median(times)
                summary.append({"mode": mode, "tls": transport,
                                "failover_median_ms": median * 1000,
                                "failover_worst_ms": max(times) * 1000,
                                "failovers_ms": [round(t * 1000) for t in times]})
                print(f"   TLS {transport:3} failover of {len(times)}: median "
                      f"{median * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms", flush=True)
        finally:
            for cluster in clusters.values():
                cluster.stop_all()
                if not args.keep:
                    shutil.rmtree(cluster.workdir, ignore_errors=True)
                else:
                    print(f"   kept {cluster.workdir}")
    print("== summary (medians)")
    for row in summary:
        if "rate" in row:
            print(f"{row['mode']:11} TLS {row['tls']:3} {row['clients']:3d} clients "
                  f"{row['auth']:9}  {row['rate']:8.0f} writes/s  p50 {row['p50_ms']:.2f} ms  "
                  f"p99 {row['p99_ms']:.2f} ms  nodes' CPU {row['node_cpu_us']:.0f} us/write")
        else:
            print(f"{row['mode']:11} TLS {row['tls']:3} failover median "
                  f"{row['failover_median_ms']:.0f} ms, worst {row['failover_worst_ms']:.0f} ms"
                  f"  (each: {row['failovers_ms']})")
    rates = {(r["mode"], r["tls"], r["auth"], r["clients"]): r for r in summary if "rate" in r}
    for (mode, tls, auth, clients), on in sorted(rates.items()):
        if tls != "off":          # TLS against plain TCP, same auth variant
            _print_cost(f"TLS {tls:5} cost {mode:11} {auth:9}", clients, on,
                        rates.get((mode, "off", auth, clients)))
        if auth == "token":       # tokens against anonymous writes, same transport
            _print_cost(f"token cost {mode:11} TLS {tls:3}", clients, on,
                        rates.get((mode, tls, "anonymous", clients)))
    return 0


def _print_cost(label: str, clients: int, on: dict, off: dict | None) -> None:
    if off is None or not off["rate"]:
        return
    # Runs of the same round ran back to back: the median of their ratios is less moved
    # by the machine's load drifting during the session than the ratio of the medians.
    paired = statistics.median(a / b - 1 for a, b in zip(on["runs"], off["runs"]) if b)
    print(f"{label} {clients:3d} clients: throughput "
          f"{(on['rate'] / off['rate'] - 1) * 100:+.1f} % (paired runs {paired * 100:+.1f} %), p50 "
          f"{on['p50_ms'] - off['p50_ms']:+.2f} ms, p99 {on['p99_ms'] - off['p99_ms']:+.2f} ms, "
          f"nodes' CPU per write {(on['node_cpu_us'] / max(off['node_cpu_us'], 1e-9) - 1) * 100:+.1f} %")


if __name__ == "__main__":
    sys.exit(main())
