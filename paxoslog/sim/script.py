"""Scripted scenarios: a hand-driven cluster and a tiny text-script interpreter.

A script (tests/interaction/*.txt) is a series of blocks::

    # comment lines describe the scenario
    command args...
    ----
    expected output

Commands run in order against a ``ManualCluster`` (manual.py): every node is the
production node driver (replica, kv state machine, session table, command codec) over a
``MemoryStorage``, and its network delivers nothing until told to (``deliver``/
``stabilize``), so a scenario controls every interleaving.  Expected output may differ per
protocol: ``---- raft`` / ``---- multipaxos`` blocks override ``----`` for that protocol.
Set PAXOSLOG_REWRITE=1 to rewrite expected outputs from actual ones.

Commands::

    cluster N [election=10] [heartbeat=2] [window=8] [batch=64] [permsg=64] [lease=0]
              [prevote=1] [checkquorum=1] [voters=IDS] [learners=IDS] [timeout=40]
                             nodes 1..N; the initial configuration is every node a voter,
                             or the given voters and learners (others are outside it);
                             timeout: ticks a client request may wait for its answer
    tick NODES [K]           tick each node K times (default 1), processing Readies
    late NODES K             each node's ticker fires K ticks late (a stall): one call
                             that gives the K ticks at once, as the server's ticker does
    run K                    K rounds of: tick every live node once, then stabilize
    campaign NODE            tick NODE until it leaves the follower role
    elect NODE               campaign NODE, then stabilize (fails if it does not lead)
    propose NODE VALUE...    a client writes each VALUE at NODE (a kv put of VALUE under
                             the key VALUE, each in its own session sequence): ``ok``
                             (proposed there), ``forwarded to L``, ``queued: ...`` (no
                             leader yet: retried every 2 ticks until the timeout) or
                             ``error: ...``; the answer comes later (``replies``)
    retry NODE VALUE         the client sends its last write of VALUE again, at NODE, with
                             the same session sequence (exactly-once: the session table
                             answers or skips a copy of an applied write)
    read NODE NAME           a client's linearizable read (of the key NAME) at NODE: ``ok``
                             (a ReadIndex round on the leader), ``forwarded to L``, ...
    lease-read NODE [NAME]   a client's lease read at NODE: ``index I`` when the leader's
                             lease serves it now, else ``none: `` and what the node does
                             with it instead (a ReadIndex round, a forward)
    transfer NODE TARGET     ask leader NODE to hand leadership to TARGET
    config NODE VOTERS [LEARNERS]   membership change at NODE (comma-separated ids)
    deliver [FROM->TO]...    deliver pending messages once (all, or on the given links)
    drop [FROM->TO]...       discard pending messages (all, or on the given links)
    stabilize [MAX]          deliver until no message is pending (at most MAX rounds)
    partition A,B | C,D      block every link between the groups (both ways)
    isolate NODE             block every link of NODE (both ways)
    cut FROM->TO             block one direction of one link
    heal                     unblock everything
    hold NODE                NODE's fsyncs wait: a Ready that must be durable is written
                             but not synced, and the driver waits for it (unsent, unapplied)
    release NODE             NODE's held fsync completes (then send, apply, next Readies)
    pause NODE               NODE freezes (SIGSTOP): no ticks; messages to it wait
    resume NODE              NODE continues with its old volatile state; waiting messages
                             are delivered by the next deliver/stabilize
    crash NODE               NODE's machine stops (power loss); whatever it had not synced
                             is lost (commit hints are written without fsync, as the server
                             does); requests forwarded to or through it fail; its peers'
                             links are not reset (they notice by timeouts)
    kill NODE                NODE's process is killed (kill -9): what it wrote survives (the
                             page cache), and its peers see their connections to it reset
                             (peer_down: a follower may take its leader as gone at once)
    reset A B                the connection between live nodes A and B is reset and
                             re-established (peer_down, then peer_up, on both sides)
    forget-commit NODE       (NODE down) its persisted commit point becomes 0 (a lost
                             unsynced hard-state write)
    lose-tail NODE K         (NODE down) its disk loses its last K entries (a durability
                             fault beyond the protocols' model: acknowledged entries vanish)
    restart NODE             (NODE down) it boots from what it persisted (or its storage
                             refuses: ``error: ...``, and it stays down)
    pending                  list undelivered messages (type from->to)
    status [NODES]           role, leader, commit and applied index per node
    applied NODE             the values NODE applied, in order (noop / config shown; a
                             write the session table skipped as a retry: VALUE(dup))
    reads NODE               reads NODE has answered, as NAME@index
    replies NODE             every answer NODE gave its clients, in order
    persisted NODE           the hard state and entries NODE has synced (protocol specific)
    members NODE             the configuration NODE currently follows
    check                    agreement on applied values across nodes
    trace on|messages|off [NODES]
                             from now on, each command's output starts with every message
                             delivered, every Ready completed and every client answer
                             (``messages``: only the deliveries; NODES: only messages from
                             or to those nodes, their Readies and answers); see
                             paxoslog/sim/trace.py for the format
    log NODE                 the entries NODE has synced as index@term:value (the term is
                             the ballot in Multi-Paxos)

A forwarded client request and its answer are messages too (``ForwardRequest``,
``ForwardReply``): pending until delivered, blocked by partitions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.ballot import Ballot
from ..core.errors import ConsensusError
from ..core.limits import Limits
from ..core.quorum import Config
from ..core.ready import Role
from ..core.replica import ReplicaOptions
from .manual import ClusterError, ManualCluster, ManualNode
from .trace import Tracer, describe_entry, describe_reply, describe_value

__all__ = ["ManualCluster", "run_script", "ScriptError"]


class ScriptError(Exception):
    """A script line could not be run (bad command or a failed expectation inside it)."""


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


def _status_line(node: ManualNode) -> str:
    if not node.alive:
        return f"{node.node_id}: down"
    r = node.replica
    leader = r.leader_id if r.leader_id is not None else "-"
    return (f"{node.node_id}: {r.role} leader={leader} commit={r.commit_index} "
            f"applied={node.driver.applied_index}" + (" (paused)" if node.paused else ""))


class _Interpreter:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.cluster: ManualCluster | None = None
        self.lease_reads = 0

    def run(self, line: str) -> str:
        words = line.split()
        command, args = words[0], words[1:]
        method = getattr(self, "cmd_" + command.replace("-", "_"), None)
        if method is None:
            raise ScriptError(f"unknown command {command!r}")
        if command != "cluster" and self.cluster is None:
            raise ScriptError("the first command must be 'cluster'")
        try:
            out = method(args)
        except ClusterError as exc:
            raise ScriptError(str(exc)) from None
        out = "" if out is None else out
        if self.cluster is not None and self.cluster.tracer is not None:
            lines = self.cluster.tracer.take()
            if lines:
                return "\n".join(lines + ([out] if out else []))
        return out

    def _node(self, text: str) -> ManualNode:
        try:
            return self.cluster.nodes[int(text)]
        except (ValueError, KeyError):
            raise ScriptError(f"no such node {text!r}") from None

    def _serving(self, text: str) -> ManualNode:
        """The node a client talks to: it must be up and running."""
        node = self._node(text)
        if not node.alive:
            raise ScriptError(f"node {node.node_id} is down (connection refused)")
        if node.paused:
            raise ScriptError(f"node {node.node_id} is paused")
        return node

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
        self.cluster = ManualCluster(self.protocol, size, options, bootstrap,
                                     request_timeout_ticks=int(opts.get("timeout", 40)))
        return "ok"

    def cmd_tick(self, args):
        times = int(args[1]) if len(args) > 1 else 1
        for n in _ids(args[0]):
            node = self._node(str(n))
            for _ in range(times):
                node.tick()
        return self.cmd_status([args[0]])

    def cmd_late(self, args):
        for n in _ids(args[0]):
            self._node(str(n)).late(int(args[1]))
        return self.cmd_status([args[0]])

    def cmd_run(self, args):
        for _ in range(int(args[0])):
            for node in self.cluster.nodes.values():
                node.tick()
            self.cmd_stabilize([])
        return self.cmd_status([])

    def cmd_campaign(self, args):
        node = self._node(args[0])
        for _ in range(self.cluster.options.election_ticks * 4):
            if not node.alive or node.replica.role != Role.FOLLOWER:
                break
            node.tick()
        return _status_line(node)

    def cmd_elect(self, args):
        self.cmd_campaign(args)
        self.cmd_stabilize([])
        node = self._node(args[0])
        if not node.alive or node.replica.role != Role.LEADER:
            raise ScriptError(f"node {args[0]} did not become leader: {_status_line(node)}")
        return self.cmd_status([])

    def cmd_propose(self, args):
        node = self._serving(args[0])
        outcomes = [(value, node.write(value, value, self.cluster.sequence_for(value)))
                    for value in args[1:]]
        if len({outcome for _, outcome in outcomes}) == 1:
            return outcomes[0][1]
        return "\n".join(f"{value}: {outcome}" for value, outcome in outcomes)

    def cmd_retry(self, args):
        node = self._serving(args[0])
        return node.write(args[1], args[1], self.cluster.sequence_for(args[1], retry=True))

    def cmd_read(self, args):
        return self._serving(args[0]).read(args[1], "linearizable")

    def cmd_lease_read(self, args):
        if len(args) > 1:
            name = args[1]
        else:
            self.lease_reads += 1
            name = f"lease{self.lease_reads}"
        return self._serving(args[0]).read(name, "lease")

    def cmd_transfer(self, args):
        node = self._serving(args[0])
        try:
            node.transfer_leadership(int(args[1]))
        except (ConsensusError, ValueError) as exc:
            return f"error: {exc}"
        return "ok"

    def cmd_config(self, args):
        node = self._serving(args[0])
        learners = _ids(args[2]) if len(args) > 2 else []
        try:
            node.change_config(_ids(args[1]), learners)
        except (ConsensusError, ValueError) as exc:
            return f"error: {exc}"
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
        node = self._node(args[0]).node_id
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
        self._node(args[0]).holding = True
        return "ok"

    def cmd_release(self, args):
        return f"released {self._node(args[0]).release()}"

    def cmd_pause(self, args):
        self._node(args[0]).paused = True
        return "ok"

    def cmd_resume(self, args):
        self._node(args[0]).paused = False
        return "ok"

    def cmd_crash(self, args):
        self.cluster.crash(self._node(args[0]).node_id)
        return "ok"

    def cmd_kill(self, args):
        self.cluster.kill(self._node(args[0]).node_id)
        return "ok"

    def cmd_reset(self, args):
        self.cluster.reset(self._node(args[0]).node_id, self._node(args[1]).node_id)
        return "ok"

    def cmd_restart(self, args):
        node = self._down(args[0])
        refusal = self.cluster.restart(node.node_id)
        return "ok" if refusal is None else f"error: the node refuses to start: {refusal}"

    def _down(self, text: str) -> ManualNode:
        node = self._node(text)
        if node.alive:
            raise ScriptError(f"node {node.node_id} must be down (crash it first)")
        return node

    def cmd_forget_commit(self, args):
        self._down(args[0]).disk.reset_commit(0)
        return "ok"

    def cmd_lose_tail(self, args):
        self._down(args[0]).disk.lose_last_entries(int(args[1]))
        return "ok"

    def cmd_pending(self, args):
        lines = [f"{type(m).__name__} {m.frm}->{m.to}" for m in self.cluster.pending]
        return "\n".join(lines) if lines else "none"

    def cmd_status(self, args):
        ids = _ids(args[0]) if args else sorted(self.cluster.nodes)
        return "\n".join(_status_line(self._node(str(n))) for n in ids)

    def cmd_applied(self, args):
        node = self._node(args[0])
        return " ".join(node.applied) if node.applied else "none"

    def cmd_reads(self, args):
        node = self._node(args[0])
        return " ".join(node.reads) if node.reads else "none"

    def cmd_replies(self, args):
        node = self._node(args[0])
        lines = [describe_reply(*reply) for reply in node.replies]
        return "\n".join(lines) if lines else "none"

    def cmd_persisted(self, args):
        hs, entries = self._node(args[0]).disk.durable_state()
        if self.protocol == "multipaxos":
            text = f"promised={Ballot.unpack(hs.term)}"
        else:
            text = f"term={hs.term} vote={hs.vote}"
        slots = " ".join(f"{e.index}:{describe_value(e)}" for e in entries)
        return f"{text} entries=[{slots}]"

    def cmd_members(self, args):
        return self._node(args[0]).replica.config.describe()

    def cmd_log(self, args):
        _, entries = self._node(args[0]).disk.durable_state()
        return " ".join(describe_entry(e, self.protocol) for e in entries) or "empty"

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
