"""Unit tests for RaftReplica (paxoslog.core.raft), driven by a tiny deterministic network.

``Net`` holds the replicas, a ``MemoryStorage`` per node (the storage model the simulator
and the scripts use: the real WAL records and snapshot files) and a FIFO of messages in
flight.  ``Net.settle()`` honours the Ready contract for every node (send the early
messages, persist and sync, then send, then apply, then advance) and delivers messages until nothing moves; links can be
blocked, nodes crashed and restarted from what they persisted, and a ``drop`` predicate
filters messages.  The "state machine" is the list of applied entries; a snapshot holds it
as one CBOR state named ``log``.  Every
step runs ``check_invariants()``, and every entry any node applies is checked against the
first entry applied at that index anywhere (one value per index, ever).
"""

from __future__ import annotations

import random
from collections import deque

import cbor2
import pytest
from random_faults import run_random_faults

from paxoslog.core.errors import Busy, ConfigChangeInProgress, ContractViolation, NotLeader
from paxoslog.core.limits import Limits
from paxoslog.core.log import (ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry, HardState,
                               SnapshotMeta, entry_bytes, entry_config)
from paxoslog.core.messages import (AppendEntries, AppendEntriesReply, InstallSnapshot,
                                    InstallSnapshotReply,
                                    Prepare, RequestVote, RequestVoteReply, TimeoutNow, decode,
                                    encode)
from paxoslog.core.ballot import Ballot
from paxoslog.core.quorum import Config
from paxoslog.core.raft import RaftReplica
from paxoslog.core.ready import (ConfigChanged, ProposalDropped, ReadState, Ready, Role,
                                 RoleChanged)
from paxoslog.core.replica import PeerProgress, ReplicaOptions, Restored, create_replica
from paxoslog.storage import CorruptLog, MemoryStorage, SnapshotReader
from paxoslog.storage.walscan import entry_wire

E = 10  # election ticks used throughout


def options(**overrides) -> ReplicaOptions:
    limits = overrides.pop("limits", Limits())
    base = dict(heartbeat_ticks=2, election_ticks=E, limits=limits)
    base.update(overrides)
    return ReplicaOptions(**base)


def snapshot_states(applied: list[Entry]) -> list:
    """The applied entries as a snapshot's states (MemoryStorage.save_snapshot)."""
    return [("log", [cbor2.dumps([entry_wire(e) for e in applied])])]


def applied_from(reader) -> list[Entry]:
    """The applied entries a snapshot file holds (its ``log`` state); [] without one."""
    if reader is None:
        return []
    wire = cbor2.loads(reader.read_all()["log"])
    return [Entry(index, term, kind, tuple(payload)) for index, term, kind, payload in wire]


class Net:
    """Replicas plus a deterministic message queue; see the module docstring."""

    def __init__(self, ids, voters=None, learners=(), opts=None, seed=0, codec=False):
        self.ids = list(ids)
        self.opts = opts or options()
        self.config = Config(frozenset(voters if voters is not None else ids),
                             learners=frozenset(learners))
        self.seed = seed
        self.codec = codec
        self.disks = {i: MemoryStorage(i) for i in self.ids}
        self.nodes = {i: RaftReplica(i, self.config, self.opts, random.Random(seed * 1000 + i))
                      for i in self.ids}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}  # the "state machine"
        self.reads: dict[int, list[ReadState]] = {i: [] for i in self.ids}
        self.events: dict[int, list] = {i: [] for i in self.ids}
        self.readies: dict[int, list] = {i: [] for i in self.ids}
        self.chosen: dict[int, Entry] = {}
        self.queue: deque = deque()
        self.delivered: list = []
        self.down: set[int] = set()
        self.blocked: set[tuple[int, int]] = set()
        self.drop = None  # optional predicate: drop this message

    # ---- faults

    def isolate(self, node: int) -> None:
        for other in self.ids:
            if other != node:
                self.blocked |= {(node, other), (other, node)}

    def partition(self, *groups) -> None:
        for a in groups:
            for b in groups:
                if a is not b:
                    self.blocked |= {(x, y) for x in a for y in b}

    def heal(self) -> None:
        self.blocked.clear()
        self.drop = None

    def crash(self, node: int) -> None:
        self.down.add(node)
        self.disks[node].crash()

    def restart(self, node: int, restored: Restored | None = None) -> None:
        """Boot ``node`` from its disk (or from ``restored``, bypassing the storage's checks
        to reach the core's own)."""
        self.down.discard(node)
        reader = None
        if restored is None:
            restored, reader = self.disks[node].load()
        self.nodes[node] = RaftReplica(node, self.config, self.opts,
                                       random.Random(self.seed * 1000 + node + 7), restored)
        # The shell restores its state machine from the snapshot, then re-applies.
        self.applied[node] = applied_from(reader)

    # ---- driving

    def flush(self, node: int) -> None:
        replica = self.nodes[node]
        while replica.has_ready():
            ready = replica.ready()
            assert ready is not None
            with pytest.raises(ContractViolation):
                replica.ready()             # a second Ready before advance is refused
            self.readies[node].append(ready)
            for msg in ready.early_messages:   # the leader's traffic may precede the fsync
                assert type(msg) is AppendEntries, msg
                self._send(node, msg)
            self.disks[node].save(ready)    # written and synced before the rest is sent
            if ready.snapshot is not None:
                latest = self.disks[node].latest_snapshot()
                self.applied[node] = applied_from(SnapshotReader(latest[1]))
            for msg in ready.messages:
                self._send(node, msg)
            for entry in ready.committed:
                assert entry.index == len(self.applied[node]) + 1, (node, entry.index)
                first = self.chosen.setdefault(entry.index, entry)
                assert first == entry, f"two values at index {entry.index}: {first} vs {entry}"
                self.applied[node].append(entry)
            self.reads[node].extend(ready.reads)
            self.events[node].extend(ready.events)
            replica.advance(ready)
            replica.check_invariants()

    def _send(self, node: int, msg) -> None:
        assert msg.frm == node
        if isinstance(msg, InstallSnapshot) and not msg.data:
            # The shell ships the kept snapshot file the core names.
            data = self.disks[node].find_snapshot(msg.index, msg.snap_term)
            assert data is not None, (node, msg)
            msg = InstallSnapshot(msg.frm, msg.to, msg.term, msg.index, msg.snap_term,
                                  msg.config, data)
        if self.codec:
            msg = decode(encode(msg))
        self.queue.append(msg)

    def settle(self, steps_max: int = 100000) -> None:
        for _ in range(steps_max):
            for node in self.ids:
                if node not in self.down:
                    self.flush(node)
            if not self.queue:
                return
            msg = self.queue.popleft()
            if (msg.to in self.down or msg.frm in self.down or (msg.frm, msg.to) in self.blocked
                    or (self.drop is not None and self.drop(msg))):
                continue
            self.delivered.append(msg)
            self.nodes[msg.to].step(msg)
            self.nodes[msg.to].check_invariants()
        raise AssertionError("network did not settle")

    def tick(self, n: int = 1, nodes=None) -> None:
        for _ in range(n):
            for node in (nodes if nodes is not None else self.ids):
                if node not in self.down:
                    self.nodes[node].tick()
                    self.nodes[node].check_invariants()
            self.settle()

    def leader(self) -> int | None:
        leaders = [i for i in self.ids if i not in self.down and self.nodes[i].role == Role.LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda i: self.nodes[i].term)

    def elect(self, target: int, ticks_max: int = 6 * E) -> None:
        """Make ``target`` leader: every live node first goes an election timeout without
        hearing anything (so nobody is in a leader lease), then only the target's timer runs."""
        saved = self.blocked
        self.blocked = {(a, b) for a in self.ids for b in self.ids}
        self.tick(E)
        self.blocked = saved
        for _ in range(ticks_max):
            self.tick(1, nodes=[target])
            if self.nodes[target].role == Role.LEADER:
                return
        raise AssertionError(f"node {target} did not win: {self.nodes[target].status()}")

    def propose(self, node: int, *commands: bytes) -> None:
        self.nodes[node].propose(list(commands))
        self.settle()

    def log(self, node: int) -> list[tuple[int, int]]:
        return [(e.index, e.term) for e in self.disks[node].durable_state()[1]]

    def commands(self, node: int) -> list[bytes]:
        return [c for e in self.applied[node] if e.kind == ENTRY_NORMAL for c in e.payload]


