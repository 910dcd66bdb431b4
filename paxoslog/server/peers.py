"""Peer transport: one authenticated TCP connection per pair of nodes, carrying frames.

The node with the lower id dials; the other accepts, so a pair never holds two connections
(a newer connection from the same peer replaces an older one, which covers a peer that
restarted before we noticed the old socket die).  Dialing retries with exponential backoff
and jitter.

Consensus messages are queued per connection and written as one frame per flush (the node
flushes after each Ready), so one write carries many messages.  The queue is bounded: when
the kernel and Twisted buffers are full (the transport pauses us as a producer) new messages
push the oldest out, counted in ``messages_dropped``; the core retransmits what matters.
A peer with no established connection gets nothing (the messages are dropped and counted).
Forwarded client requests and snapshot chunks bypass that queue: they are bounded by the
HTTP layer's limits and by stop-and-wait respectively.

Bad input: a frame larger than ``frame_bytes_max`` closes the connection (the stream cannot
be resynchronised) with a logged reason; an undecodable frame or message is logged (rate
limited) and dropped.  Before authentication frames are limited to 4 KiB.
"""

from __future__ import annotations

import hmac
import os
from collections import deque
from typing import Callable, Protocol as TypingProtocol

import cbor2
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol, ReconnectingClientFactory
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from paxoslog.core.errors import MalformedMessage
from paxoslog.core.messages import InstallSnapshot, from_wire, to_wire

from . import frames as F

__all__ = ["PeerTransport", "PeerConnection", "PeerUnavailable", "PeerHandler"]

log = Logger(namespace="paxoslog.peers")

HANDSHAKE_TIMEOUT_S = 5.0
_LOG_FIRST = 5          # malformed input: log the first few per connection, then every Nth
_LOG_EVERY = 1000


class PeerUnavailable(Exception):
    """No connection to that peer (or it was lost before the reply came)."""


class PeerHandler(TypingProtocol):
    """What the node supplies to the transport."""

    def peer_messages(self, peer_id: int, messages: list) -> None: ...
    def peer_frame(self, peer_id: int, kind: int, payload: list) -> None: ...
    def after_input(self) -> None: ...
    def peer_up(self, peer_id: int) -> None: ...
    def peer_down(self, peer_id: int) -> None: ...


