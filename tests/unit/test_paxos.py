"""Unit tests for MultiPaxosReplica (paxoslog.core.paxos), named after the protocol steps.

Two kinds of test.  Single-replica tests build one replica (restored from a chosen log when
needed), step hand-made messages into it and assert the exact Ready it answers with
(``ready.messages == [Promise(...)]``).  Cluster tests use ``Cluster``: replicas, one
``MemoryStorage`` each (the storage model the simulator and the scripts use: the real WAL
records, a crash keeps what was synced), a FIFO of messages in flight, blocked links and
crashed nodes; ``settle()`` honours the Ready contract (send the early messages, persist
and sync, send, apply, advance), and every entry any node applies is checked against the first value applied at
that slot anywhere.

Ballots are (round, node); a Multi-Paxos entry's ``term`` is the packed ballot it was
accepted at, so ``b(1, 1)`` below is ballot 1.1 packed.
"""

from __future__ import annotations

import random
from collections import deque

import pytest
from random_faults import run_random_faults

from paxoslog.core.ballot import Ballot
from paxoslog.core.errors import Busy, ConfigChangeInProgress, NotLeader
from paxoslog.core.limits import Limits
from paxoslog.core.log import (ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry, HardState,
                               SnapshotMeta, config_entry)
from paxoslog.core.messages import (Accept, Accepted, CatchupReply, CatchupRequest,
                                    Heartbeat, HeartbeatReply, InstallSnapshot,
                                    InstallSnapshotReply, Nack, Prepare, PreVote,
                                    PreVoteReply, Promise, TimeoutNow, decode, encode)
from paxoslog.core.paxos import MultiPaxosReplica
from paxoslog.core.quorum import Config
from paxoslog.core.ready import ConfigChanged, ProposalDropped, ReadState, Role, RoleChanged
from paxoslog.core.replica import ReplicaOptions, Restored
from paxoslog.storage import MemoryStorage

E = 10  # election ticks throughout
VOTERS3 = Config(frozenset({1, 2, 3}))


def options(**overrides) -> ReplicaOptions:
    limits = overrides.pop("limits", Limits())
    base = dict(heartbeat_ticks=2, election_ticks=E, limits=limits)
    base.update(overrides)
    return ReplicaOptions(**base)


def b(round_: int, node: int) -> int:
    """The packed ballot round.node (what an entry's ``term`` holds)."""
    return Ballot(round_, node).pack()


def value(slot: int, ballot: int, *commands: bytes) -> Entry:
    return Entry(slot, ballot, ENTRY_NORMAL, tuple(commands))


def noop(slot: int, ballot: int) -> Entry:
    return Entry(slot, ballot, ENTRY_NOOP, ())


def replica(node_id: int = 2, config: Config = VOTERS3, restored: Restored | None = None,
            **opts) -> MultiPaxosReplica:
    return MultiPaxosReplica(node_id, config, options(**opts), random.Random(node_id), restored)


def drain(r: MultiPaxosReplica):
    """The next Ready, reported done (the caller persisted, sent and applied it)."""
    ready = r.ready()
    assert ready is not None
    r.advance(ready)
    r.check_invariants()
    return ready


def pump(r: MultiPaxosReplica):
    """Like drain, for steps that may produce nothing (returns None then)."""
    ready = r.ready()
    if ready is not None:
        r.advance(ready)
        r.check_invariants()
    return ready


def candidate(node_id: int = 1, config: Config = VOTERS3, restored: Restored | None = None,
              **opts) -> MultiPaxosReplica:
    """A replica that timed out without pre-vote and sent its Prepares (already drained)."""
    r = replica(node_id, config, restored, pre_vote=False, **opts)
    for _ in range(2 * E):
        r.tick()
        if r.role == Role.CANDIDATE:
            break
    assert r.role == Role.CANDIDATE
    drain(r)
    return r


def leader(node_id: int = 1, config: Config = VOTERS3, **opts) -> MultiPaxosReplica:
    """A leader at ballot 1.<node_id> with an empty log (empty promises from the lowest
    voters); its first Ready is drained."""
    r = candidate(node_id, config, **opts)
    for peer in sorted(config.voters - {node_id}):
        if r.role == Role.LEADER:
            break
        r.step(Promise(peer, node_id, r.ballot, (), 0, 1, 0))
    assert r.role == Role.LEADER
    drain(r)
    return r


B11 = Ballot(1, 1)
VOTERS5 = Config(frozenset({1, 2, 3, 4, 5}))


# ---------------------------------------------------------------- a small cluster

class Cluster:
    """Replicas with one MemoryStorage each and a FIFO network (see the module docstring)."""

    def __init__(self, n: int = 3, voters=None, learners=(), seed: int = 0, **opts) -> None:
        self.ids = list(range(1, n + 1))
        self.opts = options(**opts)
        self.config = Config(frozenset(voters or self.ids), learners=frozenset(learners))
        self.seed = seed
        self.disks = {i: MemoryStorage(i) for i in self.ids}
        self.nodes = {i: self._boot(i) for i in self.ids}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.readies: dict[int, list] = {i: [] for i in self.ids}
        self.chosen: dict[int, Entry] = {}
        self.queue: deque = deque()
        self.delivered: list = []
        self.down: set[int] = set()
        self.blocked: set[tuple[int, int]] = set()
        self.codec = False

    def _boot(self, i: int) -> MultiPaxosReplica:
        restored, _ = self.disks[i].load()
        return MultiPaxosReplica(i, self.config, self.opts,
                                 random.Random(self.seed * 1000 + i), restored)

    def isolate(self, node: int) -> None:
        self.blocked |= {(a, b_) for a in self.ids for b_ in self.ids
                         if a != b_ and node in (a, b_)}

    def heal(self) -> None:
        self.blocked.clear()

    def crash(self, node: int) -> None:
        self.down.add(node)
        self.disks[node].crash()

    def restart(self, node: int) -> None:
        self.down.discard(node)
        self.nodes[node] = self._boot(node)
        self.applied[node] = []

    def flush(self, node: int) -> None:
        r = self.nodes[node]
        while (ready := r.ready()) is not None:
            self.readies[node].append(ready)
            for msg in ready.early_messages:   # the leader's traffic may precede the fsync
                self.queue.append(decode(encode(msg)) if self.codec else msg)
            self.disks[node].save(ready)    # written and synced before the rest is sent
            for msg in ready.messages:
                self.queue.append(decode(encode(msg)) if self.codec else msg)
            for entry in ready.committed:
                assert entry.index == len(self.applied[node]) + 1, (node, entry.index)
                first = self.chosen.setdefault(entry.index, entry)
                assert first.same_value(entry), f"two values at slot {entry.index}"
                self.applied[node].append(entry)
            r.advance(ready)
            r.check_invariants()

    def settle(self, steps_max: int = 100000) -> None:
        for _ in range(steps_max):
            for node in self.ids:
                if node not in self.down:
                    self.flush(node)
            if not self.queue:
                return
            msg = self.queue.popleft()
            if msg.to in self.down or msg.frm in self.down or (msg.frm, msg.to) in self.blocked:
                continue
            self.delivered.append(msg)
            self.nodes[msg.to].step(msg)
            self.nodes[msg.to].check_invariants()
        raise AssertionError("network did not settle")

    def tick(self, n: int = 1, nodes=None) -> None:
        for _ in range(n):
            for node in nodes if nodes is not None else self.ids:
                if node not in self.down:
                    self.nodes[node].tick()
            self.settle()

    def elect(self, target: int) -> None:
        """Everyone goes an election timeout without hearing anything; then only the target
        ticks until it leads."""
        saved, self.blocked = self.blocked, {(a, b_) for a in self.ids for b_ in self.ids}
        self.tick(E)
        self.blocked = saved
        for _ in range(6 * E):
            self.tick(1, nodes=[target])
            if self.nodes[target].role == Role.LEADER:
                return
        raise AssertionError(f"node {target} did not win: {self.nodes[target].status()}")

    def leader(self) -> int | None:
        leaders = [i for i in self.ids if i not in self.down
                   and self.nodes[i].role == Role.LEADER]
        return max(leaders, key=lambda i: self.nodes[i].promised) if leaders else None

    def propose(self, node: int, *commands: bytes) -> None:
        self.nodes[node].propose(list(commands))
        self.settle()

    def commands(self, node: int) -> list[bytes]:
        return [c for e in self.applied[node] if e.kind == ENTRY_NORMAL for c in e.payload]


