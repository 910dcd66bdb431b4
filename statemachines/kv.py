"""``kv``: a versioned key-value store (etcd-style metadata per key).

Each key holds ``value`` (any JSON value but null), ``create_index`` (log index of the put
that created it), ``mod_index`` (index of the last change) and ``version`` (number of puts
since creation; a delete resets the key).  Commands::

    {"op": "put",    "key": k, "value": v}
    {"op": "delete", "key": k}
    {"op": "cas",    "key": k, "value": v, "expected": e}          # e null: must be absent
    {"op": "cas",    "key": k, "value": v, "expected_version": n}  # n 0: must be absent
    {"op": "delete_range", "prefix": p, "limit"?: n, "after"?: c}
        -> {"deleted": count, "more": bool, "cursor"?: last key deleted}

Coordination (leases.py, txn.py; docs/coordination.md)::

    {"op": "put",    "key": k, "value": v, "lease": id}            # attached to a lease
    {"op": "txn",    "compare": [...], "success": [...], "failure": [...]}
    {"op": "lease_grant",  "ttl_ms": n}       -> {"id" (the log index, or above), "ttl_ms"}
    {"op": "lease_revoke", "id": n}           -> the lease and its keys are deleted
    {"op": "lease_promote", "term": t}        (internal: a new leader, before it expires any)
    {"op": "lease_expire", "ids": [...], "term": t}   (internal: the leader's expiry)

A put without ``lease`` detaches the key from its lease (as etcd does); a delete detaches
it too.

Queries: ``{"key": k}`` -> the key's record or None; ``{"prefix": p, "limit": n,
"after"?: c}`` -> the keys starting with ``p`` (and greater than ``c``) in order, at most
``n`` records and at most ``result_bytes_max`` bytes of them (as JSON, counted
conservatively: ASCII-escaped), with ``more: true`` when either limit cut the answer (one
record is always returned, however large) and then ``cursor``: the last key returned; pass
it as ``after`` for the next page.  Pages never repeat or skip a key that exists throughout
the walk.  ``delete_range`` deletes at most ``limit`` (default 1000) keys per command, so
one log entry never holds an unbounded amount of work; ``cursor`` continues the same way.
Results are small dicts (they are also kept in the session table for retried requests),
deterministic for a given log.

Version 2 (``version``) added ``delete_range``: a node still at version 1 would refuse it
while the others apply it, so peers refuse to mix versions (the handshake compares them).
Version 3: a transaction's ranges share one result budget, ``TXN_RESULT_BYTES_MAX`` (each
had the node's own ``result_bytes_max``); a range past it answers ``more: true`` (with no
``cursor`` when it got no record: read that prefix again outside the transaction).
Version 4: the budget counts ``get`` results too, and is shared by every transaction of a
command (a batch of transactions is bounded as a whole; see "Read budget" below).  The
first read that does not fit uses it up: it and every later read of the command are cut
without reading a record (a ``get`` answers the key's metadata without ``value`` and
``"truncated": true``; a ``range`` ``more: true``).  ``cas`` and value compares use JSON
equality (``json_equal`` in txn.py): ``true`` is not ``1``, ``false`` is not ``0``, at any
depth; numbers compare by value (``1`` equals ``1.0``).

Read budget.  The reads of one log command share ``TXN_RESULT_BYTES_MAX`` bytes of results
(each record counted as in a prefix read).  The node calls ``begin_command(index)`` before
each command, a single one or a whole batch (node/machines.py), so a single command always
has the whole budget and the ops of a batch share one; applied without the node (tests,
tools), a new log index starts it.  Deterministic: it depends on the log only.
``restore`` starts afresh: a snapshot is taken between entries.

Size: one state machine: its commands, queries, transactions, leases and snapshots all
read and change the one sorted key table and its budget, and the record sizing at the end
(``_record_weight``) is what the prefix reads and the read budget count with; apart, each
piece would reach back into the table's private state.
"""

from __future__ import annotations

import json
import weakref
from typing import Callable, Iterator

import cbor2
from sortedcontainers import SortedDict

from .base import (VALUE_DEPTH_MAX, BadCommand, CborArrayReader, cbor_head, nesting_exceeds,
                   read_array)
