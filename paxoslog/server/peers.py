"""Peer transport: one authenticated TCP (or mutual-TLS) connection per pair of nodes,
carrying frames (frames.py: wire format, handshake, frame MACs).

The node with the lower id dials; the other accepts, so a pair never holds two connections
(a newer connection from the same peer replaces an older one, which covers a peer that
restarted before we noticed the old socket die).  Dialing retries with exponential backoff
and jitter.  A lower-id peer that has not connected for ``_APART_DIAL_S`` is dialed once per
such period too (``_dial_down``).

Consensus messages are queued per connection and written as one frame per flush (the node
flushes after each Ready), so one write carries many messages.  The queue is bounded: when
the kernel and Twisted buffers are full (the transport pauses us as a producer) new messages
push the oldest out, counted in ``messages_dropped``; the core retransmits what matters.
A peer with no established connection gets nothing (the messages are dropped and counted).
Forwarded client requests and snapshot chunks bypass that queue: they are bounded by the
HTTP layer's limits and by stop-and-wait respectively.

One connection's framing, handshake and input bounds: peerconn.py.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.protocol import Factory, ReconnectingClientFactory
from twisted.logger import Logger

from paxoslog.core.messages import to_wire

from . import frames as F
from .peerconn import (_LOG_EVERY, _LOG_FIRST, LinkStats, PeerConnection, PeerHandler,
                       PeerUnavailable, _address, _string_keys)
from .tls import node_identity, transport_warnings
from .tlswire import TLSFactory

__all__ = ["PeerTransport", "PeerConnection", "PeerUnavailable", "PeerHandler", "LinkStats"]

log = Logger(namespace="paxoslog.peers")

# Nesting allowed in a peer frame beyond a client body's (a forwarded read's answer wraps
# stored values in a few levels of its own).
_FRAME_DEPTH_EXTRA = 16


class _AcceptFactory(Factory):
    def __init__(self, owner: "PeerTransport") -> None:
        self.owner = owner

    noisy = False

    def buildProtocol(self, addr):
        return PeerConnection(self.owner, dialer=False, expected_peer=None)


_REMOVED_REDIAL_S = 5.0     # at most this long between dials of a removed peer (_dial)
_APART_DIAL_S = 30.0        # a lower id that has not dialed us this long: we dial it once


class _DialFactory(ReconnectingClientFactory):
    """Redials a peer after a failed or lost connection: 20 ms, doubling, at most 0.25 s
    apart (with 20 % jitter).  Only the lower id dials, so a peer that restarts waits for
    this redial to be connected at all; with 1 s apart, a leader that failed within a
    second of such a restart left the other two unconnected, and without a quorum, for up
    to 1.3 s (a lease integration test caught it).  A refused dial on loopback or a LAN
    costs next to nothing; etcd's peers retry every 100 ms."""

    initialDelay = 0.02
    delay = initialDelay        # the base class computed its own from its initialDelay
    factor = 2.0
    maxDelay = 0.25
    jitter = 0.2

    stable_s = 1.0              # a connection that lasted this long resets the backoff

    def __init__(self, owner: "PeerTransport", peer_id: int, clock, once: bool = False) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.noisy = False
        self.clock = clock          # the base class schedules its redials on it too
        self.connected_at: float | None = None
        # One dial, never a redial (PeerTransport._dial_down).  Not ``continueTrying``:
        # the base class's ``resetDelay`` sets that again.
        self.once = once

    def connected(self) -> None:
        """The peer accepted the handshake (the connection is registered)."""
        self.connected_at = self.clock.seconds()

    def buildProtocol(self, addr):
        conn = PeerConnection(self.owner, dialer=True, expected_peer=self.peer_id)
        conn.factory = self
        return conn

    def clientConnectionFailed(self, connector, reason) -> None:
        if self.once:
            self.owner.dial_ended(connector)
        elif self.continueTrying:
            self.retry(connector)

    def clientConnectionLost(self, connector, reason) -> None:
        """A connection that lasted ``stable_s`` starts the redials over at 20 ms; one
        dropped sooner keeps backing off (a peer that accepts the handshake and then hangs
        up, as the members do with a removed node, was redialed every 20 ms)."""
        if self.once:
            self.owner.dial_ended(connector)
            return
        connected_at, self.connected_at = self.connected_at, None
        if connected_at is not None and self.clock.seconds() - connected_at >= self.stable_s:
            self.resetDelay()
        if self.continueTrying:
            self.retry(connector)


