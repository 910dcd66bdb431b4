"""``RequestRouter``: client requests from the API (and peers) into the driver.

Writes: the command is checked against its state machine (bad input never reaches the
log), stamped with this node's wall clock (the session table's idle clock), encoded and
size-checked, and handed to the driver with its (client_id, sequence); a write without a
client session gets one of the node's own.  Reads: a lease read first brings the ticks up
to date.  Requests forwarded by peers (the leader side of forwarding) arrive here too.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from twisted.internet import defer

from statemachines import BadCommand, is_internal
from statemachines.base import CommandTooLarge

from .errors import ApiError, bad_request
from .frames import FORWARD

__all__ = ["RequestRouter"]

_SERVER_SESSION_WRITES = 128


class RequestRouter:
    """``machines()``: the driver's current StateMachines (a snapshot install replaces
    them); ``catch_up()``: the ticker's; ``wall_ms()``: the wall clock in ms."""

    def __init__(self, runner, machines: Callable, catch_up: Callable[[], int], *,
                 node_id: int, command_bytes_max: int,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.runner = runner
        self.machines = machines
        self.catch_up = catch_up
        self.node_id = node_id
        self.command_bytes_max = command_bytes_max
        self.wall_ms = wall_ms
        # Writes without a client session get one of ours: a fresh client id every
        # _SERVER_SESSION_WRITES writes, so no session holds more results than it keeps.
        self._client_prefix = f"node{node_id}-{os.urandom(4).hex()}"
        self._sequence = 0
        self.member_requests = None       # MembershipAdmin.request (set when wired)
        self.status_view = None           # NodeViews.detailed_status (set when wired)

    def next_client_sequence(self) -> tuple[str, int]:
        """A fresh (client_id, sequence) for a write whose client gave none.  Sequences run
        1..128 in every generation: the session table treats a sequence at or below its
        floor (0 for a new session) as stale, so a 0 applied after a later sequence of the
        same session (writes retried out of order) was refused with 400 stale_sequence."""
        self._sequence += 1
        generation, sequence = divmod(self._sequence - 1, _SERVER_SESSION_WRITES)
        return f"{self._client_prefix}-{generation}", sequence + 1

    def client_machine(self, name: str):
        """The state machine a client may address by ``name`` (None: absent or internal)."""
        sm = self.machines().get(name)
        return None if sm is None or is_internal(sm) else sm

    def internal_machine(self, name: str) -> bool:
        sm = self.machines().get(name)
        return sm is not None and is_internal(sm)

    def client_machine_names(self) -> list[str]:
        return [n for n in self.machines().names() if self.client_machine(n) is not None]

    def write(self, sm: str, fields: dict, client_id: str | None = None,
              sequence: int | None = None, internal: bool = False) -> defer.Deferred:
        """Validate, encode and replicate a command for state machine ``sm``; fires with
        the committed body or fails with ``ApiError``."""
        if client_id is None:
            client_id, sequence = self.next_client_sequence()
        try:
            data = self.machines().encode_write(sm, fields, client_id, sequence,
                                                self.wall_ms(), internal=internal)
        except CommandTooLarge as exc:
            return defer.fail(ApiError(413, "too_large", str(exc)))
        except BadCommand as exc:
            return defer.fail(bad_request(str(exc)))
        if len(data) > self.command_bytes_max:
            return defer.fail(ApiError(413, "too_large", "the command exceeds batch_bytes_max"))
        return self.runner.write((client_id, sequence), data)

    def write_batch(self, ops: list, client_id: str | None = None,
                    sequence: int | None = None) -> defer.Deferred:
        """Validate, encode and replicate a batch: ``ops`` is a list of ``(sm, fields,
        op_key)`` (``op_key``: an operation's own (client_id, sequence), or None).  One log
        command, applied in order at one index; fires with the committed body, whose
        ``result`` is ``{"op": "batch", "results": [...]}``, or fails with ``ApiError`` (an
        invalid operation refuses the whole batch: 400 naming ``ops[i]``)."""
        if client_id is None:
            client_id, sequence = self.next_client_sequence()
        try:
            data = self.machines().encode_batch_write(ops, client_id, sequence, self.wall_ms())
        except BadCommand as exc:
            return defer.fail(bad_request(str(exc)))
        if len(data) > self.command_bytes_max:
            return defer.fail(ApiError(413, "too_large",
                                       f"the batch is {len(data)} bytes encoded, over the "
                                       f"{self.command_bytes_max}-byte limit "
                                       "(batching.batch_bytes_max)"))
        return self.runner.write((client_id, sequence), data)

    def read(self, query: dict, consistency: str) -> defer.Deferred:
        if consistency == "lease":
            self.catch_up()
        return self.runner.read(query, consistency)

    def forwarded(self, peer: int, payload: list) -> None:
        """A FORWARD frame from a peer: ``[kind, request_id, op, body]``.  Raises
        ValueError on a malformed one (the transport logs and drops it)."""
        kind, request_id, op, body = payload
        assert kind == FORWARD
        if type(request_id) is not int:
            raise ValueError("forward request id must be an integer")
        if op == "propose":
            if type(body) is not bytes:
                raise ValueError("a forwarded proposal carries command bytes")
            self.runner.forwarded_write(peer, request_id, body)
        elif op == "read":
            if not isinstance(body, dict) or not isinstance(body.get("query"), dict):
                raise ValueError("a forwarded read carries {query}")
            self.runner.forwarded_read(peer, request_id, body["query"])
        elif op == "member":
            if (not isinstance(body, dict) or body.get("op") not in ("add", "remove", "transfer")
                    or not isinstance(body.get("body"), dict)):
                raise ValueError("a forwarded membership request carries {op, body}")
            d = self.member_requests(body["op"], body["body"], forwarded=True)
            d.addCallbacks(lambda response: self.runner.transport.reply_forward(
                               peer, request_id, 200, response),
                           self._member_failed, errbackArgs=(peer, request_id))
        elif op == "status":
            # A member's dashboard overview asks for our status (read-only).
            self.runner.transport.reply_forward(peer, request_id, 200, self.status_view())
        else:
            raise ValueError(f"unknown forwarded operation {op!r:.20}")

    def _member_failed(self, failure, peer: int, request_id: int) -> None:
        if failure.check(ApiError):
            exc = failure.value
            self.runner.transport.reply_forward(peer, request_id, exc.status, exc.body())
        else:
            self.runner.transport.reply_forward(peer, request_id, 500, {
                "error": "internal", "message": "internal error"})