@implementer(IPushProducer)
class PeerConnection(Protocol):
    """One TCP connection to a peer, dialed (``dialer=True``) or accepted."""

    def __init__(self, owner: "PeerTransport", dialer: bool, expected_peer: int | None) -> None:
        self.owner = owner
        self.dialer = dialer
        self.expected_peer = expected_peer
        self.peer_id: int | None = None
        self.established = False
        self.closed = False
        self.paused = False
        self.decoder = F.FrameDecoder(F.HANDSHAKE_FRAME_BYTES_MAX)
        self.queue: deque = deque(maxlen=owner.queue_messages_max)
        self.forwards: dict[int, defer.Deferred] = {}
        self.malformed = 0
        self._nonce_d = b""
        self._nonce_a = b""
        self._timeout = None

    # ------------------------------------------------------------------ lifecycle

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:  # not every transport has the option (tests use StringTransport)
            pass
        self.transport.registerProducer(self, True)
        self._timeout = self.owner.reactor.callLater(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)
        if self.dialer:
            self._nonce_d = os.urandom(16)
            o = self.owner
            self._write([F.HELLO, F.WIRE_VERSION, o.cluster, o.node_id, self.expected_peer,
                         self._nonce_d, o.bootstrap])

    def _handshake_timeout(self) -> None:
        self._timeout = None
        if not self.established:
            self._drop(f"no handshake within {HANDSHAKE_TIMEOUT_S:.0f}s")

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.queue.clear()
        forwards, self.forwards = self.forwards, {}
        for d in forwards.values():
            d.errback(PeerUnavailable(f"connection to node {self.peer_id} lost"))
        self.owner._unregister(self)

    def _drop(self, reason: str) -> None:
        if not self.closed:
            who = f"node {self.peer_id}" if self.peer_id else str(self.transport.getPeer())
            log.warn("peer connection with {who} closed: {reason}", who=who, reason=reason)
            self.closed = True
            self.transport.abortConnection()

    # ------------------------------------------------------------------ producer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.queue:
            self.flush()

    def stopProducing(self) -> None:
        self.paused = True

    # ------------------------------------------------------------------ sending

    def _write(self, payload: list) -> None:
        if not self.closed:
            self.transport.write(F.encode_frame(payload))

    def enqueue(self, wire: list) -> None:
        queue = self.queue
        if len(queue) == queue.maxlen:
            self.owner.stats["messages_dropped"] += 1
        queue.append(wire)

    def flush(self) -> None:
        if self.paused or self.closed or not self.queue:
            return
        batch = list(self.queue)
        self.queue.clear()
        self._write_batch(batch)

    def _write_batch(self, batch: list) -> None:
        data = cbor2.dumps([F.MESSAGES, batch])
        if len(data) + 4 > self.owner.frame_bytes_max and len(batch) > 1:
            half = len(batch) // 2
            self._write_batch(batch[:half])
            self._write_batch(batch[half:])
            return
        stats = self.owner.stats
        stats["frames_sent"] += 1
        stats["messages_sent"] += len(batch)
        stats["bytes_sent"] += len(data) + 4
        self.transport.write(len(data).to_bytes(4, "big") + data)

    def send_frame(self, payload: list) -> None:
        """A shell frame (forward, snapshot): written at once, outside the message queue."""
        self._write(payload)

    # ------------------------------------------------------------------ receiving

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self.decoder.feed(data)
        except F.FrameTooLarge as exc:
            self.owner.stats["frames_rejected"] += 1
            self._drop(f"rejected frame: {exc}")
            return
        owner = self.owner
        for frame in frames:
            if self.closed:
                return
            owner.stats["bytes_received"] += len(frame) + 4
            try:
                payload = cbor2.loads(frame)
            except Exception as exc:  # cbor2 raises several types on garbage
                self._malformed(f"frame is not valid CBOR ({exc})")
                continue
            if type(payload) is not list or not payload or type(payload[0]) is not int:
                self._malformed("frame is not an array starting with a kind")
                continue
            kind = payload[0]
            if not self.established:
                self._handshake(kind, payload)
                continue
            if kind == F.MESSAGES:
                self._messages(payload)
            elif kind == F.FORWARD_REPLY:
                self._forward_reply(payload)
            elif kind in (F.FORWARD, F.SNAP_OFFER, F.SNAP_WANT, F.SNAP_CHUNK, F.SNAP_DONE,
                          F.REMOVED):
                try:
                    owner.handler.peer_frame(self.peer_id, kind, payload)
                except (ValueError, TypeError, KeyError, MalformedMessage) as exc:
                    self._malformed(f"bad {F.KIND_NAMES[kind]} frame: {exc}")
            else:
                self._malformed(f"unknown frame kind {kind}")
        if frames and self.established:
            owner.handler.after_input()

    def _malformed(self, reason: str) -> None:
        self.malformed += 1
        self.owner.stats["malformed_frames"] += 1
        if self.malformed <= _LOG_FIRST or self.malformed % _LOG_EVERY == 0:
            log.warn("dropped malformed input from node {peer} (#{n}): {reason}",
                     peer=self.peer_id, n=self.malformed, reason=reason)

    def _messages(self, payload: list) -> None:
        if len(payload) != 2 or type(payload[1]) is not list:
            self._malformed("messages frame must be [kind, [messages]]")
            return
        owner = self.owner
        me = owner.node_id
        peer = self.peer_id
        messages = []
        for item in payload[1]:
            try:
                msg = from_wire(item)
            except MalformedMessage as exc:
                self._malformed(str(exc))
                continue
            except Exception as exc:  # a validator tripping on garbage is still garbage
                self._malformed(f"undecodable message: {exc!r}")
                continue
            if msg.frm != peer or msg.to != me:
                self._malformed(f"{type(msg).__name__} from {msg.frm} to {msg.to} on the "
                                f"connection of node {peer}")
                continue
            if type(msg) is InstallSnapshot:
                # Only a completed snapshot transfer may hand the core an InstallSnapshot
                # (its data names the received file); one in a message frame is refused.
                self._malformed("InstallSnapshot outside a snapshot transfer")
                continue
            messages.append(msg)
        owner.stats["messages_received"] += len(messages)
        if messages:
            owner.handler.peer_messages(peer, messages)

    def _forward_reply(self, payload: list) -> None:
        if len(payload) != 4 or type(payload[1]) is not int or type(payload[2]) is not int:
            self._malformed("forward reply must be [kind, id, status, body]")
            return
        d = self.forwards.pop(payload[1], None)
        if d is not None:
            d.callback((payload[2], payload[3]))

    # ------------------------------------------------------------------ handshake

    def _handshake(self, kind: int, p: list) -> None:
        o = self.owner
        try:
            if not self.dialer and kind == F.HELLO and self.peer_id is None:
                _, version, cluster, frm, to, nonce_d, bootstrap = p
                self._check_hello(version, cluster, frm, to, bootstrap)
                if type(nonce_d) is not bytes or len(nonce_d) != 16:
                    raise ValueError("bad nonce")
                self.peer_id = frm
                self._nonce_d = nonce_d
                self._nonce_a = os.urandom(16)
                mac = F.handshake_mac(o.secret, "acceptor", o.cluster, o.node_id, frm, nonce_d,
                                      self._nonce_a)
                self._write([F.CHALLENGE, F.WIRE_VERSION, o.cluster, o.node_id, frm,
                             self._nonce_a, mac, o.bootstrap])
                return
            if self.dialer and kind == F.CHALLENGE and self.peer_id is None:
                _, version, cluster, frm, to, nonce_a, mac, bootstrap = p
                self._check_hello(version, cluster, frm, to, bootstrap)
                if frm != self.expected_peer:
                    raise ValueError(f"expected node {self.expected_peer} at this address, "
                                     f"found node {frm}")
                if type(nonce_a) is not bytes or len(nonce_a) != 16 or type(mac) is not bytes:
                    raise ValueError("bad nonce or proof")
                want = F.handshake_mac(o.secret, "acceptor", o.cluster, frm, o.node_id,
                                       self._nonce_d, nonce_a)
                if not hmac.compare_digest(want, mac):
                    raise ValueError("the peer failed authentication (wrong cluster secret?)")
                self.peer_id = frm
                proof = F.handshake_mac(o.secret, "dialer", o.cluster, frm, o.node_id,
                                        self._nonce_d, nonce_a)
                self._write([F.AUTH, proof])
                self._established()
                return
            if not self.dialer and kind == F.AUTH and self.peer_id is not None:
                _, mac = p
                want = F.handshake_mac(o.secret, "dialer", o.cluster, o.node_id, self.peer_id,
                                       self._nonce_d, self._nonce_a)
                if type(mac) is not bytes or not hmac.compare_digest(want, mac):
                    raise ValueError("the peer failed authentication (wrong cluster secret?)")
                self._established()
                return
            raise ValueError(f"unexpected {F.KIND_NAMES.get(kind, kind)} frame during handshake")
        except (ValueError, TypeError) as exc:
            o.stats["handshake_failures"] += 1
            self._drop(f"handshake failed: {exc}")

    def _check_hello(self, version, cluster, frm, to, bootstrap) -> None:
        o = self.owner
        if version != F.WIRE_VERSION:
            raise ValueError(f"wire version {version!r:.40}, expected {F.WIRE_VERSION}")
        if cluster != o.cluster:
            raise ValueError(f"peer belongs to cluster {cluster!r:.64}, not {o.cluster!r}")
        if type(frm) is not int or frm not in o.peer_ids and frm not in o.removed_ids:
            raise ValueError(f"node id {frm!r:.20} is not a member of the cluster")
        if to != o.node_id:
            raise ValueError(f"peer wanted node {to!r:.20}, this is node {o.node_id}")
        if bootstrap != o.bootstrap:
            # Every member's log starts from the same initial configuration (and, for a
            # restored or recovered cluster, the same log origin); a node that believes in
            # another one (a new node started without --join, a node of the cluster before
            # a restore or a recovery) must not vote.
            raise ValueError(f"bootstrap voters or log origin differ: node {frm} has "
                             f"{bootstrap!r:.120}, this node has {o.bootstrap!r:.120}; a node "
                             f"added to a running cluster must be started with --join, and "
                             f"nodes of the cluster before a restore or recover must be "
                             f"wiped and re-added with --join")

    def _established(self) -> None:
        self.established = True
        self.decoder.limit = self.owner.frame_bytes_max
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.owner._register(self)


