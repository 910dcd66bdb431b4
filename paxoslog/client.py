"""Client library: ``Client`` (Twisted, treq) and ``SyncClient`` (plain http.client, for
scripts and the CLI).  Both take a list of endpoints (``http://host:port``, or
``https://host:port`` verified against the CA certificate in ``cafile``) and:

* prefer the leader's endpoint once known (any node accepts any request, but the leader
  saves a forwarding hop); learned from ``/api/v1/cluster/status`` and from 503 replies;
* give every write a (client_id, sequence) once, and resend the *same* pair on every retry,
  so a write is applied at most once however often it is retried (the servers keep a
  session table);
* retry, move between endpoints and decide what a failed request amounts to with the one
  retry planner, paxoslog/retry.py (its docstring has the rules), until the overall
  ``timeout``; each client is only a driver: it performs the attempts the planner asks for
  and sorts its transport's exceptions into not-connected / sent / timed-out;
* raise ``UnknownOutcome`` when a write may have reached a server and no later attempt
  settled it (the write may or may not have committed: retry with the same pair to find
  out), ``Unavailable`` when no attempt could have applied it (or a read failed),
  ``NotFound`` for 404, and ``RequestFailed`` for the other refusals (400 bad input, ...),
  among them ``Unauthorized`` (401: no token, or a bad one) and ``Forbidden`` (403: the
  token's role is too low, or the client id is not the token's), never retried.

``token``: a bearer token (``paxoslog auth add-token``), sent as ``Authorization: Bearer``
with every request.  ``client_id``: the session's client id; one ending in ``*`` is a
prefix (a token bound to ``"app-*"``) and the client appends random hex to it.

Batches (``batch``, ``put_many``) go to ``POST /api/v1/consensus/batch`` (``SyncClient``)
or as pipelined batch requests over one WebSocket connection (``Client.put_many``): one
log command per batch, one (client_id, sequence) per batch, resent unchanged after a lost
answer, so each batch applies exactly once.  Streams (``tail``, ``watch``) use the
WebSocket endpoint and resume by themselves on another node (paxoslog/wsclient.py).

Size: the sync and the Twisted client in one module because they share the request logic
(``_Calls``) and the retry planner's use; the WebSocket side is wsclient.py, the recipes
recipes.py.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import threading
import time
from urllib.parse import quote, urlencode, urlsplit

from .retry import (Attempt, Endpoints, Finish, NoReply, Reply, Request, RetryPlan, RetryPolicy,
                    TransportFailure, Verdict, parse_retry_after)

__all__ = ["Client", "SyncClient", "ClientError", "RequestFailed", "NotFound", "Unavailable",
           "UnknownOutcome", "Unauthorized", "Forbidden", "new_client_id", "first_sequence",
           "classify_twisted_failure", "send_once", "drive_plan"]

# Writes without a session that are safe to resend: adding a member twice adds it once,
# removing a removed node answers "removed", a second leader transfer is harmless.
_IDEMPOTENT_WRITES = frozenset({"/api/v1/cluster/add-node", "/api/v1/cluster/remove-node",
                                "/api/v1/cluster/transfer-leader"})
_CONNECT_TIMEOUT_MAX_S = 1.0


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


class Unauthorized(RequestFailed):
    """401: the request needs a bearer token, or the one sent is unknown or revoked."""


class Forbidden(RequestFailed):
    """403: the token's role does not allow the request, the client id belongs to another
    token, or the server refused the request's Origin/Host."""


class NotFound(ClientError):
    """404: no such key (or endpoint)."""


class Unavailable(ClientError):
    """No endpoint answered usefully before the deadline; a write was definitely not applied
    by any attempt (every attempt was refused or answered 503)."""


class UnknownOutcome(ClientError):
    """The deadline passed after an attempt that may have reached a leader: the write may
    still commit.  Retrying with the same ``client_id``/``sequence`` is safe."""


def new_client_id(prefix: str = "c-") -> str:
    return f"{prefix}{os.urandom(8).hex()}"


def _client_id(client_id: str | None) -> str:
    if client_id is None:
        return new_client_id()
    if client_id.endswith("*"):                 # a prefix a token is bound to
        return new_client_id(client_id[:-1])
    return client_id


