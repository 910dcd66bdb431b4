"""Safety and liveness checkers of the simulator.

* agreement: one value per log index, across all replicas and all time (checked at every
  apply: the first value applied at an index is remembered, any later one must equal it);
* prefix: every replica applies indexes contiguously from its snapshot (asserted by the
  node shell), so with agreement every applied sequence is a prefix of another;
* linearizability of the client history (linearizability.py), a checker timeout counts as
  a failure;
* progress after heal (cluster.py: a probe write must commit within ``settle_ms``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.log import Entry
from .linearizability import Operation, check_history

if TYPE_CHECKING:
    from .cluster import Simulation

__all__ = ["SimulationFailure", "History", "check_agreement"]


class SimulationFailure(AssertionError):
    """A checker found a violation; the message ends with the replay command."""


def check_agreement(sim: "Simulation", node_id: int, entry: Entry) -> None:
    value = (entry.kind, entry.payload)
    first = sim.chosen.setdefault(entry.index, value)
    if first != value:
        sim.fail(f"agreement violated at index {entry.index}: node {node_id} applied "
                 f"{value!r:.200} but another replica applied {first!r:.200}")


class History:
    """Client operations as the clients saw them."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []
        self.completed = 0
        self.indeterminate = 0
        self.failed = 0

    def add(self, op: Operation) -> None:
        self.operations.append(op)
        if op.ret is None:
            self.indeterminate += 1
        else:
            self.completed += 1

    def check(self, sim: "Simulation", timeout_s: float = 60.0) -> None:
        result = check_history(self.operations, timeout_s=timeout_s)
        if result.ok is None:
            sim.fail(f"linearizability checker gave up (counts as a failure): {result.message}")
        if not result.ok:
            sim.fail(f"history not linearizable: {result.message}")
