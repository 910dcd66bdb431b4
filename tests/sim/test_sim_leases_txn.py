"""Leases and transactions in the simulator (paxoslog/sim/coordination.py) with clock drift
inside and beyond the stated bound.

Inside (profile "leases": clocks within the conf's drift margin, leaders made fast, with
crashes, pauses and partitions): no lease expires earlier than TTL x (1 - margin) after
its last acknowledged keep-alive, and bank transfers in transactions keep the total on
every replica after every apply.  Beyond (profile "leases-beyond": every clock 2.5 to 4
times fast against a 5% margin): the leader expires leases early and the lease checker
catches it, with the replay command.
"""

import os

import pytest

from paxoslog.sim.checkers import SimulationFailure
from paxoslog.sim.cluster import SimOptions, Simulation
from paxoslog.sim.sweep import run_jobs

SEEDS = max(4, int(os.environ.get("PAXOSLOG_PROFILE_SEEDS", "100")) // 12)


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_leases_and_transactions_within_the_drift_bound_pass_every_checker(protocol):
    """Within the bound: no early expiry, the bank total holds, under faults."""
    sweep = run_jobs(((seed, protocol, 3 + 2 * (seed % 2), "leases") for seed in range(SEEDS)),
                     workers=1)
    assert not sweep.failures, f"{len(sweep.failures)} failing runs; first:\n{sweep.failures[0]}"
    # Leases really were kept alive, ran out and were expired through the log, and
    # transfers committed, while leaders changed.
    assert sweep.totals["lease_keepalives_acked"] > 20 * SEEDS, dict(sweep.totals)
    assert sweep.totals["leases_expired"] > 3 * SEEDS, dict(sweep.totals)
    assert sweep.totals["bank_transfers"] > 50 * SEEDS, dict(sweep.totals)
    assert sweep.totals["leader_changes"] > SEEDS, dict(sweep.totals)


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_clocks_beyond_the_bound_expire_leases_early_and_are_caught(protocol):
    """Beyond the bound the checker fails the run on an early expiry, with its replay."""
    for seed in range(4):
        sim = Simulation(seed, SimOptions.random_for(seed, protocol, 3, "leases-beyond"))
        with pytest.raises(SimulationFailure) as failure:
            sim.run()
        text = str(failure.value)
        assert "expired at" in text and "earlier than TTL" in text, text
        assert (f"replay: python -m paxoslog.sim --seed {seed} --protocol {protocol} "
                "--nodes 3 --profile leases-beyond") in text


def test_the_beyond_seeds_pass_with_clocks_at_one_rate():
    """The same runs with every clock at one rate pass: the drift is the cause."""
    import dataclasses
    for seed in range(4):
        options = SimOptions.random_for(seed, "raft", 3, "leases-beyond")
        sim = Simulation(seed, dataclasses.replace(options, clock_rates=())).run()
        assert sim.stats["leases_expired"] > 0 and sim.stats["lease_keepalives_acked"] > 0


def test_seeds_with_several_grants_in_one_entry_pass():
    """Seeds whose log batches several lease grants into one entry (they failed with
    "kv failed to apply" while a lease id was its entry's index; found by the benchmark)."""
    for seed in (6, 9, 10):
        sim = Simulation(seed, SimOptions.random_for(seed, "raft", 3, "leases")).run()
        assert sim.stats["leases_expired"] > 0