def first_sequence(client_id: str | None, wall_ns=time.time_ns) -> int:
    """Where a client's sequences start.  A fresh random id starts at 1.  A fixed id (one a
    token is bound to, or an application's own) may have been used by an earlier run of
    the same client, whose results the cluster still holds for ``session_idle_ms``: a
    restarted client that began at 1 again would be answered that run's results for its
    first writes, which would then never be applied.  So a fixed id's sequences start at the
    wall clock in microseconds: above any earlier run's, unless that run wrote more than
    once a microsecond on average or the clock stepped back.  (Two live clients must not
    share one id.)"""
    if client_id is None or client_id.endswith("*"):
        return 1
    return wall_ns() // 1000


def _auth_header(token: str | None) -> str | None:
    if token is None:
        return None
    token = token.strip()
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("the token must be one line of text")
    return f"Bearer {token}"


def _normalize(endpoint: str, scheme: str = "http") -> str:
    endpoint = endpoint.strip().rstrip("/")
    if "://" not in endpoint:
        endpoint = f"{scheme}://{endpoint}"
    return endpoint


def _ssl_context(cafile: str | None):
    """Trust ``cafile`` only (the cluster CA), or the system store without one."""
    import ssl
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _parse_body(raw: bytes) -> object:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"error": "bad_response", "message": raw[:200].decode("latin-1")}


OPEN_SEQUENCES_MAX = 4096   # an unknown outcome this far behind the newest write is given up


class AnsweredSequences:
    """Which of a session's sequences are settled: ``through`` is the highest sequence
    up to which every one issued is (sent as ``acked``); sequences start after ``through``.
    A write whose outcome is unknown (``unknown()``) stays open, since the caller may resend
    it to learn it, until ``OPEN_SEQUENCES_MAX`` later writes were issued: by then the
    cluster has dropped its result anyway (it keeps each client's latest
    ``session_results_max``, 256 by default), so a resend could only be refused as stale,
    and keeping it open would stop ``acked`` and keep every later sequence here.  A write
    still in flight is never given up.  Thread-safe: a ``SyncClient`` may be shared by
    threads."""

    def __init__(self, through: int = 0) -> None:
        self._lock = threading.Lock()
        self._open: set[int] = set()       # issued, not settled
        self._unknown: set[int] = set()    # open, its outcome unknown (not in flight)
        self._settled: set[int] = set()    # settled, above ``through``
        self._issued_max = through
        self.through = through

    def issued(self, sequence: int) -> None:
        with self._lock:
            self._open.add(sequence)
            self._issued_max = max(self._issued_max, sequence)
            horizon = self._issued_max - OPEN_SEQUENCES_MAX
            if self._unknown and min(self._unknown) <= horizon:
                for old in [s for s in self._unknown if s <= horizon]:
                    self._settle(old)
                self._advance()

    def unknown(self, sequence: object) -> None:
        """The write ``sequence`` ended without a known outcome."""
        with self._lock:
            if sequence in self._open:
                self._unknown.add(sequence)

    def settled(self, sequence: object) -> None:
        with self._lock:
            if sequence not in self._open:
                return
            self._settle(sequence)
            self._advance()

    def _settle(self, sequence: int) -> None:
        self._open.discard(sequence)
        self._unknown.discard(sequence)
        self._settled.add(sequence)

    def _advance(self) -> None:
        while self.through + 1 in self._settled:
            self.through += 1
            self._settled.discard(self.through)


