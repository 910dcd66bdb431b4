"""Concurrent clients: put / get / cas on a few keys with unique values, every operation
recorded in the ``History``.

Each worker is sequential (one operation in flight) and paced so that all workers together
aim at ``rate`` operations per second.  Keys rotate: a key serves ``ops_per_key`` operations,
then its slot moves on to a fresh key, which bounds each key's sub-history and so the
linearizability checker's work (Jepsen's "independent" keys; etcd keeps histories small for
the same reason).  Values are unique integers, so a read names the write it saw.

Besides the workers, an open-loop prober puts to ``probe.<n>`` keys every
``probe_interval_s`` (50 ms), each put from a fresh process, round-robin over the nodes:
when a leader vanishes every worker may sit in a request that can only time out, and the
probes still show when the cluster accepts writes again (the unavailability measure).

Every operation runs through the retry planner (paxoslog/retry.py) that the library clients
use: a worker's operation starts at its node, and a 503, a refused connection or (writes
carry a (client_id, sequence) session, so resending them is safe) a maybe-delivered failure
is retried at another node, the leader hint first, until ``timeout_s``.  The history
records the planner's verdict (see history.py): answered is ``ok``; refused (4xx) and
not-applied are ``fail``; ``unknown`` exactly when the planner says the write's outcome is
unknown (some attempt may have reached a server and none settled it).  A read is never
unknown (it has no effect).  After an unknown outcome the worker continues as a new process
with a new ``client_id`` (a Jepsen process that crashed never issues another operation).
Operations that did not succeed move the worker to the next node, so no worker stays stuck
on a dead or cut-off one.

The nodes are the cluster's current members: ``set_nodes`` replaces them when a membership
change completes (a joined node gets traffic, a removed one no more).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from twisted.internet import defer, task

from paxoslog.client import drive_plan
from paxoslog.retry import Endpoints, Finish, Reply, Request, RetryPlan, RetryPolicy, Verdict

from .apiclient import ApiClient, query_path
from .history import FAIL, OK, UNKNOWN, History, OpRecord

__all__ = ["WorkloadOptions", "KeySpace", "Workload", "MIX_DEFAULT"]

MIX_DEFAULT = (("get", 0.4), ("put", 0.35), ("cas", 0.25))
_FAIL_BACKOFF_S = (0.02, 0.08)


@dataclass(frozen=True)
class WorkloadOptions:
    workers: int = 12
    rate: float = 300.0            # target operations per second, all workers together
    key_slots: int = 6
    ops_per_key: int = 300
    timeout_s: float = 3.0         # client-side deadline per operation
    probe_interval_s: float = 0.05  # availability probes (0: none), see Workload._probe
    probes_max: int = 64
    mix: tuple = MIX_DEFAULT
    run_tag: str = "chaos"


class KeySpace:
    """``slots`` live keys; each retires after ``ops_per_key`` operations."""

    def __init__(self, slots: int, ops_per_key: int, rng: random.Random) -> None:
        self.rng = rng
        self.ops_per_key = ops_per_key
        self.generation = [0] * slots
        self.used = [0] * slots
        self.last_value: dict[str, object] = {}

    def pick(self) -> str:
        slot = self.rng.randrange(len(self.generation))
        key = f"k{slot}.{self.generation[slot]}"
        self.used[slot] += 1
        if self.used[slot] >= self.ops_per_key:
            self.generation[slot] += 1
            self.used[slot] = 0
        return key

    def keys(self) -> list[str]:
        """Every key handed out so far."""
        return [f"k{slot}.{gen}" for slot, top in enumerate(self.generation)
                for gen in range(top + 1)]

    def observed(self, key: str, value: object) -> None:
        self.last_value[key] = value


class _Worker:
    def __init__(self, workload: "Workload", number: int) -> None:
        self.workload = workload
        self.number = number
        self.node_pos = number % len(workload.nodes)
        self.process = 0
        self.client_id = ""
        self.sequence = 0
        self.new_process()

    def new_process(self) -> None:
        w = self.workload
        self.process = w.history.new_process()
        self.client_id = f"{w.options.run_tag}-w{self.number}-p{self.process}"
        self.sequence = 0

    @property
    def node(self) -> int:
        nodes = self.workload.nodes
        return nodes[self.node_pos % len(nodes)]

    def next_node(self) -> None:
        self.node_pos = (self.node_pos + 1) % len(self.workload.nodes)

    async def run(self) -> None:
        w = self.workload
        reactor = w.reactor
        interval = w.options.workers / w.options.rate if w.options.rate > 0 else 0.0
        next_start = reactor.seconds() + w.rng.uniform(0, interval)
        while not w.stopping:
            delay = next_start - reactor.seconds()
            if delay > 0:
                await task.deferLater(reactor, delay, lambda: None)
                if w.stopping:
                    break
            next_start = max(next_start + interval, reactor.seconds())
            status = await self.one_operation()
            if status != OK and not w.stopping:
                await task.deferLater(reactor, w.rng.uniform(*_FAIL_BACKOFF_S), lambda: None)

    async def one_operation(self) -> str:
        w = self.workload
        kind = w.choose_kind()
        key = w.keys.pick()
        node = self.node
        if kind == "get":
            record = w.history.invoke(self.process, self.client_id, node, "get", key)
            status = await w.do_get(record)
        else:
            value = w.next_value()
            expected = w.keys.last_value.get(key) if kind == "cas" else None
            record = w.history.invoke(self.process, self.client_id, node, kind, key, value,
                                      expected)
            self.sequence += 1
            status = await w.do_write(record, self.sequence)
        if status == UNKNOWN:
            self.new_process()
        if status != OK:
            self.next_node()
        return status


def _error_text(finish: Finish) -> str:
    """The verdict and the last attempt: "unknown after 3 attempts, last: node 2: HTTP 503 ..."."""
    attempts = f"{finish.attempts} attempt" + ("s" if finish.attempts != 1 else "")
    return f"{finish.verdict.value} after {attempts}, last: node {finish.reason}"[:160]


_STATUS = {Verdict.ANSWERED: OK, Verdict.REFUSED: FAIL, Verdict.NOT_APPLIED: FAIL,
           Verdict.UNKNOWN: UNKNOWN}


class Workload:
    """The workers of one run.  ``start()`` launches them; ``stop()`` fires once every
    worker finished its operation in flight."""

    def __init__(self, reactor, client: ApiClient, history: History, nodes: list[int],
                 options: WorkloadOptions, rng: random.Random) -> None:
        self.reactor = reactor
        self.client = client
        self.history = history
        self.nodes = list(nodes)
        self.options = options
        self.rng = rng
        self.keys = KeySpace(options.key_slots, options.ops_per_key, rng)
        self.stopping = False
        self.statuses: dict[str, int] = {}
        self._value = 0
        self._kinds = [kind for kind, _ in options.mix]
        self._weights = [weight for _, weight in options.mix]
        self._workers = [_Worker(self, number) for number in range(options.workers)]
        self._running: list[defer.Deferred] = []
        self._probes: set[defer.Deferred] = set()
        self._probe_loop = None
        self._probe_count = 0
        # A probe is one attempt (the planner only classifies it): probes show when the
        # cluster accepts writes again; retrying them would only add load meanwhile.
        self._probe_policy = RetryPolicy(timeout_s=options.timeout_s,
                                         attempt_timeout_s=options.timeout_s, attempts_max=1)

    def set_nodes(self, nodes: list[int]) -> None:
        """The members changed: operations from now on go to ``nodes`` (a worker keeps its
        position, so workers stay spread over the nodes)."""
        if not nodes:
            raise ValueError("a workload needs at least one node")
        self.nodes = list(nodes)

    def choose_kind(self) -> str:
        return self.rng.choices(self._kinds, self._weights)[0]

    def next_value(self) -> int:
        self._value += 1
        return self._value

    def note_status(self, reply: Reply) -> Reply:
        """Tally every error answer of every attempt (the report lists them)."""
        if reply.status != 200 and not (reply.status == 404
                                        and reply.field("error") == "not_found"):
            label = f"{reply.status} {reply.field('error') or ''}".strip()
            self.statuses[label] = self.statuses.get(label, 0) + 1
        return reply

    # ------------------------------------------------------------------ one operation

    def plan(self, request: Request, node: int, policy: RetryPolicy | None = None) -> RetryPlan:
        """The retries of one operation: ``node`` first, then the other members in turn
        (a leader hint, a node id, goes first)."""
        nodes = [node] + [n for n in self.nodes if n != node]
        policy = policy or RetryPolicy(timeout_s=self.options.timeout_s,
                                       attempt_timeout_s=self.options.timeout_s)
        return RetryPlan(request, policy, Endpoints(nodes, {n: n for n in nodes}))

    async def run_plan(self, plan: RetryPlan, method: str, path: str,
                       body: object = None) -> Finish:
        def send(node: int, timeout_s: float) -> defer.Deferred:
            d = self.client.call(method, node, path, body, timeout_s)
            return d.addCallback(self.note_status)
        return await drive_plan(self.reactor, plan, send)

    async def do_get(self, record: OpRecord, policy: RetryPolicy | None = None) -> str:
        """A linearizable read; completes ``record`` and returns its status."""
        plan = self.plan(Request.read(), record.node, policy)
        finish = await self.run_plan(plan, "GET", query_path(record.key))
        reply = finish.reply
        if finish.verdict is Verdict.ANSWERED:
            value = reply.field("value")
            self.keys.observed(record.key, value)
            self.history.complete(record, OK, value, index=reply.field("index"),
                                  term=reply.field("term"))
            return OK
        if (finish.verdict is Verdict.REFUSED and reply.status == 404
                and reply.field("error") == "not_found"):
            self.history.complete(record, OK, None, index=reply.field("index"),
                                  term=reply.field("term"))
            return OK
        status = _STATUS[finish.verdict]
        self.history.complete(record, status, error=_error_text(finish))
        return status

    async def do_write(self, record: OpRecord, sequence: int,
                       policy: RetryPolicy | None = None) -> str:
        """A put or cas as (record.client_id, sequence); completes ``record`` with the
        planner's verdict."""
        body = {"key": record.key, "value": record.value, "op": record.kind,
                "client_id": record.client_id, "sequence": sequence}
        if sequence > 1:
            # A worker's process writes one at a time and starts over after an unknown
            # outcome, so every earlier sequence of it is settled: the cluster may forget
            # their results (a late copy of one is then refused as stale).
            body["acked"] = sequence - 1
        if record.kind == "cas":
            body["expected"] = record.expected
        plan = self.plan(Request.write_with(session=True), record.node, policy)
        finish = await self.run_plan(plan, "POST", "/api/v1/consensus/propose", body)
        if finish.verdict is Verdict.ANSWERED:
            reply = finish.reply
            result = reply.field("result") or {}
            output = None
            if record.kind == "cas":
                output = bool(isinstance(result, dict) and result.get("succeeded"))
            if record.kind == "put" or output:
                self.keys.observed(record.key, record.value)
            self.history.complete(record, OK, output, index=reply.field("index"),
                                  term=reply.field("term"))
            return OK
        status = _STATUS[finish.verdict]
        self.history.complete(record, status, error=_error_text(finish))
        return status

    def start(self) -> None:
        for worker in self._workers:
            d = defer.Deferred.fromCoroutine(worker.run())
            self._running.append(d)
        if self.options.probe_interval_s > 0:
            self._probe_loop = task.LoopingCall(self._probe)
            self._probe_loop.clock = self.reactor
            self._probe_loop.start(self.options.probe_interval_s, now=True)

    def stop(self) -> defer.Deferred:
        """Stop issuing; fires once every operation in flight ended."""
        self.stopping = True
        if self._probe_loop is not None and self._probe_loop.running:
            self._probe_loop.stop()
        return defer.DeferredList(self._running + list(self._probes), consumeErrors=True)

    def _probe(self) -> None:
        """Open loop: one put every ``probe_interval_s`` to the next node, each by a fresh
        process, unless ``probes_max`` are already in flight.  Workers stuck behind a
        leader that vanished cannot show when writes are accepted again; probes can."""
        if len(self._probes) >= self.options.probes_max:
            return
        self._probe_count += 1
        node = self.nodes[self._probe_count % len(self.nodes)]
        key = f"probe.{self._probe_count // self.options.ops_per_key}"
        process = self.history.new_process()
        client_id = f"{self.options.run_tag}-probe-p{process}"
        record = self.history.invoke(process, client_id, node, "put", key, self.next_value())
        d = defer.Deferred.fromCoroutine(self.do_write(record, 1, self._probe_policy))
        self._probes.add(d)
        d.addBoth(lambda _r, d=d: self._probes.discard(d))
