"""Safety and liveness checkers of the simulator.

* agreement: one value per log index, across all replicas and all time (checked at every
  apply: the first value applied at an index is remembered, any later one must equal it);
* prefix: every replica applies indexes contiguously from its snapshot (asserted by the
  node shell), so with agreement every applied sequence is a prefix of another;
* linearizability of the client history (linearizability.py), a checker timeout counts as
  a failure;
* progress after heal (cluster.py: a probe write must commit within ``settle_ms``);
* change agreement: the kv changes a replica reports for a log index (what the watch
  streams deliver: key, new record, previous record) are the same on every replica, like
  the entry itself;
* session agreement: the session tables that replicas snapshot at the same index are
  equal;
* executed once (sessions profile): every client operation (client, sequence) is executed
  by the state machine at one log index at most.  Replicas apply one agreed log, so two
  indexes mean that some replica's applied sequence executed the operation twice (a
  retry the session table should have recognised); a replica re-applying the same index
  after a restart is the same execution, not a second one;
* lease holder (lease reads): no replica serves a read from its lease while another one
  leads in a higher term.  A new leader was voted in by a quorum that meets the old
  leader's lease quorum, and each of those voters waited an election timeout after the
  old leader's heartbeats, so with clocks within the bound (profiles.lease_drift_max) the
  old lease has run out before anyone else leads.  Stricter than linearizability, which
  only notices a stale lease read when a newer write happens to be observable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.log import Entry
from ..core.ready import Role
from .linearizability import Operation, check_history

if TYPE_CHECKING:
    from .cluster import Simulation

__all__ = ["SimulationFailure", "History", "check_agreement", "check_changes",
           "check_executed_once", "check_sessions",
           "check_lease_holder"]


class SimulationFailure(AssertionError):
    """A checker found a violation; the message ends with the replay command."""


def check_agreement(sim: "Simulation", node_id: int, entry: Entry) -> None:
    value = (entry.kind, entry.payload)
    first = sim.chosen.setdefault(entry.index, value)
    if first != value:
        sim.fail(f"agreement violated at index {entry.index}: node {node_id} applied "
                 f"{value!r:.200} but another replica applied {first!r:.200}")


def check_changes(sim: "Simulation", node_id: int, index: int, changes: tuple) -> None:
    """``node_id`` applied the entry at ``index`` and reported these kv changes."""
    first = sim.changes.setdefault(index, changes)
    if first != changes:
        sim.fail(f"watch events differ at index {index}: node {node_id} reported "
                 f"{changes!r:.200} but another replica reported {first!r:.200}")


def check_sessions(sim: "Simulation", node_id: int, index: int, table: object) -> None:
    """``node_id`` snapshots its session table at ``index``: the same on every replica
    at the same index, since the table is replicated state (a replica that applies its
    own cached copy of a command must see every session field of it)."""
    first = sim.session_tables.setdefault(index, table)
    if first != table:
        sim.fail(f"session tables differ at index {index}: node {node_id} snapshots "
                 f"{table!r:.300} but another replica {first!r:.300}")


def check_executed_once(sim: "Simulation", node_id: int, outcome) -> None:
    """The state machine of ``node_id`` executed a client command (``outcome``: a
    CommandApplied that was not a deduplicated retry) at log index ``outcome.index``."""
    first = sim.executions.setdefault(outcome.key, outcome.index)
    if first != outcome.index:
        command = outcome.command or {}
        sim.fail(f"client {outcome.key[0]} sequence {outcome.key[1]} ({command.get('op')} "
                 f"{command.get('key')!r}) executed twice: at index {first} and again at "
                 f"index {outcome.index} (node {node_id})")


def check_lease_holder(sim: "Simulation", node) -> None:
    """``node`` is about to serve a read from its lease."""
    term = node.replica.term
    for other in sim.nodes.values():
        if (other is not node and other.alive and other.replica.role == Role.LEADER
                and other.replica.term > term):
            sim.count("lease_reads_deposed")
            if sim.options.lease_holder_check:
                sim.fail(f"node {node.node_id} (term {term}) served a lease read while node "
                         f"{other.node_id} leads term {other.replica.term}")
            return


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

    def check(self, sim: "Simulation", timeout_s: float = 180.0) -> None:
        result = check_history(self.operations, timeout_s=timeout_s)
        if result.ok is None:
            sim.fail(f"linearizability checker gave up (counts as a failure): {result.message}")
        if not result.ok:
            sim.fail(f"history not linearizable: {result.message}")