class _Logic:
    """What both clients share: the endpoint book, sessions, the retry plan of a request
    and what its ``Finish`` means for the caller (a body, or an exception)."""

    def __init__(self, endpoints, timeout: float, attempt_timeout: float,
                 client_id: str | None, token: str | None = None) -> None:
        self.book = Endpoints([_normalize(e) for e in endpoints])
        # Addresses learned from the cluster ("host:port") take the scheme we were given.
        self.scheme = "https" if self.book.endpoints[0].startswith("https://") else "http"
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.client_id = _client_id(client_id)
        self._authorization = _auth_header(token)
        first = first_sequence(client_id)
        self._sequence = itertools.count(first)
        self.answered = AnsweredSequences(first - 1)

    @property
    def endpoints(self) -> list[str]:
        return self.book.endpoints

    @property
    def leader_endpoint(self) -> str | None:
        return self.book.leader

    @property
    def preferred(self) -> int:
        return self.book.preferred

    def next_sequence(self) -> int:
        return next(self._sequence)

    def order(self) -> list[str]:
        return self.book.order()

    def write_body(self, body: dict) -> dict:
        """``body`` with this client's session: a new sequence, and ``acked``, the sequence
        up to which every write of ours has its answer (the cluster then forgets those
        results).  A body that names its own session is sent as it is."""
        body = dict(body)
        if body.get("client_id") is None:
            body["client_id"] = self.client_id
            body["sequence"] = sequence = self.next_sequence()
            self.answered.issued(sequence)
            acked = self.answered.through
            if acked:
                body["acked"] = acked
        return body

    def learn(self, body: object) -> None:
        """Remember every node's endpoint and who leads, from a status body."""
        if not isinstance(body, dict):
            return
        for node in body.get("nodes") or ():
            if isinstance(node, dict) and isinstance(node.get("id"), int) and node.get("api"):
                self.book.node_ids[node["id"]] = _normalize(str(node["api"]), self.scheme)
        self.book.note_leader(body.get("leader"))

    def plan(self, path: str, body: object, write: bool) -> RetryPlan:
        if write:
            session = isinstance(body, dict) and body.get("client_id") is not None \
                and body.get("sequence") is not None
            request = Request.write_with(session=session,
                                         idempotent=path.partition("?")[0] in _IDEMPOTENT_WRITES)
        else:
            request = Request.read()
        policy = RetryPolicy(timeout_s=self.timeout, attempt_timeout_s=self.attempt_timeout)
        return RetryPlan(request, policy, self.book)

    def outcome(self, finish: Finish, body: object) -> object:
        """The answer's body, or the exception the finished request amounts to."""
        reply = finish.reply
        if isinstance(body, dict) and body.get("client_id") == self.client_id:
            if finish.verdict is Verdict.UNKNOWN:
                # Stays open: the caller may resend the same pair to learn the outcome.
                self.answered.unknown(body.get("sequence"))
            else:
                # Settled: answered, refused, or not applied anywhere (a late copy is
                # then refused as stale once acked).
                self.answered.settled(body.get("sequence"))
        if finish.verdict is Verdict.ANSWERED:
            return reply.body
        if finish.verdict is Verdict.REFUSED:
            raise self.error_for(reply.status, reply.body)
        last = reply.body if reply is not None else None
        tries = f"{finish.attempts} attempt{'s' if finish.attempts != 1 else ''}"
        if finish.verdict is Verdict.UNKNOWN:
            session = ""
            if isinstance(body, dict) and body.get("client_id") is not None:
                session = (f" (client_id={body.get('client_id')}, "
                           f"sequence={body.get('sequence')})")
            raise UnknownOutcome(f"outcome unknown: the write may have been applied{session}; "
                                 f"{tries}, last: {finish.reason}", 504, "outcome_unknown",
                                 last)
        raise Unavailable(f"not applied: no endpoint answered usefully ({tries}, last: "
                          f"{finish.reason})", reply.status if reply else None,
                          reply.field("error") if reply else None, last)

    @staticmethod
    def error_for(status: int, body: object) -> ClientError:
        code = body.get("error") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status == 404:
            return NotFound(text, status, code, body)
        if status == 401:
            return Unauthorized(text + " (give a token: --token-file, $PAXOSLOG_TOKEN or "
                                "--token)", status, code, body)
        if status == 403:
            return Forbidden(text, status, code, body)
        if status == 503 and Reply(status, body).future_revision:
            return RequestFailed(text, status, code, body)     # no node has it yet
        if status == 503:
            return Unavailable(text, status, code, body)
        if status == 504:
            return UnknownOutcome(text, status, code, body)
        return RequestFailed(text, status, code, body)


def _path_for_query(key: str | None, consistency: str, prefix: str | None, limit: int | None,
                    min_revision: int | None = None, after: str | None = None):
    params = {"consistency": consistency}
    if min_revision is not None:
        params["min_revision"] = str(min_revision)
    if prefix is not None:
        params["prefix"] = prefix
        if limit is not None:
            params["limit"] = str(limit)
        if after is not None:
            params["after"] = after
    else:
        params["key"] = key
    return "/api/v1/consensus/query?" + urlencode(params)


def _sm_path(name: str) -> str:
    return "/api/v1/sm/" + quote(name, safe="")


def _kv_body(op: str, key: str, value=None, **extra) -> dict:
    body = {"op": op, "key": key}
    if value is not None:
        body["value"] = value
    body.update(extra)
    return body


