"""One peer connection (``PeerConnection``): framing, the handshake, frame MACs, the
bounded send queue, and what bad input does.  ``PeerTransport`` (peers.py) owns the
connections.

Authentication: the dialer proves first (frames.py).  With ``[tls] peers`` every
connection is mutual TLS with the cluster CA: a peer without a certificate from the CA fails
the TLS handshake, and the acceptor checks that the certificate names the node the HELLO
claims (the dialer's TLS options check the acceptor's).  Without TLS, and with a secret,
every frame after the handshake carries a MAC with an implicit sequence number; a frame that
fails it closes the connection (logged once, counted in ``frames_forged``).

Bad input: a frame larger than ``frame_bytes_max`` closes the connection (the stream cannot
be resynchronised) with a logged reason; an undecodable frame or message (CBOR decoding is
bounded, see ``frames.decode_payload``) is logged (rate limited) and dropped.  Before
authentication frames are limited to 4 KiB, the handshake to ``peer_handshake_timeout_ms``,
and at most ``peer_handshakes_max`` accepted connections may be in their handshake at once
(more are closed at once).
"""

from __future__ import annotations

import hmac
import os
from collections import deque
from typing import TYPE_CHECKING, Protocol as TypingProtocol

import cbor2
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from statemachines.base import cbor_head
from paxoslog.core.errors import MalformedMessage
from paxoslog.core.messages import InstallSnapshot, from_wire

from . import frames as F
from .metrics import Histogram
from .sockets import write_now
from .tls import check_peer_identity
from .tlswire import TLSFailed

if TYPE_CHECKING:
    from .peers import PeerTransport

__all__ = ["PeerConnection", "PeerUnavailable", "PeerHandler", "LinkStats"]

log = Logger(namespace="paxoslog.peers")

_LOG_FIRST = 5          # malformed input: log the first few per connection, then every Nth
_LOG_EVERY = 1000

# At most this many bytes of frames are written per flush; the rest of the queue goes at
# the reactor's next turn.  A leader catching a follower up, or pipelining megabyte
# batches, had 64 MiB queued for one peer: encoding (again at every halving to fit
# frame_bytes_max), MAC'ing and sending it held the event loop 0.15-0.47 s, long enough for
# check-quorum to see no follower (tools/bench_memory.py: elections during a bulk load).
FLUSH_BYTES_MAX = 4 << 20
_TURN_MARK = 256 << 10       # from this many bytes on, a turn's writes are counted
_MESSAGES_HEAD = cbor2.dumps(F.MESSAGES)

# Handshake states.
_DIALING = "dialing"              # dialer: HELLO sent, waiting for CHALLENGE
_AWAIT_ACCEPT = "await-accept"    # dialer: AUTH sent, waiting for ACCEPT
_AWAIT_HELLO = "await-hello"      # acceptor
_AWAIT_AUTH = "await-auth"        # acceptor: CHALLENGE sent
_ESTABLISHED = "established"


class LinkStats:
    """What this node knows of its link to one peer, kept across reconnections (so that
    counters never go backwards): bytes each way, when a frame last arrived (reactor
    seconds; None: never), and the round-trip times of PING/PONG."""

    __slots__ = ("bytes_sent", "bytes_received", "last_heard", "rtt")

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_heard: float | None = None
        self.rtt = Histogram(RTT_BUCKETS)


