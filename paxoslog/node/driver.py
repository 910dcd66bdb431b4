"""``NodeDriver``: one node of the cluster without I/O, time or threads.

The driver owns the consensus replica, the state machines with the session table, and the
client requests in flight.  Its shell (the Twisted server, or the simulator) feeds it
events and carries out the instructions each event returns (instructions.py):

    tick(count)                   the ticker's ticks (timers of the core and of requests)
    receive(messages)             consensus messages from peers
    submit_write / submit_read    client requests (and requests other nodes forwarded)
    forward_answered / _failed    the leader's answer to a request forwarded to it
    persisted(ready)              the fsync of a Ready finished
    snapshot_restored / _saved    snapshot work the shell did off the event loop
    peer_up / peer_down           the peer transport's connections

Events return what must happen at once (answers, forwards); ``pump()`` runs the Ready
loop.  The Ready loop honours the core contract (ready.py): a Ready's early messages (the
leader's replication traffic) are sent first (``Send``), then its durable part is persisted
(``Persist``) before anything else of it happens; then its messages are sent (what
``persisted`` returns: a follower's acknowledgement leaves before any apply work), and at
the next ``pump`` its committed entries are applied in order, its read points served and
``advance`` called.  While
one Ready is being persisted, proposals, messages and ticks keep landing in the core and
make up the next Ready: that is group commit, one fsync for every write that arrived
meanwhile.  A Ready whose only durable change is the commit hint is written without fsync
and not waited for (a lost hint loses nothing acknowledged).

Writes are acknowledged only once applied here (chosen/committed on a quorum, applied in
log order).  A follower forwards writes to the leader; because the session table applies
a (client_id, sequence) at most once, the driver may resubmit a write whenever its fate is
unclear (leadership lost, connection lost), and answers its client from its own apply of
the same pair if the leader's reply never comes.  Reads: ``stale`` from local state;
``lease`` from the leader's lease when it holds; else a ReadIndex round on the leader
(followers forward), served once applied >= the read point.

Leases (leases.py): the active leader counts every kv lease's deadline on its ticks and
proposes ``lease_expire`` when one passes; it becomes active when its ``lease_promote`` is
applied.  A keep-alive or TTL query (``{"lease": {"op": "keepalive"|"ttl", "id"}}``) is a
linearizable read served on that leader, and never logged.  A read may carry
``min_revision``: it is refused (503 ``revision_not_reached``) when the index it would be
served at is lower (etcd refuses a future revision the same way); ``future`` says whether
that index was a confirmed read point (linearizable, lease: the revision is beyond what
the cluster had committed) or only this node's apply (stale: another node may have it).

Every timer counts ticks: a request gets ``request_timeout_ticks`` (then 504 when it may
have reached a leader, 503 when it surely did not), and a request with nowhere to go is
retried every ``retry_ticks``.

Size: over 700 lines because it is the one place events become instructions (reads,
writes, forwarding, snapshots, leases); the pieces with a job of their own already live
beside it (requests.py, machines.py, sessions.py, leases.py, ticks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from statemachines import BadCommand

from ..core.ballot import NODE_ID_BITS
from ..core.errors import Busy, NotLeader
from ..core.log import ENTRY_CONFIG, ENTRY_NORMAL, SnapshotMeta, entry_config
from ..core.messages import InstallSnapshot
from ..core.quorum import Config
from ..core.ready import ConfigChanged, ProposalDropped, Ready, Role, RoleChanged
from .commands import command_key, decode_command, encode_internal
from .instructions import (DUPLICATE, EXECUTED, Applied, CompactLog, ConfigApplied, Forward,
                           OfferSnapshot, Persist, Reply, RestoreSnapshot, RoleChange,
                           RowApplied, Send, TakeSnapshot)
from .leases import LeaseKeeper
from .machines import QueryFailed, StateMachines
from .policy import SnapshotPolicy
from .requests import DEADLINE, RETRY, PendingRead, PendingWrite, ReadPoints, Timers
from .sessions import DUPLICATE as SESSION_DUPLICATE

__all__ = ["NodeDriver", "DriverOptions", "ApplyGap"]

STAT_NAMES = ("proposals", "proposals_forwarded", "commits", "commands_applied", "reads",
              "reads_forwarded", "stale_reads", "lease_reads", "lease_reads_served",
              "readies", "fsyncs", "role_changes", "snapshots_taken", "snapshots_installed",
              "proposals_dropped", "write_timeouts", "duplicates", "lease_keepalives",
              "lease_expiries_proposed", "lease_promotions_proposed", "leader_connection_lost",
              "applied_while_persisting")


class ApplyGap(AssertionError):
    """The core handed over a committed entry that does not follow the applied index."""


@dataclass(frozen=True)
class DriverOptions:
    node_id: int
    protocol: str
    tick_ms: float
    request_timeout_ticks: int
    retry_ticks: int = 2
    snapshot_entries: int = 10_000
    snapshot_bytes: int = 64 << 20
    election_ticks: int = 20          # the extension a new leader gives every lease
    lease_expire_batch_max: int = 1000


def _unavailable(message: str, code: str = "unavailable", **extra) -> tuple[int, dict]:
    return 503, {"error": code, "message": message, **extra}


def _definite_refusal(body: object) -> bool:
    """A 503 from the leader that asking it again at once will not change: its read point
    is below the read's ``min_revision`` (a future revision).  The client is told now,
    instead of the read going round until its deadline."""
    return type(body) is dict and body.get("error") == "revision_not_reached"


def _lease_query_ok(request: object) -> bool:
    return (isinstance(request, dict) and request.get("op") in ("keepalive", "ttl")
            and type(request.get("id")) is int
            and type(request.get("keys_max", 0)) is int and 0 <= request.get("keys_max", 0) <= 1000)


_OUTCOME_UNKNOWN = (504, {"error": "outcome_unknown",
                          "message": "no answer in time; the write may still commit: retry "
                                     "with the same client_id and sequence"})


class NodeDriver:
    """See the module docstring.  Every event method returns the instructions to carry
    out, in order; the driver never blocks and never calls its shell."""

    def __init__(self, options: DriverOptions, replica, machines: StateMachines,
                 snapshot: SnapshotMeta | None, bootstrap: Config,
                 newest_snapshot: SnapshotMeta | None = None) -> None:
        """``snapshot``: the one ``machines`` were restored from; ``newest_snapshot``: the
        newest on disk when that is a later one (the log up to it is applied again)."""
        self.options = options
        self.node_id = options.node_id
        self.replica = replica
        self.machines = machines
        self.applied_index = snapshot.index if snapshot else 0
        self.applied_term = snapshot.term if snapshot else 0
        self.applied_config: Config = snapshot.config if snapshot else bootstrap
        self.policy = SnapshotPolicy(options.snapshot_entries, options.snapshot_bytes,
                                     last_index=self.applied_index)
        if newest_snapshot is not None and newest_snapshot.index > self.applied_index:
            self.policy.reapplying(newest_snapshot.index)
        self.now = 0                       # ticks given so far
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self.stopping = False
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self._multipaxos = options.protocol == "multipaxos"
        self._out: list = []
        self._busy = False                 # a synced Ready is being persisted
        self._restoring: Ready | None = None
        self._completing: Ready | None = None    # persisted, sent; the rest at next pump
        self._synced_hs = None
        self._connected: set[int] = set()
        self._timers = Timers()
        self._waiters: dict[tuple, list[PendingWrite]] = {}
        self._points = ReadPoints()
        # Every read not answered yet, in arrival order (a dict, not a set: a set of these
        # objects iterates in address order, which made simulator runs depend on what ran
        # before them in the same process: lease-beyond seed 23, Multi-Paxos).
        self._reads: dict[PendingRead, None] = {}
        self.leases = LeaseKeeper(options.tick_ms, options.election_ticks,
                                  options.lease_expire_batch_max)
        self._promote_at: int | None = None       # tick our lease_promote was proposed
        self._lease_wanted = False                # a lease request met an inactive leader

    # ================================================================== events

    def tick(self, count: int = 1) -> list:
        """``count`` ticks of time passed (more than one after a stall: the replica hears
        of the stall first, so that it does not blame the others' silence on them)."""
        replica = self.replica
        if count > 1:
            replica.stalled(count - 1)
        for _ in range(count):
            replica.tick()
        self.now += count
        for kind, request in self._timers.due(self.now):
            if kind == DEADLINE:
                self._expire(request)
            elif isinstance(request, PendingWrite):
                self._route_write(request)
            else:
                self._route_read(request)
        self._keep_leases()
        return self._take()

    def receive(self, messages: list) -> list:
        """Consensus messages from peers."""
        if not self.stopping:
            step = self.replica.step
            for msg in messages:
                step(msg)
        return self._take()

    def peer_up(self, peer: int) -> list:
        self._connected.add(peer)
        return self._take()

    def peer_down(self, peer: int) -> list:
        """The transport lost its connection to ``peer``.  When that is our leader, the core
        may take it as gone and campaign at once (the connection reset by the kernel of a
        dead process is how a kill -9 shows; replica.leader_unreachable decides)."""
        self._connected.discard(peer)
        replica = self.replica
        if peer == replica.leader_id and replica.role != Role.LEADER and not self.stopping:
            self.stats["leader_connection_lost"] += 1
            replica.leader_unreachable(peer)
        return self._take()

    def persisted(self, ready: Ready) -> list:
        """The synced Ready handed out by ``Persist(ready, sync=True)`` is durable."""
        assert self._busy and self._restoring is None and self._completing is None, \
            "persisted() without a Ready in flight"
        self.stats["fsyncs"] += 1
        if ready.snapshot is not None:
            # A received snapshot is durable.  Send now (persist -> send: the leader learns
            # at once that it arrived and does not offer it again), then have the shell
            # build the state machines from it; the rest of this Ready (apply, reads,
            # advance) waits for snapshot_restored, so nothing is applied past it before.
            self._send(ready.messages)
            ready.messages = []
            self._restoring = ready
            self._out.append(RestoreSnapshot(ready.snapshot))
            return self._take()
        # Send now, the rest at the next pump: on a follower these messages are the
        # acknowledgement the leader's commit waits for, and applying what the same Ready
        # commits (tens of microseconds) would hold it back (issue 17).
        self._send(ready.messages)
        self._completing = ready
        return self._take()

    def snapshot_restored(self, meta: SnapshotMeta, machines: StateMachines) -> list:
        """The shell built ``machines`` from the installed snapshot (``meta``: the
        snapshot's own, which may be newer than the one the core asked for)."""
        ready = self._restoring
        assert ready is not None, "snapshot_restored() without a snapshot being installed"
        self._restoring = None
        self.machines = machines
        self.leases.deactivate()
        self._promote_at = None
        self.applied_index, self.applied_term = meta.index, meta.term
        self.applied_config = meta.config
        self.policy.taken(meta.index)
        self.stats["snapshots_installed"] += 1
        self._release_reads()
        self._busy = False
        self._complete(ready)
        return self._take()

    def snapshot_saved(self, meta: SnapshotMeta, point: SnapshotMeta | None) -> list:
        """A local snapshot at ``meta`` is durable; ``point``: the snapshot the log may be
        compacted to (the one before it with snapshot.keep >= 2; None: nothing yet)."""
        self.policy.taken(meta.index)
        self.stats["snapshots_taken"] += 1
        if point is not None:
            try:
                self.replica.compact(point)
            except (ValueError, AssertionError):
                pass                      # the core keeps its log; the WAL is still cut
            self._out.append(CompactLog(point.index))
        return self._take()

    def snapshot_failed(self) -> list:
        self.policy.failed()
        return self._take()

    def install_snapshot(self, message: InstallSnapshot, token: bytes) -> list:
        """The shell received the whole snapshot file the leader offered with ``message``
        (``token`` names it for ``Persist``): let the core decide on it."""
        if not self.stopping:
            m = message
            self.replica.step(InstallSnapshot(m.frm, m.to, m.term, m.index, m.snap_term,
                                              m.config, token))
        return self._take()

    def stop(self) -> list:
        """Stop taking requests; answer every pending one 503."""
        self.stopping = True
        for waiters in list(self._waiters.values()):
            for w in list(waiters):
                self._fail_write(w, *_unavailable("the node is shutting down"))
        for r in list(self._reads):
            self._fail_read(r, *_unavailable("the node is shutting down"))
        return self._take()

    # ---- admin (membership service): narrow pass-throughs that pump afterwards

    def change_config(self, voters, learners) -> list:
        self.replica.change_config(voters, learners)
        return self._take()

    def transfer_leadership(self, target: int) -> list:
        self.replica.transfer_leadership(target)
        return self._take()

    # ================================================================== writes

    def submit_write(self, handle: Any, key: tuple[str, int], data: bytes,
                     forwarded: bool = False) -> list:
        """Replicate an encoded, validated command with its (client_id, sequence) ``key``.
        The answer: 200 committed, 503 never applied, 504 outcome unknown."""
        if self.stopping:
            self._out.append(Reply(handle, *_unavailable("the node is shutting down")))
            return self._take()
        status, hit = self.machines.lookup(key)
        if status == SESSION_DUPLICATE:
            self.stats["duplicates"] += 1
            index, term, result = hit
            self._out.append(Reply(handle, 200, self._committed(
                index, term if term else None, result)))
            return self._take()
        w = PendingWrite(handle, key, data, forwarded)
        self._waiters.setdefault(key, []).append(w)
        w.deadline = self.now + self.options.request_timeout_ticks
        self._timers.add(w.deadline, DEADLINE, w)
        self._route_write(w)
        return self._take()

    def submit_forwarded_write(self, handle: Any, data: bytes) -> list:
        """A write another node forwarded to us (as leader): check it like the API did."""
        self.stats["proposals_forwarded"] += 1
        command = decode_command(data)
        key = command_key(command) if command is not None else None
        if key is None:
            self._out.append(Reply(handle, 400, {
                "error": "bad_request", "message": "forwarded command lacks client_id/sequence"}))
            return self._take()
        try:
            self.machines.validate_logged(command)
        except BadCommand as exc:
            self._out.append(Reply(handle, 400, {"error": "bad_request", "message": str(exc)}))
            return self._take()
        return self.submit_write(handle, key, data, forwarded=True)

    def forward_answered(self, request, status: int, body: object) -> list:
        """The leader answered a request we forwarded (``Forward.request``)."""
        request.via = None
        if isinstance(request, PendingWrite):
            if not request.done:
                if status == 200:
                    self._resolve_write(request, body)
                elif status == 503:
                    self._retry(request)
                elif status != 504:   # 504: the leader gave up; our apply or deadline answers
                    self._fail_write(request, status, body)
        elif not request.done:
            if status == 200:
                self._finish(request)
                self._out.append(Reply(request.handle, 200, body))
            elif status in (503, 504) and not _definite_refusal(body):
                self._retry(request)
            else:
                self._fail_read(request, status, body)
        return self._take()

    def forward_failed(self, request) -> list:
        """The connection carrying a forwarded request was lost before its answer."""
        request.via = None
        self._retry(request)
        return self._take()

    def _route_write(self, w: PendingWrite) -> None:
        if w.done:
            return
        replica = self.replica
        if replica.role == Role.LEADER:
            try:
                replica.propose((w.data,))
            except NotLeader:
                pass
            except Busy as exc:
                if w.submitted:
                    # Proposed before (then leadership moved): that copy may still commit,
                    # so this is not "never applied"; try again until the deadline (504).
                    self._retry(w)
                else:
                    self._fail_write(w, *_unavailable(f"the leader is busy: {exc}",
                                                      code="busy"))
                return
            else:
                w.submitted = True
                w.sent += 1
                self.stats["proposals"] += 1
                return
        if w.forwarded:
            self._fail_write(w, *self._not_leader())
            return
        leader = replica.leader_id
        if leader is None or leader == self.node_id or leader not in self._connected:
            self._retry(w)
            return
        w.submitted = True
        w.sent += 1
        w.via = leader
        self.machines.forget_encoded(w.data)
        self._out.append(Forward(w, leader, "propose", w.data))

    def _reroute_writes(self) -> None:
        """Leadership lost: writes we proposed may or may not commit.  Resubmit them through
        the new leader (the session table applies a (client_id, sequence) once, whichever
        copy commits first); writes forwarded to us go back to their node as not-leader."""
        for waiters in list(self._waiters.values()):
            for w in list(waiters):
                if w.forwarded:
                    self._fail_write(w, *self._not_leader())
                else:
                    self._retry(w)

    def _reforward(self, leader: int) -> None:
        """A new leader is known: requests still waiting on an answer from an old one
        (which may be stopped or cut off and never answer) go to the new one now, instead
        of waiting out their deadline.  Safe for writes: the copy carries its (client_id,
        sequence), and the session table applies whichever copy commits first, once."""
        waiting = [w for ws in self._waiters.values() for w in ws if w.via is not None]
        waiting += [r for r in self._reads if r.via is not None]
        for request in waiting:
            if request.via != leader and not request.done:
                request.via = None
                if isinstance(request, PendingWrite):
                    self._route_write(request)
                else:
                    self._route_read(request)

    def _committed(self, index: int, term: int | None, result: object) -> dict:
        """The body of a committed write.  ``term``: the entry's (None: the current one)."""
        return {"status": "committed", "index": index,
                "term": self.replica.term if term is None else self.api_term(term),
                "leader": self.replica.leader_id, "result": result}

    def _resolve_write(self, w: PendingWrite, body: object) -> None:
        self._finish(w)
        self._unregister(w)
        self._out.append(Reply(w.handle, 200, body))

    def _fail_write(self, w: PendingWrite, status: int, body: dict) -> None:
        if w.done:
            return
        self._finish(w)
        self._unregister(w)
        self._out.append(Reply(w.handle, status, body))

    def _unregister(self, w: PendingWrite) -> None:
        waiters = self._waiters.get(w.key)
        if waiters is not None:
            try:
                waiters.remove(w)
            except ValueError:
                pass
            if not waiters:
                del self._waiters[w.key]

    def _answer_writes(self, key: tuple, index: int, term: int, result: object) -> None:
        waiters = self._waiters.pop(key, None)
        if waiters:
            body = self._committed(index, term, result)
            for w in waiters:
                if not w.done:
                    self._finish(w)
                    self._out.append(Reply(w.handle, 200, body))

    # ================================================================== reads

    def submit_read(self, handle: Any, query: dict, consistency: str,
                    forwarded: bool = False) -> list:
        """Serve a query (the shell has brought the ticks up to date before a lease read:
        a lease that ran out during a stall must not look valid)."""
        self.stats["reads"] += 1
        if forwarded:
            self.stats["reads_forwarded"] += 1
        if "lease" in query:
            if not _lease_query_ok(query["lease"]):
                self._out.append(Reply(handle, 400, {
                    "error": "bad_request",
                    "message": 'a lease read is {"op": "keepalive"|"ttl", "id": <int>, '
                               '"keys_max"?: 0..1000}'}))
                return self._take()
            consistency = "linearizable"       # served by the active leader only
        if consistency == "stale":
            self.stats["stale_reads"] += 1
            self._out.append(Reply(handle, *self._answer(query, stale=True)))
            return self._take()
        if self.stopping:
            self._out.append(Reply(handle, *_unavailable("the node is shutting down")))
            return self._take()
        r = PendingRead(handle, query, forwarded)
        self._reads[r] = None
        r.deadline = self.now + self.options.request_timeout_ticks
        self._timers.add(r.deadline, DEADLINE, r)
        if consistency == "lease" and self.replica.role == Role.LEADER:
            self.stats["lease_reads"] += 1
            point = self.replica.lease_read_index()
            if point is not None:
                self.stats["lease_reads_served"] += 1
                self._wait_for_point([r], point)
                return self._take()
        self._route_read(r)
        return self._take()

    def _route_read(self, r: PendingRead) -> None:
        if r.done:
            return
        if self.replica.role == Role.LEADER:
            self._points.arriving.append(r)
            return
        if r.forwarded:
            self._fail_read(r, *self._not_leader())
            return
        leader = self.replica.leader_id
        if leader is None or leader == self.node_id or leader not in self._connected:
            self._retry(r)
            return
        r.via = leader
        self._out.append(Forward(r, leader, "read", {"query": r.query}))

    def _issue_read_batch(self) -> None:
        taken = self._points.take_arriving()
        if taken is None:
            return
        batch_id, batch = taken
        try:
            self.replica.read_index(batch_id)
        except NotLeader:
            for r in batch:
                self._retry(r)
            return
        except Busy as exc:
            for r in batch:
                self._fail_read(r, *_unavailable(f"the leader is busy: {exc}", code="busy"))
            return
        self._points.asked(batch_id, batch)

    def _wait_for_point(self, batch: list[PendingRead], index: int) -> None:
        if index <= self.applied_index:
            self._serve_reads(batch)
        else:
            self._points.wait(batch, index)

    def _requeue_issued_reads(self) -> None:
        """Lost leadership: read points not yet confirmed will never be; route again."""
        for r in self._points.unconfirmed():
            self._retry(r)

    def _release_reads(self) -> None:
        self._serve_reads(self._points.ready(self.applied_index))

    def _serve_reads(self, batch: list[PendingRead]) -> None:
        for r in batch:
            if not r.done:
                if "lease" in r.query:
                    self._serve_lease(r)
                    continue
                self._finish(r)
                self._out.append(Reply(r.handle, *self._answer(r.query, stale=False)))

    def _answer(self, query: dict, stale: bool) -> tuple[int, dict]:
        """(status, body) of a read from local state now."""
        floor = query.get("min_revision")
        if type(floor) is int and floor > self.applied_index:
            if stale:
                message = (f"this node has applied up to index {self.applied_index}, below "
                           f"the min_revision {floor} asked for; retry (here once it caught "
                           f"up, or at another node)")
            else:
                # Served at a confirmed read point: nothing at or above ``floor`` was
                # committed when the read began, on any node.
                message = (f"min_revision {floor} is a future revision: the read was "
                           f"served at index {self.applied_index}, the leader's commit "
                           f"point when it began")
            return _unavailable(message, code="revision_not_reached",
                                applied_index=self.applied_index, min_revision=floor,
                                node=self.node_id, future=not stale)
        base = {"index": self.applied_index, "term": self.replica.term}
        if stale:
            base.update(stale=True, node=self.node_id, applied_index=self.applied_index,
                        commit_index=self.replica.commit_index, leader=self.replica.leader_id,
                        ms_since_leader=self.ms_since_leader())
        try:
            found = self.machines.query(query)
        except QueryFailed as exc:
            body = dict(exc.body)
            if exc.status == 404 and "sm" not in query:
                body.update(base)           # an absent key says as of which index
            return exc.status, body
        found.update(base)
        return 200, found

    def _fail_read(self, r: PendingRead, status: int, body: dict) -> None:
        if not r.done:
            self._finish(r)
            self._out.append(Reply(r.handle, status, body))

    # ================================================================== leases

    def _lease_applied(self, result: dict) -> None:
        """A lease command was executed here (statemachines/kv.py's result)."""
        op, keeper = result["op"], self.leases
        if "error" in result:
            return
        if op == "lease_grant":
            keeper.granted(result["id"], result["ttl_ms"], self.now)
        elif op == "lease_revoke":
            keeper.removed((result["id"],))
        elif op == "lease_expire":
            keeper.removed(result["expired"])
        elif op == "lease_promote":
            term = self._leadership()
            if term is not None and result["term"] == term:
                kv = self.machines.kv
                keeper.activate(term, self.now, dict(kv.leases.ttl_ms))
                self._lease_wanted = False

    def _leadership(self) -> int | None:
        """Our leadership's identity while we lead, totally ordered across leaders: the
        Raft term, or the packed Multi-Paxos ballot (two leaders may share a round, never
        a ballot).  None when not leading."""
        replica = self.replica
        if replica.role != Role.LEADER:
            return None
        return replica.ballot.pack() if self._multipaxos else replica.term

    def _keep_leases(self) -> None:
        """Every tick on the leader: have our lease_promote proposed while leases exist
        (or a lease request is waiting), then propose the expiry of leases run out."""
        term = self._leadership()
        if term is None or self.stopping:
            return
        keeper = self.leases
        if keeper.active_term != term:
            kv = self.machines.kv
            if kv is None or not (len(kv.leases) or self._lease_wanted):
                return
            if (self._promote_at is None
                    or self.now - self._promote_at >= self.options.election_ticks):
                if self._propose_internal({"op": "lease_promote", "term": term}):
                    self._promote_at = self.now
                    self.stats["lease_promotions_proposed"] += 1
            return
        ids = keeper.due(self.now)
        if ids and self._propose_internal({"op": "lease_expire", "ids": ids, "term": term}):
            self.stats["lease_expiries_proposed"] += len(ids)

    def _propose_internal(self, fields: dict) -> bool:
        """Propose a kv command of the node itself (no client session); False when the
        core refused it (the caller tries again on a later tick)."""
        try:
            self.replica.propose((encode_internal("kv", fields),))
        except (NotLeader, Busy):
            return False
        return True

    def _serve_lease(self, r: PendingRead) -> None:
        """A keep-alive or TTL query whose read point is confirmed: answered by the
        active leader from its keeper; elsewhere routed again (or refused when it was
        forwarded to a node that no longer leads)."""
        replica, keeper = self.replica, self.leases
        term = self._leadership()
        if term is None or keeper.active_term != term:
            if r.forwarded and term is None:
                self._fail_read(r, *self._not_leader())
            else:
                self._lease_wanted = True
                self._retry(r)
            return
        self._finish(r)
        request = r.query["lease"]
        lease = request["id"]
        kv = self.machines.kv
        info = kv.lease_info(lease, request.get("keys_max", 0)) if kv is not None else None
        if request["op"] == "keepalive":
            self.stats["lease_keepalives"] += 1
            ticks = keeper.keepalive(lease, self.now) if info is not None else None
        else:
            ticks = keeper.remaining(lease, self.now) if info is not None else None
        if ticks is None:
            self._out.append(Reply(r.handle, 404, {
                "error": "lease_not_found", "message": f"lease {lease} does not exist "
                "(expired, revoked or never granted)", "index": self.applied_index}))
            return
        info["remaining_ms"] = int(ticks * self.options.tick_ms)
        info.update(index=self.applied_index, term=replica.term)
        self._out.append(Reply(r.handle, 200, info))

    # ================================================================== shared request upkeep

    def _finish(self, request) -> None:
        self._timers.cancel(request)
        request.done = True
        request.retry_at = None
        if type(request) is PendingRead:
            self._reads.pop(request, None)

    def _retry(self, request) -> None:
        if not request.done and request.retry_at is None:
            request.retry_at = self.now + self.options.retry_ticks
            self._timers.add(request.retry_at, RETRY, request)

    def _expire(self, request) -> None:
        if isinstance(request, PendingWrite):
            self.stats["write_timeouts"] += 1
            if request.submitted:
                self._fail_write(request, *_OUTCOME_UNKNOWN)
            else:
                self._fail_write(request, *_unavailable("no leader reachable",
                                                        leader=self.leader_id))
        else:
            self._fail_read(request, *_unavailable("no leader confirmed the read in time",
                                                   leader=self.leader_id))

    def _not_leader(self) -> tuple[int, dict]:
        return _unavailable(f"node {self.node_id} is not the leader", code="not_leader",
                            leader=self.replica.leader_id)

    # ================================================================== the Ready loop

    def pump(self) -> list:
        """Drain the core's Readies (while none is being persisted): the instructions.
        The shell calls it after events, as often as it likes: the simulator after each
        one, the server at once after peer messages and otherwise once per reactor turn
        (the client requests of a turn then share one Ready, and one fsync)."""
        if self._completing is not None:
            ready, self._completing = self._completing, None
            self._busy = False
            self._complete(ready, sent=True)
        if self._points.arriving:
            self._issue_read_batch()
        replica = self.replica
        while not self._busy:
            ready = replica.ready()
            if ready is None:
                break
            self.stats["readies"] += 1
            self._send(ready.early_messages)   # may precede the fsync (ready.py)
            if ready.must_sync:
                if self._commit_hint_only(ready):
                    # No fsync, and nothing waits for it: the hint goes after the answers
                    # the Ready's commit releases.
                    self._synced_hs = ready.hard_state
                    self._complete(ready)
                    self._out.append(Persist(ready, sync=False))
                    continue
                if ready.hard_state is not None:
                    self._synced_hs = ready.hard_state
                self._busy = True
                self._out.append(Persist(ready, sync=True))
                self._apply_while_persisting(ready)
                break
            self._complete(ready)
        return self._take()

    def _apply_while_persisting(self, ready: Ready) -> None:
        """Apply, while ``ready`` is being persisted, the committed entries it does not
        write itself (ready.py, step 3): they are chosen on a quorum, and durable here too
        (every earlier Ready was persisted), so their writers need not wait for an fsync
        of entries that came after theirs.  On a busy leader nearly every Ready commits the
        batch before it and carries the next one.  Stops at a configuration entry (its
        ``ConfigApplied`` waits for the Ready, as before) and applies nothing past a
        snapshot; the rest is applied in ``_complete``, which skips what was applied.
        Only on the leader: a follower's apply answers no client, and its acknowledgement
        (sent when the fsync ends) must not wait behind it."""
        if (not ready.committed or ready.snapshot is not None
                or self.replica.role != Role.LEADER):
            return
        first_written = ready.truncate_from
        for entry in ready.entries:
            if first_written is None or entry.index < first_written:
                first_written = entry.index
        early = []
        for entry in ready.committed:
            if entry.kind != ENTRY_NORMAL or (first_written is not None
                                              and entry.index >= first_written):
                break
            early.append(entry)
        if early:
            self.stats["applied_while_persisting"] += len(early)
            self._apply(early)
            self._release_reads()

    def _take(self) -> list:
        out, self._out = self._out, []
        return out

    def _commit_hint_only(self, ready: Ready) -> bool:
        """True when the Ready's only durable change is the commit point of the hard state:
        term and vote (the promise) unchanged, no entries, no truncation, no snapshot."""
        hs = ready.hard_state
        last = self._synced_hs
        return (hs is not None and not ready.entries and ready.truncate_from is None
                and ready.snapshot is None and last is not None
                and hs.term == last.term and hs.vote == last.vote
                # a commit point that covers a new configuration is fsynced: after a
                # power loss the node must still know which voters govern its next slot
                and not any(type(e) is ConfigChanged for e in ready.events))

    def restored_hard_state(self, hard_state) -> None:
        """The hard state the replica was restored from (the first commit hint compares
        with it)."""
        self._synced_hs = hard_state

    def _send(self, messages: list) -> None:
        plain = []
        for msg in messages:
            if type(msg) is InstallSnapshot and not msg.data:
                self._out.append(OfferSnapshot(msg))
            else:
                plain.append(msg)
        if plain:
            self._out.append(Send(plain))

    def _complete(self, ready: Ready, sent: bool = False) -> None:
        """Everything after persistence, in contract order (``sent``: the messages went
        out already, when ``persisted`` was reported)."""
        if not sent:
            self._send(ready.messages)
        if ready.committed:
            self._apply(ready.committed)
        for read in ready.reads:
            self._points.confirmed(read.request_id, read.index)
        self._release_reads()
        for event in ready.events:
            self._on_event(event)
        self.replica.advance(ready)
        if self.policy.due and not self.stopping:
            self._start_snapshot()

    def _on_event(self, event) -> None:
        if isinstance(event, RoleChanged):
            old_role, old_leader = self.role, self.leader_id
            self.role, self.leader_id = event.role, event.leader
            self.stats["role_changes"] += 1
            self._out.append(RoleChange(event.role, event.term, event.leader, old_role,
                                        old_leader))
            if event.role != old_role or event.role == Role.LEADER:
                self.leases.deactivate()
                self._promote_at = None
            if event.role != Role.LEADER:
                self._requeue_issued_reads()
                if old_role == Role.LEADER:
                    self._reroute_writes()
            if event.leader is not None and event.leader != old_leader:
                self._reforward(event.leader)
        elif isinstance(event, ProposalDropped):
            self.stats["proposals_dropped"] += len(event.commands)
            for data in event.commands:
                command = decode_command(data)
                key = command_key(command) if command is not None else None
                for w in list(self._waiters.get(key, ())):
                    if w.sent == 1:
                        w.submitted = False   # its only copy was never sent: not applied
                    if w.forwarded:
                        self._fail_write(w, *self._not_leader())
                    else:
                        self._retry(w)
        elif isinstance(event, ConfigChanged):
            self._out.append(event)

    # ================================================================== applying

    def _apply(self, entries: list) -> None:
        applied = self.applied_index
        outcomes = []
        replies_from = len(self._out)
        done = []
        for entry in entries:
            index = entry.index
            if index <= applied:
                continue                        # covered by a snapshot restored meanwhile
            if index != applied + 1:
                raise ApplyGap(f"apply gap: entry {index} after {applied}")
            nbytes = 0
            if entry.kind == ENTRY_NORMAL:
                for data in entry.payload:
                    nbytes += len(data)
                    outcome = self.machines.apply_command(index, entry.term, data)
                    self.stats["commands_applied"] += 1
                    outcomes.append(outcome)
                    if outcome.outcome == DUPLICATE:
                        self.stats["duplicates"] += 1
                    if (outcome.sm == "kv" and outcome.outcome == EXECUTED
                            and isinstance(outcome.result, dict)
                            and str(outcome.result.get("op", "")).startswith("lease_")):
                        self._lease_applied(outcome.result)
                    if outcome.key is not None:
                        self._answer_writes(outcome.key, outcome.index, outcome.term,
                                            outcome.result)
                    if (outcome.sm == "membership" and isinstance(outcome.result, dict)
                            and outcome.outcome != DUPLICATE):
                        self._out.append(RowApplied(outcome.result))
            elif entry.kind == ENTRY_CONFIG:
                old, self.applied_config = self.applied_config, entry_config(entry)
                self._out.append(ConfigApplied(old, self.applied_config, index))
            applied = self.applied_index = index
            self.applied_term = entry.term
            self.policy.note_applied(index, nbytes)
            done.append(entry)
        if done:
            self.stats["commits"] += len(done)
            # The log view and streams see the entries before their writers get answers.
            self._out.insert(replies_from, Applied(done, outcomes))

    def _start_snapshot(self) -> None:
        if self.applied_index == 0:
            self.policy.taken(0)
            return
        self.policy.started()
        self._out.append(self.capture())

    def capture(self) -> TakeSnapshot:
        """Cheap copies of every state machine and of the session table, all at the
        applied index (one consistent cut: nothing is applied in between), for a snapshot
        the shell encodes later, off the event loop (a local snapshot, or a backup)."""
        meta = SnapshotMeta(self.applied_index, self.applied_term, self.applied_config)
        return TakeSnapshot(meta, self.machines.producers(),
                            self.machines.sessions.snapshot_producer())

    # ================================================================== views

    def pending_writes(self) -> int:
        """Client writes waiting for their entry to commit (or for their deadline)."""
        return sum(len(waiters) for waiters in self._waiters.values())

    def api_term(self, term: int) -> int:
        """Terms as clients see them: the Raft term, or the round of a Paxos ballot."""
        return term >> NODE_ID_BITS if self._multipaxos else term   # Ballot.unpack's round

    def ms_since_leader(self) -> int:
        """0 on the leader; else how long ago this node last heard from a leader (ms)."""
        if self.replica.role == Role.LEADER:
            return 0
        return int(self.replica.status().ticks_since_leader * self.options.tick_ms)

    @property
    def has_work(self) -> bool:
        """True when ``pump()`` may have something to do."""
        return not self._busy and (self.replica.has_ready() or bool(self._points.arriving))

    @property
    def busy(self) -> bool:
        """A Ready is being persisted (or its snapshot restored)."""
        return self._busy

    @property
    def pending_requests(self) -> int:
        return sum(len(w) for w in self._waiters.values()) + len(self._reads)

    def connected(self, peer: int) -> bool:
        return peer in self._connected