from .leases import LeaseTable
from .txn import compare_holds, json_equal, validate_txn

__all__ = ["KVStateMachine", "OPS", "LEASE_OPS", "INTERNAL_OPS"]

OPS = ("put", "delete", "cas", "delete_range", "txn", "lease_grant", "lease_revoke")
LEASE_OPS = ("lease_grant", "lease_revoke", "lease_promote", "lease_expire")
INTERNAL_OPS = ("lease_promote", "lease_expire")
_EXPIRE_IDS_MAX = 10_000
_DELETE_RANGE_DEFAULT = 1000
_SCALARS = frozenset((str, int, float, bool))
_set = dict.__setitem__       # an existing key: SortedDict's order does not change
_PREFIX_LIMIT_MAX = 10_000
RESULT_BYTES_MAX_DEFAULT = 4 << 20
# The results of a command's reads (txn get and range), all of them together, in every
# transaction of the command (a batch holds many): a constant, not the node's
# limits.query_result_bytes_max, since a result is replicated (session table) and must be
# the same on every node.  128 ranges of 1 MB each built 123 MB answers on every replica,
# held each node's loop 0.7-1.7 s and cost an election; so did 128 gets of one 1 MB value
# (131 MB from a 2 KB transaction), and a batch multiplied either by its transactions.
TXN_RESULT_BYTES_MAX = 4 << 20


