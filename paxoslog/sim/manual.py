"""``ManualCluster``: the production node driver under a script's hand.

Every node runs what the server and the simulator run (paxoslog/node/driver.py): the
consensus replica inside a ``NodeDriver`` with the real kv state machine, session table and
command codec, over a ``MemoryStorage`` (the real WAL record encoding).  This module is
only a shell that carries out the driver's instructions, at once and in order, except
where a script takes the decision:

* ``Send``: the messages join the cluster's pending list; nothing moves until the script
  delivers (``deliver``/``stabilize``), drops, blocks or loses them;
* ``Forward``: a client request a follower passes to its leader travels the same way, as a
  ``ForwardRequest`` message (and its answer as a ``ForwardReply``), so it is delivered,
  blocked or lost like any other message between nodes;
* ``Persist(sync=True)``: the Ready's records are written and synced, then the driver hears
  ``persisted()``; while a node is *held* the sync waits (the records are written, not
  durable) and the driver with it, until ``release``;
* ``Persist(sync=False)`` (a commit hint alone): written, not synced, as the server does; a
  crash loses it unless a later sync covered it;
* ``Reply``: the answer to a script's client (``propose``, ``read``, ``lease-read``) is
  recorded on the node it asked; an answer to a forwarded request goes back as a message;
* ``Applied``: the entries applied, in order, are recorded (rendered by what they do; a
  command the session table recognised as a retry of an applied one is marked ``(dup)``)
  and checked against the first value applied at their index anywhere.

Snapshots are not modelled: the driver takes none (the thresholds are unlimited), so no
log is compacted and no follower needs one.

Time is the script's: a node's driver gets one tick per tick the script gives it; a
request's deadline (``timeout`` ticks, default 40) and retries (every 2 ticks) count them.
A crash (a power loss) keeps only what was synced (``MemoryStorage.crash``) and resets
no peer link; a kill (kill -9) keeps what was written and resets the dead node's
connections (``peer_down`` on every peer, which lets a follower take its leader as gone at
once); a restart loads what was kept, and a node whose storage refuses to load (e.g.
acknowledged entries lost, R13) stays down.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ..core.log import ENTRY_NORMAL, Entry
from ..core.quorum import Config
from ..core.ready import ConfigChanged, Ready, Role
from ..core.replica import ReplicaOptions, create_replica
from ..node.driver import DriverOptions, NodeDriver
from ..node.instructions import (DUPLICATE, Applied, CompactLog, ConfigApplied, Forward,
                                 OfferSnapshot, Persist, Reply, RestoreSnapshot, RoleChange,
                                 RowApplied, Send, TakeSnapshot)
from ..node.machines import StateMachines
from ..node.sessions import SessionTable
from ..storage import MemoryStorage, StorageError
from .trace import Tracer, describe_command, describe_value

__all__ = ["ManualCluster", "ManualNode", "ClusterError", "ClientRequest", "ForwardRequest",
           "ForwardReply", "TICK_MS", "CLIENT_ID"]

TICK_MS = 10.0
CLIENT_ID = "script"            # the session every scripted write belongs to
_UNLIMITED = 1 << 60
_SHELL_ONLY = {"trace": False}  # a field the trace leaves out


class ClusterError(Exception):
    """Something the cluster cannot do, or a check that failed (agreement)."""


@dataclass(eq=False)
class ClientRequest:
    """A script's client request: the handle the driver answers."""

    name: str
    kind: str                   # "write" or "read"


@dataclass(eq=False)
class _ForwardedHandle:
    """A request another node forwarded here: where its answer goes."""

    origin: int
    incarnation: int
    request: Any                # the origin driver's PendingWrite / PendingRead
    name: str


@dataclass(frozen=True)
class ForwardRequest:
    """A client request forwarded from ``frm`` to its leader ``to`` (a pending message)."""

    frm: int
    to: int
    op: str                     # "propose" or "read"
    request: str                # the client request's name
    pending: Any = field(default=None, compare=False, metadata=_SHELL_ONLY)
    payload: Any = field(default=None, compare=False, metadata=_SHELL_ONLY)
    incarnation: int = field(default=0, compare=False, metadata=_SHELL_ONLY)


@dataclass(frozen=True)
class ForwardReply:
    """The leader's answer to a forwarded request, on its way back to ``to``."""

    frm: int
    to: int
    request: str
    status: int
    pending: Any = field(default=None, compare=False, metadata=_SHELL_ONLY)
    body: Any = field(default=None, compare=False, metadata=_SHELL_ONLY)
    incarnation: int = field(default=0, compare=False, metadata=_SHELL_ONLY)


