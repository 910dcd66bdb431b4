"""The core contract both replicas keep, whatever the protocol (DESIGN.md section 2).

Every test runs against Multi-Paxos and Raft through ``create_replica``: one outstanding
Ready (a second ``ready()`` or a foreign ``advance()`` raises ``ContractViolation`` and
changes nothing), and ``status()`` as the typed ``ReplicaStatus`` the shell reads.
``Trio`` is a three-node cluster driven by hand: it honours the Ready contract and delivers
messages in FIFO order until nothing moves.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from paxoslog.core.errors import ContractViolation
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready, Role
from paxoslog.core.replica import (PeerProgress, ReplicaOptions, ReplicaStatus,
                                   create_replica)

PROTOCOLS = ("multipaxos", "raft")
E = 10


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
    """Honour every Ready the replica has (nothing to persist or send here)."""
    messages = []
    while (ready := replica.ready()) is not None:
        messages.extend(ready.messages)
        replica.advance(ready)
    return messages


class Trio:
    """Three replicas of one protocol; ``settle`` runs Readies and delivers messages."""

    def __init__(self, protocol: str) -> None:
        config = Config(frozenset({1, 2, 3}))
        options = ReplicaOptions(heartbeat_ticks=2, election_ticks=E)
        self.nodes = {n: create_replica(protocol, n, config, options, random.Random(n))
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
        for _ in range(6 * E):
            self.nodes[target].tick()
            self.settle()
            if self.nodes[target].role == Role.LEADER:
                return
        raise AssertionError(f"node {target} did not win")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_second_ready_before_advance_is_refused(protocol):
    """ready() while a Ready is outstanding raises ContractViolation; advance() unblocks it."""
    replica = lone_leader(protocol)
    replica.propose([b"a"])
    ready = replica.ready()
    assert ready is not None and not replica.has_ready()
    replica.propose([b"b"])
    with pytest.raises(ContractViolation, match="outstanding"):
        replica.ready()
    replica.advance(ready)
    after = replica.ready()
    assert [c for e in after.committed for c in e.payload] == [b"b"]
    replica.advance(after)


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
    assert [c for e in first.committed for c in e.payload] == [b"a"]
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