class KVStateMachine:
    """Key -> (value, create_index, mod_index, version), in key order."""

    name = "kv"
    plain_commands = True   # validate gives JSON's types only (tests/unit/test_batch_apply.py)
    internal_ops = INTERNAL_OPS
    # 2: delete_range, the prefix cursor; 3: one result budget per txn; 4: gets count, one
    # budget per command (batch), cut reads read nothing; JSON equality in cas/compares
    version = 4

    def __init__(self, key_bytes_max: int = 4096,
                 result_bytes_max: int = RESULT_BYTES_MAX_DEFAULT, *,
                 txn_ops_max: int = 128, txn_bytes_max: int = 256 << 10,
                 leases_max: int = 100_000, lease_ttl_ms_min: int = 100,
                 lease_ttl_ms_max: int = 86_400_000) -> None:
        self.key_bytes_max = key_bytes_max
        self.result_bytes_max = result_bytes_max
        self.txn_ops_max = txn_ops_max
        self.txn_bytes_max = txn_bytes_max
        self.leases_max = leases_max
        self.lease_ttl_ms_min = lease_ttl_ms_min
        self.lease_ttl_ms_max = lease_ttl_ms_max
        self._data: SortedDict = SortedDict()
        self.leases = LeaseTable()
        self._changes: list | None = None    # apply_with_changes collects here
        self._cuts: list[weakref.ref] = []   # snapshots being written (_Cut), weakly
        self._reads_index: int | None = None  # the read budget's command (module docstring)
        self._reads_left = TXN_RESULT_BYTES_MAX

    # ------------------------------------------------------------------ validation

    def _check_key(self, key: object) -> str:
        if not isinstance(key, str):
            raise BadCommand(f'"key" must be a string, got {_type(key)}')
        if not key:
            raise BadCommand('"key" must not be empty')
        if len(key) * 4 > self.key_bytes_max and len(key.encode()) > self.key_bytes_max:
            raise BadCommand(f'"key" is longer than {self.key_bytes_max} bytes')
        return key

    def _check_lease(self, lease: object) -> int:
        if type(lease) is not int or lease < 1:
            raise BadCommand('"lease" must be a lease id (a positive integer)')
        return lease

    def validate(self, command: dict) -> dict:
        """The normalized command (only the fields apply reads), or ``BadCommand``.
        Internal ops (``internal_ops``) are refused to clients by the caller."""
        if not isinstance(command, dict):
            raise BadCommand("a kv command must be an object")
        op = command.get("op", "put")
        if op not in OPS + INTERNAL_OPS:
            raise BadCommand(f'"op" must be one of {", ".join(OPS)}, got {op!r:.40}')
        if op == "txn":
            return validate_txn(command, self._check_key, self._check_lease,
                                self.txn_ops_max, self.txn_bytes_max)
        if op in LEASE_OPS:
            return self._validate_lease_op(op, command)
        if op == "delete_range":
            prefix, limit, after = self._range(command, _DELETE_RANGE_DEFAULT)
            out = {"op": op, "prefix": prefix, "limit": limit}
            if after is not None:
                out["after"] = after
            return out
        key = self._check_key(command.get("key"))
        if op == "delete":
            return {"op": op, "key": key}
        if "value" not in command or command["value"] is None:
            raise BadCommand(f'"{op}" needs a non-null "value"')
        value = command["value"]
        if type(value) not in _SCALARS and nesting_exceeds(value, VALUE_DEPTH_MAX):
            raise BadCommand(f'"value" nests deeper than {VALUE_DEPTH_MAX} levels')
        out = {"op": op, "key": key, "value": value}
        if op == "cas":
            has_value = "expected" in command
            has_version = command.get("expected_version") is not None
            if has_value == has_version:
                raise BadCommand('"cas" needs exactly one of "expected" (null: the key must be '
                                 'absent) or "expected_version" (0: absent)')
            if has_version:
                version = command["expected_version"]
                if type(version) is not int or version < 0:
                    raise BadCommand('"expected_version" must be a non-negative integer')
                out["expected_version"] = version
            else:
                if nesting_exceeds(command["expected"], VALUE_DEPTH_MAX):
                    raise BadCommand(f'"expected" nests deeper than {VALUE_DEPTH_MAX} levels')
                out["expected"] = command["expected"]
        if command.get("lease") is not None:
            out["lease"] = self._check_lease(command["lease"])
        return out

    def _validate_lease_op(self, op: str, command: dict) -> dict:
        if op == "lease_grant":
            ttl = command.get("ttl_ms")
            lo, hi = self.lease_ttl_ms_min, self.lease_ttl_ms_max
            if type(ttl) is not int or not lo <= ttl <= hi:
                raise BadCommand(f'"ttl_ms" must be an integer in {lo}..{hi} '
                                 '(limits.lease_ttl_ms_min/max)')
            # Admission only (this replica's state, not the log's): grants in flight may
            # take the table a little past the bound.
            if len(self.leases) >= self.leases_max:
                raise BadCommand(f"there are {len(self.leases)} leases already; at most "
                                 f"{self.leases_max} (limits.leases_max)")
            return {"op": op, "ttl_ms": ttl}
        if op == "lease_revoke":
            return {"op": op, "id": self._check_lease(command.get("id"))}
        term = command.get("term")
        if type(term) is not int or term < 0:
            raise BadCommand('"term" must be a non-negative integer')
        if op == "lease_promote":
            return {"op": op, "term": term}
        ids = command.get("ids")
        if (not isinstance(ids, list) or not 1 <= len(ids) <= _EXPIRE_IDS_MAX
                or any(type(i) is not int for i in ids)):
            raise BadCommand(f'"ids" must be 1..{_EXPIRE_IDS_MAX} lease ids')
        return {"op": op, "ids": ids, "term": term}

    # ------------------------------------------------------------------ applying

    def apply(self, index: int, command: dict) -> dict:
        """Apply a validated command committed at ``index``; returns the result."""
        return self._apply(index, command)

    def apply_with_changes(self, index: int, command: dict) -> tuple[dict, tuple]:
        """``apply``, and the key changes it made: ``((key, record, previous), ...)`` with
        ``record`` the key's new ``(value, create_index, mod_index, version)`` (None: it was
        deleted) and ``previous`` the record before (None: it did not exist), in the order
        they were made (a transaction, a delete_range or a lease's end changes several).
        Records are the stored immutable tuples (no copies).  A failed cas or the delete of
        an absent key changes nothing: ``()``.  The watch streams are derived from these,
        so they are the same on every replica (the result alone, which the session table
        keeps, does not carry the previous value)."""
        self._changes = changes = []
        try:
            return self._apply(index, command), tuple(changes)
        finally:
            self._changes = None

    def begin_command(self, index: int) -> None:
        """A new log command (a single one, or a whole batch) is about to be applied: its
        reads start with the whole budget (module docstring, "Read budget").  The node
        calls it for every command; applied alone (tests, tools), a new index does."""
        self._reads_index = index
        self._reads_left = TXN_RESULT_BYTES_MAX

    def _apply(self, index: int, command: dict) -> dict:
        if index != self._reads_index:
            self.begin_command(index)
        op = command["op"]
        if op == "txn":
            return self._txn(index, command)
        if op in LEASE_OPS:
            return self._lease_op(index, op, command)
        if op == "delete_range":
            return self._delete_range(command)
        key = command["key"]
        current = self._data.get(key)
        lease = command.get("lease")
        if lease is not None and lease not in self.leases:
            return _lease_not_found(lease)
        if op == "put":
            return self._put(index, key, command["value"], current, lease)
        if op == "delete":
            return self._delete(key, current)
        if op == "cas":
            if "expected_version" in command:
                ok = (current[3] if current else 0) == command["expected_version"]
            else:
                expected = command["expected"]
                ok = current is None if expected is None else (
                    current is not None and json_equal(current[0], expected))
            if not ok:
                result = {"op": "cas", "succeeded": False,
                          "current_version": current[3] if current else 0}
                if current is not None:
                    result["current_mod_index"] = current[2]
                return result
            result = self._put(index, key, command["value"], current, lease)
            result["op"] = "cas"
            result["succeeded"] = True
            return result
        raise BadCommand(f"unknown op {op!r}")  # validate() keeps this unreachable

    def _range(self, request: dict, default_limit: int) -> tuple[str, int, str | None]:
        """(prefix, limit, after) of a prefix query or delete_range, or ``BadCommand``."""
        prefix = request.get("prefix")
        if not isinstance(prefix, str):
            raise BadCommand('"prefix" must be a string')
        limit = request.get("limit", default_limit)
        if type(limit) is not int or not 1 <= limit <= _PREFIX_LIMIT_MAX:
            raise BadCommand(f'"limit" must be an integer in 1..{_PREFIX_LIMIT_MAX}')
        after = request.get("after")
        if after is not None and not isinstance(after, str):
            raise BadCommand('"after" must be a string (the "cursor" of the previous page)')
        return prefix, limit, after

    def _keys(self, prefix: str, after: str | None) -> Iterator[str]:
        """Keys starting with ``prefix``, in order, greater than ``after`` if given."""
        if after is not None and after >= prefix:
            keys = self._data.irange(minimum=after, inclusive=(False, True))
        else:
            keys = self._data.irange(minimum=prefix)
        for key in keys:
            if not key.startswith(prefix):
                return
            yield key

    def _delete_range(self, command: dict) -> dict:
        limit = command["limit"]
        doomed = []
        more = False
        for key in self._keys(command["prefix"], command.get("after")):
            if len(doomed) == limit:
                more = True
                break
            doomed.append(key)
        for key in doomed:
            self._delete(key, self._data[key])
        result = {"op": "delete_range", "deleted": len(doomed), "more": more}
        if more:
            result["cursor"] = doomed[-1]
        return result

    def _put(self, index: int, key: str, value: object, current: tuple | None,
             lease: int | None = None) -> dict:
        if self._cuts:
            self._keep(key, current)
        if current is None:
            record = (value, index, index, 1)
            self._data[key] = record
        else:
            record = (value, current[1], index, current[3] + 1)
            _set(self._data, key, record)
        if self._changes is not None:
            self._changes.append((key, record, current))
        if lease is not None:
            self.leases.attach(key, lease)
        elif self.leases.key_lease:
            self.leases.detach(key)
        return {"op": "put", "created": current is None, "version": record[3],
                "create_index": record[1], "mod_index": index}

    def _delete(self, key: str, current: tuple | None) -> dict:
        if current is None:
            return {"op": "delete", "deleted": False}
        if self._cuts:
            self._keep(key, current)
        del self._data[key]
        if self._changes is not None:
            self._changes.append((key, None, current))
        if self.leases.key_lease:
            self.leases.detach(key)
        return {"op": "delete", "deleted": True, "version": current[3]}

    # ------------------------------------------------------------------ transactions

    def _txn(self, index: int, command: dict) -> dict:
        """All compares, then one branch's ops in order (txn.py); the caller checked the
        command, and every check that can fail (a missing lease) runs before any op."""
        key_lease = self.leases.key_lease
        data = self._data
        ok = all(compare_holds(c, data.get(c["key"]), key_lease.get(c["key"], 0))
                 for c in command["compare"])
        ops = command["success" if ok else "failure"]
        for op in ops:
            lease = op.get("lease")
            if lease is not None and lease not in self.leases:
                return _lease_not_found(lease)
        results = []
        for op in ops:
            kind = op["op"]
            if kind == "put":
                key = op["key"]
                results.append(self._put(index, key, op["value"], data.get(key),
                                         op.get("lease")))
            elif kind == "delete":
                results.append(self._delete(op["key"], data.get(op["key"])))
            elif kind == "get":
                results.append(self._txn_get(op["key"]))
            else:
                results.append(self._txn_range(op["prefix"], op["limit"]))
        return {"op": "txn", "succeeded": ok, "results": results}

    def _txn_get(self, key: str) -> dict:
        """A txn get within the command's read budget: the record, or (it does not fit:
        the budget is used up) its metadata without ``value`` and ``truncated: true``."""
        record = self.get(key)
        if record is None:
            return {"op": "get", "kv": None}
        left = self._reads_left
        weight = _record_weight(record, left) if left > 0 else 1
        if weight <= left:
            self._reads_left = left - weight
            return {"op": "get", "kv": record}
        self._reads_left = 0
        del record["value"]
        return {"op": "get", "kv": record, "truncated": True}

    def _txn_range(self, prefix: str, limit: int) -> dict:
        """A txn range within the command's read budget (strict: a record that does not
        fit is not returned, and uses the budget up).  Once it is used up, a range reads
        no record: ``more: true`` when the prefix has a key at all."""
        if self._reads_left <= 0:
            more = next(self._keys(prefix, None), None) is not None
            return {"op": "range", "kvs": [], "more": more}
        found, size, cut = self._prefix_read(prefix, limit, None, self._reads_left,
                                             strict=True)
        self._reads_left = 0 if cut else self._reads_left - size
        return {"op": "range", **found}

    # ------------------------------------------------------------------ leases

    def _lease_op(self, index: int, op: str, command: dict) -> dict:
        leases = self.leases
        if op == "lease_grant":
            lease = leases.new_id(index)
            leases.grant(lease, command["ttl_ms"])
            return {"op": op, "id": lease, "ttl_ms": command["ttl_ms"]}
        if op == "lease_revoke":
            lease = command["id"]
            if lease not in leases:
                return _lease_not_found(lease)
            return {"op": op, "id": lease, "deleted": self._drop_lease(lease)}
        if op == "lease_promote":
            leases.promote(command["term"])
            return {"op": op, "term": leases.promoted_term, "leases": len(leases)}
        # lease_expire
        if not leases.expiry_is_current(command["term"]):
            return {"op": op, "expired": [], "deleted": 0, "stale_term": True}
        expired, deleted = [], 0
        for lease in command["ids"]:
            if lease in leases:
                deleted += self._drop_lease(lease)
                expired.append(lease)
        return {"op": op, "expired": expired, "deleted": deleted}

    def _drop_lease(self, lease: int) -> int:
        """Delete ``lease`` and its keys; how many keys."""
        keys = self.leases.remove(lease)
        for key in sorted(keys):
            if self._cuts:
                self._keep(key, self._data[key])
            current = self._data.pop(key)
            if self._changes is not None:
                self._changes.append((key, None, current))
        return len(keys)

    def lease_info(self, lease: int, keys_max: int = 0) -> dict | None:
        """``{"id", "ttl_ms", "key_count", "keys"?}`` (at most ``keys_max`` keys, in order),
        or None for an unknown lease."""
        ttl = self.leases.ttl_ms.get(lease)
        if ttl is None:
            return None
        keys = self.leases.keys[lease]
        out = {"id": lease, "ttl_ms": ttl, "key_count": len(keys)}
        if keys_max:
            out["keys"] = sorted(keys)[:keys_max]
        return out

    # ------------------------------------------------------------------ reading

    def get(self, key: str) -> dict | None:
        record = self._data.get(key)
        if record is None:
            return None
        out = {"key": key, "value": record[0], "create_index": record[1],
               "mod_index": record[2], "version": record[3]}
        lease = self.leases.key_lease.get(key) if self.leases.key_lease else None
        if lease is not None:
            out["lease"] = lease
        return out

    def query(self, request: dict) -> object:
        if not isinstance(request, dict):
            raise BadCommand("a kv query must be an object")
        if "prefix" in request:
            prefix, limit, after = self._range(request, 1000)
            return self._prefix_read(prefix, limit, after, self.result_bytes_max)[0]
        return self.get(self._check_key(request.get("key")))

    def _prefix_read(self, prefix: str, limit: int, after: str | None, budget: int,
                     strict: bool = False) -> tuple[dict, int, bool]:
        """(result, its size, cut by bytes): the records of ``prefix`` after ``after``, at
        most ``limit`` of them and ``budget`` bytes (unless ``strict``, the first record
        however large).  A record's weight is measured only up to what is left (a large
        value is never encoded whole to learn that it does not fit)."""
        found = []
        more = cut = False
        size = 0
        for key in self._keys(prefix, after):
            if len(found) == limit:
                more = True
                break
            record = self.get(key)
            left = budget - size if found or strict else 1 << 62   # the first: any size
            weight = _record_weight(record, left)
            if weight > left:
                more = cut = True
                break
            size += weight
            found.append(record)
        result = {"kvs": found, "more": more}
        if more and found:
            result["cursor"] = found[-1]["key"]
        return result, size, cut

    def __len__(self) -> int:
        return len(self._data)

    def records(self):
        """Every key in order as (key, value, create_index, mod_index, version)."""
        for key, (value, create_index, mod_index, version) in self._data.items():
            yield key, value, create_index, mod_index, version

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        return self.snapshot_copy()()

    def _copy_rows(self) -> tuple[int, Callable[[], Iterator[list]]]:
        """The rows of a snapshot as of now: ``[key, value, create_index, mod_index,
        version]`` plus the lease id for a key attached to one; then, when leases were
        ever used, a trailer ``[None, lease table]`` (a key is never None).  A store that
        never saw a lease writes exactly the format it wrote before leases existed.

        Returns (row count, a callable iterating the rows, safe on another thread).  What
        is copied now is the key list (a ``_Cut``: 8 bytes per key, 19 ms at a million
        keys) and the lease attachments; the records are read later, each as it was at
        the cut (the store keeps a changed key's old record for every live cut).  Copying
        the records now cost 0.4-1.3 s of the event loop at a million keys (a dict lookup
        per key), longer than an election timeout; a list per row, as once built, also
        cost about 110 bytes per key."""
        cut = _Cut(self._data)
        self._cuts = [ref for ref in self._cuts if ref() is not None]
        self._cuts.append(weakref.ref(cut))
        key_lease = dict(self.leases.key_lease) if self.leases.key_lease else None
        trailer = None
        if len(self.leases) or self.leases.promoted_term or self.leases.last_id:
            # last_id too: a store whose leases are all gone must not give their ids again
            trailer = [None, self.leases.state()]

        def rows() -> Iterator[list]:
            if key_lease:
                for key, record in cut.records():
                    lease = key_lease.get(key)
                    yield [key, *record] if lease is None else [key, *record, lease]
            else:
                for key, record in cut.records():
                    yield [key, *record]
            if trailer is not None:
                yield trailer
        return len(cut.keys) + (trailer is not None), rows

    def _keep(self, key: str, current: tuple | None) -> None:
        """``key`` is about to change: every live cut keeps its record as it is now (the
        first change since the cut is the one that counts)."""
        dead = False
        for ref in self._cuts:
            cut = ref()
            if cut is None:
                dead = True
            else:
                cut.before.setdefault(key, current)
        if dead:
            self._cuts = [ref for ref in self._cuts if ref() is not None]

    def snapshot_copy(self) -> Callable[[], bytes]:
        """Copy the (immutable) records now; encode later, on any thread."""
        _count, rows = self._copy_rows()
        return lambda: cbor2.dumps(list(rows()))

    def snapshot_chunks_copy(self) -> Callable[[], Iterator[bytes]]:
        """``snapshot_copy`` in pieces: the CBOR array head, then the rows a group at a
        time (a group ends after _CHUNK_ROWS_MAX rows or about _CHUNK_BYTES of string
        values), so no single encoding call holds the GIL for long."""
        count, rows = self._copy_rows()

        def pieces() -> Iterator[bytes]:
            yield cbor_head(4, count)
            group: list = []
            weight = 0
            for row in rows():
                group.append(row)
                value = row[1]
                weight += len(value) if isinstance(value, (str, bytes)) else 64
                if len(group) >= _CHUNK_ROWS_MAX or weight >= _CHUNK_BYTES:
                    yield cbor2.dumps(group)[len(cbor_head(4, len(group))):]
                    group, weight = [], 0
            if group:
                yield cbor2.dumps(group)[len(cbor_head(4, len(group))):]
        return pieces

    def restore(self, data: bytes) -> None:
        self.restore_chunks((data,) if data else ())

    def restore_chunks(self, chunks) -> None:
        """Restore from a snapshot's pieces as they are read (``snapshot_chunks_copy``'s,
        or one piece holding it all): the state is built row by row, never beside a
        second copy of the snapshot's bytes."""
        restored = SortedDict()
        try:
            attachments, lease_state = _load_rows(read_array(chunks), restored)
            leases = LeaseTable()
            leases.load(lease_state if lease_state is not None else [0, []], attachments)
        except Exception as exc:  # cbor2 raises several types; all mean a bad snapshot
            raise ValueError(f"kv snapshot is damaged: {exc}") from None
        self._data = restored
        self._cuts = []        # earlier cuts read the replaced store, which stays as it was
        self.leases = leases
        self._reads_index = None           # a snapshot ends an entry: the next read afresh

    def snapshot_checker(self) -> "_SnapshotChecker":
        """Checks a snapshot as its pieces are written (``feed`` each, then ``close``):
        every row decodes and has the shape ``restore`` needs, without keeping any of it;
        raises ``ValueError`` where ``restore`` would."""
        return _SnapshotChecker()