class PeerTransport(Service):
    """Listens for peers, dials the peers with higher ids, keeps one connection per peer."""

    name = "peers"

    def __init__(self, config, node_id: int, handler, reactor, tls=None) -> None:
        """``tls``: a ``tls.NodeTls`` for mutual TLS between peers (``[tls] peers``)."""
        self.config = config
        self.node_id = node_id
        self.handler = handler
        self.reactor = reactor
        self.cluster = config.name
        self.secret = config.secret
        self.tls = tls
        limits = config.limits
        self.handshake_timeout_s = limits.peer_handshake_timeout_ms / 1000.0
        self.handshakes_max = limits.peer_handshakes_max
        self.handshakes = 0           # accepted connections still in their handshake
        self.frame_depth_max = limits.json_depth_max + _FRAME_DEPTH_EXTRA
        # The address book: the conf's nodes until the node hands over its own (which
        # follows membership changes: ``set_peers``).  A removed node may still complete
        # the handshake, only to be told that it was removed.
        self.addresses: dict[int, object] = {n.id: n for n in config.nodes if n.id != node_id}
        self.removed_ids: frozenset[int] = frozenset()
        self.waiting = False          # this node was removed, waiting for the word (set_peers)
        # The log origin peers compare (AddressBook.log_origin; set by the node).
        self.bootstrap: object = sorted(n.id for n in config.nodes)
        self.frame_bytes_max = config.batching.frame_bytes_max
        self.queue_messages_max = config.batching.peer_queue_messages_max
        self.connections: dict[int, PeerConnection] = {}
        self.stats = dict.fromkeys(
            ("frames_sent", "messages_sent", "bytes_sent", "bytes_received", "messages_received",
             "messages_dropped", "malformed_frames", "frames_rejected", "handshake_failures",
             "forwards_sent", "frames_forged", "handshakes_refused", "tls_failures"), 0)
        self._log_counts: dict[str, int] = {}
        self.port = None
        self._dialers: dict[int, tuple[_DialFactory, object]] = {}
        self._dirty: set[PeerConnection] = set()
        self._next_forward = 0
        self.on_listening: Callable[[int], None] | None = None
        # What peers compare at the handshake (set by the node before it starts).
        self.local_info: dict = {"version": "?", "state_machines": []}
        self.peer_versions: dict[int, str] = {}     # peer -> its paxoslog version
        self.refusals: dict[int, str] = {}          # peer -> why we last refused it
        self.links: dict[int, LinkStats] = {}
        self.ping_interval_s = 1.0
        self._pinger = None
        self._apart_since: dict[int, float] = {}   # lower-id peer -> unconnected since
        self._once: dict[object, int] = {}         # connector -> peer, of _dial_down's dials

    # ------------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        me = self.config.node(self.node_id)
        for warning in transport_warnings(self.config):
            log.warn("{warning}", warning=warning)
        if self.tls is not None:
            for warning in self.tls.warnings:
                log.warn("SECURITY: {warning}", warning=warning)
            self._client_context = self.tls.peer_client_context()
            accept = TLSFactory(self.tls.server_context(True), _AcceptFactory(self),
                                server_side=True)
            self.port = self.reactor.listenTCP(me.peer_bind.port, accept,
                                               interface=me.peer_bind.host, backlog=128)
        else:
            self.port = self.reactor.listenTCP(me.peer_bind.port, _AcceptFactory(self),
                                               interface=me.peer_bind.host, backlog=128)
        for peer_id in sorted(self.addresses):
            self._dial(peer_id)
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = self.reactor
        self._pinger.start(self.ping_interval_s, now=False)

    def link(self, peer_id: int) -> LinkStats:
        stats = self.links.get(peer_id)
        if stats is None:
            stats = self.links[peer_id] = LinkStats()
        return stats

    def _ping(self) -> None:
        """PING every established peer: its PONG gives the round-trip time, and shows the
        process runs (followers send each other nothing else).  Then dial the lower-id
        peers that stayed apart (``_dial_down``)."""
        token = float(self.reactor.seconds())
        for conn in list(self.connections.values()):
            conn.send_frame([F.PING, token])
        self._dial_down()

    def _dial_down(self) -> None:
        """Only the lower id dials, so a node that a lower-id peer stopped dialing never
        hears from it.  That is a removed node that comes back after its members gave up
        telling it (addressbook.py, ``_TELL_REMOVED_S``): it waited for a majority of the
        new voters' word, not knowing it was removed.  A lower-id peer that has not been
        connected for ``_APART_DIAL_S`` is dialed once, and again each period while it
        stays apart: a member tells a removed node so on that connection (``peer_up``);
        anywhere else it is an ordinary connection, which the peer's own dial replaces
        when one comes (should the two sides disagree on which is newer, each closes one,
        and the peer's redial settles it).  A peer that is down or cut off only costs one
        failed dial per period."""
        now = self.reactor.seconds()
        for peer_id in sorted(self.addresses):
            if peer_id >= self.node_id:
                continue
            if peer_id in self.connections:
                self._apart_since.pop(peer_id, None)
                continue
            since = self._apart_since.setdefault(peer_id, now)
            if now - since < _APART_DIAL_S:
                continue
            self._apart_since[peer_id] = now
            self.log_limited(f"dial-down-{peer_id}", "no connection from node {peer} for "
                             "{seconds:.0f} s: dialing it ourselves (it is down or cut off, "
                             "or it no longer dials this node)", level="info",
                             peer=peer_id, seconds=_APART_DIAL_S)
            # Once: the next period dials again, if it is still needed.
            factory = _DialFactory(self, peer_id, self.reactor, once=True)
            connector = self._connect(peer_id, factory)
            if connector is not None:
                self._once[connector] = peer_id

    def dial_ended(self, connector) -> None:
        """One of ``_dial_down``'s dials failed, or its connection ended."""
        self._once.pop(connector, None)

    def _stop_dials_to(self, peers) -> None:
        for connector, peer_id in list(self._once.items()):
            if peer_id in peers:
                del self._once[connector]
                connector.disconnect()

    def pong(self, peer_id: int, token: float) -> None:
        rtt = self.reactor.seconds() - token
        if 0 <= rtt < 3600:
            self.link(peer_id).rtt.observe(rtt)

    def last_heard_s(self, peer_id: int) -> float | None:
        """Seconds since a frame last came from ``peer_id`` (None: never)."""
        stats = self.links.get(peer_id)
        if stats is None or stats.last_heard is None:
            return None
        return self.reactor.seconds() - stats.last_heard

    def _dial(self, peer_id: int) -> None:
        """The node with the lower id dials (one connection per pair).  A removed peer is
        redialed at most ``_REMOVED_REDIAL_S`` apart: each connection only tells it it was
        removed and hangs up, and one that waits for a majority of the new voters to say
        so (addressbook.py) would otherwise be dialed, and logged, four times a second."""
        if peer_id > self.node_id and peer_id not in self._dialers:
            factory = _DialFactory(self, peer_id, self.reactor)
            connector = self._connect(peer_id, factory)
            if connector is not None:
                self._dialers[peer_id] = (factory, connector)
        dialer = self._dialers.get(peer_id)
        if dialer is not None:
            dialer[0].maxDelay = (_REMOVED_REDIAL_S if peer_id in self.removed_ids
                                  or self.waiting else _DialFactory.maxDelay)

    def _connect(self, peer_id: int, factory: _DialFactory):
        """Dial ``peer_id`` with ``factory`` (through TLS when the peers use it); None when
        its address cannot even be dialed (one the resolver refuses at once): logged, and
        the other peers are still dialed."""
        peer = self.addresses[peer_id].peer
        if self.tls is not None:
            factory = TLSFactory(self._client_context, factory, server_side=False,
                                 server_hostname=node_identity(self.tls.cluster, peer_id))
        try:
            return self.reactor.connectTCP(peer.host, peer.port, factory, timeout=2)
        except OSError as exc:
            self.log_limited(f"undialable-{peer_id}", "cannot dial node {peer} at {address}: "
                             "{error}", peer=peer_id, address=str(peer), error=exc)
            return None

    def _hang_up(self, peer_id: int) -> None:
        dialer = self._dialers.pop(peer_id, None)
        if dialer is not None:
            factory, connector = dialer
            factory.stopTrying()
            connector.disconnect()

    @property
    def peer_ids(self) -> frozenset[int]:
        return frozenset(self.addresses)

    def set_peers(self, addresses: dict, removed: frozenset[int] = frozenset(),
                  waiting: bool = False) -> None:
        """Follow the address book: dial new peers (or a peer's new address), hang up on
        peers that left.  ``addresses`` maps node id -> an object with ``.peer``.
        ``waiting``: this node was removed and waits for the members' word; each member
        hangs up once it told it, so every peer is redialed at most ``_REMOVED_REDIAL_S``
        apart, as a removed peer is."""
        self.removed_ids = frozenset(removed)
        self.waiting = waiting
        old = self.addresses
        self._apart_since = {p: t for p, t in self._apart_since.items() if p in addresses}
        self._stop_dials_to(set(self._once.values()) - set(addresses))
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
            conn.close()

    def stopService(self):
        super().stopService()
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        for peer_id in list(self._dialers):
            self._hang_up(peer_id)
        self._stop_dials_to(set(self._once.values()))
        for conn in list(self.connections.values()):
            conn.close()
        d = defer.maybeDeferred(self.port.stopListening) if self.port else defer.succeed(None)
        self.port = None
        return d

    # ------------------------------------------------------------------ registry

    def _register(self, conn: PeerConnection) -> None:
        peer = conn.peer_id
        old = self.connections.get(peer)
        self.connections[peer] = conn
        if conn.dialer and getattr(conn, "factory", None) is not None:
            conn.factory.connected()
        if old is not None and old is not conn:
            log.info("node {peer} reconnected; closing its previous connection", peer=peer)
            old.close(abort=True)
        else:
            log.info("connected to node {peer}", peer=peer)
        self.refusals.pop(peer, None)
        self.link(peer).last_heard = self.reactor.seconds()
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

    def log_limited(self, what: str, text: str, level: str = "warn", **fields) -> None:
        """Log ``text`` the first few times for ``what``, then every _LOG_EVERY-th time."""
        n = self._log_counts[what] = self._log_counts.get(what, 0) + 1
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            getattr(log, level)(text + " (#{n_logged})", n_logged=n, **fields)

    def tls_failed(self, conn: PeerConnection, error: Exception) -> None:
        """A TLS handshake failed (no or a foreign certificate, a name mismatch, ...)."""
        self.stats["tls_failures"] += 1
        self.stats["handshake_failures"] += 1
        if conn.dialer:
            self.log_limited(f"tls-dial-{conn.expected_peer}",
                             "TLS handshake with node {peer} failed: {error}",
                             peer=conn.expected_peer, error=_tls_reason(error))
        else:
            self.log_limited("tls-accept", "refused a peer connection from {who}: TLS "
                             "handshake failed ({error}); peers need a certificate from "
                             "the cluster CA", who=_address(conn.transport),
                             error=_tls_reason(error))

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
        self.send_frame(peer_id, [F.FORWARD_REPLY, request_id, status, _string_keys(body)])


def _tls_reason(error: Exception) -> str:
    """OpenSSL's reason for a failed TLS handshake, in words (``tlswire.TLSFailed``)."""
    return str(error)[:300]
