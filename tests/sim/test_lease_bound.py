"""Lease reads beyond the clock-drift bound: stale reads happen and are caught (issue 6).

The "lease-beyond" profile keeps ``lease_ticks = election_ticks - 1`` (no room for any
drift) and makes the leader's clock six times slower than the others' before isolating
it: the old leader serves reads from a lease that outlived the followers' election
timeout.  The pinned seeds show the linearizability checker rejecting such histories (a
majority of each protocol's list must), and the same seeds with every clock at one rate
passing, so the drift is what matters.
"""

import dataclasses

import pytest

from paxoslog.sim.checkers import SimulationFailure
from paxoslog.sim.cluster import SimOptions, Simulation

# lease-beyond runs whose history the linearizability checker rejects when the lease-holder
# check is left out, as (seed, nodes) per protocol.  Raft: most seeds qualify.  Multi-Paxos:
# fewer (its leader serves no lease read while one of its own proposals is unchosen, and an
# isolated leader's proposals stay so).  Re-found when the simulator moved onto the
# production node driver (the schedules changed), and again (tools/find_lease_seeds.py)
# after the removed-node and send-before-persist changes; the seeds pinned first were
# [(0, 3), (3, 3), (7, 3), (0, 5), (4, 5)] (Raft) and [(14, 5), (41, 5), (103, 5),
# (212, 5), (261, 5)] (Multi-Paxos).  Core changes move trajectories, so the test asks for
# a majority of each list, not every seed.
# Both lists grew on main 910ca2d (already failing there, before fast failover), when
# trajectories moved again (removed nodes exit; a Raft voter of the configuration before
# an uncommitted newest one campaigns): only 2 of Raft's 5 seeds and 1 of Multi-Paxos's 5
# still failed.  The seeds found again (seeds 0-59 for Raft, 0-249 for Multi-Paxos) are
# added; the old ones are kept.  Multi-Paxos (23, 3) and (21, 5) failed only after other
# runs in the same process (the driver iterated a set of reads in address order; fixed),
# the seeds after them were found with that fixed.
STALE_LEASE_SEEDS = {
    "raft": [(7, 3), (13, 3), (15, 3), (6, 5), (7, 5),
             (0, 3), (1, 3), (4, 3), (12, 5), (15, 5)],
    "multipaxos": [(20, 3), (39, 3), (86, 3), (14, 5), (30, 5),
                   (23, 3), (55, 3), (73, 3), (21, 5), (27, 5), (28, 5),
                   (165, 3), (184, 3), (193, 3), (37, 5), (59, 5), (67, 5), (95, 5),
                   (33, 5)],   # (33, 5): found on main (tools/find_lease_seeds.py)
}
REFIND = "find new seeds: python tools/find_lease_seeds.py --protocol {0} --seeds 200"


def _beyond(seed: int, protocol: str, nodes: int, **changes) -> Simulation:
    options = SimOptions.random_for(seed, protocol, nodes, "lease-beyond")
    return Simulation(seed, dataclasses.replace(options, lease_holder_check=False, **changes))


@pytest.mark.parametrize("protocol", ["raft", "multipaxos"])
def test_drift_beyond_the_bound_yields_stale_reads_the_checker_rejects(protocol):
    """Beyond the bound an isolated slow leader serves stale lease reads: not linearizable."""
    rejected = []
    for seed, nodes in STALE_LEASE_SEEDS[protocol]:
        options = SimOptions.random_for(seed, protocol, nodes, "lease-beyond")
        assert options.lease_ticks == options.election_ticks - 1
        assert options.clock_leader_rate == 3.0
        sim = _beyond(seed, protocol, nodes)
        try:
            sim.run()
        except SimulationFailure as exc:
            assert "history not linearizable" in str(exc), str(exc)
            assert "--profile lease-beyond" in str(exc)
            # The violation comes from reads a deposed leader served from its lease.
            assert sim.stats.get("lease_reads_deposed", 0) > 0, (seed, nodes, sim.stats)
            rejected.append((seed, nodes))
    assert len(rejected) * 2 > len(STALE_LEASE_SEEDS[protocol]), (rejected,
                                                                  REFIND.format(protocol))


@pytest.mark.parametrize("protocol", ["raft", "multipaxos"])
def test_the_same_faults_without_drift_are_linearizable(protocol):
    """The pinned seeds pass once every clock runs at one rate: the drift is the cause."""
    for seed, nodes in STALE_LEASE_SEEDS[protocol]:
        sim = _beyond(seed, protocol, nodes, clock_rates=(), clock_leader_rate=0.0,
                      clock_strobe_rate=0.0).run()
        assert sim.stats["lease_reads"] > 100, (seed, nodes, sim.stats)
        assert sim.stats.get("lease_reads_deposed", 0) == 0, (seed, nodes, sim.stats)


def test_lease_beyond_profile_fails_at_the_first_deposed_lease_read():
    """As a profile, lease-beyond fails fast on the lease-holder check (for sweeps)."""
    failures = 0
    for seed, nodes in STALE_LEASE_SEEDS["raft"]:
        sim = Simulation(seed, SimOptions.random_for(seed, "raft", nodes, "lease-beyond"))
        try:
            sim.run()
        except SimulationFailure as exc:
            assert "served a lease read while node" in str(exc), str(exc)
            assert (f"replay: python -m paxoslog.sim --seed {seed} --protocol raft "
                    f"--nodes {nodes} --profile lease-beyond") in str(exc)
            failures += 1
    assert failures * 2 > len(STALE_LEASE_SEEDS["raft"]), REFIND.format("raft")