def started(n=3, leader=1, **kw) -> Net:
    net = Net(range(1, n + 1), **kw)
    net.elect(leader)
    net.settle()
    return net


# ---------------------------------------------------------------- elections and replication

def test_single_node_commits_its_entries_once_the_ready_persisting_them_is_advanced():
    """A lone voter elects itself; its own vote counts only for what is durable, so new
    entries are committed (and applied) in the Ready after the one that persists them
    (etcd #14370: a single node must never acknowledge before its fsync)."""
    net = Net([1])
    net.tick(2 * E)
    assert net.nodes[1].role == Role.LEADER
    net.nodes[1].propose([b"a", b"b"])
    ready = net.nodes[1].ready()
    assert [e.payload for e in ready.entries] == [(b"a", b"b")]
    assert ready.committed == [] and ready.hard_state is None
    net.nodes[1].advance(ready)
    assert net.nodes[1].commit_index == 2 and net.nodes[1].applied_index == 1
    ready = net.nodes[1].ready()
    assert ready.hard_state.commit == 2 and ready.entries == []
    assert [e.payload for e in ready.committed] == [(b"a", b"b")]
    net.nodes[1].advance(ready)
    assert net.nodes[1].applied_index == 2


def test_election_produces_one_leader_that_everyone_follows():
    """Three nodes ticking elect exactly one leader per term; followers learn its id."""
    net = Net([1, 2, 3], seed=4)
    net.tick(3 * E)
    leader = net.leader()
    assert leader is not None
    terms = {net.nodes[i].term for i in net.ids}
    assert len(terms) == 1
    for i in net.ids:
        assert net.nodes[i].leader_id == leader
    assert sum(net.nodes[i].role == Role.LEADER for i in net.ids) == 1


def test_vote_is_persisted_before_the_reply_is_sent():
    """A granted vote appears in the hard state of the same Ready as the reply."""
    net = Net([1, 2, 3])
    net.nodes[2].step(RequestVote(1, 2, 1, 0, 0, False, False))
    ready = net.nodes[2].ready()
    assert ready.hard_state == HardState(1, 1, 0)
    assert ready.messages == [RequestVoteReply(2, 1, 1, True, False)]


def test_a_voter_with_a_stale_configuration_still_votes_for_a_newly_added_candidate():
    """Found by the simulator's membership profile (raft seeds 282/5, 561/3, 807/3, 903/3):
    a voter that has not yet received the entry adding node 4 must still answer node 4's
    vote request, or after a lost node no quorum can elect anyone.  A transfer vote from
    outside the configuration (it would bypass stickiness) is still refused."""
    net = Net([1, 2, 3])
    replica = net.nodes[2]
    assert 4 not in replica.config.members
    replica.step(RequestVote(4, 2, 1, 5, 1, False, False))
    ready = replica.ready()
    assert ready.hard_state == HardState(1, 4, 0)
    assert ready.messages == [RequestVoteReply(2, 4, 1, True, False)]
    replica.advance(ready)
    other = Net([1, 2, 3]).nodes[2]
    other.step(RequestVote(4, 2, 1, 5, 1, False, True))       # transfer from a non-member
    assert other.ready() is None


def test_vote_rejected_for_a_less_up_to_date_log():
    """RequestVote is refused when the candidate's last (term, index) is behind ours."""
    net = started(3)
    net.propose(1, b"x")
    net.nodes[2].step(RequestVote(3, 2, 50, 1, 1, False, True))  # transfer: bypass stickiness
    ready = net.nodes[2].ready()
    assert ready.messages[-1] == RequestVoteReply(2, 3, 50, False, False)


def test_replication_applies_the_same_entries_everywhere():
    """Proposals reach every node's state machine in the same order, no-op first."""
    net = started(3)
    for k in range(10):
        net.propose(1, b"c%d" % k)
    net.tick(4)
    for i in net.ids:
        assert net.commands(i) == [b"c%d" % k for k in range(10)]
        assert net.applied[i][0].kind == ENTRY_NOOP
        assert net.nodes[i].commit_index == net.nodes[1].commit_index


def test_commit_needs_a_quorum_by_counting():
    """With 2 of 5 nodes reachable the leader does not commit; after healing it does."""
    net = started(5)
    net.partition([1, 2], [3, 4, 5])
    commit = net.nodes[1].commit_index
    net.propose(1, b"x")
    assert net.nodes[1].commit_index == commit
    net.heal()
    net.tick(3 * 2)  # lost appends are resent once unacknowledged for two heartbeats
    assert net.nodes[1].commit_index == commit + 1
    assert net.commands(3) == [b"x"]


def test_appends_leave_before_the_fsync_but_count_the_leader_only_once_durable():
    """Send before persist: the leader's AppendEntries with its new entry is an early
    message; a follower's acknowledgement that arrives before the leader's Ready is
    advanced commits nothing ({2} of 3); advance() adds the leader's durable copy."""
    net = started(3)
    leader = net.nodes[1]
    last = leader.last_index
    leader.propose([b"x"])
    ready = leader.ready()
    x = Entry(last + 1, 1, ENTRY_NORMAL, (b"x",))
    assert ready.entries == [x] and ready.messages == []
    assert ready.early_messages == [
        AppendEntries(1, 2, 1, last, 1, (x,), last, 0),
        AppendEntries(1, 3, 1, last, 1, (x,), last, 0)]
    leader.step(AppendEntriesReply(2, 1, 1, True, last + 1, 0, 0))
    assert leader.commit_index == last
    leader.advance(ready)
    assert leader.commit_index == last + 1


