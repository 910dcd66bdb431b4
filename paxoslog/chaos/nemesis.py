"""The nemesis: a seeded schedule of faults, and the code that injects and heals each one.

Fault kinds (``FAULT_KINDS``)::

    kill-leader        SIGKILL the leader; restart it after a random delay
    kill-random        SIGKILL a random node; restart it after a random delay
    kill-all           SIGKILL every node; restart them in the order they were killed
    kill-all-reverse   SIGKILL every node; restart them in the reverse order
    pause-leader       SIGSTOP the leader for longer than the election timeout, then SIGCONT
    partition-leader   cut every link of the leader, both ways (the leader is isolated)
    partition-half     clean split: a minority (1 of 3, 2 of 5) against the majority
    partition-oneway   one direction only: a node's outbound or inbound links
    partition-ring     5+ nodes: each node reaches its two ring neighbours only, so each sees
                       a different majority (Jepsen's majorities-ring)
    partition-bridge   two halves cut apart, one bridge node reaching both
    flaky-link         loss, delay (with or without reordering) and duplication on some links
    lose-unsynced      kill a node, restart it with the failpoint
                       wal.before_fsync=exit:nth=N (N in 1..20 from the fault's seed) so it
                       dies between its Nth WAL write and that fsync, drop its unsynced WAL
                       tail (or keep a torn prefix of it), restart it clean
    member-change      under load, add a spare node (serve --join, wait until it is a voter)
                       then remove a voter (sometimes the leader), or remove first then add;
                       the cluster has N voters again afterwards (see _member_change)

Partitions cut *peer* links only (through the proxy); clients still reach every node.
Symmetric cuts pick a style per fault: ``drop`` (black hole), ``hold`` (stop reading) or
``reset`` (close connections and refuse new ones).

``plan_schedule`` turns (kinds, seed, durations) into a list of ``FaultPlan``: each named
kind once in order, or a random mix; every choice made while injecting (which node, which
style, which rates) draws from the plan's own seed, so a schedule replays the same faults
(the targets still depend on who leads at the time).  Faults run one at a time: inject,
hold, heal, wait (at most 10 election timeouts) until a write invoked after the heal is
acknowledged, then the next fault at its planned time or at once if that time passed.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

from twisted.internet import defer, task
from twisted.logger import Logger

from .cluster import JOINING, drop_unsynced
from .membership import MembershipError
from .proxy import LinkRules

__all__ = ["FAULT_KINDS", "FaultPlan", "FaultRecord", "Timeline", "Nemesis", "plan_schedule",
           "kinds_for", "parse_kinds", "spares_needed"]

log = Logger(namespace="paxoslog.chaos.nemesis")

FAULT_KINDS = ("kill-leader", "kill-random", "kill-all", "kill-all-reverse", "pause-leader",
               "partition-leader", "partition-half", "partition-oneway", "partition-ring",
               "partition-bridge", "flaky-link", "lose-unsynced", "member-change")
_NEEDS_FIVE = frozenset(("partition-ring",))
# Hold time of each kind in election timeouts (uniform between the bounds).
_HOLD_ET = {
    "kill-leader": (0.0, 5.0), "kill-random": (0.0, 5.0), "kill-all": (0.0, 4.0),
    "kill-all-reverse": (0.0, 4.0), "pause-leader": (3.0, 8.0),
    "partition-leader": (3.0, 10.0), "partition-half": (3.0, 10.0),
    "partition-oneway": (3.0, 10.0), "partition-ring": (3.0, 10.0),
    "partition-bridge": (3.0, 10.0), "flaky-link": (5.0, 15.0), "lose-unsynced": (0.0, 4.0),
    "member-change": (3.0, 6.0),     # the time spent at N+1 (or N-1) voters
}
_HEALTH_TIMEOUT_S = 20.0
_FAILPOINT_EXIT_TIMEOUT_S = 8.0
LOSE_UNSYNCED_FAILPOINTS = "wal.before_fsync=exit:nth={nth}"
# The restarted victim dies at its Nth fsync, N drawn from the fault's seed: not always the
# first batch it writes (catch-up from the leader), sometimes one under normal traffic.
LOSE_UNSYNCED_NTH_MAX = 20
RECOVERY_WAIT_ET = 10
REMOVE_LEADER_P = 0.4        # member-change removes the current leader this often
SPARES_MAX = 32


def kinds_for(nodes: int) -> list[str]:
    """Every kind that applies to a cluster of ``nodes`` nodes."""
    return [k for k in FAULT_KINDS if nodes >= 5 or k not in _NEEDS_FIVE]


def spares_needed(plans: list) -> int:
    """Spare node ids to allocate for a schedule: one per planned ``member-change`` (each
    uses one: ids are never reused) plus one for a failed join's second attempt, at most
    ``SPARES_MAX``; none without membership changes."""
    changes = sum(1 for p in plans if p.kind == "member-change")
    return min(SPARES_MAX, changes + 1) if changes else 0


def parse_kinds(text: str, nodes: int) -> list[str]:
    """``"all"`` / ``"random"`` or a comma-separated list of kinds; ValueError on a bad one."""
    if text in ("all", "random"):
        return kinds_for(nodes)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for kind in kinds:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown nemesis {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if kind in _NEEDS_FIVE and nodes < 5:
            raise ValueError(f"{kind} needs at least 5 nodes (use --nodes 5)")
    if not kinds:
        raise ValueError("no nemesis given")
    return kinds


@dataclass(frozen=True)
class FaultPlan:
    number: int
    kind: str
    at_s: float          # planned start (seconds since the run started)
    hold_s: float        # fault duration; for kills, the delay before the restart
    seed: int            # seeds every choice made while injecting this fault


def plan_schedule(kinds: list[str], *, seed: int, duration_s: float, warmup_s: float,
                  tail_s: float, election_timeout_s: float, random_mix: bool,
                  gap_s: tuple[float, float] = (2.0, 5.0)) -> list[FaultPlan]:
    """The faults of a run, between ``warmup_s`` and ``duration_s - tail_s``.

    Without ``random_mix`` each kind runs once, in order, each in an equal slot of the
    window (hold shortened to fit).  With it, kinds are drawn at random until the window
    is used, separated by gaps drawn from ``gap_s``."""
    rng = random.Random(f"{seed}-schedule")
    start, end = warmup_s, duration_s - tail_s
    if end <= start or not kinds:
        return []
    et = election_timeout_s
    plans = []

    def hold_for(kind: str) -> float:
        lo, hi = _HOLD_ET[kind]
        return max(0.2, rng.uniform(lo, hi) * et)

    if not random_mix:
        slot = (end - start) / len(kinds)
        for number, kind in enumerate(kinds, 1):
            at = start + (number - 1) * slot
            hold = min(hold_for(kind), 0.5 * slot)
            plans.append(FaultPlan(number, kind, round(at, 3), round(hold, 3),
                                   rng.randrange(1 << 31)))
        return plans
    at = start
    number = 0
    while True:
        kind = rng.choice(kinds)
        hold = hold_for(kind)
        if at + hold > end:
            break
        number += 1
        plans.append(FaultPlan(number, kind, round(at, 3), round(hold, 3),
                               rng.randrange(1 << 31)))
        at += hold + rng.uniform(*gap_s)
    return plans


@dataclass
class FaultRecord:
    """What a fault did, with times in seconds since the run started."""

    number: int
    kind: str
    start: float | None = None       # the fault took effect
    heal: float | None = None        # healing began
    healed: float | None = None      # healing done (restarted nodes answer /health)
    targets: list = field(default_factory=list)
    detail: dict = field(default_factory=dict)
    injected: bool = False
    note: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class Timeline:
    """``nemesis.jsonl``: one line per nemesis or process event, in time order."""

    def __init__(self, path: str | None, clock) -> None:
        self.clock = clock
        self.events: list[dict] = []
        self._file = open(path, "w") if path else None

    def add(self, event: str, **fields) -> dict:
        row = {"t": round(self.clock(), 3), "event": event}
        row.update({k: v for k, v in fields.items() if v is not None})
        self.events.append(row)
        if self._file is not None:
            self._file.write(json.dumps(row, default=str) + "\n")
            self._file.flush()
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _sleep(reactor, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, max(0.0, seconds), lambda: None)


class Nemesis:
    """Runs a schedule against a cluster.  ``membership``: the MembershipDriver
    (membership.py) the ``member-change`` kind uses."""

    def __init__(self, reactor, cluster, proxy, observer, client, timeline: Timeline, clock,
                 election_timeout_s: float, membership=None, acked_since=None) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.proxy = proxy
        self.observer = observer
        self.client = client
        self.timeline = timeline
        self.clock = clock
        self.et = election_timeout_s
        self.membership = membership
        # acked_since(t): has a write invoked at or after t been acknowledged?
        self.acked_since = acked_since
        self.records: list[FaultRecord] = []
        self.current: FaultRecord | None = None
        self.stopping = False

    # ------------------------------------------------------------------ schedule

    async def run(self, plans: list[FaultPlan], base_s: float, stop_at_s: float) -> None:
        """Run ``plans`` (times relative to ``base_s`` on the run clock) one after the
        other; a fault that could no longer end before ``stop_at_s`` is not started."""
        for plan in plans:
            if self.stopping:
                break
            wait = base_s + plan.at_s - self.clock()
            if wait > 0:
                await _sleep(self.reactor, wait)
            if self.stopping or self.clock() + plan.hold_s > stop_at_s:
                break
            await self.run_one(plan)

    async def run_one(self, plan: FaultPlan) -> FaultRecord:
        record = FaultRecord(plan.number, plan.kind)
        self.records.append(record)
        self.current = record
        rng = random.Random(plan.seed)
        try:
            method = getattr(self, "_" + plan.kind.replace("-", "_"))
            await method(plan, record, rng)
        except Exception as exc:  # a harness problem: note it, heal, and carry on
            log.failure("nemesis {kind} failed", kind=plan.kind)
            record.note = f"nemesis error: {exc!r}"
            self.timeline.add("nemesis-error", fault=plan.number, kind=plan.kind,
                              error=repr(exc))
            await self.heal_everything()
        finally:
            self.current = None
        if record.injected and self.acked_since is not None:
            await self._await_recovery(record)
        return record

    async def _await_recovery(self, record: FaultRecord) -> None:
        """Before the next fault, wait (at most ``RECOVERY_WAIT_ET`` election timeouts) for
        a write invoked after the heal to be acknowledged, so each fault's unavailability
        is measured before the next one hits.  Not waiting any longer keeps the stress on
        (an unrecovered cluster still gets the next fault)."""
        since = record.healed if record.healed is not None else (record.heal or record.start)
        deadline = self.clock() + RECOVERY_WAIT_ET * self.et
        while not self.acked_since(since):
            if self.clock() >= deadline or self.stopping:
                self.timeline.add("not-recovered", fault=record.number, kind=record.kind,
                                  waited_s=round(RECOVERY_WAIT_ET * self.et, 2))
                return
            await _sleep(self.reactor, 0.02)

    # ------------------------------------------------------------------ helpers

    def _started(self, record: FaultRecord, targets: list, **detail) -> None:
        record.start = round(self.clock(), 3)
        record.injected = True
        record.targets = list(targets)
        record.detail.update(detail)
        self.timeline.add("fault-start", fault=record.number, kind=record.kind,
                          targets=record.targets, detail=record.detail or None)

    def _heal_begins(self, record: FaultRecord) -> None:
        record.heal = round(self.clock(), 3)
        self.timeline.add("fault-heal", fault=record.number, kind=record.kind)

    def _healed(self, record: FaultRecord) -> None:
        record.healed = round(self.clock(), 3)
        self.timeline.add("fault-healed", fault=record.number, kind=record.kind)

    async def _leader_or_random(self, rng: random.Random, record: FaultRecord) -> int | None:
        """The current leader (waiting up to 2 election timeouts for one), else a random
        running node (noted in the record)."""
        deadline = self.clock() + max(1.0, 2 * self.et)
        while True:
            leader = self.observer.leader()
            if leader is not None and leader in self.cluster.running_nodes():
                return leader
            if self.clock() >= deadline:
                break
            await _sleep(self.reactor, 0.05)
        running = self.cluster.running_nodes()
        if not running:
            return None
        record.note = "no leader known: chose a random node"
        return rng.choice(sorted(running))

    def _some_node(self, rng: random.Random, prefer_leader: float = 0.5) -> int | None:
        running = sorted(self.cluster.running_nodes())
        if not running:
            return None
        leader = self.observer.leader()
        if leader in running and rng.random() < prefer_leader:
            return leader
        return rng.choice(running)

    async def wait_healthy(self, nodes: list[int], timeout_s: float = _HEALTH_TIMEOUT_S) -> bool:
        """Poll /health of ``nodes`` until each answers (process up, API listening)."""
        deadline = self.clock() + timeout_s
        pending = set(nodes)
        while pending and self.clock() < deadline:
            for node in sorted(pending):
                if not self.cluster.alive(node):
                    continue
                try:
                    response = await self.client.health(node, timeout_s=0.5)
                except Exception:  # not listening yet
                    continue
                if response.status in (200, 503):
                    pending.discard(node)
            if pending:
                await _sleep(self.reactor, 0.05)
        return not pending

    async def heal_everything(self) -> None:
        """End every fault: links pass, paused nodes resume, dead nodes of the cluster
        restart (never spares or removed nodes)."""
        self.proxy.heal()
        for node in self.cluster.nodes:
            if self.cluster.nodes[node].paused:
                self.cluster.resume(node)
        dead = [n for n in self.cluster.in_cluster() if not self.cluster.alive(n)]
        for node in dead:
            self.cluster.start(node)
        if dead:
            await self.wait_healthy(dead)

    # ------------------------------------------------------------------ process faults

    async def _kill_one(self, plan: FaultPlan, record: FaultRecord, victim: int | None) -> None:
        if victim is None:
            record.note = "no running node to kill"
            return
        was_leader = victim == self.observer.leader()
        await self.cluster.kill(victim)
        self._started(record, [victim], was_leader=was_leader)
        await _sleep(self.reactor, plan.hold_s)
        self._heal_begins(record)
        self.cluster.start(victim)
        await self.wait_healthy([victim])
        self._healed(record)

    async def _kill_leader(self, plan, record, rng) -> None:
        await self._kill_one(plan, record, await self._leader_or_random(rng, record))

    async def _kill_random(self, plan, record, rng) -> None:
        running = sorted(self.cluster.running_nodes())
        await self._kill_one(plan, record, rng.choice(running) if running else None)

    async def _kill_all_in(self, plan, record, rng, reverse: bool) -> None:
        order = sorted(self.cluster.running_nodes())
        rng.shuffle(order)
        if not order:
            record.note = "no running node to kill"
            return
        leader = self.observer.leader()
        for node in order:
            await self.cluster.kill(node)
        restart = list(reversed(order)) if reverse else list(order)
        self._started(record, order, restart_order=restart, leader=leader)
        await _sleep(self.reactor, plan.hold_s)
        self._heal_begins(record)
        for position, node in enumerate(restart):
            if position:
                await _sleep(self.reactor, rng.uniform(0.02, 0.5))
            self.cluster.start(node)
        await self.wait_healthy(restart)
        self._healed(record)

    async def _kill_all(self, plan, record, rng) -> None:
        await self._kill_all_in(plan, record, rng, reverse=False)

    async def _kill_all_reverse(self, plan, record, rng) -> None:
        await self._kill_all_in(plan, record, rng, reverse=True)

    async def _pause_leader(self, plan, record, rng) -> None:
        victim = await self._leader_or_random(rng, record)
        if victim is None or not self.cluster.pause(victim):
            record.note = record.note or "nothing to pause"
            return
        self._started(record, [victim], election_timeouts=round(plan.hold_s / self.et, 1))
        await _sleep(self.reactor, plan.hold_s)
        self._heal_begins(record)
        self.cluster.resume(victim)
        self._healed(record)

    async def _lose_unsynced(self, plan, record, rng) -> None:
        victim = self._some_node(rng)
        if victim is None:
            record.note = "no running node"
            return
        cluster = self.cluster
        await cluster.kill(victim)
        spec = LOSE_UNSYNCED_FAILPOINTS.format(nth=rng.randint(1, LOSE_UNSYNCED_NTH_MAX))
        self._started(record, [victim], failpoints=spec)
        process = cluster.start(victim, failpoints=spec)
        deadline = self.clock() + _FAILPOINT_EXIT_TIMEOUT_S
        while process.running and self.clock() < deadline:
            await _sleep(self.reactor, 0.02)
        if process.running:
            await cluster.kill(victim)
            record.detail["failpoint"] = "did not fire (no fsync in time): plain kill"
        elif process.exit_code == 1:
            data_dir = cluster.data_dir(victim)
            torn = rng.random() < 0.5
            cut = drop_unsynced(data_dir, rng, torn=torn)
            record.detail["failpoint"] = "fired"
            record.detail["cut"] = {"torn": torn, **{k: v for k, v in cut.items()
                                                    if k != "segment"}}
            self.timeline.add("unsynced-dropped", fault=record.number, node=victim, **cut)
        else:
            record.detail["failpoint"] = (f"process ended with code {process.exit_code} "
                                          f"signal {process.exit_signal}")
        await _sleep(self.reactor, plan.hold_s)
        self._heal_begins(record)
        cluster.start(victim)
        await self.wait_healthy([victim])
        self._healed(record)

    async def _member_change(self, plan, record, rng) -> None:
        """Under load: add a spare (``serve --join``, wait until it is a voter), hold at
        N+1 voters for the planned hold, remove a voter (the current leader with
        probability ``REMOVE_LEADER_P``, never the node just added); or, half of the time,
        remove first (hold at N-1) and then add.  The cluster has N voters afterwards.

        ``start`` is the first step, ``heal`` = ``healed`` the end of the last one;
        ``detail["steps"]`` has each step's times (add: start, up, voter; remove: start,
        done, and later exited/exit_code), from which the unavailability of each
        step is measured.  A step that fails is noted and repaired (a half-joined spare is
        removed, a missing voter is added from the next spare).  Without a spare left
        the fault transfers leadership instead (noted)."""
        driver = self.membership
        spares = self.cluster.spares()
        if driver is None:
            record.note = "no membership driver: member-change needs spare nodes (ChaosRun)"
            return
        if not spares:
            await self._transfer_instead(plan, record, rng)
            return
        add_first = rng.random() < 0.5
        remove_leader = rng.random() < REMOVE_LEADER_P
        spare = spares[0]
        steps: list[dict] = []
        self._started(record, [spare], order="add-then-remove" if add_first
                      else "remove-then-add", added=spare, remove_leader=remove_leader,
                      voters_before=self.cluster.members(), hold_s=plan.hold_s, steps=steps)
        try:
            if add_first:
                await self._add_step(record, spare, steps, rng)
                await _sleep(self.reactor, plan.hold_s)
                await self._remove_step(record, steps, rng, remove_leader, exclude={spare})
            else:
                await self._remove_step(record, steps, rng, remove_leader, exclude=set())
                await _sleep(self.reactor, plan.hold_s)
                await self._add_step(record, spare, steps, rng)
        except MembershipError as exc:
            record.note = f"member-change step failed: {exc}"
            self.timeline.add("member-step-failed", fault=record.number, error=str(exc))
            await self._repair_size(record, rng)
        self._heal_begins(record)
        config = await driver.applied_config(rng)
        record.detail["voters_after"] = config["voters"] if config else None
        if config is None or config["voters"] != self.cluster.members():
            extra = (f"the cluster reports voters {config['voters'] if config else '?'}, "
                     f"the harness expected {self.cluster.members()}")
            record.note = f"{record.note}; {extra}" if record.note else extra
        self._healed(record)

    async def _add_step(self, record, node: int, steps: list, rng) -> None:
        step = {"step": "add", "node": node, "start": round(self.clock(), 3)}
        steps.append(step)
        self.timeline.add("member-add", fault=record.number, node=node)
        await self.membership.add(node, step, rng)

    async def _remove_step(self, record, steps: list, rng, remove_leader: bool,
                           exclude: set) -> None:
        """Remove the leader (when asked and known) or a random other voter."""
        leader = self.observer.leader()
        if remove_leader and leader is None:
            leader = await self._leader_or_random(rng, record)
        candidates = [m for m in self.cluster.members() if m not in exclude]
        if remove_leader and leader in candidates:
            victim = leader
        else:
            victim = rng.choice([m for m in candidates if m != leader] or candidates)
        step = {"step": "remove", "node": victim, "was_leader": victim == leader,
                "start": round(self.clock(), 3)}
        steps.append(step)
        record.targets.append(victim)
        record.detail["removed"] = victim
        record.detail["removed_was_leader"] = victim == leader
        self.timeline.add("member-remove", fault=record.number, node=victim,
                          was_leader=victim == leader)
        await self.membership.remove(victim, step, rng)

    async def _repair_size(self, record, rng) -> None:
        """After a failed step: settle every joining node (voter, removed or stopped),
        then add one more spare if the cluster is short of voters (one attempt)."""
        notes = []
        for node in [n for n in self.cluster.in_cluster() if
                     self.cluster.status_of(n) == JOINING]:
            try:
                notes.append(await self.membership.abandon_join(node, rng))
            except MembershipError as exc:
                notes.append(f"could not settle node {node}: {exc}")
        missing = len(self.cluster.spec.node_ids) - len(self.cluster.members())
        spares = self.cluster.spares()
        if missing > 0 and spares:
            step_list = record.detail["steps"]
            try:
                await self._add_step(record, spares[0], step_list, rng)
                record.targets.append(spares[0])
                notes.append(f"added spare {spares[0]} instead")
            except MembershipError as exc:
                notes.append(f"adding spare {spares[0]} instead failed too: {exc}")
                for node in [n for n in self.cluster.in_cluster()
                             if self.cluster.status_of(n) == JOINING]:
                    try:
                        notes.append(await self.membership.abandon_join(node, rng))
                    except MembershipError as exc2:
                        notes.append(f"could not settle node {node}: {exc2}")
        elif missing > 0:
            notes.append("no spare left to restore the cluster size")
        if notes:
            record.note = f"{record.note}; repair: {'; '.join(notes)}"

    async def _transfer_instead(self, plan, record, rng) -> None:
        """No spare id left (ids are never reused): a leadership transfer to a random
        other voter under load, through the membership API, instead."""
        leader = await self._leader_or_random(rng, record)
        others = [m for m in self.cluster.members() if m != leader]
        if leader is None or not others:
            record.note = "no spare node left and no leader to transfer from"
            return
        target = rng.choice(others)
        record.note = (f"no spare node left ({len(self.cluster.spec.spare_ids)} allocated, ids "
                       "are never reused): transferred leadership instead")
        self._started(record, [target], alternative="transfer-leader", leader_before=leader)
        try:
            body = await self.membership.transfer(target, rng)
            record.detail["leader_after"] = body.get("leader")
        except MembershipError as exc:
            record.note += f"; the transfer failed: {exc}"
        self._heal_begins(record)
        self._healed(record)

    # ------------------------------------------------------------------ network faults

    async def _cut(self, plan, record, links: set, style: str, targets: list, **detail) -> None:
        """Cut the directed ``links`` in ``style`` (drop, hold or reset), hold, heal."""
        if style == "reset":
            self.proxy.block(links, mode="drop")
            for a, b in {tuple(sorted(link)) for link in links}:
                self.proxy.reset(a, b)
        else:
            self.proxy.block(links, mode=style)
        self._started(record, targets, style=style,
                      links=sorted(f"{a}->{b}" for a, b in links), **detail)
        await _sleep(self.reactor, plan.hold_s)
        self._heal_begins(record)
        self.proxy.heal()
        self._healed(record)

    def _nodes(self) -> list[int]:
        """The current members (partitions and flaky links apply to them)."""
        return self.cluster.members()

    @staticmethod
    def _both_ways(group_a, group_b) -> set:
        return {(a, b) for a in group_a for b in group_b} | {(b, a) for a in group_a
                                                             for b in group_b}

    async def _partition_leader(self, plan, record, rng) -> None:
        victim = await self._leader_or_random(rng, record)
        others = [n for n in self._nodes() if n != victim]
        style = rng.choice(("drop", "hold", "reset"))
        await self._cut(plan, record, self._both_ways([victim], others), style, [victim])

    async def _partition_half(self, plan, record, rng) -> None:
        nodes = self._nodes()
        minority_size = (len(nodes) - 1) // 2
        leader = self.observer.leader()
        rest = [n for n in nodes if n != leader]
        rng.shuffle(rest)
        if leader is not None and rng.random() < 0.5:
            minority = [leader] + rest[:minority_size - 1]
        else:
            minority = rest[:minority_size]
        majority = [n for n in nodes if n not in minority]
        style = rng.choice(("drop", "hold", "reset"))
        await self._cut(plan, record, self._both_ways(minority, majority), style,
                        sorted(minority), minority=sorted(minority), majority=majority)

    async def _partition_oneway(self, plan, record, rng) -> None:
        victim = self._some_node(rng) or rng.choice(self._nodes())
        others = [n for n in self._nodes() if n != victim]
        direction = rng.choice(("inbound", "outbound"))
        if direction == "outbound":
            links = {(victim, o) for o in others}
        else:
            links = {(o, victim) for o in others}
        style = rng.choice(("drop", "hold"))
        await self._cut(plan, record, links, style, [victim], direction=direction,
                        was_leader=victim == self.observer.leader())

    async def _partition_ring(self, plan, record, rng) -> None:
        ring = self._nodes()
        rng.shuffle(ring)
        n = len(ring)
        links = set()
        for i, a in enumerate(ring):
            near = {ring[(i - 1) % n], ring[(i + 1) % n], a}
            links |= {(a, b) for b in ring if b not in near}
        style = rng.choice(("drop", "hold", "reset"))
        await self._cut(plan, record, links, style, ring, ring=ring)

    async def _partition_bridge(self, plan, record, rng) -> None:
        nodes = self._nodes()
        leader = self.observer.leader()
        bridge = leader if leader is not None and rng.random() < 0.5 else rng.choice(nodes)
        rest = [n for n in nodes if n != bridge]
        rng.shuffle(rest)
        half = len(rest) // 2
        side_a, side_b = sorted(rest[:half]), sorted(rest[half:])
        style = rng.choice(("drop", "hold", "reset"))
        await self._cut(plan, record, self._both_ways(side_a, side_b), style, [bridge],
                        bridge=bridge, sides=[side_a, side_b])

    async def _flaky_link(self, plan, record, rng) -> None:
        nodes = self._nodes()
        scope = rng.choice(("all", "node"))
        if scope == "all":
            links = [(a, b) for a in nodes for b in nodes if a != b]
            targets = nodes
        else:
            victim = self._some_node(rng) or rng.choice(nodes)
            links = [(victim, o) for o in nodes if o != victim] + \
                    [(o, victim) for o in nodes if o != victim]
            targets = [victim]
        rules = LinkRules(delay_s=rng.uniform(0.0, 0.03), jitter_s=rng.uniform(0.0, 0.03),
                          reorder=rng.random() < 0.5, loss=rng.uniform(0.1, 0.4),
                          duplicate=rng.uniform(0.05, 0.3))
        for src, dst in links:
            self.proxy.set_link(src, dst, rules)
        self._started(record, targets, scope=scope, rules=rules.describe())
        await _sleep(self.reactor, plan.hold_s)
        self._heal_begins(record)
        self.proxy.heal()
        self._healed(record)
