"""The deterministic cluster simulator: N production nodes on virtual time.

One seeded ``random.Random`` drives everything (network, faults, clients, timeouts), and
events run from one heap in (time, sequence) order, so ``run_seed(seed, ...)`` replays bit
for bit.  Each node is the production node driver (paxoslog/node/: the real replica, the
kv state machine, the session table, request routing) in a virtual-time shell (node.py)
with an asynchronous disk: a Ready's writes become durable only when its simulated fsync
completes; only then are its messages sent, its entries applied and its reads answered.
A crash loses whatever was not durable.

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
from ..core.log import Entry
from ..core.quorum import Config
from ..core.ready import Role
from ..core.replica import ReplicaOptions
from ..node.machines import StateMachines
from ..node.sessions import NEW, RELEASE_MAX, SessionTable
from .checkers import (History, SimulationFailure, check_agreement, check_changes,
                       check_sessions,
                       check_executed_once, check_lease_holder)
from .network import Network, NetworkProfile, partition_shapes
from .node import TICK_MS, ForwardHandle, SimNode

__all__ = ["SimOptions", "Simulation", "run_seed", "replay_command", "NoDedupSessionTable",
           "ReleaseDeletesSessionTable"]


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
    tick_catch_up: bool = False   # (kept for replaying old profiles: a resumed node always
                                  # catches up its ticks now, as the server does)
    read_ratio: float = 0.0       # share of gets among operations (0: the default mix)
    lease_reads: bool = False     # a get is served from the leader lease when it holds
    lease_holder_check: bool = True  # lease reads: one served while another node leads a
                                     # higher term fails the run (checkers.py)
    sessions: bool = False        # (client, sequence) sessions: lost replies, retries
    dedup: bool = True            # False: a deliberately broken session table (negative
                                  # control: retried writes execute twice)
    session_generation: int = 0   # sessions: a client takes a new client id every this
                                  # many operations and releases the old one in its next
                                  # write, as a node does for its own sessions (0: never)
    release_deletes: bool = False  # a deliberately broken release (negative control):
                                   # it deletes the session instead of leaving a tombstone
    acked: bool = False           # sessions: every write names the client's earlier
                                  # sequences as answered (``acked``: one at a time, all
                                  # settled, a given-up one included)
    acked_keeps_floor: bool = False  # a deliberately broken acknowledgement (negative
                                     # control): results dropped, the floor left as it was
    response_loss_rate: float = 0.0  # sessions: replies lost on the way to the client
    give_up_ms: float = 0.0       # sessions: a client retries one operation this long
    kill_all_rate: float = 0.0    # crash every node at once, per second
    batch_every: int = 0          # every n-th write goes in as a one-operation batch
                                  # command (0: never; the "batches" profile sets it)
    kill_all_after_change: float = 0.0  # chance a membership change is followed by kill-all
    member_remove_leader: float = 0.0   # chance a membership change removes the leader
    member_replace: float = 0.0   # chance of a one-add-one-remove voter change
    partition_kinds: tuple[str, ...] = ()  # shapes the nemesis picks from (all if empty)
    learners: int = 0             # the last ``learners`` of the ``nodes`` bootstrap members
                                  # are learners, not voters
    lease_holders: int = 0        # coordination.py: clients holding kv leases
    bank_clients: int = 0         # coordination.py: bank-transfer transaction clients
    lease_drift_bound: float = 0.0  # the conf's clock-drift margin as a rate: an expiry
                                    # earlier than TTL x (1 - this) fails the run
    own_ack_before_fsync: bool = False  # negative control: deliberately broken replicas
                                        # that count the leader's own acceptance before
                                        # its fsync (broken.py)
    reset_rate: float = 0.0       # connection resets between live nodes per second
                                  # (peer_down then peer_up on both sides, often repeated)
    kill_fraction: float = 0.0    # share of the nemesis' crashes that are kill -9 (written
                                  # data survives, the peers' connections are reset: fast
                                  # failover); the others are power losses
    wall_offsets_ms: tuple[float, ...] = ()  # each node's wall clock ahead of (or behind)
                                  # real time, by node id (1-based): what its commands'
                                  # ``ts`` stamps start from (node/stamps.py)
    wall_step_at_ms: float = 0.0  # when the offsets beyond the epoch take effect (a clock
                                  # stepped after the cluster formed; 0: from the start)
    session_idle_ms: int = 0      # the session table's idle expiry on the log clock (0: none)
    raw_wall_stamps: bool = False  # negative control: commands stamped with the node's wall
                                   # clock as it is, not held to the log clock

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
            # Its own stream, as storage_model: the draws above stay what they were.
            kill_fraction=random.Random(f"kill/{seed}").choice([0.0, 0.5, 0.5, 1.0]),
        )


def replay_command(seed: int, protocol: str, nodes: int, profile: str = "") -> str:
    command = f"python -m paxoslog.sim --seed {seed} --protocol {protocol} --nodes {nodes}"
    return f"{command} --profile {profile}" if profile else command


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
        self.snapshot_files: dict[bytes, bytes] = {}   # token -> a snapshot file in flight
        self.chosen: dict[int, tuple] = {}    # index -> (kind, payload) first applied
        self.changes: dict[int, tuple] = {}   # index -> kv changes first reported
        self.session_tables: dict[int, object] = {}   # index -> the snapshotted table
        self.trace: list[str] = []
        voters = frozenset(range(1, options.nodes - options.learners + 1))
        learners = frozenset(range(options.nodes - options.learners + 1, options.nodes + 1))
        bootstrap = Config(voters, learners=learners)
        self.nodes = {n: SimNode(self, n, bootstrap)
                      for n in range(1, options.nodes + options.spares + 1)}
        from .workload import Workload
        self.workload = Workload(self)
        self.coordination = None
        if options.lease_holders or options.bank_clients:
            from .coordination import Coordination
            self.coordination = Coordination(self)
        self.history = History()
        self.faults: list[tuple[float, str]] = []
        self.stats = {"elections": 0, "leader_changes": 0, "corruption_detected": 0,
                      "fsync_failures": 0, "restarts_reapplying": 0}
        self._last_leader: int | None = None
        self.newest_leader: int | None = None    # the node most recently elected leader
        # A leader was lost (how, when) and no leader was elected since; then ticks from
        # the loss to the next leader elected, by how it was lost ("kill", "power-loss").
        self.leader_down: tuple[str, float] | None = None
        self.leader_down_alone = False   # and no other fault since (see leader_elected)
        self.failover_ticks: dict[str, list[float]] = {"kill": [], "power-loss": []}
        self.last_arrival: dict[tuple[int, int], float] = {}  # per link: last message due
        self.configs_applied: set[int] = set()   # indexes of CONFIG entries seen applied
        self.retired: set[int] = set()           # ids proposed for removal: never re-added
        self.executions: dict[tuple, int] = {}  # (client_id, sequence) -> index executed at
        self.skipped: set[tuple] = set()  # (index, client_id, sequence) deduplicated
        self.on_step: Callable[["Simulation"], None] | None = None
        for node in self.nodes.values():          # every peer link is up at the start
            for other in self.nodes:
                if other != node.node_id:
                    node.execute(node.driver.peer_up(other))

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
        link = (msg.frm, msg.to)
        for delay in self.network.deliveries(msg.frm, msg.to):
            self.schedule(delay, self._deliver, msg)
            self.last_arrival[link] = max(self.last_arrival.get(link, 0.0), self.now + delay)

    def _deliver(self, msg: wire.Message) -> None:
        node = self.nodes.get(msg.to)
        if node is not None and node.alive:
            node.deliver(msg)

    # ---- the shell's own traffic: one TCP-like delivery (never duplicated)

    def forward(self, node: SimNode, op) -> None:
        """A client request forwarded to the leader (``op``: a Forward instruction)."""
        for delay in self.network.deliveries(node.node_id, op.peer)[:1]:
            self.schedule(delay, self._forward_arrives, node.node_id, node.incarnation, op)

    def _forward_arrives(self, origin: int, incarnation: int, op) -> None:
        target = self.nodes[op.peer]
        if not target.alive:           # connection refused: the sender knows at once
            self.schedule(self.rng.uniform(0.1, 1.0), self.nodes[origin].forward_refused,
                          incarnation, op.request)
            return
        target.forwarded(ForwardHandle(origin, incarnation, op.request), op.op, op.payload)

    def answer_forward(self, node: SimNode, handle: ForwardHandle, status: int, body) -> None:
        origin = self.nodes[handle.origin]
        for delay in self.network.deliveries(node.node_id, handle.origin)[:1]:
            self.schedule(delay, origin.forward_answered, handle.incarnation, handle.request,
                          status, body)

    def offer_snapshot(self, node: SimNode, msg) -> None:
        """The leader's shipper: the kept snapshot the core names travels whole."""
        blob = node.disk.find_snapshot(msg.index, msg.snap_term)
        if blob is None:
            return                     # pruned meanwhile: the core offers again later
        token = f"{node.node_id}:{node.incarnation}:{msg.index}:{msg.snap_term}".encode()
        self.snapshot_files[token] = blob
        for delay in self.network.deliveries(msg.frm, msg.to)[:1]:
            self.schedule(delay, self._snapshot_arrives, msg, token)

    def _snapshot_arrives(self, msg, token: bytes) -> None:
        target = self.nodes.get(msg.to)
        if target is not None and target.alive:
            target.snapshot_arrived(target.incarnation, msg, token)

    def _tick(self, node: SimNode) -> None:
        node.tick()
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

    def check_executed_once(self, node_id: int, outcome) -> None:
        check_executed_once(self, node_id, outcome)

    def check_changes(self, node_id: int, index: int, changes: tuple) -> None:
        check_changes(self, node_id, index, changes)

    def check_sessions(self, node_id: int, index: int, table: object) -> None:
        check_sessions(self, node_id, index, table)

    def check_lease_holder(self, node: SimNode) -> None:
        self.count("lease_reads")
        check_lease_holder(self, node)

    def new_machines(self) -> StateMachines:
        """The production state machines (kv) and session table, or with ``dedup`` off a
        deliberately broken table that never recognises a retry."""
        from statemachines.kv import KVStateMachine
        o = self.options
        table = (NoDedupSessionTable if not o.dedup
                 else ReleaseDeletesSessionTable if o.release_deletes
                 else AckKeepsFloorSessionTable if o.acked_keeps_floor
                 else SessionTable)
        sessions = table(idle_ms=o.session_idle_ms)
        return StateMachines({"kv": KVStateMachine()}, sessions,
                             lambda name: KVStateMachine(), record_terms=o.protocol == "raft")

    def note_skipped(self, outcome, what: str = "commands_duplicate") -> None:
        """Count a retry the session table kept from executing (once per log index):
        answered from the table, or refused as stale."""
        key = (outcome.index, *outcome.key)
        if key not in self.skipped:
            self.skipped.add(key)
            self.count(what)

    def count(self, key: str, n: int = 1) -> None:
        """Add to a statistic that only some profiles produce."""
        self.stats[key] = self.stats.get(key, 0) + n

    def leader_lost(self, how: str) -> None:
        """The leader stops: ``how`` is "kill" (kill -9: its connections are reset) or
        "power-loss" (nothing is reset: its followers wait out their timeouts)."""
        self.count("leader_kills" if how == "kill" else "leader_power_losses")
        self.leader_down = (how, self.now)
        self.leader_down_alone = not self.fault_active()

    def leader_elected(self) -> None:
        """A node became leader: after a leader was lost, the first one says how long the
        failover took (``failover_ticks``).  Kills are counted (failovers, failover_ticks),
        and apart those with no other fault from the kill to the election (no node down or
        paused, no partition, no nemesis action: ``failovers_alone``, and of those
        ``failovers_alone_within_3_ticks``): elsewhere the survivors may lack a quorum."""
        if self.leader_down is None:
            return
        how, since = self.leader_down
        self.leader_down = None
        elapsed = (self.now - since) / TICK_MS
        self.failover_ticks[how].append(elapsed)
        if how == "kill":
            self.count("failovers")
            self.count("failover_ticks", int(elapsed))
            if self.leader_down_alone:
                self.count("failovers_alone")
                if elapsed <= 3:
                    self.count("failovers_alone_within_3_ticks")

    def fault_active(self) -> bool:
        """A partition is in place, or some node is down or paused."""
        return bool(self.network.blocked) or any(
            not n.alive or n.paused for n in self.nodes.values())

    def config_in_flight(self) -> bool:
        """Some live node knows of a configuration it has not applied yet, or a joint one."""
        return any(n.alive and (n.replica.config.joint or n.replica.config != n.config)
                   for n in self.nodes.values())

    def note_config(self, index: int, previous: Config, config: Config) -> None:
        """Count a CONFIG entry the first time any replica applies it (it is committed)."""
        if index in self.configs_applied:
            return
        self.configs_applied.add(index)
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
        if self.coordination is not None:
            self.coordination.start()
        from .nemesis import Nemesis
        self.nemesis = Nemesis(self)
        self.nemesis.start()

    def run(self) -> "Simulation":
        o = self.options
        self.start()
        self.run_until(o.duration_ms)
        self.nemesis.heal_all()
        self.workload.stop_new_operations()
        if self.coordination is not None:
            self.coordination.stop()
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
        if o.session_idle_ms:
            expired = max((n.driver.machines.sessions.expired for n in self.nodes.values()
                           if n.alive), default=0)
            self.count("sessions_expired", expired)
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
            self.nodes[leader].transfer_leadership(target)
        except (NotLeader, Busy, ValueError):
            return None
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
        # Node ids are never reused (the server refuses to re-add a removed id): a node
        # once proposed for removal is never added again; once removed, it exits.
        outside = [n for n in everyone if n not in voters and n not in learners
                   and n not in self.retired and not self.nodes[n].corrupt]
        before = voters | learners
        # A node that refuses to start (a flipped bit) is lost for good: as an operator
        # would, every change also removes it, so no configuration waits on it forever.
        lost = {n for n in before if self.nodes[n].corrupt}
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
        voters -= lost
        learners -= lost
        if not voters:
            return None
        try:
            self.nodes[leader].change_config(voters, learners)
        except (NotLeader, ConfigChangeInProgress, Busy, ValueError):
            return None
        self.retired |= before - voters - learners
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


