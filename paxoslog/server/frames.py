"""Peer wire format: length-prefixed CBOR frames, their kinds, and the hello handshake.

A frame is ``[length u32 big-endian][CBOR payload]``; the payload is an array whose first
item is the frame kind.  Consensus messages travel many per frame (``MESSAGES``); the other
kinds belong to the shell (forwarded client requests, snapshot transfer) and never reach
the core's codec (core/messages.py stays the core's own).

Handshake (mutual, challenge-response; the secret itself never crosses the wire)::

    dialer   -> HELLO     [kind, version, cluster, from_id, to_id, nonce_d, bootstrap]
    acceptor -> CHALLENGE [kind, version, cluster, from_id, to_id, nonce_a, mac_a, bootstrap]
    dialer   -> AUTH      [kind, mac_d]

``mac_a = HMAC-SHA256(secret, "acceptor" | cluster | acceptor | dialer | nonce_d | nonce_a)``
and ``mac_d`` the same with "dialer": each side proves it knows the secret for a nonce the
other just chose.  ``bootstrap`` (the sorted initial voters) must match: a node whose log
starts from another initial configuration is not a peer.  Without a configured secret the MACs are empty and only the cluster name
and node ids are checked.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import cbor2

__all__ = ["HELLO", "CHALLENGE", "AUTH", "MESSAGES", "FORWARD", "FORWARD_REPLY", "SNAP_OFFER",
           "SNAP_WANT", "SNAP_CHUNK", "SNAP_DONE", "REMOVED", "KIND_NAMES", "WIRE_VERSION",
           "HANDSHAKE_FRAME_BYTES_MAX", "FrameTooLarge", "FrameDecoder", "encode_frame",
           "handshake_mac"]

WIRE_VERSION = "paxoslog/1"

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
REMOVED = 11          # [kind, cluster, index]: "you were removed from the cluster at index"

KIND_NAMES = {HELLO: "hello", CHALLENGE: "challenge", AUTH: "auth", MESSAGES: "messages",
              FORWARD: "forward", FORWARD_REPLY: "forward-reply", SNAP_OFFER: "snapshot-offer",
              SNAP_WANT: "snapshot-want", SNAP_CHUNK: "snapshot-chunk", SNAP_DONE: "snapshot-done",
              REMOVED: "removed"}

# Before a peer has authenticated it may only send frames this small.
HANDSHAKE_FRAME_BYTES_MAX = 4096

_HEADER = struct.Struct(">I")


class FrameTooLarge(Exception):
    """A frame header announced more than the configured maximum; the stream cannot be
    trusted any further (close the connection)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the {limit}-byte maximum")
        self.length = length
        self.limit = limit


def encode_frame(payload: object) -> bytes:
    data = cbor2.dumps(payload)
    return _HEADER.pack(len(data)) + data


class FrameDecoder:
    """Splits a byte stream into frame payloads (bytes), enforcing ``limit``."""

    __slots__ = ("limit", "_buffer")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every complete frame.  Raises ``FrameTooLarge``."""
        buffer = self._buffer
        buffer += data
        frames = []
        pos = 0
        end = len(buffer)
        while end - pos >= 4:
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


def handshake_mac(secret: bytes | None, role: str, cluster: str, acceptor: int, dialer: int,
                  nonce_d: bytes, nonce_a: bytes) -> bytes:
    """The proof for ``role`` ("acceptor" or "dialer"); empty without a secret."""
    if not secret:
        return b""
    message = cbor2.dumps([role, cluster, acceptor, dialer, nonce_d, nonce_a])
    return hmac.new(secret, message, hashlib.sha256).digest()
