"""Lease reads under clock drift within the bound stay linearizable (issue 6).

The "lease" profile gives every node its own clock rate (ticks ``TICK_MS * rate`` apart,
rates in [1 - d, 1 + d], half the seeds with every clock fast and the leader's made slow)
with ``lease_ticks = election_ticks - margin`` and ``d`` under ``lease_drift_max``, and
crashes, pauses and partitions; gets at the leader are served from its lease when it
holds.  Every checker must pass, including the lease-holder check (no lease read while
another node leads a higher term).

Beyond the bound: test_lease_bound.py.
"""

import os

import pytest

from paxoslog.sim.cluster import SimOptions
from paxoslog.sim.profiles import lease_drift_max
from paxoslog.sim.sweep import run_jobs

SEEDS = int(os.environ.get("PAXOSLOG_PROFILE_SEEDS", "100"))


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
@pytest.mark.parametrize("nodes", [3, 5])
def test_lease_reads_within_the_drift_bound_pass_every_checker(protocol, nodes):
    """Lease reads with clocks drifting within the bound stay linearizable under faults."""
    offset = 30_000 if nodes == 5 else 0
    sweep = run_jobs((offset + seed, protocol, nodes, "lease") for seed in range(SEEDS))
    assert not sweep.failures, f"{len(sweep.failures)} failing runs; first:\n{sweep.failures[0]}"
    # The reads really came from leases, while leaders changed and nodes paused.
    assert sweep.totals["lease_reads"] > 20 * SEEDS, dict(sweep.totals)
    assert sweep.runs_with["lease_reads"] > SEEDS // 2, dict(sweep.runs_with)
    assert sweep.totals["leader_changes"] > SEEDS, dict(sweep.totals)
    assert sweep.totals.get("lease_reads_deposed", 0) == 0


def test_lease_profile_draws_clocks_within_the_bound():
    """Every lease seed's clock rates and lease length respect lease_drift_max."""
    for seed in range(500):
        o = SimOptions.random_for(seed, "raft", 5, "lease")
        d = o.clock_drift
        assert 0 < o.lease_ticks < o.election_ticks
        assert 0 < d <= lease_drift_max(o.election_ticks, o.lease_ticks)
        assert o.lease_ticks * (1 + d) <= (o.election_ticks - 1) * (1 - d)
        rates = list(o.clock_rates) + ([o.clock_leader_rate] if o.clock_leader_rate else [])
        assert len(o.clock_rates) == o.nodes + o.spares
        assert all(1 - d - 1e-12 <= r <= 1 + d + 1e-12 for r in rates), (seed, rates, d)
        assert o.lease_reads and o.tick_catch_up


def test_lease_drift_max_matches_the_margin_rule():
    """The bound leaves no drift at lease = election - 1 and grows with the margin."""
    assert lease_drift_max(10, 9) == 0.0
    assert 0.05 < lease_drift_max(10, 8) < 0.06          # 9/8 = (1 + d) / (1 - d)
    assert lease_drift_max(20, 16) > lease_drift_max(20, 17) > 0
