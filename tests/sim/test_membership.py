"""Membership changes mixed with crashes, pauses and partitions (R3, R19).

The "membership" profile asks for changes several times a second (removing the leader
itself, one add plus one remove, two adds, two removes, learners) with spare nodes,
crashes, pauses, isolated-leader and majority/minority partitions, and kill-all-and-
restart, also a few milliseconds after a change (while it is on its way to a quorum).
Every checker must pass, and the sweep must show that changes really committed, also
while a fault was active, that leaders were removed and that kill-all hit mid-change.
"""

import os

import pytest

from paxoslog.sim.sweep import run_job, run_jobs

SEEDS = int(os.environ.get("PAXOSLOG_PROFILE_SEEDS", "100"))


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
@pytest.mark.parametrize("nodes", [3, 5])
def test_membership_changes_under_faults_pass_every_checker(protocol, nodes):
    """Changes under crashes, partitions and kill-all keep every checker green and commit."""
    offset = 60_000 if nodes == 5 else 0
    sweep = run_jobs((offset + seed, protocol, nodes, "membership") for seed in range(SEEDS))
    assert not sweep.failures, f"{len(sweep.failures)} failing runs; first:\n{sweep.failures[0]}"
    totals, runs_with = dict(sweep.totals), dict(sweep.runs_with)
    assert sweep.totals["configs_committed"] > 2 * SEEDS, totals
    assert sweep.runs_with["configs_committed"] > SEEDS * 3 // 4, runs_with
    assert sweep.runs_with["voter_changes_under_fault"] > SEEDS // 4, runs_with
    assert sweep.runs_with["leader_removals_committed"] > SEEDS // 4, runs_with
    assert sweep.runs_with["leader_removals_under_fault"] > SEEDS // 10, runs_with
    assert sweep.runs_with["kill_all_mid_change"] > SEEDS // 10, runs_with


# Membership-profile runs that once failed (no leader after heal): a Raft voter whose
# configuration was stale ignored RequestVote from a candidate outside it, so after changes
# and a permanently lost node (bit flip) no candidate could collect a quorum.  Fixed in
# 812a016 (Raft answers vote requests from outside its configuration).
RAFT_STALE_CONFIG_VOTE_SEEDS = [(282, 5), (561, 3), (807, 3), (903, 3)]


@pytest.mark.parametrize("seed,nodes", RAFT_STALE_CONFIG_VOTE_SEEDS)
def test_raft_elects_a_leader_when_a_voter_has_a_stale_configuration(seed, nodes):
    """After changes and a lost node, the voters that are left still elect a leader."""
    _, error, _ = run_job((seed, "raft", nodes, "membership"))
    assert error is None, error


# Membership-profile runs that once failed (no leader after heal) once a removed node exits
# as the server's does: a removed Multi-Paxos leader exited before the voters it handed
# over to knew the configuration was chosen ((92, 3), (60079, 5)); a removed Raft leader,
# killed holding the only copy of the final configuration, did not campaign ((72, 3)); the
# simulator kept a node lost to a flipped bit in later configurations ((10, 3)) or flipped
# a bit on the only voter ((24, 3)).
# With fast failover (kills reset connections) seed 24 failed again in both protocols: the
# bit flip's guard read the victim's own configuration, stale after a change, and flipped
# a bit on a voter the others could not do without; the guard now reads every member's.
# Later (seeds 123, 216, 364 at bf6194b; 13 with the leader applying while it persists):
# a removed Multi-Paxos leader killed after applying its removal, before its hand-over,
# never came back, as a removed server never does, and the voter left did not know the
# configuration was chosen: it needed that node's promise.  A node now exits only once a
# member of the new configuration tells it so, not on its own apply.
REMOVED_NODE_EXIT_SEEDS = [(92, "multipaxos", 3), (60079, "multipaxos", 5),
                           (60008, "multipaxos", 5), (10, "multipaxos", 3),
                           (24, "multipaxos", 3), (72, "raft", 3), (24, "raft", 3),
                           (13, "multipaxos", 3), (123, "multipaxos", 3),
                           (216, "multipaxos", 3), (364, "multipaxos", 3)]