def started(n: int = 3, leader_id: int = 1, **kw) -> Cluster:
    cluster = Cluster(n, **kw)
    cluster.elect(leader_id)
    cluster.settle()
    return cluster


# ---------------------------------------------------------------- phase 1

def test_prepare_covers_every_slot_from_the_first_unchosen_one():
    """A candidate with slots 1-2 chosen and 3 only accepted prepares from slot 3, once,
    with its new promise in the hard state of the same Ready."""
    restored = Restored(HardState(b(1, 2), 0, 2),
                        [value(1, b(1, 2), b"a"), value(2, b(1, 2), b"b"),
                         value(3, b(1, 2), b"c")])
    r = replica(1, restored=restored, pre_vote=False)
    for _ in range(2 * E):
        r.tick()
        if r.role == Role.CANDIDATE:
            break
    ready = r.ready()
    assert ready.hard_state == HardState(b(2, 1), 0, 2)
    assert ready.messages == [Prepare(1, 2, Ballot(2, 1), 3, False),
                              Prepare(1, 3, Ballot(2, 1), 3, False)]
    assert RoleChanged(Role.CANDIDATE, 2, None) in ready.events


def test_promise_returns_every_accepted_value_at_or_above_from_slot():
    """Phase 1b: the Promise carries slots >= from_slot with the ballot each was accepted at,
    the acceptor's chosen watermark, and is persisted in the Ready that sends it."""
    entries = [value(1, b(1, 1), b"a"), value(2, b(1, 1), b"b"), noop(3, b(2, 3)),
               value(5, b(1, 1), b"e")]
    r = replica(2, restored=Restored(HardState(b(2, 3), 0, 1), entries))
    r.tick()  # nothing heard from a leader since boot: no stickiness to bypass
    r.step(Prepare(1, 2, Ballot(3, 1), 2, False))
    ready = drain(r)
    assert ready.hard_state == HardState(b(3, 1), 0, 1)
    assert ready.messages == [Promise(2, 1, Ballot(3, 1), tuple(entries[1:]), 1, 1, 0)]


def test_prepare_below_the_promised_ballot_is_nacked():
    """An acceptor refuses a lower ballot and says what it promised; nothing is persisted."""
    r = replica(2, restored=Restored(HardState(b(2, 3)), []))
    r.step(Prepare(1, 2, Ballot(1, 1), 1, True))
    ready = drain(r)
    assert ready.hard_state is None
    assert ready.messages == [Nack(2, 1, Ballot(1, 1), Ballot(2, 3))]


def test_accept_and_heartbeat_below_the_promised_ballot_are_nacked():
    """Phase 2a and heartbeats of a deposed leader get a Nack; nothing is accepted."""
    r = replica(2, restored=Restored(HardState(b(2, 3)), []))
    r.step(Accept(1, 2, Ballot(1, 1), (value(1, b(1, 1), b"x"),), 0))
    r.step(Heartbeat(1, 2, Ballot(1, 1), 0, (), 4))
    ready = drain(r)
    assert ready.entries == []
    assert ready.messages == [Nack(2, 1, Ballot(1, 1), Ballot(2, 3)),
                              Nack(2, 1, Ballot(1, 1), Ballot(2, 3))]



@pytest.mark.parametrize("payload", [(), (b"",), (b"\xff\xfe not cbor",), (b"\x01",)])
def test_a_config_entry_that_does_not_decode_drops_the_message(payload):
    """The wire decoder checks an entry's types, not a CONFIG payload: such an entry in an
    Accept, a catch-up reply or a Promise once stopped the node where it was chosen or
    applied (found by a review).  The message is dropped, as Raft drops such an append;
    nothing is accepted, answered or chosen."""
    bad = Entry(1, b(1, 1), ENTRY_CONFIG, payload)
    r = replica(2)
    r.step(Accept(1, 2, Ballot(1, 1), (value(2, b(1, 1), b"x"), bad), 0))
    r.step(Heartbeat(1, 2, Ballot(1, 1), 0, (1, 2), 4))
    r.step(CatchupReply(3, 2, Ballot(1, 1), (bad,), 1))
    ready = drain(r)
    assert ready.entries == [] and r.log.chosen_upto == 0
    assert not any(isinstance(m, Accepted) for m in ready.messages)
    good = config_entry(1, b(1, 1), VOTERS3)
    r.step(Accept(1, 2, Ballot(1, 1), (good,), 0))
    assert [e.index for e in drain(r).entries] == [1]

def test_candidate_backs_off_on_a_nack_and_adopts_the_higher_promise():
    """A Nack with a higher promise ends the candidacy; the promise is persisted (R6)."""
    r = candidate(1)
    r.step(Nack(2, 1, Ballot(1, 1), Ballot(4, 3)))
    ready = drain(r)
    assert r.role == Role.FOLLOWER and r.promised == Ballot(4, 3)
    assert ready.hard_state == HardState(b(4, 3), 0, 0)
    assert ready.events == [RoleChanged(Role.FOLLOWER, 4, None)]


def test_large_promises_are_paged_and_the_candidate_asks_for_each_page():
    """A Promise stops at message_bytes_max and names the next slot; the candidate asks for
    the next page with another Prepare at the same ballot and leads once it has them all."""
    limits = Limits(message_bytes_max=40)
    entries = [value(i, b(1, 2), b"v%d" % i) for i in range(1, 6)]  # 20 bytes each
    acceptor = replica(2, restored=Restored(HardState(b(1, 2)), entries), limits=limits)
    acceptor.tick()
    cand = candidate(1, limits=limits, restored=Restored(HardState(b(1, 1)), []))
    assert cand.ballot == Ballot(2, 1)
    acceptor.step(Prepare(1, 2, Ballot(2, 1), 1, False))
    pages = []
    for start, stop, next_slot in ((1, 3, 3), (3, 5, 5), (5, 6, 0)):
        promise = drain(acceptor).messages
        assert promise == [Promise(2, 1, Ballot(2, 1), tuple(entries[start - 1:stop - 1]), 0,
                                   1, next_slot)]
        pages.append(promise[0])
        cand.step(promise[0])
        if next_slot:
            ask = drain(cand).messages
            assert ask == [Prepare(1, 2, Ballot(2, 1), next_slot, True)]
            acceptor.step(ask[0])
    assert cand.role == Role.LEADER
    ready = drain(cand)
    mine = [e.with_term(b(2, 1)) for e in entries]
    to_2 = [m for m in ready.early_messages if isinstance(m, Accept) and m.to == 2]
    assert to_2 == [Accept(1, 2, Ballot(2, 1), tuple(mine[0:2]), 0),  # chunked by the same
                    Accept(1, 2, Ballot(2, 1), tuple(mine[2:4]), 0),  # byte bound
                    Accept(1, 2, Ballot(2, 1), tuple(mine[4:5]), 0)]


# ---------------------------------------------------------------- phase 2

def test_accept_batches_commands_into_slots_and_carries_many_slots():
    """Queued commands fill slots of at most batch_commands_max; one Accept per peer carries
    every new slot, persisted in the same Ready (a leader's own acceptance); the Accepts
    may leave before that Ready is durable (early messages)."""
    r = leader(limits=Limits(batch_commands_max=2))
    r.propose([b"a", b"b", b"c", b"d", b"e"])
    ready = drain(r)
    slots = (value(1, b(1, 1), b"a", b"b"), value(2, b(1, 1), b"c", b"d"),
             value(3, b(1, 1), b"e"))
    assert ready.entries == list(slots)
    assert ready.early_messages == [Accept(1, 2, B11, slots, 0), Accept(1, 3, B11, slots, 0)]
    assert ready.messages == [] and ready.committed == []