# Round trips on loopback take ~0.1 ms, across a region tens of ms.
RTT_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               0.5, 1.0)


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
        self._flush_call = None       # the rest of the queue, at the next reactor turn
        self._turn_bytes = 0          # written since the turn began (counted from _TURN_MARK)
        self.forwards: dict[int, defer.Deferred] = {}
        self.malformed = 0
        self.state = _DIALING if dialer else _AWAIT_HELLO
        self.handshaking = False      # counted in owner.handshakes (accepted connections)
        self.sealer: F.FrameSealer | None = None      # frame MACs (no TLS, with a secret)
        self.opener: F.FrameOpener | None = None
        self._registered = False      # we are our transport's producer
        self._hello = b""             # the HELLO and CHALLENGE payloads as sent: transcript
        self._challenge = b""
        self._peer_info: dict = {}    # the dialer's HELLO info (acceptor side)
        self._timeout = None

    # ------------------------------------------------------------------ lifecycle

    def connectionMade(self) -> None:
        o = self.owner
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:  # not every transport has the option (tests use StringTransport)
            pass
        if not self.dialer:
            if o.handshakes >= o.handshakes_max:
                o.stats["handshakes_refused"] += 1
                o.log_limited("handshakes_refused", "refused a peer connection from {who}: "
                              "{n} connections are already in their handshake "
                              "(limits.peer_handshakes_max)", who=_address(self.transport),
                              n=o.handshakes)
                self.closed = True
                self.transport.abortConnection()
                return
            o.handshakes += 1
            self.handshaking = True
        self.transport.registerProducer(self, True)
        self._registered = True
        self._timeout = o.reactor.callLater(o.handshake_timeout_s, self._handshake_timeout)
        if self.dialer:
            self._hello = cbor2.dumps([F.HELLO, F.WIRE_VERSION, o.cluster, o.node_id,
                                       self.expected_peer, os.urandom(F.NONCE_BYTES),
                                       o.bootstrap, o.local_info])
            self.transport.write(len(self._hello).to_bytes(4, "big") + self._hello)

    def _handshake_timeout(self) -> None:
        self._timeout = None
        if not self.established:
            self._drop(f"no handshake within {self.owner.handshake_timeout_s:g}s")

    def _done_handshaking(self) -> None:
        if self.handshaking:
            self.handshaking = False
            self.owner.handshakes -= 1

    def connectionLost(self, reason=None) -> None:
        was_closed = self.closed
        self.closed = True
        self._done_handshaking()
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        if not self.established and not was_closed and reason is not None \
                and reason.check(TLSFailed):
            self.owner.tls_failed(self, reason.value)
        self.queue.clear()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        forwards, self.forwards = self.forwards, {}
        for d in forwards.values():
            d.errback(PeerUnavailable(f"connection to node {self.peer_id} lost"))
        self.owner._unregister(self)

    def close(self, abort: bool = False) -> None:
        """Close the connection (after what was written, or at once); the producer is
        unregistered first, or a TLS transport would wait for it before closing."""
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _drop(self, reason: str) -> None:
        if not self.closed:
            who = f"node {self.peer_id}" if self.peer_id else _address(self.transport)
            log.warn("peer connection with {who} closed: {reason}", who=who, reason=reason)
            self.closed = True
            self.close(abort=True)

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

    def _frame(self, data: bytes) -> bytes:
        """The frame that carries payload bytes ``data`` (MAC'd when the link needs it)."""
        if self.sealer is not None:
            return self.sealer.seal(data)
        return len(data).to_bytes(4, "big") + data

    def _write(self, payload: list) -> None:
        if not self.closed:
            frame = self._frame(cbor2.dumps(payload))
            if self.established:
                self.owner.link(self.peer_id).bytes_sent += len(frame)
            write_now(self.transport, frame)

    def enqueue(self, wire: list) -> None:
        queue = self.queue
        if len(queue) == queue.maxlen:
            self.owner.stats["messages_dropped"] += 1
        queue.append(wire)

    def flush(self) -> None:
        """Write the queued messages as MESSAGES frames of at most ``frame_bytes_max``
        and ``FLUSH_BYTES_MAX`` (a single larger message goes alone), each message encoded
        once, in order.  After ``FLUSH_BYTES_MAX`` bytes the rest waits for the reactor's
        next turn, so ticks and other peers' frames run in between; until then a flush
        writes nothing more (the queue is in order: what was queued since goes after it).
        Small writes (light load) schedule nothing."""
        if self.paused or self.closed or not self.queue:
            return
        if self._turn_bytes < FLUSH_BYTES_MAX:
            self._turn_bytes += self._write_queue()
        if (self.queue or self._turn_bytes >= _TURN_MARK) and self._flush_call is None \
                and not self.closed:
            self._flush_call = self.owner.reactor.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._flush_call = None
        self._turn_bytes = 0
        self.flush()

    def _write_queue(self) -> int:
        """Frames from the head of the queue until about ``FLUSH_BYTES_MAX`` bytes were
        written this turn (or the transport pauses us); the bytes written."""
        queue = self.queue
        frame_max = min(self.owner.frame_bytes_max, FLUSH_BYTES_MAX) - 16   # heads, MAC
        budget = FLUSH_BYTES_MAX - self._turn_bytes
        items: list[bytes] = []
        size = written = 0
        while queue:
            encoded = cbor2.dumps(queue[0])
            if items and size + len(encoded) > frame_max:
                written += self._write_items(items)
                items, size = [], 0
                if written >= budget or self.paused or self.closed:
                    return written
            queue.popleft()
            items.append(encoded)
            size += len(encoded)
        if items:
            written += self._write_items(items)
        return written

    def _write_items(self, items: list[bytes]) -> int:
        """One frame of already encoded messages: the bytes of ``cbor2.dumps([MESSAGES,
        messages])`` (a definite-length array is its head and its items' encodings)."""
        data = b"".join((b"\x82", _MESSAGES_HEAD, cbor_head(4, len(items)), *items))
        stats = self.owner.stats
        stats["frames_sent"] += 1
        stats["messages_sent"] += len(items)
        frame = self._frame(data)
        stats["bytes_sent"] += len(frame)
        self.owner.link(self.peer_id).bytes_sent += len(frame)
        write_now(self.transport, frame)
        return len(frame)

    def send_frame(self, payload: list) -> None:
        """A shell frame (forward, snapshot): written at once, outside the message queue."""
        self._write(payload)

    # ------------------------------------------------------------------ receiving

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        owner = self.owner
        handled = False
        while not self.closed:
            # During the handshake one frame at a time: the frames after it may be larger
            # than the handshake's limit (and MAC'd), so they wait for the new settings.
            try:
                frames = self.decoder.feed(data, most=None if self.established else 1)
            except F.FrameTooLarge as exc:
                owner.stats["frames_rejected"] += 1
                self._drop(f"rejected frame: {exc}")
                return
            data = b""
            if not frames:
                break
            for frame in frames:
                if self.closed:
                    return
                self._frame_received(frame)
                handled = True
        if handled and self.established and not self.closed:
            owner.link(self.peer_id).last_heard = owner.reactor.seconds()
            owner.handler.after_input()

    def _frame_received(self, frame: bytes) -> None:
        owner = self.owner
        owner.stats["bytes_received"] += len(frame) + 4
        if self.established:
            owner.link(self.peer_id).bytes_received += len(frame) + 4
        if self.opener is not None:
            try:
                frame = self.opener.open(frame)
            except F.ForgedFrame as exc:
                owner.stats["frames_forged"] += 1
                self._drop(str(exc))
                return
        try:
            payload = F.decode_payload(frame, owner.frame_depth_max)
        except F.MalformedFrame as exc:
            if not self.established:
                owner.stats["handshake_failures"] += 1
                self._drop(f"handshake failed: {exc}")
                return
            self._malformed(str(exc))
            return
        kind = payload[0]
        if not self.established:
            self._handshake(kind, payload, frame)
        elif kind == F.MESSAGES:
            self._messages(payload)
        elif kind == F.FORWARD_REPLY:
            self._forward_reply(payload)
        elif kind == F.PING:
            if len(payload) == 2:
                self._write([F.PONG, payload[1]])
        elif kind == F.PONG:
            if len(payload) == 2 and type(payload[1]) is float:
                owner.pong(self.peer_id, payload[1])
        elif kind in (F.FORWARD, F.SNAP_OFFER, F.SNAP_WANT, F.SNAP_CHUNK, F.SNAP_DONE,
                      F.REMOVED, F.VOTER_ADDRESSES):
            try:
                owner.handler.peer_frame(self.peer_id, kind, payload)
            except (ValueError, TypeError, KeyError, IndexError, MalformedMessage) as exc:
                # e.g. a frame with too few fields ([SNAP_CHUNK]): dropped, link kept
                self._malformed(f"bad {F.KIND_NAMES[kind]} frame: {exc!r:.200}")
        else:
            self._malformed(f"unknown frame kind {kind}")

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

    def _handshake(self, kind: int, p: list, raw: bytes) -> None:
        """One handshake frame (``raw``: its payload bytes, for the transcript)."""
        o = self.owner
        try:
            if self.state == _AWAIT_HELLO and kind == F.HELLO:
                if len(p) != 8:
                    raise ValueError("malformed hello (a node of another paxoslog version?)")
                _, version, cluster, frm, to, nonce_d, bootstrap, info = p
                self._check_hello(version, cluster, frm, to, bootstrap)
                if not isinstance(info, dict):
                    raise ValueError("malformed hello: info must be a map")
                self._peer_info = info
                if type(nonce_d) is not bytes or len(nonce_d) != F.NONCE_BYTES:
                    raise ValueError("bad nonce")
                if o.tls is not None:
                    problem = check_peer_identity(self.transport, o.cluster, frm)
                    if problem is not None:
                        raise ValueError(f"the dialer claims to be node {frm} but {problem}")
                self.peer_id = frm
                self._hello = raw
                # A nonce and nothing else: no proof before the dialer has given its own.
                self._challenge = cbor2.dumps([F.CHALLENGE, F.WIRE_VERSION,
                                               os.urandom(F.NONCE_BYTES)])
                self.transport.write(len(self._challenge).to_bytes(4, "big") + self._challenge)
                self.state = _AWAIT_AUTH
                return
            if self.state == _DIALING and kind == F.CHALLENGE:
                if len(p) != 3:
                    raise ValueError("malformed challenge")
                _, version, nonce_a = p
                if version != F.WIRE_VERSION:
                    raise ValueError(f"wire version {version!r:.40}, expected "
                                     f"{F.WIRE_VERSION} (every node must run the same version)")
                if type(nonce_a) is not bytes or len(nonce_a) != F.NONCE_BYTES:
                    raise ValueError("bad nonce")
                self._challenge = raw
                transcript = F.transcript_hash(self._hello, raw)
                self._write([F.AUTH, F.handshake_proof(o.secret, "dialer", transcript)])
                self.state = _AWAIT_ACCEPT
                return
            if self.state == _AWAIT_AUTH and kind == F.AUTH:
                if len(p) != 2 or type(p[1]) is not bytes:
                    raise ValueError("malformed auth")
                transcript = F.transcript_hash(self._hello, self._challenge)
                want = F.handshake_proof(o.secret, "dialer", transcript)
                if not hmac.compare_digest(want, p[1]):
                    raise ValueError(f"node {self.peer_id} failed authentication (wrong "
                                     f"cluster secret?)")
                self._write([F.ACCEPT, F.handshake_proof(o.secret, "acceptor", transcript),
                             o.local_info])
                # Checked once the dialer proved itself; the ACCEPT tells it what we run,
                # so that it names the difference in its own log too.
                problem = self._check_info(self._peer_info, self.peer_id)
                if problem is not None:
                    self._refuse(problem)
                    return
                self._established(transcript)
                return
            if self.state == _AWAIT_ACCEPT and kind == F.ACCEPT:
                if len(p) != 3 or type(p[1]) is not bytes or not isinstance(p[2], dict):
                    raise ValueError("malformed accept")
                transcript = F.transcript_hash(self._hello, self._challenge)
                want = F.handshake_proof(o.secret, "acceptor", transcript)
                if not hmac.compare_digest(want, p[1]):
                    raise ValueError(f"node {self.expected_peer} failed authentication "
                                     f"(wrong cluster secret?)")
                self.peer_id = self.expected_peer
                problem = self._check_info(p[2], self.peer_id)
                if problem is not None:
                    self._refuse(problem)
                    return
                self._established(transcript)
                return
            raise ValueError(f"unexpected {F.KIND_NAMES.get(kind, kind)} frame during "
                             f"handshake")
        except (ValueError, TypeError) as exc:
            o.stats["handshake_failures"] += 1
            self._drop(f"handshake failed: {exc}")

    def _check_info(self, info: dict, peer: int) -> str | None:
        """What makes the peer unfit (its state machines differ), or None; records its
        software version."""
        o = self.owner
        o.peer_versions[peer] = str(info.get("version", "?"))[:40]
        return F.state_machine_difference(o.local_info["state_machines"],
                                          info.get("state_machines"), peer)

    def _refuse(self, problem: str) -> None:
        """An authenticated peer we must not work with: say why (an error: an operator
        must fix a conf), close after the last frame is written."""
        o = self.owner
        o.stats["handshake_failures"] += 1
        o.refusals[self.peer_id] = problem
        o.log_limited(f"refused-{self.peer_id}", "refused node {peer}: {problem}",
                      level="error", peer=self.peer_id, problem=problem)
        self.closed = True
        self.close()

    def _check_hello(self, version, cluster, frm, to, bootstrap) -> None:
        o = self.owner
        if version != F.WIRE_VERSION:
            raise ValueError(f"wire version {version!r:.40}, expected {F.WIRE_VERSION} "
                             f"(every node must run the same version)")
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

    def _established(self, transcript: bytes) -> None:
        o = self.owner
        self.established = True
        self.state = _ESTABLISHED
        self._done_handshaking()
        if o.secret and o.tls is None:
            to_acceptor, to_dialer = F.frame_keys(o.secret, transcript)
            mine, theirs = (to_acceptor, to_dialer) if self.dialer else (to_dialer, to_acceptor)
            self.sealer = F.FrameSealer(mine)
            self.opener = F.FrameOpener(theirs)
        self.decoder.limit = o.frame_bytes_max + (F.TAG_BYTES if self.opener else 0)
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.owner._register(self)


def _address(transport) -> str:
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:  # a transport without an address (tests)
        return "?"


def _string_keys(value):
    """``value`` with every map key a string, as JSON would have it (peer frames refuse
    other keys: no hash-collision maps).  Only answers to forwarded requests need this:
    a state machine's query result may use, say, integer keys."""
    if isinstance(value, dict):
        return {_json_key(k): _string_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_string_keys(v) for v in value]
    return value


def _json_key(key) -> str:
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    return str(key)
