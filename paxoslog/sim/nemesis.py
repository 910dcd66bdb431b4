"""The simulator's nemesis: crashes, pauses, partitions and membership changes at random.

Each fault kind fires at its own rate (per second of virtual time) during the fault phase
and undoes itself after a random duration; ``heal_all`` ends every fault at once.

A crash is a kill -9 (what the node wrote survives in the page cache; its kernel resets
its connections, so its peers see ``peer_down``) for a share ``kill_fraction`` of them, else
a power loss (its unsynced writes may be lost; no connection is reset: its peers notice by
their timeouts).

Profile faults (rate 0 by default): ``kill-all`` crashes every node at once and restarts
them all later (also right after a membership change, to catch one mid-change); ``clock``
redraws one node's clock rate within ``[1 - clock_drift, 1 + clock_drift]``, or slows the
leader's to ``clock_leader_rate``; ``reset`` resets the connection between two live nodes
(the leader and a follower, mostly), one to three times in a row (a flapping link): both
see ``peer_down``, then ``peer_up`` a moment later, while their messages flow on."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ..core.log import ENTRY_CONFIG, entry_config
from .network import partition_shapes

if TYPE_CHECKING:
    from .cluster import Simulation

__all__ = ["Nemesis"]


class Nemesis:
    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim
        self.rng = sim.rng
        self.kind_rng = random.Random(f"crash-kind/{sim.seed}")  # kill or power loss
        self.active = True

    def start(self) -> None:
        o = self.sim.options
        for kind, rate in (("crash", o.crash_rate), ("pause", o.pause_rate),
                           ("partition", o.partition_rate), ("member", o.membership_rate),
                           ("eio", o.eio_rate), ("bitflip", 0.5 if o.bitflip else 0.0),
                           ("transfer", o.transfer_rate), ("kill_all", o.kill_all_rate),
                           ("clock", o.clock_strobe_rate), ("reset", o.reset_rate)):
            if rate > 0:
                self._schedule_next(kind, rate)

    def _schedule_next(self, kind: str, rate: float) -> None:
        delay = self.rng.expovariate(rate) * 1000.0
        if self.sim.now + delay < self.sim.options.duration_ms:
            self.sim.schedule(delay, self._fire, kind, rate)

    def _duration(self) -> float:
        return self.rng.uniform(*self.sim.options.fault_duration_ms)

    def _record(self, text: str) -> None:
        self.sim.leader_down_alone = False      # another fault: not a lone leader loss
        self.sim.faults.append((self.sim.now, text))
        self.sim.trace.append(f"{self.sim.now:9.1f} nemesis {text}")

    def _fire(self, kind: str, rate: float) -> None:
        if not self.active:
            return
        sim = self.sim
        getattr(self, f"_{kind}")()
        self._schedule_next(kind, rate)

    def _victim(self):
        live = self.sim.live_nodes()
        if not live:
            return None
        leader = self.sim.leader()
        if leader is not None and self.rng.random() < 0.5:
            return self.sim.nodes[leader]
        return self.rng.choice(live)

    def _crash(self) -> None:
        """A node stops: killed (kill -9: its peers' connections reset) for a share
        ``kill_fraction`` of the crashes, else a power loss (nothing reset)."""
        node = self._victim()
        if node is None:
            return
        fraction = self.sim.options.kill_fraction
        # Its own stream: the nemesis' other draws stay what they were without kills.
        kill = fraction >= 1.0 or (fraction > 0.0 and self.kind_rng.random() < fraction)
        self._record(f"{'kill' if kill else 'crash'} {node.node_id}")
        if kill:
            node.kill()
        else:
            node.crash()
        self.sim.schedule(self._duration(), self._restart, node)

    def _restart(self, node) -> None:
        if not node.alive and not node.removed and self.active:
            node.restart()
            self._record(f"restart {node.node_id}")

    def _pause(self) -> None:
        node = self._victim()
        if node is None:
            return
        node.paused = True
        self._record(f"pause {node.node_id}")
        self.sim.schedule(self._duration(), self._resume, node)

    def _resume(self, node) -> None:
        if node.paused and node.alive:
            node.resume()
            self._record(f"resume {node.node_id}")

    def _partition(self) -> None:
        sim = self.sim
        members = sorted(n for n in sim.nodes)
        shapes = partition_shapes(members, sim.leader(), self.rng)
        kinds = sim.options.partition_kinds
        name = self.rng.choice(sorted(k for k in shapes if not kinds or k in kinds))
        sim.network.block(shapes[name])
        self._record(f"partition {name}")
        sim.schedule(self._duration(), self._heal_network)

    def _heal_network(self) -> None:
        if self.active:
            self.sim.network.heal()
            self._record("heal network")

    def _eio(self) -> None:
        node = self._victim()
        if node is None:
            return
        node.disk.fail_next_sync()
        self._record(f"fsync-eio armed on {node.node_id}")

    def _bitflip(self) -> None:
        """Damage one committed record on one node (once per run), then crash and restart
        it: it must detect the damage and refuse to start, never serve the bad entry."""
        if self.sim.stats.get("bitflips"):
            return
        node = self._victim()
        if node is None or node.applied < 1:
            return
        if self._indispensable(node):
            return  # the others could not go on without it: that loss needs a backup
        index = self.rng.randint(max(1, node.applied - 20), node.applied)
        try:
            node.disk.flip_bit(index, self.rng.randrange(8))
        except KeyError:
            return
        node.crash()
        self.sim.stats["bitflips"] = 1
        self._record(f"bitflip node {node.node_id} entry {index}")
        node.restart()

    def _indispensable(self, node) -> bool:
        """True when some configuration that a member still knows (its core's newest, its
        applied one, or, under Multi-Paxos, one it accepted but does not know chosen;
        joint ones included) has no quorum without ``node``.  The victim's own view is not
        enough: a node that lags behind a change (sim membership seed 24, both protocols,
        with fast failover) may still believe in a configuration with more voters than the
        one the others run.  And a Multi-Paxos candidate needs a quorum of every
        configuration a promise reports accepted (seed 24 again, once a change in flight
        made {3, 4} the next configuration and the bit flipped on node 3)."""
        configs = set()
        for other in self.sim.nodes.values():
            if other.removed or other.corrupt or not hasattr(other, "driver"):
                continue
            configs.add(other.replica.config)
            configs.add(other.config)
            configs.update(_accepted_configs(other.replica))
        return any(not c.is_quorum(c.all_voters - {node.node_id}) for c in configs)

    def _transfer(self) -> None:
        text = self.sim.transfer()
        if text:
            self._record(text)

    def _member(self) -> None:
        text = self.sim.membership_change()
        if text:
            self._record(text)
            after = self.sim.options.kill_all_after_change
            if after and self.rng.random() < after:
                # While the new configuration is still on its way to a quorum.
                self.sim.schedule(self.rng.uniform(0.0, 5.0), self._kill_all)

    def _reset(self) -> None:
        """Reset the connection between two live nodes (a flapping link: 1 to 3 times)."""
        sim = self.sim
        live = sim.live_nodes()
        if len(live) < 2:
            return
        leader = sim.leader()
        a = sim.nodes[leader] if leader is not None and self.rng.random() < 0.7 else \
            self.rng.choice(live)
        b = self.rng.choice([n for n in live if n is not a])
        times = self.rng.randint(1, 3)
        self._record(f"reset {a.node_id}<->{b.node_id} x{times}")
        sim.count("connection_resets", times)
        at = 0.0
        for _ in range(times):
            sim.schedule(at, self._link, a, b, False)
            at += self.rng.uniform(0.5, 20.0)
            sim.schedule(at, self._link, a, b, True)
            at += self.rng.uniform(0.5, 30.0)

    def _link(self, a, b, up: bool) -> None:
        for node, peer in ((a, b), (b, a)):
            if node.alive and peer.alive and not node.paused:
                driver = node.driver
                node.execute(driver.peer_up(peer.node_id) if up
                             else driver.peer_down(peer.node_id))
                node.pump()

    def _kill_all(self) -> None:
        """Crash every node at once (R19: kill all mid-change), restart them all later."""
        sim = self.sim
        if not self.active:
            return
        victims = [n for n in sim.nodes.values() if n.alive]
        if not victims:
            return
        mid_change = sim.config_in_flight()
        for node in victims:
            node.crash()
        sim.count("kill_all")
        if mid_change:
            sim.count("kill_all_mid_change")
        self._record(f"kill all {[n.node_id for n in victims]}"
                     f"{' (configuration change in flight)' if mid_change else ''}")
        duration = self._duration()
        for node in victims:
            sim.schedule(duration + self.rng.uniform(0.0, 20.0), self._restart, node)

    def _clock(self) -> None:
        """Redraw one node's clock rate (the leader's half the time) within the drift bound
        of the run; or, with ``clock_leader_rate`` (beyond any bound), give the leader that
        rate and every other node its initial one."""
        sim = self.sim
        o = sim.options
        if o.clock_leader_rate:
            leader = sim.leader()
            if leader is None:
                return
            for node in sim.nodes.values():
                node.clock_rate = (o.clock_leader_rate if node.node_id == leader
                                   else node.base_clock_rate)
            self._record(f"clock of leader {leader} at rate {o.clock_leader_rate:.3f}")
            return
        node = self._victim()
        if node is None:
            return
        node.clock_rate = self.rng.uniform(1.0 - o.clock_drift, 1.0 + o.clock_drift)
        self._record(f"clock of {node.node_id} at rate {node.clock_rate:.3f}")

    def heal_all(self) -> None:
        self.active = False
        sim = self.sim
        sim.network.heal()
        for node in sim.nodes.values():
            if not node.alive:
                node.restart()
            elif node.paused:
                self.active = True
                self._resume(node)
                self.active = False
        self._record("heal all")


def _accepted_configs(replica) -> list:
    """The configurations in a Multi-Paxos replica's slots above its chosen watermark
    (a Raft replica already follows the newest one in its log: ``replica.config``)."""
    log = getattr(replica, "log", None)
    chosen_upto = getattr(log, "chosen_upto", None)
    if chosen_upto is None:
        return []
    return [entry_config(entry) for entry in log.range(chosen_upto + 1, log.last_index + 1)
            if entry.kind == ENTRY_CONFIG]