class _Calls:
    """The API over ``request``: results are dicts for the synchronous client and Deferreds
    firing with dicts for the Twisted one."""

    def propose(self, body: dict):
        """A kv write, exactly once (a session is added unless ``body`` has one)."""
        return self.request("POST", "/api/v1/consensus/propose", self.write_body(body),
                            write=True)

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

    def batch(self, ops: list, **session):
        """Many writes as one log command (``[{"op", "key", ...} | {"sm", "op", ...}]``),
        applied in order at one index: ``{"index", "results": [...], ...}``; exactly once
        (one session pair for the whole batch)."""
        body = {"ops": ops, **session}
        return self.request("POST", "/api/v1/consensus/batch", self.write_body(body),
                            write=True)

    def get(self, key: str, consistency: str = "linearizable", min_revision: int | None = None):
        """The key's record; ``index`` in the answer is the revision it was served at.
        ``min_revision``: refuse (503 revision_not_reached) to be served below it: read
        your own writes from a follower with ``stale`` (a lagging node's refusal is retried
        until the timeout; a future revision raises ``RequestFailed`` at once)."""
        return self.request("GET", _path_for_query(key, consistency, None, None, min_revision))

    def range(self, prefix: str, limit: int | None = None, consistency: str = "linearizable",
              min_revision: int | None = None, after: str | None = None):
        """One page of the keys starting with ``prefix``; ``after``: the ``cursor`` of the
        previous page (present while ``more`` is true)."""
        return self.request("GET", _path_for_query(None, consistency, prefix, limit,
                                                   min_revision, after))

    def txn(self, compare: list, success: list, failure: list = (), **session):
        """A transaction (compares, then one op list), exactly once: the committed body,
        whose ``result`` is ``{"succeeded", "results"}``."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure),
                **session}
        return self.request("POST", "/api/v1/consensus/txn", self.write_body(body), write=True)

    def lease_grant(self, ttl_ms: int, **session):
        """A new lease: the committed body, ``result`` ``{"id", "ttl_ms"}``."""
        return self.request("POST", "/api/v1/lease/grant",
                            self.write_body({"ttl_ms": ttl_ms, **session}), write=True)

    def lease_revoke(self, lease: int, **session):
        return self.request("POST", "/api/v1/lease/revoke",
                            self.write_body({"id": lease, **session}), write=True)

    def lease_keepalive(self, lease: int):
        """Renew ``lease`` (NotFound once it expired): ``{"id", "ttl_ms", "remaining_ms"}``.
        Idempotent, so retried like a read."""
        return self.request("POST", "/api/v1/lease/keepalive", {"id": lease})

    def lease_ttl(self, lease: int, keys: bool = False):
        return self.request("GET", f"/api/v1/lease/ttl?id={int(lease)}" +
                            ("&keys=1" if keys else ""))

    def delete_range(self, prefix: str, limit: int | None = None, after: str | None = None,
                     **session):
        """Delete up to ``limit`` keys starting with ``prefix`` (one log entry); repeat with
        ``after`` = the answer's ``result.cursor`` while ``result.more``."""
        body = {"op": "delete_range", "prefix": prefix, **session}
        if limit is not None:
            body["limit"] = limit
        if after is not None:
            body["after"] = after
        return self.sm("kv", body)

    def sm(self, name: str, body: dict):
        """A command for state machine ``name`` (``{"op": ..., ...}``), exactly once."""
        return self.request("POST", _sm_path(name), self.write_body(body), write=True)

    def sm_query(self, name: str, query: dict, consistency: str = "linearizable"):
        """A read of state machine ``name``: ``{"result", "index", "term", ...}``."""
        return self.request("POST", _sm_path(name), {"query": query,
                                                     "consistency": consistency})

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

    # Membership (idempotent: resent after an unknown outcome, see _IDEMPOTENT_WRITES).

    def add_node(self, node_id: int, address: str, api: str | None = None,
                 wait: str = "learner"):
        """Add ``node_id`` (peer ``address``) as a learner; ``wait="voter"`` returns once
        the leader promoted it."""
        body = {"node_id": node_id, "peer": address, "wait": wait}
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


# ====================================================================== synchronous

def describe_outcome(outcome: Reply | NoReply) -> str:
    """A failed attempt in a few words: ``503 unavailable: no leader`` or ``not-connected``."""
    if isinstance(outcome, Reply):
        body = outcome.body if isinstance(outcome.body, dict) else {}
        text = f"{outcome.status} {body.get('error', '')}".rstrip()
        message = body.get("message")
        return f"{text}: {str(message)[:120]}" if message else text
    return f"{outcome.kind.value}" + (f" ({outcome.detail[:120]})" if outcome.detail else "")