def test_nothing_is_sent_early_in_a_ready_that_changes_the_term():
    """A lone voter with a learner elects itself and appends its no-op in the Ready that
    persists its new term and vote: the AppendEntries to the learner waits for that fsync
    (a term must be durable before anything is sent in it)."""
    net = Net([1, 2], voters=[1], learners=[2])
    replica = net.nodes[1]
    while replica.role != Role.LEADER:
        replica.tick()
    ready = replica.ready()
    assert ready.hard_state == HardState(1, 1, 0)
    assert ready.early_messages == []
    assert ready.messages == [AppendEntries(1, 2, 1, 0, 0,
                                            (Entry(1, 1, ENTRY_NOOP, ()),), 0, 0)]


def test_follower_ignores_messages_not_addressed_to_it_and_stale_terms():
    """Messages for another node are dropped; a stale-term AppendEntries gets our term back."""
    net = started(3)
    before = net.nodes[2].status()
    net.nodes[2].step(AppendEntries(1, 3, 99, 0, 0, (), 0, 0))
    assert net.nodes[2].status() == before and not net.nodes[2].has_ready()
    net.nodes[2].step(AppendEntries(3, 2, 0, 0, 0, (), 0, 0))
    ready = net.nodes[2].ready()
    assert ready.messages == [AppendEntriesReply(2, 3, net.nodes[2].term, False, 0, 0, 0)]


# ---------------------------------------------------------------- R1 / R2: Figure 8 and the no-op

def figure8_setup():
    """Paper Figure 8 (a)-(c) on five nodes; returns (net, term of idx2 on S1, S1's new term)."""
    net = Net([1, 2, 3, 4, 5], opts=options(limits=Limits(entries_per_message_max=1)))
    net.elect(1)
    net.settle()
    # (a) S1 leads and replicates index 2 to S2 only, then crashes.
    net.partition([1, 2], [3, 4, 5])
    net.propose(1, b"x")
    old_term = net.nodes[1].term
    assert net.log(1)[-1] == (2, old_term) and net.log(2)[-1] == (2, old_term)
    assert net.nodes[1].commit_index == 1
    net.crash(1)
    # (b) S5 wins with votes from S3, S4 and itself, appends at index 2, crashes.
    net.heal()
    net.drop = lambda m: isinstance(m, AppendEntries) and m.frm == 5
    net.elect(5)
    net.propose(5, b"y")
    assert [t for _, t in net.log(5)][1:] == [net.nodes[5].term] * 2
    net.crash(5)
    net.heal()
    # (c) S1 restarts and wins; index 2 (old term) reaches S3 but its own no-op does not.
    net.restart(1)

    def drop(m):  # hold back every new-term entry, except in probes S3 is bound to reject
        return (isinstance(m, AppendEntries) and any(e.term > old_term for e in m.entries)
                and not (m.to == 3 and net.log(3)[-1][0] < m.prev_index))
    net.drop = drop
    net.elect(1)
    net.settle()
    return net, old_term, net.nodes[1].term


def test_figure8_old_term_entry_on_a_majority_is_not_committed():
    """R1: an entry of an older term stored on a majority is not committed by counting."""
    net, old_term, new_term = figure8_setup()
    holders = [i for i in (1, 2, 3, 4) if (2, old_term) in net.log(i)]
    assert len(holders) >= 3  # a majority of five has it
    assert net.nodes[1].commit_index == 1
    assert 2 not in net.chosen


def test_figure8_overwriting_the_uncommitted_old_entry_is_legal():
    """R1 variant (d): S1 crashes, S5 wins and overwrites index 2; nobody ever applied x."""
    net, old_term, _ = figure8_setup()
    net.crash(1)
    net.heal()
    net.restart(5)
    net.elect(5)
    net.settle()
    net.tick(4)
    for i in (2, 3, 4, 5):
        assert net.log(i)[1][1] != old_term
        assert b"x" not in net.commands(i) and net.commands(i) == [b"y"]


def test_figure8_current_term_entry_commits_the_old_one():
    """R1 variant (e): once S1's current-term no-op reaches a majority, index 2 commits too."""
    net, old_term, new_term = figure8_setup()
    net.heal()
    net.tick(6)
    assert net.nodes[1].commit_index == 3
    assert net.chosen[2].term == old_term and net.chosen[3].term == new_term
    assert net.commands(3) == [b"x"]


def test_new_leader_appends_a_noop_that_commits_the_inherited_tail():
    """R2: with no client traffic, a new leader's no-op commits entries of earlier terms."""
    net = started(3)
    # Node 1's entries reach node 2 only and node 1 never hears back: nothing commits.
    net.blocked = {(1, 3), (3, 1), (2, 1)}
    net.propose(1, b"tail")
    net.propose(1, b"more")
    assert net.nodes[1].commit_index == 1 and net.log(2)[-1] == (3, net.nodes[1].term)
    net.crash(1)
    net.heal()
    net.elect(2)  # no proposal follows: only the no-op can commit the tail
    net.tick(4)
    noop = net.applied[2][-1]
    assert noop.kind == ENTRY_NOOP and noop.term == net.nodes[2].term
    assert net.commands(2) == [b"tail", b"more"] == net.commands(3)


def test_read_index_waits_for_the_noop_of_the_new_term():
    """R2: a new leader gives no read point before an entry of its own term is committed."""
    net = started(3)
    net.isolate(1)
    net.elect(2)
    leader = net.nodes[2]
    net.blocked |= {(2, 3)}  # the no-op cannot reach a majority yet
    net.settle()
    leader.read_index("r")
    net.settle()
    assert net.reads[2] == []
    net.heal()
    net.crash(1)
    net.tick(2)
    assert net.reads[2] == [ReadState("r", leader.commit_index)]
    assert net.applied[2][-1].term == leader.term


# ---------------------------------------------------------------- R3: membership

def test_config_change_refused_before_an_entry_of_the_term_is_committed():
    """R3: a leader may not append a configuration entry before committing its no-op."""
    net = started(3)
    net.isolate(1)
    net.blocked -= {(2, 3), (3, 2)}
    net.drop = lambda m: isinstance(m, AppendEntries) and m.frm == 2 and m.entries
    net.elect(2)
    with pytest.raises(Busy):
        net.nodes[2].change_config({1, 2, 3}, learners={4})
    net.drop = None
    net.tick(2)
    net.nodes[2].change_config({2, 3}, learners=())
    assert net.nodes[2].config.joint


