"""The simulator with the real storage encoding over a faulty memory disk, both modes.

Crashes keep a random prefix of unsynced writes and may tear the next one; fsyncs fail
with EIO (the node must stop, never retry-and-believe); one committed record per run gets a
flipped bit (the node must detect it and refuse to start with that log).  All checkers must
stay green, and the faults must really have happened.
"""

import dataclasses

import pytest

from paxoslog.sim.cluster import SimOptions, Simulation


def _options(seed: int, protocol: str) -> SimOptions:
    base = SimOptions.random_for(seed, protocol, 3)
    return dataclasses.replace(base, storage_model=True, eio_rate=1.0, bitflip=True,
                               crash_rate=max(base.crash_rate, 1.0), snapshot_every=20)


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_storage_faults_keep_every_checker_green(protocol):
    """Torn tails, lost unsynced writes, fsync EIO and bit flips break no checker."""
    totals = {"fsync_failures": 0, "corruption_detected": 0, "bitflips": 0, "torn": 0}
    for seed in range(40):
        sim = Simulation(50_000 + seed, _options(50_000 + seed, protocol)).run()
        for key in ("fsync_failures", "corruption_detected", "bitflips"):
            totals[key] += sim.stats.get(key, 0)
        totals["torn"] += sum(n.disk.torn is not None for n in sim.nodes.values())
        # Every flipped bit was detected at restart (no node runs on a damaged log).
        assert sim.stats.get("corruption_detected", 0) == sim.stats.get("bitflips", 0)
    assert totals["fsync_failures"] > 0, totals
    assert totals["bitflips"] > 0, totals
