"""The ``member-change`` nemesis's decisions, on a cluster object without processes.

The scenario: a 3-node chaos cluster with two spare ids (4, 5) and node 1 leading.  A
stand-in for the membership driver (membership.py; the real one talks HTTP to real nodes,
which the smoke test covers) applies each step to the cluster object at once, and can be
told to fail one.  The nemesis runs one fault on a ``task.Clock``; the tests check the
order of the steps, who is removed, that the cluster has three members afterwards, what
the fault record says, and the fallbacks: a failed join repaired from the next spare, and
a leadership transfer when no spare is left.
"""

from __future__ import annotations

import random

from twisted.internet import defer, task

from paxoslog.chaos.cluster import JOINING, MEMBER, REMOVED, SPARE, Cluster, ClusterSpec
from paxoslog.chaos.membership import MembershipError
from paxoslog.chaos.nemesis import FaultPlan, Nemesis, Timeline


class _Running:
    """A process stub: always running."""

    running = True


class FakeDriver:
    """Performs membership steps on the cluster object at once; ``fail_add`` lists spares
    whose add fails (after their start, as a join that never completes would)."""

    def __init__(self, cluster: Cluster, clock: task.Clock) -> None:
        self.cluster = cluster
        self.clock = clock
        self.fail_add: set[int] = set()
        self.calls: list[tuple] = []

    async def add(self, node, step, rng):
        self.calls.append(("add", node))
        self.cluster.set_status(node, JOINING)
        self.cluster.nodes[node].process = _Running()
        if node in self.fail_add:
            raise MembershipError(f"node {node} did not answer /health")
        self.cluster.set_status(node, MEMBER)
        step["voter"] = self.clock.seconds()

    async def remove(self, node, step, rng):
        self.calls.append(("remove", node))
        self.cluster.set_status(node, REMOVED)
        step["done"] = self.clock.seconds()

    async def applied_config(self, rng, timeout_s=10.0):
        return {"node": 2, "leader": 2, "voters": self.cluster.members(), "outgoing": [],
                "learners": []}

    async def transfer(self, target, rng):
        self.calls.append(("transfer", target))
        return {"leader": target}

    async def abandon_join(self, node, rng):
        self.calls.append(("abandon", node))
        self.cluster.set_status(node, REMOVED)
        return f"stopped node {node}"


class FakeObserver:
    def __init__(self, cluster: Cluster, leader: int) -> None:
        self.cluster = cluster
        self._leader = leader

    def leader(self):
        return self._leader if self._leader in self.cluster.members() else None


def _setup(tmp_path, spares: int = 2, leader: int = 1):
    clock = task.Clock()
    spec = ClusterSpec(nodes=3, spares=spares)
    events = Timeline(None, clock.seconds)
    cluster = Cluster(clock, spec, "conf.toml", str(tmp_path / "logs"), str(tmp_path / "data"),
                      lambda kind, **f: events.add(kind, **f), clock.seconds,
                      spare_confs={n: f"conf-n{n}.toml" for n in spec.spare_ids})
    for node in spec.node_ids:
        cluster.nodes[node].process = _Running()
    driver = FakeDriver(cluster, clock)
    observer = FakeObserver(cluster, leader)
    nemesis = Nemesis(clock, cluster, None, observer, None, events, clock.seconds, 0.3,
                      membership=driver, acked_since=lambda t: True)
    return clock, cluster, driver, nemesis, events


def _run(clock: task.Clock, nemesis: Nemesis, seed: int, hold_s: float = 1.0):
    d = defer.Deferred.fromCoroutine(nemesis.run_one(FaultPlan(1, "member-change", 0.0,
                                                              hold_s, seed)))
    for _ in range(100):
        if d.called:
            break
        clock.advance(0.1)
    assert d.called
    return d.result


