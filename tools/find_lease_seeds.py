"""Find lease-beyond seeds whose history the linearizability checker rejects.

tests/sim/test_lease_bound.py pins such seeds as a negative control (beyond the drift
bound, stale lease reads must be caught).  Core changes move the simulated trajectories,
so the pinned seeds stop qualifying now and then; this prints new ones:

    python tools/find_lease_seeds.py --protocol raft --seeds 100

A seed qualifies when, with the lease-holder check off, the run fails with "history not
linearizable" after reads a deposed leader served from its lease, and passes once every
clock runs at one rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paxoslog.sim.checkers import SimulationFailure  # noqa: E402
from paxoslog.sim.cluster import SimOptions, Simulation  # noqa: E402


def _run(seed: int, protocol: str, nodes: int, **changes) -> tuple[bool, dict]:
    options = SimOptions.random_for(seed, protocol, nodes, "lease-beyond")
    sim = Simulation(seed, dataclasses.replace(options, lease_holder_check=False, **changes))
    try:
        sim.run()
    except SimulationFailure as exc:
        return "history not linearizable" in str(exc), dict(sim.stats)
    return False, dict(sim.stats)


def qualifies(job: tuple[int, str, int]) -> bool:
    seed, protocol, nodes = job
    rejected, stats = _run(seed, protocol, nodes)
    if not rejected or not stats.get("lease_reads_deposed"):
        return False
    _, calm = _run(seed, protocol, nodes, clock_rates=(), clock_leader_rate=0.0,
                   clock_strobe_rate=0.0)
    return calm.get("lease_reads", 0) > 100 and not calm.get("lease_reads_deposed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["raft", "multipaxos"], required=True)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--nodes", default="3,5")
    parser.add_argument("--want", type=int, default=5, help="stop after this many")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    jobs = [(seed, args.protocol, int(n)) for seed in range(args.seeds)
            for n in args.nodes.split(",")]
    found: list[tuple[int, int]] = []
    batch = args.jobs * 2
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            found += [(seed, nodes) for (seed, _, nodes), ok
                      in zip(chunk, pool.map(qualifies, chunk)) if ok]
            print(f"\r{start + len(chunk)}/{len(jobs)} runs, {len(found)} qualify", end="",
                  file=sys.stderr)
            if len(found) >= args.want:
                break
    print(file=sys.stderr)
    print(found)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
