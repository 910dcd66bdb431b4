"""Where one client's write spends its time, seen from the kernel (issue 17).

Starts the 3 nodes of ``conf/local-3.toml`` (fresh ports, a temporary data directory, as
``make bench-compare`` does), keeps one connection writing to the leader (wrk when
installed, else the built-in generator), and records for ``--seconds`` the system calls of
every node with ``perf record`` on the syscall tracepoints of ``recvfrom``, ``sendto``,
``pwrite64`` and ``fdatasync``.  Tracepoints cost the traced process little, unlike strace,
which stops it at each call; the nodes' code is not changed.  From the calls it prints,
per stretch of a write's critical path, the median and the 90th percentile:

* the leader: from reading the request to its first and its second peer send (the
  Accepts or AppendEntries), to its own WAL write, its fdatasync;
* each follower: from reading an append to its WAL write, its fdatasync, from the fsync's
  end to its acknowledgement;
* the leader: from reading the acknowledgement that completed the write to sending the
  HTTP response, and the whole write.

It also says how often a follower read an append on the core the leader had last run on
(two cores for three nodes and the client).  docs/design-notes.md ("One client's write,
seen from the kernel") reads one such trace.

Needs perf (Debian: ``apt-get install -y linux-perf``) and the right to trace other
processes' system calls: root, or ``kernel.perf_event_paranoid = -1`` and read access to
tracefs.  One connection only: the stretches assume one write in flight.

    python tools/trace_write.py [--mode multipaxos|raft] [--seconds 1] [--conf FILE]
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from bench_compare_report import percentiles_of  # noqa: E402

__all__ = ["Call", "parse_perf_script", "Roles", "stretches", "render", "main"]

TRACED = ("recvfrom", "sendto", "pwrite64", "fdatasync")

_LINE = re.compile(r"^\s*(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+syscalls:sys_(enter|exit)_(\w+):"
                   r"\s*(.*)$")
_FD = re.compile(r"\bfd: (0x[0-9a-f]+)")


@dataclass
class Call:
    """One system call of one thread: ``start``/``end`` in seconds (the trace's clock),
    ``fd`` when the call has one, ``ret`` its return value (negative: an error)."""
    pid: int
    tid: int
    cpu: int
    name: str
    start: float
    end: float
    fd: int | None
    ret: int


def parse_perf_script(text: str) -> dict[int, list[Call]]:
    """``perf script -F pid,tid,cpu,time,event,trace`` output: each process's completed
    calls, in order of their start.  An exit pairs with its thread's open enter."""
    open_calls: dict[tuple[int, str], tuple[int, float, int | None]] = {}
    calls: dict[int, list[Call]] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        pid, tid, cpu, when, phase, name, rest = match.groups()
        pid, tid, cpu, when = int(pid), int(tid), int(cpu), float(when)
        if phase == "enter":
            fd = _FD.search(rest)
            open_calls[(tid, name)] = (cpu, when, int(fd.group(1), 16) if fd else None)
            continue
        began = open_calls.pop((tid, name), None)
        if began is None:
            continue                     # entered before the trace began
        ret = int(rest.split()[0], 16) if rest else 0
        if ret >= 1 << 63:
            ret -= 1 << 64
        calls.setdefault(pid, []).append(Call(pid, tid, began[0], name, began[1], when,
                                              began[2], ret))
    for each in calls.values():
        each.sort(key=lambda call: call.start)
    return calls


@dataclass
class Roles:
    """Which process is the leader, which of its sockets carry HTTP (``http_fds``) and
    which peer traffic (``peer_fds``); per follower, its sockets to the leader."""
    leader: int
    http_fds: frozenset
    peer_fds: frozenset
    follower_fds: dict        # follower pid -> frozenset of fds to the leader


def stretches(calls: dict[int, list[Call]], roles: Roles) -> tuple[dict[str, list[float]], dict]:
    """The stretches of each traced write in microseconds, and counts (writes, appends,
    appends read on the leader's last core)."""
    out: dict[str, list[float]] = {name: [] for name in STRETCHES}
    leader_calls = calls.get(roles.leader, [])
    leader_starts = [c.start for c in leader_calls]
    writes = 0
    for i, call in enumerate(leader_calls):
        if not (call.name == "recvfrom" and call.fd in roles.http_fds and call.ret > 0):
            continue
        sends, wal, fsync, ack, response = [], None, None, None, None
        for j in range(i + 1, len(leader_calls)):
            later = leader_calls[j]
            if later.name == "recvfrom" and later.fd in roles.http_fds and later.ret > 0:
                break                                     # the next request: incomplete
            if later.name == "sendto" and later.fd in roles.http_fds:
                response = later
                break
            if later.name == "sendto" and later.fd in roles.peer_fds and len(sends) < 2 \
                    and all(sent.fd != later.fd for sent in sends):
                sends.append(later)
            elif later.name == "pwrite64" and wal is None and sends:
                wal = later
            elif later.name == "fdatasync" and fsync is None and wal is not None:
                fsync = later
            elif later.name == "recvfrom" and later.fd in roles.peer_fds and later.ret > 0:
                ack = later
        if response is None or not sends:
            continue
        writes += 1
        out["leader: request read -> first peer send"].append(sends[0].start - call.end)
        if len(sends) == 2:
            out["leader: first -> second peer send"].append(sends[1].start - sends[0].start)
        if wal is not None:
            out["leader: last peer send -> own WAL write"].append(wal.start - sends[-1].start)
        if fsync is not None:
            out["leader: fdatasync"].append(fsync.end - fsync.start)
        if ack is not None:
            out["leader: acknowledgement read -> response sent"].append(
                response.start - ack.end)
        out["leader: request read -> response sent"].append(response.start - call.end)
    appends = on_leader_core = 0
    for pid, fds in roles.follower_fds.items():
        follower_calls = calls.get(pid, [])
        for i, call in enumerate(follower_calls):
            if not (call.name == "recvfrom" and call.fd in fds and call.ret > 0):
                continue
            wal = fsync = ack = None
            for j in range(i + 1, len(follower_calls)):
                later = follower_calls[j]
                if later.name == "recvfrom" and later.fd in fds and wal is None:
                    break                       # no WAL write first: not an append
                if later.name == "pwrite64" and wal is None:
                    wal = later
                elif later.name == "fdatasync" and wal is not None and fsync is None:
                    fsync = later
                elif later.name == "sendto" and later.fd in fds and fsync is not None:
                    ack = later
                    break
            if wal is None:
                continue
            appends += 1
            last = bisect.bisect_right(leader_starts, call.start) - 1
            if last >= 0 and leader_calls[last].cpu == call.cpu:
                on_leader_core += 1
            out["follower: append read -> WAL write"].append(wal.start - call.end)
            if fsync is not None:
                out["follower: fdatasync"].append(fsync.end - fsync.start)
            if ack is not None:
                out["follower: fsync done -> acknowledgement sent"].append(ack.start - fsync.end)
    micro = {name: [v * 1e6 for v in values] for name, values in out.items()}
    return micro, {"writes": writes, "appends": appends, "appends_on_leader_core": on_leader_core}


STRETCHES = (
    "leader: request read -> first peer send",
    "leader: first -> second peer send",
    "leader: last peer send -> own WAL write",
    "leader: fdatasync",
    "follower: append read -> WAL write",
    "follower: fdatasync",
    "follower: fsync done -> acknowledgement sent",
    "leader: acknowledgement read -> response sent",
    "leader: request read -> response sent",
)


def render(micro: dict[str, list[float]], counts: dict, title: str) -> str:
    lines = [title, f"{counts['writes']} writes and {counts['appends']} follower appends "
                    f"traced", "",
             f"{'stretch':48} {'median':>8} {'p90':>8}  (us)"]
    for name in STRETCHES:
        values = micro.get(name) or []
        if values:
            lines.append(f"{name:48} {statistics.median(values):8.0f} "
                         f"{percentiles_of(values)[90.0]:8.0f}")
        else:
            lines.append(f"{name:48} {'-':>8} {'-':>8}")
    if counts["appends"]:
        share = 100.0 * counts["appends_on_leader_core"] / counts["appends"]
        lines.append("")
        lines.append(f"a follower read its append on the core the leader last ran on: "
                     f"{share:.0f} % of {counts['appends']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the live run

def _socket_ports() -> dict[int, tuple[int, int]]:
    """inode -> (local port, remote port) of every TCP socket on this machine."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            ports[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return ports


def _fd_ports(pid: int, ports: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """fd -> (local port, remote port) of the process's TCP sockets."""
    out = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            target = os.readlink(os.path.join(base, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode in ports:
                out[int(name)] = ports[inode]
    return out


def roles_of(pids: dict[int, int], leader: int, api_port: int, peer_ports: set[int]) -> Roles:
    """The leader's HTTP and peer sockets, and each follower's sockets to the leader."""
    ports = _socket_ports()
    mine = _fd_ports(pids[leader], ports)
    http = frozenset(fd for fd, (local, _) in mine.items() if local == api_port)
    peer = {fd: pair for fd, pair in mine.items()
            if pair[0] in peer_ports or pair[1] in peer_ports}
    pairs = set(peer.values())
    followers = {}
    for node, pid in pids.items():
        if node != leader:
            theirs = _fd_ports(pid, ports)
            followers[pid] = frozenset(fd for fd, (local, remote) in theirs.items()
                                       if (remote, local) in pairs)
    return Roles(pids[leader], http, frozenset(peer), followers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("multipaxos", "raft"), default="multipaxos")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds traced")
    parser.add_argument("--conf", default=os.path.join(ROOT, "conf", "local-3.toml"))
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        print("trace_write: perf is not installed (apt-get install -y linux-perf)",
              file=sys.stderr)
        return 2
    from bench_compare import PaxoslogSystem, preload, run_builtin
    from wrkload import run_wrk
    system = PaxoslogSystem(args.mode, args.conf)
    scratch = tempfile.mkdtemp(prefix="trace-write-")
    try:
        system.start()
        cluster = system.cluster
        leader = cluster.wait_leader()
        address = cluster.api(leader)
        preload(system, address)
        requests = system.requests("put")
        load_seconds = args.seconds + 3.0
        result: dict = {}

        def load() -> None:
            if shutil.which("wrk"):
                result.update(run_wrk(address, requests, 1, load_seconds, scratch))
            else:
                result.update(run_builtin(address, requests, 1, load_seconds))
        generator = threading.Thread(target=load, daemon=True)
        generator.start()
        threading.Event().wait(1.5)             # past the generator's connect and warm-up
        pids = {node: proc.pid for node, proc in cluster.procs.items()}
        peer_ports = {node.peer.port for node in cluster.config.nodes}
        roles = roles_of(pids, leader, address[1], peer_ports)
        data = os.path.join(scratch, "perf.data")
        events = ",".join(f"syscalls:sys_{phase}_{name}" for name in TRACED
                          for phase in ("enter", "exit"))
        recorded = subprocess.run(
            ["perf", "record", "-q", "-o", data, "-e", events,
             "-p", ",".join(str(pid) for pid in pids.values()), "--", "sleep",
             str(args.seconds)], capture_output=True, text=True)
        generator.join()
        if recorded.returncode != 0:
            print(f"trace_write: perf record failed (root or kernel.perf_event_paranoid = -1 "
                  f"needed): {recorded.stderr.strip()[:500]}", file=sys.stderr)
            return 1
        script = subprocess.run(["perf", "script", "-i", data, "-F",
                                 "pid,tid,cpu,time,event,trace"],
                                capture_output=True, text=True).stdout
        micro, counts = stretches(parse_perf_script(script), roles)
        title = (f"one client's writes, {args.mode}, leader node {leader}: "
                 f"{result.get('rate', 0):,.0f} writes/s, p50 {result.get('p50_ms', 0):.2f} ms")
        print(render(micro, counts, title))
        return 0 if counts["writes"] else 1
    finally:
        system.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
