"""Peer wire format: length-prefixed CBOR frames, their kinds, the handshake and frame MACs.

A frame is ``[length u32 big-endian][CBOR payload]``, or, on a connection whose frames are
MAC'd, ``[length u32][CBOR payload][tag: 16 bytes]`` with ``length`` counting the tag.  The
payload is an array whose first item is the frame kind.  Consensus messages travel many per
frame (``MESSAGES``); the other kinds belong to the shell (forwarded client requests,
snapshot transfer) and never reach the core's codec (core/messages.py stays the core's own).

Handshake (the dialer proves first; the secret never crosses the wire)::

    dialer   -> HELLO     [kind, version, cluster, from_id, to_id, nonce_d, bootstrap, info]
    acceptor -> CHALLENGE [kind, version, nonce_a]
    dialer   -> AUTH      [kind, proof_d]
    acceptor -> ACCEPT    [kind, proof_a, info]

``T = SHA-256(len | HELLO payload bytes | len | CHALLENGE payload bytes)`` (the exact bytes
both sides sent and received); ``proof_d = HMAC-SHA256(secret, version | "dialer" | T)`` and
``proof_a`` the same with ``"acceptor"``.  The acceptor answers a HELLO with a fresh nonce
only: nothing it sends before the dialer has proved knowledge of the secret depends on the
secret, so one unauthenticated HELLO gives nobody anything to guess the secret against.
(The dialer's proof does depend on it; a dialer only sends it to the address of a member,
and with TLS only after the acceptor's certificate proved it is that member.)  ``bootstrap``
(the sorted initial voters) must match: a node whose log starts from another initial
configuration is not a peer.  Without a configured secret the proofs are empty and only the
cluster name and node ids are checked (loopback-only confs; see config.py).

``info`` is ``{"version": paxoslog version, "state_machines": [[name, version], ...]}``
(sorted by name); the acceptor sends its own in the ACCEPT, once the dialer has proved
itself (nothing about the node reaches an unauthenticated dialer).  Both sides compare the
state machines (``state_machine_difference``): nodes that would apply the same log with
different state machines would diverge, so a difference refuses the connection, on both
sides, with an error naming it.  The software
version is only recorded (``peer_versions``; a rolling upgrade mixes versions).

After the handshake either side may send ``PING [kind, token]``; the other answers ``PONG
[kind, token]`` at once: the round-trip time of the link and proof that the peer's process
runs (a stopped process keeps its TCP connection open).

Frame MACs: with a secret and without TLS between peers, every frame after the handshake
carries ``HMAC-SHA256(key, seq u64 | payload)[:16]``, ``seq`` counting the frames of that
direction from 0 (implicit: never sent), with one key per direction from HKDF-SHA256(secret,
info = version | T).  Fresh nonces give every connection fresh keys; the sequence number
makes a replayed, dropped, reordered or altered frame fail its tag (``ForgedFrame``: the
connection is closed).  Under TLS the TLS records authenticate the frames and no tag is
added.

Decoding (``decode_payload``) is bounded: container depth, no indefinite lengths, map keys
only text or byte strings (no hash-collision maps), no duplicate keys, no CBOR tags but
bignums; any violation is a ``MalformedFrame``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["HELLO", "CHALLENGE", "AUTH", "ACCEPT", "MESSAGES", "FORWARD", "FORWARD_REPLY",
           "SNAP_OFFER", "SNAP_WANT", "SNAP_CHUNK", "SNAP_DONE", "REMOVED", "PING", "PONG",
           "VOTER_ADDRESSES", "KIND_NAMES", "state_machine_difference",
           "HANDSHAKE_KINDS", "WIRE_VERSION", "NONCE_BYTES", "TAG_BYTES",
           "HANDSHAKE_FRAME_BYTES_MAX", "FrameError", "FrameTooLarge", "MalformedFrame",
           "ForgedFrame", "FrameDecoder", "FrameSealer", "FrameOpener", "encode_frame",
           "decode_payload", "transcript_hash", "handshake_proof", "frame_keys"]

WIRE_VERSION = "paxoslog/4"

HELLO = 1
CHALLENGE = 2
AUTH = 3
MESSAGES = 4          # [kind, [message wire array, ...]]
FORWARD = 5           # [kind, request_id, op, payload]
FORWARD_REPLY = 6     # [kind, request_id, http_status, body]
SNAP_OFFER = 7        # [kind, InstallSnapshot wire array, SnapshotOffer wire array]
SNAP_WANT = 8         # [kind, transfer_id, next_offset]
SNAP_CHUNK = 9        # [kind, SnapshotChunk wire array]
SNAP_DONE = 10        # [kind, transfer_id, ok, reason]
REMOVED = 11          # [kind, cluster, index, voters]: "I applied up to index a configuration
                      # with these voters, without you" (addressbook.py)
ACCEPT = 12           # [kind, proof_a, info]
PING = 13             # [kind, token]
PONG = 14             # [kind, token]
VOTER_ADDRESSES = 15  # [kind, cluster, [[node id, "host:port"], ...]]: after REMOVED, where
                      # the voters it named listen (addressbook.py)

KIND_NAMES = {HELLO: "hello", CHALLENGE: "challenge", AUTH: "auth", ACCEPT: "accept",
              MESSAGES: "messages", FORWARD: "forward", FORWARD_REPLY: "forward-reply",
              SNAP_OFFER: "snapshot-offer", SNAP_WANT: "snapshot-want",
              SNAP_CHUNK: "snapshot-chunk", SNAP_DONE: "snapshot-done", REMOVED: "removed", PING: "ping",
              PONG: "pong", VOTER_ADDRESSES: "voter-addresses"}
HANDSHAKE_KINDS = frozenset((HELLO, CHALLENGE, AUTH, ACCEPT))

NONCE_BYTES = 32
TAG_BYTES = 16
# Before a peer has authenticated it may only send frames this small (a HELLO of a 7-node
# cluster is about 120 bytes).  A protocol bound, not a tuning knob.
HANDSHAKE_FRAME_BYTES_MAX = 4096

_HEADER = struct.Struct(">I")
_SEQ = struct.Struct(">Q")


def state_machine_difference(mine: list, theirs: object, peer: object) -> str | None:
    """None when the state-machine lists ``[[name, version], ...]`` are equal; else what
    differs, from this node's side (``peer``: the other node's id, for the text)."""
    try:
        other = {str(name): int(version) for name, version in theirs}
    except (TypeError, ValueError):
        return f"node {peer} sent a malformed state-machine list {theirs!r:.120}"
    here = {name: version for name, version in mine}
    if other == here:
        return None
    parts = []
    for name in sorted(set(here) | set(other)):
        if name not in other:
            parts.append(f"{name} {here[name]} is enabled here but not on node {peer}")
        elif name not in here:
            parts.append(f"{name} {other[name]} is enabled on node {peer} but not here")
        elif here[name] != other[name]:
            parts.append(f"{name} is version {here[name]} here but version {other[name]} "
                         f"on node {peer}")
    return ("state machines differ (" + "; ".join(parts) + "): every node must enable the "
            "same [state_machines] at the same versions, or the replicas would diverge")


class FrameError(Exception):
    """Base class: a peer sent a frame we refuse."""


class FrameTooLarge(FrameError):
    """A frame header announced more than the configured maximum; the stream cannot be
    trusted any further (close the connection)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the {limit}-byte maximum")
        self.length = length
        self.limit = limit


