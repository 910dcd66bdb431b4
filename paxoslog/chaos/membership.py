"""Membership changes on a chaos cluster through the HTTP API (docs/membership.md).

The ``member-change`` nemesis (nemesis.py) decides what to change; this module performs each
step and knows what the API answers:

* ``add``: start a spare with ``paxoslog serve --join <every running member's API>`` (its
  own conf: the cluster's plus one ``[[nodes]]`` table), wait until it answers ``/health``
  (the join returned: it is a learner or already a voter), then
  ``POST /api/v1/cluster/add-node`` with ``"wait": "voter"`` (idempotent) until the answer
  says it is a voter.
* ``remove``: tell the cluster object to expect the node's exit with status 0, then
  ``POST /api/v1/cluster/remove-node`` through another member until it answers 200, and
  watch the process: a removed node exits on its own about a second after the removal
  commits; one still running ``REMOVED_EXIT_S`` later is reported like a crash.
* ``transfer``: ``POST /api/v1/cluster/transfer-leader`` (the alternative when no spare is
  left).
* ``applied_config``: ``GET /api/v1/cluster/members`` answered by the leader.

Requests go to the leader when one is known (any member forwards), again after a 503 (no
leader, busy: nothing happened), a 504 or a transport failure (the change may still
complete: every request here is idempotent), until the step's deadline.  Any other answer
is a ``MembershipError`` naming the step, the status and the server's message.
"""

from __future__ import annotations

import random

from twisted.internet import defer, task
from twisted.logger import Logger

from .cluster import MEMBER, REMOVED

__all__ = ["MembershipDriver", "MembershipError", "REMOVED_EXIT_S", "STEP_TIMEOUT_S"]

log = Logger(namespace="paxoslog.chaos.membership")

STEP_TIMEOUT_S = 45.0       # one add (start, join, catch up, promotion) or one removal
REMOVED_EXIT_S = 15.0       # a removed node exits about 1 s after its removal commits
_RETRY_S = 0.15
_CALL_TIMEOUT_S = 12.0      # the server gives a membership request 4 request timeouts


class MembershipError(Exception):
    """A step of a membership change failed; the message says which and why."""


def _sleep(reactor, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, max(0.0, seconds), lambda: None)


