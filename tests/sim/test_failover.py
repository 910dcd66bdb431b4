"""Fast failover on process death (issue 17), in the simulator.

A kill in the simulator (``SimNode.kill``, kill -9) resets the killed node's connections
(``peer_down`` at its peers, once what it had sent has arrived), as the kernel does for a
killed process; the node driver tells the core, which takes its leader as gone and
campaigns within a couple of ticks instead of an election timeout
(``replica.leader_unreachable``).  A power loss (``SimNode.crash``) resets nothing, and
the followers wait out their election timeouts.  Checked here:

* a killed leader is replaced within a few ticks (no other fault; leases off), in both
  protocols and sizes, as virtual time says (``Simulation.failover_ticks``), and one that
  lost power only after an election timeout (the baseline: fast failover needs the reset);
* the "failover" profile (leader crashes, connections reset repeatedly between live
  nodes, lease reads on half the seeds) passes every checker: a flapping connection
  neither breaks safety nor a lease (the lease-holder check), and the elections stay few.
"""

import os
import statistics

import pytest

from paxoslog.sim.cluster import SimOptions, Simulation
from paxoslog.sim.network import NetworkProfile
from paxoslog.sim.sweep import run_jobs

SEEDS = int(os.environ.get("PAXOSLOG_PROFILE_SEEDS", "30"))


def _failover_ticks(protocol: str, nodes: int, seed: int, how: str = "kill") -> float:
    """Kill the leader of a busy, fault-free cluster (or cut its power); ticks until the
    next leader."""
    options = SimOptions(protocol=protocol, nodes=nodes, clients=3, duration_ms=1500.0,
                         network=NetworkProfile(delay_min_ms=0.2, delay_max_ms=3.0))
    sim = Simulation(seed, options)
    sim.start()
    sim.nemesis.active = False
    sim.run_until(800.0)
    leader = sim.leader()
    assert leader is not None
    if how == "kill":
        sim.nodes[leader].kill()
    else:
        sim.nodes[leader].crash()
    sim.run_until(sim.now + 500.0)
    assert sim.failover_ticks[how], (seed, sim.stats)
    return sim.failover_ticks[how][0]


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
@pytest.mark.parametrize("nodes", [3, 5])
def test_a_killed_leader_is_replaced_within_a_few_ticks(protocol, nodes):
    """The next leader is elected a median 1-2 ticks after the kill and never more than 4
    (the election timeout is 10 to 20 ticks): the first follower by id campaigns on its
    next tick, the next two ticks later if the first cannot win."""
    ticks = [_failover_ticks(protocol, nodes, seed) for seed in range(20)]
    assert statistics.median(ticks) <= 2.0, sorted(ticks)
    assert max(ticks) <= 4.0, sorted(ticks)


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_a_leader_that_lost_power_is_replaced_after_an_election_timeout(protocol):
    """The baseline: a power loss resets no connection, so no follower campaigns before
    its election timeout (at least 10 ticks after the last heartbeat, which came at most
    2 ticks before the loss) has run out."""
    ticks = [_failover_ticks(protocol, 3, seed, "power-loss") for seed in range(10)]
    assert min(ticks) >= 10.0 - 2.0, sorted(ticks)


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
@pytest.mark.parametrize("nodes", [3, 5])
def test_failover_profile_keeps_every_checker(protocol, nodes):
    """Leader kills and flapping connections, with lease reads on half the seeds: every
    checker passes (the lease-holder check included), and the faults really happened."""
    offset = 60_000 if nodes == 5 else 0
    sweep = run_jobs((offset + seed, protocol, nodes, "failover") for seed in range(SEEDS))
    assert not sweep.failures, f"{len(sweep.failures)} failing runs; first:\n{sweep.failures[0]}"
    totals, runs_with = sweep.totals, sweep.runs_with
    assert totals["connection_resets"] > 10 * SEEDS, dict(totals)
    assert runs_with["leader_kills"] > SEEDS // 2, dict(runs_with)
    assert totals["failovers_alone_within_3_ticks"] > 0, dict(totals)
    assert runs_with["lease_reads"] > SEEDS // 4, dict(runs_with)
