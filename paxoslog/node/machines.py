"""``StateMachines``: a node's replicated state (the enabled state machines and the session
table) and how one committed command is applied to it, exactly once.

Applying is deterministic on every replica: the same log gives the same state and the same
results.  A command is the CBOR map of commands.py, addressed by ``sm``.  With a
(client_id, sequence) the session table answers a retry with the first result instead of
executing it again (``DUPLICATE``), and refuses a sequence older than it keeps
(``STALE``).  A state machine error becomes an error result, the same on every replica;
bytes that are not a command map are skipped everywhere (``UNDECODABLE``).

Reads (``query``) answer from this state; the driver decides when a read may be served.
"""

from __future__ import annotations

from typing import Callable

from statemachines import BadCommand, is_internal, snapshot_producer

from .commands import command_key, decode_command, encode_command
from .instructions import DUPLICATE, EXECUTED, STALE, UNDECODABLE, CommandApplied
from .sessions import DUPLICATE as SESSION_DUPLICATE, STALE as SESSION_STALE, SessionTable

__all__ = ["StateMachines", "QueryFailed"]


class QueryFailed(Exception):
    """A read that cannot be answered: HTTP-like ``status`` and an error ``body``."""

    def __init__(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": code, "message": message, **(extra or {})}


class StateMachines:
    """The state machines by name (``kv`` among them) and the session table.

    ``create(name)`` builds an empty state machine (used for fresh copies: restoring a
    received snapshot, verifying one before it is written).  ``record_terms``: the session
    table records Raft terms; a Multi-Paxos slot may carry its value under different
    ballots on different acceptors, so there it records 0 (replicated state must be
    identical everywhere)."""

    def __init__(self, machines: dict, sessions: SessionTable,
                 create: Callable[[str], object], record_terms: bool,
                 on_failure: Callable[[str, int, BaseException], None] | None = None) -> None:
        self.machines = machines
        self.sessions = sessions
        self.create = create
        self.record_terms = record_terms
        self.on_failure = on_failure      # a state machine raised (logged by the shell)

    @property
    def kv(self):
        return self.machines.get("kv")

    def get(self, name: object):
        return self.machines.get(name)

    def names(self) -> list[str]:
        return sorted(self.machines)

    def fresh(self) -> "StateMachines":
        """Empty state machines of the same names and a session table with the same
        bounds (replicas must evict alike)."""
        return StateMachines({name: self.create(name) for name in self.machines},
                             self.sessions.like(), self.create, self.record_terms,
                             self.on_failure)

    # ------------------------------------------------------------------ applying

    def apply_command(self, index: int, term: int, data: bytes) -> CommandApplied:
        """Apply one committed command of the entry at ``index`` (its ``term``)."""
        command = decode_command(data)
        if command is None:
            return CommandApplied(index, term, None, None, None, UNDECODABLE, None)
        key = command_key(command)
        sessions = self.sessions
        sessions.observe(command.pop("ts", None))     # the log clock; not the SM's
        name = command.get("sm")
        if key is not None:
            status, hit = sessions.lookup(*key)
            if status == SESSION_DUPLICATE:
                first_index, first_term, result = hit
                return CommandApplied(first_index, first_term or term, name, command, key,
                                      DUPLICATE, result)
            if status == SESSION_STALE:
                return CommandApplied(index, term, name, command, key, STALE, {
                    "error": "stale_sequence",
                    "message": "this sequence is older than the session keeps; use a new "
                               "sequence"})
        sm = self.machines.get(name)
        if sm is None:
            result = {"error": "bad_request", "message": f"unknown state machine {name!r:.40}"}
        else:
            try:
                result = sm.apply(index, command)
            except BadCommand as exc:
                result = {"error": "bad_request", "message": str(exc)}
            except Exception as exc:  # a state machine bug must not stop consensus
                # Deterministic on every replica (same code, command and state), so the
                # error result is the same everywhere, and the apply loop goes on.
                if self.on_failure is not None:
                    self.on_failure(sm.name, index, exc)
                result = {"error": "apply_failed",
                          "message": f"state machine {sm.name!r} failed: "
                                     f"{type(exc).__name__}: {exc}"[:500]}
        if key is not None:
            sessions.record(key[0], key[1], index, term if self.record_terms else 0, result)
        return CommandApplied(index, term, name, command, key, EXECUTED, result)

    def lookup(self, key: tuple[str, int]) -> tuple[int, tuple | None]:
        """The session table's verdict on a (client_id, sequence) before proposing it."""
        return self.sessions.lookup(*key)

    # ------------------------------------------------------------------ validating

    def validate(self, command: dict, internal: bool = False) -> dict:
        """Check a command against its state machine (raises ``BadCommand``): its
        ``validate`` when it has one, else its ``ops`` when it lists them, else only that
        ``op`` is a string.  ``internal``: the command comes from a node (an authenticated
        peer), which may address internal state machines; a client's never may."""
        sm = self.machines.get(command.get("sm"))
        if sm is None or (not internal and is_internal(sm)):
            raise BadCommand(f"unknown state machine {command.get('sm')!r:.40}")
        fields = {k: v for k, v in command.items()
                  if k not in ("sm", "client_id", "sequence", "ts")}
        validate = getattr(sm, "validate", None)
        if validate is not None:
            out = validate(fields)
            if not isinstance(out, dict):
                raise BadCommand(f"state machine {sm.name!r} returned no command")
            return out
        op = fields.get("op")
        ops = getattr(sm, "ops", None)
        if ops is not None and op not in ops:
            raise BadCommand(f'unknown op {op!r:.40} for state machine {sm.name!r} '
                             f'(ops: {", ".join(ops)})')
        if ops is None and not isinstance(op, str):
            raise BadCommand('"op" must be a string')
        return fields

    def encode_write(self, sm: str, fields: dict, client_id: str, sequence: int, ts: int,
                     internal: bool = False) -> bytes:
        """The log bytes of a client write: validated (``BadCommand``), then encoded with
        its session pair and the proposing node's wall clock ``ts`` (ms)."""
        command = self.validate(dict(fields, sm=sm), internal=internal)
        return encode_command(sm, command, client_id, sequence, ts)

    # ------------------------------------------------------------------ reading

    def query(self, query: dict) -> dict:
        """Answer ``query`` from the current state: ``{"sm": name, "request": {...}}`` reads
        any state machine (-> ``{"result": ...}``); ``{"barrier": True}`` reads nothing (-> ``{}``:
        the caller wants only the index a linearizable read is served at); anything else
        is a kv query (-> the key's record, or ``{"kvs", "more"}`` for a prefix).  Raises
        ``QueryFailed``."""
        if query.get("barrier") is True:
            return {}
        if "sm" in query:
            sm = self.machines.get(query.get("sm"))
            if sm is None:
                raise QueryFailed(404, "not_found", f"no state machine named {query['sm']!r:.64}")
            try:
                return {"result": sm.query(query.get("request"))}
            except BadCommand as exc:
                raise QueryFailed(400, "bad_request", str(exc)) from None
            except Exception as exc:
                if self.on_failure is not None:
                    self.on_failure(sm.name, -1, exc)
                raise QueryFailed(500, "query_failed", f"state machine {sm.name!r} failed: "
                                  f"{type(exc).__name__}: {exc}"[:500]) from None
        kv = self.kv
        if kv is None:
            raise QueryFailed(404, "not_found", "the kv state machine is not enabled")
        try:
            found = kv.query(query)
        except BadCommand as exc:
            raise QueryFailed(400, "bad_request", str(exc)) from None
        if found is None:
            raise QueryFailed(404, "not_found", f"key {query.get('key')!r} not found")
        return dict(found)

    # ------------------------------------------------------------------ snapshots

    def producers(self) -> list:
        """[(name, callable -> snapshot bytes)]: copies taken now, bytes made later (on a
        thread, by the shell)."""
        return [(name, snapshot_producer(sm)) for name, sm in self.machines.items()]

    def restore_from(self, reader) -> list[str]:
        """Load every state machine and the session table from a snapshot ``reader``
        (``states()``, ``sessions``); a state machine the snapshot lacks is restored
        empty.  Returns the names the snapshot holds that are not enabled here."""
        seen, skipped = set(), []
        for name, chunks in reader.states():
            sm = self.machines.get(name)
            if sm is None:
                skipped.append(name)
                continue                        # states() drains the chunks left unread
            sm.restore(b"".join(chunks))
            seen.add(name)
        for name, sm in self.machines.items():
            if name not in seen:
                sm.restore(b"")
        self.sessions.restore(reader.sessions)
        return skipped
