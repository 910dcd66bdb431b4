"""Concurrent key-value clients whose operations may time out (indeterminate outcome).

Each client runs one operation at a time: put, get, delete or cas, on a few keys, with
unique written values.  A NotLeader or a dropped proposal is a definite "not executed" and
is retried at the hinted leader (the operation keeps its invocation time); a crash of the
serving node or a timeout makes the operation indeterminate, as in Jepsen/Porcupine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import Busy, NotLeader
from .kvmodel import encode_command
from .linearizability import Operation

if TYPE_CHECKING:
    from .cluster import Simulation

__all__ = ["Workload", "Request"]

PROBE_CLIENT = 0


class Request:
    __slots__ = ("client", "op_id", "kind", "key", "value", "expected", "call", "done",
                 "attempt_node")

    def __init__(self, client, op_id, kind, key, value, expected, call):
        self.client = client
        self.op_id = op_id
        self.kind = kind
        self.key = key
        self.value = value
        self.expected = expected
        self.call = call
        self.done = False
        self.attempt_node = None


class Workload:
    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim
        self.rng = sim.rng
        self.keys = [f"k{i}" for i in range(sim.options.keys)]
        self.next_op = 0
        self.next_value = 0
        self.accepting = True
        self.leader_hint: int | None = None
        self.probe_done = False
        self.probing = False
        self.last_seen: dict[str, object] = {}
        self.outstanding: dict[int, Request] = {}

    def start(self) -> None:
        for client in range(1, self.sim.options.clients + 1):
            self.sim.schedule(self.rng.uniform(0, 20), self._issue, client)

    def stop_new_operations(self) -> None:
        self.accepting = False

    def probe(self) -> None:
        self.probing = True
        self._issue(PROBE_CLIENT)

    def _value(self) -> int:
        self.next_value += 1
        return self.next_value

    def _issue(self, client: int) -> None:
        if client != PROBE_CLIENT and not self.accepting:
            return
        if client == PROBE_CLIENT and self.probe_done:
            return
        self.next_op += 1
        rng = self.rng
        if client == PROBE_CLIENT:
            kind, key = "put", "probe"
        else:
            kind = rng.choice(("put", "put", "get", "get", "cas", "delete"))
            key = rng.choice(self.keys)
        value = expected = None
        if kind == "put":
            value = self._value()
        elif kind == "cas":
            value = self._value()
            expected = self.last_seen.get(key) if rng.random() < 0.8 else None
        request = Request(client, self.next_op, kind, key, value, expected, self.sim.now)
        self.outstanding[request.op_id] = request
        self._attempt(request)
        self.sim.schedule(self.sim.options.client_timeout_ms, self._timeout, request)

    def _pick_node(self):
        sim = self.sim
        live = sim.live_nodes()
        if not live:
            return None
        hint = self.leader_hint
        if hint is not None and sim.nodes[hint].alive and self.rng.random() < 0.9:
            return sim.nodes[hint]
        return self.rng.choice(live)

    def _attempt(self, request: Request) -> None:
        if request.done:
            return
        node = self._pick_node()
        if node is None:
            self.sim.schedule(5.0, self._attempt, request)
            return
        request.attempt_node = node.node_id
        try:
            if request.kind == "get":
                node.replica.read_index(request)
            else:
                command = encode_command(request.client, request.op_id, request.kind,
                                         request.key, request.value, request.expected)
                node.replica.propose([command])
                node.pending[(request.client, request.op_id)] = request
        except NotLeader as exc:
            self.leader_hint = exc.leader_hint
            self.sim.schedule(self.rng.uniform(1.0, 10.0), self._attempt, request)
            return
        except Busy:
            self.sim.schedule(self.rng.uniform(5.0, 20.0), self._attempt, request)
            return
        self.leader_hint = node.node_id
        self.sim.after_step(node)
        node.pump()

    def _finish(self, request: Request, op: Operation | None) -> None:
        if request.done:
            return
        request.done = True
        self.outstanding.pop(request.op_id, None)
        if op is not None:
            self.sim.history.add(op)
        if request.client == PROBE_CLIENT:
            if op is not None and op.ret is not None:
                self.probe_done = True
            else:
                self.sim.schedule(5.0, self._issue, PROBE_CLIENT)
            return
        self.sim.schedule(self.rng.uniform(0, self.sim.options.think_ms * 2), self._issue,
                          request.client)

    def _op(self, request: Request, ret, output) -> Operation:
        return Operation(request.client, request.kind, request.key, request.value,
                         request.expected, request.call, ret, output)

    def complete(self, request: Request, result) -> None:
        if request.done:
            return
        if request.kind in ("get",):
            self.last_seen[request.key] = result
        elif request.kind == "put":
            self.last_seen[request.key] = request.value
        elif request.kind == "cas" and result:
            self.last_seen[request.key] = request.value
        self._finish(request, self._op(request, self.sim.now, result))

    def fail(self, request: Request) -> None:
        """Definitely not executed: try again (same invocation) at another node."""
        if request.done:
            return
        self.sim.schedule(self.rng.uniform(1.0, 10.0), self._attempt, request)

    def lose(self, request: Request) -> None:
        """The serving node crashed: the outcome is unknown."""
        if request.done:
            return
        self._finish(request, self._op(request, None, None))

    def _timeout(self, request: Request) -> None:
        if not request.done:
            if request.kind == "get":
                self._finish(request, None)  # a read that never returned changed nothing
            else:
                self._finish(request, self._op(request, None, None))

    def finish(self) -> None:
        for request in list(self.outstanding.values()):
            self._timeout(request)
