"""Client library: ``Client`` (Twisted, treq) and ``SyncClient`` (plain http.client, for
scripts and the CLI).  Both take a list of endpoints (``http://host:port``) and:

* prefer the leader's endpoint once known (any node accepts any request, but the leader
  saves a forwarding hop); learned from ``/api/v1/cluster/status`` and from 503 replies;
* give every write a (client_id, sequence) once, and resend the *same* pair on every retry,
  so a write is applied at most once however often it is retried (the servers keep a
  session table);
* retry 503 (no leader, not leader, busy: never applied), 504 and connection failures,
  moving to the next endpoint, with a short backoff, until the overall ``timeout``;
* raise ``UnknownOutcome`` when the deadline passes and some attempt may have reached a
  leader (the write may or may not have committed: retry with the same pair to find out),
  ``Unavailable`` when no attempt could have, ``NotFound`` for 404, and ``RequestFailed``
  for the other errors (400 bad input, ...).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import socket
import time
from urllib.parse import urlencode, urlsplit

__all__ = ["Client", "SyncClient", "ClientError", "RequestFailed", "NotFound", "Unavailable",
           "UnknownOutcome", "new_client_id"]

_BACKOFF_S = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


class ClientError(Exception):
    """Base class; ``status`` (HTTP status or None), ``code`` and ``body`` (the JSON error)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 body: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


class RequestFailed(ClientError):
    """The cluster refused the request (bad input and other non-retryable errors)."""


class NotFound(ClientError):
    """404: no such key (or endpoint)."""


class Unavailable(ClientError):
    """No endpoint answered usefully before the deadline; a write was definitely not applied
    by any attempt (every attempt was refused or answered 503)."""


class UnknownOutcome(ClientError):
    """The deadline passed after an attempt that may have reached a leader: the write may
    still commit.  Retrying with the same ``client_id``/``sequence`` is safe."""


def new_client_id() -> str:
    return f"c-{os.urandom(8).hex()}"


def _normalize(endpoint: str) -> str:
    endpoint = endpoint.strip().rstrip("/")
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    return endpoint


class _Logic:
    """What both clients share: endpoints, preference, sessions, response classification."""

    def __init__(self, endpoints, timeout: float, attempt_timeout: float,
                 client_id: str | None) -> None:
        endpoints = [_normalize(e) for e in endpoints]
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = endpoints
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.client_id = client_id or new_client_id()
        self._sequence = itertools.count(1)
        self.preferred = 0
        self.leader_endpoint: str | None = None

    def next_sequence(self) -> int:
        return next(self._sequence)

    def order(self) -> list[str]:
        first = self.leader_endpoint or self.endpoints[self.preferred % len(self.endpoints)]
        rest = [e for e in self.endpoints if e != first]
        return [first] + rest

    def write_body(self, body: dict) -> dict:
        body = dict(body)
        if body.get("client_id") is None:
            body["client_id"] = self.client_id
            body["sequence"] = self.next_sequence()
        return body

    def learn(self, body: object) -> None:
        """Remember the leader's endpoint from a status body or an error's hint."""
        if not isinstance(body, dict):
            return
        leader = body.get("leader")
        for node in body.get("nodes") or ():
            if isinstance(node, dict) and node.get("id") == leader and node.get("api"):
                self.leader_endpoint = _normalize(str(node["api"]))
                if self.leader_endpoint not in self.endpoints:
                    self.endpoints.append(self.leader_endpoint)
                return

    @staticmethod
    def error_for(status: int, body: object) -> ClientError:
        code = body.get("error") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status == 404:
            return NotFound(text, status, code, body)
        if status == 503:
            return Unavailable(text, status, code, body)
        if status == 504:
            return UnknownOutcome(text, status, code, body)
        return RequestFailed(text, status, code, body)


def _path_for_query(key: str | None, consistency: str, prefix: str | None, limit: int | None):
    params = {"consistency": consistency}
    if prefix is not None:
        params["prefix"] = prefix
        if limit is not None:
            params["limit"] = str(limit)
    else:
        params["key"] = key
    return "/api/v1/consensus/query?" + urlencode(params)


def _sm_path(name: str) -> str:
    from urllib.parse import quote
    return "/api/v1/sm/" + quote(name, safe="")


def _kv_body(op: str, key: str, value=None, **extra) -> dict:
    body = {"op": op, "key": key}
    if value is not None:
        body["value"] = value
    body.update(extra)
    return body


# ====================================================================== synchronous

