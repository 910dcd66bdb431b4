"""The state machine plug-in interface (DESIGN.md section 6).

A state machine sees every committed command addressed to it (``{"sm": name, ...}`` in the
shared log), in log order, on every node.  Required::

    name: str                                   the name a conf file enables it by
    apply(index, command) -> result             deterministic; the result goes to the client
    query(request) -> result                    read-only
    snapshot() -> bytes                         the whole state, deterministic
    restore(data: bytes) -> None                replace the state (b"": the empty state)

Optional (the node uses them when present)::

    validate(command) -> dict                   at the API edge, before proposing: the
                                                normalized command, or raise BadCommand
                                                (bad input then never reaches the log)
    ops: tuple[str, ...]                        the write ops; anything else is a 400
    read_ops: tuple[str, ...]                   ops served as reads (read_index), not logged
    snapshot_copy() -> callable                 cheap copy now, bytes later on a thread
    snapshot_chunks_copy() -> callable          the same, as an iterator of byte pieces
                                                whose concatenation is snapshot() (a
                                                thread encoding a large state in pieces
                                                gives the event loop the GIL between them)
    plain_commands: bool                        True: ``validate`` returns only dicts
                                                (str or int keys), lists, str, bytes, int,
                                                float, bool and None, which CBOR gives back
                                                as they are; the node that encoded a batch
                                                then applies its maps without decoding the
                                                bytes again (default False: it decodes)
    internal: bool                              True: written by the node itself only;
                                                no client endpoint can address it
    version: int                                default 1; bump it whenever ``apply`` of
                                                the same log could give another state
                                                (a new op, a changed result): peers
                                                refuse a node whose names or versions
                                                differ (the handshake compares them)

``state_hash(sm)`` digests ``snapshot()``: replicas at the same applied index must report
the same digest (GET /api/v1/cluster/status?hashes=1 shows one per state machine).
``state_hash_producer(sm)`` takes the copy now and digests it later, on a thread.

``apply`` may raise: ``BadCommand`` becomes a ``bad_request`` result, any other exception an
``apply_failed`` result; either way the same on every replica (apply is deterministic), and
the apply loop goes on.  Results must be small JSON/CBOR-able values (they are kept in the
session table for retried requests).
"""

from __future__ import annotations

import hashlib
import io
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

import cbor2

__all__ = ["StateMachine", "BadCommand", "CommandTooLarge", "snapshot_producer", "cbor_head",
           "snapshot_chunks_producer", "CborArrayReader", "state_hash",
           "state_hash_producer", "is_internal", "nesting_exceeds", "REQUIRED",
           "VALUE_DEPTH_MAX"]

# The deepest value a built-in state machine stores.  Commands and snapshots are CBOR, and
# the decoder refuses containers nested deeper than 400 (cbor2's max_depth): a value that
# deep would be applied, then make every snapshot holding it unreadable.
VALUE_DEPTH_MAX = 32

STATE_HASH_BYTES = 16

REQUIRED = ("apply", "query", "snapshot", "restore")


class BadCommand(ValueError):
    """A command or query a state machine refuses (maps to HTTP 400)."""


class CommandTooLarge(BadCommand):
    """A command over a size bound of its state machine (maps to HTTP 413)."""


@runtime_checkable
class StateMachine(Protocol):
    name: str

    def apply(self, index: int, command: dict) -> object: ...
    def query(self, request: dict) -> object: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


def nesting_exceeds(value: object, depth_max: int) -> bool:
    """True when ``value`` nests lists/dicts deeper than ``depth_max`` (a scalar is depth
    0, ``[1]`` depth 1).  Iterative, so a hostile value cannot exhaust the stack."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        if depth > depth_max:
            return True
        stack.extend((child, depth) for child in children
                     if isinstance(child, (dict, list, tuple)))
    return False


def is_internal(sm: object) -> bool:
    """True for a state machine only the node itself may write (e.g. ``membership``)."""
    return getattr(sm, "internal", False) is True


def snapshot_producer(sm: StateMachine) -> Callable[[], bytes]:
    """A callable that yields ``sm``'s snapshot bytes as of now, safe to call on a thread."""
    copy = getattr(sm, "snapshot_copy", None)
    if copy is not None:
        return copy()
    data = sm.snapshot()
    return lambda: data


