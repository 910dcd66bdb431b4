"""HTTP calls to the nodes (treq over persistent keep-alive connections).

Every call is one attempt: ``call`` fires with a ``Reply`` of any status or fails with the
transport's exception.  Retrying, and deciding what a failure means for an operation's
outcome, is the retry planner's job (paxoslog/retry.py), driven by the workload through
``paxoslog.client.drive_plan``, the same rules the library clients follow.  The pool never
retries on its own (``retryAutomatically`` off): a resend the planner did not ask for would
be invisible in the history.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from twisted.internet import defer
from twisted.web.client import HTTPConnectionPool

from paxoslog.client import http_client, send_once
from paxoslog.retry import Reply

__all__ = ["ApiClient", "ApiResponse", "CONNECT_TIMEOUT_S", "query_path"]

CONNECT_TIMEOUT_S = 1.0

ApiResponse = Reply          # status, body, retry_after_s, field(name)


class ApiClient:
    """Calls to the API of each node; ``endpoints`` maps node id -> "127.0.0.1:port"."""

    def __init__(self, reactor, endpoints: dict[int, str], connections_per_node: int = 64,
                 cafile: str | None = None) -> None:
        """``cafile``: the cluster CA; the nodes then speak HTTPS."""
        self.reactor = reactor
        self.endpoints = dict(endpoints)
        self.scheme = "https" if cafile else "http"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = connections_per_node
        self.pool.retryAutomatically = False
        self.http = http_client(reactor, self.pool, CONNECT_TIMEOUT_S, cafile)

    def base_url(self, node: int) -> str:
        return f"{self.scheme}://{self.endpoints[node]}"

    def url(self, node: int, path: str) -> str:
        return f"{self.base_url(node)}{path}"

    def call(self, method: str, node: int, path: str, body: object = None,
             timeout_s: float = 5.0) -> defer.Deferred:
        """Fires with a ``Reply`` (any status), or fails with the transport error
        (``defer.TimeoutError`` after ``timeout_s``, headers and body included)."""
        payload = json.dumps(body).encode() if body is not None else None
        return send_once(self.http, self.reactor, method, self.url(node, path), payload,
                         timeout_s)

    def propose(self, node: int, body: dict, timeout_s: float) -> defer.Deferred:
        return self.call("POST", node, "/api/v1/consensus/propose", body, timeout_s)

    def query(self, node: int, key: str, timeout_s: float,
              consistency: str = "linearizable") -> defer.Deferred:
        return self.call("GET", node, query_path(key, consistency), None, timeout_s)

    def query_prefix(self, node: int, prefix: str, timeout_s: float,
                     consistency: str = "stale", limit: int = 10_000) -> defer.Deferred:
        path = (f"/api/v1/consensus/query?prefix={quote(prefix, safe='')}&limit={limit}"
                f"&consistency={consistency}")
        return self.call("GET", node, path, None, timeout_s)

    def status(self, node: int, timeout_s: float, hashes: bool = False) -> defer.Deferred:
        """``hashes``: ask for ``state_hashes`` too (the node encodes every state machine)."""
        path = "/api/v1/cluster/status" + ("?hashes=1" if hashes else "")
        return self.call("GET", node, path, None, timeout_s)

    def health(self, node: int, timeout_s: float) -> defer.Deferred:
        return self.call("GET", node, "/health", None, timeout_s)

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()


def query_path(key: str, consistency: str = "linearizable") -> str:
    path = f"/api/v1/consensus/query?key={quote(key, safe='')}"
    if consistency != "linearizable":
        path += f"&consistency={consistency}"
    return path