def test_joint_consensus_adds_and_removes_voters():
    """Voters change through a joint entry; the leader leaves the joint config by itself."""
    net = Net([1, 2, 3, 4, 5], voters=[1, 2, 3])
    net.elect(1)
    net.settle()
    net.nodes[1].change_config({1, 2, 4}, learners={5})
    joint = net.nodes[1].config
    assert joint.voters == {1, 2, 4} and joint.outgoing == {1, 2, 3}
    net.settle()
    net.tick(4)
    final = net.nodes[1].config
    assert final == Config(frozenset({1, 2, 4}), learners=frozenset({5}))
    kinds = [entry_config(e) for e in net.applied[1] if e.kind == ENTRY_CONFIG]
    assert kinds == [joint, final]
    changed = [ev for ev in net.events[2] if isinstance(ev, ConfigChanged)]
    assert [c.config for c in changed] == [joint, final]
    for i in (1, 2, 4, 5):
        assert net.nodes[i].config == final
    assert net.nodes[3].config == joint  # removed: the leader stops replicating to it
    assert net.nodes[5].role == Role.LEARNER
    net.propose(1, b"after")
    net.tick(2)
    assert net.commands(4) == [b"after"] and net.commands(5) == [b"after"]


def test_second_config_change_while_one_is_pending_raises():
    """A change while the previous one is uncommitted raises ConfigChangeInProgress."""
    net = started(3)
    net.partition([1], [2, 3])
    net.nodes[1].change_config({1, 2}, learners=())
    with pytest.raises(ConfigChangeInProgress):
        net.nodes[1].change_config({1, 2, 3}, learners=())


def test_truncated_config_entry_reverts_to_the_previous_config():
    """An uncommitted CONFIG entry overwritten by a new leader undoes its configuration."""
    net = Net([1, 2, 3, 4, 5, 6], voters=[1, 2, 3, 4, 5])
    net.elect(1)
    net.settle()
    net.partition([1, 2], [3, 4, 5, 6])
    net.nodes[1].change_config({1, 2, 3, 4, 5}, learners={6})
    net.settle()
    assert 6 in net.nodes[2].config.learners and net.nodes[2].commit_index == 1
    net.crash(1)
    net.heal()
    net.elect(3)
    net.settle()
    original = Config(frozenset({1, 2, 3, 4, 5}))
    assert net.nodes[2].config == original
    changed = [ev for ev in net.events[2] if isinstance(ev, ConfigChanged)]
    assert changed[-1] == ConfigChanged(original, 0)
    assert net.log(2) == net.log(3)


def test_leader_removed_by_the_final_config_steps_down_and_hands_over():
    """A leader outside the new voters commits the change, steps down and hands over."""
    net = started(3)
    net.nodes[1].change_config({2, 3})
    net.settle()
    net.tick(4)
    assert net.nodes[1].role == Role.FOLLOWER
    leader = net.leader()
    assert leader in (2, 3)
    net.propose(leader, b"z")
    net.tick(2)
    assert net.commands(2) == [b"z"] == net.commands(3)
    net.tick(5 * E)
    assert net.nodes[1].role == Role.FOLLOWER and net.leader() in (2, 3)


def test_membership_change_through_an_isolated_leader_is_undone():
    """R19: an isolated leader's config change never commits and is truncated on rejoin."""
    net = started(5)
    original = net.nodes[1].config
    net.isolate(1)
    net.nodes[1].change_config({1, 2, 3, 4})
    assert net.nodes[1].config.joint
    net.tick(E, nodes=[1])
    assert net.nodes[1].role == Role.FOLLOWER
    net.elect(3)
    net.propose(3, b"majority")
    net.heal()
    net.tick(3 * E)
    assert net.leader() == 3
    for i in net.ids:
        assert net.nodes[i].config == original
        assert not any(e.kind == ENTRY_CONFIG for e in net.applied[i])
    assert net.commands(1) == [b"majority"]


def test_whole_cluster_restart_in_a_joint_configuration_finishes_the_change():
    """R19: all nodes die once the joint entry commits; the next leader leaves it by itself."""
    net = Net([1, 2, 3, 4], voters=[1, 2, 3])
    net.elect(1)
    net.settle()
    net.drop = lambda m: (isinstance(m, AppendEntries) and m.entries
                          and any(e.kind == ENTRY_CONFIG and not entry_config(e).joint
                                  for e in m.entries))
    net.nodes[1].change_config({2, 3, 4})
    net.tick(4)
    assert net.nodes[1].commit_index == net.nodes[1].status().last_index - 1
    for i in net.ids:
        net.crash(i)
    net.heal()
    for i in net.ids:
        net.restart(i)
    net.tick(6 * E)
    leader = net.leader()
    assert leader in (2, 3, 4)
    final = Config(frozenset({2, 3, 4}))
    assert all(net.nodes[i].config == final for i in (2, 3, 4))
    net.propose(leader, b"done")
    net.tick(2)
    assert all(net.commands(i)[-1:] == [b"done"] for i in (2, 3, 4))


def test_a_removed_leader_holding_the_only_copy_of_the_final_config_campaigns_to_commit_it():
    """Raft thesis 4.1 (membership seed 72/3): leader 1 leaves {1, 2} for {2}; the joint
    entry commits, the final entry reaches only node 1, and both restart.  Node 2 (joint
    configuration) needs node 1's vote but its log is shorter; node 1 is outside its own
    newest configuration.  Node 1 must still campaign (its vote not counted), commit the
    final configuration with node 2, and hand over; refusing left the pair leaderless."""
    net = Net([1, 2])
    net.elect(1)
    net.settle()
    net.drop = lambda m: (isinstance(m, AppendEntries) and m.entries
                          and any(e.kind == ENTRY_CONFIG and not entry_config(e).joint
                                  for e in m.entries))
    net.nodes[1].change_config({2})
    net.tick(4)
    assert net.nodes[1].config == Config(frozenset({2}))
    assert net.nodes[2].config.joint
    for i in net.ids:
        net.crash(i)
    net.heal()
    for i in net.ids:
        net.restart(i)
    net.tick(8 * E)
    assert net.leader() == 2
    assert all(net.nodes[i].config == Config(frozenset({2})) for i in net.ids)
    assert net.nodes[2].commit_index == net.nodes[2].status().last_index
    net.propose(2, b"after")
    net.tick(2)
    assert net.commands(2)[-1:] == [b"after"]


def test_learner_gets_the_log_but_never_campaigns():
    """A learner applies the log, never becomes a candidate, and its vote is not counted."""
    net = Net([1, 2, 3], voters=[1, 2], learners=[3])
    net.elect(1)
    net.propose(1, b"a")
    net.tick(2)
    assert net.commands(3) == [b"a"] and net.nodes[3].role == Role.LEARNER
    net.crash(2)
    net.isolate(1)
    net.crash(1)
    net.heal()
    net.tick(10 * E, nodes=[3])
    assert net.nodes[3].role == Role.LEARNER
    assert not any(isinstance(m, RequestVote) and m.frm == 3 for m in net.delivered)
    # Node 1 alone plus the learner's vote is not a quorum of voters {1, 2}.
    net.restart(1)
    net.tick(10 * E)
    assert net.nodes[1].role != Role.LEADER


