"""MultiPaxosReplica: stable-leader Multi-Paxos with gap-tolerant slots, sans I/O.

* Roles: every node is an acceptor and a learner; one proposer at a time leads.
* Phase 1 runs once per leadership, for every slot from the candidate's first unchosen slot
  up: one Prepare, Promises carrying every accepted (slot, ballot, value) at or above it.
  The new leader re-proposes, for each slot up to the highest reported, the value of the
  highest ballot, and a no-op where nothing was accepted (R7).
* Phase 2 runs per slot.  A slot carries a batch of commands; up to ``pipeline_window``
  slots beyond the chosen watermark are in flight; Accept/Accepted carry many slots.
  Slots are chosen independently and out of order; learners apply strictly in order.
* Configuration: a CONFIG entry at slot s governs every slot > s.  The leader proposes one
  only when nothing else is in flight (new commands wait meanwhile), and nothing after it
  until it is chosen (a pipeline barrier), so every in-flight slot's configuration is known.
  A candidate needs a phase-1 quorum of every configuration that can govern a slot at or
  above its first unchosen slot: its own, every chosen one it knows above that, and every
  configuration value any Promise reports (gathered until stable).
* Failure detection by ticks: randomized election timeouts, a pre-vote round (a quorum
  must also have lost the leader, and the candidate must not be behind them), leader
  stickiness (a node that heard from a leader recently ignores Prepares), randomized
  back-off after a rejected ballot (R6), check-quorum step-down.
* Followers learn "chosen" from the leader's watermark and chosen set for slots they hold at
  the leader's ballot, and fetch the rest (catch-up), or a snapshot below the leader's log.
* Lost chosen slots (R13): a node restored with a durable watermark beyond the slots on its
  disk neither promises nor campaigns until it has learned those slots again (from a
  leader's watermark, or by catching up from a candidate whose pre-vote says it knows
  more), as Raft refuses votes with a commit index beyond its log.

Send before persist (ready.py): the leader's Accepts and Heartbeats go out as
``early_messages``, before the Ready that carries its new entries is durable; its own
acceptance of a slot counts toward the quorum only in ``advance`` of that Ready, and only if
it still leads at the ballot it proposed at.  A Ready that changes the promise sends nothing
early (a ballot must be durable before anything is sent at it).  Acceptors persist before
they answer.  A candidate counts its own promise at once: its Prepares leave only after the
Ready that persists that promise.

Mechanics shared with Raft live in their own modules: batching.py (proposal queue, one byte
accounting), chunking.py (entries per message), readindex.py (read rounds, ReadIndex,
lease), timers.py (election timeout, intervals, check-quorum contact, fast failover after a
reset) and ready.py (the Outbox of every Ready, one outstanding Ready).  Here a read starts
its own round (its heartbeat carries the chosen set too) and check-quorum looks back once
per election timeout.  Phase 1 bookkeeping (promise pages, the configurations a candidate
must cover, the values to re-propose) and the slot -> configuration timeline: phase1.py.

Size: the protocol's message handlers and decisions, about 1,000 lines; every mechanism
the two protocols share, and this protocol's own bookkeeping, is in the modules above.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from sortedcontainers import SortedDict

from .ballot import ZERO_BALLOT, Ballot
from .batching import ProposalQueue
from .chunking import MessageBudget, chunk_entries
from .errors import Busy, ConfigChangeInProgress, NotLeader
from .log import (ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry, HardState, SlotLog,
                  SnapshotMeta, config_entry, entry_config)
from .messages import (Accept, Accepted, CatchupReply, CatchupRequest, Heartbeat,
                       HeartbeatReply, InstallSnapshot, InstallSnapshotReply, Message, Nack,
                       Prepare, PreVote, PreVoteReply, Promise, TimeoutNow)
from .phase1 import ConfigTimeline, PhaseOne, promise_page
from .quorum import Config
from .readindex import PendingReads, ReadRounds
from .ready import ConfigChanged, Outbox, Ready, Role, RoleChanged
from .timers import ElectionTimer, Interval, PeerContact, ResetFailover
from .types import PeerProgress, ReplicaOptions, ReplicaStatus, Restored, Rng

__all__ = ["MultiPaxosReplica"]

class MultiPaxosReplica:
    """One Multi-Paxos node.  See the module docstring and DESIGN.md sections 2-3."""

    protocol = "multipaxos"

    def __init__(self, node_id: int, config: Config, options: ReplicaOptions,
                 rng: Rng, restored: Restored | None = None) -> None:
        assert node_id > 0, "node ids start at 1"
        self.node_id = node_id
        self.options = options
        self.limits = options.limits
        self.now = 0  # ticks since start

        restored = restored or Restored(HardState(), [], None)
        snapshot = restored.snapshot
        self.log = SlotLog(snapshot)
        for entry in restored.entries:
            if entry.index >= self.log.first_index:
                self.log.put(entry)
        self.promised = Ballot.unpack(restored.hard_state.term)
        self.configs = ConfigTimeline(snapshot.config if snapshot else config)
        # The commit hint is trusted only over entries actually present.
        hint = restored.hard_state.commit
        for slot in range(self.log.first_index, hint + 1):
            if self.log.get(slot) is None:
                break
            self._mark_chosen(slot, notify=False)
        # R13: a durable watermark beyond the slots present means the disk lost chosen
        # slots we had accepted (a fault beyond the model).  Our Promise would not report
        # them, so until they are learned again we neither promise nor campaign.
        self.lost_upto = hint if hint > self.log.chosen_upto else 0
        self.applied = snapshot.index if snapshot else 0

        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self.ballot = ZERO_BALLOT  # our ballot while candidate/leader
        self.max_round_seen = self.promised.round
        # Ticks since we heard from a leader.  With leases on, a booting node stays quiet
        # (grants no pre-vote, ignores Prepares) for one election timeout: it may have
        # acknowledged a leader's lease just before it crashed.
        self.leader_elapsed = 0 if options.lease_ticks else options.election_ticks
        self.election = ElectionTimer(options.election_ticks, rng)
        self.failover = ResetFailover(options.election_ticks, throttle=not options.pre_vote)

        # Pre-candidate / candidate state.
        self.votes: set[int] = set()
        self.phase1: PhaseOne | None = None
        self.force_election = False

        # Leader state.
        self.next_slot = self.log.chosen_upto + 1
        self.inflight: dict[int, set[int]] = {}
        self.sent_tick: dict[int, int] = {}
        self.backlog: SortedDict = SortedDict()  # re-proposals not yet sent (barrier)
        self.queue = ProposalQueue(self.limits)
        self.pending_config: Config | None = None
        self.barrier: int | None = None  # slot of an unchosen CONFIG entry we proposed
        self.leader_since = 0
        self.heartbeat = Interval(options.heartbeat_ticks)
        self.quorum_period = Interval(options.election_ticks)  # check-quorum, per period
        self.contact = PeerContact()
        self.peer_chosen: dict[int, int] = {}
        self.rounds = ReadRounds(options.election_ticks)  # heartbeat rounds (ctx)
        self.reads = PendingReads(self.limits.pending_reads_max)
        self.snapshot_sent: dict[int, int] = {}
        self.transfer_target: int | None = None
        self.transfer_deadline = Interval(options.election_ticks)

        # Follower catch-up.
        self.known_commit = self.log.chosen_upto
        self.catchup_tick = -options.election_ticks
        self.catchup_peer: int | None = None  # where to catch up from when no leader is known

        # Ready buffers.
        self._out = Outbox()
        self._own_unsynced: list[tuple[int, int]] = []   # (slot, ballot) we proposed...
        self._own_persisting: list[tuple[int, int]] = []  # ...handed out in the Ready
        self._entries: dict[int, Entry] = {}
        self._hs_dirty = False
        self._last_hs = restored.hard_state
        self._snapshot: tuple[SnapshotMeta, bytes] | None = None
        self._checked_upto = 0

    # ------------------------------------------------------------------ properties

    @property
    def term(self) -> int:
        """The round of the highest ballot promised (shared tooling calls it "term")."""
        return self.promised.round

    @property
    def commit_index(self) -> int:
        return self.log.chosen_upto

    @property
    def applied_index(self) -> int:
        return self.applied

    @property
    def config(self) -> Config:
        """The latest configuration known chosen (or proposed, on the leader)."""
        return self.configs.latest()

    def config_for(self, slot: int) -> Config:
        """The configuration that governs ``slot``: the latest CONFIG entry before it."""
        return self.configs.at(slot)

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        self.now += 1
        self.leader_elapsed += 1
        if self.role == Role.LEADER:
            self._tick_leader()
            return
        if self.election.tick():
            early = self.election.shortened      # the leader's connection was reset
            self.election.reset()
            self._start_election()
            if self.role != Role.FOLLOWER:       # (a learner does not campaign)
                self.failover.campaigned(self.election, self.now, early,
                                         self.role == Role.PRE_CANDIDATE)

    def stalled(self, ticks: int) -> None:
        """A stall of ``ticks`` ticks (``tick`` makes them up next): see timers.py."""
        if self.role == Role.LEADER:
            self.contact.shift(ticks)
        elif self.role == Role.FOLLOWER and self.leader_id is not None:
            self.election.hold(ticks)

    def step(self, msg: Message) -> None:
        if msg.to != self.node_id or msg.frm == self.node_id:
            return
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            return
        carried = _ENTRIES_CARRIED.get(type(msg))
        if carried is not None and not _configs_readable(getattr(msg, carried)):
            return      # as Raft does: a CONFIG entry that does not decode drops the message
        handler(self, msg)

    def propose(self, commands: Sequence[bytes]) -> None:
        """Queue commands for the next slots.  Raises NotLeader or Busy."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id if self.leader_id != self.node_id else None)
        if self.transfer_target is not None:
            raise Busy("leadership transfer in progress")
        self.queue.add(commands)

    def read_index(self, request_id: object) -> None:
        """Ask for a linearizable read point; a ReadState appears in a later Ready."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id if self.leader_id != self.node_id else None)
        self.reads.add(request_id, self.next_slot - 1, self.rounds.round + 1)
        self._broadcast_heartbeat()  # starts that round: one round per read
        self._confirm_reads()

    def lease_read_index(self) -> int | None:
        """The read point when the leader lease holds (options.lease_ticks > 0), else None."""
        if self.role != Role.LEADER or self.transfer_target is not None:
            return None
        if not self.rounds.lease_holds(self.now, self.options.lease_ticks,
                                       self._voter_configs(), self.node_id):
            return None
        point = self.next_slot - 1
        return point if self.log.chosen_upto >= point else None

    def change_config(self, voters: Iterable[int], learners: Iterable[int] = ()) -> None:
        """Start a membership change (joint consensus when the voters change)."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id if self.leader_id != self.node_id else None)
        current = self.config
        if self.pending_config is not None or self.barrier is not None or current.joint:
            raise ConfigChangeInProgress("a membership change is already in progress")
        voters, learners = frozenset(voters), frozenset(learners) - frozenset(voters)
        if not voters:
            raise ValueError("a configuration needs at least one voter")
        if voters == current.voters:
            target = Config(voters, frozenset(), learners)
        else:
            target = Config(voters, current.voters, learners)
        if target == current:
            return
        self.pending_config = target

    def transfer_leadership(self, target: int) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id if self.leader_id != self.node_id else None)
        if target == self.node_id:
            return
        if target not in self.config.voters:
            raise ValueError(f"node {target} is not a voter")
        self.transfer_target = target
        self.transfer_deadline.reset()
        self._maybe_send_timeout_now()

    def leader_unreachable(self, peer: int) -> None:
        """The shell's connection to ``peer`` was reset, which suggests its process is gone.
        If ``peer`` is our leader, campaign within a couple of ticks instead of after the
        election timeout; without leases also stop being sticky (timers.ResetFailover)."""
        if self.role != Role.FOLLOWER or peer != self.leader_id:
            return
        E = self.options.election_ticks
        lease = self.options.lease_ticks > 0
        voters = self.config_for(self.log.chosen_upto + 1).all_voters
        wait = E - self.leader_elapsed if lease else 0
        if not lease:
            self._become(Role.FOLLOWER, None)   # (restarts the election timer: first)
            self.leader_elapsed = E
        self.failover.schedule(self.election, self.now, voters, self.node_id, peer, wait)

    def compact(self, meta: SnapshotMeta) -> None:
        """The shell holds a durable snapshot through ``meta.index``; drop the log below it."""
        assert meta.index <= self.applied, (meta.index, self.applied)
        if meta.index < self.log.first_index:
            return
        self.log.compact(meta)
        self.configs.prune(meta.index, meta.config)

    # ------------------------------------------------------------------ outputs

    def has_ready(self) -> bool:
        if self._out.gate.outstanding:
            return False
        if self.role == Role.LEADER:
            self._fill_slots()
        return bool(self._out or self._entries or self._hs_dirty or self._snapshot
                    or self.applied < self.log.chosen_upto)

    def ready(self) -> Ready | None:
        """Drain outputs, or None when there is nothing to do.  Raises ContractViolation
        while the previous Ready has not been advanced."""
        self._out.gate.check_ready()
        if not self.has_ready():
            return None
        ready = Ready()
        durable_promise = self._last_hs.term  # every earlier Ready is persisted
        if self._hs_dirty:
            self._last_hs = HardState(self.promised.pack(), 0, self.log.chosen_upto)
            ready.hard_state = self._last_hs
            self._hs_dirty = False
        if self._snapshot is not None:
            ready.snapshot, ready.snapshot_data = self._snapshot
            self._snapshot = None
        if self._entries:
            ready.entries = [self._entries[i] for i in sorted(self._entries)]
            self._entries = {}
        self._out.fill(ready, promise_durable=self._last_hs.term == durable_promise)
        self._own_persisting, self._own_unsynced = self._own_unsynced, []
        if self.applied < self.log.chosen_upto:
            ready.committed = list(self.log.range(self.applied + 1, self.log.chosen_upto + 1))
            assert len(ready.committed) == self.log.chosen_upto - self.applied
            self.applied = self.log.chosen_upto
        return self._out.gate.hand_out(ready)

    def advance(self, ready: Ready) -> None:
        """Outputs were persisted, sent and applied: our acceptance of the slots we proposed
        in ``ready`` is durable and counts now.  Raises ContractViolation unless ``ready``
        is the outstanding Ready."""
        self._out.gate.take_back(ready)
        own, self._own_persisting = self._own_persisting, []
        if own and self.role == Role.LEADER:
            for slot, ballot in own:
                self._count_own(slot, ballot)
            self._advance_chosen()

    def status(self) -> ReplicaStatus:
        leading = self.role == Role.LEADER
        progress = {}
        if leading:
            progress = {peer: PeerProgress(self.peer_chosen.get(peer, 0), self.next_slot,
                                           self.now - self.contact.last(peer, self.leader_since))
                        for peer in sorted(self._peers())}
        return ReplicaStatus(
            role=self.role, term=self.term, leader=self.leader_id,
            commit_index=self.log.chosen_upto, applied_index=self.applied,
            last_index=max(self.log.last_index, self.log.chosen_upto),
            first_index=self.log.first_index, config=self.config.describe(),
            ticks_since_leader=0 if leading else self.leader_elapsed,
            holes=self.log.holes(limit=16), ballot=str(self.promised), progress=progress,
            early_campaigns=self.failover.early_campaigns)

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        log = self.log
        assert log.chosen_upto >= log.first_index - 1
        # Chosen slots are never removed but by compaction: check each once.
        for slot in range(max(log.first_index, self._checked_upto + 1), log.chosen_upto + 1):
            assert log.get(slot) is not None, f"chosen slot {slot} missing on {self.node_id}"
        self._checked_upto = log.chosen_upto
        for slot in log.chosen_above:
            assert slot > log.chosen_upto + 1 and log.get(slot) is not None
        assert self.applied <= log.chosen_upto
        assert self.promised.round <= self.max_round_seen
        if self.role == Role.LEADER:
            assert self.ballot == self.promised, (self.ballot, self.promised)
            assert self.ballot.node_id == self.node_id
            assert self.leader_id == self.node_id
            for slot in self.inflight:
                assert not log.is_chosen(slot), slot
                assert log.get(slot).term == self.ballot.pack()
                assert slot < self.next_slot
                if self.barrier is not None:
                    assert slot <= self.barrier, (slot, self.barrier)
            for slot in self.backlog:
                assert slot < self.next_slot and slot not in self.inflight
        else:
            assert not self.inflight and not self.queue and not self.reads
        if self.role in (Role.CANDIDATE, Role.LEADER):
            assert self.ballot.node_id == self.node_id

    # ------------------------------------------------------------------ elections

    def _voter(self) -> bool:
        config = self.config_for(self.log.chosen_upto + 1)
        return self.node_id in config.all_voters

    def _lost_slots(self) -> bool:
        """True while chosen slots this disk lost (R13) are not learned again."""
        if self.lost_upto and self.log.chosen_upto >= self.lost_upto:
            self.lost_upto = 0  # repaired: every slot up to the old watermark is back
        return bool(self.lost_upto)

    def _start_election(self) -> None:
        if not self._voter():
            self._ask_chosen_upto()
            return
        if self._lost_slots():
            return
        if self.options.pre_vote and not self.force_election:
            self._become(Role.PRE_CANDIDATE, None)
            self.votes = {self.node_id}
            ballot = Ballot(self.max_round_seen + 1, self.node_id)
            for peer in self._election_peers():
                self._send(PreVote(self.node_id, peer, ballot, self.log.chosen_upto + 1))
            self._check_pre_votes()
        else:
            self._prepare()

    def _ask_chosen_upto(self) -> None:
        """A node that is no voter and hears no leader asks the voters it knows how far
        they know slots chosen, when it may lag: it knows of slots chosen, or holds slots
        accepted, beyond its chosen watermark.

        It may lag behind a configuration that made it a voter: a Multi-Paxos node follows
        a configuration only once it knows it chosen, so the new voters may all still
        think themselves learners (or not even members), and nobody campaigns, while the
        one node that knows (a removed leader, killed before its hand-over) stays quiet.
        The reply's watermark makes it catch up from whoever knows more
        (``on_catchup_reply``).  A node that knows of nothing newer (a learner or a
        removed node that caught up: membership_joint.txt, r4_removed_node.txt) asks
        nobody."""
        if max(self.known_commit, self.log.last_index) <= self.log.chosen_upto:
            return
        if self.leader_id is not None:
            self._become(Role.FOLLOWER, None)   # silent for an election timeout: gone
        for peer in sorted(self._election_peers()):
            self._send(CatchupRequest(self.node_id, peer, self.promised, ()))

    def _election_peers(self) -> set[int]:
        config = self.config_for(self.log.chosen_upto + 1)
        return (config.all_voters | self._chosen_configs_above_members()) - {self.node_id}

    def _chosen_configs_above_members(self) -> frozenset[int]:
        return frozenset().union(*(config.all_voters for config
                                   in self.configs.chosen_from(self.log.chosen_upto + 1)))

    def _check_pre_votes(self) -> None:
        if self.role != Role.PRE_CANDIDATE:
            return
        if self.config_for(self.log.chosen_upto + 1).is_quorum(self.votes):
            self._prepare()

    def _prepare(self) -> None:
        self.force_election = False
        self.ballot = Ballot(max(self.max_round_seen, self.promised.round) + 1, self.node_id)
        self._promise(self.ballot)
        self._become(Role.CANDIDATE, None)
        from_slot = self.log.chosen_upto + 1
        force = self.transfer_requested
        self.transfer_requested = False
        peers = self._election_peers()
        own = promise_page(self.log, self.node_id, self.node_id, self.ballot, from_slot, None)
        self.phase1 = PhaseOne(self.ballot, from_slot, own, peers)
        for peer in sorted(peers):
            self._send(Prepare(self.node_id, peer, self.ballot, from_slot, force))
        self._check_promises()

    transfer_requested = False

    def _promise(self, ballot: Ballot) -> None:
        if ballot > self.promised:
            self.promised = ballot
            self._hs_dirty = True
        self.max_round_seen = max(self.max_round_seen, ballot.round)

    def _check_promises(self) -> None:
        """Ask every voter the promises so far show we need; lead once a quorum of each
        configuration that can govern a slot from our first unchosen one up promised."""
        phase1 = self.phase1
        if self.role != Role.CANDIDATE or phase1 is None:
            return
        from_slot = phase1.from_slot
        configs = phase1.configs([self.config_for(from_slot),
                                  *self.configs.chosen_from(from_slot)])
        for peer in phase1.unasked(configs):
            self._send(Prepare(self.node_id, peer, self.ballot, from_slot, False))
        if phase1.won(configs):
            self._become_leader()

    def _become(self, role: str, leader: int | None) -> None:
        was_leader = self.role == Role.LEADER
        if was_leader and role != Role.LEADER:
            self._drop_leader_state()
        changed = role != self.role or leader != self.leader_id
        self.role = role
        self.leader_id = leader
        if role != Role.CANDIDATE:
            self.phase1 = None
        if role != Role.LEADER:
            self.election.restart()
        if changed:
            self._out.events.append(RoleChanged(role, self.term, leader))

    def _drop_leader_state(self) -> None:
        dropped = self.queue.drop_all()
        if dropped is not None:
            self._out.events.append(dropped)
        self.inflight.clear()
        self.sent_tick.clear()
        self.backlog.clear()
        self.configs.proposed.clear()
        self.pending_config = None
        self.barrier = None
        self.reads.clear()
        self.transfer_target = None

    def _become_leader(self) -> None:
        phase1 = self.phase1
        from_slot = phase1.from_slot
        best = phase1.highest_values()
        # Slots another acceptor already compacted into a snapshot are chosen, but we do not
        # hold their values: we cannot lead; fetch them and try again later.
        compacted = phase1.compacted_at(self.node_id)
        if compacted is not None:
            self._send(CatchupRequest(self.node_id, compacted, self.ballot, (from_slot,)))
            self._become(Role.FOLLOWER, None)
            return
        self._become(Role.LEADER, self.node_id)
        self.leader_elapsed = 0
        self.leader_since = self.now
        self.heartbeat.reset()
        self.quorum_period.reset()
        self.contact.clear()
        self.rounds.clear_acks()
        self.snapshot_sent = {}
        # Cover every slot anyone reported, and every slot we already know chosen (catch-up
        # replies may have taught us some while we were collecting promises).
        top = max([from_slot - 1, self.log.chosen_upto, *best, *self.log.chosen_above])
        mine = self.ballot.pack()
        for slot in range(from_slot, top + 1):
            if self.log.is_chosen(slot):
                continue  # chosen out of order and known here: nothing to decide
            value = best.get(slot)
            if value is None:
                entry = Entry(slot, mine, ENTRY_NOOP, ())
            else:
                entry = Entry(slot, mine, value.kind, value.payload)
            self.backlog[slot] = entry
        self.next_slot = top + 1
        self._fill_slots()
        self._broadcast_heartbeat()
        self._hand_over_if_removed()

    # ------------------------------------------------------------------ leader

    def _peers(self) -> frozenset[int]:
        members = self.config.members | self.config_for(self.next_slot).members
        return members - {self.node_id}

    def _voter_configs(self) -> list[Config]:
        """Configurations whose quorums the leader must keep (check-quorum, reads)."""
        first = self.config_for(self.log.chosen_upto + 1)
        last = self.config_for(self.next_slot)
        return [first] if first == last else [first, last]

    def _tick_leader(self) -> None:
        heartbeat_due = self.heartbeat.tick()
        if self.transfer_target is not None and self.transfer_deadline.tick():
            self.transfer_target = None  # abandoned; a removed leader tries again at once
            self._hand_over_if_removed()
        if self.quorum_period.tick():
            # Check-quorum once per election timeout, over the period that just ended.
            since = self.now - self.options.election_ticks
            if self.options.check_quorum and not self.contact.quorum_since(
                    since, self._voter_configs(), self.node_id):
                self._become(Role.FOLLOWER, None)
                return
        if heartbeat_due:
            self._broadcast_heartbeat()
            self._retransmit()

    def _broadcast_heartbeat(self) -> None:
        """Start a read round (readindex.py) and tell every peer what is chosen."""
        ctx = self.rounds.start(self.now)
        chosen = tuple(sorted(s for s in self.log.chosen_above
                              if self.log.get(s).term == self.ballot.pack()))
        for peer in self._peers():
            self._out.early.append(Heartbeat(self.node_id, peer, self.ballot,
                                         self.log.chosen_upto, chosen, ctx))

    def _can_send(self, slot: int) -> bool:
        if self.barrier is not None:
            return False
        return slot <= self.log.chosen_upto + self.limits.pipeline_window

    def _fill_slots(self) -> None:
        """Move re-proposals and queued commands into slots, honouring window and barrier."""
        new: list[Entry] = []
        mine = self.ballot.pack()
        while self.backlog:
            slot, entry = self.backlog.peekitem(0)
            if not self._can_send(slot):
                break
            del self.backlog[slot]
            if self.log.is_chosen(slot):
                continue  # learned chosen meanwhile (catch-up): nothing left to decide
            new.append(self._propose_entry(entry))
        if not self.backlog:
            # The newest configuration is joint and chosen (we proposed it, re-proposed it
            # from phase 1, or learned it chosen): finish the change.  Only the newest: a
            # re-chosen OLD joint configuration must not bring its voters back (M1/M2).
            config = self.config
            if (config.joint and self.pending_config is None and self.barrier is None
                    and self.role == Role.LEADER):
                self.pending_config = Config(config.voters, frozenset(), config.learners)
            if self.pending_config is not None and not self.inflight and self.barrier is None:
                entry = config_entry(self.next_slot, mine, self.pending_config)
                self.pending_config = None
                self.next_slot += 1
                new.append(self._propose_entry(entry))
            # While a change waits for the pipeline to drain, new commands wait too (else a
            # steady stream of proposals would keep slots in flight and starve it).
            while self.queue and self.pending_config is None and self._can_send(self.next_slot):
                entry = Entry(self.next_slot, mine, ENTRY_NORMAL, self.queue.take_batch())
                self.next_slot += 1
                new.append(self._propose_entry(entry))
        if new:
            self._send_accepts(new, self._peers())
            self._advance_chosen()

    def _propose_entry(self, entry: Entry) -> Entry:
        self.log.put(entry)
        self._entries[entry.index] = entry
        self.inflight[entry.index] = set()
        self.sent_tick[entry.index] = self.now
        if entry.kind == ENTRY_CONFIG:
            self.barrier = entry.index
            self.configs.proposed[entry.index] = entry_config(entry)
        self._accept_own(entry)
        return entry

    def _accept_own(self, entry: Entry) -> None:
        """Our acceptance of a slot we propose: it counts once the Ready carrying it is
        durable (``advance``), since its Accepts may leave before that."""
        self._own_unsynced.append((entry.index, entry.term))

    def _count_own(self, slot: int, ballot: int) -> None:
        """Our acceptance of ``slot`` at ``ballot`` is durable: count it, if the slot is
        still in flight at that ballot (not chosen meanwhile, no new leadership)."""
        acks = self.inflight.get(slot)
        entry = self.log.get(slot)
        if (acks is not None and ballot == self.ballot.pack() and entry is not None
                and entry.term == ballot):
            acks.add(self.node_id)
            self._check_chosen(slot)

    def _send_accepts(self, entries: list[Entry], peers: Iterable[int]) -> None:
        chunks = chunk_entries(entries, self.limits)
        commit = self.log.chosen_upto
        for peer in peers:
            for part in chunks:
                self._out.early.append(Accept(self.node_id, peer, self.ballot, part, commit))

    def _retransmit(self) -> None:
        """Resend Accepts for in-flight slots to peers that have not acknowledged them."""
        stale = [slot for slot, tick in self.sent_tick.items()
                 if self.now - tick >= self.options.heartbeat_ticks]
        if not stale:
            return
        per_peer: dict[int, list[Entry]] = {}
        for slot in sorted(stale):
            self.sent_tick[slot] = self.now
            acks = self.inflight[slot]
            for peer in self.config_for(slot).members:
                if peer not in acks and peer != self.node_id:
                    per_peer.setdefault(peer, []).append(self.log.get(slot))
        for peer, entries in per_peer.items():
            self._send_accepts(entries, (peer,))

    def _check_chosen(self, slot: int) -> None:
        acks = self.inflight.get(slot)
        if acks is not None and self.config_for(slot).is_quorum(acks):
            del self.inflight[slot]
            del self.sent_tick[slot]
            if slot == self.barrier:
                self.barrier_acks = frozenset(acks)
            self._mark_chosen(slot)

    def _advance_chosen(self) -> None:
        """After chosen slots changed on the leader: barrier, reads, our own removal.
        (Leaving a joint configuration is decided in ``_fill_slots``, once nothing newer
        is pending.)"""
        if self.barrier is not None and self.log.is_chosen(self.barrier):
            self.configs.proposed.pop(self.barrier)
            self.barrier = None
        self._confirm_reads()
        self._hand_over_if_removed()

    barrier_acks: frozenset[int] = frozenset()  # who accepted the last CONFIG entry chosen

    def _hand_over_if_removed(self) -> None:
        """The newest configuration is chosen and we are not among its voters (removed, or
        made a learner): hand leadership to one of its voters (Raft thesis 4.2.2).

        Unlike a Raft voter, which follows a configuration as soon as it holds the entry,
        a Multi-Paxos node follows one only once it knows it chosen; a voter that lags
        does not even know it is one, and would never campaign.  So this is a leadership
        transfer: tell every peer the new watermark, keep leading (refusing proposals)
        until the target reports every chosen slot, then TimeoutNow; its forced Prepare
        deposes us.  A transfer that does not complete within an election timeout is
        retried with the voter then best placed (``_tick_leader``)."""
        config = self.config
        if (self.role != Role.LEADER or self.barrier is not None or config.joint
                or self.node_id in config.voters or self.transfer_target is not None):
            return
        self._broadcast_heartbeat()
        recent = self.now - self.options.election_ticks
        # Best placed: heard lately, furthest along, holding the CONFIG entry; then by id.
        target = max(config.voters, key=lambda peer: (
            self.contact.last(peer, recent - 1) >= recent, self.peer_chosen.get(peer, 0),
            peer in self.barrier_acks, peer))
        self.transfer_target = target
        self.transfer_deadline.reset()
        self._maybe_send_timeout_now()

    def _maybe_send_timeout_now(self) -> None:
        """Tell the transfer target to campaign once it holds every slot chosen.  We keep
        leading (refusing proposals) until its forced Prepare arrives; a TimeoutNow that
        is lost is sent again on the target's next heartbeat reply, and the transfer is
        abandoned after an election timeout (``_tick_leader``), as in Raft."""
        target = self.transfer_target
        if target is None:
            return
        if self.peer_chosen.get(target, 0) >= self.next_slot - 1 and not self.inflight:
            self._send(TimeoutNow(self.node_id, target, self.ballot.pack()))

    # ------------------------------------------------------------------ learning

    def _mark_chosen(self, slot: int, notify: bool = True) -> None:
        if self.log.is_chosen(slot):
            return
        self.log.mark_chosen(slot)
        # The chosen watermark is part of the hard state: a restarted node must know which
        # configuration governs its next slot (the voters of an older one may all be gone).
        self._hs_dirty = True
        entry = self.log.get(slot)
        if entry.kind == ENTRY_CONFIG:
            config = entry_config(entry)
            self.configs.chosen[slot] = config
            if notify:
                self._out.events.append(ConfigChanged(config, slot))

    def _learn_commit(self, ballot: Ballot, commit: int, chosen: Iterable[int]) -> None:
        """Mark as chosen what the leader says is chosen, where we hold its ballot's value."""
        mine = ballot.pack()
        log = self.log
        self.known_commit = max(self.known_commit, commit)
        slot = log.chosen_upto + 1
        while slot <= commit:
            entry = log.get(slot)
            if entry is None or entry.term != mine:
                break
            self._mark_chosen(slot)
            slot += 1
        for slot in chosen:
            entry = log.get(slot)
            if entry is not None and entry.term == mine and slot >= log.first_index:
                self._mark_chosen(slot)
        if self.known_commit > log.chosen_upto and self.leader_id is not None:
            self._request_catchup()

    def _request_catchup(self) -> None:
        if self.now - self.catchup_tick < self.options.heartbeat_ticks:
            return
        self.catchup_tick = self.now
        missing = []
        slot = self.log.chosen_upto + 1
        while slot <= self.known_commit and len(missing) < self.limits.entries_per_message_max:
            if not self.log.is_chosen(slot):
                missing.append(slot)
            slot += 1
        source = self.leader_id if self.leader_id is not None else self.catchup_peer
        if missing and source is not None and source != self.node_id:
            self._send(CatchupRequest(self.node_id, source, self.promised, tuple(missing)))

    def _confirm_reads(self) -> None:
        if self.reads:
            confirmed = self.rounds.confirmed(self._voter_configs(), self.node_id)
            self._out.reads.extend(self.reads.release(confirmed, self.log.chosen_upto))

    # ------------------------------------------------------------------ handlers

    def _heard_leader(self, ballot: Ballot) -> None:
        self._promise(ballot)
        if self.role != Role.FOLLOWER or self.leader_id != ballot.node_id:
            self._become(Role.FOLLOWER, ballot.node_id)
        self.election.restart()
        self.leader_elapsed = 0

    def _sticky(self) -> bool:
        """True while we recently heard from a live leader (ignore campaigns)."""
        return self.leader_elapsed < self.options.election_ticks

    def on_pre_vote(self, msg: PreVote) -> None:
        self.max_round_seen = max(self.max_round_seen, msg.ballot.round - 1)
        lost = self._lost_slots()
        if lost and msg.first_unchosen - 1 > self.log.chosen_upto and self.leader_id is None:
            # Repair from the candidate: it knows slots chosen that we lost or lack.
            self.known_commit = max(self.known_commit, msg.first_unchosen - 1)
            self.catchup_peer = msg.frm
            self._request_catchup()
        granted = (not self._sticky() and self.role != Role.LEADER and not lost
                   and msg.first_unchosen >= self.log.chosen_upto + 1)
        if granted:
            self.election.cancel_shortcut()  # one early candidate at a time (timers.py)
        self._send(PreVoteReply(self.node_id, msg.frm, msg.ballot, granted,
                                self.log.chosen_upto))

    def on_pre_vote_reply(self, msg: PreVoteReply) -> None:
        if msg.chosen_upto > self.log.chosen_upto and self.leader_id is None:
            # We are behind (perhaps even on who the voters are, when the configuration
            # changed in the slots we miss): catch up from whoever knows more, learner or not.
            self.known_commit = max(self.known_commit, msg.chosen_upto)
            self.catchup_peer = msg.frm
            self._request_catchup()
        if self.role == Role.PRE_CANDIDATE and msg.granted:
            self.votes.add(msg.frm)
            self._check_pre_votes()

    def on_prepare(self, msg: Prepare) -> None:
        self.max_round_seen = max(self.max_round_seen, msg.ballot.round)
        if self._lost_slots():
            return  # R13: our Promise would miss chosen slots we lost
        if not msg.force and self._sticky() and msg.frm != self.leader_id \
                and self.role != Role.LEADER:
            return
        if self.role == Role.LEADER and not msg.force and msg.ballot > self.promised \
                and self.options.check_quorum:
            # A healthy leader (check-quorum keeps it honest) ignores campaigns.
            return
        if msg.ballot < self.promised:
            self._send(Nack(self.node_id, msg.frm, msg.ballot, self.promised))
            return
        if msg.ballot > self.promised or self.role != Role.FOLLOWER:
            if self.role != Role.FOLLOWER or self.leader_id != msg.ballot.node_id:
                self._become(Role.FOLLOWER, None)
        self._promise(msg.ballot)
        self.election.restart()
        self._send(promise_page(self.log, self.node_id, msg.frm, msg.ballot, msg.from_slot,
                                MessageBudget(self.limits.message_bytes_max)))

    def on_promise(self, msg: Promise) -> None:
        if self.role != Role.CANDIDATE or self.phase1 is None or not self.phase1.add_page(msg):
            return
        self.election.restart()  # phase 1 is making progress: do not abandon it
        if msg.next_slot:
            # More accepted slots follow: ask for the next page (same ballot, idempotent).
            self._send(Prepare(self.node_id, msg.frm, self.ballot, msg.next_slot, True))
            return
        self._check_promises()

    def on_nack(self, msg: Nack) -> None:
        self.max_round_seen = max(self.max_round_seen, msg.promised.round)
        if msg.ballot != self.ballot or self.role not in (Role.CANDIDATE, Role.LEADER):
            return
        if msg.promised > self.promised:
            self._promise(msg.promised)
            # Back off for a fresh random timeout before trying again (dueling proposers).
            self._become(Role.FOLLOWER, None)
            self.election.redraw()

    def on_accept(self, msg: Accept) -> None:
        if msg.ballot < self.promised:
            self._send(Nack(self.node_id, msg.frm, msg.ballot, self.promised))
            return
        self._heard_leader(msg.ballot)
        slots = []
        first = self.log.first_index
        for entry in msg.entries:
            if entry.index < first:
                slots.append(entry.index)
                continue
            if not self.log.is_chosen(entry.index):
                self.log.put(entry)
                self._entries[entry.index] = entry
            slots.append(entry.index)
        self._send(Accepted(self.node_id, msg.frm, msg.ballot, tuple(slots)))
        self._learn_commit(msg.ballot, msg.commit, ())

    def on_accepted(self, msg: Accepted) -> None:
        if self.role != Role.LEADER or msg.ballot != self.ballot:
            return
        self._heard_peer(msg.frm)
        for slot in msg.slots:
            acks = self.inflight.get(slot)
            if acks is not None:
                acks.add(msg.frm)
                self._check_chosen(slot)
        self._advance_chosen()

    def on_heartbeat(self, msg: Heartbeat) -> None:
        if msg.ballot < self.promised:
            self._send(Nack(self.node_id, msg.frm, msg.ballot, self.promised))
            return
        self._heard_leader(msg.ballot)
        self._learn_commit(msg.ballot, msg.commit, msg.chosen)
        self._send(HeartbeatReply(self.node_id, msg.frm, msg.ballot, msg.ctx,
                                  self.log.chosen_upto, self.log.last_index))

    def _heard_peer(self, peer: int) -> None:
        self.contact.heard(peer, self.now)

    def on_heartbeat_reply(self, msg: HeartbeatReply) -> None:
        if self.role != Role.LEADER or msg.ballot != self.ballot:
            return
        self._heard_peer(msg.frm)
        self.peer_chosen[msg.frm] = msg.chosen_upto
        self.rounds.ack(msg.frm, msg.ctx)
        if msg.chosen_upto < self.log.first_index - 1:
            self._send_snapshot(msg.frm)
        self._confirm_reads()
        if msg.frm == self.transfer_target:
            self._maybe_send_timeout_now()

    def on_catchup_request(self, msg: CatchupRequest) -> None:
        if not msg.slots:            # a non-voter asks how far we know (_ask_chosen_upto)
            self._send(CatchupReply(self.node_id, msg.frm, self.promised, (),
                                    self.log.chosen_upto))
            return
        entries = []
        budget = MessageBudget.for_limits(self.limits)
        for slot in msg.slots:
            if slot < self.log.first_index:
                self._send_snapshot(msg.frm)
                return
            if self.log.is_chosen(slot):
                entry = self.log.get(slot)
                if not budget.admit(entry):
                    break  # the follower asks again for the rest
                entries.append(entry)
        if entries:
            self._send(CatchupReply(self.node_id, msg.frm, self.promised, tuple(entries),
                                    self.log.chosen_upto))

    def on_catchup_reply(self, msg: CatchupReply) -> None:
        # Entries in a catch-up reply are chosen values; chosen is chosen, whatever ballot.
        before = self.log.chosen_upto
        for entry in msg.entries:
            if entry.index < self.log.first_index or self.log.is_chosen(entry.index):
                continue
            planned = self.backlog.get(entry.index)
            if planned is not None:
                assert planned.same_value(entry), entry.index
            if entry.index in self.inflight:
                # We lead and proposed this slot: phase 1 must have found the chosen value.
                assert self.log.get(entry.index).same_value(entry), entry.index
                del self.inflight[entry.index]
                del self.sent_tick[entry.index]
                self._mark_chosen(entry.index)
                continue
            self.log.put(entry)
            self._entries[entry.index] = entry
            self._mark_chosen(entry.index)
        self.known_commit = max(self.known_commit, msg.commit)
        if self.log.chosen_upto > before:
            # Progress: ask for the next range now.  (A duplicate or stale reply makes no
            # progress and so asks nothing: requests never multiply.)
            self.catchup_tick = -self.options.election_ticks
        if self.role == Role.LEADER:
            self._advance_chosen()
        elif self.known_commit > self.log.chosen_upto:
            if self.leader_id is None:
                self.catchup_peer = msg.frm
            self._request_catchup()

    def _send_snapshot(self, peer: int) -> None:
        snapshot = self.log.snapshot
        if snapshot is None:
            return
        last = self.snapshot_sent.get(peer)
        if last is not None and self.now - last < self.options.election_ticks:
            return
        self.snapshot_sent[peer] = self.now
        self._send(InstallSnapshot(self.node_id, peer, self.promised.pack(), snapshot.index,
                                   snapshot.term, snapshot.config, b""))

    def on_install_snapshot(self, msg: InstallSnapshot) -> None:
        if msg.index > self.log.chosen_upto:
            if self.role == Role.LEADER:
                # A snapshot requested while catching up as a candidate arrived after we won:
                # we are too far behind to lead; hand over and install it as a follower.
                self._become(Role.FOLLOWER, None)
            meta = SnapshotMeta(msg.index, msg.snap_term, msg.config)
            self.log.compact(meta)
            self.configs.prune(msg.index, msg.config)
            self.applied = msg.index
            self.known_commit = max(self.known_commit, msg.index)
            self._entries = {i: e for i, e in self._entries.items() if i > msg.index}
            self._snapshot = (meta, msg.data)
            self._hs_dirty = True
            self._out.events.append(ConfigChanged(msg.config, msg.index))
        self._send(InstallSnapshotReply(self.node_id, msg.frm, self.promised.pack(),
                                        self.log.chosen_upto))

    def on_install_snapshot_reply(self, msg: InstallSnapshotReply) -> None:
        if self.role == Role.LEADER:
            self.peer_chosen[msg.frm] = max(self.peer_chosen.get(msg.frm, 0), msg.index)
            self.snapshot_sent.pop(msg.frm, None)

    def on_timeout_now(self, msg: TimeoutNow) -> None:
        if msg.term < self.promised.pack() or not self._voter() or self._lost_slots():
            return
        self.force_election = True
        self.transfer_requested = True
        self.election.redraw()
        self._prepare()

    # ------------------------------------------------------------------ plumbing

    def _send(self, msg: Message) -> None:
        self._out.messages.append(msg)