class _ObservedReplica:
    """The replica as the driver sees it: every call goes to the real one, and ``advance``
    (a Ready completed: persisted, sent, applied) first shows that Ready to the cluster's
    tracer.  Observation only; the driver is the production one, unchanged."""

    def __init__(self, replica, node: "ManualNode") -> None:
        self._replica = replica
        self._node = node

    def advance(self, ready: Ready) -> None:
        tracer = self._node.cluster.tracer
        if tracer is not None:
            tracer.ready(self._node.node_id, ready)
        self._replica.advance(ready)

    def __getattr__(self, name: str):
        return getattr(self._replica, name)


class ManualNode:
    """One node: a ``NodeDriver`` over a ``MemoryStorage``, run by hand."""

    def __init__(self, cluster: "ManualCluster", node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.disk = MemoryStorage(node_id)
        self.alive = True
        self.paused = False          # takes no ticks and no messages (they wait)
        self.holding = False         # fsyncs wait until released
        self.held: list[Ready] = []
        self.incarnation = 0
        self.refusal: str | None = None
        self.boot()

    # ------------------------------------------------------------------ lifecycle

    def boot(self) -> None:
        """Start from what the disk holds (raises ``StorageError`` when it refuses)."""
        c = self.cluster
        self.incarnation += 1
        self.applied: list[str] = []
        self.reads: list[str] = []
        self.replies: list[tuple[str, int, dict]] = []
        self.inbound: dict[int, _ForwardedHandle] = {}
        restored, reader = self.disk.load(reapply=True)
        machines = c.new_machines()
        if reader is not None:
            machines.restore_from(reader)
        self.replica = create_replica(c.protocol, self.node_id, c.bootstrap, c.options,
                                      random.Random(self.node_id * 7919), restored)
        options = DriverOptions(self.node_id, c.protocol, TICK_MS,
                                request_timeout_ticks=c.request_timeout_ticks,
                                snapshot_entries=_UNLIMITED, snapshot_bytes=_UNLIMITED)
        self.driver = NodeDriver(options, _ObservedReplica(self.replica, self), machines,
                                 restored.snapshot, c.bootstrap,
                                 newest_snapshot=self.disk.snapshot_meta)
        self.driver.restored_hard_state(restored.hard_state)

    def crash(self) -> None:
        """Power loss: the unsynced records go, and so does every volatile thing."""
        self.alive = False
        self.incarnation += 1
        self.held.clear()
        self.holding = False
        self.disk.crash()

    # ------------------------------------------------------------------ events

    def tick(self) -> None:
        if self.alive and not self.paused:
            self.run(self.driver.tick(1))

    def late(self, ticks: int) -> None:
        """The ticker fired ``ticks`` ticks late: they come in one call."""
        if self.alive and not self.paused:
            self.run(self.driver.tick(ticks))

    def receive(self, msg) -> None:
        self.run(self.driver.receive([msg]))

    def write(self, name: str, value: str, sequence: int) -> str:
        """A client's kv put of ``value`` under the key ``value`` with session
        ``sequence``; what happened at once (``ok``: proposed here)."""
        driver = self.driver
        data = driver.machines.encode_write("kv", {"op": "put", "key": value, "value": value},
                                            CLIENT_ID, sequence, int(driver.now * TICK_MS))
        handle = ClientRequest(name, "write")
        proposals = driver.stats["proposals"]
        out = driver.submit_write(handle, (CLIENT_ID, sequence), data)
        outcome = self._outcome(handle, out, proposed=driver.stats["proposals"] > proposals)
        self.run(out)
        return outcome

    def read(self, name: str, consistency: str) -> str:
        """A client's read of the key ``name``; what happened at once."""
        driver = self.driver
        handle = ClientRequest(name, "read")
        served = driver.stats["lease_reads_served"]
        leader = self.replica.role == Role.LEADER
        out = driver.submit_read(handle, {"key": name}, consistency)
        by_lease = driver.stats["lease_reads_served"] > served
        outcome = self._outcome(handle, out, proposed=leader)
        self.run(out)
        if consistency != "lease":
            return outcome
        if by_lease:
            return outcome if outcome.startswith("index") else "lease: waiting to apply"
        return "none: " + ("ReadIndex round" if outcome == "ok" else outcome)

    def _outcome(self, handle: ClientRequest, out: list, proposed: bool) -> str:
        for op in out:
            if type(op) is Reply and op.handle is handle:
                if handle.kind == "read" and op.status in (200, 404) and "index" in op.body:
                    return f"index {op.body['index']}"
                if op.status == 200:
                    return f"committed index={op.body['index']} (from the session table)"
                return f"error: {op.body.get('message')}"
            if type(op) is Forward and op.request.handle is handle:
                return f"forwarded to {op.peer}"
        return "ok" if proposed else "queued: no leader to send it to"

    def forwarded(self, msg: ForwardRequest) -> None:
        handle = _ForwardedHandle(msg.frm, msg.incarnation, msg.pending, msg.request)
        self.inbound[id(handle)] = handle
        if msg.op == "propose":
            self.run(self.driver.submit_forwarded_write(handle, msg.payload))
        else:
            self.run(self.driver.submit_read(handle, msg.payload["query"], "linearizable",
                                             True))

    def forward_answered(self, msg: ForwardReply) -> None:
        self.run(self.driver.forward_answered(msg.pending, msg.status, msg.body))

    def forward_failed(self, request) -> None:
        self.run(self.driver.forward_failed(request))

    def change_config(self, voters, learners) -> None:
        """Raises the core's errors (NotLeader, Busy, ConfigChangeInProgress, ValueError)."""
        self.run(self.driver.change_config(voters, learners))

    def transfer_leadership(self, target: int) -> None:
        self.run(self.driver.transfer_leadership(target))

    def release(self) -> int:
        """The held fsyncs complete, in order; returns how many."""
        self.holding = False
        held, self.held = self.held, []
        for ready in held:
            self.disk.sync()
            self.execute(self.driver.persisted(ready))
        self.run([])
        return len(held)

    # ------------------------------------------------------------------ the shell

    def run(self, instructions: list) -> None:
        """Carry out ``instructions``, then the Ready loop until the driver has nothing to
        do or waits for a held fsync."""
        self.execute(instructions)
        while self.alive:
            out = self.driver.pump()
            if not out:
                break
            self.execute(out)
        if self.alive:
            self.replica.check_invariants()

    def execute(self, instructions: list) -> None:
        cluster = self.cluster
        for op in instructions:
            kind = type(op)
            if kind is Send:
                cluster.pending.extend(op.messages)
            elif kind is Persist:
                self._persist(op)
            elif kind is Applied:
                self._applied(op)
            elif kind is Reply:
                self._reply(op)
            elif kind is Forward:
                cluster.pending.append(ForwardRequest(
                    self.node_id, op.peer, op.op, op.request.handle.name, op.request,
                    op.payload, self.incarnation))
            elif kind in (OfferSnapshot, TakeSnapshot, RestoreSnapshot, CompactLog):
                raise ClusterError(f"node {self.node_id}: snapshots are not modelled here "
                                   f"({kind.__name__})")
            else:
                assert kind in (RoleChange, ConfigApplied, RowApplied, ConfigChanged), op

    def _applied(self, op: Applied) -> None:
        outcomes = iter(op.outcomes)
        for entry in op.entries:
            self.cluster.check_value(self.node_id, entry)
            text = describe_value(entry)
            if entry.kind == ENTRY_NORMAL:
                marks = [next(outcomes).outcome == DUPLICATE for _ in entry.payload]
                if any(marks):
                    text = "+".join(describe_command(c) + ("(dup)" if dup else "")
                                    for c, dup in zip(entry.payload, marks))
            self.applied.append(text)

    def _persist(self, op: Persist) -> None:
        ready = op.ready
        if ready.snapshot is not None:
            raise ClusterError(f"node {self.node_id}: snapshots are not modelled here")
        self.disk.append(ready)
        if not op.sync:
            return
        if self.holding:
            self.held.append(ready)
            if self.cluster.tracer is not None:
                self.cluster.tracer.held(self.node_id)
            return
        self.disk.sync()
        self.execute(self.driver.persisted(ready))

    def _reply(self, op: Reply) -> None:
        handle = op.handle
        if type(handle) is _ForwardedHandle:
            self.inbound.pop(id(handle), None)
            self.cluster.pending.append(ForwardReply(
                self.node_id, handle.origin, handle.name, op.status, handle.request, op.body,
                handle.incarnation))
            return
        self.replies.append((handle.name, op.status, op.body))
        if handle.kind == "read" and op.status in (200, 404) and "index" in op.body:
            self.reads.append(f"{handle.name}@{op.body['index']}")
        if self.cluster.tracer is not None:
            self.cluster.tracer.replied(self.node_id, handle.name, op.status, op.body)


class ManualCluster:
    """Nodes 1..size with a pending list of messages the script moves by hand."""

    def __init__(self, protocol: str, size: int, options: ReplicaOptions,
                 bootstrap: Config | None = None, request_timeout_ticks: int = 40) -> None:
        self.protocol = protocol
        self.options = options
        self.bootstrap = bootstrap or Config(frozenset(range(1, size + 1)))
        self.request_timeout_ticks = request_timeout_ticks
        self.pending: list = []
        self.blocked: set[tuple[int, int]] = set()
        self.values: dict[int, tuple] = {}
        self.sequence = 0
        self.sequences: dict[str, int] = {}   # a write's name -> its session sequence
        self.tracer: Tracer | None = None  # set by the script's ``trace`` command
        self.nodes = {n: ManualNode(self, n) for n in range(1, size + 1)}
        for node in self.nodes.values():
            self._connect(node)

    def new_machines(self) -> StateMachines:
        from statemachines.kv import KVStateMachine
        return StateMachines({"kv": KVStateMachine()}, SessionTable(),
                             lambda name: KVStateMachine(),
                             record_terms=self.protocol == "raft")

    def sequence_for(self, name: str, retry: bool = False) -> int:
        """A new session sequence for the write ``name``, or (``retry``) the one its last
        write used: a client retrying sends the same (client_id, sequence)."""
        if retry:
            if name not in self.sequences:
                raise ClusterError(f"no earlier write of {name!r} to retry")
            return self.sequences[name]
        self.sequence += 1
        self.sequences[name] = self.sequence
        return self.sequence

    def check_value(self, node_id: int, entry: Entry) -> None:
        first = self.values.setdefault(entry.index, (entry.kind, entry.payload))
        if first != (entry.kind, entry.payload):
            raise ClusterError(f"agreement violated at index {entry.index} on node {node_id}")

    def _connect(self, node: ManualNode) -> None:
        """The peer links of a node that (re)started are up (forwarding may use them)."""
        for other in self.nodes.values():
            if other is not node and other.alive:
                node.run(node.driver.peer_up(other.node_id))
                other.run(other.driver.peer_up(node.node_id))

    # ------------------------------------------------------------------ crashes

    def crash(self, node_id: int, reset: bool = False) -> None:
        """The node's machine stops (a power loss): what it had not synced is lost, and
        the requests forwarded to or through it fail.  Its peers' consensus links are not
        reset (they notice by timeouts), unless ``reset`` (see ``kill``)."""
        node = self.nodes[node_id]
        if not node.alive:
            return
        node.crash()
        keep = []
        for msg in self.pending:
            if msg.to != node_id:
                keep.append(msg)
                continue
            if self.tracer is not None:
                self.tracer.discarded(msg, "lost")
            if type(msg) is ForwardRequest:
                self._refused(msg)
        self.pending = keep
        for handle in list(node.inbound.values()):   # their connections are reset
            origin = self.nodes[handle.origin]
            if origin.alive and origin.incarnation == handle.incarnation:
                origin.forward_failed(handle.request)
        node.inbound.clear()
        if reset:
            for other in self.nodes.values():
                if other.alive:
                    other.run(other.driver.peer_down(node_id))

    def kill(self, node_id: int) -> None:
        """The node's process is killed (kill -9): what it wrote survives in the page cache
        (synced or not), and its kernel resets its connections: every peer hears
        ``peer_down`` at once."""
        node = self.nodes[node_id]
        if node.alive:
            node.disk.kill()            # every written record survives (no fsync needed)
            self.crash(node_id, reset=True)

    def reset(self, a: int, b: int) -> None:
        """The connection between live nodes ``a`` and ``b`` is reset and re-established
        (both sides see ``peer_down``, then ``peer_up``); messages are not affected."""
        for node, peer in ((a, b), (b, a)):
            if self.nodes[node].alive:
                self.nodes[node].run(self.nodes[node].driver.peer_down(peer))
        for node, peer in ((a, b), (b, a)):
            if self.nodes[node].alive:
                self.nodes[node].run(self.nodes[node].driver.peer_up(peer))

    def restart(self, node_id: int) -> str | None:
        """Boot the node from its disk; the storage's refusal (the node stays down), or None."""
        node = self.nodes[node_id]
        node.alive = True
        node.paused = False
        try:
            node.boot()
        except StorageError as exc:
            node.alive = False
            node.refusal = str(exc)
            return node.refusal
        node.refusal = None
        self._connect(node)
        node.run([])
        return None

    def _refused(self, msg: ForwardRequest) -> None:
        origin = self.nodes[msg.frm]
        if origin.alive and origin.incarnation == msg.incarnation:
            origin.forward_failed(msg.pending)

    # ------------------------------------------------------------------ the network

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
            blocked = (msg.frm, msg.to) in self.blocked
            if node is None or not node.alive or blocked:
                if self.tracer is not None:
                    self.tracer.discarded(msg, "blocked" if blocked else "lost")
                if not blocked and type(msg) is ForwardRequest:
                    self._refused(msg)        # connection refused: the sender knows
                continue
            kind = type(msg)
            if kind is ForwardReply and node.incarnation != msg.incarnation:
                if self.tracer is not None:
                    self.tracer.discarded(msg, "lost")
                continue
            if self.tracer is not None:
                self.tracer.delivered(msg)
            if kind is ForwardRequest:
                node.forwarded(msg)
            elif kind is ForwardReply:
                node.forward_answered(msg)
            else:
                node.receive(msg)
        return len(batch)

    def _paused(self, node_id: int) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.alive and node.paused

    def deliverable(self) -> bool:
        return any(not self._paused(msg.to) for msg in self.pending)
