"""``membership``: the cluster_members table, kept in step with the configuration.

One row per node: ``node_id``, ``address`` (its peer address), ``api`` (its HTTP API
address, may be None), ``status`` (active / leaving / removed), ``added_at_index`` and
``removed_at_index`` (log indexes).  Commands::

    {"op": "add",    "node_id": n, "address": "host:port", "api"?: "host:port"}
    {"op": "leave",  "node_id": n}                          # active -> leaving
    {"op": "remove", "node_id": n}                          # -> removed (row kept)

Reads: ``{"node_id": n}`` -> the row (None when never added); ``{}`` -> every row by id.

Internal: no client endpoint reads or writes it (``internal = True``; the API answers 404
and the leader refuses it in client writes); GET /api/v1/cluster/members shows the rows.
The node writes these rows itself (server/membership.py): ``add`` before the configuration
entry that makes a node a learner (so every replica knows its address first), ``leave``
before the configuration without it, ``remove`` once that configuration is committed; the
leader also adds the rows of the initial members.  The node is always enabled (it is the
address book of nodes added later).  Removed ids are never re-added: node ids are not
reused.
"""

from __future__ import annotations

import cbor2

from .base import BadCommand

__all__ = ["MembershipStateMachine", "STATUSES"]

STATUSES = ("active", "leaving", "removed")
_NODE_ID_MAX = (1 << 31) - 1     # = paxoslog.config.NODE_ID_MAX (the conf's bound)


class MembershipStateMachine:
    name = "membership"
    version = 1
    ops = ("add", "leave", "remove")
    # Written only by the node's membership admin path; never addressable by clients (a
    # client that could mark a member removed could end the cluster).
    internal = True

    def __init__(self) -> None:
        self._rows: dict[int, dict] = {}
        self.restores = 0            # bumped by restore(): the node re-reads the table

    @staticmethod
    def _node_id(command: dict) -> int:
        node_id = command.get("node_id")
        if type(node_id) is not int or not 1 <= node_id <= _NODE_ID_MAX:
            raise BadCommand(f'"node_id" must be an integer in 1..{_NODE_ID_MAX}')
        return node_id

    def validate(self, command: dict) -> dict:
        if not isinstance(command, dict):
            raise BadCommand("a membership command must be an object")
        op = command.get("op")
        if op not in self.ops:
            raise BadCommand(f'"op" must be one of {", ".join(self.ops)}, got {op!r:.40}')
        allowed = {"op", "node_id", "address", "api"} if op == "add" else {"op", "node_id"}
        unknown = sorted(set(command) - allowed)
        if unknown:
            raise BadCommand(f"unknown field(s) for {op}: {', '.join(unknown)[:200]}")
        out = {"op": op, "node_id": self._node_id(command)}
        if op == "add":
            out["address"] = _host_port(command.get("address"), "address")
            if command.get("api") is not None:
                out["api"] = _host_port(command.get("api"), "api")
        return out

    def apply(self, index: int, command: dict) -> dict:
        op = command.get("op")
        node_id = self._node_id(command)
        row = self._rows.get(node_id)
        if op == "add":
            if row is not None:
                raise BadCommand(f"node {node_id} is already a member ({row['status']})"
                                 if row["status"] != "removed" else
                                 f"node {node_id} was removed; node ids are not reused")
            row = {"node_id": node_id, "address": command["address"],
                   "api": command.get("api"), "status": "active",
                   "added_at_index": index, "removed_at_index": None}
        elif op in ("leave", "remove"):
            if row is None or row["status"] == "removed":
                raise BadCommand(f"node {node_id} is not a member")
            if op == "leave" and row["status"] != "active":
                raise BadCommand(f"node {node_id} is already leaving")
            row = dict(row, status="leaving" if op == "leave" else "removed")
            if op == "remove":
                row["removed_at_index"] = index
        else:
            raise BadCommand(f"unknown op {op!r:.40}")
        self._rows[node_id] = row
        return dict(row)

    def query(self, request: dict) -> object:
        if not isinstance(request, dict):
            raise BadCommand("a membership read must be an object")
        if not request:
            return {"members": [dict(self._rows[n]) for n in sorted(self._rows)]}
        unknown = sorted(set(request) - {"node_id"})
        if unknown:
            raise BadCommand(f"unknown field(s): {', '.join(unknown)[:200]}")
        node_id = request["node_id"]
        if isinstance(node_id, str) and node_id.isdigit():
            node_id = int(node_id)               # GET parameters are strings
        row = self._rows.get(self._node_id({"node_id": node_id}))
        return dict(row) if row is not None else None

    def snapshot(self) -> bytes:
        return cbor2.dumps([[n, r["address"], r["status"], r["added_at_index"],
                             r["removed_at_index"], r["api"]]
                            for n, r in sorted(self._rows.items())])

    def restore(self, data: bytes) -> None:
        try:
            rows = {}
            for item in (cbor2.loads(data) if data else []):
                node_id, address, status, added, removed = item[:5]
                api = item[5] if len(item) > 5 else None      # rows written before "api"
                if status not in STATUSES:
                    raise ValueError(f"bad status {status!r}")
                rows[node_id] = {"node_id": node_id, "address": address, "api": api,
                                 "status": status, "added_at_index": added,
                                 "removed_at_index": removed}
        except Exception as exc:
            raise ValueError(f"membership snapshot is damaged: {exc}") from None
        self._rows = rows
        self.restores += 1


def _host_port(value: object, name: str) -> str:
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadCommand(f'"{name}" must be "host:port"')
    return value