def test_pipeline_window_bounds_the_slots_in_flight():
    """At most pipeline_window slots beyond the chosen watermark are in flight; a slot
    chosen frees room for the next."""
    r = leader(limits=Limits(batch_commands_max=1, pipeline_window=2))
    r.propose([b"a", b"b", b"c", b"d"])
    ready = drain(r)
    assert [e.index for e in ready.entries] == [1, 2]
    r.step(Accepted(2, 1, B11, (1,)))
    ready = drain(r)
    assert ready.committed == [value(1, b(1, 1), b"a")]
    assert ready.entries == [value(3, b(1, 1), b"c")]
    assert ready.early_messages == [Accept(1, 2, B11, (value(3, b(1, 1), b"c"),), 1),
                                    Accept(1, 3, B11, (value(3, b(1, 1), b"c"),), 1)]


def test_the_leaders_own_acceptance_counts_only_once_its_ready_is_advanced():
    """Send before persist: an Accepted from node 2 that arrives while the Ready holding
    slot 1 is being persisted does not choose it ({2} alone); advance() of that Ready
    adds the leader's durable acceptance and the slot is chosen."""
    r = leader()
    r.propose([b"x"])
    ready = r.ready()
    assert ready.early_messages == [Accept(1, 2, B11, (value(1, b(1, 1), b"x"),), 0),
                                    Accept(1, 3, B11, (value(1, b(1, 1), b"x"),), 0)]
    r.step(Accepted(2, 1, B11, (1,)))
    assert r.commit_index == 0
    r.advance(ready)
    assert r.commit_index == 1
    assert drain(r).committed == [value(1, b(1, 1), b"x")]


def test_a_single_voter_chooses_its_slot_only_after_the_fsync():
    """With voter 1 alone (and learner 2) the leader's own acceptance is a quorum: the Ready
    that carries slot 1 sends the Accept early with the old watermark (0) and commits
    nothing; after advance, the next Ready persists the watermark and applies the slot.
    (Counting at once would tell the learner slot 1 is chosen before it is durable
    anywhere: the simulator's negative control, tests/sim/test_own_ack.py.)"""
    solo = Config(frozenset({1}), learners=frozenset({2}))
    r = replica(1, solo, pre_vote=False)
    for _ in range(2 * E):
        r.tick()
    assert r.role == Role.LEADER
    drain(r)
    r.propose([b"x"])
    ready = r.ready()
    assert ready.entries == [value(1, b(1, 1), b"x")] and ready.committed == []
    assert ready.early_messages == [Accept(1, 2, B11, (value(1, b(1, 1), b"x"),), 0)]
    r.advance(ready)
    ready = drain(r)
    assert ready.hard_state == HardState(b(1, 1), 0, 1)
    assert ready.committed == [value(1, b(1, 1), b"x")]


def test_nothing_is_sent_early_at_a_promise_that_is_not_yet_durable():
    """A single voter that elects itself proposes at once, in the Ready that persists its
    new promise: its Accept waits for that fsync like any message (else a restart could
    reuse the ballot for other values)."""
    solo = Config(frozenset({1}), learners=frozenset({2}))
    r = replica(1, solo, pre_vote=False, restored=Restored(
        HardState(b(1, 1), 0, 0), [value(1, b(1, 1), b"x")]))
    for _ in range(2 * E):
        r.tick()
    assert r.role == Role.LEADER
    ready = drain(r)
    assert ready.hard_state == HardState(b(2, 1), 0, 0)
    assert ready.early_messages == []
    assert Accept(1, 2, Ballot(2, 1), (value(1, b(2, 1), b"x"),), 0) in ready.messages


def test_an_acceptance_persisted_after_losing_leadership_does_not_count():
    """Deposed while the Ready holding slot 1 is persisted, the old leader counts nothing
    on advance (the slot is not chosen by it)."""
    r = leader()
    r.propose([b"x"])
    ready = r.ready()
    r.step(Nack(2, 1, B11, Ballot(2, 3)))
    assert r.role == Role.FOLLOWER
    r.advance(ready)
    assert r.commit_index == 0 and not r.inflight


def test_accepts_are_split_at_entries_per_message_max():
    """A burst of slots goes out in several Accepts per peer, each within the bound."""
    r = leader(limits=Limits(batch_commands_max=1, entries_per_message_max=2))
    r.propose([b"a", b"b", b"c"])
    ready = drain(r)
    e1, e2, e3 = (value(i, b(1, 1), c) for i, c in ((1, b"a"), (2, b"b"), (3, b"c")))
    assert ready.early_messages == [Accept(1, 2, B11, (e1, e2), 0), Accept(1, 2, B11, (e3,), 0),
                                    Accept(1, 3, B11, (e1, e2), 0), Accept(1, 3, B11, (e3,), 0)]


def test_acceptor_persists_what_it_accepts_before_replying_accepted():
    """Phase 2b: the accepted slots and the raised promise are in the Ready that carries the
    Accepted reply (the shell persists before it sends)."""
    r = replica(2)
    e1, e2 = value(1, b(1, 1), b"x"), value(2, b(1, 1), b"y")
    r.step(Accept(1, 2, B11, (e1, e2), 0))
    ready = drain(r)
    assert ready.hard_state == HardState(b(1, 1), 0, 0)
    assert ready.entries == [e1, e2]
    assert ready.messages == [Accepted(2, 1, B11, (1, 2))]
    assert ready.events == [RoleChanged(Role.FOLLOWER, 1, 1)]


def test_slot_is_chosen_when_a_phase2_quorum_accepted_it():
    """With its own acceptance, one Accepted of three voters chooses the slot: it is applied
    and the watermark is persisted; a late second Accepted changes nothing."""
    r = leader()
    r.propose([b"x"])
    drain(r)
    r.step(Accepted(2, 1, B11, (1,)))
    ready = drain(r)
    assert ready.committed == [value(1, b(1, 1), b"x")]
    assert ready.hard_state == HardState(b(1, 1), 0, 1)
    r.step(Accepted(3, 1, B11, (1,)))
    assert r.ready() is None


def test_accepted_for_another_ballot_is_not_counted():
    """An acceptance at another ballot (an older leadership) does not help choose a slot."""
    r = leader()
    r.propose([b"x"])
    drain(r)
    r.step(Accepted(2, 1, Ballot(0, 2), (1,)))
    assert r.ready() is None and r.commit_index == 0


def test_out_of_order_chosen_slots_are_applied_in_slot_order():
    """Slot 2 chosen before slot 1 waits (and is announced in the heartbeat's chosen set);
    when slot 1 is chosen, both are applied in order."""
    r = leader(config=VOTERS5, limits=Limits(batch_commands_max=1))
    r.propose([b"a", b"b"])
    drain(r)
    r.step(Accepted(2, 1, B11, (2,)))
    r.step(Accepted(3, 1, B11, (2,)))
    ready = drain(r)
    assert ready.committed == [] and r.commit_index == 0
    r.tick()
    r.tick()
    beats = [m for m in drain(r).early_messages if isinstance(m, Heartbeat)]
    assert beats[0] == Heartbeat(1, 2, B11, 0, (2,), 2)
    r.step(Accepted(2, 1, B11, (1,)))
    r.step(Accepted(4, 1, B11, (1,)))
    ready = drain(r)
    assert ready.committed == [value(1, b(1, 1), b"a"), value(2, b(1, 1), b"b")]
    assert ready.hard_state.commit == 2


def test_follower_learns_chosen_slots_from_the_watermark_and_the_chosen_set():
    """Heartbeat commit=1, chosen=(3,): slot 1 is applied, slot 3 waits for slot 2; the next
    watermark releases both.  The reply reports the follower's watermark and last slot."""
    r = replica(2)
    e1, e2, e3 = (value(i, b(1, 1), c) for i, c in ((1, b"a"), (2, b"b"), (3, b"c")))
    r.step(Accept(1, 2, B11, (e1, e2, e3), 0))
    drain(r)
    r.step(Heartbeat(1, 2, B11, 1, (3,), 5))
    ready = drain(r)
    assert ready.committed == [e1]
    assert ready.messages == [HeartbeatReply(2, 1, B11, 5, 1, 3)]
    r.step(Heartbeat(1, 2, B11, 2, (), 6))
    assert drain(r).committed == [e2, e3]