class _SnapshotChecker:
    __slots__ = ("_reader", "_lease_state", "_attachments")

    def __init__(self) -> None:
        self._reader = CborArrayReader()
        self._lease_state = [0, []]
        self._attachments: list = []

    def feed(self, chunk: bytes) -> None:
        try:
            found = _load_rows(self._reader.feed(chunk), None)
        except Exception as exc:
            raise ValueError(f"kv snapshot is damaged: {exc}") from None
        self._attachments += found[0]
        if found[1] is not None:
            self._lease_state = found[1]

    def close(self) -> None:
        try:
            self._reader.close()
            LeaseTable().load(self._lease_state, self._attachments)
        except Exception as exc:
            raise ValueError(f"kv snapshot is damaged: {exc}") from None


_UNSAVED = object()


class _Cut:
    """The store as of one moment, for a snapshot encoded later on another thread: the
    keys in order, copied at once, and the old record of every key changed since (kept by
    the store, on the event loop, before each change).  The store holds cuts weakly: one
    nobody reads any more stops costing anything."""

    __slots__ = ("data", "keys", "before", "__weakref__")

    def __init__(self, data: SortedDict) -> None:
        self.data = data
        self.keys = list(data)
        self.before: dict = {}

    def records(self) -> Iterator[tuple]:
        """(key, record) in key order, as at the cut.  Safe while the loop writes: the
        store saves a key's record in ``before`` before it changes ``data``, and this reads
        ``data`` first, then ``before`` (each a single dict operation under the GIL), so a
        change that lands between the two reads is seen in ``before``."""
        data, saved, get = self.data, self.before.get, dict.get
        for key in self.keys:
            record = get(data, key)
            old = saved(key, _UNSAVED)
            yield key, (record if old is _UNSAVED else old)