class _KeyValueCalls:
    """put/delete/cas/get (and the membership calls) over ``propose`` and ``request``: results are dicts for the
    synchronous client and Deferreds firing with dicts for the Twisted one."""

    def put(self, key: str, value, **session):
        return self.propose(_kv_body("put", key, value, **session))

    def delete(self, key: str, **session):
        return self.propose(_kv_body("delete", key, **session))

    def cas(self, key: str, value, *, expected=..., expected_version: int | None = None,
            **session):
        extra = dict(session)
        if expected_version is not None:
            extra["expected_version"] = expected_version
        else:
            extra["expected"] = None if expected is ... else expected
        return self.propose(_kv_body("cas", key, value, **extra))

    def get(self, key: str, consistency: str = "linearizable"):
        return self.request("GET", _path_for_query(key, consistency, None, None))

    # Membership (idempotent: safe to retry after an unknown outcome).

    def add_node(self, node_id: int, address: str, api: str | None = None,
                 wait: str = "learner"):
        """Add ``node_id`` (peer ``address``) as a learner; ``wait="voter"`` returns once
        the leader promoted it."""
        body = {"node_id": node_id, "address": address, "wait": wait}
        if api:
            body["api"] = api
        return self.request("POST", "/api/v1/cluster/add-node", body, write=True)

    def remove_node(self, node_id: int):
        return self.request("POST", "/api/v1/cluster/remove-node", {"node_id": node_id},
                            write=True)

    def transfer_leader(self, node_id: int | None = None):
        body = {} if node_id is None else {"node_id": node_id}
        return self.request("POST", "/api/v1/cluster/transfer-leader", body, write=True)

    def members(self):
        return self.request("GET", "/api/v1/cluster/members")


class SyncClient(_KeyValueCalls, _Logic):
    """Blocking client on http.client with one keep-alive connection per endpoint."""

    def __init__(self, endpoints, *, timeout: float = 10.0, attempt_timeout: float = 3.0,
                 client_id: str | None = None) -> None:
        super().__init__(endpoints, timeout, attempt_timeout, client_id)
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _once(self, endpoint: str, method: str, path: str, payload: bytes | None,
              timeout: float) -> tuple[int, object, dict]:
        conn = self._conns.get(endpoint)
        if conn is None:
            parts = urlsplit(endpoint)
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
            self._conns[endpoint] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except BaseException:
            conn.close()
            self._conns.pop(endpoint, None)
            raise
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"error": "bad_response", "message": raw[:200].decode("latin-1")}
        return response.status, body, dict(response.getheaders())

    def request(self, method: str, path: str, body: dict | None = None, *,
                write: bool = False) -> dict:
        payload = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + self.timeout
        maybe_applied = False
        last: ClientError | None = None
        for attempt in itertools.count():
            for endpoint in self.order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    status, answer, headers = self._once(endpoint, method, path, payload,
                                                         min(self.attempt_timeout, remaining))
                except ConnectionRefusedError:
                    last = Unavailable(f"{endpoint}: connection refused")
                    self._forget(endpoint)
                    continue
                except (OSError, http.client.HTTPException, socket.timeout) as exc:
                    if write:
                        maybe_applied = True
                    last = (UnknownOutcome if write else Unavailable)(f"{endpoint}: {exc!r}")
                    self._forget(endpoint)
                    continue
                if status == 200:
                    self.preferred = self.endpoints.index(endpoint) if endpoint in self.endpoints \
                        else self.preferred
                    return answer
                error = self.error_for(status, answer)
                if status == 503:
                    self._forget(endpoint)
                    last = error
                    continue
                if status == 504:
                    maybe_applied = True
                    last = error
                    continue
                raise error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)], remaining))
        if write and maybe_applied:
            raise UnknownOutcome(f"no answer before the deadline; the write may have committed "
                                 f"(client_id={body.get('client_id')}, "
                                 f"sequence={body.get('sequence')}): {last}", 504,
                                 "outcome_unknown")
        if isinstance(last, ClientError):
            raise Unavailable(str(last), last.status, last.code, last.body)
        raise Unavailable("no endpoint answered before the deadline")

    def _forget(self, endpoint: str) -> None:
        if self.leader_endpoint == endpoint:
            self.leader_endpoint = None
        if endpoint in self.endpoints:
            self.preferred = (self.endpoints.index(endpoint) + 1) % len(self.endpoints)

    # ------------------------------------------------------------------ API

    def discover_leader(self) -> dict:
        status = self.status()
        self.learn(status)
        return status

    def propose(self, body: dict) -> dict:
        return self.request("POST", "/api/v1/consensus/propose", self.write_body(body),
                            write=True)


    def range(self, prefix: str, limit: int | None = None,
              consistency: str = "linearizable") -> dict:
        return self.request("GET", _path_for_query(None, consistency, prefix, limit))

    def sm(self, name: str, body: dict) -> dict:
        """A command for state machine ``name`` (``{"op": ..., ...}``), exactly once."""
        return self.request("POST", _sm_path(name), self.write_body(body), write=True)

    def sm_query(self, name: str, query: dict, consistency: str = "linearizable") -> dict:
        """A read of state machine ``name``: ``{"result", "index", "term", ...}``."""
        return self.request("POST", _sm_path(name), {"query": query,
                                                     "consistency": consistency})

    def status(self) -> dict:
        return self.request("GET", "/api/v1/cluster/status")

    def entries(self, start: int | None = None, end: int | None = None) -> dict:
        params = {}
        if start is not None:
            params["start_index"] = start
        if end is not None:
            params["end_index"] = end
        path = "/api/v1/log/entries" + ("?" + urlencode(params) if params else "")
        return self.request("GET", path)

    def status_of(self, endpoint: str, timeout: float = 1.0) -> dict:
        """One node's own status, no retries (``cluster status`` asks each node)."""
        status, answer, _ = self._once(_normalize(endpoint), "GET", "/api/v1/cluster/status",
                                       None, timeout)
        if status != 200:
            raise self.error_for(status, answer)
        return answer