def test_change_config_validates_its_arguments():
    """Empty voters or a node both voter and learner are rejected with ValueError."""
    net = started(3)
    with pytest.raises(ValueError):
        net.nodes[1].change_config(set())
    with pytest.raises(ValueError):
        net.nodes[1].change_config({1, 2}, learners={2})
    with pytest.raises(NotLeader):
        net.nodes[2].change_config({1, 2})


# ---------------------------------------------------------------- R4: disruptive servers

def test_prevote_keeps_a_rejoining_partitioned_node_from_deposing_the_leader():
    """R4/N6: a follower isolated for 10 election timeouts rejoins without a new election."""
    net = started(3)
    term = net.nodes[1].term
    net.isolate(3)
    net.tick(10 * E)
    assert net.nodes[3].term == term  # pre-votes failed: no term inflation
    net.heal()
    net.tick(2 * E)
    assert net.leader() == 1 and net.nodes[1].term == term
    assert net.nodes[3].leader_id == 1


def test_without_prevote_the_rejoining_node_disrupts():
    """Contrast for R4: with PreVote off the isolated node's term inflation deposes the leader."""
    net = started(3, opts=options(pre_vote=False))
    term = net.nodes[1].term
    net.isolate(3)
    net.tick(10 * E)
    assert net.nodes[3].term > term
    net.heal()
    net.tick(3 * E)
    assert net.nodes[net.leader()].term > term


def test_followers_ignore_votes_while_their_leader_is_alive():
    """Leader stickiness: a higher-term RequestVote is ignored (no grant, no term bump)."""
    net = started(3)
    term = net.nodes[2].term
    net.nodes[2].step(RequestVote(3, 2, term + 5, 100, term, False, False))
    assert net.nodes[2].term == term and not net.nodes[2].has_ready()
    net.nodes[2].step(RequestVote(3, 2, term + 5, 100, term, False, True))  # transfer=True
    assert net.nodes[2].term == term + 5


def test_removed_node_cannot_disrupt_the_cluster():
    """R4b: a removed node that keeps campaigning is ignored; leader and terms stay put."""
    net = started(4)
    net.nodes[1].change_config({1, 2, 3})
    net.settle()
    net.tick(4)
    assert all(4 not in net.nodes[i].config.members for i in (1, 2, 3))
    term = net.nodes[1].term
    net.tick(10 * E)  # node 4 never hears from the leader again and campaigns in vain
    assert any(isinstance(m, RequestVote) and m.frm == 4 for m in net.delivered)
    assert net.leader() == 1 and all(net.nodes[i].term == term for i in (1, 2, 3))
    net.tick(2 * E, nodes=[2])  # node 2 stops hearing the leader: no lease protects it now
    net.nodes[2].step(RequestVote(4, 2, term + 9, 1000, term + 8, False, True))
    assert net.nodes[2].term == term and not net.nodes[2].has_ready()


def test_check_quorum_steps_down_an_isolated_leader():
    """N7: a leader cut off from its peers steps down within one election timeout."""
    net = started(3)
    net.isolate(1)
    for _ in range(E):
        net.tick(1, nodes=[1])
    assert net.nodes[1].role == Role.FOLLOWER
    assert RoleChanged(Role.FOLLOWER, net.nodes[1].term, None) in net.events[1]
    with pytest.raises(NotLeader):
        net.nodes[1].propose([b"x"])
    with pytest.raises(NotLeader):
        net.nodes[1].read_index("r")


# ---------------------------------------------------------------- fast failover

def follower_of_1(node_id: int = 2, **opts) -> RaftReplica:
    """Node ``node_id`` of voters 1-3 following leader 1 of term 1 (its Ready drained)."""
    replica = RaftReplica(node_id, Config(frozenset({1, 2, 3})), options(**opts),
                          random.Random(node_id))
    replica.step(AppendEntries(1, node_id, 1, 0, 0, (), 0, 1))
    replica.advance(replica.ready())
    return replica


def test_a_reset_of_the_leaders_connection_makes_the_follower_campaign_at_once():
    """leader_unreachable(leader): the follower forgets it and, first of the other voters
    by id, sends its pre-votes on the next tick instead of after the election timeout."""
    replica = follower_of_1(2)
    replica.leader_unreachable(1)
    ready = replica.ready()
    assert ready.events == [RoleChanged(Role.FOLLOWER, 1, None)]
    replica.advance(ready)
    replica.tick()
    assert replica.ready().messages == [RequestVote(2, 1, 2, 0, 0, True, False),
                                        RequestVote(2, 3, 2, 0, 0, True, False)]


def test_after_a_reset_a_follower_grants_pre_vote_and_vote_at_once():
    """Having forgotten its leader a tick after hearing it, node 3 grants node 2's pre-vote
    and vote (leader stickiness no longer holds), and waits one tick more than node 2."""
    replica = follower_of_1(3)
    replica.leader_unreachable(1)
    replica.advance(replica.ready())
    replica.tick()
    assert replica.ready() is None
    replica.step(RequestVote(2, 3, 2, 0, 0, True, False))
    ready = replica.ready()
    assert ready.messages == [RequestVoteReply(3, 2, 2, True, True)]
    replica.advance(ready)
    replica.step(RequestVote(2, 3, 2, 0, 0, False, False))
    assert replica.ready().messages == [RequestVoteReply(3, 2, 2, True, False)]


def test_a_reset_of_another_peer_is_ignored_and_each_reset_of_the_leaders_pre_votes():
    """Only the leader's connection counts.  A flapping one (the leader lives): each reset
    forgets the leader and pre-votes on the next tick (refused while the others hear the
    leader: no term changes); the leader heard again restores it."""
    replica = follower_of_1(2)
    replica.leader_unreachable(3)
    assert not replica.has_ready() and replica.leader_id == 1
    replica.leader_unreachable(1)
    replica.advance(replica.ready())
    replica.step(AppendEntries(1, 2, 1, 0, 0, (), 0, 2))   # the leader was alive after all
    replica.advance(replica.ready())
    assert replica.leader_id == 1
    replica.leader_unreachable(1)                           # and the connection flaps again
    ready = replica.ready()
    assert ready.events == [RoleChanged(Role.FOLLOWER, 1, None)]
    replica.advance(ready)
    replica.tick()
    ready = replica.ready()
    assert ready.messages == [RequestVote(2, 1, 2, 0, 0, True, False),
                              RequestVote(2, 3, 2, 0, 0, True, False)]
    replica.advance(ready)
    replica.step(AppendEntries(1, 2, 1, 0, 0, (), 0, 3))   # refused; the leader goes on
    ready = replica.ready()
    assert ready.events == [RoleChanged(Role.FOLLOWER, 1, 1)] and replica.term == 1
    replica.advance(ready)
    for _ in range(E - 1):                    # no early campaign: the timer is a drawn one
        replica.tick()
        if (ready := replica.ready()) is not None:
            replica.advance(ready)
        assert replica.role == Role.FOLLOWER