def _load_rows(rows, into: SortedDict | None) -> tuple[list, list | None]:
    """Rows of a snapshot into ``into`` (None: only check them); returns the keys attached
    to leases and the lease table's state (None when these rows had no trailer)."""
    attachments = []
    lease_state = None
    for row in rows:
        if row[0] is None:
            lease_state = row[1]
            continue
        key, value, create_index, mod_index, version, *lease = row
        if type(key) is not str:
            raise ValueError(f"a key is {type(key).__name__}, not a string")
        if into is not None:
            into[key] = (value, create_index, mod_index, version)
        if lease:
            attachments.append((key, lease[0]))
    return attachments, lease_state


_CHUNK_ROWS_MAX = 512
_CHUNK_BYTES = 256 << 10

_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode   # ASCII-escaped
_escape = json.encoder.encode_basestring_ascii
_STRING_PIECE = 1 << 16


def _record_weight(record: dict, limit: int) -> int:
    """What a record costs in a read's result: its compact, ASCII-escaped JSON plus one
    (a separator), exactly ``len(_dumps(record)) + 1`` when that is at most ``limit``; when
    it is more, some number above ``limit``, found without encoding much more than
    ``limit`` bytes of it."""
    value = record["value"]
    if type(value) is str and (len(value) + len(record["key"])) * 12 + 160 <= limit:
        return len(_dumps(record)) + 1            # surely fits: one call of the C encoder
    return _json_size(record, limit - 1) + 1


