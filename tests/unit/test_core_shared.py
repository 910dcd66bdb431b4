"""What the two consensus cores share, tested on both (DESIGN.md section 2).

* The contract: one outstanding Ready (a second ``ready()`` or a foreign ``advance()``
  raises ``ContractViolation`` and changes nothing), and ``status()`` as the typed
  ``ReplicaStatus`` the shell reads.
* The leader mechanics of batching.py, chunking.py, readindex.py and timers.py, alone and
  through both replicas: the same Limits give the same batches in both modes, and the
  lease lapses the same way in both.

``Trio`` is a three-node cluster driven by hand: it honours the Ready contract and
delivers messages in FIFO order until nothing moves.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from paxoslog.core.batching import ProposalQueue
from paxoslog.core.chunking import MessageBudget, chunk_entries
from paxoslog.core.errors import Busy, ContractViolation
from paxoslog.core.limits import Limits
from paxoslog.core.log import ENTRY_NORMAL, Entry, entry_bytes
from paxoslog.core.quorum import Config
from paxoslog.core.readindex import PendingReads, ReadRounds
from paxoslog.core.ready import ProposalDropped, ReadState, Ready, Role
from paxoslog.core.replica import (PeerProgress, ReplicaOptions, ReplicaStatus,
                                   create_replica)
from paxoslog.core.timers import ElectionTimer, Interval, PeerContact

PROTOCOLS = ("multipaxos", "raft")
E = 10
VOTERS_3 = Config(frozenset({1, 2, 3}))


def lone_leader(protocol: str):
    """A single-voter replica that has elected itself and advanced every Ready."""
    replica = create_replica(protocol, 1, Config(frozenset({1})),
                             ReplicaOptions(heartbeat_ticks=2, election_ticks=E),
                             random.Random(1))
    for _ in range(3 * E):
        replica.tick()
        drain(replica)
    assert replica.role == Role.LEADER
    return replica


def drain(replica) -> list:
    """Honour every Ready the replica has (nothing to persist here); its messages, the
    early ones first."""
    messages = []
    while (ready := replica.ready()) is not None:
        messages.extend(ready.early_messages)
        messages.extend(ready.messages)
        replica.advance(ready)
    return messages


def commands(entries) -> list[bytes]:
    return [c for e in entries for c in e.payload]


class Trio:
    """Three replicas of one protocol; ``settle`` runs Readies and delivers messages."""

    def __init__(self, protocol: str, options: ReplicaOptions | None = None) -> None:
        options = options or ReplicaOptions(heartbeat_ticks=2, election_ticks=E)
        self.nodes = {n: create_replica(protocol, n, VOTERS_3, options, random.Random(n))
                      for n in (1, 2, 3)}
        self.queue: deque = deque()

    def settle(self) -> None:
        for _ in range(10000):
            for replica in self.nodes.values():
                self.queue.extend(drain(replica))
            if not self.queue:
                return
            msg = self.queue.popleft()
            self.nodes[msg.to].step(msg)
        raise AssertionError("did not settle")

    def elect(self, target: int) -> None:
        """Everyone first goes an election timeout without news (no leader stickiness
        left, booting lease-holders included), then only the target's timer runs."""
        for _ in range(E):
            for replica in self.nodes.values():
                replica.tick()
                drain(replica)                          # what they say is lost
        for _ in range(6 * E):
            self.nodes[target].tick()
            self.settle()
            if self.nodes[target].role == Role.LEADER:
                return
        raise AssertionError(f"node {target} did not win")


