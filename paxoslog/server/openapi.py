"""The HTTP API as an OpenAPI 3.1 document: served at ``GET /api/v1/openapi.json`` and
checked into ``docs/openapi.json`` (``python -m paxoslog.server.openapi > docs/openapi.json``).

Built from ``routes.ROUTES`` (the one routing table) plus, per operation, its parameters,
request body, answers and the error statuses it can give: a test asserts that the served
document equals the checked-in one and that every route of the table is described (with
the role the table gives it, ``x-paxoslog-role``) and nothing else, so the document cannot
drift from the code.  Schemas describe what the server guarantees: required fields are
always present, other fields may be added later (objects stay open unless a request body
refuses unknown fields).  schemathesis checks live answers against it in the test suite.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache

from paxoslog.config import NODE_ID_MAX
from paxoslog.tokens import Role

__all__ = ["document", "document_bytes", "OPENAPI_VERSION"]

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"

_INT = {"type": "integer"}
_INDEX = {"type": "integer", "minimum": 0}
_NODE_ID = {"type": "integer", "minimum": 1, "maximum": NODE_ID_MAX}
_NULLABLE_NODE = {"type": ["integer", "null"]}
_ANY = {}                                         # any JSON value
_CONSISTENCY = {"type": "string", "enum": ["linearizable", "lease", "stale"],
                "default": "linearizable"}
_SM_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            "examples": ["kv", "counter"]}
_CLIENT_ID = {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 128},
                        {"type": "integer", "minimum": 0}],
              "description": "the client's session id (exactly-once retries); with a token "
                             "bound to a client id it must match (else 403)"}
_SEQUENCE = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1,
             "description": "new for every write of the session; a retry resends it"}
_ACKED = {"type": "integer", "minimum": 0,
          "description": "With client_id: the highest sequence up to which this client has "
                         "every answer (below ``sequence``); the cluster forgets their results "
                         "and refuses them as stale from then on"}
_ADDRESS = {"type": "string", "pattern": "^(\\[[0-9A-Fa-f:.]+\\]|[^:\\[\\]]+):[0-9]{1,5}$",
            "examples": ["10.0.1.14:7100"]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict, optional: dict | None = None, *, closed: bool = False,
         description: str | None = None) -> dict:
    schema = {"type": "object", "properties": {**required, **(optional or {})},
              "required": sorted(required)}
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


_KV_RECORD = {"key": {"type": "string"}, "value": _ANY, "create_index": _INDEX,
              "mod_index": _INDEX, "version": _INDEX}
_STALE = {"stale": {"type": "boolean"}, "node": _INT, "applied_index": _INDEX,
          "commit_index": _INDEX, "leader": _NULLABLE_NODE, "ms_since_leader": {
              "type": ["integer", "null"], "minimum": 0}}
_CONFIG = _obj({"voters": {"type": "array", "items": _INT},
                "outgoing": {"type": "array", "items": _INT},
                "learners": {"type": "array", "items": _INT}})
_MEMBERS = {
    "cluster": {"type": "string"}, "protocol": {"type": "string",
                                                 "enum": ["multipaxos", "raft"]},
    "bootstrap_voters": {"type": "array", "items": _INT}, "config": _ref("Configuration"),
    "applied_config": _ref("Configuration"), "leader": _NULLABLE_NODE,
    "nodes": {"type": "object", "additionalProperties": _obj(
        {"peer": {"type": ["string", "null"]}}, {"api": {"type": ["string", "null"]}})},
    "members": {"type": "array", "items": _obj(
        {"node_id": _INT, "address": {"type": "string"}, "status": {"type": "string"},
         "added_at_index": _INDEX},
        {"api": {"type": ["string", "null"]}, "removed_at_index": {
            "type": ["integer", "null"]}})},
}

SCHEMAS = {
    "Error": _obj({"error": {"type": "string", "description": "a stable code: bad_request, "
                             "stale_sequence, unauthenticated, forbidden, not_found, "
                             "method_not_allowed, conflict, removed, too_large, "
                             "headers_too_large, unavailable, not_leader, busy, "
                             "outcome_unknown, timeout, ..."},
                   "message": {"type": "string", "description": "for people"}},
                  description="Every error.  Some carry more fields (a 503's ``leader``, "
                              "a failed command's ``index``)."),
    "Committed": _obj({"status": {"const": "committed"}, "index": _INDEX, "term": _INDEX,
                       "leader": _NULLABLE_NODE, "result": _ANY},
                      description="A write that was committed and applied; ``result`` is "
                                  "the state machine's answer."),
    "ProposeRequest": _obj(
        {"key": {"type": "string", "minLength": 1}},
        {"value": _ANY, "op": {"type": "string", "enum": ["put", "delete", "cas"],
                               "default": "put"},
         "expected": _ANY, "expected_version": {"type": "integer", "minimum": 0},
         "client_id": _CLIENT_ID, "sequence": _SEQUENCE, "acked": _ACKED},
        closed=True, description="A kv write.  ``cas`` needs exactly one of ``expected`` "
                                 "(null: must not exist) and ``expected_version`` (0: must "
                                 "not exist); ``client_id`` and ``sequence`` go together."),
    "KvRecord": _obj(_KV_RECORD),
    "KvRead": _obj({**_KV_RECORD, "index": _INDEX, "term": _INDEX}, _STALE,
                   description="``index``: the applied index the read was served at; "
                               "stale reads add how far behind the node may be."),
    "KvRange": _obj({"kvs": {"type": "array", "items": _ref("KvRecord")},
                     "more": {"type": "boolean"}, "index": _INDEX, "term": _INDEX}, _STALE),
    "SmRead": _obj({"result": _ANY, "index": _INDEX, "term": _INDEX}, _STALE),
    "SmCommand": {"type": "object", "properties": {
        "op": {"type": "string"}, "client_id": _CLIENT_ID, "sequence": _SEQUENCE,
        "acked": _ACKED},
        "description": "A command for the state machine (its own fields; see "
                       "docs/statemachines.md), or an op it serves as a read (counter: get)."},
    "SmQuery": _obj({"query": {"type": "object"}}, {"consistency": _CONSISTENCY}, closed=True,
                    description="A read of the state machine."),
    "Status": _obj(
        {"node_id": _INT, "leader": _NULLABLE_NODE, "term": _INDEX,
         "role": {"type": "string"}, "cluster_size": _INDEX,
         "protocol": {"type": "string", "enum": ["multipaxos", "raft"]},
         "commit_index": _INDEX, "applied_index": _INDEX,
         "nodes": {"type": "array", "items": _obj(
             {"id": _INT, "role": {"type": "string"}, "reachable": {"type": "boolean"}},
             {"api": {"type": ["string", "null"]}, "peer": {"type": ["string", "null"]},
              "last_heartbeat": {"type": ["integer", "null"]},
              "match_index": {"type": ["integer", "null"]}, "applied_index": _INDEX})}},
        {"cluster": {"type": "string"}, "pid": _INT, "last_index": _INDEX,
         "first_index": _INDEX, "snapshot_index": _INDEX,
         "state_hashes": {"type": "object", "additionalProperties": {
             "type": "string", "pattern": "^[0-9a-f]{32}$"},
             "description": "only with ?hashes=1 (admin)"}}),
    "Configuration": _CONFIG,
    "Members": _obj(_MEMBERS),
    "MemberChange": _obj({"status": {"const": "ok"}, "node_id": _NODE_ID,
                          "role": {"type": "string"}, "index": _INDEX}, _MEMBERS),
    "Transfer": _obj({"status": {"const": "ok"}, "leader": _NODE_ID, "term": _INDEX}),
    "Entries": _obj(
        {"entries": {"type": "array", "items": _obj(
            {"index": _INDEX, "state": {"type": "string",
                                        "enum": ["applied", "committed", "pending", "hole"]}},
            {"term": _INDEX, "kind": {"type": "string"}, "command": _ANY,
             "timestamp": {"type": "number"}, "hole": {"type": "boolean"}})},
         "start_index": _INDEX, "end_index": _INDEX, "truncated": {"type": "boolean"},
         "commit_index": _INDEX},
        {"first_index": _INDEX, "applied_index": _INDEX, "last_index": _INDEX,
         "compacted_below": {"type": ["integer", "null"]}}),
    "Health": _obj({"status": {"type": "string", "enum": ["ok", "failed"]},
                    "ready": {"type": "boolean"}, "node_id": _INT, "role": {"type": "string"},
                    "leader": _NULLABLE_NODE, "term": _INDEX},
                   {"pid": _INT, "commit_index": _INDEX, "applied_index": _INDEX},
                   description="Anonymous callers of a cluster that requires tokens get "
                               "the required fields only."),
    "AddNode": _obj({"node_id": _NODE_ID, "address": _ADDRESS},
                    {"api": _ADDRESS, "wait": {"type": "string", "enum": ["learner", "voter"],
                                               "default": "learner"},
                     "joining": {"type": "boolean", "default": False}}, closed=True),
    "RemoveNode": _obj({"node_id": _NODE_ID}, closed=True),
    "TransferLeader": _obj({}, {"node_id": _NODE_ID}, closed=True),
}

_ERROR_TEXT = {
    400: "Bad input (malformed JSON, wrong types, unknown fields, bad ranges, numbers out "
         "of range or not finite, nesting deeper than json_depth_max; stale_sequence): fix "
         "the request",
    401: "No bearer token, or an unknown/revoked one (``WWW-Authenticate: Bearer``)",
    403: "The token's role is too low, the client_id is bound to another token, or the "
         "Origin/Host was refused",
    404: "No such key, state machine or member",
    409: "The membership request contradicts the membership",
    408: "Headers or body not received within header_timeout_ms / body_timeout_ms "
         "(slow client); the connection is closed",
    410: "This node was removed from the cluster",
    413: "The body is over request_bytes_max (or the command over batch_bytes_max)",
    426: "Not an upgrade request: /api/v1/ws is the WebSocket endpoint",
    431: "Request line and headers over header_bytes_max",
    503: "No leader or quorum, queues full, or too many connections: not applied; retry "
         "(any node) after Retry-After",
    504: "No outcome in time: a write may still commit; retry with the same "
         "client_id/sequence",
}


def _error(status: int) -> dict:
    answer = {"description": _ERROR_TEXT[status],
              "content": {"application/json": {"schema": _ref("Error")}}}
    if status == 503:
        answer["headers"] = {"Retry-After": {
            "description": "seconds to wait before retrying", "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    if status == 401:
        answer["headers"] = {"WWW-Authenticate": {
            "required": True, "schema": {"type": "string", "pattern": "^Bearer"}}}
    return answer


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


_CONSISTENCY_PARAM = _query("consistency", _CONSISTENCY,
                            "linearizable (ReadIndex), lease, or stale (this node's state)")
_SM_PATH_PARAM = {"name": "name", "in": "path", "required": True, "schema": _SM_NAME,
                  "description": "an enabled, client-addressable state machine"}

# Per route (path, method): the parts the routing table does not know.
_OPERATIONS = {
    ("/api/v1/consensus/propose", "POST"): {
        "requestBody": _ref("ProposeRequest"),
        "ok": _json(_ref("Committed"), "Committed and applied (a failed cas is 200 too, "
                                       "with result.succeeded false)"),
        "errors": (400, 404, 413, 503, 504)},
    ("/api/v1/consensus/query", "GET"): {
        "parameters": [_query("key", {"type": "string", "minLength": 1}, "the key to read"),
                       _query("prefix", {"type": "string"}, "read every key with this "
                                                            "prefix instead"),
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000},
                              "at most this many keys (prefix reads)"),
                       _query("after", {"type": "string"}, "continue after this key (the "
                              "cursor of the previous page)"),
                       _query("min_revision", {"type": "integer", "minimum": 0},
                              "refuse (503 revision_not_reached) below this revision"),
                       _CONSISTENCY_PARAM],
        "ok": _json({"oneOf": [_ref("KvRead"), _ref("KvRange")]}, "The value (key) or the "
                    "values (prefix)"),
        "errors": (400, 404, 503)},
    ("/api/v1/consensus/batch", "POST"): {
        "requestBody": _obj({"ops": {"type": "array", "minItems": 1, "items": _obj(
                                {}, {"op": {"type": "string"}, "key": {"type": "string"},
                                     "value": _ANY, "sm": {"type": "string"}})}},
                            {"client_id": {"type": "string"}, "sequence": {"type": "integer"},
                             "acked": _ACKED}),
        "ok": _json(_obj({"status": {"const": "committed"}, "index": _INDEX,
                          "results": {"type": "array", "items": _ANY}},
                         {"term": _INDEX, "leader": _NULLABLE_NODE}),
                    "Every operation applied in order at one index, each with its result"),
        "errors": (400, 404, 413, 503, 504)},
    ("/api/v1/consensus/txn", "POST"): {
        "requestBody": _obj({"compare": {"type": "array"}, "success": {"type": "array"}},
                            {"failure": {"type": "array"}, "client_id": {"type": "string"},
                             "sequence": {"type": "integer"}, "acked": _ACKED}),
        "ok": _json(_ref("Committed"), "Committed; result: {succeeded, results}"),
        "errors": (400, 404, 413, 503, 504)},
    ("/api/v1/lease/grant", "POST"): {
        "requestBody": _obj({"ttl_ms": {"type": "integer"}},
                            {"client_id": {"type": "string"}, "sequence": {"type": "integer"},
                             "acked": _ACKED}),
        "ok": _json(_ref("Committed"), "Committed; result: {id, ttl_ms}"),
        "errors": (400, 413, 503, 504)},
    ("/api/v1/lease/revoke", "POST"): {
        "requestBody": _obj({"id": {"type": "integer"}},
                            {"client_id": {"type": "string"}, "sequence": {"type": "integer"},
                             "acked": _ACKED}),
        "ok": _json(_ref("Committed"), "Committed; result: {id, deleted}"),
        "errors": (400, 404, 413, 503, 504)},
    ("/api/v1/lease/keepalive", "POST"): {
        "requestBody": _obj({"id": {"type": "integer", "minimum": 1}}),
        "ok": _json(_obj({"id": _INDEX, "ttl_ms": {"type": "integer"},
                          "remaining_ms": {"type": "integer"}}, {"key_count": _INDEX}),
                    "Renewed on the leader"),
        "errors": (400, 404, 413, 503, 504)},
    ("/api/v1/lease/ttl", "GET"): {
        "parameters": [_query("id", {"type": "integer", "minimum": 1}, "the lease",
                              required=True),
                       _query("keys", {"type": "string", "enum": ["0", "1", "true"]},
                              "1: list the lease's keys (at most 1000)")],
        "ok": _json(_obj({"id": _INDEX, "ttl_ms": {"type": "integer"},
                          "remaining_ms": {"type": "integer"}},
                         {"key_count": _INDEX, "keys": {"type": "array"}}),
                    "The lease's time left, without renewing it"),
        "errors": (400, 404, 503, 504)},
    ("/api/v1/ws", "GET"): {
        "ok": {"description": "Never: an upgrade request switches protocols (101), any "
                              "other request is answered 426.  The upgrade carries the "
                              "bearer token in the Authorization header or, from a "
                              "browser, as the subprotocol paxoslog.bearer.<base64url(token), "
                              "unpadded> next to paxoslog.v1.json (never selected); "
                              "see docs/websocket.md"},
        "errors": (426,)},
    ("/api/v1/cluster/status", "GET"): {
        "parameters": [_query("hashes", {"type": "string", "enum": ["0", "1"]},
                              "1: add state_hashes (admin role; costs one encoding of "
                              "every state machine)")],
        "ok": _json(_ref("Status")), "errors": (400,)},
    ("/api/v1/cluster/members", "GET"): {"ok": _json(_ref("Members")), "errors": ()},
    ("/api/v1/cluster/add-node", "POST"): {
        "requestBody": _ref("AddNode"), "ok": _json(_ref("MemberChange")),
        "errors": (400, 409, 413, 503, 504)},
    ("/api/v1/cluster/remove-node", "POST"): {
        "requestBody": _ref("RemoveNode"), "ok": _json(_ref("MemberChange")),
        "errors": (400, 404, 409, 413, 503, 504)},
    ("/api/v1/cluster/transfer-leader", "POST"): {
        "requestBody": _ref("TransferLeader"), "body_optional": True,
        "ok": _json(_ref("Transfer")), "errors": (400, 404, 409, 413, 503, 504)},
    ("/api/v1/log/entries", "GET"): {
        "parameters": [_query("start_index", {"type": "integer", "minimum": 1},
                              "first index (inclusive)"),
                       _query("end_index", {"type": "integer", "minimum": 1},
                              "last index (inclusive); at most log_entries_max per call")],
        "ok": _json(_ref("Entries")), "errors": (400,)},
    ("/api/v1/sm/{name}", "POST"): {
        "parameters": [_SM_PATH_PARAM],
        "requestBody": {"oneOf": [_ref("SmCommand"), _ref("SmQuery")]},
        "ok": _json({"oneOf": [_ref("Committed"), _ref("SmRead")]},
                    "A committed command, or a read's result"),
        "errors": (400, 404, 413, 503, 504)},
    ("/api/v1/sm/{name}", "GET"): {
        "parameters": [_SM_PATH_PARAM, _CONSISTENCY_PARAM],
        "ok": _json(_ref("SmRead"), "The read's result (other query parameters are the "
                                    "state machine's query fields, as strings)"),
        "errors": (400, 404, 503)},
    ("/api/v1/cluster/overview", "GET"): {
        "ok": _json(_obj({}, description="every member's status (with metrics and recent "
                                         "events), or why it could not be asked"),
                    "The cluster as each member sees itself"),
        "errors": (503,)},
    ("/api/v1/snapshot", "GET"): {
        "ok": {"description": "A consistent backup of every state machine and the session "
                              "table (one zstd frame; paxoslog snapshot restore reads it)",
               "content": {"application/zstd": {"schema": {
                   "type": "string", "contentMediaType": "application/zstd"}}}},
        "errors": (404, 503, 504)},
    ("/api/v1/admin/reload", "POST"): {
        "ok": _json(_obj({"status": {"const": "ok"},
                          "applied": {"type": "array", "items": {"type": "string"}},
                          "needs_restart": {"type": "array", "items": {"type": "string"}},
                          "errors": {"type": "array", "items": {"type": "string"}}}),
                    "What the re-read conf changed (as SIGHUP)"),
        "errors": (400,)},
    ("/dashboard", "GET"): {
        "ok": {"description": "The dashboard page", "content": {
            "text/html": {"schema": {"type": "string"}}}},
        "errors": (404,)},
    ("/dashboard/{file}", "GET"): {
        "parameters": [{"name": "file", "in": "path", "required": True,
                        "schema": {"type": "string"}, "description": "index.html, app.js, "
                                                                     "app.css"}],
        "ok": {"description": "A file of the dashboard", "content": {
            "text/html": {"schema": {"type": "string"}},
            "text/javascript": {"schema": {"type": "string"}},
            "text/css": {"schema": {"type": "string"}}}},
        "errors": (404,)},
    ("/api/v1/openapi.json", "GET"): {
        "ok": _json({"type": "object"}, "This document"), "errors": ()},
    ("/health", "GET"): {
        "parameters": [_query("ready", {"type": "string"},
                              "present: answer 503 while no leader is known (readiness)")],
        "ok": _json(_ref("Health")), "errors": (503,), "ready_503": True},
    ("/metrics", "GET"): {
        "ok": {"description": "Prometheus text format", "content": {
            "text/plain": {"schema": {"type": "string"}}}},
        "errors": ()},
}

# Statuses any request may get before its handler runs: bad HTTP, a slow client, headers
# too large, a refused Origin/Host, a body over the limit, too many connections.
_EVERY = (400, 403, 408, 413, 431, 503)


def _operation(route) -> dict:
    from .routes import SERVED_WHEN_REMOVED as _SERVED_WHEN_REMOVED
    spec = _OPERATIONS[(route.path, route.method)]
    statuses = set(spec["errors"]) | set(_EVERY)
    if route.entry_role > Role.NONE:
        statuses |= {401, 403}
    if route.path not in _SERVED_WHEN_REMOVED:
        statuses.add(410)
    responses = {"200": spec["ok"]}
    for status in sorted(statuses):
        responses[str(status)] = _error(status)
    if spec.get("ready_503"):
        responses["503"] = {
            "description": "?ready=1 and no leader known (the body is the health, not an "
                           "error), or the server refused the request (an Error)",
            "headers": _error(503)["headers"],
            "content": {"application/json": {"schema": {
                "oneOf": [_ref("Health"), _ref("Error")]}}}}
    role = route.role if route.read_role is None else route.read_role
    operation = {
        "operationId": f"{route.handler}",
        "summary": route.summary,
        "x-paxoslog-role": role.label if role > Role.NONE else "none",
        "parameters": spec.get("parameters", []),
        "responses": responses,
    }
    if route.read_role is not None:
        operation["x-paxoslog-write-role"] = route.role.label
        operation["description"] = (f"A read body needs the {route.read_role.label} role, "
                                    f"a command the {route.role.label} role.")
    for name, value, needed in route.param_roles:
        operation["description"] = (f"?{name}={value} needs the {needed.label} role.")
        operation[f"x-paxoslog-role-{name}"] = needed.label
    if route.entry_role == Role.NONE:
        operation["security"] = [{}, {"bearer": []}]
    if "requestBody" in spec:
        operation["requestBody"] = {
            "required": not spec.get("body_optional", False),
            "content": {"application/json": {"schema": spec["requestBody"]}}}
    return operation


@lru_cache(maxsize=1)
def document() -> dict:
    """The OpenAPI 3.1 document of the HTTP API (a fresh dict is not needed: cached)."""
    from .routes import ROUTES
    paths: dict[str, dict] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "paxoslog HTTP API", "version": API_VERSION,
            "description": (
                "A replicated log (Multi-Paxos or Raft) with a versioned key-value store and "
                "plug-in state machines; every node serves every request (followers forward "
                "to the leader).  Errors are {\"error\", \"message\"}.  Where the conf "
                "requires tokens ([auth] required = true) every operation but /health and "
                "this document needs `Authorization: Bearer <token>` with the role in "
                "x-paxoslog-role (admin > write > read).  A request whose Origin is not in "
                "[auth] allowed_origins is refused 403; allowed origins get CORS headers and "
                "OPTIONS preflights are answered 204.  With a [tls] section the API is "
                "HTTPS only (verify against the cluster CA).  See docs/operating.md and "
                "docs/security.md."),
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "a token from `paxoslog auth add-token`"}},
            "schemas": SCHEMAS,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


@lru_cache(maxsize=1)
def document_bytes() -> bytes:
    """The document as served and as checked in (sorted keys, two-space indent)."""
    return (json.dumps(document(), indent=2, sort_keys=True) + "\n").encode()


if __name__ == "__main__":
    sys.stdout.buffer.write(document_bytes())
