"""Scripted scenarios: a hand-driven cluster and a tiny text-script interpreter.

A script (tests/interaction/*.txt) is a series of blocks::

    # comment lines describe the scenario
    command args...
    ----
    expected output

Commands run in order against a ``ManualCluster`` whose network delivers nothing until told
to (``deliver``/``stabilize``), so a scenario controls every interleaving.  Expected output
may differ per protocol: ``---- raft`` / ``---- multipaxos`` blocks override ``----`` for that
protocol.  Set PAXOSLOG_REWRITE=1 to rewrite expected outputs from actual ones.

Commands::

    cluster N [election=10] [heartbeat=2] [window=8] [batch=64] [permsg=64] [lease=0]
              [prevote=1] [checkquorum=1] [voters=IDS] [learners=IDS]
                             nodes 1..N; the initial configuration is every node a voter,
                             or the given voters and learners (others are outside it)
    tick NODES [K]           tick each node K times (default 1), processing Readies
    run K                    K rounds of: tick every live node once, then stabilize
    campaign NODE            tick NODE until it leaves the follower role
    elect NODE               campaign NODE, then stabilize (fails if it does not lead)
    propose NODE VALUE...    propose one command per VALUE at NODE
    read NODE NAME           ask NODE for a linearizable read point named NAME
    lease-read NODE          the read point NODE's leader lease allows now, or "none"
    transfer NODE TARGET     ask leader NODE to hand leadership to TARGET
    config NODE VOTERS [LEARNERS]   membership change at NODE (comma-separated ids)
    deliver [FROM->TO]...    deliver pending messages once (all, or on the given links)
    drop [FROM->TO]...       discard pending messages (all, or on the given links)
    stabilize [MAX]          deliver until no message is pending (at most MAX rounds)
    partition A,B | C,D      block every link between the groups (both ways)
    isolate NODE             block every link of NODE (both ways)
    cut FROM->TO             block one direction of one link
    heal                     unblock everything
    hold NODE                NODE stops completing fsyncs: its Readies wait, unsent
    release NODE             NODE's held Readies complete (persist, send, apply), in order
    pause NODE               NODE freezes (SIGSTOP): no ticks; messages to it wait
    resume NODE              NODE continues with its old volatile state; waiting messages
                             are delivered by the next deliver/stabilize
    crash NODE               NODE stops; whatever it had not persisted is lost
    forget-commit NODE       reset NODE's persisted commit point to 0 (a lost unsynced
                             hard-state write: the server writes commit hints unsynced)
    lose-tail NODE K         NODE's disk loses its last K entries (a durability fault
                             beyond the protocols' model: acknowledged entries vanish)
    restart NODE             NODE boots from what it persisted
    pending                  list undelivered messages (type from->to)
    status [NODES]           role, leader, commit and applied index per node
    applied NODE             the values NODE applied, in order (noop / config shown)
    reads NODE               read points NODE has served
    persisted NODE           the hard state NODE has on disk (protocol specific)
    members NODE             the configuration NODE currently follows
    check                    agreement on applied values across nodes
    trace on|messages|off [NODES]
                             from now on, each command's output starts with every message
                             delivered and every Ready completed (``messages``: only the
                             deliveries; NODES: only messages from or to those nodes and
                             their Readies); see paxoslog/sim/trace.py for the format
    log NODE                 the entries NODE has on disk as index@term:value (the term is
                             the ballot in Multi-Paxos)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from ..core.ballot import Ballot
from ..core.errors import ConsensusError
from ..core.limits import Limits
from ..core.log import Entry
from ..core.quorum import Config
from ..core.ready import Ready, Role
from ..core.replica import ReplicaOptions, create_replica
from .disk import IdealDisk
from .trace import Tracer, describe_entry, describe_value

__all__ = ["ManualCluster", "run_script", "ScriptError"]


class ScriptError(Exception):
    """A script line could not be run (bad command or a failed expectation inside it)."""


class _Node:
    def __init__(self, cluster: "ManualCluster", node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.disk = IdealDisk()
        self.alive = True
        self.paused = False  # takes no ticks and no messages (they wait) until resumed
        self.held: list[Ready] = []
        self.holding = False
        self.boot()

    def boot(self) -> None:
        c = self.cluster
        self.replica = create_replica(c.protocol, self.node_id, c.bootstrap, c.options,
                                      random.Random(self.node_id * 7919), self.disk.restored())
        self.applied: list[str] = []
        self.reads: list[str] = []

    def process(self) -> None:
        """Drain Readies: persist, send (into the pending list), apply, serve reads."""
        if not self.alive:
            return
        while not self.held:  # a held Ready stays outstanding until it is released
            ready = self.replica.ready()
            if ready is None:
                return
            if self.holding:
                self.held.append(ready)
                if self.cluster.tracer is not None:
                    self.cluster.tracer.held(self.node_id)
                return
            self._complete(ready)

    def _complete(self, ready: Ready) -> None:
        if self.cluster.tracer is not None:
            self.cluster.tracer.ready(self.node_id, ready)
        self.disk.persist(ready, self.cluster.snapshots)
        for msg in ready.messages:
            self.cluster.pending.append(msg)
        for entry in ready.committed:
            self.applied.append(describe_value(entry))
            self.cluster.check_value(self.node_id, entry)
        for read in ready.reads:
            self.reads.append(f"{read.request_id}@{read.index}")
        self.replica.advance(ready)
        self.replica.check_invariants()


class ManualCluster:
    def __init__(self, protocol: str, size: int, options: ReplicaOptions,
                 bootstrap: Config | None = None) -> None:
        self.protocol = protocol
        self.options = options
        self.bootstrap = bootstrap or Config(frozenset(range(1, size + 1)))
        self.pending: list = []
        self.blocked: set[tuple[int, int]] = set()
        self.snapshots: dict = {}
        self.values: dict[int, tuple] = {}
        self.tracer: Tracer | None = None  # set by the script's ``trace`` command
        self.nodes = {n: _Node(self, n) for n in range(1, size + 1)}

    def check_value(self, node_id: int, entry: Entry) -> None:
        first = self.values.setdefault(entry.index, (entry.kind, entry.payload))
        if first != (entry.kind, entry.payload):
            raise ScriptError(f"agreement violated at index {entry.index} on node {node_id}")

    def node(self, text: str) -> _Node:
        try:
            return self.nodes[int(text)]
        except (ValueError, KeyError):
            raise ScriptError(f"no such node {text!r}") from None

    def deliver(self, links: set[tuple[int, int]] | None) -> int:
        batch, keep = [], []
        for msg in self.pending:
            if (links is None or (msg.frm, msg.to) in links) and not self._paused(msg.to):
                batch.append(msg)
            else:
                keep.append(msg)
        self.pending = keep
        for msg in batch:
            node = self.nodes.get(msg.to)
            if node is None or not node.alive or (msg.frm, msg.to) in self.blocked:
                if self.tracer is not None:
                    blocked = (msg.frm, msg.to) in self.blocked
                    self.tracer.discarded(msg, "blocked" if blocked else "lost")
                continue
            if self.tracer is not None:
                self.tracer.delivered(msg)
            node.replica.step(msg)
            node.replica.check_invariants()
            node.process()
        return len(batch)

    def _paused(self, node_id: int) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.alive and node.paused

    def deliverable(self) -> bool:
        return any(not self._paused(msg.to) for msg in self.pending)


def _links(args: list[str]) -> set[tuple[int, int]] | None:
    if not args:
        return None
    links = set()
    for arg in args:
        if "->" not in arg:
            raise ScriptError(f"expected FROM->TO, got {arg!r}")
        a, b = arg.split("->")
        links.add((int(a), int(b)))
    return links


def _ids(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _status_line(node: _Node) -> str:
    r = node.replica
    if not node.alive:
        return f"{node.node_id}: down"
    leader = r.leader_id if r.leader_id is not None else "-"
    return (f"{node.node_id}: {r.role} leader={leader} commit={r.commit_index} "
            f"applied={r.applied_index}" + (" (paused)" if node.paused else ""))


class _Interpreter:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.cluster: ManualCluster | None = None

    def run(self, line: str) -> str:
        words = line.split()
        command, args = words[0], words[1:]
        method = getattr(self, "cmd_" + command.replace("-", "_"), None)
        if method is None:
            raise ScriptError(f"unknown command {command!r}")
        if command != "cluster" and self.cluster is None:
            raise ScriptError("the first command must be 'cluster'")
        out = method(args)
        out = "" if out is None else out
        if self.cluster is not None and self.cluster.tracer is not None:
            lines = self.cluster.tracer.take()
            if lines:
                return "\n".join(lines + ([out] if out else []))
        return out

    # ------------------------------------------------------------ commands

    def cmd_cluster(self, args):
        size = int(args[0])
        opts = dict(a.split("=") for a in args[1:])
        options = ReplicaOptions(
            heartbeat_ticks=int(opts.get("heartbeat", 2)),
            election_ticks=int(opts.get("election", 10)),
            pre_vote=opts.get("prevote", "1") == "1",
            check_quorum=opts.get("checkquorum", "1") == "1",
            lease_ticks=int(opts.get("lease", 0)),
            limits=Limits(pipeline_window=int(opts.get("window", 8)),
                          batch_commands_max=int(opts.get("batch", 64)),
                          entries_per_message_max=int(opts.get("permsg", 64))))
        bootstrap = None
        if "voters" in opts:
            bootstrap = Config(frozenset(_ids(opts["voters"])),
                               learners=frozenset(_ids(opts.get("learners", ""))))
        self.cluster = ManualCluster(self.protocol, size, options, bootstrap)
        return "ok"

    def _tick(self, node: _Node, times: int) -> None:
        for _ in range(times):
            if node.alive and not node.paused:
                node.replica.tick()
                node.replica.check_invariants()
                node.process()

    def cmd_tick(self, args):
        times = int(args[1]) if len(args) > 1 else 1
        for n in _ids(args[0]):
            self._tick(self.cluster.node(str(n)), times)
        return self.cmd_status([args[0]])

    def cmd_run(self, args):
        for _ in range(int(args[0])):
            for node in self.cluster.nodes.values():
                self._tick(node, 1)
            self.cmd_stabilize([])
        return self.cmd_status([])

    def cmd_campaign(self, args):
        node = self.cluster.node(args[0])
        for _ in range(self.cluster.options.election_ticks * 4):
            if node.replica.role != Role.FOLLOWER:
                break
            self._tick(node, 1)
        return _status_line(node)

    def cmd_elect(self, args):
        self.cmd_campaign(args)
        self.cmd_stabilize([])
        node = self.cluster.node(args[0])
        if node.replica.role != Role.LEADER:
            raise ScriptError(f"node {args[0]} did not become leader: {_status_line(node)}")
        return self.cmd_status([])

    def cmd_propose(self, args):
        node = self.cluster.node(args[0])
        try:
            node.replica.propose([v.encode() for v in args[1:]])
        except ConsensusError as exc:
            return f"error: {exc}"
        node.process()
        return "ok"

    def cmd_read(self, args):
        node = self.cluster.node(args[0])
        try:
            node.replica.read_index(args[1])
        except ConsensusError as exc:
            return f"error: {exc}"
        node.process()
        return "ok"

    def cmd_lease_read(self, args):
        node = self.cluster.node(args[0])
        point = node.replica.lease_read_index()
        return "none" if point is None else f"index {point}"

    def cmd_transfer(self, args):
        node = self.cluster.node(args[0])
        try:
            node.replica.transfer_leadership(int(args[1]))
        except (ConsensusError, ValueError) as exc:
            return f"error: {exc}"
        node.process()
        return "ok"

    def cmd_config(self, args):
        node = self.cluster.node(args[0])
        learners = _ids(args[2]) if len(args) > 2 else []
        try:
            node.replica.change_config(_ids(args[1]), learners)
        except (ConsensusError, ValueError) as exc:
            return f"error: {exc}"
        node.process()
        return "ok"

    def cmd_deliver(self, args):
        count = self.cluster.deliver(_links(args))
        return f"delivered {count}"

    def cmd_drop(self, args):
        links = _links(args)
        keep, dropped = [], []
        for m in self.cluster.pending:
            (dropped if links is None or (m.frm, m.to) in links else keep).append(m)
        self.cluster.pending = keep
        if self.cluster.tracer is not None:
            for m in dropped:
                self.cluster.tracer.discarded(m, "drop")
        return f"dropped {len(dropped)}"

    def cmd_stabilize(self, args):
        limit = int(args[0]) if args else 100
        for _ in range(limit):
            if not self.cluster.deliverable():
                break
            self.cluster.deliver(None)
        return self.cmd_status([])

    def cmd_partition(self, args):
        text = " ".join(args)
        if "|" not in text:
            raise ScriptError("partition needs two groups: A,B | C,D")
        left, right = (_ids(part.strip()) for part in text.split("|"))
        for a in left:
            for b in right:
                self.cluster.blocked |= {(a, b), (b, a)}
        return "ok"

    def cmd_isolate(self, args):
        node = self.cluster.node(args[0]).node_id
        for other in self.cluster.nodes:
            if other != node:
                self.cluster.blocked |= {(node, other), (other, node)}
        return "ok"

    def cmd_cut(self, args):
        self.cluster.blocked |= _links(args)
        return "ok"

    def cmd_heal(self, args):
        self.cluster.blocked.clear()
        return "ok"

    def cmd_hold(self, args):
        node = self.cluster.node(args[0])
        node.holding = True
        return "ok"

    def cmd_release(self, args):
        node = self.cluster.node(args[0])
        node.holding = False
        held, node.held = node.held, []
        for ready in held:
            node._complete(ready)
        node.process()
        return f"released {len(held)}"

    def cmd_pause(self, args):
        self.cluster.node(args[0]).paused = True
        return "ok"

    def cmd_resume(self, args):
        node = self.cluster.node(args[0])
        node.paused = False
        return "ok"

    def cmd_crash(self, args):
        node = self.cluster.node(args[0])
        node.alive = False
        node.held.clear()
        node.holding = False
        keep = []
        for m in self.cluster.pending:
            if m.to != node.node_id:
                keep.append(m)
            elif self.cluster.tracer is not None:
                self.cluster.tracer.discarded(m, "lost")
        self.cluster.pending = keep
        return "ok"

    def cmd_restart(self, args):
        node = self.cluster.node(args[0])
        node.alive = True
        node.paused = False
        node.boot()
        node.process()
        return "ok"

    def cmd_forget_commit(self, args):
        node = self.cluster.node(args[0])
        hs = node.disk.hard_state
        node.disk.hard_state = type(hs)(hs.term, hs.vote, 0)
        return "ok"

    def cmd_lose_tail(self, args):
        node = self.cluster.node(args[0])
        for index in sorted(node.disk.entries)[len(node.disk.entries) - int(args[1]):]:
            del node.disk.entries[index]
        return "ok"

    def cmd_pending(self, args):
        lines = [f"{type(m).__name__} {m.frm}->{m.to}" for m in self.cluster.pending]
        return "\n".join(lines) if lines else "none"

    def cmd_status(self, args):
        ids = _ids(args[0]) if args else sorted(self.cluster.nodes)
        return "\n".join(_status_line(self.cluster.node(str(n))) for n in ids)

    def cmd_applied(self, args):
        node = self.cluster.node(args[0])
        return " ".join(node.applied) if node.applied else "none"

    def cmd_reads(self, args):
        node = self.cluster.node(args[0])
        return " ".join(node.reads) if node.reads else "none"

    def cmd_persisted(self, args):
        node = self.cluster.node(args[0])
        hs = node.disk.hard_state
        if self.protocol == "multipaxos":
            text = f"promised={Ballot.unpack(hs.term)}"
        else:
            text = f"term={hs.term} vote={hs.vote}"
        slots = " ".join(f"{i}:{describe_value(e)}" for i, e in sorted(node.disk.entries.items()))
        return f"{text} entries=[{slots}]"

    def cmd_members(self, args):
        node = self.cluster.node(args[0])
        return node.replica.config.describe()

    def cmd_log(self, args):
        node = self.cluster.node(args[0])
        entries = [describe_entry(e, self.protocol) for _, e in sorted(node.disk.entries.items())]
        return " ".join(entries) if entries else "empty"

    def cmd_trace(self, args):
        mode = args[0] if args else "on"
        if mode == "off":
            self.cluster.tracer = None
        elif mode in ("on", "messages"):
            nodes = frozenset(_ids(args[1])) if len(args) > 1 else None
            self.cluster.tracer = Tracer(self.protocol, readies=mode == "on", nodes=nodes)
        else:
            raise ScriptError(f"trace takes on, messages or off, not {mode!r}")
        return "ok"

    def cmd_check(self, args):
        seqs = [n.applied for n in self.cluster.nodes.values()]
        for a in seqs:
            for b in seqs:
                short, long_ = (a, b) if len(a) <= len(b) else (b, a)
                if long_[: len(short)] != short:
                    raise ScriptError("applied sequences are not prefixes of one another")
        return "ok"


@dataclass
class _Block:
    command: str
    expected: dict[str, list[str]]  # "" = any protocol
    line: int


def _parse(text: str) -> tuple[list[str], list[_Block]]:
    lines = text.splitlines()
    header: list[str] = []
    blocks: list[_Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            if not blocks:
                header.append(line)
            i += 1
            continue
        start = i
        command = line.strip()
        i += 1
        expected: dict[str, list[str]] = {}
        while i < len(lines) and lines[i].startswith("----"):
            key = lines[i][4:].strip()
            i += 1
            out = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith("----"):
                out.append(lines[i])
                i += 1
            expected[key] = out
        blocks.append(_Block(command, expected, start + 1))
    return header, blocks


def run_script(path: str, protocol: str, rewrite: bool | None = None) -> list[str]:
    """Run a script; returns mismatch descriptions (empty = pass).  With ``rewrite`` the
    file's expected outputs for this protocol are replaced by the actual ones."""
    if rewrite is None:
        rewrite = os.environ.get("PAXOSLOG_REWRITE") == "1"
    with open(path) as f:
        text = f.read()
    header, blocks = _parse(text)
    # The first protocol a script runs on owns the shared expectation ("----"); the others
    # record only what differs ("---- raft").
    owner = "multipaxos"
    for line in header:
        if line.startswith("# protocols:"):
            owner = line.split(":", 1)[1].split()[0]
    interp = _Interpreter(protocol)
    problems = []
    for block in blocks:
        try:
            actual = interp.run(block.command).splitlines()
        except ScriptError as exc:
            actual = [f"error: {exc}"]
        want = block.expected.get(protocol, block.expected.get(""))
        if want != actual:
            problems.append(f"{path}:{block.line} [{protocol}] {block.command}\n"
                            f"  expected: {want}\n  actual:   {actual}")
            if rewrite:
                if protocol == owner and owner not in block.expected:
                    block.expected[""] = actual
                else:
                    block.expected[protocol] = actual
    if rewrite and problems:
        out = header[:]
        for block in blocks:
            out.append(block.command)
            shared = block.expected.get("")
            if shared is not None:
                out.append("----")
                out.extend(shared)
            for key in sorted(k for k in block.expected if k):
                if block.expected[key] == shared:
                    continue
                out.append(f"---- {key}")
                out.extend(block.expected[key])
            out.append("")
        with open(path, "w") as f:
            f.write("\n".join(out).rstrip("\n") + "\n")
    return problems
