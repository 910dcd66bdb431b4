"""A frame-aware TCP proxy for every directed peer link of a chaos cluster.

Each node's conf entry says where the other nodes dial it (``peer``) apart from where it
listens (``peer_bind``); the chaos conf points ``peer`` at a listener of this proxy, which
forwards to ``peer_bind``.  The peer transport keeps one TCP connection per pair of nodes
(normally the lower id dials), so one proxied connection carries two directed links: dialer ->
listener and listener -> dialer.  The proxy learns the dialer from its HELLO frame (the
first frame of every peer connection names ``from_id``), so the rules below apply per
*directed* link (src, dst) even though several dialers reach one listener.

The peer protocol is a stream of length-prefixed frames (paxoslog/server/frames.py); the
proxy splits the stream into whole frames and forwards, drops, delays or duplicates whole
frames, so the receiver always sees a well-formed stream.  Per directed link:

``block``      None (pass), ``"drop"`` (read and discard every frame: a black hole with the
               connection kept open) or ``"hold"`` (stop reading the sender's socket: frames
               pile up in the kernel and the sender's buffers, and flow again on release)
``delay_s``    added one-way delay per frame, plus ``jitter_s`` uniform on top
``reorder``    with a delay: frames are released independently (may overtake each other);
               without it a frame never overtakes an earlier one on the same link
``loss``       probability of dropping a frame
``duplicate``  probability of sending a frame twice

Loss, duplication and delay spare the handshake frames (HELLO/CHALLENGE/AUTH/ACCEPT):
losing one only stalls the connection until its handshake timeout, which tests nothing the
block rule does not.  ``reset(a, b)`` aborts the connection of a pair and refuses new ones
until ``heal``.  Every decision draws from the injected ``random.Random``; the reactor is
injected too (tests pass the real one and real sockets on 127.0.0.1).

Authenticated links.  The proxy is a trusted man in the middle that holds the cluster's
credentials, so that frame-level faults still mean what they mean on a plain link:

* frame MACs (a ``secret`` and no TLS): a node refuses a frame that was dropped, duplicated
  or reordered on the way (its MAC carries a sequence number).  The proxy derives the
  connection's frame keys from the secret and the HELLO and CHALLENGE it forwarded, checks
  and strips each frame's MAC as it arrives, and MACs it again, with its own sequence, as
  it leaves: the receiver sees a well-formed sequence of whatever the rules let through.
* TLS (``tls``: a ``ProxyTls`` with every node's certificate and key): the proxy terminates
  TLS on both sides.  Towards the dialer its listener for node N presents N's certificate
  (and requires a certificate from the cluster CA); towards node N it dials with the
  certificate of the node the HELLO names.  Inside, frames carry no MACs.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, fields, replace

import cbor2
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger

from paxoslog.server import frames as F

__all__ = ["LinkRules", "LinkStats", "ProxyNetwork", "ProxyTls", "frame_kind", "BLOCK_MODES"]

log = Logger(namespace="paxoslog.chaos.proxy")

BLOCK_MODES = ("drop", "hold")
_HANDSHAKE_KINDS = F.HANDSHAKE_KINDS
# Frames each direction sends before its frames carry MACs: dialer HELLO, AUTH; acceptor
# CHALLENGE, ACCEPT.
_HANDSHAKE_FRAMES = 2
# The proxy is not the place to enforce frame limits (the node does); this only bounds memory.
_FRAME_BYTES_MAX = 1 << 30
_CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class LinkRules:
    """What happens to the frames of one directed link.  The default passes everything."""

    block: str | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    reorder: bool = False
    loss: float = 0.0
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        if self.block is not None and self.block not in BLOCK_MODES:
            raise ValueError(f"block must be None or one of {BLOCK_MODES}, got {self.block!r}")
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay_s and jitter_s must be >= 0")
        for name in ("loss", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability, got {value!r}")

    @property
    def clean(self) -> bool:
        return self == LinkRules()

    def describe(self) -> str:
        if self.clean:
            return "pass"
        parts = []
        if self.block:
            parts.append(f"block={self.block}")
        if self.delay_s or self.jitter_s:
            parts.append(f"delay={self.delay_s * 1000:.0f}+{self.jitter_s * 1000:.0f}ms"
                         + (" reorder" if self.reorder else ""))
        if self.loss:
            parts.append(f"loss={self.loss:.0%}")
        if self.duplicate:
            parts.append(f"dup={self.duplicate:.0%}")
        return " ".join(parts)


@dataclass
class LinkStats:
    """Counters of one directed link, over every connection it had."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    dropped: int = 0
    lost: int = 0
    duplicated: int = 0
    delayed: int = 0
    held: int = 0
    connections: int = 0
    refused: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def frame_kind(payload: bytes) -> int | None:
    """The kind of a peer frame (first item of its CBOR array) without decoding the rest."""
    if not payload:
        return None
    head = payload[0]
    if head >> 5 != 4:                       # not a CBOR array
        return None
    info = head & 0x1F
    pos = 1 + {24: 1, 25: 2, 26: 4, 27: 8}.get(info, 0)
    if info in (28, 29, 30) or len(payload) <= pos:
        return None
    first = payload[pos]
    if first < 24:                           # unsigned integer 0..23, inline
        return first
    if first == 24 and len(payload) > pos + 1:
        return payload[pos + 1]
    return None


