"""The chaos proxy on real sockets on 127.0.0.1.

Scenario: a fake "node 3" listens for peer connections behind the proxy; fake nodes 1 and 2
dial it through the proxy's listener, each opening with a HELLO frame as the real peer
transport does, then exchange numbered frames in both directions.  Each test sets rules on
one directed link and checks what arrives: blocked links (drop and hold), one-way cuts,
loss, duplication, delay, and reset.  Every frame that arrives must be a whole, decodable
frame.  No sleeps: every wait polls a condition with a deadline, and "nothing arrived"
is asserted only after a later frame on the same path (or a round trip) did arrive.
"""

from __future__ import annotations

import random

import cbor2
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial import unittest

from paxoslog.chaos.proxy import LinkRules, ProxyNetwork, frame_kind
from paxoslog.server import frames as F

DEADLINE_S = 10.0


def frame(payload: list) -> bytes:
    return F.encode_frame(payload)


class _Peer(Protocol):
    """Either end of a peer connection: decodes whole frames and records them."""

    def __init__(self, sink: list) -> None:
        self.sink = sink
        self.decoder = F.FrameDecoder(1 << 24)
        self.lost = False

    def connectionMade(self) -> None:
        self.sink.append(("connected", self))

    def dataReceived(self, data: bytes) -> None:
        for raw in self.decoder.feed(data):
            self.sink.append(cbor2.loads(raw))     # raises on a partial or spliced frame

    def connectionLost(self, reason=None) -> None:
        self.lost = True

    def send(self, payload: list) -> None:
        self.transport.write(frame(payload))


class _FakeNode(Factory):
    """The listening node: every accepted connection records into ``received``."""

    def __init__(self) -> None:
        self.received: list = []
        self.peers: list[_Peer] = []

    def buildProtocol(self, addr):
        peer = _Peer(self.received)
        self.peers.append(peer)
        return peer


class _DialFactory(ClientFactory):
    def __init__(self, sink: list) -> None:
        self.sink = sink
        self.failed = []

    def buildProtocol(self, addr):
        return _Peer(self.sink)

    def clientConnectionFailed(self, connector, reason) -> None:
        self.failed.append(reason)


def poll(condition, what: str, deadline_s: float = DEADLINE_S) -> defer.Deferred:
    """Fire once ``condition()`` is true; fail after ``deadline_s``."""
    deadline = reactor.seconds() + deadline_s

    def check():
        if condition():
            return True
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        return task.deferLater(reactor, 0.005, check)

    return defer.maybeDeferred(check)


def messages(received: list) -> list:
    return [item for item in received if isinstance(item, list) and item[0] == F.MESSAGES]


class ProxyTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.node = _FakeNode()
        self.port = reactor.listenTCP(0, self.node, interface="127.0.0.1")
        self.network = ProxyNetwork(reactor, random.Random(7))
        self.proxy_port = self.network.add_node(3, "127.0.0.1", self.port.getHost().port)
        self.dialers = []

    @defer.inlineCallbacks
    def tearDown(self):
        for peer in self.dialers:
            if peer.transport is not None:
                peer.transport.abortConnection()
        for peer in self.node.peers:
            peer.transport.abortConnection()
        yield self.network.stop()
        yield self.port.stopListening()
        # let the aborted sockets finish closing before trial checks for a dirty reactor
        yield task.deferLater(reactor, 0, lambda: None)

    @defer.inlineCallbacks
    def dial(self, node_id: int):
        """Connect as ``node_id`` and send its HELLO; returns (dialer, its received list,
        the fake node's protocol for this connection)."""
        received: list = []
        factory = _DialFactory(received)
        before = len(self.node.peers)
        reactor.connectTCP("127.0.0.1", self.proxy_port, factory)
        yield poll(lambda: received, f"node {node_id} connected to the proxy")
        dialer = received.pop(0)[1]
        self.dialers.append(dialer)
        dialer.send([F.HELLO, F.WIRE_VERSION, "c", node_id, 3, b"n" * 16])
        yield poll(lambda: len(self.node.peers) > before, "the proxy dialing the node")
        upstream = self.node.peers[before]
        yield poll(lambda: any(isinstance(i, list) and i[0] == F.HELLO and i[3] == node_id
                               for i in self.node.received), "the HELLO")
        return dialer, received, upstream

    @defer.inlineCallbacks
    def round_trip(self, dialer, received, upstream, tag):
        """Node 3 -> dialer frame; fires when it arrived (a sync point behind earlier ones)."""
        upstream.send([F.MESSAGES, [["sync", tag]]])
        yield poll(lambda: [["sync", tag]] in [m[1] for m in messages(received)],
                   f"round trip {tag}")

    def test_frame_kind_reads_the_first_array_item(self):
        """frame_kind peeks the kind without decoding the payload."""
        for kind in (F.HELLO, F.MESSAGES, F.SNAP_DONE):
            self.assertEqual(frame_kind(cbor2.dumps([kind, "x" * 300, [1, 2]])), kind)
        self.assertIsNone(frame_kind(cbor2.dumps({"a": 1})))
        self.assertIsNone(frame_kind(b""))

    @defer.inlineCallbacks
    def test_passes_whole_frames_in_order_both_ways(self):
        """Without rules every frame arrives once, whole and in order, in both directions."""
        dialer, received, upstream = yield self.dial(1)
        big = "x" * 200_000      # spans many TCP segments: the proxy must reassemble it
        for i in range(50):
            dialer.send([F.MESSAGES, [[i, big if i % 10 == 0 else ""]]])
        yield poll(lambda: len(messages(self.node.received)) == 50, "50 frames")
        self.assertEqual([m[1][0][0] for m in messages(self.node.received)], list(range(50)))
        yield self.round_trip(dialer, received, upstream, "back")
        stats = self.network.stats()
        self.assertEqual(stats["1->3"]["frames_out"], 51)   # HELLO + 50
        self.assertEqual(stats["3->1"]["frames_out"], 1)

    @defer.inlineCallbacks
    def test_drop_block_is_one_way_and_heals(self):
        """A dropped 1->3 link loses 1's frames while 3->1 still flows; heal restores it."""
        dialer, received, upstream = yield self.dial(1)
        self.network.block([(1, 3)], mode="drop")
        for i in range(5):
            dialer.send([F.MESSAGES, [["lost", i]]])
        yield self.round_trip(dialer, received, upstream, "during")   # 3 -> 1 still works
        yield poll(lambda: self.network.stats()["1->3"]["dropped"] == 5, "5 drops")
        self.network.heal()
        dialer.send([F.MESSAGES, [["after", 0]]])
        yield poll(lambda: messages(self.node.received), "the frame after heal")
        self.assertEqual([m[1] for m in messages(self.node.received)], [[["after", 0]]])

    @defer.inlineCallbacks
    def test_hold_block_delivers_everything_after_release(self):
        """A held link delivers nothing while held, then every frame in order on release."""
        dialer, received, upstream = yield self.dial(1)
        self.network.block([(1, 3)], mode="hold")
        for i in range(20):
            dialer.send([F.MESSAGES, [["held", i]]])
        yield poll(lambda: self.network.stats()["1->3"]["held"] >= 1, "the proxy holding")
        yield self.round_trip(dialer, received, upstream, "held")
        self.assertEqual(messages(self.node.received), [])
        self.network.heal()
        yield poll(lambda: len(messages(self.node.received)) == 20, "the held frames")
        self.assertEqual([m[1][0][1] for m in messages(self.node.received)], list(range(20)))

    @defer.inlineCallbacks
    def test_rules_are_per_directed_link_across_dialers(self):
        """Two dialers reach the same listener; only the link of the blocked one drops."""
        d1, r1, u1 = yield self.dial(1)
        d2, r2, u2 = yield self.dial(2)
        self.network.block([(3, 2)], mode="drop")
        u1.send([F.MESSAGES, [["to1"]]])
        u2.send([F.MESSAGES, [["to2"]]])
        yield poll(lambda: messages(r1), "node 1's frame")
        yield poll(lambda: self.network.stats()["3->2"]["dropped"] == 1, "the drop to node 2")
        d2.send([F.MESSAGES, [["from2"]]])     # 2 -> 3 is not blocked
        yield poll(lambda: [["from2"]] in [m[1] for m in messages(self.node.received)],
                   "node 2's frame")
        self.assertEqual(messages(r2), [])

    @defer.inlineCallbacks
    def test_loss_drops_whole_frames_but_spares_the_handshake(self):
        """loss=1 drops every message frame; handshake frames still pass."""
        dialer, received, upstream = yield self.dial(1)
        self.network.set_link(1, 3, LinkRules(loss=1.0))
        for i in range(10):
            dialer.send([F.MESSAGES, [["gone", i]]])
        dialer.send([F.AUTH, b"proof"])
        yield poll(lambda: any(isinstance(i, list) and i[0] == F.AUTH
                               for i in self.node.received), "the AUTH frame")
        self.assertEqual(messages(self.node.received), [])
        self.assertEqual(self.network.stats()["1->3"]["lost"], 10)

    @defer.inlineCallbacks
    def test_duplicate_sends_each_whole_frame_twice(self):
        """duplicate=1 delivers every message frame exactly twice, each decodable."""
        dialer, received, upstream = yield self.dial(1)
        self.network.set_link(1, 3, LinkRules(duplicate=1.0))
        for i in range(10):
            dialer.send([F.MESSAGES, [[i, "y" * (i * 1000)]]])
        yield poll(lambda: len(messages(self.node.received)) == 20, "20 copies")
        self.assertEqual([m[1][0][0] for m in messages(self.node.received)],
                         [i for i in range(10) for _ in (0, 1)])

    @defer.inlineCallbacks
    def test_delay_keeps_order_and_takes_at_least_the_delay(self):
        """A 150 ms delay holds each frame at least that long and never reorders."""
        dialer, received, upstream = yield self.dial(1)
        self.network.set_link(1, 3, LinkRules(delay_s=0.15, jitter_s=0.05))
        start = reactor.seconds()
        for i in range(10):
            dialer.send([F.MESSAGES, [[i]]])
        yield poll(lambda: len(messages(self.node.received)) == 10, "10 delayed frames")
        self.assertGreaterEqual(reactor.seconds() - start, 0.15)
        self.assertEqual([m[1][0][0] for m in messages(self.node.received)], list(range(10)))

    @defer.inlineCallbacks
    def test_reset_closes_the_pair_and_refuses_until_heal(self):
        """reset aborts the pair's connection and refuses new ones until heal."""
        dialer, received, upstream = yield self.dial(1)
        self.network.reset(1, 3)
        yield poll(lambda: dialer.lost and upstream.lost, "both sockets closed")
        refused: list = []
        reactor.connectTCP("127.0.0.1", self.proxy_port, _DialFactory(refused))
        yield poll(lambda: refused, "the second dial")
        again = refused.pop(0)[1]
        self.dialers.append(again)
        again.send([F.HELLO, F.WIRE_VERSION, "c", 1, 3, b"n" * 16])
        yield poll(lambda: again.lost, "the refused connection closed")
        self.assertEqual(self.network.stats()["1->3"]["refused"], 1)
        self.network.heal()
        d2, r2, u2 = yield self.dial(1)
        d2.send([F.MESSAGES, [["ok"]]])
        yield poll(lambda: [["ok"]] in [m[1] for m in messages(self.node.received)],
                   "a frame after heal")

    @defer.inlineCallbacks
    def test_node_down_closes_the_dialer(self):
        """With the node not listening the proxy closes the dialer's connection."""
        yield self.port.stopListening()
        received: list = []
        reactor.connectTCP("127.0.0.1", self.proxy_port, _DialFactory(received))
        yield poll(lambda: received, "connected to the proxy")
        dialer = received.pop(0)[1]
        self.dialers.append(dialer)
        dialer.send([F.HELLO, F.WIRE_VERSION, "c", 1, 3, b"n" * 16])
        yield poll(lambda: dialer.lost, "the proxy closing the dialer")
        self.port = reactor.listenTCP(0, self.node, interface="127.0.0.1")


