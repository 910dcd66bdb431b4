"""Commands as they sit in the log: one CBOR map per command, addressed to a state machine.

``{"sm": "kv", "op": "put", "key": k, "value": v, "client_id": c, "sequence": s}``

Only validated commands are encoded (the API validates against the state machine first), but
decoding never trusts the bytes: a command that does not decode to a map with a known
``sm`` is applied as a deterministic error result on every replica.
"""

from __future__ import annotations

import cbor2

__all__ = ["encode_command", "decode_command", "CLIENT_ID_CHARS_MAX"]

CLIENT_ID_CHARS_MAX = 128


def encode_command(sm: str, fields: dict, client_id: str, sequence: int) -> bytes:
    command = {"sm": sm}
    command.update(fields)
    command["client_id"] = client_id
    command["sequence"] = sequence
    return cbor2.dumps(command)


def decode_command(data: bytes) -> dict | None:
    """The command map, or None when the bytes are not a CBOR map."""
    try:
        command = cbor2.loads(data)
    except Exception:  # cbor2 raises several types on garbage
        return None
    return command if isinstance(command, dict) else None
