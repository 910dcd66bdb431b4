"""Concurrent key-value clients whose operations may time out (indeterminate outcome).

Each client runs one operation at a time: put, get, delete or cas, on a few keys, with
unique written values, sent to a node as the server's API would hand it to the node
driver: a kv command validated and encoded by the production codec with the client's
(client_id, sequence), or a kv query with a consistency.  The node answers like the API:
200 (the result), 404 (an absent key), 503 (definitely not applied: retried at the hinted
leader, keeping the invocation time), 504 (outcome unknown).  A crash of the serving node,
a 504 or a timeout makes an operation indeterminate, as in Jepsen/Porcupine.

Profile features (off by default):

* ``lease_reads``: a get at the leader is served at ``lease_read_index()`` when the lease
  holds, else through ``read_index`` as usual.  A paused node serves nothing (the client
  tries again later), as a stopped process would.
* ``batch_every`` ("batches" profile): every n-th write (by operation id, so no random
  draw) is sent as a batch command of that one operation, the path of ``POST
  /api/v1/consensus/batch`` and the WebSocket channel; its result is the batch's only
  result, and a retried batch must be answered from the session table like any write.
* ``sessions``: each operation carries (client, sequence); its reply may be lost on the
  way back (``response_loss_rate``), and an attempt that gets no reply within
  ``client_timeout_ms`` (lost reply, crashed node, stuck leader) is retried with the same
  sequence, possibly at another node, until a reply comes or ``give_up_ms`` after the
  call (then a write is indeterminate).  A retried operation is one operation in the
  history: its first call, the reply the client finally got.  With ``session_generation``
  a client moves to a new client id every n operations and its next write carries the
  ``release`` of the old one (the router's ServerSessions, one operation at a time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .linearizability import Operation

if TYPE_CHECKING:
    from .cluster import Simulation

__all__ = ["Workload", "Request", "Attempt"]

PROBE_CLIENT = 0


class Request:
    __slots__ = ("client", "op_id", "kind", "key", "value", "expected", "call", "done",
                 "attempt_node", "seq", "chain", "client_id", "release")

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
        self.seq = op_id      # the sequence in the command (per client with sessions)
        self.chain = 0        # sessions: each retry starts a new chain of attempts
        self.client_id = f"c{client}"
        self.release = None   # session generations this write releases


class Attempt:
    """One try of a request at one node (the handle the node answers to)."""

    __slots__ = ("request", "chain", "node")

    def __init__(self, request: Request, chain: int, node: int) -> None:
        self.request = request
        self.chain = chain
        self.node = node


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
        self.probe_turn = 0
        self.last_seen: dict[str, object] = {}
        self.outstanding: dict[int, Request] = {}
        self.sequences: dict[int, int] = {}   # sessions: client -> last sequence issued
        self.generations: dict[int, int] = {}   # session_generation: client -> current
        self.to_release: dict[int, list] = {}   # client -> generations not yet released

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
            read_ratio = self.sim.options.read_ratio
            if read_ratio:
                kind = ("get" if rng.random() < read_ratio
                        else rng.choice(("put", "put", "cas", "delete")))
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
        if self.sim.options.sessions:
            request.seq = self.sequences[client] = self.sequences.get(client, 0) + 1
            self._session_generation(request)
        self.outstanding[request.op_id] = request
        self._attempt(request)
        self.sim.schedule(self.sim.options.client_timeout_ms, self._timeout, request)

    def _session_generation(self, request: Request) -> None:
        """Every ``session_generation`` operations a new client id; the old one (all its
        operations are done: one at a time) goes into the next write's ``release``."""
        per = self.sim.options.session_generation
        client = request.client
        if not per or client == PROBE_CLIENT:
            return
        generation, sequence = divmod(request.seq - 1, per)
        request.client_id, request.seq = f"c{client}-{generation}", sequence + 1
        if sequence == 0 and generation:
            self.to_release.setdefault(client, []).append([f"c{client}-{generation - 1}", per])
        if request.kind != "get" and self.to_release.get(client):
            request.release = self.to_release.pop(client)
            self.sim.count("session_releases_sent")

    def _pick_node(self, request: Request):
        sim = self.sim
        live = sim.live_nodes()
        if not live:
            return None
        hint = self.leader_hint
        if hint is not None and sim.nodes[hint].alive and self.rng.random() < 0.9:
            return sim.nodes[hint]
        if request.client == PROBE_CLIENT:
            # The probe tries the live nodes in turn, as a client with a list of endpoints
            # does: a node that never joined knows no leader and can only time out, and
            # random picks once missed the two members for the whole settle time (sim
            # membership seed 931, raft, 5 nodes: 16 tries, all at the 3 idle spares).
            self.probe_turn += 1
            return live[self.probe_turn % len(live)]
        return self.rng.choice(live)

    def _attempt(self, request: Request, chain: int = 0) -> None:
        if request.done or chain != request.chain:
            return  # answered, or a newer retry of the same operation took over
        node = self._pick_node(request)
        if node is None:
            self.sim.schedule(5.0, self._attempt, request, chain)
            return
        if node.paused and self.sim.options.lease_reads:
            # A stopped process serves nothing; the client tries again shortly.
            self.sim.schedule(self.rng.uniform(1.0, 10.0), self._attempt, request, chain)
            return
        request.attempt_node = node.node_id
        attempt = Attempt(request, chain, node.node_id)
        if request.kind == "get":
            consistency = "lease" if self.sim.options.lease_reads else "linearizable"
            payload = ("read", ({"key": request.key}, consistency))
        else:
            fields = {"op": request.kind, "key": request.key}
            if request.kind in ("put", "cas"):
                fields["value"] = request.value
            if request.kind == "cas":
                fields["expected"] = request.expected
            client_id = request.client_id
            machines = node.driver.machines
            # One operation at a time per client: every earlier sequence is settled.
            acked = request.seq - 1 if self.sim.options.acked and request.seq > 1 else None
            if self._batched(request):
                data = machines.encode_batch_write([("kv", fields, None)], client_id,
                                                   request.seq, ts=node.stamp_ms(),
                                                   release=request.release, acked=acked)
            else:
                data = machines.encode_write("kv", fields, client_id, request.seq,
                                             ts=node.stamp_ms(), release=request.release,
                                             acked=acked)
            payload = ("write", ((client_id, request.seq), data))
        if not node.client_request(attempt, *payload):
            # Connection refused: definitely not sent; try elsewhere.
            self.sim.schedule(self.rng.uniform(1.0, 10.0), self._attempt, request, chain)

    def _batched(self, request: Request) -> bool:
        every = self.sim.options.batch_every
        return bool(every) and request.kind != "get" and request.op_id % every == 0

    def reply(self, attempt: Attempt, node: int, status: int, body: dict) -> None:
        """A node answered an attempt, as the HTTP API would."""
        request = attempt.request
        if request.done:
            return
        if status == 200:
            self.leader_hint = body.get("leader", self.leader_hint)
            if request.kind == "get":
                result = body.get("value")
            elif request.kind == "cas":
                outcome = body["result"]
                if self._batched(request):
                    outcome = outcome["results"][0]
                result = bool(outcome.get("succeeded"))
            else:
                result = None
            self.complete(request, result)
        elif status == 404 and request.kind == "get":
            self.complete(request, None)
        elif status == 503:
            hint = body.get("leader")
            self.leader_hint = hint if hint in self.sim.nodes else None
            if attempt.chain == request.chain:
                self.fail(request)
        elif status == 504:
            if not self.sim.options.sessions:
                self._finish(request, self._op(request, None, None))
            # with sessions the client's own timer retries the same sequence
        else:
            self.sim.fail(f"unexpected answer {status} {body!r:.200} to {request.kind} "
                          f"{request.key!r} from node {node}")

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
        o = self.sim.options
        if (o.sessions and o.response_loss_rate and self.sim.network.faults_enabled
                and self.rng.random() < o.response_loss_rate):
            # Lost like any message while faults last (not after heal: the progress probe
            # must get its answer).  The client never sees it: it times out and retries.
            self.sim.count("replies_lost")
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
        self.sim.schedule(self.rng.uniform(1.0, 10.0), self._attempt, request, request.chain)

    def lose(self, attempt: Attempt) -> None:
        """The serving node crashed: the outcome is unknown.  With sessions the client just
        sees no reply: its attempt timer retries."""
        request = attempt.request
        if request.done or self.sim.options.sessions or attempt.chain != request.chain:
            return
        self._finish(request, self._op(request, None, None))

    def _timeout(self, request: Request) -> None:
        if request.done:
            return
        o = self.sim.options
        if o.sessions and self.sim.now + o.client_timeout_ms <= request.call + o.give_up_ms:
            # No reply in time: send the same (client, sequence) again, maybe elsewhere.
            self.sim.count("retries")
            request.chain += 1
            self._attempt(request, request.chain)
            self.sim.schedule(o.client_timeout_ms, self._timeout, request)
            return
        self._give_up(request)

    def _give_up(self, request: Request) -> None:
        if request.release and not request.done:
            # Perhaps never committed: the client's next write releases them again.
            self.to_release.setdefault(request.client, [])[:0] = request.release
        if not request.done:
            if request.kind == "get":
                self._finish(request, None)  # a read that never returned changed nothing
            else:
                self._finish(request, self._op(request, None, None))

    def finish(self) -> None:
        for request in list(self.outstanding.values()):
            self._give_up(request)