_HANDLERS = {
    PreVote: MultiPaxosReplica.on_pre_vote,
    PreVoteReply: MultiPaxosReplica.on_pre_vote_reply,
    Prepare: MultiPaxosReplica.on_prepare,
    Promise: MultiPaxosReplica.on_promise,
    Nack: MultiPaxosReplica.on_nack,
    Accept: MultiPaxosReplica.on_accept,
    Accepted: MultiPaxosReplica.on_accepted,
    Heartbeat: MultiPaxosReplica.on_heartbeat,
    HeartbeatReply: MultiPaxosReplica.on_heartbeat_reply,
    CatchupRequest: MultiPaxosReplica.on_catchup_request,
    CatchupReply: MultiPaxosReplica.on_catchup_reply,
    InstallSnapshot: MultiPaxosReplica.on_install_snapshot,
    InstallSnapshotReply: MultiPaxosReplica.on_install_snapshot_reply,
    TimeoutNow: MultiPaxosReplica.on_timeout_now,
}

# Messages that carry entries from a peer, and the field that holds them.
_ENTRIES_CARRIED = {Accept: "entries", CatchupReply: "entries", Promise: "accepted"}


def _configs_readable(entries) -> bool:
    """Whether every CONFIG entry among ``entries`` decodes (the wire decoder checks types
    only; a bad one would stop the node where it is applied or chosen)."""
    for entry in entries:
        if entry.kind == ENTRY_CONFIG:
            try:
                entry_config(entry)
            except Exception:  # cbor2 raises several types on garbage: all mean "bad entry"
                return False
    return True
