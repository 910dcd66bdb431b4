"""``kv``: a versioned key-value store (etcd-style metadata per key).

Each key holds ``value`` (any JSON value but null), ``create_index`` (log index of the put
that created it), ``mod_index`` (index of the last change) and ``version`` (number of puts
since creation; a delete resets the key).  Commands::

    {"op": "put",    "key": k, "value": v}
    {"op": "delete", "key": k}
    {"op": "cas",    "key": k, "value": v, "expected": e}          # e null: must be absent
    {"op": "cas",    "key": k, "value": v, "expected_version": n}  # n 0: must be absent

Queries: ``{"key": k}`` -> the key's record or None; ``{"prefix": p, "limit": n}`` -> the
keys starting with ``p`` in order, at most ``n`` records and at most ``result_bytes_max``
bytes of them (as JSON, counted conservatively: ASCII-escaped), with ``more: true`` when
either limit cut the answer (one record is always returned, however large).  Results are
small dicts (they are also kept in the session table for retried requests), deterministic
for a given log.
"""

from __future__ import annotations

import json
from typing import Callable, Iterator

import cbor2
from sortedcontainers import SortedDict

from .base import VALUE_DEPTH_MAX, BadCommand, nesting_exceeds

__all__ = ["KVStateMachine", "OPS"]

OPS = ("put", "delete", "cas")
_PREFIX_LIMIT_MAX = 10_000
RESULT_BYTES_MAX_DEFAULT = 4 << 20