def classify_sync_failure(exc: BaseException, connected: bool) -> NoReply:
    """An http.client attempt's exception: before the connection opened nothing was sent;
    after, a timeout is ``TIMED_OUT`` and anything else (reset, EOF, a bad status line on
    a keep-alive connection the server had closed) may have been delivered."""
    detail = f"{type(exc).__name__}: {exc}"[:200]
    if not connected:
        return NoReply(TransportFailure.NOT_CONNECTED, detail)
    if isinstance(exc, TimeoutError):
        return NoReply(TransportFailure.TIMED_OUT, detail)
    return NoReply(TransportFailure.SENT, detail)


class SyncClient(_Calls, _Logic):
    """Blocking client on http.client with one keep-alive connection per endpoint.
    ``clock`` (monotonic seconds) and ``sleep`` pace the retries (tests pass fakes)."""

    def __init__(self, endpoints, *, timeout: float = 10.0, attempt_timeout: float = 3.0,
                 client_id: str | None = None, token: str | None = None,
                 clock=time.monotonic, sleep=time.sleep, cafile: str | None = None) -> None:
        super().__init__(endpoints, timeout, attempt_timeout, client_id, token)
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._clock = clock
        self._sleep = sleep
        self._ssl = _ssl_context(cafile) if self.scheme == "https" else None
        # on_retry(endpoint, why, seconds_left): called before each retry (the CLI prints
        # progress on stderr); None: silent.
        self.on_retry = None

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, body: dict | None = None, *,
                write: bool = False) -> dict:
        payload = json.dumps(body).encode() if body is not None else None
        plan = self.plan(path, body, write)
        step = plan.start(self._clock())
        while isinstance(step, Attempt):
            if step.delay_s > 0:
                self._sleep(step.delay_s)          # the planner's backoff
            outcome = self._attempt(step.endpoint, method, path, payload, step.timeout_s)
            tried = step.endpoint
            now = self._clock()
            step = plan.record(step.endpoint, outcome, now)
            if isinstance(step, Attempt) and self.on_retry is not None:
                self.on_retry(tried, describe_outcome(outcome), max(0.0, plan.deadline - now))
        return self.outcome(step, body)

    def _attempt(self, endpoint: str, method: str, path: str, payload: bytes | None,
                 timeout: float) -> Reply | NoReply:
        try:
            conn = self._connection(endpoint, timeout)
        except OSError as exc:
            return classify_sync_failure(exc, connected=False)
        try:
            return self._exchange(endpoint, conn, method, path, payload)
        except (OSError, http.client.HTTPException) as exc:
            return classify_sync_failure(exc, connected=True)

    def _connection(self, endpoint: str, timeout: float) -> http.client.HTTPConnection:
        """The endpoint's connection, opened now if it is not (so that a failure here
        proves nothing was sent)."""
        conn = self._conns.get(endpoint)
        if conn is None:
            conn = self._new_connection(endpoint, timeout)
            self._conns[endpoint] = conn
        conn.timeout = timeout
        if conn.sock is None:
            try:
                conn.connect()
            except BaseException:
                conn.close()
                self._conns.pop(endpoint, None)
                raise
        conn.sock.settimeout(timeout)
        return conn

    def _new_connection(self, endpoint: str, timeout: float) -> http.client.HTTPConnection:
        """An HTTP or HTTPS (verified against ``cafile``) connection, not opened yet."""
        parts = urlsplit(endpoint)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname, parts.port or 443,
                                               timeout=timeout,
                                               context=self._ssl or _ssl_context(None))
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)

    def _exchange(self, endpoint: str, conn: http.client.HTTPConnection, method: str,
                  path: str, payload: bytes | None) -> Reply:
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except BaseException:
            conn.close()
            self._conns.pop(endpoint, None)
            raise
        return Reply(response.status, _parse_body(raw),
                     parse_retry_after(response.getheader("Retry-After")))

    # ------------------------------------------------------------------ API

    def discover_leader(self) -> dict:
        status = self.status()
        self.learn(status)
        return status

    def open_stream(self, endpoint: str, path: str, timeout: float):
        """``GET path`` on one endpoint over a connection of its own, no retries: the
        response object, its body not read yet (a large download: read it in pieces).
        The caller closes it.  Raises OSError / HTTPException on transport failures."""
        conn = self._new_connection(_normalize(endpoint, self.scheme), timeout)
        headers = {} if self._authorization is None else {"Authorization": self._authorization}
        try:
            conn.request("GET", path, headers=headers)
            return conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def members_of(self, endpoint: str, timeout: float = 1.0) -> dict:
        """One node's view of the membership, no retries; raises OSError when the node
        cannot be reached, ClientError when it refuses."""
        return self._get_once(endpoint, "/api/v1/cluster/members", timeout)

    def health_of(self, endpoint: str, timeout: float = 1.0) -> tuple[int, object]:
        """(status, body) of ``GET /health?ready=1`` (200 healthy, 503 not ready), no
        retries; raises OSError when the node cannot be reached."""
        endpoint = _normalize(endpoint, self.scheme)
        try:
            conn = self._connection(endpoint, timeout)
            reply = self._exchange(endpoint, conn, "GET", "/health?ready=1", None)
        except http.client.HTTPException as exc:
            raise OSError(f"bad answer: {exc}") from None
        return reply.status, reply.body

    def _get_once(self, endpoint: str, path: str, timeout: float) -> dict:
        endpoint = _normalize(endpoint, self.scheme)
        conn = self._connection(endpoint, timeout)
        try:
            reply = self._exchange(endpoint, conn, "GET", path, None)
        except http.client.HTTPException as exc:
            raise OSError(f"bad answer: {exc}") from None
        if reply.status != 200:
            raise self.error_for(reply.status, reply.body)
        return reply.body
    def put_many(self, pairs, batch_size: int = 1000) -> list:
        """Put every ``(key, value)`` of ``pairs`` in batches of ``batch_size``; the
        per-operation results, in order."""
        results = []
        batch = []
        for key, value in pairs:
            batch.append({"op": "put", "key": key, "value": value})
            if len(batch) >= batch_size:
                results += self.batch(batch)["results"]
                batch = []
        if batch:
            results += self.batch(batch)["results"]
        return results

    def tail(self, start: int | None = None, *, follow: bool = True,
             subprotocol: str | None = None):
        """Committed log entries from ``start`` (None: from the next one), a generator;
        ``follow`` False: stop once caught up.  Resumes at another node by itself."""
        from .wsclient import JSON, TailCursor, blocking_stream
        return blocking_stream(self.order(), TailCursor(start), subprotocol=subprotocol or JSON,
                               follow=follow, timeout_s=self.attempt_timeout,
                               give_up_s=self.timeout, ssl_context=self._ssl,
                               authorization=self._authorization)

    def watch(self, key: str | None = None, *, prefix: str | None = None,
              start: int | None = None, prev: bool = False, follow: bool = True,
              subprotocol: str | None = None, idle_s: float | None = None):
        """kv events under ``key`` or ``prefix`` from revision ``start``, a generator;
        ``idle_s``: it yields None whenever that long passes without an event."""
        from .wsclient import JSON, WatchCursor, blocking_stream
        return blocking_stream(self.order(), WatchCursor(key, prefix, start, prev),
                               subprotocol=subprotocol or JSON, follow=follow,
                               timeout_s=self.attempt_timeout, give_up_s=self.timeout,
                               ssl_context=self._ssl, authorization=self._authorization,
                               idle_s=idle_s)

    def status_of(self, endpoint: str, timeout: float = 1.0) -> dict:
        """One node's own status, no retries (``cluster status`` asks each node); raises
        OSError when the node cannot be reached."""
        endpoint = _normalize(endpoint, self.scheme)
        conn = self._connection(endpoint, timeout)
        reply = self._exchange(endpoint, conn, "GET", "/api/v1/cluster/status", None)
        if reply.status != 200:
            raise self.error_for(reply.status, reply.body)
        return reply.body