def test_an_early_pre_vote_refused_is_repeated_every_two_ticks_per_other_voter():
    """Node 2's early pre-vote is refused (node 3 has not seen the reset yet): it pre-votes
    again 2 x 2 ticks later, and again, until an election timeout since the first."""
    replica = follower_of_1(2)
    replica.leader_unreachable(1)
    replica.advance(replica.ready())
    replica.tick()
    replica.advance(replica.ready())
    replica.step(RequestVoteReply(3, 2, 1, False, True))
    sent_at = []
    for tick in range(2, E + 3):
        replica.tick()
        if (ready := replica.ready()) is not None:
            replica.advance(ready)
            if ready.messages:
                sent_at.append(tick)
    assert sent_at == [5, 9]


def test_without_pre_vote_a_flapping_connection_campaigns_early_once_per_timeout():
    """pre_vote off: an early campaign would depose a live leader (a new term), so a
    follower campaigns early at most once per election timeout, however often the
    leader's connection resets."""
    replica = follower_of_1(2, pre_vote=False)
    replica.leader_unreachable(1)
    replica.advance(replica.ready())
    replica.step(AppendEntries(1, 2, 1, 0, 0, (), 0, 2))   # the leader was alive after all
    replica.advance(replica.ready())
    replica.leader_unreachable(1)                           # flaps: no second early campaign
    replica.advance(replica.ready())
    for _ in range(E - 1):
        replica.tick()
        if (ready := replica.ready()) is not None:
            replica.advance(ready)
        assert replica.role == Role.FOLLOWER


def test_with_leases_a_reset_still_refuses_votes_for_the_election_timeout():
    """lease_ticks > 0: a reset is no proof that the leader stopped serving lease reads, so
    the follower keeps its leader and refuses votes until an election timeout after the
    leader's last message; then it campaigns without the random extra wait."""
    replica = follower_of_1(2, lease_ticks=E - 3)
    for _ in range(3):
        replica.tick()
    replica.leader_unreachable(1)
    assert not replica.has_ready() and replica.leader_id == 1
    replica.step(RequestVote(3, 2, 2, 0, 0, True, False))
    assert not replica.has_ready()              # in the lease: neither granted nor answered
    for _ in range(E - 4):
        replica.tick()
        assert replica.role == Role.FOLLOWER
    replica.tick()
    replica.tick()
    assert replica.role == Role.PRE_CANDIDATE


def test_a_killed_leader_is_replaced_within_a_few_ticks_when_its_connections_reset():
    """The shell reports the dead leader's connections reset to both followers: node 2
    campaigns on the next tick and leads; node 3, staggered a tick later, votes for it."""
    net = started(3)
    net.crash(1)
    for node in (2, 3):
        net.nodes[node].leader_unreachable(1)
    net.settle()
    ticks = 0
    while net.leader() in (None, 1) or net.leader() in net.down:
        net.tick(1, nodes=[2, 3])
        ticks += 1
        assert ticks <= E
    assert (net.leader(), ticks) == (2, 1)
    assert net.nodes[2].status().early_campaigns == 1   # the metric the shell exports


# ---------------------------------------------------------------- leader transfer

def test_leader_transfer_catches_up_the_target_then_hands_over():
    """The leader refuses proposals, brings the target up to date and sends TimeoutNow."""
    net = started(3)
    net.blocked = {(1, 3)}
    for k in range(5):
        net.propose(1, b"%d" % k)
    net.nodes[1].transfer_leadership(3)
    with pytest.raises(Busy):
        net.nodes[1].propose([b"no"])
    net.heal()
    net.tick(2)
    assert net.leader() == 3
    assert any(isinstance(m, TimeoutNow) and m.to == 3 for m in net.delivered)
    assert net.nodes[1].role == Role.FOLLOWER and net.nodes[1].leader_id == 3
    net.propose(3, b"new")
    net.tick(2)
    assert net.commands(1)[-1] == b"new"


def test_leader_transfer_aborts_after_an_election_timeout():
    """A transfer to an unreachable target is abandoned and proposals work again."""
    net = started(3)
    net.isolate(3)
    net.propose(1, b"a")
    net.nodes[1].transfer_leadership(3)
    with pytest.raises(Busy):
        net.nodes[1].propose([b"b"])
    net.tick(E)
    net.nodes[1].propose([b"b"])
    net.tick(2)
    assert net.commands(2) == [b"a", b"b"]


# ---------------------------------------------------------------- reads

def test_read_index_is_confirmed_by_a_heartbeat_round():
    """A ReadIndex request is answered at the commit index after a quorum acknowledges."""
    net = started(3)
    net.propose(1, b"w")
    net.tick(2)
    net.drop = lambda m: isinstance(m, AppendEntriesReply)
    net.nodes[1].read_index("r1")
    net.settle()
    assert net.reads[1] == []  # no acknowledgement, no read
    net.drop = None
    net.nodes[1].read_index("r2")
    net.settle()
    commit = net.nodes[1].commit_index
    assert net.reads[1] == [ReadState("r1", commit), ReadState("r2", commit)]


def test_stale_leader_cannot_serve_a_read():
    """R5: a paused old leader resumes and its read fails instead of returning stale data."""
    net = started(5)
    net.crash(1)  # paused: no ticks, no messages in or out
    net.elect(3)
    net.propose(3, b"new")
    net.down.discard(1)  # resume with its old volatile state
    assert net.nodes[1].role == Role.LEADER
    net.nodes[1].read_index("stale")
    net.settle()
    assert net.reads[1] == []
    assert net.nodes[1].role == Role.FOLLOWER


def test_single_voter_read_needs_no_round():
    """A lone voter answers ReadIndex immediately in its next Ready."""
    net = Net([1])
    net.tick(2 * E)
    net.nodes[1].read_index("r")
    assert net.nodes[1].ready().reads == [ReadState("r", 1)]


def test_lease_read_only_within_the_lease():
    """lease_read_index returns the commit index only while a quorum acked recently."""
    net = started(3, opts=options(lease_ticks=5))
    net.tick(2)
    assert net.nodes[1].lease_read_index() == net.nodes[1].commit_index
    assert net.nodes[2].lease_read_index() is None
    net.isolate(1)
    net.tick(6, nodes=[1])
    assert net.nodes[1].lease_read_index() is None
    no_lease = started(3)
    assert no_lease.nodes[1].lease_read_index() is None


def test_pending_reads_are_bounded():
    """More than pending_reads_max outstanding reads raise Busy."""
    net = started(3, opts=options(limits=Limits(pending_reads_max=2)))
    net.isolate(1)
    net.nodes[1].read_index(1)
    net.nodes[1].read_index(2)
    with pytest.raises(Busy):
        net.nodes[1].read_index(3)


# ---------------------------------------------------------------- log repair and snapshots

