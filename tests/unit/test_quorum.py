"""Majority, joint and flexible quorums."""

from hypothesis import given, strategies as st

from paxoslog.core.ballot import Ballot
from paxoslog.core.quorum import Config, FlexibleQuorum, majority


def test_majority_counts_only_voters():
    """Acks from non-voters do not count toward a majority."""
    voters = frozenset({1, 2, 3})
    assert not majority(voters, {1, 7, 8})
    assert majority(voters, {1, 3})
    assert not majority(frozenset({1, 2, 3, 4}), {1, 2})


def test_joint_quorum_needs_both_majorities():
    """During joint consensus a decision needs a majority of old AND new voters."""
    joint = Config(frozenset({3, 4, 5}), frozenset({1, 2, 3}))
    assert not joint.is_quorum({1, 2})          # old majority only
    assert not joint.is_quorum({4, 5})          # new majority only
    assert joint.is_quorum({1, 3, 4})           # 3 sits in both
    assert joint.is_quorum({1, 2, 4, 5})


def test_committed_index_is_the_quorum_minimum():
    """committed_index is the highest index a quorum has, min over both halves when joint."""
    plain = Config(frozenset({1, 2, 3}))
    assert plain.committed_index({1: 10, 2: 7, 3: 3}) == 7
    joint = Config(frozenset({3, 4, 5}), frozenset({1, 2, 3}))
    assert joint.committed_index({1: 10, 2: 10, 3: 10, 4: 2, 5: 1}) == 2


def test_flexible_quorums_must_intersect():
    """Phase-1 and phase-2 sizes that could miss each other are refused."""
    voters = frozenset(range(1, 6))
    q = FlexibleQuorum(voters, 4, 2)
    assert q.phase2({1, 2}) and not q.phase1({1, 2, 3})
    try:
        FlexibleQuorum(voters, 3, 2)
    except AssertionError:
        return
    raise AssertionError("non-intersecting flexible quorum accepted")


@given(st.sets(st.integers(1, 7), min_size=1), st.sets(st.integers(1, 7)),
       st.sets(st.integers(1, 7)))
def test_any_two_quorums_intersect(voters, a, b):
    """Two quorums of one configuration always share a voter."""
    config = Config(frozenset(voters))
    if config.is_quorum(a) and config.is_quorum(b):
        assert a & b & voters


def test_ballots_order_round_first_and_pack_preserves_order():
    """Ballots compare by round then node; the packed integer keeps the order."""
    ballots = [Ballot(1, 3), Ballot(2, 1), Ballot(2, 2), Ballot(10, 1)]
    assert ballots == sorted(ballots)
    packed = [b.pack() for b in ballots]
    assert packed == sorted(packed)
    assert all(Ballot.unpack(p) == b for p, b in zip(packed, ballots))
