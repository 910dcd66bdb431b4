"""The two message codecs of the WebSocket endpoint (docs/websocket.md).

``paxoslog.v1.json`` (text frames, also the default when a client names no subprotocol)
and ``paxoslog.v1.cbor`` (binary frames).  A frame holds one message (a map) or an array
of messages, in both directions.  Values are plain JSON values in both codecs: maps with
string keys, arrays, strings, integers, finite floats, booleans and null (a CBOR byte
string, tag or undefined is refused), so anything one client writes another can read with
either codec, and with HTTP.

Decoding never trusts the bytes: ``BadMessage`` for undecodable input, nesting deeper
than the limit (``limits.json_depth_max`` plus the envelope), or a non-plain value.

Encoding has a *splicing* form for the streams: a stream message is
``{"stream": S, <the rest>}``, and the rest is the same for every subscriber of one
revision or entry range (the hub encodes it once and only the stream id differs):
``shared(rest)`` encodes the rest once, ``spliced(stream, shared)`` is the message.
"""

from __future__ import annotations

import json
import math

import cbor2

from statemachines.base import cbor_head

from .frames import REFUSED_TAGS, refuse_tag

from .surrogates import LONE_SURROGATE_MESSAGE, lone_surrogate

__all__ = ["BadMessage", "JsonCodec", "CborCodec", "CODECS", "SUBPROTOCOLS", "plain_exceeds"]

JSON_SUBPROTOCOL = "paxoslog.v1.json"
CBOR_SUBPROTOCOL = "paxoslog.v1.cbor"
_ENVELOPE_DEPTH = 3          # array of messages > message > body/ops


class BadMessage(ValueError):
    """A frame that is not a message of this codec (the text says why)."""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_PLAIN_SCALARS = (str, bool, type(None))
# An integer must be writable as JSON text: Python refuses to print one of more than 4,300
# digits (a ValueError wherever the value is encoded: an answer, a stream, a prefix read's
# size estimate, which killed the node serving it).  13,000 bits is about 3,900 digits.
_INT_BITS_MAX = 13_000



def plain_exceeds(value: object, depth_max: int) -> str | None:
    """Why ``value`` is not a plain JSON value nested at most ``depth_max`` deep, or None.
    Iterative (a hostile value cannot exhaust the stack)."""
    stack = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind is dict:
            depth += 1
            if depth > depth_max:
                return f"nests deeper than {depth_max} levels"
            for key, child in item.items():
                if type(key) is not str:
                    return "has a map key that is not a string"
                if type(child) not in _PLAIN_SCALARS:
                    push((child, depth))
        elif kind is list:
            depth += 1
            if depth > depth_max:
                return f"nests deeper than {depth_max} levels"
            for child in item:
                if type(child) not in _PLAIN_SCALARS:
                    push((child, depth))
        elif kind is int:
            if item.bit_length() > _INT_BITS_MAX:
                return "holds an integer too large for JSON (over about 3,900 digits)"
        elif kind is float:
            if not math.isfinite(item):
                return "holds a non-finite number"
        elif kind not in _PLAIN_SCALARS:
            return f"holds a {kind.__name__}, not a JSON value"
    return None


