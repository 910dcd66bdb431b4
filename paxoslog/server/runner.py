"""``DriverRunner``: where the node driver's instructions meet I/O.

Every event of the shell (a tick, a peer frame, a client request, a finished fsync, a
restored snapshot) goes through one method here, which hands it to the sans-I/O driver
(paxoslog/node/driver.py) and carries out the instructions it returns, in order:
persist on the writer thread, send through the peer transport, answer the client's
request, forward to the leader, offer a snapshot to the shipper, take or restore
snapshots off the event loop.  Nothing here decides anything about consensus, requests or
state machines; that is the driver's job, and the simulator drives the very same driver.

The runner's collaborators are narrow: a ``writer`` (StorageWriter), a ``transport`` (send,
flush, forward, reply_forward), a ``shipper`` (offer), ``snapshots`` (take and restore),
and listeners for applied entries, role changes, configuration and membership rows.

Any exception inside the driver leaves it in an unknown state: the node stops
(crash-only; a restart recovers from the data directory).  So does a storage failure.
"""

from __future__ import annotations

import time
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from paxoslog.core.ready import ConfigChanged, Role
from paxoslog.node.instructions import (Applied, CompactLog, ConfigApplied, Forward,
                                        OfferSnapshot, Persist, Reply, RestoreSnapshot,
                                        RoleChange, RowApplied, Send, TakeSnapshot)

from .errors import ApiError
from .metrics import Histogram
from .narrate import TOLD, narrate

__all__ = ["DriverRunner", "FatalNodeError", "ForwardedHandle", "ClientRequest"]

log = Logger(namespace="paxoslog.node")


class FatalNodeError(Exception):
    """The node cannot go on (storage failure, broken apply order); it stops."""


class ForwardedHandle:
    """Where the answer to a request another node forwarded to us goes."""

    __slots__ = ("peer", "request_id")

    def __init__(self, peer: int, request_id: int) -> None:
        self.peer = peer
        self.request_id = request_id


_PENDING = object()
_DELIVERED = object()     # the answer went to its consumer (nothing is kept)


class ClientRequest:
    """A client's request inside the driver, and its answer: a body, or an ``ApiError``.

    It carries when it was submitted, whether it is a write (the latency histograms) and
    ``done``, told ``done(failed)`` just before the answer is delivered (the server's
    session bookkeeping).  The answer goes to one consumer: a plain function given to
    ``then`` (the HTTP API's path: a Deferred and its callbacks cost about 2 us per
    request on this machine, 5 % of a linearizable read), or else ``deferred``, a Deferred
    that fires with the body or fails with the ``ApiError`` (everyone else).  An answer
    that comes before its consumer (a stale read is answered inside its submission) is
    kept until then."""

    __slots__ = ("started", "write", "done", "_result", "_then", "_deferred")

    def __init__(self, write: bool, done: Callable[[bool], None] | None = None) -> None:
        self.started = time.perf_counter()
        self.write = write
        self.done = done
        self._result = _PENDING
        self._then: Callable[[object], None] | None = None
        self._deferred: defer.Deferred | None = None

    @classmethod
    def refused(cls, error: ApiError) -> "ClientRequest":
        """A request answered ``error`` before it reached the driver."""
        request = cls(False)
        request._result = error
        return request

    def then(self, consumer: Callable[[object], None]) -> None:
        """``consumer(body or ApiError)``, once; at once when already answered."""
        assert self._then is None and self._deferred is None, "one consumer only"
        if self._result is _PENDING:
            self._then = consumer
            return
        result = self._result
        self._then = self._result = _DELIVERED
        consumer(result)

    @property
    def deferred(self) -> defer.Deferred:
        """The answer as a Deferred (instead of ``then``)."""
        if self._deferred is None:
            assert self._then is None, "one consumer only"
            self._deferred = defer.Deferred()
            if self._result is not _PENDING:
                self._fire(self._deferred, self._result)
        return self._deferred

    def answer(self, result) -> None:
        """Deliver the answer (the runner, once; ``done`` was called just before).
        Delivered to ``then``'s consumer, the request lets go of the consumer, the answer
        and ``done``: whoever still holds the request (the driver's timers held every
        request until their deadlines, docs/design-notes.md "Answered requests keep
        nothing alive") keeps nothing else alive with it."""
        assert self._result is _PENDING, "answered twice"
        self.done = None
        consumer = self._then
        if consumer is not None:
            self._then = self._result = _DELIVERED
            consumer(result)
            return
        self._result = result
        if self._deferred is not None:
            self._fire(self._deferred, result)

    @staticmethod
    def _fire(d: defer.Deferred, result) -> None:
        if isinstance(result, ApiError):
            d.errback(result)
        else:
            d.callback(result)


