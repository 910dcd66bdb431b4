"""``counter``: named integer counters.

Commands (through the log; each returns ``{"name", "value"}`` with the new value)::

    {"op": "add",   "name": n, "delta": d}     # d: integer, default 1 (may be negative)
    {"op": "reset", "name": n}                 # back to 0 (the counter is forgotten)

Read (served as a linearizable/lease/stale read, never logged)::

    {"op": "get", "name": n}  or the query {"name": n}  -> {"name", "value"} (0 when unset)

Values stay within signed 64 bits: an ``add`` that would overflow is refused when applied
(an error result, the same on every replica; the counter is unchanged).
"""

from __future__ import annotations

import cbor2

from .base import BadCommand

__all__ = ["CounterStateMachine"]

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1
_NAME_CHARS_MAX = 256


class CounterStateMachine:
    name = "counter"
    plain_commands = True   # validate gives JSON's types only (tests/unit/test_batch_apply.py)
    version = 1
    ops = ("add", "reset")
    read_ops = ("get",)

    def __init__(self) -> None:
        self._values: dict[str, int] = {}

    # ------------------------------------------------------------------ validation

    @staticmethod
    def _name(command: dict) -> str:
        name = command.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= _NAME_CHARS_MAX:
            raise BadCommand(f'"name" must be a string of 1-{_NAME_CHARS_MAX} characters')
        return name

    def validate(self, command: dict) -> dict:
        if not isinstance(command, dict):
            raise BadCommand("a counter command must be an object")
        op = command.get("op")
        if op not in self.ops:
            raise BadCommand(f'"op" must be one of {", ".join(self.ops)} (reads: get), '
                             f'got {op!r:.40}')
        allowed = {"op", "name", "delta"} if op == "add" else {"op", "name"}
        unknown = sorted(set(command) - allowed - {"sm"})
        if unknown:
            raise BadCommand(f"unknown field(s) for {op}: {', '.join(unknown)[:200]}")
        name = self._name(command)
        if op == "reset":
            return {"op": op, "name": name}
        delta = command.get("delta", 1)
        if type(delta) is not int or not _INT_MIN <= delta <= _INT_MAX:
            raise BadCommand('"delta" must be a 64-bit integer')
        return {"op": op, "name": name, "delta": delta}

    # ------------------------------------------------------------------ applying

    def apply(self, index: int, command: dict) -> dict:
        op = command.get("op")
        name = self._name(command)
        if op == "add":
            delta = command.get("delta", 1)
            if type(delta) is not int:
                raise BadCommand('"delta" must be an integer')
            value = self._values.get(name, 0) + delta
            if not _INT_MIN <= value <= _INT_MAX:
                raise BadCommand(f"counter {name!r} would overflow 64 bits")
            if value:
                self._values[name] = value
            else:
                self._values.pop(name, None)
            return {"name": name, "value": value}
        if op == "reset":
            self._values.pop(name, None)
            return {"name": name, "value": 0}
        if op == "get":
            return {"name": name, "value": self._values.get(name, 0)}
        raise BadCommand(f"unknown op {op!r:.40}")

    def query(self, request: dict) -> dict:
        if not isinstance(request, dict):
            raise BadCommand("a counter query must be an object")
        unknown = sorted(set(request) - {"op", "name"})
        if unknown:
            raise BadCommand(f"unknown field(s) for get: {', '.join(unknown)[:200]}")
        if request.get("op", "get") != "get":
            raise BadCommand('a counter read is {"op": "get", "name": ...}')
        name = self._name(request)
        return {"name": name, "value": self._values.get(name, 0)}

    def __len__(self) -> int:
        return len(self._values)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        return cbor2.dumps(sorted(self._values.items()))

    def snapshot_copy(self):
        items = sorted(self._values.items())
        return lambda: cbor2.dumps(items)

    def restore(self, data: bytes) -> None:
        try:
            rows = cbor2.loads(data) if data else []
            values = {}
            for name, value in rows:
                if not isinstance(name, str) or type(value) is not int:
                    raise ValueError("bad row")
                values[name] = value
        except Exception as exc:
            raise ValueError(f"counter snapshot is damaged: {exc}") from None
        self._values = values
