"""``NodeService``: one node, the Twisted shell around the sans-I/O consensus core.

It owns the replica, the data directory (through the writer threads), the state machines,
the peer transport and the HTTP API (child services), and drives them:

* ticks: a ``LoopingCall`` every ``tick_ms`` on the injected reactor; a late call ticks the
  missed ticks too (bounded), so the core's notion of time, and with it leases and
  check-quorum, follows the wall clock even after the process was stopped or starved;
* the Ready loop, in the order the contract demands: persist (fsync, on the writer thread)
  -> send -> apply -> answer reads -> advance.  While one Ready is being persisted,
  proposals, messages and ticks keep landing in the core and make up the next Ready: that
  is group commit, one fsync for every client write that arrived meanwhile;
* client requests: a write is acknowledged only once its command was applied here, which
  means it is chosen/committed (durable on a quorum) and applied in log order.  Writes on a
  follower are forwarded to the leader over the peer connection; the follower also answers
  from its own apply of the same (client_id, sequence) if the leader's reply is lost.
  Because the session table makes a (client_id, sequence) apply at most once, the node may
  resubmit a write whenever its fate is unclear (leader change, lost connection);
* snapshots per ``SnapshotPolicy`` (state copied on the reactor thread, written on the
  snapshot thread, then the core and the WAL are compacted), and snapshot transfer to
  followers the core finds behind the leader's log (see snapshots.py).

A storage I/O error is fatal: the node stops (DiskStorage refuses further writes; restart).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import random
import time
from collections import deque

import cbor2
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger

from paxoslog.core.ballot import Ballot
from paxoslog.core.errors import Busy, NotLeader
from paxoslog.core.log import (ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, SnapshotMeta,
                               entry_config)
from paxoslog.core.messages import InstallSnapshot
from paxoslog.core.quorum import Config
from paxoslog.core.ready import ConfigChanged, ProposalDropped, Ready, Role, RoleChanged
from paxoslog.core.replica import create_replica
from paxoslog.storage import DiskStorage, SnapshotPolicy, SnapshotReader
from statemachines import (BadCommand, create as create_state_machine, is_internal,
                           snapshot_producer)

from . import frames as F
from .api import Api
from .commands import decode_command
from .errors import ApiError, unavailable
from .http import HttpService
from .membership import MembershipManager
from .metrics import Histogram
from .peers import PeerTransport
from .sessions import DUPLICATE, STALE, SessionTable
from .snapshots import SnapshotFetcher, SnapshotShipper, verify_states
from .writer import StorageWriter

__all__ = ["NodeService", "FatalNodeError"]

log = Logger(namespace="paxoslog.node")

_TICK_CATCHUP_MAX = 1000
_SERVER_SESSION_WRITES = 128
_KIND_NAMES = {ENTRY_NORMAL: "normal", ENTRY_NOOP: "noop", ENTRY_CONFIG: "config"}


class FatalNodeError(Exception):
    """The node cannot go on (storage failure, broken apply order); it stops."""


class _Write:
    __slots__ = ("key", "data", "d", "deadline", "retry", "submitted", "done", "forwarded")

    def __init__(self, key: tuple, data: bytes, forwarded: bool) -> None:
        self.key = key
        self.data = data
        self.d = defer.Deferred()
        self.deadline = None
        self.retry = None
        self.submitted = False     # may have reached a leader: a timeout is "outcome unknown"
        self.done = False
        self.forwarded = forwarded


class _Read:
    __slots__ = ("query", "d", "deadline", "retry", "done", "forwarded")

    def __init__(self, query: dict, forwarded: bool) -> None:
        self.query = query
        self.d = defer.Deferred()
        self.deadline = None
        self.retry = None
        self.done = False
        self.forwarded = forwarded


class NodeService(MultiService):
    """One paxoslog node.  ``reactor`` is injected (cli.py passes the global one)."""

    def __init__(self, config, node_id: int, reactor, *, seed: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.node_id = node_id
        self.reactor = reactor
        self.me = config.node(node_id)
        self.protocol = config.protocol
        self.timing = config.timing
        self.tick_ms = config.timing.tick_ms
        self.request_timeout = config.timing.request_timeout_ms / 1000.0
        self.retry_delay = max(0.01, 2 * self.tick_ms / 1000.0)
        self.rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        # Writes without a client session get one of ours: a fresh client id every
        # _SERVER_SESSION_WRITES writes, so no session holds more results than it keeps.
        self._client_prefix = f"node{node_id}-{os.urandom(4).hex()}"
        self._sequence = 0
        self.started_at = time.time()

        self.storage: DiskStorage | None = None
        self.writer: StorageWriter | None = None
        self.replica = None
        self.sms: dict = {}
        self.kv = None
        self.sessions = SessionTable(config.limits.sessions_max, config.limits.session_results_max,
                                     config.limits.session_results_total_max,
                                     config.limits.session_idle_ms)
        self.applied_index = 0
        self.applied_term = 0
        self.applied_config: Config = Config(frozenset(config.node_ids))
        self.policy: SnapshotPolicy | None = None
        self.recent: deque = deque(maxlen=max(1, config.limits.recent_entries_kept))
        self._recent_bytes = 0

        self._busy = False
        self._synced_hs = None
        self._pump_call = None
        self._stopping = False
        self._idle_waiters: list[defer.Deferred] = []
        self._tick_loop = None
        self._tick_origin = 0.0
        self._ticks_done = 0
        self._tick_catchup_max = max(_TICK_CATCHUP_MAX, 2 * config.timing.election_ticks + 1)
        self._waiters: dict[tuple, list[_Write]] = {}
        self._read_batch: list[_Read] = []
        self._read_batches: dict[int, list[_Read]] = {}
        self._next_read_batch = 0
        self._waiting_reads: list[tuple[int, int]] = []   # heap of (index, batch id)
        self._served_batches: dict[int, list[_Read]] = {}
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self.leader_since: float | None = None
        self.fatal: BaseException | None = None
        self.on_fatal = None   # callable(exc): set by the CLI to stop the process

        self.fsync = Histogram()
        self.stats = dict.fromkeys(
            ("proposals", "proposals_forwarded", "commits", "commands_applied", "reads",
             "reads_forwarded", "stale_reads", "lease_reads", "lease_reads_served",
             "readies", "fsyncs", "role_changes",
             "snapshots_taken", "snapshots_installed", "proposals_dropped", "write_timeouts",
             "duplicates"), 0)

        self.membership = MembershipManager(self)
        self.transport = PeerTransport(config, node_id, self, reactor)
        self.transport.setServiceParent(self)
        self.shipper = SnapshotShipper(self)
        self.fetcher = SnapshotFetcher(self)
        self.api = Api(self)
        self.http = HttpService(self.api, self.me.api_bind, config.limits, reactor)
        self.http.setServiceParent(self)

    # ================================================================== lifecycle

    def startService(self) -> None:
        """Open the data directory, restore state, start the core, peers, API and ticks.
        Raises on a storage problem (the caller reports it and exits)."""
        config = self.config
        self.membership.load()       # raises when this node was removed, or the file is bad
        self.applied_config = self.membership.bootstrap_config()
        self.storage = DiskStorage(self.me.data_dir, config.name, self.node_id, self.protocol,
                                   config.storage_options())
        try:
            restored, reader = self.storage.load()
        except BaseException:
            self.storage.close()
            raise
        # The membership table is the address book of nodes added later: always on.
        names = config.state_machines + (
            ("membership",) if "membership" not in config.state_machines else ())
        for name in names:
            options = {"key_bytes_max": config.limits.key_bytes_max} if name == "kv" else {}
            try:
                self.sms[name] = create_state_machine(name, **options)
            except Exception:
                self.storage.close()
                raise
        self.kv = self.sms["kv"]
        if reader is not None:
            with reader:
                self._restore_state_machines(reader)
            meta = restored.snapshot
            self.applied_index, self.applied_term = meta.index, meta.term
            self.applied_config = meta.config
        self.policy = SnapshotPolicy(config.snapshot.entries, config.snapshot.bytes,
                                     last_index=self.applied_index)
        self._synced_hs = restored.hard_state
        bootstrap = self.membership.bootstrap_config()
        self.replica = create_replica(self.protocol, self.node_id, bootstrap,
                                      config.replica_options(), self.rng, restored)
        self.writer = StorageWriter(self.storage, self.reactor)
        self.writer.start()
        log.info("node {node} of cluster {cluster} ({protocol}) starting: data {data}, "
                 "snapshot {snap}, {entries} log entries, hard state {hs}",
                 node=self.node_id, cluster=config.name, protocol=self.protocol,
                 data=self.me.data_dir, snap=self.applied_index, entries=len(restored.entries),
                 hs=tuple(restored.hard_state))
        if self.storage.torn is not None:
            log.warn("the WAL had a torn tail (cut at restart): {torn}", torn=self.storage.torn)
        if config.secret is None and len(config.nodes) > 1:
            log.warn("no peer secret in the conf: peers are not authenticated")
        self.membership.sync()
        super().startService()
        self.membership.start()
        self._tick_origin = time.monotonic()
        self._ticks_done = 0
        self._tick_loop = task.LoopingCall.withCount(self._tick)
        self._tick_loop.clock = self.reactor
        self._tick_loop.start(self.tick_ms / 1000.0, now=False)
        self.schedule_pump()

    @defer.inlineCallbacks
    def stopService(self):
        """Hand leadership over if we lead, stop taking requests, finish the Ready being
        persisted, then seal the WAL (fsync) and release the data directory."""
        if self._stopping:
            return
        if self.replica is not None and self.replica.role == Role.LEADER and self.fatal is None:
            yield self._transfer_before_stop()
        self._stopping = True
        self.membership.stop()
        if self._tick_loop is not None and self._tick_loop.running:
            self._tick_loop.stop()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        yield super().stopService()
        if self._busy:
            d = defer.Deferred()
            self._idle_waiters.append(d)
            yield d
        for waiters in list(self._waiters.values()):
            for w in list(waiters):
                self._fail_write(w, unavailable("the node is shutting down"))
        if self.writer is not None:
            try:
                yield self.writer.close()
            except Exception as exc:
                log.error("closing the WAL failed: {error}", error=exc)
            self.writer.stop()
        log.info("node {node} stopped", node=self.node_id)

    @defer.inlineCallbacks
    def _transfer_before_stop(self):
        target = self.membership.best_successor()
        if target is None:
            return
        try:
            self.replica.transfer_leadership(target)
        except (NotLeader, ValueError, Busy):
            return
        log.info("stopping: handing leadership to node {target}", target=target)
        self.schedule_pump()
        deadline = self.reactor.seconds() + 2 * self.timing.election_ticks * self.tick_ms / 1000.0
        while self.replica.role == Role.LEADER and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, self.tick_ms / 1000.0, lambda: None)

    def _die(self, exc: BaseException) -> None:
        """A fatal error: stop serving; the CLI exits non-zero."""
        if self.fatal is not None:
            return
        self.fatal = exc
        log.critical("fatal: {error}; stopping the node", error=exc)
        if self.on_fatal is not None:
            self.on_fatal(exc)

    # ================================================================== driving the core

    def _tick(self, count: int) -> None:
        """The LoopingCall fired (``count`` > 1: it missed calls, e.g. after SIGSTOP or a
        long stall).  Tick the core once per ``tick_ms`` of monotonic time elapsed."""
        if self._catch_up_ticks() is None:
            return
        self.schedule_pump()

    def _catch_up_ticks(self) -> int | None:
        """Tick the core for every tick period elapsed (monotonic clock) since the ticks
        already given, at most ``_tick_catchup_max`` at once: that bound is over twice the
        election timeout, so after any pause the lease and leader-contact timers have run
        out before anything is served from them.  The number of ticks, or None (crashed)."""
        due = int((time.monotonic() - self._tick_origin) * 1000.0 / self.tick_ms + 1e-6)
        missing = due - self._ticks_done
        if missing <= 0:
            return 0
        self._ticks_done = due
        replica = self.replica
        count = min(missing, self._tick_catchup_max)
        try:
            for _ in range(count):
                replica.tick()
        except Exception as exc:
            self._crash("tick", exc)
            return None
        return count

    def _crash(self, where: str, exc: Exception) -> None:
        """An exception inside the core loop leaves the replica in an unknown state: stop
        (crash-only; a restart recovers from the data directory)."""
        log.failure("unexpected error in {where}", where=where)
        self._die(FatalNodeError(f"unexpected error in {where}: {exc!r}"))

    def schedule_pump(self) -> None:
        if self._pump_call is None and not self._stopping:
            self._pump_call = self.reactor.callLater(0, self._pump)

    def after_input(self) -> None:
        """The transport delivered a batch of frames."""
        self.schedule_pump()

    def _pump(self) -> None:
        self._pump_call = None
        if self.fatal is not None:
            return
        try:
            self._drain()
        except Exception as exc:
            self._crash("the Ready loop", exc)

    def _drain(self) -> None:
        if self._read_batch:
            self._issue_read_batch()
        replica = self.replica
        while not self._busy:
            ready = replica.ready()
            if ready is None:
                return
            self.stats["readies"] += 1
            if ready.must_sync:
                if self._commit_hint_only(ready):
                    self._synced_hs = ready.hard_state
                    self.writer.append_unsynced(ready).addErrback(self._persist_failed)
                    self._complete(ready)
                    continue
                if ready.hard_state is not None:
                    self._synced_hs = ready.hard_state
                self._busy = True
                snapshot_file = None
                if ready.snapshot is not None and ready.snapshot_data:
                    snapshot_file = ready.snapshot_data.decode()
                d = self.writer.persist(ready, snapshot_file)
                d.addCallbacks(self._persisted, self._persist_failed, callbackArgs=(ready,))
                return
            self._complete(ready)

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

    def _persisted(self, seconds: float, ready: Ready) -> None:
        self.fsync.observe(seconds)
        self.stats["fsyncs"] += 1

        def finish(restored: bool = True) -> None:
            try:
                if restored:
                    self._complete(ready)
            except Exception as exc:
                self._crash("completing a Ready", exc)
            finally:
                self._busy = False
                if self._idle_waiters:
                    waiters, self._idle_waiters = self._idle_waiters, []
                    for d in waiters:
                        d.callback(None)
            if not self._stopping and self.fatal is None:
                self._pump()

        if ready.snapshot is None:
            finish()
            return
        # A received snapshot is durable.  Send now (persist -> send: the leader learns
        # at once that it arrived and does not offer it again), then build the state
        # machines from it on the snapshot thread; the rest of the Ready (apply, reads,
        # advance) runs after the swap.  _busy stays set until then, so the Ready loop
        # neither applies nor advances past the snapshot meanwhile.
        try:
            transport = self.transport
            for msg in ready.messages:
                if type(msg) is InstallSnapshot and not msg.data:
                    self.shipper.offer(msg)
                else:
                    transport.send(msg)
            transport.flush()
        except Exception as exc:
            self._crash("sending a Ready's messages", exc)
            finish(False)
            return
        ready.messages = []                 # sent: _complete must not send them again
        self._restore_installed(ready.snapshot).addCallback(finish)

    def _persist_failed(self, failure) -> None:
        self._busy = False
        for d in self._idle_waiters:
            d.callback(None)
        self._idle_waiters = []
        self._die(FatalNodeError(f"persisting failed: {failure.getErrorMessage()}"))

    def _complete(self, ready: Ready) -> None:
        """Everything after persistence, in contract order.  A Ready carrying a received
        snapshot comes here only once ``_persisted`` sent its messages and restored the
        state machines from the snapshot (``_restore_installed``)."""
        transport = self.transport
        for msg in ready.messages:
            if type(msg) is InstallSnapshot and not msg.data:
                self.shipper.offer(msg)
            else:
                transport.send(msg)
        transport.flush()
        if ready.committed:
            self._apply(ready.committed)
        for read in ready.reads:
            batch = self._read_batches.pop(read.request_id, None)
            if batch is None:
                continue
            if read.index <= self.applied_index:
                self._serve_reads(batch)
            else:
                self._served_batches[read.request_id] = batch
                heapq.heappush(self._waiting_reads, (read.index, read.request_id))
        if self._waiting_reads:
            self._release_reads()
        for event in ready.events:
            self._on_event(event)
        self.replica.advance(ready)
        if self.policy.due and not self._stopping:
            self._start_snapshot()

    def _on_event(self, event) -> None:
        if isinstance(event, RoleChanged):
            old_role, old_leader = self.role, self.leader_id
            self.role, self.leader_id = event.role, event.leader
            self.stats["role_changes"] += 1
            if event.role == Role.LEADER and old_role != Role.LEADER:
                self.leader_since = time.time()
                log.info("became leader (term {term})", term=event.term)
            elif event.role != Role.LEADER and old_role == Role.LEADER:
                log.info("no longer leader (term {term}, leader now {leader})",
                         term=event.term, leader=event.leader)
            elif event.leader != old_leader and event.leader is not None:
                log.info("following node {leader} (term {term})", leader=event.leader,
                         term=event.term)
            if event.role != Role.LEADER:
                self._requeue_issued_reads()
                if old_role == Role.LEADER:
                    self._reroute_writes()
        elif isinstance(event, ProposalDropped):
            self.stats["proposals_dropped"] += len(event.commands)
            for data in event.commands:
                command = decode_command(data)
                if command is None:
                    continue
                for w in list(self._waiters.get(_command_key(command), ())):
                    if w.forwarded:
                        self._fail_write(w, self._not_leader_error())
                    else:
                        self._retry_write(w)
        elif isinstance(event, ConfigChanged):
            log.info("configuration {config} at index {index}",
                     config=event.config.describe(), index=event.index)

    # ================================================================== applying

    def _apply(self, entries: list) -> None:
        now = time.time()
        recent = self.recent
        recent_bytes_max = self.config.limits.recent_bytes_max
        policy = self.policy
        applied = self.applied_index
        membership_changed = False
        for entry in entries:
            index = entry.index
            if index <= applied:
                continue                        # covered by a snapshot restored meanwhile
            if index != applied + 1:
                self._die(FatalNodeError(f"apply gap: entry {index} after {applied}"))
                return
            kind = entry.kind
            nbytes = 0
            if kind == ENTRY_NORMAL:
                for data in entry.payload:
                    nbytes += len(data)
                    self._apply_command(entry, data)
            elif kind == ENTRY_CONFIG:
                self.applied_config = entry_config(entry)
                membership_changed = True
            applied = self.applied_index = index
            self.applied_term = entry.term
            policy.note_applied(index, nbytes)
            if len(recent) == recent.maxlen:
                self._recent_bytes -= recent[0][5]
            recent.append((index, entry.term, kind, entry.payload, now, nbytes + 64))
            self._recent_bytes += nbytes + 64
            while self._recent_bytes > recent_bytes_max and len(recent) > 1:
                self._recent_bytes -= recent.popleft()[5]
        self.stats["commits"] += len(entries)
        if membership_changed:
            self.membership.sync()

    def _apply_command(self, entry, data: bytes) -> None:
        self.stats["commands_applied"] += 1
        command = decode_command(data)
        if command is None:
            return
        key = _command_key(command)
        self.sessions.observe(command.pop("ts", None))     # the shell's; not the SM's
        if key is not None:
            status, hit = self.sessions.lookup(*key)
            if status == DUPLICATE:
                self.stats["duplicates"] += 1
                self._answer_writes(key, hit[0], hit[1] or entry.term, hit[2])
                return
            if status == STALE:
                self._answer_writes(key, entry.index, entry.term,
                                    {"error": "stale_sequence",
                                     "message": "this sequence is older than the session "
                                                "keeps; use a new sequence"})
                return
        sm = self.sms.get(command.get("sm"))
        if sm is None:
            result = {"error": "bad_request",
                      "message": f"unknown state machine {command.get('sm')!r:.40}"}
        else:
            try:
                result = sm.apply(entry.index, command)
                if sm.name == "membership":
                    self.membership.row_applied(result)
            except BadCommand as exc:
                result = {"error": "bad_request", "message": str(exc)}
            except Exception as exc:  # a state machine bug must not kill consensus
                # Deterministic on every replica (same code, same command, same state), so
                # the error result is the same everywhere, and the apply loop goes on.
                log.failure("state machine {sm} failed on entry {index}", sm=sm.name,
                            index=entry.index)
                result = {"error": "apply_failed",
                          "message": f"state machine {sm.name!r} failed: "
                                     f"{type(exc).__name__}: {exc}"[:500]}
        if key is not None:
            # Replicated state must be identical on every replica: a Multi-Paxos slot may
            # carry its (same) value under different ballots on different acceptors, so
            # only Raft's term (the same everywhere for an index) is recorded.
            self.sessions.record(key[0], key[1], entry.index,
                                 entry.term if self.protocol == "raft" else 0, result)
            self._answer_writes(key, entry.index, entry.term, result)

    def _answer_writes(self, key: tuple, index: int, term: int, result: object) -> None:
        waiters = self._waiters.pop(key, None)
        if not waiters:
            return
        response = {"status": "committed", "index": index, "term": self.api_term(term),
                    "leader": self.replica.leader_id, "result": result}
        for w in waiters:
            self._resolve_write(w, response, registered=False)

    # ================================================================== snapshots

    def _restore_state_machines(self, reader: SnapshotReader) -> None:
        """At start (nothing to block yet): load ``self.sms`` and the sessions in place."""
        from .snapshots import restore_from_reader
        for name in restore_from_reader(reader, self.sms, self.sessions):
            log.warn("snapshot holds state machine {name}, not enabled here", name=name)

    def _restore_installed(self, meta: SnapshotMeta) -> defer.Deferred:
        """A received snapshot was persisted: build fresh state machines and a fresh session
        table from it on the snapshot thread, then swap them in here, on the reactor.  The
        Deferred fires with True once swapped, or False when the node had to die."""
        from .snapshots import restore_installed
        limits = self.config.limits
        try:
            fresh = {name: create_state_machine(
                name, **({"key_bytes_max": limits.key_bytes_max} if name == "kv" else {}))
                for name in self.sms}
        except Exception as exc:
            self._die(FatalNodeError(f"cannot create state machines to restore snapshot "
                                     f"{meta.index}: {exc}"))
            return defer.succeed(False)
        sessions = self.sessions.like()     # same bounds, or replicas would evict apart
        started = time.perf_counter()
        d = self.writer.in_snapshot_thread(restore_installed, self.storage, meta, fresh,
                                           sessions)

        def swap(result) -> bool:
            restored, skipped = result
            for name in skipped:
                log.warn("snapshot holds state machine {name}, not enabled here", name=name)
            self.sms.clear()
            self.sms.update(fresh)
            self.kv = self.sms["kv"]
            self.sessions = sessions
            self.applied_index, self.applied_term = restored.index, restored.term
            self.applied_config = restored.config
            self.policy.taken(restored.index)
            self.recent.clear()
            self._recent_bytes = 0
            self.stats["snapshots_installed"] += 1
            log.info("installed snapshot at index {index} (restored off the event loop in "
                     "{ms:.0f} ms)", index=restored.index,
                     ms=(time.perf_counter() - started) * 1000)
            self._release_reads()
            return True

        def failed(failure) -> bool:
            self._die(FatalNodeError(f"cannot restore the installed snapshot {meta.index}: "
                                     f"{failure.getErrorMessage()}"))
            return False
        d.addCallbacks(swap, failed)
        return d

    def install_received_snapshot(self, msg: InstallSnapshot, path: str) -> None:
        """The fetcher assembled a snapshot file: let the core decide on it."""
        if self._stopping or self.fatal is not None:
            return
        self.replica.step(InstallSnapshot(msg.frm, msg.to, msg.term, msg.index, msg.snap_term,
                                          msg.config, path.encode()))
        self.schedule_pump()

    def _start_snapshot(self) -> None:
        meta = SnapshotMeta(self.applied_index, self.applied_term, self.applied_config)
        current = self.storage.snapshot_meta
        if meta.index == 0 or (current is not None and meta.index <= current.index):
            self.policy.taken(meta.index)
            return
        producers = [(name, snapshot_producer(sm)) for name, sm in self.sms.items()]
        sessions = self.sessions.snapshot()
        self.policy.started()
        started = time.perf_counter()
        limits = self.config.limits

        def create(name):
            return create_state_machine(
                name, **({"key_bytes_max": limits.key_bytes_max} if name == "kv" else {}))
        d = self.writer.save_snapshot(
            meta, producers, sessions,
            verify=lambda states, table: verify_states(states, table, create,
                                                       self.sessions.like))
        compacted_to = []

        def saved(_file):
            # Compact only up to the previous snapshot (snapshot.keep >= 2), not this one:
            # the log keeps one snapshot interval of entries, so a follower a little behind
            # catches up by entries instead of a whole snapshot (keep = 1: up to this one).
            return self.writer.compaction_point(meta)

        def compact(point):
            if point is None:
                return 0                    # the first snapshot: nothing to compact yet
            compacted_to.append(point.index)
            try:
                self.replica.compact(point)
            except (ValueError, AssertionError) as exc:
                log.warn("core refused compaction to {index}: {error}", index=point.index,
                         error=exc)
            return self.writer.compact(point.index)

        def compacted(_deleted):
            self.policy.taken(meta.index)
            self.stats["snapshots_taken"] += 1
            log.info("snapshot at index {index} in {ms:.0f} ms; log compacted to {point}",
                     index=meta.index, ms=(time.perf_counter() - started) * 1000,
                     point=compacted_to[0] if compacted_to else "nothing yet")

        def failed(failure):
            self.policy.failed()
            log.error("snapshot at index {index} failed: {error}", index=meta.index,
                      error=failure.getErrorMessage())
        d.addCallback(saved)
        d.addCallback(compact)
        d.addCallbacks(compacted, failed)

    # ================================================================== peers

    def peer_messages(self, peer_id: int, messages: list) -> None:
        if self._stopping or self.fatal is not None:
            return
        step = self.replica.step
        try:
            for msg in messages:
                step(msg)
        except Exception as exc:
            self._crash(f"stepping {type(msg).__name__} from node {peer_id}", exc)

    def peer_frame(self, peer_id: int, kind: int, payload: list) -> None:
        if kind == F.FORWARD:
            self._on_forward(peer_id, payload)
        elif kind == F.SNAP_OFFER:
            self.fetcher.on_offer(peer_id, payload)
        elif kind == F.SNAP_WANT:
            self.shipper.on_want(peer_id, payload)
        elif kind == F.SNAP_CHUNK:
            self.fetcher.on_chunk(peer_id, payload)
        elif kind == F.SNAP_DONE:
            self.shipper.on_done(peer_id, payload)
        elif kind == F.REMOVED:
            self.membership.removed_frame(peer_id, payload)

    def peer_up(self, peer_id: int) -> None:
        self.membership.peer_up(peer_id)

    def peer_down(self, peer_id: int) -> None:
        self.shipper.peer_down(peer_id)

    def _on_forward(self, peer_id: int, payload: list) -> None:
        _, request_id, op, body = payload
        if type(request_id) is not int:
            raise ValueError("forward request id must be an integer")
        if op == "propose":
            if type(body) is not bytes:
                raise ValueError("a forwarded proposal carries command bytes")
            self.stats["proposals_forwarded"] += 1
            d = defer.maybeDeferred(self.submit_forwarded_write, body)
        elif op == "read":
            if not isinstance(body, dict) or not isinstance(body.get("query"), dict):
                raise ValueError("a forwarded read carries {query}")
            self.stats["reads_forwarded"] += 1
            d = self.submit_read(body["query"], "linearizable", forwarded=True)
        elif op == "member":
            if not isinstance(body, dict) or body.get("op") not in ("add", "remove", "transfer") \
                    or not isinstance(body.get("body"), dict):
                raise ValueError("a forwarded membership request carries {op, body}")
            d = self.membership.request(body["op"], body["body"], forwarded=True)
        else:
            raise ValueError(f"unknown forwarded operation {op!r:.20}")

        def reply(response):
            self.transport.reply_forward(peer_id, request_id, 200, response)

        def error(failure):
            if failure.check(ApiError):
                exc = failure.value
                self.transport.reply_forward(peer_id, request_id, exc.status, exc.body())
            else:
                log.failure("forwarded request failed", failure)
                self.transport.reply_forward(peer_id, request_id, 500,
                                             {"error": "internal", "message": "internal error"})
        d.addCallbacks(reply, error)

    # ================================================================== writes

    def next_client_sequence(self) -> tuple[str, int]:
        """A fresh (client_id, sequence) for a write whose client gave none."""
        self._sequence += 1
        generation, sequence = divmod(self._sequence, _SERVER_SESSION_WRITES)
        return f"{self._client_prefix}-{generation}", sequence

    def validate_command(self, command: dict, internal: bool = False) -> dict:
        """Check a command against its state machine (raises ``BadCommand``): its
        ``validate`` when it has one, else its ``ops`` when it lists them, else only that
        ``op`` is a string.  ``internal``: the command comes from a node (an authenticated
        peer), which may address internal state machines; a client's never may."""
        sm = self.sms.get(command.get("sm"))
        if sm is None or (not internal and is_internal(sm)):
            raise BadCommand(f"unknown state machine {command.get('sm')!r:.40}")
        fields = {k: v for k, v in command.items()
                  if k not in ("sm", "client_id", "sequence", "ts")}
        validate = getattr(sm, "validate", None)
        if validate is not None:
            out = validate(fields)
            if not isinstance(out, dict):
                raise BadCommand(f"state machine {sm.name!r} returned no command")
            return out
        op = fields.get("op")
        ops = getattr(sm, "ops", None)
        if ops is not None and op not in ops:
            raise BadCommand(f'unknown op {op!r:.40} for state machine {sm.name!r} '
                             f'(ops: {", ".join(ops)})')
        if ops is None and not isinstance(op, str):
            raise BadCommand('"op" must be a string')
        return fields

    def submit_write(self, client_id: str, sequence: int, data: bytes) -> defer.Deferred:
        """Replicate an encoded, validated command; fires with the committed response
        or fails with ``ApiError`` (503 never applied, 504 outcome unknown)."""
        return self._submit_write((client_id, sequence), data, forwarded=False)

    def submit_forwarded_write(self, data: bytes) -> defer.Deferred:
        command = decode_command(data)
        key = _command_key(command) if command is not None else None
        if key is None:
            raise ApiError(400, "bad_request", "forwarded command lacks client_id/sequence")
        try:
            self.validate_command(command, internal=True)
        except BadCommand as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        return self._submit_write(key, data, forwarded=True)

    def _submit_write(self, key: tuple, data: bytes, forwarded: bool) -> defer.Deferred:
        if self._stopping:
            return defer.fail(unavailable("the node is shutting down"))
        status, hit = self.sessions.lookup(*key)
        if status == DUPLICATE:
            self.stats["duplicates"] += 1
            index, term, result = hit
            term = term or self.replica.term
            return defer.succeed({"status": "committed", "index": index,
                                  "term": self.api_term(term), "leader": self.replica.leader_id,
                                  "result": result})
        w = _Write(key, data, forwarded)
        self._waiters.setdefault(key, []).append(w)
        w.deadline = self.reactor.callLater(self.request_timeout, self._write_timeout, w)
        self._route_write(w)
        return w.d

    def _route_write(self, w: _Write) -> None:
        w.retry = None
        if w.done:
            return
        replica = self.replica
        if replica.role == Role.LEADER:
            try:
                replica.propose((w.data,))
            except NotLeader:
                pass
            except Busy as exc:
                self._fail_write(w, unavailable(f"the leader is busy: {exc}", code="busy"))
                return
            else:
                w.submitted = True
                self.stats["proposals"] += 1
                self.schedule_pump()
                return
        if w.forwarded:
            self._fail_write(w, self._not_leader_error())
            return
        leader = replica.leader_id
        if leader is None or leader == self.node_id or not self.transport.connected(leader):
            self._retry_write(w)
            return
        w.submitted = True
        d = self.transport.forward(leader, "propose", w.data)
        d.addCallbacks(self._forward_write_done, self._forward_write_lost,
                       callbackArgs=(w,), errbackArgs=(w,))

    def _reroute_writes(self) -> None:
        """Leadership lost: writes we proposed may or may not commit.  Resubmit them through
        the new leader (the session table applies a (client_id, sequence) once, whichever
        copy commits first); writes forwarded to us go back to their node as not-leader."""
        for waiters in list(self._waiters.values()):
            for w in list(waiters):
                if w.done:
                    continue
                if w.forwarded:
                    self._fail_write(w, self._not_leader_error())
                else:
                    self._retry_write(w)

    def _forward_write_done(self, reply: tuple, w: _Write) -> None:
        if w.done:
            return
        status, body = reply
        if status == 200:
            self._resolve_write(w, body)
        elif status == 503:
            self._retry_write(w)
        elif status == 504:
            pass          # the leader gave up; our own apply or deadline will answer
        else:
            self._fail_write(w, ApiError.from_body(status, body))

    def _forward_write_lost(self, failure, w: _Write) -> None:
        if not w.done:
            self._retry_write(w)

    def _retry_write(self, w: _Write) -> None:
        if not w.done and w.retry is None:
            w.retry = self.reactor.callLater(self.retry_delay, self._route_write, w)

    def _write_timeout(self, w: _Write) -> None:
        w.deadline = None
        if w.done:
            return
        self.stats["write_timeouts"] += 1
        if w.submitted:
            self._fail_write(w, ApiError(
                504, "outcome_unknown", "no answer in time; the write may still commit: "
                "retry with the same client_id and sequence"))
        else:
            self._fail_write(w, unavailable("no leader reachable", leader=self.leader_id))

    def _unregister(self, w: _Write) -> None:
        waiters = self._waiters.get(w.key)
        if waiters is not None:
            try:
                waiters.remove(w)
            except ValueError:
                pass
            if not waiters:
                del self._waiters[w.key]

    def _finish(self, w) -> None:
        w.done = True
        if w.deadline is not None and w.deadline.active():
            w.deadline.cancel()
        if w.retry is not None and w.retry.active():
            w.retry.cancel()
        w.deadline = w.retry = None

    def _resolve_write(self, w: _Write, response: dict, registered: bool = True) -> None:
        if w.done:
            return
        self._finish(w)
        if registered:
            self._unregister(w)
        w.d.callback(response)

    def _fail_write(self, w: _Write, error: ApiError) -> None:
        if w.done:
            return
        self._finish(w)
        self._unregister(w)
        w.d.errback(error)

    def _not_leader_error(self) -> ApiError:
        return unavailable(f"node {self.node_id} is not the leader", code="not_leader",
                           leader=self.replica.leader_id)

    # ================================================================== reads

    def submit_read(self, query: dict, consistency: str, forwarded: bool = False) -> defer.Deferred:
        """Serve a query.  ``stale``: local state now.  ``lease``: the leader's lease read
        point if it holds, else like ``linearizable``: a ReadIndex round on the leader
        (followers forward), answered once applied >= the read point."""
        self.stats["reads"] += 1
        if consistency == "stale":
            self.stats["stale_reads"] += 1
            try:
                return defer.succeed(self._query(query, stale=True))
            except ApiError as exc:
                return defer.fail(exc)
        r = _Read(query, forwarded)
        if self._stopping:
            return defer.fail(unavailable("the node is shutting down"))
        if consistency == "lease" and self.replica.role == Role.LEADER:
            # The reactor may have run this request before the LoopingCall that would tick
            # away a pause (SIGSTOP, a stall): bring the core's clock up to date first, or
            # a lease that ran out during the pause would look valid.
            if self._catch_up_ticks():
                self.schedule_pump()
        if consistency == "lease" and self.replica.role == Role.LEADER:
            self.stats["lease_reads"] += 1
            point = self.replica.lease_read_index()
            if point is not None:
                self.stats["lease_reads_served"] += 1
                batch_id = self._new_batch_id()
                self._served_batches[batch_id] = [r]
                heapq.heappush(self._waiting_reads, (point, batch_id))
                r.deadline = self.reactor.callLater(self.request_timeout, self._read_timeout, r)
                self._release_reads()
                return r.d
        r.deadline = self.reactor.callLater(self.request_timeout, self._read_timeout, r)
        self._route_read(r)
        return r.d

    def _new_batch_id(self) -> int:
        self._next_read_batch += 1
        return self._next_read_batch

    def _route_read(self, r: _Read) -> None:
        r.retry = None
        if r.done:
            return
        if self.replica.role == Role.LEADER:
            self._read_batch.append(r)
            self.schedule_pump()
            return
        if r.forwarded:
            self._fail_read(r, self._not_leader_error())
            return
        leader = self.replica.leader_id
        if leader is None or leader == self.node_id or not self.transport.connected(leader):
            self._retry_read(r)
            return
        d = self.transport.forward(leader, "read", {"query": r.query})
        d.addCallbacks(self._forward_read_done, self._forward_read_lost,
                       callbackArgs=(r,), errbackArgs=(r,))

    def _forward_read_done(self, reply: tuple, r: _Read) -> None:
        if r.done:
            return
        status, body = reply
        if status == 200:
            self._finish(r)
            r.d.callback(body)
        elif status == 503 or status == 504:
            self._retry_read(r)
        else:
            self._fail_read(r, ApiError.from_body(status, body))

    def _forward_read_lost(self, failure, r: _Read) -> None:
        self._retry_read(r)

    def _retry_read(self, r: _Read) -> None:
        if not r.done and r.retry is None:
            r.retry = self.reactor.callLater(self.retry_delay, self._route_read, r)

    def _read_timeout(self, r: _Read) -> None:
        r.deadline = None
        self._fail_read(r, unavailable("no leader confirmed the read in time",
                                       leader=self.leader_id))

    def _fail_read(self, r: _Read, error: ApiError) -> None:
        if r.done:
            return
        self._finish(r)
        r.d.errback(error)

    def _issue_read_batch(self) -> None:
        batch, self._read_batch = self._read_batch, []
        batch = [r for r in batch if not r.done]
        if not batch:
            return
        batch_id = self._new_batch_id()
        try:
            self.replica.read_index(batch_id)
        except NotLeader:
            for r in batch:
                self._retry_read(r)
            return
        except Busy as exc:
            for r in batch:
                self._fail_read(r, unavailable(f"the leader is busy: {exc}", code="busy"))
            return
        self._read_batches[batch_id] = batch

    def _requeue_issued_reads(self) -> None:
        """Lost leadership: read points not yet confirmed will never be; route again."""
        batches, self._read_batches = self._read_batches, {}
        pending, self._read_batch = self._read_batch, []
        for batch in list(batches.values()) + [pending]:
            for r in batch:
                self._retry_read(r)

    def _release_reads(self) -> None:
        heap = self._waiting_reads
        applied = self.applied_index
        while heap and heap[0][0] <= applied:
            _, batch_id = heapq.heappop(heap)
            batch = self._served_batches.pop(batch_id, None)
            if batch:
                self._serve_reads(batch)

    def _serve_reads(self, batch: list) -> None:
        for r in batch:
            if r.done:
                continue
            self._finish(r)
            try:
                response = self._query(r.query, stale=False)
            except ApiError as exc:
                r.d.errback(exc)
                continue
            r.d.callback(response)

    def _query(self, query: dict, stale: bool) -> dict:
        """Answer a read from local state.  ``{"sm": name, "request": {...}}`` reads any
        state machine (-> ``{"result", "index", "term"}``); anything else is a kv query."""
        base = {"index": self.applied_index, "term": self.replica.term}
        if stale:
            base["stale"] = True
            base["node"] = self.node_id
            base["applied_index"] = self.applied_index
            base["commit_index"] = self.replica.commit_index
            base["leader"] = self.replica.leader_id
            base["ms_since_leader"] = self.ms_since_leader()
        if "sm" in query:
            sm = self.sms.get(query.get("sm"))
            if sm is None:
                raise ApiError(404, "not_found", f"no state machine named {query['sm']!r:.64}")
            try:
                result = sm.query(query.get("request"))
            except BadCommand as exc:
                raise ApiError(400, "bad_request", str(exc)) from None
            except Exception as exc:
                log.failure("state machine {sm} failed on a query", sm=sm.name)
                raise ApiError(500, "query_failed", f"state machine {sm.name!r} failed: "
                               f"{type(exc).__name__}: {exc}"[:500]) from None
            base["result"] = result
            return base
        try:
            found = self.kv.query(query)
        except BadCommand as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        if "prefix" in query:
            found.update(base)
            return found
        if found is None:
            raise ApiError(404, "not_found", f"key {query.get('key')!r} not found", extra=base)
        found.update(base)
        return found

    def ms_since_leader(self) -> int:
        """0 on the leader; else how long ago this node last heard from a leader (ms)."""
        if self.replica.role == Role.LEADER:
            return 0
        return int(self.replica.status().ticks_since_leader * self.tick_ms)

    # ================================================================== introspection

    def api_term(self, term: int) -> int:
        """Terms as clients see them: the Raft term, or the round of a Paxos ballot."""
        return Ballot.unpack(term).round if self.protocol == "multipaxos" else term

    def status(self, hashes: bool = False) -> dict:
        """This node's view of the cluster (GET /api/v1/cluster/status).  ``hashes``: add
        ``state_hashes`` {state machine: hex digest of its snapshot} (costs one snapshot
        encoding per state machine, on the reactor), to compare replicas at the same
        ``applied_index``."""
        replica = self.replica
        core = replica.status()
        config = replica.config
        tick_ms = self.tick_ms
        leader = replica.leader_id
        progress = core.progress
        nodes = []
        book = self.membership.book
        for nid in sorted(set(book) - self.membership.removed_ids | config.members):
            node = book.get(nid)
            entry = {"id": nid, "api": str(node.api) if node and node.api else None,
                     "peer": str(node.peer) if node else None}
            if nid == self.node_id:
                entry.update(role=replica.role, last_heartbeat=0,
                             match_index=core.last_index, reachable=True,
                             applied_index=self.applied_index)
                if replica.role != Role.LEADER:
                    entry["last_heartbeat"] = core.ticks_since_leader * tick_ms
            else:
                role = ("leader" if nid == leader else "learner" if nid in config.learners
                        else "follower" if nid in config.all_voters else "none")
                entry.update(role=role, reachable=self.transport.connected(nid),
                             last_heartbeat=None, match_index=None)
                if nid in progress:
                    entry["match_index"] = progress[nid].match
                    entry["last_heartbeat"] = progress[nid].last_heard_ticks * tick_ms
            nodes.append(entry)
        out = {
            "node_id": self.node_id, "pid": os.getpid(), "cluster": self.config.name,
            "leader": leader,
            "term": replica.term,
            "role": replica.role, "cluster_size": len(config.voters),
            "protocol": self.protocol, "commit_index": replica.commit_index,
            "applied_index": self.applied_index, "last_index": core.last_index,
            "first_index": core.first_index, "config": config.describe(),
            "snapshot_index": self.storage.snapshot_meta.index if self.storage.snapshot_meta
            else 0, "holes": list(core.holes), "tick_ms": tick_ms,
            "uptime_s": round(time.time() - self.started_at, 3), "nodes": nodes,
            "state_machines": sorted(self.sms), "removed": self.membership.removed,
        }
        if hashes:
            from statemachines.base import state_hash
            out["state_hashes"] = {name: state_hash(sm) for name, sm in sorted(self.sms.items())}
            # The session table is replicated state too ("~" cannot start an SM name).
            out["state_hashes"]["~sessions"] = hashlib.blake2b(
                cbor2.dumps(self.sessions.snapshot()), digest_size=16).hexdigest()
        return out

    def entries(self, start: int, end: int) -> dict:
        """Log entries start..end (inclusive) as far as this node still holds them."""
        out = []
        recent = self.recent
        first_kept = recent[0][0] if recent else self.applied_index + 1
        multipaxos = self.protocol == "multipaxos"
        if recent and start <= self.applied_index:
            lo = max(start, first_kept)
            offset = lo - first_kept
            for i in range(offset, len(recent)):
                index, term, kind, payload, stamp, _ = recent[i]
                if index > end:
                    break
                item = {"index": index, "term": self.api_term(term),
                        "kind": _KIND_NAMES.get(kind, str(kind)),
                        "command": _render_payload(kind, payload), "timestamp": round(stamp, 6),
                        "state": "applied"}
                if multipaxos and kind == ENTRY_NOOP:
                    item["hole"] = True          # a slot a new leader filled with a no-op
                out.append(item)
        core = self.replica.status()
        last = core.last_index or self.applied_index
        holes = set(core.holes)
        commit = self.replica.commit_index
        for index in range(max(start, self.applied_index + 1), min(end, last) + 1):
            if len(out) >= self.config.limits.log_entries_max:
                break
            item = {"index": index, "state": "committed" if index <= commit else "pending"}
            if multipaxos and index in holes:
                item["state"] = "hole"
                item["hole"] = True
            out.append(item)
        return {"entries": out, "first_index": first_kept, "applied_index": self.applied_index,
                "commit_index": commit, "last_index": last,
                "compacted_below": first_kept if start < first_kept else None}


def _command_key(command: dict) -> tuple | None:
    client_id = command.get("client_id")
    sequence = command.get("sequence")
    if type(client_id) is str and type(sequence) is int:
        return (client_id, sequence)
    return None


def _render_payload(kind: int, payload: tuple) -> object:
    if kind == ENTRY_NOOP:
        return None
    if kind == ENTRY_CONFIG:
        try:
            from paxoslog.core.log import Entry
            config = entry_config(Entry(0, 0, ENTRY_CONFIG, payload))
            return {"voters": sorted(config.voters), "outgoing": sorted(config.outgoing),
                    "learners": sorted(config.learners)}
        except Exception:
            return {"undecodable": True}
    out = []
    for data in payload:
        command = decode_command(data)
        out.append(command if command is not None else {"undecodable": data.hex()[:64]})
    return out