def test_follower_fetches_a_chosen_slot_it_holds_at_another_ballot():
    """A follower marks a slot chosen only when it holds it at the leader's ballot; else it
    asks for the chosen value (catch-up) and applies the reply."""
    r = replica(2, restored=Restored(HardState(b(1, 1)), [value(1, b(1, 1), b"old")]))
    r.step(Heartbeat(3, 2, Ballot(2, 3), 1, (), 1))
    ready = drain(r)
    assert ready.committed == []
    assert ready.messages == [CatchupRequest(2, 3, Ballot(2, 3), (1,)),
                              HeartbeatReply(2, 3, Ballot(2, 3), 1, 0, 1)]
    chosen = value(1, b(2, 3), b"new")
    r.step(CatchupReply(3, 2, Ballot(2, 3), (chosen,), 1))
    ready = drain(r)
    assert ready.entries == [chosen] and ready.committed == [chosen]


def test_catchup_request_is_answered_with_chosen_values_only():
    """A catch-up reply carries chosen slots (with the ballot they were chosen at), never a
    slot still in flight."""
    r = leader(limits=Limits(batch_commands_max=1))
    r.propose([b"a", b"b", b"c"])
    drain(r)
    r.step(Accepted(2, 1, B11, (1, 2)))
    drain(r)
    r.step(CatchupRequest(3, 1, Ballot(1, 1), (1, 2, 3)))
    ready = drain(r)
    assert ready.messages == [CatchupReply(1, 3, B11, (value(1, b(1, 1), b"a"),
                                                       value(2, b(1, 1), b"b")), 2)]


# ---------------------------------------------------------------- a new leader (R7)

def test_new_leader_reproposes_the_highest_ballot_values_and_fills_holes_with_noops():
    """Phase 1 reports slot 1 at 1.1 and 2.3, slot 3 at 1.1, slot 4 at 2.3 and nothing for
    slot 2: the new leader proposes, at its own ballot, the 2.3 value for slot 1, a no-op
    for slot 2, and the reported values of slots 3 and 4 (Paxos Made Simple, section 3)."""
    r = candidate(1, VOTERS5, restored=Restored(HardState(b(2, 3)), []))
    mine = r.ballot
    assert mine == Ballot(3, 1)
    r.step(Promise(2, 1, mine, (value(1, b(1, 1), b"x"), value(3, b(1, 1), b"y")), 0, 1, 0))
    assert r.role == Role.CANDIDATE
    r.step(Promise(3, 1, mine, (value(1, b(2, 3), b"z"), value(4, b(2, 3), b"w")), 0, 1, 0))
    assert r.role == Role.LEADER
    ready = drain(r)
    slots = (value(1, mine.pack(), b"z"), noop(2, mine.pack()), value(3, mine.pack(), b"y"),
             value(4, mine.pack(), b"w"))
    assert ready.entries == list(slots)
    assert ready.early_messages[:4] == [Accept(1, peer, mine, slots, 0)
                                        for peer in (2, 3, 4, 5)]
    assert ready.early_messages[4:] == [Heartbeat(1, peer, mine, 0, (), 1)
                                        for peer in (2, 3, 4, 5)]
    assert RoleChanged(Role.LEADER, 3, 1) in ready.events


def test_new_leader_serves_proposals_after_the_inherited_slots():
    """New commands get slots after every inherited one, in the same Ready."""
    r = candidate(1)
    r.step(Promise(2, 1, r.ballot, (value(2, b(0, 2), b"old"),), 0, 1, 0))
    r.propose([b"new"])
    ready = drain(r)
    assert [(e.index, e.kind, e.payload) for e in ready.entries] == \
        [(1, ENTRY_NOOP, ()), (2, ENTRY_NORMAL, (b"old",)), (3, ENTRY_NORMAL, (b"new",))]


# ---------------------------------------------------------------- failure detection

def test_prevote_asks_for_support_without_raising_the_promise():
    """A timed-out node first asks for pre-votes at the next round; nothing is persisted
    until a quorum grants, then it prepares for real."""
    r = replica(1)
    for _ in range(2 * E):
        r.tick()
        if r.role == Role.PRE_CANDIDATE:
            break
    ready = drain(r)
    assert ready.hard_state is None
    assert ready.messages == [PreVote(1, 2, B11, 1), PreVote(1, 3, B11, 1)]
    assert ready.events == [RoleChanged(Role.PRE_CANDIDATE, 0, None)]
    r.step(PreVoteReply(2, 1, B11, True, 0))
    ready = drain(r)
    assert ready.hard_state == HardState(b(1, 1), 0, 0)
    assert ready.messages == [Prepare(1, 2, B11, 1, False), Prepare(1, 3, B11, 1, False)]


def test_prevote_is_refused_while_a_leader_is_heard():
    """Leader stickiness: a follower that heard its leader within an election timeout
    refuses a pre-vote (R4a)."""
    r = replica(2)
    r.step(Heartbeat(1, 2, B11, 0, (), 1))
    drain(r)
    r.step(PreVote(3, 2, Ballot(2, 3), 1))
    assert drain(r).messages == [PreVoteReply(2, 3, Ballot(2, 3), False, 0)]


def test_prevote_is_refused_to_a_candidate_behind_our_chosen_watermark():
    """A candidate whose first unchosen slot is below ours is refused, and learns from the
    reply how far we are (so it can catch up)."""
    entries = [value(1, b(1, 1), b"a"), value(2, b(1, 1), b"b")]
    r = replica(2, restored=Restored(HardState(b(1, 1), 0, 2), entries))
    r.step(PreVote(3, 2, Ballot(2, 3), 1))
    assert drain(r).messages == [PreVoteReply(2, 3, Ballot(2, 3), False, 2)]
    r.step(PreVote(3, 2, Ballot(2, 3), 3))
    assert drain(r).messages == [PreVoteReply(2, 3, Ballot(2, 3), True, 2)]


def test_prepare_is_ignored_while_the_leader_is_heard_unless_forced():
    """A follower ignores a higher Prepare while its leader is alive (no promise, no reply);
    a forced one (leader transfer) is promised."""
    r = replica(2)
    r.step(Heartbeat(1, 2, B11, 0, (), 1))
    drain(r)
    r.step(Prepare(3, 2, Ballot(2, 3), 1, False))
    assert r.ready() is None and r.promised == B11
    r.step(Prepare(3, 2, Ballot(2, 3), 1, True))
    ready = drain(r)
    assert ready.hard_state == HardState(b(2, 3), 0, 0)
    assert ready.messages == [Promise(2, 3, Ballot(2, 3), (), 0, 1, 0)]


def test_leader_ignores_prepares_under_check_quorum():
    """A healthy leader (check-quorum keeps it honest) neither promises nor steps down when
    a disruptive Prepare arrives."""
    r = leader()
    r.step(Prepare(3, 1, Ballot(5, 3), 1, False))
    assert r.ready() is None and r.role == Role.LEADER and r.promised == B11


def test_check_quorum_steps_down_at_the_end_of_a_window_without_a_quorum():
    """The leader checks, every election timeout, whom it heard from in that window: heard
    from node 2 at tick 1, it survives the check at tick 10 and steps down at tick 20; the
    commands it had queued come back as ProposalDropped (R4d)."""
    r = leader(limits=Limits(batch_commands_max=1, pipeline_window=1))
    r.propose([b"a", b"b", b"c"])
    drain(r)
    r.tick()
    r.step(HeartbeatReply(2, 1, B11, 1, 0, 0))
    pump(r)
    steps = []
    for tick in range(2, 2 * E + 1):
        r.tick()
        ready = pump(r)
        if ready is not None and any(isinstance(ev, RoleChanged) for ev in ready.events):
            steps.append((tick, ready.events))
    assert steps == [(20, [ProposalDropped((b"b", b"c")),
                           RoleChanged(Role.FOLLOWER, 1, None)])]
    with pytest.raises(NotLeader):
        r.propose([b"x"])
    with pytest.raises(NotLeader):
        r.read_index("r")