class _AcceptFactory(Factory):
    def __init__(self, owner: "PeerTransport") -> None:
        self.owner = owner

    noisy = False

    def buildProtocol(self, addr):
        return PeerConnection(self.owner, dialer=False, expected_peer=None)


class _DialFactory(ReconnectingClientFactory):
    initialDelay = 0.02
    delay = initialDelay        # the base class computed its own from its initialDelay
    factor = 2.0
    maxDelay = 1.0
    jitter = 0.2

    def __init__(self, owner: "PeerTransport", peer_id: int) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.noisy = False

    def buildProtocol(self, addr):
        conn = PeerConnection(self.owner, dialer=True, expected_peer=self.peer_id)
        conn.factory = self
        return conn

    def clientConnectionFailed(self, connector, reason) -> None:
        if self.continueTrying:
            self.retry(connector)

    def clientConnectionLost(self, connector, reason) -> None:
        if self.continueTrying:
            self.retry(connector)


class PeerTransport(Service):
    """Listens for peers, dials the peers with higher ids, keeps one connection per peer."""

    name = "peers"

    def __init__(self, config, node_id: int, handler, reactor) -> None:
        self.config = config
        self.node_id = node_id
        self.handler = handler
        self.reactor = reactor
        self.cluster = config.name
        self.secret = config.secret
        # The address book: the conf's nodes until the node hands over its own (which
        # follows membership changes: ``set_peers``).  A removed node may still complete
        # the handshake, only to be told that it was removed.
        self.addresses: dict[int, object] = {n.id: n for n in config.nodes if n.id != node_id}
        self.removed_ids: frozenset[int] = frozenset()
        # The log origin peers compare (AddressBook.log_origin; set by the node).
        self.bootstrap: object = sorted(n.id for n in config.nodes)
        self.frame_bytes_max = config.batching.frame_bytes_max
        self.queue_messages_max = config.batching.peer_queue_messages_max
        self.connections: dict[int, PeerConnection] = {}
        self.stats = dict.fromkeys(
            ("frames_sent", "messages_sent", "bytes_sent", "bytes_received", "messages_received",
             "messages_dropped", "malformed_frames", "frames_rejected", "handshake_failures",
             "forwards_sent"), 0)
        self.port = None
        self._dialers: dict[int, tuple[_DialFactory, object]] = {}
        self._dirty: set[PeerConnection] = set()
        self._next_forward = 0
        self.on_listening: Callable[[int], None] | None = None

    # ------------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        me = self.config.node(self.node_id)
        self.port = self.reactor.listenTCP(me.peer_bind.port, _AcceptFactory(self),
                                           interface=me.peer_bind.host, backlog=128)
        for peer_id in sorted(self.addresses):
            self._dial(peer_id)

    def _dial(self, peer_id: int) -> None:
        """The node with the lower id dials (one connection per pair)."""
        if peer_id > self.node_id and peer_id not in self._dialers:
            peer = self.addresses[peer_id].peer
            factory = _DialFactory(self, peer_id)
            connector = self.reactor.connectTCP(peer.host, peer.port, factory, timeout=2)
            self._dialers[peer_id] = (factory, connector)

    def _hang_up(self, peer_id: int) -> None:
        dialer = self._dialers.pop(peer_id, None)
        if dialer is not None:
            factory, connector = dialer
            factory.stopTrying()
            connector.disconnect()

    @property
    def peer_ids(self) -> frozenset[int]:
        return frozenset(self.addresses)

    def set_peers(self, addresses: dict, removed: frozenset[int] = frozenset()) -> None:
        """Follow the address book: dial new peers (or a peer's new address), hang up on
        peers that left.  ``addresses`` maps node id -> an object with ``.peer``."""
        self.removed_ids = frozenset(removed)
        old = self.addresses
        self.addresses = {n: a for n, a in addresses.items() if n != self.node_id}
        if not self.running:
            return
        for peer_id, entry in old.items():
            new = self.addresses.get(peer_id)
            if new is None or str(new.peer) != str(entry.peer):
                self._hang_up(peer_id)
                if new is None:
                    self.disconnect(peer_id)
        for peer_id in sorted(self.addresses):
            self._dial(peer_id)

    def disconnect(self, peer_id: int) -> None:
        """Close the connection to ``peer_id`` once what was written to it is sent."""
        conn = self.connections.get(peer_id)
        if conn is not None:
            conn.transport.loseConnection()

    def stopService(self):
        super().stopService()
        for peer_id in list(self._dialers):
            self._hang_up(peer_id)
        for conn in list(self.connections.values()):
            conn.transport.loseConnection()
        d = defer.maybeDeferred(self.port.stopListening) if self.port else defer.succeed(None)
        self.port = None
        return d

    # ------------------------------------------------------------------ registry

    def _register(self, conn: PeerConnection) -> None:
        peer = conn.peer_id
        old = self.connections.get(peer)
        self.connections[peer] = conn
        if conn.dialer and getattr(conn, "factory", None) is not None:
            conn.factory.resetDelay()
        if old is not None and old is not conn:
            log.info("node {peer} reconnected; closing its previous connection", peer=peer)
            old.transport.abortConnection()
        else:
            log.info("connected to node {peer}", peer=peer)
        self.handler.peer_up(peer)

    def _unregister(self, conn: PeerConnection) -> None:
        self._dirty.discard(conn)
        peer = conn.peer_id
        if peer is not None and self.connections.get(peer) is conn:
            del self.connections[peer]
            log.info("lost the connection to node {peer}", peer=peer)
            self.handler.peer_down(peer)

    def connected(self, peer_id: int) -> bool:
        return peer_id in self.connections

    # ------------------------------------------------------------------ sending

    def send(self, msg) -> None:
        """Queue one core message (flushed by ``flush``)."""
        conn = self.connections.get(msg.to)
        if conn is None:
            self.stats["messages_dropped"] += 1
            return
        conn.enqueue(to_wire(msg))
        self._dirty.add(conn)

    def flush(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            for conn in dirty:
                conn.flush()

    def send_frame(self, peer_id: int, payload: list) -> bool:
        conn = self.connections.get(peer_id)
        if conn is None:
            return False
        conn.send_frame(payload)
        return True

    def forward(self, peer_id: int, op: str, payload) -> defer.Deferred:
        """Send a client request to ``peer_id``; fires with (status, body) or fails with
        ``PeerUnavailable``."""
        conn = self.connections.get(peer_id)
        if conn is None:
            return defer.fail(PeerUnavailable(f"no connection to node {peer_id}"))
        self._next_forward += 1
        request_id = self._next_forward
        d = defer.Deferred()
        conn.forwards[request_id] = d
        self.stats["forwards_sent"] += 1
        conn.send_frame([F.FORWARD, request_id, op, payload])
        return d

    def reply_forward(self, peer_id: int, request_id: int, status: int, body) -> None:
        self.send_frame(peer_id, [F.FORWARD_REPLY, request_id, status, body])
