"""Commands as they sit in the log: one CBOR map per command, addressed to a state machine.

``{"sm": "kv", "op": "put", "key": k, "value": v, "client_id": c, "sequence": s, "ts": ms}``

A batch is one command too (one encode, one log slot share, one session record)::

    {"batch": [{"op": "put", "key": k, "value": v}, {"sm": "counter", ...}, ...],
     "client_id": c, "sequence": s, "ts": ms}

Its operations are applied in order at the batch's log index; an operation without ``sm``
is the kv state machine's (the common case, so it is left out); one may carry its
own ``client_id``/``sequence`` (the WebSocket channel packs separately sessioned requests
into one batch), which the session table then deduplicates one by one.

``ts`` is the wall clock (ms) of the node that encoded the command: the session table's
idle expiry runs on the largest ``ts`` in the log, identical on every replica.

Only validated commands are encoded (the API validates against the state machine first), but
decoding never trusts the bytes: a command that does not decode to a map with a known
``sm`` is applied as a deterministic error result on every replica.
"""

from __future__ import annotations

import cbor2

__all__ = ["encode_command", "command_map", "encode_internal", "batch_command", "encode_batch",
           "decode_command",
           "command_key", "is_batch",
           "CLIENT_ID_CHARS_MAX"]

CLIENT_ID_CHARS_MAX = 128


def encode_command(sm: str, fields: dict, client_id: str, sequence: int, ts: int,
                   release: list | None = None, acked: int | None = None) -> bytes:
    """``ts``: the encoding node's wall clock in ms (the caller reads the clock);
    ``release``: finished session generations of the node (sessions.py), when any;
    ``acked``: the client has the answers of its sequences up to this one."""
    return cbor2.dumps(command_map(sm, fields, client_id, sequence, ts, release, acked))


def command_map(sm: str, fields: dict, client_id: str, sequence: int, ts: int,
                release: list | None = None, acked: int | None = None) -> dict:
    """The map ``encode_command`` encodes."""
    command = {"sm": sm}
    command.update(fields)
    command["client_id"] = client_id
    command["sequence"] = sequence
    _stamp(command, ts)
    if release:
        command["release"] = release
    if acked is not None:
        command["acked"] = acked
    return command


def encode_internal(sm: str, fields: dict) -> bytes:
    """A command the node itself proposes (the leader's lease keeper): no client session
    (it is never retried as such), no clock stamp."""
    command = {"sm": sm}
    command.update(fields)
    return cbor2.dumps(command)


def batch_command(ops: list[dict], client_id: str, sequence: int, ts: int,
                  release: list | None = None, acked: int | None = None) -> dict:
    """A batch command's map: ``ops`` are validated command maps, each with its ``sm``
    (and optionally its own ``client_id``/``sequence``).  The encoding node applies this
    very map (machines.py), so whatever is encoded is what it applies."""
    command = {"batch": ops, "client_id": client_id, "sequence": sequence}
    _stamp(command, ts)
    if release:
        command["release"] = release
    if acked is not None:
        command["acked"] = acked
    return command


def encode_batch(ops: list[dict], client_id: str, sequence: int, ts: int,
                 release: list | None = None, acked: int | None = None) -> bytes:
    """The bytes of ``batch_command``."""
    return cbor2.dumps(batch_command(ops, client_id, sequence, ts, release, acked))


def is_batch(command: dict) -> bool:
    return "batch" in command and "sm" not in command


def decode_command(data: bytes) -> dict | None:
    """The command map, or None when the bytes are not a CBOR map."""
    try:
        command = cbor2.loads(data)
    except Exception:  # cbor2 raises several types on garbage
        return None
    return command if isinstance(command, dict) else None


def command_key(command: dict) -> tuple[str, int] | None:
    """The command's (client_id, sequence), or None when it carries no valid pair."""
    client_id = command.get("client_id")
    sequence = command.get("sequence")
    if type(client_id) is str and type(sequence) is int:
        return (client_id, sequence)
    return None


def _stamp(command: dict, ts: int) -> None:
    """``ts``, or ``ts_start`` for a stamp that may only start the log clock (node/stamps.py:
    a ``FirstStamp``, from a node that does not know the log clock)."""
    if type(ts) is int:
        command["ts"] = ts
    else:
        command["ts_start"] = int(ts)
