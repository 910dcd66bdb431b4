"""``ClusterOverview``: ``GET /api/v1/cluster/overview``, every member's own status in one
answer, for the dashboard (and any node serves it).

The node asks each member it is connected to for its status over the authenticated peer
link (a ``status`` forward: no extra port, no cross-origin browser requests, the same
security as the rest of the peer traffic) and waits at most ``timeout_s`` for the answers;
a member that does not answer in time, or is not connected, is listed as unreachable with
the reason.  Each status carries the member's metrics and its recent events (leader and
membership changes, see events.py), so the dashboard computes rates and draws the timeline
from one request per poll.
"""

from __future__ import annotations

import time
from typing import Callable

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["ClusterOverview", "first_answer"]


def first_answer(d: defer.Deferred, timeout_s: float, reactor) -> defer.Deferred:
    """A Deferred that fires with ``d``'s result, or fails with ``defer.TimeoutError``
    after ``timeout_s``; ``d`` itself is never cancelled (its owner may still fire it)."""
    out = defer.Deferred()

    def expire() -> None:
        if not out.called:
            out.errback(defer.TimeoutError(f"no answer within {timeout_s:g}s"))
    timer = reactor.callLater(timeout_s, expire)

    def answered(result):
        if timer.active():
            timer.cancel()
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)
        return None
    d.addBoth(answered)
    return out


class ClusterOverview:
    """``own_status()``: this node's detailed status (views.detailed_status);
    ``forward(peer, op, payload)``: the peer transport's; ``connected(peer)``."""

    def __init__(self, node_id: int, own_status: Callable[[], dict], forward: Callable,
                 connected: Callable[[int], bool], reactor, timeout_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.own_status = own_status
        self.forward = forward
        self.connected = connected
        self.reactor = reactor
        self.timeout_s = timeout_s
        self.clock = clock

    @defer.inlineCallbacks
    def collect(self):
        own = self.own_status()
        asked = {}
        for node in own["nodes"]:
            peer = node["id"]
            if peer == self.node_id:
                continue
            if not self.connected(peer):
                asked[peer] = None
                continue
            asked[peer] = first_answer(self.forward(peer, "status", {}), self.timeout_s,
                                       self.reactor)
        nodes = [{"id": self.node_id, "reachable": True, "status": own, "error": None}]
        for peer, d in asked.items():
            entry = {"id": peer, "reachable": False, "status": None, "error": None}
            if d is None:
                entry["error"] = "no peer connection"
            else:
                try:
                    status, body = yield d
                except Exception as exc:
                    entry["error"] = str(exc) or type(exc).__name__
                else:
                    if status == 200 and isinstance(body, dict):
                        entry.update(reachable=True, status=body)
                    else:
                        entry["error"] = f"answered {status}"
            nodes.append(entry)
        nodes.sort(key=lambda n: n["id"])
        return {"served_by": self.node_id, "time": round(self.clock(), 3), "nodes": nodes}
