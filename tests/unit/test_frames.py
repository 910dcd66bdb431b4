"""Peer frames (frames.py): handshake proofs and frame keys, MAC'd frames in sequence (a
replayed, reordered, altered or truncated frame is ForgedFrame), bounded CBOR decoding
(depth, map keys, duplicates, indefinite lengths, tags), and the splitter's limit."""

from __future__ import annotations

import time

import cbor2
import pytest

from paxoslog.server import frames as F

SECRET = b"s" * 32


def _keys():
    transcript = F.transcript_hash(b"hello", b"challenge")
    return F.frame_keys(SECRET, transcript)


def test_proofs_depend_on_role_secret_and_transcript():
    """Dialer and acceptor proofs differ; each changes with the secret and the transcript;
    without a secret both are empty."""
    t1 = F.transcript_hash(b"hello", b"challenge")
    t2 = F.transcript_hash(b"hellochallenge", b"")
    assert t1 != t2                                        # lengths are part of the hash
    d = F.handshake_proof(SECRET, "dialer", t1)
    assert len(d) == 32
    assert d != F.handshake_proof(SECRET, "acceptor", t1)
    assert d != F.handshake_proof(b"t" * 32, "dialer", t1)
    assert d != F.handshake_proof(SECRET, "dialer", t2)
    assert F.handshake_proof(None, "dialer", t1) == b""
    to_acceptor, to_dialer = _keys()
    assert len(to_acceptor) == len(to_dialer) == 32 and to_acceptor != to_dialer


def test_sealed_frames_open_in_order_only():
    """Frames open in the order sealed; a replay, a swap, a flipped bit, a frame under the
    other direction's key or a truncated frame raises ForgedFrame."""
    key, other = _keys()
    sealer = F.FrameSealer(key)
    frames = [sealer.seal(cbor2.dumps([F.MESSAGES, [i]])) for i in range(4)]
    decoder = F.FrameDecoder(1 << 20)
    split = decoder.feed(b"".join(frames))
    opener = F.FrameOpener(key)
    assert [cbor2.loads(opener.open(f)) for f in split[:2]] == [[4, [0]], [4, [1]]]
    with pytest.raises(F.ForgedFrame):
        opener.open(split[1])                              # replayed
    fresh = F.FrameOpener(key)
    with pytest.raises(F.ForgedFrame):
        fresh.open(split[1])                               # out of order
    flipped = bytearray(split[0])
    flipped[2] ^= 0x40
    with pytest.raises(F.ForgedFrame):
        F.FrameOpener(key).open(bytes(flipped))
    with pytest.raises(F.ForgedFrame):
        F.FrameOpener(other).open(split[0])                # reflected
    with pytest.raises(F.ForgedFrame, match="too short"):
        F.FrameOpener(key).open(b"short")


@pytest.mark.parametrize("data, words", [
    (cbor2.dumps({"a": 1}), "array starting with a kind"),
    (cbor2.dumps([]), "array starting with a kind"),
    (cbor2.dumps(["x"]), "array starting with a kind"),
    (b"\xff\xfe", "not valid CBOR"),
    (cbor2.dumps([4, [[[[[[[[1]]]]]]]]]), "depth"),
    (cbor2.dumps([4, {1: "int key"}]), "map key"),
    (b"\x82\x04\xa2\x61a\x01\x61a\x02", "Duplicate"),      # {"a": 1, "a": 2}
    (b"\x82\x04\x9f\x01\xff", "indefinite"),                  # [4, [_ 1]]
    (cbor2.dumps([4, cbor2.CBORTag(28, [1])]), "tag"),        # shared reference
    (cbor2.dumps([4, cbor2.CBORTag(35, "a+")]), "tag"),       # regular expression
    (cbor2.dumps([4, cbor2.CBORTag(999, 1)]), "tags are not allowed"),
])
def test_decoding_refuses_what_frames_never_contain(data, words):
    """Each refused shape is a MalformedFrame saying why."""
    with pytest.raises(F.MalformedFrame) as info:
        F.decode_payload(data, depth_max=6)
    assert words in str(info.value), info.value


def test_decoding_keeps_what_frames_do_contain():
    """Arrays, string-keyed maps, bytes, floats and bignums decode as before."""
    payload = [F.FORWARD, 7, "read", {"query": {"key": "k", "n": 2 ** 70, "f": 1.5},
                                      "b": b"\x00"}]
    assert F.decode_payload(cbor2.dumps(payload), depth_max=8) == payload


def test_a_hash_collision_map_is_refused_quickly():
    """20,000 integer keys that all collide in a dict (2 s to build with a plain decoder)
    are refused at the first key."""
    modulus = (1 << 61) - 1
    count = 20_000
    data = (b"\x82\x04\xb9" + count.to_bytes(2, "big")
            + b"".join(cbor2.dumps(i * modulus) + b"\x00" for i in range(1, count + 1)))
    started = time.perf_counter()
    with pytest.raises(F.MalformedFrame, match="map key"):
        F.decode_payload(data, depth_max=8)
    assert time.perf_counter() - started < 0.5


def test_the_splitter_hands_out_one_frame_at_a_time_when_asked():
    """``most=1`` leaves the rest buffered; a header over the limit is FrameTooLarge."""
    decoder = F.FrameDecoder(100)
    data = F.encode_frame([1]) + F.encode_frame([2]) + (200).to_bytes(4, "big")
    assert decoder.feed(data, most=1) == [cbor2.dumps([1])]
    assert decoder.feed(most=1) == [cbor2.dumps([2])]
    with pytest.raises(F.FrameTooLarge):
        decoder.feed()