# ---------------------------------------------------------------- the contract

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_second_ready_before_advance_is_refused(protocol):
    """ready() while a Ready is outstanding raises ContractViolation; advance() unblocks it
    (and, the lone voter's copy of a being durable then, commits it)."""
    replica = lone_leader(protocol)
    replica.propose([b"a"])
    ready = replica.ready()
    assert ready is not None and not replica.has_ready()
    assert commands(ready.entries) == [b"a"] and ready.committed == []
    replica.propose([b"b"])
    with pytest.raises(ContractViolation, match="outstanding"):
        replica.ready()
    replica.advance(ready)
    after = replica.ready()
    assert commands(after.entries) == [b"b"] and commands(after.committed) == [b"a"]
    replica.advance(after)
    assert commands(replica.ready().committed) == [b"b"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_ready_changes_nothing(protocol):
    """The refused ready() hands nothing out: the next Ready still carries everything."""
    replica = lone_leader(protocol)
    replica.propose([b"a"])
    first = replica.ready()
    with pytest.raises(ContractViolation):
        replica.ready()
    replica.advance(first)
    replica.check_invariants()
    assert commands(first.entries) == [b"a"]
    second = replica.ready()
    assert commands(second.committed) == [b"a"]
    replica.advance(second)
    assert replica.ready() is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_advance_of_another_ready_is_refused(protocol):
    """advance() of a Ready that is not the outstanding one raises; the real one still works."""
    replica = lone_leader(protocol)
    replica.propose([b"a"])
    ready = replica.ready()
    with pytest.raises(ContractViolation, match="last returned"):
        replica.advance(Ready())
    replica.advance(ready)
    with pytest.raises(ContractViolation, match="no Ready outstanding"):
        replica.advance(ready)
    drain(replica)
    assert replica.applied_index == replica.commit_index


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_status_is_typed_with_progress_only_on_the_leader(protocol):
    """status() returns ReplicaStatus; the leader lists PeerProgress per peer, followers none."""
    trio = Trio(protocol)
    trio.elect(1)
    trio.nodes[1].propose([b"x"])
    trio.settle()
    for _ in range(2):
        for replica in trio.nodes.values():
            replica.tick()
        trio.settle()
    leader, follower = trio.nodes[1].status(), trio.nodes[2].status()
    assert isinstance(leader, ReplicaStatus) and isinstance(follower, ReplicaStatus)
    assert (leader.role, leader.leader, leader.ticks_since_leader) == (Role.LEADER, 1, 0)
    assert leader.config == "voters=1,2,3" and leader.term == trio.nodes[1].term >= 1
    assert set(leader.progress) == {2, 3}
    assert all(isinstance(p, PeerProgress) and p.match == leader.commit_index
               and p.last_heard_ticks <= 2 for p in leader.progress.values())
    assert follower.progress == {} and follower.leader == 1 and follower.role == Role.FOLLOWER
    assert follower.commit_index == leader.commit_index == leader.last_index
    assert follower.holes == ()
    assert (leader.ballot is None) == (protocol == "raft")


def entry(index: int, size: int) -> Entry:
    """A normal entry whose entry_bytes is 16 + size + 2."""
    return Entry(index, 1, ENTRY_NORMAL, (b"x" * size,))


# ---------------------------------------------------------------- batching

def test_batches_respect_the_command_and_byte_bounds():
    """take_batch cuts at batch_commands_max and at batch_bytes_max as entry_bytes counts."""
    queue = ProposalQueue(Limits(batch_commands_max=3, batch_bytes_max=100))
    queue.add([b"a" * 30] * 5 + [b"b"] * 4)
    batches = []
    while queue:
        batches.append(queue.take_batch())
    assert [len(b) for b in batches] == [2, 2, 3, 2]
    assert all(entry_bytes(Entry(1, 1, ENTRY_NORMAL, b)) <= 100 for b in batches)
    assert queue.take_batch() == ()


def test_an_oversized_command_goes_alone():
    """A command larger than batch_bytes_max is not refused: it gets an entry of its own."""
    queue = ProposalQueue(Limits(batch_bytes_max=64))
    queue.add([b"s", b"L" * 200, b"t"])
    assert [queue.take_batch() for _ in range(3)] == [(b"s",), (b"L" * 200,), (b"t",)]


def test_proposal_queue_bound_and_types_are_all_or_nothing():
    """Busy beyond proposal_queue_max and ValueError on non-bytes leave the queue untouched."""
    queue = ProposalQueue(Limits(proposal_queue_max=3))
    queue.add([b"a", b"b"])
    with pytest.raises(Busy, match="proposal queue full"):
        queue.add([b"c", b"d"])
    with pytest.raises(ValueError):
        queue.add([b"c", "not bytes"])
    assert len(queue) == 2
    assert queue.drop_all() == ProposalDropped((b"a", b"b")) and not queue
    assert queue.drop_all() is None


@pytest.mark.parametrize("limits", [Limits(batch_bytes_max=100),
                                    Limits(batch_commands_max=3, batch_bytes_max=150)])
def test_same_limits_give_the_same_batches_in_both_protocols(limits):
    """Multi-Paxos and Raft leaders pack the same proposals into the same entries."""
    commands = [bytes([65 + k]) * (10 + 7 * (k % 5)) for k in range(23)]
    payloads = {}
    for protocol in PROTOCOLS:
        replica = create_replica(protocol, 1, Config(frozenset({1})),
                                 ReplicaOptions(election_ticks=E, limits=limits),
                                 random.Random(1))
        for _ in range(3 * E):
            replica.tick()
            drain(replica)
        assert replica.role == Role.LEADER
        replica.propose(commands)
        ready = replica.ready()
        payloads[protocol] = [e.payload for e in ready.entries if e.kind == ENTRY_NORMAL]
        replica.advance(ready)
    assert payloads["multipaxos"] == payloads["raft"]
    assert [c for p in payloads["raft"] for c in p] == commands
    assert len(payloads["raft"]) > 1


# ---------------------------------------------------------------- chunking

def test_chunks_respect_count_and_byte_bounds():
    """chunk_entries splits by entries_per_message_max and message_bytes_max, in order."""
    limits = Limits(entries_per_message_max=3, message_bytes_max=100)
    entries = [entry(i, 20) for i in range(1, 8)]          # 38 bytes each
    chunks = chunk_entries(entries, limits)
    assert [[e.index for e in c] for c in chunks] == [[1, 2], [3, 4], [5, 6], [7]]
    small = [entry(i, 0) for i in range(1, 8)]             # 18 bytes each
    assert [len(c) for c in chunk_entries(small, limits)] == [3, 3, 1]
    assert chunk_entries([], limits) == []


def test_an_oversized_entry_is_sent_alone():
    """The byte bound is soft: the first entry always fits, a big one goes by itself."""
    limits = Limits(message_bytes_max=50)
    entries = [entry(1, 5), entry(2, 500), entry(3, 5)]
    assert [[e.index for e in c] for c in chunk_entries(entries, limits)] == [[1], [2], [3]]
    budget = MessageBudget(50)                             # no count bound (Promise pages)
    assert all(budget.admit(entry(i, 0)) for i in range(2)) and not budget.admit(entry(3, 0))


# ---------------------------------------------------------------- read rounds

def test_a_round_is_confirmed_by_a_quorum_of_every_configuration():
    """confirmed() is the highest round a quorum acked, in every config (joint: both)."""
    rounds = ReadRounds(keep_ticks=20)
    for now in range(1, 5):
        rounds.start(now)                                   # rounds 1..4
    assert rounds.confirmed([VOTERS_3], 1) == 0
    assert rounds.ack(2, 3) and not rounds.ack(2, 2) and not rounds.ack(3, 9)
    assert rounds.confirmed([VOTERS_3], 1) == 3
    joint = Config(frozenset({1, 4, 5}), outgoing=frozenset({1, 2, 3}))
    assert rounds.confirmed([joint], 1) == 0               # the new majority has not acked
    rounds.ack(4, 2)
    assert rounds.confirmed([joint], 1) == 2 == rounds.confirmed([VOTERS_3, joint], 1)
    rounds.clear_acks()
    assert rounds.confirmed([VOTERS_3], 1) == 0


def test_lease_holds_while_the_confirmed_round_is_younger_than_lease_ticks():
    """lease_holds: now - start of the confirmed round < lease_ticks; off at 0 ticks."""
    rounds = ReadRounds(keep_ticks=10)
    rounds.start(100)
    rounds.ack(2, 1)
    assert rounds.lease_holds(104, 5, [VOTERS_3], 1)
    assert not rounds.lease_holds(105, 5, [VOTERS_3], 1)
    assert not rounds.lease_holds(101, 0, [VOTERS_3], 1)
    assert rounds.lease_holds(500, 5, [Config(frozenset({1}))], 1)  # a lone voter
    for now in range(101, 130):
        rounds.start(now)                                   # never acked
    assert rounds.started_at(1) is None                     # pruned after keep_ticks
    assert rounds.started_at(rounds.round) == 129
    assert not rounds.lease_holds(129, 5, [VOTERS_3], 1)


def test_pending_reads_leave_in_order_once_confirmed_and_committed():
    """release() pops reads whose round is confirmed and point committed, FIFO."""
    reads = PendingReads(pending_reads_max=3)
    reads.add("a", 5, 1)
    reads.add("b", None, 2)
    reads.add("c", 4, 2)
    with pytest.raises(Busy):
        reads.add("d", 4, 2)
    assert reads.release(confirmed=2, commit=4) == []       # "a" waits for index 5
    assert reads.release(confirmed=1, commit=6) == [ReadState("a", 5)]
    assert reads.release(confirmed=2, commit=7) == [ReadState("b", 7), ReadState("c", 4)]
    assert not reads


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lease_expires_lease_ticks_after_the_last_confirmed_round(protocol):
    """An isolated leader's lease lapses within lease_ticks ticks and stays lapsed."""
    trio = Trio(protocol, ReplicaOptions(heartbeat_ticks=2, election_ticks=E, lease_ticks=5))
    trio.elect(1)
    trio.nodes[1].propose([b"x"])
    for _ in range(4):
        for replica in trio.nodes.values():
            replica.tick()
        trio.settle()
    leader = trio.nodes[1]
    assert leader.lease_read_index() == leader.commit_index
    held = []
    for _ in range(8):                                      # isolated: nothing is answered
        leader.tick()
        drain(leader)
        held.append(leader.lease_read_index() is not None)
    assert leader.role == Role.LEADER
    assert 1 <= held.index(False) <= 5 and not any(held[held.index(False):])


# ---------------------------------------------------------------- timers

def test_election_timeouts_are_drawn_from_e_to_2e_with_the_given_rng():
    """ElectionTimer draws in [E, 2E) from its rng; restart keeps, reset redraws."""
    timer = ElectionTimer(E, random.Random(7))
    expected = random.Random(7)
    assert timer.timeout == E + expected.randrange(E)
    draws = set()
    for _ in range(200):
        timer.reset()
        draws.add(timer.timeout)
    assert min(draws) == E and max(draws) == 2 * E - 1
    timeout = timer.timeout
    fired = [timer.tick() for _ in range(timeout)]
    assert fired == [False] * (timeout - 1) + [True]
    timer.restart()
    assert timer.timeout == timeout and timer.elapsed == 0


def test_interval_fires_every_n_ticks_from_the_last_reset():
    """Interval.tick is True every ``ticks`` ticks; reset starts counting again."""
    interval = Interval(3)
    assert [interval.tick() for _ in range(7)] == [False, False, True, False, False, True,
                                                   False]
    interval.reset()
    assert [interval.tick() for _ in range(3)] == [False, False, True]


def test_peer_contact_needs_a_quorum_heard_since_a_tick():
    """quorum_since counts us plus peers heard at or after the tick, for every config."""
    contact = PeerContact()
    contact.heard(2, 10)
    contact.heard(3, 4)
    assert contact.quorum_since(10, [VOTERS_3], 1)
    assert not contact.quorum_since(11, [VOTERS_3], 1)
    joint = Config(frozenset({1, 4, 5}), outgoing=frozenset({1, 2, 3}))
    assert not contact.quorum_since(10, [joint], 1)
    contact.heard(4, 12)
    assert contact.quorum_since(10, [VOTERS_3, joint], 1)
    contact.forget(2)
    assert contact.last(2, default=-1) == -1 and not contact.quorum_since(10, [VOTERS_3], 1)


def test_peer_contact_shift_moves_every_contact_by_the_stall():
    """After a stall of the leader the contacts move by its length; peers never heard stay
    unheard."""
    contact = PeerContact()
    contact.heard(2, 10)
    contact.heard(3, 4)
    contact.shift(7)
    assert (contact.last(2, -1), contact.last(3, -1), contact.last(4, -1)) == (17, 11, -1)
    assert contact.quorum_since(17, [VOTERS_3], 1) and not contact.quorum_since(18, [VOTERS_3], 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_stall_of_the_leader_is_not_held_against_its_followers(protocol):
    """Check-quorum: the ticks a leader makes up after its own stall (``stalled`` first, as
    the node driver calls it) do not depose it, though its followers' answers are still
    unread; the same ticks without the stall do.  Hearing nobody afterwards, it still
    steps down within two election timeouts."""
    stall = 2 * E + 1                                   # two check-quorum windows
    for told in (True, False):
        trio = Trio(protocol)
        trio.elect(1)
        for _ in range(2):
            for replica in trio.nodes.values():
                replica.tick()
            trio.settle()
        leader = trio.nodes[1]
        if told:
            leader.stalled(stall - 1)
        for _ in range(stall):
            leader.tick()
            drain(leader)                               # nothing is answered any more
        assert (leader.role == Role.LEADER) is told, (protocol, told)
        ticks = 0
        while leader.role == Role.LEADER:
            leader.tick()
            drain(leader)
            ticks += 1
            assert ticks <= 2 * E, "a leader that hears nobody kept leading"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_stalled_follower_does_not_campaign_on_the_ticks_it_makes_up(protocol):
    """A follower told of its own stall counts the catch-up as one tick of the leader's
    silence, so it still follows (the leader's heartbeats, unread meanwhile, come next);
    the same ticks without the stall make it campaign.  Hearing nothing more afterwards,
    it campaigns within two election timeouts; a node with no leader to wait for counts
    the stall in full."""
    stall = 2 * E + 1                                   # past any drawn timeout
    for told in (True, False):
        trio = Trio(protocol)
        trio.elect(1)
        follower = trio.nodes[2]
        if told:
            follower.stalled(stall - 1)
        for _ in range(stall):
            follower.tick()
            drain(follower)
        assert (follower.role == Role.FOLLOWER and follower.leader_id == 1) is told
    trio = Trio(protocol)
    trio.elect(1)
    follower = trio.nodes[2]
    follower.stalled(stall - 1)
    for _ in range(stall):
        follower.tick()
        drain(follower)
    ticks = 0
    while follower.role == Role.FOLLOWER:               # hearing nothing more, it campaigns
        follower.tick()
        drain(follower)
        ticks += 1
        assert ticks <= 2 * E, "a stalled follower never campaigned"
    lone = Trio(protocol).nodes[2]                      # no leader to wait for: no hold
    lone.stalled(stall - 1)
    for _ in range(stall):
        lone.tick()
        drain(lone)
    assert lone.role != Role.FOLLOWER