class DriverRunner:
    def __init__(self, driver, reactor, *, writer, transport, shipper, snapshots,
                 on_applied: Callable, on_role: Callable, on_config: Callable,
                 on_row: Callable, on_installed: Callable,
                 on_fatal: Callable[[BaseException], None], health=None) -> None:
        """``health``: told of slow fsyncs and applies and of snapshot outcomes (a
        ``watch.Watch``; None: nobody)."""
        self.driver = driver
        self.reactor = reactor
        self.writer = writer
        self.transport = transport
        self.shipper = shipper
        self.snapshots = snapshots
        self.on_applied = on_applied
        self.on_role = on_role
        self.on_config = on_config
        self.on_row = on_row
        self.on_installed = on_installed      # (snapshot meta, the configuration before)
        self.on_fatal = on_fatal
        self.fsync = Histogram()
        # Client requests as this node answered them (any outcome), from submission to
        # answer: the dashboard's latency charts.
        self.write_latency = Histogram()
        self.read_latency = Histogram()
        # Client writes submitted here that committed (their latency) or failed (503/504,
        # refused): paxoslog_commit_duration_seconds, paxoslog_proposals_failed_total.
        self.commit_latency = Histogram()
        self.writes_failed = 0
        self.leader_changes = 0
        # Event-loop steps of the driver that applied committed entries (the apply time).
        self.apply_seconds = Histogram()
        self.health = health
        self.fatal: BaseException | None = None
        self.leader_since: float | None = None
        self._persisting = 0
        self._persisted_inline: tuple | None = None   # (seconds, ready), see _persist
        self._executing = 0                           # execute() calls under way
        self._idle_waiters: list[defer.Deferred] = []
        self.closed = False          # after close(): no event runs (the WAL is closing)
        self._pump_due = False        # a pump is queued for this turn's end
        # The serving reactor queues it without a timer (reactor.py); others (tests' and
        # the ones Twisted picks elsewhere) take callLater(0), which runs it at the same point.
        at_turn_end = getattr(reactor, "call_at_turn_end", None)
        self._at_turn_end = at_turn_end if at_turn_end is not None else \
            (lambda f: reactor.callLater(0, f))

    # ================================================================== events

    def tick(self, count: int) -> None:
        self._event("tick", self.driver.tick, count)

    def receive(self, peer: int, messages: list) -> None:
        for msg in messages:
            if type(msg) in TOLD:
                text = narrate(msg)
                if text is not None:
                    log.debug("{text}", text=text)
        self._event(f"messages from node {peer}", self.driver.receive, messages, pump=False)
        self._pump_now()

    def peer_up(self, peer: int) -> None:
        self._event("peer up", self.driver.peer_up, peer)

    def peer_down(self, peer: int) -> None:
        self._event("peer down", self.driver.peer_down, peer)

    def write(self, key: tuple[str, int], data: bytes,
              done: Callable[[bool], None] | None = None) -> ClientRequest:
        """Answered with the committed body, or an ``ApiError`` (503/504/...);
        ``done(failed)`` is called just before."""
        request = ClientRequest(True, done)
        self._event("a write", self.driver.submit_write, request, key, data)
        return request

    def read(self, query: dict, consistency: str) -> ClientRequest:
        request = ClientRequest(False)
        self._event("a read", self.driver.submit_read, request, query, consistency)
        return request

    def _answer(self, request: ClientRequest, result) -> None:
        """Answer a client's request with ``result``: a body, or an ``ApiError``."""
        seconds = time.perf_counter() - request.started
        failed = isinstance(result, ApiError)
        if request.write:
            self.write_latency.observe(seconds)
            if failed:
                self.writes_failed += 1
            else:
                self.commit_latency.observe(seconds)
        else:
            self.read_latency.observe(seconds)
        if request.done is not None:
            try:
                request.done(failed)
            except Exception:     # bookkeeping must not cost the answer or the Ready
                log.failure("a client request's bookkeeping failed")
        try:
            request.answer(result)
        except Exception:         # a consumer's bug must not cost the rest of the Ready
            log.failure("answering a client request failed")

    def forwarded_write(self, peer: int, request_id: int, data: bytes) -> None:
        self._event("a forwarded write", self.driver.submit_forwarded_write,
                    ForwardedHandle(peer, request_id), data)

    def forwarded_read(self, peer: int, request_id: int, query: dict) -> None:
        self._event("a forwarded read", self.driver.submit_read,
                    ForwardedHandle(peer, request_id), query, "linearizable", True)

    def install_snapshot(self, message, path: str) -> None:
        """The fetcher assembled the snapshot file ``message`` offered."""
        if self.fatal is None:
            self._event("a received snapshot", self.driver.install_snapshot, message,
                        path.encode())

    def change_config(self, voters, learners) -> None:
        """Raises the core's errors (NotLeader, Busy, ConfigChangeInProgress, ValueError)."""
        self.execute(self.driver.change_config(voters, learners))
        self.schedule_pump()

    def transfer_leadership(self, target: int) -> None:
        """Raises the core's errors (NotLeader, Busy, ValueError)."""
        self.execute(self.driver.transfer_leadership(target))
        self.schedule_pump()

    def stop(self) -> None:
        self._event("stopping", self.driver.stop)

    def idle(self) -> defer.Deferred:
        """Fires once no Ready is being persisted and no Ready loop is due: what the last
        events left to persist has been persisted (a node stopping closes its WAL then;
        a Ready loop left for the turn's end once persisted on the closed WAL and made
        a clean stop fatal)."""
        d = defer.Deferred()
        self._idle_waiters.append(d)
        self._wake_idle()
        return d

    def close(self) -> None:
        """Once idle() fired on a stopping node: later events (a snapshot job coming back
        from its thread) run nothing, so nothing is persisted on the closing WAL."""
        self.closed = True
        self._pump_due = False

    def schedule_pump(self) -> None:
        """Run the driver's Ready loop once this reactor turn is over: every event of the
        turn lands in the core first, and they share one Ready (and one fsync)."""
        if not self._pump_due and self.fatal is None:
            self._pump_due = True
            self._at_turn_end(self._pump_if_due)

    def _pump_now(self) -> None:
        """Run the Ready loop at once, in place of the one scheduled for the turn's end.
        After peer messages: the acknowledgement that completes a quorum commits, applies
        and answers its clients before the turn's other events (the client requests read
        in the same turn still join the next Ready, or the one after the fsync in
        flight), and a follower starts persisting an append at once.  One client's write
        waited about 45 us less (the second follower's acknowledgement, read in the same
        turn, no longer runs first), and 64 clients' writes ran 7-15 % faster
        (docs/design-notes.md, "The Ready loop runs at once after peer messages")."""
        self._pump_due = False        # the queued call finds nothing to do
        self._pump()

    def _pump_if_due(self) -> None:
        if self._pump_due:
            self._pump_due = False
            self._pump()

    def _pump(self) -> None:
        self._event("the Ready loop", self.driver.pump, pump=False)

    def _event(self, what: str, method, *args, pump: bool = True) -> None:
        if self.fatal is not None or self.closed:
            for arg in args:
                if type(arg) is ClientRequest:
                    self._answer(arg, ApiError(503, "unavailable", "the node has stopped",
                                               retry_after=1))
            return
        started = time.perf_counter()
        try:
            instructions = method(*args)
        except Exception as exc:
            log.failure("unexpected error in {what}", what=what)
            self.die(FatalNodeError(f"unexpected error in {what}: {exc!r}"))
            return
        if instructions:       # most client requests' events give none (the pump answers)
            applied = sum(1 for op in instructions if type(op) is Applied)
            if applied:
                seconds = time.perf_counter() - started
                self.apply_seconds.observe(seconds)
                if self.health is not None:
                    self.health.applied(seconds, applied)
            self.execute(instructions)
        if pump:
            self.schedule_pump()

    def die(self, exc: BaseException) -> None:
        """A fatal error: stop serving; the CLI exits non-zero."""
        if self.fatal is not None:
            return
        self.fatal = exc
        self._pump_due = False
        log.critical("fatal: {error}; stopping the node", error=exc)
        self.on_fatal(exc)

    # ================================================================== instructions

    def execute(self, instructions: list) -> None:
        # Answering a client can run another event at once (an HTTP connection whose full
        # pipeline frees a slot parses its next request): that nested list must not report
        # this list's inline persist before the rest of this list is carried out.
        self._executing += 1
        try:
            self._execute(instructions)
        finally:
            self._executing -= 1
        if self._executing == 0:
            done, self._persisted_inline = self._persisted_inline, None
            if done is not None:
                self._persisted(*done)

    def _execute(self, instructions: list) -> None:
        transport = self.transport
        for op in instructions:
            kind = type(op)
            if kind is Reply:
                self._reply(op)
            elif kind is Send:
                for msg in op.messages:
                    transport.send(msg)
                transport.flush()
            elif kind is Persist:
                self._persist(op)
            elif kind is Forward:
                d = transport.forward(op.peer, op.op, op.payload)
                d.addCallbacks(self._forward_answered, self._forward_failed,
                               callbackArgs=(op.request,), errbackArgs=(op.request,))
            elif kind is Applied:
                self.on_applied(op)
            elif kind is OfferSnapshot:
                self.shipper.offer(op.message)
            elif kind is RoleChange:
                self._role_changed(op)
            elif kind is ConfigApplied:
                self.on_config(op)
            elif kind is RowApplied:
                self.on_row(op.row)
            elif kind is TakeSnapshot:
                self._take_snapshot(op)
            elif kind is RestoreSnapshot:
                self._restore_snapshot(op)
            elif kind is CompactLog:
                self.writer.compact(op.index).addErrback(self._storage_failed, "compacting")
            elif kind is ConfigChanged:
                log.info("configuration {config} at index {index}",
                         config=op.config.describe(), index=op.index)
            else:
                raise AssertionError(f"unknown instruction {op!r:.200}")

    def _reply(self, op: Reply) -> None:
        handle = op.handle
        if type(handle) is ForwardedHandle:
            self.transport.reply_forward(handle.peer, handle.request_id, op.status, op.body)
        else:
            self._answer(handle, op.body if op.status == 200
                         else ApiError.from_body(op.status, op.body))

    def _forward_answered(self, reply: tuple, request) -> None:
        status, body = reply
        self._event("a forwarded answer", self.driver.forward_answered, request, status, body)

    def _forward_failed(self, failure, request) -> None:
        self._event("a lost forward", self.driver.forward_failed, request)

    def _role_changed(self, op: RoleChange) -> None:
        if op.role in (Role.PRE_CANDIDATE, Role.CANDIDATE) and op.old_role != op.role:
            core = self.driver.replica.status()
            log.debug("election: {role} in term {term}: heard no leader for {ticks} ticks "
                      "(election timeout); asking voters {voters} for {what}",
                      role=op.role, term=op.term, ticks=core.ticks_since_leader,
                      voters=sorted(self.driver.replica.config.all_voters),
                      what="a pre-vote (would they vote?)" if op.role == Role.PRE_CANDIDATE
                      else "their votes (promises)")
        elif op.old_role in (Role.PRE_CANDIDATE, Role.CANDIDATE) and op.role == Role.FOLLOWER:
            log.debug("election: back to follower in term {term} (leader {leader}): a "
                      "leader or a higher term was seen, or the pre-vote found the leader "
                      "alive", term=op.term, leader=op.leader)
        if op.leader != op.old_leader and op.leader is not None:
            self.leader_changes += 1
        if op.role == Role.LEADER and op.old_role != Role.LEADER:
            self.leader_since = time.time()
            log.info("became leader (term {term})", term=op.term)
        elif op.role != Role.LEADER and op.old_role == Role.LEADER:
            log.info("no longer leader (term {term}, leader now {leader})",
                     term=op.term, leader=op.leader)
        elif op.leader != op.old_leader and op.leader is not None:
            log.info("following node {leader} (term {term})", leader=op.leader,
                     term=op.term)
        self.on_role(op)

    # ---- persistence

    def _persist(self, op: Persist) -> None:
        ready = op.ready
        if not op.sync:
            self.writer.append_unsynced(ready).addErrback(self._storage_failed, "appending")
            return
        if self.writer.persists_inline(ready):
            # Durable when this returns; the driver hears of it once the rest of this
            # instruction list has been carried out, as if it came back from the thread.
            if self._persisted_inline is not None:      # the driver persists one at a time
                self.die(FatalNodeError("two Readies to persist in one instruction list"))
                return
            self._persisting += 1
            try:
                seconds = self.writer.persist_now(ready)
            except Exception:
                self._persist_failed(Failure())
                return
            self._persisted_inline = (seconds, ready)
            return
        self._persisting += 1
        snapshot_file = None
        if ready.snapshot is not None and ready.snapshot_data:
            snapshot_file = ready.snapshot_data.decode()
        d = self.writer.persist(ready, snapshot_file)
        d.addCallbacks(self._persisted, self._persist_failed, callbackArgs=(ready,))

    def _persisted(self, seconds: float, ready) -> None:
        self.fsync.observe(seconds)
        if self.health is not None:
            self.health.fsynced(seconds)
        self._persisting -= 1
        self._event("completing a Ready", self.driver.persisted, ready)
        self._wake_idle()

    def _persist_failed(self, failure) -> None:
        self._persisting -= 1
        self._wake_idle()
        self.die(FatalNodeError(f"persisting failed: {failure.getErrorMessage()}"))

    def _storage_failed(self, failure, what: str) -> None:
        self.die(FatalNodeError(f"{what} failed: {failure.getErrorMessage()}"))

    def _wake_idle(self) -> None:
        if self._persisting or not self._idle_waiters:
            return
        if self._pump_due:
            self._pump_now()                # may start persisting the next Ready
            if self._persisting:
                return
        if self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    # ---- snapshots

    def _take_snapshot(self, op: TakeSnapshot) -> None:
        d = self.snapshots.take(op.meta, op.producers, op.sessions)

        def saved(point) -> None:
            if self.health is not None:
                self.health.snapshot_saved(op.meta.index)
            self._event("a saved snapshot", self.driver.snapshot_saved, op.meta, point)

        def failed(failure) -> None:
            if self.health is not None:
                self.health.snapshot_failed(op.meta.index, failure.getErrorMessage())
            else:
                log.error("snapshot at index {index} failed: {error}", index=op.meta.index,
                          error=failure.getErrorMessage())
            self._event("a failed snapshot", self.driver.snapshot_failed)
        d.addCallbacks(saved, failed)

    def _restore_snapshot(self, op: RestoreSnapshot) -> None:
        fresh = self.driver.machines.fresh()
        d = self.snapshots.restore(op.meta, fresh)

        def restored(meta) -> None:
            old = self.driver.applied_config
            self._event("installing a snapshot", self.driver.snapshot_restored, meta, fresh)
            if self.fatal is None:
                self.on_installed(meta, old)

        def failed(failure) -> None:
            self.die(FatalNodeError(f"cannot restore the installed snapshot {op.meta.index}: "
                                    f"{failure.getErrorMessage()}"))
        d.addCallbacks(restored, failed)
