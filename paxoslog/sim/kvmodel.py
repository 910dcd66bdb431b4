"""The simulator's replicated key-value state machine and its command encoding.

A command is CBOR ``[client_id, op_id, kind, key, value, expected]``.  Applying is
deterministic; results are what a client sees (get: value; cas: swapped?)."""

from __future__ import annotations

import cbor2

__all__ = ["encode_command", "decode_command", "SimKV"]


def encode_command(client_id: int, op_id: int, kind: str, key: str, value=None,
                   expected=None) -> bytes:
    return cbor2.dumps([client_id, op_id, kind, key, value, expected])


def decode_command(data: bytes) -> list:
    return cbor2.loads(data)


class SimKV:
    """Key -> value.  ``apply`` returns the client-visible result."""

    def __init__(self, data: dict | None = None) -> None:
        self.data: dict = dict(data or {})

    def apply(self, command: list):
        _, _, kind, key, value, expected = command
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
        return dict(self.data)