def test_without_check_quorum_an_isolated_leader_keeps_leading():
    """check_quorum=False: nothing heard for many timeouts, still leader."""
    r = leader(check_quorum=False)
    for _ in range(5 * E):
        r.tick()
        pump(r)
    assert r.role == Role.LEADER


# ---------------------------------------------------------------- leader transfer

def test_leader_transfer_waits_for_the_target_then_sends_timeout_now():
    """Proposals are refused during a transfer; TimeoutNow goes out only once the target
    reports every slot chosen, and the old leader keeps leading until the target's forced
    Prepare arrives."""
    r = leader()
    r.propose([b"x"])
    drain(r)
    r.transfer_leadership(3)
    with pytest.raises(Busy, match="leadership transfer in progress"):
        r.propose([b"no"])
    r.step(Accepted(3, 1, B11, (1,)))
    assert not any(isinstance(m, TimeoutNow) for m in drain(r).messages)
    r.step(HeartbeatReply(3, 1, B11, 1, 1, 1))
    ready = drain(r)
    assert ready.messages == [TimeoutNow(1, 3, b(1, 1))]
    assert ready.events == [] and r.role == Role.LEADER
    r.step(Prepare(3, 1, Ballot(2, 3), 2, True))
    ready = drain(r)
    assert ready.messages == [Promise(1, 3, Ballot(2, 3), (), 1, 1, 0)]
    assert ready.events == [RoleChanged(Role.FOLLOWER, 1, None)]


def test_a_lost_timeout_now_is_sent_again_on_the_targets_next_heartbeat_reply():
    """Only a reply from the target itself repeats TimeoutNow (not every peer's)."""
    r = leader()
    r.transfer_leadership(3)  # up to date: TimeoutNow at once
    assert drain(r).messages == [TimeoutNow(1, 3, b(1, 1))]
    r.step(HeartbeatReply(2, 1, B11, 1, 0, 0))
    assert r.ready() is None
    r.step(HeartbeatReply(3, 1, B11, 1, 0, 0))
    assert drain(r).messages == [TimeoutNow(1, 3, b(1, 1))]


def test_timeout_now_starts_a_forced_prepare_at_once():
    """The target skips pre-vote and its leader's stickiness: it prepares right away with
    force set, so the others promise although they heard the leader."""
    r = replica(3)
    r.step(Heartbeat(1, 3, B11, 0, (), 1))
    drain(r)
    r.step(TimeoutNow(1, 3, b(1, 1)))
    ready = drain(r)
    assert ready.hard_state == HardState(b(2, 3), 0, 0)
    assert ready.messages == [Prepare(3, 1, Ballot(2, 3), 1, True),
                              Prepare(3, 2, Ballot(2, 3), 1, True)]


def test_transfer_to_a_non_voter_is_refused():
    """transfer_leadership to a node outside the voters raises ValueError; to itself is a
    no-op; on a follower it raises NotLeader."""
    r = leader()
    with pytest.raises(ValueError, match="node 7 is not a voter"):
        r.transfer_leadership(7)
    r.transfer_leadership(1)
    assert r.role == Role.LEADER
    with pytest.raises(NotLeader):
        replica(2).transfer_leadership(3)


def test_transfer_to_an_unreachable_target_is_abandoned():
    """A transfer whose TimeoutNow goes nowhere is abandoned after an election timeout and
    the leader takes proposals again, without an election in between."""
    r = leader()
    r.step(HeartbeatReply(3, 1, B11, 1, 0, 0))
    assert r.ready() is None
    r.transfer_leadership(3)  # the target is up to date: TimeoutNow at once, then lost
    assert drain(r).messages == [TimeoutNow(1, 3, b(1, 1))]
    for _ in range(E):
        r.tick()
        r.step(HeartbeatReply(2, 1, B11, r.rounds.round, 0, 0))
        pump(r)
    assert r.role == Role.LEADER
    r.propose([b"taken"])


# ---------------------------------------------------------------- fast failover

def follower_of_1(node_id: int = 2, **opts) -> MultiPaxosReplica:
    """Node ``node_id`` of voters 1-3, following leader 1 (one heartbeat heard, drained)."""
    r = replica(node_id, **opts)
    r.step(Heartbeat(1, node_id, B11, 0, (), 1))
    drain(r)
    return r


def test_a_reset_of_the_leaders_connection_makes_the_follower_campaign_at_once():
    """leader_unreachable(leader): the follower forgets it (no leader for the shell to
    forward to) and, first of the other voters by id, pre-votes on the next tick."""
    r = follower_of_1(2)
    r.leader_unreachable(1)
    assert drain(r).events == [RoleChanged(Role.FOLLOWER, 1, None)]
    r.tick()
    assert drain(r).messages == [PreVote(2, 1, Ballot(2, 2), 1), PreVote(2, 3, Ballot(2, 2), 1)]


def test_followers_after_a_reset_stagger_by_rank_and_grant_at_once():
    """Node 3 (second of the other voters) waits one tick more, and meanwhile grants node
    2's pre-vote and Prepare although it heard the leader a tick ago."""
    r = follower_of_1(3)
    r.leader_unreachable(1)
    drain(r)
    r.tick()
    assert r.ready() is None
    r.step(PreVote(2, 3, Ballot(2, 2), 1))
    assert drain(r).messages == [PreVoteReply(3, 2, Ballot(2, 2), True, 0)]
    r.step(Prepare(2, 3, Ballot(2, 2), 1, False))
    assert drain(r).messages == [Promise(3, 2, Ballot(2, 2), (), 0, 1, 0)]
    r.tick()
    assert r.ready() is None and r.role == Role.FOLLOWER  # the promise restarted the timer


def test_a_reset_of_another_peer_is_ignored_and_each_reset_of_the_leaders_pre_votes():
    """Only the leader's connection counts.  A flapping one (the leader lives): each reset
    forgets the leader and pre-votes on the next tick (refused while the others hear the
    leader: nothing durable changes); the leader heard again restores it."""
    r = follower_of_1(2)
    r.leader_unreachable(3)
    assert r.ready() is None and r.leader_id == 1
    r.leader_unreachable(1)
    drain(r)
    r.step(Heartbeat(1, 2, B11, 0, (), 2))    # the leader was alive after all
    drain(r)
    assert r.leader_id == 1
    r.leader_unreachable(1)                   # the connection flaps again
    assert drain(r).events == [RoleChanged(Role.FOLLOWER, 1, None)]
    r.tick()
    assert drain(r).messages == [PreVote(2, 1, Ballot(2, 2), 1), PreVote(2, 3, Ballot(2, 2), 1)]
    r.step(Heartbeat(1, 2, B11, 0, (), 3))    # refused everywhere; the leader goes on
    assert drain(r).events == [RoleChanged(Role.FOLLOWER, 1, 1)]
    for _ in range(E - 1):                    # no early campaign: the timer is a drawn one
        r.tick()
        pump(r)
        assert r.role == Role.FOLLOWER


def test_an_early_pre_vote_refused_is_repeated_every_two_ticks_per_other_voter():
    """Node 2's early pre-vote is refused (node 3 has not seen the reset yet): it pre-votes
    again 2 x 2 ticks later, and again, until an election timeout since the first."""
    r = follower_of_1(2)
    r.leader_unreachable(1)
    drain(r)
    r.tick()
    drain(r)
    r.step(PreVoteReply(3, 2, Ballot(2, 2), False, 0))
    sent_at = []
    for tick in range(2, E + 3):
        r.tick()
        if (ready := pump(r)) is not None and ready.messages:
            sent_at.append(tick)
    assert sent_at == [5, 9]


def test_without_pre_vote_a_flapping_connection_campaigns_early_once_per_timeout():
    """pre_vote off: an early campaign would depose a live leader (a new ballot), so a
    follower campaigns early at most once per election timeout, however often the
    leader's connection resets."""
    r = follower_of_1(2, pre_vote=False)
    r.leader_unreachable(1)
    drain(r)
    r.step(Heartbeat(1, 2, B11, 0, (), 2))    # the leader was alive after all
    drain(r)
    r.leader_unreachable(1)                   # flaps again: no second early campaign
    drain(r)
    for _ in range(E - 1):
        r.tick()
        pump(r)
        assert r.role == Role.FOLLOWER