class MalformedFrame(FrameError):
    """A complete frame whose payload is not a bounded CBOR array starting with a kind
    (the frame is dropped; the stream itself is still in step)."""


class ForgedFrame(FrameError):
    """A frame failed its MAC: forged, altered, replayed, reordered or after a lost one.
    Close the connection."""


def encode_frame(payload: object) -> bytes:
    """An unauthenticated frame (the handshake, or a connection without frame MACs)."""
    data = cbor2.dumps(payload)
    return _HEADER.pack(len(data)) + data


class FrameDecoder:
    """Splits a byte stream into frames (bytes), enforcing ``limit``."""

    __slots__ = ("limit", "_buffer")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes = b"", most: int | None = None) -> list[bytes]:
        """Append ``data``; return the complete frames (at most ``most``; the rest stay
        buffered for the next call).  Raises ``FrameTooLarge``."""
        buffer = self._buffer
        buffer += data
        frames = []
        pos = 0
        end = len(buffer)
        while end - pos >= 4 and (most is None or len(frames) < most):
            (length,) = _HEADER.unpack_from(buffer, pos)
            if length > self.limit:
                raise FrameTooLarge(length, self.limit)
            if end - pos - 4 < length:
                break
            frames.append(bytes(buffer[pos + 4:pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buffer[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def refuse_tag(decoder, tag=None):
    """cbor2's ``tag_hook`` (and semantic decoder) that refuses a tag."""
    raise cbor2.CBORDecodeError("CBOR tags are not allowed (bignums aside)")


# Every tag cbor2 decodes itself except bignums (2, 3: large JSON integers in forwarded
# requests); the rest never occur in our frames nor in a client's CBOR (a JSON value):
# shared values (28, 29) build cycles, or from a few bytes trees of millions of items,
# 35 compiles a regex, ...  Also the WebSocket CBOR codec's (wscodec.py).
REFUSED_TAGS = {tag: refuse_tag for tag in (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54,
                                             256, 258, 260, 261, 55799)}


def decode_payload(frame: bytes, depth_max: int) -> list:
    """The payload of a frame: a CBOR array whose first item is an int kind.  Raises
    ``MalformedFrame`` for anything else, including containers nested deeper than
    ``depth_max``, indefinite lengths, map keys other than strings, duplicate keys and
    tags (see the module docstring)."""
    try:
        payload = cbor2.loads(frame, max_depth=depth_max, allow_indefinite=False,
                              allow_duplicate_keys=False, strict_hashable_types=True,
                              semantic_decoders=REFUSED_TAGS, tag_hook=refuse_tag)
    except RecursionError:
        raise MalformedFrame("frame nests too deep") from None
    except Exception as exc:  # cbor2 raises several types on garbage
        raise MalformedFrame(f"frame is not valid CBOR ({str(exc)[:200]})") from None
    if type(payload) is not list or not payload or type(payload[0]) is not int:
        raise MalformedFrame("frame is not an array starting with a kind")
    return payload


# ---------------------------------------------------------------------- handshake crypto

def transcript_hash(hello: bytes, challenge: bytes) -> bytes:
    """SHA-256 over the HELLO and CHALLENGE payloads exactly as sent (length-prefixed)."""
    digest = hashlib.sha256()
    for part in (hello, challenge):
        digest.update(_SEQ.pack(len(part)))
        digest.update(part)
    return digest.digest()


def handshake_proof(secret: bytes | None, role: str, transcript: bytes) -> bytes:
    """The proof for ``role`` ("dialer" or "acceptor"); empty without a secret."""
    if not secret:
        return b""
    message = WIRE_VERSION.encode() + b"\0" + role.encode() + b"\0" + transcript
    return hmac.digest(secret, message, "sha256")


def frame_keys(secret: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(dialer -> acceptor key, acceptor -> dialer key) for frame MACs."""
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=None,
               info=WIRE_VERSION.encode() + b" frame keys\0" + transcript).derive(secret)
    return okm[:32], okm[32:]


class FrameSealer:
    """Writes MAC'd frames of one direction: ``seal(payload bytes) -> frame bytes``."""

    __slots__ = ("_mac", "seq")

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.seq = 0

    def seal(self, data: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(_SEQ.pack(self.seq))
        mac.update(data)
        self.seq += 1
        return _HEADER.pack(len(data) + TAG_BYTES) + data + mac.digest()[:TAG_BYTES]


class FrameOpener:
    """Checks MAC'd frames of one direction, in order: ``open(frame) -> payload bytes``."""

    __slots__ = ("_mac", "seq")

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.seq = 0

    def open(self, frame: bytes) -> bytes:
        """The payload; ``ForgedFrame`` when the tag does not match frame ``seq``."""
        if len(frame) < TAG_BYTES:
            raise ForgedFrame(f"frame #{self.seq} failed its MAC (too short to carry one)")
        data = frame[:-TAG_BYTES]
        mac = self._mac.copy()
        mac.update(_SEQ.pack(self.seq))
        mac.update(data)
        if not hmac.compare_digest(mac.digest()[:TAG_BYTES], frame[-TAG_BYTES:]):
            raise ForgedFrame(f"frame #{self.seq} failed its MAC (forged, altered, replayed "
                              f"or out of order)")
        self.seq += 1
        return data