def _encode(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class ProxyTls:
    """Every node's TLS material (``paxoslog.server.tls.NodeTls`` by node id), added as
    nodes are (spares included)."""

    def __init__(self) -> None:
        self.nodes: dict = {}

    def add(self, node_tls) -> None:
        self.nodes[node_tls.node_id] = node_tls

    def server_options(self, node_id: int):
        return self.nodes[node_id].server_options(True)

    def client_options(self, dialer_id: int, listener_id: int):
        return self.nodes[dialer_id].peer_client_options(listener_id)


class _Pipe:
    """One direction of one proxied connection: frames read from ``source`` go to ``sink``.

    ``src``/``dst`` name the directed link once the connection is identified.  Frames that
    arrive before the other side is connected wait in ``waiting``; frames of a held link
    wait in ``held`` (and the source is paused) until the rules change.  A frame travels as
    (payload bytes, sealed): ``sealed`` frames had their MAC checked and stripped on the way
    in and get a new one on the way out (``opener``/``sealer``, set once the handshake's
    transcript is known)."""

    def __init__(self, network: "ProxyNetwork", conn: "_Connection") -> None:
        self.network = network
        self.conn = conn
        self.src: int | None = None
        self.dst: int | None = None
        self.source = None           # transport we read from
        self.sink = None             # transport we write to
        self.decoder = F.FrameDecoder(_FRAME_BYTES_MAX)
        self.waiting: list[bytes] = []
        self.held: deque[bytes] = deque()
        self.paused = False
        self.outbox: deque[tuple[float, tuple]] = deque()
        self.timer = None
        self.calls: set = set()
        self.handshake_frames = 0        # unsealed frames seen so far
        self.opener: F.FrameOpener | None = None
        self.sealer: F.FrameSealer | None = None
        self.first_frame = b""           # HELLO (forward) or CHALLENGE (backward) payload

    @property
    def stats(self) -> LinkStats:
        return self.network.stats_for(self.src, self.dst)

    def feed(self, data: bytes) -> list[bytes]:
        """Split ``data`` into frames; returns them (the caller routes or identifies)."""
        return self.decoder.feed(data)

    def receive(self, raw: bytes) -> tuple | None:
        """A frame as read from the source -> (payload, sealed), its MAC checked when the
        link carries MACs; None when it fails (the connection is aborted)."""
        if self.handshake_frames < _HANDSHAKE_FRAMES:
            self.handshake_frames += 1
            if self.handshake_frames == 1:
                self.first_frame = raw
            return (raw, False)
        if not self.network.frame_macs:
            return (raw, False)
        if self.opener is None:
            self.conn.derive_keys()
        try:
            return (self.opener.open(raw), True)
        except (F.ForgedFrame, AttributeError) as exc:
            log.warn("proxy {src}->{dst}: {error}; closing", src=self.src, dst=self.dst,
                     error=exc)
            self.conn.abort()
            return None

    def route(self, item: tuple) -> None:
        if self.conn.closed:
            return
        if self.sink is None:
            self.waiting.append(item)
            return
        stats = self.stats
        stats.frames_in += 1
        if self.held:
            self.held.append(item)
            stats.held += 1
            return
        rules = self.network.rules(self.src, self.dst)
        if rules.block == "drop":
            stats.dropped += 1
            return
        if rules.block == "hold":
            self.held.append(item)
            stats.held += 1
            self._pause()
            return
        rng = self.network.rng
        copies = 1
        if frame_kind(item[0]) not in _HANDSHAKE_KINDS:
            if rules.loss and rng.random() < rules.loss:
                stats.lost += 1
                return
            if rules.duplicate and rng.random() < rules.duplicate:
                copies = 2
                stats.duplicated += 1
            delay = rules.delay_s + (rng.uniform(0.0, rules.jitter_s) if rules.jitter_s else 0.0)
        else:
            delay = 0.0
        if delay > 0:
            stats.delayed += 1
        for _ in range(copies):
            self._emit(item, delay, rules.reorder)

    def _emit(self, data: tuple, delay: float, reorder: bool) -> None:
        reactor = self.network.reactor
        if delay > 0 and reorder:
            call = reactor.callLater(delay, self._write_reordered, data)
            self.calls.add(call)
            return
        if delay <= 0 and not self.outbox:
            self._write(data)
            return
        now = reactor.seconds()
        due = now + delay
        if self.outbox and self.outbox[-1][0] > due:
            due = self.outbox[-1][0]     # never overtake an earlier frame
        self.outbox.append((due, data))
        if self.timer is None:
            self.timer = reactor.callLater(max(0.0, self.outbox[0][0] - now), self._release_due)

    def _write_reordered(self, data: tuple) -> None:
        self.calls = {c for c in self.calls if c.active()}
        self._write(data)

    def _release_due(self) -> None:
        self.timer = None
        reactor = self.network.reactor
        now = reactor.seconds()
        while self.outbox and self.outbox[0][0] <= now + 1e-6:
            self._write(self.outbox.popleft()[1])
        if self.outbox and not self.conn.closed:
            self.timer = reactor.callLater(max(0.0, self.outbox[0][0] - now), self._release_due)

    def _write(self, item: tuple) -> None:
        if self.conn.closed or self.sink is None:
            return
        payload, sealed = item
        data = self.sealer.seal(payload) if sealed else _encode(payload)
        stats = self.stats
        stats.frames_out += 1
        stats.bytes_out += len(data)
        self.sink.write(data)

    def _pause(self) -> None:
        if not self.paused and self.source is not None:
            self.paused = True
            self.source.pauseProducing()

    def rules_changed(self) -> None:
        """Re-route held frames under the new rules; resume reading when no longer held."""
        if self.conn.closed:
            return
        if self.network.rules(self.src, self.dst).block == "hold":
            return
        held, self.held = self.held, deque()
        for item in held:
            self.stats.frames_in -= 1     # counted again by route
            self.route(item)
        if self.paused and not self.held and self.source is not None:
            self.paused = False
            self.source.resumeProducing()

    def connected(self, sink) -> None:
        self.sink = sink
        waiting, self.waiting = self.waiting, []
        for item in waiting:
            self.route(item)

    def close(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        for call in self.calls:
            if call.active():
                call.cancel()
        self.calls.clear()
        self.outbox.clear()
        self.held.clear()
        self.waiting = []


class _Connection:
    """A proxied peer connection: the dialer's socket (downstream) and ours to the node
    (upstream), with one ``_Pipe`` per direction."""

    def __init__(self, network: "ProxyNetwork", listener_id: int) -> None:
        self.network = network
        self.listener_id = listener_id
        self.dialer_id: int | None = None
        self.closed = False
        self.forward = _Pipe(network, self)    # dialer -> listener
        self.backward = _Pipe(network, self)   # listener -> dialer
        self.downstream: "_Downstream | None" = None
        self.upstream: "_Upstream | None" = None
        self.connector = None

    @property
    def pair(self) -> frozenset:
        return frozenset((self.dialer_id, self.listener_id))

    def derive_keys(self) -> None:
        """Frame keys of both directions from the secret and the HELLO and CHALLENGE this
        connection carried (frames.py); the first MAC'd frame of either side asks."""
        hello, challenge = self.forward.first_frame, self.backward.first_frame
        if not hello or not challenge:
            return
        to_acceptor, to_dialer = F.frame_keys(self.network.secret,
                                              F.transcript_hash(hello, challenge))
        self.forward.opener, self.forward.sealer = (F.FrameOpener(to_acceptor),
                                                    F.FrameSealer(to_acceptor))
        self.backward.opener, self.backward.sealer = (F.FrameOpener(to_dialer),
                                                      F.FrameSealer(to_dialer))

    def identified(self, dialer_id: int) -> bool:
        """The HELLO named the dialer: set up the link names and dial the node."""
        network = self.network
        self.dialer_id = dialer_id
        self.forward.src, self.forward.dst = dialer_id, self.listener_id
        self.backward.src, self.backward.dst = self.listener_id, dialer_id
        for pipe in (self.forward, self.backward):
            network.stats_for(pipe.src, pipe.dst).connections += 1
        if self.pair in network.refused:
            network.stats_for(dialer_id, self.listener_id).refused += 1
            self.abort()
            return False
        network._track(self)
        host, port = network.upstreams[self.listener_id]
        if network.tls is not None:
            if dialer_id not in network.tls.nodes:
                log.warn("proxy for node {node}: no certificate for node {dialer}; closing",
                         node=self.listener_id, dialer=dialer_id)
                self.abort()
                return False
            self.connector = network.reactor.connectSSL(
                host, port, _UpstreamFactory(self),
                network.tls.client_options(dialer_id, self.listener_id),
                timeout=_CONNECT_TIMEOUT_S)
        else:
            self.connector = network.reactor.connectTCP(host, port, _UpstreamFactory(self),
                                                        timeout=_CONNECT_TIMEOUT_S)
        return True

    def upstream_made(self, upstream: "_Upstream") -> None:
        if self.closed:
            upstream.transport.abortConnection()
            return
        self.upstream = upstream
        self.forward.source = self.downstream.transport
        self.backward.source = upstream.transport
        self.backward.sink = self.downstream.transport
        self.forward.connected(upstream.transport)

    def abort(self) -> None:
        """Close both sockets at once (RST), dropping whatever is in flight."""
        self._close(reset=True)

    def side_lost(self) -> None:
        """One socket closed: close the other (a dead node's peers see the close)."""
        self._close(reset=False)

    def _close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.forward.close()
        self.backward.close()
        self.network._untrack(self)
        for side in (self.downstream, self.upstream):
            if side is not None and side.transport is not None:
                if reset:
                    side.transport.abortConnection()
                else:
                    side.transport.loseConnection()
        if self.upstream is None and self.connector is not None:
            self.connector.disconnect()


class _Downstream(Protocol):
    """The socket a dialing node opened to our listener."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def connectionMade(self) -> None:
        self.conn.downstream = self
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:  # pragma: no cover - every TCP transport has it
            pass
        tls = self.conn.network.tls
        if tls is not None:
            # TLS towards the dialer, as the node it dialled (made per connection: a
            # spare's material is added after its listener).
            self.transport.startTLS(tls.server_options(self.conn.listener_id))

    def dataReceived(self, data: bytes) -> None:
        conn = self.conn
        if conn.closed:
            return
        try:
            frames = conn.forward.feed(data)
        except F.FrameTooLarge:
            conn.abort()
            return
        for frame in frames:
            if conn.dialer_id is None:
                dialer = _hello_sender(frame)
                if dialer is None:
                    log.warn("proxy for node {node}: a connection did not start with a HELLO; "
                             "closing it", node=conn.listener_id)
                    conn.abort()
                    return
                if not conn.identified(dialer):
                    return
            item = conn.forward.receive(frame)
            if item is None:
                return
            conn.forward.route(item)

    def connectionLost(self, reason=None) -> None:
        self.conn.side_lost()


class _Upstream(Protocol):
    """Our socket to the node's real peer port."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:  # pragma: no cover
            pass
        self.conn.upstream_made(self)

    def dataReceived(self, data: bytes) -> None:
        conn = self.conn
        if conn.closed:
            return
        try:
            frames = conn.backward.feed(data)
        except F.FrameTooLarge:
            conn.abort()
            return
        for frame in frames:
            item = conn.backward.receive(frame)
            if item is None:
                return
            conn.backward.route(item)

    def connectionLost(self, reason=None) -> None:
        self.conn.side_lost()


class _UpstreamFactory(ClientFactory):
    noisy = False

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def buildProtocol(self, addr):
        return _Upstream(self.conn)

    def clientConnectionFailed(self, connector, reason) -> None:
        # The node is down: the dialer sees its connection close and retries later.
        self.conn.side_lost()


class _ListenFactory(Factory):
    noisy = False

    def __init__(self, network: "ProxyNetwork", node_id: int) -> None:
        self.network = network
        self.node_id = node_id

    def buildProtocol(self, addr):
        return _Downstream(_Connection(self.network, self.node_id))


def _hello_sender(frame: bytes) -> int | None:
    if frame_kind(frame) != F.HELLO:
        return None
    try:
        payload = cbor2.loads(frame)
    except Exception:  # cbor2 raises several types on garbage
        return None
    if type(payload) is list and len(payload) >= 5 and type(payload[3]) is int:
        return payload[3]
    return None


class ProxyNetwork:
    """Listeners for every node's peer address, and the rules of every directed link.

    ``add_node(node_id, host, port)`` starts a listener on 127.0.0.1 (ephemeral port,
    returned) that forwards to the node's real peer port.  Rules change at any time and
    take effect on the next frame (held frames are re-routed at once)."""

    def __init__(self, reactor, rng: random.Random, host: str = "127.0.0.1", *,
                 secret: bytes | None = None, tls: ProxyTls | None = None) -> None:
        """``secret``: the cluster's (to carry frame MACs across); ``tls``: terminate TLS
        with the nodes' own certificates (see the module docstring)."""
        self.reactor = reactor
        self.rng = rng
        self.host = host
        self.secret = secret
        self.tls = tls
        self.frame_macs = bool(secret) and tls is None
        self.upstreams: dict[int, tuple[str, int]] = {}
        self.ports: dict[int, object] = {}
        self._rules: dict[tuple[int, int], LinkRules] = {}
        self._stats: dict[tuple, LinkStats] = {}
        self.connections: set[_Connection] = set()
        self.refused: set[frozenset] = set()

    # ------------------------------------------------------------------ setup

    def add_node(self, node_id: int, host: str, port: int) -> int:
        """Listen for connections meant for ``node_id``; returns the proxy's port."""
        assert node_id not in self.ports, f"node {node_id} already has a proxy"
        self.upstreams[node_id] = (host, port)
        listening = self.reactor.listenTCP(0, _ListenFactory(self, node_id), interface=self.host)
        self.ports[node_id] = listening
        return listening.getHost().port

    def stop(self):
        """Stop listening and abort every proxied connection; returns a Deferred."""
        from twisted.internet import defer
        for conn in list(self.connections):
            conn.abort()
        ports, self.ports = self.ports, {}
        return defer.gatherResults([defer.maybeDeferred(p.stopListening)
                                    for p in ports.values()])

    @property
    def nodes(self) -> list[int]:
        return sorted(self.upstreams)

    # ------------------------------------------------------------------ rules

    def rules(self, src: int | None, dst: int | None) -> LinkRules:
        return self._rules.get((src, dst), _PASS)

    def set_link(self, src: int, dst: int, rules: LinkRules | None = None, **changes) -> None:
        """Replace (``rules``) or update (keyword fields) the rules of link src -> dst."""
        assert src != dst, "a node has no link to itself"
        new = rules if rules is not None else replace(self.rules(src, dst), **changes)
        if new.clean:
            self._rules.pop((src, dst), None)
        else:
            self._rules[(src, dst)] = new
        for conn in list(self.connections):
            for pipe in (conn.forward, conn.backward):
                if (pipe.src, pipe.dst) == (src, dst):
                    pipe.rules_changed()

    def block(self, links, mode: str = "drop") -> None:
        """Block each directed (src, dst) link in ``links``."""
        for src, dst in links:
            self.set_link(src, dst, block=mode)

    def reset(self, a: int, b: int) -> None:
        """Abort the connection between ``a`` and ``b`` and refuse new ones until heal."""
        pair = frozenset((a, b))
        self.refused.add(pair)
        for conn in list(self.connections):
            if conn.pair == pair:
                conn.abort()

    def heal(self) -> None:
        """Every link back to pass; held frames flow; refused pairs may reconnect."""
        self.refused.clear()
        for src, dst in list(self._rules):
            self.set_link(src, dst, LinkRules())

    def faulty_links(self) -> dict[tuple[int, int], str]:
        return {link: rules.describe() for link, rules in sorted(self._rules.items())}

    # ------------------------------------------------------------------ stats

    def stats_for(self, src: int | None, dst: int | None) -> LinkStats:
        key = (src, dst)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = LinkStats()
        return stats

    def stats(self) -> dict[str, dict]:
        return {f"{src}->{dst}": s.as_dict() for (src, dst), s in sorted(
            self._stats.items(), key=lambda item: (item[0][0] or 0, item[0][1] or 0))
            if src is not None}

    # ------------------------------------------------------------------ registry

    def _track(self, conn: _Connection) -> None:
        self.connections.add(conn)

    def _untrack(self, conn: _Connection) -> None:
        self.connections.discard(conn)


_PASS = LinkRules()
