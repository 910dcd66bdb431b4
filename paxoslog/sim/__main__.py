"""``python -m paxoslog.sim``: run seeds (``make sim``), or replay one seed.

Prints a progress line; on failure prints the failing seed's replay command and exits 1.
``--profile`` runs a named profile (see paxoslog/sim/profiles.py and docs/simulator.md)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from .profiles import NEGATIVE_PROFILES, PROFILES
from .sweep import Sweep, run_job


def _one(job: tuple) -> tuple[tuple, str | None]:
    """Run ``(seed, protocol, nodes)`` or ``(seed, protocol, nodes, profile)``."""
    job, error, _ = run_job(job)
    return job, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paxoslog.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="replay exactly this seed (verbose)")
    parser.add_argument("--protocol", default="both", choices=["multipaxos", "raft", "both"])
    parser.add_argument("--nodes", default="3,5", help="comma-separated cluster sizes")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--profile", default="", choices=["", *sorted(PROFILES)],
                        help="a named fault profile (default: the default draw); "
                             f"{', '.join(sorted(NEGATIVE_PROFILES))} are expected to fail "
                             "on some seeds")
    args = parser.parse_args(argv)
    protocols = ["multipaxos", "raft"] if args.protocol == "both" else [args.protocol]
    sizes = [int(n) for n in args.nodes.split(",")]
    if args.seed is not None:
        failed = False
        for protocol in protocols:
            for nodes in sizes:
                _, error = _one((args.seed, protocol, nodes, args.profile))
                profile = f" profile {args.profile}" if args.profile else ""
                print(f"seed {args.seed} {protocol} {nodes} nodes{profile}: "
                      f"{'FAIL' if error else 'ok'}")
                if error:
                    print(error)
                    failed = True
        return 1 if failed else 0
    jobs = [(seed, protocol, nodes, args.profile)
            for seed in range(args.start, args.start + args.seeds)
            for protocol in protocols for nodes in sizes]
    started = time.monotonic()
    failures = []
    done = 0
    sweep = Sweep()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for job, error, stats in pool.map(run_job, jobs, chunksize=8):
            done += 1
            sweep.add(error, stats)
            if error:
                failures.append(error)
                print(f"\nFAIL {error}", flush=True)
            if done % 20 == 0 or done == len(jobs):
                rate = done / max(time.monotonic() - started, 1e-9)
                print(f"\r{done}/{len(jobs)} runs, {len(failures)} failed, {rate:.1f} runs/s",
                      end="", flush=True)
    print(f"\n{len(jobs)} runs in {time.monotonic() - started:.1f}s, {len(failures)} failed")
    if args.profile:
        # What the profile's faults amounted to: total (runs where it happened).
        print("totals: " + ", ".join(f"{key}={sweep.totals[key]} ({sweep.runs_with[key]})"
                                     for key in sorted(sweep.totals)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
