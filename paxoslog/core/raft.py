"""``RaftReplica``: Raft (Figure 2 of the paper) behind the sans-I/O ``Replica`` interface.

On top of the paper: PreVote and CheckQuorum (thesis 9.6, 6.2), leader stickiness (4.2.3),
a no-op entry on election, leader transfer with TimeoutNow (3.10), ReadIndex and lease reads
(6.4), joint-consensus membership with learners (4.3), log compaction and InstallSnapshot (5),
proposal batching, pipelined replication with a per-follower window and fast back-off.

Caller's obligations are the ``Ready`` contract (ready.py): persist, then send, then apply,
then ``advance``.  Design choices the shell and the simulator rely on:

* **Send before persist.**  The leader's AppendEntries (with its new entries, and its
  heartbeats) go out as ``early_messages``, before the Ready that persists those entries is
  durable; the leader counts its own log toward the commit quorum only up to what the shell
  reported durable (``RaftLog.durable_upto``, moved in ``advance``).  A Ready that changes
  the term or vote sends nothing early: a term must be durable before anything is sent in
  it, or a restart could lead the same term again with other entries.  Followers persist
  before they acknowledge, as before.
* **Configurations apply on append**, not on commit (thesis 4.1); truncating an uncommitted
  CONFIG entry reverts to the previous one.  A leader appends no CONFIG entry before an entry
  of its own term is committed (the R3 fix), and leaves a joint configuration automatically.
* **Votes.**  RequestVote from a node outside the configuration is ignored (a removed server
  cannot disrupt).  Leader traffic (AppendEntries, InstallSnapshot) is accepted from any
  sender whose term is current: there is one leader per term, and a lagging node may not yet
  know the configuration that added its leader.  Like etcd-raft, a learner answers vote
  requests (a freshly promoted learner may be needed for a quorum before it learns of its
  promotion); a candidate only counts voters of its own configuration.
* **Restart.**  A restarted node ignores vote requests for its first election timeout (it
  may be part of a quorum that a leader's lease counts on).
  A node whose restored commit
  index lies beyond its restored log lost acknowledged entries (R13): it neither votes nor
  campaigns until a leader has sent them again.
* **Lost messages.**  A follower in pipelined replication whose in-flight entries stay
  unacknowledged for two heartbeat intervals goes back to probing from its match index.
* **Timing is ticks**; randomness only comes from the ``rng`` given to the constructor.
  Lease reads assume the shell delivers a tick for every tick interval of real time that
  passed (including after the process was paused), or they are not safe.

The log itself (entries above the snapshot, configuration entries, the unpersisted
suffix) is raftlog.py; each follower's replication flow control (probe, replicate,
snapshot) is progress.py.  Mechanics shared with Multi-Paxos live in their own modules:
batching.py, chunking.py, readindex.py (reads coalesce into one heartbeat round per Ready
here), timers.py (check-quorum here looks back one election timeout at every tick; fast
failover after a reset) and ready.py (the Outbox every Ready is assembled from, one
outstanding Ready).

Size: the protocol's message handlers and decisions, about 1,000 lines; every mechanism
the two protocols share, and this protocol's own bookkeeping, is in the modules above.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .batching import ProposalQueue
from .chunking import MessageBudget
from .errors import Busy, ConfigChangeInProgress, NotLeader
from .log import (ENTRY_CONFIG, ENTRY_KINDS, ENTRY_NOOP, ENTRY_NORMAL, Entry, HardState,
                  SnapshotMeta, config_entry, entry_config)
from .messages import (AppendEntries, AppendEntriesReply, InstallSnapshot,
                       InstallSnapshotReply, RequestVote, RequestVoteReply, TimeoutNow)
from .quorum import Config
from .progress import PROBE, REPLICATE, SNAPSHOT, Progress
from .raftlog import RaftLog
from .readindex import PendingReads, ReadRounds
from .ready import ConfigChanged, Outbox, Ready, Role, RoleChanged
from .timers import ElectionTimer, Interval, PeerContact, ResetFailover
from .types import PeerProgress, ReplicaOptions, ReplicaStatus, Restored, Rng

__all__ = ["RaftReplica"]


class RaftReplica:
    """One Raft node.  See the module docstring for the contract and the design choices."""

    def __init__(self, node_id: int, config: Config, options: ReplicaOptions, rng: Rng,
                 restored: Restored | None = None) -> None:
        if type(node_id) is not int or node_id <= 0:
            raise ValueError(f"node ids are positive integers (0 is 'no vote'), got {node_id!r}")
        if not isinstance(config, Config):
            raise ValueError(f"bootstrap configuration must be a Config, got {config!r}")
        self.node_id = node_id
        self._options = options
        self._limits = options.limits
        self._election_ticks = options.election_ticks

        # Persistent state (Figure 2) and the log (raftlog.py).
        self._term = 0
        self._vote = 0
        self._log = RaftLog(config)

        self._commit = 0
        self._emitted = 0      # last committed index handed out in a Ready
        self._applied = 0      # last committed index handed out in an advanced Ready
        self._pending_snapshot: SnapshotMeta | None = None
        self._pending_snapshot_data: bytes | None = None
        self._lost_upto = 0            # R13: restored commit index beyond the restored log

        if restored is not None:
            self._restore(restored)
        self._config_index, self._config = self._log.current_config()
        self._hs_emitted = HardState(self._term, self._vote, self._commit)
        # A restarted node may have acknowledged a leader just before it went down, and that
        # leader may still count on it (lease reads): it ignores vote requests during its
        # first election timeout, as if it had just heard from a leader.
        self._startup_lease = self._term > 0

        # Volatile state.
        self._role = self._follower_role()
        self._leader_id: int | None = None
        self._now = 0
        self._leader_heard_tick = 0
        self._heartbeat = Interval(options.heartbeat_ticks)
        self._votes: dict[int, bool] = {}
        self._out = Outbox()           # messages, early messages, reads, events; the gate

        # Leader state.
        self._progress: dict[int, Progress] = {}   # flow control per follower
        self._contact = PeerContact()  # when each follower last answered (check-quorum)
        self._queue = ProposalQueue(self._limits)
        self._term_start = 0           # index of this leader's no-op
        self._transfer_target: int | None = None
        self._transfer_deadline = Interval(self._election_ticks)
        self._leave_learners: tuple[int, frozenset[int]] | None = None
        self._rounds = ReadRounds(self._election_ticks)  # heartbeat rounds (ctx)
        self._read_round_needed = False
        self._pending_reads = PendingReads(self._limits.pending_reads_max)

        self._election = ElectionTimer(self._election_ticks, rng)
        self._failover = ResetFailover(self._election_ticks,
                                       throttle=not self._options.pre_vote)

    # ------------------------------------------------------------------ restore

    def _restore(self, restored: Restored) -> None:
        hard_state, entries, snapshot = restored
        self._log.restore(entries, snapshot)
        self._term, self._vote = hard_state.term, hard_state.vote
        last_term = self._log.last_term()
        if last_term > self._term:
            # The log was persisted without the hard state that accompanied it.  We may have
            # voted in that term: claim our own vote so we never vote twice in it.
            self._term, self._vote = last_term, self.node_id
        last, offset = self.last_index, self._log.offset
        if hard_state.commit > last:
            # We acknowledged entries we no longer have (a durability fault, R13): until a
            # leader has sent them again we must neither vote nor campaign, or our short log
            # could help elect a leader that lacks committed entries.
            self._lost_upto = hard_state.commit
        self._commit = max(offset, min(hard_state.commit, last))
        self._emitted = self._applied = offset

    # ------------------------------------------------------------------ properties

    @property
    def role(self) -> str:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> int | None:
        return self._leader_id

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def config(self) -> Config:
        return self._config

    @property
    def last_index(self) -> int:
        return self._log.last_index

    # ------------------------------------------------------------------ log helpers

    def _append(self, entries: Sequence[Entry], configs: dict[int, Config] | None = None) -> None:
        """Append entries that follow the last index; a CONFIG entry takes effect at once."""
        if self._log.append(entries, configs):
            self._on_config_change()

    def _truncate(self, index: int) -> None:
        """Drop every entry >= index (uncommitted, conflicting with the leader)."""
        assert index > self._commit, (index, self._commit)
        if self._log.truncate(index):
            self._on_config_change()

    # ------------------------------------------------------------------ roles and timers

    def _follower_role(self) -> str:
        return Role.LEARNER if self.node_id in self._config.learners else Role.FOLLOWER

    def _promotable(self) -> bool:
        """Only voters campaign: never a learner, never a node outside the configuration,
        never a node repairing a log that lost acknowledged entries.

        One exception (Raft thesis 4.1): while the newest configuration is not known to be
        committed, a voter of the one before it may still be needed to commit it (a
        removed leader killed just after appending it may be the only node holding it, and
        the others cannot win its vote with their shorter logs), so it campaigns too; its
        own vote counts only where it is a voter."""
        if self._lost_entries():
            return False
        if self.node_id in self._config.all_voters:
            return True
        if self._config_index > self._commit:
            _, before = self._log.config_at(self._config_index - 1)
            return self.node_id in before.all_voters
        return False

    def _lost_entries(self) -> bool:
        if self._lost_upto and self.last_index >= self._lost_upto:
            self._lost_upto = 0  # repaired: the leader sent the lost entries again
        return bool(self._lost_upto)

    def _set_role(self, role: str, leader: int | None) -> None:
        if role != self._role or leader != self._leader_id:
            self._out.events.append(RoleChanged(role, self._term, leader))
        self._role = role
        self._leader_id = leader

    def _heard_leader_recently(self) -> bool:
        """Within the minimum election timeout of a leader's message (or leading)."""
        if self._role == Role.LEADER:
            return True
        return (self._leader_id is not None
                and self._now - self._leader_heard_tick < self._election_ticks)

    def _in_lease(self) -> bool:
        """Leader stickiness: ignore higher-term votes while a live leader is known.  A leader
        only does so under CheckQuorum (otherwise it could never learn it was deposed)."""
        if self._role == Role.LEADER:
            return self._options.check_quorum
        if self._startup_lease and self._now < self._election_ticks:
            return True
        return self._heard_leader_recently()

    def _become_follower(self, term: int, leader: int | None) -> None:
        if term > self._term:
            self._term = term
            self._vote = 0
        if self._role == Role.LEADER:
            self._stop_leading()
        self._votes = {}
        self._set_role(self._follower_role(), leader)
        self._election.reset()
        if leader is not None:
            self._leader_heard_tick = self._now

    def _stop_leading(self) -> None:
        dropped = self._queue.drop_all()
        if dropped is not None:
            self._out.events.append(dropped)
        self._progress = {}
        self._contact.clear()
        self._pending_reads.clear()
        self._read_round_needed = False
        self._transfer_target = None
        self._leave_learners = None

    def _start_election(self, transfer: bool) -> None:
        if self._options.pre_vote and not transfer:
            self._votes = {self.node_id: True}
            self._set_role(Role.PRE_CANDIDATE, None)
            self._election.reset()
            if self._config.is_quorum((self.node_id,)):
                self._campaign(False)
                return
            self._request_votes(self._term + 1, pre=True, transfer=False)
        else:
            self._campaign(transfer)

    def _campaign(self, transfer: bool) -> None:
        self._term += 1
        self._vote = self.node_id
        self._votes = {self.node_id: True}
        self._set_role(Role.CANDIDATE, None)
        self._election.reset()
        if self._config.is_quorum((self.node_id,)):
            self._become_leader()
            return
        self._request_votes(self._term, pre=False, transfer=transfer)

    def _request_votes(self, term: int, pre: bool, transfer: bool) -> None:
        last_index, last_term = self.last_index, self._log.last_term()
        for peer in sorted(self._config.all_voters):
            if peer != self.node_id:
                self._send(RequestVote(self.node_id, peer, term, last_index, last_term,
                                              pre, transfer))

    def _become_leader(self) -> None:
        assert self._role == Role.CANDIDATE and self._vote == self.node_id
        self._set_role(Role.LEADER, self.node_id)
        self._votes = {}
        self._heartbeat.reset()
        self._transfer_target = None
        self._progress = {}
        self._contact.clear()
        self._rounds.clear_acks()
        self._sync_progress()
        noop = Entry(self.last_index + 1, self._term, ENTRY_NOOP, ())
        self._term_start = noop.index
        self._append([noop])
        self._maybe_commit()

    def _sync_progress(self) -> None:
        """Track exactly the members of the active configuration (leader only)."""
        members = self._config.members
        for peer in members:
            if peer != self.node_id and peer not in self._progress:
                self._progress[peer] = Progress(self.last_index + 1, self._now)
                self._contact.heard(peer, self._now)  # a grace period before check-quorum
        for peer in [p for p in self._progress if p not in members]:
            del self._progress[peer]
            self._contact.forget(peer)
            self._rounds.forget(peer)
            if self._transfer_target == peer:
                self._transfer_target = None

    def _on_config_change(self) -> None:
        index, config = self._log.current_config()
        if index == self._config_index and config == self._config:
            self._config = config  # the same configuration, now held by another record
            return
        self._config_index, self._config = index, config
        self._out.events.append(ConfigChanged(config, index))
        if self._role == Role.LEADER:
            self._sync_progress()
        elif self._role in (Role.FOLLOWER, Role.LEARNER):
            self._set_role(self._follower_role(), self._leader_id)
        elif not self._promotable():
            self._become_follower(self._term, None)

    # ------------------------------------------------------------------ tick

    def tick(self) -> None:
        """One logical tick: heartbeats, CheckQuorum and transfer timeout on a leader;
        the (randomized) election timeout elsewhere."""
        self._now += 1
        if self._role == Role.LEADER:
            self._tick_leader()
            return
        if self._election.tick():
            early = self._election.shortened     # the leader's connection was reset
            if self._promotable():
                self._start_election(transfer=False)
                self._failover.campaigned(self._election, self._now, early,
                                          self._role == Role.PRE_CANDIDATE)
            else:
                self._election.reset()

    def stalled(self, ticks: int) -> None:
        """A stall of ``ticks`` ticks (``tick`` makes them up next): see timers.py."""
        if self._role == Role.LEADER:
            self._contact.shift(ticks)
        elif self._role == Role.FOLLOWER and self._leader_id is not None:
            self._election.hold(ticks)

    def _tick_leader(self) -> None:
        if self._heartbeat.tick():
            self._broadcast_heartbeat()
        if self._options.check_quorum and not self._quorum_active():
            self._become_follower(self._term, None)
            return
        if self._transfer_target is not None and self._transfer_deadline.tick():
            self._transfer_target = None  # the target did not take over in time: abort

    def _quorum_active(self) -> bool:
        """A quorum answered within the last election timeout (sliding, checked each tick)."""
        since = self._now - self._election_ticks + 1
        return self._contact.quorum_since(since, (self._config,), self.node_id)

    def _broadcast_heartbeat(self) -> None:
        """Start a new heartbeat round (ctx) and send every follower an empty AppendEntries
        at its match point, which it always accepts; restart stalled replication."""
        self._heartbeat.reset()
        self._read_round_needed = False
        now = self._now
        ctx = self._rounds.start(now)
        stall_ticks = 2 * self._options.heartbeat_ticks
        for peer, pr in self._progress.items():
            pr.on_heartbeat(now, stall_ticks, self._election_ticks)
            prev = pr.match
            prev_term = self._log.term_at(prev)
            if prev_term is None:
                prev, prev_term = self._log.offset, self._log.snap_term
            self._out.early.append(AppendEntries(self.node_id, peer, self._term, prev, prev_term,
                                             (), min(self._commit, pr.match), ctx))

    # ------------------------------------------------------------------ step

    def step(self, message) -> None:
        """Handle one peer message.  Messages not for us, of unknown type or malformed are
        dropped; stale terms are answered or dropped per Raft; nothing here raises."""
        handler = self._HANDLERS.get(type(message))
        if handler is None:
            return
        if message.to != self.node_id or message.frm == self.node_id:
            return
        if type(message.term) is not int or message.term < 0 or type(message.frm) is not int:
            return
        handler(self, message)

    # ---- elections

    def on_request_vote(self, msg: RequestVote) -> None:
        # A candidate outside our configuration is still answered: our configuration may
        # be the stale one (the candidate was added by entries we have not received), and
        # ignoring it could leave no quorum able to elect anyone.  A removed server cannot
        # disrupt a healthy cluster anyway: PreVote and leader stickiness (below) refuse it
        # while a leader is heard, and its log lacks the configuration that removed it.
        # A *transfer* vote (which bypasses stickiness) only comes from a voter the leader
        # chose, so one from outside our configuration is refused.
        if msg.transfer and msg.frm not in self._config.members:
            return
        if type(msg.last_index) is not int or type(msg.last_term) is not int:
            return
        if msg.term > self._term:
            if not msg.transfer and self._in_lease():
                return  # leader stickiness (thesis 4.2.3): neither grant nor bump the term
            if not msg.pre:
                self._become_follower(msg.term, None)
        elif msg.term < self._term:
            self._send(RequestVoteReply(self.node_id, msg.frm, self._term, False, msg.pre))
            return
        up_to_date = ((msg.last_term, msg.last_index) >= (self._log.last_term(), self.last_index)
                      and not self._lost_entries())
        if msg.pre:
            grant = msg.term > self._term and up_to_date and not self._heard_leader_recently()
            if grant:
                self._election.cancel_shortcut()  # one early candidate at a time (timers.py)
            reply_term = msg.term if grant else self._term
            self._send(RequestVoteReply(self.node_id, msg.frm, reply_term, grant, True))
            return
        can_vote = self._vote == msg.frm or (self._vote == 0 and self._leader_id is None)
        grant = can_vote and up_to_date
        if grant:
            self._vote = msg.frm
            self._election.reset()
        self._send(RequestVoteReply(self.node_id, msg.frm, self._term, grant, False))

    def on_request_vote_reply(self, msg: RequestVoteReply) -> None:
        if msg.term > self._term and not (msg.pre and msg.granted):
            self._become_follower(msg.term, None)
            return
        if msg.pre:
            if self._role != Role.PRE_CANDIDATE:
                return
            if msg.granted and msg.term != self._term + 1:
                return
            if not msg.granted and msg.term < self._term:
                return
        elif self._role != Role.CANDIDATE or msg.term != self._term:
            return
        config = self._config
        if msg.frm not in config.all_voters:
            return
        self._votes[msg.frm] = bool(msg.granted)
        if config.is_quorum(n for n, granted in self._votes.items() if granted):
            if msg.pre:
                self._campaign(False)
            else:
                self._become_leader()
        elif not config.is_quorum(n for n in config.all_voters if self._votes.get(n, True)):
            self._become_follower(self._term, None)  # lost: a quorum said no

    def on_timeout_now(self, msg: TimeoutNow) -> None:
        if msg.term < self._term:
            return
        if msg.term > self._term:
            self._become_follower(msg.term, msg.frm)
        if self._leader_id != msg.frm or self._role == Role.LEADER or not self._promotable():
            return
        self._campaign(transfer=True)

    # ---- replication, follower side

    def _follow(self, msg) -> bool:
        """Common handling of leader traffic at term >= ours; False when it must be dropped."""
        if msg.term > self._term or self._role != self._follower_role() \
                or self._leader_id != msg.frm:
            if self._role == Role.LEADER and msg.term == self._term:
                return False  # a second leader in our term cannot exist: drop
            self._become_follower(msg.term, msg.frm)
        else:
            self._election.restart()
            self._leader_heard_tick = self._now
        return True

    def on_append_entries(self, msg: AppendEntries) -> None:
        if msg.term < self._term:
            # A stale leader (or our term ran ahead while partitioned): tell it our term.
            self._send(AppendEntriesReply(self.node_id, msg.frm, self._term, False, 0, 0,
                                                 msg.ctx))
            return
        configs = self._validate_entries(msg)
        if configs is None:
            return
        if not self._follow(msg):
            return
        entries = msg.entries
        prev, prev_term = msg.prev_index, msg.prev_term
        commit = self._commit
        if prev < commit:
            # Entries up to our commit index are committed, hence identical in the leader's log.
            skip = commit - prev
            if skip >= len(entries):
                self._reply_append(msg, True, commit, 0)
                return
            entries = entries[skip:]
            prev, prev_term = commit, self._log.term_at(commit)
        last = self.last_index
        if prev > last:
            self._reply_append(msg, False, last + 1, 0)
            return
        local_term = self._log.term_at(prev)
        if local_term != prev_term:
            lo = max(commit + 1, self._log.offset + 1)
            hint = self._log.first_index_of_term(local_term, lo, prev)
            self._reply_append(msg, False, hint, local_term)
            return
        # Log matching holds at prev: skip what we already have, truncate at a conflict.
        i, n = 0, len(entries)
        while i < n and entries[i].index <= last:
            if self._log.term_at(entries[i].index) != entries[i].term:
                break
            i += 1
        if i < n:
            first_new = entries[i].index
            if first_new <= last:
                self._truncate(first_new)
            self._append(entries[i:], configs)
        last_new = prev + n
        if msg.commit > self._commit:
            new_commit = min(msg.commit, last_new)
            if new_commit > self._commit:
                self._commit = new_commit
        self._reply_append(msg, True, last_new, 0)

    def _reply_append(self, msg: AppendEntries, success: bool, index: int, hint_term: int) -> None:
        self._send(AppendEntriesReply(self.node_id, msg.frm, self._term, success, index,
                                             hint_term, msg.ctx))

    def _validate_entries(self, msg: AppendEntries) -> dict[int, Config] | None:
        """Check an AppendEntries is well formed; returns its CONFIG entries parsed (index ->
        Config), or None when the message must be dropped."""
        prev, prev_term = msg.prev_index, msg.prev_term
        if (type(prev) is not int or type(prev_term) is not int or prev < 0 or prev_term < 0
                or prev_term > msg.term or (prev == 0 and prev_term != 0)
                or type(msg.commit) is not int or type(msg.ctx) is not int
                or not isinstance(msg.entries, tuple)):
            return None
        configs: dict[int, Config] = {}
        expected, last_term, term = prev + 1, prev_term, msg.term
        for entry in msg.entries:
            if (not isinstance(entry, Entry) or entry.index != expected
                    or type(entry.term) is not int or not last_term <= entry.term <= term
                    or entry.kind not in ENTRY_KINDS or not isinstance(entry.payload, tuple)):
                return None
            if entry.kind == ENTRY_CONFIG:
                try:
                    configs[entry.index] = entry_config(entry)
                except Exception:  # cbor2 raises several types on garbage: all mean "bad entry"
                    return None
            expected += 1
            last_term = entry.term
        return configs

    def on_install_snapshot(self, msg: InstallSnapshot) -> None:
        if msg.term < self._term:
            self._send(InstallSnapshotReply(self.node_id, msg.frm, self._term, 0))
            return
        if (type(msg.index) is not int or type(msg.snap_term) is not int or msg.index <= 0
                or not 0 < msg.snap_term <= msg.term or not isinstance(msg.config, Config)
                or not isinstance(msg.data, bytes)):
            return
        if not self._follow(msg):
            return
        index = msg.index
        if index <= self._commit:
            self._send(InstallSnapshotReply(self.node_id, msg.frm, self._term,
                                                   self._commit))
            return
        self._log.install(index, msg.snap_term, msg.config)
        self._commit = self._emitted = index
        self._pending_snapshot = self._log.snapshot
        self._pending_snapshot_data = msg.data
        self._on_config_change()
        self._send(InstallSnapshotReply(self.node_id, msg.frm, self._term, index))

    # ---- replication, leader side

    def _leader_reply(self, msg) -> Progress | None:
        """Common handling of a reply to the leader; the sender's progress, or None."""
        if msg.term > self._term:
            self._become_follower(msg.term, None)
            return None
        if msg.term < self._term or self._role != Role.LEADER:
            return None
        pr = self._progress.get(msg.frm)
        if pr is not None:
            self._contact.heard(msg.frm, self._now)
        return pr

    def on_append_entries_reply(self, msg: AppendEntriesReply) -> None:
        pr = self._leader_reply(msg)
        if (pr is None or type(msg.index) is not int or type(msg.ctx) is not int
                or type(msg.hint_term) is not int):
            return
        self._rounds.ack(msg.frm, msg.ctx)
        pr.paused = False
        last = self.last_index
        if msg.success:
            if msg.index > last:
                return  # claims entries we never sent: drop
            if pr.acknowledged(msg.index, self._now):
                self._maybe_commit()
            if self._transfer_target == msg.frm and pr.match == last:
                self._send_timeout_now(msg.frm)
        elif msg.index > pr.match:
            new_next = msg.index
            if msg.hint_term:  # skip the follower's whole conflicting term at once
                j = self._log.last_index_with_term_at_most(msg.hint_term)
                if self._log.term_at(j) == msg.hint_term:
                    new_next = j + 1
            pr.rejected(new_next, last)
        if self._pending_reads:
            self._release_reads()

    def on_install_snapshot_reply(self, msg: InstallSnapshotReply) -> None:
        pr = self._leader_reply(msg)
        if pr is None or type(msg.index) is not int or msg.index > self.last_index:
            return
        if pr.snapshot_installed(msg.index, self._now):
            self._maybe_commit()

    def _own_match(self) -> int:
        """How far our own log counts toward the commit quorum: what is durable."""
        return self._log.durable_upto

    def _maybe_commit(self) -> None:
        """Commit by counting (only an entry of the current term, Figure 8); our own log
        counts as far as it is durable."""
        match = {peer: pr.match for peer, pr in self._progress.items()}
        match[self.node_id] = self._own_match()
        index = self._config.committed_index(match)
        if index > self._commit and self._log.term_at(index) == self._term:
            old = self._commit
            self._commit = index
            self._after_leader_commit(old)

    def _after_leader_commit(self, old_commit: int) -> None:
        if old_commit < self._term_start <= self._commit and self._pending_reads:
            self._release_reads()
        config = self._config
        if self._config_index > self._commit:
            return
        if config.joint:
            # The joint entry is committed: leave it for the new configuration alone.
            learners = config.learners
            if self._leave_learners is not None and self._leave_learners[0] == self._config_index:
                learners = self._leave_learners[1]
            self._leave_learners = None
            final = Config(config.voters, learners=learners - config.voters)
            self._append([config_entry(self.last_index + 1, self._term, final)])
            self._maybe_commit()
        elif self.node_id not in config.voters:
            self._step_down_removed()

    def _step_down_removed(self) -> None:
        """The committed configuration no longer has us as a voter: hand over and step down."""
        self._broadcast_heartbeat()  # followers learn that the new configuration is committed
        last = self.last_index
        candidates = [(pr.match, peer) for peer, pr in self._progress.items()
                      if peer in self._config.voters and pr.match == last]
        if candidates:
            self._send_timeout_now(max(candidates)[1])
        self._become_follower(self._term, None)

    def _send_timeout_now(self, peer: int) -> None:
        self._send(TimeoutNow(self.node_id, peer, self._term))

    def _maybe_send_append(self, peer: int, pr: Progress) -> None:
        """Send what the follower's state and window allow (nothing when paused/full)."""
        state = pr.state
        if state == SNAPSHOT:
            return
        last = self.last_index
        if state == PROBE:
            if pr.paused:
                return
            pr.paused = True
            self._send_entries(peer, pr, pr.next, min(last, pr.next
                                                      + self._limits.entries_per_message_max - 1))
            return
        window_end = pr.match + self._limits.pipeline_window
        per_message = self._limits.entries_per_message_max
        if pr.next - 1 == pr.match and pr.next <= last:
            pr.progress_tick = self._now  # the pipeline starts filling now
        while pr.next <= last and pr.next <= window_end:
            sent = self._send_entries(peer, pr, pr.next,
                                      min(last, window_end, pr.next + per_message - 1))
            if sent is None:
                return
            pr.next = sent + 1

    def _send_entries(self, peer: int, pr: Progress, lo: int, hi: int) -> int | None:
        """One AppendEntries with entries lo..at most hi (bounded by message_bytes_max);
        returns the last index sent, or None when a snapshot had to be sent instead."""
        prev = lo - 1
        prev_term = self._log.term_at(prev)
        if prev_term is None:
            self._send_snapshot(peer, pr)
            return None
        budget = MessageBudget.for_limits(self._limits)
        entries = []
        for entry in self._log.slice(lo, hi) if hi >= lo else ():
            if not budget.admit(entry):
                break
            entries.append(entry)
        self._out.early.append(AppendEntries(self.node_id, peer, self._term, prev, prev_term,
                                         tuple(entries), self._commit, self._rounds.round))
        return prev + len(entries)

    def _send_snapshot(self, peer: int, pr: Progress) -> None:
        snapshot = self._log.snapshot
        assert snapshot is not None and self._log.offset == snapshot.index
        self._send(InstallSnapshot(self.node_id, peer, self._term, snapshot.index,
                                          snapshot.term, self._log.base_config, b""))
        pr.sending_snapshot(snapshot.index, self._now)

    def _flush_proposals(self) -> None:
        """Pack queued commands into entries (batching.py) while the pipeline has room."""
        room = self._limits.pipeline_window - (self.last_index - self._commit)
        if room <= 0 or self._transfer_target is not None:
            return
        index, term, queue = self.last_index + 1, self._term, self._queue
        new: list[Entry] = []
        while queue and len(new) < room:
            new.append(Entry(index + len(new), term, ENTRY_NORMAL, queue.take_batch()))
        self._append(new)
        self._maybe_commit()

    # ------------------------------------------------------------------ reads

    def _release_reads(self) -> None:
        if self._commit < self._term_start:
            return  # no read point before an entry of our term is committed (R2)
        confirmed = self._rounds.confirmed((self._config,), self.node_id)
        self._out.reads.extend(self._pending_reads.release(confirmed, self._commit))

    # ------------------------------------------------------------------ public API

    def propose(self, commands: Sequence[bytes]) -> None:
        """Queue commands for the log (leader only).  Raises NotLeader elsewhere, Busy while
        a leadership transfer runs or when the queue is full; commands must be bytes."""
        if self._role != Role.LEADER:
            raise NotLeader(self._leader_id)
        if self._transfer_target is not None:
            raise Busy("leadership transfer in progress")
        self._queue.add(commands)

    def read_index(self, request_id: object) -> None:
        """Ask for a linearizable read point; answered later as a ReadState in Ready.reads,
        once leadership is confirmed by a quorum heartbeat round (none for a lone voter)."""
        if self._role != Role.LEADER:
            raise NotLeader(self._leader_id)
        index = self._commit if self._commit >= self._term_start else None
        lone = self._config.is_quorum((self.node_id,))
        self._pending_reads.add(request_id, index, 0 if lone else self._rounds.round + 1)
        self._read_round_needed = self._read_round_needed or not lone
        self._release_reads()

    def lease_read_index(self) -> int | None:
        """The commit index when a quorum acknowledged a heartbeat round started less than
        lease_ticks ago (and an entry of our term is committed, no transfer runs); else None."""
        if (self._role != Role.LEADER or self._transfer_target is not None
                or self._commit < self._term_start):
            return None
        if not self._rounds.lease_holds(self._now, self._options.lease_ticks, (self._config,),
                                        self.node_id):
            return None
        return self._commit

    def change_config(self, voters: Iterable[int], learners: Iterable[int] = ()) -> None:
        """Move to ``voters`` (through a joint configuration when they change) with
        ``learners``.  Raises NotLeader, ConfigChangeInProgress while an earlier change is
        uncommitted, Busy before an entry of this term is committed (R3) or during a
        transfer, ValueError on an invalid configuration."""
        if self._role != Role.LEADER:
            raise NotLeader(self._leader_id)
        voters, learners = frozenset(voters), frozenset(learners)
        if not voters or voters & learners or not all(
                type(n) is int and n > 0 for n in voters | learners):
            raise ValueError(f"invalid configuration: voters={sorted(voters)} "
                             f"learners={sorted(learners)}")
        current = self._config
        if current.joint or self._config_index > self._commit:
            raise ConfigChangeInProgress("an earlier configuration change is not committed yet")
        if self._commit < self._term_start:
            raise Busy("no entry of the current term is committed yet")
        if self._transfer_target is not None:
            raise Busy("leadership transfer in progress")
        if voters == current.voters and learners == current.learners:
            return
        index = self.last_index + 1
        if voters != current.voters:
            new = Config(voters, outgoing=current.voters, learners=learners - current.voters)
            self._leave_learners = (index, learners)
        else:
            new = Config(voters, learners=learners)
        self._append([config_entry(index, self._term, new)])
        self._maybe_commit()

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to voter ``target``: stop taking proposals, bring it up to date,
        then send TimeoutNow.  Aborted after an election timeout."""
        if self._role != Role.LEADER:
            raise NotLeader(self._leader_id)
        if target == self.node_id:
            self._transfer_target = None
            return
        if target not in self._config.all_voters or target not in self._progress:
            raise ValueError(f"node {target} is not a voter")
        if self._transfer_target == target:
            return
        self._transfer_target = target
        self._transfer_deadline.reset()
        pr = self._progress[target]
        if pr.match == self.last_index:
            self._send_timeout_now(target)
        elif pr.state == REPLICATE:
            pr.probe()  # resend what it lacks

    def leader_unreachable(self, peer: int) -> None:
        """The shell's connection to ``peer`` was reset, which suggests its process is gone.
        If ``peer`` is our leader, campaign within a couple of ticks instead of after the
        election timeout; without leases also forget the leader (timers.ResetFailover)."""
        if self._role not in (Role.FOLLOWER, Role.LEARNER) or peer != self._leader_id:
            return
        E = self._election_ticks
        lease = self._options.lease_ticks > 0
        self._failover.schedule(self._election, self._now, self._config.all_voters,
                                self.node_id, peer,
                                E - (self._now - self._leader_heard_tick) if lease else 0)
        if not lease:
            self._set_role(self._role, None)

    def compact(self, meta: SnapshotMeta) -> None:
        """The shell took a snapshot covering every entry <= meta.index: drop them."""
        if meta.index <= self._log.offset:
            return
        if meta.index > self._applied:
            raise ValueError(f"cannot compact to {meta.index}: applied index is {self._applied}")
        term = self._log.term_at(meta.index)
        if term != meta.term:
            raise ValueError(f"snapshot term {meta.term} at {meta.index} but the log has {term}")
        self._log.compact(meta.index, meta.term)

    # ------------------------------------------------------------------ Ready

    def _leader_prepare(self) -> None:
        """Before building a Ready: batch queued proposals, start a read round, replicate."""
        if self._queue:
            self._flush_proposals()
        if self._read_round_needed:
            self._broadcast_heartbeat()
        for peer, pr in self._progress.items():
            self._maybe_send_append(peer, pr)

    def _leader_has_work(self) -> bool:
        if self._read_round_needed:
            return True
        if (self._queue and self._transfer_target is None
                and self.last_index - self._commit < self._limits.pipeline_window):
            return True
        last, window = self.last_index, self._limits.pipeline_window
        return any(pr.can_send(last, window) for pr in self._progress.values())

    def _pending_output(self) -> bool:
        hs = self._hs_emitted
        return bool(self._out or self._pending_snapshot is not None or self._log.has_unstable
                    or self._emitted < self._commit or hs.commit != self._commit
                    or hs.term != self._term or hs.vote != self._vote)

    def has_ready(self) -> bool:
        if self._out.gate.outstanding:
            return False
        return self._pending_output() or (self._role == Role.LEADER and self._leader_has_work())

    def ready(self) -> Ready | None:
        """Drain outputs, or None when there is nothing to do.  Raises ContractViolation
        while the previous Ready has not been advanced."""
        self._out.gate.check_ready()
        if self._role == Role.LEADER:
            self._leader_prepare()
        if not self._pending_output():
            return None
        rd = Ready()
        hard_state = HardState(self._term, self._vote, self._commit)
        durable = self._hs_emitted  # its term and vote are durable (every earlier Ready is)
        if hard_state != durable:
            rd.hard_state = hard_state
            self._hs_emitted = hard_state
        rd.truncate_from, rd.entries = self._log.take_unstable()
        rd.snapshot = self._pending_snapshot
        rd.snapshot_data = self._pending_snapshot_data
        self._out.fill(rd, promise_durable=(hard_state.term, hard_state.vote)
                       == (durable.term, durable.vote))
        if self._emitted < self._commit:
            rd.committed = self._log.slice(self._emitted + 1, self._commit)
        self._pending_snapshot = self._pending_snapshot_data = None
        self._emitted = self._commit
        return self._out.gate.hand_out(rd)

    def advance(self, ready: Ready) -> None:
        """The shell persisted, sent and applied ``ready``: what it handed out of our log is
        durable, and a leader counts it toward the commit quorum now."""
        self._out.gate.take_back(ready)
        if ready.snapshot is not None and ready.snapshot.index > self._applied:
            self._applied = ready.snapshot.index
        if ready.committed:
            self._applied = ready.committed[-1].index
        self._log.persisted()
        if self._role == Role.LEADER:
            self._maybe_commit()

    # ------------------------------------------------------------------ introspection

    def status(self) -> ReplicaStatus:
        leading = self._role == Role.LEADER
        progress = {}
        if leading:
            progress = {peer: PeerProgress(pr.match, pr.next,
                                           self._now - self._contact.last(peer, self._now))
                        for peer, pr in sorted(self._progress.items())}
        return ReplicaStatus(
            role=self._role, term=self._term, leader=self._leader_id,
            commit_index=self._commit, applied_index=self._applied,
            last_index=self.last_index, first_index=self._log.offset + 1,
            config=self._config.describe(),
            ticks_since_leader=0 if leading else self._now - self._leader_heard_tick,
            progress=progress, early_campaigns=self._failover.early_campaigns)

    def check_invariants(self) -> None:
        """Assert the replica's internal consistency (the simulator calls this after every
        step).  The log check is incremental, so the cost is O(new entries)."""
        last, offset = self.last_index, self._log.offset
        # (applied may lag below offset while a Ready carrying a snapshot is being persisted)
        assert self._applied <= self._emitted, (self._applied, self._emitted)
        assert offset <= self._emitted <= self._commit <= last, \
            (offset, self._emitted, self._commit, last)
        self._log.check_invariants()
        assert self._hs_emitted.term <= self._term and self._hs_emitted.commit <= self._commit
        assert self._log.last_term() <= self._term, (self._log.last_term(), self._term)
        assert self._log.snap_term <= self._term
        expected_index, expected_config = self._log.current_config()
        assert self._config_index == expected_index and self._config is expected_config
        role = self._role
        assert (role == Role.LEADER) == (self._leader_id == self.node_id)
        assert (role == Role.LEARNER) <= (self.node_id in self._config.learners)
        if role in (Role.LEADER, Role.CANDIDATE):
            assert self._vote == self.node_id, (role, self._vote)
        if role == Role.LEADER:
            assert self._term_start <= self._log.offset \
                or self._log.term_at(self._term_start) == self._term, "leader lost its no-op"
            assert self._log.last_term() == self._term
            assert self._progress.keys() == self._config.members - {self.node_id}
            for peer, pr in self._progress.items():
                assert 0 <= pr.match < pr.next <= last + 1, (peer, pr.match, pr.next, last)
            assert self._transfer_target is None or self._transfer_target in self._progress
        else:
            assert not self._progress and not self._queue and not self._pending_reads
            assert self._transfer_target is None

    def _send(self, msg) -> None:
        self._out.messages.append(msg)

    _HANDLERS = {
        RequestVote: on_request_vote,
        RequestVoteReply: on_request_vote_reply,
        AppendEntries: on_append_entries,
        AppendEntriesReply: on_append_entries_reply,
        InstallSnapshot: on_install_snapshot,
        InstallSnapshotReply: on_install_snapshot_reply,
        TimeoutNow: on_timeout_now,
    }