def _json_size(value: object, limit: int) -> int:
    """``len(_dumps(value))`` when that is at most ``limit``, else some number above
    ``limit``: stops once the sum passes it, and encodes a string only when its length
    fits, a long one a piece at a time (``_string_size``)."""
    kind = type(value)
    if kind is not dict and kind is not list and kind is not tuple:
        return _scalar_size(value, limit)
    size = 0
    stack = [value]
    push = stack.append
    while stack:
        item = stack.pop()
        if type(item) is dict:
            size += 1 + 2 * len(item) if item else 2     # {} , and :
            if size > limit:
                return size
            for key in item:
                if type(key) is str:
                    size += _string_size(key, limit - size)
                else:                                    # json's own key conversion
                    size += len(_dumps({key: 0})) - 4
                if size > limit:
                    return size
            children = item.values()
        else:
            size += len(item) + 1 if item else 2         # [] and ,
            if size > limit:
                return size
            children = item
        for child in children:
            kind = type(child)
            if kind is str:
                size += (len(_escape(child)) if len(child) <= 64
                         else _string_size(child, limit - size))
            elif kind is int:
                size += len(int.__repr__(child))
            elif kind is dict or kind is list or kind is tuple:
                push(child)
                continue
            else:
                size += _scalar_size(child, limit - size)
            if size > limit:
                return size
    return size


