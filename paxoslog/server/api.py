"""The HTTP/JSON API (DESIGN.md section 5): routes, who may call them, input validation,
error mapping.

``ROUTES`` (routes.py) is the one table of the API: every path and method, the ``Api``
method that serves it and the role it needs (docs/security.md has the same table for readers; the
OpenAPI document, openapi.py, is checked against it by a test)::

    POST /api/v1/consensus/propose       write   {"key","value","client_id"?,"sequence"?,
                                                 "acked"?,"op"?,"expected"?,
                                                 "expected_version"?}
    GET  /api/v1/consensus/query         read    ?key=K | ?prefix=P[&limit=N][&after=C]
                                                 [&consistency=][&min_revision=R]
    POST /api/v1/consensus/batch         write   {"ops": [{"op","key",...} | {"sm","op",...}],
                                                 "client_id"?,"sequence"?,"acked"?} -> "results"
    POST /api/v1/consensus/txn           write   {"compare","success","failure",...}
    POST /api/v1/lease/grant|revoke      write   {"ttl_ms"} | {"id"}
    POST /api/v1/lease/keepalive         write   {"id"} (a linearizable read on the leader)
    GET  /api/v1/lease/ttl               read    ?id=N[&keys=1]
    GET  /api/v1/ws                      read    the WebSocket endpoint (docs/websocket.md);
                                                 each request on it needs its route's role
    GET  /api/v1/cluster/status          read    (?hashes=1: admin)
    GET  /api/v1/cluster/members         read    configuration, address book, rows
    POST /api/v1/cluster/add-node        admin   {"node_id","address","api"?,"wait"?}
    POST /api/v1/cluster/remove-node     admin   {"node_id"}
    POST /api/v1/cluster/transfer-leader admin   {"node_id"?}
    GET  /api/v1/log/entries             admin   ?start_index=&end_index= (session ids!)
    POST /api/v1/sm/<name>               write   (a read body {"query": ...}: read)
    GET  /api/v1/sm/<name>               read    ?field=value...[&consistency=...]
    GET  /api/v1/cluster/overview        read    every member's status, metrics, events
    GET  /api/v1/snapshot                admin   a consistent backup, streamed (backup.py)
    POST /api/v1/admin/reload            admin   re-read the conf file (as SIGHUP; reload.py)
    GET  /dashboard, /dashboard/<file>   -       the live dashboard's static files
    GET  /api/v1/openapi.json            -       this API as an OpenAPI 3.1 document
    GET  /health[?ready=1]               -       (details only with read)
    GET  /metrics                        read    Prometheus text

Every write, whatever its route, passes ``_write``, which requires the write role and
checks the ``client_id`` against the token's binding (access.py).  Internal state machines
(membership) are not addressable through ``/api/v1/sm/`` at all (404).

Order of checks: Origin/Host (403), route (404/405), token (401), role (403), removed
node (410), then the handler's input validation (400...).  Errors are ``{"error": code,
"message": text}`` with 400/401/403/404/405/409/410/413/431/503 (Retry-After)/504 (see
errors.py).  A removed node answers 410 ``removed`` to everything but /health, /metrics,
the status and the API document.  Every input is validated here or by the state machine
before anything is proposed: bad input never reaches the log.

Size: one class because every handler is a few lines over the same validation helpers
(``_json_object``, ``_params``, ``_session``) and the one route table; the access checks
are access.py, the WebSocket protocol wsprotocol.py, the log views views.py.
"""

from __future__ import annotations

import json
import math
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from statemachines.base import nesting_exceeds

from paxoslog.node.commands import CLIENT_ID_CHARS_MAX
from paxoslog.tokens import Role
from .access import ANONYMOUS_ADMIN, without_credentials
from .routes import ROUTES, SERVED_WHEN_REMOVED as _SERVED_WHEN_REMOVED, Route
from .errors import ApiError, bad_request
from .httpmsg import Later, SwitchProtocols, json_response, query_params
from .reload import ReloadFailed
from .runner import ClientRequest
from .surrogates import LONE_SURROGATE_MESSAGE, lone_surrogate