class NoDedupSessionTable(SessionTable):
    """A deliberately broken session table for the negative control: it records results
    but never recognises a retry, so a retried write executes again."""

    def lookup(self, client_id: str, sequence: int) -> tuple[int, tuple | None]:
        return NEW, None

    def like(self) -> "NoDedupSessionTable":
        # A restored replica must stay as broken as the others: a real table there made
        # replicas execute different commands (found by the change-agreement checker).
        return NoDedupSessionTable(self.sessions_max, self.results_max,
                                   self.results_total_max, self.idle_ms)


class ReleaseDeletesSessionTable(SessionTable):
    """A deliberately broken release for the negative control: the released sessions are
    deleted, not kept as tombstones, so a late copy of a released write executes again."""

    def release(self, pairs: object) -> None:
        super().release(pairs)
        if type(pairs) is list and len(pairs) <= RELEASE_MAX:
            for pair in pairs:
                if type(pair) is list and len(pair) == 2:
                    self._sessions.pop(pair[0], None)

    def like(self) -> "ReleaseDeletesSessionTable":
        return ReleaseDeletesSessionTable(self.sessions_max, self.results_max,
                                          self.results_total_max, self.idle_ms)


class AckKeepsFloorSessionTable(SessionTable):
    """A deliberately broken acknowledgement for the negative control: the acknowledged
    results are dropped but the floor stays, so a late copy of an acknowledged write (a
    retry of a write its client gave up on) executes again."""

    def acknowledge(self, client_id: str, sequence: int, through: object) -> None:
        session = self._sessions.get(client_id)
        floor = session.floor if session is not None else None
        super().acknowledge(client_id, sequence, through)
        if session is not None:
            session.floor = floor

    def like(self) -> "AckKeepsFloorSessionTable":
        return AckKeepsFloorSessionTable(self.sessions_max, self.results_max,
                                         self.results_total_max, self.idle_ms)
