"""``SimNode``: one simulated node, the production node driver in a virtual-time shell.

The driver (paxoslog/node/driver.py) is the one the server runs: the same Ready loop,
group commit, apply order, session table (server-grade exactly-once), command codec, kv
state machine, request routing with forwarding, ReadIndex and lease reads, 503/504
outcomes.  This module only carries out its instructions on virtual resources:

* ``Persist``: the records go to a ``MemoryStorage`` (the real WAL and snapshot encoding)
  at once, become durable when the simulated fsync completes after a random delay; a crash
  in between loses them (or keeps a random prefix, with a torn record when storage faults
  are on);
* ``Send``/``Forward``/``Reply`` to another node: through the simulated network (delay,
  loss, duplication, partitions); a forward to a dead node fails at once (connection
  refused), one to a node that dies later fails when it dies (connection reset);
* ``OfferSnapshot``: the leader's kept snapshot file (bytes) travels to the follower, which
  hands it to its driver like the server's fetcher does;
* ``RestoreSnapshot``/``TakeSnapshot``: done after a random delay (the server does them on
  a thread), with the same restore code;
* ticks come from the node's own clock (its rate may drift), through the same
  ``TickClock`` the server's ticker uses: a node resumed after a pause catches up.

Client requests arrive as ``submit_write``/``submit_read`` events with the workload's
request as the handle; a paused node holds them (a stopped process does not read its
socket) and a crashed one refuses them.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ..core.log import SnapshotMeta
from ..core.messages import InstallSnapshot
from ..core.ready import Role
from ..core.replica import create_replica
from ..node.driver import DriverOptions, NodeDriver
from .coordination import CoordAttempt
from ..node.instructions import (DUPLICATE, EXECUTED, Applied, CompactLog, ConfigApplied,
                                 Forward, OfferSnapshot, Persist, Reply, RestoreSnapshot,
                                 RoleChange, RowApplied, Send, STALE, TakeSnapshot)
from ..node.removal import RemovalWitnesses
from ..node.stamps import node_command_clock
from .profiles import WALL_EPOCH_MS
from ..node.ticks import TickClock
from ..storage import CorruptLog, MemoryStorage, SnapshotReader, StorageIOError

if TYPE_CHECKING:
    from .cluster import Simulation

__all__ = ["SimNode", "ForwardHandle", "TICK_MS"]

TICK_MS = 10.0
_UNLIMITED = 1 << 60


class ForwardHandle:
    """A request another node forwarded to this one: where its answer goes."""

    __slots__ = ("origin", "incarnation", "request")

    def __init__(self, origin: int, incarnation: int, request: Any) -> None:
        self.origin = origin
        self.incarnation = incarnation
        self.request = request


class SimNode:
    """One node: the production driver, a simulated disk, clock and links."""

    def __init__(self, sim: "Simulation", node_id: int, bootstrap) -> None:
        self.sim = sim
        self.node_id = node_id
        self.bootstrap = bootstrap
        o = sim.options
        self.disk = MemoryStorage(node_id)
        self.disk_rng = random.Random(sim.rng.random())
        self.alive = True
        self.corrupt: str | None = None      # why the node refuses to start
        self.removed = False                 # removed from the cluster: it exited for good
        self.witnesses = RemovalWitnesses()  # members that told it so (kept across restarts,
                                             # as the server's members tell it on each connection)
        self.paused = False
        self.incarnation = 0
        self.held: list = []                 # messages and requests that arrived while paused
        rates = o.clock_rates
        self.base_clock_rate = rates[node_id - 1] if node_id <= len(rates) else 1.0
        self.clock_rate = self.base_clock_rate
        self.local_ms = 0.0                  # this node's monotonic clock
        self.inbound: dict[int, ForwardHandle] = {}   # forwarded requests being served here
        self.clients: dict[int, Any] = {}    # workload requests submitted here, by id
        self.boot()

    # ================================================================== lifecycle

    def boot(self) -> None:
        sim = self.sim
        o = sim.options
        self.incarnation += 1
        try:
            restored, reader = self.disk.load(reapply=True)
        except CorruptLog as exc:
            # Refuse to take part with a damaged log (never vote with it): stay down.
            self.corrupt = str(exc)
            self.alive = False
            sim.stats["corruption_detected"] += 1
            sim.trace.append(f"{sim.now:9.1f} node {self.node_id} refuses to start: {exc}")
            return
        newest = self.disk.snapshot_meta
        if newest is not None and restored.snapshot is not None and \
                restored.snapshot.index < newest.index:
            sim.stats["restarts_reapplying"] += 1
        machines = sim.new_machines()
        if reader is not None:
            machines.restore_from(reader)
        build = create_replica
        if o.own_ack_before_fsync:
            from .broken import create_broken_replica as build  # the negative control
        replica = build(o.protocol, self.node_id, self.bootstrap, sim.replica_options,
                        random.Random(sim.rng.random()), restored)
        self.driver = NodeDriver(
            DriverOptions(self.node_id, o.protocol, TICK_MS,
                          request_timeout_ticks=max(1, int(o.client_timeout_ms / TICK_MS)),
                          snapshot_entries=o.snapshot_every or _UNLIMITED,
                          snapshot_bytes=_UNLIMITED, election_ticks=o.election_ticks),
            replica, machines, restored.snapshot, self.bootstrap,
            newest_snapshot=self.disk.snapshot_meta)
        self.driver.restored_hard_state(restored.hard_state)
        offsets = o.wall_offsets_ms
        offset = offsets[self.node_id - 1] if self.node_id <= len(offsets) else 0.0
        epoch = WALL_EPOCH_MS if offsets else 0.0

        def wall_ms() -> int:
            return int(sim.now + (offset if sim.now >= o.wall_step_at_ms else epoch))
        # The ts of the commands this node encodes, as the server stamps them (a new
        # CommandClock at each boot, as a restarted process has).
        self.stamp_ms = wall_ms if o.raw_wall_stamps else \
            node_command_clock(self.driver, wall_ms, lambda: int(self.local_ms))
        self.clock = TickClock(TICK_MS, self.local_ms, o.election_ticks)
        self.persisting = False
        self.inbound.clear()
        self.clients.clear()
        for other in sim.nodes.values() if hasattr(sim, "nodes") else ():
            if other is not self and other.alive:
                self.execute(self.driver.peer_up(other.node_id))
                other.execute(other.driver.peer_up(self.node_id))

    @property
    def replica(self):
        return self.driver.replica

    @property
    def applied(self) -> int:
        return self.driver.applied_index

    @property
    def config(self):
        return self.driver.applied_config

    def crash(self) -> None:
        """Power loss: whatever was not synced may be lost; requests here get no answer
        (their clients see a reset connection).  No connection to a peer is reset (no
        kernel is left to reset them): its peers notice by their timeouts, and see
        ``peer_up`` when it boots again."""
        sim = self.sim
        if self.alive and self.driver.busy and self.replica.role == Role.LEADER:
            sim.count("leader_crashes_mid_fsync")   # its unsynced entries may be lost
        if self.alive and sim.leader() == self.node_id:
            sim.leader_lost("power-loss")
        faults = sim.options.storage_model
        self._stop(lambda: self.disk.crash(self.disk_rng,
                                           tear=faults and self.disk_rng.random() < 0.3))

    def kill(self) -> None:
        """The process is killed (kill -9): what it wrote survives in the page cache,
        synced or not, and its kernel resets its connections: each peer sees
        ``peer_down`` (its followers may take it as gone at once: fast failover)."""
        sim = self.sim
        if not self.alive:
            return
        if sim.leader() == self.node_id:
            sim.leader_lost("kill")
        self._stop(self.disk.kill)
        # Each peer's connection is reset once what we sent it before dying has arrived (a
        # stream delivers in order, then the close): no message of ours follows its
        # peer_down, which would make it take us for alive again.
        for other in sim.nodes.values():
            if other is not self and other.alive:
                due = sim.last_arrival.get((self.node_id, other.node_id), 0.0)
                sim.schedule(max(0.0, due - sim.now) + 0.01, other.connection_reset,
                             self.node_id, self.incarnation)

    def _stop(self, disk_fault) -> None:
        """Stop this incarnation: ``disk_fault`` decides what the disk keeps; requests
        here and forwarded through here fail."""
        sim = self.sim
        self.alive = False
        self.incarnation += 1
        disk_fault()
        for request in list(self.clients.values()):
            if type(request) is CoordAttempt:
                sim.coordination.lose(request)
            else:
                sim.workload.lose(request)
        self.clients.clear()
        self.held.clear()
        for handle in list(self.inbound.values()):
            origin = sim.nodes[handle.origin]
            if origin.alive and origin.incarnation == handle.incarnation:
                origin.execute(origin.driver.forward_failed(handle.request))
        self.inbound.clear()

    def restart(self) -> None:
        if self.corrupt or self.removed:
            return
        self.alive = True
        self.paused = False
        self.boot()
        if self.alive:
            self.pump()

    def restart_if_down(self) -> None:
        if not self.alive:
            self.restart()

    def resume(self) -> None:
        """Un-pause: the tick loop catches up, then what arrived meanwhile is read."""
        self.paused = False
        self.catch_up()
        held, self.held = self.held, []
        for delay_event in held:
            self.sim.schedule(self.sim.rng.uniform(0, 1.0), *delay_event)
        self.pump()

    # ================================================================== events

    def tick(self) -> None:
        """One tick period of this node's clock passed."""
        self.local_ms += TICK_MS
        if self.alive and not self.paused:
            self.catch_up()

    def catch_up(self) -> None:
        count = self.clock.due(self.local_ms)
        if count:
            self.execute(self.driver.tick(count))
            self.pump()

    def deliver(self, msg) -> None:
        if self.paused:
            self.held.append((self.sim._deliver, msg))
            return
        self.execute(self.driver.receive([msg]))
        self.pump()

    def client_request(self, request, kind: str, payload) -> bool:
        """A client's request arrives; False when the node is down (connection refused)."""
        if not self.alive:
            return False
        if self.paused:
            self.held.append((self._client_request_now, request, kind, payload))
            return True
        self._client_request_now(request, kind, payload)
        return True

    def _client_request_now(self, request, kind: str, payload) -> None:
        if not self.alive:
            return
        self.clients[id(request)] = request
        driver = self.driver
        if kind == "write":
            key, data = payload
            duplicates = driver.stats["duplicates"]
            instructions = driver.submit_write(request, key, data)
            if driver.stats["duplicates"] != duplicates:
                self.sim.count("retries_answered_from_table")
            self.execute(instructions)
        else:
            query, consistency = payload
            if consistency == "lease":
                self.catch_up()          # as the server's router does before a lease read
            served = driver.stats["lease_reads_served"]
            instructions = driver.submit_read(request, query, consistency)
            if driver.stats["lease_reads_served"] != served:
                self.sim.check_lease_holder(self)
            self.execute(instructions)
        self.pump()

    def connection_reset(self, peer: int, incarnation: int) -> None:
        """The connection to ``peer`` (in its ``incarnation``, which crashed) is gone."""
        if self.sim.nodes[peer].incarnation != incarnation or not self.alive:
            return                      # it restarted meanwhile (and said peer_up)
        if self.paused:
            self.held.append((self.connection_reset, peer, incarnation))
            return
        self.execute(self.driver.peer_down(peer))
        self.pump()

    def forwarded(self, handle: ForwardHandle, op: str, payload) -> None:
        """A request forwarded by ``handle.origin`` arrives here."""
        if self.paused:
            self.held.append((self.forwarded, handle, op, payload))
            return
        self.inbound[id(handle)] = handle
        if op == "propose":
            self.execute(self.driver.submit_forwarded_write(handle, payload))
        else:
            self.execute(self.driver.submit_read(handle, payload["query"], "linearizable",
                                                 True))
        self.pump()

    def forward_answered(self, incarnation: int, request, status: int, body) -> None:
        if self.alive and incarnation == self.incarnation:
            if self.paused:
                self.held.append((self.forward_answered, incarnation, request, status, body))
                return
            self.execute(self.driver.forward_answered(request, status, body))
            self.pump()

    def forward_refused(self, incarnation: int, request) -> None:
        if self.alive and incarnation == self.incarnation:
            self.execute(self.driver.forward_failed(request))
            self.pump()

    def snapshot_arrived(self, incarnation: int, msg: InstallSnapshot, token: bytes) -> None:
        if self.alive and incarnation == self.incarnation and not self.paused:
            self.execute(self.driver.install_snapshot(msg, token))
            self.pump()

    # ================================================================== the shell

    def pump(self) -> None:
        if self.alive and not self.paused:
            self.execute(self.driver.pump())

    def execute(self, instructions: list) -> None:
        sim = self.sim
        incarnation = self.incarnation
        for op in instructions:
            if incarnation != self.incarnation:
                return                  # crashed half way (a failed fsync): the rest is lost
            kind = type(op)
            if kind is Send:
                for msg in op.messages:
                    sim.send(self, msg)
            elif kind is Persist:
                self._persist(op)
            elif kind is Reply:
                self._reply(op)
            elif kind is Applied:
                self._applied(op)
            elif kind is Forward:
                sim.forward(self, op)
            elif kind is OfferSnapshot:
                sim.offer_snapshot(self, op.message)
            elif kind is RoleChange:
                self._role_changed(op)
            elif kind is ConfigApplied:
                sim.note_config(op.index, op.old, op.new)
                self._config_applied(op)
            elif kind is TakeSnapshot:
                sim.schedule(sim.rng.uniform(0.0, 2.0), self._take_snapshot, self.incarnation, op)
            elif kind is RestoreSnapshot:
                sim.schedule(sim.rng.uniform(0.0, 2.0), self._restore_snapshot,
                             self.incarnation, op.meta)
            elif kind is CompactLog:
                self._disk_call(self.disk.compact, op.index)
            elif kind is RowApplied:
                pass
        sim.after_step(self)

    def _persist(self, op: Persist) -> None:
        ready = op.ready
        if ready.snapshot is None and not self._disk_call(self.disk.append, ready):
            return
        if op.sync:
            delay = self.sim.rng.uniform(*self.sim.options.fsync_ms)
            self.sim.schedule(delay, self._persisted, self.incarnation, ready)

    def _persisted(self, incarnation: int, ready) -> None:
        if incarnation != self.incarnation or not self.alive:
            return  # crashed before the fsync completed: nothing of this Ready happened
        if ready.snapshot is not None:
            data = self.sim.snapshot_files[ready.snapshot_data]
            done = self._disk_call(self.disk.save, ready, data)
        else:
            done = self._disk_call(self.disk.sync)
        if done:
            self.execute(self.driver.persisted(ready))
            self.pump()

    def _disk_call(self, fn, *args) -> bool:
        """Run a storage call; an fsync failure (EIO) stops the node (never retry and
        believe it), which restarts later from whatever is durable."""
        try:
            fn(*args)
        except StorageIOError:
            sim = self.sim
            sim.stats["fsync_failures"] += 1
            sim.trace.append(f"{sim.now:9.1f} node {self.node_id} fsync EIO: stopping")
            self.crash()
            sim.schedule(sim.rng.uniform(*sim.options.fault_duration_ms), self.restart_if_down)
            return False
        return True

    def _reply(self, op: Reply) -> None:
        handle = op.handle
        if type(handle) is ForwardHandle:
            self.inbound.pop(id(handle), None)
            self.sim.answer_forward(self, handle, op.status, op.body)
        else:
            self.clients.pop(id(handle), None)
            if type(handle) is CoordAttempt:
                self.sim.coordination.reply(handle, self.node_id, op.status, op.body)
            else:
                self.sim.workload.reply(handle, self.node_id, op.status, op.body)

    def _applied(self, op: Applied) -> None:
        sim = self.sim
        if sim.coordination is not None:
            sim.coordination.applied(self, op)
        for entry in op.entries:
            sim.check_apply(self, entry)
        changes = {entry.index: () for entry in op.entries}
        for outcome in op.outcomes:
            if outcome.changes:
                changes[outcome.index] += outcome.changes
            if outcome.key is None:
                continue
            if outcome.outcome == EXECUTED:
                sim.check_executed_once(self.node_id, outcome)
            elif outcome.outcome == DUPLICATE:
                sim.note_skipped(outcome)
            elif outcome.outcome == STALE:
                sim.note_skipped(outcome, "commands_stale")
        for index, entry_changes in changes.items():
            sim.check_changes(self.node_id, index, entry_changes)

    def _config_applied(self, op: ConfigApplied) -> None:
        """As the server's address book: a member that applies a final configuration
        without some nodes tells them they were removed (a removed server exits and never
        starts again once enough members did: paxoslog/node/removal.py).  A node that
        applies one without itself waits to be told: it may be the only one that knows the
        configuration is chosen (a removed leader killed before its hand-over), and the
        remaining voters need its promise to learn it."""
        if op.new.joint or self.node_id not in op.new.members:
            return
        for peer in sorted(op.old.members - op.new.members):
            self.sim.schedule(self.sim.rng.uniform(0.5, 5.0), self.sim.nodes[peer].told_removed,
                              self.node_id, op.index, op.new.voters)

    def told_removed(self, member: int, applied: int, voters) -> None:
        if self.witnesses.told(member, applied, voters):
            self.exit_removed()

    def exit_removed(self) -> None:
        """Enough members told this node it was removed: it stops serving and exits for
        good."""
        if self.removed:
            return
        if self.alive and (self.paused or self.replica.role == Role.LEADER):
            # As the server: a removed leader hands over before it exits (a paused process
            # exits once it runs again).
            self.sim.schedule(5.0, self.exit_removed)
            return
        if self.alive:
            self.kill()             # a process that exits: its peers' connections close
        self.removed = True
        self.sim.trace.append(f"{self.sim.now:9.1f} node {self.node_id} removed: exits")

    def _role_changed(self, op: RoleChange) -> None:
        sim = self.sim
        if op.role == Role.CANDIDATE:
            sim.stats["elections"] += 1
        elif op.role == Role.LEADER and op.old_role != Role.LEADER:
            sim.stats["leader_changes"] += 1
            sim.leader_elected()
            sim.newest_leader = self.node_id
            sim.trace.append(f"{sim.now:9.1f} leader {self.node_id} term {op.term}")

    def _take_snapshot(self, incarnation: int, op: TakeSnapshot) -> None:
        if incarnation != self.incarnation or not self.alive:
            return
        states = [(name, list(produce())) for name, produce in op.producers]
        sessions = op.sessions()
        self.sim.check_sessions(self.node_id, op.meta.index, sessions)
        if not self._disk_call(self.disk.save_snapshot, op.meta, states, sessions):
            return
        point = self.disk.compaction_point(op.meta)
        self.execute(self.driver.snapshot_saved(op.meta, point))
        self.pump()

    def _restore_snapshot(self, incarnation: int, meta: SnapshotMeta) -> None:
        if incarnation != self.incarnation or not self.alive:
            return
        latest = self.disk.latest_snapshot()
        assert latest is not None and latest[0].index >= meta.index, (latest, meta)
        fresh = self.driver.machines.fresh()
        reader = SnapshotReader(latest[1])
        fresh.restore_from(reader)
        self.execute(self.driver.snapshot_restored(reader.meta, fresh))
        self.pump()

    # ================================================================== admin

    def change_config(self, voters, learners) -> None:
        """Raises the core's errors (NotLeader, Busy, ConfigChangeInProgress, ValueError)."""
        self.execute(self.driver.change_config(voters, learners))
        self.pump()

    def transfer_leadership(self, target: int) -> None:
        self.execute(self.driver.transfer_leadership(target))
        self.pump()

