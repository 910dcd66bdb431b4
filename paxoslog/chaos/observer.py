"""Watches ``GET /api/v1/cluster/status`` on every running node: who leads, in which term.

"Running node" means a node of the cluster as it is now (``Cluster.running_nodes``: members
and nodes joining, never spares or removed nodes).  Each running node is polled every
``interval_s``; a node's row is written to ``status.jsonl`` whenever its (role, leader,
term) changes.  ``leader()`` is the current
leader as the live nodes see it (the node claiming leadership with the highest term among
fresh observations of running nodes), and ``leader_changes`` the sequence of (t, leader,
term) for the timeline plot and the report.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task

__all__ = ["StatusObserver"]

_FRESH_S = 1.0


class StatusObserver:
    def __init__(self, reactor, client, cluster, clock, path: str | None,
                 interval_s: float = 0.2) -> None:
        self.reactor = reactor
        self.client = client
        self.cluster = cluster
        self.clock = clock
        self.interval_s = interval_s
        self.latest: dict[int, dict] = {}
        self.leader_changes: list[tuple[float, int | None, int | None]] = []
        self._file = open(path, "w") if path else None
        self._loop = None
        self._inflight: set[int] = set()

    def start(self) -> None:
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self.reactor
        self._loop.start(self.interval_s, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._file is not None:
            self._file.close()
            self._file = None

    def poll(self) -> None:
        for node in self.cluster.running_nodes():
            if node in self._inflight:
                continue
            self._inflight.add(node)
            d = self.client.status(node, timeout_s=max(0.5, 2 * self.interval_s))
            d.addCallbacks(self._got, lambda _f: None, callbackArgs=(node,))
            d.addBoth(lambda _r, n=node: self._inflight.discard(n))
        self._update_leader()

    def _got(self, response, node: int) -> None:
        if response.status != 200 or not isinstance(response.body, dict):
            return
        body = response.body
        row = {"t": round(self.clock(), 3), "node": node, "role": body.get("role"),
               "leader": body.get("leader"), "term": body.get("term"),
               "commit_index": body.get("commit_index"),
               "applied_index": body.get("applied_index")}
        before = self.latest.get(node)
        self.latest[node] = row
        if before is None or any(before.get(k) != row[k] for k in ("role", "leader", "term")):
            if self._file is not None:
                self._file.write(json.dumps(row) + "\n")

    def leader(self) -> int | None:
        """The leader according to fresh observations of running nodes, or None."""
        now = self.clock()
        running = set(self.cluster.running_nodes())
        best = None
        for node, row in self.latest.items():
            if node not in running or now - row["t"] > _FRESH_S:
                continue
            if row["role"] == "leader" and (best is None or (row["term"] or 0) > (best["term"] or 0)):
                best = row
        return best["node"] if best else None

    def _update_leader(self) -> None:
        leader = self.leader()
        term = self.latest[leader]["term"] if leader is not None else None
        last = self.leader_changes[-1] if self.leader_changes else None
        if last is None or last[1] != leader or (leader is not None and last[2] != term):
            self.leader_changes.append((round(self.clock(), 3), leader, term))

    @defer.inlineCallbacks
    def fetch_all(self, timeout_s: float = 1.0):
        """A fresh status of every running node: {node: body} (failures left out)."""
        nodes = self.cluster.running_nodes()
        results = yield defer.DeferredList(
            [self.client.status(n, timeout_s) for n in nodes], consumeErrors=True)
        out = {}
        for node, (ok, response) in zip(nodes, results):
            if ok and response.status == 200 and isinstance(response.body, dict):
                out[node] = response.body
        return out
