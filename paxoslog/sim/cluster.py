"""The deterministic cluster simulator: N replicas of the real core on virtual time.

One seeded ``random.Random`` drives everything (network, faults, clients, timeouts), and
events run from one heap in (time, sequence) order, so ``run_seed(seed, ...)`` replays bit
for bit.  Each node is the real replica (Multi-Paxos or Raft, via ``create_replica``)
inside a small shell that honours the Ready contract with an asynchronous disk: a Ready's
writes become durable only when its simulated fsync completes; only then are its messages
sent, its entries applied and its reads answered.  A crash loses whatever was not durable.

Checkers (see checkers.py) run all the time (``check_invariants`` after every step, one
value per index across replicas) and at the end (linearizable client history, progress
after heal).  A failure raises ``SimulationFailure`` whose message ends with the command
that replays the seed.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable

from ..core import messages as wire
from ..core.errors import Busy, ConfigChangeInProgress, NotLeader
from ..core.limits import Limits
from ..core.log import ENTRY_CONFIG, ENTRY_NORMAL, Entry, HardState, SnapshotMeta, entry_config
from ..core.messages import InstallSnapshot
from ..core.quorum import Config
from ..core.ready import ProposalDropped, Ready, ReadState, Role, RoleChanged
from ..core.replica import ReplicaOptions, Restored, create_replica
from ..storage import CorruptLog, StorageIOError
from .checkers import (History, SimulationFailure, check_agreement, check_executed_once,
                       check_lease_holder)
from .disk import IdealDisk, ModelDisk
from .kvmodel import EXECUTED, STALE, SimKV, decode_command, encode_command
from .network import Network, NetworkProfile, partition_shapes

__all__ = ["SimOptions", "Simulation", "run_seed", "replay_command"]

TICK_MS = 10.0


@dataclass
class SimOptions:
    """Shape of one run.  ``random_for`` draws a varied fault profile from a seed."""

    protocol: str = "multipaxos"
    nodes: int = 3
    spares: int = 0               # extra nodes that may join through membership changes
    duration_ms: float = 3000.0   # faults and load happen in [0, duration)
    settle_ms: float = 3000.0     # after heal: the cluster must make progress within this
    clients: int = 4
    keys: int = 3
    client_timeout_ms: float = 400.0
    think_ms: float = 5.0
    crash_rate: float = 0.0       # nemesis actions per second, per kind
    pause_rate: float = 0.0
    partition_rate: float = 0.0
    membership_rate: float = 0.0
    fault_duration_ms: tuple[float, float] = (50.0, 800.0)
    fsync_ms: tuple[float, float] = (0.05, 1.0)
    snapshot_every: int = 0       # applied entries between snapshots (0 = never)
    codec: bool = False           # round-trip every message through the wire codec
    network: NetworkProfile = field(default_factory=NetworkProfile)
    heartbeat_ticks: int = 2
    election_ticks: int = 10
    lease_ticks: int = 0
    storage_model: bool = False   # the real storage encoding over a faulty memory disk
    eio_rate: float = 0.0         # fsync failures per second (storage model only)
    bitflip: bool = False         # flip a bit in one node's committed record, once
    transfer_rate: float = 0.0    # leadership transfers asked of the leader per second
    limits: Limits = field(default_factory=lambda: Limits(pipeline_window=8,
                                                          batch_commands_max=16,
                                                          entries_per_message_max=8))
    # Profile features (profiles.py).  Every default keeps the default profile's behaviour
    # (and its random draws) exactly as it was before these fields existed.
    profile: str = ""             # the profile that drew these options ("" = default)
    clock_rates: tuple[float, ...] = ()   # tick period multiplier per node id (1-based)
    clock_drift: float = 0.0      # redrawn clock rates stay in [1 - drift, 1 + drift]
    clock_strobe_rate: float = 0.0  # redraws of one node's clock rate per second
    clock_leader_rate: float = 0.0  # if set, a clock event slows the leader to this rate
                                    # and puts the others back at their clock_rates
    tick_catch_up: bool = False   # a resumed node first ticks the ticks it missed (server)
    read_ratio: float = 0.0       # share of gets among operations (0: the default mix)
    lease_reads: bool = False     # a get is served from the leader lease when it holds
    lease_holder_check: bool = True  # lease reads: one served while another node leads a
                                     # higher term fails the run (checkers.py)
    sessions: bool = False        # (client, sequence) sessions: lost replies, retries
    dedup: bool = True            # sessions: the state machine executes a sequence once
    response_loss_rate: float = 0.0  # sessions: replies lost on the way to the client
    give_up_ms: float = 0.0       # sessions: a client retries one operation this long
    kill_all_rate: float = 0.0    # crash every node at once, per second
    kill_all_after_change: float = 0.0  # chance a membership change is followed by kill-all
    member_remove_leader: float = 0.0   # chance a membership change removes the leader
    member_replace: float = 0.0   # chance of a one-add-one-remove voter change
    partition_kinds: tuple[str, ...] = ()  # shapes the nemesis picks from (all if empty)

    @classmethod
    def random_for(cls, seed: int, protocol: str, nodes: int,
                   profile: str = "") -> "SimOptions":
        """The options of ``seed``: the default draw, then, for a named profile, that
        profile's changes drawn from ``random.Random(f"{profile}/{seed}")`` (so a profile
        never alters what the default profile draws for a seed)."""
        options = cls._default_for(seed, protocol, nodes)
        if profile:
            from .profiles import apply_profile
            options = apply_profile(options, profile, random.Random(f"{profile}/{seed}"))
        return options

    @classmethod
    def _default_for(cls, seed: int, protocol: str, nodes: int) -> "SimOptions":
        rng = random.Random(f"options/{seed}")
        faulty = rng.random() < 0.9
        storage_model = random.Random(f"storage/{seed}").random() < 0.5
        return cls(
            protocol=protocol,
            nodes=nodes,
            spares=rng.choice([0, 0, 1, 2]),
            clients=rng.randint(2, 6),
            keys=rng.randint(1, 4),
            crash_rate=rng.choice([0.0, 0.5, 1.0, 2.0]) if faulty else 0.0,
            pause_rate=rng.choice([0.0, 0.5, 1.0]) if faulty else 0.0,
            partition_rate=rng.choice([0.0, 0.5, 1.0, 2.0]) if faulty else 0.0,
            membership_rate=rng.choice([0.0, 0.0, 0.5, 1.0]) if faulty else 0.0,
            snapshot_every=rng.choice([0, 0, 20, 50]),
            codec=rng.random() < 0.2,
            network=NetworkProfile.random(rng, faulty),
            limits=Limits(pipeline_window=rng.choice([1, 2, 8, 32]),
                          batch_commands_max=rng.choice([1, 4, 16, 64]),
                          entries_per_message_max=rng.choice([1, 4, 16]),
                          # tiny messages force paged Promises and split catch-ups
                          message_bytes_max=random.Random(f"paging/{seed}").choice(
                              [4 << 20, 4 << 20, 200])),
            storage_model=storage_model,
            eio_rate=rng.choice([0.0, 0.5, 1.0]) if storage_model and faulty else 0.0,
            bitflip=storage_model and faulty and rng.random() < 0.3,
            transfer_rate=rng.choice([0.0, 0.0, 0.5, 1.0]) if faulty else 0.0,
        )


def replay_command(seed: int, protocol: str, nodes: int, profile: str = "") -> str:
    command = f"python -m paxoslog.sim --seed {seed} --protocol {protocol} --nodes {nodes}"
    return f"{command} --profile {profile}" if profile else command


class SimNode:
    """One node: the real replica plus a minimal shell (disk, apply, client replies)."""

    def __init__(self, sim: "Simulation", node_id: int, bootstrap: Config) -> None:
        self.sim = sim
        self.node_id = node_id
        self.bootstrap = bootstrap
        if sim.options.storage_model:
            self.disk = ModelDisk(node_id, random.Random(sim.rng.random()))
        else:
            self.disk = IdealDisk()
        self.alive = True
        self.corrupt: str | None = None  # why the node refuses to start
        self.paused = False
        self.incarnation = 0
        self.held: list[wire.Message] = []  # messages that arrived while paused
        rates = sim.options.clock_rates
        self.base_clock_rate = rates[node_id - 1] if node_id <= len(rates) else 1.0
        self.clock_rate = self.base_clock_rate
        self.missed_ticks = 0               # ticks that fell while paused (tick_catch_up)
        self.boot()

    def boot(self) -> None:
        sim = self.sim
        self.incarnation += 1
        try:
            restored = self.disk.restored()
        except CorruptLog as exc:
            # Refuse to take part with a damaged log (never vote with it): stay down.
            self.corrupt = str(exc)
            self.alive = False
            self.sim.stats["corruption_detected"] += 1
            self.sim.trace.append(f"{self.sim.now:9.1f} node {self.node_id} refuses to start: {exc}")
            return
        self.replica = create_replica(
            sim.options.protocol, self.node_id, self.bootstrap, sim.replica_options,
            random.Random(sim.rng.random()), restored)
        self.kv = self.sim.new_kv(self.disk.snapshot_state if self.disk.snapshot else None)
        self.missed_ticks = 0
        self.applied = self.disk.snapshot.index if self.disk.snapshot else 0
        self.applied_term = self.disk.snapshot.term if self.disk.snapshot else 0
        self.config = self.disk.snapshot.config if self.disk.snapshot else self.bootstrap
        self.since_snapshot = 0
        self.busy = False           # a Ready is being persisted
        self.waiting_reads: list = []   # (index, request) waiting for apply
        self.pending: dict[tuple[int, int], object] = {}  # (client, op) -> request

    # -------------------------------------------------------------- driving

    def pump(self) -> None:
        """If idle, take the next Ready and start persisting it."""
        if self.busy or not self.alive or self.paused:
            return
        ready = self.replica.ready()
        if ready is None:
            return
        self.busy = True
        self.disk.write(ready)
        delay = self.sim.rng.uniform(*self.sim.options.fsync_ms) if ready.must_sync else 0.0
        self.sim.schedule(delay, self._persisted, self.incarnation, ready)

    def _persisted(self, incarnation: int, ready: Ready) -> None:
        if incarnation != self.incarnation or not self.alive:
            return  # crashed before the fsync completed: nothing of this Ready happened
        sim = self.sim
        try:
            self.disk.sync(ready, sim.snapshots)
        except StorageIOError:
            self._disk_failed()
            return
        if ready.snapshot is not None:
            self._install_snapshot(ready.snapshot, ready.snapshot_data)
        for msg in ready.messages:
            sim.send(self, msg)
        for entry in ready.committed:
            self._apply(entry)
        for read in ready.reads:
            self.waiting_reads.append(read)
        self._answer_reads()
        for event in ready.events:
            if isinstance(event, RoleChanged):
                if event.role == Role.CANDIDATE:
                    sim.stats["elections"] += 1
                elif event.role == Role.LEADER:
                    sim.stats["leader_changes"] += 1
                    sim.newest_leader = self.node_id
                    sim.trace.append(f"{sim.now:9.1f} leader {self.node_id} term {event.term}")
            if isinstance(event, ProposalDropped):
                for command in event.commands:
                    request = self.pending.pop(tuple(decode_command(command)[:2]), None)
                    if request is not None:
                        sim.workload.fail(request)
        self.replica.advance(ready)
        self.busy = False
        self._maybe_snapshot()
        self.sim.after_step(self)
        self.pump()

    def _install_snapshot(self, meta: SnapshotMeta, token: bytes) -> None:
        state = self.sim.snapshots[token]
        self.kv = self.sim.new_kv(state)
        self.applied = meta.index
        self.applied_term = meta.term
        self.config = meta.config
        self.since_snapshot = 0

    def _apply(self, entry: Entry) -> None:
        assert entry.index == self.applied + 1, (self.node_id, entry.index, self.applied)
        self.sim.check_apply(self, entry)
        self.applied = entry.index
        self.applied_term = entry.term
        self.since_snapshot += 1
        if entry.kind == ENTRY_CONFIG:
            previous, self.config = self.config, entry_config(entry)
            self.sim.note_config(entry, previous, self.config)
        elif entry.kind == ENTRY_NORMAL:
            sessions = self.sim.options.sessions
            for command in entry.payload:
                decoded = decode_command(command)
                result = self.kv.apply(decoded)
                if sessions:
                    outcome = self.kv.last_outcome
                    if outcome == EXECUTED:
                        check_executed_once(self.sim, self.node_id, entry.index, decoded)
                    else:
                        self.sim.note_skipped(outcome, entry.index, decoded)
                        if outcome == STALE:
                            continue  # older than the session's last sequence: ignored
                request = self.pending.pop((decoded[0], decoded[1]), None)
                if request is not None:
                    self.sim.workload.complete(request, result)

    def _answer_reads(self) -> None:
        still = []
        for read in self.waiting_reads:
            if self.applied >= read.index:
                request = read.request_id
                self.sim.workload.complete(request, self.kv.get(request.key))
            else:
                still.append(read)
        self.waiting_reads = still

    def _maybe_snapshot(self) -> None:
        every = self.sim.options.snapshot_every
        if not every or self.since_snapshot < every or self.applied == 0:
            return
        meta = SnapshotMeta(self.applied, self.applied_term, self.config)
        token = f"{self.node_id}:{self.incarnation}:{self.applied}".encode()
        self.sim.snapshots[token] = self.kv.copy()
        # Taking a snapshot is durable at once here (the real storage fsyncs it first).
        try:
            self.disk.take_snapshot(meta, self.kv.copy())
        except StorageIOError:
            self._disk_failed()
            return
        self.since_snapshot = 0
        self.replica.compact(meta)

    # -------------------------------------------------------------- faults

    def _disk_failed(self) -> None:
        """An fsync failed: never retry and believe it.  Stop, and restart later from
        whatever is durable."""
        sim = self.sim
        sim.stats["fsync_failures"] += 1
        sim.trace.append(f"{sim.now:9.1f} node {self.node_id} fsync EIO: stopping")
        self.crash()
        sim.schedule(sim.rng.uniform(*sim.options.fault_duration_ms), self.restart_if_down)

    def crash(self) -> None:
        self.alive = False
        self.incarnation += 1
        self.disk.crash(self.sim.rng)
        for request in self.pending.values():
            self.sim.workload.lose(request)
        for read in self.waiting_reads:
            self.sim.workload.lose(read.request_id)
        self.pending.clear()
        self.waiting_reads.clear()
        self.held.clear()

    def restart(self) -> None:
        if self.corrupt:
            return
        self.alive = True
        self.paused = False
        self.boot()
        if self.alive:
            self.pump()

    def restart_if_down(self) -> None:
        if not self.alive:
            self.restart()

    def serve_lease_read(self, request, point: int) -> None:
        """Answer a get from the lease at read point ``point`` (once applied reaches it)."""
        self.sim.count("lease_reads")
        check_lease_holder(self.sim, self)
        self.waiting_reads.append(ReadState(request, point))
        self._answer_reads()

    def catch_up_ticks(self) -> None:
        """Resumed from a pause: tick the ticks that fell meanwhile, as the server does
        (its tick loop catches up by the monotonic clock, at most about 2 election
        timeouts), so no timer or lease outlives the pause."""
        bound = max(1000, 2 * self.sim.options.election_ticks + 1)
        missed, self.missed_ticks = min(self.missed_ticks, bound), 0
        for _ in range(missed):
            self.replica.tick()
        if missed:
            self.sim.after_step(self)


class Simulation:
    """A seeded run: nodes, network, nemesis, workload and checkers."""

    def __init__(self, seed: int, options: SimOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.now = 0.0
        self._events: list = []
        self._sequence = 0
        self.replica_options = ReplicaOptions(
            heartbeat_ticks=options.heartbeat_ticks, election_ticks=options.election_ticks,
            lease_ticks=options.lease_ticks, limits=options.limits)
        self.network = Network(self.rng, options.network)
        self.snapshots: dict[bytes, dict] = {}
        self.chosen: dict[int, tuple] = {}    # index -> (kind, payload) first applied
        self.trace: list[str] = []
        voters = frozenset(range(1, options.nodes + 1))
        bootstrap = Config(voters)
        self.nodes = {n: SimNode(self, n, bootstrap)
                      for n in range(1, options.nodes + options.spares + 1)}
        from .workload import Workload
        self.workload = Workload(self)
        self.history = History()
        self.faults: list[tuple[float, str]] = []
        self.stats = {"elections": 0, "leader_changes": 0, "corruption_detected": 0,
                      "fsync_failures": 0}
        self._last_leader: int | None = None
        self.newest_leader: int | None = None    # the node most recently elected leader
        self.configs_applied: set[int] = set()   # indexes of CONFIG entries seen applied
        self.executions: dict[tuple[int, int], int] = {}  # (client, seq) -> index (sessions)
        self.skipped: set[tuple[int, int, int]] = set()  # (index, client, seq) not executed
        self.on_step: Callable[["Simulation"], None] | None = None

    # -------------------------------------------------------------- event loop

    def schedule(self, delay_ms: float, fn: Callable, *args) -> None:
        self._sequence += 1
        heapq.heappush(self._events, (self.now + delay_ms, self._sequence, fn, args))

    def run_until(self, deadline: float) -> None:
        events = self._events
        while events and events[0][0] <= deadline:
            when, _, fn, args = heapq.heappop(events)
            self.now = when
            fn(*args)
        self.now = max(self.now, deadline)

    def send(self, node: SimNode, msg: wire.Message) -> None:
        if self.options.codec:
            frame = wire.encode(msg)
            self.network.bytes += len(frame)
            msg = wire.decode(frame)
        if isinstance(msg, InstallSnapshot) and not msg.data:
            token = self._snapshot_token(node, msg.index)
            if token is None:
                return
            msg = InstallSnapshot(msg.frm, msg.to, msg.term, msg.index, msg.snap_term,
                                  msg.config, token)
        for delay in self.network.deliveries(msg.frm, msg.to):
            self.schedule(delay, self._deliver, msg)

    def _snapshot_token(self, node: SimNode, index: int) -> bytes | None:
        if node.disk.snapshot is None or node.disk.snapshot.index != index:
            return None
        token = f"{node.node_id}:{node.incarnation}:{index}".encode()
        self.snapshots.setdefault(token, dict(node.disk.snapshot_state))
        return token

    def _deliver(self, msg: wire.Message) -> None:
        node = self.nodes.get(msg.to)
        if node is None or not node.alive:
            return
        if node.paused:
            node.held.append(msg)
            return
        node.replica.step(msg)
        self.after_step(node)
        node.pump()

    def _tick(self, node: SimNode) -> None:
        if node.alive and not node.paused:
            node.replica.tick()
            self.after_step(node)
            node.pump()
        elif node.alive and self.options.tick_catch_up:
            node.missed_ticks += 1
        # A clock rate of r makes this node's ticks r times as far apart (r > 1: slow).
        self.schedule(TICK_MS * node.clock_rate, self._tick, node)

    def after_step(self, node: SimNode) -> None:
        try:
            node.replica.check_invariants()
        except AssertionError as exc:
            self.fail(f"invariant broken on node {node.node_id}: {exc!r}")
        if self.on_step is not None:
            self.on_step(self)

    def check_apply(self, node: SimNode, entry: Entry) -> None:
        check_agreement(self, node.node_id, entry)

    def new_kv(self, state: dict | None) -> SimKV:
        o = self.options
        return SimKV(state, dedup=o.sessions and o.dedup)

    def note_skipped(self, outcome: str, index: int, command: list) -> None:
        """Count a command the session table kept from executing (once per log index)."""
        key = (index, command[0], command[1])
        if key not in self.skipped:
            self.skipped.add(key)
            self.count(f"commands_{outcome}")

    def count(self, key: str, n: int = 1) -> None:
        """Add to a statistic that only some profiles produce."""
        self.stats[key] = self.stats.get(key, 0) + n

    def fault_active(self) -> bool:
        """A partition is in place, or some node is down or paused."""
        return bool(self.network.blocked) or any(
            not n.alive or n.paused for n in self.nodes.values())

    def config_in_flight(self) -> bool:
        """Some live node knows of a configuration it has not applied yet, or a joint one."""
        return any(n.alive and (n.replica.config.joint or n.replica.config != n.config)
                   for n in self.nodes.values())

    def note_config(self, entry: Entry, previous: Config, config: Config) -> None:
        """Count a CONFIG entry the first time any replica applies it (it is committed)."""
        if entry.index in self.configs_applied:
            return
        self.configs_applied.add(entry.index)
        self.count("configs_committed")
        if config.all_voters != previous.all_voters:
            self.count("voter_changes_committed")
            if self.fault_active():
                self.count("voter_changes_under_fault")
        # The newest leader committed it (a leader that removes itself steps down then).
        leader = self.newest_leader
        if (not config.joint and leader is not None and leader in previous.all_voters
                and leader not in config.voters):
            self.count("leader_removals_committed")
            if self.fault_active():
                self.count("leader_removals_under_fault")

    def fail(self, reason: str) -> None:
        o = self.options
        tail = "\n".join(self.trace[-15:])
        raise SimulationFailure(
            f"seed {self.seed} ({o.protocol}, {o.nodes} nodes"
            f"{', profile ' + o.profile if o.profile else ''}) at t={self.now:.1f}ms: {reason}\n"
            f"recent: \n{tail}\n"
            f"replay: {replay_command(self.seed, o.protocol, o.nodes, o.profile)}")

    # -------------------------------------------------------------- queries

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive and not n.paused]

    def leader(self) -> int | None:
        """The live leader with the highest term, if any."""
        best = None
        for node in self.live_nodes():
            if node.replica.role == Role.LEADER:
                if best is None or node.replica.term > self.nodes[best].replica.term:
                    best = node.node_id
        return best

    # -------------------------------------------------------------- running

    def start(self) -> None:
        for node in self.nodes.values():
            self.schedule(self.rng.uniform(0, TICK_MS), self._tick, node)
        self.workload.start()
        from .nemesis import Nemesis
        self.nemesis = Nemesis(self)
        self.nemesis.start()

    def run(self) -> "Simulation":
        o = self.options
        self.start()
        self.run_until(o.duration_ms)
        self.nemesis.heal_all()
        self.workload.stop_new_operations()
        self.run_until(self.now + o.client_timeout_ms * 2)
        self.network.faults_enabled = False
        progress_deadline = self.now + o.settle_ms
        self.workload.probe()
        self.run_until(progress_deadline)
        if not self.workload.probe_done:
            self.fail(f"no progress within {o.settle_ms:.0f}ms after heal "
                      f"(leader={self.leader()}, statuses={self._statuses()})")
        self.run_until(self.now + 200)
        self.workload.finish()
        self.history.check(self)
        return self

    def _statuses(self) -> str:
        return "; ".join(f"{n.node_id}:{n.replica.role}/{n.replica.term}"
                         f"/c{n.replica.commit_index}/{n.replica.config.describe()}"
                         for n in self.nodes.values() if n.alive)

    def transfer(self) -> str | None:
        """Ask the leader to hand leadership to a random other voter."""
        leader = self.leader()
        if leader is None:
            return None
        replica = self.nodes[leader].replica
        targets = sorted(replica.config.voters - {leader})
        if not targets:
            return None
        target = self.rng.choice(targets)
        try:
            replica.transfer_leadership(target)
        except (NotLeader, Busy, ValueError):
            return None
        self.after_step(self.nodes[leader])
        self.nodes[leader].pump()
        return f"transfer {leader} -> {target}"

    def membership_change(self) -> str | None:
        """Ask the leader for one random voter/learner change; returns a description."""
        leader = self.leader()
        if leader is None:
            return None
        replica = self.nodes[leader].replica
        config = replica.config
        if config.joint:
            return None
        everyone = sorted(self.nodes)
        voters = set(config.voters)
        learners = set(config.learners)
        outside = [n for n in everyone if n not in voters and n not in learners]
        if self.options.member_remove_leader or self.options.member_replace:
            if not self._wide_change(leader, voters, learners, outside):
                return None
        else:
            choice = self.rng.random()
            if learners and choice < 0.5:
                promote = self.rng.choice(sorted(learners))
                voters.add(promote)
                learners.discard(promote)
            elif outside and choice < 0.8 and len(voters) < 7:
                learners.add(self.rng.choice(outside))
            elif len(voters) > 3:
                voters.discard(self.rng.choice(sorted(voters)))
            else:
                return None
        try:
            replica.change_config(voters, learners)
        except (NotLeader, ConfigChangeInProgress, Busy, ValueError):
            return None
        self.after_step(self.nodes[leader])
        self.nodes[leader].pump()
        self.count("configs_proposed")
        text = f"config -> voters {sorted(voters)} learners {sorted(learners)}"
        wide = self.options.member_remove_leader or self.options.member_replace
        return f"{text} (leader {leader})" if wide else text

    def _wide_change(self, leader: int, voters: set[int], learners: set[int],
                     outside: list[int]) -> bool:
        """The membership profile's changes (edits ``voters``/``learners`` in place): remove
        the leader itself, swap one voter for another in one joint change, two adds or two
        removes at once, or one of the single steps.  False when nothing applies."""
        rng = self.rng
        o = self.options
        candidates = sorted(learners) + outside   # nodes that could become voters
        choice = rng.random()
        if choice < o.member_remove_leader and len(voters) > 1:
            voters.discard(leader)
            if len(voters) < 3 and candidates:
                joining = rng.choice(candidates)   # one add + one remove
                voters.add(joining)
                learners.discard(joining)
            return True
        if choice < o.member_remove_leader + o.member_replace and candidates:
            voters.discard(rng.choice(sorted(voters)))
            joining = rng.choice(candidates)
            voters.add(joining)
            learners.discard(joining)
            return True
        choice = rng.random()
        if choice < 0.25 and len(candidates) >= 2 and len(voters) <= 5:
            for joining in rng.sample(candidates, 2):   # two adds
                voters.add(joining)
                learners.discard(joining)
        elif choice < 0.5 and len(voters) >= 5:
            for leaving in rng.sample(sorted(voters), 2):  # two removes
                voters.discard(leaving)
        elif choice < 0.75 and outside:
            learners.add(rng.choice(outside))
        elif learners:
            joining = rng.choice(sorted(learners))
            voters.add(joining)
            learners.discard(joining)
        elif len(voters) > 3:
            voters.discard(rng.choice(sorted(voters)))
        else:
            return False
        return bool(voters)


def run_seed(seed: int, protocol: str = "multipaxos", nodes: int = 3,
             options: SimOptions | None = None, profile: str = "") -> Simulation:
    """Run one seed with options drawn from it for ``profile`` (or given); raises
    SimulationFailure."""
    if options is None:
        options = SimOptions.random_for(seed, protocol, nodes, profile)
    sim = Simulation(seed, options)
    return sim.run()
