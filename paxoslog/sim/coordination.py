"""Lease holders and bank-transfer transactions in the simulator, with their checkers.

Off unless a profile sets ``lease_holders`` or ``bank_clients`` (profiles.py: ``leases``,
``leases-beyond``).  The clients speak to the node driver exactly as the HTTP API does:
kv commands encoded by the production codec with a (client, sequence) session, lease
keep-alives as ``{"lease": {"op": "keepalive", "id"}}`` reads.

**Lease holders.**  Each grants a lease (TTL drawn per lease), attaches a key to it, keeps
it alive every TTL/4 for a while, then stops and, some time later, starts over with a new
lease.  The checker (``expired``), at the first apply anywhere of a ``lease_expire`` that
removed lease L::

    now >= max(send time of L's grant, send time of L's last acknowledged keep-alive)
           + TTL * (1 - lease_drift_bound)

that is, no expiry earlier than the guarantee in docs/coordination.md, where
``lease_drift_bound`` plays the conf's clock-drift margin.  Also: no keep-alive sent after
L's expiry was applied is acknowledged.  Virtual time is the real time here; each node's
ticks run at its own clock rate (cluster.py), so clocks beyond the bound make the leader
count a TTL in less real time than the bound allows, and the checker fails the run.

**Bank.**  Accounts ``bank/0..`` start at 100 each (an initial transaction creates them if
absent).  A client reads every balance (a linearizable prefix read), then moves a random
amount between two accounts with a transaction that compares both accounts' mod_index and
the payer's balance.  The checker: after every apply on every replica, the balances sum to
the initial total (atomicity), and none is negative.  Any kv command that makes the state
machine raise (``apply_failed``) fails the run too.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cluster import Simulation

__all__ = ["Coordination", "CoordAttempt"]

ACCOUNTS = 4
START_BALANCE = 100


class CoordAttempt:
    """One request of a coordination client at one node (the handle it answers to)."""

    __slots__ = ("client", "kind", "sent", "lease", "done")

    def __init__(self, client, kind: str, sent: float, lease: int | None = None) -> None:
        self.client = client
        self.kind = kind
        self.sent = sent
        self.lease = lease
        self.done = False


class _Holder:
    __slots__ = ("name", "seq", "lease", "ttl_ms", "keep_until", "epoch")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.lease: int | None = None
        self.ttl_ms = 0
        self.keep_until = 0.0
        self.epoch = 0            # bumped per lease, so stale timers do nothing


class _Banker:
    __slots__ = ("name", "seq", "balances")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.balances: dict | None = None


class Coordination:
    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim
        o = sim.options
        self.rng = random.Random(f"coordination/{sim.seed}")
        self.accepting = True
        self.holders = [_Holder(f"L{i}") for i in range(1, o.lease_holders + 1)]
        self.bankers = [_Banker(f"B{i}") for i in range(1, o.bank_clients + 1)]
        # the checker's view, keyed by lease id
        self.grant_sent: dict[tuple, float] = {}      # (client, seq) -> send time
        self.lease_floor: dict[int, float] = {}       # lease -> lower bound of its TTL start
        self.lease_ttl: dict[int, int] = {}
        self.expired_at: dict[int, float] = {}
        self.bank_total = ACCOUNTS * START_BALANCE

    # ------------------------------------------------------------------ plumbing

    def start(self) -> None:
        for holder in self.holders:
            self.sim.schedule(self.rng.uniform(0, 50), self._grant, holder)
        for banker in self.bankers:
            self.sim.schedule(self.rng.uniform(0, 50), self._bank_read, banker)

    def stop(self) -> None:
        self.accepting = False

    def _node(self):
        live = self.sim.live_nodes()
        if not live:
            return None
        leader = self.sim.leader()
        if leader is not None and self.rng.random() < 0.7:
            return self.sim.nodes[leader]
        return self.rng.choice(live)

    def _send(self, attempt: CoordAttempt, kind: str, payload) -> bool:
        node = self._node()
        if node is None or not node.client_request(attempt, kind, payload):
            return False
        self.sim.schedule(self.sim.options.client_timeout_ms, self._timeout, attempt)
        return True

    def _write(self, client, attempt: CoordAttempt, fields: dict) -> bool:
        node = self._node()
        if node is None:
            return False
        client.seq += 1
        key = (client.name, client.seq)
        data = node.driver.machines.encode_write("kv", fields, client.name, client.seq,
                                                ts=node.stamp_ms())
        if fields["op"] == "lease_grant":
            self.grant_sent[key] = attempt.sent
        if not node.client_request(attempt, "write", (key, data)):
            return False
        self.sim.schedule(self.sim.options.client_timeout_ms, self._timeout, attempt)
        return True

    def _timeout(self, attempt: CoordAttempt) -> None:
        if not attempt.done:
            self.lose(attempt)

    def lose(self, attempt: CoordAttempt) -> None:
        """No answer (timeout, or the node crashed): the client moves on."""
        if attempt.done:
            return
        attempt.done = True
        self._after(attempt, None, {})

    def reply(self, attempt: CoordAttempt, node: int, status: int, body: dict) -> None:
        if attempt.done:
            return
        attempt.done = True
        self._after(attempt, status, body)

    def _after(self, attempt: CoordAttempt, status: int | None, body: dict) -> None:
        kind = attempt.kind
        if kind in ("grant", "attach", "keepalive"):
            self._holder_answer(attempt, status, body)
        else:
            self._bank_answer(attempt, status, body)

    # ------------------------------------------------------------------ lease holders

    def _grant(self, holder: _Holder) -> None:
        if not self.accepting:
            return
        holder.epoch += 1
        holder.lease = None
        holder.ttl_ms = self.rng.choice([200, 300, 500])
        attempt = CoordAttempt(holder, "grant", self.sim.now)
        if not self._write(holder, attempt, {"op": "lease_grant", "ttl_ms": holder.ttl_ms}):
            self.sim.schedule(20, self._grant, holder)

    def _holder_answer(self, attempt: CoordAttempt, status, body: dict) -> None:
        holder, sim = attempt.client, self.sim
        if attempt.kind == "grant":
            if status == 200 and "id" in body.get("result", {}):
                holder.lease = body["result"]["id"]
                holder.keep_until = sim.now + self.rng.uniform(0, 1500)
                attach = CoordAttempt(holder, "attach", sim.now, holder.lease)
                self._write(holder, attach, {"op": "put", "key": f"lease/{holder.name}",
                                             "value": holder.lease, "lease": holder.lease})
                self._schedule_keepalive(holder, holder.epoch)
            else:
                sim.schedule(20, self._grant, holder)
            return
        if attempt.kind == "keepalive" and status == 200:
            lease = attempt.lease
            sim.count("lease_keepalives_acked")
            expired = self.expired_at.get(lease)
            if expired is not None:
                earliest = attempt.sent + self.lease_ttl.get(lease, 0) * (
                    1.0 - sim.options.lease_drift_bound)
                if expired < earliest:
                    sim.fail(f"lease {lease}: a keep-alive sent at {attempt.sent:.1f}ms was "
                             f"acknowledged, but the lease expired at {expired:.1f}ms")
            self.lease_floor[lease] = max(self.lease_floor.get(lease, 0.0), attempt.sent)
        elif attempt.kind == "keepalive" and status == 404:
            sim.count("lease_keepalives_refused")

    def _schedule_keepalive(self, holder: _Holder, epoch: int) -> None:
        self.sim.schedule(holder.ttl_ms / 4, self._keepalive, holder, epoch)

    def _keepalive(self, holder: _Holder, epoch: int) -> None:
        if epoch != holder.epoch or holder.lease is None:
            return
        sim = self.sim
        if not self.accepting or sim.now >= holder.keep_until:
            # Stop renewing: the lease must run out (checked at its expiry), then start
            # over with a new one.
            sim.schedule(holder.ttl_ms * 3 + self.rng.uniform(0, 200), self._grant, holder)
            return
        attempt = CoordAttempt(holder, "keepalive", sim.now, holder.lease)
        self._send(attempt, "read", ({"lease": {"op": "keepalive", "id": holder.lease}},
                                     "linearizable"))
        self._schedule_keepalive(holder, epoch)

    # ------------------------------------------------------------------ bank

    def _bank_read(self, banker: _Banker) -> None:
        if not self.accepting:
            return
        attempt = CoordAttempt(banker, "bank_read", self.sim.now)
        if not self._send(attempt, "read", ({"prefix": "bank/"}, "linearizable")):
            self.sim.schedule(20, self._bank_read, banker)

    def _bank_answer(self, attempt: CoordAttempt, status, body: dict) -> None:
        banker, sim = attempt.client, self.sim
        if attempt.kind == "bank_read" and status == 200:
            kvs = body.get("kvs", [])
            if len(kvs) < ACCOUNTS:
                init = CoordAttempt(banker, "bank_init", sim.now)
                self._write(banker, init, {"op": "txn", "compare": [
                    {"key": "bank/0", "target": "exists", "value": False}], "success": [
                    {"op": "put", "key": f"bank/{i}", "value": START_BALANCE}
                    for i in range(ACCOUNTS)]})
                return
            a, b = self.rng.sample(kvs, 2)
            amount = self.rng.randint(1, 30)
            transfer = CoordAttempt(banker, "bank_transfer", sim.now)
            self._write(banker, transfer, {"op": "txn", "compare": [
                {"key": a["key"], "target": "mod_index", "value": a["mod_index"]},
                {"key": b["key"], "target": "mod_index", "value": b["mod_index"]},
                {"key": a["key"], "target": "value", "cmp": ">=", "value": amount}],
                "success": [{"op": "put", "key": a["key"], "value": a["value"] - amount},
                            {"op": "put", "key": b["key"], "value": b["value"] + amount}],
                "failure": [{"op": "get", "key": a["key"]}]})
            return
        if attempt.kind == "bank_transfer" and status == 200:
            sim.count("bank_transfers" if body["result"]["succeeded"] else "bank_conflicts")
        sim.schedule(self.rng.uniform(1, 20), self._bank_read, banker)

    # ------------------------------------------------------------------ checkers

    def applied(self, node, op) -> None:
        """A node applied entries (an ``Applied`` instruction): check them."""
        sim = self.sim
        for outcome in op.outcomes:
            result = outcome.result
            if outcome.sm != "kv" or not isinstance(result, dict):
                continue
            if result.get("error") == "apply_failed":
                sim.fail(f"node {node.node_id}: kv failed to apply entry {outcome.index}: "
                         f"{result.get('message')}")
            kind = result.get("op")
            if kind == "lease_grant" and "id" in result and outcome.key in self.grant_sent:
                self.lease_floor.setdefault(result["id"], self.grant_sent[outcome.key])
                self.lease_ttl[result["id"]] = result["ttl_ms"]
            elif kind == "lease_expire":
                for lease in result.get("expired", ()):
                    if lease not in self.expired_at:
                        self._check_expiry(lease)
        if self.bankers:
            self._check_bank(node)

    def _check_expiry(self, lease: int) -> None:
        sim = self.sim
        self.expired_at[lease] = sim.now
        sim.count("leases_expired")
        floor = self.lease_floor.get(lease)
        if floor is None:
            return                      # granted by an attempt whose send we did not see
        ttl = self.lease_ttl[lease]
        earliest = floor + ttl * (1.0 - sim.options.lease_drift_bound)
        if sim.now < earliest:
            sim.fail(f"lease {lease} (TTL {ttl} ms) expired at {sim.now:.1f}ms, "
                     f"{sim.now - floor:.1f}ms after its last acknowledged keep-alive was "
                     f"sent: earlier than TTL x (1 - {sim.options.lease_drift_bound:.3f})")

    def _check_bank(self, node) -> None:
        kv = node.driver.machines.kv
        balances = [kv.get(f"bank/{i}") for i in range(ACCOUNTS)]
        present = [b for b in balances if b is not None]
        if not present:
            return
        values = [b["value"] for b in present]
        if len(present) != ACCOUNTS or sum(values) != self.bank_total or min(values) < 0:
            self.sim.fail(f"node {node.node_id} at index {node.driver.applied_index}: bank "
                          f"balances {values} (expected {ACCOUNTS} accounts summing to "
                          f"{self.bank_total}, none negative)")