def test_conflicting_suffix_is_truncated_with_fast_backoff():
    """A follower with a long divergent suffix is repaired in one rejection round trip."""
    net = started(3, opts=options(limits=Limits(batch_commands_max=1)))
    net.isolate(1)
    for k in range(30):
        net.nodes[1].propose([b"lost%d" % k])
        net.settle()
    assert net.nodes[1].status().last_index == 31
    net.crash(1)
    net.heal()
    net.elect(2)
    net.propose(2, b"kept")
    net.restart(1)
    net.tick(4)
    rejects = [m for m in net.delivered if isinstance(m, AppendEntriesReply) and m.frm == 1
               and not m.success and m.term == net.nodes[2].term]
    assert len(rejects) <= 2
    assert any(r.truncate_from == 2 for r in net.readies[1])
    assert net.log(1) == net.log(2)
    assert net.commands(1) == [b"kept"]


def test_snapshot_installs_on_a_lagging_follower():
    """A follower behind the leader's first retained index gets InstallSnapshot and catches up."""
    net = started(3)
    net.crash(3)
    for k in range(20):
        net.propose(1, b"%d" % k)
    leader = net.nodes[1]
    applied = leader.applied_index
    meta = SnapshotMeta(applied, leader.term, leader.config)
    net.disks[1].save_snapshot(meta, snapshot_states(net.applied[1]))
    leader.compact(meta)
    assert leader.status().first_index == applied + 1
    net.propose(1, b"after")
    net.restart(3)
    net.tick(4)
    assert any(isinstance(m, InstallSnapshot) and m.to == 3 for m in net.delivered)
    installed = [r for r in net.readies[3] if r.snapshot is not None]
    assert installed and installed[0].snapshot.index == applied
    assert installed[0].snapshot_data
    assert net.nodes[3].applied_index == leader.commit_index
    assert net.commands(3) == net.commands(1)


def test_compact_rejects_unapplied_indexes():
    """compact() beyond the applied index is a caller error."""
    net = started(3)
    with pytest.raises(ValueError):
        net.nodes[1].compact(SnapshotMeta(5, 1, net.config))


def follower_with_log(terms, commit=0, **opts):
    """A follower (node 2 of {1, 2, 3}) restored with entries of the given terms."""
    config = Config(frozenset({1, 2, 3}))
    entries = [Entry(i, t, ENTRY_NORMAL, (b"%d" % i,)) for i, t in enumerate(terms, 1)]
    restored = Restored(HardState(max(terms), 0, commit), entries)
    return RaftReplica(2, config, options(**opts), random.Random(2), restored), config


def test_snapshot_matching_an_entry_keeps_the_log_suffix():
    """InstallSnapshot at an index whose term matches keeps the entries after it."""
    replica, config = follower_with_log([1] * 10)
    replica.step(InstallSnapshot(1, 2, 1, 5, 1, config, b"state"))
    ready = replica.ready()
    assert ready.snapshot == SnapshotMeta(5, 1, config) and ready.snapshot_data == b"state"
    assert ready.truncate_from is None and ready.entries == []
    assert ready.committed == [] and ready.hard_state.commit == 5
    assert ready.messages[-1] == InstallSnapshotReply(2, 1, 1, 5)
    replica.advance(ready)
    status = replica.status()
    assert (status.first_index, status.last_index, status.applied_index) == (6, 10, 5)


def test_snapshot_conflicting_with_the_log_replaces_it():
    """InstallSnapshot whose term differs from ours at its index drops the whole log."""
    replica, config = follower_with_log([1] * 10)
    replica.step(InstallSnapshot(1, 2, 3, 5, 2, config, b"state"))
    ready = replica.ready()
    assert ready.snapshot == SnapshotMeta(5, 2, config) and ready.truncate_from == 6
    replica.advance(ready)
    replica.check_invariants()
    assert replica.status().last_index == 5 and replica.applied_index == 5


def test_restarted_node_ignores_votes_during_its_first_election_timeout():
    """A restarted node may hold up a leader's lease, so it ignores higher-term votes at first."""
    replica, _ = follower_with_log([1, 1])
    replica.step(RequestVote(3, 2, 2, 5, 1, False, False))
    assert not replica.has_ready() and replica.term == 1
    for _ in range(E):
        replica.tick()
    replica.step(RequestVote(3, 2, 2, 5, 1, False, False))
    assert replica.ready().messages[-1] == RequestVoteReply(2, 3, 2, True, False)


def test_node_that_lost_acknowledged_entries_does_not_vote_until_repaired():
    """R13: a node restored with commit past its log neither votes nor campaigns until repaired."""
    net = started(3)
    for k in range(4):
        net.propose(1, b"%d" % k)
    net.tick(2)
    commit = net.nodes[3].commit_index
    net.crash(3)
    disk = net.disks[3]
    disk.lose_last_entries(len(disk.durable_state()[1]) - 2)  # the tail is gone
    with pytest.raises(CorruptLog, match="acknowledged entries were lost"):
        disk.load()                     # the storage refuses such a log; beneath it...
    net.restart(3, Restored(*disk.durable_state()))   # ...so does the core
    replica = net.nodes[3]
    assert replica.commit_index == 2
    for _ in range(E):
        replica.tick()
    replica.step(RequestVote(2, 3, replica.term + 1, 2, 1, False, False))
    net.flush(3)
    assert net.readies[3][-1].messages[-1].granted is False
    net.queue.clear()
    net.isolate(3)
    net.tick(4 * E, nodes=[3])
    assert replica.role == Role.FOLLOWER and replica.term == net.nodes[1].term + 1
    net.heal()
    net.tick(3 * E)
    leader = net.leader()
    assert leader in (1, 2) and net.nodes[3].commit_index >= commit
    assert net.commands(3) == net.commands(leader)


def test_advance_requires_the_outstanding_ready():
    """advance() with anything but the Ready last returned is a caller error."""
    net = started(3)
    net.nodes[1].propose([b"x"])
    ready = net.nodes[1].ready()
    with pytest.raises(ContractViolation):
        net.nodes[1].advance(Ready())
    net.nodes[1].advance(ready)
    with pytest.raises(ContractViolation):
        net.nodes[1].advance(ready)         # advanced once already


# ---------------------------------------------------------------- restart

def test_restart_rebuilds_term_vote_log_and_reapplies_committed_entries():
    """After all nodes restart from Restored, state is back and commits are re-emitted."""
    net = started(3)
    for k in range(4):
        net.propose(1, b"%d" % k)
    net.tick(2)
    before = {i: (net.nodes[i].term, net.nodes[i].commit_index, net.commands(i)) for i in net.ids}
    for i in net.ids:
        net.crash(i)
        net.applied[i] = []
    for i in net.ids:
        net.restart(i)
        replica = net.nodes[i]
        assert replica.term == before[i][0] and replica.applied_index == 0
        assert replica.commit_index == before[i][1]
    net.settle()
    for i in net.ids:
        assert net.commands(i) == before[i][2]
    net.tick(4 * E)
    leader = net.leader()
    net.propose(leader, b"again")
    net.tick(2)
    assert net.commands(2)[-1] == b"again"


