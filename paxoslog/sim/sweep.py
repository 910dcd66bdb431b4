"""Run seeds in worker processes and collect what happened in each run.

A job is ``(seed, protocol, nodes)`` or ``(seed, protocol, nodes, profile)``.  ``run_job``
returns the job, the failure text (None when every checker passed; it ends with the
replay command) and the run's statistics: ``Simulation.stats`` plus the history counts
(``ops``, ``completed``, ``indeterminate``).  Tests use the statistics to assert that a
profile's faults really happened, not only that nothing failed.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable

from .checkers import SimulationFailure
from .cluster import SimOptions, Simulation, replay_command

__all__ = ["run_job", "run_jobs", "Sweep"]


def run_job(job: tuple) -> tuple[tuple, str | None, dict]:
    seed, protocol, nodes, *rest = job
    profile = rest[0] if rest else ""
    sim = None
    error = None
    try:
        sim = Simulation(seed, SimOptions.random_for(seed, protocol, nodes, profile))
        sim.run()
    except SimulationFailure as exc:
        error = str(exc)
    except Exception as exc:  # a crash of the simulated code is a failure too
        error = (f"seed {seed} crashed: {exc!r}\n{traceback.format_exc()}"
                 f"replay: {replay_command(seed, protocol, nodes, profile)}")
    stats: dict = {}
    if sim is not None:
        stats = dict(sim.stats)
        stats["ops"] = len(sim.history.operations)
        stats["completed"] = sim.history.completed
        stats["indeterminate"] = sim.history.indeterminate
    return job, error, stats


class Sweep:
    """The outcome of many runs: failure texts, summed statistics, and how many runs
    had each statistic above zero."""

    def __init__(self) -> None:
        self.runs = 0
        self.failures: list[str] = []
        self.totals: Counter = Counter()
        self.runs_with: Counter = Counter()

    def add(self, error: str | None, stats: dict) -> None:
        self.runs += 1
        if error:
            self.failures.append(error)
        self.totals.update(stats)
        self.runs_with.update(key for key, value in stats.items() if value)


def run_jobs(jobs: Iterable[tuple], workers: int | None = None) -> Sweep:
    """Run ``jobs`` on ``workers`` processes (default: up to 4, at most the CPU count)."""
    workers = workers or max(1, min(os.cpu_count() or 1, 4))
    sweep = Sweep()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _, error, stats in pool.map(run_job, list(jobs), chunksize=4):
            sweep.add(error, stats)
    return sweep
