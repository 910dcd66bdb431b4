"""``RequestRouter``: client requests from the API (and peers) into the driver.

Writes: the command is checked against its state machine (bad input never reaches the
log), stamped with this node's wall clock (the session table's idle clock), encoded and
size-checked, and handed to the driver with its (client_id, sequence); a write without a
client session gets one of the node's own, and a later one of those releases each finished
generation of them (``ServerSessions``).  Reads: a lease read first brings the ticks up
to date.  Requests forwarded by peers (the leader side of forwarding) arrive here too.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable

from statemachines import BadCommand, is_internal
from statemachines.base import CommandTooLarge

from paxoslog.node.sessions import RELEASE_MAX

from .errors import ApiError, bad_request
from .frames import FORWARD
from .runner import ClientRequest

__all__ = ["RequestRouter", "ServerSessions"]

_SERVER_SESSION_WRITES = 128


class ServerSessions:
    """The node's own sessions, for writes whose client gave none: a fresh client id every
    ``per_generation`` writes (no session holds more results than it keeps), and the list
    of finished generations to release.

    A generation is finished when it is no longer the current one and every write given
    one of its pairs has been answered (committed, or failed for good: this node will never
    submit those pairs again).  ``take_release()`` hands out up to ``RELEASE_MAX`` of them
    for the next write without a session to carry; every replica then drops their results
    (node/sessions.py).  ``put_back()``: the carrying write failed, so it may not have
    been committed; they go out again (releasing twice is harmless)."""

    def __init__(self, prefix: str, per_generation: int = _SERVER_SESSION_WRITES) -> None:
        self.prefix = prefix
        self.per_generation = per_generation
        self._issued = 0
        self._current = f"{prefix}-0"       # the generation handing out pairs now
        self._open: dict[str, int] = {}     # generation -> writes not yet answered
        self._finished: deque = deque()     # [client_id, last_sequence] to release

    def next(self) -> tuple[str, int]:
        """A fresh (client_id, sequence).  Sequences run 1..per_generation in every
        generation: the session table treats a sequence at or below its floor (0 for a new
        session) as stale, so a 0 applied after a later sequence of the same session
        (writes retried out of order) was refused with 400 stale_sequence."""
        self._issued += 1
        generation, sequence = divmod(self._issued - 1, self.per_generation)
        if sequence == 0 and generation > 0:
            retired, self._current = self._current, f"{self.prefix}-{generation}"
            if retired not in self._open:
                self._finished.append([retired, self.per_generation])
        return self._current, sequence + 1

    def sent(self, client_id: str) -> None:
        """A write with a pair of ``client_id`` went to the driver."""
        self._open[client_id] = self._open.get(client_id, 0) + 1

    def answered(self, client_id: str) -> None:
        left = self._open[client_id] - 1
        if left:
            self._open[client_id] = left
            return
        del self._open[client_id]
        if client_id != self._current:
            self._finished.append([client_id, self.per_generation])

    def take_release(self) -> list:
        out = []
        finished = self._finished
        while finished and len(out) < RELEASE_MAX:
            out.append(finished.popleft())
        return out

    def put_back(self, release: list) -> None:
        self._finished.extendleft(reversed(release))

    def pending_release(self) -> int:
        return len(self._finished)


class RequestRouter:
    """``machines()``: the driver's current StateMachines (a snapshot install replaces
    them); ``catch_up()``: the ticker's; ``stamp_ms()``: the ``ts`` of the commands this
    node encodes (a ``CommandClock``: never ahead of the log clock by more than the time
    that passed), ms."""

    def __init__(self, runner, machines: Callable, catch_up: Callable[[], int], *,
                 node_id: int, command_bytes_max: int,
                 stamp_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.runner = runner
        self.machines = machines
        self.catch_up = catch_up
        self.node_id = node_id
        self.command_bytes_max = command_bytes_max
        self.stamp_ms = stamp_ms
        self.server_sessions = ServerSessions(f"node{node_id}-{os.urandom(4).hex()}")
        self.member_requests = None       # MembershipAdmin.request (set when wired)
        self.status_view = None           # NodeViews.detailed_status (set when wired)

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
              sequence: int | None = None, internal: bool = False,
              acked: int | None = None) -> ClientRequest:
        """Validate, encode and replicate a command for state machine ``sm``; answered
        with the committed body or an ``ApiError`` (``.deferred``: as a Deferred).
        ``acked``: the client's sequence up to which it has every answer (sessions.py)."""
        ours = client_id is None
        if ours:
            client_id, sequence = self.server_sessions.next()
        release = self.server_sessions.take_release() if ours else None
        try:
            data = self.machines().encode_write(sm, fields, client_id, sequence,
                                                self.stamp_ms(), internal=internal,
                                                release=release, acked=acked)
        except CommandTooLarge as exc:
            return self._refused(release, ApiError(413, "too_large", str(exc)))
        except BadCommand as exc:
            return self._refused(release, bad_request(str(exc)))
        if len(data) > self.command_bytes_max:
            return self._refused(release, ApiError(413, "too_large",
                                                   "the command exceeds batch_bytes_max"))
        return self._send(client_id, sequence, data, ours, release)

    def write_batch(self, ops: list, client_id: str | None = None,
                    sequence: int | None = None, acked: int | None = None) -> ClientRequest:
        """Validate, encode and replicate a batch: ``ops`` is a list of ``(sm, fields,
        op_key)`` (``op_key``: an operation's own (client_id, sequence), or None).  One log
        command, applied in order at one index; answered with the committed body, whose
        ``result`` is ``{"op": "batch", "results": [...]}``, or an ``ApiError`` (an
        invalid operation refuses the whole batch: 400 naming ``ops[i]``)."""
        ours = client_id is None
        if ours:
            client_id, sequence = self.server_sessions.next()
        release = self.server_sessions.take_release() if ours else None
        try:
            data = self.machines().encode_batch_write(ops, client_id, sequence, self.stamp_ms(),
                                                      release=release, acked=acked)
        except BadCommand as exc:
            return self._refused(release, bad_request(str(exc)))
        if len(data) > self.command_bytes_max:
            return self._refused(release, ApiError(
                413, "too_large", f"the batch is {len(data)} bytes encoded, over the "
                                  f"{self.command_bytes_max}-byte limit "
                                  "(batching.batch_bytes_max)"))
        return self._send(client_id, sequence, data, ours, release)

    def _refused(self, release: list | None, error: ApiError) -> ClientRequest:
        if release:
            self.server_sessions.put_back(release)
        return ClientRequest.refused(error)

    def _send(self, client_id: str, sequence: int, data: bytes, ours: bool,
              release: list | None) -> ClientRequest:
        if not ours:
            return self.runner.write((client_id, sequence), data)
        sessions = self.server_sessions
        sessions.sent(client_id)

        def answered(failed: bool) -> None:
            sessions.answered(client_id)
            if release and failed:
                sessions.put_back(release)   # perhaps never committed: send again
        return self.runner.write((client_id, sequence), data, answered)

    def read(self, query: dict, consistency: str) -> ClientRequest:
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
