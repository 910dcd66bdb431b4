"""The random fault loop both core harnesses run (test_paxos.Cluster, test_raft.Net).

A harness offers ``ids``, ``nodes``, ``blocked`` (a set of (from, to) links), ``down``,
``heal()``, ``crash(i)``, ``restart(i)``, ``leader()`` and ``tick(n)``; one that also has a
``drop`` predicate gets random message loss when ``drops`` is set.
"""

from __future__ import annotations

import random

from paxoslog.core.errors import Busy, NotLeader


def run_random_faults(net, rng: random.Random, steps: int = 300, drops: bool = False) -> None:
    """Random partitions, crashes, restarts (and drops) while the leader gets proposals;
    then heal and restart everyone."""
    counter = 0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.05:
            net.blocked = {(a, b) for a in net.ids for b in net.ids if rng.random() < 0.3}
        elif roll < 0.08:
            net.heal()
        elif roll < 0.10 and len(net.down) < 2:
            net.crash(rng.choice(net.ids))
        elif roll < 0.14 and net.down:
            net.restart(rng.choice(sorted(net.down)))
        if drops:
            net.drop = (lambda m, r=rng: r.random() < 0.1) if rng.random() < 0.5 else None
        leader = net.leader()
        if leader is not None and rng.random() < 0.5:
            counter += 1
            try:
                net.nodes[leader].propose([b"%d" % counter])
            except (Busy, NotLeader):
                pass
        net.tick(1)
    net.heal()
    for node in sorted(net.down):
        net.restart(node)
