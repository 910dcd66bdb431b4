"""Every peer message as a frozen dataclass with a stable type tag, and its CBOR codec.

Wire form: a CBOR array ``[tag, field1, field2, ...]`` in declaration order.  Entries are
``[index, term, kind, [command, ...]]``, ballots ``[round, node_id]``, configurations
``[[voters], [outgoing], [learners]]``.  ``decode`` validates every field's type and range
and raises ``MalformedMessage`` (never anything else) on a bad frame.

Tags are part of the storage/wire format: never reuse or renumber one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import cbor2

from .ballot import Ballot
from .errors import MalformedMessage
from .log import ENTRY_KINDS, Entry
from .quorum import Config

__all__ = [
    "Message", "encode", "decode", "encode_entry", "decode_entry", "MESSAGE_TYPES",
    # Multi-Paxos
    "PreVote", "PreVoteReply", "Prepare", "Promise", "Nack", "Accept", "Accepted",
    "Heartbeat", "HeartbeatReply", "CatchupRequest", "CatchupReply",
    # Raft
    "RequestVote", "RequestVoteReply", "AppendEntries", "AppendEntriesReply",
    # both
    "TimeoutNow", "InstallSnapshot", "InstallSnapshotReply",
]

MESSAGE_TYPES: dict[int, type] = {}


def message(tag: int):
    """Class decorator: a frozen, slotted dataclass registered under a stable wire tag."""
    def wrap(cls):
        cls = dataclass(frozen=True, slots=True)(cls)
        assert tag not in MESSAGE_TYPES, f"duplicate message tag {tag}"
        cls.TAG = tag
        MESSAGE_TYPES[tag] = cls
        return cls
    return wrap


class Message:
    """Base of peer messages: every message has a sender ``frm`` and a receiver ``to``."""

    TAG: ClassVar[int]
    frm: int
    to: int


# ---------------------------------------------------------------- Multi-Paxos messages

@message(1)
class PreVote(Message):
    """Would you support me preparing ``ballot``?  (Granted only if the voter also lost the leader.)"""
    frm: int
    to: int
    ballot: Ballot
    first_unchosen: int


@message(2)
class PreVoteReply(Message):
    """``chosen_upto`` lets a candidate that is behind learn whom to catch up from (any
    node, a learner too, answers catch-up requests with chosen values)."""
    frm: int
    to: int
    ballot: Ballot
    granted: bool
    chosen_upto: int


@message(3)
class Prepare(Message):
    """Phase 1a for every slot >= from_slot.  ``force`` skips leader stickiness (transfer)."""
    frm: int
    to: int
    ballot: Ballot
    from_slot: int
    force: bool


@message(4)
class Promise(Message):
    """Phase 1b: every slot this acceptor accepted at or above from_slot, with its ballot.
    ``first_index`` > from_slot means slots below it are only in this acceptor's snapshot.
    A Promise is bounded in bytes: when ``next_slot`` > 0 more accepted slots follow, and
    the candidate asks for them with another Prepare (same ballot) from ``next_slot``."""
    frm: int
    to: int
    ballot: Ballot
    accepted: tuple[Entry, ...]
    chosen_upto: int
    first_index: int
    next_slot: int


@message(5)
class Nack(Message):
    """Rejection of a Prepare/Accept/Heartbeat at ``ballot``: the acceptor promised ``promised``."""
    frm: int
    to: int
    ballot: Ballot
    promised: Ballot


@message(6)
class Accept(Message):
    """Phase 2a for many slots at once; ``commit`` is the leader's chosen watermark."""
    frm: int
    to: int
    ballot: Ballot
    entries: tuple[Entry, ...]
    commit: int


@message(7)
class Accepted(Message):
    """Phase 2b: the acceptor durably accepted these slots at ``ballot``."""
    frm: int
    to: int
    ballot: Ballot
    slots: tuple[int, ...]


@message(8)
class Heartbeat(Message):
    """Leader liveness, commit watermark and the slots above it chosen at ``ballot``.
    ``ctx`` > 0 asks for a reply that confirms leadership for reads with that context."""
    frm: int
    to: int
    ballot: Ballot
    commit: int
    chosen: tuple[int, ...]
    ctx: int


@message(9)
class HeartbeatReply(Message):
    frm: int
    to: int
    ballot: Ballot
    ctx: int
    chosen_upto: int
    last_index: int


@message(10)
class CatchupRequest(Message):
    """Send me the chosen values of these slots."""
    frm: int
    to: int
    ballot: Ballot
    slots: tuple[int, ...]


@message(11)
class CatchupReply(Message):
    """Chosen values (each entry keeps the ballot it was chosen at)."""
    frm: int
    to: int
    ballot: Ballot
    entries: tuple[Entry, ...]
    commit: int


# ---------------------------------------------------------------- Raft messages

@message(20)
class RequestVote(Message):
    frm: int
    to: int
    term: int
    last_index: int
    last_term: int
    pre: bool
    transfer: bool


@message(21)
class RequestVoteReply(Message):
    frm: int
    to: int
    term: int
    granted: bool
    pre: bool


@message(22)
class AppendEntries(Message):
    frm: int
    to: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    ctx: int