__all__ = ["Api", "Route", "ROUTES"]

log = Logger(namespace="paxoslog.api")

_SESSION_FIELDS = frozenset({"client_id", "sequence", "acked"})
_PROPOSE_FIELDS = frozenset({"key", "value", "op", "expected", "expected_version",
                             "lease"}) | _SESSION_FIELDS
_TXN_FIELDS = frozenset({"compare", "success", "failure"}) | _SESSION_FIELDS
_LEASE_KEYS_MAX = 1000
_BATCH_FIELDS = frozenset({"ops"}) | _SESSION_FIELDS
_BATCH_KV_FIELDS = frozenset({"key", "value", "op", "expected", "expected_version"})
_CONSISTENCY = ("linearizable", "lease", "stale")
_SEQUENCE_MAX = (1 << 63) - 1
_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
# /health without the read role: enough for a load balancer, nothing more.
_HEALTH_PUBLIC = ("status", "ready", "node_id", "role", "leader", "term")



def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


class _NonFinite(ValueError):
    """A JSON number out of the range of a double."""


def _finite_float(text: str) -> float:
    """JSON numbers with a fraction or exponent; ``1e400`` would be parsed as infinity,
    stored, and served back as invalid JSON: refused instead."""
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"the number {text[:40]} is out of range: it would be {value}, "
                         f"and JSON numbers must be finite")
    return value


# One instance: cheap calls.  NaN/Infinity literals and out-of-range numbers are refused.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