def test_restart_from_snapshot_starts_after_it():
    """A replica restored with a snapshot starts its log, commit and applied index there."""
    config = Config(frozenset({1, 2, 3}))
    entries = [Entry(11, 2, ENTRY_NORMAL, (b"a",)), Entry(12, 3, ENTRY_NOOP, ())]
    restored = Restored(HardState(3, 2, 12), entries, SnapshotMeta(10, 2, config))
    replica = create_replica("raft", 1, config, options(), random.Random(1), restored)
    assert replica.applied_index == 10 and replica.commit_index == 12
    ready = replica.ready()
    assert [e.index for e in ready.committed] == [11, 12]
    replica.advance(ready)
    status = replica.status()
    assert status.first_index == 11 and status.last_index == 12 and status.term == 3


def test_restored_vote_prevents_a_second_vote_in_the_same_term():
    """A node that voted, crashed and restarted refuses another candidate in that term."""
    net = Net([1, 2, 3])
    net.nodes[2].step(RequestVote(1, 2, 1, 0, 0, False, False))
    net.flush(2)
    net.crash(2)
    net.restart(2)
    net.nodes[2].step(RequestVote(3, 2, 1, 0, 0, False, False))
    ready = net.nodes[2].ready()
    assert ready.messages == [RequestVoteReply(2, 3, 1, False, False)]


# ---------------------------------------------------------------- batching, pipelining, bounds

def test_batching_packs_commands_within_count_and_byte_limits():
    """Queued commands become entries of at most batch_commands_max / batch_bytes_max."""
    net = started(3, opts=options(limits=Limits(batch_commands_max=4, batch_bytes_max=250)))
    leader = net.nodes[1]
    leader.propose([b"s%d" % k for k in range(10)])
    net.settle()
    leader.propose([b"L" * 100] * 3)  # 16 + 2 * 102 bytes fit in 250, a third does not
    net.settle()
    sizes = [len(e.payload) for e in net.applied[1] if e.kind == ENTRY_NORMAL]
    assert sizes == [4, 4, 2, 2, 1]
    assert all(entry_bytes(e) <= 250 for e in net.applied[1])
    net.tick(2)
    assert net.commands(2) == [b"s%d" % k for k in range(10)] + [b"L" * 100] * 3


def test_pipeline_window_bounds_entries_in_flight():
    """Per follower at most pipeline_window entries in flight, entries_per_message_max each."""
    limits = Limits(batch_commands_max=1, pipeline_window=3, entries_per_message_max=2)
    net = started(3, opts=options(limits=limits))
    net.drop = lambda m: isinstance(m, AppendEntriesReply)
    net.nodes[1].propose([b"%d" % k for k in range(20)])
    net.settle()
    sent = [m for m in net.delivered if isinstance(m, AppendEntries) and m.entries]
    assert all(len(m.entries) <= 2 for m in sent)
    top = max(e.index for m in sent for e in m.entries)
    assert top <= 1 + 3
    net.drop = None
    net.tick(4 * 2)
    assert net.commands(3) == [b"%d" % k for k in range(20)]


def test_queued_proposals_are_dropped_when_leadership_is_lost():
    """Commands not yet in an entry when the leader steps down come back in ProposalDropped."""
    net = started(3, opts=options(limits=Limits(batch_commands_max=1, pipeline_window=1)))
    net.isolate(1)
    net.nodes[1].propose([b"a", b"b", b"c"])
    net.settle()
    net.tick(E, nodes=[1])
    dropped = [ev for ev in net.events[1] if isinstance(ev, ProposalDropped)]
    assert dropped == [ProposalDropped((b"b", b"c"))]


def test_full_proposal_queue_raises_busy():
    """Proposals beyond proposal_queue_max raise Busy; non-leaders raise NotLeader."""
    net = started(3, opts=options(limits=Limits(proposal_queue_max=3)))
    net.nodes[1].propose([b"a", b"b"])
    with pytest.raises(Busy):
        net.nodes[1].propose([b"c", b"d"])
    with pytest.raises(NotLeader) as info:
        net.nodes[2].propose([b"x"])
    assert info.value.leader_hint == 1


# ---------------------------------------------------------------- robustness and introspection

def test_bad_messages_are_dropped_without_raising():
    """Malformed, misaddressed or foreign messages leave the replica unchanged."""
    net = started(3)
    replica = net.nodes[2]
    term = replica.term
    bad = [
        AppendEntries(1, 2, term, 1, term, (Entry(5, term, 0, ()),), 0, 0),  # gap
        AppendEntries(1, 2, term, 1, term, (Entry(2, term + 1, 0, ()),), 0, 0),  # future term
        AppendEntries(1, 2, term, 1, term, (Entry(2, term, ENTRY_CONFIG, (b"\xff",)),), 0, 0),
        AppendEntries(1, 2, term, 1, term, ("junk",), 0, 0),
        InstallSnapshot(1, 2, term, 0, 0, net.config, b""),
        Prepare(1, 2, Ballot(9, 1), 1, False),
        "not a message",
        RequestVote(9, 2, term + 1, 0, 0, False, True),  # unknown node
    ]
    before = replica.status()
    for msg in bad:
        replica.step(msg)
        replica.check_invariants()
    assert replica.status() == before


def test_codec_round_trip_cluster_works():
    """The cluster elects and replicates when every message goes through the CBOR codec."""
    net = Net([1, 2, 3], codec=True)
    net.elect(2)
    net.nodes[2].change_config({1, 2, 3}, learners=())
    net.propose(2, b"x")
    net.tick(2)
    assert net.commands(1) == [b"x"]


def test_status_reports_progress_on_the_leader():
    """status() has the documented fields; progress per peer only on the leader."""
    net = started(3)
    net.propose(1, b"x")
    net.tick(2)
    status = net.nodes[1].status()
    assert status.role == Role.LEADER and status.leader == 1
    assert status.config == "voters=1,2,3" and status.ticks_since_leader == 0
    assert set(status.progress) == {2, 3}
    assert status.progress[2] == PeerProgress(status.last_index, status.last_index + 1, 0)
    assert status.holes == () and status.ballot is None
    follower = net.nodes[2].status()
    assert follower.progress == {} and follower.leader == 1 and follower.role == Role.FOLLOWER
    assert follower.commit_index == follower.applied_index == status.commit_index


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_keep_one_value_per_index(seed):
    """Random drops, partitions and crashes: one value per index; commits resume after healing."""
    rng = random.Random(seed)
    limits = Limits(batch_commands_max=rng.choice([1, 4]), pipeline_window=rng.choice([1, 4]),
                    entries_per_message_max=rng.choice([1, 3]))
    net = Net([1, 2, 3, 4, 5], opts=options(limits=limits), seed=seed)
    run_random_faults(net, rng, drops=True)
    net.tick(6 * E)
    leader = net.leader()
    assert leader is not None
    net.propose(leader, b"final")
    net.tick(4)
    logs = [net.commands(i) for i in net.ids]
    assert all(log == logs[0] for log in logs) and logs[0][-1] == b"final"
