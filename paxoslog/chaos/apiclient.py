"""HTTP calls to the nodes (treq over persistent keep-alive connections), and what their
failures mean for an operation's outcome.

The client never retries on its own (a retried write that the server executed twice would
look like a server bug, etcd #14890): every call is one attempt, and ``classify_failure``
says whether the request could have reached the server.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import treq
from twisted.internet import defer, error as tx_error
from twisted.web import _newclient
from twisted.web.client import Agent, HTTPConnectionPool

from .history import FAIL, UNKNOWN

__all__ = ["ApiClient", "ApiResponse", "classify_failure"]

CONNECT_TIMEOUT_S = 1.0


class ApiResponse:
    __slots__ = ("status", "body")

    def __init__(self, status: int, body: object) -> None:
        self.status = status
        self.body = body

    def field(self, name: str, default=None):
        return self.body.get(name, default) if isinstance(self.body, dict) else default


# Failures before any byte of the request left: the operation certainly had no effect.
_NOT_SENT = (tx_error.ConnectionRefusedError, tx_error.ConnectError,
             tx_error.ConnectingCancelledError, tx_error.DNSLookupError,
             _newclient.RequestNotSent)


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(FAIL or UNKNOWN, short reason) for an exception raised by a call."""
    if isinstance(exc, _NOT_SENT):
        return FAIL, f"not sent: {type(exc).__name__}"
    if isinstance(exc, (defer.TimeoutError, defer.CancelledError, tx_error.TimeoutError)):
        return UNKNOWN, "timeout"
    if isinstance(exc, _newclient.ResponseNeverReceived):
        reasons = getattr(exc, "reasons", []) or []
        names = ",".join(type(r.value).__name__ for r in reasons) or "?"
        return UNKNOWN, f"no response ({names})"
    if isinstance(exc, _newclient.RequestTransmissionFailed):
        return UNKNOWN, "request transmission failed"
    return UNKNOWN, f"{type(exc).__name__}: {str(exc)[:120]}"


class ApiClient:
    """Calls to the API of each node; ``endpoints`` maps node id -> "127.0.0.1:port"."""

    def __init__(self, reactor, endpoints: dict[int, str], connections_per_node: int = 64) -> None:
        self.reactor = reactor
        self.endpoints = dict(endpoints)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = connections_per_node
        self.pool.retryAutomatically = False
        self.http = treq.client.HTTPClient(Agent(reactor, connectTimeout=CONNECT_TIMEOUT_S,
                                                 pool=self.pool))

    def url(self, node: int, path: str) -> str:
        return f"http://{self.endpoints[node]}{path}"

    def call(self, method: str, node: int, path: str, body: object = None,
             timeout_s: float = 5.0) -> defer.Deferred:
        """Fires with an ``ApiResponse`` (any status), or fails with the transport error
        (``defer.TimeoutError`` after ``timeout_s``, headers and body included)."""
        d = defer.Deferred.fromCoroutine(self._call(method, node, path, body))
        d.addTimeout(timeout_s, self.reactor)
        return d

    async def _call(self, method: str, node: int, path: str, body: object) -> ApiResponse:
        kwargs = {}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"] = {b"Content-Type": [b"application/json"]}
        response = await self.http.request(method, self.url(node, path), **kwargs)
        raw = await treq.content(response)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = {"error": "unparseable", "message": raw[:200].decode("latin-1")}
        return ApiResponse(response.code, parsed)

    def propose(self, node: int, body: dict, timeout_s: float) -> defer.Deferred:
        return self.call("POST", node, "/api/v1/consensus/propose", body, timeout_s)

    def query(self, node: int, key: str, timeout_s: float,
              consistency: str = "linearizable") -> defer.Deferred:
        path = f"/api/v1/consensus/query?key={quote(key, safe='')}"
        if consistency != "linearizable":
            path += f"&consistency={consistency}"
        return self.call("GET", node, path, None, timeout_s)

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