class Api:
    """Routes requests to the node's services (``bind``): the ``router`` (writes, reads),
    the ``views`` (status, entries, health, metrics), the membership ``admin``, the
    address ``book`` (removal) and the ``access`` control (who may do what; without one,
    every request is served as an anonymous admin, as before auth existed).
    ``limits``: the conf's [limits]."""

    def __init__(self, node_id: int, limits, command_bytes_max: int) -> None:
        self.node_id = node_id
        self.limits = limits
        self.command_bytes_max = command_bytes_max
        self.router = self.views = self.admin = self.book = self.access = None
        self.backups = self.overview = self.reloader = self.dashboard = None
        self.websocket_factory = None     # set by bind_websocket
        self._render_committed = self._checked(self._committed)
        self._routes: dict[str, dict[str, Route]] = {}
        self._prefix_routes: dict[str, dict[str, Route]] = {}     # "/api/v1/sm/" -> ...
        for route in ROUTES:
            if route.path.endswith("}"):
                prefix = route.path[:route.path.rindex("{")]
                self._prefix_routes.setdefault(prefix, {})[route.method] = route
            else:
                self._routes.setdefault(route.path, {})[route.method] = route

    def bind(self, *, router, views, admin, book, access=None, backups=None, overview=None,
             reloader=None, dashboard=None) -> None:
        self.router, self.views, self.admin, self.book = router, views, admin, book
        self.access = access
        self.backups, self.overview = backups, overview
        self.reloader, self.dashboard = reloader, dashboard

    def routes(self) -> dict[str, tuple[str, ...]]:
        """Every route and its methods (the docs' API table is tested against it);
        ``{name}`` marks a path parameter."""
        table = {path: tuple(sorted(methods)) for path, methods in self._routes.items()}
        table["/api/v1/sm/{name}"] = ("GET", "POST")
        table["/dashboard/{file}"] = ("GET",)
        return table

    def route_of(self, path: str) -> str:
        """The route that serves ``path`` ("other" for none): a metrics label."""
        if path in self._routes:
            return path
        if path.startswith("/api/v1/sm/"):
            return "/api/v1/sm/{name}"
        if path.startswith("/dashboard/"):
            return "/dashboard/{file}"
        return "other"

    def bind_websocket(self, factory) -> None:
        """The WebSocket endpoint's protocol factory (websocket.py)."""
        self.websocket_factory = factory

    # ------------------------------------------------------------------ dispatch

    def handle(self, request):
        access = self.access
        if access is not None:
            refused = access.check_browser(request)
            if refused is not None:
                return self._error(refused)
            if request.method == "OPTIONS" and b"origin" in request.headers:
                return access.preflight(request)
        routes = self._routes.get(request.path)
        if routes is None:
            routes = next((table for prefix, table in self._prefix_routes.items()
                           if request.path.startswith(prefix)), None)
            if routes is None:
                return self._error(ApiError(404, "not_found",
                                            f"no such endpoint: {request.path[:200]}"))
        method = "GET" if request.method == "HEAD" else request.method
        route = routes.get(method)
        if route is None:
            allowed = ", ".join(sorted(routes)).encode()
            error = ApiError(405, "method_not_allowed",
                             f"{request.method[:20]} is not allowed on {request.path[:200]}; "
                             f"use {allowed.decode()}", headers=((b"Allow", allowed),))
            return self._error(error)
        if access is None:
            return self._dispatch(request, route, ANONYMOUS_ADMIN)
        try:
            principal = access.authenticate(request)
        except ApiError as exc:
            if not (exc.status == 401 and route.entry_role == Role.NONE):
                return self._error(exc)
            principal = access.anonymous           # open routes ignore a bad token
        # A token's first use here: ``authenticate`` made a plain Deferred (an exact type
        # check: ``isinstance`` against Deferred, an ABC, costs more than the rest of this).
        if type(principal) is defer.Deferred:
            if route.entry_role == Role.NONE:
                principal.addErrback(_anonymous_if_unauthenticated, access.anonymous)
            result = principal.addCallback(
                lambda p: _deferred_if_later(self._dispatch(request, route, p)))
            result.addErrback(self._failed)
        else:
            result = self._dispatch(request, route, principal)
        if b"origin" in request.headers:
            return _with_headers(result, access.cors_headers(request))
        return result

    def handle_as(self, request, principal):
        """A request made on an upgraded (WebSocket) connection: the principal its upgrade
        request was authenticated as stands for it; the route's role is still checked."""
        routes = self._routes.get(request.path)
        if routes is None:
            routes = next((table for prefix, table in self._prefix_routes.items()
                           if request.path.startswith(prefix)), None)
        route = (routes or {}).get(request.method)
        if route is None or route.path == "/api/v1/ws":
            return self._error(ApiError(404, "not_found",
                                        f"no such operation: {request.method[:20]} "
                                        f"{request.path[:200]}"))
        return self._dispatch(request, route,
                              ANONYMOUS_ADMIN if principal is None else principal)

    def _dispatch(self, request, route: Route, principal):
        request.principal = principal
        if self.access is not None:
            try:
                needed = route.entry_role
                if route.param_roles and request.query:
                    params = self._params(request)        # may refuse a bad query: 400
                    for name, value, role in route.param_roles:
                        if params.get(name) == value:
                            needed = max(needed, role)
                self.access.authorize(principal, needed, f"{route.method} {route.path}")
            except ApiError as exc:
                return self._error(exc)
        if self.book.removed and request.path not in _SERVED_WHEN_REMOVED:
            return self._error(ApiError(410, "removed", f"node {self.node_id} was removed "
                                        f"from the cluster at index {self.book.removed_index}"))
        try:
            result = getattr(self, route.handler)(request)
        except ApiError as exc:
            return self._error(exc)
        if type(result) is ClientRequest:
            return Later(result, self._render)
        if type(result) is Later:
            return result
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(self._ok, self._failed)
        return self._ok(result)

    def _render(self, result) -> tuple:
        """The response to a client request's answer (``Later``): a body or an ApiError."""
        if isinstance(result, ApiError):
            return self._error(result)
        return self._ok(result)

    def _ok(self, result):
        if (isinstance(result, tuple) and len(result) == 4) or type(result) is SwitchProtocols:
            return result
        return json_response(200, result)

    def _failed(self, failure):
        if failure.check(ApiError):
            return self._error(failure.value)
        log.failure("request failed", failure)
        return json_response(500, {"error": "internal", "message": "internal error"})

    def _error(self, exc: ApiError) -> tuple:
        headers = exc.headers
        if exc.retry_after is not None:
            headers = headers + ((b"Retry-After", str(exc.retry_after).encode()),)
        return json_response(exc.status, exc.body(), headers)

    def _require(self, request, role: Role, what: str) -> None:
        self.require_role(request.principal, role, what)

    def require_role(self, principal, role: Role, what: str) -> None:
        """ApiError 403 (401) unless ``principal`` has ``role`` (no auth: everyone has)."""
        if self.access is not None:
            self.access.authorize(principal, role, what)

    # ------------------------------------------------------------------ input helpers

    def _json_object(self, request) -> dict:
        if request.parsed is not None:        # the WebSocket channel decoded it already
            return request.parsed
        if not request.body:
            raise bad_request("a JSON object body is required")
        try:
            text = request.body.decode("utf-8")
            body = _DECODER.decode(text)
        except UnicodeDecodeError:
            raise bad_request("the body is not UTF-8") from None
        except RecursionError:
            raise self._too_deep() from None
        except _NonFinite as exc:
            raise bad_request(str(exc)) from None
        except ValueError as exc:
            raise bad_request(f"malformed JSON: {str(exc)[:200]}") from None
        if not isinstance(body, dict):
            raise bad_request(f"the body must be a JSON object, not {_json_type(body)}")
        depth_max = self.limits.json_depth_max
        # Each level opens with a bracket of its own, so a text with no more brackets than
        # the limit cannot nest deeper (most bodies: one); only others are walked.
        if text.count("{") + text.count("[") > depth_max and nesting_exceeds(body, depth_max):
            raise self._too_deep()
        if lone_surrogate(text, body):
            raise bad_request(f"the body {LONE_SURROGATE_MESSAGE}")
        return body

    def _too_deep(self) -> ApiError:
        return bad_request(f"the body nests deeper than "
                           f"{self.limits.json_depth_max} levels "
                           "(limits.json_depth_max)")

    def _params(self, request) -> dict:
        if not request.query:
            return {}
        try:
            return query_params(request.query)
        except ValueError as exc:
            raise bad_request(f"bad query string: {exc}") from None

    def _session(self, request, body: dict) -> tuple[str | None, int | None, int | None]:
        """(client_id, sequence, acked) of a write body, or Nones.  ``acked``: the client
        has the answers of its sequences up to this one; the cluster forgets their results
        (node/sessions.py)."""
        has_client = body.get("client_id") is not None
        has_sequence = body.get("sequence") is not None
        if has_client != has_sequence:
            raise bad_request('"client_id" and "sequence" go together: give both or neither')
        acked = body.get("acked")
        if not has_client:
            if acked is not None:
                raise bad_request('"acked" needs "client_id" and "sequence"')
            return None, None, None
        client_id = body["client_id"]
        if type(client_id) is int and client_id >= 0:
            client_id = str(client_id)
        if not isinstance(client_id, str) or not 1 <= len(client_id) <= CLIENT_ID_CHARS_MAX:
            raise bad_request(f'"client_id" must be a string of 1-{CLIENT_ID_CHARS_MAX} '
                              'characters')
        if client_id.startswith("node") and client_id[4:5].isdigit() and "-" in client_id:
            raise bad_request('"client_id" values "node<N>-..." are reserved for the servers')
        sequence = body["sequence"]
        if type(sequence) is not int or not 0 <= sequence <= _SEQUENCE_MAX:
            raise bad_request('"sequence" must be a non-negative integer')
        if acked is not None and (type(acked) is not int or not 0 <= acked < sequence):
            raise bad_request('"acked" must be an integer from 0 to "sequence" - 1: the '
                              'highest sequence up to which this client has every answer')
        if self.access is not None:
            self.access.check_client_id(request.principal, client_id)
        return client_id, sequence, acked

    # ------------------------------------------------------------------ writes

    def propose(self, request):
        body = self._json_object(request)
        unknown = sorted(set(body) - _PROPOSE_FIELDS)
        if unknown:
            raise bad_request(f"unknown field(s): {', '.join(unknown)[:200]}")
        if "key" not in body:
            raise bad_request('missing field "key"')
        if body.get("op") in ("txn", "lease_grant", "lease_revoke"):
            raise bad_request(f'op {body["op"]!r} has its own endpoint (/api/v1/consensus/txn, '
                              '/api/v1/lease/...)')
        return self._write(request, "kv", body)

    def txn(self, request):
        """A transaction: compares, then one of two op lists, in one log entry."""
        body = self._json_object(request)
        unknown = sorted(set(body) - _TXN_FIELDS)
        if unknown:
            raise bad_request(f"unknown field(s): {', '.join(unknown)[:200]}")
        return self._write(request, "kv", dict(body, op="txn"))

    # ------------------------------------------------------------------ leases

    def _lease_body(self, request, fields: frozenset) -> dict:
        body = self._json_object(request)
        unknown = sorted(set(body) - fields - _SESSION_FIELDS)
        if unknown:
            raise bad_request(f"unknown field(s): {', '.join(unknown)[:200]}")
        return body

    def lease_grant(self, request):
        body = self._lease_body(request, frozenset({"ttl_ms"}))
        return self._write(request, "kv", dict(body, op="lease_grant"))

    def lease_revoke(self, request):
        body = self._lease_body(request, frozenset({"id"}))
        return self._write(request, "kv", dict(body, op="lease_revoke"))

    def lease_keepalive(self, request):
        """Renews the lease on the leader (a linearizable read there: never logged)."""
        body = self._json_object(request)
        unknown = sorted(set(body) - {"id"})
        if unknown:
            raise bad_request(f"unknown field(s): {', '.join(unknown)[:200]}")
        lease = body.get("id")
        if type(lease) is not int or lease < 1:
            raise bad_request('"id" must be a lease id (a positive integer)')
        return self.router.read({"lease": {"op": "keepalive", "id": lease}}, "linearizable")

    def lease_ttl(self, request):
        params = self._params(request)
        if "id" not in params:
            raise bad_request('missing query parameter "id"')
        lease = _int_param(params, "id", 1)
        keys = _LEASE_KEYS_MAX if params.get("keys") in ("1", "true") else 0
        return self.router.read({"lease": {"op": "ttl", "id": lease, "keys_max": keys}},
                                "linearizable")

    def batch(self, request):
        """POST /api/v1/consensus/batch: many writes as one log command, applied in order
        at one index, each with its own result; one client_id/sequence for the batch
        (exactly once as a whole).  Every operation is validated before anything is
        proposed: one bad operation refuses the batch (400 naming ``ops[i]``)."""
        body = self._json_object(request)
        unknown = sorted(set(body) - _BATCH_FIELDS)
        if unknown:
            raise bad_request(f"unknown field(s): {', '.join(unknown)[:200]}")
        ops = body.get("ops")
        if type(ops) is not list or not ops:
            raise bad_request('"ops" must be a non-empty array of operations')
        most = self.limits.batch_ops_max
        if len(ops) > most:
            raise ApiError(413, "too_large", f"the batch holds {len(ops)} operations, over the "
                                             f"limit of {most} (limits.batch_ops_max)")
        parsed = []
        for position, op in enumerate(ops):
            if type(op) is not dict:
                raise bad_request(f"ops[{position}]: an operation must be an object")
            if "client_id" in op or "sequence" in op or "acked" in op:
                raise bad_request(f"ops[{position}]: a batch has one client_id/sequence, "
                                  "given next to \"ops\", not one per operation")
            sm = op.get("sm")
            if sm is None:
                unknown = set(op) - _BATCH_KV_FIELDS
                if unknown:
                    raise bad_request(f"ops[{position}]: unknown field(s): "
                                      f"{', '.join(sorted(unknown))[:200]}")
                if "key" not in op:
                    raise bad_request(f'ops[{position}]: missing field "key"')
                parsed.append(("kv", op, None))
            else:
                if not isinstance(sm, str) or self.router.client_machine(sm) is None:
                    raise bad_request(f"ops[{position}]: no state machine named {sm!r:.64} "
                                      "is enabled for clients")
                fields = {k: v for k, v in op.items() if k != "sm"}
                if fields.get("op") in (getattr(self.router.client_machine(sm), "read_ops",
                                                None) or ()):
                    raise bad_request(f"ops[{position}]: {fields['op']!r} is a read; a batch "
                                      "holds writes only")
                parsed.append((sm, fields, None))
        self._require(request, Role.WRITE, "a batch")
        client_id, sequence, acked = self._session(request, body)
        return Later(self.router.write_batch(parsed, client_id, sequence, acked=acked),
                     self._checked(self._batch_committed))

    def _checked(self, check: Callable[[dict], dict]) -> Callable[[object], tuple]:
        """A ``Later`` render that passes a committed body through ``check`` (which may
        refuse it with an ApiError) before the response is made."""
        def render(result) -> tuple:
            if not isinstance(result, ApiError):
                try:
                    return self._ok(check(result))
                except ApiError as exc:
                    result = exc
            return self._error(result)
        return render

    @staticmethod
    def _batch_committed(response: dict) -> dict:
        result = response.get("result")
        if not isinstance(result, dict) or "results" not in result:
            # Refused as a whole when applied (only a damaged command can get here).
            raise ApiError(400, str((result or {}).get("error", "bad_request")),
                           str((result or {}).get("message", "")),
                           extra={"index": response.get("index")})
        body = dict(response)
        del body["result"]
        body["results"] = result["results"]
        return body

    def websocket(self, request):
        """GET /api/v1/ws: the WebSocket endpoint (docs/websocket.md).  Only an upgrade
        request as the connection's first request switches protocols."""
        if not request.upgrade:
            return json_response(426, {"error": "upgrade_required",
                                       "message": "this is the WebSocket endpoint: open it "
                                                  "with a WebSocket client (Upgrade: "
                                                  "websocket) as a connection's first "
                                                  "request"},
                                 ((b"Upgrade", b"websocket"),))
        if self.websocket_factory is None:
            raise ApiError(503, "unavailable", "the WebSocket endpoint is not running",
                           retry_after=1)
        return SwitchProtocols(self.websocket_factory, request.principal, without_credentials)

    def _state_machine(self, request) -> str:
        """The client-addressable state machine named by the path.  Internal ones (the
        membership table) are answered 404 like absent ones: no client reads or writes
        them (their rows are in GET /api/v1/cluster/members)."""
        name = request.path[len("/api/v1/sm/"):]
        if self.router.client_machine(name) is None:
            if self.router.internal_machine(name):
                raise ApiError(404, "not_found", f"state machine {name!r} is internal to the "
                                                 "cluster; see GET /api/v1/cluster/members")
            enabled = ", ".join(self.router.client_machine_names())
            raise ApiError(404, "not_found", f"no state machine named {name[:64]!r} is enabled "
                                             f"on this cluster (enabled: {enabled})")
        return name

    def state_machine_command(self, request):
        """POST /api/v1/sm/<name>: ``{"op": ..., ...}`` is a write through the log;
        ``{"query": {...}, "consistency"?: ...}`` (or an op the state machine lists in
        ``read_ops``) is a read served like /consensus/query (read_index by default)."""
        name = self._state_machine(request)
        body = self._json_object(request)
        sm = self.router.client_machine(name)
        if "query" in body:
            unknown = sorted(set(body) - {"query", "consistency"})
            if unknown:
                raise bad_request(f"unknown field(s) next to \"query\": "
                                  f"{', '.join(unknown)[:200]}")
            if not isinstance(body["query"], dict):
                raise bad_request('"query" must be an object')
            return self._sm_read(name, body["query"], body.get("consistency"))
        if "op" not in body and getattr(sm, "validate", None) is None:
            raise bad_request('missing field "op" (or "query" for a read)')
        if "op" in body and not isinstance(body["op"], str):
            raise bad_request('"op" must be a string')
        if body.get("op") in (getattr(sm, "read_ops", None) or ()):
            request_fields = {k: v for k, v in body.items()
                              if k != "consistency" and k not in _SESSION_FIELDS}
            return self._sm_read(name, request_fields, body.get("consistency"))
        if "consistency" in body:
            raise bad_request('"consistency" applies to reads only')
        return self._write(request, name, body)

    def state_machine_read(self, request):
        """GET /api/v1/sm/<name>?field=value...[&consistency=...]: a read of that state
        machine with the parameters (strings) as the query object."""
        name = self._state_machine(request)
        params = self._params(request)
        consistency = params.pop("consistency", None)
        return self._sm_read(name, params, consistency)

    def _sm_read(self, name: str, query: dict, consistency):
        consistency = "linearizable" if consistency is None else consistency
        if consistency not in _CONSISTENCY:
            raise bad_request(f'"consistency" must be one of {", ".join(_CONSISTENCY)}')
        read = {"sm": name, "request": query}
        if "min_revision" in query:
            floor = query.pop("min_revision")
            read["min_revision"] = _int_param({"min_revision": str(floor)}, "min_revision", 0)
        return self.router.read(read, consistency)

    def _write(self, request, sm: str, body: dict):
        """Every client write passes here: it needs the write role, and its client id
        must be one its token may use."""
        self._require(request, Role.WRITE, f"a write to {sm!r}")
        client_id, sequence, acked = self._session(request, body)
        fields = {k: v for k, v in body.items() if k not in _SESSION_FIELDS}
        return Later(self.router.write(sm, fields, client_id, sequence, acked=acked),
                     self._render_committed)

    @staticmethod
    def _committed(response: dict) -> dict:
        result = response.get("result")
        if isinstance(result, dict) and "error" in result:
            status = 404 if result["error"] == "lease_not_found" else 400
            raise ApiError(status, str(result["error"]), str(result.get("message", "")),
                           extra={"index": response.get("index")})
        return response

    # ------------------------------------------------------------------ membership

    def add_node(self, request):
        return self.admin.request("add", self._json_object(request))

    def remove_node(self, request):
        return self.admin.request("remove", self._json_object(request))

    def transfer_leader(self, request):
        body = self._json_object(request) if request.body else {}
        return self.admin.request("transfer", body)

    def members(self, request):
        return self.admin.describe()

    # ------------------------------------------------------------------ reads

    def query(self, request):
        params = self._params(request)
        consistency = params.get("consistency", "linearizable")
        if consistency not in _CONSISTENCY:
            raise bad_request(f'"consistency" must be one of {", ".join(_CONSISTENCY)}')
        if "prefix" in params and "key" in params:
            raise bad_request('give "key" or "prefix", not both')
        if "limit" in params and "prefix" not in params:
            raise bad_request('"limit" applies to prefix reads only')
        if "prefix" in params:
            query = {"prefix": params["prefix"]}
            if "limit" in params:
                query["limit"] = _int_param(params, "limit", 1, 10_000)
            if "after" in params:          # the "cursor" of the previous page
                query["after"] = params["after"]
        elif "key" in params:
            key = params["key"]
            if not key:
                raise bad_request('"key" must not be empty')
            query = {"key": key}
        else:
            raise bad_request('missing query parameter "key" (or "prefix")')
        if "min_revision" in params:
            # the revision (log index) the read must be served at or above; the answer's
            # "index" is the revision it was served at
            query["min_revision"] = _int_param(params, "min_revision", 0)
        return self.router.read(query, consistency)

    def cluster_status(self, request):
        """``?hashes=1`` adds ``state_hashes`` (a digest per state machine and the session
        table; costs an encoding of each, so only on request; computed off the event
        loop, one request at a time)."""
        hashes = self._params(request).get("hashes", "0")
        if hashes not in ("0", "1"):
            raise bad_request('"hashes" must be 0 or 1')
        if hashes == "1":
            return self.views.status_with_hashes()
        return self.views.status()

    def log_entries(self, request):
        params = self._params(request)
        most = self.limits.log_entries_max
        last = self.views.last_index()
        start = _int_param(params, "start_index", 1) if "start_index" in params else None
        end = _int_param(params, "end_index", 1) if "end_index" in params else None
        if start is None and end is None:
            end = max(last, 1)
            start = max(1, end - min(most, 100) + 1)
        elif start is None:
            start = max(1, end - min(most, 100) + 1)
        elif end is None:
            end = start + most - 1
        if end < start:
            raise bad_request(f"end_index ({end}) is before start_index ({start})")
        truncated = end - start + 1 > most
        if truncated:
            end = start + most - 1
        body = self.views.entries(start, end)
        body.update(start_index=start, end_index=end, truncated=truncated)
        return body

    # ------------------------------------------------------------------ operations

    def snapshot(self, request):
        """A consistent snapshot of the whole replicated state, streamed (backup.py)."""
        if self.backups is None:
            raise ApiError(404, "not_found", "backups are not served by this node")
        if request.method == "HEAD":
            raise ApiError(405, "method_not_allowed", "HEAD would take a whole backup only to "
                                                      "drop it; use GET")
        return self.backups.request()

    def cluster_overview(self, request):
        return self.overview.collect()

    def reload(self, request):
        """As SIGHUP: re-read the conf file, apply what can change without a restart."""
        try:
            return {"status": "ok", **self.reloader.reload()}
        except ReloadFailed as exc:
            raise ApiError(400, "bad_conf", f"nothing reloaded: {exc}") from None

    def dashboard_file(self, request):
        response = self.dashboard.response(request.path) if self.dashboard else None
        if response is None:
            raise ApiError(404, "not_found", f"no such dashboard file: {request.path[:200]}")
        return response

    def health(self, request):
        body = self.views.health()
        if request.principal.role < Role.READ:
            body = {name: body[name] for name in _HEALTH_PUBLIC}
        if "ready" in self._params(request) and not body["ready"]:
            return json_response(503, body, ((b"Retry-After", b"1"),))
        return body

    def metrics(self, request):
        return (200, self.views.metrics().encode(), _TEXT, ())

    def openapi(self, request):
        from .openapi import document_bytes
        return (200, document_bytes(), b"application/json", ())


def _anonymous_if_unauthenticated(failure, anonymous):
    failure.trap(ApiError)
    if failure.value.status != 401:
        return failure
    return anonymous


def _deferred_if_later(result):
    return result.as_deferred() if type(result) is Later else result


def _with_headers(result, headers: tuple):
    if not headers:
        return result
    if type(result) is Later:        # rendered with the headers when the answer comes
        response = result.response   # a render that raises is a 500, with the headers too
        return Later(result.answer, lambda answer: _with_headers(response(answer), headers))
    if isinstance(result, defer.Deferred):
        return result.addCallback(_with_headers, headers)
    if isinstance(result, SwitchProtocols):
        return result            # a WebSocket upgrade: the handshake answers (autobahn)
    status, body, ctype, extra = result
    return status, body, ctype, tuple(extra) + headers


def _int_param(params: dict, name: str, lo: int, hi: int = (1 << 63) - 1) -> int:
    text = params[name]
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f'"{name}" must be an integer, got {text[:40]!r}') from None
    if not lo <= value <= hi:
        raise bad_request(f'"{name}" must be in {lo}..{hi}')
    return value


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"