class KVStateMachine:
    """Key -> (value, create_index, mod_index, version), in key order."""

    name = "kv"

    def __init__(self, key_bytes_max: int = 4096,
                 result_bytes_max: int = RESULT_BYTES_MAX_DEFAULT) -> None:
        self.key_bytes_max = key_bytes_max
        self.result_bytes_max = result_bytes_max
        self._data: SortedDict = SortedDict()

    # ------------------------------------------------------------------ validation

    def _check_key(self, key: object) -> str:
        if not isinstance(key, str):
            raise BadCommand(f'"key" must be a string, got {_type(key)}')
        if not key:
            raise BadCommand('"key" must not be empty')
        if len(key) * 4 > self.key_bytes_max and len(key.encode()) > self.key_bytes_max:
            raise BadCommand(f'"key" is longer than {self.key_bytes_max} bytes')
        return key

    def validate(self, command: dict) -> dict:
        """The normalized command (only the fields apply reads), or ``BadCommand``."""
        if not isinstance(command, dict):
            raise BadCommand("a kv command must be an object")
        op = command.get("op", "put")
        if op not in OPS:
            raise BadCommand(f'"op" must be one of {", ".join(OPS)}, got {op!r:.40}')
        key = self._check_key(command.get("key"))
        if op == "delete":
            return {"op": op, "key": key}
        if "value" not in command or command["value"] is None:
            raise BadCommand(f'"{op}" needs a non-null "value"')
        value = command["value"]
        if nesting_exceeds(value, VALUE_DEPTH_MAX):
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
        return out

    # ------------------------------------------------------------------ applying

    def apply(self, index: int, command: dict) -> dict:
        """Apply a validated command committed at ``index``; returns the result."""
        op = command["op"]
        key = command["key"]
        current = self._data.get(key)
        if op == "put":
            return self._put(index, key, command["value"], current)
        if op == "delete":
            if current is None:
                return {"op": "delete", "deleted": False}
            del self._data[key]
            return {"op": "delete", "deleted": True, "version": current[3]}
        if op == "cas":
            if "expected_version" in command:
                ok = (current[3] if current else 0) == command["expected_version"]
            else:
                expected = command["expected"]
                ok = current is None if expected is None else (
                    current is not None and current[0] == expected)
            if not ok:
                result = {"op": "cas", "succeeded": False,
                          "current_version": current[3] if current else 0}
                if current is not None:
                    result["current_mod_index"] = current[2]
                return result
            result = self._put(index, key, command["value"], current)
            result["op"] = "cas"
            result["succeeded"] = True
            return result
        raise BadCommand(f"unknown op {op!r}")  # validate() keeps this unreachable

    def _put(self, index: int, key: str, value: object, current: tuple | None) -> dict:
        if current is None:
            record = (value, index, index, 1)
        else:
            record = (value, current[1], index, current[3] + 1)
        self._data[key] = record
        return {"op": "put", "created": current is None, "version": record[3],
                "create_index": record[1], "mod_index": index}

    # ------------------------------------------------------------------ reading

    def get(self, key: str) -> dict | None:
        record = self._data.get(key)
        if record is None:
            return None
        return {"key": key, "value": record[0], "create_index": record[1],
                "mod_index": record[2], "version": record[3]}

    def query(self, request: dict) -> object:
        if not isinstance(request, dict):
            raise BadCommand("a kv query must be an object")
        if "prefix" in request:
            prefix = request["prefix"]
            if not isinstance(prefix, str):
                raise BadCommand('"prefix" must be a string')
            limit = request.get("limit", 1000)
            if type(limit) is not int or not 1 <= limit <= _PREFIX_LIMIT_MAX:
                raise BadCommand(f'"limit" must be an integer in 1..{_PREFIX_LIMIT_MAX}')
            found = []
            more = False
            size = 0
            budget = self.result_bytes_max
            for key in self._data.irange(minimum=prefix):
                if not key.startswith(prefix):
                    break
                if len(found) == limit:
                    more = True
                    break
                record = self.get(key)
                size += len(json.dumps(record, separators=(",", ":"), default=str)) + 1
                if size > budget and found:
                    more = True
                    break
                found.append(record)
            return {"kvs": found, "more": more}
        return self.get(self._check_key(request.get("key")))

    def __len__(self) -> int:
        return len(self._data)

    def records(self):
        """Every key in order as (key, value, create_index, mod_index, version)."""
        for key, (value, create_index, mod_index, version) in self._data.items():
            yield key, value, create_index, mod_index, version

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        return self.snapshot_copy()()

    def snapshot_copy(self) -> Callable[[], bytes]:
        """Copy the (immutable) records now; encode later, on any thread."""
        items = list(self._data.items())

        def encode() -> bytes:
            return cbor2.dumps([[key, *record] for key, record in items])
        return encode

    def snapshot_chunks_copy(self) -> Callable[[], Iterator[bytes]]:
        """``snapshot_copy`` in pieces: the CBOR array head, then the rows a group at a
        time (a group ends after _CHUNK_ROWS_MAX rows or about _CHUNK_BYTES of string
        values), so no single encoding call holds the GIL for long."""
        items = list(self._data.items())

        def pieces() -> Iterator[bytes]:
            yield _array_head(len(items))
            group: list = []
            weight = 0
            for key, record in items:
                group.append([key, *record])
                value = record[0]
                weight += len(value) if isinstance(value, (str, bytes)) else 64
                if len(group) >= _CHUNK_ROWS_MAX or weight >= _CHUNK_BYTES:
                    yield cbor2.dumps(group)[len(_array_head(len(group))):]
                    group, weight = [], 0
            if group:
                yield cbor2.dumps(group)[len(_array_head(len(group))):]
        return pieces

    def restore(self, data: bytes) -> None:
        try:
            rows = cbor2.loads(data) if data else []
            restored = SortedDict()
            for key, value, create_index, mod_index, version in rows:
                restored[key] = (value, create_index, mod_index, version)
        except Exception as exc:  # cbor2 raises several types; all mean a bad snapshot
            raise ValueError(f"kv snapshot is damaged: {exc}") from None
        self._data = restored


_CHUNK_ROWS_MAX = 512
_CHUNK_BYTES = 256 << 10


def _array_head(count: int) -> bytes:
    """The CBOR head of an array of ``count`` items, as cbor2 writes it (an array's
    encoding is its head followed by its items' encodings)."""
    return cbor2.dumps([None] * count)[:-count or None]


def _type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "a number", float: "a number", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