def test_with_leases_a_reset_still_refuses_votes_for_the_election_timeout():
    """lease_ticks > 0: the leader may still hold a lease (a reset is no proof it stopped
    serving), so pre-votes are refused until an election timeout after its last message;
    then the follower campaigns without the random extra wait."""
    r = follower_of_1(2, lease_ticks=E - 3)
    for _ in range(3):
        r.tick()
    r.leader_unreachable(1)
    assert r.ready() is None and r.leader_id == 1
    r.step(PreVote(3, 2, Ballot(2, 3), 1))
    assert drain(r).messages == [PreVoteReply(2, 3, Ballot(2, 3), False, 0)]
    for _ in range(E - 4):                    # until an election timeout after its last word
        r.tick()
        assert r.role == Role.FOLLOWER
    r.tick()
    r.tick()
    assert r.role == Role.PRE_CANDIDATE


def test_a_killed_leader_is_replaced_within_a_few_ticks_when_its_connections_reset():
    """The shell reports the dead leader's connections reset to both followers: node 2
    campaigns on the next tick and leads (pre-vote, Prepare, Promise within the tick)."""
    cluster = started(3)
    cluster.crash(1)
    for node in (2, 3):
        cluster.nodes[node].leader_unreachable(1)
    cluster.settle()
    ticks = 0
    while cluster.leader() is None or cluster.leader() in cluster.down:
        cluster.tick(1, nodes=[2, 3])
        ticks += 1
        assert ticks <= E
    assert (cluster.leader(), ticks) == (2, 1)
    assert cluster.nodes[2].status().early_campaigns == 1   # the metric the shell exports


# ---------------------------------------------------------------- reads

def test_read_index_is_answered_once_a_quorum_acknowledges_a_heartbeat_round():
    """read_index starts a heartbeat round (ctx); one acknowledgement of that round from
    three voters confirms leadership and releases the read at the current point."""
    r = leader()
    r.read_index("r")
    ready = drain(r)
    assert ready.early_messages == [Heartbeat(1, 2, B11, 0, (), 2),
                                    Heartbeat(1, 3, B11, 0, (), 2)]
    assert ready.reads == []
    r.step(HeartbeatReply(3, 1, B11, 2, 0, 0))
    assert drain(r).reads == [ReadState("r", 0)]


def test_read_point_covers_the_slots_in_flight():
    """A read asked while slot 1 is in flight is released only once slot 1 is chosen, in
    the Ready that applies it."""
    r = leader()
    r.propose([b"x"])
    drain(r)
    r.read_index("r")
    drain(r)
    r.step(HeartbeatReply(2, 1, B11, 2, 0, 0))
    assert r.ready() is None
    r.step(Accepted(2, 1, B11, (1,)))
    ready = drain(r)
    assert ready.committed == [value(1, b(1, 1), b"x")]
    assert ready.reads == [ReadState("r", 1)]


def test_an_older_heartbeat_round_does_not_confirm_a_newer_read():
    """Each read is tied to its own round: an acknowledgement of round 2 releases r1 but not
    r2, asked later in round 3 (R5: a retry after a leader change)."""
    r = leader()
    r.read_index("r1")
    drain(r)
    r.read_index("r2")
    drain(r)
    r.step(HeartbeatReply(2, 1, B11, 2, 0, 0))
    assert drain(r).reads == [ReadState("r1", 0)]
    r.step(HeartbeatReply(2, 1, B11, 3, 0, 0))
    assert drain(r).reads == [ReadState("r2", 0)]


def test_read_index_needs_a_leader_and_is_bounded():
    """Followers raise NotLeader (with the leader they know); beyond pending_reads_max
    outstanding reads the leader raises Busy."""
    follower = replica(2)
    follower.step(Heartbeat(1, 2, B11, 0, (), 1))
    with pytest.raises(NotLeader) as info:
        follower.read_index("r")
    assert info.value.leader_hint == 1
    r = leader(limits=Limits(pending_reads_max=2))
    r.read_index(1)
    r.read_index(2)
    with pytest.raises(Busy, match="too many pending reads"):
        r.read_index(3)


def test_lease_read_only_within_the_lease():
    """lease_read_index answers while a quorum acknowledged a round started less than
    lease_ticks ago, and never on a follower or with leases off."""
    r = leader(lease_ticks=4)
    assert r.lease_read_index() is None  # no round acknowledged yet
    r.step(HeartbeatReply(2, 1, B11, 1, 0, 0))
    assert r.lease_read_index() == 0
    for _ in range(3):
        r.tick()
        pump(r)
    assert r.lease_read_index() == 0
    r.tick()
    pump(r)
    assert r.lease_read_index() is None
    assert leader().lease_read_index() is None
    assert replica(2, lease_ticks=4).lease_read_index() is None



# ---------------------------------------------------------------- compaction and snapshots

def chosen_leader(*commands: bytes) -> MultiPaxosReplica:
    """A leader of voters 1-3 whose slots 1..n hold ``commands`` (one each), chosen and
    applied."""
    r = leader(limits=Limits(batch_commands_max=1))
    r.propose(list(commands))
    drain(r)
    r.step(Accepted(2, 1, B11, tuple(range(1, len(commands) + 1))))
    drain(r)
    assert r.applied_index == len(commands)
    return r


def test_compaction_drops_chosen_slots_and_a_lagging_peer_is_offered_the_snapshot():
    """After compact(), a peer whose watermark is below the first retained slot gets
    InstallSnapshot (once per election timeout, however often it asks)."""
    r = chosen_leader(b"a", b"b")
    meta = SnapshotMeta(2, b(1, 1), VOTERS3)
    r.compact(meta)
    assert r.status().first_index == 3
    r.step(HeartbeatReply(3, 1, B11, 1, 0, 0))
    assert drain(r).messages == [InstallSnapshot(1, 3, b(1, 1), 2, b(1, 1), VOTERS3, b"")]
    r.step(CatchupRequest(3, 1, B11, (1,)))
    assert r.ready() is None


def test_catchup_below_the_first_retained_slot_is_answered_with_a_snapshot():
    """A catch-up request for a compacted slot gets the snapshot instead."""
    r = chosen_leader(b"a", b"b")
    r.compact(SnapshotMeta(2, b(1, 1), VOTERS3))
    r.step(CatchupRequest(3, 1, B11, (1, 2)))
    assert drain(r).messages == [InstallSnapshot(1, 3, b(1, 1), 2, b(1, 1), VOTERS3, b"")]


def test_follower_installs_an_offered_snapshot_through_the_ready():
    """The snapshot, its data and the new watermark are in one Ready with the reply; the
    replica's applied index jumps to the snapshot."""
    r = replica(3)
    r.step(InstallSnapshot(1, 3, b(1, 1), 2, b(1, 1), VOTERS3, b"state"))
    ready = drain(r)
    assert ready.snapshot == SnapshotMeta(2, b(1, 1), VOTERS3)
    assert ready.snapshot_data == b"state"
    assert ready.hard_state == HardState(0, 0, 2)
    assert ready.messages == [InstallSnapshotReply(3, 1, 0, 2)]
    assert ready.events == [ConfigChanged(VOTERS3, 2)]
    assert r.applied_index == 2 and r.commit_index == 2
    r.step(InstallSnapshot(1, 3, b(1, 1), 1, b(1, 1), VOTERS3, b"older"))
    ready = drain(r)
    assert ready.snapshot is None and ready.messages == [InstallSnapshotReply(3, 1, 0, 2)]


def test_candidate_facing_a_compacted_acceptor_catches_up_before_leading():
    """A Promise whose first retained slot is above the candidate's first unchosen slot
    means slots were chosen that only a snapshot holds: the candidate asks for them and
    gives up this candidacy."""
    r = candidate(1)
    r.step(Promise(2, 1, B11, (), 5, 6, 0))
    ready = drain(r)
    assert ready.messages == [CatchupRequest(1, 2, B11, (1,))]
    assert r.role == Role.FOLLOWER


