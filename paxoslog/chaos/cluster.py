"""A chaos cluster: its conf files, its ``paxoslog serve`` processes, and their faults.

``write_conf`` generates the TOML conf: every node on 127.0.0.1 with ephemeral ports, data
directories inside the report folder, and ``peer`` (where the other nodes dial) pointing at
the chaos proxy while ``peer_bind`` (where the node listens) is the real port, so every peer
byte crosses the proxy.  The initial members are the conf's nodes.  Each *spare* (ids N+1,
N+2, ..., for the ``member-change`` nemesis) gets ports and a proxy listener at start too,
and a conf of its own (``conf-n<id>.toml``: the cluster's conf plus one ``[[nodes]]`` table
for itself, see docs/membership.md); it starts with ``serve --join``.

``Cluster`` starts, kills (SIGKILL), pauses (SIGSTOP/SIGCONT) and restarts the processes,
appending each process's stdout and stderr to ``logs/n<id>.log`` with a marker line per
start.  It remembers which exits it caused or expected (a removed node exits 0 on its own):
any other exit is reported as unexpected (a server crash).  It also keeps each node's place
in the membership (``member``, ``spare``, ``joining``, ``removed``): ``members()`` is what
everything that iterates over the cluster (workload, observer, final reads, checks) uses.
``drop_unsynced`` cuts the tail of a stopped node's WAL back to the last fsynced offset
(what losing the page cache does), see its docstring.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

__all__ = ["ClusterSpec", "NodePorts", "Cluster", "NodeProcess", "write_conf",
           "write_spare_conf", "allocate_ports", "reserve_ports", "drop_unsynced",
           "serve_command",
           "MEMBER", "SPARE", "JOINING", "REMOVED"]

log = Logger(namespace="paxoslog.chaos.cluster")

TERM_GRACE_S = 5.0
TLS_FOLDER = "certs"     # next to the conf files: the CA and every node's certificate

# A node's place in the membership, as the harness knows it.
MEMBER = "member"        # a voter (the conf's nodes at start, joined nodes once voters)
SPARE = "spare"          # ports, proxy listener and conf ready; never started
JOINING = "joining"      # started with --join, not yet known to be a voter
REMOVED = "removed"      # removal requested or done: never started again


@dataclass(frozen=True)
class ClusterSpec:
    """The shape and timing of the cluster under test."""

    nodes: int = 3
    protocol: str = "multipaxos"
    tick_ms: int = 10
    heartbeat_ticks: int = 3
    election_ticks: int = 30
    request_timeout_ms: int = 2000
    snapshot_entries: int = 5000
    secret: str = "chaos-peer-secret"
    spares: int = 0          # extra node ids (nodes+1 ...) for membership changes
    tokens_file: str | None = None   # client auth on: [auth] tokens_file, required
    tls: bool = False        # HTTPS API and mutual TLS between peers (certs/ in the report)

    @property
    def election_timeout_s(self) -> float:
        """The configured (minimum) election timeout; the core draws from [1x, 2x)."""
        return self.election_ticks * self.tick_ms / 1000.0

    @property
    def node_ids(self) -> list[int]:
        """The initial members (the conf's nodes)."""
        return list(range(1, self.nodes + 1))

    @property
    def spare_ids(self) -> list[int]:
        return list(range(self.nodes + 1, self.nodes + self.spares + 1))

    @property
    def all_ids(self) -> list[int]:
        return self.node_ids + self.spare_ids


@dataclass(frozen=True)
class NodePorts:
    peer_proxy: int      # the proxy listener the other nodes dial
    peer_bind: int       # where the node itself listens for peers
    api: int


def allocate_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together, then released).

    They are taken below the kernel's ephemeral range when it leaves room, so no outgoing
    connection (a client's, a peer's dial) can take one between now and the node's bind
    (that race made a chaos smoke run void: "Address already in use").  Another test
    server picking the same port in that window is still possible, and reported."""
    ports, sockets = reserve_ports(count)
    for s in sockets:
        s.close()
    return ports


def reserve_ports(count: int) -> tuple[list[int], list[socket.socket]]:
    """``count`` distinct free ports on 127.0.0.1 and the bound (not listening) sockets that
    keep them: nobody else can bind them, and outgoing connections do not pick them, until
    the sockets are closed.  For spare nodes, which bind their ports long after the start
    (``Cluster`` closes a spare's sockets just before starting it)."""
    sockets = []
    low, high = _below_ephemeral()
    rng = random.SystemRandom()
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            for _attempt in range(100 if high > low else 0):
                try:
                    s.bind(("127.0.0.1", rng.randrange(low, high)))
                    break
                except OSError:
                    continue                 # in use: another candidate
            else:
                s.bind(("127.0.0.1", 0))     # no room below the range: any free port
            sockets.append(s)
    except OSError:
        for s in sockets:
            s.close()
        raise
    return [s.getsockname()[1] for s in sockets], sockets


def _below_ephemeral() -> tuple[int, int]:
    """[low, high) of ports under the kernel's ephemeral range (Linux: its first port from
    /proc; elsewhere the IANA range's start), from 10000 up; empty when there is no room."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 49152
    return 10_000, max(10_000, first)


def _node_table(node_id: int, ports: NodePorts, data_root: str) -> list[str]:
    data_dir = os.path.join(data_root, f"n{node_id}")
    return ["", "[[nodes]]", f"id = {node_id}",
            f'peer = "127.0.0.1:{ports.peer_proxy}"',
            f'peer_bind = "127.0.0.1:{ports.peer_bind}"',
            f'api = "127.0.0.1:{ports.api}"',
            f'data_dir = "{data_dir}"']


def write_conf(path: str, spec: ClusterSpec, ports: dict[int, NodePorts], data_root: str,
               cluster_name: str) -> str:
    """Write the conf file for ``spec`` (its initial members only) and return its text."""
    lines = [
        "# Generated by tools/chaos.py: peer traffic goes through the chaos proxy",
        "# (peer = the proxy listener, peer_bind = the node's real peer port).",
        f'cluster = "{cluster_name}"',
        f'protocol = "{spec.protocol}"',
        f'secret = "{spec.secret}"',
        "",
        "[timing]",
        f"tick_ms = {spec.tick_ms}",
        f"heartbeat_ticks = {spec.heartbeat_ticks}",
        f"election_ticks = {spec.election_ticks}",
        f"request_timeout_ms = {spec.request_timeout_ms}",
        "",
        "[snapshot]",
        f"entries = {spec.snapshot_entries}",
        "",
        "[state_machines]",
        'enabled = ["kv"]',
    ]
    if spec.tokens_file is not None:
        lines += ["", "[auth]", f'tokens_file = "{spec.tokens_file}"', "required = true"]
    if spec.tls:
        lines += ["", "[tls]", f'ca_file = "{TLS_FOLDER}/ca.pem"',
                  f'cert_file = "{TLS_FOLDER}/node-{{node}}.pem"',
                  f'key_file = "{TLS_FOLDER}/node-{{node}}.key"']
    for node_id in spec.node_ids:
        lines += _node_table(node_id, ports[node_id], data_root)
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def write_spare_conf(path: str, cluster_conf: str, node_id: int, ports: NodePorts,
                     data_root: str) -> str:
    """Write a spare's own conf: the cluster's conf text plus one ``[[nodes]]`` table for
    the spare (the other tables only tell it where the cluster is, docs/membership.md)."""
    text = (cluster_conf + f"\n# Spare node {node_id}: joins with serve --join\n"
            + "\n".join(_node_table(node_id, ports, data_root)[1:]) + "\n")
    with open(path, "w") as f:
        f.write(text)
    return text


def serve_command(conf_path: str, node_id: int, join: str | None = None) -> list[str]:
    """argv for ``paxoslog serve`` with the interpreter running this tool; ``join``: the
    ``--join`` URLs (comma separated) of a node that joins a running cluster."""
    args = ["serve", "--config", conf_path, "--node", str(node_id)]
    if join:
        args += ["--join", join]
    script = os.path.join(os.path.dirname(sys.executable), "paxoslog")
    if os.path.exists(script):
        return [sys.executable, script] + args
    return [sys.executable, "-c", "import sys; from paxoslog.cli import main; sys.exit(main())",
            ] + args


class NodeProcess(ProcessProtocol):
    """One run of one node's process; ``ended`` fires with (exit code, signal)."""

    def __init__(self, node_id: int, generation: int, expect_exit) -> None:
        self.node_id = node_id
        self.generation = generation
        self.expect_exit = expect_exit
        self.ended: defer.Deferred = defer.Deferred()
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.running = False

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.running = True

    def processEnded(self, reason) -> None:
        self.running = False
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        self.exit_signal = getattr(value, "signal", None)
        self.ended.callback((self.exit_code, self.exit_signal))


@dataclass
class NodeState:
    node_id: int
    status: str = MEMBER
    conf_path: str | None = None     # None: the cluster's conf
    join: str | None = None          # --join URLs (every start: ignored once joined)
    process: NodeProcess | None = None
    generation: int = 0
    paused: bool = False
    expected_exit: bool = False      # the harness killed it or asked it to crash
    expected_code: int | None = None  # ... or only an exit with this code (a removal)
    failpoints: str = ""
    unexpected: list = field(default_factory=list)
    reserved: list = field(default_factory=list)   # sockets holding a spare's ports


class Cluster:
    """The node processes of one chaos run.  ``events(kind, **fields)`` receives every
    process event (start, exit, signal) for the nemesis timeline."""

    def __init__(self, reactor, spec: ClusterSpec, conf_path: str, log_dir: str,
                 data_root: str, events, clock, spare_confs: dict[int, str] | None = None,
                 reserved: dict[int, list] | None = None) -> None:
        """``spare_confs``: spare id -> its conf; ``reserved``: spare id -> the sockets that
        hold its ports (``reserve_ports``), closed when it starts or at shutdown."""
        self.reactor = reactor
        self.spec = spec
        self.conf_path = conf_path
        self.log_dir = log_dir
        self.data_root = data_root
        self.events = events
        self.clock = clock
        self.nodes = {node_id: NodeState(node_id) for node_id in spec.node_ids}
        self.child_env: dict[str, str] = {}     # e.g. PAXOSLOG_TOKEN for serve --join
        for node_id, path in sorted((spare_confs or {}).items()):
            self.nodes[node_id] = NodeState(node_id, status=SPARE, conf_path=path,
                                            reserved=list((reserved or {}).get(node_id, ())))
        os.makedirs(log_dir, exist_ok=True)

    # ------------------------------------------------------------------ queries

    def alive(self, node_id: int) -> bool:
        process = self.nodes[node_id].process
        return process is not None and process.running

    def members(self) -> list[int]:
        """The current members (voters as far as the harness knows), sorted: joined nodes
        once they are voters, removed nodes no longer."""
        return sorted(n for n, s in self.nodes.items() if s.status == MEMBER)

    def in_cluster(self) -> list[int]:
        """Members and nodes joining: every node whose process belongs to the cluster."""
        return sorted(n for n, s in self.nodes.items() if s.status in (MEMBER, JOINING))

    def spares(self) -> list[int]:
        """Spare ids not used yet, in order."""
        return sorted(n for n, s in self.nodes.items() if s.status == SPARE)

    def started_nodes(self) -> list[int]:
        """Every node that ever ran (removed ones included): whose logs exist."""
        return sorted(n for n, s in self.nodes.items() if s.generation > 0)

    def status_of(self, node_id: int) -> str:
        return self.nodes[node_id].status

    def set_status(self, node_id: int, status: str) -> None:
        state = self.nodes[node_id]
        if state.status != status:
            before, state.status = state.status, status
            self.events("membership", node=node_id, status=status, was=before)

    def running_nodes(self) -> list[int]:
        """Nodes of the cluster (members and joining) with a live, not paused process."""
        return [n for n in self.in_cluster() if self.alive(n) and not self.nodes[n].paused]

    def data_dir(self, node_id: int) -> str:
        return os.path.join(self.data_root, f"n{node_id}")

    def log_path(self, node_id: int) -> str:
        return os.path.join(self.log_dir, f"n{node_id}.log")

    def unexpected_exits(self) -> list[dict]:
        return [item for state in self.nodes.values() for item in state.unexpected]

    # ------------------------------------------------------------------ lifecycle

    def start(self, node_id: int, failpoints: str = "", join: str | None = None) -> NodeProcess:
        """Start the node's process (its data directory is kept across restarts).  ``join``
        (the --join URLs) starts a spare: it becomes ``joining`` and keeps the flag for its
        restarts (``serve`` ignores it once the node has joined)."""
        state = self.nodes[node_id]
        assert not self.alive(node_id), f"node {node_id} is already running"
        assert state.status != REMOVED, f"node {node_id} was removed: never started again"
        if join is not None:
            assert state.status == SPARE, f"node {node_id} is not a spare"
            state.join = join
            self.set_status(node_id, JOINING)
        assert state.status != SPARE, f"spare {node_id} starts with join="
        self._release(state)
        state.generation += 1
        state.paused = False
        state.expected_exit = bool(failpoints)
        state.expected_code = None
        state.failpoints = failpoints
        env = dict(os.environ)
        env.pop("PAXOSLOG_FAILPOINTS", None)
        if failpoints:
            env["PAXOSLOG_FAILPOINTS"] = failpoints
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.child_env)
        log_fd = os.open(self.log_path(node_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        marker = (f"=== chaos: start #{state.generation} of node {node_id} at "
                  f"t={self.clock():.3f}s ({time.strftime('%H:%M:%S')})"
                  + (f" with PAXOSLOG_FAILPOINTS={failpoints}" if failpoints else "") + " ===\n")
        os.write(log_fd, marker.encode())
        process = NodeProcess(node_id, state.generation, state)
        try:
            argv = serve_command(state.conf_path or self.conf_path, node_id, state.join)
            self.reactor.spawnProcess(process, sys.executable, argv, env=env,
                                      childFDs={0: null_fd, 1: log_fd, 2: log_fd})
        finally:
            os.close(log_fd)
            os.close(null_fd)
        state.process = process
        process.ended.addCallback(self._ended, state, process)
        self.events("start", node=node_id, generation=state.generation, pid=process.pid,
                    failpoints=failpoints or None, join=state.join)
        return process

    @staticmethod
    def _release(state: NodeState) -> None:
        """Free the ports held for a spare (it is about to bind them)."""
        for sock in state.reserved:
            sock.close()
        state.reserved = []

    def _ended(self, result, state: NodeState, process: NodeProcess):
        code, sig = result
        expected = state.expected_exit and state.process is process
        if expected and state.expected_code is not None:
            expected = sig is None and code == state.expected_code
        self.events("exit", node=state.node_id, generation=process.generation, code=code,
                    signal=sig, expected=expected)
        if not expected:
            item = {"node": state.node_id, "generation": process.generation, "code": code,
                    "signal": sig, "t": round(self.clock(), 3), "log": self.log_path(
                        state.node_id)}
            if state.expected_code is not None:
                item["why"] = f"a removed node must exit with code {state.expected_code}"
            state.unexpected.append(item)
            log.error("node {node} exited unexpectedly (code {code}, signal {sig})",
                      node=state.node_id, code=code, sig=sig)
        return result

    def _signal(self, node_id: int, signum: int) -> bool:
        process = self.nodes[node_id].process
        if process is None or not process.running or process.pid is None:
            return False
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def kill(self, node_id: int) -> defer.Deferred:
        """SIGKILL; fires when the process is gone (at once when it was not running)."""
        state = self.nodes[node_id]
        process = state.process
        if process is None or not process.running:
            return defer.succeed(None)
        state.expected_exit = True
        state.expected_code = None
        if state.paused:
            state.paused = False      # a killed process needs no SIGCONT
        self._signal(node_id, signal.SIGKILL)
        self.events("kill", node=node_id, generation=state.generation)
        return process.ended

    def pause(self, node_id: int) -> bool:
        state = self.nodes[node_id]
        if state.paused or not self._signal(node_id, signal.SIGSTOP):
            return False
        state.paused = True
        self.events("pause", node=node_id, generation=state.generation)
        return True

    def resume(self, node_id: int) -> bool:
        state = self.nodes[node_id]
        if not state.paused:
            return False
        state.paused = False
        ok = self._signal(node_id, signal.SIGCONT)
        self.events("resume", node=node_id, generation=state.generation)
        return ok

    def expect_exit(self, node_id: int, code: int | None = None) -> None:
        """The next exit of this node's current process is planned (a failpoint; with
        ``code``, only an exit with that status: a removed node exits 0 on its own)."""
        state = self.nodes[node_id]
        state.expected_exit = True
        state.expected_code = code

    def unexpect_exit(self, node_id: int) -> None:
        """Withdraw ``expect_exit`` (the removal it was for did not happen)."""
        state = self.nodes[node_id]
        state.expected_exit = False
        state.expected_code = None

    def note_unexpected(self, node_id: int, why: str) -> None:
        """Report a process problem that is not an exit (e.g. a removed node that did not
        exit on its own) the way unexpected exits are reported."""
        state = self.nodes[node_id]
        state.unexpected.append({"node": node_id, "generation": state.generation,
                                 "code": None, "signal": None, "t": round(self.clock(), 3),
                                 "log": self.log_path(node_id), "why": why})

    @defer.inlineCallbacks
    def shutdown(self):
        """SIGCONT paused nodes, SIGTERM everyone, SIGKILL what is left after a grace."""
        waits = []
        for node_id, state in self.nodes.items():
            self._release(state)
            if state.paused:
                self.resume(node_id)
            process = state.process
            if process is not None and process.running:
                state.expected_exit = True
                state.expected_code = None
                self._signal(node_id, signal.SIGTERM)
                waits.append((node_id, process))
        deadline = self.reactor.seconds() + TERM_GRACE_S
        for node_id, process in waits:
            while process.running and self.reactor.seconds() < deadline:
                yield _later(self.reactor, 0.05)
            if process.running:
                self._signal(node_id, signal.SIGKILL)
                yield process.ended


def _later(reactor, seconds: float) -> defer.Deferred:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def drop_unsynced(data_dir: str, rng: random.Random, torn: bool = False) -> dict:
    """Cut the last WAL segment of a *stopped* node back to its last fsynced offset.

    Only valid after the node stopped between a WAL write and its fsync (the failpoint
    ``wal.before_fsync=exit``): then the records after the last SYNC record were written
    to the page cache but never fsynced, and a power loss could lose them.  A process exit
    keeps them (the kernel still has them), so the harness throws them away here.  The
    batch's SYNC record names the offset up to which the segment was durable when the
    batch began (paxoslog/storage/walscan.py), so nothing fsynced is ever cut.  With ``torn``
    a random prefix of the unsynced bytes survives instead (a torn write).

    Returns what was done: {"segment", "size", "cut_at", "dropped_bytes"}."""
    from paxoslog.storage.walscan import REC_SYNC, list_segments, scan_segment

    segments = list_segments(os.path.join(data_dir, "wal"))
    if not segments:
        return {"segment": None, "dropped_bytes": 0}
    seq, path = segments[-1]
    with open(path, "rb") as f:
        data = f.read()
    scan = scan_segment(path, seq, data, last=True)
    end = scan.valid_end if scan.torn is None else len(data)    # where the written bytes end
    if not scan.records:
        return {"segment": path, "size": end, "cut_at": end, "dropped_bytes": 0}
    header_bytes = scan.records[0].size
    syncs = [record for record in scan.records if record.rtype == REC_SYNC]
    # No SYNC record: the open batch began in the previous segment, which rotation fsynced
    # in full, and this segment's header was fsynced at creation; the rest is unsynced.
    durable = max(int(syncs[-1].value), header_bytes) if syncs else header_bytes
    cut_at = durable
    if torn and end > durable:
        # A disk writes whole 512-byte sectors: the unsynced bytes survive up to a sector
        # boundary (the sector holding the durable end is old or new as a whole).
        cut_at = rng.randint(durable, end - 1)
        cut_at = max(durable, cut_at - cut_at % 512)
    if cut_at < end:
        with open(path, "r+b") as f:
            if end < len(data):
                # A preallocated segment: what was never written to the disk reads as the
                # zeros it was reserved with.
                f.seek(cut_at)
                f.write(bytes(end - cut_at))
            else:
                f.truncate(cut_at)
            f.flush()
            os.fsync(f.fileno())
    return {"segment": path, "size": end, "cut_at": cut_at, "dropped_bytes": end - cut_at}