class JsonCodec:
    subprotocol = JSON_SUBPROTOCOL
    binary = False

    def __init__(self, depth_max: int) -> None:
        self.depth_max = depth_max + _ENVELOPE_DEPTH

    def decode(self, payload: bytes) -> object:
        try:
            text = payload.decode("utf-8")
            value = _JSON_DECODER.decode(text)
        except UnicodeDecodeError:
            raise BadMessage("the frame is not UTF-8") from None
        except RecursionError:
            raise BadMessage(f"the message nests deeper than {self.depth_max} levels") from None
        except ValueError as exc:
            raise BadMessage(f"malformed JSON: {str(exc)[:200]}") from None
        why = plain_exceeds(value, self.depth_max)
        if why is not None:
            raise BadMessage(f"the message {why}")
        if lone_surrogate(text, value):
            raise BadMessage(f"the message {LONE_SURROGATE_MESSAGE}")
        return value

    @staticmethod
    def encode(message: object) -> bytes:
        return _JSON_ENCODER.encode(message).encode()

    @staticmethod
    def encode_many(encoded: list[bytes]) -> bytes:
        """One frame of already encoded messages (an array when more than one)."""
        return encoded[0] if len(encoded) == 1 else b"[" + b",".join(encoded) + b"]"

    @staticmethod
    def reply_raw(request_id: bytes, status: int, body_json: bytes, retry_after) -> bytes:
        """A reply whose body is JSON bytes already (the HTTP API's response body)."""
        extra = b"" if retry_after is None else b',"retry_after":' + str(retry_after).encode()
        return (b'{"id":' + request_id + b',"status":' + str(status).encode() + extra
                + b',"body":' + body_json + b"}")

    def reply(self, request_id: bytes, status: int, body: dict) -> bytes:
        return self.reply_raw(request_id, status, self.encode(body), None)

    def encode_id(self, request_id: object) -> bytes:
        return self.encode(request_id)

    def shared(self, rest: dict) -> bytes:
        return self.encode(rest)[1:]          # without the opening brace

    @staticmethod
    def spliced(stream: int, shared: bytes) -> bytes:
        return b'{"stream":' + str(stream).encode() + b"," + shared


_STREAM_KEY = cbor2.dumps("stream")


class CborCodec:
    subprotocol = CBOR_SUBPROTOCOL
    binary = True

    def __init__(self, depth_max: int) -> None:
        self.depth_max = depth_max + _ENVELOPE_DEPTH

    def decode(self, payload: bytes) -> object:
        try:
            value = cbor2.loads(payload, max_depth=self.depth_max + 1,
                                allow_duplicate_keys=False, tag_hook=refuse_tag,
                                # shared values (28, 29): 167 bytes that expanded to
                                # millions of items held the event loop for seconds
                                semantic_decoders=REFUSED_TAGS)
        except Exception as exc:  # cbor2 raises several types on garbage
            raise BadMessage(f"malformed CBOR: {str(exc)[:200]}") from None
        why = plain_exceeds(value, self.depth_max)
        if why is not None:
            raise BadMessage(f"the message {why}")
        return value

    @staticmethod
    def encode(message: object) -> bytes:
        return cbor2.dumps(message)

    @staticmethod
    def encode_many(encoded: list[bytes]) -> bytes:
        if len(encoded) == 1:
            return encoded[0]
        return cbor_head(4, len(encoded)) + b"".join(encoded)

    def reply_raw(self, request_id: bytes, status: int, body_json: bytes, retry_after) -> bytes:
        reply = {"id": cbor2.loads(request_id), "status": status}
        if retry_after is not None:
            reply["retry_after"] = retry_after
        reply["body"] = json.loads(body_json) if body_json else None
        return cbor2.dumps(reply)

    @staticmethod
    def reply(request_id: bytes, status: int, body: dict) -> bytes:
        return cbor2.dumps({"id": cbor2.loads(request_id), "status": status, "body": body})

    @staticmethod
    def encode_id(request_id: object) -> bytes:
        return cbor2.dumps(request_id)

    @staticmethod
    def shared(rest: dict) -> bytes:
        assert len(rest) < 23
        return bytes((len(rest),)) + cbor2.dumps(rest)[1:]   # pair count, then the pairs

    @staticmethod
    def spliced(stream: int, shared: bytes) -> bytes:
        return (bytes((0xa0 | (shared[0] + 1),)) + _STREAM_KEY + cbor2.dumps(stream)
                + shared[1:])


CODECS = {JSON_SUBPROTOCOL: JsonCodec, CBOR_SUBPROTOCOL: CborCodec}
SUBPROTOCOLS = tuple(CODECS)
