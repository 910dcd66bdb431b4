"""The simulator's replicated key-value state machine and its command encoding.

A command is CBOR ``[client_id, op_id, kind, key, value, expected]``.  Applying is
deterministic; results are what a client sees (get: value; cas: swapped?).

With client sessions (``dedup=True``, the "sessions" profile) ``op_id`` is the client's
sequence number and the state machine keeps a session table: per client, the last
sequence it executed and that sequence's result.  A command whose sequence equals the
last one is a retry: it is not executed again and its result is the first one.  A command
with an older sequence is a stale retry of an operation the client gave up on: it is not
executed at all.  The table is part of the state, so it travels in snapshots.
"""

from __future__ import annotations

import cbor2

__all__ = ["encode_command", "decode_command", "SimKV", "EXECUTED", "DUPLICATE", "STALE"]

# What the last ``apply`` did (``SimKV.last_outcome``).
EXECUTED = "executed"
DUPLICATE = "duplicate"   # a retry of the session's last sequence: first result returned
STALE = "stale"           # older than the session's last sequence: ignored

# Where the session table lives in a snapshot state (never a client key).
_SESSIONS_KEY = "__sessions__"


def encode_command(client_id: int, op_id: int, kind: str, key: str, value=None,
                   expected=None) -> bytes:
    return cbor2.dumps([client_id, op_id, kind, key, value, expected])


def decode_command(data: bytes) -> list:
    return cbor2.loads(data)


class SimKV:
    """Key -> value.  ``apply`` returns the client-visible result.

    ``dedup``: keep a session table and execute each (client, sequence) at most once."""

    def __init__(self, data: dict | None = None, dedup: bool = False) -> None:
        self.data: dict = dict(data or {})
        self.dedup = dedup
        # client -> (last executed sequence, its result)
        self.sessions: dict[int, tuple[int, object]] = {}
        rows = self.data.pop(_SESSIONS_KEY, None)
        if rows is not None:
            self.sessions = {client: (seq, result) for client, seq, result in rows}
        self.last_outcome = EXECUTED

    def apply(self, command: list):
        client, seq, kind, key, value, expected = command
        if self.dedup:
            last = self.sessions.get(client)
            if last is not None and seq <= last[0]:
                self.last_outcome = DUPLICATE if seq == last[0] else STALE
                return last[1] if seq == last[0] else None
        self.last_outcome = EXECUTED
        result = self._execute(kind, key, value, expected)
        if self.dedup:
            self.sessions[client] = (seq, result)
        return result

    def _execute(self, kind: str, key: str, value, expected):
        if kind == "put":
            self.data[key] = value
            return None
        if kind == "delete":
            self.data.pop(key, None)
            return None
        if kind == "cas":
            if self.data.get(key) == expected:
                self.data[key] = value
                return True
            return False
        raise ValueError(f"unknown write kind {kind!r}")

    def get(self, key: str):
        return self.data.get(key)

    def copy(self) -> dict:
        """The state for a snapshot (the session table included when there is one)."""
        state = dict(self.data)
        if self.sessions:
            state[_SESSIONS_KEY] = [[client, seq, result]
                                    for client, (seq, result) in sorted(self.sessions.items())]
        return state
