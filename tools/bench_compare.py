"""paxoslog (both modes) against etcd on this machine, same workloads, one load generator
(``make bench-compare``; issue 17).

Install the comparison tools once (Debian bookworm: etcd 3.4.23, wrk 4.1.0)::

    apt-get install -y etcd-server wrk

For each of ``--repeat`` rounds it starts every system, each on fresh 127.0.0.1 ports with
data in a temporary directory and fsync on (paxoslog always fsyncs its WAL; etcd does unless
told otherwise), then runs each workload on every system in turn, so that the figures
compared were measured seconds apart (the systems not measured are paused meanwhile,
SIGSTOP, and each is resumed and settled under one leader before it is measured), and the
order rotates between rounds, so a change in the machine's other load falls on all of
them alike:

* paxoslog, ``multipaxos`` and ``raft``: the 3 nodes of ``conf/local-3.toml`` (its timings)
  through tools/bench_http.py's ``Cluster`` (no tokens, no TLS: the same defaults as
  ``make bench-http``);
* etcd, when the ``etcd`` binary is installed: 3 members, their v3 HTTP/JSON gateway
  (``POST /v3/kv/put`` and ``/v3/kv/range`` with base64 keys and values); without it the
  run says so and measures paxoslog alone.

It writes the 1,000 keys once, then drives each workload at the leader for
``--warmup`` + ``--duration`` seconds (the warm-up is not measured):

* puts of 128-byte values over 1,000 keys with 1, 64 and 256 connections (paxoslog
  ``POST /api/v1/consensus/propose``; etcd ``/v3/kv/put``);
* linearizable gets of those keys with 64 connections (paxoslog
  ``GET /api/v1/consensus/query?key=`` whose default consistency is linearizable; etcd
  ``/v3/kv/range`` with its default ``serializable=false``);
* ``--failovers`` times per round a kill -9 of the leader and as many pauses of it
  (SIGSTOP: a stalled leader whose sockets stay open; ``--pauses`` sets their number
  apart), alternating, each timed from the fault to the first put acknowledged through
  another node/member, with the same prober for every system (``time_to_next_write``): a
  new put every 50 ms through the other members in turn, 5 s timeout each, the first
  acknowledgement counting (the leader: paxoslog's ``/api/v1/cluster/status``, etcd's
  ``/v3/maintenance/status``).  A killed leader is restarted, a paused one resumed
  (SIGCONT), and the next measurement waits until every member names the same leader and
  the old one has caught up with it.

The load generator is wrk with a generated Lua script (it cycles over the 1,000 keys and
prints the latency percentiles and requests/s from ``done()``) when ``wrk`` is installed,
else a built-in asyncio generator that keeps N keep-alive connections busy (one request at
a time per connection, the next as soon as the answer arrives); both systems always get the
same one.  The machine is shared by the generator and the nodes.

The report, ``reports/bench-compare-<timestamp>.md``, holds the medians over the rounds, the
ratios to etcd measured in the same run, issue 17's goals marked met or not met, and the
load average at the start and the end; ``.png`` next to it plots the latency CDFs per
workload, throughput against connections and each kill and pause time (needs matplotlib:
``pip install -e '.[plot]'``; skipped without it).

    python tools/bench_compare.py [--repeat 3] [--duration 5] [--warmup 1] [--failovers 2]
                                  [--pauses N] [--modes multipaxos,raft]
                                  [--generator auto|wrk|builtin]
                                  [--etcd-timings default|conf] [--no-etcd]

Every node and etcd member is stopped on exit, on Ctrl-C and on SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import ctypes
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from bench_compare_report import (ETCD, FAULTS, KEYS, WORKLOADS,  # noqa: E402
                                  median_result, percentiles_of, plot, render_report,
                                  result_of)
from bench_http import Cluster, stop_processes  # noqa: E402
from wrkload import run_wrk  # noqa: E402

VALUE = ("0123456789abcdef" * 8).encode()          # 128 bytes

def _key(i: int) -> str:
    return f"bench-{i:04d}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_until(predicate, timeout: float, what: str, every: float = 0.05):
    """Poll ``predicate`` until it returns something true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _post_json(address: tuple[str, int], path: str, body: dict, timeout: float = 2.0):
    """(status, decoded JSON or None); raises OSError/HTTPException on transport errors."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body).encode(),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, None


# ====================================================================== the systems

class ProcessFaults:
    """Faults by signal to a member's process, shared by both systems.  A subclass has
    ``procs`` (member -> Popen of the running ones), ``start_member(member)`` and
    ``progress(member)`` (see ``wait_settled``)."""

    def fault(self, member: int, kind: str) -> None:
        """``kill``: kill -9 (the kernel resets its connections); ``pause``: SIGSTOP (a
        stalled process whose sockets stay open)."""
        if kind == "kill":
            proc = self.procs.pop(member)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            self.procs[member].send_signal(signal.SIGSTOP)

    def heal(self, member: int, kind: str) -> None:
        """Restart a killed member or SIGCONT a paused one, then wait until every member
        agrees on one leader and this member has caught up with it."""
        if kind == "kill":
            self.start_member(member)
        else:
            self.procs[member].send_signal(signal.SIGCONT)
        wait_settled(self, member)

    def leader_and_others(self) -> tuple[int, list[int]]:
        leader = self.wait_leader()
        return leader, [m for m in self.procs if m != leader]

    def resume_all(self) -> None:
        """SIGCONT everything (a paused process would not act on the SIGTERM of a stop)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)

    def pause_all(self) -> None:
        """SIGSTOP every member: the system takes no CPU while another one is measured."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGSTOP)


def measure_alone(system, running: list) -> None:
    """Pause every other running system, resume ``system`` and wait until it is settled
    under one leader (a whole cluster resumed from a pause may elect anew), so that the
    idle systems neither take CPU nor wake up on the cores of the one measured."""
    for other in running:
        if other is not system:
            other.pause_all()
    system.resume_all()
    wait_settled(system, system.wait_leader())


def wait_settled(system, member: int, timeout: float = 60.0) -> None:
    """Until every running member names the same leader, that leader says it leads, and
    ``member`` has applied up to the leader's index (less one).  ``system.progress(m)``:
    {"id", "leader", "applied", "index"} or None when ``m`` does not answer.  A member
    resumed after a pause may still believe it leads until it hears the new term, so
    asking "who says it leads" alone could pick it and compare it with itself."""
    def settled() -> bool:
        views = {m: system.progress(m) for m in list(system.procs)}
        if not all(views.values()):
            return False
        leaders = {v["leader"] for v in views.values()}
        if len(leaders) != 1 or None in leaders:
            return False
        top = next((v for v in views.values() if v["id"] == next(iter(leaders))), None)
        return top is not None and views[member]["applied"] >= top["index"] - 1
    wait_until(settled, timeout, f"{system.name}: member {member} to catch up under one leader")


def time_to_next_write(system, kind: str, every: float = 0.05, timeout: float = 5.0,
                       give_up: float = 30.0) -> float:
    """Seconds from a fault of the leader (``kind``: ``kill`` or ``pause``) to the first put
    acknowledged through another member, the same prober for every system: from the fault
    a new put every ``every`` seconds through the other members in turn (a new connection
    each, ``timeout`` seconds), the first acknowledgement counting.  A put that reached a
    follower still following the dead or stalled leader may wait out the server's own
    request timeout, so a sequential client would time its own timeout; this is the
    earliest moment a client could have had a write acknowledged.  Then the leader is
    restarted or resumed and caught up (``system.heal``) before this returns."""
    leader, others = system.leader_and_others()
    for member in others:
        if not system.put(member, 2.0):
            raise RuntimeError(f"{system.name}: member {member} refused a put before the fault")
    acked = threading.Event()
    acked_at: list[float] = []

    def attempt(member: int) -> None:
        if not acked.is_set() and system.put(member, timeout):
            acked_at.append(time.monotonic())
            acked.set()

    with concurrent.futures.ThreadPoolExecutor(max_workers=128) as pool:
        faulted_at = time.monotonic()
        system.fault(leader, kind)
        n = 0
        while not acked.is_set():
            if time.monotonic() - faulted_at > give_up:
                raise RuntimeError(f"{system.name}: no put acknowledged within {give_up:.0f} s "
                                   f"of the {kind} of the leader")
            pool.submit(attempt, others[n % len(others)])
            n += 1
            acked.wait(every)          # the probing rate; returns at once on the ack
        elapsed = min(acked_at) - faulted_at
        # before the pool waits for the puts still in flight (a paused leader holds them)
        system.heal(leader, kind)
    return elapsed


def _acknowledged(address: tuple[str, int], path: str, body: dict, timeout: float) -> bool:
    try:
        code, _ = _post_json(address, path, body, timeout)
    except (OSError, http.client.HTTPException):
        return False
    return code == 200


class PaxoslogSystem(ProcessFaults):
    """One mode of paxoslog: bench_http's Cluster plus the requests of each workload."""

    def __init__(self, mode: str, conf: str) -> None:
        self.name = f"paxoslog {mode}"
        self.mode = mode
        self.conf = conf
        self.cluster: Cluster | None = None

    def start(self) -> None:
        workdir = tempfile.mkdtemp(prefix=f"paxoslog-compare-{self.mode}-")
        self.cluster = Cluster(self.conf, self.mode, workdir)
        self.cluster.start_all()

    @property
    def procs(self) -> dict[int, subprocess.Popen]:
        return self.cluster.procs

    def start_member(self, member: int) -> None:
        self.cluster.start(member)

    def wait_leader(self) -> int:
        return self.cluster.wait_leader()

    def leader(self) -> tuple[str, int]:
        return self.cluster.api(self.wait_leader())

    def progress(self, member: int) -> dict | None:
        status = self.cluster.status(member)
        return status and {"id": status["node_id"], "leader": status["leader"],
                           "applied": status["applied_index"], "index": status["commit_index"]}

    def requests(self, kind: str) -> list[tuple[str, str, bytes]]:
        """(method, path, body) for each of the 1,000 keys."""
        if kind == "put":
            return [("POST", "/api/v1/consensus/propose",
                     json.dumps({"key": _key(i), "value": VALUE.decode()}).encode())
                    for i in range(KEYS)]
        return [("GET", f"/api/v1/consensus/query?key={_key(i)}", b"") for i in range(KEYS)]

    def put(self, member: int, timeout: float = 2.0) -> bool:
        return _acknowledged(self.cluster.api(member), "/api/v1/consensus/propose",
                             {"key": "failover", "value": "x"}, timeout)

    def stop(self) -> None:
        if self.cluster is not None:
            self.resume_all()
            self.cluster.stop_all()
            shutil.rmtree(self.cluster.workdir, ignore_errors=True)
            self.cluster = None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when this benchmark dies, even by kill -9."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class EtcdSystem(ProcessFaults):
    """A 3-member etcd cluster on 127.0.0.1, driven through its v3 HTTP/JSON gateway."""

    name = ETCD

    def __init__(self, binary: str, heartbeat_ms: int | None = None,
                 election_ms: int | None = None, members: int = 3) -> None:
        self.binary = binary
        self.timing = ([f"--heartbeat-interval={heartbeat_ms}", f"--election-timeout={election_ms}"]
                       if heartbeat_ms else [])
        self.members = members
        self.procs: dict[int, subprocess.Popen] = {}
        self.workdir: str | None = None

    def start(self) -> None:
        from paxoslog.chaos.cluster import allocate_ports
        self.workdir = tempfile.mkdtemp(prefix="etcd-compare-")
        ports = allocate_ports(2 * self.members)
        self.client_ports = {m: ports[2 * (m - 1)] for m in range(1, self.members + 1)}
        self.peer_ports = {m: ports[2 * (m - 1) + 1] for m in range(1, self.members + 1)}
        self.token = os.path.basename(self.workdir)
        for member in self.client_ports:
            self.start_member(member)

    def start_member(self, member: int) -> None:
        client = f"http://127.0.0.1:{self.client_ports[member]}"
        peer = f"http://127.0.0.1:{self.peer_ports[member]}"
        cluster = ",".join(f"e{m}=http://127.0.0.1:{p}" for m, p in self.peer_ports.items())
        # On a restart the data directory decides; the initial-cluster flags are ignored.
        argv = [self.binary, "--name", f"e{member}",
                "--data-dir", os.path.join(self.workdir, f"e{member}"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn",
                *self.timing]
        out = open(os.path.join(self.workdir, f"e{member}.log"), "ab")
        self.procs[member] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                              preexec_fn=_die_with_parent)
        out.close()

    def api(self, member: int) -> tuple[str, int]:
        return "127.0.0.1", self.client_ports[member]

    def status(self, member: int) -> dict | None:
        try:
            code, body = _post_json(self.api(member), "/v3/maintenance/status", {}, 0.5)
        except (OSError, http.client.HTTPException):
            return None
        return body if code == 200 and body else None

    def leader_member(self, exclude: int | None = None) -> int | None:
        """The running member whose id is the leader id it reports itself, if any."""
        for member in self.procs:
            if member == exclude:
                continue
            status = self.status(member)
            if status and status.get("leader") and \
                    status["leader"] == status.get("header", {}).get("member_id"):
                return member
        return None

    def wait_leader(self, timeout: float = 30.0) -> int:
        return wait_until(self.leader_member, timeout, "an etcd leader")

    def leader(self) -> tuple[str, int]:
        return self.api(self.wait_leader())

    def requests(self, kind: str) -> list[tuple[str, str, bytes]]:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()
        if kind == "put":
            return [("POST", "/v3/kv/put", json.dumps(
                {"key": b64(_key(i).encode()), "value": b64(VALUE)}).encode()) for i in range(KEYS)]
        return [("POST", "/v3/kv/range", json.dumps({"key": b64(_key(i).encode())}).encode())
                for i in range(KEYS)]

    def put(self, member: int, timeout: float = 2.0) -> bool:
        return _acknowledged(self.api(member), "/v3/kv/put",
                             {"key": base64.b64encode(b"failover").decode(),
                              "value": base64.b64encode(b"x").decode()}, timeout)

    def progress(self, member: int) -> dict | None:
        status = self.status(member)
        return status and {"id": status.get("header", {}).get("member_id"),
                           "leader": status.get("leader"),
                           "applied": int(status.get("raftAppliedIndex", 0)),
                           "index": int(status.get("raftIndex", 0))}

    def stop(self) -> None:
        self.resume_all()
        stop_processes(self.procs.values())
        self.procs.clear()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def preload(system, address: tuple[str, int]) -> None:
    """Write every key once, so that the gets find them (a 404 would count as an error)."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        for method, path, body in system.requests("put"):
            conn.request(method, path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{system.name}: preload put answered {response.status}")
    finally:
        conn.close()


# ====================================================================== load generators

def run_builtin(address: tuple[str, int], requests, connections: int, duration: float) -> dict:
    """``connections`` keep-alive connections, each sending one request at a time (the next
    as soon as the answer arrives), cycling over ``requests``; asyncio + httptools."""
    return asyncio.run(_builtin(address, requests, connections, duration))


async def _builtin(address, requests, connections, duration) -> dict:
    import httptools
    host = f"{address[0]}:{address[1]}".encode()
    raw = []
    for method, path, body in requests:
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), path.encode(), host)
        if body:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        raw.append(head + b"\r\n" + body)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    state = {"errors": 0, "ok": 0, "running": True}
    clock = time.perf_counter

    class Conn(asyncio.Protocol):
        def __init__(self, offset: int) -> None:
            self.i = offset
            self.parser = httptools.HttpResponseParser(self)
            self.closed = loop.create_future()

        def connection_made(self, transport) -> None:
            self.transport = transport
            self.send()

        def send(self) -> None:
            self.i += 1
            self.t0 = clock()
            self.transport.write(raw[self.i % len(raw)])

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            if self.parser.get_status_code() == 200:
                state["ok"] += 1
                latencies.append((clock() - self.t0) * 1000)
            else:
                state["errors"] += 1
            if state["running"]:
                self.send()

        def connection_lost(self, exc) -> None:
            if state["running"]:
                state["errors"] += 1
            self.closed.set_result(None)

    conns = []
    for n in range(connections):
        try:
            _, proto = await loop.create_connection(lambda n=n: Conn(n * 397), *address)
            conns.append(proto)
        except OSError:
            state["errors"] += 1
    started = clock()
    await asyncio.sleep(duration)       # the measured interval itself, not synchronisation
    state["running"] = False
    elapsed = clock() - started
    for proto in conns:
        proto.transport.close()
    await asyncio.gather(*(proto.closed for proto in conns))
    return result_of(state["ok"] / elapsed, state["errors"], percentiles_of(latencies))


# ====================================================================== summary

# ====================================================================== main

def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _raise_on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default=os.path.join(ROOT, "conf", "local-3.toml"))
    parser.add_argument("--modes", default="multipaxos,raft")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians over them")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--failovers", type=int, default=2,
                        help="kill -9s of the leader per round (and as many pauses, unless "
                             "--pauses says otherwise)")
    parser.add_argument("--pauses", type=int, default=None,
                        help="SIGSTOPs of the leader per round (default: --failovers)")
    parser.add_argument("--generator", choices=("auto", "wrk", "builtin"), default="auto")
    parser.add_argument("--etcd-timings", choices=("default", "conf"), default="default",
                        help="etcd's own defaults (heartbeat 100 ms, election 1 s), or the "
                             "conf's tick_ms x heartbeat_ticks / election_ticks")
    parser.add_argument("--no-etcd", action="store_true", help="measure paxoslog alone")
    parser.add_argument("--out", default=os.path.join(ROOT, "reports"))
    args = parser.parse_args(argv)
    pauses = args.failovers if args.pauses is None else args.pauses
    # kills and pauses alternate, so a change in the machine's load falls on both alike
    faults = [kind for i in range(max(args.failovers, pauses))
              for kind, count in (("kill", args.failovers), ("pause", pauses)) if i < count]

    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGHUP, _raise_on_signal)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    load_start = _load()
    log(f"load average at the start: {load_start}")

    wrk = shutil.which("wrk")
    if args.generator == "wrk" and not wrk:
        parser.error("--generator wrk: wrk is not installed (apt-get install -y wrk)")
    use_wrk = bool(wrk) and args.generator != "builtin"
    generator = "wrk (Lua script)" if use_wrk else "built-in asyncio generator"
    if not wrk and args.generator == "auto":
        log("wrk is not installed (apt-get install -y wrk): using the built-in generator")

    systems: list = [PaxoslogSystem(m, args.conf) for m in args.modes.split(",") if m]
    etcd_binary = shutil.which("etcd")
    etcd_note = "etcd not measured"
    if args.no_etcd:
        log("etcd skipped (--no-etcd)")
    elif not etcd_binary:
        log("etcd is not installed (apt-get install -y etcd-server): measuring paxoslog only")
        etcd_note = "etcd not installed, so not measured"
    else:
        version = subprocess.run([etcd_binary, "--version"], capture_output=True,
                                 text=True).stdout.split("\n")[0]
        timing = {}
        if args.etcd_timings == "conf":
            from paxoslog.config import load_config
            t = load_config(args.conf).timing
            timing = {"heartbeat_ms": t.tick_ms * t.heartbeat_ticks,
                      "election_ms": t.tick_ms * t.election_ticks}
        systems.append(EtcdSystem(etcd_binary, **timing))
        etcd_note = f"{version}, v3 HTTP/JSON gateway, " + (
            f"heartbeat {timing['heartbeat_ms']} ms, election {timing['election_ms']} ms"
            if timing else "its default timings (heartbeat 100 ms, election 1 s)")

    runs = {s.name: {name: [] for name, _, _ in WORKLOADS} for s in systems}
    fault_ms: dict[str, dict[str, list[float]]] = {s.name: {kind: [] for kind, _ in FAULTS}
                                                   for s in systems}
    scratch = tempfile.mkdtemp(prefix="bench-compare-")
    running: list = []
    try:
        for round_no in range(args.repeat):
            order = systems[round_no % len(systems):] + systems[:round_no % len(systems)]
            for system in order:
                log(f"round {round_no + 1}/{args.repeat}: starting {system.name}")
                running.append(system)
                system.start()
                preload(system, system.leader())
            # Each workload on every system in turn: the figures that are compared were
            # measured seconds apart, not minutes (the others paused meanwhile).
            for name, kind, connections in WORKLOADS:
                for system in order:
                    measure_alone(system, running)
                    leader = system.leader()
                    requests = system.requests(kind)
                    if use_wrk:
                        if args.warmup > 0:
                            run_wrk(leader, requests, connections, args.warmup, scratch)
                        result = run_wrk(leader, requests, connections, args.duration, scratch)
                    else:
                        if args.warmup > 0:
                            run_builtin(leader, requests, connections, args.warmup)
                        result = run_builtin(leader, requests, connections, args.duration)
                    runs[system.name][name].append(result)
                    log(f"  {system.name:20} {name:35} {result['rate']:9,.0f}/s  p50 "
                        f"{result['p50_ms']:7.2f}  p99 {result['p99_ms']:7.2f}  p99.9 "
                        f"{result['p999_ms']:7.2f} ms  errors {result['errors']}")
            for system in order:
                measure_alone(system, running)
                for kind in faults:
                    elapsed = time_to_next_write(system, kind)
                    fault_ms[system.name][kind].append(elapsed * 1000)
                    log(f"  {system.name:20} {dict(FAULTS)[kind]}: {elapsed * 1000:.0f} ms")
                system.stop()
                running.remove(system)
    except KeyboardInterrupt:
        log("interrupted: stopping every node")
        return 130
    finally:
        if running:
            signal.signal(signal.SIGINT, signal.SIG_IGN)     # a second Ctrl-C cannot cut it short
            for system in running:
                system.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    results: dict[str, dict] = {}
    for system in systems:
        results[system.name] = {name: median_result(r) for name, r in runs[system.name].items()
                                if r}
        for kind, each in fault_ms[system.name].items():
            if each:
                results[system.name][kind] = {"median_ms": statistics.median(each),
                                              "worst_ms": max(each), "each_ms": each}
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"bench-compare-{stamp}")
    plotted = plot(results, base + ".png")
    if not plotted:
        log("matplotlib is not installed (pip install -e '.[plot]'): no plot")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or "unknown commit"
    meta = {"started": started, "argv": " ".join(sys.argv[1:] if argv is None else argv).strip(),
            "commit": commit, "generator": generator, "repeat": args.repeat,
            "duration": args.duration, "warmup": args.warmup,
            "kills_total": args.repeat * args.failovers, "pauses_total": args.repeat * pauses,
            "etcd": etcd_note,
            "load_start": load_start, "load_end": _load(),
            "plot": os.path.basename(base + ".png") if plotted else None}
    report = render_report(results, meta)
    with open(base + ".md", "w") as f:
        f.write(report)
    print(report)
    log(f"wrote {base}.md" + (f" and {base}.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