# ====================================================================== Twisted

def classify_twisted_failure(exc: BaseException) -> NoReply:
    """A Twisted/treq attempt's exception.  Not connected: the connection never opened
    (refused, DNS, connect timeout, connecting cancelled) or a pooled connection was found
    unusable before anything was written (``RequestNotSent``).  Timed out: our timeout or a
    cancellation after connecting.  Anything else, ``RequestTransmissionFailed`` included
    (some bytes may have been written), may have been delivered."""
    from twisted.internet import defer, error as tx_error
    from twisted.web import _newclient

    detail = f"{type(exc).__name__}: {exc}"[:200]
    if isinstance(exc, (tx_error.ConnectError, tx_error.DNSLookupError,
                        tx_error.ConnectingCancelledError, _newclient.RequestNotSent)):
        return NoReply(TransportFailure.NOT_CONNECTED, detail)
    if isinstance(exc, (defer.TimeoutError, defer.CancelledError)):
        return NoReply(TransportFailure.TIMED_OUT, detail)
    reasons = getattr(exc, "reasons", None) or ()
    if isinstance(exc, _newclient._WrapperException):
        names = ",".join(type(r.value).__name__ for r in reasons) or "?"
        detail = f"{type(exc).__name__} ({names})"
        if any(r.check(defer.CancelledError, defer.TimeoutError) for r in reasons):
            return NoReply(TransportFailure.TIMED_OUT, detail)
    return NoReply(TransportFailure.SENT, detail)