def _string_size(text: str, limit: int) -> int:
    """``len(_escape(text))`` when that is at most ``limit``, else more than ``limit``."""
    length = len(text)
    if length + 2 > limit:
        return limit + 1                                 # escaping only adds
    if length <= _STRING_PIECE:
        return len(_escape(text))
    size = 2
    for start in range(0, length, _STRING_PIECE):
        size += len(_escape(text[start:start + _STRING_PIECE])) - 2
        if size > limit:
            break
    return size


def _scalar_size(value: object, limit: int) -> int:
    """``len(_dumps(value))`` of a value that is no array or object (more than ``limit``
    as soon as it surely is)."""
    kind = type(value)
    if kind is str:
        return _string_size(value, limit)
    if kind is int:
        return len(int.__repr__(value))
    if kind is bool:
        return 4 if value else 5
    if value is None:
        return 4
    if kind is float and value - value == 0:             # finite: json writes its repr
        return len(float.__repr__(value))
    if kind is bytes and len(value) + 5 > limit:
        return limit + 1                                 # str(b"..."), escaped, is longer
    return len(_dumps(value))


def _type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "a number", float: "a number", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _lease_not_found(lease: int) -> dict:
    return {"error": "lease_not_found", "message": f"lease {lease} does not exist (expired, "
                                                   "revoked or never granted)"}