SECRET = b"proxy-test-secret-of-32-bytes!!!"


class _RawPeer(Protocol):
    """A peer end that keeps every frame's raw payload (MAC'd frames are opened by the
    test, with the keys of the handshake it saw)."""

    def __init__(self, sink: list) -> None:
        self.sink = sink
        self.decoder = F.FrameDecoder(1 << 24)
        self.lost = False

    def connectionMade(self) -> None:
        self.sink.append(("connected", self))

    def dataReceived(self, data: bytes) -> None:
        self.sink.extend(self.decoder.feed(data))

    def connectionLost(self, reason=None) -> None:
        self.lost = True


class _RawNode(Factory):
    def __init__(self) -> None:
        self.received: list = []

    def buildProtocol(self, addr):
        return _RawPeer(self.received)


class _RawDial(ClientFactory):
    def __init__(self, sink: list) -> None:
        self.sink = sink

    def buildProtocol(self, addr):
        return _RawPeer(self.sink)


class MacProxyTests(unittest.TestCase):
    """With the cluster secret the proxy carries MAC'd frames across its faults: it checks
    and strips each frame's MAC and MACs it again in its own sequence, so a receiver that
    checks MACs in sequence accepts whatever loss, duplication and reordering let through."""

    timeout = 30

    def setUp(self):
        self.node = _RawNode()
        self.port = reactor.listenTCP(0, self.node, interface="127.0.0.1")
        self.network = ProxyNetwork(reactor, random.Random(11), secret=SECRET)
        self.proxy_port = self.network.add_node(3, "127.0.0.1", self.port.getHost().port)
        self.ends = []

    @defer.inlineCallbacks
    def tearDown(self):
        for end in self.ends:
            if end.transport is not None:
                end.transport.abortConnection()
        yield self.network.stop()
        yield self.port.stopListening()
        yield task.deferLater(reactor, 0, lambda: None)

    @defer.inlineCallbacks
    def test_lossy_duplicating_reordering_link_keeps_macs_in_sequence(self):
        """A handshake, then 200 MAC'd frames over a link with loss, duplication, delay and
        reordering: every frame node 3 receives passes its MAC in order; some were lost,
        some duplicated; the other direction is MAC'd too."""
        received: list = []
        reactor.connectTCP("127.0.0.1", self.proxy_port, _RawDial(received))
        yield poll(lambda: received, "connected")
        dialer = received.pop(0)[1]
        self.ends.append(dialer)
        hello = cbor2.dumps([F.HELLO, F.WIRE_VERSION, "c", 1, 3, b"n" * F.NONCE_BYTES, [1, 3]])
        dialer.transport.write(len(hello).to_bytes(4, "big") + hello)
        yield poll(lambda: len(self.node.received) == 2, "the HELLO at the node")
        upstream = self.node.received.pop(0)[1]
        self.ends.append(upstream)
        self.assertEqual(self.node.received.pop(0), hello)
        challenge = cbor2.dumps([F.CHALLENGE, F.WIRE_VERSION, b"a" * F.NONCE_BYTES])
        upstream.transport.write(len(challenge).to_bytes(4, "big") + challenge)
        yield poll(lambda: received, "the CHALLENGE at the dialer")
        self.assertEqual(received.pop(0), challenge)
        transcript = F.transcript_hash(hello, challenge)
        dialer.transport.write(F.encode_frame([F.AUTH, b"proof"]))
        upstream.transport.write(F.encode_frame([F.ACCEPT, b"proof"]))
        yield poll(lambda: received and self.node.received, "AUTH and ACCEPT through")
        received.clear()
        self.node.received.clear()
        to_acceptor, to_dialer = F.frame_keys(SECRET, transcript)
        self.network.set_link(1, 3, LinkRules(loss=0.2, duplicate=0.2, delay_s=0.01,
                                              jitter_s=0.02, reorder=True))
        sealer = F.FrameSealer(to_acceptor)
        for i in range(200):
            dialer.transport.write(sealer.seal(cbor2.dumps([F.MESSAGES, [[i]]])))
        back = F.FrameSealer(to_dialer)
        upstream.transport.write(back.seal(cbor2.dumps([F.MESSAGES, [["back"]]])))
        yield poll(lambda: received, "the frame back")
        self.assertEqual(cbor2.loads(F.FrameOpener(to_dialer).open(received[0])),
                         [F.MESSAGES, [["back"]]])
        def settled() -> bool:
            stats = self.network.stats()["1->3"]
            return (stats["frames_in"] == 202
                    and len(self.node.received) == stats["frames_out"] - 2
                    and not any(c.forward.outbox or any(call.active() for call in
                                                        c.forward.calls)
                                for c in self.network.connections))
        yield poll(settled, "the frames the link let through")
        stats = self.network.stats()["1->3"]
        opener = F.FrameOpener(to_acceptor)
        got = [cbor2.loads(opener.open(raw))[1][0][0] for raw in self.node.received]
        self.assertGreater(stats["lost"], 0)
        self.assertGreater(stats["duplicated"], 0)
        self.assertLess(len(set(got)), 200)
        self.assertGreater(len(got), len(set(got)))
        self.assertNotEqual(got, sorted(got))