def http_client(reactor, pool, connect_timeout_s: float, cafile: str | None = None):
    """A treq HTTPClient over ``pool`` whose connects give up after ``connect_timeout_s``
    (a connect timeout is a not-connected failure, safe to retry anywhere); https URLs are
    verified against ``cafile`` (the cluster CA) when given."""
    import treq
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
    policy = BrowserLikePolicyForHTTPS()
    if cafile is not None:
        from twisted.internet import ssl
        with open(cafile, "rb") as f:
            policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(f.read()))
    return treq.client.HTTPClient(Agent(reactor, contextFactory=policy,
                                        connectTimeout=connect_timeout_s, pool=pool))


def send_once(http, reactor, method: str, url: str, payload: bytes | None,
              timeout_s: float, authorization: str | None = None):
    """One attempt: a Deferred firing with a ``Reply`` (any status), or failing with the
    transport's exception (``defer.TimeoutError`` after ``timeout_s``, body included).
    ``authorization``: the Authorization header's value (``Bearer <token>``)."""
    from twisted.internet import defer

    async def exchange() -> Reply:
        import treq
        kwargs = {}
        headers = {}
        if payload is not None:
            kwargs["data"] = payload
            headers[b"Content-Type"] = [b"application/json"]
        if authorization is not None:
            headers[b"Authorization"] = [authorization.encode()]
        if headers:
            kwargs["headers"] = headers
        response = await http.request(method, url, **kwargs)
        raw = await treq.content(response)
        retry_after = response.headers.getRawHeaders(b"retry-after", [None])[0]
        return Reply(response.code, _parse_body(raw), parse_retry_after(retry_after))

    d = defer.Deferred.fromCoroutine(exchange())
    d.addTimeout(timeout_s, reactor)
    return d


async def drive_plan(reactor, plan: RetryPlan, send) -> Finish:
    """Run ``plan`` on ``reactor``: ``send(endpoint, timeout_s)`` makes one attempt (a
    Deferred like ``send_once``'s); failures are sorted by ``classify_twisted_failure``.
    Cancelling the caller's Deferred cancels the request (it is not retried)."""
    from twisted.internet import defer, task

    step = plan.start(reactor.seconds())
    while isinstance(step, Attempt):
        if step.delay_s > 0:
            await task.deferLater(reactor, step.delay_s, lambda: None)
        try:
            outcome = await send(step.endpoint, step.timeout_s)
        except defer.CancelledError:
            raise         # the caller cancelled (send's own timeout fails with TimeoutError)
        except Exception as exc:  # every transport error is an outcome for the planner
            outcome = classify_twisted_failure(exc)
        step = plan.record(step.endpoint, outcome, reactor.seconds())
    return step