class MembershipDriver:
    """Performs membership steps on ``cluster`` (chaos/cluster.py) through ``client``.

    ``addresses``: node id -> (peer, api) as that node's conf names them (the peer address
    is the node's proxy listener).  ``on_change()`` is called whenever the set of members
    changed (the run points the workload at the new members)."""

    def __init__(self, reactor, cluster, client, observer, timeline, clock,
                 addresses: dict[int, tuple[str, str]], on_change=None) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.client = client
        self.observer = observer
        self.timeline = timeline
        self.clock = clock
        self.addresses = dict(addresses)
        self.on_change = on_change
        self._exit_watches: dict[int, tuple] = {}

    def now(self) -> float:
        return round(self.clock(), 3)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ requests

    def _target(self, rng: random.Random, avoid: set) -> int | None:
        running = [n for n in self.cluster.running_nodes()
                   if n not in avoid and self.cluster.status_of(n) == MEMBER]
        leader = self.observer.leader()
        if leader in running:
            return leader
        return rng.choice(running) if running else None

    async def call(self, path: str, body: dict, deadline: float, rng: random.Random,
                   avoid: set = frozenset(), what: str = "") -> tuple[int, dict]:
        """POST ``body`` to a member until a final answer: (node asked, body of the 200).
        MembershipError on a refusal or at ``deadline``."""
        last = "no member was running"
        while True:
            node = self._target(rng, set(avoid))
            if node is not None:
                timeout = max(1.0, min(_CALL_TIMEOUT_S, deadline - self.clock()))
                try:
                    response = await self.client.call("POST", node, path, body,
                                                      timeout_s=timeout)
                except Exception as exc:  # transport failure: idempotent, ask again
                    last = f"node {node}: {type(exc).__name__}"
                else:
                    if response.status == 200 and isinstance(response.body, dict):
                        return node, response.body
                    error = response.field("error")
                    message = str(response.field("message") or "")[:200]
                    last = f"node {node} answered {response.status} {error}: {message}"
                    # 409 naming unreachable voters: the change would leave no live
                    # quorum (the admin's strict check); a fault ends, so ask again.
                    waiting = response.status == 409 and \
                        response.field("unreachable") is not None
                    if response.status not in (503, 504, 410) and not waiting:
                        raise MembershipError(f"{what or path}: {last}")
            if self.clock() >= deadline:
                raise MembershipError(f"{what or path}: no answer before the deadline "
                                      f"(last: {last})")
            await _sleep(self.reactor, _RETRY_S)

    async def applied_config(self, rng: random.Random, timeout_s: float = 10.0) -> dict | None:
        """``applied_config`` ({"voters", "outgoing", "learners"}) as the *leader* reports it
        (``node``, ``leader``: who answered), or None when no node answered as the leader
        within ``timeout_s``.  Only the leader's view counts: a node that restarted and
        has not caught up reports an old configuration (the initial one at first)."""
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            node = self._target(rng, set())
            if node is not None:
                try:
                    response = await self.client.call("GET", node, "/api/v1/cluster/members",
                                                      None, timeout_s=3.0)
                except Exception:  # ask again (another node, or after a pause)
                    response = None
                if response is not None and response.status == 200 and \
                        isinstance(response.field("applied_config"), dict) and \
                        response.field("leader") == node:
                    body = response.body
                    return {"node": node, "leader": node,
                            **{k: sorted(v) for k, v in body["applied_config"].items()}}
            await _sleep(self.reactor, _RETRY_S)
        return None

    # ------------------------------------------------------------------ steps

    async def add(self, node: int, step: dict, rng: random.Random) -> None:
        """Start spare ``node`` with --join, wait until it is a voter; fills ``step``
        (``up``: the node answers /health, so its join returned and it was a learner by
        then at the latest; ``voter``: add-node with wait=voter answered)."""
        deadline = self.clock() + STEP_TIMEOUT_S
        members = [m for m in self.cluster.members() if self.cluster.alive(m)]
        join = ",".join(self.client.base_url(m) for m in members)
        process = self.cluster.start(node, join=join)
        step["join_via"] = members
        # The node listens only once its join returned (it is a learner by then).
        while True:
            if not process.running:
                raise MembershipError(f"node {node} exited while joining (code "
                                      f"{process.exit_code}, signal {process.exit_signal}; "
                                      f"see logs/n{node}.log)")
            try:
                response = await self.client.health(node, timeout_s=0.5)
            except Exception:  # not listening yet
                response = None
            if response is not None and response.status in (200, 503):
                break
            if self.clock() >= deadline:
                raise MembershipError(f"node {node} did not answer /health within "
                                      f"{STEP_TIMEOUT_S:.0f}s of its start (joining)")
            await _sleep(self.reactor, 0.05)
        step["up"] = self.now()
        self.timeline.add("member-up", node=node)
        peer, api = self.addresses[node]
        asked, body = await self.call(
            "/api/v1/cluster/add-node",
            {"node_id": node, "peer": peer, "api": api, "wait": "voter"},
            deadline, rng, avoid={node}, what=f"adding node {node}")
        if body.get("role") != "voter":
            raise MembershipError(f"adding node {node}: add-node with wait=voter answered role "
                                  f"{body.get('role')!r}")
        step["voter"] = self.now()
        step["asked"] = asked
        self.cluster.set_status(node, MEMBER)
        self.timeline.add("member-voter", node=node, voters=body.get(
            "applied_config", {}).get("voters"))
        self._changed()

    async def remove(self, node: int, step: dict, rng: random.Random) -> None:
        """Remove ``node``; fills ``step`` (``done``, later ``exited``/``exit_code``)."""
        deadline = self.clock() + STEP_TIMEOUT_S
        self.cluster.expect_exit(node, code=0)
        try:
            asked, body = await self.call("/api/v1/cluster/remove-node", {"node_id": node},
                                          deadline, rng, avoid={node},
                                          what=f"removing node {node}")
        except MembershipError:
            config = await self.applied_config(rng)
            if config is None or node in config["voters"] + config["outgoing"] + \
                    config["learners"]:
                self.cluster.unexpect_exit(node)
                raise
            asked, body = config["node"], {"leader": config["leader"]}
            step["note"] = "the request failed, but the node is no longer a member"
        step["done"] = self.now()
        step["asked"] = asked
        step["leader_after"] = body.get("leader")
        self.mark_removed(node, step)

    def mark_removed(self, node: int, step: dict) -> None:
        """``node`` is out of the configuration: stop using it and watch it exit."""
        self.cluster.set_status(node, REMOVED)
        self.timeline.add("member-removed", node=node)
        self._changed()
        process = self.cluster.nodes[node].process
        if process is None:
            return

        def ended(result):
            code, sig = result
            step["exited"] = self.now()
            step["exit_code"] = code
            if sig is not None:
                step["exit_signal"] = sig
            watch = self._exit_watches.pop(node, None)
            if watch is not None and watch[0].active():
                watch[0].cancel()
            return result

        timer = self.reactor.callLater(REMOVED_EXIT_S, self._exit_overdue, node, process, step)
        self._exit_watches[node] = (timer, process, step)
        process.ended.addCallback(ended)

    def _exit_overdue(self, node: int, process, step: dict) -> None:
        self._exit_watches.pop(node, None)
        if not process.running:
            return
        why = (f"removed at t={step.get('done')}s but still running {REMOVED_EXIT_S:.0f}s "
               "later (a removed node exits on its own about 1 s after its removal commits)")
        step["exit"] = "overdue: killed"
        self.cluster.note_unexpected(node, why)
        self.cluster.kill(node)

    def finish(self) -> None:
        """End of the run: a removed node still running (its timer pending) is overdue if
        its removal is older than ``REMOVED_EXIT_S``; the timers are cancelled."""
        for node, (timer, process, step) in list(self._exit_watches.items()):
            if timer.active():
                timer.cancel()
            self._exit_watches.pop(node, None)
            if process.running and self.clock() - (step.get("done") or 0) > REMOVED_EXIT_S:
                self._exit_overdue(node, process, step)

    async def transfer(self, target: int, rng: random.Random) -> dict:
        deadline = self.clock() + STEP_TIMEOUT_S
        _, body = await self.call("/api/v1/cluster/transfer-leader", {"node_id": target},
                                  deadline, rng, what=f"transferring leadership to {target}")
        return body

    async def abandon_join(self, node: int, rng: random.Random) -> str:
        """A spare whose add failed: remove it when the configuration has it (an id is
        never reused), else stop its process.  Returns what was done."""
        config = await self.applied_config(rng)
        in_config = config is not None and node in (config["voters"] + config["outgoing"]
                                                    + config["learners"])
        if config is not None and node in config["voters"] and not config["outgoing"]:
            self.cluster.set_status(node, MEMBER)
            self._changed()
            return f"node {node} is a voter after all"
        if in_config:
            step: dict = {"step": "remove", "node": node, "start": self.now()}
            await self.remove(node, step, rng)
            return f"removed the half-joined node {node}"
        await self.cluster.kill(node)
        self.cluster.set_status(node, REMOVED)
        self._changed()
        return f"stopped node {node} (not in the configuration" + \
            (")" if config is not None else "; membership unknown)")