# Membership runs that failed (no leader after heal), found by a sweep of seeds 500-799
# once removed nodes waited for a member's word.  (686, 5) and (749, 3): the removed
# leader came back knowing the new configuration chosen, but the new voters lagged behind
# it and did not know they were voters (or members at all), so nobody campaigned; a
# non-voter that hears no leader and may lag now asks the voters it knows how far they
# know slots chosen, and catches up from whoever knows more.  (569, 3): the configuration
# {1, 2, 4} was chosen, the removed nodes 3 and 5 were told by node 2 alone and exited,
# and node 2, the only member that knew it chosen, lost its log to a flipped bit; nodes 1
# and 4 still followed {1, 2, 3, 4, 5}.  A removed node now goes only once a quorum of the
# new voters told it (paxoslog/node/removal.py).  With both changes, pinned seed (24, 3)
# failed once: the bit flipped on node 3 while {3, 4}, proposed and accepted but not known
# chosen, made it indispensable; the simulator's guard now reads accepted configurations.
LAGGING_VOTER_SEEDS = [(569, "multipaxos", 3), (686, "multipaxos", 5),
                       (749, "multipaxos", 3)]


@pytest.mark.parametrize("seed,protocol,nodes", LAGGING_VOTER_SEEDS)
def test_voters_that_lag_behind_their_own_configuration_still_elect(seed, protocol, nodes):
    """The new voters learn the configuration chosen and campaign; the removed nodes wait
    for a quorum of them before they go."""
    _, error, _ = run_job((seed, protocol, nodes, "membership"))
    assert error is None, error


# A membership run that failed (no progress within 3 s after the heal, one voter left, the
# others removed and exited) while every node, not only a follower of a known leader, held
# its election timer across its own stall (docs/design-notes.md, "A node's own stall is
# held against nobody"); the shipped rule passes it.
STALL_HOLD_SEEDS = [(50, "multipaxos", 3)]


@pytest.mark.parametrize("seed,protocol,nodes", STALL_HOLD_SEEDS)
def test_a_node_without_a_leader_counts_its_own_stall(seed, protocol, nodes):
    """The last voters still campaign after pauses: the stall rule holds no leaderless timer."""
    _, error, _ = run_job((seed, protocol, nodes, "membership"))
    assert error is None, error


# A membership run whose cluster was fine (leader 2 with voter 3, a quorum of {2, 3, 5})
# but whose last probe write never reached it: the probe picked live nodes at random, and
# all 16 tries within the settle time went to the three spares that never joined (they
# know no leader).  The probe now tries the live nodes in turn.
PROBE_SEEDS = [(931, "raft", 5)]


@pytest.mark.parametrize("seed,protocol,nodes", PROBE_SEEDS)
def test_the_probe_reaches_a_member_among_spares_that_never_joined(seed, protocol, nodes):
    _, error, _ = run_job((seed, protocol, nodes, "membership"))
    assert error is None, error


# A membership run whose history was linearizable but whose checker gave up after 558
# million search steps: dozens of deletes and unread writes lost in partitions, never
# answered, which the search tried in every subset at every position.  The checker now
# treats unread values as one state and interchangeable indeterminate writes as one
# (paxoslog/sim/linearizability.py, rules 5 and 6) and decides it in a tenth of a second.
CHECKER_SEEDS = [(40072, "multipaxos", 3)]


@pytest.mark.parametrize("seed,protocol,nodes", CHECKER_SEEDS)
def test_a_history_with_many_lost_writes_is_decided(seed, protocol, nodes):
    _, error, _ = run_job((seed, protocol, nodes, "membership"))
    assert error is None, error