def _seed(order: str, remove_leader: bool) -> int:
    """A fault seed whose first two draws pick ``order`` and ``remove_leader``."""
    for seed in range(1000):
        rng = random.Random(seed)
        add_first = rng.random() < 0.5
        leader = rng.random() < 0.4
        if (order == "add-then-remove") == add_first and leader == remove_leader:
            return seed
    raise AssertionError("no such seed")


def test_add_then_remove_the_leader_keeps_three_members(tmp_path):
    """Spare 4 joins first, then the leader (node 1) is removed; members [2, 3, 4]."""
    clock, cluster, driver, nemesis, _ = _setup(tmp_path)
    record = _run(clock, nemesis, _seed("add-then-remove", True))
    assert driver.calls == [("add", 4), ("remove", 1)]
    assert cluster.members() == [2, 3, 4] and cluster.spares() == [5]
    assert cluster.status_of(1) == REMOVED and cluster.status_of(4) == MEMBER
    assert record.injected and record.note is None
    assert record.targets == [4, 1]
    detail = record.detail
    assert detail["order"] == "add-then-remove" and detail["removed_was_leader"]
    assert [s["step"] for s in detail["steps"]] == ["add", "remove"]
    add, remove = detail["steps"]
    assert add["voter"] <= remove["start"] - 1.0         # held at 4 voters for hold_s
    assert detail["voters_before"] == [1, 2, 3] and detail["voters_after"] == [2, 3, 4]
    assert record.start <= record.heal == record.healed


def test_remove_first_never_removes_the_leader_unless_drawn(tmp_path):
    """Remove a non-leader voter first, then add the spare; members stay three."""
    clock, cluster, driver, nemesis, _ = _setup(tmp_path)
    record = _run(clock, nemesis, _seed("remove-then-add", False))
    removed = driver.calls[0][1]
    assert driver.calls == [("remove", removed), ("add", 4)] and removed in (2, 3)
    assert cluster.members() == sorted({1, 2, 3, 4} - {removed})
    assert not record.detail["removed_was_leader"]


def test_a_failed_join_is_repaired_from_the_next_spare(tmp_path):
    """Remove first; the spare's join fails: it is abandoned and spare 5 joins instead."""
    clock, cluster, driver, nemesis, _ = _setup(tmp_path)
    driver.fail_add = {4}
    record = _run(clock, nemesis, _seed("remove-then-add", False))
    assert [c[0] for c in driver.calls] == ["remove", "add", "abandon", "add"]
    assert driver.calls[-1] == ("add", 5)
    assert len(cluster.members()) == 3 and 5 in cluster.members()
    assert cluster.status_of(4) == REMOVED and cluster.spares() == []
    assert record.injected and "did not answer /health" in record.note
    assert "added spare 5 instead" in record.note


def test_without_spares_the_fault_transfers_leadership_and_says_so(tmp_path):
    """No spare id left: a leadership transfer instead, noted in the record."""
    clock, cluster, driver, nemesis, _ = _setup(tmp_path, spares=1)
    cluster.set_status(4, REMOVED)              # the only spare was used already
    record = _run(clock, nemesis, 7)
    assert [c[0] for c in driver.calls] == ["transfer"]
    assert driver.calls[0][1] in (2, 3)
    assert record.injected and record.detail["alternative"] == "transfer-leader"
    assert "no spare node left" in record.note
    assert cluster.members() == [1, 2, 3]


def test_spares_are_not_cluster_nodes_until_they_join(tmp_path):
    """Spares are not members, not restarted by a heal, and are started only to join."""
    _, cluster, _, _, events = _setup(tmp_path)
    assert cluster.members() == [1, 2, 3] and cluster.in_cluster() == [1, 2, 3]
    assert cluster.spares() == [4, 5] and cluster.status_of(4) == SPARE
    cluster.set_status(4, JOINING)
    assert cluster.in_cluster() == [1, 2, 3, 4] and cluster.members() == [1, 2, 3]
    assert events.events[-1] == {"t": 0.0, "event": "membership", "node": 4,
                                 "status": JOINING, "was": SPARE}