class Client(_Calls, _Logic):
    """Asynchronous client on treq; every method returns a Deferred."""

    def __init__(self, endpoints, *, reactor, timeout: float = 10.0,
                 attempt_timeout: float = 3.0, client_id: str | None = None,
                 token: str | None = None, pool=None, cafile: str | None = None) -> None:
        super().__init__(endpoints, timeout, attempt_timeout, client_id, token)
        from twisted.web.client import HTTPConnectionPool
        self.reactor = reactor
        self.cafile = cafile          # https endpoints' CA (also for wss)
        self.pool = pool or HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        self._http = http_client(reactor, self.pool,
                                 min(_CONNECT_TIMEOUT_MAX_S, attempt_timeout / 2), cafile)

    def close(self):
        return self.pool.closeCachedConnections()

    def request(self, method: str, path: str, body: dict | None = None, *, write: bool = False):
        from twisted.internet import defer
        payload = json.dumps(body).encode() if body is not None else None
        plan = self.plan(path, body, write)

        def send(endpoint: str, timeout_s: float):
            return send_once(self._http, self.reactor, method, endpoint + path, payload,
                             timeout_s, self._authorization)

        d = defer.Deferred.fromCoroutine(drive_plan(self.reactor, plan, send))
        return d.addCallback(self.outcome, body)

    def discover_leader(self):
        d = self.status()

        def learned(status):
            self.learn(status)
            return status
        return d.addCallback(learned)

    # ------------------------------------------------------------------ WebSocket

    def tail(self, start: int | None = None, *, subprotocol: str | None = None,
             buffer_max: int = 10_000):
        """Committed log entries from ``start`` (None: from the next one applied): a
        started ``wsclient.TwistedStream`` (``async for entry in stream``, or
        ``stream.each(callback)``), resuming at any node after a disconnect."""
        from .wsclient import JSON, TailCursor, TwistedStream
        return TwistedStream(self.reactor, self.order(), TailCursor(start),
                             subprotocol=subprotocol or JSON, buffer_max=buffer_max,
                             connect_timeout_s=self.attempt_timeout,
                             give_up_s=self.timeout, cafile=self.cafile,
                             authorization=self._authorization).start()

    def watch(self, key: str | None = None, *, prefix: str | None = None,
              start: int | None = None, prev: bool = False,
              subprotocol: str | None = None, buffer_max: int = 10_000):
        """kv events (``put``/``delete``) under ``key`` or ``prefix`` from revision
        ``start`` (None: from now): a started ``wsclient.TwistedStream``."""
        from .wsclient import JSON, TwistedStream, WatchCursor
        return TwistedStream(self.reactor, self.order(), WatchCursor(key, prefix, start, prev),
                             subprotocol=subprotocol or JSON, buffer_max=buffer_max,
                             connect_timeout_s=self.attempt_timeout,
                             give_up_s=self.timeout, cafile=self.cafile,
                             authorization=self._authorization).start()

    def put_many(self, pairs, *, batch_size: int = 1000, window: int = 8,
                 subprotocol: str | None = None):
        """Put every ``(key, value)``: batches of ``batch_size`` as pipelined requests on
        one WebSocket connection, ``window`` in flight; a Deferred of the per-operation
        results, in order.  A batch whose answer was lost is resent with its own
        (client_id, sequence) on the next connection, so it applies exactly once."""
        from twisted.internet import defer
        from .wsclient import JSON
        pairs = list(pairs)
        batches = []
        for start in range(0, len(pairs), batch_size):
            ops = [{"op": "put", "key": k, "value": v} for k, v in pairs[start:start + batch_size]]
            sequence = self.next_sequence()
            self.answered.issued(sequence)
            batches.append({"op": "batch", "ops": ops, "client_id": self.client_id,
                            "sequence": sequence})
        return defer.Deferred.fromCoroutine(
            self._pipelined(batches, window, subprotocol or JSON))

    async def _pipelined(self, messages: list, window: int, subprotocol: str) -> list:
        from collections import deque

        from twisted.internet import defer, task
        from twisted.python.failure import Failure
        from .wsclient import connect_twisted
        results: list = [None] * len(messages)
        todo = deque(range(len(messages)))
        deadline = self.reactor.seconds() + self.timeout
        position = 0
        while todo:
            if self.reactor.seconds() > deadline:
                for i in todo:
                    self.answered.unknown(messages[i]["sequence"])
                raise UnknownOutcome(f"put_many: {len(todo)} batches unanswered within "
                                     f"{self.timeout} s (resend them with the same sequences)",
                                     504, "outcome_unknown")
            endpoints = self.order()
            endpoint = endpoints[position % len(endpoints)]
            position += 1
            try:
                conn = await connect_twisted(self.reactor, endpoint, subprotocol,
                                             self.attempt_timeout, self.cafile,
                                             self._authorization)
            except Exception:
                await task.deferLater(self.reactor, 0.1, lambda: None)
                continue
            answers = defer.DeferredQueue()
            inflight: set = set()
            broken = False
            while (todo or inflight) and not broken:
                while todo and len(inflight) < window:
                    i = todo.popleft()
                    message = dict(messages[i])
                    message.pop("id", None)
                    if self.answered.through:
                        message["acked"] = self.answered.through
                    inflight.add(i)
                    conn.request(message).addBoth(
                        lambda outcome, i=i: answers.put((i, outcome)))
                i, outcome = await answers.get()
                inflight.discard(i)
                if isinstance(outcome, Failure):
                    todo.appendleft(i)
                    broken = True
                    continue
                status, body = outcome
                if status == 200:
                    results[i] = body["results"]
                    self.answered.settled(messages[i]["sequence"])
                elif status in (429, 503, 504):
                    todo.appendleft(i)
                    broken = status != 429
                else:
                    conn.close()
                    self.answered.settled(messages[i]["sequence"])
                    raise self.error_for(status, body)
            todo.extend(sorted(inflight))
            conn.close()
            if broken:
                await task.deferLater(self.reactor, 0.1, lambda: None)
        return [r for batch in results for r in batch]