def snapshot_chunks_producer(sm: StateMachine) -> Callable[[], Iterable[bytes]]:
    """A callable that yields ``sm``'s snapshot as of now in pieces, safe to call on a
    thread: ``snapshot_chunks_copy`` when the state machine has it (a large state is then
    never one bytes object in memory), else its whole snapshot as one piece."""
    chunks = getattr(sm, "snapshot_chunks_copy", None)
    if chunks is not None:
        return chunks()
    produce = snapshot_producer(sm)
    return lambda: (produce(),)


def cbor_head(major: int, count: int) -> bytes:
    """The CBOR head of an item of major type ``major`` (2: byte string, 4: array) with
    ``count`` bytes or items.  A definite-length array's encoding is its head followed by
    its items' encodings, so pieces encoded apart can be joined into one array."""
    first = major << 5
    if count < 24:
        return bytes((first | count,))
    if count < 0x100:
        return bytes((first | 24, count))
    if count < 0x10000:
        return bytes((first | 25,)) + count.to_bytes(2, "big")
    if count < 0x100000000:
        return bytes((first | 26,)) + count.to_bytes(4, "big")
    return bytes((first | 27,)) + count.to_bytes(8, "big")


class CborArrayReader:
    """The items of one CBOR array whose encoding arrives in pieces cut anywhere (a
    snapshot's chunks): ``feed(piece)`` returns the items completed by it, ``close()``
    checks that the array ended exactly.  Memory: one item beyond the current piece.
    Raises ``ValueError`` on anything but a definite-length array."""

    __slots__ = ("_buffer", "_left")

    def __init__(self) -> None:
        self._buffer = b""
        self._left: int | None = None     # items still to come; None before the head

    def feed(self, piece: bytes) -> list:
        data = self._buffer + bytes(piece) if self._buffer else bytes(piece)
        fp = io.BytesIO(data)
        if self._left is None:
            self._left = _array_length(fp)
            if self._left is None:        # the head itself is not complete yet
                self._buffer = data
                return []
        items = []
        decoder = cbor2.CBORDecoder(fp)
        position = fp.tell()
        while self._left and position < len(data):
            try:
                items.append(decoder.decode())
            except cbor2.CBORDecodeEOF:
                break                     # the item continues in the next piece
            position = fp.tell()
            self._left -= 1
        if not self._left and position < len(data):
            raise ValueError("bytes after the end of the array")
        self._buffer = data[position:]
        return items

    def close(self) -> None:
        if self._left is None:
            if self._buffer:
                raise ValueError("truncated array head")
            self._left = 0                # no bytes at all: an empty state
        if self._left or self._buffer:
            raise ValueError(f"truncated: {self._left} item(s) missing")


def _array_length(fp: io.BytesIO) -> int | None:
    """Read a CBOR array head from ``fp``: its length, or None when ``fp`` ends first."""
    head = fp.read(1)
    if not head:
        return None
    major, info = head[0] >> 5, head[0] & 0x1F
    if major != 4 or info > 27:
        raise ValueError("not a definite-length CBOR array")
    if info < 24:
        return info
    size = 1 << (info - 24)
    raw = fp.read(size)
    if len(raw) < size:
        return None
    return int.from_bytes(raw, "big")


def read_array(pieces: Iterable[bytes]) -> Iterator:
    """Every item of a CBOR array encoded across ``pieces`` (see ``CborArrayReader``)."""
    reader = CborArrayReader()
    for piece in pieces:
        yield from reader.feed(piece)
    reader.close()


def state_hash_producer(sm: StateMachine) -> Callable[[], str]:
    """Take what ``state_hash(sm)`` needs now (cheap with ``snapshot_copy``: call it on the
    event loop, where the state does not change under it); the callable returns the same
    digest later, on any thread."""
    chunks = getattr(sm, "snapshot_chunks_copy", None)
    if chunks is not None:
        pieces = chunks()

        def digest() -> str:
            h = hashlib.blake2b(digest_size=STATE_HASH_BYTES)
            for piece in pieces():
                h.update(piece)
            return h.hexdigest()
        return digest
    produce = snapshot_producer(sm)
    return lambda: hashlib.blake2b(produce(), digest_size=STATE_HASH_BYTES).hexdigest()


def state_hash(sm: StateMachine) -> str:
    """Hex blake2b (128 bits) of ``sm.snapshot()``.  ``snapshot()`` is deterministic, so
    two replicas at the same applied index agree on it unless their states diverged.
    Costs one full snapshot encoding: compute it on demand, not on every status call."""
    return hashlib.blake2b(sm.snapshot(), digest_size=STATE_HASH_BYTES).hexdigest()