def test_compact_beyond_the_applied_slot_is_a_caller_error():
    """compact() past the applied index violates the contract (an assertion)."""
    r = leader()
    with pytest.raises(AssertionError):
        r.compact(SnapshotMeta(3, b(1, 1), VOTERS3))


# ---------------------------------------------------------------- membership

def test_configuration_entry_waits_for_an_empty_pipeline_and_stops_the_slots_behind_it():
    """A CONFIG entry gets a slot only when nothing is in flight, and no slot follows it
    until it is chosen: the configuration of every in-flight slot is known (design notes)."""
    r = leader(limits=Limits(batch_commands_max=1))
    r.propose([b"a"])
    drain(r)
    target = Config(frozenset({1, 2, 3}), learners=frozenset({4}))
    r.change_config({1, 2, 3}, learners={4})
    assert r.ready() is None  # slot 1 is in flight
    r.step(Accepted(2, 1, B11, (1,)))
    ready = drain(r)
    entry = config_entry(2, b(1, 1), target)
    assert ready.entries == [entry]
    assert ready.early_messages == [Accept(1, peer, B11, (entry,), 1) for peer in (2, 3, 4)]
    r.propose([b"b"])
    assert r.ready() is None  # b waits behind the barrier
    r.step(Accepted(3, 1, B11, (2,)))
    ready = drain(r)
    assert ready.events == [ConfigChanged(target, 2)]
    assert ready.entries == [value(3, b(1, 1), b"b")]


def test_a_pending_configuration_change_is_not_starved_by_new_proposals():
    """With a new command proposed in every round and each slot chosen a round later, the
    configuration change still gets a slot within a few rounds."""
    r = leader(limits=Limits(batch_commands_max=1))
    r.propose([b"c0"])
    drain(r)
    r.change_config({1, 2, 3}, learners={4})
    for k in range(1, 20):
        r.propose([b"c%d" % k])
        pump(r)
        r.step(Accepted(2, 1, B11, (k,)))
        pump(r)
    kinds = [e.kind for e in r.log.range(1, r.next_slot)]
    assert ENTRY_CONFIG in kinds


def test_joint_consensus_needs_both_majorities_and_is_left_by_the_leader():
    """Adding voter 4: the joint entry (governed by voters 1-3) is chosen by {1, 2}; the
    final entry, governed by the joint configuration, needs a majority of 1-4 as well, so
    {1, 2} is not enough and {1, 2, 4} is."""
    r = leader()
    r.change_config({1, 2, 3, 4})
    joint = Config(frozenset({1, 2, 3, 4}), frozenset({1, 2, 3}))
    ready = drain(r)
    assert ready.entries == [config_entry(1, b(1, 1), joint)]
    r.step(Accepted(2, 1, B11, (1,)))
    ready = drain(r)
    final = Config(frozenset({1, 2, 3, 4}))
    assert ready.events == [ConfigChanged(joint, 1)]
    assert ready.entries == [config_entry(2, b(1, 1), final)]
    r.step(Accepted(2, 1, B11, (2,)))
    assert r.ready() is None and r.commit_index == 1
    r.step(Accepted(4, 1, B11, (2,)))
    assert drain(r).events == [ConfigChanged(final, 2)]
    assert r.config == final


def test_only_one_membership_change_at_a_time():
    """A second change while one is pending raises ConfigChangeInProgress; an empty voter
    set raises ValueError; a follower raises NotLeader."""
    r = leader()
    r.change_config({1, 2})
    with pytest.raises(ConfigChangeInProgress, match="already in progress"):
        r.change_config({1, 2, 3, 4})
    with pytest.raises(ValueError, match="at least one voter"):
        leader().change_config(set())
    with pytest.raises(NotLeader):
        replica(2).change_config({1, 2})


def test_candidate_needs_a_quorum_of_every_configuration_its_promises_report():
    """A Promise reporting a CONFIG entry (voters 3,4,5) makes the candidate prepare those
    voters too and wait for a majority of them as well as of its own configuration."""
    r = candidate(1)
    other = Config(frozenset({3, 4, 5}))
    r.step(Promise(2, 1, B11, (config_entry(1, b(0, 2), other),), 0, 1, 0))
    ready = drain(r)
    assert ready.messages == [Prepare(1, 4, B11, 1, False), Prepare(1, 5, B11, 1, False)]
    assert r.role == Role.CANDIDATE
    r.step(Promise(4, 1, B11, (), 0, 1, 0))
    assert r.role == Role.CANDIDATE  # {1, 2, 4}: a majority of 1-3, not of 3-5
    r.step(Promise(5, 1, B11, (), 0, 1, 0))
    assert r.role == Role.LEADER
    assert drain(r).entries == [config_entry(1, b(1, 1), other)]


def test_removed_leader_hands_over_to_a_voter_once_it_knows_the_configuration_chosen():
    """When the final configuration without it is chosen, the leader tells every peer the
    new watermark and starts a transfer to the voter best placed (node 2: it reported
    slot 1 chosen, node 3 nothing).  Proposals are refused meanwhile; TimeoutNow goes out
    once node 2 reports slot 2 chosen (it then knows it is a voter), and the forced
    Prepare deposes the old leader."""
    r = leader()
    r.change_config({2, 3})
    drain(r)
    r.step(Accepted(2, 1, B11, (1,)))
    r.step(Accepted(3, 1, B11, (1,)))
    drain(r)
    r.step(HeartbeatReply(2, 1, B11, 1, 1, 2))
    r.step(Accepted(2, 1, B11, (2,)))
    r.step(Accepted(3, 1, B11, (2,)))
    ready = drain(r)
    final = Config(frozenset({2, 3}))
    assert ready.early_messages == [Heartbeat(1, 2, B11, 2, (), 2),
                                    Heartbeat(1, 3, B11, 2, (), 2)]
    assert ready.events == [ConfigChanged(final, 2)]
    assert r.role == Role.LEADER and r.transfer_target == 2
    with pytest.raises(Busy, match="leadership transfer in progress"):
        r.propose([b"z"])
    r.step(HeartbeatReply(3, 1, B11, 2, 2, 2))
    assert r.ready() is None  # only the target's reply counts
    r.step(HeartbeatReply(2, 1, B11, 2, 2, 2))
    assert drain(r).messages == [TimeoutNow(1, 2, b(1, 1))]
    r.step(Prepare(2, 1, Ballot(2, 2), 3, True))
    assert drain(r).events == [RoleChanged(Role.FOLLOWER, 1, None)]


def test_removed_leader_tries_another_voter_when_the_handover_stalls():
    """A target that stays silent for an election timeout is replaced by a voter that was
    heard (here node 3), and the old leader keeps leading meanwhile."""
    r = leader()
    r.change_config({2, 3})
    drain(r)
    r.step(Accepted(2, 1, B11, (1,)))
    r.step(Accepted(3, 1, B11, (1,)))
    drain(r)
    r.step(HeartbeatReply(2, 1, B11, 1, 1, 2))
    r.step(Accepted(2, 1, B11, (2,)))
    r.step(Accepted(3, 1, B11, (2,)))
    drain(r)
    assert r.transfer_target == 2
    for _ in range(E):
        r.tick()
        r.step(HeartbeatReply(3, 1, B11, r.rounds.round, 2, 2))
        pump(r)
    assert r.role == Role.LEADER and r.transfer_target == 3
    r.step(HeartbeatReply(3, 1, B11, r.rounds.round, 2, 2))
    assert TimeoutNow(1, 3, b(1, 1)) in drain(r).messages


def test_leader_removed_by_the_final_configuration_hands_over():
    """Once the final configuration without the leader is chosen, it stops leading (and
    hands over to an up-to-date voter)."""
    cluster = started(3)
    cluster.nodes[1].change_config({2, 3})
    cluster.settle()
    cluster.tick(4)
    assert cluster.nodes[1].config == Config(frozenset({2, 3}))
    assert cluster.nodes[1].role != Role.LEADER