@message(23)
class AppendEntriesReply(Message):
    """``index``: the follower's match index on success, or its hint on reject
    (with ``hint_term`` the term of its entry there, for fast back-off)."""
    frm: int
    to: int
    term: int
    success: bool
    index: int
    hint_term: int
    ctx: int


# ---------------------------------------------------------------- both protocols

@message(30)
class TimeoutNow(Message):
    """Leader transfer: start an election now, skipping pre-vote and stickiness.
    ``term`` is the Raft term or the packed Paxos ballot of the sender."""
    frm: int
    to: int
    term: int


@message(31)
class InstallSnapshot(Message):
    """The receiver is behind the sender's first retained index: install this snapshot.
    ``data`` is opaque to the core (the simulator carries state; the server a transfer id)."""
    frm: int
    to: int
    term: int
    index: int
    snap_term: int
    config: Config
    data: bytes


@message(32)
class InstallSnapshotReply(Message):
    frm: int
    to: int
    term: int
    index: int


# ---------------------------------------------------------------- codec

def encode_entry(entry: Entry) -> list:
    return [entry.index, entry.term, entry.kind, list(entry.payload)]


_UINT_LIMIT = 1 << 63  # every integer on the wire fits in an unsigned 64-bit word


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value < _UINT_LIMIT


def decode_entry(data: Any) -> Entry:
    if type(data) is not list or len(data) != 4:
        raise MalformedMessage(f"entry must be a 4-element array, got {type(data).__name__}")
    index, term, kind, payload = data
    if not (_is_uint(index) and _is_uint(term)):
        raise MalformedMessage("entry index and term must be non-negative integers")
    if kind not in ENTRY_KINDS or type(kind) is not int:
        raise MalformedMessage(f"unknown entry kind {kind!r}")
    if type(payload) is not list or not all(type(c) is bytes for c in payload):
        raise MalformedMessage("entry payload must be an array of byte strings")
    return Entry(index, term, kind, tuple(payload))


def _dec_uint(value: Any) -> int:
    if not _is_uint(value):
        raise MalformedMessage(f"expected a non-negative integer, got {value!r:.40}")
    return value


def _dec_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise MalformedMessage(f"expected a boolean, got {value!r:.40}")
    return value


def _dec_bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise MalformedMessage(f"expected a byte string, got {type(value).__name__}")
    return value


def _dec_ballot(value: Any) -> Ballot:
    if type(value) is not list or len(value) != 2 or not all(map(_is_uint, value)):
        raise MalformedMessage(f"expected a ballot [round, node], got {value!r:.40}")
    return Ballot(value[0], value[1])


def _dec_uints(value: Any) -> tuple[int, ...]:
    if type(value) is not list or not all(map(_is_uint, value)):
        raise MalformedMessage("expected an array of non-negative integers")
    return tuple(value)


def _dec_entries(value: Any) -> tuple[Entry, ...]:
    if type(value) is not list:
        raise MalformedMessage("expected an array of entries")
    return tuple(decode_entry(item) for item in value)


def _dec_config(value: Any) -> Config:
    try:
        return Config.from_wire(value)
    except (ValueError, AssertionError) as exc:
        raise MalformedMessage(str(exc)) from None


_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "int": (lambda v: v, _dec_uint),
    "bool": (lambda v: v, _dec_bool),
    "bytes": (lambda v: v, _dec_bytes),
    "Ballot": (lambda v: [v[0], v[1]], _dec_ballot),
    "tuple[int, ...]": (list, _dec_uints),
    "tuple[Entry, ...]": (lambda v: [encode_entry(e) for e in v], _dec_entries),
    "Config": (lambda v: v.to_wire(), _dec_config),
}

_LAYOUT: dict[type, list[tuple[str, Callable, Callable]]] = {}
for _cls in MESSAGE_TYPES.values():
    _LAYOUT[_cls] = [(f.name, *_CODECS[f.type]) for f in fields(_cls)]


def to_wire(msg: Message) -> list:
    """The CBOR-ready array form of a message (many may be framed together)."""
    return [msg.TAG] + [enc(getattr(msg, name)) for name, enc, _ in _LAYOUT[type(msg)]]


def from_wire(data: Any) -> Message:
    if type(data) is not list or not data:
        raise MalformedMessage("a message must be a non-empty array")
    tag = data[0]
    cls = MESSAGE_TYPES.get(tag) if type(tag) is int else None
    if cls is None:
        raise MalformedMessage(f"unknown message tag {tag!r:.20}")
    layout = _LAYOUT[cls]
    if len(data) != len(layout) + 1:
        raise MalformedMessage(f"{cls.__name__} needs {len(layout)} fields, got {len(data) - 1}")
    return cls(*(dec(value) for (_, _, dec), value in zip(layout, data[1:])))


def encode(msg: Message) -> bytes:
    return cbor2.dumps(to_wire(msg))


def decode(frame: bytes, frame_bytes_max: int | None = None) -> Message:
    """Decode one frame; raises MalformedMessage with a reason on any bad input."""
    if frame_bytes_max is not None and len(frame) > frame_bytes_max:
        raise MalformedMessage(f"frame of {len(frame)} bytes exceeds the {frame_bytes_max} maximum")
    try:
        data = cbor2.loads(frame)
    except Exception as exc:  # cbor2 raises several types on garbage; all mean "bad frame"
        raise MalformedMessage(f"not valid CBOR: {exc}") from None
    return from_wire(data)