# ====================================================================== Twisted

class Client(_KeyValueCalls, _Logic):
    """Asynchronous client on treq; every method returns a Deferred."""

    def __init__(self, endpoints, *, reactor, timeout: float = 10.0,
                 attempt_timeout: float = 3.0, client_id: str | None = None,
                 pool=None) -> None:
        super().__init__(endpoints, timeout, attempt_timeout, client_id)
        import treq
        from twisted.web.client import HTTPConnectionPool
        self.reactor = reactor
        self._treq = treq
        self.pool = pool or HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16

    def close(self):
        return self.pool.closeCachedConnections()

    def request(self, method: str, path: str, body: dict | None = None, *, write: bool = False):
        from twisted.internet import defer, error as terror, task
        from twisted.web._newclient import ResponseNeverReceived, RequestTransmissionFailed

        @defer.inlineCallbacks
        def run():
            payload = json.dumps(body).encode() if body is not None else None
            deadline = self.reactor.seconds() + self.timeout
            maybe_applied = False
            last: ClientError | None = None
            attempt = 0
            while True:
                for endpoint in self.order():
                    remaining = deadline - self.reactor.seconds()
                    if remaining <= 0:
                        break
                    try:
                        response = yield self._treq.request(
                            method, endpoint + path, data=payload, pool=self.pool,
                            reactor=self.reactor, timeout=min(self.attempt_timeout, remaining),
                            headers={b"Content-Type": [b"application/json"]})
                        raw = yield self._treq.content(response)
                    except terror.ConnectionRefusedError:
                        last = Unavailable(f"{endpoint}: connection refused")
                        self._forget(endpoint)
                        continue
                    except (terror.ConnectError, terror.ConnectingCancelledError,
                            RequestTransmissionFailed) as exc:
                        last = Unavailable(f"{endpoint}: {exc!r}")     # never sent
                        self._forget(endpoint)
                        continue
                    except (defer.CancelledError, ResponseNeverReceived, terror.TimeoutError,
                            OSError, terror.ConnectionLost, Exception) as exc:
                        if write:
                            maybe_applied = True
                        last = UnknownOutcome(f"{endpoint}: {exc!r}")
                        self._forget(endpoint)
                        continue
                    try:
                        answer = json.loads(raw) if raw else None
                    except ValueError:
                        answer = None
                    if response.code == 200:
                        return answer
                    error = self.error_for(response.code, answer)
                    if response.code == 503:
                        self._forget(endpoint)
                        last = error
                        continue
                    if response.code == 504:
                        maybe_applied = True
                        last = error
                        continue
                    raise error
                remaining = deadline - self.reactor.seconds()
                if remaining <= 0:
                    break
                yield task.deferLater(self.reactor,
                                      min(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)],
                                          remaining), lambda: None)
                attempt += 1
            if write and maybe_applied:
                raise UnknownOutcome(f"no answer before the deadline; the write may have "
                                     f"committed: {last}", 504, "outcome_unknown")
            if isinstance(last, ClientError):
                raise Unavailable(str(last), last.status, last.code, last.body)
            raise Unavailable("no endpoint answered before the deadline")
        return run()

    def _forget(self, endpoint: str) -> None:
        if self.leader_endpoint == endpoint:
            self.leader_endpoint = None
        if endpoint in self.endpoints:
            self.preferred = (self.endpoints.index(endpoint) + 1) % len(self.endpoints)

    def discover_leader(self):
        d = self.status()

        def learned(status):
            self.learn(status)
            return status
        return d.addCallback(learned)

    def propose(self, body: dict):
        return self.request("POST", "/api/v1/consensus/propose", self.write_body(body),
                            write=True)


    def status(self):
        return self.request("GET", "/api/v1/cluster/status")

    def entries(self, start: int | None = None, end: int | None = None):
        params = {}
        if start is not None:
            params["start_index"] = start
        if end is not None:
            params["end_index"] = end
        return self.request("GET", "/api/v1/log/entries" +
                            ("?" + urlencode(params) if params else ""))
