"""``python -m paxoslog.sim``: run seeds (``make sim``), or replay one seed.

Prints a progress line; on failure prints the failing seed's replay command and exits 1."""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from .checkers import SimulationFailure
from .cluster import replay_command, run_seed


def _one(job: tuple[int, str, int]) -> tuple[tuple[int, str, int], str | None]:
    seed, protocol, nodes = job
    try:
        run_seed(seed, protocol, nodes)
    except SimulationFailure as exc:
        return job, str(exc)
    except Exception as exc:  # a crash of the simulated code is a failure too
        import traceback
        return job, (f"seed {seed} crashed: {exc!r}\n{traceback.format_exc()}"
                     f"replay: {replay_command(seed, protocol, nodes)}")
    return job, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paxoslog.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="replay exactly this seed (verbose)")
    parser.add_argument("--protocol", default="both", choices=["multipaxos", "raft", "both"])
    parser.add_argument("--nodes", default="3,5", help="comma-separated cluster sizes")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    protocols = ["multipaxos", "raft"] if args.protocol == "both" else [args.protocol]
    sizes = [int(n) for n in args.nodes.split(",")]
    if args.seed is not None:
        failed = False
        for protocol in protocols:
            for nodes in sizes:
                _, error = _one((args.seed, protocol, nodes))
                print(f"seed {args.seed} {protocol} {nodes} nodes: {'FAIL' if error else 'ok'}")
                if error:
                    print(error)
                    failed = True
        return 1 if failed else 0
    jobs = [(seed, protocol, nodes) for seed in range(args.start, args.start + args.seeds)
            for protocol in protocols for nodes in sizes]
    started = time.monotonic()
    failures = []
    done = 0
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for job, error in pool.map(_one, jobs, chunksize=8):
            done += 1
            if error:
                failures.append(error)
                print(f"\nFAIL {error}", flush=True)
            if done % 20 == 0 or done == len(jobs):
                rate = done / max(time.monotonic() - started, 1e-9)
                print(f"\r{done}/{len(jobs)} runs, {len(failures)} failed, {rate:.1f} runs/s",
                      end="", flush=True)
    print(f"\n{len(jobs)} runs in {time.monotonic() - started:.1f}s, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
