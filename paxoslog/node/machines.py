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

import cbor2

from statemachines import BadCommand, create as create_state_machine, is_internal, \
    snapshot_chunks_producer

from .commands import (batch_command, command_key, command_map, decode_command, encode_command,
                       is_batch)
from .instructions import DUPLICATE, EXECUTED, STALE, UNDECODABLE, CommandApplied
from .sessions import DUPLICATE as SESSION_DUPLICATE, STALE as SESSION_STALE, SessionTable

__all__ = ["StateMachines", "QueryFailed"]

_ENCODED_KEPT = 1024
# ... and at most this many bytes of them: an encoded batch whose write was never applied
# here (answered as a duplicate, retried under a new encoding, proposed by a leader that
# then lost its leadership) stays until pushed out, with its decoded values beside it;
# with megabyte batches a count alone let that reach gigabytes (tools/bench_memory.py).
_ENCODED_BYTES_MAX = 16 << 20
_LOG_FIELDS = frozenset({"sm", "client_id", "sequence", "ts", "ts_start", "release", "acked"})
_STALE_RESULT = {"error": "stale_sequence",
                 "message": "this sequence is older than the session keeps; use a new sequence"}


class QueryFailed(Exception):
    """A read that cannot be answered: HTTP-like ``status`` and an error ``body``."""

    def __init__(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": code, "message": message, **(extra or {})}


def limited_factories(limits) -> tuple[Callable, Callable[[], SessionTable]]:
    """``(create(name), new_sessions())``: an empty state machine and session table with
    the conf's ``[limits]``, as a node makes them (the server, and restore's check of a
    backup: the same limits, or a backup a node refuses would pass)."""
    def create(name: str):
        return create_state_machine(
            name, **({"key_bytes_max": limits.key_bytes_max,
                      "result_bytes_max": limits.query_result_bytes_max,
                      "txn_ops_max": limits.txn_ops_max,
                      "txn_bytes_max": limits.txn_bytes_max,
                      "leases_max": limits.leases_max,
                      "lease_ttl_ms_min": limits.lease_ttl_ms_min,
                      "lease_ttl_ms_max": limits.lease_ttl_ms_max}
                     if name == "kv" else {}))

    def new_sessions() -> SessionTable:
        return SessionTable(limits.sessions_max, limits.session_results_max,
                            limits.session_results_total_max, limits.session_idle_ms)
    return create, new_sessions


def _refuse_in_batch(sm: object, command: dict) -> None:
    """A lease operation has its own endpoints and no place in a batch: the leader's lease
    keeper follows grants and revokes applied as commands of their own, so a lease granted
    in a batch never expired, and keep-alive called it unknown (found by a review)."""
    if sm == "kv" and str(command.get("op", "")).startswith("lease_"):
        raise BadCommand(f'op {command["op"]!r:.40} is not allowed in a batch: use the '
                         "/api/v1/lease/ endpoints")


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
        # Called with the index before each command (a single one or a whole batch) is
        # applied: kv starts its read budget there (statemachines/kv.py, "Read budget").
        self._begins = [begin for sm in machines.values()
                        if (begin := getattr(sm, "begin_command", None)) is not None]
        self.create = create
        self.record_terms = record_terms
        self.on_failure = on_failure      # a state machine raised (logged by the shell)
        # Commands and batches this node encoded, by the identity of their bytes: when the
        # same bytes object comes back to be applied (this node proposed it as leader),
        # the command is taken from here instead of decoded again.  Only those of state
        # machines with ``plain_commands`` are kept: their commands are exactly what the
        # bytes decode to, so the apply is the same as on every other node.
        self._encoded: dict[int, tuple[bytes, dict]] = {}
        self._encoded_bytes = 0

    @property
    def kv(self):
        return self.machines.get("kv")

    def get(self, name: object):
        return self.machines.get(name)

    def names(self) -> list[str]:
        return sorted(self.machines)

    def describe(self) -> list[list]:
        """``[[name, version], ...]`` sorted by name: what peers compare at the handshake
        (a state machine without a ``version`` attribute is version 1)."""
        return [[name, int(getattr(self.machines[name], "version", 1))]
                for name in sorted(self.machines)]

    def fresh(self) -> "StateMachines":
        """Empty state machines of the same names and a session table with the same
        bounds (replicas must evict alike)."""
        return StateMachines({name: self.create(name) for name in self.machines},
                             self.sessions.like(), self.create, self.record_terms,
                             self.on_failure)

    # ------------------------------------------------------------------ applying

    def apply_command(self, index: int, term: int, data: bytes) -> CommandApplied:
        """Apply one committed command of the entry at ``index`` (its ``term``)."""
        cached = self._encoded.pop(id(data), None) if self._encoded else None
        if cached is not None:
            self._encoded_bytes -= len(cached[0])
        command = cached[1] if cached is not None and cached[0] is data else \
            decode_command(data)
        if command is None:
            return CommandApplied(index, term, None, None, None, UNDECODABLE, None)
        key = command_key(command)
        sessions = self.sessions
        sessions.observe(command.pop("ts", None))     # the log clock; not the SM's
        if "ts_start" in command:
            sessions.observe_start(command.pop("ts_start"))
        release = command.pop("release", None)         # the session table's, too
        if release is not None:
            sessions.release(release)
        acked = command.pop("acked", None)             # answers its client has
        if acked is not None and key is not None:
            sessions.acknowledge(key[0], key[1], acked)
        batch = is_batch(command)
        name = None if batch else command.get("sm")
        if key is not None:
            status, hit = sessions.lookup(*key)
            if status == SESSION_DUPLICATE:
                first_index, first_term, result = hit
                return CommandApplied(first_index, first_term or term, name, command, key,
                                      DUPLICATE, result)
            if status == SESSION_STALE:
                return CommandApplied(index, term, name, command, key, STALE,
                                      dict(_STALE_RESULT))
        for begin in self._begins:         # e.g. kv's read budget: one per command
            begin(index)
        if batch:
            result, changes = self._apply_batch(index, term, command["batch"])
        else:
            result, changes = self._execute(index, name, command)
        if key is not None:
            sessions.record(key[0], key[1], index, term if self.record_terms else 0, result)
        return CommandApplied(index, term, name, command, key, EXECUTED, result, changes)

    def _execute(self, index: int, name: object, command: dict) -> tuple[object, tuple]:
        """Run ``command`` on state machine ``name``: (result, kv changes)."""
        sm = self.machines.get(name)
        if sm is None:
            return {"error": "bad_request", "message": f"unknown state machine {name!r:.40}"}, ()
        try:
            with_changes = getattr(sm, "apply_with_changes", None)
            if with_changes is not None:
                result, changes = with_changes(index, command)
                return result, (changes if name == "kv" else ())
            return sm.apply(index, command), ()
        except Exception as exc:
            return self._failed(sm, index, exc), ()

    def _failed(self, sm, index: int, exc: Exception) -> dict:
        """The error result of a command ``sm`` raised on."""
        if isinstance(exc, BadCommand):
            return {"error": "bad_request", "message": str(exc)}
        # A state machine bug must not stop consensus.  Deterministic on every replica
        # (same code, command and state), so the error result is the same everywhere,
        # and the apply loop goes on.
        if self.on_failure is not None:
            self.on_failure(sm.name, index, exc)
        return {"error": "apply_failed",
                "message": f"state machine {sm.name!r} failed: {type(exc).__name__}: "
                           f"{exc}"[:500]}

    def _apply_batch(self, index: int, term: int, ops: object) -> tuple[dict, tuple]:
        """A batch: every operation in order at ``index``, each with its own result (a
        failed one does not undo the others).  An operation with its own session pair is
        deduplicated like a command of its own.  The kv state machine's operations, the
        bulk of most batches, take a direct path to ``apply_with_changes`` (same results,
        same errors as ``_execute``)."""
        if type(ops) is not list:
            return {"error": "bad_request", "message": "a batch holds a list of operations"}, ()
        sessions = self.sessions
        record_term = term if self.record_terms else 0
        results = []
        append = results.append
        changes: list = []
        kv = self.machines.get("kv")
        kv_apply = getattr(kv, "apply_with_changes", None)
        execute = self._execute
        for op in ops:
            if type(op) is not dict:
                append({"error": "bad_request", "message": "not an operation map"})
                continue
            op_key = None
            if "client_id" in op:
                op_key = command_key(op)
                if op_key is not None:
                    status, hit = sessions.lookup(*op_key)
                    if status == SESSION_DUPLICATE:
                        append(hit[2])
                        continue
                    if status == SESSION_STALE:
                        append(dict(_STALE_RESULT))
                        continue
            name = op.get("sm", "kv")
            if kv_apply is not None and name == "kv":
                try:
                    result, op_changes = kv_apply(index, op)
                except Exception as exc:
                    result, op_changes = self._failed(kv, index, exc), ()
            else:
                result, op_changes = execute(index, name, op)
            if op_changes:
                changes += op_changes
            if op_key is not None:
                sessions.record(op_key[0], op_key[1], index, record_term, result)
            append(result)
        return {"op": "batch", "results": results}, tuple(changes)

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
        # The log-level fields (the session pair, the clock, the finished sessions a
        # node releases) are the node layer's, never the state machine's.
        fields = {k: v for k, v in command.items() if k not in _LOG_FIELDS}
        if not internal and fields.get("op") in (getattr(sm, "internal_ops", None) or ()):
            # e.g. kv's lease_expire: only the leader's lease keeper proposes it
            raise BadCommand(f'op {fields["op"]!r} of state machine {sm.name!r} is internal '
                             'to the cluster')
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

    def validate_logged(self, command: dict) -> None:
        """Check a decoded log command another node forwarded (``BadCommand``): a single
        command like ``validate`` (internal state machines allowed: the peer is
        authenticated), a batch operation by operation."""
        if is_batch(command):
            ops = command["batch"]
            if type(ops) is not list or not ops:
                raise BadCommand("a batch holds a non-empty list of operations")
            for position, op in enumerate(ops):
                if type(op) is not dict:
                    raise BadCommand(f"ops[{position}]: not an operation map")
                try:
                    self.validate(op if "sm" in op else dict(op, sm="kv"))
                    _refuse_in_batch(op.get("sm", "kv"), op)
                except BadCommand as exc:
                    raise BadCommand(f"ops[{position}]: {exc}") from None
            return
        self.validate(command, internal=True)

    def encode_write(self, sm: str, fields: dict, client_id: str, sequence: int, ts: int,
                     internal: bool = False, release: list | None = None,
                     acked: int | None = None) -> bytes:
        """The log bytes of a client write: validated (``BadCommand``), then encoded with
        its session pair, the proposing node's wall clock ``ts`` (ms), the node's
        finished session generations ``release`` and the sequence up to which the client
        has its answers, ``acked`` (see sessions.py)."""
        command = self.validate(dict(fields, sm=sm), internal=internal)
        if not getattr(self.machines.get(sm), "plain_commands", False):
            return encode_command(sm, command, client_id, sequence, ts, release, acked)
        command = command_map(sm, command, client_id, sequence, ts, release, acked)
        data = cbor2.dumps(command)
        self._keep_encoded(data, command)
        return data

    def encode_batch_write(self, ops: list, client_id: str, sequence: int, ts: int,
                           release: list | None = None, acked: int | None = None) -> bytes:
        """The log bytes of a batch: ``ops`` is a list of ``(sm, fields, op_key)`` with
        ``op_key`` an operation's own (client_id, sequence) or None.  Every operation is
        validated first (``BadCommand`` naming ``ops[i]``): an invalid one refuses the whole
        batch, so nothing of it reaches the log."""
        validators: dict = {}
        commands = []
        for position, (sm, fields, op_key) in enumerate(ops):
            validate = validators.get(sm)
            if validate is None:
                validate = validators[sm] = self._validator(sm)
            try:
                command = validate(fields)
                _refuse_in_batch(sm, command)
            except BadCommand as exc:
                raise BadCommand(f"ops[{position}]: {exc}") from None
            if sm != "kv":
                command["sm"] = sm             # a batch operation without "sm" is kv's
            if op_key is not None:
                command["client_id"], command["sequence"] = op_key
            commands.append(command)
        command = batch_command(commands, client_id, sequence, ts, release, acked)
        data = cbor2.dumps(command)
        if all(getattr(self.machines.get(sm), "plain_commands", False) for sm in validators):
            self._keep_encoded(data, command)
        # (else its validate may give a tuple, which comes back a list)
        return data

    def forget_encoded(self, data: bytes) -> None:
        """``data`` goes to another node (a follower forwards its client's write): the
        leader applies its own copy, so the map kept for it here would never be used."""
        cached = self._encoded.pop(id(data), None) if self._encoded else None
        if cached is not None:               # cached[0] is data: both alive, one id
            self._encoded_bytes -= len(cached[0])

    def _keep_encoded(self, data: bytes, command: dict) -> None:
        """Keep the map ``data`` encodes, to apply as is if ``data`` comes back (this node
        proposed it as leader); only maps of ``plain_commands`` state machines (and the
        session fields: strings, integers, lists of them), which decode to equal maps."""
        encoded = self._encoded
        while encoded and (len(encoded) >= _ENCODED_KEPT
                           or self._encoded_bytes + len(data) > _ENCODED_BYTES_MAX):
            oldest = encoded.pop(next(iter(encoded)))   # never applied here: forget it
            self._encoded_bytes -= len(oldest[0])
        if len(data) <= _ENCODED_BYTES_MAX:
            encoded[id(data)] = (data, command)      # the map encoded, applied as is
            self._encoded_bytes += len(data)

    def _validator(self, name: str):
        """``fields -> validated command`` for a client's command to ``name`` (what
        ``validate`` does, resolved once per batch and state machine)."""
        sm = self.machines.get(name)
        if sm is None or is_internal(sm):
            def unknown(fields):
                raise BadCommand(f"unknown state machine {name!r:.40}")
            return unknown
        validate = getattr(sm, "validate", None)
        if validate is None:
            return lambda fields: self.validate(dict(fields, sm=name))
        internal_ops = getattr(sm, "internal_ops", None) or ()

        def checked(fields: dict) -> dict:
            if internal_ops and fields.get("op") in internal_ops:
                raise BadCommand(f'op {fields["op"]!r} of state machine {sm.name!r} is '
                                 'internal to the cluster')
            if "sm" in fields or "client_id" in fields or "sequence" in fields or \
                    "ts" in fields or "ts_start" in fields:
                fields = {k: v for k, v in fields.items()
                          if k not in ("sm", "client_id", "sequence", "ts", "ts_start")}
            out = validate(fields)
            if not isinstance(out, dict):
                raise BadCommand(f"state machine {sm.name!r} returned no command")
            return out
        return checked

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
        except Exception as exc:
            # A read changes nothing: the node answers 500 and serves on (it used to stop,
            # and so did every node the same read reached).
            if self.on_failure is not None:
                self.on_failure(kv.name, -1, exc)
            raise QueryFailed(500, "query_failed", f"the kv query failed: "
                              f"{type(exc).__name__}") from None
        if found is None:
            raise QueryFailed(404, "not_found", f"key {query.get('key')!r} not found")
        return dict(found)

    # ------------------------------------------------------------------ snapshots

    def producers(self) -> list:
        """[(name, callable -> the snapshot's pieces)]: copies taken now, bytes made later
        (on a thread, by the shell), a piece at a time."""
        return [(name, snapshot_chunks_producer(sm)) for name, sm in self.machines.items()]

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
            restore_chunks = getattr(sm, "restore_chunks", None)
            if restore_chunks is not None:
                restore_chunks(chunks)          # built piece by piece (a large kv store)
            else:
                sm.restore(b"".join(chunks))
            seen.add(name)
        for name, sm in self.machines.items():
            if name not in seen:
                sm.restore(b"")
        self.sessions.restore(reader.sessions)
        return skipped
