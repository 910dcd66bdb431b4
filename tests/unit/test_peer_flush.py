"""A peer connection's send queue goes out as MESSAGES frames of at most
``frame_bytes_max``, each message encoded once, in order; a large queue is written a
bounded number of bytes per reactor turn (``FLUSH_BYTES_MAX``), so one flush never holds
the event loop for long.  A received shell frame too short for its kind is dropped as
malformed, the link kept."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import cbor2
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from paxoslog.server import frames as F
from paxoslog.server.peerconn import FLUSH_BYTES_MAX, PeerConnection


class _Owner:
    def __init__(self, reactor, frame_bytes_max: int) -> None:
        self.reactor = reactor
        self.frame_bytes_max = frame_bytes_max
        self.queue_messages_max = 100_000
        self.stats: collections.Counter = collections.Counter()
        self.links: dict = {}

    def link(self, peer: int):
        return self.links.setdefault(peer, SimpleNamespace(bytes_sent=0))


def _connection(frame_bytes_max: int):
    clock = Clock()
    conn = PeerConnection(_Owner(clock, frame_bytes_max), dialer=True, expected_peer=2)
    conn.transport = StringTransport()
    conn.peer_id = 2
    conn.established = True
    return conn, clock


def _frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        length = int.from_bytes(data[:4], "big")
        out.append(data[4:4 + length])
        data = data[4 + length:]
    return out


def test_a_large_queue_goes_out_in_bounded_frames_and_bounded_turns():
    conn, clock = _connection(frame_bytes_max=4 << 20)
    messages = [[7, i, bytes([i % 256]) * (900_000 + i)] for i in range(40)]   # ~36 MiB
    for message in messages:
        conn.enqueue(message)
    conn.flush()
    first_turn = len(conn.transport.value())
    assert FLUSH_BYTES_MAX <= first_turn <= FLUSH_BYTES_MAX + (4 << 20), first_turn
    assert conn.queue                                  # the rest waits for the next turn
    conn.enqueue([8, "heartbeat"])
    conn.flush()                                       # within the turn: nothing more
    assert len(conn.transport.value()) == first_turn
    messages.append([8, "heartbeat"])
    turns = 1
    while conn.queue:
        pending = clock.getDelayedCalls()
        assert len(pending) == 1 and pending[0].getTime() == clock.seconds()
        before = len(conn.transport.value())
        call = pending[0]
        run = call.func
        call.cancel()                                  # the reactor's next turn runs it
        run()
        assert len(conn.transport.value()) - before <= FLUSH_BYTES_MAX + (4 << 20)
        turns += 1
    assert turns >= 4
    clock.advance(0)             # the turn after the last one starts a fresh count
    assert not clock.getDelayedCalls() and conn._turn_bytes == 0
    sent = []
    for payload in _frames(conn.transport.value()):
        assert len(payload) + 4 <= 4 << 20
        kind, batch = cbor2.loads(payload)
        assert kind == F.MESSAGES
        assert payload == cbor2.dumps([F.MESSAGES, batch])     # what the receiver expects
        sent += batch
    assert sent == messages
    assert conn.owner.stats["messages_sent"] == 41


def test_a_small_queue_is_one_frame_at_once_and_an_oversized_message_goes_alone():
    conn, clock = _connection(frame_bytes_max=64 << 10)
    small = [[1, i, b"x" * 10] for i in range(3)]
    for message in small:
        conn.enqueue(message)
    conn.flush()
    assert [cbor2.loads(p) for p in _frames(conn.transport.value())] == [[F.MESSAGES, small]]
    assert not clock.getDelayedCalls()
    conn.transport.clear()
    big = [[1, 9, b"y" * (100 << 10)], [1, 10, b"z"]]
    for message in big:
        conn.enqueue(message)
    conn.flush()
    assert [cbor2.loads(p)[1] for p in _frames(conn.transport.value())] == [big[:1], big[1:]]


def test_a_lost_connection_cancels_the_rest():
    conn, clock = _connection(frame_bytes_max=4 << 20)
    conn.owner._unregister = lambda c: None
    conn._done_handshaking = lambda: None
    for i in range(20):
        conn.enqueue([7, i, b"q" * 1_000_000])
    conn.flush()
    assert clock.getDelayedCalls()
    conn.connectionLost(None)
    assert not clock.getDelayedCalls() and not conn.queue


def test_a_shell_frame_with_too_few_fields_is_dropped_and_the_link_kept():
    """[SNAP_CHUNK] alone: the handler's ``payload[1]`` raised IndexError, which closed the
    connection with a traceback instead of dropping the frame as malformed (found by a
    review).  It is counted and logged as malformed, and the link stays up."""
    import cbor2

    from paxoslog.server import frames as F
    from paxoslog.server.snapshots import SnapshotFetcher

    conn, _ = _connection(frame_bytes_max=1 << 20)
    conn.owner.frame_depth_max = 32
    fetcher = SnapshotFetcher(1, "/nonexistent", None, None, None)
    conn.owner.handler = SimpleNamespace(
        peer_frame=lambda peer, kind, payload: fetcher.on_chunk(peer, payload))
    conn.owner.links[2] = SimpleNamespace(bytes_sent=0, bytes_received=0)
    conn._frame_received(cbor2.dumps([F.SNAP_CHUNK]))
    assert conn.owner.stats["malformed_frames"] == 1 and not conn.closed