# ---------------------------------------------------------------- restart and durability

def test_restart_restores_the_promise_and_reapplies_the_chosen_slots():
    """A replica restored from its hard state and log knows its promise and watermark and
    hands the chosen slots to the shell again, in order."""
    entries = [value(1, b(2, 3), b"a"), value(2, b(2, 3), b"b"), value(3, b(2, 3), b"c")]
    r = replica(1, restored=Restored(HardState(b(2, 3), 0, 2), entries))
    assert r.promised == Ballot(2, 3) and r.commit_index == 2 and r.applied_index == 0
    assert drain(r).committed == entries[:2]
    r.step(Prepare(2, 1, Ballot(1, 2), 1, False))
    assert drain(r).messages == [Nack(1, 2, Ballot(1, 2), Ballot(2, 3))]


def test_restored_watermark_is_trusted_only_over_the_slots_present():
    """A commit hint beyond the slots on disk stops at the first missing slot."""
    r = replica(1, restored=Restored(HardState(b(1, 1), 0, 3), [value(1, b(1, 1), b"a")]))
    assert r.commit_index == 1


def test_a_node_that_lost_chosen_slots_does_not_promise():
    """Restored with watermark 2 but only slot 1, a node does not promise (nor campaign)
    until a leader has sent the lost slot again."""
    r = replica(2, restored=Restored(HardState(b(1, 1), 0, 2), [value(1, b(1, 1), b"a")]))
    pump(r)
    r.step(Prepare(3, 2, Ballot(2, 3), 2, False))
    ready = pump(r)
    assert ready is None or not any(isinstance(m, Promise) for m in ready.messages)


def test_a_node_that_lost_chosen_slots_refuses_pre_votes_and_does_not_campaign():
    """R13: no pre-vote granted, no campaign (not even on TimeoutNow) while slot 2 is lost."""
    lost = Restored(HardState(b(1, 1), 0, 2), [value(1, b(1, 1), b"a")])
    r = replica(2, restored=lost, pre_vote=False)
    pump(r)
    for _ in range(4 * E):
        r.tick()
    r.step(TimeoutNow(1, 2, b(1, 1)))
    assert pump(r) is None and r.role == Role.FOLLOWER
    r.step(PreVote(3, 2, Ballot(2, 3), 2))
    assert drain(r).messages == [PreVoteReply(2, 3, Ballot(2, 3), False, 1)]


def test_a_node_that_lost_chosen_slots_promises_again_once_a_leader_resent_them():
    """The leader's watermark makes the node fetch the lost slot; once it is back, the node
    promises as before."""
    r = replica(2, restored=Restored(HardState(b(1, 1), 0, 2), [value(1, b(1, 1), b"a")]))
    pump(r)
    r.step(Heartbeat(1, 2, B11, 2, (), 3))
    assert drain(r).messages == [CatchupRequest(2, 1, B11, (2,)),
                                 HeartbeatReply(2, 1, B11, 3, 1, 1)]
    r.step(CatchupReply(1, 2, B11, (value(2, b(1, 1), b"x"),), 2))
    assert drain(r).committed == [value(2, b(1, 1), b"x")]
    r.step(Prepare(1, 2, Ballot(2, 1), 3, False))
    assert drain(r).messages == [Promise(2, 1, Ballot(2, 1), (), 2, 1, 0)]


def test_a_node_that_lost_chosen_slots_catches_up_from_a_candidate_that_knows_them():
    """Without a leader, a candidate whose pre-vote says slots up to 2 are chosen is asked
    for them (no pre-vote yet); the next pre-vote is granted."""
    r = replica(2, restored=Restored(HardState(b(1, 1), 0, 2), [value(1, b(1, 1), b"a")]))
    pump(r)
    r.step(PreVote(3, 2, Ballot(2, 3), 3))
    assert drain(r).messages == [CatchupRequest(2, 3, B11, (2,)),
                                 PreVoteReply(2, 3, Ballot(2, 3), False, 1)]
    r.step(CatchupReply(3, 2, Ballot(1, 1), (value(2, b(1, 1), b"x"),), 2))
    drain(r)
    r.step(PreVote(3, 2, Ballot(2, 3), 3))
    assert drain(r).messages == [PreVoteReply(2, 3, Ballot(2, 3), True, 2)]


# ---------------------------------------------------------------- misc and whole cluster

def test_messages_for_another_node_or_from_itself_are_ignored():
    """step() drops a message addressed elsewhere or looped back."""
    r = replica(2)
    r.step(Prepare(1, 3, Ballot(5, 1), 1, True))
    r.step(Prepare(2, 2, Ballot(5, 2), 1, True))
    assert r.ready() is None and r.promised == Ballot(0, 0)


def test_proposals_need_a_leader_and_a_free_queue():
    """A follower raises NotLeader with its leader hint; a full queue raises Busy."""
    follower = replica(2)
    follower.step(Heartbeat(1, 2, B11, 0, (), 1))
    with pytest.raises(NotLeader) as info:
        follower.propose([b"x"])
    assert info.value.leader_hint == 1
    r = leader(limits=Limits(proposal_queue_max=2, pipeline_window=1, batch_commands_max=1))
    r.propose([b"a", b"b"])
    with pytest.raises(Busy, match="proposal queue full"):
        r.propose([b"c", b"d", b"e"])


def test_status_reports_holes_and_per_peer_progress():
    """The leader's status has progress per peer; holes are the unchosen slots below a slot
    chosen out of order."""
    r = leader(config=VOTERS5, limits=Limits(batch_commands_max=1))
    r.propose([b"a", b"b", b"c"])
    drain(r)
    r.step(Accepted(2, 1, B11, (3,)))
    r.step(Accepted(3, 1, B11, (3,)))
    drain(r)
    status = r.status()
    assert status.holes == (1, 2)
    assert status.role == Role.LEADER and status.ballot == "1.1"
    assert set(status.progress) == {2, 3, 4, 5}


def test_cluster_replicates_through_the_codec_and_survives_a_leader_crash():
    """Every message through the CBOR codec; after the leader crashes another node leads
    and every surviving node applies the same commands."""
    cluster = started(3)
    cluster.codec = True
    cluster.propose(1, b"a", b"b")
    cluster.tick(2)
    cluster.crash(1)
    cluster.elect(2)
    cluster.propose(2, b"c")
    cluster.tick(2)
    assert cluster.commands(2) == [b"a", b"b", b"c"] == cluster.commands(3)


def test_restarted_cluster_reapplies_and_continues():
    """All nodes crash and restart from their disks: the chosen log comes back and a new
    leader continues it."""
    cluster = started(3)
    cluster.propose(1, b"a", b"b")
    cluster.tick(2)
    for i in cluster.ids:
        cluster.crash(i)
    for i in cluster.ids:
        cluster.restart(i)
    cluster.settle()
    assert all(cluster.commands(i) == [b"a", b"b"] for i in cluster.ids)
    cluster.elect(3)
    cluster.propose(3, b"c")
    cluster.tick(2)
    assert all(cluster.commands(i) == [b"a", b"b", b"c"] for i in cluster.ids)


@pytest.mark.parametrize("seed", range(8))
def test_random_faults_keep_one_value_per_slot(seed):
    """Random partitions, crashes and proposals: one value per slot is ever applied, and
    after healing a leader commits again everywhere."""
    rng = random.Random(seed)
    limits = Limits(batch_commands_max=rng.choice([1, 4]), pipeline_window=rng.choice([1, 4]),
                    entries_per_message_max=rng.choice([1, 3]))
    cluster = Cluster(5, seed=seed, limits=limits)
    run_random_faults(cluster, rng)
    for _ in range(20 * E):
        cluster.tick(1)
        lead = cluster.leader()
        if lead is not None and all(cluster.nodes[i].leader_id == lead for i in cluster.ids):
            break
    lead = cluster.leader()
    assert lead is not None
    cluster.propose(lead, b"final")
    cluster.tick(4)
    logs = [cluster.commands(i) for i in cluster.ids]
    assert all(log == logs[0] for log in logs) and logs[0][-1] == b"final"
